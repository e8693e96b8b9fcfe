//! `service-courier dlq replay`: publishes dead letters' original messages to the order topic
//! again (after the cause was fixed), once each. Its progress through the dead-letter topic is
//! committed for a consumer group of its own (`<KAFKA_GROUP_ID>.dlq-replay`), chunk by chunk
//! after the chunk's messages were acknowledged, so a second replay starts where the first
//! ended. Every letter it passes is settled for good: replayed, skipped by the filter, or not
//! replayable (its value recorded by reference, or cut to fit an old envelope); a crash
//! between a publish and its commit publishes that chunk again, which the idempotent handlers
//! absorb.
//!
//! It reads both forms a letter has had: the Kafka-native one (the original key and value,
//! `dlq.*` headers; `transport::runtime::dead_letter`) and the JSON envelope written before it, so no
//! letter is stranded. The decisions are here; the Kafka I/O is behind [`DeadLetterLog`],
//! implemented over librdkafka whatever KAFKA_CLIENT says: the `kafka` crate's Fetch v0 gets
//! records down-converted to a format without headers.

pub mod rdkafka;

use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::transport::runtime::dead_letter;

/// A dead letter as stored on the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLetter {
    /// Its partition on the dead-letter topic.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its value: the original value, or an envelope (JSON) for letters of the old form.
    pub value: Vec<u8>,
    /// Its headers, in order (none on an envelope).
    pub headers: Vec<(String, Vec<u8>)>,
}

impl StoredLetter {
    /// The value of header `name`, as text.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// A message to publish again: the original key and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    /// The original key.
    pub key: Option<Vec<u8>>,
    /// The original value.
    pub value: Vec<u8>,
}

/// Consecutive letters of one partition, and where the replay's progress stands once they are
/// settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The letters, in offset order.
    pub letters: Vec<StoredLetter>,
    /// The partition.
    pub partition: i32,
    /// The next offset to read once these are settled.
    pub next: i64,
}

/// The dead-letter topic and the order topic, as the replay sees them.
pub trait DeadLetterLog {
    /// The next letters after the replay's committed position, up to the topic's end as it was
    /// when the replay began; `None` once everything up to there was returned.
    fn next_chunk(&mut self) -> Result<Option<Chunk>, String>;
    /// Publishes messages to the order topic, in order, and waits for the acknowledgements.
    fn publish(&mut self, messages: &[Original]) -> Result<(), String>;
    /// Commits the replay's progress on a dead-letter partition.
    fn commit(&mut self, partition: i32, next: i64) -> Result<(), String>;
}

/// Which letters to replay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayFilter {
    /// Only letters with this reason (e.g. `processing_failed`).
    pub reason: Option<String>,
    /// Only letters dead-lettered at or after this instant.
    pub since: Option<DateTime<Utc>>,
}

/// What the replay does with one letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Publish this message to the order topic.
    Replay(Original),
    /// The filter leaves it out.
    Filtered,
    /// It cannot be replayed, and why.
    NotReplayable(String),
}

/// What a letter of either form says, as far as the replay is concerned.
struct Described<'a> {
    reason: &'a str,
    time: Option<DateTime<Utc>>,
    source: &'a str,
    /// The message, or why there is none to publish.
    original: Result<Original, String>,
}

/// Decides what to do with one stored letter: letters of another source topic, or without
/// their original value, cannot be replayed.
pub fn judge(letter: &StoredLetter, filter: &ReplayFilter, order_topic: &str) -> Verdict {
    let envelope;
    let described = if letter.header(dead_letter::REASON).is_some() {
        native(letter)
    } else {
        envelope = match serde_json::from_slice(&letter.value) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                return Verdict::NotReplayable(
                    "neither dlq.* headers nor a dead-letter envelope (JSON object)".into(),
                )
            }
        };
        enveloped(&envelope)
    };
    if filter
        .reason
        .as_deref()
        .is_some_and(|r| r != described.reason)
    {
        return Verdict::Filtered;
    }
    if let Some(since) = filter.since {
        if !described.time.is_some_and(|at| at >= since) {
            return Verdict::Filtered;
        }
    }
    if described.source != order_topic {
        return Verdict::NotReplayable(format!(
            "it came from topic {:?}, not {order_topic:?}",
            described.source
        ));
    }
    match described.original {
        Ok(original) => Verdict::Replay(original),
        Err(why) => Verdict::NotReplayable(why),
    }
}

fn rfc3339(s: Option<&str>) -> Option<DateTime<Utc>> {
    s.and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// A Kafka-native letter: the original message, `dlq.*` headers.
fn native(letter: &StoredLetter) -> Described<'_> {
    let original = if letter.header(dead_letter::VALUE) == Some(dead_letter::BY_REFERENCE) {
        Err(format!(
            "its value ({} bytes) was over the dead-letter topic's size limit; it is at {}/{}@{}",
            letter.header(dead_letter::VALUE_SIZE).unwrap_or("?"),
            letter.header(dead_letter::TOPIC).unwrap_or("?"),
            letter.header(dead_letter::PARTITION).unwrap_or("?"),
            letter.header(dead_letter::OFFSET).unwrap_or("?"),
        ))
    } else {
        Ok(Original {
            key: letter.key.clone(),
            value: letter.value.clone(),
        })
    };
    Described {
        reason: letter.header(dead_letter::REASON).unwrap_or_default(),
        time: rfc3339(letter.header(dead_letter::TIME)),
        source: letter.header(dead_letter::TOPIC).unwrap_or_default(),
        original,
    }
}

/// A letter of the JSON envelope written before the Kafka-native form: the payload as text or
/// hex, cut at 64 KiB (a cut one cannot be replayed), no key.
fn enveloped(letter: &Value) -> Described<'_> {
    let original = if letter["payload_truncated"].as_bool() == Some(true) {
        Err(format!(
            "its payload was cut to fit the envelope ({} bytes originally)",
            letter["payload_size"]
        ))
    } else if let Some(text) = letter["payload"].as_str() {
        Ok(text.as_bytes().to_vec())
    } else {
        match letter["payload_hex"].as_str().map(from_hex) {
            Some(Some(bytes)) => Ok(bytes),
            Some(None) => Err("its payload_hex is not hex".into()),
            None => Err("it holds no payload".into()),
        }
    };
    Described {
        reason: letter["reason"].as_str().unwrap_or_default(),
        time: rfc3339(letter["dead_lettered_at"].as_str()),
        source: letter["source"]["topic"].as_str().unwrap_or_default(),
        original: original.map(|value| Original { key: None, value }),
    }
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A letter that could not be replayed, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreplayable {
    /// Its dead-letter partition.
    pub partition: i32,
    /// Its dead-letter offset.
    pub offset: i64,
    /// Why.
    pub why: String,
}

/// What a replay did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Letters published to the order topic (dry: that would be).
    pub replayed: usize,
    /// Letters the filter left out.
    pub filtered: usize,
    /// Letters that cannot be replayed.
    pub not_replayable: Vec<Unreplayable>,
    /// Nothing was published or committed.
    pub dry_run: bool,
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "dry run, nothing published or committed: would replay"
        } else {
            "replayed"
        };
        write!(
            f,
            "{verb} {}, skipped by filter {}, not replayable {}",
            self.replayed,
            self.filtered,
            self.not_replayable.len()
        )
    }
}

/// A replay that stopped on a Kafka failure: what was settled (published and committed)
/// before it, and the failure. The letters after the last commit are offered again next time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayFailure {
    /// What was settled before the failure.
    pub done: ReplayReport,
    /// The failure.
    pub error: String,
}

/// Replays every letter after the committed position, chunk by chunk: publish the chunk's
/// replayable messages, then commit past the chunk. Dry: decide only.
pub fn replay(
    log: &mut dyn DeadLetterLog,
    filter: &ReplayFilter,
    order_topic: &str,
    dry_run: bool,
) -> Result<ReplayReport, ReplayFailure> {
    let mut done = ReplayReport {
        dry_run,
        ..ReplayReport::default()
    };
    loop {
        let mut chunk_report = done.clone();
        match replay_chunk(log, filter, order_topic, &mut chunk_report) {
            Ok(true) => done = chunk_report,
            Ok(false) => return Ok(done),
            Err(error) => return Err(ReplayFailure { done, error }),
        }
    }
}

/// Settles the next chunk into `report`; `false` when there is none.
fn replay_chunk(
    log: &mut dyn DeadLetterLog,
    filter: &ReplayFilter,
    order_topic: &str,
    report: &mut ReplayReport,
) -> Result<bool, String> {
    let dry_run = report.dry_run;
    if let Some(chunk) = log.next_chunk()? {
        let mut originals = Vec::new();
        for letter in &chunk.letters {
            match judge(letter, filter, order_topic) {
                Verdict::Replay(o) => originals.push(o),
                Verdict::Filtered => report.filtered += 1,
                Verdict::NotReplayable(why) => report.not_replayable.push(Unreplayable {
                    partition: letter.partition,
                    offset: letter.offset,
                    why,
                }),
            }
        }
        report.replayed += originals.len();
        if dry_run {
            return Ok(true);
        }
        if !originals.is_empty() {
            log.publish(&originals)?;
        }
        log.commit(chunk.partition, chunk.next)?;
        return Ok(true);
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ORDERS: &str = "orders";
    const AT: &str = "2026-01-01T00:00:00Z";

    fn stored(key: Option<&[u8]>, value: &[u8], headers: &[(&str, &str)]) -> StoredLetter {
        StoredLetter {
            partition: 0,
            offset: 0,
            key: key.map(<[u8]>::to_vec),
            value: value.to_vec(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    /// A Kafka-native letter, as `transport::runtime::dead_letter` writes it.
    fn native(reason: &str, at: &str, value: &[u8]) -> StoredLetter {
        stored(
            Some(b"k"),
            value,
            &[
                (dead_letter::REASON, reason),
                (dead_letter::DETAIL, "boom"),
                (dead_letter::TOPIC, ORDERS),
                (dead_letter::PARTITION, "0"),
                (dead_letter::OFFSET, "7"),
                (dead_letter::TIME, at),
            ],
        )
    }

    /// A letter of the old form: a JSON envelope, no headers.
    fn envelope(reason: &str, at: &str, payload: Value) -> StoredLetter {
        let mut e = json!({
            "reason": reason,
            "error": "boom",
            "source": {"topic": ORDERS, "partition": 0, "offset": 7},
            "payload": null,
            "payload_hex": null,
            "payload_size": 10,
            "payload_truncated": false,
            "dead_lettered_at": at,
        });
        for (k, v) in payload.as_object().expect("object") {
            e[k] = v.clone();
        }
        stored(None, e.to_string().as_bytes(), &[])
    }

    fn text(reason: &str, at: &str, payload: &str) -> StoredLetter {
        envelope(reason, at, json!({"payload": payload}))
    }

    fn value(v: &[u8]) -> Original {
        Original {
            key: None,
            value: v.to_vec(),
        }
    }

    #[test]
    fn a_native_letter_is_replayed_as_its_original_key_and_value() {
        let f = ReplayFilter::default();
        let l = native("unsupported_status", AT, &[0xff, 0x00, 0x41]);
        assert_eq!(
            judge(&l, &f, ORDERS),
            Verdict::Replay(Original {
                key: Some(b"k".to_vec()),
                value: vec![0xff, 0x00, 0x41],
            })
        );
        let mut by_ref = native("too_large", AT, b"");
        by_ref
            .headers
            .push((dead_letter::VALUE.into(), dead_letter::BY_REFERENCE.into()));
        by_ref
            .headers
            .push((dead_letter::VALUE_SIZE.into(), b"2000000".to_vec()));
        assert!(
            matches!(judge(&by_ref, &f, ORDERS), Verdict::NotReplayable(w) if w.contains("2000000 bytes") && w.contains("orders/0@7")),
            "{:?}",
            judge(&by_ref, &f, ORDERS)
        );
        assert!(matches!(
            judge(&native("x", AT, b"v"), &f, "other"),
            Verdict::NotReplayable(w) if w.contains("came from")
        ));
    }

    #[test]
    fn an_envelope_with_a_text_or_hex_payload_is_replayed_byte_for_byte() {
        let f = ReplayFilter::default();
        let t = text("unsupported_status", AT, r#"{"a":1}"#);
        assert_eq!(judge(&t, &f, ORDERS), Verdict::Replay(value(br#"{"a":1}"#)));
        let h = envelope("not_utf8", AT, json!({"payload_hex": "ff0041"}));
        assert_eq!(
            judge(&h, &f, ORDERS),
            Verdict::Replay(value(&[0xff, 0x00, 0x41]))
        );
    }

    #[test]
    fn truncated_missing_foreign_or_broken_envelopes_are_not_replayable() {
        let f = ReplayFilter::default();
        let cut = envelope(
            "too_large",
            AT,
            json!({"payload": "{", "payload_truncated": true}),
        );
        assert!(matches!(judge(&cut, &f, ORDERS), Verdict::NotReplayable(w) if w.contains("cut")));
        let none = envelope("too_large", AT, json!({}));
        assert!(
            matches!(judge(&none, &f, ORDERS), Verdict::NotReplayable(w) if w.contains("no payload"))
        );
        let bad_hex = envelope("not_utf8", AT, json!({"payload_hex": "f"}));
        assert!(matches!(
            judge(&bad_hex, &f, ORDERS),
            Verdict::NotReplayable(_)
        ));
        let foreign = text("invalid_json", AT, "x");
        assert!(
            matches!(judge(&foreign, &f, "other"), Verdict::NotReplayable(w) if w.contains("came from"))
        );
        assert!(matches!(
            judge(&stored(None, b"not json", &[]), &f, ORDERS),
            Verdict::NotReplayable(_)
        ));
    }

    #[test]
    fn the_filter_selects_by_reason_and_time_in_both_forms() {
        let late_at = "2026-03-01T10:00:00.123Z";
        for (early, late) in [
            (
                text("invalid_json", AT, "x"),
                text("unsupported_status", late_at, "y"),
            ),
            (
                native("invalid_json", AT, b"x"),
                native("unsupported_status", late_at, b"y"),
            ),
        ] {
            let by_reason = ReplayFilter {
                reason: Some("unsupported_status".into()),
                since: None,
            };
            assert_eq!(judge(&early, &by_reason, ORDERS), Verdict::Filtered);
            assert!(matches!(
                judge(&late, &by_reason, ORDERS),
                Verdict::Replay(o) if o.value == b"y"
            ));
            let since = ReplayFilter {
                reason: None,
                since: Some("2026-02-01T00:00:00Z".parse().expect("time")),
            };
            assert_eq!(judge(&early, &since, ORDERS), Verdict::Filtered);
            assert!(matches!(
                judge(&late, &since, ORDERS),
                Verdict::Replay(o) if o.value == b"y"
            ));
        }
    }

    /// An in-memory dead-letter topic of one partition, in chunks of two.
    #[derive(Default)]
    struct FakeLog {
        letters: Vec<StoredLetter>,
        committed: i64,
        read: i64,
        published: Vec<Original>,
    }

    impl FakeLog {
        fn start(&mut self) {
            self.read = self.committed;
        }
    }

    impl DeadLetterLog for FakeLog {
        fn next_chunk(&mut self) -> Result<Option<Chunk>, String> {
            let end = (self.read + 2).min(self.letters.len() as i64);
            if self.read >= end {
                return Ok(None);
            }
            let letters = (self.read..end)
                .map(|o| StoredLetter {
                    offset: o,
                    ..self.letters[o as usize].clone()
                })
                .collect();
            self.read = end;
            Ok(Some(Chunk {
                letters,
                partition: 0,
                next: end,
            }))
        }
        fn publish(&mut self, messages: &[Original]) -> Result<(), String> {
            self.published.extend_from_slice(messages);
            Ok(())
        }
        fn commit(&mut self, _partition: i32, next: i64) -> Result<(), String> {
            self.committed = next;
            Ok(())
        }
    }

    #[test]
    fn a_failed_publish_reports_what_was_settled_before_it() {
        struct Failing(FakeLog);
        impl DeadLetterLog for Failing {
            fn next_chunk(&mut self) -> Result<Option<Chunk>, String> {
                self.0.next_chunk()
            }
            fn publish(&mut self, messages: &[Original]) -> Result<(), String> {
                if self.0.published.len() >= 2 {
                    return Err("broker gone".into());
                }
                self.0.publish(messages)
            }
            fn commit(&mut self, partition: i32, next: i64) -> Result<(), String> {
                self.0.commit(partition, next)
            }
        }
        let mut log = Failing(FakeLog {
            letters: (0..4).map(|n| text("x", AT, &n.to_string())).collect(),
            ..FakeLog::default()
        });
        let failure = replay(&mut log, &ReplayFilter::default(), ORDERS, false)
            .expect_err("the second chunk fails");
        assert_eq!(failure.done.replayed, 2, "the first chunk, committed");
        assert_eq!(failure.error, "broker gone");
        assert_eq!(log.0.committed, 2);
    }

    #[test]
    fn a_replay_publishes_once_and_a_dry_run_changes_nothing() {
        let mut log = FakeLog {
            letters: vec![
                text("unsupported_status", AT, "a"),
                native("invalid_json", AT, b"b"),
                envelope(
                    "too_large",
                    AT,
                    json!({"payload": "{", "payload_truncated": true}),
                ),
                native("unsupported_status", AT, b"c"),
                text("unsupported_status", AT, "d"),
            ],
            ..FakeLog::default()
        };
        let f = ReplayFilter {
            reason: Some("unsupported_status".into()),
            since: None,
        };
        log.start();
        let dry = replay(&mut log, &ReplayFilter::default(), ORDERS, true).expect("dry");
        assert_eq!(
            (dry.replayed, dry.filtered, dry.not_replayable.len()),
            (4, 0, 1)
        );
        assert!(dry.to_string().starts_with("dry run"), "{dry}");
        assert!(log.published.is_empty());
        assert_eq!(log.committed, 0);

        log.start();
        let real = replay(&mut log, &f, ORDERS, false).expect("replay");
        // The truncated letter has another reason: the filter leaves it out first.
        assert_eq!(
            (real.replayed, real.filtered, real.not_replayable.len()),
            (3, 2, 0)
        );
        assert_eq!(
            log.published,
            vec![
                value(b"a"),
                Original {
                    key: Some(b"k".to_vec()),
                    value: b"c".to_vec()
                },
                value(b"d")
            ]
        );
        assert_eq!(log.committed, 5);
        assert_eq!(
            real.to_string(),
            "replayed 3, skipped by filter 2, not replayable 0"
        );

        log.start();
        let again = replay(&mut log, &f, ORDERS, false).expect("again");
        assert_eq!(again, ReplayReport::default());
        assert_eq!(log.published.len(), 3, "nothing published twice");
    }
}
