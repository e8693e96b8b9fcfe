//! A throwaway PostgreSQL of one test's own (scripts/postgres.sh with a private state dir), for
//! tests that stop it, crash it or freeze it while the service runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{repo_root, unique};

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

fn command_text(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// pg_ctl, found the way scripts/postgres.sh finds it: PG_BIN, PATH, then the newest
/// /usr/lib/postgresql/*/bin.
fn pg_ctl() -> PathBuf {
    if let Some(bin) = std::env::var_os("PG_BIN") {
        return PathBuf::from(bin).join("pg_ctl");
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(d) = std::env::split_paths(&path).find(|d| d.join("pg_ctl").is_file()) {
            return d.join("pg_ctl");
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL binaries installed")
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let p = e.path().join("bin/pg_ctl");
            p.is_file().then_some((v, p))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p).expect("pg_ctl found")
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

    /// Stops the server the hard way (`pg_ctl stop -m immediate`), as the data dir's owner.
    pub fn crash(&self) {
        let data = self.data_dir();
        let owner = command_text("stat", &["-c", "%U", &data.to_string_lossy()]);
        let me = command_text("id", &["-un"]);
        let mut cmd = if owner == me {
            Command::new(pg_ctl())
        } else {
            let mut c = Command::new("runuser");
            c.args(["-u", &owner, "--"]).arg(pg_ctl());
            c
        };
        let out = cmd
            .args(["stop", "-m", "immediate", "-w", "-t", "30", "-D"])
            .arg(&data)
            .current_dir("/")
            .output()
            .expect("pg_ctl runs");
        assert!(
            out.status.success(),
            "pg_ctl stop -m immediate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
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
        let _ = script(&["stop"], &self.state);
        let _ = std::fs::remove_dir_all(&self.state);
    }
}
