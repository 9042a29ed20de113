//! The Nexmark generator, after Apache Beam's `NexmarkGenerator`: event `i`
//! is a person, an auction or a bid by `i % 50` (1:3:46), and every field of
//! event `i` comes from a small RNG seeded by (seed, i) alone. So the event
//! set is the same whatever the parallelism or batch size, and a subtask can
//! jump straight to the events of the one type it emits.

use std::fmt::Write;
use std::sync::OnceLock;

use super::model::*;

/// SplitMix64: tiny, fast and stable across platforms and versions.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn for_event(seed: u64, event: u64) -> Self {
        let mut r = Rng(seed ^ event.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.next();
        r
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const POOL_LEN: usize = 1 << 14;

/// Random lowercase text that strings are sliced from (no per-row generation).
fn pool() -> &'static str {
    static POOL: OnceLock<String> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut r = Rng(0x5EED);
        (0..POOL_LEN)
            .map(|_| (b'a' + r.below(26) as u8) as char)
            .collect()
    })
}

fn text(r: &mut Rng, len: usize) -> &'static str {
    let start = r.below((POOL_LEN - len) as u64) as usize;
    &pool()[start..start + len]
}

fn extra(r: &mut Rng, avg: usize) -> &'static str {
    let len = avg * 4 / 5 + r.below((avg * 2 / 5 + 1) as u64) as usize;
    text(r, len.min(POOL_LEN / 2))
}

/// Which kind event `i` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A person.
    Person,
    /// An auction.
    Auction,
    /// A bid.
    Bid,
}

/// The kind of event `i`.
pub fn kind_of(i: u64) -> Kind {
    match i % PROPORTION_TOTAL {
        o if o < PERSON_PROPORTION => Kind::Person,
        o if o < PERSON_PROPORTION + AUCTION_PROPORTION => Kind::Auction,
        _ => Kind::Bid,
    }
}

/// The event id of the `j`-th event of `kind`.
pub fn event_of(kind: Kind, j: u64) -> u64 {
    match kind {
        Kind::Person => j * PROPORTION_TOTAL,
        Kind::Auction => {
            (j / AUCTION_PROPORTION) * PROPORTION_TOTAL + PERSON_PROPORTION + j % AUCTION_PROPORTION
        }
        Kind::Bid => {
            (j / BID_PROPORTION) * PROPORTION_TOTAL
                + PERSON_PROPORTION
                + AUCTION_PROPORTION
                + j % BID_PROPORTION
        }
    }
}

/// How many events of `kind` are among the first `events` events.
pub fn count_of(kind: Kind, events: u64) -> u64 {
    let full = events / PROPORTION_TOTAL;
    let rest = events % PROPORTION_TOTAL;
    let (per, lo) = match kind {
        Kind::Person => (PERSON_PROPORTION, 0),
        Kind::Auction => (AUCTION_PROPORTION, PERSON_PROPORTION),
        Kind::Bid => (BID_PROPORTION, PERSON_PROPORTION + AUCTION_PROPORTION),
    };
    full * per + rest.saturating_sub(lo).min(per)
}

fn last_person(i: u64) -> i64 {
    // Persons come first in each period, so the last person of event i's
    // period has already been generated (Beam's lastBase0PersonId).
    let epoch = i / PROPORTION_TOTAL;
    (epoch * PERSON_PROPORTION + PERSON_PROPORTION - 1) as i64
}

fn last_auction(i: u64) -> i64 {
    let mut epoch = (i / PROPORTION_TOTAL) as i64;
    let mut offset = (i % PROPORTION_TOTAL) as i64;
    let (p, a) = (PERSON_PROPORTION as i64, AUCTION_PROPORTION as i64);
    if offset < p {
        epoch -= 1;
        offset = a - 1;
    } else if offset >= p + a {
        offset = a - 1;
    } else {
        offset -= p;
    }
    epoch * a + offset
}

fn next_person(i: u64, r: &mut Rng) -> i64 {
    let people = last_person(i) + 1;
    let active = people.min(NUM_ACTIVE_PEOPLE);
    people - active + r.below((active + PERSON_ID_LEAD) as u64) as i64
}

fn next_auction(i: u64, r: &mut Rng) -> i64 {
    let max = last_auction(i).max(0);
    let min = (max - NUM_IN_FLIGHT_AUCTIONS).max(0);
    min + r.below((max - min + 1 + AUCTION_ID_LEAD) as u64) as i64
}

fn price(r: &mut Rng) -> i64 {
    (10f64.powf(r.unit() * 6.0) * 100.0).round() as i64
}

/// Generator settings shared by the sources and [`super::generate`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub(crate) seed: u64,
    pub(crate) rate: u64,
    pub(crate) disorder: i64,
}

impl Clock {
    /// Event time of event `i` before disorder.
    pub(crate) fn base_time(&self, i: u64) -> i64 {
        BASE_TIME_MS + (i as u128 * 1000 / self.rate.max(1) as u128) as i64
    }

    fn time(&self, i: u64, r: &mut Rng) -> i64 {
        let t = self.base_time(i);
        if self.disorder > 0 {
            t - r.below(self.disorder as u64 + 1) as i64
        } else {
            t
        }
    }
}

/// The fields of a bid, strings borrowed from static text.
pub(crate) struct BidParts {
    pub(crate) auction: i64,
    pub(crate) bidder: i64,
    pub(crate) price: i64,
    pub(crate) channel: Result<&'static str, u64>,
    pub(crate) url_path: &'static str,
    pub(crate) date_time: i64,
    pub(crate) extra: &'static str,
}

pub(crate) fn bid(c: &Clock, i: u64) -> BidParts {
    let mut r = Rng::for_event(c.seed, i);
    let date_time = c.time(i, &mut r);
    let auction = if r.below(HOT_AUCTION_RATIO) > 0 {
        (last_auction(i) / HOT_ID_STRIDE) * HOT_ID_STRIDE
    } else {
        next_auction(i, &mut r)
    } + FIRST_AUCTION_ID;
    let bidder = if r.below(HOT_BIDDER_RATIO) > 0 {
        (last_person(i) / HOT_ID_STRIDE) * HOT_ID_STRIDE + 1
    } else {
        next_person(i, &mut r)
    } + FIRST_PERSON_ID;
    let price = price(&mut r);
    let channel = if r.below(10) == 0 {
        Err(r.below(10_000))
    } else {
        Ok(CHANNELS[r.below(4) as usize])
    };
    let url_path = text(&mut r, 5);
    let extra = extra(&mut r, AVG_BID_BYTES - 70);
    BidParts {
        auction,
        bidder,
        price,
        channel,
        url_path,
        date_time,
        extra,
    }
}

/// Writes a bid's channel.
pub(crate) fn write_channel(out: &mut impl Write, c: &Result<&'static str, u64>) {
    let _ = match c {
        Ok(name) => out.write_str(name),
        Err(n) => write!(out, "channel-{n}"),
    };
}

/// Writes a bid's URL.
pub(crate) fn write_url(out: &mut impl Write, path: &str, channel: &Result<&'static str, u64>) {
    let _ = match channel {
        Ok(name) => write!(
            out,
            "https://www.nexmark.com/{path}/item.htm?query=1&channel={name}"
        ),
        Err(n) => write!(
            out,
            "https://www.nexmark.com/{path}/item.htm?query=1&channel_id={n}"
        ),
    };
}

/// The fields of a person.
pub(crate) struct PersonParts {
    pub(crate) id: i64,
    pub(crate) first: &'static str,
    pub(crate) last: &'static str,
    pub(crate) email: (&'static str, &'static str),
    pub(crate) card: [u64; 4],
    pub(crate) city: &'static str,
    pub(crate) state: &'static str,
    pub(crate) date_time: i64,
    pub(crate) extra: &'static str,
}

pub(crate) fn person(c: &Clock, i: u64) -> PersonParts {
    let mut r = Rng::for_event(c.seed, i);
    let date_time = c.time(i, &mut r);
    PersonParts {
        id: last_person(i) + FIRST_PERSON_ID,
        first: FIRST_NAMES[r.below(FIRST_NAMES.len() as u64) as usize],
        last: LAST_NAMES[r.below(LAST_NAMES.len() as u64) as usize],
        email: (text(&mut r, 7), text(&mut r, 5)),
        card: [
            r.below(10_000),
            r.below(10_000),
            r.below(10_000),
            r.below(10_000),
        ],
        city: US_CITIES[r.below(US_CITIES.len() as u64) as usize],
        state: US_STATES[r.below(US_STATES.len() as u64) as usize],
        date_time,
        extra: extra(&mut r, AVG_PERSON_BYTES - 80),
    }
}

/// The fields of an auction.
pub(crate) struct AuctionParts {
    pub(crate) id: i64,
    pub(crate) item_name: &'static str,
    pub(crate) description: &'static str,
    pub(crate) initial_bid: i64,
    pub(crate) reserve: i64,
    pub(crate) date_time: i64,
    pub(crate) expires: i64,
    pub(crate) seller: i64,
    pub(crate) category: i64,
    pub(crate) extra: &'static str,
}

pub(crate) fn auction(c: &Clock, i: u64) -> AuctionParts {
    let mut r = Rng::for_event(c.seed, i);
    let date_time = c.time(i, &mut r);
    let seller = if r.below(HOT_SELLER_RATIO) > 0 {
        (last_person(i) / HOT_ID_STRIDE) * HOT_ID_STRIDE
    } else {
        next_person(i, &mut r)
    } + FIRST_PERSON_ID;
    let category = FIRST_CATEGORY_ID + r.below(NUM_CATEGORIES as u64) as i64;
    let initial_bid = price(&mut r);
    let reserve = initial_bid + price(&mut r);
    // Auctions last about as long as it takes the next 100 in-flight auctions to open.
    let ahead = (NUM_IN_FLIGHT_AUCTIONS as u64 * PROPORTION_TOTAL) / AUCTION_PROPORTION;
    let horizon = (c.base_time(i + ahead) - c.base_time(i)).max(1);
    let expires = c.base_time(i) + 1 + r.below((horizon * 2) as u64) as i64;
    AuctionParts {
        id: last_auction(i) + FIRST_AUCTION_ID,
        item_name: text(&mut r, 20),
        description: text(&mut r, 100),
        initial_bid,
        reserve,
        date_time,
        expires,
        seller,
        category,
        extra: extra(&mut r, AVG_AUCTION_BYTES - 170),
    }
}

impl PersonParts {
    pub(crate) fn to_row(&self) -> Person {
        Person {
            id: self.id,
            name: format!("{} {}", self.first, self.last),
            email_address: format!("{}@{}.com", self.email.0, self.email.1),
            credit_card: format!(
                "{:04} {:04} {:04} {:04}",
                self.card[0], self.card[1], self.card[2], self.card[3]
            ),
            city: self.city.into(),
            state: self.state.into(),
            date_time: self.date_time,
            extra: self.extra.into(),
        }
    }
}

impl AuctionParts {
    pub(crate) fn to_row(&self) -> Auction {
        Auction {
            id: self.id,
            item_name: self.item_name.into(),
            description: self.description.into(),
            initial_bid: self.initial_bid,
            reserve: self.reserve,
            date_time: self.date_time,
            expires: self.expires,
            seller: self.seller,
            category: self.category,
            extra: self.extra.into(),
        }
    }
}

impl BidParts {
    pub(crate) fn to_row(&self) -> Bid {
        let (mut channel, mut url) = (String::new(), String::new());
        write_channel(&mut channel, &self.channel);
        write_url(&mut url, self.url_path, &self.channel);
        Bid {
            auction: self.auction,
            bidder: self.bidder,
            price: self.price,
            channel,
            url,
            date_time: self.date_time,
            extra: self.extra.into(),
        }
    }
}
