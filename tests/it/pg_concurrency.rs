//! Real PostgreSQL under concurrency: 8 threads apply `created` for 2,000 distinct orders
//! against 100 couriers. Exactly 100 are assigned, 1,900 wait in arrival order, no courier is
//! taken twice; completing the 100 hands the couriers the next 100 in FIFO order. Also: racing
//! pairing passes, a lock held by someone else bounded by `DB_LOCK_TIMEOUT_MS` directly and
//! through PgBouncer in transaction mode, and a new order committed meanwhile that must not
//! make a write wait on a third transaction.

use crate::common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use common::pgbouncer::PooledDb;
use common::{at, completed_deliveries, courier, event, TestDb};
use service_courier::domain::{CourierStatus, OrderId, TransportType};
use service_courier::repository::postgres::{Pooler, TransactionLimits};
use service_courier::repository::{CourierRepository, OrderState, PgRepository, RepoError};
use service_courier::usecase::couriers::{self, CourierCommandError};
use service_courier::usecase::{OrderEventProcessor, Outcome, Release};

const THREADS: usize = 8;
const ORDERS: usize = 2000;
const COURIERS: u32 = 100;

#[test]
fn eight_threads_2000_orders_100_couriers() {
    let Some(db) = TestDb::new(THREADS as u32) else {
        return;
    };
    for n in 0..COURIERS {
        couriers::add(
            &db.repo,
            &courier(n, TransportType::ALL[n as usize % 3]),
            at(n as i64),
        )
        .expect("hire");
    }
    let p = Arc::new(OrderEventProcessor::new(db.repo.clone()));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let p = Arc::clone(&p);
            std::thread::spawn(move || {
                // Each thread sends its orders in its own arrival order.
                (0..ORDERS)
                    .filter(|i| i % THREADS == t)
                    .map(|i| {
                        let e = event(&format!("o{i:04}"), "created", 1000 + i as i64);
                        let out = p.apply(&e).expect("apply");
                        (e.order_id, out)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut outcomes: Vec<(OrderId, Outcome)> = Vec::new();
    for h in handles {
        outcomes.extend(h.join().expect("thread"));
    }

    let assigned: Vec<_> = outcomes
        .iter()
        .filter_map(|(o, out)| match out {
            Outcome::Assigned(c) => Some((o.clone(), *c)),
            _ => None,
        })
        .collect();
    let waiting = outcomes
        .iter()
        .filter(|(_, o)| *o == Outcome::Waiting)
        .count();
    assert_eq!(assigned.len(), COURIERS as usize);
    assert_eq!(waiting, ORDERS - COURIERS as usize);
    let distinct: BTreeSet<_> = assigned.iter().map(|(_, c)| *c).collect();
    assert_eq!(
        distinct.len(),
        COURIERS as usize,
        "a courier was taken twice"
    );

    let snap = db.repo.snapshot().expect("snapshot");
    snap.check_invariants().expect("invariants");
    assert!(snap
        .couriers
        .iter()
        .all(|c| c.status == CourierStatus::Busy));
    assert_eq!(snap.waiting.len(), ORDERS - COURIERS as usize);
    // Arrival order: each thread's orders wait in the order that thread sent them.
    let place: HashMap<&OrderId, usize> = snap
        .waiting
        .iter()
        .enumerate()
        .map(|(i, o)| (o, i))
        .collect();
    for t in 0..THREADS {
        let mine: Vec<usize> = (0..ORDERS)
            .filter(|i| i % THREADS == t)
            .filter_map(|i| place.get(&common::oid(&format!("o{i:04}"))).copied())
            .collect();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "thread {t}'s orders wait out of order"
        );
    }

    // Completing the 100 assigned hands each courier the next waiting order, first come first.
    let queue = snap.waiting.clone();
    for (k, (order, courier)) in assigned.iter().enumerate() {
        let out = p
            .apply(&event(order.as_str(), "completed", 5000 + k as i64))
            .expect("complete");
        assert_eq!(
            out,
            Outcome::Completed(Some(Release {
                courier: *courier,
                took: Some(queue[k].clone())
            }))
        );
    }
    let snap = db.repo.snapshot().expect("snapshot");
    snap.check_invariants().expect("invariants");
    assert_eq!(snap.waiting, queue[COURIERS as usize..].to_vec());
    for o in &queue[..COURIERS as usize] {
        assert!(
            matches!(snap.orders[o], OrderState::Assigned(_)),
            "{o} not assigned"
        );
    }
    assert_eq!(snap.statistics().values().sum::<i64>(), COURIERS as i64);
}

#[test]
fn concurrent_releases_and_waits_never_strand_an_order() {
    // Orders arrive while others complete: an order must never wait beside a free courier.
    let Some(db) = TestDb::new(THREADS as u32) else {
        return;
    };
    for n in 0..10 {
        couriers::add(&db.repo, &courier(n, TransportType::Car), at(0)).expect("hire");
    }
    let p = Arc::new(OrderEventProcessor::new(db.repo.clone()));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let p = Arc::clone(&p);
            std::thread::spawn(move || {
                for i in 0..60 {
                    let id = format!("t{t}-{i}");
                    p.apply(&event(&id, "created", 10 + i)).expect("create");
                    if i >= 2 {
                        let old = format!("t{t}-{}", i - 2);
                        let status = if i % 3 == 0 { "cancelled" } else { "completed" };
                        p.apply(&event(&old, status, 10 + i)).expect("end");
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    // Two passes racing can both skip a pair (see the next test); the service's timer runs a
    // pass every second for that. This is the pass after the last commit.
    p.pair_waiting(at(1000));
    let snap = db.repo.snapshot().expect("snapshot");
    snap.check_invariants().expect("invariants");
    // Whatever the interleaving: every ended order is in its end state, and the 16 still open
    // (two per thread) hold all 10 couriers, the other 6 wait.
    let mut open = Vec::new();
    for t in 0..THREADS {
        for i in 0..60 {
            let id = common::oid(&format!("t{t}-{i}"));
            let state = &snap.orders[&id];
            match i {
                58.. => open.push(state.clone()),
                _ if (i + 2) % 3 == 0 => assert_eq!(*state, OrderState::Cancelled, "{id}"),
                _ => assert!(matches!(state, OrderState::Completed(_)), "{id}: {state:?}"),
            }
        }
    }
    let assigned = open
        .iter()
        .filter(|s| matches!(s, OrderState::Assigned(_)))
        .count();
    let waiting = open.iter().filter(|s| **s == OrderState::Waiting).count();
    assert_eq!((assigned, waiting), (10, 6));
    assert!(snap
        .couriers
        .iter()
        .all(|c| c.status == CourierStatus::Busy));
    let completed_by_courier = completed_deliveries(&snap);
    assert!(completed_by_courier > 0, "no delivery was completed");
}

#[test]
fn a_pair_that_two_racing_passes_both_skip_is_healed_by_the_timed_pass() {
    // Found by the fault suite: pass A holds the head of the queue X (it found no courier) while
    // B's `completed Y` frees courier C, skips X and commits, and B's own pass skips X again.
    // When A commits, X waits beside C with no pass left; the timed pass (every second in the
    // service) must pair them.
    use std::sync::mpsc;
    let Some(db) = TestDb::new(4) else { return };
    let c = couriers::add(&db.repo, &courier(1, TransportType::Car), at(0))
        .expect("hire")
        .id;
    let p = OrderEventProcessor::new(db.repo.clone());
    assert_eq!(
        p.apply(&event("Y", "created", 10)).expect("Y"),
        Outcome::Assigned(c)
    );
    assert_eq!(
        p.apply(&event("X", "created", 11)).expect("X"),
        Outcome::Waiting
    );

    let (held_tx, held_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let a_repo = db.repo.clone();
    let a = std::thread::spawn(move || {
        a_repo
            .transaction(&mut |tx| {
                let head = tx.next_waiting_order()?; // locks X
                let courier = tx.take_available_courier()?; // C is busy: none
                assert_eq!(
                    (head.map(|o| o.to_string()), courier),
                    (Some("X".into()), None)
                );
                held_tx.send(()).expect("signal");
                go_rx.recv().expect("go");
                Ok(())
            })
            .expect("pass A");
    });
    held_rx.recv().expect("A holds X");
    let freed = p.apply(&event("Y", "completed", 12)).expect("complete Y");
    assert_eq!(
        freed,
        Outcome::Completed(Some(Release {
            courier: c,
            took: None
        }))
    );
    go_tx.send(()).expect("go");
    a.join().expect("thread A");
    let stranded = db.repo.snapshot().expect("snapshot");
    stranded.check_consistency().expect("consistent");
    assert_eq!(
        stranded.waiting,
        vec![common::oid("X")],
        "the race did not happen"
    );

    p.pair_waiting(at(13)); // what the service's timer runs every second
    let healed = db.repo.snapshot().expect("snapshot");
    healed.check_invariants().expect("healed");
    assert_eq!(healed.orders[&common::oid("X")], OrderState::Assigned(c));
}

/// Bounds with a short lock wait.
fn short_lock_wait() -> TransactionLimits {
    TransactionLimits {
        lock_ms: 300,
        ..TransactionLimits::default()
    }
}

/// While `locker` holds the `couriers` table, hiring through `repo` must fail within its lock
/// bound, as a transient error (retried by its caller). The locker lets go after a minute at the
/// latest, so a bound that did not apply fails this check (the hire succeeds) instead of hanging.
fn assert_lock_wait_is_bounded(repo: &PgRepository, mut locker: postgres::Client) {
    let (locked_tx, locked) = crossbeam_channel::bounded(1);
    let (release, release_rx) = crossbeam_channel::bounded::<()>(1);
    let holder = std::thread::spawn(move || {
        let mut tx = locker.transaction().expect("begin");
        tx.batch_execute("LOCK TABLE couriers IN ACCESS EXCLUSIVE MODE")
            .expect("lock");
        locked_tx.send(()).expect("the test waits");
        let _ = release_rx.recv_timeout(std::time::Duration::from_secs(60));
        tx.rollback().expect("rollback");
    });
    locked.recv().expect("the table is locked");
    let err = couriers::add(repo, &courier(1, TransportType::Car), at(0))
        .expect_err("the hire must give up waiting for the lock");
    release.send(()).expect("release");
    holder.join().expect("holder");
    match err {
        CourierCommandError::Repository(e @ RepoError::Transient(_)) => {
            assert!(e.to_string().contains("55P03"), "{e}")
        }
        other => panic!("expected a transient lock timeout, got {other}"),
    }
    // Nothing stayed locked or half-done: the same hire now works.
    couriers::add(repo, &courier(1, TransportType::Car), at(0)).expect("hire after the lock");
}

#[test]
fn a_held_lock_is_bounded_by_db_lock_timeout_directly_and_through_pgbouncer() {
    let Some(db) = TestDb::new(1) else {
        return;
    };
    let direct =
        PgRepository::new(db.config.clone(), 1).with_limits(short_lock_wait(), Pooler::None);
    assert_lock_wait_is_bounded(&direct, db.client());
    let Some(pooled) = PooledDb::new() else {
        return;
    };
    let through = PooledDb::repository_with(&pooled.url, 1, short_lock_wait());
    assert_lock_wait_is_bounded(&through, pooled.db.client());
}

#[test]
fn a_new_order_committed_meanwhile_fails_the_write_at_once_without_touching_its_delivery() {
    // Found by `migrations_restart` (a deadlock, one run in about twenty). B applies a duplicate
    // `created o`: it locked its orders before A committed o, so it holds o as new. C then
    // completes o and has written that, uncommitted. B's write can't insert o (A's row is
    // there). Trying to (the insert waits on C's update of that row), or inserting o's
    // delivery anyway (it waits on C's update of A's delivery), makes B wait on C; and C,
    // inserting its own new orders, may be waiting on one B inserted: a cycle. B's write must
    // fail at once instead, a transient failure that the retry turns into a duplicate. Without
    // either half of the fix in `WRITE_CHANGES` (`orders_new` leaves out orders committed
    // meanwhile, `delivered` inserts nothing unless every new order went in), B waits on C
    // until `DB_LOCK_TIMEOUT_MS` and this fails.
    use service_courier::repository::{BatchOutline, BatchStep, StepKind};
    use service_courier::usecase::factory::StatusHandler;
    use std::sync::mpsc;
    use std::time::Duration;
    let Some(db) = TestDb::new(4) else { return };
    let hired: Vec<_> = (1..=3)
        .map(|n| {
            couriers::add(&db.repo, &courier(n, TransportType::Car), at(n as i64))
                .expect("hire")
                .id
        })
        .collect();
    let o = common::oid("o");
    let outline = |kind| {
        BatchOutline::of_steps(vec![BatchStep {
            order: o.clone(),
            kind,
        }])
    };
    // Each transaction says where it stands, then waits for the test's go.
    let park = |name: &'static str| {
        let (reached_tx, reached) = mpsc::channel::<()>();
        let (go, go_rx) = mpsc::channel::<()>();
        let wait = move || {
            reached_tx.send(()).expect("the test waits");
            go_rx
                .recv()
                .unwrap_or_else(|_| panic!("{name}: the test gives the go"));
        };
        (wait, reached, go)
    };
    let deadline = Duration::from_secs(120);

    // A: `created o`, parked before its commit.
    let (a_wait, a_reached, a_go) = park("A");
    let (repo, a_outline, a_o) = (db.repo.clone(), outline(StepKind::Assign), o.clone());
    let a = std::thread::spawn(move || {
        repo.transaction(&mut |tx| {
            tx.lock_batch(&a_outline)?;
            let out = StatusHandler::Assign.handle(tx, &a_o, at(10))?;
            a_wait();
            Ok(out)
        })
    });
    a_reached.recv_timeout(deadline).expect("A assigned o");

    // B: the duplicate `created o` locks its batch while A's o is not yet committed.
    let (b_wait, b_reached, b_go) = park("B");
    let (repo, b_outline, b_o) = (db.repo.clone(), outline(StepKind::Assign), o.clone());
    let b = std::thread::spawn(move || {
        repo.transaction(&mut |tx| {
            tx.lock_batch(&b_outline)?;
            b_wait();
            StatusHandler::Assign.handle(tx, &b_o, at(10))
        })
    });
    b_reached
        .recv_timeout(deadline)
        .expect("B locked its batch");
    a_go.send(()).expect("A commits");
    let assigned = a.join().expect("thread A").expect("A commits");
    assert_eq!(assigned, Outcome::Assigned(hired[0]));

    // C: `completed o`, written (a step that reads the database writes what is pending first)
    // and parked before its commit.
    let (c_wait, c_reached, c_go) = park("C");
    let (repo, c_outline, c_o, other) =
        (db.repo.clone(), outline(StepKind::End), o.clone(), hired[2]);
    let c = std::thread::spawn(move || {
        repo.transaction(&mut |tx| {
            tx.lock_batch(&c_outline)?;
            let out = StatusHandler::Complete.handle(tx, &c_o, at(20))?;
            tx.lock_courier(other)?;
            c_wait();
            Ok(out)
        })
    });
    c_reached.recv_timeout(deadline).expect("C completed o");

    // B goes on while C is still open: its write must not wait on C.
    let (b_done_tx, b_done) = mpsc::channel();
    b_go.send(()).expect("B goes on");
    let b_watch = std::thread::spawn(move || {
        let result = b.join().expect("thread B");
        let _ = b_done_tx.send(result);
    });
    let b_result = b_done.recv_timeout(deadline);
    c_go.send(()).expect("C commits");
    let completed = c.join().expect("thread C").expect("C commits");
    b_watch.join().expect("watcher");
    match b_result {
        Ok(Err(e @ RepoError::Transient(_))) => assert!(
            e.to_string()
                .contains("inserted by another transaction meanwhile"),
            "B failed for another reason (a lock wait on C ended by DB_LOCK_TIMEOUT_MS?): {e}"
        ),
        Ok(other) => panic!("B's write should fail as transient, got {other:?}"),
        Err(_) => panic!("B's write waited on C's open transaction"),
    }
    assert_eq!(
        completed,
        Outcome::Completed(Some(Release {
            courier: hired[0],
            took: None
        }))
    );
    // Applied again, B's event is the duplicate it is.
    let p = OrderEventProcessor::new(db.repo.clone());
    assert_eq!(
        p.apply(&event("o", "created", 10)).expect("B again"),
        Outcome::Duplicate
    );
    let end = db.repo.snapshot().expect("snapshot");
    end.check_invariants().expect("consistent");
    assert_eq!(end.orders[&o], OrderState::Completed(Some(hired[0])));
}
