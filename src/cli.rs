//! The `service-courier` command line: run the consumer (default), apply the schema, manage
//! couriers, print statistics. Exit codes: 0 done, 1 failed at run time (database unreachable,
//! …), 2 bad arguments or configuration.

use std::process::ExitCode;

use chrono::Utc;
use clap::{Parser, Subcommand};

use crate::config::{self, ConfigError};
use crate::domain::{CourierId, NewCourier, Phone, TransportType};
use crate::repository::{FleetDirectory, PgRepository, RepoError};
use crate::usecase::couriers::{self, CourierChange, CourierCommandError};

/// Exit code for bad arguments or configuration (clap uses it too).
pub const EXIT_USAGE: u8 = 2;
/// Exit code for failures at run time.
pub const EXIT_FAILURE: u8 = 1;

/// Assigns couriers to orders from order-status events on Kafka; PostgreSQL holds the truth.
#[derive(Debug, Parser)]
#[command(name = "service-courier", version, about)]
pub struct Cli {
    /// What to do; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume order events and assign couriers (the default).
    Run,
    /// Apply the embedded migrations the database lacks (migrations/NNNN_name.sql, in order).
    Migrate,
    /// Manage couriers.
    #[command(subcommand)]
    Couriers(CourierCommand),
    /// Per courier: completed deliveries, active order, status.
    Stats,
    /// Publish simulated order lifecycles the way service-order does (for demos and benchmarks).
    Simulate(SimulateArgs),
    /// Dead letters: replay them to the order topic.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Ask a running service's /healthz (for container health checks): exit 0 if healthy.
    Health {
        /// host:port of the service's endpoint [default: METRICS_ADDR, or 127.0.0.1:9464].
        #[arg(long)]
        addr: Option<String>,
    },
}

/// `dlq …` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Publish dead letters' original messages (key and value) to the order topic again, once
    /// each: progress is committed for the group `<KAFKA_GROUP_ID>.dlq-replay`, so a second
    /// replay publishes only letters that arrived since.
    Replay(DlqReplayArgs),
}

/// `dlq replay` options.
#[derive(Debug, clap::Args)]
pub struct DlqReplayArgs {
    /// Only letters with this reason (e.g. processing_failed, unsupported_status).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only letters dead-lettered at or after this RFC 3339 time (e.g. 2025-08-06T12:00:00Z).
    #[arg(long, value_parser = rfc3339)]
    pub since: Option<chrono::DateTime<Utc>>,
    /// Say what would be replayed; publish and commit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Kafka brokers, comma-separated host:port [default: KAFKA_BROKERS].
    #[arg(long)]
    pub brokers: Option<String>,
    /// The order topic to publish to (only letters that came from it are replayed) [default:
    /// KAFKA_ORDER_TOPIC, or order.status.changed].
    #[arg(long)]
    pub topic: Option<String>,
    /// The dead-letter topic to read [default: KAFKA_DLQ_TOPIC, or order.status.changed.dlq].
    #[arg(long)]
    pub dlq_topic: Option<String>,
    /// The service's consumer group; the replay commits for `<group>.dlq-replay` [default:
    /// KAFKA_GROUP_ID, or service-courier].
    #[arg(long)]
    pub group: Option<String>,
}

/// Prints a configuration error the way `run` does; exit 2.
fn usage_error(e: &ConfigError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EXIT_USAGE)
}

fn rfc3339(s: &str) -> Result<chrono::DateTime<Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{s:?} is not an RFC 3339 time such as 2025-08-06T12:00:00Z: {e}"))
}

/// Runs `dlq replay`: prints how many letters were replayed, skipped by the filter and not
/// replayable (each with its position and why); exit 1 when Kafka fails.
pub fn run_dlq(command: DlqCommand) -> ExitCode {
    use crate::transport::dlq_replay::{self, rdkafka::RdkafkaDeadLetterLog, ReplayFilter};
    let DlqCommand::Replay(args) = command;
    let env = crate::config::from_process_env_with(vec![
        ("KAFKA_BROKERS", args.brokers),
        ("KAFKA_ORDER_TOPIC", args.topic),
        ("KAFKA_DLQ_TOPIC", args.dlq_topic),
        ("KAFKA_GROUP_ID", args.group),
    ]);
    // KAFKA_CLIENT and the security settings too, as `run` reads them.
    let read = || {
        Ok((
            env.kafka_access()?,
            env.brokers()?,
            env.order_topic()?,
            env.dlq_topic()?,
        ))
    };
    let (access, brokers, topic, dlq) = match read() {
        Ok(target) => target,
        Err(e) => return usage_error(&e),
    };
    let group = format!("{}.dlq-replay", env.group_id());
    let filter = ReplayFilter {
        reason: args.reason,
        since: args.since,
    };
    let (dlq, topic) = (&dlq, &topic);
    // librdkafka whatever KAFKA_CLIENT says (transport::dlq_replay); the security settings
    // still apply.
    let replayed = RdkafkaDeadLetterLog::connect(brokers, access, dlq, topic, &group)
        .map(|mut log| dlq_replay::replay(&mut log, &filter, topic, args.dry_run));
    let outcome = match replayed {
        Ok(outcome) => outcome,
        Err(error) => Err(dlq_replay::ReplayFailure {
            done: dlq_replay::ReplayReport {
                dry_run: args.dry_run,
                ..Default::default()
            },
            error,
        }),
    };
    match outcome {
        Ok(report) => {
            for u in &report.not_replayable {
                println!(
                    "not replayable: {dlq}/{}@{}: {}",
                    u.partition, u.offset, u.why
                );
            }
            println!("dlq replay from {dlq} to {topic} (group {group}): {report}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!(
                "error: dlq replay from {dlq} to {topic} (group {group}) stopped: {}; settled \
                 before that: {}",
                failure.error, failure.done
            );
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `health`: GET /healthz over plain HTTP/1.0; exit 0 on 200, 1 otherwise.
pub fn run_health(addr: Option<String>) -> ExitCode {
    let addr =
        match crate::config::from_process_env_with(vec![("METRICS_ADDR", addr)]).metrics_addr() {
            Ok(Some(addr)) => addr,
            Ok(None) => {
                eprintln!("error: METRICS_ADDR is empty: the service serves no /healthz to ask");
                return ExitCode::from(EXIT_USAGE);
            }
            Err(e) => return usage_error(&e),
        };
    use std::io::{Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    use std::time::Duration;
    // A wildcard listen address is reached through loopback.
    let addr = addr.replace("0.0.0.0", "127.0.0.1");
    let answer = (|| -> std::io::Result<String> {
        let target = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        stream.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut text = String::new();
        stream.take(4096).read_to_string(&mut text)?;
        Ok(text)
    })();
    match answer {
        Ok(text) if text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200") => {
            println!("healthy");
            ExitCode::SUCCESS
        }
        Ok(text) => {
            let why = text.split("\r\n\r\n").nth(1).unwrap_or("").trim();
            eprintln!("unhealthy: {why}");
            ExitCode::from(EXIT_FAILURE)
        }
        Err(e) => {
            eprintln!("unhealthy: cannot reach http://{addr}/healthz: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `simulate` options.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Orders to run through their lifecycle.
    #[arg(long, default_value_t = 100)]
    pub orders: usize,
    /// Events per second.
    #[arg(long, default_value_t = 20.0, conflicts_with = "burst")]
    pub rate: f64,
    /// Send as fast as possible (benchmarks).
    #[arg(long)]
    pub burst: bool,
    /// Share of orders that end cancelled, canceled or deleted (0 to 1).
    #[arg(long, default_value_t = 0.3, value_parser = ratio)]
    pub cancel_ratio: f64,
    /// Seed of order ids and choices: the same seed sends the same orders.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Key events by order id (service-order sends them unkeyed).
    #[arg(long)]
    pub keyed: bool,
    /// Orders in progress at once (how much lifecycles interleave).
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// Benchmark lifecycles: created, sometimes pending, then completed or cancelled.
    #[arg(long)]
    pub short: bool,
    /// Kafka brokers, comma-separated host:port [default: KAFKA_BROKERS].
    #[arg(long)]
    pub brokers: Option<String>,
    /// Topic to publish to [default: KAFKA_ORDER_TOPIC, or order.status.changed].
    #[arg(long)]
    pub topic: Option<String>,
}

fn ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a number from 0 to 1")),
    }
}

/// `couriers …` subcommands.
#[derive(Debug, Subcommand)]
pub enum CourierCommand {
    /// Hire a courier; they take the longest-waiting order at once, if any.
    Add {
        /// Display name.
        #[arg(long)]
        name: String,
        /// Phone: '+' followed by 11 digits, e.g. +79991234567.
        #[arg(long)]
        phone: Phone,
        /// on_foot (30 min window), scooter (15 min) or car (5 min).
        #[arg(long)]
        transport: TransportType,
    },
    /// List couriers.
    List,
    /// Hire demo couriers with valid random phones and transports.
    Seed {
        /// How many.
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// Seed of names, phones and transports.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Stop giving a courier new orders (an order they carry stays theirs).
    Pause {
        /// Courier id.
        id: CourierId,
    },
    /// Let a paused courier take orders again.
    Resume {
        /// Courier id.
        id: CourierId,
    },
}

/// Runs `simulate`.
pub fn run_simulate(args: SimulateArgs) -> ExitCode {
    let plan = crate::simulate::SimulationPlan {
        orders: args.orders,
        rate: (!args.burst).then_some(args.rate.max(0.001)),
        cancel_ratio: args.cancel_ratio,
        seed: args.seed,
        keyed: args.keyed,
        concurrency: args.concurrency,
        short: args.short,
    };
    let env = crate::config::from_process_env_with(vec![
        ("KAFKA_BROKERS", args.brokers),
        ("KAFKA_ORDER_TOPIC", args.topic),
    ]);
    // KAFKA_CLIENT and the security settings too, as `run` reads them.
    let read = || Ok((env.kafka_access()?, env.brokers()?, env.order_topic()?));
    let (access, brokers, topic) = match read() {
        Ok(target) => target,
        Err(e) => return usage_error(&e),
    };
    let shutdown = crate::shutdown::Shutdown::new();
    if let Err(e) = shutdown.install_signal_handler() {
        eprintln!("error: cannot install the signal handler: {e}");
        return ExitCode::from(EXIT_FAILURE);
    }
    let started = std::time::Instant::now();
    match crate::simulate::publish(&brokers, &access, &topic, plan, &shutdown) {
        Ok(sent) => {
            let secs = started.elapsed().as_secs_f64();
            println!(
                "simulate: sent {sent} events of {} orders to {} in {secs:.1} s ({:.0} events/s)",
                args.orders,
                topic,
                sent as f64 / secs.max(1e-9)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: publishing to {} via {:?}: {e}", topic, brokers);
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Runs a database subcommand (everything but `run` and `simulate`).
pub fn run_admin(command: Command) -> ExitCode {
    let repo = match connect() {
        Ok(repo) => repo,
        Err(code) => return code,
    };
    let outcome = match command {
        Command::Run | Command::Simulate(_) | Command::Health { .. } | Command::Dlq(_) => {
            not_admin()
        }
        Command::Couriers(CourierCommand::Seed { count, seed }) => {
            seed_couriers(&repo, count, seed)
        }
        Command::Migrate => migrate(&repo),
        Command::Stats => repo.couriers().map(print_stats).map_err(CliError::from),
        Command::Couriers(CourierCommand::List) => {
            repo.couriers().map(print_couriers).map_err(CliError::from)
        }
        Command::Couriers(CourierCommand::Add {
            name,
            phone,
            transport,
        }) => match NewCourier::parse(&name, phone, transport) {
            Err(e) => Err(CliError::Usage(format!("--name: {e}"))),
            Ok(new) => couriers::add(&repo, &new, Utc::now())
                .map(|c| print_change("added", &c))
                .map_err(CliError::from),
        },
        Command::Couriers(CourierCommand::Pause { id }) => couriers::pause(&repo, id, Utc::now())
            .map(|c| print_change("paused", &c))
            .map_err(CliError::from),
        Command::Couriers(CourierCommand::Resume { id }) => couriers::resume(&repo, id, Utc::now())
            .map(|c| print_change("resumed", &c))
            .map_err(CliError::from),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(CliError::Failed(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `migrate`: says what it recognised and applied. A changed migration file or an unrecognised
/// schema is exit 2 (a person must look), a database failure exit 1.
fn migrate(repo: &PgRepository) -> Result<(), CliError> {
    let report = repo.migrate().map_err(|e| {
        if e.needs_a_person() {
            CliError::Usage(e.to_string())
        } else {
            CliError::Failed(e.to_string())
        }
    })?;
    for file in &report.recognised {
        println!("{file}: already in place (made by schema.sql), recorded");
    }
    for file in &report.applied {
        println!("{file}: applied");
    }
    println!(
        "{} is at migration {} (this build's latest: {})",
        repo.target(),
        report.version,
        crate::repository::postgres::latest_version()
    );
    Ok(())
}

fn not_admin() -> Result<(), CliError> {
    Err(CliError::Failed("not a database command".into()))
}

fn seed_couriers(repo: &PgRepository, count: usize, seed: u64) -> Result<(), CliError> {
    let mut hired = 0;
    for courier in crate::simulate::demo_couriers(count, seed) {
        match couriers::add(repo, &courier, Utc::now()) {
            Ok(_) => hired += 1,
            // A random phone that is taken already: skip it, the demo needs no particular one.
            Err(CourierCommandError::Repository(RepoError::Conflict(_))) => {}
            Err(e) => return Err(e.into()),
        }
    }
    println!("hired {hired} demo couriers");
    Ok(())
}

/// Opens the pool and checks the database answers; prints why not and picks the exit code.
fn connect() -> Result<PgRepository, ExitCode> {
    let db = config::from_process_env()
        .database(1)
        .map_err(|e: ConfigError| {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_USAGE)
        })?;
    let repo = PgRepository::new(db.config, 1).with_limits(db.limits, db.pooler);
    repo.ping().map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_FAILURE)
    })?;
    Ok(repo)
}

enum CliError {
    /// The request itself is wrong: exit 2.
    Usage(String),
    /// The request was fine but could not be carried out: exit 1.
    Failed(String),
}

impl From<RepoError> for CliError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::Conflict(m) => Self::Usage(m),
            other => Self::Failed(other.to_string()),
        }
    }
}

impl From<CourierCommandError> for CliError {
    fn from(e: CourierCommandError) -> Self {
        match e {
            CourierCommandError::NotFound(_) => Self::Usage(e.to_string()),
            CourierCommandError::Repository(r) => r.into(),
        }
    }
}

fn print_change(verb: &str, c: &CourierChange) {
    match &c.took {
        Some(order) => println!(
            "courier {} {verb}: {}, took waiting order {order}",
            c.id, c.status
        ),
        None => println!("courier {} {verb}: {}", c.id, c.status),
    }
}

fn print_couriers(couriers: Vec<crate::repository::CourierView>) {
    println!(
        "{:>6}  {:<24} {:<13} {:<8} {:<9}",
        "ID", "NAME", "PHONE", "TRANSPORT", "STATUS"
    );
    for c in couriers {
        println!(
            "{:>6}  {:<24} {:<13} {:<9} {:<9}",
            c.id, c.name, c.phone, c.transport, c.status
        );
    }
}

fn print_stats(couriers: Vec<crate::repository::CourierView>) {
    println!(
        "{:>6}  {:<24} {:<9} {:>9}  ACTIVE ORDER",
        "ID", "NAME", "STATUS", "COMPLETED"
    );
    let mut total = 0;
    for c in &couriers {
        total += c.completed_deliveries;
        println!(
            "{:>6}  {:<24} {:<9} {:>9}  {}",
            c.id,
            c.name,
            c.status,
            c.completed_deliveries,
            c.active_order.as_ref().map_or("-", |o| o.as_str())
        );
    }
    println!("{} couriers, {total} completed deliveries", couriers.len());
}
