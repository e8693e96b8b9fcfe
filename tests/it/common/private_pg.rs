//! A throwaway PostgreSQL of one test's own (scripts/postgres.sh with a private state dir), for
//! tests that stop it, crash it or freeze it while the service runs.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::database::{as_owner, command_text, crash_server};
use super::wait::wait_until;
use super::{repo_root, unique};

/// pg_ctl, as `database::pg_ctl` finds it.
fn pg_ctl() -> PathBuf {
    super::database::pg_ctl().expect("pg_ctl found (PG_BIN, PATH or /usr/lib/postgresql)")
}

/// A private PostgreSQL cluster, stopped when dropped.
pub struct PrivatePg {
    state: PathBuf,
    /// Its DATABASE_URL.
    pub url: String,
}

fn script(args: &[&str], state: &Path) -> Result<String, String> {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("scripts/postgres.sh")).args(args);
    // The shared instance's settings must not leak into ours.
    for var in ["PG_PORT", "DATABASE_URL"] {
        cmd.env_remove(var);
    }
    cmd.env("PG_STATE_DIR", state);
    let out = cmd
        .output()
        .map_err(|e| format!("scripts/postgres.sh: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "scripts/postgres.sh {} failed:\n{text}",
            args.join(" ")
        ))
    }
}

/// Runs `cmd` and panics with its output unless it succeeds.
fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Another PostgreSQL tool from pg_ctl's directory (pg_ctl may be a symlink on PATH).
fn pg_tool(name: &str) -> PathBuf {
    let ctl = pg_ctl();
    std::fs::canonicalize(&ctl)
        .unwrap_or(ctl)
        .with_file_name(name)
}

/// A port free on 127.0.0.1, picked at random in 15000-32000 as scripts/lib.sh does (below
/// Linux's ephemeral range, so an outgoing connection is unlikely to take it meanwhile).
fn free_port() -> u16 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos()
        ^ std::process::id();
    (0..1000u32)
        .map(|i| 15000 + (seed.wrapping_add(i.wrapping_mul(7919)) % 17000) as u16)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port on 127.0.0.1")
}

impl PrivatePg {
    /// Starts a new cluster in a fresh state dir under the target dir.
    pub fn start(name: &str) -> Self {
        let state = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique(name));
        script(&["start"], &state).unwrap_or_else(|e| panic!("{e}"));
        let env = std::fs::read_to_string(state.join("env")).expect("env file");
        let url = env
            .lines()
            .find_map(|l| l.strip_prefix("export DATABASE_URL="))
            .expect("DATABASE_URL in the env file")
            .to_owned();
        Self { state, url }
    }

    /// Where the data dir is (the state dir, or /var/tmp when the server's user can't reach it).
    fn data_dir(&self) -> PathBuf {
        std::fs::read_to_string(self.state.join("cluster_dir"))
            .map(|p| PathBuf::from(p.trim()))
            .unwrap_or_else(|_| self.state.join("cluster"))
            .join("data")
    }

    /// Stops the server the hard way (`pg_ctl stop -m immediate`).
    pub fn crash(&self) {
        crash_server(&self.data_dir());
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        std::fs::read_to_string(self.state.join("port"))
            .expect("port file")
            .trim()
            .parse()
            .expect("a port number")
    }

    /// A streaming standby of this server (`pg_basebackup -R`), on a port of its own, running
    /// and streaming when this returns. Asynchronous until [`Standby::synchronous`]. It borrows
    /// the primary, so it is stopped and removed before the primary is.
    pub fn standby(&self, name: &str) -> Standby<'_> {
        let cluster = self.data_dir();
        let cluster = cluster.parent().expect("the data dir has a parent");
        let dir = cluster.join(unique(name));
        let port = free_port();
        let standby = Standby {
            primary: self,
            data: dir.join("data"),
            log: dir.join("postgres.log"),
            url: format!("postgres://postgres@127.0.0.1:{port}/courier"),
            dir,
            port,
        };
        let data = &standby.data;
        // The primary's cluster dir belongs to the server's user: so does everything made here.
        run(as_owner(cluster, Path::new("mkdir"))
            .arg("-p")
            .arg(&standby.dir));
        // -R: standby.signal and primary_conninfo (in postgresql.auto.conf); -c fast: no wait
        // for a spread checkpoint; -X stream: the WAL written meanwhile comes along.
        run(as_owner(cluster, &pg_tool("pg_basebackup"))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ])
            .args(["--no-sync", "-p", &self.port().to_string(), "-D"])
            .arg(data));
        // The copy has the primary's courier.conf (its port, its socket dir);
        // postgresql.auto.conf is read after it and wins. No Unix socket: its path under the
        // target dir may pass the 107 bytes allowed, and TCP is all we use. A standby that is
        // promoted must not wait for a synchronous standby of its own (it has none).
        let own = format!(
            "# The standby's own (tests/it/common/private_pg.rs)\n\
             port = {port}\n\
             unix_socket_directories = ''\n\
             synchronous_standby_names = ''\n"
        );
        let mut tee = as_owner(cluster, Path::new("tee"));
        tee.arg("-a")
            .arg(data.join("postgresql.auto.conf"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        let mut child = tee.spawn().expect("tee runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(own.as_bytes())
            .expect("settings written");
        assert!(child.wait().expect("tee").success(), "tee failed");
        run(as_owner(cluster, &pg_ctl())
            .args(["start", "-w", "-t", "120", "-D"])
            .arg(data)
            .arg("-l")
            .arg(&standby.log));
        wait_until(Duration::from_secs(120), "the standby to stream", || {
            self.replication_count("state = 'streaming'") > 0
        });
        standby
    }

    /// How many standbys pg_stat_replication lists that match `condition`.
    fn replication_count(&self, condition: &str) -> i64 {
        self.client()
            .query_one(
                &format!("SELECT count(*) FROM pg_stat_replication WHERE {condition}"),
                &[],
            )
            .expect("pg_stat_replication")
            .get(0)
    }

    /// Starts it again on the same port (retrying while the old sockets linger).
    pub fn start_again(&self) {
        let start = Instant::now();
        loop {
            match script(&["start"], &self.state) {
                Ok(_) => return,
                Err(e) if start.elapsed() > Duration::from_secs(90) => panic!("{e}"),
                Err(_) => std::thread::sleep(Duration::from_secs(1)),
            }
        }
    }

    /// The postmaster and every backend and auxiliary process under it.
    fn processes(&self) -> Vec<String> {
        let pidfile = std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .expect("postmaster.pid (is the server running?)");
        let postmaster = pidfile.lines().next().expect("pid line").trim().to_owned();
        let children = command_text("ps", &["-o", "pid=", "--ppid", &postmaster]);
        std::iter::once(postmaster)
            .chain(children.split_whitespace().map(str::to_owned))
            .collect()
    }

    /// Freezes the server: SIGSTOP to the postmaster and all its processes. The kernel still
    /// accepts and acknowledges TCP traffic, but nothing answers.
    pub fn freeze(&self) -> Vec<String> {
        let pids = self.processes();
        let ok = Command::new("kill")
            .arg("-STOP")
            .args(&pids)
            .status()
            .expect("kill runs");
        assert!(ok.success(), "SIGSTOP {pids:?} failed");
        pids
    }

    /// Lets frozen processes run again (SIGCONT).
    pub fn thaw(&self, pids: &[String]) {
        let _ = Command::new("kill").arg("-CONT").args(pids).status();
    }

    /// A client, for setting up and checking.
    pub fn client(&self) -> postgres::Client {
        self.url
            .parse::<postgres::Config>()
            .expect("url")
            .connect(postgres::NoTls)
            .expect("private PostgreSQL answers")
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        // A test that panicked mid-freeze must not leave stopped processes behind.
        if let Ok(pidfile) = std::fs::read_to_string(self.data_dir().join("postmaster.pid")) {
            if let Some(pm) = pidfile.lines().next() {
                let _ = Command::new("kill").args(["-CONT", pm.trim()]).status();
                let children = command_text("ps", &["-o", "pid=", "--ppid", pm.trim()]);
                let pids: Vec<&str> = children.split_whitespace().collect();
                if !pids.is_empty() {
                    let _ = Command::new("kill").arg("-CONT").args(&pids).status();
                }
            }
        }
        // A cluster kept outside the state dir (in /var/tmp, see data_dir) goes too.
        let cluster = self.data_dir().parent().map(Path::to_path_buf);
        let _ = script(&["stop"], &self.state);
        if let Some(cluster) = cluster.filter(|c| !c.starts_with(&self.state)) {
            let _ = std::fs::remove_dir_all(cluster);
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// A streaming standby of a [`PrivatePg`] (see [`PrivatePg::standby`]): its data dir is in
/// the primary's cluster dir; stopped (`-m immediate`) and removed when dropped.
pub struct Standby<'a> {
    primary: &'a PrivatePg,
    dir: PathBuf,
    data: PathBuf,
    log: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its DATABASE_URL.
    pub url: String,
}

impl Standby<'_> {
    /// Makes the primary wait for this standby on every commit (`synchronous_standby_names =
    /// '*'`, with the default `synchronous_commit = on`: the standby has flushed the commit
    /// before the client hears of it), and returns once pg_stat_replication says `sync`.
    /// Without it, a commit the primary acknowledged just before it dies may never reach the
    /// standby: a failover then loses it whatever the client does.
    pub fn synchronous(&self) {
        let mut primary = self.primary.client();
        // ALTER SYSTEM refuses to run in a transaction block: one statement per query.
        primary
            .simple_query("ALTER SYSTEM SET synchronous_standby_names = '*'")
            .expect("ALTER SYSTEM");
        primary
            .simple_query("SELECT pg_reload_conf()")
            .expect("pg_reload_conf");
        wait_until(
            Duration::from_secs(60),
            "the standby to be synchronous",
            || self.primary.replication_count("sync_state = 'sync'") > 0,
        );
    }

    /// Promotes it to a primary (`pg_ctl promote`, waiting until it accepts writes).
    pub fn promote(&self) {
        run(as_owner(&self.data, &pg_ctl())
            .args(["promote", "-w", "-t", "120", "-D"])
            .arg(&self.data));
        let in_recovery: bool = self
            .client()
            .query_one("SELECT pg_is_in_recovery()", &[])
            .expect("pg_is_in_recovery")
            .get(0);
        assert!(!in_recovery, "promoted, yet still in recovery");
    }

    /// A client, for setting up and checking.
    pub fn client(&self) -> postgres::Client {
        self.url
            .parse::<postgres::Config>()
            .expect("url")
            .connect(postgres::NoTls)
            .expect("the standby answers")
    }

    /// Its server log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Standby<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- standby's PostgreSQL log {} (last lines):\n{}",
                self.log.display(),
                super::service::tail(&self.log_text(), 30)
            );
        }
        if self.data.join("postmaster.pid").exists() {
            let _ = as_owner(&self.data, &pg_ctl())
                .args(["stop", "-m", "immediate", "-w", "-t", "30", "-D"])
                .arg(&self.data)
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
