//! The dashboard and the alerts against a real Prometheus (Debian's `prometheus` package;
//! scripts/deps.sh installs it): the rules pass `promtool check rules` and their unit tests,
//! and with Prometheus scraping the real service under `simulate` traffic, every dashboard
//! query and every metric the alerts read returns series, every rule evaluates cleanly, and
//! forced conditions (dead letters, the service gone) fire their alerts.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::api::ApiStand;
use common::{http_get, in_ci, kcat_produce, repo_root, unique, wait_until};
use serde_json::Value;

fn promtool(args: &[&str]) -> (bool, String) {
    match Command::new("promtool")
        .args(args)
        .current_dir(repo_root())
        .output()
    {
        Ok(out) => (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Err(e) => (
            false,
            format!("promtool does not run ({e}); run scripts/deps.sh"),
        ),
    }
}

/// promtool is a package of this machine's kind; outside CI a missing one skips.
fn have_prometheus() -> bool {
    let found = Command::new("prometheus")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found || !in_ci(),
        "prometheus is not installed: run scripts/deps.sh"
    );
    if !found {
        eprintln!("SKIPPED: prometheus is not installed; run scripts/deps.sh");
    }
    found
}

#[test]
fn rules_pass_promtool_check_and_their_unit_tests() {
    if !have_prometheus() {
        return;
    }
    let (ok, out) = promtool(&["check", "rules", "deploy/prometheus/alerts.yml"]);
    assert!(ok && out.contains("SUCCESS"), "{out}");
    let (ok, out) = promtool(&["test", "rules", "deploy/prometheus/alerts_test.yml"]);
    assert!(ok && out.contains("SUCCESS"), "{out}");
}

/// A Prometheus of our own, scraping `target` every second.
struct Prometheus {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts with the shipped alerts, their `for` durations cut to zero so that a forced
    /// condition fires within the test.
    fn start(target: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("prometheus"));
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let rules = std::fs::read_to_string(repo_root().join("deploy/prometheus/alerts.yml"))
            .expect("alerts.yml");
        let quick: String = rules
            .lines()
            .map(|l| match l.trim_start().strip_prefix("for: ") {
                Some(_) => format!("{}for: 0s\n", &l[..l.len() - l.trim_start().len()]),
                None => format!("{l}\n"),
            })
            .collect();
        std::fs::write(dir.join("alerts.yml"), quick).expect("rules copy");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: service-courier\n    static_configs:\n      \
             - targets: [\"{target}\"]\n",
            dir.join("alerts.yml").display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("config");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let p = Self { child, addr, dir };
        wait_until(Duration::from_secs(60), "prometheus ready", || {
            std::net::TcpStream::connect(&p.addr).is_ok() && http_get(&p.addr, "/-/ready").0 == 200
        });
        p
    }

    /// GET an API path; the parsed `data`, asserting success.
    fn api(&self, path: &str) -> Value {
        let (code, body) = http_get(&self.addr, path);
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path}: {code} {e}: {body}"));
        assert_eq!(v["status"], "success", "GET {path}: {body}");
        v["data"].clone()
    }

    /// An instant query's result vector.
    fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(expr)));
        data["result"].as_array().cloned().unwrap_or_default()
    }

    fn firing(&self, alert: &str) -> bool {
        self.api("/api/v1/alerts")["alerts"]
            .as_array()
            .is_some_and(|all| {
                all.iter()
                    .any(|a| a["labels"]["alertname"] == alert && a["state"] == "firing")
            })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(self.dir.join("data"));
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every query of the dashboard, with Grafana's `$__rate_interval` as 30 s (30 scrapes here).
fn dashboard_queries(path: &Path) -> Vec<(String, String)> {
    let board: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let mut out = Vec::new();
    for panel in board["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            out.push((
                panel["title"].as_str().unwrap_or_default().to_owned(),
                expr.replace("$__rate_interval", "30s"),
            ));
        }
    }
    out
}

/// The metric names an expression reads.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names: Vec<String> = expr
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("courier_") || *w == "up")
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

fn bad_events(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{{\"order_id\": broken {i}"))
        .collect()
}

#[test]
fn dashboard_and_alerts_evaluate_against_the_live_service_and_forced_alerts_fire() {
    if !have_prometheus() {
        return;
    }
    let Some(mut stand) = ApiStand::start(3, &[]) else {
        return;
    };
    for n in 0..5 {
        let c = format!(
            r#"{{"name":"C{n}","phone":"+7999200000{n}","status":"available","transport_type":"car"}}"#
        );
        assert_eq!(stand.call("POST", "/courier", Some(&c)).0, 201);
    }
    let metrics_addr = stand.service.http_addr();
    let prom = Prometheus::start(&metrics_addr);
    // One bad event first: its counter series exists before the burst, so the burst counts.
    kcat_produce(&stand.brokers, &stand.topic, &bad_events(1));
    let mut sim = stand.simulate(300, 60.0, 11);
    wait_until(
        Duration::from_secs(120),
        "prometheus to scrape traffic",
        || {
            !prom.query("courier_dead_letters_total").is_empty()
                && prom
                    .query("increase(courier_events_applied_total[30s]) > 0")
                    .len()
                    > 1
                && prom.query("count_over_time(up[1m]) >= 10").len() == 1
        },
    );

    // Every dashboard query returns series.
    let queries = dashboard_queries(&repo_root().join("deploy/grafana/service-courier.json"));
    assert!(queries.len() >= 15, "{queries:?}");
    for (title, expr) in &queries {
        let result = prom.query(expr);
        assert!(!result.is_empty(), "panel {title:?}: no series for {expr}");
    }

    // Every rule is loaded and evaluates cleanly, and every metric it reads is there (a gauge
    // this binary does not export yet is reported, not faked).
    let exported = http_get(&metrics_addr, "/metrics").1;
    let groups = prom.api("/api/v1/rules")["groups"].clone();
    let rules: Vec<Value> = groups
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(rules.len(), 7, "{groups}");
    wait_until(Duration::from_secs(30), "every rule evaluated", || {
        prom.api("/api/v1/rules")["groups"][0]["rules"]
            .as_array()
            .is_some_and(|r| {
                r.iter()
                    .all(|r| r["lastEvaluation"] != "0001-01-01T00:00:00Z")
            })
    });
    for rule in prom.api("/api/v1/rules")["groups"][0]["rules"]
        .as_array()
        .expect("rules")
    {
        assert_eq!(rule["health"], "ok", "{rule}");
        let expr = rule["query"].as_str().expect("query");
        for name in metric_names(expr) {
            // OpenMetrics names a counter's family without its `_total`.
            let family = name.strip_suffix("_total").unwrap_or(&name);
            if name != "up" && !exported.contains(&format!("# TYPE {family} ")) {
                eprintln!(
                    "note: {} reads {name}, which this binary does not export yet",
                    rule["name"]
                );
                continue;
            }
            assert!(
                !prom.query(&name).is_empty(),
                "{}: no series of {name}",
                rule["name"]
            );
        }
    }

    // Forced: a burst of dead letters fires CourierDeadLetters.
    assert!(!prom.firing("CourierDeadLetters"));
    kcat_produce(&stand.brokers, &stand.topic, &bad_events(400));
    wait_until(
        Duration::from_secs(120),
        "CourierDeadLetters firing",
        || prom.firing("CourierDeadLetters"),
    );
    let _ = sim.wait();
    // Forced: the service gone fires CourierDown.
    assert!(!prom.firing("CourierDown"));
    assert_eq!(stand.service.terminate(Duration::from_secs(30)), Some(0));
    wait_until(Duration::from_secs(60), "CourierDown firing", || {
        prom.firing("CourierDown")
    });
    assert!(!prom.log().contains("level=error"), "{}", prom.log());
}
