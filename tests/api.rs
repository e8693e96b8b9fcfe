//! The HTTP API against the real binary, real PostgreSQL and real Kafka: every route with good
//! and bad input, each error code, a slow client, pause/resume racing event traffic, and a
//! token-protected run.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::api::{call, read_response, ApiStand};
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
        (
            "POST",
            "/courier".into(),
            Some(ANN.replace(r#""name""#, r#""age":3,"name""#)),
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
            Some(json!({"id": id, "nickname": "x"}).to_string()),
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
    assert_eq!(stand.call("PUT", "/courier", Some(&clash)).0, 409);
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
    // Every stalled client is cut off in the end: a body with 408, a head by closing.
    for mut s in stalled {
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let (code, _) = read_response(&mut s);
        assert!(code == 408 || code == 0, "a stalled client got {code}");
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
    // stop others. (Idle HTTP/1.1 keep-alive connections are tiny_http's to hold: see the
    // README section "HTTP API".)
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
