//! The `service-courier` binary as a child process: started with an explicit environment, its
//! log in a file, its HTTP endpoint found from the log; [`Instance`] keeps one across restarts.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::events::unique;
use super::wait::{wait_for, wait_until};

/// The service binary running as a child process, its log in a file.
pub struct Service {
    /// The process.
    pub child: Child,
    /// Its stderr (the log).
    pub log: PathBuf,
}

impl Service {
    /// Starts `service-courier run` with `env`. Nothing else is inherited but PATH and, when
    /// set, KAFKA_CLIENT (so a whole test run can pick the Kafka client); `env` wins.
    pub fn start(env: &[(&str, String)]) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let log = dir.join(format!("{}.log", unique("service")));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_service-courier"));
        cmd.arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(file);
        if let Ok(client) = std::env::var("KAFKA_CLIENT") {
            cmd.env("KAFKA_CLIENT", client);
        }
        // Several services run at once in tests: each takes a free port for its endpoint.
        cmd.env("METRICS_ADDR", "127.0.0.1:0");
        cmd.env("HTTP_ADDR", "127.0.0.1:0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self {
            child: cmd.spawn().expect("service starts"),
            log,
        }
    }

    /// Where its /metrics, /healthz and /readyz listen (from its log), once it is up.
    pub fn http_addr(&self) -> String {
        wait_for(Duration::from_secs(60), "the http endpoint", || {
            self.log_text()
                .lines()
                .find_map(|l| l.split("on http://").nth(1).map(|a| a.trim().to_owned()))
        })
    }

    /// GET `path` from its endpoint: (status code, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.http_addr(), path)
    }

    /// How many partitions it owns now: one `courier_partition_stalled` series each in
    /// /metrics.
    pub fn owned_partitions(&self) -> usize {
        self.get("/metrics")
            .1
            .lines()
            .filter(|l| l.starts_with("courier_partition_stalled{"))
            .count()
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until its log contains `text`.
    pub fn wait_for_log(&self, limit: Duration, text: &str) {
        wait_until(limit, &format!("the log line {text:?}"), || {
            self.log_text().contains(text)
        });
    }

    /// Sends SIGTERM and waits (bounded) for the exit code.
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        self.signal_term();
        self.wait(limit)
    }

    /// Sends SIGTERM and returns at once.
    pub fn signal_term(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits (bounded) for the process to exit by itself.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "service did not exit within {limit:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A plain HTTP/1.0 GET: (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).expect("endpoint reachable");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("response");
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (code, body)
}

/// One service instance across its restarts: the environment it runs with, the process now,
/// and every log it wrote (the last lines printed if the test fails, removed if it passes).
pub struct Instance {
    /// For messages.
    pub name: &'static str,
    env: Vec<(&'static str, String)>,
    service: Option<Service>,
    logs: Vec<PathBuf>,
}

impl Instance {
    /// Starts it.
    pub fn start(name: &'static str, env: Vec<(&'static str, String)>) -> Self {
        let mut me = Self {
            name,
            env,
            service: None,
            logs: Vec::new(),
        };
        me.spawn();
        me
    }

    /// Starts the process (again) with the same environment.
    pub fn spawn(&mut self) {
        let s = Service::start(&self.env);
        self.logs.push(s.log.clone());
        self.service = Some(s);
    }

    /// The process now.
    pub fn service(&mut self) -> &mut Service {
        self.service.as_mut().expect("service running")
    }

    /// Its process id.
    pub fn pid(&mut self) -> u32 {
        self.service().child.id()
    }

    /// Panics (with the log) unless the process is still running.
    pub fn assert_alive(&mut self) {
        if !self.service().running() {
            let log = tail(&self.service().log_text(), 60);
            panic!("{} exited by itself; log:\n{log}", self.name);
        }
    }

    /// SIGKILL: no signal handler, no drain, no final commit.
    pub fn kill(&mut self) {
        let s = self.service();
        let _ = s.child.kill();
        let _ = s.child.wait();
    }

    /// SIGTERM and the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.service().terminate(Duration::from_secs(60))
    }

    /// The current process's log.
    pub fn log_text(&mut self) -> String {
        self.service().log_text()
    }

    /// VmHWM of the running process, in kB: the most resident memory it ever had.
    pub fn peak_rss_kb(&mut self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        drop(self.service.take()); // kills it if still running
        for log in &self.logs {
            if std::thread::panicking() {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                eprintln!(
                    "---- {} log {} (last lines):\n{}",
                    self.name,
                    log.display(),
                    tail(&text, 40)
                );
            } else {
                let _ = std::fs::remove_file(log);
            }
        }
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
