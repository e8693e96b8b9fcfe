//! Versioned migrations against a real PostgreSQL: a fresh schema gets them all; a database
//! made by an old one-shot `schema.sql` is recognised, recorded and upgraded with its data; two
//! migrators at once take turns; a changed file stops `migrate` and `run` with exit 2; `run`
//! with `MIGRATE_ON_START=false` refuses a database that is behind; `run` on a current
//! database executes no DDL (an event trigger logs every DDL command); and `schema.sql` is
//! what the migrations build.

use crate::common;

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{PrivateDatabase, Service, TestDb};
use service_courier::repository::postgres::{MigrateReport, MIGRATIONS};
use service_courier::repository::PgRepository;
use sha2::{Digest, Sha256};

const OLD_SCHEMA: &str = include_str!("fixtures/schema_a43443c.sql");
const TODAYS_SCHEMA: &str = include_str!("fixtures/schema_48988f2.sql");
const SCHEMA_SQL: &str = include_str!("../../schema.sql");

fn files() -> Vec<&'static str> {
    MIGRATIONS.iter().map(|m| m.file).collect()
}

/// `schema_migrations`: version → (name, checksum, recognised).
fn history(client: &mut postgres::Client) -> BTreeMap<i32, (String, String, bool)> {
    client
        .query(
            "SELECT version, name, checksum, recognised FROM schema_migrations",
            &[],
        )
        .expect("schema_migrations")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect()
}

/// SHA-256 of the file on disk, in hex: what `schema_migrations.checksum` must hold.
fn sha256_of(file: &str) -> String {
    let path = format!("{}/migrations/{file}", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).expect("migration file");
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a schema holds, each kind as sorted lines, with the schema's name taken out of the
/// definitions: columns (position, type, default, nullability, identity), constraints and
/// indexes by definition, sequences, and table options.
fn catalog(client: &mut postgres::Client, schema: &str) -> BTreeMap<&'static str, Vec<String>> {
    let queries = [
        (
            "columns",
            "SELECT table_name || '.' || column_name || ' #' || ordinal_position || ' ' \
                 || data_type || ' default=' || coalesce(column_default, '-') || ' null=' \
                 || is_nullable || ' identity=' || coalesce(identity_generation, '-') \
             FROM information_schema.columns WHERE table_schema = $1",
        ),
        (
            "constraints",
            "SELECT cl.relname || ' ' || k.conname || ' ' || k.contype::text || ' ' \
                 || pg_get_constraintdef(k.oid) \
             FROM pg_constraint k JOIN pg_class cl ON cl.oid = k.conrelid \
             JOIN pg_namespace n ON n.oid = k.connamespace WHERE n.nspname = $1",
        ),
        (
            "indexes",
            "SELECT tablename || ' ' || indexname || ' ' || indexdef \
             FROM pg_indexes WHERE schemaname = $1",
        ),
        (
            "sequences",
            "SELECT sequencename || ' ' || data_type::text || ' ' || start_value || ' ' \
                 || increment_by || ' ' || min_value || ' ' || max_value || ' ' || cycle \
             FROM pg_sequences WHERE schemaname = $1",
        ),
        (
            "relations",
            "SELECT c.relname || ' ' || c.relkind::text || ' ' \
                 || coalesce(array_to_string(c.reloptions, ','), '-') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1",
        ),
    ];
    let prefix = format!("{schema}.");
    queries
        .into_iter()
        .map(|(kind, sql)| {
            let mut lines: Vec<String> = client
                .query(sql, &[&schema])
                .expect(kind)
                .iter()
                .map(|r| r.get::<_, String>(0).replace(&prefix, ""))
                .collect();
            lines.sort();
            (kind, lines)
        })
        .collect()
}

#[test]
fn a_fresh_schema_gets_every_migration_and_a_second_run_does_nothing() {
    let Some(db) = TestDb::empty(1) else { return };
    let report = db.repo.migrate().expect("migrate");
    assert_eq!(
        report,
        MigrateReport {
            recognised: vec![],
            applied: files(),
            version: MIGRATIONS.len() as i32,
        }
    );
    let rows = history(&mut db.client());
    assert_eq!(rows.len(), MIGRATIONS.len());
    for m in MIGRATIONS {
        let (name, sum, recognised) = &rows[&m.version];
        assert_eq!(name, m.name());
        assert_eq!(*sum, sha256_of(m.file), "{}", m.file);
        assert!(!recognised);
    }
    let again = db.repo.migrate().expect("migrate again");
    assert!(again.applied.is_empty() && again.recognised.is_empty());
    assert_eq!(again.version, MIGRATIONS.len() as i32);
}

#[test]
fn schema_sql_is_what_the_migrations_build() {
    let (Some(migrated), Some(by_hand)) = (TestDb::new(1), TestDb::empty(1)) else {
        return;
    };
    by_hand
        .client()
        .batch_execute(SCHEMA_SQL)
        .expect("schema.sql applies to an empty schema");
    let want = catalog(&mut migrated.client(), &migrated.schema);
    let got = catalog(&mut by_hand.client(), &by_hand.schema);
    assert!(want["columns"].len() > 20, "{want:?}");
    for (kind, lines) in &want {
        assert_eq!(
            &got[kind], lines,
            "schema.sql differs from the migrations in {kind}"
        );
    }
}

#[test]
fn migration_0001_is_the_released_schema_it_recognises() {
    let (Some(released), Some(first)) = (TestDb::empty(1), TestDb::empty(1)) else {
        return;
    };
    released.client().batch_execute(OLD_SCHEMA).expect("old");
    first
        .client()
        .batch_execute(MIGRATIONS[0].sql)
        .expect("0001 applies");
    let want = catalog(&mut released.client(), &released.schema);
    let got = catalog(&mut first.client(), &first.schema);
    for (kind, lines) in &want {
        assert_eq!(
            &got[kind], lines,
            "0001 differs from a43443c's schema.sql in {kind}"
        );
    }
}

#[test]
fn an_old_schema_is_recognised_as_1_then_upgraded_to_2_with_its_data() {
    let (Some(db), Some(fresh)) = (TestDb::empty(2), TestDb::new(1)) else {
        return;
    };
    let mut client = db.client();
    client
        .batch_execute(OLD_SCHEMA)
        .expect("a43443c's schema.sql");
    client
        .batch_execute(
            "INSERT INTO couriers (id, name, phone, transport_type, status, completed_deliveries)
                 VALUES (1, 'Ann', '+79990000001', 'car', 'busy', 1),
                        (2, 'Bob', '+79990000002', 'on_foot', 'available', 0);
             INSERT INTO orders (order_id, state, courier_id)
                 VALUES ('o-done', 'completed', 1), ('o-active', 'assigned', 1);
             INSERT INTO orders (order_id, state, waiting_seq, waiting_since)
                 VALUES ('o-wait', 'waiting', nextval('orders_waiting_seq'), now());
             INSERT INTO courier_orders (order_id, courier_id, assigned_at, deadline, completed_at)
                 VALUES ('o-done', 1, now() - interval '2 hours', now() - interval '1 hour',
                         now() - interval '90 minutes'),
                        ('o-active', 1, now(), now() + interval '1 hour', NULL);",
        )
        .expect("data of the old schema");

    let report = db.repo.migrate().expect("migrate");
    assert_eq!(report.recognised, vec!["0001_initial.sql"]);
    assert_eq!(report.applied, vec!["0002_deadlines.sql"]);
    assert_eq!(report.version, 2);
    let rows = history(&mut client);
    assert!(rows[&1].2, "version 1 is marked recognised");
    assert!(!rows[&2].2, "version 2 was run");
    assert_eq!(rows[&1].1, sha256_of("0001_initial.sql"));

    let deliveries: Vec<(String, Option<String>, bool)> = client
        .query(
            "SELECT order_id, completed_by, assigned_on IS NOT NULL FROM courier_orders \
             ORDER BY order_id",
            &[],
        )
        .expect("deliveries")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        deliveries,
        vec![
            ("o-active".to_owned(), None, true),
            ("o-done".to_owned(), Some("event".to_owned()), true),
        ]
    );
    let counts: (i64, i64) = {
        let r = client
            .query_one(
                "SELECT (SELECT count(*) FROM couriers), (SELECT count(*) FROM orders)",
                &[],
            )
            .expect("counts");
        (r.get(0), r.get(1))
    };
    assert_eq!(counts, (2, 3));
    use service_courier::repository::CourierRepository;
    let snapshot = db
        .repo
        .snapshot()
        .expect("the repository reads the upgraded schema");
    assert_eq!(snapshot.deliveries.len(), 2);
    assert_eq!(snapshot.waiting.len(), 1);

    assert_eq!(
        catalog(&mut client, &db.schema),
        catalog(&mut fresh.client(), &fresh.schema),
        "the upgraded schema differs from a fresh one"
    );
}

#[test]
fn a_schema_between_the_two_deadline_columns_gets_the_missing_one() {
    // schema.sql of c89eef4: completed_by already there, assigned_on not yet.
    let (Some(db), Some(fresh)) = (TestDb::empty(1), TestDb::new(1)) else {
        return;
    };
    let mut client = db.client();
    client.batch_execute(OLD_SCHEMA).expect("old schema");
    client
        .batch_execute(
            "ALTER TABLE courier_orders ADD COLUMN completed_by TEXT \
                 CHECK (completed_by IN ('event', 'deadline'))",
        )
        .expect("c89eef4's column");
    let report = db.repo.migrate().expect("migrate");
    assert_eq!(report.recognised, vec!["0001_initial.sql"]);
    assert_eq!(report.applied, vec!["0002_deadlines.sql"]);
    assert_eq!(
        catalog(&mut client, &db.schema),
        catalog(&mut fresh.client(), &fresh.schema)
    );
}

#[test]
fn a_schema_with_some_tables_but_not_version_1_is_refused() {
    let Some(db) = TestDb::empty(1) else { return };
    db.client()
        .batch_execute("CREATE TABLE couriers (id BIGINT PRIMARY KEY)")
        .expect("a stray table");
    let e = db.repo.migrate().expect_err("not recognisable");
    assert!(e.needs_a_person(), "{e}");
    assert!(e.to_string().contains("0001_initial.sql"), "{e}");
}

#[test]
fn two_migrators_at_once_take_turns_and_both_succeed() {
    let Some(db) = TestDb::empty(1) else { return };
    let barrier = Arc::new(Barrier::new(2));
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let repo = PgRepository::new(db.config.clone(), 1);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                repo.ping().expect("ping");
                barrier.wait();
                repo.migrate()
            })
        })
        .collect();
    let mut applied: Vec<&str> = Vec::new();
    for run in runs {
        let report = run.join().expect("thread").expect("both migrators succeed");
        assert_eq!(report.version, MIGRATIONS.len() as i32);
        applied.extend(report.applied);
    }
    applied.sort();
    assert_eq!(applied, files(), "each migration ran exactly once");
    assert_eq!(history(&mut db.client()).len(), MIGRATIONS.len());
}

fn cli(url: &str, args: &[&str]) -> Output {
    cli_with(url, args, &[])
}

/// `cli` with more variables set.
fn cli_with(url: &str, args: &[&str], extra: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_service-courier"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", url)
        .envs(extra.iter().copied())
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .output()
        .expect("binary runs")
}

/// `run` against `url` with `extra` exits 2, and its log says `why`.
fn assert_run_refuses(url: &str, extra: &[(&str, String)], why: &str) {
    let mut run = service(url, extra);
    assert_eq!(
        run.wait(Duration::from_secs(60)),
        Some(2),
        "{}",
        run.log_text()
    );
    assert!(run.log_text().contains(why), "{}", run.log_text());
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `run` against `url`, with a Kafka address nobody listens on: these tests stop at the
/// database step or watch it only.
fn service(url: &str, extra: &[(&str, String)]) -> Service {
    let mut env = vec![
        ("DATABASE_URL", url.to_owned()),
        ("KAFKA_BROKERS", "127.0.0.1:1".to_owned()),
    ];
    env.extend(extra.iter().cloned());
    Service::start(&env)
}

#[test]
fn migrate_from_the_command_line_applies_then_reports_nothing_to_do() {
    let Some(db) = TestDb::empty(1) else { return };
    let o = cli(&db.url, &["migrate"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("0002_deadlines.sql: applied"),
        "{}",
        text(&o)
    );
    let o = cli(&db.url, &["migrate"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!text(&o).contains("applied"), "{}", text(&o));
    assert!(text(&o).contains("is at migration 2"), "{}", text(&o));
}

#[test]
fn a_changed_migration_stops_migrate_and_run_with_exit_2_naming_the_file() {
    let Some(db) = TestDb::new(1) else { return };
    db.client()
        .execute(
            "UPDATE schema_migrations SET checksum = repeat('0', 64) WHERE version = 2",
            &[],
        )
        .expect("tamper");
    let o = cli(&db.url, &["migrate"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("0002_deadlines.sql"), "{}", text(&o));

    assert_run_refuses(&db.url, &[], "migrations/0002_deadlines.sql differs");
}

#[test]
fn run_with_migrate_on_start_false_refuses_a_database_that_is_behind() {
    let Some(db) = TestDb::empty(1) else { return };
    db.client().batch_execute(OLD_SCHEMA).expect("old schema");
    assert_run_refuses(
        &db.url,
        &[("MIGRATE_ON_START", "false".to_owned())],
        "run `service-courier migrate`",
    );
    let untouched: bool = db
        .client()
        .query_one(
            "SELECT NOT EXISTS (SELECT 1 FROM information_schema.columns \
             WHERE table_schema = current_schema() AND column_name = 'assigned_on') \
             AND to_regclass('schema_migrations') IS NULL",
            &[],
        )
        .expect("catalog")
        .get(0);
    assert!(untouched, "run changed the schema although told not to");
}

#[test]
fn run_migrates_a_fresh_database_and_executes_no_ddl_once_it_is_current() {
    let Some(db) = PrivateDatabase::new() else {
        return;
    };
    let mut first = service(&db.url, &[]);
    first.wait_for_log(Duration::from_secs(60), "schema at migration 2");
    assert!(first.log_text().contains("0002_deadlines.sql applied"));
    assert_eq!(first.terminate(Duration::from_secs(30)), Some(0));

    db.log_ddl();
    let mut second = service(&db.url, &[]);
    second.wait_for_log(Duration::from_secs(60), "schema at migration 2");
    // Past the database step: it now waits for Kafka.
    second.wait_for_log(Duration::from_secs(60), "kafka:");
    assert_eq!(second.terminate(Duration::from_secs(30)), Some(0));
    assert_eq!(
        db.ddl_logged(),
        vec![],
        "run executed DDL on a current database"
    );

    // The trigger does see DDL: the check above could have failed.
    db.client()
        .batch_execute("CREATE INDEX IF NOT EXISTS orders_queue_by_creation ON orders (order_id)")
        .expect("no-op DDL");
    assert_eq!(db.ddl_logged().len(), 1);
}

#[test]
fn todays_schema_sql_is_recorded_at_2_without_touching_its_tables() {
    let Some(db) = PrivateDatabase::new() else {
        return;
    };
    db.client()
        .batch_execute(TODAYS_SCHEMA)
        .expect("48988f2's schema.sql");
    db.log_ddl();
    let repo = PgRepository::new(db.url.parse().expect("url"), 1);
    let report = repo.migrate().expect("migrate");
    assert_eq!(report.recognised, files());
    assert!(report.applied.is_empty());
    let rows = history(&mut db.client());
    assert!(rows.values().all(|(_, _, recognised)| *recognised));
    let ddl = db.ddl_logged();
    assert_eq!(ddl.len(), 1, "{ddl:?}");
    assert_eq!(ddl[0].0, "CREATE TABLE");
    assert!(ddl[0].1.contains("schema_migrations"), "{ddl:?}");
}

#[test]
fn a_failing_migration_leaves_nothing_behind_and_releases_the_lock() {
    let Some(db) = TestDb::empty(1) else { return };
    let mut client = db.client();
    client.batch_execute(OLD_SCHEMA).expect("old schema");
    // 0002's backfill updates courier_orders: make that fail.
    client
        .batch_execute(
            "INSERT INTO couriers (id, name, phone, transport_type) VALUES (1, 'Ann', '+79990000001', 'car');
             INSERT INTO courier_orders (order_id, courier_id, assigned_at, deadline, completed_at)
                 VALUES ('o-done', 1, now() - interval '2 hours', now() - interval '1 hour', now());
             CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'no updates today'; END $$;
             CREATE TRIGGER refuse BEFORE UPDATE ON courier_orders
                 FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .expect("a trap for the backfill");
    let e = db.repo.migrate().expect_err("the backfill fails");
    assert!(e.to_string().contains("no updates today"), "{e}");
    let rows = history(&mut client);
    assert_eq!(
        rows.keys().copied().collect::<Vec<_>>(),
        vec![1],
        "{rows:?}"
    );
    let added: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema() \
             AND column_name IN ('completed_by', 'assigned_on')",
            &[],
        )
        .expect("columns")
        .get(0);
    assert_eq!(added, 0, "0002's transaction was rolled back");
    client
        .batch_execute("DROP TRIGGER refuse ON courier_orders")
        .expect("trap removed");
    // Another connection: had the failed migrator kept its advisory lock (a session lock on
    // its pooled connection), this one would wait for it and give up.
    let other = PgRepository::new(db.config.clone(), 1);
    let report = other.migrate().expect("then it applies");
    assert_eq!(report.applied, vec!["0002_deadlines.sql"]);
}

/// docs/postgresql.md, "PgBouncer and other poolers": migrations hold a session-level lock,
/// which a pooler in transaction mode cannot give, so with `DB_POOLER=transaction` both
/// `migrate` and a `run` that would migrate exit 2 asking for a direct connection, and nothing
/// is created.
#[test]
fn migrations_are_refused_through_a_transaction_pooler() {
    let Some(db) = TestDb::empty(1) else { return };
    let o = cli_with(&db.url, &["migrate"], &[("DB_POOLER", "transaction")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("DB_POOLER=transaction") && text(&o).contains("PostgreSQL itself"),
        "{}",
        text(&o)
    );
    assert_run_refuses(
        &db.url,
        &[("DB_POOLER", "transaction".into())],
        "DB_POOLER=transaction",
    );
    let tables: i64 = db
        .client()
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()",
            &[],
        )
        .expect("count tables")
        .get(0);
    assert_eq!(tables, 0, "nothing was migrated");
}
