//! Liveness and readiness, and the watchdog. The poller beats on every loop turn (also while it
//! backs off); workers report each finished event. Healthy means the
//! poller beat recently and, when events are in flight, a worker finished one recently. Ready
//! means Kafka has answered and PostgreSQL answers now: the sampler (`ops::sampler`) asks it
//! every few seconds and workers' commits count as answers too, so a stopped server (an error)
//! and a frozen one (no answer for [`DATABASE_SILENT_AFTER`]) both read "database unreachable".
//! Liveness never looks at the database's answers: a restart does not bring a database back.
//!
//! `/healthz` turns unhealthy after half the watchdog's threshold without progress, so a probe
//! sees a stall (and can say why) for a long while before the watchdog exits the process.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::shutdown::Shutdown;

/// Exit code when the watchdog finds the poller stuck.
pub const EXIT_WATCHDOG: i32 = 4;

/// How long PostgreSQL may give no answer, once watched, before `/readyz` calls it unreachable:
/// three samples' worth, so one slow sample does not flip readiness, and well inside the 10 s
/// in which a frozen server must show. No timeout of the driver's fires against a frozen server
/// (its kernel still acknowledges every packet), so silence is the only sign.
pub const DATABASE_SILENT_AFTER: Duration = Duration::from_secs(6);

/// A mark that was never set.
const NEVER: u64 = u64::MAX;

/// Shared progress marks, read by `/healthz`, `/readyz` and the watchdog.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds since `started` of the poller's last beat.
    poller_beat: AtomicU64,
    /// Milliseconds since `started` of the last finished event.
    last_completion: AtomicU64,
    /// Events received and not yet finished.
    in_flight: AtomicU64,
    kafka_ready: AtomicBool,
    /// Milliseconds since `started` of PostgreSQL's last answer; [`NEVER`] before the first.
    /// Atomics, not a lock: every worker's commit stamps it.
    database_answered: AtomicU64,
    /// Whether the last attempt to reach PostgreSQL failed (and nothing answered since); why is
    /// in `database_unreachable`.
    database_failing: AtomicBool,
    /// Why PostgreSQL could not be reached, while `database_failing`.
    database_unreachable: Mutex<String>,
    /// Whether something asks PostgreSQL often enough that silence means it is unreachable
    /// (see [`Health::watch_database`]).
    database_watched: AtomicBool,
    /// How long the poller may make no progress before the watchdog exits the process.
    stall_after: Duration,
    /// Per worker inside a database call: milliseconds since `started` when the call began. A
    /// frozen server can hold a call forever (no timeout fires when the server cannot answer).
    busy_since: Mutex<BTreeMap<usize, u64>>,
    /// Partitions that cannot be read for now: partition -> (offset, cause).
    stalled: Mutex<BTreeMap<i32, (i64, String)>>,
    /// Why fetching is paused for unsent dead letters, while it is.
    fetching_paused: Mutex<Option<String>>,
    /// Workers retrying an event that fails in a way nobody classified: worker -> what.
    stuck_events: Mutex<BTreeMap<usize, String>>,
}

impl Health {
    /// Marks for a watchdog that acts after `stall_after` without progress; liveness fails
    /// after half of that (see [`Health::unhealthy_after`]).
    pub fn new(stall_after: Duration) -> Self {
        Self {
            started: Instant::now(),
            poller_beat: AtomicU64::new(0),
            last_completion: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            kafka_ready: AtomicBool::new(false),
            database_answered: AtomicU64::new(NEVER),
            database_failing: AtomicBool::new(false),
            database_unreachable: Mutex::new(String::new()),
            database_watched: AtomicBool::new(false),
            stall_after,
            busy_since: Mutex::new(BTreeMap::new()),
            stalled: Mutex::new(BTreeMap::new()),
            fetching_paused: Mutex::new(None),
            stuck_events: Mutex::new(BTreeMap::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn age(&self, mark: &AtomicU64, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(mark.load(Ordering::Relaxed)))
    }

    /// How long without progress `/healthz` tolerates: half the watchdog's threshold, so the
    /// stall shows there well before the watchdog exits.
    pub fn unhealthy_after(&self) -> Duration {
        self.stall_after / 2
    }

    /// The poller is alive and turning.
    pub fn poller_beat(&self) {
        self.poller_beat.store(self.now_ms(), Ordering::Relaxed);
    }

    /// A worker finished an event.
    pub fn event_finished(&self) {
        self.last_completion.store(self.now_ms(), Ordering::Relaxed);
    }

    /// A worker starts a database call.
    pub fn worker_busy(&self, worker: usize) {
        let now = self.now_ms();
        self.busy_marks().insert(worker, now);
    }

    /// A worker's database call returned.
    pub fn worker_idle(&self, worker: usize) {
        self.busy_marks().remove(&worker);
    }

    /// The worker inside one database call for longest, and for how long.
    pub fn longest_busy_worker(&self) -> Option<(usize, Duration)> {
        self.longest_busy_worker_at(self.now_ms())
    }

    fn longest_busy_worker_at(&self, now: u64) -> Option<(usize, Duration)> {
        self.busy_marks()
            .iter()
            .map(|(w, since)| (*w, Duration::from_millis(now.saturating_sub(*since))))
            .max_by_key(|(_, d)| *d)
    }

    fn busy_marks(&self) -> std::sync::MutexGuard<'_, BTreeMap<usize, u64>> {
        self.busy_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A worker stuck inside one database call for longer than `limit`, if any.
    fn stuck_worker(&self, now_ms: u64, limit: Duration) -> Option<String> {
        self.longest_busy_worker_at(now_ms)
            .filter(|(_, d)| *d > limit)
            .map(|(w, d)| format!("worker {w} has been inside one database call for {d:?}"))
    }

    /// A partition cannot be read from `offset`, for `cause`: `/healthz` says so until it
    /// resumes.
    pub fn partition_stalled(&self, partition: i32, offset: i64, cause: &str) {
        lock(&self.stalled).insert(partition, (offset, cause.to_string()));
    }

    /// A stalled partition is read again (or its log was replaced).
    pub fn partition_resumed(&self, partition: i32) {
        lock(&self.stalled).remove(&partition);
    }

    /// A worker keeps failing on one event for a reason nobody classified (`Some(what)`), or
    /// got past it (`None`): `/healthz` says so meanwhile.
    pub fn worker_stalled(&self, worker: usize, what: Option<String>) {
        let mut stuck = lock(&self.stuck_events);
        match what {
            Some(what) => stuck.insert(worker, what),
            None => stuck.remove(&worker),
        };
    }

    /// Fetching is paused because dead letters cannot be sent (`Some(why)`), or flows again.
    pub fn fetching_paused(&self, why: Option<String>) {
        *lock(&self.fetching_paused) = why;
    }

    /// How many events are in flight now.
    pub fn in_flight(&self, n: usize) {
        if self.in_flight.swap(n as u64, Ordering::Relaxed) == 0 && n > 0 {
            // Work just arrived: the workers' clock starts now, not at their last event.
            self.event_finished();
        }
    }

    /// Whether Kafka answers (a consumer exists).
    pub fn kafka_ready(&self, ready: bool) {
        self.kafka_ready.store(ready, Ordering::Relaxed);
    }

    /// PostgreSQL answered (a sample, a commit).
    pub fn database_answered(&self) {
        self.database_answered
            .store(self.now_ms(), Ordering::Relaxed);
        if self.database_failing.load(Ordering::Relaxed) {
            self.database_failing.store(false, Ordering::Relaxed);
        }
    }

    /// An attempt to reach PostgreSQL failed, for `why`: not ready until it answers again.
    pub fn database_unreachable(&self, why: &str) {
        *lock(&self.database_unreachable) = why.to_owned();
        self.database_failing.store(true, Ordering::Relaxed);
    }

    /// From now on PostgreSQL is asked every few seconds (the sampler runs), so no answer for
    /// [`DATABASE_SILENT_AFTER`] means it cannot be reached (frozen, or a network that drops
    /// packets), even while the call that asked is still waiting.
    pub fn watch_database(&self) {
        self.database_watched.store(true, Ordering::Relaxed);
    }

    /// `Ok` while PostgreSQL answers; else why not.
    fn database_at(&self, now_ms: u64) -> Result<(), String> {
        if self.database_failing.load(Ordering::Relaxed) {
            return Err(format!(
                "database unreachable: {}",
                lock(&self.database_unreachable)
            ));
        }
        let answered = self.database_answered.load(Ordering::Relaxed);
        if answered == NEVER {
            return Err("database unreachable: it has not answered yet".into());
        }
        let silent = Duration::from_millis(now_ms.saturating_sub(answered));
        if self.database_watched.load(Ordering::Relaxed) && silent > DATABASE_SILENT_AFTER {
            return Err(format!(
                "database unreachable: no answer for {:.1} s",
                silent.as_secs_f64()
            ));
        }
        Ok(())
    }

    /// `Ok` while the poller and the workers make progress; else why not.
    pub fn liveness(&self) -> Result<(), String> {
        self.liveness_at(self.now_ms())
    }

    fn liveness_at(&self, now_ms: u64) -> Result<(), String> {
        let limit = self.unhealthy_after();
        let poller = self.age(&self.poller_beat, now_ms);
        if poller > limit {
            return Err(format!("poller made no progress for {poller:?}"));
        }
        if let Some(stuck) = self.stuck_worker(now_ms, limit) {
            return Err(stuck);
        }
        let workers = self.age(&self.last_completion, now_ms);
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        if in_flight > 0 && workers > limit {
            return Err(format!(
                "workers finished no event for {workers:?} with {in_flight} in flight"
            ));
        }
        let stalled = lock(&self.stalled);
        if !stalled.is_empty() {
            let each: Vec<String> = stalled
                .iter()
                .map(|(p, (offset, cause))| {
                    format!("partition {p} stalled at offset {offset}: {cause}")
                })
                .collect();
            return Err(each.join("\n"));
        }
        drop(stalled);
        if let Some((worker, what)) = lock(&self.stuck_events).iter().next() {
            return Err(format!("worker {worker} stalled: {what}"));
        }
        if let Some(why) = lock(&self.fetching_paused).clone() {
            return Err(why);
        }
        Ok(())
    }

    /// `Ok` once Kafka has answered and while PostgreSQL answers; else what is missing, one
    /// reason a line.
    pub fn readiness(&self) -> Result<(), String> {
        self.readiness_at(self.now_ms())
    }

    fn readiness_at(&self, now_ms: u64) -> Result<(), String> {
        let mut missing = Vec::new();
        if !self.kafka_ready.load(Ordering::Relaxed) {
            missing.push("not connected to Kafka".to_owned());
        }
        if let Err(why) = self.database_at(now_ms) {
            missing.push(why);
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing.join("\n"))
        }
    }

    /// How long the poller has made no progress, once that is more than the watchdog allows.
    fn poller_stalled_at(&self, now_ms: u64) -> Option<Duration> {
        let stalled = self.age(&self.poller_beat, now_ms);
        (stalled > self.stall_after).then_some(stalled)
    }

    /// Starts the watchdog thread: once the poller has made no progress for `stall_after`, it
    /// logs why and exits with [`EXIT_WATCHDOG`] so the supervisor restarts the process.
    /// Uncommitted events are delivered again, so nothing is lost. Inactive while stopping.
    pub fn start_watchdog(self: &Arc<Self>, shutdown: Shutdown) -> std::io::Result<()> {
        let health = Arc::clone(self);
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(250));
                if shutdown.is_shutdown() {
                    return;
                }
                if let Some(stalled) = health.poller_stalled_at(health.now_ms()) {
                    log::error!(
                        "watchdog: the poller made no progress for {stalled:?} (stuck inside a \
                         Kafka call?); exiting with code {EXIT_WATCHDOG} so the supervisor \
                         restarts the service; uncommitted events will be delivered again"
                    );
                    std::process::exit(EXIT_WATCHDOG);
                }
                if let Some(stuck) = health.stuck_worker(health.now_ms(), health.stall_after) {
                    log::error!(
                        "watchdog: {stuck} (a frozen or unreachable database server?); exiting \
                         with code {EXIT_WATCHDOG} so the supervisor restarts the service; \
                         uncommitted events will be delivered again"
                    );
                    std::process::exit(EXIT_WATCHDOG);
                }
            })
            .map(|_| ())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A health whose clock the test sets: the marks are milliseconds since its start.
    fn health(watchdog: Duration) -> Health {
        let h = Health::new(watchdog);
        h.poller_beat.store(1_000, Ordering::Relaxed);
        h.last_completion.store(1_000, Ordering::Relaxed);
        h
    }

    #[test]
    fn a_quiet_poller_is_unhealthy_at_half_the_watchdog_threshold_and_the_watchdog_acts_at_it() {
        let h = health(Duration::from_secs(60));
        assert_eq!(h.liveness_at(1_000), Ok(()));
        assert_eq!(h.liveness_at(31_000), Ok(()));
        let at_half = h.liveness_at(31_001);
        assert!(
            at_half.as_ref().is_err_and(|e| e.contains("poller")),
            "{at_half:?}"
        );
        // Unhealthy for the whole second half: a probe has thirty seconds to see it.
        assert_eq!(h.poller_stalled_at(31_001), None);
        assert_eq!(h.poller_stalled_at(61_000), None);
        assert_eq!(
            h.poller_stalled_at(61_001),
            Some(Duration::from_millis(60_001))
        );
        h.poller_beat.store(61_001, Ordering::Relaxed);
        assert_eq!(h.liveness_at(61_001), Ok(()));
        assert_eq!(h.poller_stalled_at(61_001), None);
    }

    #[test]
    fn workers_stuck_with_events_in_flight_are_unhealthy_idle_ones_are_not() {
        let h = health(Duration::from_secs(60));
        // Idle: no event in flight, so workers that finished nothing for long are fine.
        h.poller_beat.store(100_000, Ordering::Relaxed);
        assert_eq!(h.liveness_at(100_000), Ok(()));
        // Work arrives at 100 s: the workers' clock starts then, not at their last event.
        h.last_completion.store(100_000, Ordering::Relaxed);
        h.in_flight.store(3, Ordering::Relaxed);
        h.poller_beat.store(130_001, Ordering::Relaxed);
        assert_eq!(h.liveness_at(130_000), Ok(()));
        let stuck = h.liveness_at(130_001);
        assert!(
            stuck.as_ref().is_err_and(|e| e.contains("workers")),
            "{stuck:?}"
        );
        // Stuck workers are a /healthz matter; the watchdog watches the poller only.
        assert_eq!(h.poller_stalled_at(130_001), None);
        h.last_completion.store(130_001, Ordering::Relaxed);
        assert_eq!(h.liveness_at(130_001), Ok(()));
    }

    #[test]
    fn work_arriving_restarts_the_workers_clock() {
        let mut h = Health::new(Duration::from_secs(60));
        // Started 100 s ago; the workers last finished something at its start.
        h.started = Instant::now()
            .checked_sub(Duration::from_secs(100))
            .expect("the clock is past 100 s");
        h.last_completion.store(0, Ordering::Relaxed);
        h.in_flight(0);
        assert_eq!(h.last_completion.load(Ordering::Relaxed), 0);
        h.in_flight(2);
        let stamped = h.last_completion.load(Ordering::Relaxed);
        assert!(stamped >= 100_000, "the clock did not restart: {stamped}");
        h.in_flight(5); // more work while busy: the clock keeps running
        assert_eq!(h.last_completion.load(Ordering::Relaxed), stamped);
    }

    #[test]
    fn a_worker_stuck_in_one_database_call_is_unhealthy_at_half_the_threshold_and_a_stall_at_it() {
        let h = health(Duration::from_secs(60));
        h.busy_marks().insert(1, 1_000);
        h.poller_beat.store(31_001, Ordering::Relaxed);
        assert_eq!(h.liveness_at(31_000), Ok(()));
        let stuck = h.liveness_at(31_001);
        assert!(
            stuck.as_ref().is_err_and(|e| e.contains("worker 1")),
            "{stuck:?}"
        );
        assert_eq!(h.stuck_worker(61_000, h.stall_after), None);
        assert!(h.stuck_worker(61_001, h.stall_after).is_some());
        assert_eq!(
            h.longest_busy_worker_at(61_001),
            Some((1, Duration::from_millis(60_001)))
        );
        h.worker_idle(1);
        assert_eq!(h.liveness_at(31_001), Ok(()));
        assert_eq!(h.longest_busy_worker(), None);
    }

    #[test]
    fn a_stalled_partition_and_paused_fetching_fail_liveness_with_the_reason() {
        let h = Health::new(Duration::from_secs(60));
        h.poller_beat();
        h.partition_stalled(3, 17, "lz4");
        assert!(h
            .liveness()
            .is_err_and(|e| e.contains("partition 3 stalled at offset 17: lz4")));
        h.partition_resumed(3);
        assert_eq!(h.liveness(), Ok(()));
        h.fetching_paused(Some("fetching paused: 5 dead letters".into()));
        assert!(h.liveness().is_err_and(|e| e.contains("fetching paused")));
        h.fetching_paused(None);
        assert_eq!(h.liveness(), Ok(()));
    }

    #[test]
    fn ready_once_both_answer() {
        let h = Health::new(Duration::from_secs(1));
        let both = h.readiness();
        assert!(
            both.as_ref()
                .is_err_and(|e| e.contains("Kafka") && e.contains("database unreachable")),
            "{both:?}"
        );
        h.kafka_ready(true);
        assert!(h
            .readiness()
            .is_err_and(|e| e == "database unreachable: it has not answered yet"));
        h.database_answered();
        assert_eq!(h.readiness(), Ok(()));
    }

    #[test]
    fn a_failed_attempt_makes_the_database_unreachable_until_it_answers_again() {
        let h = Health::new(Duration::from_secs(60));
        h.kafka_ready(true);
        h.database_answered();
        h.database_unreachable("connection refused");
        assert_eq!(
            h.readiness(),
            Err("database unreachable: connection refused".into())
        );
        // Liveness is not the database's business.
        h.poller_beat();
        assert_eq!(h.liveness(), Ok(()));
        h.database_answered();
        assert_eq!(h.readiness(), Ok(()));
    }

    #[test]
    fn a_silent_database_is_unreachable_once_watched() {
        let h = Health::new(Duration::from_secs(60));
        h.kafka_ready(true);
        h.database_answered.store(1_000, Ordering::Relaxed);
        let silent_at = 1_000 + DATABASE_SILENT_AFTER.as_millis() as u64 + 1;
        // Nobody asks it (the sampler has not started): silence says nothing.
        assert_eq!(h.readiness_at(silent_at), Ok(()));
        h.watch_database();
        assert_eq!(h.readiness_at(silent_at - 1), Ok(()));
        let silent = h.readiness_at(silent_at);
        assert!(
            silent
                .as_ref()
                .is_err_and(|e| e.starts_with("database unreachable: no answer for 6.0 s")),
            "{silent:?}"
        );
        h.database_answered.store(silent_at, Ordering::Relaxed);
        assert_eq!(h.readiness_at(silent_at), Ok(()));
    }
}
