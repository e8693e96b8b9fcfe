//! The order event as it arrives on `order.status.changed`, and every way it can be bad.

use std::fmt;

use chrono::{DateTime, SubsecRound, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::order::{OrderId, OrderStatus, ParseOrderError};

/// One order-status event, parsed: the only shape the usecases ever see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderEvent {
    /// Which order changed.
    pub order_id: OrderId,
    /// Its new status.
    pub status: OrderStatus,
    /// When service-order sent it; also the time every effect of the event is stamped with, so a
    /// replayed event writes exactly what the first delivery wrote.
    pub created_at: DateTime<Utc>,
}

/// Why a payload is not an order event. Each one goes to the dead-letter topic with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadEvent {
    /// The bytes are not UTF-8.
    NotUtf8,
    /// The bytes are not JSON, or JSON nested deeper than the parser allows.
    InvalidJson(String),
    /// The JSON is valid but not an object.
    NotAnObject,
    /// A required field is absent or null.
    MissingField(&'static str),
    /// A required field has the wrong type or an invalid value.
    InvalidField {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The status is not one service-order emits.
    UnsupportedStatus(String),
    /// The payload is larger than the configured limit (checked by the transport).
    TooLarge {
        /// The payload's size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The payload is empty (a tombstone or a producer bug).
    Empty,
    /// `created_at` is further ahead of this machine's clock than [`MAX_CLOCK_SKEW`]: stamped
    /// with it, the order's courier would rank last for as long as the clock lags.
    FutureCreatedAt {
        /// What the event says.
        created_at: DateTime<Utc>,
        /// The latest `created_at` accepted when it arrived.
        limit: DateTime<Utc>,
    },
}

impl BadEvent {
    /// A stable machine-readable reason, used as the dead-letter `reason` and a metrics label.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotUtf8 => "not_utf8",
            Self::InvalidJson(_) => "invalid_json",
            Self::NotAnObject => "not_an_object",
            Self::MissingField(_) => "missing_field",
            Self::InvalidField { .. } => "invalid_field",
            Self::UnsupportedStatus(_) => "unsupported_status",
            Self::TooLarge { .. } => "too_large",
            Self::Empty => "empty",
            Self::FutureCreatedAt { .. } => "invalid_created_at",
        }
    }
}

impl fmt::Display for BadEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotUtf8 => write!(f, "payload is not valid UTF-8"),
            Self::InvalidJson(e) => write!(f, "payload is not valid JSON: {e}"),
            Self::NotAnObject => write!(f, "payload is not a JSON object"),
            Self::MissingField(name) => write!(f, "field {name} is missing or null"),
            Self::InvalidField { field, reason } => write!(f, "field {field} is invalid: {reason}"),
            Self::UnsupportedStatus(s) => write!(f, "unsupported status {s:?}"),
            Self::TooLarge { size, limit } => {
                write!(f, "payload is {size} bytes, over the {limit}-byte limit")
            }
            Self::Empty => write!(f, "payload is empty"),
            Self::FutureCreatedAt { created_at, limit } => write!(
                f,
                "created_at {} is in the future (more than {} min ahead of this clock: after {})",
                created_at.to_rfc3339(),
                MAX_CLOCK_SKEW.num_minutes(),
                limit.to_rfc3339()
            ),
        }
    }
}

impl std::error::Error for BadEvent {}

/// The wire shape: only the three fields we need, each kept loose so a wrong type gets a precise
/// reason; every other field is skipped without being built.
#[derive(Deserialize)]
struct WireEvent {
    #[serde(default)]
    order_id: Option<Value>,
    #[serde(default)]
    status: Option<Value>,
    #[serde(default)]
    created_at: Option<Value>,
}

/// How far an event's `created_at` may be ahead of this machine's clock: clocks of two machines
/// disagree by seconds, not minutes. Later than that, the event is bad input (see
/// [`BadEvent::FutureCreatedAt`]).
pub const MAX_CLOCK_SKEW: chrono::Duration = chrono::Duration::minutes(5);

impl OrderEvent {
    /// Parses a Kafka message value, checking `created_at` against the clock now. Never panics,
    /// whatever the bytes.
    pub fn parse(payload: &[u8]) -> Result<Self, BadEvent> {
        Self::parse_at(payload, Utc::now())
    }

    /// Parses a Kafka message value received at `now`: a `created_at` later than `now` plus
    /// [`MAX_CLOCK_SKEW`] is refused.
    pub fn parse_at(payload: &[u8], now: DateTime<Utc>) -> Result<Self, BadEvent> {
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Err(BadEvent::Empty);
        }
        let text = std::str::from_utf8(payload).map_err(|_| BadEvent::NotUtf8)?;
        // serde would read an array as a struct's fields in order; an event must be an object.
        if !text.trim_start().starts_with('{') {
            return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) => BadEvent::NotAnObject,
                Err(e) => BadEvent::InvalidJson(e.to_string()),
            });
        }
        let wire: WireEvent = serde_json::from_str(text).map_err(|e| {
            if e.is_data() {
                BadEvent::NotAnObject
            } else {
                BadEvent::InvalidJson(e.to_string())
            }
        })?;

        let order_id = match wire.order_id {
            None => return Err(BadEvent::MissingField("order_id")),
            Some(Value::String(s)) => OrderId::parse(s),
            Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => OrderId::parse(u.to_string()),
                (None, Some(i)) => OrderId::parse(i.to_string()),
                _ => return Err(invalid("order_id", "a number that is not an integer")),
            },
            Some(other) => return Err(invalid("order_id", type_name(&other))),
        }
        .map_err(|e| invalid("order_id", e.to_string()))?;

        let status = match wire.status {
            None => return Err(BadEvent::MissingField("status")),
            Some(Value::String(s)) => OrderStatus::parse(&s).map_err(|e| match e {
                ParseOrderError::UnknownStatus(s) => BadEvent::UnsupportedStatus(s),
                other => invalid("status", other.to_string()),
            })?,
            Some(other) => return Err(invalid("status", type_name(&other))),
        };

        let created_at = match wire.created_at {
            None => return Err(BadEvent::MissingField("created_at")),
            Some(Value::String(s)) => DateTime::parse_from_rfc3339(s.trim())
                .map_err(|e| invalid("created_at", format!("not RFC 3339 ({e})")))?
                .with_timezone(&Utc)
                // PostgreSQL keeps microseconds; so do we, so both stores hold the same instant.
                .trunc_subsecs(6),
            Some(other) => return Err(invalid("created_at", type_name(&other))),
        };
        let limit = now + MAX_CLOCK_SKEW;
        if created_at > limit {
            return Err(BadEvent::FutureCreatedAt { created_at, limit });
        }

        Ok(Self {
            order_id,
            status,
            created_at,
        })
    }

    /// The JSON service-order would send for this event (used by the simulator and tests).
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "order_id": self.order_id.as_str(),
            "status": self.status.as_str(),
            "created_at": self.created_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        })
        .to_string()
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> BadEvent {
    BadEvent::InvalidField {
        field,
        reason: reason.into(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean, not a string",
        Value::Number(_) => "a number, not a string",
        Value::String(_) => "a string",
        Value::Array(_) => "an array, not a string",
        Value::Object(_) => "an object, not a string",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<OrderEvent, BadEvent> {
        OrderEvent::parse(s.as_bytes())
    }

    #[test]
    fn parses_the_assignment_example() {
        let e =
            parse(r#"{"order_id":"123","status":"created","created_at":"2025-08-06T12:00:00Z"}"#)
                .expect("valid");
        assert_eq!(e.order_id.as_str(), "123");
        assert_eq!(e.status, OrderStatus::Created);
        assert_eq!(e.created_at.to_rfc3339(), "2025-08-06T12:00:00+00:00");
    }

    #[test]
    fn accepts_numbers_fractions_offsets_unknown_fields_and_case() {
        let e = parse(
            r#"{"order_id":42,"status":"DELIVERED","created_at":"2025-08-06T14:00:00.123456+02:00","extra":{"a":[1,2]}}"#,
        )
        .expect("valid");
        assert_eq!(e.order_id.as_str(), "42");
        assert_eq!(e.status, OrderStatus::Delivered);
        assert_eq!(
            e.created_at.to_rfc3339(),
            "2025-08-06T12:00:00.123456+00:00"
        );
    }

    #[test]
    fn every_bad_shape_has_its_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b"\xff\xfe{}", "not_utf8"),
            (b"{\"order_id\":", "invalid_json"),
            (b"[1,2,3]", "not_an_object"),
            (b"\"created\"", "not_an_object"),
            (
                br#"{"status":"created","created_at":"2025-08-06T12:00:00Z"}"#,
                "missing_field",
            ),
            (
                br#"{"order_id":null,"status":"created","created_at":"2025-08-06T12:00:00Z"}"#,
                "missing_field",
            ),
            (
                br#"{"order_id":"1","created_at":"2025-08-06T12:00:00Z"}"#,
                "missing_field",
            ),
            (br#"{"order_id":"1","status":"created"}"#, "missing_field"),
            (
                br#"{"order_id":"","status":"created","created_at":"2025-08-06T12:00:00Z"}"#,
                "invalid_field",
            ),
            (
                br#"{"order_id":1.5,"status":"created","created_at":"2025-08-06T12:00:00Z"}"#,
                "invalid_field",
            ),
            (
                br#"{"order_id":["1"],"status":"created","created_at":"2025-08-06T12:00:00Z"}"#,
                "invalid_field",
            ),
            (
                br#"{"order_id":"1","status":7,"created_at":"2025-08-06T12:00:00Z"}"#,
                "invalid_field",
            ),
            (
                br#"{"order_id":"1","status":"created","created_at":"yesterday"}"#,
                "invalid_field",
            ),
            (
                br#"{"order_id":"1","status":"created","created_at":1754481600}"#,
                "invalid_field",
            ),
            (
                br#"{"order_id":"1","status":"shipped","created_at":"2025-08-06T12:00:00Z"}"#,
                "unsupported_status",
            ),
        ];
        for (payload, code) in cases {
            let got = OrderEvent::parse(payload);
            assert_eq!(
                got.as_ref().map_err(BadEvent::code),
                Err(*code),
                "payload {:?}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn created_at_more_than_the_skew_ahead_of_the_clock_is_bad_input() {
        let now = DateTime::parse_from_rfc3339("2025-08-06T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let at = |t: &str| {
            format!(r#"{{"order_id":"1","status":"created","created_at":"{t}"}}"#).into_bytes()
        };
        // Up to the skew ahead: accepted, stamped as sent.
        let e = OrderEvent::parse_at(&at("2025-08-06T12:05:00Z"), now).expect("within skew");
        assert_eq!(e.created_at, now + MAX_CLOCK_SKEW);
        assert!(OrderEvent::parse_at(&at("1999-01-01T00:00:00Z"), now).is_ok());
        // A microsecond later: dead-lettered with its own reason.
        let bad = OrderEvent::parse_at(&at("2025-08-06T12:05:00.000001Z"), now)
            .expect_err("beyond the skew");
        assert_eq!(bad.code(), "invalid_created_at");
        assert!(bad.to_string().contains("in the future"), "{bad}");
        let far = OrderEvent::parse_at(&at("2125-08-06T12:00:00Z"), now).expect_err("far");
        assert_eq!(far.code(), "invalid_created_at");
    }

    #[test]
    fn whitespace_around_the_order_id_is_the_same_order() {
        let padded = parse(
            "{\"order_id\":\" \\t42 \",\"status\":\"created\",\"created_at\":\"2025-08-06T12:00:00Z\"}",
        )
        .expect("valid");
        let plain =
            parse(r#"{"order_id":42,"status":"created","created_at":"2025-08-06T12:00:00Z"}"#)
                .expect("valid");
        assert_eq!(padded.order_id, plain.order_id);
        assert_eq!(padded.order_id.as_str(), "42");
    }

    #[test]
    fn deep_nesting_never_overflows_the_stack() {
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        // In a field we need: the parser's depth limit turns it into an error.
        let deep = format!(
            r#"{{"order_id":{},"status":"created","created_at":"2025-08-06T12:00:00Z"}}"#,
            nest(100_000)
        );
        assert_eq!(parse(&deep).map_err(|e| e.code()), Err("invalid_json"));
        // In a field we skip: skipped without recursion, the event stands.
        let skipped = format!(
            r#"{{"order_id":"1","status":"created","created_at":"2025-08-06T12:00:00Z","x":{}}}"#,
            nest(100_000)
        );
        assert!(parse(&skipped).is_ok());
        assert_eq!(
            OrderEvent::parse(nest(100_000).as_bytes()).map_err(|e| e.code()),
            Err("not_an_object")
        );
    }

    #[test]
    fn seeded_garbage_never_panics() {
        // A small deterministic fuzz: random bytes and mutated valid events.
        let valid = br#"{"order_id":"123","status":"created","created_at":"2025-08-06T12:00:00Z"}"#;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut bytes = valid.to_vec();
            for _ in 0..(next() % 6) {
                let i = (next() as usize) % bytes.len();
                bytes[i] = next() as u8;
            }
            let cut = (next() as usize) % (bytes.len() + 1);
            let _ = OrderEvent::parse(&bytes[..cut]);
            let _ = OrderEvent::parse(&bytes);
        }
    }

    #[test]
    fn to_json_round_trips() {
        let e = parse(
            r#"{"order_id":"a-1","status":"canceled","created_at":"2025-08-06T12:00:00.5Z"}"#,
        )
        .expect("valid");
        assert_eq!(OrderEvent::parse(e.to_json().as_bytes()), Ok(e));
    }
}
