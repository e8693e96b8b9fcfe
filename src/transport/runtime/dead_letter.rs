//! The dead-letter topic: where a bad event goes, so nothing is lost and nothing blocks its
//! partition. A dead letter is the original message (key and value bytes, uncut) with why and
//! where from in headers (`dlq.reason`, `dlq.detail`, `dlq.topic`, `dlq.partition`,
//! `dlq.offset`, `dlq.time`): the convention of Spring Kafka's and Karafka's dead-letter
//! topics, readable by any Kafka tool (`kcat -J`, docs/operations.md), and a replay is a plain
//! re-produce. A value over the dead-letter topic's size limit is recorded by reference: no
//! value, and `dlq.value` = `by-reference` with its size in `dlq.value.size`.

use chrono::{DateTime, SecondsFormat, Utc};

/// Header: the machine-readable reason (`BadEvent::code`, or `processing_failed`).
pub const REASON: &str = "dlq.reason";
/// Header: the human-readable detail.
pub const DETAIL: &str = "dlq.detail";
/// Header: the source topic.
pub const TOPIC: &str = "dlq.topic";
/// Header: the source partition, in decimal.
pub const PARTITION: &str = "dlq.partition";
/// Header: the source offset, in decimal.
pub const OFFSET: &str = "dlq.offset";
/// Header: when the service dead-lettered it, RFC 3339 in UTC.
pub const TIME: &str = "dlq.time";
/// Header, on a letter without its value only: [`BY_REFERENCE`].
pub const VALUE: &str = "dlq.value";
/// Header, on a letter without its value only: the original value's size in bytes.
pub const VALUE_SIZE: &str = "dlq.value.size";
/// What [`VALUE`] says when the value was left out: read it at the source position.
pub const BY_REFERENCE: &str = "by-reference";
/// The most bytes of `dlq.detail` a letter without its value carries.
pub const DETAIL_BY_REFERENCE: usize = 1024;

/// One bad event on its way to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Machine-readable reason (`BadEvent::code`, or `processing_failed`).
    pub reason: &'static str,
    /// Human-readable detail.
    pub detail: String,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// The original key, when it had one.
    pub key: Option<Vec<u8>>,
    /// The original value, whole (empty when it had none).
    pub value: Vec<u8>,
    /// When the service gave up on the event.
    pub time: DateTime<Utc>,
    /// The poller's epoch of the source partition when the event was read (not sent): a
    /// letter of an assignment that is over, or of a replaced log, marks nothing of the
    /// current one.
    pub epoch: u64,
}

impl DeadLetter {
    /// A dead letter for a message, dead-lettered now.
    pub fn new(
        reason: &'static str,
        detail: String,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> Self {
        Self {
            reason,
            detail,
            topic: topic.to_owned(),
            partition,
            offset,
            key: key.map(<[u8]>::to_vec),
            value: value.to_vec(),
            time: Utc::now(),
            epoch: 0,
        }
    }

    /// The headers of the letter with its value.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            (REASON, self.reason.to_owned()),
            (DETAIL, self.detail.clone()),
            (TOPIC, self.topic.clone()),
            (PARTITION, self.partition.to_string()),
            (OFFSET, self.offset.to_string()),
            (TIME, self.time.to_rfc3339_opts(SecondsFormat::Millis, true)),
        ]
    }

    /// The headers of the letter without its value (over the topic's size limit), its detail
    /// cut to [`DETAIL_BY_REFERENCE`] bytes so that the letter is small whatever the error said.
    pub fn headers_by_reference(&self) -> Vec<(&'static str, String)> {
        let mut headers = self.headers();
        if let Some((_, detail)) = headers.iter_mut().find(|(name, _)| *name == DETAIL) {
            let mut end = detail.len().min(DETAIL_BY_REFERENCE);
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail.truncate(end);
        }
        headers.push((VALUE, BY_REFERENCE.to_owned()));
        headers.push((VALUE_SIZE, self.value.len().to_string()));
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter() -> DeadLetter {
        DeadLetter::new(
            "invalid_json",
            "boom".into(),
            "t",
            2,
            99,
            Some(b"k"),
            &[0xff, 0x00],
        )
    }

    #[test]
    fn the_headers_say_why_and_where_from_and_the_message_is_kept_whole() {
        let l = letter();
        let h = l.headers();
        let get = |name: &str| h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str());
        assert_eq!(get(REASON), Some("invalid_json"));
        assert_eq!(get(DETAIL), Some("boom"));
        assert_eq!(get(TOPIC), Some("t"));
        assert_eq!(get(PARTITION), Some("2"));
        assert_eq!(get(OFFSET), Some("99"));
        let time = get(TIME).expect("time");
        assert!(DateTime::parse_from_rfc3339(time).is_ok(), "{time}");
        assert_eq!(get(VALUE), None);
        assert_eq!(
            (l.key.as_deref(), l.value.as_slice()),
            (Some(&b"k"[..]), &[0xff, 0][..])
        );
    }

    #[test]
    fn a_letter_by_reference_says_so_and_the_value_size_with_its_detail_cut() {
        let h = letter().headers_by_reference();
        let get = |name: &str| h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str());
        assert_eq!(get(VALUE), Some(BY_REFERENCE));
        assert_eq!(get(VALUE_SIZE), Some("2"));
        assert_eq!(get(OFFSET), Some("99"));
        assert_eq!(get(DETAIL), Some("boom"));
        let long = DeadLetter {
            detail: "é".repeat(DETAIL_BY_REFERENCE),
            ..letter()
        };
        let h = long.headers_by_reference();
        let detail = h.iter().find(|(n, _)| *n == DETAIL).map(|(_, v)| v.clone());
        assert_eq!(detail.map(|d| d.len()), Some(DETAIL_BY_REFERENCE));
    }
}
