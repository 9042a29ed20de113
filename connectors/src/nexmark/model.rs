//! Nexmark records as plain structs (for references in tests and for users
//! who want rows), the Arrow schemas the sources emit, and the generator's
//! constants (Apache Beam's `GeneratorConfig` defaults).

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

/// Event time of event 0: 2015-07-15 00:00:00 UTC, in ms.
pub const BASE_TIME_MS: i64 = 1_436_918_400_000;
/// Ids of persons start here.
pub const FIRST_PERSON_ID: i64 = 1000;
/// Ids of auctions start here.
pub const FIRST_AUCTION_ID: i64 = 1000;
/// Categories start here.
pub const FIRST_CATEGORY_ID: i64 = 10;
/// Number of categories.
pub const NUM_CATEGORIES: i64 = 5;
/// Events per proportion period: 1 person, 3 auctions, 46 bids.
pub const PROPORTION_TOTAL: u64 = 50;
/// Persons per period.
pub const PERSON_PROPORTION: u64 = 1;
/// Auctions per period.
pub const AUCTION_PROPORTION: u64 = 3;
/// Bids per period.
pub const BID_PROPORTION: u64 = 46;
/// People bidding and selling at a time.
pub const NUM_ACTIVE_PEOPLE: i64 = 1000;
/// Auctions open at a time.
pub const NUM_IN_FLIGHT_AUCTIONS: i64 = 100;
/// Lead of person ids over the last one (references to the near future).
pub const PERSON_ID_LEAD: i64 = 10;
/// Lead of auction ids.
pub const AUCTION_ID_LEAD: i64 = 10;
/// 1 in this many auctions goes to a random seller, the rest to hot ones.
pub const HOT_SELLER_RATIO: u64 = 4;
/// 1 in this many bids goes to a random auction, the rest to hot ones.
pub const HOT_AUCTION_RATIO: u64 = 2;
/// 1 in this many bids comes from a random bidder, the rest from hot ones.
pub const HOT_BIDDER_RATIO: u64 = 4;
/// Hot ids are multiples of this.
pub const HOT_ID_STRIDE: i64 = 100;
/// Target average record sizes in bytes, as Beam counts them (padding goes
/// to `extra`).
pub const AVG_PERSON_BYTES: usize = 200;
/// See [`AVG_PERSON_BYTES`].
pub const AVG_AUCTION_BYTES: usize = 500;
/// See [`AVG_PERSON_BYTES`].
pub const AVG_BID_BYTES: usize = 100;

/// US states persons live in.
pub const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
/// US cities persons live in.
pub const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
/// First names.
pub const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
/// Last names.
pub const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
/// Hot bid channels (Flink nexmark); the others are `channel-N`.
pub const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
/// 1 in this many bids comes through a random channel, the rest through a hot one.
pub const HOT_CHANNELS_RATIO: u64 = 2;
/// Number of non-hot channels.
pub const CHANNELS_NUMBER: u64 = 10_000;

/// A new person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Person {
    /// Person id.
    pub id: i64,
    /// Full name.
    pub name: String,
    /// E-mail address.
    pub email_address: String,
    /// Credit card number.
    pub credit_card: String,
    /// City.
    pub city: String,
    /// State.
    pub state: String,
    /// Event time (ms).
    pub date_time: i64,
    /// Padding.
    pub extra: String,
}

/// A new auction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Auction {
    /// Auction id.
    pub id: i64,
    /// Item name.
    pub item_name: String,
    /// Description.
    pub description: String,
    /// Starting price.
    pub initial_bid: i64,
    /// Reserve price.
    pub reserve: i64,
    /// Event time (ms).
    pub date_time: i64,
    /// When the auction closes (ms).
    pub expires: i64,
    /// Seller (a person id).
    pub seller: i64,
    /// Category id.
    pub category: i64,
    /// Padding.
    pub extra: String,
}

/// A bid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bid {
    /// Auction id.
    pub auction: i64,
    /// Bidder (a person id).
    pub bidder: i64,
    /// Price in cents.
    pub price: i64,
    /// Channel.
    pub channel: String,
    /// URL.
    pub url: String,
    /// Event time (ms).
    pub date_time: i64,
    /// Padding.
    pub extra: String,
}

/// One generator event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// A person.
    Person(Person),
    /// An auction.
    Auction(Auction),
    /// A bid.
    Bid(Bid),
}

impl Event {
    /// The event's time (ms).
    pub fn date_time(&self) -> i64 {
        match self {
            Event::Person(p) => p.date_time,
            Event::Auction(a) => a.date_time,
            Event::Bid(b) => b.date_time,
        }
    }
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, None)
}

/// Schema of bid batches.
pub fn bid_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("bidder", DataType::Int64, false),
        Field::new("price", DataType::Int64, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("url", DataType::Utf8, false),
        Field::new("date_time", ts(), false),
        Field::new("extra", DataType::Utf8, false),
    ]))
}

/// Schema of person batches.
pub fn person_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("email_address", DataType::Utf8, false),
        Field::new("credit_card", DataType::Utf8, false),
        Field::new("city", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("date_time", ts(), false),
        Field::new("extra", DataType::Utf8, false),
    ]))
}

/// Schema of auction batches.
pub fn auction_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("item_name", DataType::Utf8, false),
        Field::new("description", DataType::Utf8, false),
        Field::new("initial_bid", DataType::Int64, false),
        Field::new("reserve", DataType::Int64, false),
        Field::new("date_time", ts(), false),
        Field::new("expires", ts(), false),
        Field::new("seller", DataType::Int64, false),
        Field::new("category", DataType::Int64, false),
        Field::new("extra", DataType::Utf8, false),
    ]))
}
