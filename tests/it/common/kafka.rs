//! Talking to Kafka from tests: producing (kcat, like an unkeyed sarama producer; or the `kafka`
//! crate for raw bytes, keys and explicit partitions), reading a topic back, and the consumer
//! group's committed offsets.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Produces lines with Debian's kcat, unkeyed (librdkafka spreads them over partitions).
pub fn kcat_produce(brokers: &str, topic: &str, lines: &[String]) {
    kcat_produce_args(brokers, topic, &[], lines);
}

/// Produces `key<TAB>value` lines with kcat, keyed.
pub fn kcat_produce_keyed(brokers: &str, topic: &str, lines: &[String]) {
    kcat_produce_args(brokers, topic, &["-K", "\t"], lines);
}

/// Produces lines with kcat to one partition.
pub fn kcat_produce_to(brokers: &str, topic: &str, partition: i32, lines: &[String]) {
    kcat_produce_args(brokers, topic, &["-p", &partition.to_string()], lines);
}

/// Produces `lines` to one partition in one kcat run compressed with `codec` (`none`, `gzip`,
/// `snappy`, `lz4`, `zstd`), lingering long enough that they share record batches of that codec,
/// as a real producer with that setting writes them.
pub fn kcat_produce_codec(
    brokers: &str,
    topic: &str,
    partition: i32,
    codec: &str,
    lines: &[String],
) {
    let partition = partition.to_string();
    let args = [
        "-p",
        &partition,
        "-z",
        codec,
        "-X",
        "queue.buffering.max.ms=50",
    ];
    kcat_produce_args(brokers, topic, &args, lines);
}

/// kcat -P with `args` after the defaults (so they may override them).
fn kcat_produce_args(brokers: &str, topic: &str, args: &[&str], lines: &[String]) {
    let mut child = Command::new("kcat")
        .args(["-P", "-b", brokers, "-t", topic])
        // Sticky partitioning off: each unkeyed message picks a random partition, as sarama does.
        .args([
            "-X",
            "queue.buffering.max.ms=5",
            "-X",
            "sticky.partitioning.linger.ms=0",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .expect("kcat runs (scripts/deps.sh installs it)");
    {
        let stdin = child.stdin.as_mut().expect("stdin");
        for l in lines {
            writeln!(stdin, "{l}").expect("write to kcat");
        }
    }
    assert!(
        child.wait().expect("kcat").success(),
        "kcat -P {} failed",
        args.join(" ")
    );
}

/// Produces values to explicit partitions with the `kafka` crate (acks from all replicas).
/// Returns, in order, the (partition, offset) each value got.
pub fn produce_to(brokers: &str, topic: &str, values: &[(i32, Vec<u8>)]) -> Vec<(i32, i64)> {
    use kafka::producer::{Producer, Record, RequiredAcks};
    let mut p = Producer::from_hosts(brokers.split(',').map(str::to_owned).collect())
        .with_ack_timeout(Duration::from_secs(10))
        .with_required_acks(RequiredAcks::All)
        .create()
        .expect("producer");
    let mut positions = Vec::with_capacity(values.len());
    for chunk in values.chunks(500) {
        let records: Vec<Record<'_, (), &[u8]>> = chunk
            .iter()
            .map(|(partition, v)| Record {
                key: (),
                value: v.as_slice(),
                topic,
                partition: *partition,
            })
            .collect();
        let confirms = p.send_all(&records).expect("produce");
        // Each partition's batch lands at consecutive offsets from the base it reports.
        let mut next: HashMap<i32, i64> = HashMap::new();
        for c in confirms.iter().flat_map(|c| &c.partition_confirms) {
            let base = c
                .offset
                .unwrap_or_else(|e| panic!("partition {} refused: {e:?}", c.partition));
            next.insert(c.partition, base);
        }
        for (partition, _) in chunk {
            let o = next.get_mut(partition).expect("a confirm per partition");
            positions.push((*partition, *o));
            *o += 1;
        }
    }
    positions
}

/// Every message value on a topic, read with kcat from the beginning.
pub fn kcat_consume_all(brokers: &str, topic: &str) -> Vec<String> {
    kcat_consume_positions(brokers, topic)
        .into_iter()
        .map(|(_, _, v)| v)
        .collect()
}

/// Every message on a topic as (partition, offset, value), read with kcat (read_committed,
/// librdkafka's default).
pub fn kcat_consume_positions(brokers: &str, topic: &str) -> Vec<(i32, i64, String)> {
    kcat_consume_isolated(brokers, topic, "read_committed")
}

/// Every message on a topic as (partition, offset, value), read with kcat at `isolation`
/// (`read_committed`, `read_uncommitted`).
pub fn kcat_consume_isolated(
    brokers: &str,
    topic: &str,
    isolation: &str,
) -> Vec<(i32, i64, String)> {
    let isolation = format!("isolation.level={isolation}");
    kcat_read(brokers, topic, &["-X", &isolation, "-f", "%p %o %s\n"])
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ' ');
            let p = parts.next()?.parse().ok()?;
            let o = parts.next()?.parse().ok()?;
            Some((p, o, parts.next()?.to_owned()))
        })
        .collect()
}

/// Per partition: (the group's committed offset, or -1 when it never committed, as Kafka reports it, high watermark).
pub fn offsets(brokers: &str, group: &str, topic: &str) -> BTreeMap<i32, (i64, i64)> {
    try_offsets(brokers, group, topic).unwrap_or_else(|e| panic!("offsets of {topic}: {e}"))
}

/// [`offsets`], with an error instead of a panic: for callers that poll while the broker
/// restarts.
pub fn try_offsets(
    brokers: &str,
    group: &str,
    topic: &str,
) -> Result<BTreeMap<i32, (i64, i64)>, String> {
    // librdkafka reads them on Kafka 3.x and 4.x alike (Kafka 4 dropped the `kafka` crate's
    // ListOffsets v0 and OffsetCommit v1).
    super::groups::group_offsets(brokers, group, topic)
}

/// Events not yet committed, summed over partitions (a partition never committed counts from
/// its start).
pub fn backlog(offsets: &BTreeMap<i32, (i64, i64)>) -> i64 {
    offsets.values().map(|(c, hw)| hw - (*c).max(0)).sum()
}

/// Whether every partition is committed up to its high watermark (an empty partition has
/// nothing to commit).
pub fn drained(offsets: &BTreeMap<i32, (i64, i64)>) -> bool {
    backlog(offsets) == 0
}

/// Waits (bounded) until every partition of `topic` is committed by `group` up to its high
/// watermark. `check` runs on every turn (to fail early when a service died); broker errors are
/// retried until the deadline (a test may be restarting the broker).
pub fn wait_drained(
    brokers: &str,
    group: &str,
    topic: &str,
    limit: Duration,
    mut check: impl FnMut(),
) {
    let start = std::time::Instant::now();
    loop {
        check();
        match try_offsets(brokers, group, topic) {
            Ok(o) if drained(&o) => return,
            Ok(o) if start.elapsed() > limit => {
                panic!("{topic} not drained after {limit:?}: (committed, high watermark) {o:?}")
            }
            Err(e) if start.elapsed() > limit => {
                panic!("{topic} not drained after {limit:?}: {e}")
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The key of every message on a topic (null keys as `None`), in the order kcat reads them.
pub fn kcat_consume_keys(brokers: &str, topic: &str) -> Vec<Option<String>> {
    kcat_json(brokers, topic)
        .iter()
        .map(|m| m["key"].as_str().map(str::to_owned))
        .collect()
}

/// What kcat prints reading a whole topic from its start, in the output format `args` give
/// (lossy: a value that is not UTF-8 stays readable around it).
fn kcat_read(brokers: &str, topic: &str, args: &[&str]) -> String {
    let out = Command::new("kcat")
        .args([
            "-C",
            "-b",
            brokers,
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-q",
        ])
        .args(args)
        .output()
        .expect("kcat runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every message on a topic as kcat's JSON (`-J`: partition, offset, headers, key, payload).
fn kcat_json(brokers: &str, topic: &str) -> Vec<serde_json::Value> {
    kcat_read(brokers, topic, &["-J"])
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("kcat -J: {e}: {line}")))
        .collect()
}

/// Every dead letter on a topic, read as any Kafka user would (`kcat -C -J`, read_committed)
/// and described for assertions from its `dlq.*` headers (docs/operations.md, "Dead letters"):
/// `reason`, `detail`, `source` {`topic`, `partition`, `offset`}, `time`, the original `key` and
/// `value` (text, lossy; null when none), `by_reference` and `value_size` (for a value left out),
/// and where the letter itself sits (`partition`, `offset`).
pub fn dead_letters(brokers: &str, topic: &str) -> Vec<serde_json::Value> {
    kcat_json(brokers, topic)
        .into_iter()
        .map(|m| {
            let flat = m["headers"].as_array().cloned().unwrap_or_default();
            let header = |name: &str| {
                flat.chunks(2)
                    .find(|kv| kv[0] == name)
                    .and_then(|kv| kv.get(1).cloned())
                    .unwrap_or(serde_json::Value::Null)
            };
            let number = |name: &str| {
                header(name)
                    .as_str()
                    .and_then(|n| n.parse::<i64>().ok())
                    .map_or(serde_json::Value::Null, serde_json::Value::from)
            };
            serde_json::json!({
                "reason": header("dlq.reason"),
                "detail": header("dlq.detail"),
                "source": {
                    "topic": header("dlq.topic"),
                    "partition": number("dlq.partition"),
                    "offset": number("dlq.offset"),
                },
                "time": header("dlq.time"),
                "key": m["key"],
                "value": m["payload"],
                "by_reference": header("dlq.value") == "by-reference",
                "value_size": number("dlq.value.size"),
                "partition": m["partition"],
                "offset": m["offset"],
            })
        })
        .collect()
}
