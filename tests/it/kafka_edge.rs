//! The `kafka` crate at its edges, against a real Kafka 3.9 broker: a partition that mixes
//! uncompressed and compressed batches (the crate drops the uncompressed messages in front of
//! a wrapper; the gap filling reads them back), and a partition with an lz4 or zstd batch (one
//! partition fails every poll; the probe names it).

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::kafka_edge::{client, delete_records, delete_topic, produce_transaction, watermarks};
use common::{create_topic, kafka_brokers, kcat_produce_codec, unique};
use kafka::client::FetchOffset;
use kafka::consumer::Consumer;
use service_courier::transport::kafka_edge::gap::fill_gap;
use service_courier::transport::kafka_edge::probe::{probe_partitions, ProbeState, Undecodable};
use service_courier::transport::kafka_edge::read::read_watermarks;
use service_courier::transport::recreated::{check_recreated, Evidence, Recreated, Seen};
use service_courier::transport::start::{check_position, Resume, Watermarks};

/// The largest fetch the gap filling may use (the service's default fetch size).
const MAX_FETCH: i32 = 1 << 20;

/// The backlog on one partition: 5 uncompressed, 5 gzip, 5 uncompressed, 5 snappy,
/// 5 uncompressed, each group one batch. Returns the values in offset order.
fn mixed_backlog(brokers: &str, topic: &str) -> Vec<String> {
    let mut all = Vec::new();
    for (i, codec) in ["none", "gzip", "none", "snappy", "none"]
        .iter()
        .enumerate()
    {
        // Compressible values, so librdkafka keeps the compression (it sends a batch
        // uncompressed when that is smaller).
        let values: Vec<String> = (1..=5)
            .map(|n| format!("{i}-{codec}-{n}-{}", "order ".repeat(20)))
            .collect();
        kcat_produce_codec(brokers, topic, 0, codec, &values);
        all.extend(values);
    }
    all
}

/// Reads partition 0 of `topic` to its end with the crate's `Consumer`, as the poller does;
/// with `gap_filling`, every jump in offsets goes through `fill_gap` first. Returns (offset,
/// value) in the order they were delivered, and the gaps' descriptions.
fn consume(brokers: &str, topic: &str, gap_filling: bool) -> (Vec<(i64, String)>, Vec<String>) {
    let (start, end) = watermarks(brokers, topic, 0);
    let mut consumer = Consumer::from_hosts(brokers.split(',').map(str::to_owned).collect())
        .with_topic_partitions(topic.to_owned(), &[0])
        .with_fallback_offset(FetchOffset::Earliest)
        .with_fetch_max_wait_time(Duration::from_millis(100))
        .create()
        .expect("consumer");
    let mut expected = start;
    let mut delivered = Vec::new();
    let mut gaps = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while expected < end {
        assert!(
            Instant::now() < deadline,
            "reading {topic} did not reach {end}"
        );
        let mut polled: Vec<(i64, String)> = Vec::new();
        for set in consumer.poll().expect("poll").iter() {
            for m in set.messages() {
                polled.push((m.offset, String::from_utf8_lossy(m.value).into_owned()));
            }
        }
        let Some(&(first, _)) = polled.first() else {
            continue;
        };
        if gap_filling && first > expected {
            let fill = fill_gap(consumer.client_mut(), topic, 0, expected, first, MAX_FETCH)
                .expect("the gap is accounted for");
            gaps.push(format!("{expected}..{first}: {fill}"));
            for m in fill.messages {
                delivered.push((m.offset, String::from_utf8_lossy(&m.value).into_owned()));
            }
        }
        expected = polled.last().map_or(expected, |&(o, _)| o + 1);
        delivered.extend(polled);
    }
    (delivered, gaps)
}

#[test]
fn mixed_compression_is_read_whole_with_gap_filling_and_loses_messages_without() {
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let topic = unique("edge-mixed");
    create_topic(&topic, 1);
    let produced = mixed_backlog(&brokers, &topic);
    assert_eq!(watermarks(&brokers, &topic, 0), (0, 25));

    // The regression this guards: the crate alone loses uncompressed messages silently.
    let (plain, _) = consume(&brokers, &topic, false);
    let plain_values: Vec<&str> = plain.iter().map(|(_, v)| v.as_str()).collect();
    let lost: Vec<&String> = produced
        .iter()
        .filter(|v| !plain_values.contains(&v.as_str()))
        .collect();
    let short: Vec<&str> = lost.iter().map(|v| &v[..v.len().min(10)]).collect();
    eprintln!(
        "crate alone: {} of 25 delivered; lost {short:?}",
        plain.len()
    );
    assert!(
        !lost.is_empty(),
        "the crate alone delivered all 25: {plain_values:?}"
    );
    assert!(
        lost.iter().all(|v| v.contains("-none-")),
        "only uncompressed messages are lost: {lost:?}"
    );

    // With the gap filling: all 25, in offset order, each once.
    let (filled, gaps) = consume(&brokers, &topic, true);
    eprintln!("gaps: {gaps:?}");
    let offsets: Vec<i64> = filled.iter().map(|&(o, _)| o).collect();
    assert_eq!(
        offsets,
        (0..25).collect::<Vec<i64>>(),
        "in order, no duplicates"
    );
    let values: Vec<String> = filled.into_iter().map(|(_, v)| v).collect();
    assert_eq!(values, produced);
}

#[test]
fn a_gap_the_log_does_not_hold_is_explained_not_invented() {
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let topic = unique("edge-gap");
    create_topic(&topic, 1);
    let produced = mixed_backlog(&brokers, &topic);
    let mut c = client(&brokers);
    // Offsets 5..9 are the gzip batch: asked for [5, 10), the filling returns exactly it.
    let fill = fill_gap(&mut c, &topic, 0, 5, 10, MAX_FETCH).expect("gap filled");
    let values: Vec<String> = fill
        .messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.value).into_owned())
        .collect();
    assert_eq!(values, produced[5..10].to_vec());
    assert!(fill.absent.is_empty(), "{fill}");
    // Past the high watermark nothing exists: the filling says it cannot account for it
    // rather than claiming the offsets are empty.
    let err = fill_gap(&mut c, &topic, 0, 25, 30, MAX_FETCH).expect_err("nothing to read");
    assert_eq!(err.stuck_at, 25);
    assert!(err.to_string().contains("do not commit past 25"), "{err}");
}

#[test]
fn transaction_markers_are_explained_as_offsets_without_messages() {
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let topic = unique("edge-tx");
    create_topic(&topic, 1);
    let tx =
        |name: &str, n: usize| -> Vec<String> { (0..n).map(|i| format!("{name}-{i}")).collect() };
    produce_transaction(&brokers, &topic, &unique("tx"), &tx("a", 3)); // 0..2, marker 3
    produce_transaction(&brokers, &topic, &unique("tx"), &tx("b", 2)); // 4..5, marker 6
                                                                       // Read up to the last marker, the partition has nothing to give: the crate's consumer
                                                                       // fails with MessageSizeTooLarge there; the probe says why.
    let next = BTreeMap::from([(0, 6)]);
    let probe = probe_partitions(&mut client(&brokers), &topic, &next, MAX_FETCH);
    eprintln!("{}", probe[0]);
    assert_eq!(
        probe[0].state,
        ProbeState::OnlyMarkers { high_watermark: 7 }
    );
    assert!(probe[0]
        .to_string()
        .contains("offsets 6..6 hold transaction markers"));
    kcat_produce_codec(&brokers, &topic, 0, "none", &tx("c", 1)); // 7
    let mut c = client(&brokers);
    let marks = read_watermarks(&mut c, &topic).expect("watermarks");
    assert_eq!(
        marks,
        BTreeMap::from([(
            0,
            Watermarks {
                log_start: 0,
                high: 8
            }
        )])
    );

    let fill = fill_gap(&mut c, &topic, 0, 0, 8, MAX_FETCH).expect("accounted for");
    eprintln!("0..8: {fill}");
    let offsets: Vec<i64> = fill.messages.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, vec![0, 1, 2, 4, 5, 7]);
    assert_eq!(fill.absent, vec![3..4, 6..7]);
    assert_eq!(
        fill.to_string(),
        "recovered 6 messages; explained: no message at offsets 3..3, 6..6"
    );
    // A gap that is only a marker: nothing recovered, the marker explained.
    let marker = fill_gap(&mut c, &topic, 0, 3, 4, MAX_FETCH).expect("accounted for");
    assert!(marker.messages.is_empty());
    assert_eq!(marker.absent, vec![3..4]);
}

/// Six partitions with three plain messages each, and on partition 2 one batch compressed
/// with `codec` after them. The crate's consumer fails every poll; the probe names partition
/// 2, the offset of the bad batch and the cause, and finds the other five readable.
fn undecodable_partition_is_named(codec: &str, expected: Undecodable, words: &str) {
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let topic = unique(&format!("edge-{codec}"));
    create_topic(&topic, 6);
    for p in 0..6 {
        let values: Vec<String> = (0..3).map(|n| format!("p{p}-plain-{n}")).collect();
        kcat_produce_codec(&brokers, &topic, p, "none", &values);
    }
    // Compressible values: librdkafka sends a batch uncompressed when compressing would not
    // make it smaller, which tiny values would not.
    let bad: Vec<String> = (0..4)
        .map(|n| format!("p2-{codec}-{n}-{}", "courier ".repeat(40)))
        .collect();
    kcat_produce_codec(&brokers, &topic, 2, codec, &bad);

    let mut consumer = Consumer::from_hosts(vec![brokers.clone()])
        .with_topic_partitions(topic.clone(), &[0, 1, 2, 3, 4, 5])
        .with_fallback_offset(FetchOffset::Earliest)
        .create()
        .expect("consumer");
    // Poll as the service does until the bad batch is reached: Kafka sends the messages in
    // front of a zstd batch and fails the fetch only once it starts at that batch.
    let mut next: BTreeMap<i32, i64> = (0..6).map(|p| (p, 0)).collect();
    let mut failure = None;
    for _ in 0..20 {
        match consumer.poll() {
            Ok(sets) => {
                for set in sets.iter() {
                    if let Some(last) = set.messages().last() {
                        next.insert(set.partition(), last.offset + 1);
                    }
                }
            }
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    let failure = failure.expect("one undecodable partition fails the whole poll");
    eprintln!("{codec}: the crate's poll fails with: {failure}; next offsets {next:?}");

    let probes = probe_partitions(&mut client(&brokers), &topic, &next, MAX_FETCH);
    for p in &probes {
        eprintln!("{p}");
    }
    assert_eq!(probes.len(), 6);
    for p in &probes {
        if p.partition == 2 {
            assert_eq!(
                p.state,
                ProbeState::Undecodable {
                    cause: expected,
                    at: 3
                }
            );
            let text = p.to_string();
            assert!(
                text.starts_with("partition 2 is stuck at offset 3"),
                "{text}"
            );
            assert!(text.contains(words), "{text}");
        } else {
            assert_eq!(
                p.state,
                ProbeState::Readable {
                    messages: usize::try_from(3 - p.offset).expect("offset at most 3"),
                    high_watermark: 3
                },
                "partition {}",
                p.partition
            );
        }
    }
}

#[test]
fn an_lz4_batch_is_named_with_its_partition_and_offset() {
    undecodable_partition_is_named("lz4", Undecodable::Lz4, "compressed with lz4");
}

#[test]
fn a_zstd_batch_is_named_not_reported_as_unknown() {
    undecodable_partition_is_named("zstd", Undecodable::Zstd, "compressed with zstd");
}

#[test]
fn a_committed_offset_that_left_the_log_is_named_where_the_crate_skips_silently() {
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let topic = unique("edge-reset");
    let group = unique("group");
    create_topic(&topic, 1);
    let values: Vec<String> = (0..10).map(|n| format!("v{n}")).collect();
    kcat_produce_codec(&brokers, &topic, 0, "none", &values);
    let mut c = client(&brokers);
    c.set_group_offset_storage(Some(kafka::client::GroupOffsetStorage::Kafka));
    c.commit_offset(&group, &topic, 0, 2).expect("commit 2");
    // Retention (here DeleteRecords) removes offsets 0..5 before the group reads on.
    delete_records(&brokers, &topic, 0, 6);

    let marks = read_watermarks(&mut c, &topic).expect("watermarks")[&0];
    assert_eq!(
        marks,
        Watermarks {
            log_start: 6,
            high: 10
        }
    );
    let resume = check_position(2, marks);
    assert_eq!(resume, Resume::LeftLog { from: 2, to: 6 });
    assert_eq!(resume.skipped(), 4);
    assert!(
        resume
            .to_string()
            .contains("skipping offsets 2..5 (4 offsets)"),
        "{resume}"
    );

    // What the check is for: the crate's consumer falls back to the log start without a word.
    let mut consumer = Consumer::from_hosts(vec![brokers.clone()])
        .with_group(group.clone())
        .with_offset_storage(Some(kafka::client::GroupOffsetStorage::Kafka))
        .with_topic_partitions(topic.clone(), &[0])
        .with_fallback_offset(FetchOffset::Earliest)
        .create()
        .expect("consumer");
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        assert!(Instant::now() < deadline, "nothing polled from {topic}");
        let sets = consumer.poll().expect("poll");
        if let Some(m) = sets
            .iter()
            .flat_map(|s| s.messages().first().map(|m| m.offset))
            .next()
        {
            break m;
        }
    };
    assert_eq!(first, 6, "the crate resumed elsewhere than the log start");
}

#[test]
fn a_topic_recreated_and_refilled_past_its_old_end_is_detected() {
    let Some(brokers) = kafka_brokers() else {
        return;
    };
    let topic = unique("edge-recreate");
    let group = unique("group");
    create_topic(&topic, 1);
    let old: Vec<String> = (0..10).map(|n| format!("old{n}")).collect();
    kcat_produce_codec(&brokers, &topic, 0, "none", &old);
    let mut c = client(&brokers);
    c.set_group_offset_storage(Some(kafka::client::GroupOffsetStorage::Kafka));
    c.commit_offset(&group, &topic, 0, 10).expect("commit 10");
    let before = read_watermarks(&mut c, &topic).expect("watermarks")[&0];
    let seen = Seen {
        highest_received: Some(9),
        previous: Some(before),
        committed: Some(10),
    };

    delete_topic(&brokers, &topic);
    create_topic(&topic, 1);
    let new: Vec<String> = (0..20).map(|n| format!("new{n}")).collect();
    kcat_produce_codec(&brokers, &topic, 0, "none", &new);

    let mut c = client(&brokers);
    c.set_group_offset_storage(Some(kafka::client::GroupOffsetStorage::Kafka));
    let now = read_watermarks(&mut c, &topic).expect("watermarks")[&0];
    assert_eq!(
        now,
        Watermarks {
            log_start: 0,
            high: 20
        }
    );
    let evidence = |group_committed| Evidence {
        seen,
        now: Some(now),
        group_committed: Some(group_committed),
        ..Evidence::default()
    };
    // The watermarks alone look like growth ...
    assert_eq!(check_recreated(&evidence(Some(10))), None);
    // ... but deleting the topic deleted the group's offsets for it.
    let mut group_committed = Some(10);
    common::wait_until(
        Duration::from_secs(60),
        "the group's offset deleted",
        || {
            group_committed = c
                .fetch_group_topic_offset(&group, &topic)
                .expect("group offsets")
                .iter()
                .find(|p| p.partition == 0 && p.offset >= 0)
                .map(|p| p.offset);
            group_committed.is_none()
        },
    );
    assert_eq!(
        check_recreated(&evidence(group_committed)),
        Some(Recreated::CommitVanished { committed: 10 })
    );
}
