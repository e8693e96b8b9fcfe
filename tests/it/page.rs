//! The operator's page in a real browser (Debian's headless `chromium`), loaded from the real
//! service while `simulate` sends traffic: it shows the traffic flowing, and once the traffic
//! has ended, every number on it matches the JSON routes fetched right after. The screenshot
//! taken during the traffic is saved as target/operator-page.png (the picture in
//! docs/http-api.md, docs/operator-page.png).

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::api::{api_addr, call, ApiStand};
use common::private_pg::PrivatePg;
use common::{in_ci, kcat_produce, repo_root, unique, wait_until, Service};
use serde_json::Value;

/// Runs headless Chromium on `url` with a fresh profile: `--dump-dom` (returns the DOM) or a
/// screenshot to `shot`.
fn chromium(url: &str, shot: Option<&Path>) -> String {
    let profile = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("chromium"));
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1440,900",
        // Long enough for the first refresh and one more (every 2 s).
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    match shot {
        Some(path) => cmd.arg(format!("--screenshot={}", path.display())),
        None => cmd.arg("--dump-dom"),
    };
    let mut child = cmd
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium runs (scripts/deps.sh installs it)");
    let started = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if started.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            panic!("chromium did not finish within 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut dom = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut out, &mut dom);
    }
    let _ = std::fs::remove_dir_all(profile);
    dom
}

/// The text of the element with `id`.
fn by_id(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} on the page"));
    inner_text(&dom[start..])
}

/// The text after the next `>` up to the next `<`.
fn inner_text(from: &str) -> String {
    let open = from.find('>').map_or(from.len(), |i| i + 1);
    let rest = &from[open..];
    rest[..rest.find('<').unwrap_or(rest.len())]
        .trim()
        .to_owned()
}

/// The text of the first element whose class list ends with `class` inside `row`.
fn cell(row: &str, class: &str) -> String {
    let start = row
        .find(&format!("{class}\""))
        .unwrap_or_else(|| panic!("no .{class} in {row}"));
    inner_text(&row[start..])
}

/// Rows of a table whose `<tr>` carries `attr`: value of the attribute -> the row's HTML.
fn rows(dom: &str, attr: &str) -> BTreeMap<String, String> {
    // The drawn document, not the script that draws it (its templates hold the same markup).
    let drawn = &dom[..dom.find("<script").unwrap_or(dom.len())];
    drawn
        .split(&format!("<tr {attr}=\""))
        .skip(1)
        .map(|chunk| {
            let (key, rest) = chunk.split_once('"').expect("attribute closes");
            let row = &rest[..rest.find("</tr>").unwrap_or(rest.len())];
            (key.to_owned(), row.to_owned())
        })
        .collect()
}

/// A number as the page prints it (`1,234`, `–` for none).
fn number(text: &str) -> Option<f64> {
    text.replace(',', "").parse().ok()
}

fn json_number(v: &Value) -> Option<f64> {
    v.as_f64()
}

#[test]
fn the_page_shows_what_the_json_routes_say() {
    let have = Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        have || !in_ci(),
        "chromium is not installed: run scripts/deps.sh"
    );
    if !have {
        eprintln!("SKIPPED: chromium is not installed; run scripts/deps.sh");
        return;
    }
    let Some(stand) = ApiStand::start(3, &[]) else {
        return;
    };
    // Fewer couriers than orders in flight, so that some orders wait.
    let names = ["Ann", "Boris", "Vera", "Gleb", "Daria", "Egor"];
    let transports = ["car", "scooter", "on_foot"];
    for (n, name) in names.iter().enumerate() {
        let c = format!(
            r#"{{"name":"{name}","phone":"+7999300000{n}","status":"available","transport_type":"{}"}}"#,
            transports[n % 3]
        );
        assert_eq!(stand.call("POST", "/courier", Some(&c)).0, 201);
    }
    let url = format!("http://{}/", stand.addr);
    let bad: Vec<String> = vec![
        "not json".into(),
        "{\"order_id\":\"x\",\"status\":\"teleported\",\"created_at\":\"2025-08-06T12:00:00Z\"}"
            .into(),
    ];
    kcat_produce(&stand.brokers, &stand.topic, &bad);
    // More traffic than the test needs: it flows for as long as the browser takes, and is
    // stopped once the live checks are done.
    let mut sim = stand.simulate(1_000_000, 100.0, 3);
    wait_until(Duration::from_secs(120), "traffic flowing", || {
        stand.json("/pipeline")["events_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            > 5.0
    });
    // Pause one courier from the API, as the page's button does.
    let pause = r#"{"id":2,"status":"paused"}"#;
    assert_eq!(stand.call("PUT", "/courier", Some(pause)).0, 200);

    // During the traffic: a screenshot, and the page says it flows and lists every courier.
    let shot = repo_root().join("target/operator-page.png");
    let _ = std::fs::remove_file(&shot);
    // target/ is not there when CARGO_TARGET_DIR points elsewhere.
    std::fs::create_dir_all(repo_root().join("target")).expect("create target/");
    chromium(&url, Some(&shot));
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "no screenshot at {}", shot.display());
    let live = chromium(&url, None);
    assert!(
        live.contains("data-loaded=\"1\""),
        "the page never loaded its data:\n{live}"
    );
    assert_eq!(by_id(&live, "flow-state"), "FLOWING", "{live}");
    assert_eq!(rows(&live, "data-courier-id").len(), names.len());

    // Once the traffic has stopped and settled, the page and the routes agree on every number.
    let _ = sim.kill();
    let _ = sim.wait();
    // One long-overdue delivery. Only a `created` event that finds a courier free stamps the
    // assignment with its own `created_at` (2025 here); a courier who takes a waiting order
    // stamps the wall clock. So: the traffic's last events applied, every waiting order
    // cancelled, a courier hired (free), and then late-1's `created`.
    wait_until(
        Duration::from_secs(60),
        "the traffic's events applied",
        || stand.json("/pipeline")["lag_total"] == 0,
    );
    wait_until(Duration::from_secs(120), "the queue emptied", || {
        let queue = stand.json("/queue?limit=1000");
        let cancels: Vec<String> = queue["orders"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["order_id"].as_str())
            .map(|id| {
                format!(
                    r#"{{"order_id":"{id}","status":"cancelled","created_at":"2025-08-06T12:00:00Z"}}"#
                )
            })
            .collect();
        if !cancels.is_empty() {
            kcat_produce(&stand.brokers, &stand.topic, &cancels);
        }
        queue["count"] == 0
    });
    let late =
        r#"{"name":"Late","phone":"+79993000099","status":"available","transport_type":"car"}"#;
    assert_eq!(stand.call("POST", "/courier", Some(late)).0, 201);
    kcat_produce(
        &stand.brokers,
        &stand.topic,
        &[
            r#"{"order_id":"late-1","status":"created","created_at":"2025-08-06T12:00:00Z"}"#
                .into(),
        ],
    );
    wait_until(Duration::from_secs(60), "late-1 assigned", || {
        let (code, text) = stand.call("GET", "/orders/late-1", None);
        code == 200 && text.contains(r#""state":"assigned""#)
    });
    wait_until(
        Duration::from_secs(60),
        "offsets committed and the rate at zero",
        || {
            let p = stand.json("/pipeline");
            p["lag_total"] == 0 && p["events_per_second"].as_f64() == Some(0.0)
        },
    );
    let dom = chromium(&url, None);
    let stats = stand.json("/stats");
    let queue = stand.json("/queue?limit=20");
    let pipe = stand.json("/pipeline");
    assert!(dom.contains("data-loaded=\"1\""), "{dom}");
    assert_eq!(by_id(&dom, "flow-state"), "IDLE");
    for (id, want) in [
        ("events-per-second", &pipe["events_per_second"]),
        ("lag-total", &pipe["lag_total"]),
        ("waiting-orders", &queue["count"]),
        ("couriers-available", &stats["available"]),
        ("couriers-busy", &stats["busy"]),
        ("couriers-paused", &stats["paused"]),
        ("dead-letters-total", &pipe["dead_letters_total"]),
        ("completed-deliveries", &stats["completed_deliveries"]),
    ] {
        assert_eq!(number(&by_id(&dom, id)), json_number(want), "#{id}");
    }
    assert_eq!(json_number(&pipe["dead_letters_total"]), Some(2.0));
    // Overdue: the tile counts the rows the page marks, and no fewer than /stats counted just
    // before (no delivery ends without traffic; more may fall due in between, none fewer).
    let overdue_rows = dom.matches("data-overdue=\"true\"").count();
    let tile = number(&by_id(&dom, "overdue-deliveries"));
    assert_eq!(tile, Some(overdue_rows as f64), "#overdue-deliveries");
    assert!(overdue_rows >= 1, "late-1 is overdue");
    let stats_after = stand.json("/stats");
    assert!(json_number(&stats_after["overdue_deliveries"]) >= tile);
    assert!(json_number(&stats["overdue_deliveries"]) <= tile);
    assert_eq!(json_number(&stats["paused"]), Some(1.0));
    assert!(json_number(&stats["completed_deliveries"]).is_some_and(|n| n > 0.0));

    let couriers = rows(&dom, "data-courier-id");
    let listed = stats["couriers"].as_array().expect("couriers");
    assert_eq!(couriers.len(), listed.len());
    for c in listed {
        let row = &couriers[&c["id"].to_string()];
        assert_eq!(
            cell(row, "status"),
            c["status"].as_str().unwrap_or_default(),
            "{row}"
        );
        assert_eq!(
            cell(row, "active"),
            c["active_order"].as_str().unwrap_or_default()
        );
        assert_eq!(
            number(&cell(row, "completed")),
            json_number(&c["completed_deliveries"])
        );
        // The deadline column: the courier's deadline, marked once it has passed.
        let deadline = c["deadline"].as_str().unwrap_or_default();
        assert!(
            row.contains(&format!("data-deadline=\"{deadline}\"")),
            "{row}"
        );
        if c["active_order"] == "late-1" {
            assert!(row.contains("data-overdue=\"true\""), "{row}");
            assert!(row.contains("overdue deadline"), "not highlighted: {row}");
            // A deadline not today shows its date: `2025-08-06 12:05:00`.
            assert_eq!(
                cell(row, "deadline"),
                format!("{} {}", &deadline[..10], &deadline[11..19])
            );
        }
        if deadline.is_empty() {
            assert!(row.contains("data-overdue=\"false\""), "{row}");
        }
        // Pause for the working, resume for the paused (no token is set).
        let button = if c["status"] == "paused" {
            "resume"
        } else {
            "pause"
        };
        assert!(row.contains(&format!(">{button}</button>")), "{row}");
    }

    let partitions = rows(&dom, "data-partition");
    let listed = pipe["partitions"].as_array().expect("partitions");
    assert_eq!(partitions.len(), 3);
    for p in listed {
        let row = &partitions[&p["partition"].to_string()];
        assert_eq!(
            number(&cell(row, "committed")),
            json_number(&p["committed_offset"])
        );
        assert_eq!(number(&cell(row, "lag")), json_number(&p["lag"]));
        assert!(
            row.contains(&format!("data-stalled=\"{}\"", p["stalled"])),
            "{row}"
        );
    }

    let reasons = rows(&dom, "data-reason");
    let listed = pipe["dead_letters"].as_array().expect("dead letters");
    assert_eq!(reasons.len(), listed.len());
    assert!(!listed.is_empty());
    for d in listed {
        let row = &reasons[d["reason"].as_str().unwrap_or_default()];
        assert_eq!(number(&cell(row, "count")), json_number(&d["count"]));
    }
}

#[test]
fn with_the_database_down_the_page_says_so_and_keeps_the_pipeline_figures() {
    let have = Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        have || !in_ci(),
        "chromium is not installed: run scripts/deps.sh"
    );
    if !have {
        eprintln!("SKIPPED: chromium is not installed; run scripts/deps.sh");
        return;
    }
    let Some(brokers) = common::kafka_brokers() else {
        return;
    };
    if common::database_url().is_none() {
        return;
    }
    let pg = PrivatePg::start("page-pg-down");
    let topic = unique("page-db");
    common::create_topic(&topic, 1);
    common::create_topic(&format!("{topic}.dlq"), 1);
    let service = Service::start(&[
        ("DATABASE_URL", pg.url.clone()),
        ("KAFKA_BROKERS", brokers.clone()),
        ("KAFKA_ORDER_TOPIC", topic.clone()),
        ("KAFKA_DLQ_TOPIC", format!("{topic}.dlq")),
        ("KAFKA_GROUP_ID", unique("group")),
        ("KAFKA_COMMIT_INTERVAL_MS", "200".into()),
    ]);
    let addr = api_addr(&service);
    // The API listens before the schema is applied: wait for a database-backed route.
    wait_until(Duration::from_secs(60), "the database ready", || {
        call(&addr, "GET", "/stats", &[], None).0 == 200
    });
    let ann = r#"{"name":"Ann","phone":"+79993000001","transport_type":"car"}"#;
    assert_eq!(
        call(&addr, "POST", "/courier", &[], Some(ann.as_bytes())).0,
        201
    );
    kcat_produce(
        &brokers,
        &topic,
        &[
            r#"{"order_id":"o-1","status":"created","created_at":"2025-08-06T12:00:00Z"}"#.into(),
            "not json".into(),
        ],
    );
    let get = |path: &str| call(&addr, "GET", path, &[], None);
    wait_until(
        Duration::from_secs(60),
        "both events applied, offsets committed",
        || {
            let (_, text) = get("/pipeline");
            let p: Value = serde_json::from_str(&text).unwrap_or_default();
            p["events_consumed_total"] == 2 && p["dead_letters_total"] == 1 && p["lag_total"] == 0
        },
    );
    let url = format!("http://{addr}/");
    let up = chromium(&url, None);
    assert!(up.contains("data-loaded=\"1\""), "{up}");
    assert_eq!(by_id(&up, "couriers-busy"), "1");

    pg.crash();
    wait_until(
        Duration::from_secs(60),
        "/stats and /queue answer 503",
        || get("/stats").0 == 503 && get("/queue?limit=20").0 == 503,
    );
    assert_eq!(get("/pipeline").0, 200);
    let down = chromium(&url, None);
    assert!(down.contains("data-loaded=\"partial\""), "{down}");
    assert_eq!(by_id(&down, "flow-state"), "DATABASE UNREACHABLE", "{down}");
    assert!(by_id(&down, "flow-why").starts_with("database unreachable"));
    // The pipeline's figures are still shown; the database's are a dash, never stale.
    assert_eq!(by_id(&down, "dead-letters-total"), "1");
    assert_eq!(by_id(&down, "lag-total"), "0");
    assert!(number(&by_id(&down, "events-per-second")).is_some());
    assert_eq!(rows(&down, "data-partition").len(), 1);
    assert_eq!(rows(&down, "data-reason").len(), 1);
    for id in ["couriers-busy", "waiting-orders", "overdue-deliveries"] {
        assert_eq!(by_id(&down, id), "–", "#{id}");
    }
    assert!(rows(&down, "data-courier-id").is_empty());
    assert!(down.contains(">database unreachable</td>"), "{down}");
}
