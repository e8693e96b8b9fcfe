//! The `service-courier` binary: loads `.env`, parses the command line, hands over.

use std::process::ExitCode;

use clap::Parser;
use service_courier::cli::{self, Cli, Command};

fn main() -> ExitCode {
    // A missing .env is normal (systemd, compose); a broken one is reported by dotenvy's error.
    if let Err(e) = dotenvy::dotenv() {
        if !e.not_found() {
            eprintln!("error: .env: {e}");
            return ExitCode::from(cli::EXIT_USAGE);
        }
    }
    let args = Cli::parse();
    match args.command.unwrap_or(Command::Run) {
        Command::Run => service_courier::app::run(),
        Command::Simulate(args) => cli::run_simulate(args),
        Command::Health { addr } => cli::run_health(addr),
        Command::Dlq(command) => cli::run_dlq(command),
        other => cli::run_admin(other),
    }
}
