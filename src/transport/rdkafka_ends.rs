//! Where each partition ends, from librdkafka's statistics (`statistics.interval.ms`): no broker
//! round trip, read inside the consumer's own `poll`. The value read is `ls_offset`, the last
//! stable offset of the latest fetch response: under read_committed the end of what can be read
//! (records of an open transaction are not lag yet, and an aborted one is never delivered).
//! The lag is measured against it (docs/operations.md, "Lag").
//!
//! Not read from here: how far a partition was read past its transaction markers. The
//! statistics' `eof_offset` (with `enable.partition.eof`) looked like it, but it runs ahead of
//! the records the consumer has been handed (a restart test committed offsets whose events had
//! not been applied); the consumer's position says it safely (`rdkafka_client`,
//! `passed_markers`).

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

/// The part of librdkafka's statistics JSON read here (its whole schema is in librdkafka's
/// STATISTICS.md; the `rdkafka` crate's `Statistics` parses every field, the brokers' too).
#[derive(Deserialize)]
struct Document {
    /// By topic name.
    #[serde(default)]
    topics: HashMap<String, Topic>,
}

/// One topic of the statistics.
#[derive(Deserialize)]
struct Topic {
    /// By partition number (as text).
    #[serde(default)]
    partitions: HashMap<String, Partition>,
}

/// One partition of the statistics.
#[derive(Deserialize)]
struct Partition {
    /// Its number (-1: librdkafka's internal partition).
    partition: i32,
    /// Its last stable offset as of the latest fetch response.
    #[serde(default = "unknown")]
    ls_offset: i64,
}

/// librdkafka's "no offset".
fn unknown() -> i64 {
    -1001
}

/// The last stable offset of each partition of `topic` in one statistics document; partitions
/// without one yet (librdkafka's -1001, before the first fetch) and librdkafka's internal
/// partition -1 are left out.
pub fn parse(json: &[u8], topic: &str) -> Result<BTreeMap<i32, i64>, String> {
    let doc: Document =
        serde_json::from_slice(json).map_err(|e| format!("librdkafka statistics: {e}"))?;
    Ok(doc
        .topics
        .get(topic)
        .map(|t| {
            t.partitions
                .values()
                .filter(|p| p.partition >= 0 && p.ls_offset >= 0)
                .map(|p| (p.partition, p.ls_offset))
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trimmed statistics document as librdkafka 2.12 writes it.
    const STATS: &str = r#"{"name":"c#consumer-1","type":"consumer","brokers":{},
        "topics":{"orders":{"topic":"orders","partitions":{
            "0":{"partition":0,"hi_offset":13,"ls_offset":13,"app_offset":12},
            "1":{"partition":1,"hi_offset":9,"ls_offset":7},
            "2":{"partition":2,"hi_offset":-1001,"ls_offset":-1001},
            "-1":{"partition":-1,"hi_offset":-1001,"ls_offset":-1001}}},
          "other":{"topic":"other","partitions":{"0":{"partition":0,"ls_offset":5}}}}}"#;

    #[test]
    fn reads_the_last_stable_offset_of_the_topics_partitions() {
        let ends = parse(STATS.as_bytes(), "orders").expect("parses");
        assert_eq!(ends, BTreeMap::from([(0, 13), (1, 7)]));
        assert_eq!(parse(STATS.as_bytes(), "absent"), Ok(BTreeMap::new()));
        assert!(parse(b"{not json", "orders").is_err());
    }
}
