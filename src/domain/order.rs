//! What identifies an order and what its status means for couriers (docs/rules.md).

use std::fmt;

/// The longest order id we accept: service-order uses short ids, and a bound keeps a hostile
/// payload from turning into a 10 KB primary key.
pub const ORDER_ID_MAX_LEN: usize = 128;

/// Why an order field did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseOrderError {
    /// The order id is empty or only whitespace.
    EmptyOrderId,
    /// The order id is longer than [`ORDER_ID_MAX_LEN`] bytes.
    OrderIdTooLong(usize),
    /// The order id holds a control character (it would break logs and the DLQ envelope).
    OrderIdControlChar,
    /// The status is not one service-order emits.
    UnknownStatus(String),
}

impl fmt::Display for ParseOrderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyOrderId => write!(f, "order_id is empty"),
            Self::OrderIdTooLong(n) => {
                write!(f, "order_id is {n} bytes long (at most {ORDER_ID_MAX_LEN})")
            }
            Self::OrderIdControlChar => write!(f, "order_id contains a control character"),
            Self::UnknownStatus(s) => write!(f, "unsupported status {s:?}"),
        }
    }
}

impl std::error::Error for ParseOrderError {}

/// An order's id as service-order sends it: a non-empty string of at most 128 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderId(String);

impl OrderId {
    /// Parses an order id: whitespace around it is dropped (`" 42 "` is order `42`: a padded id
    /// from a producer is the same order, not a new one); then non-empty, at most
    /// [`ORDER_ID_MAX_LEN`] bytes, no control characters.
    pub fn parse(raw: impl Into<String>) -> Result<Self, ParseOrderError> {
        let mut raw = raw.into();
        let trimmed = raw.trim();
        if trimmed.len() != raw.len() {
            raw = trimmed.to_owned();
        }
        if raw.is_empty() {
            return Err(ParseOrderError::EmptyOrderId);
        }
        if raw.len() > ORDER_ID_MAX_LEN {
            return Err(ParseOrderError::OrderIdTooLong(raw.len()));
        }
        if raw.chars().any(char::is_control) {
            return Err(ParseOrderError::OrderIdControlChar);
        }
        Ok(Self(raw))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// What ended a delivery that counts: an order event (`completed`, `delivered`), or the deadline
/// pass at the delivery's deadline (docs/rules.md, `DEADLINE_POLICY=complete`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompletedBy {
    /// A `completed` or `delivered` event.
    Event,
    /// The deadline pass: the delivery was still active at its deadline.
    Deadline,
}

impl CompletedBy {
    /// The spelling stored in `courier_orders.completed_by` and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Event => "event",
            Self::Deadline => "deadline",
        }
    }
}

impl std::str::FromStr for CompletedBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "event" => Ok(Self::Event),
            "deadline" => Ok(Self::Deadline),
            other => Err(format!("completed_by {other:?} is not event or deadline")),
        }
    }
}

/// What happens to couriers for a status: the factory maps each family to one handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusFamily {
    /// `created`: pick a courier or wait for one.
    Assign,
    /// `cancelled`, `canceled`, `deleted`: the delivery disappears.
    Cancel,
    /// `completed`, `delivered`: the delivery is done and counts.
    Complete,
    /// Progress statuses with no effect on couriers.
    Ignore,
}

impl StatusFamily {
    /// A short lowercase name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Assign => "assign",
            Self::Cancel => "cancel",
            Self::Complete => "complete",
            Self::Ignore => "ignore",
        }
    }
}

/// Every status the real service-order emits, spelled as it spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    Created,
    Pending,
    Confirmed,
    Cooking,
    Delivering,
    Updated,
    Cancelled,
    Canceled,
    Deleted,
    Completed,
    Delivered,
}

impl OrderStatus {
    /// Every status, for tests and the simulator.
    pub const ALL: [OrderStatus; 11] = [
        Self::Created,
        Self::Pending,
        Self::Confirmed,
        Self::Cooking,
        Self::Delivering,
        Self::Updated,
        Self::Cancelled,
        Self::Canceled,
        Self::Deleted,
        Self::Completed,
        Self::Delivered,
    ];

    /// Parses a status case-insensitively (surrounding whitespace is ignored).
    pub fn parse(raw: &str) -> Result<Self, ParseOrderError> {
        let lower = raw.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == lower)
            .ok_or_else(|| ParseOrderError::UnknownStatus(raw.chars().take(64).collect()))
    }

    /// The canonical lowercase spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Pending => "pending",
            Self::Confirmed => "confirmed",
            Self::Cooking => "cooking",
            Self::Delivering => "delivering",
            Self::Updated => "updated",
            Self::Cancelled => "cancelled",
            Self::Canceled => "canceled",
            Self::Deleted => "deleted",
            Self::Completed => "completed",
            Self::Delivered => "delivered",
        }
    }

    /// What the status means for couriers (the table in docs/rules.md).
    pub fn family(self) -> StatusFamily {
        match self {
            Self::Created => StatusFamily::Assign,
            Self::Cancelled | Self::Canceled | Self::Deleted => StatusFamily::Cancel,
            Self::Completed | Self::Delivered => StatusFamily::Complete,
            Self::Pending | Self::Confirmed | Self::Cooking | Self::Delivering | Self::Updated => {
                StatusFamily::Ignore
            }
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_id_trims_and_rejects_empty_blank_long_and_control() {
        assert_eq!(OrderId::parse(""), Err(ParseOrderError::EmptyOrderId));
        assert_eq!(OrderId::parse("  "), Err(ParseOrderError::EmptyOrderId));
        assert_eq!(
            OrderId::parse("x".repeat(129)),
            Err(ParseOrderError::OrderIdTooLong(129))
        );
        assert_eq!(
            OrderId::parse("a\nb"),
            Err(ParseOrderError::OrderIdControlChar)
        );
        assert_eq!(OrderId::parse("x".repeat(128)).map(|o| o.0.len()), Ok(128));
        // Whitespace around an id is not part of it; inside, it is.
        assert_eq!(OrderId::parse(" 7\t\n"), OrderId::parse("7"));
        assert_eq!(OrderId::parse(" a b ").map(|o| o.0), Ok("a b".to_owned()));
        let padded = format!(" {} ", "x".repeat(128));
        assert_eq!(OrderId::parse(padded).map(|o| o.0.len()), Ok(128));
        assert_eq!(
            OrderId::parse("ord-1").map(|o| o.to_string()),
            Ok("ord-1".into())
        );
    }

    #[test]
    fn every_status_round_trips_case_insensitively() {
        for s in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(s.as_str()), Ok(s));
            assert_eq!(OrderStatus::parse(&s.as_str().to_uppercase()), Ok(s));
            assert_eq!(OrderStatus::parse(&format!(" {s} ")), Ok(s));
        }
    }

    #[test]
    fn aliases_map_to_their_family() {
        use StatusFamily::*;
        let family = |s: &str| OrderStatus::parse(s).map(OrderStatus::family);
        assert_eq!(family("created"), Ok(Assign));
        for s in ["cancelled", "canceled", "deleted", "CANCELED"] {
            assert_eq!(family(s), Ok(Cancel), "{s}");
        }
        for s in ["completed", "delivered"] {
            assert_eq!(family(s), Ok(Complete), "{s}");
        }
        for s in ["pending", "confirmed", "cooking", "delivering", "updated"] {
            assert_eq!(family(s), Ok(Ignore), "{s}");
        }
    }

    #[test]
    fn unknown_status_is_an_error_value() {
        assert_eq!(
            OrderStatus::parse("lost"),
            Err(ParseOrderError::UnknownStatus("lost".into()))
        );
        assert!(OrderStatus::parse("").is_err());
        // A huge status is cut in the error so it can't flood a log line.
        match OrderStatus::parse(&"z".repeat(10_000)) {
            Err(ParseOrderError::UnknownStatus(s)) => assert_eq!(s.len(), 64),
            other => panic!("unexpected {other:?}"),
        }
    }
}
