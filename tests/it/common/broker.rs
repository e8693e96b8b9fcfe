//! Kafka brokers for tests: the shared one (`KAFKA_BROKERS`, as scripts/test.sh starts it), or
//! one of the test's own that it may stop, restart or freeze ([`OwnBroker`]). [`Stack`] is a
//! PostgreSQL and a broker of the test's own.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::database::OwnPostgres;
use super::events::repo_root;
use super::in_ci;
use super::scripts::{env_file, script, StateDir};
use super::wait::retry;

/// KAFKA_BROKERS, or `None` outside CI (the test then says it skipped); in CI a missing broker
/// fails the test.
pub fn kafka_brokers() -> Option<String> {
    match std::env::var("KAFKA_BROKERS") {
        Ok(b) if !b.is_empty() => Some(b),
        _ if in_ci() => panic!("KAFKA_BROKERS is not set but CI is: Kafka tests must run in CI"),
        _ => {
            eprintln!("SKIPPED: KAFKA_BROKERS is not set; run scripts/kafka.sh start first");
            None
        }
    }
}

/// Creates a topic on the shared broker with the project's script.
pub fn create_topic(name: &str, partitions: u32) {
    create_topic_with(name, partitions, &[]);
}

/// [`create_topic`] with topic configs (`KEY=VALUE`, e.g. `max.message.bytes=50000`).
pub fn create_topic_with(name: &str, partitions: u32, configs: &[&str]) {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/kafka.sh"))
        .args(["topic", name, &partitions.to_string()])
        .args(configs)
        .output()
        .expect("scripts/kafka.sh runs");
    assert!(
        out.status.success(),
        "creating topic {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A single-node Apache Kafka 3.9 of the test's own (scripts/kafka.sh in `state`, no topics
/// until the test creates them), stopped when dropped, also on panic and also when frozen.
pub struct OwnBroker {
    /// Its state dir.
    pub state: PathBuf,
    /// Its bootstrap address.
    pub brokers: String,
}

impl OwnBroker {
    /// Starts a broker in `state`.
    pub fn start(state: PathBuf) -> Self {
        script("kafka.sh", &["start"], &[("KAFKA_STATE_DIR", &state)])
            .unwrap_or_else(|e| panic!("{e}"));
        let brokers = env_file(&state, "KAFKA_BROKERS");
        Self { state, brokers }
    }

    /// scripts/kafka.sh stop: SIGTERM to the JVM (SIGKILL after 45 s).
    pub fn stop(&self) {
        script("kafka.sh", &["stop"], &[("KAFKA_STATE_DIR", &self.state)])
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts it again on the same ports and data; returns how many attempts it took.
    pub fn start_again(&self) -> u32 {
        retry(Duration::from_secs(120), "restarting the broker", || {
            script("kafka.sh", &["start"], &[("KAFKA_STATE_DIR", &self.state)])
        })
    }

    /// Creates a topic on it.
    pub fn topic(&self, name: &str, partitions: u32) {
        script(
            "kafka.sh",
            &["topic", name, &partitions.to_string()],
            &[("KAFKA_STATE_DIR", &self.state)],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// SIGSTOP: the broker keeps its connections and answers nothing (a frozen broker).
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    fn signal(&self, sig: &str) {
        if let Ok(pid) = std::fs::read_to_string(self.state.join("kafka.pid")) {
            let _ = Command::new("kill").args([sig, pid.trim()]).status();
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = script("kafka.sh", &["stop"], &[("KAFKA_STATE_DIR", &self.state)]);
    }
}

/// A PostgreSQL and a broker of the test's own, under the target dir; stopped when dropped
/// (also on panic); the state dir goes too unless the test failed.
pub struct Stack {
    /// The PostgreSQL server.
    pub pg: OwnPostgres,
    /// The broker.
    pub kafka: OwnBroker,
    /// Dropped last, once both servers are stopped.
    _dir: StateDir,
}

impl Stack {
    /// Starts both, in a state dir named after `name`.
    pub fn start(name: &str) -> Self {
        let dir = StateDir::new(name);
        let t0 = std::time::Instant::now();
        let pg = OwnPostgres::start(dir.0.join("postgres"));
        let kafka = OwnBroker::start(dir.0.join("kafka"));
        println!(
            "{name}: PostgreSQL {} and Kafka {} up in {:.1}s (state {})",
            pg.url,
            kafka.brokers,
            t0.elapsed().as_secs_f64(),
            dir.0.display()
        );
        Self {
            pg,
            kafka,
            _dir: dir,
        }
    }

    /// The broker's bootstrap address.
    pub fn brokers(&self) -> String {
        self.kafka.brokers.clone()
    }
}

/// A broker of the test's own in a state dir of its own, for tests that need no PostgreSQL of
/// their own.
pub struct PrivateBroker {
    /// The broker.
    pub broker: OwnBroker,
    /// Dropped last, once the broker is stopped.
    _dir: StateDir,
}

impl PrivateBroker {
    /// Starts it.
    pub fn start(name: &str) -> Self {
        let dir = StateDir::new(name);
        let broker = OwnBroker::start(dir.0.join("kafka"));
        Self { broker, _dir: dir }
    }
}

impl std::ops::Deref for PrivateBroker {
    type Target = OwnBroker;
    fn deref(&self) -> &OwnBroker {
        &self.broker
    }
}
