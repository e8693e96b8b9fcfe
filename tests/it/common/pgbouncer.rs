//! PostgreSQL behind Debian's PgBouncer in transaction mode ([`PooledDb`]), for the tests that
//! prove the service works through a pooler that lends a server connection for one transaction
//! only (docs/postgresql.md, `DB_POOLER=transaction`).
//!
//! The bouncer hands out its server connections round robin (`server_round_robin`), so
//! consecutive transactions of one client land on different server connections: a statement
//! kept past its transaction, or a setting kept in the session, fails at once instead of by luck.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use service_courier::repository::postgres::{Pooler, TransactionLimits};
use service_courier::repository::PgRepository;

use super::database::PrivateDatabase;
use super::in_ci;
use super::wait::wait_until;

/// The pgbouncer binary: PATH, then Debian's /usr/sbin. `None` outside CI when missing (the test
/// says it skipped); in CI a missing pgbouncer fails the test.
fn pgbouncer_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("pgbouncer"))
            .find(|p| p.is_file())
    });
    let found = on_path.or_else(|| {
        let debian = PathBuf::from("/usr/sbin/pgbouncer");
        debian.is_file().then_some(debian)
    });
    match found {
        Some(p) => Some(p),
        None if in_ci() => panic!(
            "pgbouncer is not installed but CI is: scripts/deps.sh installs Debian's pgbouncer"
        ),
        None => {
            eprintln!("SKIPPED: pgbouncer is not installed (apt-get install pgbouncer)");
            None
        }
    }
}

/// A database of the test's own, migrated directly, and a PgBouncer in transaction mode in front
/// of it; both go away when dropped.
pub struct PooledDb {
    /// The database behind the bouncer (connect to it directly for checks).
    pub db: PrivateDatabase,
    /// DATABASE_URL through the bouncer.
    pub url: String,
    /// A repository through the bouncer, with `DB_POOLER=transaction`.
    pub repo: PgRepository,
    bouncer: Child,
    dir: PathBuf,
}

impl PooledDb {
    /// A migrated database behind a fresh bouncer, or `None` when skipping.
    pub fn new() -> Option<Self> {
        let binary = pgbouncer_binary()?;
        let db = PrivateDatabase::new()?;
        // Migrations hold a session-level lock: they run against PostgreSQL itself.
        PgRepository::new(db.url.parse().expect("url"), 1)
            .migrate()
            .expect("the migrations apply");
        let direct: postgres::Config = db.url.parse().expect("url");
        let dir = std::env::temp_dir().join(super::unique("pgbouncer"));
        std::fs::create_dir_all(&dir).expect("bouncer dir");
        let port = free_port();
        write_config(&dir, &direct, port);
        let bouncer = start(&binary, &dir);
        let url = format!(
            "postgres://{}@127.0.0.1:{port}/{}",
            direct.get_user().unwrap_or("postgres"),
            direct.get_dbname().expect("dbname")
        );
        let mut pooled = Self {
            db,
            repo: Self::repository_with(&url, 4, TransactionLimits::default()),
            url,
            bouncer,
            dir,
        };
        pooled.wait_ready();
        pooled.open_server_connections();
        Some(pooled)
    }

    /// A repository of `size` connections through the bouncer, as the service makes it with
    /// `DB_POOLER=transaction` and these bounds.
    pub fn repository_with(url: &str, size: u32, limits: TransactionLimits) -> PgRepository {
        PgRepository::new(url.parse().expect("url"), size).with_limits(limits, Pooler::Transaction)
    }

    /// The bouncer's log, for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }

    /// Makes the bouncer open [`SERVERS`] server connections (it opens them only on demand): as
    /// many clients each hold a transaction at once. From then on, round robin spreads one
    /// client's consecutive transactions over them.
    fn open_server_connections(&self) {
        let config: postgres::Config = self.url.parse().expect("url");
        let mut clients: Vec<postgres::Client> = (0..SERVERS)
            .map(|_| {
                config
                    .connect(postgres::NoTls)
                    .expect("through the bouncer")
            })
            .collect();
        let mut backends = std::collections::BTreeSet::new();
        for c in &mut clients {
            c.batch_execute("BEGIN").expect("begin");
            let row = c.query_one("SELECT pg_backend_pid()", &[]).expect("pid");
            backends.insert(row.get::<_, i32>(0));
        }
        for c in &mut clients {
            c.batch_execute("COMMIT").expect("commit");
        }
        assert_eq!(
            backends.len(),
            SERVERS,
            "one server connection per open transaction"
        );
    }

    fn wait_ready(&mut self) {
        let config: postgres::Config = self.url.parse().expect("url");
        wait_until(Duration::from_secs(60), "pgbouncer answers", || {
            if let Ok(Some(status)) = self.bouncer.try_wait() {
                panic!("pgbouncer exited ({status}):\n{}", self.log_text());
            }
            config
                .connect(postgres::NoTls)
                .and_then(|mut c| c.simple_query("SELECT 1"))
                .is_ok()
        });
    }
}

impl Drop for PooledDb {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: runuser passes it on to the bouncer, which exits at once.
        let _ = Command::new("kill")
            .arg(self.bouncer.id().to_string())
            .status();
        let _ = self.bouncer.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Server connections the bouncer keeps to the database.
const SERVERS: usize = 3;

/// A port nobody listens on now (the bouncer takes it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn write_config(dir: &Path, direct: &postgres::Config, port: u16) {
    let host = match direct.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        other => panic!("the database has no TCP host: {other:?}"),
    };
    let user = direct.get_user().unwrap_or("postgres");
    let ini = format!(
        "[databases]\n\
         {db} = host={host} port={pg_port} dbname={db} user={user}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = trust\n\
         auth_file = {dir}/userlist.txt\n\
         pool_mode = transaction\n\
         server_round_robin = 1\n\
         default_pool_size = {SERVERS}\n\
         max_client_conn = 100\n\
         logfile = {dir}/pgbouncer.log\n",
        db = direct.get_dbname().expect("dbname"),
        pg_port = direct.get_ports().first().copied().unwrap_or(5432),
        dir = dir.display(),
    );
    std::fs::write(dir.join("pgbouncer.ini"), ini).expect("pgbouncer.ini");
    std::fs::write(dir.join("userlist.txt"), format!("\"{user}\" \"\"\n")).expect("userlist");
}

/// Starts the bouncer in the foreground; as root it runs as the unprivileged user that
/// scripts/postgres.sh runs PostgreSQL as (PgBouncer refuses to run as root).
fn start(binary: &Path, dir: &Path) -> Child {
    let as_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let mut cmd = if as_root {
        let user = ["postgres", "pgrunner"]
            .into_iter()
            .find(|u| {
                Command::new("id")
                    .arg(u)
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .expect("an unprivileged user (scripts/postgres.sh creates one)");
        // Its files must be the user's: it writes its log there.
        let _ = Command::new("chown").args(["-R", user]).arg(dir).status();
        let mut c = Command::new("runuser");
        c.args(["-u", user, "--"]).arg(binary);
        c
    } else {
        Command::new(binary)
    };
    cmd.arg(dir.join("pgbouncer.ini"))
        .current_dir("/")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pgbouncer starts")
}
