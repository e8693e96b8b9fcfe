//! Settings from `.env` (dotenvy) and the environment, typed and checked once at start-up. A bad
//! value names the variable and the expected form (exit code 2); secrets never reach a message.
//! Every variable is listed, with its default, in `.env.sample` and docs/configuration.md.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::repository::postgres::{Pooler, TransactionLimits};
use log::LevelFilter;

/// A setting that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The environment variable.
    pub variable: &'static str,
    /// What was wrong and what is expected.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// A setting whose value is one of a few words, in any case.
trait Choice: Copy + 'static {
    /// Each word and what it means, in the order an error lists them.
    const WORDS: &'static [(&'static str, Self)];
}

impl Choice for FallbackOffset {
    const WORDS: &'static [(&'static str, Self)] =
        &[("earliest", Self::Earliest), ("latest", Self::Latest)];
}

impl Choice for ClientKind {
    const WORDS: &'static [(&'static str, Self)] =
        &[("kafka", Self::Kafka), ("rdkafka", Self::Rdkafka)];
}

impl Choice for SecurityProtocol {
    const WORDS: &'static [(&'static str, Self)] = &[
        ("plaintext", Self::Plaintext),
        ("ssl", Self::Ssl),
        ("sasl_plaintext", Self::SaslPlaintext),
        ("sasl_ssl", Self::SaslSsl),
    ];
}

impl Choice for SaslMechanism {
    /// In lower case like the others (the value is taken in any case; librdkafka's own
    /// spelling is `as_str`'s).
    const WORDS: &'static [(&'static str, Self)] = &[
        ("plain", Self::Plain),
        ("scram-sha-256", Self::ScramSha256),
        ("scram-sha-512", Self::ScramSha512),
    ];
}

impl Choice for DeadlinePolicy {
    const WORDS: &'static [(&'static str, Self)] =
        &[("complete", Self::Complete), ("report", Self::Report)];
}

/// Where the first event of a new consumer group starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackOffset {
    /// The oldest retained event: a new group processes the backlog (the default).
    Earliest,
    /// Only events produced from now on.
    Latest,
}

/// Which Kafka client library reads and writes the topics (KAFKA_CLIENT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// The `kafka` crate (the default): a static partition split, no TLS/SASL.
    Kafka,
    /// librdkafka through the `rdkafka` crate: consumer groups with rebalancing, every codec,
    /// transactions (read_committed), TLS/SASL.
    Rdkafka,
}

impl ClientKind {
    /// The KAFKA_CLIENT value that selects it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kafka => "kafka",
            Self::Rdkafka => "rdkafka",
        }
    }
}

/// KAFKA_SECURITY_PROTOCOL: how connections to the brokers are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityProtocol {
    /// No TLS, no authentication (the default).
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL authentication without TLS.
    SaslPlaintext,
    /// SASL authentication over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// librdkafka's `security.protocol` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

/// KAFKA_SASL_MECHANISM: the SASL mechanisms librdkafka supports without extra libraries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// PLAIN (user and password; use it over TLS).
    Plain,
    /// SCRAM-SHA-256.
    ScramSha256,
    /// SCRAM-SHA-512.
    ScramSha512,
}

/// A secret (KAFKA_SASL_PASSWORD, API_TOKEN): shown as `<redacted>` by `Debug`, so no log line,
/// error or debug print of the settings can leak it; only the client configuration and the
/// API's token check read it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the client library's configuration only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// SASL credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslSettings {
    /// KAFKA_SASL_MECHANISM.
    pub mechanism: SaslMechanism,
    /// KAFKA_SASL_USERNAME.
    pub username: String,
    /// KAFKA_SASL_PASSWORD (never logged).
    pub password: Secret,
}

/// How the client connects to the brokers: protocol, credentials, trusted CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecuritySettings {
    /// KAFKA_SECURITY_PROTOCOL.
    pub protocol: SecurityProtocol,
    /// Set exactly when the protocol uses SASL.
    pub sasl: Option<SaslSettings>,
    /// KAFKA_SSL_CA_LOCATION: a PEM file of CA certificates; unset = the system's store.
    pub ssl_ca_location: Option<String>,
}

/// The client library and how it reaches the brokers (besides their addresses): what every use
/// of Kafka needs (`run`, `simulate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaAccess {
    /// KAFKA_CLIENT.
    pub client: ClientKind,
    /// KAFKA_SECURITY_PROTOCOL and friends.
    pub security: SecuritySettings,
}

/// Consumer-group membership (`rdkafka` only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSettings {
    /// KAFKA_SESSION_TIMEOUT_MS: how long the group waits for a silent member before its
    /// partitions move to the others.
    pub session_timeout: Duration,
    /// KAFKA_MAX_POLL_INTERVAL_MS: librdkafka's max.poll.interval.ms, the longest the loop may
    /// go without polling before the member leaves the group. At least the session timeout
    /// (librdkafka refuses less).
    pub max_poll_interval: Duration,
    /// KAFKA_GROUP_INSTANCE_ID: static membership (`group.instance.id`): a restart within the
    /// session timeout gets its partitions back without a rebalance.
    pub instance_id: Option<String>,
}

/// Where the database is, and how to talk to it.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// Parsed DATABASE_URL (holds the password: never print it; use `describe_target`).
    pub config: postgres::Config,
    /// DB_POOL_SIZE: connections in the pool.
    pub pool_size: u32,
    /// DB_STATEMENT_TIMEOUT_MS, DB_LOCK_TIMEOUT_MS, DB_IDLE_IN_TRANSACTION_TIMEOUT_MS: set by
    /// every transaction for itself (`SET LOCAL`).
    pub limits: TransactionLimits,
    /// DB_POOLER: `transaction` when DATABASE_URL points at a pooler in transaction mode.
    pub pooler: Pooler,
}

/// DB_TCP_TIMEOUT_SECS: the client drops a connection whose peer stopped answering at the TCP
/// level (keepalive probes while idle, TCP_USER_TIMEOUT while sending), so a vanished server
/// (half-open TCP) ends in an error, retried like any transient failure. 0 leaves the OS's
/// defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpTimeout {
    pub secs: u64,
}

impl TcpTimeout {
    /// Sets this bound on a connection config's sockets.
    pub fn apply(&self, config: &mut postgres::Config) {
        if self.secs > 0 {
            // Idle a third of the bound, then 4 probes a sixth apart: dead within the bound.
            let idle = Duration::from_secs((self.secs / 3).max(1));
            let interval = Duration::from_secs((self.secs / 6).max(1));
            config
                .keepalives(true)
                .keepalives_idle(idle)
                .keepalives_interval(interval)
                .keepalives_retries(4)
                .tcp_user_timeout(Duration::from_secs(self.secs));
        }
    }
}

/// How to reach Kafka and what to read.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// KAFKA_BROKERS: bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// KAFKA_CLIENT and the connection's security.
    pub access: KafkaAccess,
    /// Consumer-group membership (`rdkafka` only).
    pub membership: GroupSettings,
    /// KAFKA_ORDER_TOPIC: the order events.
    pub topic: String,
    /// KAFKA_GROUP_ID: the consumer group the offsets are committed for.
    pub group: String,
    /// KAFKA_FALLBACK_OFFSET: where a group without committed offsets starts.
    pub fallback_offset: FallbackOffset,
    /// KAFKA_FETCH_MAX_BYTES_PER_PARTITION: fetch size, and the largest event accepted.
    pub fetch_max_bytes_per_partition: usize,
    /// KAFKA_FETCH_MAX_WAIT_MS: how long the broker may hold an empty fetch.
    pub fetch_max_wait: Duration,
    /// KAFKA_COMMIT_INTERVAL_MS: how often processed offsets are committed.
    pub commit_interval: Duration,
    /// KAFKA_DLQ_TOPIC: where bad events go, with their reason.
    pub dlq_topic: String,
    /// KAFKA_PARTITIONS or INSTANCE_INDEX/INSTANCE_COUNT: which partitions this instance reads.
    pub partitions: PartitionSelection,
    /// SHUTDOWN_DRAIN_MS: how long a revoked partition's queued and in-flight events may still
    /// finish before its prefix is committed and it is handed back.
    pub revoke_drain: Duration,
}

/// Which partitions of the topic this instance reads. There is no rebalancing protocol (the
/// `kafka` crate has none): several instances split the partitions statically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionSelection {
    /// Every partition (one instance).
    All,
    /// KAFKA_PARTITIONS=0,2,4.
    Listed(Vec<i32>),
    /// INSTANCE_INDEX=i, INSTANCE_COUNT=n: the partitions p with p % n == i.
    Share {
        /// This instance, from 0.
        index: u32,
        /// How many instances share the topic.
        count: u32,
    },
}

impl PartitionSelection {
    /// The partitions to read, given those the topic has. An empty or out-of-range result is
    /// an error that names the variable.
    pub fn resolve(&self, existing: &[i32]) -> Result<Vec<i32>, ConfigError> {
        match self {
            Self::All => Ok(existing.to_vec()),
            Self::Listed(wanted) => match wanted.iter().find(|p| !existing.contains(p)) {
                Some(p) => Err(ConfigError {
                    variable: "KAFKA_PARTITIONS",
                    problem: format!(
                        "partition {p} does not exist; the topic has partitions {existing:?}"
                    ),
                }),
                None => Ok(wanted.clone()),
            },
            Self::Share { index, count } => {
                let mine: Vec<i32> = existing
                    .iter()
                    .copied()
                    .filter(|p| (*p as u32) % count == *index)
                    .collect();
                if mine.is_empty() {
                    Err(ConfigError {
                        variable: "INSTANCE_INDEX",
                        problem: format!(
                            "instance {index} of {count} gets no partition: the topic has only \
                             {} (use fewer instances or more partitions)",
                            existing.len()
                        ),
                    })
                } else {
                    Ok(mine)
                }
            }
        }
    }
}

/// Everything `service-courier run` needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Kafka side.
    pub kafka: KafkaSettings,
    /// PostgreSQL side.
    pub database: DatabaseSettings,
    /// WORKERS: threads applying events, each with its own queue.
    pub workers: usize,
    /// QUEUE_CAPACITY: events queued per worker; past it the poller holds the event back and
    /// pauses its partition.
    pub queue_capacity: usize,
    /// SHUTDOWN_DRAIN_MS: once stopping, how long queued events are still applied; the rest
    /// stay uncommitted and are delivered again after the restart.
    pub shutdown_drain: Duration,
    /// BATCH_MAX: most queued events a worker applies in one transaction.
    pub batch_max: usize,
    /// LOG_LEVEL: error, warn, info, debug or trace.
    pub log_level: LevelFilter,
    /// METRICS_ADDR: where `/metrics`, `/healthz` and `/readyz` listen; `None` = disabled.
    pub metrics_addr: Option<String>,
    /// WATCHDOG_SECS: exit when the poller makes no progress this long; `None` = disabled.
    pub watchdog: Option<Duration>,
    /// HTTP_ADDR: where the HTTP API and the operator's page listen; `None` = disabled.
    pub http_addr: Option<String>,
    /// API_TOKEN: when set, mutating API routes need `Authorization: Bearer <token>`. A secret:
    /// never printed, never logged.
    pub api_token: Option<Secret>,
    /// DEADLINE_CHECK_MS and DEADLINE_POLICY: what the deadline pass does, and how often.
    pub deadlines: DeadlineSettings,
    /// MIGRATE_ON_START: whether `run` applies the migrations a database lacks (the default),
    /// or exits 2 and leaves them to `service-courier migrate` (a rollout that migrates first).
    pub migrate_on_start: bool,
}

/// What happens to a delivery whose deadline has passed (docs/rules.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlinePolicy {
    /// The course's rule: the delivery is completed at its deadline and the courier freed.
    Complete,
    /// Nothing changes; overdue deliveries are only counted and shown.
    Report,
}

/// The deadline pass's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlineSettings {
    /// DEADLINE_POLICY: `complete` (default) or `report`.
    pub policy: DeadlinePolicy,
    /// DEADLINE_CHECK_MS: how often the pass runs (it also runs at start).
    pub check_every: Duration,
}

/// Reads variables through a lookup function, so tests need not touch the process environment.
pub struct Env<F: Fn(&str) -> Option<String>>(pub F);

impl<F: Fn(&str) -> Option<String>> Env<F> {
    fn raw(&self, name: &str) -> Option<String> {
        (self.0)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn required(&self, name: &'static str, expected: &str) -> Result<String, ConfigError> {
        self.raw(name).ok_or_else(|| ConfigError {
            variable: name,
            problem: format!("is not set; expected {expected}"),
        })
    }

    fn or<T: FromStr>(
        &self,
        name: &'static str,
        default: T,
        expected: &str,
    ) -> Result<T, ConfigError> {
        match self.raw(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| ConfigError {
                variable: name,
                problem: format!("{v:?} is not {expected}"),
            }),
        }
    }

    /// A setting that names one of `T`'s words (case-insensitive); `None` when it is not set.
    fn choice<T: Choice>(&self, name: &'static str) -> Result<Option<T>, ConfigError> {
        let Some(given) = self.raw(name) else {
            return Ok(None);
        };
        match T::WORDS
            .iter()
            .find(|(word, _)| word.eq_ignore_ascii_case(&given))
        {
            Some((_, value)) => Ok(Some(*value)),
            None => Err(ConfigError {
                variable: name,
                problem: format!("{given:?} is not {}", words::<T>()),
            }),
        }
    }

    fn bounded(
        &self,
        name: &'static str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<u64, ConfigError> {
        let expected = format!("a whole number from {} to {}", range.start(), range.end());
        let v: u64 = self.or(name, default, &expected)?;
        if range.contains(&v) {
            Ok(v)
        } else {
            Err(ConfigError {
                variable: name,
                problem: format!("{v} is not {expected}"),
            })
        }
    }

    /// Reads DATABASE_URL, DB_POOL_SIZE and the connection timeouts (applied to the config).
    pub fn database(&self, default_pool: u32) -> Result<DatabaseSettings, ConfigError> {
        const FORM: &str = "postgres://USER:PASSWORD@HOST:PORT/DATABASE";
        let raw = self.required("DATABASE_URL", FORM)?;
        let config = raw.parse::<postgres::Config>().map_err(|_| ConfigError {
            variable: "DATABASE_URL",
            problem: format!("is not a PostgreSQL URL; expected {FORM}"),
        })?;
        if config.get_hosts().is_empty() {
            return Err(ConfigError {
                variable: "DATABASE_URL",
                problem: format!("names no host; expected {FORM}"),
            });
        }
        let pool_size = self.bounded("DB_POOL_SIZE", u64::from(default_pool), 1..=256)? as u32;
        let mut config = config;
        TcpTimeout {
            secs: self.bounded("DB_TCP_TIMEOUT_SECS", 30, 0..=3_600)?,
        }
        .apply(&mut config);
        let limits = TransactionLimits {
            statement_ms: self.bounded("DB_STATEMENT_TIMEOUT_MS", 30_000, 0..=3_600_000)?,
            lock_ms: self.bounded("DB_LOCK_TIMEOUT_MS", 10_000, 0..=3_600_000)?,
            idle_in_transaction_ms: self.bounded(
                "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
                60_000,
                0..=3_600_000,
            )?,
        };
        let pooler = match self.raw("DB_POOLER").as_deref() {
            None | Some("none") => Pooler::None,
            Some("transaction") => Pooler::Transaction,
            Some(other) => {
                return Err(ConfigError {
                    variable: "DB_POOLER",
                    problem: format!(
                        "{other:?} is not a pooler mode; expected none (direct, or a pooler in \
                         session mode) or transaction (PgBouncer pool_mode=transaction, RDS Proxy)"
                    ),
                })
            }
        };
        Ok(DatabaseSettings {
            config,
            pool_size,
            limits,
            pooler,
        })
    }

    /// Reads KAFKA_CLIENT and the security settings: what `run` and `simulate` need to reach
    /// Kafka besides the addresses. The `kafka` crate is built without TLS, so it takes
    /// plaintext only.
    pub fn kafka_access(&self) -> Result<KafkaAccess, ConfigError> {
        let client = self.choice("KAFKA_CLIENT")?.unwrap_or(ClientKind::Kafka);
        let protocol = self.security_protocol()?;
        if client == ClientKind::Kafka && protocol != SecurityProtocol::Plaintext {
            return Err(ConfigError {
                variable: "KAFKA_SECURITY_PROTOCOL",
                problem: format!(
                    "{} needs KAFKA_CLIENT=rdkafka (the `kafka` crate is built without TLS \
                     and SASL)",
                    protocol.as_str()
                ),
            });
        }
        let security = self.security(protocol)?;
        Ok(KafkaAccess { client, security })
    }

    fn security_protocol(&self) -> Result<SecurityProtocol, ConfigError> {
        Ok(self
            .choice("KAFKA_SECURITY_PROTOCOL")?
            .unwrap_or(SecurityProtocol::Plaintext))
    }

    fn security(&self, protocol: SecurityProtocol) -> Result<SecuritySettings, ConfigError> {
        let needs = |variable: &'static str, what: &str| ConfigError {
            variable,
            problem: format!("{what} (KAFKA_SECURITY_PROTOCOL={})", protocol.as_str()),
        };
        let sasl = if protocol.uses_sasl() {
            let mechanism = self.choice("KAFKA_SASL_MECHANISM")?.ok_or_else(|| {
                needs(
                    "KAFKA_SASL_MECHANISM",
                    &format!("is not set; expected {}", words::<SaslMechanism>()),
                )
            })?;
            let username = self
                .raw("KAFKA_SASL_USERNAME")
                .ok_or_else(|| needs("KAFKA_SASL_USERNAME", "is not set"))?;
            // The password is taken as given (not trimmed): it is a secret, not a word.
            let password = (self.0)("KAFKA_SASL_PASSWORD")
                .filter(|p| !p.is_empty())
                .ok_or_else(|| needs("KAFKA_SASL_PASSWORD", "is not set"))?;
            Some(SaslSettings {
                mechanism,
                username,
                password: Secret(password),
            })
        } else {
            for variable in [
                "KAFKA_SASL_MECHANISM",
                "KAFKA_SASL_USERNAME",
                "KAFKA_SASL_PASSWORD",
            ] {
                if self.raw(variable).is_some() {
                    return Err(needs(
                        variable,
                        "is set, but the protocol uses no SASL: use sasl_plaintext or sasl_ssl",
                    ));
                }
            }
            None
        };
        let ssl_ca_location = match self.raw("KAFKA_SSL_CA_LOCATION") {
            None => None,
            Some(_) if !protocol.uses_tls() => {
                return Err(needs(
                    "KAFKA_SSL_CA_LOCATION",
                    "is set, but the protocol uses no TLS: use ssl or sasl_ssl",
                ))
            }
            Some(path) if std::path::Path::new(&path).is_file() => Some(path),
            Some(path) => {
                return Err(ConfigError {
                    variable: "KAFKA_SSL_CA_LOCATION",
                    problem: format!(
                        "{path:?} is not a file (expected a PEM file of CA certificates)"
                    ),
                })
            }
        };
        Ok(SecuritySettings {
            protocol,
            sasl,
            ssl_ca_location,
        })
    }

    /// Reads the rdkafka-only group settings; with the `kafka` crate they are an error (it has
    /// no group membership).
    fn membership(&self, client: ClientKind) -> Result<GroupSettings, ConfigError> {
        let membership = GroupSettings {
            session_timeout: Duration::from_millis(self.bounded(
                "KAFKA_SESSION_TIMEOUT_MS",
                45_000,
                1_000..=3_600_000,
            )?),
            max_poll_interval: Duration::from_millis(self.bounded(
                "KAFKA_MAX_POLL_INTERVAL_MS",
                300_000,
                1_000..=86_400_000,
            )?),
            instance_id: self.raw("KAFKA_GROUP_INSTANCE_ID"),
        };
        // The `kafka` crate has neither: nothing to compare.
        if client == ClientKind::Rdkafka
            && membership.max_poll_interval < membership.session_timeout
        {
            return Err(ConfigError {
                variable: "KAFKA_MAX_POLL_INTERVAL_MS",
                problem: format!(
                    "is {} ms, below KAFKA_SESSION_TIMEOUT_MS ({} ms); librdkafka requires                      max.poll.interval.ms >= session.timeout.ms",
                    membership.max_poll_interval.as_millis(),
                    membership.session_timeout.as_millis()
                ),
            });
        }
        if client == ClientKind::Kafka {
            for variable in ["KAFKA_SESSION_TIMEOUT_MS", "KAFKA_GROUP_INSTANCE_ID"] {
                if self.raw(variable).is_some() {
                    return Err(ConfigError {
                        variable,
                        problem: "applies to KAFKA_CLIENT=rdkafka only (the `kafka` crate has \
                                  no group membership)"
                            .into(),
                    });
                }
            }
        }
        Ok(membership)
    }

    /// Reads every setting of `run`.
    /// KAFKA_BROKERS: the bootstrap brokers, each `host:port`.
    pub fn brokers(&self) -> Result<Vec<String>, ConfigError> {
        let brokers: Vec<String> = self
            .required("KAFKA_BROKERS", "a comma-separated list of host:port")?
            .split(',')
            .map(|b| b.trim().to_owned())
            .filter(|b| !b.is_empty())
            .collect();
        if brokers.is_empty() {
            return Err(ConfigError {
                variable: "KAFKA_BROKERS",
                problem: "lists no broker; expected a comma-separated list of host:port".into(),
            });
        }
        if let Some(bad) = brokers.iter().find(|b| !is_host_port(b)) {
            return Err(ConfigError {
                variable: "KAFKA_BROKERS",
                problem: format!("{bad:?} is not host:port"),
            });
        }
        Ok(brokers)
    }

    /// KAFKA_ORDER_TOPIC.
    pub fn order_topic(&self) -> Result<String, ConfigError> {
        topic_name(self, "KAFKA_ORDER_TOPIC", "order.status.changed")
    }

    /// KAFKA_DLQ_TOPIC.
    pub fn dlq_topic(&self) -> Result<String, ConfigError> {
        topic_name(self, "KAFKA_DLQ_TOPIC", "order.status.changed.dlq")
    }

    /// KAFKA_GROUP_ID.
    pub fn group_id(&self) -> String {
        self.raw("KAFKA_GROUP_ID")
            .unwrap_or_else(|| "service-courier".into())
    }

    /// METRICS_ADDR: where `/metrics`, `/healthz` and `/readyz` listen; `None` = disabled.
    pub fn metrics_addr(&self) -> Result<Option<String>, ConfigError> {
        listen_addr(self, "METRICS_ADDR", "127.0.0.1:9464")
    }

    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let brokers = self.brokers()?;
        let fallback_offset = self
            .choice("KAFKA_FALLBACK_OFFSET")?
            .unwrap_or(FallbackOffset::Earliest);
        let access = self.kafka_access()?;
        let membership = self.membership(access.client)?;
        let workers = self.bounded("WORKERS", 4, 1..=256)? as usize;
        let shutdown_drain =
            Duration::from_millis(self.bounded("SHUTDOWN_DRAIN_MS", 1000, 0..=600_000)?);
        let kafka = KafkaSettings {
            brokers,
            membership,
            topic: self.order_topic()?,
            group: self.group_id(),
            fallback_offset,
            fetch_max_bytes_per_partition: self.bounded(
                "KAFKA_FETCH_MAX_BYTES_PER_PARTITION",
                1 << 20,
                1024..=(64 << 20),
            )? as usize,
            fetch_max_wait: Duration::from_millis(self.bounded(
                "KAFKA_FETCH_MAX_WAIT_MS",
                10,
                1..=10_000,
            )?),
            commit_interval: Duration::from_millis(self.bounded(
                "KAFKA_COMMIT_INTERVAL_MS",
                1000,
                10..=600_000,
            )?),
            dlq_topic: self.dlq_topic()?,
            partitions: partitions(self, access.client)?,
            access,
            revoke_drain: shutdown_drain,
        };
        let settings = Settings {
            kafka,
            database: self.database(workers as u32 + 1)?,
            workers,
            queue_capacity: self.bounded("QUEUE_CAPACITY", 256, 1..=1_000_000)? as usize,
            batch_max: self.bounded("BATCH_MAX", 256, 1..=10_000)? as usize,
            shutdown_drain,
            log_level: self.or(
                "LOG_LEVEL",
                LevelFilter::Info,
                "error, warn, info, debug or trace",
            )?,
            metrics_addr: self.metrics_addr()?,
            http_addr: listen_addr(self, "HTTP_ADDR", DEFAULT_HTTP_ADDR)?,
            api_token: api_token(self)?,
            deadlines: DeadlineSettings {
                policy: self
                    .choice("DEADLINE_POLICY")?
                    .unwrap_or(DeadlinePolicy::Complete),
                check_every: Duration::from_millis(self.bounded(
                    "DEADLINE_CHECK_MS",
                    10_000,
                    100..=3_600_000,
                )?),
            },
            watchdog: match self.bounded("WATCHDOG_SECS", 60, 0..=86_400)? {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
            migrate_on_start: self.or("MIGRATE_ON_START", true, "true or false")?,
        };
        if settings.kafka.dlq_topic == settings.kafka.topic {
            return Err(ConfigError {
                variable: "KAFKA_DLQ_TOPIC",
                problem: "must differ from KAFKA_ORDER_TOPIC".into(),
            });
        }
        Ok(settings)
    }
}

/// HTTP_ADDR's default. Port 8090: the course's stack takes 8080 and 8083 (service-order),
/// 9092 (Kafka), 9090 (Prometheus) and 3000 (Grafana).
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8090";

/// The process environment (after `.env` was loaded).
pub fn from_process_env() -> Env<impl Fn(&str) -> Option<String>> {
    Env(|name: &str| std::env::var(name).ok())
}

/// The process environment with some variables given another value where one is set (a
/// subcommand's flags, e.g. `--topic` for KAFKA_ORDER_TOPIC): one reader, so flags and
/// variables are checked alike and share their defaults.
pub fn from_process_env_with(
    overrides: Vec<(&'static str, Option<String>)>,
) -> Env<impl Fn(&str) -> Option<String>> {
    Env(move |name: &str| {
        overrides
            .iter()
            .find_map(|(n, v)| if *n == name { v.clone() } else { None })
            .or_else(|| std::env::var(name).ok())
    })
}

fn is_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

fn topic_name<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    name: &'static str,
    default: &str,
) -> Result<String, ConfigError> {
    let topic = env.raw(name).unwrap_or_else(|| default.to_owned());
    let valid = topic.len() <= 249
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && topic != "."
        && topic != "..";
    if valid {
        Ok(topic)
    } else {
        Err(ConfigError {
            variable: name,
            problem: format!(
                "{topic:?} is not a Kafka topic name (letters, digits, '.', '_', '-')"
            ),
        })
    }
}

fn listen_addr<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    name: &'static str,
    default: &str,
) -> Result<Option<String>, ConfigError> {
    // Set but empty disables the endpoint; unset means the default.
    match (env.0)(name).map(|v| v.trim().to_owned()) {
        None => Ok(Some(default.into())),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) if is_host_port(&v) || v.ends_with(":0") => Ok(Some(v)),
        Some(v) => Err(ConfigError {
            variable: name,
            problem: format!("{v:?} is not host:port (or empty to disable)"),
        }),
    }
}

/// `a, b or c`: the words of a setting's choices, for its error.
fn words<T: Choice>() -> String {
    match T::WORDS {
        [] => String::new(),
        [only] => only.0.to_owned(),
        [init @ .., last] => {
            let init: Vec<&str> = init.iter().map(|(w, _)| *w).collect();
            format!("{} or {}", init.join(", "), last.0)
        }
    }
}

fn api_token<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Option<Secret>, ConfigError> {
    match env.raw("API_TOKEN") {
        None => Ok(None),
        // The message never shows the value: it is a secret.
        Some(t) if t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()) => Err(ConfigError {
            variable: "API_TOKEN",
            problem: "must be at least 16 printable ASCII characters without spaces".into(),
        }),
        Some(t) => Ok(Some(Secret(t))),
    }
}

fn partitions<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    client: ClientKind,
) -> Result<PartitionSelection, ConfigError> {
    let listed = env.raw("KAFKA_PARTITIONS");
    let index = env.raw("INSTANCE_INDEX");
    let count = env.raw("INSTANCE_COUNT");
    if client == ClientKind::Rdkafka {
        let set = [
            ("KAFKA_PARTITIONS", &listed),
            ("INSTANCE_INDEX", &index),
            ("INSTANCE_COUNT", &count),
        ];
        if let Some((variable, _)) = set.iter().find(|(_, v)| v.is_some()) {
            return Err(ConfigError {
                variable,
                problem: "is for KAFKA_CLIENT=kafka only: with rdkafka the consumer group \
                          assigns partitions (unset it)"
                    .into(),
            });
        }
    }
    match (listed, index, count) {
        (None, None, None) => Ok(PartitionSelection::All),
        (Some(raw), None, None) => listed_partitions(&raw),
        (None, Some(_), Some(_)) => {
            let count = env.bounded("INSTANCE_COUNT", 1, 1..=1024)? as u32;
            let index = env.bounded("INSTANCE_INDEX", 0, 0..=1023)? as u32;
            if index >= count {
                return Err(ConfigError {
                    variable: "INSTANCE_INDEX",
                    problem: format!("{index} is not below INSTANCE_COUNT={count}"),
                });
            }
            Ok(PartitionSelection::Share { index, count })
        }
        (Some(_), _, _) => Err(ConfigError {
            variable: "KAFKA_PARTITIONS",
            problem: "is set together with INSTANCE_INDEX/INSTANCE_COUNT: choose one way to split \
                      partitions"
                .into(),
        }),
        (None, Some(_), None) | (None, None, Some(_)) => Err(ConfigError {
            variable: "INSTANCE_COUNT",
            problem: "INSTANCE_INDEX and INSTANCE_COUNT go together".into(),
        }),
    }
}

fn listed_partitions(raw: &str) -> Result<PartitionSelection, ConfigError> {
    let bad = |problem: String| ConfigError {
        variable: "KAFKA_PARTITIONS",
        problem,
    };
    let mut list = Vec::new();
    for part in raw.split(',').map(str::trim) {
        let p: i32 = part.parse().ok().filter(|p| *p >= 0).ok_or_else(|| {
            bad(format!(
                "{part:?} is not a partition number; expected e.g. 0,2,4"
            ))
        })?;
        if list.contains(&p) {
            return Err(bad(format!("partition {p} is listed twice")));
        }
        list.push(p);
    }
    list.sort_unstable();
    Ok(PartitionSelection::Listed(list))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Env<impl Fn(&str) -> Option<String>> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env(move |k: &str| map.get(k).cloned())
    }

    const BASE: [(&str, &str); 2] = [
        ("KAFKA_BROKERS", "127.0.0.1:9092, kafka:29092"),
        ("DATABASE_URL", "postgres://courier:secret@db:5432/courier"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Result<Settings, ConfigError> {
        let mut all = BASE.to_vec();
        all.extend_from_slice(extra);
        env(&all).settings()
    }

    #[test]
    fn a_setting_that_names_a_choice_takes_any_case_and_a_wrong_word_names_them_all() {
        let s = with(&[
            ("KAFKA_CLIENT", "RdKafka"),
            ("DEADLINE_POLICY", "REPORT"),
            ("KAFKA_FALLBACK_OFFSET", "Latest"),
        ])
        .expect("valid");
        assert_eq!(s.kafka.access.client, ClientKind::Rdkafka);
        assert_eq!(s.deadlines.policy, DeadlinePolicy::Report);
        assert_eq!(s.kafka.fallback_offset, FallbackOffset::Latest);
        for (var, value, words) in [
            (
                "KAFKA_CLIENT",
                "librdkafka",
                "\"librdkafka\" is not kafka or rdkafka",
            ),
            (
                "DEADLINE_POLICY",
                "skip",
                "\"skip\" is not complete or report",
            ),
            (
                "KAFKA_SECURITY_PROTOCOL",
                "tls",
                "\"tls\" is not plaintext, ssl, sasl_plaintext or sasl_ssl",
            ),
        ] {
            let err = with(&[(var, value)]).expect_err(var);
            assert_eq!((err.variable, err.problem.as_str()), (var, words));
        }
    }

    #[test]
    fn defaults() {
        let s = with(&[]).expect("valid");
        assert_eq!(s.kafka.brokers, vec!["127.0.0.1:9092", "kafka:29092"]);
        assert_eq!(s.kafka.topic, "order.status.changed");
        assert_eq!(s.kafka.dlq_topic, "order.status.changed.dlq");
        assert_eq!(s.kafka.group, "service-courier");
        assert_eq!(s.kafka.fallback_offset, FallbackOffset::Earliest);
        assert_eq!(s.kafka.fetch_max_bytes_per_partition, 1 << 20);
        assert_eq!(s.kafka.commit_interval, Duration::from_secs(1));
        assert_eq!(s.kafka.partitions, PartitionSelection::All);
        assert_eq!(s.metrics_addr.as_deref(), Some("127.0.0.1:9464"));
        assert_eq!(s.watchdog, Some(Duration::from_secs(60)));
        assert_eq!(s.workers, 4);
        assert_eq!(s.database.pool_size, 5);
        assert_eq!(s.log_level, LevelFilter::Info);
    }

    #[test]
    fn every_bad_value_names_its_variable() {
        let cases: &[(&str, &str)] = &[
            ("KAFKA_BROKERS", "localhost"),
            ("KAFKA_BROKERS", " , "),
            ("KAFKA_FALLBACK_OFFSET", "newest"),
            ("KAFKA_FETCH_MAX_BYTES_PER_PARTITION", "1MB"),
            ("KAFKA_FETCH_MAX_WAIT_MS", "0"),
            ("KAFKA_COMMIT_INTERVAL_MS", "-5"),
            ("KAFKA_PARTITIONS", "0,x"),
            ("KAFKA_PARTITIONS", "1,1"),
            ("KAFKA_ORDER_TOPIC", "bad topic"),
            ("KAFKA_DLQ_TOPIC", "order.status.changed"),
            ("WORKERS", "0"),
            ("QUEUE_CAPACITY", "lots"),
            ("SHUTDOWN_DRAIN_MS", "soon"),
            ("BATCH_MAX", "0"),
            ("DB_POOL_SIZE", "1000"),
            ("LOG_LEVEL", "loud"),
            ("DATABASE_URL", "not a url"),
            ("MIGRATE_ON_START", "yes"),
        ];
        for (var, value) in cases {
            let err = with(&[(var, value)]).expect_err(&format!("{var}={value} must fail"));
            assert_eq!(err.variable, *var, "{var}={value}: {err}");
        }
        let err = env(&[("DATABASE_URL", "postgres://a@b/c")])
            .settings()
            .expect_err("no brokers");
        assert_eq!(err.variable, "KAFKA_BROKERS");
    }

    #[test]
    fn migrate_on_start_defaults_to_true() {
        assert!(with(&[]).expect("valid").migrate_on_start);
        let off = with(&[("MIGRATE_ON_START", "false")]).expect("valid");
        assert!(!off.migrate_on_start);
    }

    #[test]
    fn errors_never_show_the_password() {
        let err = with(&[("DB_POOL_SIZE", "x")]).expect_err("bad");
        assert!(!err.to_string().contains("secret"));
        let err = env(&[
            ("KAFKA_BROKERS", "a:1"),
            ("DATABASE_URL", "postgres://u:secret@/x?bad=1"),
        ])
        .settings()
        .map(|_| ())
        .err();
        assert!(err.is_none_or(|e| !e.to_string().contains("secret")));
    }

    #[test]
    fn partitions_parse_sorted() {
        let s = with(&[("KAFKA_PARTITIONS", "4, 0,2")]).expect("valid");
        assert_eq!(
            s.kafka.partitions,
            PartitionSelection::Listed(vec![0, 2, 4])
        );
        let s = with(&[("KAFKA_PARTITIONS", "")]).expect("valid");
        assert_eq!(s.kafka.partitions, PartitionSelection::All);
        assert_eq!(s.metrics_addr.as_deref(), Some("127.0.0.1:9464"));
        assert_eq!(s.watchdog, Some(Duration::from_secs(60)));
    }

    #[test]
    fn instances_share_partitions_statically() {
        let s = with(&[("INSTANCE_INDEX", "1"), ("INSTANCE_COUNT", "3")]).expect("valid");
        let share = s.kafka.partitions;
        assert_eq!(share, PartitionSelection::Share { index: 1, count: 3 });
        assert_eq!(share.resolve(&[0, 1, 2, 3, 4, 5]), Ok(vec![1, 4]));
        // More instances than partitions: this one would read nothing.
        let lonely = PartitionSelection::Share { index: 3, count: 4 };
        assert_eq!(
            lonely.resolve(&[0, 1, 2]).map_err(|e| e.variable),
            Err("INSTANCE_INDEX")
        );
        let listed = PartitionSelection::Listed(vec![0, 7]);
        assert_eq!(
            listed.resolve(&[0, 1]).map_err(|e| e.variable),
            Err("KAFKA_PARTITIONS")
        );
        for bad in [
            vec![("INSTANCE_INDEX", "3"), ("INSTANCE_COUNT", "3")],
            vec![("INSTANCE_INDEX", "0")],
            vec![("INSTANCE_COUNT", "2")],
            vec![
                ("KAFKA_PARTITIONS", "0"),
                ("INSTANCE_INDEX", "0"),
                ("INSTANCE_COUNT", "2"),
            ],
            vec![("KAFKA_PARTITIONS", ",")],
        ] {
            assert!(with(&bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn database_timeouts_are_transaction_limits_and_socket_settings() {
        let s = with(&[]).expect("valid");
        assert_eq!(s.database.limits, TransactionLimits::default());
        assert_eq!(
            (
                s.database.limits.statement_ms,
                s.database.limits.lock_ms,
                s.database.limits.idle_in_transaction_ms
            ),
            (30_000, 10_000, 60_000)
        );
        // Nothing rides in the startup options: poolers in transaction mode refuse them.
        assert_eq!(s.database.config.get_options(), None);
        assert_eq!(s.database.pooler, Pooler::None);
        assert_eq!(
            s.database.config.get_keepalives_idle(),
            Duration::from_secs(10)
        );
        assert_eq!(
            s.database.config.get_tcp_user_timeout(),
            Some(&Duration::from_secs(30))
        );
        let s = with(&[
            ("DB_STATEMENT_TIMEOUT_MS", "0"),
            ("DB_LOCK_TIMEOUT_MS", "250"),
            ("DB_POOLER", "transaction"),
        ])
        .expect("valid");
        assert_eq!(
            (s.database.limits.statement_ms, s.database.limits.lock_ms),
            (0, 250)
        );
        assert_eq!(s.database.pooler, Pooler::Transaction);
        for (var, value) in [
            ("DB_TCP_TIMEOUT_SECS", "forever"),
            ("DB_POOLER", "session?"),
        ] {
            let err = with(&[(var, value)]).expect_err("bad");
            assert!(err.to_string().contains(var), "{err}");
        }
    }

    #[test]
    fn flags_stand_in_for_their_variables_with_the_same_checks() {
        let env = from_process_env_with(vec![
            ("KAFKA_ORDER_TOPIC", Some("from-a-flag".into())),
            ("KAFKA_BROKERS", Some("no-port".into())),
        ]);
        assert_eq!(env.order_topic().expect("valid"), "from-a-flag");
        let err = env.brokers().expect_err("checked like the variable");
        assert_eq!(err.variable, "KAFKA_BROKERS");
        let env = from_process_env_with(vec![("KAFKA_ORDER_TOPIC", Some("bad topic!".into()))]);
        assert_eq!(
            env.order_topic().expect_err("bad name").variable,
            "KAFKA_ORDER_TOPIC"
        );
    }

    #[test]
    fn deadline_policy_and_interval() {
        let s = with(&[]).expect("valid");
        assert_eq!(s.deadlines.policy, DeadlinePolicy::Complete);
        assert_eq!(s.deadlines.check_every, Duration::from_secs(10));
        let s =
            with(&[("DEADLINE_POLICY", "Report"), ("DEADLINE_CHECK_MS", "250")]).expect("valid");
        assert_eq!(s.deadlines.policy, DeadlinePolicy::Report);
        assert_eq!(s.deadlines.check_every, Duration::from_millis(250));
        for (name, bad) in [("DEADLINE_POLICY", "ignore"), ("DEADLINE_CHECK_MS", "5")] {
            let err = with(&[(name, bad)]).expect_err("bad");
            assert_eq!(err.variable, name);
        }
    }

    #[test]
    fn http_address_and_token() {
        let s = with(&[]).expect("valid");
        assert_eq!(s.http_addr.as_deref(), Some("127.0.0.1:8090"));
        assert_eq!(s.api_token, None);
        let s = with(&[("HTTP_ADDR", ""), ("API_TOKEN", "0123456789abcdef")]).expect("valid");
        assert_eq!(s.http_addr, None);
        assert_eq!(
            s.api_token.as_ref().map(Secret::expose),
            Some("0123456789abcdef")
        );
        assert!(
            !format!("{s:?}").contains("0123456789abcdef"),
            "Debug shows the token"
        );
        let err = with(&[("HTTP_ADDR", "nope")]).map_err(|e| e.variable);
        assert_eq!(err.map(|_| ()), Err("HTTP_ADDR"));
        let err = with(&[("API_TOKEN", "short secret")]).expect_err("too short");
        assert_eq!(err.variable, "API_TOKEN");
        assert!(!err.to_string().contains("short secret"));
    }

    #[test]
    fn the_kafka_crate_is_the_default_client() {
        let s = with(&[]).expect("valid");
        assert_eq!(s.kafka.access.client, ClientKind::Kafka);
        assert_eq!(
            s.kafka.access.security.protocol,
            SecurityProtocol::Plaintext
        );
        assert_eq!(s.kafka.access.security.sasl, None);
        assert_eq!(s.kafka.membership.session_timeout, Duration::from_secs(45));
        assert_eq!(s.kafka.membership.instance_id, None);
        assert_eq!(s.kafka.revoke_drain, s.shutdown_drain);
        let s = with(&[("KAFKA_CLIENT", "RdKafka")]).expect("valid");
        assert_eq!(s.kafka.access.client, ClientKind::Rdkafka);
    }

    /// A file that exists, as a CA bundle stand-in.
    const SOME_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");

    #[test]
    fn rdkafka_takes_group_and_security_settings() {
        let s = with(&[
            ("KAFKA_CLIENT", "rdkafka"),
            ("KAFKA_SESSION_TIMEOUT_MS", "10000"),
            ("KAFKA_GROUP_INSTANCE_ID", "courier-1"),
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISM", "scram-sha-512"),
            ("KAFKA_SASL_USERNAME", "courier"),
            ("KAFKA_SASL_PASSWORD", " hunter2 "),
            ("KAFKA_SSL_CA_LOCATION", SOME_FILE),
        ])
        .expect("valid");
        let k = &s.kafka;
        assert_eq!(k.membership.session_timeout, Duration::from_secs(10));
        assert_eq!(k.membership.max_poll_interval, Duration::from_secs(300));
        assert_eq!(k.membership.instance_id.as_deref(), Some("courier-1"));
        assert_eq!(k.access.security.protocol, SecurityProtocol::SaslSsl);
        let sasl = k.access.security.sasl.as_ref().expect("sasl");
        assert_eq!(sasl.mechanism, SaslMechanism::ScramSha512);
        assert_eq!(sasl.username, "courier");
        assert_eq!(
            sasl.password.expose(),
            " hunter2 ",
            "a password is taken as given"
        );
        assert_eq!(
            k.access.security.ssl_ca_location.as_deref(),
            Some(SOME_FILE)
        );
        let s = with(&[
            ("KAFKA_CLIENT", "rdkafka"),
            ("KAFKA_SECURITY_PROTOCOL", "ssl"),
        ])
        .expect("TLS with the system's CA store");
        assert_eq!(s.kafka.access.security.ssl_ca_location, None);
    }

    #[test]
    fn bad_kafka_client_settings_name_their_variable() {
        let rd = ("KAFKA_CLIENT", "rdkafka");
        let sasl = [
            rd,
            ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
            ("KAFKA_SASL_MECHANISM", "PLAIN"),
            ("KAFKA_SASL_USERNAME", "u"),
            ("KAFKA_SASL_PASSWORD", "p"),
        ];
        let without = |name: &str| -> Vec<(&'static str, &'static str)> {
            sasl.iter().copied().filter(|(k, _)| *k != name).collect()
        };
        let cases: Vec<(Vec<(&'static str, &'static str)>, &str)> = vec![
            (vec![("KAFKA_CLIENT", "librdkafka")], "KAFKA_CLIENT"),
            (
                vec![rd, ("KAFKA_SECURITY_PROTOCOL", "tls")],
                "KAFKA_SECURITY_PROTOCOL",
            ),
            (
                vec![rd, ("KAFKA_SESSION_TIMEOUT_MS", "10s")],
                "KAFKA_SESSION_TIMEOUT_MS",
            ),
            (
                vec![rd, ("KAFKA_SESSION_TIMEOUT_MS", "5")],
                "KAFKA_SESSION_TIMEOUT_MS",
            ),
            (
                vec![rd, ("KAFKA_MAX_POLL_INTERVAL_MS", "5m")],
                "KAFKA_MAX_POLL_INTERVAL_MS",
            ),
            (
                vec![rd, ("KAFKA_MAX_POLL_INTERVAL_MS", "999")],
                "KAFKA_MAX_POLL_INTERVAL_MS",
            ),
            // Below the session timeout (45 s by default): librdkafka would refuse it.
            (
                vec![rd, ("KAFKA_MAX_POLL_INTERVAL_MS", "15000")],
                "KAFKA_MAX_POLL_INTERVAL_MS",
            ),
            (without("KAFKA_SASL_MECHANISM"), "KAFKA_SASL_MECHANISM"),
            (without("KAFKA_SASL_USERNAME"), "KAFKA_SASL_USERNAME"),
            (without("KAFKA_SASL_PASSWORD"), "KAFKA_SASL_PASSWORD"),
            (
                [
                    &without("KAFKA_SASL_MECHANISM")[..],
                    &[("KAFKA_SASL_MECHANISM", "GSSAPI")],
                ]
                .concat(),
                "KAFKA_SASL_MECHANISM",
            ),
            // Credentials or a CA with a protocol that does not use them.
            (
                vec![rd, ("KAFKA_SASL_PASSWORD", "p")],
                "KAFKA_SASL_PASSWORD",
            ),
            (
                vec![rd, ("KAFKA_SSL_CA_LOCATION", SOME_FILE)],
                "KAFKA_SSL_CA_LOCATION",
            ),
            (
                vec![
                    rd,
                    ("KAFKA_SECURITY_PROTOCOL", "ssl"),
                    ("KAFKA_SSL_CA_LOCATION", "/no/such/ca.pem"),
                ],
                "KAFKA_SSL_CA_LOCATION",
            ),
        ];
        for (vars, variable) in cases {
            let err = with(&vars).expect_err(&format!("{vars:?} must fail"));
            assert_eq!(err.variable, variable, "{vars:?}: {err}");
        }
    }

    #[test]
    fn each_client_refuses_the_other_ones_settings() {
        // The static split is the `kafka` crate's; the group assigns partitions for rdkafka.
        for (var, value) in [
            ("KAFKA_PARTITIONS", "0,2"),
            ("INSTANCE_INDEX", "0"),
            ("INSTANCE_COUNT", "2"),
        ] {
            let err = with(&[("KAFKA_CLIENT", "rdkafka"), (var, value)]).expect_err(var);
            assert_eq!(err.variable, var, "{err}");
            assert!(err.problem.contains("KAFKA_CLIENT=kafka only"), "{err}");
        }
        // Group membership and TLS/SASL are librdkafka's (the crate is built without TLS).
        for (var, value) in [
            ("KAFKA_SESSION_TIMEOUT_MS", "10000"),
            ("KAFKA_GROUP_INSTANCE_ID", "a"),
            ("KAFKA_SECURITY_PROTOCOL", "ssl"),
            ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
        ] {
            let err = with(&[("KAFKA_CLIENT", "kafka"), (var, value)]).expect_err(var);
            assert_eq!(err.variable, var, "{err}");
        }
        assert!(with(&[("KAFKA_SECURITY_PROTOCOL", "plaintext")]).is_ok());
    }

    #[test]
    fn the_sasl_password_never_shows() {
        let secret = "pa55-w0rd-xyz";
        let vars = [
            ("KAFKA_CLIENT", "rdkafka"),
            ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
            ("KAFKA_SASL_MECHANISM", "PLAIN"),
            ("KAFKA_SASL_USERNAME", "u"),
            ("KAFKA_SASL_PASSWORD", secret),
        ];
        let s = with(&vars).expect("valid");
        let shown = format!("{s:?} {:?} {:#?}", s.kafka, s.kafka.access);
        assert!(!shown.contains(secret), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        // Errors found after the password was read do not carry it either.
        let err =
            with(&[&vars[..], &[("KAFKA_SSL_CA_LOCATION", "/nope")]].concat()).expect_err("bad CA");
        assert!(!format!("{err} {err:?}").contains(secret));
    }

    #[test]
    fn metrics_address_and_watchdog() {
        let s = with(&[("METRICS_ADDR", ""), ("WATCHDOG_SECS", "0")]).expect("valid");
        assert_eq!((s.metrics_addr, s.watchdog), (None, None));
        let err = with(&[("METRICS_ADDR", "nope")])
            .map(|_| ())
            .map_err(|e| e.variable);
        assert_eq!(err, Err("METRICS_ADDR"));
    }
}
