//! The `service-courier` command line: run the consumer (default), apply the schema, manage
//! couriers, print statistics. Exit codes: 0 done, 1 failed at run time (database unreachable,
//! …), 2 bad arguments or configuration.

use std::process::ExitCode;

use chrono::Utc;
use clap::{Parser, Subcommand};

use crate::config::{self, ConfigError};
use crate::domain::{CourierId, NewCourier, Phone, TransportType};
use crate::repository::{CourierRepository, PgRepository, RepoError};
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
    /// Apply the embedded schema.sql (idempotent).
    Migrate,
    /// Manage couriers.
    #[command(subcommand)]
    Couriers(CourierCommand),
    /// Per courier: completed deliveries, active order, status.
    Stats,
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

/// Runs a database subcommand (everything but `run`).
pub fn run_admin(command: Command) -> ExitCode {
    let repo = match connect() {
        Ok(repo) => repo,
        Err(code) => return code,
    };
    let outcome = match command {
        Command::Run => unreachable_run(),
        Command::Migrate => repo
            .migrate()
            .map(|()| println!("schema applied to {}", repo.target()))
            .map_err(CliError::from),
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

fn unreachable_run() -> Result<(), CliError> {
    Err(CliError::Failed("`run` is not an admin command".into()))
}

/// Opens the pool and checks the database answers; prints why not and picks the exit code.
fn connect() -> Result<PgRepository, ExitCode> {
    let db = config::from_process_env()
        .database(1)
        .map_err(|e: ConfigError| {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_USAGE)
        })?;
    let repo = PgRepository::new(db.config, 1);
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
