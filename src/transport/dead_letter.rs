//! The dead-letter topic: where a bad event goes with its reason, its source position and its
//! payload, so nothing is lost and nothing blocks its partition.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use kafka::client::{KafkaClient, RequiredAcks};
use kafka::producer::{Producer, Record};
use serde_json::json;

use super::client::{ClientError, DeadLetterProducer};

/// The most payload bytes copied into an envelope: keeps every envelope far below the broker's
/// default 1 MB message limit, whatever it escapes.
pub const MAX_ENVELOPE_PAYLOAD: usize = 64 * 1024;

/// One bad event on its way to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Machine-readable reason (`BadEvent::code`, or `processing_failed`).
    pub reason: &'static str,
    /// Human-readable detail.
    pub error: String,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// The original value, at most [`MAX_ENVELOPE_PAYLOAD`] bytes of it.
    pub payload: Vec<u8>,
    /// The original value's full size.
    pub payload_size: usize,
    /// The poller's epoch of the source partition when the event was read (not sent): a
    /// letter of an assignment that is over, or of a replaced log, marks nothing of the
    /// current one.
    pub epoch: u64,
}

impl DeadLetter {
    /// A dead letter for a payload, copying at most [`MAX_ENVELOPE_PAYLOAD`] bytes.
    pub fn new(
        reason: &'static str,
        error: String,
        topic: &str,
        partition: i32,
        offset: i64,
        payload: &[u8],
    ) -> Self {
        Self {
            reason,
            error,
            topic: topic.to_owned(),
            partition,
            offset,
            payload: payload[..payload.len().min(MAX_ENVELOPE_PAYLOAD)].to_vec(),
            payload_size: payload.len(),
            epoch: 0,
        }
    }

    /// The JSON envelope: reason, error, source position and payload (as text when it is
    /// UTF-8, else as hex), with its size and whether it was cut.
    pub fn to_json(&self) -> Vec<u8> {
        let (text, hex) = match std::str::from_utf8(&self.payload) {
            Ok(s) => (Some(s.to_owned()), None),
            // Cut inside a multi-byte character: keep the valid part as text.
            Err(e) if e.error_len().is_none() && self.payload.len() < self.payload_size => {
                let valid = &self.payload[..e.valid_up_to()];
                (Some(String::from_utf8_lossy(valid).into_owned()), None)
            }
            Err(_) => (
                None,
                Some(
                    self.payload
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>(),
                ),
            ),
        };
        json!({
            "reason": self.reason,
            "error": self.error,
            "source": {"topic": self.topic, "partition": self.partition, "offset": self.offset},
            "payload": text,
            "payload_hex": hex,
            "payload_size": self.payload_size,
            "payload_truncated": self.payload.len() < self.payload_size,
            "dead_lettered_at": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        })
        .to_string()
        .into_bytes()
    }
}

/// The `kafka` crate's producer for the dead-letter topic, rebuilt after any failure (the crate
/// keeps broken connections and stale metadata).
pub struct DeadLetterQueue {
    brokers: Vec<String>,
    topic: String,
    producer: Option<Producer>,
}

impl DeadLetterQueue {
    /// A queue writing to `topic`; connects on first use.
    pub fn new(brokers: Vec<String>, topic: String) -> Self {
        Self {
            brokers,
            topic,
            producer: None,
        }
    }
}

impl DeadLetterProducer for DeadLetterQueue {
    fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends one letter and waits for all in-sync replicas to have it.
    fn send(&mut self, letter: &DeadLetter) -> Result<(), ClientError> {
        let producer = match self.producer.as_mut() {
            Some(p) => p,
            None => self
                .producer
                .insert(connect(&self.brokers).map_err(|e| ClientError(e.to_string()))?),
        };
        let result = producer.send(&Record::from_value(&self.topic, letter.to_json()));
        if result.is_err() {
            self.producer = None;
        }
        result.map_err(|e| ClientError(e.to_string()))
    }
}

fn connect(brokers: &[String]) -> Result<Producer, kafka::Error> {
    let mut client = KafkaClient::new(brokers.to_vec());
    client.set_client_id("service-courier-dlq".into());
    client.set_retry_max_attempts(3);
    client.load_metadata_all()?;
    Producer::from_client(client)
        .with_ack_timeout(Duration::from_secs(5))
        .with_required_acks(RequiredAcks::All)
        .create()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(payload: &[u8]) -> serde_json::Value {
        let l = DeadLetter::new("invalid_json", "boom".into(), "t", 2, 99, payload);
        serde_json::from_slice(&l.to_json()).expect("envelope is JSON")
    }

    #[test]
    fn utf8_payload_is_kept_as_text() {
        let e = envelope(br#"{"order_id":"#);
        assert_eq!(e["reason"], "invalid_json");
        assert_eq!(e["source"]["partition"], 2);
        assert_eq!(e["source"]["offset"], 99);
        assert_eq!(e["payload"], r#"{"order_id":"#);
        assert_eq!(e["payload_hex"], serde_json::Value::Null);
        assert_eq!(e["payload_truncated"], false);
    }

    #[test]
    fn binary_payload_is_hex() {
        let e = envelope(&[0xff, 0x00, 0x41]);
        assert_eq!(e["payload"], serde_json::Value::Null);
        assert_eq!(e["payload_hex"], "ff0041");
    }

    #[test]
    fn large_payload_is_cut_and_says_so() {
        let big = "é".repeat(MAX_ENVELOPE_PAYLOAD); // 2 bytes each: cut mid-character
        let e = envelope(big.as_bytes());
        assert_eq!(e["payload_size"], 2 * MAX_ENVELOPE_PAYLOAD);
        assert_eq!(e["payload_truncated"], true);
        let kept = e["payload"].as_str().expect("text");
        assert_eq!(kept.len(), MAX_ENVELOPE_PAYLOAD);
    }
}
