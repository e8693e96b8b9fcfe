//! The project's own scripts (scripts/postgres.sh, scripts/kafka.sh) run with a private state
//! dir, for tests that need a server of their own.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::events::repo_root;

/// Runs `scripts/NAME ARGS` with `env`; the output on success, an error with it on failure.
/// The shared services' settings never leak into a private server.
pub fn script(name: &str, args: &[&str], env: &[(&str, &Path)]) -> Result<String, String> {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("scripts").join(name)).args(args);
    for var in [
        "PG_PORT",
        "KAFKA_PORT",
        "KAFKA_CONTROLLER_PORT",
        "DATABASE_URL",
        "KAFKA_BROKERS",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("KAFKA_CREATE_TOPICS", "0")
        // Smaller than the script's default heap: a test broker holds little.
        .env("KAFKA_HEAP_OPTS", "-Xmx384m -Xms128m");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().map_err(|e| format!("scripts/{name}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("scripts/{name} {} failed:\n{text}", args.join(" ")))
    }
}

/// `export NAME=value` from a state dir's env file.
pub fn env_file(state: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(state.join("env"))
        .unwrap_or_else(|e| panic!("{}: {e}", state.join("env").display()));
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("export {name}=")))
        .unwrap_or_else(|| panic!("{name} not in {}", state.join("env").display()))
        .to_owned()
}

/// A fresh state dir under the target dir: removed when dropped, unless the test failed (then
/// it stays for a look, and says where).
pub struct StateDir(pub PathBuf);

impl StateDir {
    /// `CARGO_TARGET_TMPDIR/<unique name>`, created.
    pub fn new(name: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(super::unique(name));
        std::fs::create_dir_all(&dir).expect("state dir");
        Self(dir)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("state kept for a look in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
