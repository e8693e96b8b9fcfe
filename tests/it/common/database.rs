//! PostgreSQL for tests: a private schema of the shared server per test ([`TestDb`]), or a
//! server of the test's own that it may crash and start again ([`OwnPostgres`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrono::Utc;
use service_courier::repository::PgRepository;

use super::in_ci;
use super::scripts::{env_file, script};
use super::wait::retry;

/// DATABASE_URL, or `None` outside CI (the test then says it skipped). In CI a missing
/// DATABASE_URL fails the test loudly.
pub fn database_url() -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if in_ci() => panic!(
            "DATABASE_URL is not set but CI is: PostgreSQL tests must run in CI (scripts/test.sh)"
        ),
        _ => {
            eprintln!("SKIPPED: DATABASE_URL is not set; run scripts/postgres.sh start first");
            None
        }
    }
}

/// A PostgreSQL repository in a fresh schema of its own, dropped at the end of the test, so
/// tests run in parallel without seeing each other.
pub struct TestDb {
    /// The repository (migrated, unless made by [`TestDb::empty`]).
    pub repo: PgRepository,
    /// The schema's name.
    pub schema: String,
    /// Connection settings pointing at the schema (for extra pools or the binary).
    pub config: postgres::Config,
    /// DATABASE_URL with the schema selected through `options`.
    pub url: String,
    base: postgres::Config,
}

static NEXT_SCHEMA: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    /// A migrated repository with a pool of `pool_size`, or `None` when skipping (see
    /// [`database_url`]).
    pub fn new(pool_size: u32) -> Option<Self> {
        let db = Self::empty(pool_size)?;
        db.repo.migrate().expect("the migrations apply");
        Some(db)
    }

    /// Like [`TestDb::new`], but the schema is left empty: no migration has run.
    pub fn empty(pool_size: u32) -> Option<Self> {
        let url = database_url()?;
        let base: postgres::Config = url.parse().expect("DATABASE_URL parses");
        let schema = format!(
            "t_{}_{}_{}",
            std::process::id(),
            NEXT_SCHEMA.fetch_add(1, Ordering::Relaxed),
            Utc::now().timestamp_subsec_micros()
        );
        let mut admin = base
            .connect(postgres::NoTls)
            .expect("PostgreSQL answers at DATABASE_URL");
        admin
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .expect("create test schema");
        let mut config = base.clone();
        config.options(&format!("-c search_path={schema}"));
        let repo = PgRepository::new(config.clone(), pool_size);
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{sep}options=-c%20search_path%3D{schema}");
        Some(Self {
            repo,
            schema,
            config,
            url,
            base,
        })
    }

    /// A plain client on the test schema, for assertions in SQL.
    pub fn client(&self) -> postgres::Client {
        self.config.connect(postgres::NoTls).expect("connect")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut c) = self.base.connect(postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
        }
    }
}

/// A database of the test's own on the shared server (for what is per database: event triggers,
/// `pg_stat_database`), dropped at the end.
pub struct PrivateDatabase {
    name: String,
    admin: postgres::Config,
    /// A keyword/value connection string for it (DATABASE_URL accepts that form too).
    pub url: String,
}

static NEXT_DATABASE: AtomicU32 = AtomicU32::new(0);

impl PrivateDatabase {
    /// A new empty database, or `None` when skipping (see [`database_url`]).
    pub fn new() -> Option<Self> {
        let admin: postgres::Config = database_url()?.parse().expect("DATABASE_URL parses");
        let name = format!(
            "mig_{}_{}",
            std::process::id(),
            NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
        );
        admin
            .connect(postgres::NoTls)
            .expect("connect")
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create database");
        let host = match admin.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            other => panic!("DATABASE_URL names no TCP host: {other:?}"),
        };
        let mut url = format!(
            "host={host} port={} user={} dbname={name}",
            admin.get_ports().first().copied().unwrap_or(5432),
            admin.get_user().unwrap_or("postgres"),
        );
        if let Some(pw) = admin.get_password() {
            url.push_str(&format!(" password={}", String::from_utf8_lossy(pw)));
        }
        Some(Self { name, admin, url })
    }

    /// A plain client on it.
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).expect("connect")
    }

    /// Logs every DDL command run in this database from now on into `public.ddl_log`
    /// (`ddl_command_start` fires before a command runs, even one that then finds it has
    /// nothing to do, like `CREATE INDEX IF NOT EXISTS` on an existing index).
    pub fn log_ddl(&self) {
        self.client()
            .batch_execute(
                "CREATE TABLE public.ddl_log (tag TEXT NOT NULL, query TEXT);
                 CREATE FUNCTION public.log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
                 BEGIN
                     INSERT INTO public.ddl_log (tag, query) VALUES (tg_tag, current_query());
                 END
                 $$;
                 CREATE EVENT TRIGGER log_ddl ON ddl_command_start
                     EXECUTE FUNCTION public.log_ddl();",
            )
            .expect("event trigger (needs a superuser)");
    }

    /// (command tag, statement) of every DDL command logged since [`PrivateDatabase::log_ddl`].
    pub fn ddl_logged(&self) -> Vec<(String, String)> {
        self.client()
            .query("SELECT tag, coalesce(query, '') FROM public.ddl_log", &[])
            .expect("ddl_log")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }
}

impl Drop for PrivateDatabase {
    fn drop(&mut self) {
        if let Ok(mut c) = self.admin.connect(postgres::NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// pg_ctl, found the way scripts/postgres.sh finds it: PG_BIN, PATH, then the newest
/// /usr/lib/postgresql/*/bin.
pub fn pg_ctl() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("PG_BIN") {
        return Some(PathBuf::from(bin).join("pg_ctl"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(d) = std::env::split_paths(&path).find(|d| d.join("pg_ctl").is_file()) {
            return Some(d.join("pg_ctl"));
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let p = e.path().join("bin/pg_ctl");
            p.is_file().then_some((v, p))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

/// What `cmd args` prints, trimmed.
pub fn command_text(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `program` as the owner of `path` (the user the server runs as; PostgreSQL refuses root):
/// through `runuser` when that is not us, from `/` (which that user can read).
pub fn as_owner(path: &Path, program: &Path) -> Command {
    let owner = command_text("stat", &["-c", "%U", &path.to_string_lossy()]);
    let me = command_text("id", &["-un"]);
    let mut cmd = if owner == me {
        Command::new(program)
    } else {
        let mut c = Command::new("runuser");
        c.args(["-u", &owner, "--"]).arg(program);
        c
    };
    cmd.current_dir("/");
    cmd
}

/// Stops the server of `data` the hard way (`pg_ctl stop -m immediate`): no checkpoint,
/// connections cut, crash recovery at the next start.
pub fn crash_server(data: &Path) {
    let pg_ctl = pg_ctl().expect("pg_ctl found (PG_BIN, PATH or /usr/lib/postgresql)");
    let out = as_owner(data, &pg_ctl)
        .args(["stop", "-m", "immediate", "-w", "-t", "30", "-D"])
        .arg(data)
        .output()
        .expect("pg_ctl runs");
    assert!(
        out.status.success(),
        "pg_ctl stop -m immediate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway PostgreSQL server of the test's own (scripts/postgres.sh in `state`), stopped
/// when dropped, also on panic.
pub struct OwnPostgres {
    /// Its state dir.
    pub state: PathBuf,
    /// Its DATABASE_URL.
    pub url: String,
}

impl OwnPostgres {
    /// Starts a server in `state`.
    pub fn start(state: PathBuf) -> Self {
        script("postgres.sh", &["start"], &[("PG_STATE_DIR", &state)])
            .unwrap_or_else(|e| panic!("{e}"));
        let url = env_file(&state, "DATABASE_URL");
        Self { state, url }
    }

    /// Where the cluster lives: the state dir, or /var/tmp when the server's user can't reach
    /// the checkout (scripts/postgres.sh leaves a pointer file then).
    fn cluster(&self) -> PathBuf {
        std::fs::read_to_string(self.state.join("cluster_dir"))
            .map(|p| PathBuf::from(p.trim()))
            .unwrap_or_else(|_| self.state.join("cluster"))
    }

    /// Stops the server the hard way: no checkpoint, connections cut, crash recovery at the
    /// next start.
    pub fn crash(&self) {
        crash_server(&self.cluster().join("data"));
    }

    /// Starts it again on the same port (the service keeps the address it was started with);
    /// returns how many attempts it took.
    pub fn start_again(&self) -> u32 {
        retry(Duration::from_secs(90), "restarting PostgreSQL", || {
            script("postgres.sh", &["start"], &[("PG_STATE_DIR", &self.state)])
        })
    }

    /// A repository on it. Drop it before any outage: an idle connection left open across an
    /// abrupt stop keeps the old server's socket half-closed.
    pub fn repo(&self, size: u32) -> PgRepository {
        PgRepository::new(self.url.parse().expect("DATABASE_URL parses"), size)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let cluster = self.cluster();
        let _ = script("postgres.sh", &["stop"], &[("PG_STATE_DIR", &self.state)]);
        if !std::thread::panicking() && !cluster.starts_with(&self.state) {
            let _ = std::fs::remove_dir_all(cluster);
        }
    }
}
