//! The command line as a person uses it: the real binary as a child process.

use crate::common;

use std::process::{Command, Output};

use common::TestDb;

fn cli(db_url: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_service-courier"));
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .current_dir(env!("CARGO_TARGET_TMPDIR"));
    if let Some(url) = db_url {
        cmd.env("DATABASE_URL", url);
    }
    cmd.output().expect("binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn bad_arguments_exit_2_with_a_clear_message() {
    let url = "postgres://u:pw@127.0.0.1:1/db";
    let o = cli(
        Some(url),
        &[
            "couriers",
            "add",
            "--name",
            "Ann",
            "--phone",
            "12345",
            "--transport",
            "car",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("not '+' followed by 11 digits"),
        "{}",
        text(&o)
    );
    let o = cli(
        Some(url),
        &[
            "couriers",
            "add",
            "--name",
            "Ann",
            "--phone",
            "+79990000000",
            "--transport",
            "bike",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("on_foot, scooter or car"), "{}", text(&o));
    let o = cli(Some(url), &["couriers", "pause", "abc"]);
    assert_eq!(o.status.code(), Some(2));
    let o = cli(Some(url), &["no-such-command"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn missing_or_malformed_database_url_names_the_variable() {
    let o = cli(None, &["stats"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("DATABASE_URL"), "{}", text(&o));
    let o = cli(Some("mysql:/nope:x"), &["stats"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("DATABASE_URL"), "{}", text(&o));
}

#[test]
fn unreachable_database_names_the_host_never_the_password() {
    // Port 1 on loopback: nothing listens there.
    let o = cli(
        Some("postgres://courier:s3cr3t-pw@127.0.0.1:1/courier"),
        &["stats"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("127.0.0.1:1/courier"), "{out}");
    assert!(!out.contains("s3cr3t-pw"), "the password leaked: {out}");
}

#[test]
fn migrate_add_list_pause_resume_stats() {
    let Some(db) = TestDb::new(1) else { return };
    let url = Some(db.url.as_str());
    for _ in 0..2 {
        let o = cli(url, &["migrate"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let o = cli(
        url,
        &[
            "couriers",
            "add",
            "--name",
            "Ann",
            "--phone",
            "+79990000001",
            "--transport",
            "on_foot",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("courier 1 added: available"),
        "{}",
        text(&o)
    );
    // The same phone again: refused, exit 2.
    let o = cli(
        url,
        &[
            "couriers",
            "add",
            "--name",
            "Bob",
            "--phone",
            "+79990000001",
            "--transport",
            "car",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("belongs to another courier"),
        "{}",
        text(&o)
    );

    let o = cli(url, &["couriers", "pause", "1"]);
    assert!(
        text(&o).contains("courier 1 paused: paused"),
        "{}",
        text(&o)
    );
    let o = cli(url, &["couriers", "list"]);
    assert!(
        text(&o).contains("Ann") && text(&o).contains("paused"),
        "{}",
        text(&o)
    );
    let o = cli(url, &["couriers", "resume", "1"]);
    assert!(
        text(&o).contains("courier 1 resumed: available"),
        "{}",
        text(&o)
    );
    let o = cli(url, &["couriers", "pause", "42"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("no courier has id 42"), "{}", text(&o));

    let mut c = db.client();
    c.batch_execute(
        "INSERT INTO orders (order_id, state, courier_id) VALUES ('o-1', 'completed', 1);
         INSERT INTO courier_orders (order_id, courier_id, assigned_at, deadline, completed_at)
         VALUES ('o-1', 1, now(), now() + interval '30 minutes', now());
         UPDATE couriers SET completed_deliveries = 1 WHERE id = 1;",
    )
    .expect("seed a delivery");
    let o = cli(url, &["stats"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let line = text(&o)
        .lines()
        .find(|l| l.contains("Ann"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        line.contains("available") && line.split_whitespace().any(|w| w == "1"),
        "{line}"
    );
    assert!(
        text(&o).contains("1 couriers, 1 completed deliveries"),
        "{}",
        text(&o)
    );
}
