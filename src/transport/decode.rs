//! From a Kafka message value to an [`OrderEvent`], or the reason it is bad.

use crate::domain::{BadEvent, OrderEvent};

/// Parses a message value, refusing anything over `max_bytes` before parsing it.
pub fn decode(value: &[u8], max_bytes: usize) -> Result<OrderEvent, BadEvent> {
    if value.len() > max_bytes {
        return Err(BadEvent::TooLarge {
            size: value.len(),
            limit: max_bytes,
        });
    }
    OrderEvent::parse(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_values_are_refused_unparsed() {
        let ok = br#"{"order_id":"1","status":"created","created_at":"2025-08-06T12:00:00Z"}"#;
        assert!(decode(ok, ok.len()).is_ok());
        assert_eq!(
            decode(ok, ok.len() - 1),
            Err(BadEvent::TooLarge {
                size: ok.len(),
                limit: ok.len() - 1
            })
        );
    }
}
