//! Wiring, in one place: settings → logger → signals → PostgreSQL (wait, migrate) → broker check
//! → worker pool → poller. Returns the process exit code.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::unbounded;

use crate::cli::{EXIT_FAILURE, EXIT_USAGE};
use crate::config::{self, Settings};
use crate::dispatch::WorkerPool;
use crate::repository::PgRepository;
use crate::shutdown::{Backoff, Shutdown};
use crate::transport::broker::{self, ProbeError};
use crate::transport::{Poller, PollerExit};
use crate::usecase::OrderEventProcessor;

/// Exit code when the broker can't speak the `kafka` crate's protocol (Kafka 4.x and others):
/// restarting won't help.
pub const EXIT_INCOMPATIBLE_BROKER: u8 = 3;

/// `service-courier run`.
pub fn run() -> ExitCode {
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

/// Runs the service until `shutdown` is triggered.
pub fn serve(settings: &Settings, shutdown: &Shutdown) -> ExitCode {
    log::info!(
        "service-courier {} starting: topic {} (group {}), {} workers, database {}",
        env!("CARGO_PKG_VERSION"),
        settings.kafka.topic,
        settings.kafka.group,
        settings.workers,
        crate::repository::postgres::describe_target(&settings.database.config)
    );
    let repo = PgRepository::new(
        settings.database.config.clone(),
        settings.database.pool_size,
    );
    if !wait_for_database(&repo, shutdown) {
        return ExitCode::SUCCESS;
    }
    match wait_for_broker(&settings.kafka.brokers, shutdown) {
        Ok(true) => {}
        Ok(false) => return ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(EXIT_INCOMPATIBLE_BROKER);
        }
    }

    let (completions_tx, completions) = unbounded();
    let processor = Arc::new(OrderEventProcessor::new(repo));
    let pool = match WorkerPool::start(
        settings.workers,
        settings.queue_capacity,
        settings.shutdown_drain,
        processor,
        completions_tx,
        shutdown.clone(),
    ) {
        Ok(pool) => pool,
        Err(e) => {
            log::error!("cannot start worker threads: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let (exit, _summary) = Poller::new(&settings.kafka, pool, completions, shutdown.clone()).run();
    match exit {
        PollerExit::Stopped => ExitCode::SUCCESS,
        PollerExit::Misconfigured(m) => {
            log::error!("{m}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Waits until PostgreSQL answers, then applies the schema. `false` if stopped meanwhile.
fn wait_for_database(repo: &PgRepository, shutdown: &Shutdown) -> bool {
    let mut backoff = Backoff::new(Duration::from_secs(10));
    loop {
        match repo.ping().and_then(|()| repo.migrate()) {
            Ok(()) => {
                log::info!("postgres: connected to {}, schema applied", repo.target());
                return true;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                log::warn!("postgres: {e}; retrying in {delay:?}");
                if !shutdown.sleep(delay) {
                    return false;
                }
            }
        }
    }
}

/// Waits until a broker answers and checks it speaks the crate's protocol. `Ok(false)` if
/// stopped meanwhile; `Err` if the broker is incompatible.
fn wait_for_broker(brokers: &[String], shutdown: &Shutdown) -> Result<bool, ProbeError> {
    let mut backoff = Backoff::new(Duration::from_secs(10));
    loop {
        match broker::probe(brokers) {
            Ok(()) => return Ok(true),
            Err(ProbeError::Unreachable(m)) => {
                let delay = backoff.next_delay();
                log::warn!("kafka: no broker reachable ({m}); retrying in {delay:?}");
                if !shutdown.sleep(delay) {
                    return Ok(false);
                }
            }
            Err(incompatible) => return Err(incompatible),
        }
    }
}

/// Logs to stderr (journald and compose collect it), RFC 3339 timestamps, no colours when not
/// a terminal.
fn init_logging(level: log::LevelFilter) {
    let config = simplelog::ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_target_level(log::LevelFilter::Off)
        .set_thread_level(log::LevelFilter::Off)
        // The kafka crate logs every fetch at debug; keep our own debug lines readable.
        .add_filter_ignore_str("kafka")
        .add_filter_ignore_str("r2d2")
        .build();
    let colour = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        simplelog::ColorChoice::Auto
    } else {
        simplelog::ColorChoice::Never
    };
    let _ = simplelog::TermLogger::init(level, config, simplelog::TerminalMode::Stderr, colour);
}
