//! Versioned migrations: the files of `migrations/`, embedded in the binary, applied in order
//! and recorded in `schema_migrations` (version, name, checksum, time) in the current schema
//! (`search_path`), so each schema of a database has its own history.
//!
//! - One migrator at a time per schema: a session advisory lock ([`MIGRATION_LOCK`] mixed with
//!   the schema's name), polled with `pg_try_advisory_lock` so a waiting migrator never queues
//!   in the lock manager and gives up after [`LOCK_WAIT`].
//! - Each migration runs in a transaction of its own with `SET LOCAL lock_timeout` and
//!   `SET LOCAL statement_timeout = 0`: its DDL never waits long for a table lock (it fails and
//!   is retried instead, see [`RETRY_ATTEMPTS`]), a long rewrite is not cut by
//!   DB_STATEMENT_TIMEOUT_MS, and nothing is left on the pooled connection afterwards.
//! - A database made by the one-shot `schema.sql` of old (tables, no history) is recognised by
//!   its catalog and recorded without running the migrations it already has ([`Migration::marks`]).
//! - `run` reads the history once ([`PgRepository::schema_status`]) and takes no lock and runs
//!   no DDL when the database is current.
//!
//! A migration file must not hold transaction control, nor statements that cannot run in a
//! transaction (`CREATE INDEX CONCURRENTLY`).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::{Client, GenericClient};
use sha2::{Digest, Sha256};

use super::{classify, PgRepository, Pooler, MIGRATION_LOCK};
use crate::repository::RepoError;

/// One file of `migrations/`, embedded.
#[derive(Debug)]
pub struct Migration {
    /// Its number: the order it is applied in, and its key in `schema_migrations`.
    pub version: i32,
    /// The file's name in `migrations/` (`NNNN_name.sql`), for messages.
    pub file: &'static str,
    /// Its text.
    pub sql: &'static str,
    /// Catalog entries (`table:`, `index:`, `sequence:`, `column:table.column`, `constraint:`)
    /// that show a database made by `schema.sql` before migrations existed already has this
    /// migration. Only the migrations from that time have them; later ones are always run.
    marks: &'static [&'static str],
}

macro_rules! migration {
    ($version:literal, $file:literal, $marks:expr) => {
        Migration {
            version: $version,
            file: $file,
            sql: include_str!(concat!("../../../migrations/", $file)),
            marks: $marks,
        }
    };
}

/// Every migration, in order. A new file in `migrations/` goes here too (a unit test checks).
pub const MIGRATIONS: &[Migration] = &[
    migration!(
        1,
        "0001_initial.sql",
        &[
            "table:couriers",
            "table:orders",
            "table:courier_orders",
            "sequence:orders_waiting_seq",
            "column:orders.waiting_since",
            "constraint:orders_waiting_since_set",
            "index:couriers_next_available",
            "index:orders_queue_by_creation",
            "index:courier_orders_one_active_per_courier",
        ]
    ),
    migration!(
        2,
        "0002_deadlines.sql",
        &[
            "column:courier_orders.completed_by",
            "column:courier_orders.assigned_on",
        ]
    ),
];

/// How many times a migration is tried when it hits the lock timeout or a deadlock.
const RETRY_ATTEMPTS: u32 = 6;

/// How long a migrator waits for another one (holding the advisory lock) to finish.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// The settings of a migration's transaction, all `LOCAL`: they end with it. A DDL statement
/// waits at most 5 s for its table lock and then fails (and is retried): while it waits, every
/// later statement on that table waits behind it. No statement timeout: a migration may rewrite
/// a large table, and DB_STATEMENT_TIMEOUT_MS is meant for events. The planner's whole-table
/// strategies come back (the pool's connections turn them off, see `PLANNER_OPTIONS`): a
/// backfill reads every row.
const TX_SETTINGS: &str = "SET LOCAL lock_timeout = '5s'; SET LOCAL statement_timeout = 0; \
                           SET LOCAL client_min_messages = warning; \
                           SET LOCAL enable_seqscan = on; SET LOCAL enable_hashjoin = on; \
                           SET LOCAL enable_mergejoin = on";

/// Takes the advisory lock if free. Its key is [`MIGRATION_LOCK`] mixed with the current
/// schema, so migrators of different schemas (the tests' private ones) do not wait for each
/// other; [`UNLOCK`] names the same key.
const TRY_LOCK: &str =
    "SELECT pg_try_advisory_lock($1::bigint # hashtext(coalesce(current_schema(), ''))::bigint)";

/// Releases the lock [`TRY_LOCK`] took.
const UNLOCK: &str =
    "SELECT pg_advisory_unlock($1::bigint # hashtext(coalesce(current_schema(), ''))::bigint)";

/// The history table. Created by the migrator before anything else.
const CREATE_HISTORY: &str = "
    CREATE TABLE schema_migrations (
        version    INTEGER     PRIMARY KEY,
        name       TEXT        NOT NULL,
        checksum   TEXT        NOT NULL,
        applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        recognised BOOLEAN     NOT NULL DEFAULT false
    )";

impl Migration {
    /// The name part of the file: `0002_deadlines.sql` → `deadlines`.
    pub fn name(&self) -> &'static str {
        let stem = self.file.strip_suffix(".sql").unwrap_or(self.file);
        stem.split_once('_').map_or(stem, |(_, name)| name)
    }

    /// SHA-256 of the file's bytes, in hex.
    pub fn checksum(&self) -> String {
        checksum(self.sql)
    }
}

/// SHA-256 of `text`, in hex.
fn checksum(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The newest version this build knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Where a database's schema stands against this build's migrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaStatus {
    /// Every migration of this build is recorded (the database may also have newer ones, from a
    /// newer build: a rolling upgrade's older instances keep running).
    Current {
        /// The highest recorded version.
        version: i32,
    },
    /// Some migrations of this build are not recorded yet.
    Behind {
        /// The highest recorded version; `None` without any history.
        version: Option<i32>,
        /// What this build would bring it to.
        latest: i32,
    },
}

/// What [`PgRepository::migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MigrateReport {
    /// Migrations found already in place (a database made by the old `schema.sql`) and recorded
    /// without running them.
    pub recognised: Vec<&'static str>,
    /// Migrations run, in order.
    pub applied: Vec<&'static str>,
    /// The highest recorded version afterwards.
    pub version: i32,
}

/// Why the schema could not be checked or brought up to date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrateError {
    /// Reading or writing the database failed; transient ones may succeed if tried again.
    Storage(RepoError),
    /// An applied migration's file changed since (edited after release, or another build's):
    /// nothing is run until a person looks. Exit code 2.
    Tampered {
        /// The file in `migrations/`.
        file: &'static str,
        /// The checksum `schema_migrations` holds.
        recorded: String,
        /// The embedded file's checksum.
        embedded: String,
    },
    /// The schema has tables of ours but no history, and not in a shape recognised as any
    /// version. Exit code 2.
    Unrecognised(String),
    /// DATABASE_URL points at a pooler in transaction mode (DB_POOLER=transaction), which
    /// cannot hold the session-level lock that keeps migrators apart. Exit code 2.
    Pooled,
}

impl MigrateError {
    /// Whether retrying cannot help: a person must look (exit code 2).
    pub fn needs_a_person(&self) -> bool {
        !matches!(self, Self::Storage(_))
    }
}

impl fmt::Display for MigrateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Storage(e) => write!(f, "{e}"),
            Self::Tampered {
                file,
                recorded,
                embedded,
            } => write!(
                f,
                "migrations/{file} differs from the version applied to this database \
                 (schema_migrations has checksum {recorded}, the file has {embedded}): an applied \
                 migration must never change; restore the file or add a new migration"
            ),
            Self::Unrecognised(m) => write!(f, "{m}"),
            Self::Pooled => write!(
                f,
                "migrations take a session-level lock, which a pooler in transaction mode \
                 (DB_POOLER=transaction) cannot hold: run `service-courier migrate` with \
                 DATABASE_URL pointing at PostgreSQL itself and DB_POOLER unset"
            ),
        }
    }
}

impl std::error::Error for MigrateError {}

impl From<RepoError> for MigrateError {
    fn from(e: RepoError) -> Self {
        Self::Storage(e)
    }
}

impl From<postgres::Error> for MigrateError {
    fn from(e: postgres::Error) -> Self {
        Self::Storage(classify(e))
    }
}

impl PgRepository {
    /// Where the schema stands, from one read of `schema_migrations` (no lock, no DDL). An
    /// applied migration whose file changed is an error.
    pub fn schema_status(&self) -> Result<SchemaStatus, MigrateError> {
        let mut conn = self.connection()?;
        // In a transaction: behind a transaction pooler, a statement prepared outside one may
        // be executed on another server connection.
        let mut tx = conn.client.transaction()?;
        let applied = read_history(&mut tx)?.unwrap_or_default();
        tx.commit()?;
        status_of(&applied)
    }

    /// Brings the schema up to date: recognises a database made by the old `schema.sql`, then
    /// runs each migration not yet recorded, in order. Safe to run from several processes at
    /// once: they take turns under an advisory lock, and a later one finds nothing to do.
    pub fn migrate(&self) -> Result<MigrateReport, MigrateError> {
        if self.openers.pooler == Pooler::Transaction {
            return Err(MigrateError::Pooled);
        }
        let mut conn = self.connection()?;
        let client = &mut conn.client;
        lock(client)?;
        let migrated = migrate_locked(client);
        let unlocked = client
            .query_one(UNLOCK, &[&MIGRATION_LOCK])
            .map_err(MigrateError::from);
        let report = migrated?;
        unlocked?;
        Ok(report)
    }
}

/// Takes the advisory lock, waiting up to [`LOCK_WAIT`] for another migrator to finish.
fn lock(client: &mut Client) -> Result<(), MigrateError> {
    let deadline = Instant::now() + LOCK_WAIT;
    let mut pause = Duration::from_millis(50);
    loop {
        let got: bool = client.query_one(TRY_LOCK, &[&MIGRATION_LOCK])?.get(0);
        if got {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(MigrateError::Storage(RepoError::Transient(format!(
                "another migrator has held the migration lock for {LOCK_WAIT:?}"
            ))));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

fn migrate_locked(client: &mut Client) -> Result<MigrateReport, MigrateError> {
    let mut report = MigrateReport::default();
    let mut applied = match read_history(client)? {
        Some(rows) => rows,
        None => {
            with_retries("creating schema_migrations", || {
                let mut tx = client.transaction()?;
                tx.batch_execute(TX_SETTINGS)?;
                tx.batch_execute(CREATE_HISTORY)?;
                tx.commit()
            })?;
            BTreeMap::new()
        }
    };
    if applied.is_empty() {
        for m in recognise(client)? {
            report.recognised.push(m.file);
            applied.insert(m.version, m.checksum());
        }
    }
    verify(&applied)?;
    let pending: Vec<&Migration> = MIGRATIONS
        .iter()
        .filter(|m| !applied.contains_key(&m.version))
        .collect();
    for m in pending {
        with_retries(m.file, || apply(client, m))?;
        log::info!("migration {} applied", m.file);
        report.applied.push(m.file);
        applied.insert(m.version, m.checksum());
    }
    report.version = applied.keys().next_back().copied().unwrap_or(0);
    Ok(report)
}

/// Runs one migration and records it, in one transaction.
fn apply(client: &mut Client, m: &Migration) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    tx.batch_execute(TX_SETTINGS)?;
    tx.batch_execute(m.sql)?;
    tx.execute(
        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
        &[&m.version, &m.name(), &m.checksum()],
    )?;
    tx.commit()
}

/// Runs `attempt` again, with a growing pause, while it fails on the lock timeout or a
/// deadlock: the tables are busy, and a later try usually gets its lock at once.
fn with_retries(
    what: &str,
    mut attempt: impl FnMut() -> Result<(), postgres::Error>,
) -> Result<(), MigrateError> {
    let mut pause = Duration::from_millis(200);
    let mut tried = 0;
    loop {
        tried += 1;
        match attempt() {
            Ok(()) => return Ok(()),
            Err(e) if tried < RETRY_ATTEMPTS && is_lock_conflict(&e) => {
                log::warn!(
                    "migration {what}: {} (attempt {tried} of {RETRY_ATTEMPTS}); trying again \
                     in {pause:?}",
                    classify(e)
                );
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Lock timeout (55P03) or deadlock (40P01).
fn is_lock_conflict(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::LOCK_NOT_AVAILABLE || *c == SqlState::T_R_DEADLOCK_DETECTED
    })
}

/// `schema_migrations`' rows (version → checksum), or `None` when the current schema has no
/// such table.
fn read_history(
    client: &mut impl GenericClient,
) -> Result<Option<BTreeMap<i32, String>>, MigrateError> {
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_tables \
             WHERE schemaname = current_schema() AND tablename = 'schema_migrations')",
            &[],
        )?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let rows = client.query(
        "SELECT version, checksum FROM schema_migrations ORDER BY version",
        &[],
    )?;
    let mut applied = BTreeMap::new();
    for row in rows {
        let version: i32 = row.try_get(0)?;
        let sum: String = row.try_get(1)?;
        applied.insert(version, sum);
    }
    Ok(Some(applied))
}

/// Fails on the first applied migration whose embedded file has another checksum.
fn verify(applied: &BTreeMap<i32, String>) -> Result<(), MigrateError> {
    for m in MIGRATIONS {
        if let Some(recorded) = applied.get(&m.version) {
            let embedded = m.checksum();
            if *recorded != embedded {
                return Err(MigrateError::Tampered {
                    file: m.file,
                    recorded: recorded.clone(),
                    embedded,
                });
            }
        }
    }
    Ok(())
}

fn status_of(applied: &BTreeMap<i32, String>) -> Result<SchemaStatus, MigrateError> {
    verify(applied)?;
    let version = applied.keys().next_back().copied();
    let latest = latest_version();
    if MIGRATIONS.iter().all(|m| applied.contains_key(&m.version)) {
        if let Some(newer) = version.filter(|v| *v > latest) {
            log::warn!(
                "the database is at migration {newer}, newer than this build's {latest}: \
                 running with it"
            );
        }
        Ok(SchemaStatus::Current {
            version: version.unwrap_or(0),
        })
    } else {
        Ok(SchemaStatus::Behind { version, latest })
    }
}

/// For a schema without history: the leading migrations whose [`Migration::marks`] are all in
/// the catalog, recorded as applied (`recognised`) without running them. A schema with some of
/// our tables that is not recognised as version 1 is an error: running 0001 on it would fail
/// half way, or worse.
fn recognise(client: &mut Client) -> Result<Vec<&'static Migration>, MigrateError> {
    let found: HashSet<String> = client
        .query(CATALOG, &[])?
        .iter()
        .map(|r| r.try_get::<_, String>(0))
        .collect::<Result<_, _>>()?;
    let mut recognised = Vec::new();
    for m in MIGRATIONS.iter().take_while(|m| !m.marks.is_empty()) {
        let missing: Vec<&str> = m
            .marks
            .iter()
            .copied()
            .filter(|mark| !found.contains(*mark))
            .collect();
        if !missing.is_empty() {
            if recognised.is_empty() && m.marks.iter().any(|mark| found.contains(*mark)) {
                return Err(MigrateError::Unrecognised(format!(
                    "the schema has tables of service-courier but no schema_migrations, and not \
                     those of {}: missing {}. Bring it to the released schema first (schema.sql \
                     of commit a43443c), then run `service-courier migrate`",
                    m.file,
                    missing.join(", ")
                )));
            }
            break;
        }
        recognised.push(m);
    }
    if recognised.is_empty() {
        return Ok(recognised);
    }
    with_retries("recording the existing schema", || {
        let mut tx = client.transaction()?;
        for m in &recognised {
            tx.execute(
                "INSERT INTO schema_migrations (version, name, checksum, recognised) \
                 VALUES ($1, $2, $3, true)",
                &[&m.version, &m.name(), &m.checksum()],
            )?;
        }
        tx.commit()
    })?;
    for m in &recognised {
        log::info!(
            "migration {} recognised: the schema already has it (made by schema.sql); recorded \
             without running it",
            m.file
        );
    }
    Ok(recognised)
}

/// The current schema's tables, indexes, sequences, columns and constraints, as marks.
const CATALOG: &str = "
    SELECT CASE c.relkind WHEN 'r' THEN 'table:' WHEN 'p' THEN 'table:' WHEN 'i' THEN 'index:'
                          WHEN 'S' THEN 'sequence:' ELSE 'other:' END || c.relname
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = current_schema()
    UNION ALL
    SELECT 'column:' || c.relname || '.' || a.attname
    FROM pg_attribute a
    JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = current_schema() AND c.relkind = 'r' AND a.attnum > 0
      AND NOT a.attisdropped
    UNION ALL
    SELECT 'constraint:' || k.conname
    FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace
    WHERE n.nspname = current_schema()";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up_from_1_and_match_the_file_names() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{}", m.file);
            assert_eq!(m.file, format!("{:04}_{}.sql", m.version, m.name()));
        }
    }

    #[test]
    fn every_file_in_migrations_is_listed() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .expect("migrations/")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|m| m.file).collect();
        assert_eq!(on_disk, listed);
    }

    #[test]
    fn the_checksum_is_sha256_of_the_bytes() {
        assert_eq!(
            checksum("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn only_the_leading_migrations_are_recognisable() {
        let first_plain = MIGRATIONS.iter().position(|m| m.marks.is_empty());
        if let Some(i) = first_plain {
            assert!(MIGRATIONS[i..].iter().all(|m| m.marks.is_empty()));
        }
    }

    #[test]
    fn status_says_behind_current_or_tampered() {
        let all: BTreeMap<i32, String> = MIGRATIONS
            .iter()
            .map(|m| (m.version, m.checksum()))
            .collect();
        assert_eq!(
            status_of(&all),
            Ok(SchemaStatus::Current {
                version: latest_version()
            })
        );
        let mut newer = all.clone();
        newer.insert(latest_version() + 1, "x".into());
        assert!(matches!(
            status_of(&newer),
            Ok(SchemaStatus::Current { .. })
        ));
        let mut first = all.clone();
        first.retain(|v, _| *v == 1);
        assert_eq!(
            status_of(&first),
            Ok(SchemaStatus::Behind {
                version: Some(1),
                latest: latest_version()
            })
        );
        let mut tampered = all;
        tampered.insert(2, "0".repeat(64));
        match status_of(&tampered) {
            Err(MigrateError::Tampered { file, .. }) => assert_eq!(file, "0002_deadlines.sql"),
            other => panic!("{other:?}"),
        }
    }
}
