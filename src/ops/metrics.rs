//! Counters and gauges, kept with atomics and small maps, rendered in the Prometheus text format.
//! Hand-written: a dozen series do not justify the `prometheus` crate and its dependencies.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upper bounds of the processing-latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

pub use crate::repository::FleetGauges;

/// How old the sampled fleet gauges may be and still be served: a few samples' worth (see
/// `ops::sampler`). Older ones are left out of `/metrics`, as when the database is frozen and the
/// sampler waits on it: no series is better than a stale one that looks current.
pub const FLEET_SERVED_FOR: Duration = Duration::from_secs(10);

/// Upper bounds of the event-age histogram (the event's `created_at` to its commit), seconds:
/// fine below 100 ms, where the latency target is.
const AGE_BUCKETS: [f64; 20] = [
    0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0,
    5.0, 10.0, 30.0, 60.0,
];

/// A Prometheus histogram with fixed bucket bounds (seconds), lock-free.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    /// Cumulative: bucket i counts observations <= bounds[i].
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str) {
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            let n = bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Offsets of one partition.
#[derive(Debug, Clone, Copy, Default)]
struct PartitionGauge {
    /// The next offset to read, as last committed.
    committed: Option<i64>,
    /// The partition's end as the client last saw it (the poller reads it with every commit).
    high_watermark: Option<i64>,
}

impl PartitionGauge {
    /// What `/metrics`, `/partitions` and `/pipeline` show: the committed offset never above
    /// the end. The poller reads the client's newest end with every commit, so a committed
    /// offset above it only means an end read a moment older than the commit (librdkafka's
    /// statistics come once a commit interval): shown at the end, with lag 0, never as a
    /// negative lag clamped away (issue #21; docs/operations.md, "Lag").
    fn reading(&self, partition: i32) -> PartitionReading {
        let committed = match (self.committed, self.high_watermark) {
            (Some(c), Some(end)) => Some(c.min(end)),
            (c, _) => c,
        };
        PartitionReading {
            partition,
            committed,
            high_watermark: self.high_watermark,
        }
    }
}

/// One partition's offsets as last seen, for the HTTP API's pipeline view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionReading {
    /// Which partition.
    pub partition: i32,
    /// Next offset to read, as committed (never above `high_watermark`); `None` before the
    /// first commit.
    pub committed: Option<i64>,
    /// The partition's end: the last stable offset under read_committed, else the high
    /// watermark; `None` before the client has seen one.
    pub high_watermark: Option<i64>,
}

impl PartitionReading {
    /// The end minus the committed offset, as `courier_consumer_lag` renders it.
    pub fn lag(&self) -> Option<i64> {
        self.high_watermark
            .map(|hw| (hw - self.committed.unwrap_or(0)).max(0))
    }
}

/// Every series the service exports.
#[derive(Debug)]
pub struct Metrics {
    consumed: AtomicU64,
    applied: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    dead_letters: Mutex<BTreeMap<&'static str, u64>>,
    latency: Histogram,
    age: Histogram,
    partitions: Mutex<BTreeMap<i32, PartitionGauge>>,
    queue_depths: Mutex<Vec<usize>>,
    db_errors: AtomicU64,
    db_retries: AtomicU64,
    /// Per partition: whether it is stalled (cannot be read for now).
    stalled: Mutex<BTreeMap<i32, bool>>,
    /// Per partition: offsets that left the log before they were read.
    skipped: Mutex<BTreeMap<i32, u64>>,
    /// Dead letters not yet accepted by Kafka, and whether fetching is paused for them.
    dead_letter_backlog: AtomicU64,
    dead_letters_paused: AtomicBool,
    /// Active deliveries past their deadline, as the deadline pass last counted them.
    overdue: AtomicU64,
    /// Deliveries the deadline pass completed.
    deadline_completions: AtomicU64,
    /// Couriers by status and waiting orders as the sampler last read them, and when: `/metrics`
    /// serves them from here and never waits on the database.
    fleet: Mutex<Option<(Instant, FleetGauges)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            consumed: AtomicU64::new(0),
            applied: Mutex::default(),
            dead_letters: Mutex::default(),
            latency: Histogram::new(&LATENCY_BUCKETS),
            age: Histogram::new(&AGE_BUCKETS),
            partitions: Mutex::default(),
            queue_depths: Mutex::default(),
            db_errors: AtomicU64::new(0),
            db_retries: AtomicU64::new(0),
            stalled: Mutex::default(),
            skipped: Mutex::default(),
            dead_letter_backlog: AtomicU64::new(0),
            dead_letters_paused: AtomicBool::new(false),
            overdue: AtomicU64::new(0),
            deadline_completions: AtomicU64::new(0),
            fleet: Mutex::default(),
        }
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Metrics are best effort: a panic elsewhere must not take them down.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Metrics {
    /// A message was received from Kafka (valid or not, redeliveries excluded).
    pub fn consumed(&self) {
        self.consumed.fetch_add(1, Ordering::Relaxed);
    }

    /// An event was applied: its status family, its outcome label and how long it took from
    /// receipt to commit.
    pub fn applied(&self, family: &'static str, outcome: &'static str, latency: Duration) {
        *locked(&self.applied).entry((family, outcome)).or_default() += 1;
        self.latency.observe(latency);
    }

    /// How old an applied event was at its commit: now minus its `created_at` (the producer's
    /// clock; negative skew counts as zero).
    pub fn event_age(&self, age: Duration) {
        self.age.observe(age);
    }

    /// A bad event reached the dead-letter topic.
    pub fn dead_lettered(&self, reason: &'static str) {
        *locked(&self.dead_letters).entry(reason).or_default() += 1;
    }

    /// A partition's offsets were committed up to `next`.
    pub fn committed(&self, partition: i32, next: i64) {
        locked(&self.partitions)
            .entry(partition)
            .or_default()
            .committed = Some(next);
    }

    /// A partition's end as the client last saw it (last stable offset or high watermark),
    /// for the lag.
    pub fn high_watermark(&self, partition: i32, offset: i64) {
        locked(&self.partitions)
            .entry(partition)
            .or_default()
            .high_watermark = Some(offset);
    }

    /// A partition was handed to another instance: its gauges are that instance's now.
    pub fn forget_partition(&self, partition: i32) {
        locked(&self.partitions).remove(&partition);
        locked(&self.stalled).remove(&partition);
    }

    /// A partition became ours: its `courier_partition_stalled` series exists from now on (0
    /// until it stalls), so dashboards and alerts see every partition, not only stalled ones.
    pub fn partition_owned(&self, partition: i32) {
        locked(&self.stalled).entry(partition).or_insert(false);
    }

    /// The current depth of each worker's queue.
    pub fn queue_depths(&self, depths: Vec<usize>) {
        *locked(&self.queue_depths) = depths;
    }

    /// A database call failed.
    pub fn db_error(&self) {
        self.db_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a partition is stalled (an undecodable batch, offsets that cannot be accounted
    /// for): `courier_partition_stalled`.
    pub fn partition_stalled(&self, partition: i32, stalled: bool) {
        locked(&self.stalled).insert(partition, stalled);
    }

    /// Offsets of a partition that left the log before they were read.
    pub fn offsets_skipped(&self, partition: i32, n: u64) {
        *locked(&self.skipped).entry(partition).or_default() += n;
    }

    /// Dead letters held unsent, and whether fetching is paused for them.
    pub fn dead_letter_backlog(&self, held: usize, paused: bool) {
        self.dead_letter_backlog
            .store(held as u64, Ordering::Relaxed);
        self.dead_letters_paused.store(paused, Ordering::Relaxed);
    }

    /// Active deliveries whose deadline has passed, as just counted: `courier_deliveries_overdue`.
    pub fn overdue_deliveries(&self, n: u64) {
        self.overdue.store(n, Ordering::Relaxed);
    }

    /// The deadline pass completed `n` deliveries: `courier_deadline_completions_total`.
    pub fn deadline_completions(&self, n: u64) {
        self.deadline_completions.fetch_add(n, Ordering::Relaxed);
    }

    /// A failed event is being retried.
    pub fn db_retry(&self) {
        self.db_retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Messages received so far (the counter behind `courier_events_consumed_total`).
    pub fn consumed_total(&self) -> u64 {
        self.consumed.load(Ordering::Relaxed)
    }

    /// Events applied so far, all outcomes together.
    pub fn applied_total(&self) -> u64 {
        locked(&self.applied).values().sum()
    }

    /// Dead letters so far, by reason.
    pub fn dead_letter_counts(&self) -> BTreeMap<&'static str, u64> {
        locked(&self.dead_letters).clone()
    }

    /// The partitions the poller reports stalled now (`courier_partition_stalled` 1).
    pub fn stalled_partitions(&self) -> Vec<i32> {
        locked(&self.stalled)
            .iter()
            .filter(|(_, stalled)| **stalled)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Each partition's offsets, by partition.
    pub fn partition_readings(&self) -> Vec<PartitionReading> {
        locked(&self.partitions)
            .iter()
            .map(|(p, g)| g.reading(*p))
            .collect()
    }

    /// The fleet gauges just read from the database, or `None` when they could not be read
    /// (their series then leave `/metrics`).
    pub fn fleet_sampled(&self, fleet: Option<FleetGauges>) {
        *locked(&self.fleet) = fleet.map(|f| (Instant::now(), f));
    }

    /// The fleet gauges last sampled, unless older than [`FLEET_SERVED_FOR`].
    fn fleet(&self) -> Option<FleetGauges> {
        let reading = *locked(&self.fleet);
        reading
            .filter(|(at, _)| at.elapsed() <= FLEET_SERVED_FOR)
            .map(|(_, f)| f)
    }

    /// The Prometheus text exposition (version 0.0.4): each family's HELP and TYPE, then its
    /// samples. Reads memory only: the database-backed gauges are the sampler's last reading.
    pub fn render(&self) -> String {
        let fleet = self.fleet();
        let mut out = String::with_capacity(4096);
        let header = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };

        let name = "courier_events_consumed_total";
        header(&mut out, name, "counter", "Messages received from Kafka.");
        let _ = writeln!(out, "{name} {}", self.consumed.load(Ordering::Relaxed));

        let name = "courier_events_applied_total";
        header(
            &mut out,
            name,
            "counter",
            "Events applied, by status family and outcome.",
        );
        for ((fam, outcome), n) in locked(&self.applied).iter() {
            let _ = writeln!(out, "{name}{{family=\"{fam}\",outcome=\"{outcome}\"}} {n}");
        }

        let name = "courier_dead_letters_total";
        header(
            &mut out,
            name,
            "counter",
            "Events sent to the dead-letter topic, by reason.",
        );
        for (reason, n) in locked(&self.dead_letters).iter() {
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {n}");
        }

        let name = "courier_event_processing_seconds";
        header(
            &mut out,
            name,
            "histogram",
            "Time from receipt of an event to the commit of its transaction.",
        );
        self.latency.render(&mut out, name);

        let name = "courier_event_age_seconds";
        header(
            &mut out,
            name,
            "histogram",
            "Time from an event's created_at (its send time) to the commit of its transaction.",
        );
        self.age.render(&mut out, name);

        let partitions = self.partition_readings();
        let name = "courier_committed_offset";
        header(
            &mut out,
            name,
            "gauge",
            "Next offset to read, as committed, per partition.",
        );
        for r in &partitions {
            if let Some(c) = r.committed {
                let _ = writeln!(out, "{name}{{partition=\"{}\"}} {c}", r.partition);
            }
        }
        let name = "courier_consumer_lag";
        header(
            &mut out,
            name,
            "gauge",
            "Last stable offset (or high watermark) minus committed offset, per partition.",
        );
        for r in &partitions {
            if let Some(lag) = r.lag() {
                let _ = writeln!(out, "{name}{{partition=\"{}\"}} {lag}", r.partition);
            }
        }

        let name = "courier_partition_stalled";
        header(
            &mut out,
            name,
            "gauge",
            "1 while a partition cannot be read (see /healthz for the offset and cause).",
        );
        for (p, stalled) in locked(&self.stalled).iter() {
            let _ = writeln!(out, "{name}{{partition=\"{p}\"}} {}", u8::from(*stalled));
        }
        let name = "courier_offsets_skipped_total";
        header(
            &mut out,
            name,
            "counter",
            "Offsets that left the log (retention, DeleteRecords, a skipped batch) before they were read.",
        );
        for (p, n) in locked(&self.skipped).iter() {
            let _ = writeln!(out, "{name}{{partition=\"{p}\"}} {n}");
        }
        let name = "courier_dead_letter_backlog";
        header(
            &mut out,
            name,
            "gauge",
            "Dead letters not yet accepted by the dead-letter topic (their offsets stay uncommitted).",
        );
        let _ = writeln!(
            out,
            "{name} {}",
            self.dead_letter_backlog.load(Ordering::Relaxed)
        );
        let name = "courier_fetching_paused";
        header(
            &mut out,
            name,
            "gauge",
            "1 while fetching is paused because too many dead letters are unsent.",
        );
        let _ = writeln!(
            out,
            "{name} {}",
            u8::from(self.dead_letters_paused.load(Ordering::Relaxed))
        );

        let name = "courier_worker_queue_depth";
        header(
            &mut out,
            name,
            "gauge",
            "Events waiting in each worker's queue.",
        );
        for (w, d) in locked(&self.queue_depths).iter().enumerate() {
            let _ = writeln!(out, "{name}{{worker=\"{w}\"}} {d}");
        }

        if let Some(f) = fleet {
            let name = "courier_orders_waiting";
            header(&mut out, name, "gauge", "Orders waiting for a courier.");
            let _ = writeln!(out, "{name} {}", f.waiting_orders);
            let name = "courier_couriers";
            header(&mut out, name, "gauge", "Couriers by status.");
            for (status, n) in [
                ("available", f.available),
                ("busy", f.busy),
                ("paused", f.paused),
            ] {
                let _ = writeln!(out, "{name}{{status=\"{status}\"}} {n}");
            }
        }

        let name = "courier_deliveries_overdue";
        header(
            &mut out,
            name,
            "gauge",
            "Active deliveries whose deadline has passed (the deadline pass's last count).",
        );
        let _ = writeln!(out, "{name} {}", self.overdue.load(Ordering::Relaxed));
        let name = "courier_deadline_completions_total";
        header(
            &mut out,
            name,
            "counter",
            "Deliveries completed at their deadline by the deadline pass (DEADLINE_POLICY=complete).",
        );
        let _ = writeln!(
            out,
            "{name} {}",
            self.deadline_completions.load(Ordering::Relaxed)
        );

        let name = "courier_db_errors_total";
        header(&mut out, name, "counter", "Failed database calls.");
        let _ = writeln!(out, "{name} {}", self.db_errors.load(Ordering::Relaxed));
        let name = "courier_db_retries_total";
        header(
            &mut out,
            name,
            "counter",
            "Events retried after a transient database failure.",
        );
        let _ = writeln!(out, "{name} {}", self.db_retries.load(Ordering::Relaxed));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histogram_and_gauges() {
        let m = Metrics::default();
        m.consumed();
        m.consumed();
        m.applied("assign", "assigned", Duration::from_millis(3));
        m.applied("assign", "assigned", Duration::from_millis(30));
        m.dead_lettered("invalid_json");
        m.committed(2, 40);
        m.high_watermark(2, 45);
        m.queue_depths(vec![0, 3]);
        m.partition_stalled(4, true);
        m.offsets_skipped(1, 7);
        m.dead_letter_backlog(12, true);
        assert!(
            !m.render().contains("courier_orders_waiting"),
            "no fleet series before the first sample"
        );
        m.fleet_sampled(Some(FleetGauges {
            available: 1,
            busy: 2,
            paused: 0,
            waiting_orders: 7,
        }));
        let text = m.render();
        for line in [
            "courier_events_consumed_total 2",
            "courier_events_applied_total{family=\"assign\",outcome=\"assigned\"} 2",
            "courier_dead_letters_total{reason=\"invalid_json\"} 1",
            "courier_event_processing_seconds_bucket{le=\"0.005\"} 1",
            "courier_event_processing_seconds_bucket{le=\"0.05\"} 2",
            "courier_event_processing_seconds_count 2",
            "courier_committed_offset{partition=\"2\"} 40",
            "courier_consumer_lag{partition=\"2\"} 5",
            "courier_worker_queue_depth{worker=\"1\"} 3",
            "courier_orders_waiting 7",
            "courier_partition_stalled{partition=\"4\"} 1",
            "courier_offsets_skipped_total{partition=\"1\"} 7",
            "courier_dead_letter_backlog 12",
            "courier_fetching_paused 1",
            "courier_couriers{status=\"busy\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn a_committed_offset_is_never_shown_above_the_end() {
        // A commit newer than the end last read: shown at the end, lag 0 (not 6 above it).
        let m = Metrics::default();
        m.high_watermark(0, 134);
        m.committed(0, 140);
        let reading = m.partition_readings()[0];
        assert_eq!(
            (reading.committed, reading.high_watermark, reading.lag()),
            (Some(134), Some(134), Some(0))
        );
        let text = m.render();
        assert!(
            text.contains("courier_committed_offset{partition=\"0\"} 134\n"),
            "{text}"
        );
        assert!(
            text.contains("courier_consumer_lag{partition=\"0\"} 0\n"),
            "{text}"
        );
        // The next end read with the commit: the true lag again.
        m.high_watermark(0, 150);
        assert_eq!(m.partition_readings()[0].lag(), Some(10));
    }

    #[test]
    fn fleet_gauges_leave_when_unreadable_or_stale() {
        let m = Metrics::default();
        let fleet = FleetGauges {
            available: 3,
            busy: 0,
            paused: 1,
            waiting_orders: 0,
        };
        m.fleet_sampled(Some(fleet));
        assert!(m
            .render()
            .contains("courier_couriers{status=\"available\"} 3"));
        m.fleet_sampled(None);
        assert!(!m.render().contains("courier_couriers"));
        let old = Instant::now()
            .checked_sub(FLEET_SERVED_FOR + Duration::from_secs(1))
            .expect("the clock is past a few seconds");
        *locked(&m.fleet) = Some((old, fleet));
        assert!(!m.render().contains("courier_couriers"));
    }
}
