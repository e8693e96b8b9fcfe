//! `service-courier dlq replay`: publishes dead letters' original payloads to the order topic
//! again (after the cause was fixed), once each. Its progress through the dead-letter topic is
//! committed for a consumer group of its own (`<KAFKA_GROUP_ID>.dlq-replay`), chunk by chunk
//! after the chunk's payloads were acknowledged, so a second replay starts where the first
//! ended. Every letter it passes is settled for good: replayed, skipped by the filter, or not
//! replayable (a payload cut to fit the envelope, or none); a crash between a publish and its
//! commit publishes that chunk again, which the idempotent handlers absorb.
//!
//! The decisions are here; the Kafka I/O is behind [`DeadLetterLog`], one per client
//! (KAFKA_CLIENT): `kafka` (the `kafka` crate) and `rdkafka` (librdkafka).

pub mod kafka;
pub mod rdkafka;

use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::Value;

/// A dead letter as stored on the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLetter {
    /// Its partition on the dead-letter topic.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// The envelope (JSON, see `transport::dead_letter`).
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
    /// Publishes payloads to the order topic, in order, and waits for the acknowledgements.
    fn publish(&mut self, payloads: &[Vec<u8>]) -> Result<(), String>;
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
    /// Publish this payload to the order topic.
    Replay(Vec<u8>),
    /// The filter leaves it out.
    Filtered,
    /// It cannot be replayed, and why.
    NotReplayable(String),
}

/// Decides what to do with one stored envelope: letters of another source topic, without a
/// payload, or with a truncated one cannot be replayed.
pub fn judge(envelope: &[u8], filter: &ReplayFilter, order_topic: &str) -> Verdict {
    let letter: Value = match serde_json::from_slice(envelope) {
        Ok(v @ Value::Object(_)) => v,
        _ => return Verdict::NotReplayable("not a dead-letter envelope (JSON object)".into()),
    };
    let reason = letter["reason"].as_str().unwrap_or_default();
    if filter.reason.as_deref().is_some_and(|r| r != reason) {
        return Verdict::Filtered;
    }
    if let Some(since) = filter.since {
        let at = letter["dead_lettered_at"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
        if !at.is_some_and(|at| at >= since) {
            return Verdict::Filtered;
        }
    }
    let source = letter["source"]["topic"].as_str().unwrap_or_default();
    if source != order_topic {
        return Verdict::NotReplayable(format!(
            "it came from topic {source:?}, not {order_topic:?}"
        ));
    }
    if letter["payload_truncated"].as_bool() == Some(true) {
        return Verdict::NotReplayable(format!(
            "its payload was cut to fit the envelope ({} bytes originally)",
            letter["payload_size"]
        ));
    }
    if let Some(text) = letter["payload"].as_str() {
        return Verdict::Replay(text.as_bytes().to_vec());
    }
    match letter["payload_hex"].as_str().map(from_hex) {
        Some(Some(bytes)) => Verdict::Replay(bytes),
        Some(None) => Verdict::NotReplayable("its payload_hex is not hex".into()),
        None => Verdict::NotReplayable("it holds no payload".into()),
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
/// replayable payloads, then commit past the chunk. Dry: decide only.
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
        let mut payloads = Vec::new();
        for letter in &chunk.letters {
            match judge(&letter.value, filter, order_topic) {
                Verdict::Replay(p) => payloads.push(p),
                Verdict::Filtered => report.filtered += 1,
                Verdict::NotReplayable(why) => report.not_replayable.push(Unreplayable {
                    partition: letter.partition,
                    offset: letter.offset,
                    why,
                }),
            }
        }
        report.replayed += payloads.len();
        if dry_run {
            return Ok(true);
        }
        if !payloads.is_empty() {
            log.publish(&payloads)?;
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

    fn envelope(reason: &str, at: &str, payload: Value) -> Vec<u8> {
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
        e.to_string().into_bytes()
    }

    fn text(reason: &str, at: &str, payload: &str) -> Vec<u8> {
        envelope(reason, at, json!({"payload": payload}))
    }

    #[test]
    fn a_text_or_hex_payload_is_replayed_byte_for_byte() {
        let f = ReplayFilter::default();
        let t = text("unsupported_status", "2026-01-01T00:00:00Z", r#"{"a":1}"#);
        assert_eq!(
            judge(&t, &f, ORDERS),
            Verdict::Replay(br#"{"a":1}"#.to_vec())
        );
        let h = envelope(
            "not_utf8",
            "2026-01-01T00:00:00Z",
            json!({"payload_hex": "ff0041"}),
        );
        assert_eq!(
            judge(&h, &f, ORDERS),
            Verdict::Replay(vec![0xff, 0x00, 0x41])
        );
    }

    #[test]
    fn truncated_missing_foreign_or_broken_letters_are_not_replayable() {
        let f = ReplayFilter::default();
        let at = "2026-01-01T00:00:00Z";
        let cut = envelope(
            "too_large",
            at,
            json!({"payload": "{", "payload_truncated": true}),
        );
        assert!(matches!(judge(&cut, &f, ORDERS), Verdict::NotReplayable(w) if w.contains("cut")));
        let none = envelope("too_large", at, json!({}));
        assert!(
            matches!(judge(&none, &f, ORDERS), Verdict::NotReplayable(w) if w.contains("no payload"))
        );
        let bad_hex = envelope("not_utf8", at, json!({"payload_hex": "f"}));
        assert!(matches!(
            judge(&bad_hex, &f, ORDERS),
            Verdict::NotReplayable(_)
        ));
        let foreign = text("invalid_json", at, "x");
        assert!(
            matches!(judge(&foreign, &f, "other"), Verdict::NotReplayable(w) if w.contains("came from"))
        );
        assert!(matches!(
            judge(b"not json", &f, ORDERS),
            Verdict::NotReplayable(_)
        ));
    }

    #[test]
    fn the_filter_selects_by_reason_and_time() {
        let early = text("invalid_json", "2026-01-01T00:00:00Z", "x");
        let late = text("unsupported_status", "2026-03-01T10:00:00.123Z", "y");
        let by_reason = ReplayFilter {
            reason: Some("unsupported_status".into()),
            since: None,
        };
        assert_eq!(judge(&early, &by_reason, ORDERS), Verdict::Filtered);
        assert_eq!(
            judge(&late, &by_reason, ORDERS),
            Verdict::Replay(b"y".to_vec())
        );
        let since = ReplayFilter {
            reason: None,
            since: Some("2026-02-01T00:00:00Z".parse().expect("time")),
        };
        assert_eq!(judge(&early, &since, ORDERS), Verdict::Filtered);
        assert_eq!(judge(&late, &since, ORDERS), Verdict::Replay(b"y".to_vec()));
    }

    /// An in-memory dead-letter topic of one partition, in chunks of two.
    #[derive(Default)]
    struct FakeLog {
        letters: Vec<Vec<u8>>,
        committed: i64,
        read: i64,
        published: Vec<Vec<u8>>,
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
                    partition: 0,
                    offset: o,
                    value: self.letters[o as usize].clone(),
                })
                .collect();
            self.read = end;
            Ok(Some(Chunk {
                letters,
                partition: 0,
                next: end,
            }))
        }
        fn publish(&mut self, payloads: &[Vec<u8>]) -> Result<(), String> {
            self.published.extend_from_slice(payloads);
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
            fn publish(&mut self, payloads: &[Vec<u8>]) -> Result<(), String> {
                if self.0.published.len() >= 2 {
                    return Err("broker gone".into());
                }
                self.0.publish(payloads)
            }
            fn commit(&mut self, partition: i32, next: i64) -> Result<(), String> {
                self.0.commit(partition, next)
            }
        }
        let at = "2026-01-01T00:00:00Z";
        let mut log = Failing(FakeLog {
            letters: (0..4).map(|n| text("x", at, &n.to_string())).collect(),
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
        let at = "2026-01-01T00:00:00Z";
        let mut log = FakeLog {
            letters: vec![
                text("unsupported_status", at, "a"),
                text("invalid_json", at, "b"),
                envelope(
                    "too_large",
                    at,
                    json!({"payload": "{", "payload_truncated": true}),
                ),
                text("unsupported_status", at, "c"),
                text("unsupported_status", at, "d"),
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
            vec![b"a".to_vec(), b"c".to_vec(), b"d".to_vec()]
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
