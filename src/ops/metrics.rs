//! The service's series, kept and rendered by `prometheus-client` (the Prometheus project's Rust
//! client) in the OpenMetrics text format. Series known at each event are the crate's counters,
//! families and histograms; those computed at scrape time (lag, stalled partitions, queue
//! depths, the fleet while fresh) come from `Scraped`, a collector over the last readings.

use std::collections::BTreeMap;
use std::fmt::Error as FmtError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Metric, Registry};

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

/// The content type of [`Metrics::render`]'s text, for the `/metrics` answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The label set of `courier_events_applied_total`: family and outcome.
type Applied = [(&'static str, &'static str); 2];
/// The label set of a per-partition series.
type ByPartition = [(&'static str, i32); 1];

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

/// The readings whose series are computed at scrape time; the registry's collector.
#[derive(Debug, Default)]
struct Scraped {
    partitions: Mutex<BTreeMap<i32, PartitionGauge>>,
    queue_depths: Mutex<Vec<usize>>,
    /// Per partition: whether it is stalled (cannot be read for now).
    stalled: Mutex<BTreeMap<i32, bool>>,
    /// Dead letters by reason: a map rather than a `Family`, which cannot be listed for
    /// [`Metrics::dead_letter_counts`].
    dead_letters: Mutex<BTreeMap<&'static str, u64>>,
    /// Couriers by status and waiting orders as the sampler last read them, and when: `/metrics`
    /// serves them from here and never waits on the database.
    fleet: Mutex<Option<(Instant, FleetGauges)>>,
}

/// Every series the service exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    consumed: Counter,
    applied: Family<Applied, Counter>,
    /// All outcomes together, for the pipeline view (a `Family` cannot be summed).
    applied_total: Counter,
    latency: Histogram,
    age: Histogram,
    db_errors: Counter,
    db_retries: Counter,
    /// Per partition: offsets that left the log before they were read.
    skipped: Family<ByPartition, Counter>,
    /// Dead letters not yet accepted by Kafka, and whether fetching is paused for them.
    dead_letter_backlog: Gauge,
    fetching_paused: Gauge,
    /// Active deliveries past their deadline, as the deadline pass last counted them.
    overdue: Gauge,
    /// Deliveries the deadline pass completed.
    deadline_completions: Counter,
    scraped: Arc<Scraped>,
}

/// Registers `metric` as `name` with `help`, both written as they are exposed: the registry
/// appends `_total` to a counter's name and a period to the help itself, so those are taken off
/// first.
fn add<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    let name = name.strip_suffix("_total").unwrap_or(name);
    registry.register(name, help.strip_suffix('.').unwrap_or(help), metric.clone());
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::default();
        let consumed = add(
            &mut r,
            "courier_events_consumed_total",
            "Messages received from Kafka.",
            Counter::default(),
        );
        let applied = add(
            &mut r,
            "courier_events_applied_total",
            "Events applied, by status family and outcome.",
            Family::default(),
        );
        let latency = add(
            &mut r,
            "courier_event_processing_seconds",
            "Time from receipt of an event to the commit of its transaction.",
            Histogram::new(LATENCY_BUCKETS),
        );
        let age = add(
            &mut r,
            "courier_event_age_seconds",
            "Time from an event's created_at (its send time) to the commit of its transaction.",
            Histogram::new(AGE_BUCKETS),
        );
        let skipped = add(
            &mut r,
            "courier_offsets_skipped_total",
            "Offsets that left the log (retention, DeleteRecords, a skipped batch) before they were read.",
            Family::default(),
        );
        let dead_letter_backlog = add(
            &mut r,
            "courier_dead_letter_backlog",
            "Dead letters not yet accepted by the dead-letter topic (their offsets stay uncommitted).",
            Gauge::default(),
        );
        let fetching_paused = add(
            &mut r,
            "courier_fetching_paused",
            "1 while fetching is paused because too many dead letters are unsent.",
            Gauge::default(),
        );
        let overdue = add(
            &mut r,
            "courier_deliveries_overdue",
            "Active deliveries whose deadline has passed (the deadline pass's last count).",
            Gauge::default(),
        );
        let deadline_completions = add(
            &mut r,
            "courier_deadline_completions_total",
            "Deliveries completed at their deadline by the deadline pass (DEADLINE_POLICY=complete).",
            Counter::default(),
        );
        let db_errors = add(
            &mut r,
            "courier_db_errors_total",
            "Failed database calls.",
            Counter::default(),
        );
        let db_retries = add(
            &mut r,
            "courier_db_retries_total",
            "Events retried after a transient database failure.",
            Counter::default(),
        );
        let scraped = Arc::new(Scraped::default());
        r.register_collector(Box::new(Arc::clone(&scraped)));
        Self {
            registry: r,
            consumed,
            applied,
            latency,
            age,
            skipped,
            dead_letter_backlog,
            fetching_paused,
            overdue,
            deadline_completions,
            db_errors,
            db_retries,
            applied_total: Counter::default(),
            scraped,
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
        self.consumed.inc();
    }

    /// An event was applied: its status family, its outcome label and how long it took from
    /// receipt to commit.
    pub fn applied(&self, family: &'static str, outcome: &'static str, latency: Duration) {
        self.applied
            .get_or_create(&[("family", family), ("outcome", outcome)])
            .inc();
        self.applied_total.inc();
        self.latency.observe(latency.as_secs_f64());
    }

    /// How old an applied event was at its commit: now minus its `created_at` (the producer's
    /// clock; negative skew counts as zero).
    pub fn event_age(&self, age: Duration) {
        self.age.observe(age.as_secs_f64());
    }

    /// A bad event reached the dead-letter topic.
    pub fn dead_lettered(&self, reason: &'static str) {
        *locked(&self.scraped.dead_letters)
            .entry(reason)
            .or_default() += 1;
    }

    /// A partition's offsets were committed up to `next`.
    pub fn committed(&self, partition: i32, next: i64) {
        locked(&self.scraped.partitions)
            .entry(partition)
            .or_default()
            .committed = Some(next);
    }

    /// A partition's end as the client last saw it (last stable offset or high watermark),
    /// for the lag.
    pub fn high_watermark(&self, partition: i32, offset: i64) {
        locked(&self.scraped.partitions)
            .entry(partition)
            .or_default()
            .high_watermark = Some(offset);
    }

    /// A partition was handed to another instance: its gauges are that instance's now.
    pub fn forget_partition(&self, partition: i32) {
        locked(&self.scraped.partitions).remove(&partition);
        locked(&self.scraped.stalled).remove(&partition);
    }

    /// A partition became ours: its `courier_partition_stalled` series exists from now on (0
    /// until it stalls), so dashboards and alerts see every partition, not only stalled ones.
    pub fn partition_owned(&self, partition: i32) {
        locked(&self.scraped.stalled)
            .entry(partition)
            .or_insert(false);
    }

    /// The current depth of each worker's queue.
    pub fn queue_depths(&self, depths: Vec<usize>) {
        *locked(&self.scraped.queue_depths) = depths;
    }

    /// A database call failed.
    pub fn db_error(&self) {
        self.db_errors.inc();
    }

    /// Whether a partition is stalled (an undecodable batch, offsets that cannot be accounted
    /// for): `courier_partition_stalled`.
    pub fn partition_stalled(&self, partition: i32, stalled: bool) {
        locked(&self.scraped.stalled).insert(partition, stalled);
    }

    /// Offsets of a partition that left the log before they were read.
    pub fn offsets_skipped(&self, partition: i32, n: u64) {
        self.skipped
            .get_or_create(&[("partition", partition)])
            .inc_by(n);
    }

    /// Dead letters held unsent, and whether fetching is paused for them.
    pub fn dead_letter_backlog(&self, held: usize, paused: bool) {
        self.dead_letter_backlog
            .set(i64::try_from(held).unwrap_or(i64::MAX));
        self.fetching_paused.set(i64::from(paused));
    }

    /// Active deliveries whose deadline has passed, as just counted: `courier_deliveries_overdue`.
    pub fn overdue_deliveries(&self, n: u64) {
        self.overdue.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The deadline pass completed `n` deliveries: `courier_deadline_completions_total`.
    pub fn deadline_completions(&self, n: u64) {
        self.deadline_completions.inc_by(n);
    }

    /// A failed event is being retried.
    pub fn db_retry(&self) {
        self.db_retries.inc();
    }

    /// Messages received so far (the counter behind `courier_events_consumed_total`).
    pub fn consumed_total(&self) -> u64 {
        self.consumed.get()
    }

    /// Events applied so far, all outcomes together.
    pub fn applied_total(&self) -> u64 {
        self.applied_total.get()
    }

    /// Dead letters so far, by reason.
    pub fn dead_letter_counts(&self) -> BTreeMap<&'static str, u64> {
        locked(&self.scraped.dead_letters).clone()
    }

    /// The partitions the poller reports stalled now (`courier_partition_stalled` 1).
    pub fn stalled_partitions(&self) -> Vec<i32> {
        locked(&self.scraped.stalled)
            .iter()
            .filter(|(_, stalled)| **stalled)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Each partition's offsets, by partition.
    pub fn partition_readings(&self) -> Vec<PartitionReading> {
        self.scraped.partition_readings()
    }

    /// The fleet gauges just read from the database, or `None` when they could not be read
    /// (their series then leave `/metrics`).
    pub fn fleet_sampled(&self, fleet: Option<FleetGauges>) {
        *locked(&self.scraped.fleet) = fleet.map(|f| (Instant::now(), f));
    }

    /// The OpenMetrics text exposition ([`CONTENT_TYPE`]). Reads memory only: the
    /// database-backed gauges are the sampler's last reading.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Writes one gauge family: its HELP and TYPE, then one sample per label set.
fn gauges<L: EncodeLabelSet, V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, V)>,
) -> Result<(), FmtError> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        family.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

impl Scraped {
    /// Each partition's offsets, by partition: the pipeline view's and the lag series' one source.
    fn partition_readings(&self) -> Vec<PartitionReading> {
        locked(&self.partitions)
            .iter()
            .map(|(p, g)| g.reading(*p))
            .collect()
    }
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), FmtError> {
        let dead_letters = locked(&self.dead_letters).clone();
        let name = "courier_dead_letters_total";
        let mut family = encoder.encode_descriptor(
            name.trim_end_matches("_total"),
            "Events sent to the dead-letter topic, by reason.",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in dead_letters {
            family
                .encode_family(&[("reason", reason)])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        let readings = self.partition_readings();
        let per_partition = |value: fn(&PartitionReading) -> Option<i64>| {
            readings
                .iter()
                .filter_map(move |r| value(r).map(|v| ([("partition", r.partition)], v)))
        };
        gauges(
            &mut encoder,
            "courier_committed_offset",
            "Next offset to read, as committed, per partition.",
            per_partition(|r| r.committed),
        )?;
        gauges(
            &mut encoder,
            "courier_consumer_lag",
            "Last stable offset (or high watermark) minus committed offset, per partition.",
            per_partition(PartitionReading::lag),
        )?;
        let stalled = locked(&self.stalled).clone();
        gauges(
            &mut encoder,
            "courier_partition_stalled",
            "1 while a partition cannot be read (see /healthz for the offset and cause).",
            stalled
                .iter()
                .map(|(p, s)| ([("partition", *p)], i64::from(*s))),
        )?;
        let depths = locked(&self.queue_depths).clone();
        gauges(
            &mut encoder,
            "courier_worker_queue_depth",
            "Events waiting in each worker's queue.",
            depths
                .iter()
                .enumerate()
                .map(|(w, d)| ([("worker", w)], *d)),
        )?;
        let fleet = *locked(&self.fleet);
        if let Some((_, f)) = fleet.filter(|(at, _)| at.elapsed() <= FLEET_SERVED_FOR) {
            encoder
                .encode_descriptor(
                    "courier_orders_waiting",
                    "Orders waiting for a courier.",
                    None,
                    MetricType::Gauge,
                )?
                .encode_gauge(&f.waiting_orders)?;
            gauges(
                &mut encoder,
                "courier_couriers",
                "Couriers by status.",
                [
                    ("available", f.available),
                    ("busy", f.busy),
                    ("paused", f.paused),
                ]
                .map(|(status, n)| ([("status", status)], n)),
            )?;
        }
        Ok(())
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
            // OpenMetrics: a counter's family is named without `_total`; one period ends a help.
            "# TYPE courier_events_consumed counter",
            "# HELP courier_events_consumed Messages received from Kafka.",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.ends_with("\n# EOF\n"), "no EOF marker in\n{text}");
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
        *locked(&m.scraped.fleet) = Some((old, fleet));
        assert!(!m.render().contains("courier_couriers"));
    }
}
