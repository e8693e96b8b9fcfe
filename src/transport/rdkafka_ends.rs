//! Where each partition ends, and how far the consumer has read it, from librdkafka's
//! statistics (`statistics.interval.ms`): no broker round trip, read inside the consumer's own
//! `poll`. Two values per partition matter:
//!
//! - `ls_offset`, the last stable offset of the latest fetch response: under read_committed
//!   the end of what can be read (records of an open transaction are not lag yet, and an
//!   aborted one is never delivered). The lag is measured against it.
//! - `eof_offset`, the offset at which librdkafka last signalled the partition's end
//!   (`enable.partition.eof`): its fetch position then, past the transaction markers and
//!   aborted records it never delivers. Every record below it was queued before that signal,
//!   and the statistics are queued after it on the same queue, so when they arrive every record
//!   below `eof_offset` has been handed out: the rest below it are no records
//!   ([`Polled::Passed`](super::client::Polled::Passed)).
//!
//! Parsing and the decision are pure, tested here; `rdkafka_client` feeds them.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

/// One partition as the latest statistics describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionEnd {
    /// The last stable offset (the high watermark from a broker without one); librdkafka's
    /// -1001 (unknown, before the first fetch) is left out.
    pub stable: Option<i64>,
    /// Where the partition's end was last signalled, if it was.
    pub eof: Option<i64>,
}

/// The part of librdkafka's statistics JSON read here (its whole schema is in librdkafka's
/// STATISTICS.md; the `rdkafka` crate's `Statistics` parses every field, the brokers' too).
#[derive(Deserialize)]
struct Document {
    #[serde(default)]
    topics: HashMap<String, Topic>,
}

#[derive(Deserialize)]
struct Topic {
    #[serde(default)]
    partitions: HashMap<String, Partition>,
}

#[derive(Deserialize)]
struct Partition {
    partition: i32,
    #[serde(default = "unknown")]
    ls_offset: i64,
    #[serde(default = "unknown")]
    eof_offset: i64,
}

/// librdkafka's "no offset".
fn unknown() -> i64 {
    -1001
}

/// Each partition of `topic` in one statistics document (librdkafka's internal partition -1,
/// for messages not yet partitioned, is left out).
pub fn parse(json: &[u8], topic: &str) -> Result<BTreeMap<i32, PartitionEnd>, String> {
    let doc: Document =
        serde_json::from_slice(json).map_err(|e| format!("librdkafka statistics: {e}"))?;
    let known = |o: i64| (o >= 0).then_some(o);
    Ok(doc
        .topics
        .get(topic)
        .map(|t| {
            t.partitions
                .values()
                .filter(|p| p.partition >= 0)
                .map(|p| {
                    let end = PartitionEnd {
                        stable: known(p.ls_offset),
                        eof: known(p.eof_offset),
                    };
                    (p.partition, end)
                })
                .collect()
        })
        .unwrap_or_default())
}

/// How far a partition was read past its last record, if further than `next` (the offset
/// after the last record handed out). Only when the end was signalled to this consumer after
/// that record (`eof_since_record`; cleared at each record, assignment and seek): an
/// `eof_offset` of an earlier assignment or of a log since replaced proves nothing.
pub fn passed(end: PartitionEnd, next: Option<i64>, eof_since_record: bool) -> Option<i64> {
    let (eof, next) = (end.eof?, next?);
    (eof_since_record && eof > next && end.stable.is_some_and(|s| eof <= s)).then_some(eof)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trimmed statistics document as librdkafka 2.12 writes it.
    const STATS: &str = r#"{"name":"c#consumer-1","type":"consumer","brokers":{},
        "topics":{"orders":{"topic":"orders","partitions":{
            "0":{"partition":0,"hi_offset":13,"ls_offset":13,"eof_offset":13,"app_offset":12},
            "1":{"partition":1,"hi_offset":9,"ls_offset":7,"eof_offset":-1001},
            "-1":{"partition":-1,"hi_offset":-1001,"ls_offset":-1001,"eof_offset":-1001}}},
          "other":{"topic":"other","partitions":{"0":{"partition":0,"ls_offset":5}}}}}"#;

    #[test]
    fn reads_the_last_stable_offset_and_the_end_signalled_of_the_topic() {
        let ends = parse(STATS.as_bytes(), "orders").expect("parses");
        assert_eq!(
            ends,
            BTreeMap::from([
                (
                    0,
                    PartitionEnd {
                        stable: Some(13),
                        eof: Some(13)
                    }
                ),
                (
                    1,
                    PartitionEnd {
                        stable: Some(7),
                        eof: None
                    }
                ),
            ])
        );
        assert_eq!(parse(STATS.as_bytes(), "absent"), Ok(BTreeMap::new()));
        assert!(parse(b"{not json", "orders").is_err());
    }

    #[test]
    fn a_partition_is_passed_only_up_to_an_end_signalled_since_its_last_record() {
        // Records up to 11 handed out (next 12), a commit marker at 12, the end at 13.
        let end = PartitionEnd {
            stable: Some(13),
            eof: Some(13),
        };
        assert_eq!(passed(end, Some(12), true), Some(13));
        assert_eq!(passed(end, Some(12), false), None, "no end signalled since");
        assert_eq!(passed(end, Some(13), true), None, "nothing to pass");
        assert_eq!(passed(end, None, true), None, "position unknown");
        let stale = PartitionEnd {
            stable: Some(4),
            eof: Some(13),
        };
        assert_eq!(passed(stale, Some(2), true), None, "an end beyond the log");
    }
}
