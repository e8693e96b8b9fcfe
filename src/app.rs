//! Wiring, in one place: settings → logger → signals → endpoints (metrics, API) → PostgreSQL
//! (wait, migrations) → broker check → worker pool → poller. Returns the process exit code.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError};

use crate::api;
use crate::cli::{EXIT_FAILURE, EXIT_USAGE};
use crate::config::{self, ClientKind, DeadlinePolicy, DeadlineSettings, KafkaSettings, Settings};
use crate::dispatch::{PoolSettings, WorkerContext, WorkerPool};
use crate::ops::sampler::DatabaseSampler;
use crate::ops::{http, Health, Metrics};
use crate::repository::postgres::{MigrateError, MigrateReport, SchemaStatus};
use crate::repository::{CourierRepository, PgRepository, RepoError};
use crate::shutdown::{Backoff, Shutdown};
use crate::transport::broker::{self, ProbeError};
use crate::transport::kafka_client::KafkaCrateConsumer;
use crate::transport::rdkafka_client::{RdkafkaConsumer, RdkafkaDeadLetters};
use crate::transport::runtime::client::ConsumerClient;
use crate::transport::runtime::{Clients, Poller, PollerExit, Telemetry};
use crate::usecase::OrderEventProcessor;

/// Exit code when the broker lacks a protocol version the chosen client needs: restarting won't
/// help.
pub const EXIT_INCOMPATIBLE_BROKER: u8 = 3;

/// How long a stop waits for its last pairing pass.
const LAST_PAIRING_BOUND: Duration = Duration::from_millis(500);

/// `service-courier run`.
pub fn run() -> ExitCode {
    cap_malloc_arenas();
    let settings = match config::from_process_env().settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_logging(settings.log_level);
    let shutdown = Shutdown::new();
    if let Err(e) = shutdown.install_signal_handler() {
        log::error!("cannot install the SIGINT/SIGTERM handler: {e}");
        return ExitCode::from(EXIT_FAILURE);
    }
    serve(&settings, &shutdown)
}

/// How many malloc arenas glibc may create, unless `MALLOC_ARENA_MAX` says otherwise.
const MALLOC_ARENAS: i32 = 2;

/// Caps glibc's malloc arenas before any thread starts. By default a thread that finds the
/// arenas busy gets one of its own (up to 8 per core) and keeps what it grew there, so the
/// drain's peak RSS depended on how the threads happened to meet: 21.5 to 26.1 MB within one
/// benchmark run, against 20.7 to 22.2 MB with two arenas and the same drain rate
/// (docs/performance.md). glibc's own `MALLOC_ARENA_MAX` still rules when set, also from
/// `.env` (read after glibc started).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn cap_malloc_arenas() {
    let Some(arenas) = malloc_arena_cap(std::env::var("MALLOC_ARENA_MAX").ok().as_deref()) else {
        return;
    };
    // SAFETY: mallopt only sets an allocator parameter, and no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

/// The cap to set, given `MALLOC_ARENA_MAX`: ours when it is unset, its own when it is a
/// positive number, none when it is anything else (glibc ignores a value it can't use; so do
/// we).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn malloc_arena_cap(malloc_arena_max: Option<&str>) -> Option<i32> {
    match malloc_arena_max {
        None => Some(MALLOC_ARENAS),
        Some(v) => v.trim().parse::<i32>().ok().filter(|n| *n > 0),
    }
}

/// Other C libraries keep their own allocator policy.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn cap_malloc_arenas() {}

/// Runs the service until `shutdown` is triggered.
pub fn serve(settings: &Settings, shutdown: &Shutdown) -> ExitCode {
    log::info!(
        "service-courier {} starting: topic {} (group {}, client {}), {} workers, database {}",
        env!("CARGO_PKG_VERSION"),
        settings.kafka.topic,
        settings.kafka.group,
        settings.kafka.access.client.as_str(),
        settings.workers,
        crate::repository::postgres::describe_target(&settings.database.config)
    );
    let repo = pg_repository(settings, settings.database.pool_size)
        .give_up_when_stopping(shutdown.clone(), settings.shutdown_drain);
    let metrics = Arc::new(Metrics::default());
    // Without a watchdog, /healthz still needs a bound: it reports a stall after half a minute.
    let health = Arc::new(Health::new(
        settings.watchdog.unwrap_or(Duration::from_secs(60)),
    ));
    health.poller_beat();
    // Sampled on the passes thread, with a one-connection pool of its own: a sample never
    // waits for a worker's connection. Only with an endpoint to serve what it reads.
    let mut sampler = None;
    if let Some(addr) = &settings.metrics_addr {
        let fleet_repo = pg_repository(settings, 1);
        sampler = Some(DatabaseSampler::new(
            Box::new(move || fleet_repo.fleet()),
            Arc::clone(&metrics),
            Arc::clone(&health),
        ));
        match http::serve(
            addr,
            Arc::clone(&metrics),
            Arc::clone(&health),
            shutdown.clone(),
        ) {
            Ok(bound) => log::info!("http: /metrics, /healthz, /readyz on http://{bound}"),
            Err(e) => {
                log::error!("{e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    if let Some(addr) = &settings.http_addr {
        if let Err(e) = start_api(addr, settings, &metrics, shutdown) {
            log::error!("{e}");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    if let Some(stall) = settings.watchdog {
        if let Err(e) = health.start_watchdog(shutdown.clone()) {
            log::error!("cannot start the watchdog thread: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
        log::info!("watchdog: exits if the poller makes no progress for {stall:?}");
    }
    match wait_for_database(&repo, shutdown, &health, settings.migrate_on_start) {
        Ok(true) => {}
        Ok(false) => return ExitCode::SUCCESS,
        Err(refused) => {
            log::error!("postgres: {refused}");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    health.database_answered();
    match wait_for_broker(&settings.kafka, shutdown, &health) {
        Ok(true) => {}
        Ok(false) => return ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(EXIT_INCOMPATIBLE_BROKER);
        }
    }

    let (completions_tx, completions) = unbounded();
    let pool_settings = PoolSettings {
        workers: settings.workers,
        capacity: settings.queue_capacity,
        drain_budget: settings.shutdown_drain,
        batch_max: settings.batch_max,
    };
    let (pairing_requests, pairing_inbox) = bounded(1);
    let processor =
        Arc::new(OrderEventProcessor::new(repo).with_pairing_requests(pairing_requests));
    let deadlines = DeadlinePass {
        processor: Arc::clone(&processor),
        settings: settings.deadlines,
        batch_max: settings.batch_max,
        metrics: Arc::clone(&metrics),
    };
    if let Err(e) = start_passes(
        Arc::clone(&processor),
        pairing_inbox,
        deadlines,
        sampler,
        shutdown.clone(),
    ) {
        log::error!("cannot start the passes thread: {e}");
        return ExitCode::from(EXIT_FAILURE);
    }
    let context = WorkerContext {
        processor: Arc::clone(&processor),
        completions: completions_tx,
        shutdown: shutdown.clone(),
        metrics: Arc::clone(&metrics),
        health: Arc::clone(&health),
    };
    let pool = match WorkerPool::start(pool_settings, context) {
        Ok(pool) => pool,
        Err(e) => {
            log::error!("cannot start worker threads: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let telemetry = Telemetry { metrics, health };
    let clients = clients(&settings.kafka);
    let poller = Poller::new(
        &settings.kafka,
        clients,
        pool,
        completions,
        shutdown.clone(),
        telemetry,
    );
    let (exit, _summary) = poller.run();
    // The workers are joined: one last pass, so a pass requested by the last commits is not
    // lost with the passes thread, and a clean stop leaves no order waiting beside a free
    // courier. Bounded, like the rest of the stop: against a frozen database it is left
    // behind (the passes thread of the next start runs it first thing).
    let (done_tx, done) = bounded(1);
    let last = std::thread::Builder::new()
        .name("last-pairing".into())
        .spawn(move || {
            processor.pair_waiting(chrono::Utc::now());
            let _ = done_tx.send(());
        });
    if last.is_ok() && done.recv_timeout(LAST_PAIRING_BOUND).is_err() {
        log::warn!("the last pairing pass did not finish in {LAST_PAIRING_BOUND:?}; left to the next start");
    }
    match exit {
        PollerExit::Stopped => ExitCode::SUCCESS,
        PollerExit::Misconfigured(m) => {
            log::error!("{m}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// The consumer of the client KAFKA_CLIENT selects, and the dead-letter producer: librdkafka's
/// for both, since a dead letter's headers need message format v2 (docs/operations.md, "Dead
/// letters").
fn clients(kafka: &KafkaSettings) -> Clients {
    let consumer: Box<dyn ConsumerClient> = match kafka.access.client {
        ClientKind::Kafka => Box::new(KafkaCrateConsumer::new(kafka.clone())),
        ClientKind::Rdkafka => Box::new(RdkafkaConsumer::new(kafka.clone())),
    };
    Clients {
        consumer,
        dead_letters: Box::new(RdkafkaDeadLetters::new(
            kafka.brokers.clone(),
            kafka.access.clone(),
            kafka.dlq_topic.clone(),
        )),
    }
}

/// A pool of `size` connections to the configured database.
fn pg_repository(settings: &Settings, size: u32) -> PgRepository {
    let db = &settings.database;
    PgRepository::new(db.config.clone(), size).with_limits(db.limits, db.pooler)
}

/// The HTTP API and the operator's page, with a small pool of its own so people's requests
/// never wait for a worker's connection (nor hold one).
fn start_api(
    addr: &str,
    settings: &Settings,
    metrics: &Arc<Metrics>,
    shutdown: &Shutdown,
) -> Result<(), String> {
    let api = api::Api {
        repo: pg_repository(settings, 2),
        metrics: Arc::clone(metrics),
        pipeline: Arc::default(),
        token: settings.api_token.clone(),
    };
    let bound = api::serve(addr, api, shutdown.clone())?;
    let guard = if settings.api_token.is_some() {
        "changes need the API token"
    } else {
        "no API_TOKEN: changes are open to anyone who reaches it"
    };
    log::info!("api: HTTP API and operator's page at http://{bound}/ ({guard})");
    Ok(())
}

/// The thread of the two background passes, which no event causes:
/// - the pairing pass hands any order waiting beside an available courier to that courier: when
///   a commit asks for it (one that made an order wait or a courier free, which a concurrent
///   commit may have missed), and every second (which catches what two racing passes both
///   skipped, or a pass that failed). Requests that arrive during a pass or the short rest after
///   it coalesce into one more pass, so a busy pool costs a few passes a second, not one per
///   batch;
/// - the deadline pass ([`DeadlinePass`]) at start, then every `DEADLINE_CHECK_MS`;
/// - and between passes, the database sampler (`ops::sampler`): the fleet gauges and whether
///   PostgreSQL answers, every [`crate::ops::sampler::SAMPLE_EVERY`] while passes are quick; a
///   long pass delays a sample, never readiness (silence from the database counts against it).
///
/// One thread for all, not one each: a thread of its own for the deadline pass, idle but for a
/// query every 10 s, cost 2 MB of peak RSS in the benchmark's drain (its malloc arena;
/// docs/performance.md).
fn start_passes(
    processor: Arc<OrderEventProcessor<PgRepository>>,
    requests: Receiver<()>,
    deadlines: DeadlinePass,
    mut sampler: Option<DatabaseSampler>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    const TIMER: Duration = Duration::from_secs(1);
    const REST: Duration = Duration::from_millis(20);
    deadlines.announce();
    std::thread::Builder::new()
        .name("passes".into())
        .spawn(move || {
            let mut deadline_due = Instant::now();
            if let Some(s) = &sampler {
                s.start();
            }
            loop {
                if let Some(s) = &mut sampler {
                    s.run_if_due();
                }
                if Instant::now() >= deadline_due {
                    deadlines.run_once();
                    deadline_due = Instant::now() + deadlines.settings.check_every;
                }
                processor.pair_waiting(chrono::Utc::now());
                if !shutdown.sleep(REST) {
                    return;
                }
                let mut wait = TIMER.min(deadline_due.saturating_duration_since(Instant::now()));
                if let Some(s) = &sampler {
                    wait = wait.min(s.due_in());
                }
                match requests.recv_timeout(wait) {
                    Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                if shutdown.is_shutdown() {
                    return;
                }
            }
        })
        .map(|_| ())
}

/// The deadline pass (see `usecase::deadline`), run by [`start_passes`]: completes the
/// deliveries past their deadline (`DEADLINE_POLICY=complete`) in rounds of at most `BATCH_MAX`,
/// and counts those still overdue for `courier_deliveries_overdue`.
struct DeadlinePass {
    processor: Arc<OrderEventProcessor<PgRepository>>,
    settings: DeadlineSettings,
    batch_max: usize,
    metrics: Arc<Metrics>,
}

impl DeadlinePass {
    fn announce(&self) {
        log::info!(
            "deadlines: {} every {:?}",
            match self.settings.policy {
                DeadlinePolicy::Complete => "overdue deliveries are completed at their deadline",
                DeadlinePolicy::Report => "overdue deliveries are only reported",
            },
            self.settings.check_every
        );
    }

    /// One pass. Failures are logged and left to the next pass: nothing here is an event's.
    fn run_once(&self) {
        let now = chrono::Utc::now();
        if self.settings.policy == DeadlinePolicy::Complete {
            let (mut completed, mut took) = (0, 0);
            loop {
                match self.processor.complete_overdue(now, self.batch_max) {
                    Ok(round) => {
                        for c in &round {
                            log::debug!(
                                "order {}: deadline {} passed, completed by the deadline pass; {}",
                                c.order,
                                c.deadline.to_rfc3339(),
                                match &c.release.took {
                                    Some(next) => format!(
                                        "courier {} took waiting order {next}",
                                        c.release.courier
                                    ),
                                    None => format!("courier {} freed", c.release.courier),
                                }
                            );
                        }
                        completed += round.len();
                        took += round.iter().filter(|c| c.release.took.is_some()).count();
                        self.metrics.deadline_completions(round.len() as u64);
                        if round.len() < self.batch_max {
                            break;
                        }
                    }
                    Err(e) => {
                        log::warn!("deadline pass: completing overdue deliveries failed: {e}");
                        break;
                    }
                }
            }
            if completed > 0 {
                log::info!(
                    "deadline pass: {completed} deliveries completed at their deadline; their \
                     couriers were freed ({took} took a waiting order)"
                );
            }
        }
        match self.processor.repository().count_overdue(now) {
            Ok(n) => self.metrics.overdue_deliveries(n.max(0) as u64),
            Err(e) => log::debug!("deadline pass: counting overdue deliveries failed: {e}"),
        }
    }
}

/// Waits until PostgreSQL answers and its schema is current: one read of `schema_migrations`,
/// and no lock nor DDL when nothing is missing. A database that lacks migrations is migrated
/// first, unless `migrate_on_start` is off. `Ok(false)` if stopped meanwhile; `Err` when a
/// person must act (exit 2): migrations to apply with `migrate_on_start` off, a changed
/// migration file, an unrecognised schema.
fn wait_for_database(
    repo: &PgRepository,
    shutdown: &Shutdown,
    health: &Health,
    migrate_on_start: bool,
) -> Result<bool, String> {
    let mut backoff = Backoff::new(Duration::from_secs(10));
    loop {
        let problem = match schema_step(repo, health, migrate_on_start) {
            SchemaStep::Ready(version) => {
                log::info!(
                    "postgres: connected to {}, schema at migration {version}",
                    repo.target()
                );
                return Ok(true);
            }
            SchemaStep::Refuse(why) => return Err(why),
            SchemaStep::Retry(why) => why,
        };
        let delay = backoff.next_delay();
        log::warn!("postgres: {problem}; retrying in {delay:?}");
        if !shutdown.sleep(delay) {
            return Ok(false);
        }
        health.poller_beat();
    }
}

/// One attempt of [`wait_for_database`].
enum SchemaStep {
    /// The schema is current, at this migration.
    Ready(i32),
    /// Worth another try (the database is unreachable, busy, …).
    Retry(String),
    /// A person must act.
    Refuse(String),
}

fn schema_step(repo: &PgRepository, health: &Health, migrate_on_start: bool) -> SchemaStep {
    let sorted = |e: MigrateError| {
        if e.needs_a_person() {
            SchemaStep::Refuse(e.to_string())
        } else {
            SchemaStep::Retry(e.to_string())
        }
    };
    if let Err(e) = repo.ping() {
        return SchemaStep::Retry(e.to_string());
    }
    match repo.schema_status() {
        Ok(SchemaStatus::Current { version }) => SchemaStep::Ready(version),
        Ok(SchemaStatus::Behind { version, latest }) if !migrate_on_start => {
            SchemaStep::Refuse(format!(
                "the database {} is at migration {}, this build needs {latest}, and \
                 MIGRATE_ON_START=false: run `service-courier migrate`",
                repo.target(),
                version.map_or_else(|| "none".to_owned(), |v| v.to_string())
            ))
        }
        Ok(SchemaStatus::Behind { .. }) => match migrate_beating(repo, health) {
            Ok(report) => {
                log::info!(
                    "postgres: migrated {}: {} recognised, {} applied",
                    repo.target(),
                    list(&report.recognised),
                    list(&report.applied)
                );
                SchemaStep::Ready(report.version)
            }
            Err(e) => sorted(e),
        },
        Err(e) => sorted(e),
    }
}

/// Runs the migrations on a thread of their own while this one tells the watchdog that the
/// start-up is alive: a migration may rewrite a large table for longer than WATCHDOG_SECS.
fn migrate_beating(repo: &PgRepository, health: &Health) -> Result<MigrateReport, MigrateError> {
    std::thread::scope(|scope| {
        let job = std::thread::Builder::new()
            .name("migrate".into())
            .spawn_scoped(scope, || repo.migrate())
            .map_err(|e| {
                MigrateError::Storage(RepoError::Transient(format!(
                    "cannot start the migration thread: {e}"
                )))
            })?;
        while !job.is_finished() {
            health.poller_beat();
            std::thread::sleep(Duration::from_millis(100));
        }
        job.join().unwrap_or_else(|_| {
            Err(MigrateError::Storage(RepoError::Unexpected(
                "the migration thread panicked".into(),
            )))
        })
    })
}

fn list(files: &[&str]) -> String {
    if files.is_empty() {
        "none".to_owned()
    } else {
        files.join(", ")
    }
}

/// Waits until a broker answers and checks the chosen client can use it. `Ok(false)` if
/// stopped meanwhile; `Err` if the broker is incompatible.
fn wait_for_broker(
    kafka: &KafkaSettings,
    shutdown: &Shutdown,
    health: &Health,
) -> Result<bool, ProbeError> {
    let mut backoff = Backoff::new(Duration::from_secs(10));
    loop {
        match broker::check(&kafka.brokers, &kafka.access) {
            Ok(()) => return Ok(true),
            Err(ProbeError::Unreachable(m)) => {
                let delay = backoff.next_delay();
                log::warn!("kafka: no broker reachable ({m}); retrying in {delay:?}");
                if !shutdown.sleep(delay) {
                    return Ok(false);
                }
                health.poller_beat();
            }
            Err(incompatible) => return Err(incompatible),
        }
    }
}

/// Logs to stderr (journald and compose collect it), RFC 3339 timestamps, no colours when not
/// a terminal. `LOG_LEVEL` sets our own crate's level; other crates (the `postgres` driver logs
/// every SQL statement at debug, the `kafka` crate every fetch) stay at `info` unless the level
/// is `trace`, so `debug` means one line per event, not one per statement.
fn init_logging(level: log::LevelFilter) {
    let _ = simplelog::CombinedLogger::init(loggers_for(level));
}

/// The level other crates log at when ours logs at `level`.
fn others_level(level: log::LevelFilter) -> log::LevelFilter {
    if level == log::LevelFilter::Trace {
        level
    } else {
        level.min(log::LevelFilter::Info)
    }
}

/// Two loggers: ours at `level`, every other crate at [`others_level`].
fn loggers_for(level: log::LevelFilter) -> Vec<Box<dyn simplelog::SharedLogger>> {
    let ours = "service_courier";
    let base = || {
        let mut b = simplelog::ConfigBuilder::new();
        b.set_time_format_rfc3339()
            .set_target_level(log::LevelFilter::Off)
            .set_thread_level(log::LevelFilter::Off);
        b
    };
    let own = base().add_filter_allow_str(ours).build();
    let mut others = base();
    others.add_filter_ignore_str(ours);
    if level != log::LevelFilter::Trace {
        // The kafka crate's warnings repeat what our own lines say, once per retry.
        others
            .add_filter_ignore_str("kafka")
            .add_filter_ignore_str("r2d2");
    }
    let colour = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        simplelog::ColorChoice::Auto
    } else {
        simplelog::ColorChoice::Never
    };
    vec![
        simplelog::TermLogger::new(level, own, simplelog::TerminalMode::Stderr, colour),
        simplelog::TermLogger::new(
            others_level(level),
            others.build(),
            simplelog::TerminalMode::Stderr,
            colour,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_crates_log_at_info_at_most_unless_trace() {
        use log::LevelFilter::*;
        assert_eq!(others_level(Debug), Info);
        assert_eq!(others_level(Info), Info);
        assert_eq!(others_level(Warn), Warn);
        assert_eq!(others_level(Trace), Trace);
        assert_eq!(loggers_for(Debug).len(), 2);
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn malloc_arenas_are_capped_at_two_unless_malloc_arena_max_says_otherwise() {
        assert_eq!(malloc_arena_cap(None), Some(2));
        assert_eq!(malloc_arena_cap(Some("8")), Some(8));
        assert_eq!(malloc_arena_cap(Some(" 1 ")), Some(1));
        for ignored in ["0", "-1", "many", ""] {
            assert_eq!(malloc_arena_cap(Some(ignored)), None, "{ignored:?}");
        }
    }
}
