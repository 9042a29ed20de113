//! The Nexmark generator's arithmetic, after Apache Beam's `NexmarkGenerator`
//! and the Flink nexmark generator (`GeneratorConfig` defaults): event `i`
//! is a person, an auction or a bid by `i % 50` (1:3:46), ids refer back to
//! earlier (or slightly future) persons and auctions, and every field of
//! event `i` comes from a small RNG seeded by `(seed, i)` alone. So the event
//! set is the same whatever the parallelism or batch size, and a subtask can
//! jump straight to the events of the one type it emits.
//!
//! Strings are slices of a fixed pool of random text (no per-row string
//! generation), with the lengths Beam/Flink draw; the bid channels and URLs
//! come from a table built once per seed, like Flink's channel cache.

use std::sync::OnceLock;

use super::model::*;

/// The SplitMix64 / MurmurHash3 finalizer: a good 64-bit bijective mixer.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64: tiny, fast and stable across platforms and crate versions
/// (the event set must never change under a dependency upgrade).
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// The stream for event `event` under `seed`. The state is hashed (not
    /// just offset) so that neighbouring events get unrelated streams.
    pub(crate) fn for_event(seed: u64, event: u64) -> Self {
        Rng(mix64(seed ^ mix64(event.wrapping_add(GOLDEN))))
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix64(self.0)
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-shift (Lemire), no division.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
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

/// The event number of the `j`-th event (0-based) of `kind`.
pub fn event_of(kind: Kind, j: u64) -> u64 {
    let (per, lo) = kind_slot(kind);
    (j / per) * PROPORTION_TOTAL + lo + j % per
}

/// How many events of `kind` are among the first `events` events.
pub fn count_of(kind: Kind, events: u64) -> u64 {
    let (per, lo) = kind_slot(kind);
    let rest = events % PROPORTION_TOTAL;
    (events / PROPORTION_TOTAL) * per + rest.saturating_sub(lo).min(per)
}

/// Events of `kind` per period, and the offset of the first one in it.
fn kind_slot(kind: Kind) -> (u64, u64) {
    match kind {
        Kind::Person => (PERSON_PROPORTION, 0),
        Kind::Auction => (AUCTION_PROPORTION, PERSON_PROPORTION),
        Kind::Bid => (BID_PROPORTION, PERSON_PROPORTION + AUCTION_PROPORTION),
    }
}

/// Beam's `lastBase0PersonId`: the newest person at event `i` (the person
/// itself if `i` is a person).
fn last_person(i: u64) -> i64 {
    let epoch = i / PROPORTION_TOTAL;
    let mut offset = i % PROPORTION_TOTAL;
    if offset >= PERSON_PROPORTION {
        // An auction or bid: back to the period's last person.
        offset = PERSON_PROPORTION - 1;
    }
    (epoch * PERSON_PROPORTION + offset) as i64
}

/// Beam's `lastBase0AuctionId`: the newest auction at event `i` (-1 before
/// the first one).
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

/// Beam's `nextBase0PersonId`: one of the active people, or a few ahead.
fn next_person(i: u64, r: &mut Rng) -> i64 {
    let people = last_person(i) + 1;
    let active = people.min(NUM_ACTIVE_PEOPLE);
    people - active + r.below((active + PERSON_ID_LEAD) as u64) as i64
}

/// Beam's `nextBase0AuctionId`: one of the in-flight auctions, or a few ahead.
fn next_auction(i: u64, r: &mut Rng) -> i64 {
    let max = last_auction(i).max(0);
    let min = (max - NUM_IN_FLIGHT_AUCTIONS).max(0);
    min + r.below((max - min + 1 + AUCTION_ID_LEAD) as u64) as i64
}

/// Beam's `nextPrice`: log-uniform from 1 to 1,000,000 dollars, in cents.
fn price(r: &mut Rng) -> i64 {
    // 10^(6u) as e^(6u ln 10): `exp` is much cheaper than `powf`, and
    // adding 0.5 rounds a positive number without a libm call.
    ((r.unit() * (6.0 * std::f64::consts::LN_10)).exp() * 100.0 + 0.5) as i64
}

const POOL_LEN: usize = 1 << 16;

/// Random text strings are sliced from: lowercase letters only (Beam's
/// `nextExactString`), and letters with a space 1 in 13 (`nextString`).
struct Pools {
    letters: String,
    spaced: String,
}

fn pools() -> &'static Pools {
    static POOLS: OnceLock<Pools> = OnceLock::new();
    POOLS.get_or_init(|| {
        let mut r = Rng::for_event(0x5EED, 0);
        let letters = (0..POOL_LEN)
            .map(|_| (b'a' + r.below(26) as u8) as char)
            .collect();
        let spaced = (0..POOL_LEN)
            .map(|_| match r.below(13) {
                0 => ' ',
                _ => (b'a' + r.below(26) as u8) as char,
            })
            .collect();
        Pools { letters, spaced }
    })
}

fn slice(pool: &'static str, r: &mut Rng, len: usize) -> &'static str {
    let len = len.min(POOL_LEN);
    let start = r.below((POOL_LEN - len + 1) as u64) as usize;
    &pool[start..start + len]
}

/// Beam's `nextString(max)`: 3 to `max - 1` characters with some spaces,
/// trimmed.
fn next_string(r: &mut Rng, max: usize) -> &'static str {
    let len = MIN_STRING_LENGTH + r.below((max - MIN_STRING_LENGTH) as u64) as usize;
    slice(&pools().spaced, r, len).trim()
}

/// Beam's `nextExtra`: padding so that a record's size averages `avg` bytes
/// (±20 %), given the `current` size of its other fields.
fn next_extra(r: &mut Rng, current: usize, avg: usize) -> &'static str {
    if current > avg {
        return "";
    }
    let want = avg - current;
    // Java's Math.round(want * 0.2), in integers.
    let delta = (want * 2 + 5) / 10;
    let size = want - delta
        + if delta == 0 {
            0
        } else {
            r.below(2 * delta as u64) as usize
        };
    slice(&pools().letters, r, size)
}

/// Shortest string `next_string` returns before trimming.
const MIN_STRING_LENGTH: usize = 3;

/// Event times: event `i` at `BASE_TIME_MS + i / rate`, moved back by up to
/// `disorder` ms.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub(crate) seed: u64,
    pub(crate) rate: u64,
    pub(crate) disorder: i64,
}

impl Clock {
    /// Event time of event `i` before disorder.
    pub(crate) fn base_time(&self, i: u64) -> i64 {
        let rate = self.rate.max(1);
        // u128 division is slow; it is only needed past ~1.8e16 events.
        let offset = match i.checked_mul(1000) {
            Some(ms) => ms / rate,
            None => (i as u128 * 1000 / rate as u128) as u64,
        };
        BASE_TIME_MS + offset as i64
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

/// Flink nexmark's bid channels: four hot ones with fixed URLs, picked half
/// the time, and `channel-0` .. `channel-9999`, each with its own URL that
/// carries `&channel_id=` nine times in ten. Built once per seed.
#[derive(Debug)]
pub(crate) struct Channels {
    /// `(channel, url)`: the hot channels first, then `channel-N` at `4 + N`.
    entries: Vec<(String, String)>,
}

impl Channels {
    pub(crate) fn new(seed: u64) -> Self {
        // Streams of their own, apart from any event's.
        let seed = mix64(seed ^ 0xC4A2_2E15_0000_0001);
        let mut entries = Vec::with_capacity(HOT_CHANNELS.len() + CHANNELS_NUMBER as usize);
        for (k, name) in HOT_CHANNELS.iter().enumerate() {
            let mut r = Rng::for_event(seed, k as u64);
            entries.push((name.to_string(), base_url(&mut r)));
        }
        for n in 0..CHANNELS_NUMBER {
            let mut r = Rng::for_event(seed, (HOT_CHANNELS.len() as u64) + n);
            let mut url = base_url(&mut r);
            if r.below(10) > 0 {
                // Flink's Math.abs(Integer.reverse(n)).
                let id = (n as u32).reverse_bits() as i32;
                url.push_str(&format!("&channel_id={}", id.unsigned_abs()));
            }
            entries.push((format!("channel-{n}"), url));
        }
        Channels { entries }
    }

    /// Channel name and URL of table entry `k`.
    pub(crate) fn get(&self, k: u32) -> (&str, &str) {
        let (c, u) = &self.entries[k as usize];
        (c, u)
    }

    /// The entry a bid picks.
    fn pick(r: &mut Rng) -> u32 {
        if r.below(HOT_CHANNELS_RATIO) > 0 {
            r.below(HOT_CHANNELS.len() as u64) as u32
        } else {
            HOT_CHANNELS.len() as u32 + r.below(CHANNELS_NUMBER) as u32
        }
    }
}

/// Flink's `getBaseUrl`: three random directories (with `_` for spaces).
fn base_url(r: &mut Rng) -> String {
    let mut url = String::from("https://www.nexmark.com/");
    for _ in 0..3 {
        let len = MIN_STRING_LENGTH + r.below((5 - MIN_STRING_LENGTH) as u64) as usize;
        for _ in 0..len {
            url.push(match r.below(13) {
                0 => '_',
                _ => (b'a' + r.below(26) as u8) as char,
            });
        }
        url.push('/');
    }
    url.push_str("item.htm?query=1");
    url
}

/// The fields of a bid; strings borrowed from static text or the channel table.
pub(crate) struct BidParts {
    pub(crate) auction: i64,
    pub(crate) bidder: i64,
    pub(crate) price: i64,
    /// Entry in [`Channels`].
    pub(crate) channel: u32,
    pub(crate) date_time: i64,
    pub(crate) extra: &'static str,
}

/// Bid event `i`.
pub(crate) fn bid(c: &Clock, i: u64) -> BidParts {
    let mut r = Rng::for_event(c.seed, i);
    let date_time = c.time(i, &mut r);
    let auction = if r.below(HOT_AUCTION_RATIO) > 0 {
        // The first auction of the last HOT_ID_STRIDE ones.
        (last_auction(i).max(0) / HOT_ID_STRIDE) * HOT_ID_STRIDE
    } else {
        next_auction(i, &mut r)
    } + FIRST_AUCTION_ID;
    let bidder = if r.below(HOT_BIDDER_RATIO) > 0 {
        // The second person of the batch, so hot bidders and sellers differ.
        (last_person(i) / HOT_ID_STRIDE) * HOT_ID_STRIDE + 1
    } else {
        next_person(i, &mut r)
    } + FIRST_PERSON_ID;
    let price = price(&mut r);
    let channel = Channels::pick(&mut r);
    // Beam counts the four numeric fields only.
    let extra = next_extra(&mut r, 32, AVG_BID_BYTES);
    BidParts {
        auction,
        bidder,
        price,
        channel,
        date_time,
        extra,
    }
}

/// The fields of a person.
pub(crate) struct PersonParts {
    pub(crate) id: i64,
    pub(crate) first: &'static str,
    pub(crate) last: &'static str,
    pub(crate) email: (&'static str, &'static str),
    pub(crate) card: [u16; 4],
    pub(crate) city: &'static str,
    pub(crate) state: &'static str,
    pub(crate) date_time: i64,
    pub(crate) extra: &'static str,
}

/// Length of a credit card number `dddd dddd dddd dddd`.
pub(crate) const CARD_LEN: usize = 19;

/// Person event `i`.
pub(crate) fn person(c: &Clock, i: u64) -> PersonParts {
    let mut r = Rng::for_event(c.seed, i);
    let date_time = c.time(i, &mut r);
    let first = FIRST_NAMES[r.below(FIRST_NAMES.len() as u64) as usize];
    let last = LAST_NAMES[r.below(LAST_NAMES.len() as u64) as usize];
    let email = (next_string(&mut r, 7), next_string(&mut r, 5));
    let card = [0; 4].map(|_: u16| r.below(10_000) as u16);
    let city = US_CITIES[r.below(US_CITIES.len() as u64) as usize];
    let state = US_STATES[r.below(US_STATES.len() as u64) as usize];
    let current = 8
        + (first.len() + 1 + last.len())
        + (email.0.len() + 1 + email.1.len() + 4)
        + CARD_LEN
        + city.len()
        + state.len();
    PersonParts {
        id: last_person(i) + FIRST_PERSON_ID,
        first,
        last,
        email,
        card,
        city,
        state,
        date_time,
        extra: next_extra(&mut r, current, AVG_PERSON_BYTES),
    }
}

/// Writes `dddd dddd dddd dddd` into `out`.
pub(crate) fn card_digits(card: &[u16; 4], out: &mut [u8; CARD_LEN]) {
    for (k, n) in card.iter().enumerate() {
        let at = k * 5;
        let mut n = *n;
        for d in (0..4).rev() {
            out[at + d] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        if k < 3 {
            out[at + 4] = b' ';
        }
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

/// Auction event `i`.
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
    // Beam's nextAuctionLengthMs: about as long as it takes the next
    // NUM_IN_FLIGHT_AUCTIONS auctions to open, so that many are in flight.
    let ahead = (NUM_IN_FLIGHT_AUCTIONS as u64 * PROPORTION_TOTAL) / AUCTION_PROPORTION;
    let horizon = (c.base_time(i + ahead) - c.base_time(i)).max(1);
    let expires = c.base_time(i) + 1 + r.below((horizon * 2) as u64) as i64;
    let item_name = next_string(&mut r, 20);
    let description = next_string(&mut r, 100);
    let reserve = initial_bid + price(&mut r);
    let current = 8 + item_name.len() + description.len() + 8 * 5;
    AuctionParts {
        id: last_auction(i) + FIRST_AUCTION_ID,
        item_name,
        description,
        initial_bid,
        reserve,
        date_time,
        expires,
        seller,
        category,
        extra: next_extra(&mut r, current, AVG_AUCTION_BYTES),
    }
}

impl PersonParts {
    pub(crate) fn to_row(&self) -> Person {
        let mut card = [0u8; CARD_LEN];
        card_digits(&self.card, &mut card);
        Person {
            id: self.id,
            name: format!("{} {}", self.first, self.last),
            email_address: format!("{}@{}.com", self.email.0, self.email.1),
            credit_card: String::from_utf8_lossy(&card).into_owned(),
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
    pub(crate) fn to_row(&self, channels: &Channels) -> Bid {
        let (channel, url) = channels.get(self.channel);
        Bid {
            auction: self.auction,
            bidder: self.bidder,
            price: self.price,
            channel: channel.into(),
            url: url.into(),
            date_time: self.date_time,
            extra: self.extra.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_ordinals_and_counts_agree() {
        for kind in [Kind::Person, Kind::Auction, Kind::Bid] {
            let ids: Vec<u64> = (0..500).filter(|&i| kind_of(i) == kind).collect();
            for (j, &i) in ids.iter().enumerate() {
                assert_eq!(event_of(kind, j as u64), i);
            }
            for n in 0..500 {
                let want = (0..n).filter(|&i| kind_of(i) == kind).count() as u64;
                assert_eq!(count_of(kind, n), want, "{kind:?} in {n}");
            }
        }
    }

    #[test]
    fn last_ids_follow_beam() {
        // Event 0 is person 0; auctions 0, 1, 2 are events 1..=3.
        assert_eq!((last_person(0), last_auction(0)), (0, -1));
        assert_eq!(last_auction(1), 0);
        assert_eq!(last_auction(3), 2);
        assert_eq!(last_auction(4), 2);
        assert_eq!((last_person(50), last_auction(50)), (1, 2));
        assert_eq!(last_auction(51), 3);
    }

    #[test]
    fn strings_have_beam_lengths() {
        let mut r = Rng::for_event(1, 2);
        for _ in 0..1000 {
            let s = next_string(&mut r, 20);
            assert!(s.len() < 20 && s == s.trim());
            let e = next_extra(&mut r, 32, 100);
            assert!((54..82).contains(&e.len()), "{}", e.len());
        }
        assert_eq!(next_extra(&mut r, 120, 100), "");
    }

    #[test]
    fn credit_cards_are_zero_padded() {
        let mut out = [0u8; CARD_LEN];
        card_digits(&[7, 1234, 0, 99], &mut out);
        assert_eq!(&out, b"0007 1234 0000 0099");
    }

    #[test]
    fn channel_table_is_deterministic_and_flink_shaped() {
        let (a, b) = (Channels::new(9), Channels::new(9));
        assert_eq!(a.entries, b.entries);
        assert_eq!(a.get(0).0, "Google");
        let (name, url) = a.get(4 + 1234);
        assert_eq!(name, "channel-1234");
        assert!(url.starts_with("https://www.nexmark.com/"));
        assert_eq!(url.split('/').count(), 7, "{url}");
        let tagged = a
            .entries
            .iter()
            .filter(|e| e.1.contains("&channel_id="))
            .count();
        assert!((8_500..9_500).contains(&tagged), "{tagged}");
    }
}
