//! The event pipeline at a glance, for the operator's page and `GET /pipeline`: events per
//! second and, per partition, the committed offset, the lag and whether it is stalled. Sampled
//! once a second from [`Metrics`] on a thread of its own, so every reader sees the same rate.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::ops::Metrics;
use crate::shutdown::Shutdown;

/// The rate is taken over this window.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// A partition with lag whose committed offset has not moved for this long is stalled (besides
/// those the poller reports stalled: `courier_partition_stalled`).
pub const STALL_AFTER: Duration = Duration::from_secs(30);

/// One partition, as `GET /partitions` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionState {
    pub partition: i32,
    pub committed_offset: Option<i64>,
    pub high_watermark: Option<i64>,
    pub lag: Option<i64>,
    /// Reported stalled by the poller (an undecodable batch, offsets it cannot account for), or
    /// lag above zero and no commit for [`STALL_AFTER`].
    pub stalled: bool,
    /// Seconds since the committed offset last moved (or since the service started).
    pub seconds_since_commit: u64,
}

/// The samples and what was derived from them.
#[derive(Debug, Default)]
pub struct Pipeline {
    inner: Mutex<Samples>,
}

#[derive(Debug, Default)]
struct Samples {
    /// (when, messages received so far), newest last, over [`RATE_WINDOW`].
    consumed: VecDeque<(Instant, u64)>,
    /// Per partition: the committed offset last seen and when it last moved.
    moved: BTreeMap<i32, (Option<i64>, Instant)>,
}

impl Pipeline {
    fn lock(&self) -> MutexGuard<'_, Samples> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a sample now.
    pub fn sample(&self, metrics: &Metrics) {
        self.sample_at(metrics, Instant::now());
    }

    fn sample_at(&self, metrics: &Metrics, now: Instant) {
        let mut s = self.lock();
        s.consumed.push_back((now, metrics.consumed_total()));
        while s
            .consumed
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            s.consumed.pop_front();
        }
        for p in metrics.partition_readings() {
            let entry = s.moved.entry(p.partition).or_insert((p.committed, now));
            if entry.0 != p.committed {
                *entry = (p.committed, now);
            }
        }
    }

    /// Messages received per second over the last few seconds.
    pub fn events_per_second(&self) -> f64 {
        let s = self.lock();
        match (s.consumed.front(), s.consumed.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                let rate = n1.saturating_sub(*n0) as f64 / t1.duration_since(*t0).as_secs_f64();
                (rate * 10.0).round() / 10.0
            }
            _ => 0.0,
        }
    }

    /// Every partition the service reads, by partition.
    pub fn partitions(&self, metrics: &Metrics) -> Vec<PartitionState> {
        let s = self.lock();
        let now = Instant::now();
        let reported = metrics.stalled_partitions();
        metrics
            .partition_readings()
            .into_iter()
            .map(|p| {
                let since = s
                    .moved
                    .get(&p.partition)
                    .filter(|(c, _)| *c == p.committed)
                    .map_or(Duration::ZERO, |(_, t)| now.duration_since(*t));
                let lag = p.lag();
                PartitionState {
                    partition: p.partition,
                    committed_offset: p.committed,
                    high_watermark: p.high_watermark,
                    lag,
                    stalled: reported.contains(&p.partition)
                        || (lag.is_some_and(|l| l > 0) && since >= STALL_AFTER),
                    seconds_since_commit: since.as_secs(),
                }
            })
            .collect()
    }
}

/// Samples `metrics` into `pipeline` once a second until stopping.
pub fn start_sampler(
    pipeline: Arc<Pipeline>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("api-pipeline".into())
        .spawn(move || loop {
            pipeline.sample(&metrics);
            if !shutdown.sleep(Duration::from_secs(1)) {
                return;
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_stall_come_from_samples() {
        let m = Metrics::default();
        let p = Pipeline::default();
        let t0 = Instant::now();
        m.committed(0, 10);
        m.high_watermark(0, 15);
        p.sample_at(&m, t0);
        for _ in 0..20 {
            m.consumed();
        }
        p.sample_at(&m, t0 + Duration::from_secs(2));
        assert_eq!(p.events_per_second(), 10.0);
        let parts = p.partitions(&m);
        assert_eq!(parts.len(), 1);
        assert_eq!(
            (parts[0].committed_offset, parts[0].lag),
            (Some(10), Some(5))
        );
        // Sampled 30 s ago and unmoved since, with lag: stalled.
        let p = Pipeline::default();
        p.sample_at(&m, t0.checked_sub(STALL_AFTER).unwrap_or(t0));
        let stalled = p.partitions(&m)[0].stalled;
        assert_eq!(stalled, t0.checked_sub(STALL_AFTER).is_some());
        // Once it moves, it is not.
        m.committed(0, 15);
        p.sample(&m);
        assert!(!p.partitions(&m)[0].stalled);
        // Reported stalled by the poller: stalled at once, whatever the commits do.
        m.partition_stalled(0, true);
        assert!(p.partitions(&m)[0].stalled);
        m.partition_stalled(0, false);
        assert!(!p.partitions(&m)[0].stalled);
    }
}
