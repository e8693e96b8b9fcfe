//! The HTTP API against the real binary, real PostgreSQL and real Kafka: every route with good
//! and bad input, each error code, a slow client, pause/resume racing event traffic, and a
//! token-protected run.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::api::{call, call_with_head, header, read_response, ApiStand};
use common::{kcat_produce, wait_until};
use serde_json::{json, Value};
use service_courier::repository::CourierRepository;

const ANN: &str =
    r#"{"name":"Ann","phone":"+79990000001","status":"available","transport_type":"car"}"#;

fn body(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn event(order: &str, status: &str) -> String {
    format!(r#"{{"order_id":"{order}","status":"{status}","created_at":"2025-08-06T12:00:00Z"}}"#)
}

#[test]
fn course_routes_answer_as_the_go_service_does() {
    let Some(stand) = ApiStand::start(1, &[]) else {
        return;
    };
    assert_eq!(
        stand.call("GET", "/ping", None),
        (200, r#"{"message":"pong"}"#.into())
    );
    assert_eq!(stand.call("HEAD", "/healthcheck", None).0, 204);

    let (code, created) = stand.call("POST", "/courier", Some(ANN));
    assert_eq!(code, 201, "{created}");
    let created = body(&created);
    assert_eq!(created["message"], "Courier created successfully");
    let id = created["id"].as_i64().expect("an id");

    let (code, one) = stand.call("GET", &format!("/courier/{id}"), None);
    assert_eq!(code, 200);
    assert_eq!(
        body(&one),
        json!({"id": id, "name": "Ann", "phone": "+79990000001", "status": "available",
               "transport_type": "car"})
    );

    let update = json!({"id": id, "name": "Anna", "phone": "+79990000002",
                        "transport_type": "scooter", "status": "paused"});
    let (code, updated) = stand.call("PUT", "/courier", Some(&update.to_string()));
    assert_eq!(
        (code, body(&updated)),
        (200, json!({"message": "Courier updated successfully"}))
    );
    // Only the given fields change.
    let (code, _) = stand.call(
        "PUT",
        "/courier",
        Some(&json!({"id": id, "name": "Ana"}).to_string()),
    );
    assert_eq!(code, 200);
    let all = stand.json("/couriers");
    assert_eq!(
        all,
        json!([{"id": id, "name": "Ana", "phone": "+79990000002", "status": "paused",
                "transport_type": "scooter"}])
    );
    // And the database says the same.
    let row = stand
        .db
        .client()
        .query_one(
            "SELECT name, phone, status, transport_type FROM couriers WHERE id = $1",
            &[&id],
        )
        .expect("row");
    let row: (String, String, String, String) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(
        row,
        (
            "Ana".into(),
            "+79990000002".into(),
            "paused".into(),
            "scooter".into()
        )
    );

    let (code, gone) = stand.call("DELETE", &format!("/courier/{id}"), None);
    assert_eq!(
        (code, body(&gone)["message"].clone()),
        (200, json!("Courier deleted successfully"))
    );
    assert_eq!(stand.call("GET", &format!("/courier/{id}"), None).0, 404);
    assert_eq!(stand.json("/couriers"), json!([]));
}

#[test]
fn read_routes_follow_an_order_from_the_queue_to_its_courier() {
    let Some(stand) = ApiStand::start(1, &[]) else {
        return;
    };
    kcat_produce(
        &stand.brokers,
        &stand.topic,
        &[event("o-1", "created"), event("o-2", "created")],
    );
    wait_until(Duration::from_secs(60), "two waiting orders", || {
        stand.json("/queue")["count"] == 2
    });
    let queue = stand.json("/queue?limit=1");
    assert_eq!(queue["count"], 2);
    assert_eq!(queue["orders"].as_array().map(Vec::len), Some(1));
    assert!(queue["oldest_wait_seconds"]
        .as_f64()
        .is_some_and(|w| w >= 0.0));
    let first = queue["orders"][0]["order_id"].clone();
    let o1 = stand.json("/orders/o-1");
    assert_eq!(
        (o1["state"].clone(), o1["courier_id"].clone()),
        (json!("waiting"), Value::Null)
    );

    // A courier hired paused takes nothing; resumed, they take the longest-waiting order at once.
    let paused = ANN.replace("available", "paused");
    let (code, created) = stand.call("POST", "/courier", Some(&paused));
    assert_eq!(code, 201);
    let id = body(&created)["id"].as_i64().expect("id");
    assert_eq!(stand.json("/queue")["count"], 2);
    let resume = json!({"id": id, "status": "available"}).to_string();
    assert_eq!(stand.call("PUT", "/courier", Some(&resume)).0, 200);
    let taken = stand.json(&format!("/orders/{}", first.as_str().unwrap_or_default()));
    assert_eq!(taken["state"], "assigned");
    assert_eq!(taken["courier_id"], id);
    assert!(taken["assigned_at"].is_string() && taken["deadline"].is_string());
    assert_eq!(stand.json("/queue")["count"], 1);
    // A courier added available takes the next one at once.
    let (code, created) = stand.call(
        "POST",
        "/courier",
        Some(r#"{"name":"Bo","phone":"+79990000009","status":"available","transport_type":"on_foot"}"#),
    );
    assert_eq!(code, 201);
    let second = body(&created)["id"].as_i64().expect("id");
    assert_eq!(stand.json("/queue")["count"], 0);

    kcat_produce(
        &stand.brokers,
        &stand.topic,
        &[event("o-1", "completed"), event("o-2", "completed")],
    );
    wait_until(Duration::from_secs(60), "both orders completed", || {
        stand.json("/stats")["completed_deliveries"] == 2
    });
    let done = stand.json("/orders/o-1");
    assert_eq!(done["state"], "completed");
    assert!(done["completed_at"].is_string());
    let stats = stand.json("/stats");
    assert_eq!(
        (stats["couriers_total"].clone(), stats["available"].clone()),
        (json!(2), json!(2))
    );
    assert_eq!(stats["waiting_orders"], 0);
    let line = stats["couriers"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["id"] == id).cloned())
        .expect("courier in stats");
    assert_eq!(
        (
            line["completed_deliveries"].clone(),
            line["active_order"].clone()
        ),
        (json!(1), Value::Null)
    );

    let history = stand.json(&format!("/couriers/{second}/deliveries?limit=5"));
    assert_eq!(history["courier_id"], second);
    assert_eq!(history["deliveries"].as_array().map(Vec::len), Some(1));
    assert!(history["deliveries"][0]["completed_at"].is_string());

    // The pipeline shows the partition, committed up to the four events.
    wait_until(Duration::from_secs(30), "offset 4 committed", || {
        stand.json("/partitions")["partitions"][0]["committed_offset"] == 4
    });
    let pipe = stand.json("/pipeline");
    assert_eq!(pipe["events_consumed_total"], 4);
    assert_eq!(pipe["lag_total"], 0);
    assert_eq!(pipe["partitions"][0]["stalled"], false);
}

#[test]
fn every_error_has_its_status_code_and_a_json_message() {
    let Some(stand) = ApiStand::start(1, &[]) else {
        return;
    };
    let (_, created) = stand.call("POST", "/courier", Some(ANN));
    let id = body(&created)["id"].as_i64().expect("id");
    let big = format!(
        r#"{{"name":"{}","phone":"+79990000003","transport_type":"car"}}"#,
        "x".repeat(70_000)
    );
    let cases: Vec<(&str, String, Option<String>, u16)> = vec![
        ("POST", "/courier".into(), Some("{not json".into()), 400),
        ("POST", "/courier".into(), Some("[]".into()), 400),
        (
            "POST",
            "/courier".into(),
            Some(r#"["Ann","+79990000007",null,"car"]"#.into()),
            400,
        ),
        ("PUT", "/courier".into(), Some(format!("[{id}]")), 400),
        (
            "POST",
            "/courier".into(),
            Some(ANN.replace("+79990000001", "8999")),
            400,
        ),
        (
            "POST",
            "/courier".into(),
            Some(ANN.replace("car", "bicycle")),
            400,
        ),
        (
            "POST",
            "/courier".into(),
            Some(ANN.replace("available", "sleeping")),
            400,
        ),
        (
            "POST",
            "/courier".into(),
            Some(ANN.replace(r#""name":"Ann""#, r#""name":"""#)),
            400,
        ),
        ("POST", "/courier".into(), Some(ANN.into()), 409),
        (
            "POST",
            "/courier".into(),
            Some(ANN.replace("available", "busy").replace("0001", "0004")),
            409,
        ),
        ("POST", "/courier".into(), Some(big), 413),
        (
            "PUT",
            "/courier".into(),
            Some(r#"{"id":"one"}"#.into()),
            400,
        ),
        (
            "PUT",
            "/courier".into(),
            Some(json!({"id": id, "name": 7}).to_string()),
            400,
        ),
        (
            "PUT",
            "/courier".into(),
            Some(json!({"name": "No id"}).to_string()),
            400,
        ),
        (
            "PUT",
            "/courier".into(),
            Some(json!({"id": id, "status": "busy"}).to_string()),
            409,
        ),
        (
            "PUT",
            "/courier".into(),
            Some(json!({"id": 99999, "name": "Zed"}).to_string()),
            404,
        ),
        (
            "PUT",
            "/courier".into(),
            Some(json!({"id": 99999}).to_string()),
            404,
        ),
        ("GET", "/courier/99999".into(), None, 404),
        ("GET", "/courier/abc".into(), None, 400),
        ("GET", "/courier/-1".into(), None, 400),
        ("DELETE", "/courier/99999".into(), None, 404),
        ("GET", "/orders/never-seen".into(), None, 404),
        ("GET", "/orders/%zz".into(), None, 400),
        (
            "GET",
            format!("/couriers/{id}/deliveries?limit=0"),
            None,
            400,
        ),
        (
            "GET",
            format!("/couriers/{id}/deliveries?limit=many"),
            None,
            400,
        ),
        ("GET", "/couriers/99999/deliveries".into(), None, 404),
        ("GET", "/queue?limit=100000".into(), None, 400),
        ("GET", "/no/such/route".into(), None, 404),
        ("DELETE", "/couriers".into(), None, 405),
        ("PATCH", "/courier".into(), Some("{}".into()), 405),
        ("POST", "/ping".into(), None, 405),
    ];
    for (method, path, payload, want) in cases {
        let (code, text) = stand.call(method, &path, payload.as_deref());
        assert_eq!(code, want, "{method} {path}: {text}");
        let error = body(&text)["error"].clone();
        assert!(
            error.is_string(),
            "{method} {path}: no error message in {text}"
        );
    }
    // A phone taken by another courier is a conflict on update too.
    let (_, other) = stand.call("POST", "/courier", Some(&ANN.replace("0001", "0005")));
    let other = body(&other)["id"].as_i64().expect("id");
    let clash = json!({"id": other, "phone": "+79990000001"}).to_string();
    let (code, text) = stand.call("PUT", "/courier", Some(&clash));
    assert_eq!(
        (code, body(&text)),
        (
            409,
            json!({"error": "phone +79990000001 belongs to another courier"})
        )
    );
    // And POST says it in the same words.
    let (code, text) = stand.call("POST", "/courier", Some(ANN));
    assert_eq!(
        (code, body(&text)),
        (
            409,
            json!({"error": "phone +79990000001 belongs to another courier"})
        )
    );
    // A courier carrying an order can't be removed.
    kcat_produce(&stand.brokers, &stand.topic, &[event("o-9", "created")]);
    wait_until(Duration::from_secs(60), "o-9 assigned", || {
        stand.call("GET", "/orders/o-9", None).0 == 200
    });
    let carrier = stand.json("/orders/o-9")["courier_id"]
        .as_i64()
        .expect("assigned");
    let (code, text) = stand.call("DELETE", &format!("/courier/{carrier}"), None);
    assert_eq!(code, 409, "{text}");
    assert!(body(&text)["error"]
        .as_str()
        .is_some_and(|e| e.contains("o-9")));
    // Nothing above panicked or stopped the service.
    assert_eq!(stand.call("GET", "/ping", None).0, 200);
    assert!(!stand.service.log_text().contains("panicked"));
}

#[test]
fn hostile_input_never_panics_nor_stops_the_service() {
    let Some(stand) = ApiStand::start(1, &[]) else {
        return;
    };
    let junk: Vec<Vec<u8>> = vec![
        vec![0xff, 0xfe, 0x00, 0x01],
        b"{\"name\":".repeat(3000),
        "[".repeat(10_000).into_bytes(),
        br#"{"id":9223372036854775807,"status":"paused"}"#.to_vec(),
        br#"{"id":-5}"#.to_vec(),
        br#"{"name":"\u0000","phone":"+79990000001","transport_type":"car"}"#.to_vec(),
        br#"{"name":null,"phone":null,"transport_type":null}"#.to_vec(),
        b"null".to_vec(),
        b"".to_vec(),
    ];
    for payload in &junk {
        for (method, path) in [("POST", "/courier"), ("PUT", "/courier")] {
            let (code, text) = call(&stand.addr, method, path, &[], Some(payload));
            assert!((400..500).contains(&code), "{method} {path}: {code} {text}");
        }
    }
    for path in [
        "/orders/",
        "/orders/%00",
        "/courier/",
        "//",
        "/couriers/1/deliveries?limit=%",
        "/%",
    ] {
        let (code, _) = stand.call("GET", path, None);
        assert!((200..500).contains(&code), "GET {path}: {code}");
    }
    assert_eq!(stand.call("GET", "/ping", None).0, 200);
    assert!(!stand.service.log_text().contains("panicked"));
}

#[test]
fn a_slow_client_holds_no_handler_and_is_cut_off() {
    let Some(stand) = ApiStand::start(1, &[]) else {
        return;
    };
    // A burst of stalled clients, more than the handler threads: bodies announced and never
    // sent, and heads never finished.
    let mut stalled = Vec::new();
    for _ in 0..(4 * service_courier::api::HANDLER_THREADS) {
        let mut s = TcpStream::connect(&stand.addr).expect("connect");
        s.write_all(b"POST /courier HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{")
            .expect("send");
        stalled.push(s);
        let mut s = TcpStream::connect(&stand.addr).expect("connect");
        s.write_all(b"GET /pi").expect("send");
        stalled.push(s);
    }
    // Everyone else is still served, reads and writes alike.
    assert_eq!(stand.call("GET", "/ping", None).0, 200);
    assert_eq!(stand.call("POST", "/courier", Some(ANN)).0, 201);
    assert_eq!(stand.json("/couriers").as_array().map(Vec::len), Some(1));
    // A client that keeps a body trickling in is answered 408 once the deadline passes.
    let mut trickle = TcpStream::connect(&stand.addr).expect("connect");
    trickle
        .write_all(b"POST /courier HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{")
        .expect("send");
    trickle
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut answer = Vec::new();
    while answer.is_empty() && std::time::Instant::now() < deadline {
        if trickle.write_all(b" ").is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        if let Ok(n) = std::io::Read::read(&mut trickle, &mut buf) {
            answer.extend_from_slice(&buf[..n]);
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "no 408 for a trickling body: {text:?}"
    );
    // Every stalled client is cut off in the end with a JSON 408: a body by the route, a head
    // by the server.
    for mut s in stalled {
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let (code, text) = read_response(&mut s);
        assert_eq!(code, 408, "a stalled client got {code}: {text}");
        assert!(body(&text)["error"].is_string(), "{text}");
    }
    assert_eq!(stand.call("GET", "/ping", None).0, 200);
}

#[test]
fn pause_and_resume_racing_event_traffic_never_give_a_courier_two_orders() {
    let Some(stand) = ApiStand::start(3, &[("WORKERS", "4".into())]) else {
        return;
    };
    let mut ids = Vec::new();
    for n in 0..8 {
        let c = format!(
            r#"{{"name":"C{n}","phone":"+7999100000{n}","status":"available","transport_type":"scooter"}}"#
        );
        let (code, created) = stand.call("POST", "/courier", Some(&c));
        assert_eq!(code, 201);
        ids.push(body(&created)["id"].as_i64().expect("id"));
    }
    let orders = 200;
    let mut sim = stand.simulate(orders, 150.0, 7);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let puts = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for t in 0..3 {
            let (stand, ids, stop, puts) = (&stand, &ids, &stop, &puts);
            scope.spawn(move || {
                let mut i = t;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let id = ids[i % ids.len()];
                    let status = if i % 2 == 0 { "paused" } else { "available" };
                    let put = json!({"id": id, "status": status}).to_string();
                    let (code, text) =
                        call(&stand.addr, "PUT", "/courier", &[], Some(put.as_bytes()));
                    assert_eq!(code, 200, "{text}");
                    puts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    i += 3;
                }
            });
        }
        // Meanwhile every committed state is consistent: no courier with two orders.
        let mut samples = 0;
        while matches!(sim.try_wait(), Ok(None)) {
            let snap = stand.db.repo.snapshot().expect("snapshot");
            snap.check_consistency().expect("consistent under load");
            samples += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(samples > 0);
    });
    assert!(puts.load(std::sync::atomic::Ordering::Relaxed) > 0);
    // Everyone back to work: every order ends, and the store at rest keeps every invariant.
    for id in &ids {
        let put = json!({"id": id, "status": "available"}).to_string();
        assert_eq!(stand.call("PUT", "/courier", Some(&put)).0, 200);
    }
    stand.wait_all_ended(orders, Duration::from_secs(180));
    let snap = stand.db.repo.snapshot().expect("snapshot");
    snap.check_invariants().expect("invariants at rest");
    let two: i64 = stand
        .db
        .client()
        .query_one(
            "SELECT count(*) FROM (SELECT courier_id FROM courier_orders WHERE completed_at IS NULL \
             GROUP BY courier_id HAVING count(*) > 1) t",
            &[],
        )
        .expect("query")
        .get(0);
    assert_eq!(two, 0);
}

#[test]
fn with_a_token_changes_need_it_and_it_never_reaches_the_log() {
    let token = "s3cret-token-0123456789";
    let Some(stand) = ApiStand::start(1, &[("API_TOKEN", token.into())]) else {
        return;
    };
    let auth = format!("Bearer {token}");
    let wrong = format!("Bearer {token}x");
    assert_eq!(stand.call("POST", "/courier", Some(ANN)).0, 401);
    let (code, text) = call(
        &stand.addr,
        "POST",
        "/courier",
        &[("Authorization", &wrong)],
        Some(ANN.as_bytes()),
    );
    assert_eq!(code, 401, "{text}");
    assert!(body(&text)["error"].is_string());
    let (code, created) = call(
        &stand.addr,
        "POST",
        "/courier",
        &[("Authorization", &auth)],
        Some(ANN.as_bytes()),
    );
    assert_eq!(code, 201, "{created}");
    let id = body(&created)["id"].as_i64().expect("id");
    let pause = json!({"id": id, "status": "paused"}).to_string();
    assert_eq!(stand.call("PUT", "/courier", Some(&pause)).0, 401);
    assert_eq!(stand.call("DELETE", &format!("/courier/{id}"), None).0, 401);
    assert_eq!(stand.json(&format!("/courier/{id}"))["status"], "available");
    let (code, _) = call(
        &stand.addr,
        "PUT",
        "/courier",
        &[("Authorization", &auth)],
        Some(pause.as_bytes()),
    );
    assert_eq!(code, 200);
    // Reads stay open; the page learns that a token is needed.
    assert_eq!(stand.json(&format!("/courier/{id}"))["status"], "paused");
    assert_eq!(stand.json("/about")["token_required"], true);
    let (code, _) = call(
        &stand.addr,
        "DELETE",
        &format!("/courier/{id}"),
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(code, 200);
    let log = stand.service.log_text();
    assert!(log.contains("changes need the API token"), "{log}");
    assert!(!log.contains(token), "the token reached the log");
}

#[test]
fn a_client_that_never_reads_its_answer_holds_no_handler() {
    // Requests whose answers are never read (HTTP/1.0: one request per connection) must not
    // stop others: connection threads write the answers, not handlers (docs/http-api.md,
    // "Threads and slow clients").
    let Some(stand) = ApiStand::start(1, &[]) else {
        return;
    };
    let mut quiet = Vec::new();
    for _ in 0..(2 * service_courier::api::HANDLER_THREADS) {
        let mut s = TcpStream::connect(&stand.addr).expect("connect");
        s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            .expect("send");
        quiet.push(s);
    }
    let mut s = TcpStream::connect(&stand.addr).expect("connect");
    s.write_all(b"GET /ping HTTP/1.0\r\n\r\n").expect("send");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let started = std::time::Instant::now();
    let (code, text) = read_response(&mut s);
    assert_eq!(code, 200, "after {:?}: {text:?}", started.elapsed());
}

/// The order's JSON from `/orders/{id}`, or `None` while it is not found.
fn order(stand: &ApiStand, id: &str) -> Option<Value> {
    let (code, text) = stand.call("GET", &format!("/orders/{id}"), None);
    (code == 200).then(|| body(&text))
}

/// `POST path` with a JSON body: (status code, parsed body).
fn post(stand: &ApiStand, path: &str, payload: &Value) -> (u16, Value) {
    let (code, text) = stand.call("POST", path, Some(&payload.to_string()));
    (code, body(&text))
}

/// Hires an available courier with `transport`; returns their id.
fn hire(stand: &ApiStand, n: u32, transport: &str) -> i64 {
    let c = json!({"name": format!("C{n}"), "phone": format!("+7999200{n:04}"),
                   "transport_type": transport});
    let (code, created) = post(stand, "/courier", &c);
    assert_eq!(code, 201, "{created}");
    created["id"].as_i64().expect("id")
}

/// Waits until the service has consumed `n` events in all (one partition: in order).
fn wait_consumed(stand: &ApiStand, n: u64) {
    wait_until(
        Duration::from_secs(60),
        &format!("{n} events consumed"),
        || stand.json("/pipeline")["events_consumed_total"].as_u64() >= Some(n),
    );
}

fn rfc3339(v: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("not RFC 3339 ({e}): {v}"))
        .with_timezone(&chrono::Utc)
}

#[test]
fn delivery_routes_assign_and_unassign_in_the_course_shapes() {
    let Some(stand) = ApiStand::start(1, &[]) else {
        return;
    };
    // No courier: 409, and nothing is written (the order is not queued).
    let (code, text) = post(&stand, "/delivery/assign", &json!({"order_id": "d-1"}));
    assert_eq!(
        (code, text),
        (409, json!({"error": "No available couriers"}))
    );
    assert_eq!(order(&stand, "d-1"), None);
    let rows: i64 = stand
        .db
        .client()
        .query_one("SELECT count(*) FROM orders", &[])
        .expect("query")
        .get(0);
    assert_eq!(rows, 0, "a refused assignment wrote an order");

    let car = hire(&stand, 1, "car");
    let before = chrono::Utc::now();
    // Unknown fields are ignored, as Go's encoding/json ignores them.
    let (code, assigned) = post(
        &stand,
        "/delivery/assign",
        &json!({"order_id": "d-1", "note": "ring twice"}),
    );
    let after = chrono::Utc::now();
    assert_eq!(code, 200, "{assigned}");
    let keys: Vec<&String> = assigned.as_object().expect("object").keys().collect();
    assert_eq!(
        keys,
        [
            "courier_id",
            "delivery_deadline",
            "order_id",
            "transport_type"
        ]
    );
    assert_eq!(
        (
            assigned["courier_id"].clone(),
            assigned["order_id"].clone(),
            assigned["transport_type"].clone()
        ),
        (json!(car), json!("d-1"), json!("car"))
    );
    let deadline = rfc3339(&assigned["delivery_deadline"]);
    let window = chrono::Duration::minutes(5);
    assert!(
        deadline >= before - chrono::Duration::milliseconds(1) + window
            && deadline <= after + window,
        "deadline {deadline} is not the wall clock of the call plus 5 min ({before}..{after})"
    );
    // The store says the same: assigned to that courier, that deadline.
    let o = order(&stand, "d-1").expect("d-1 stored");
    assert_eq!(
        (o["state"].clone(), o["courier_id"].clone()),
        (json!("assigned"), json!(car))
    );
    assert_eq!(rfc3339(&o["deadline"]), deadline);
    assert_eq!(rfc3339(&o["deadline"]) - rfc3339(&o["assigned_at"]), window);
    assert_eq!(o["completed_by"], Value::Null);
    let stats = stand.json("/stats");
    assert_eq!(rfc3339(&stats["couriers"][0]["deadline"]), deadline);
    assert_eq!(stats["overdue_deliveries"], 0);

    // Already assigned: 409; no courier left for another order: 409.
    let (code, text) = post(&stand, "/delivery/assign", &json!({"order_id": "d-1"}));
    assert_eq!(code, 409, "{text}");
    assert!(
        text["error"]
            .as_str()
            .is_some_and(|e| e.contains("already assigned")),
        "{text}"
    );
    let (code, text) = post(&stand, "/delivery/assign", &json!({"order_id": "d-2"}));
    assert_eq!(
        (code, text),
        (409, json!({"error": "No available couriers"}))
    );

    // Unassign: the course's shape; the order is cancelled, the courier free.
    let (code, text) = post(&stand, "/delivery/unassign", &json!({"order_id": " d-1 "}));
    assert_eq!(
        (code, text),
        (
            200,
            json!({"order_id": "d-1", "status": "unassigned", "courier_id": car})
        )
    );
    assert_eq!(order(&stand, "d-1").expect("d-1")["state"], "cancelled");
    assert_eq!(
        stand.json(&format!("/courier/{car}"))["status"],
        "available"
    );
    assert_eq!(stand.json("/stats")["couriers"][0]["deadline"], Value::Null);
    // Cancelled: no delivery to undo (404), and it can't be assigned again (409, says why).
    let (code, text) = post(&stand, "/delivery/unassign", &json!({"order_id": "d-1"}));
    assert_eq!(code, 404, "{text}");
    let (code, text) = post(&stand, "/delivery/assign", &json!({"order_id": "d-1"}));
    assert_eq!(code, 409, "{text}");
    assert!(
        text["error"]
            .as_str()
            .is_some_and(|e| e.contains("cancelled")),
        "{text}"
    );
    // Never seen: 404.
    let (code, text) = post(&stand, "/delivery/unassign", &json!({"order_id": "nobody"}));
    assert_eq!(code, 404, "{text}");
    assert!(text["error"].is_string());

    // A JSON integer is its decimal string, as in events.
    let (code, text) = post(&stand, "/delivery/assign", &json!({"order_id": 42}));
    assert_eq!(
        (code, text["order_id"].clone()),
        (200, json!("42")),
        "{text}"
    );
    // Completed: unassign and assign are refused with 409, naming the state.
    kcat_produce(&stand.brokers, &stand.topic, &[event("42", "completed")]);
    wait_until(Duration::from_secs(60), "order 42 completed", || {
        order(&stand, "42").is_some_and(|o| o["state"] == "completed")
    });
    assert_eq!(order(&stand, "42").expect("42")["completed_by"], "event");
    for route in ["/delivery/unassign", "/delivery/assign"] {
        let (code, text) = post(&stand, route, &json!({"order_id": "42"}));
        assert_eq!(code, 409, "{route}: {text}");
        assert!(
            text["error"]
                .as_str()
                .is_some_and(|e| e.contains("completed")),
            "{text}"
        );
    }
    assert_eq!(
        stand.json(&format!("/courier/{car}"))["status"],
        "available"
    );

    // A waiting order has no delivery to undo: 404.
    let pause = json!({"id": car, "status": "paused"}).to_string();
    assert_eq!(stand.call("PUT", "/courier", Some(&pause)).0, 200);
    kcat_produce(&stand.brokers, &stand.topic, &[event("w-1", "created")]);
    wait_until(Duration::from_secs(60), "w-1 waiting", || {
        order(&stand, "w-1").is_some_and(|o| o["state"] == "waiting")
    });
    let (code, text) = post(&stand, "/delivery/unassign", &json!({"order_id": "w-1"}));
    assert_eq!(code, 404, "{text}");
    assert_eq!(order(&stand, "w-1").expect("w-1")["state"], "waiting");

    // Bad input: 400 with a message; nothing changes.
    for bad in [
        "{not json",
        "[]",
        "{}",
        r#"{"order_id":null}"#,
        r#"{"order_id":""}"#,
        r#"{"order_id":"   "}"#,
        r#"{"order_id":true}"#,
        r#"{"order_id":1.5}"#,
        r#"{"order_id":["a"]}"#,
        r#"{"order_id":"a\u0001b"}"#,
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([json!({"order_id": "x".repeat(129)}).to_string()])
    {
        for route in ["/delivery/assign", "/delivery/unassign"] {
            let (code, text) = stand.call("POST", route, Some(&bad));
            assert_eq!(code, 400, "{route} {bad}: {text}");
            assert!(body(&text)["error"].is_string(), "{route} {bad}: {text}");
        }
    }
    // Another method: 405 with Allow.
    for route in ["/delivery/assign", "/delivery/unassign"] {
        let (code, head, text) = call_with_head(&stand.addr, "GET", route, &[], None);
        assert_eq!(code, 405, "{text}");
        assert_eq!(header(&head, "Allow").as_deref(), Some("POST"), "{head}");
    }
    stand
        .db
        .repo
        .snapshot()
        .expect("snapshot")
        .check_invariants()
        .expect("invariants");
}

#[test]
fn delivery_routes_and_kafka_events_share_one_state_machine() {
    let Some(stand) = ApiStand::start(1, &[]) else {
        return;
    };
    let produce = |lines: &[String]| kcat_produce(&stand.brokers, &stand.topic, lines);
    let mut consumed = 0;
    let c = hire(&stand, 1, "scooter");

    // A: assigned by the route; its `created` event is then a duplicate; `completed` counts.
    let (code, a) = post(&stand, "/delivery/assign", &json!({"order_id": "A"}));
    assert_eq!(code, 200, "{a}");
    let assigned = order(&stand, "A").expect("A");
    produce(&[event("A", "created")]);
    consumed += 1;
    wait_consumed(&stand, consumed);
    assert_eq!(
        order(&stand, "A").expect("A"),
        assigned,
        "created after the route changed A"
    );
    produce(&[event("A", "completed")]);
    consumed += 1;
    wait_until(Duration::from_secs(60), "A completed", || {
        order(&stand, "A").is_some_and(|o| o["state"] == "completed")
    });
    let done = order(&stand, "A").expect("A");
    assert_eq!(
        (done["courier_id"].clone(), done["completed_by"].clone()),
        (json!(c), json!("event"))
    );
    assert_eq!(stand.json("/stats")["completed_deliveries"], 1);

    // X takes the only courier. B, refused by the route, is not queued; its `created` event
    // queues it as usual.
    assert_eq!(
        post(&stand, "/delivery/assign", &json!({"order_id": "X"})).0,
        200
    );
    let (code, text) = post(&stand, "/delivery/assign", &json!({"order_id": "B"}));
    assert_eq!(
        (code, text),
        (409, json!({"error": "No available couriers"}))
    );
    assert_eq!(order(&stand, "B"), None);
    produce(&[event("B", "created")]);
    consumed += 1;
    wait_until(Duration::from_secs(60), "B waiting", || {
        order(&stand, "B").is_some_and(|o| o["state"] == "waiting")
    });
    assert_eq!(stand.json("/queue")["count"], 1);
    // Unassigning X frees the courier, who takes B in the same transaction.
    let (code, text) = post(&stand, "/delivery/unassign", &json!({"order_id": "X"}));
    assert_eq!(
        (code, text["courier_id"].clone()),
        (200, json!(c)),
        "{text}"
    );
    let b = order(&stand, "B").expect("B");
    assert_eq!(
        (b["state"].clone(), b["courier_id"].clone()),
        (json!("assigned"), json!(c))
    );
    assert_eq!(stand.json("/queue")["count"], 0);
    // X's `cancelled` event (and a late `created`) do nothing: X stays cancelled, B stays put.
    produce(&[event("X", "cancelled"), event("X", "created")]);
    consumed += 2;
    wait_consumed(&stand, consumed);
    assert_eq!(order(&stand, "X").expect("X")["state"], "cancelled");
    assert_eq!(order(&stand, "B").expect("B"), b);
    // B completes by its event and counts; X never counts.
    produce(&[event("B", "completed")]);
    wait_until(Duration::from_secs(60), "B completed", || {
        order(&stand, "B").is_some_and(|o| o["state"] == "completed")
    });
    let stats = stand.json("/stats");
    assert_eq!(stats["completed_deliveries"], 2);
    assert_eq!(stats["couriers"][0]["status"], "available");
    let rows: i64 = stand
        .db
        .client()
        .query_one(
            "SELECT count(*) FROM courier_orders WHERE order_id = 'X'",
            &[],
        )
        .expect("query")
        .get(0);
    assert_eq!(rows, 0, "X's delivery row stayed");
    stand
        .db
        .repo
        .snapshot()
        .expect("snapshot")
        .check_invariants()
        .expect("invariants");
}

#[test]
fn an_overdue_delivery_is_counted_and_its_courier_shows_the_deadline() {
    let Some(stand) = ApiStand::start(1, &[]) else {
        return;
    };
    let c = hire(&stand, 1, "on_foot");
    let other = hire(&stand, 2, "car");
    // The event's created_at (2025-08-06T12:00:00Z) stamps the assignment: long overdue.
    kcat_produce(&stand.brokers, &stand.topic, &[event("late", "created")]);
    wait_until(Duration::from_secs(60), "late assigned", || {
        order(&stand, "late").is_some_and(|o| o["state"] == "assigned")
    });
    // The route stamps the wall clock: due in 5 or 30 minutes.
    assert_eq!(
        post(&stand, "/delivery/assign", &json!({"order_id": "fresh"})).0,
        200
    );
    let stats = stand.json("/stats");
    assert_eq!(stats["overdue_deliveries"], 1, "{stats}");
    let late = order(&stand, "late").expect("late");
    let fresh = order(&stand, "fresh").expect("fresh");
    for line in stats["couriers"].as_array().expect("couriers") {
        let carried = if line["active_order"] == "late" {
            &late
        } else {
            &fresh
        };
        assert_eq!(line["deadline"], carried["deadline"], "{line}");
        assert_eq!(line["id"], carried["courier_id"]);
    }
    assert!(rfc3339(&late["deadline"]) < chrono::Utc::now());
    assert!(rfc3339(&fresh["deadline"]) > chrono::Utc::now());
    assert!([c, other].contains(&late["courier_id"].as_i64().unwrap_or(0)));
    // Ended, it is no longer overdue.
    kcat_produce(&stand.brokers, &stand.topic, &[event("late", "completed")]);
    wait_until(Duration::from_secs(60), "late completed", || {
        stand.json("/stats")["overdue_deliveries"] == 0
    });
    assert_eq!(
        order(&stand, "late").expect("late")["completed_by"],
        "event"
    );
}

#[test]
fn errors_carry_their_headers_and_tokens_take_any_case_of_bearer() {
    let token = "Tok-en-0123456789";
    let Some(stand) = ApiStand::start(1, &[("API_TOKEN", token.into())]) else {
        return;
    };
    // 405: Allow lists the methods of the path.
    for (method, path, allow) in [
        ("DELETE", "/couriers", "GET"),
        ("PATCH", "/courier", "POST, PUT"),
        ("POST", "/courier/1", "GET, DELETE"),
        ("POST", "/healthcheck", "HEAD, GET"),
        ("PUT", "/delivery/assign", "POST"),
        ("POST", "/", "GET, HEAD"),
    ] {
        let (code, head, text) = call_with_head(&stand.addr, method, path, &[], None);
        assert_eq!(code, 405, "{method} {path}: {text}");
        assert_eq!(
            header(&head, "Allow").as_deref(),
            Some(allow),
            "{method} {path}"
        );
        assert!(body(&text)["error"].is_string());
    }
    // 401: the challenge names the scheme and the realm, on every route that needs the token.
    let assign = json!({"order_id": "t-1"}).to_string();
    for (method, path, payload) in [
        ("POST", "/courier", Some(ANN.to_owned())),
        (
            "PUT",
            "/courier",
            Some(r#"{"id":1,"status":"paused"}"#.to_owned()),
        ),
        ("DELETE", "/courier/1", None),
        ("POST", "/delivery/assign", Some(assign.clone())),
        ("POST", "/delivery/unassign", Some(assign.clone())),
    ] {
        for auth in [
            None,
            Some(format!("Bearer {}", token.to_lowercase())),
            Some(token.to_owned()),
        ] {
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("Authorization", a.as_str())).collect();
            let (code, head, text) = call_with_head(
                &stand.addr,
                method,
                path,
                &headers,
                payload.as_deref().map(str::as_bytes),
            );
            assert_eq!(code, 401, "{method} {path} with {auth:?}: {text}");
            assert_eq!(
                header(&head, "WWW-Authenticate").as_deref(),
                Some(r#"Bearer realm="service-courier""#),
                "{method} {path}"
            );
            assert!(body(&text)["error"].is_string());
        }
    }
    // The scheme in any case; the token exactly.
    let mut id = 0;
    for (n, scheme) in ["bearer", "BEARER", "Bearer"].iter().enumerate() {
        let auth = format!("{scheme} {token}");
        let c = ANN.replace("0001", &format!("000{}", n + 6));
        let (code, text) = call(
            &stand.addr,
            "POST",
            "/courier",
            &[("Authorization", &auth)],
            Some(c.as_bytes()),
        );
        assert_eq!(code, 201, "{scheme}: {text}");
        id = body(&text)["id"].as_i64().expect("id");
    }
    let auth = format!("bearer {token}");
    let (code, text) = call(
        &stand.addr,
        "POST",
        "/delivery/assign",
        &[("Authorization", &auth)],
        Some(assign.as_bytes()),
    );
    assert_eq!(code, 200, "{text}");
    let (code, text) = call(
        &stand.addr,
        "POST",
        "/delivery/unassign",
        &[("Authorization", &auth)],
        Some(assign.as_bytes()),
    );
    assert_eq!(code, 200, "{text}");
    assert!(id > 0);
}

#[test]
fn a_request_that_does_not_parse_is_refused_with_json_and_the_service_stays_up() {
    // What cannot be read as a request (a garbage request line, a malformed header, a version
    // other than HTTP/1, a head too large, a framing or expectation we do not serve) is
    // refused by the server itself (src/ops/http1), with `{"error": ...}` as every other
    // refusal, and the connection is closed (the reads below end).
    let Some(stand) = ApiStand::start(1, &[]) else {
        return;
    };
    let huge = format!(
        "GET /ping HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let cases: Vec<(&[u8], u16)> = vec![
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET\r\n\r\n", 400),
        (b"GET /\r\n\r\n", 400),
        (b"GET /ping HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET / HTTP/9.9\r\n\r\n", 505),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
        (huge.as_bytes(), 431),
        (
            concat!(
                "POST /courier HTTP/1.1\r\nHost: x\r\n",
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            .as_bytes(),
            400,
        ),
        (
            b"POST /courier HTTP/1.1\r\nHost: x\r\nContent-Length: five\r\n\r\n",
            400,
        ),
        (
            b"POST /courier HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
        ),
        (
            b"POST /courier HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\n\r\n",
            417,
        ),
    ];
    for (wire, expected) in cases {
        let shown = String::from_utf8_lossy(&wire[..wire.len().min(60)]).into_owned();
        let mut s = TcpStream::connect(&stand.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        s.write_all(wire).expect("send");
        let (code, head, text) = common::api::read_response_with_head(&mut s);
        assert_eq!(code, expected, "{shown:?}: {head}");
        assert_eq!(
            header(&head, "Content-Type").as_deref(),
            Some("application/json"),
            "{shown:?}: {head}"
        );
        assert_eq!(
            header(&head, "Connection").as_deref(),
            Some("close"),
            "{head}"
        );
        assert!(body(&text)["error"].is_string(), "{shown:?}: {text}");
    }
    // A chunked body whose framing breaks reaches the route, which says so in JSON (400).
    let mut s = TcpStream::connect(&stand.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(b"POST /courier HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        .expect("send");
    let (code, text) = read_response(&mut s);
    assert_eq!(code, 400, "{text}");
    assert!(
        body(&text)["error"]
            .as_str()
            .is_some_and(|e| e.contains("chunk")),
        "{text}"
    );
    // Anything with a method, a path and a version reaches us, and every error of ours is JSON.
    let (code, text) = stand.call("BREW", "/ping", None);
    assert_eq!(code, 405, "{text}");
    assert!(body(&text)["error"].is_string());
    assert_eq!(stand.call("GET", "/ping", None).0, 200);
    assert!(!stand.service.log_text().contains("panicked"));
}

/// Reads one response from a connection that stays open: (status code, head, body). The body
/// is Content-Length bytes, none when `head_only` (the answer to HEAD).
fn read_one(reader: &mut BufReader<TcpStream>, head_only: bool) -> (u16, String, String) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("read a head line");
        assert!(n > 0, "the connection closed inside a head: {head:?}");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let length: usize = header(&head, "Content-Length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut text = vec![0; if head_only { 0 } else { length }];
    reader.read_exact(&mut text).expect("read the body");
    (code, head, String::from_utf8_lossy(&text).into_owned())
}

/// One connection to the stand's API: where requests are written, and where answers are read
/// (patiently: the machine may be busy).
fn open_connection(stand: &ApiStand) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(&stand.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let writer = s.try_clone().expect("clone");
    (writer, BufReader::new(s))
}

#[test]
fn one_connection_carries_pipelined_chunked_and_expecting_requests_until_close() {
    let Some(stand) = ApiStand::start(1, &[]) else {
        return;
    };
    let (mut writer, mut reader) = open_connection(&stand);
    // Two requests in one write: answered in order, the connection kept (HTTP/1.1).
    writer
        .write_all(
            concat!(
                "GET /ping HTTP/1.1\r\nHost: x\r\n\r\n",
                "GET /about HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            .as_bytes(),
        )
        .expect("send");
    let (code, head, text) = read_one(&mut reader, false);
    assert_eq!(
        (code, body(&text)),
        (200, json!({"message": "pong"})),
        "{head}"
    );
    assert_eq!(header(&head, "Connection"), None, "{head}");
    let (code, _, text) = read_one(&mut reader, false);
    assert_eq!(code, 200);
    assert_eq!(body(&text)["service"], "service-courier");
    // A chunked body, in two chunks with an extension, and a trailer.
    let (first, second) = ANN.split_at(10);
    let chunked = format!(
        "POST /courier HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n{:x};ext=1\r\n{second}\r\n0\r\n\
         X-Trailer: t\r\n\r\n",
        first.len(),
        second.len()
    );
    writer.write_all(chunked.as_bytes()).expect("send");
    let (code, head, text) = read_one(&mut reader, false);
    assert_eq!(code, 201, "{head}{text}");
    let id = body(&text)["id"].as_i64().expect("id");
    // Expect: 100-continue: the body goes after the interim answer.
    let patch = format!(r#"{{"id":{id},"status":"paused"}}"#);
    writer
        .write_all(
            format!(
                "PUT /courier HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\
                 Content-Length: {}\r\n\r\n",
                patch.len()
            )
            .as_bytes(),
        )
        .expect("send");
    let (code, head, _) = read_one(&mut reader, false);
    assert_eq!(code, 100, "{head}");
    writer.write_all(patch.as_bytes()).expect("send");
    let (code, _, text) = read_one(&mut reader, false);
    assert_eq!(code, 200, "{text}");
    // HEAD: the length GET would have, and no body (the next answer starts right after).
    writer
        .write_all(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let (code, head, _) = read_one(&mut reader, true);
    assert_eq!(code, 200, "{head}");
    let page_length: usize = header(&head, "Content-Length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    assert!(page_length > 1000, "{head}");
    // `Connection: close`: answered, then closed.
    writer
        .write_all(
            format!("GET /courier/{id} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .expect("send");
    let (code, head, text) = read_one(&mut reader, false);
    assert_eq!(code, 200, "{head}");
    assert_eq!(body(&text)["status"], "paused");
    assert_eq!(header(&head, "Connection").as_deref(), Some("close"));
    let mut rest = Vec::new();
    assert_eq!(reader.read_to_end(&mut rest).ok(), Some(0), "{rest:?}");
    // HTTP/1.0 closes after one answer unless it asks to keep alive.
    let (mut writer, mut reader) = open_connection(&stand);
    writer
        .write_all(
            b"GET /ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /ping HTTP/1.0\r\n\r\n",
        )
        .expect("send");
    let (code, head, _) = read_one(&mut reader, false);
    assert_eq!(code, 200);
    assert_eq!(header(&head, "Connection").as_deref(), Some("keep-alive"));
    let (code, head, _) = read_one(&mut reader, false);
    assert_eq!(code, 200);
    assert_eq!(header(&head, "Connection").as_deref(), Some("close"));
    assert_eq!(reader.read_to_end(&mut rest).ok(), Some(0));
}

#[test]
fn a_port_in_use_is_named_with_its_variable_and_exits_2() {
    let Some(db) = common::TestDb::new(1) else {
        return;
    };
    let Some(brokers) = common::kafka_brokers() else {
        return;
    };
    for variable in ["HTTP_ADDR", "METRICS_ADDR"] {
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = held.local_addr().expect("addr").to_string();
        let mut service = common::Service::start(&[
            ("DATABASE_URL", db.url.clone()),
            ("KAFKA_BROKERS", brokers.clone()),
            ("KAFKA_ORDER_TOPIC", common::unique("port")),
            (variable, addr.clone()),
        ]);
        let code = service.wait(Duration::from_secs(60));
        let log = service.log_text();
        assert_eq!(code, Some(2), "{variable}: {log}");
        let want = format!(
            "{variable}={addr}: address already in use: another program listens there (another \
             service-courier? service-order listens on 8080); choose another port with {variable}"
        );
        assert!(log.contains(&want), "{variable}: no {want:?} in\n{log}");
        drop(held);
    }
}
