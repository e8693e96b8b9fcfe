//! Fair batches against real PostgreSQL (docs/rules.md, "Fair across workers and instances"): 4 workers apply batches
//! of 64 events at the same time, as the service's workers do, and the README's ranking ("the
//! best available courier") and queue ("first created, first served") must hold across them.
//! A transaction may pass over a better courier or an older waiting order only while another
//! transaction open at that moment holds it, and a transaction holds such a row only when one
//! of its events names it or one of its steps takes it. So every row passed over is taken (or
//! named) by a transaction that overlapped the one that passed it over; a row taken only after
//! that transaction ended, or never, was held by nobody and should have been its pick.
//!
//! Two phases: couriers taken by bursts of `created` (with the duplicates at-least-once delivery
//! brings), then a long queue served by couriers freed in bursts of completions (with endings
//! of orders never seen, and replayed endings). Batches that held a row per event, whatever
//! the event would do (before issue #21), fail both checks.

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{at, courier, event, TestDb};
use service_courier::dispatch::worker_for;
use service_courier::domain::{CourierId, OrderEvent, OrderId, TransportType};
use service_courier::repository::{CourierRepository, OrderState, PgRepository, RepoError};
use service_courier::usecase::{couriers, OrderEventProcessor, Outcome, Release};

const WORKERS: usize = 4;
const BATCH: usize = 64;
const COURIERS: u32 = 240;
/// Batches per worker in the first phase, each with this many new orders (the rest of the
/// batch replays their `created`): 192 of the 240 couriers are taken.
const BATCHES_A: usize = 8;
const NEW_PER_BATCH: usize = 6;
/// Orders waiting when the second phase starts, and its rounds: each round completes every
/// assigned order, whose couriers take 240 waiting orders (720 of 1,500 in all).
const QUEUE: usize = 1500;
const ROUNDS: usize = 3;
/// Completions of assigned orders per batch in the second phase; the rest of the batch ends
/// orders never seen, replays endings, creates orders that join the back of the queue, or
/// creates and cancels an order.
const FREED_PER_BATCH: usize = 10;

/// One batch as applied: when its call began and returned (its transaction, and any retry of
/// it, ran in between), its events and their outcomes.
struct Applied {
    start: Instant,
    end: Instant,
    outcomes: Vec<(OrderId, Outcome)>,
}

impl Applied {
    /// Whether this batch was open at some moment of `other`'s.
    fn overlaps(&self, other: &Applied) -> bool {
        self.start < other.end && other.start < self.end
    }
}

/// Applies one batch, retrying transient failures (deadlocks, conflicts) as the service does.
fn apply(p: &OrderEventProcessor<PgRepository>, batch: &[OrderEvent]) -> Applied {
    let events: Vec<&OrderEvent> = batch.iter().collect();
    let start = Instant::now();
    let mut backoff = Duration::from_millis(5);
    for _ in 0..200 {
        match p.apply_batch(&events) {
            Ok(outcomes) => {
                return Applied {
                    start,
                    end: Instant::now(),
                    outcomes: batch
                        .iter()
                        .map(|e| e.order_id.clone())
                        .zip(outcomes)
                        .collect(),
                }
            }
            Err(RepoError::Transient(e)) => {
                eprintln!("batch retried: {e}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
            Err(e) => panic!("batch failed: {e}"),
        }
    }
    panic!("a batch kept failing transiently");
}

/// Each worker applies its batches in order, all workers at once; every batch applied.
fn run(
    p: &Arc<OrderEventProcessor<PgRepository>>,
    work: Vec<Vec<Vec<OrderEvent>>>,
) -> Vec<Applied> {
    let go = Arc::new(Barrier::new(work.len()));
    let handles: Vec<_> = work
        .into_iter()
        .map(|batches| {
            let (p, go) = (Arc::clone(p), Arc::clone(&go));
            std::thread::spawn(move || {
                go.wait();
                batches.iter().map(|b| apply(&p, b)).collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("worker thread"))
        .collect()
}

/// How many pairs of batches were open at the same moment: the rule is only tested by batches
/// that ran concurrently (a worker's own batches never overlap).
fn overlapping_pairs(log: &[Applied]) -> usize {
    log.iter()
        .enumerate()
        .map(|(i, a)| log[i + 1..].iter().filter(|b| a.overlaps(b)).count())
        .sum()
}

/// Checks the rule for one kind of row. `taken` says which batch took each row (by index into
/// `log`), `rank` how good a row is (smaller first), and `took` lists what each batch took.
/// A batch that took a row passed over every better row still free when it began; each of
/// those must be taken by that batch or one open at the same time.
fn passed_over_only_held_rows<K: std::hash::Hash + Eq + Clone + std::fmt::Debug>(
    what: &str,
    log: &[Applied],
    took: &[Vec<K>],
    ranked: &[K],
) -> Vec<String> {
    let rank: HashMap<&K, usize> = ranked.iter().enumerate().map(|(i, k)| (k, i)).collect();
    let mut taken_by: HashMap<&K, usize> = HashMap::new();
    for (i, rows) in took.iter().enumerate() {
        for row in rows {
            assert!(
                taken_by.insert(row, i).is_none(),
                "{what} {row:?} taken twice"
            );
        }
    }
    let mut violations = Vec::new();
    for (t, rows) in took.iter().enumerate() {
        let Some(worst) = rows.iter().filter_map(|r| rank.get(r)).max() else {
            continue;
        };
        for better in &ranked[..*worst] {
            let fine = match taken_by.get(better) {
                Some(&a) if a == t => true,
                // Taken before this batch began: not free then.
                Some(&a) if log[a].end <= log[t].start => true,
                Some(&a) => log[a].overlaps(&log[t]),
                None => false,
            };
            if !fine {
                violations.push(format!(
                    "a batch took {what} {:?} (rank {worst}) while {better:?} (rank {}) was free \
                     and held by no open transaction: {}",
                    ranked[*worst],
                    rank[better],
                    match taken_by.get(better) {
                        Some(_) => "it was taken only after that batch ended",
                        None => "it was never taken",
                    }
                ));
            }
        }
    }
    violations
}

/// What each batch took, by `pick` over its outcomes (a courier assigned, a waiting order
/// served), batch by batch.
fn picks<T>(log: &[Applied], pick: impl Fn(&Outcome) -> Option<T>) -> Vec<Vec<T>> {
    log.iter()
        .map(|a| a.outcomes.iter().filter_map(|(_, o)| pick(o)).collect())
        .collect()
}

/// Asserts that the batches of `log` ran concurrently (else the rule was not tested) and broke
/// it nowhere (`violations`, reported under `failure`).
fn assert_fair(failure: &str, log: &[Applied], violations: Vec<String>) {
    assert!(
        overlapping_pairs(log) > 0,
        "no two batches ran at the same time"
    );
    assert!(
        violations.is_empty(),
        "{failure}: {} violations; the first: {:#?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
}

#[test]
fn four_workers_with_batches_of_64_keep_the_ranking_and_the_queue() {
    let Some(db) = TestDb::new(WORKERS as u32 + 2) else {
        return;
    };
    // Couriers hired one after another: all with no delivery, so the rank is the hiring order.
    let ranked: Vec<CourierId> = (0..COURIERS)
        .map(|n| {
            couriers::add(&db.repo, &courier(n, TransportType::Car), at(i64::from(n)))
                .expect("hire")
                .id
        })
        .collect();
    let p = Arc::new(OrderEventProcessor::new(db.repo.clone()));

    // Phase A: bursts of `created`, each new order's event delivered several times.
    let mut clock = 1_000;
    let work: Vec<Vec<Vec<OrderEvent>>> = (0..WORKERS)
        .map(|w| {
            (0..BATCHES_A)
                .map(|b| {
                    (0..BATCH)
                        .map(|i| {
                            clock += 1;
                            let id = format!("a-{w}-{b}-{}", i % NEW_PER_BATCH);
                            event(&id, "created", clock)
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    let log_a = run(&p, work);
    let took: Vec<Vec<CourierId>> = picks(&log_a, |o| match o {
        Outcome::Assigned(c) => Some(*c),
        _ => None,
    });
    let assigned: usize = took.iter().map(Vec::len).sum();
    assert_eq!(
        assigned,
        WORKERS * BATCHES_A * NEW_PER_BATCH,
        "every new order gets a courier: 48 stay free (an order that waited found every free \
         courier held by batches that did not take them)"
    );
    assert_fair(
        "the best free courier was passed over",
        &log_a,
        passed_over_only_held_rows("courier", &log_a, &took, &ranked),
    );

    // Between the phases, one at a time: the other couriers are taken and 1,500 orders wait,
    // in the order they were created.
    let free = COURIERS as usize - assigned;
    let mut queue: Vec<OrderId> = Vec::new();
    let setup: Vec<OrderEvent> = (0..free + QUEUE)
        .map(|k| event(&format!("q-{k:05}"), "created", 10_000 + k as i64))
        .collect();
    for chunk in setup.chunks(BATCH) {
        for (order, outcome) in apply(&p, chunk).outcomes {
            if outcome == Outcome::Waiting {
                queue.push(order);
            }
        }
    }
    assert_eq!(queue.len(), QUEUE);

    // Phase B: rounds of completions, each freeing every courier at once; each freed courier
    // takes the head of the queue. Orders route to workers as in the service.
    let mut log_b: Vec<Applied> = Vec::new();
    let mut ended: Vec<Vec<OrderId>> = vec![Vec::new(); WORKERS];
    let mut clock = 100_000;
    for round in 0..ROUNDS {
        let snapshot = db.repo.snapshot().expect("snapshot");
        let mut mine: Vec<Vec<OrderId>> = vec![Vec::new(); WORKERS];
        for (order, state) in &snapshot.orders {
            if matches!(state, OrderState::Assigned(_)) {
                mine[worker_for(order, WORKERS).expect("workers")].push(order.clone());
            }
        }
        let work: Vec<Vec<Vec<OrderEvent>>> = mine
            .iter()
            .enumerate()
            .map(|(w, orders)| {
                orders
                    .chunks(FREED_PER_BATCH)
                    .enumerate()
                    .map(|(b, freed)| {
                        let mut batch: Vec<OrderEvent> = Vec::with_capacity(BATCH);
                        for (i, order) in freed.iter().enumerate() {
                            clock += 1;
                            let status = if i % 4 == 0 { "cancelled" } else { "completed" };
                            batch.push(event(order.as_str(), status, clock));
                        }
                        let mut k = 0;
                        while batch.len() < BATCH {
                            clock += 1;
                            k += 1;
                            let e = match k % 8 {
                                // An order created now joins the back of the queue.
                                0 => event(&format!("late-{round}-{w}-{b}-{k}"), "created", clock),
                                // An order created and ended in the same batch: with no
                                // courier free it waits, and its end frees nobody.
                                3 => event(&format!("pair-{round}-{w}-{b}-{k}"), "created", clock),
                                4 => event(
                                    &format!("pair-{round}-{w}-{b}-{}", k - 1),
                                    "cancelled",
                                    clock,
                                ),
                                // A replayed ending of one of its orders that ended before.
                                1 | 2 if !ended[w].is_empty() => event(
                                    ended[w][(clock as usize) % ended[w].len()].as_str(),
                                    "completed",
                                    clock,
                                ),
                                // The ending of an order this service never saw created.
                                n => event(
                                    &format!("ghost-{round}-{w}-{b}-{k}"),
                                    if n % 2 == 0 { "completed" } else { "cancelled" },
                                    clock,
                                ),
                            };
                            batch.push(e);
                        }
                        batch
                    })
                    .collect()
            })
            .collect();
        for (done, orders) in ended.iter_mut().zip(mine) {
            done.extend(orders);
        }
        log_b.extend(run(&p, work));
    }
    let events = (WORKERS * BATCHES_A + log_b.len()) * BATCH;
    eprintln!(
        "{events} events in {} batches of {BATCH}: {:.0} events/s",
        events / BATCH,
        events as f64 / started.elapsed().as_secs_f64()
    );
    let served: Vec<Vec<OrderId>> = picks(&log_b, |o| match o {
        Outcome::Completed(Some(Release { took, .. }))
        | Outcome::Cancelled(Some(Release { took, .. })) => took.clone(),
        Outcome::Assigned(_) => panic!("no courier is free in phase B"),
        _ => None,
    });
    assert_eq!(
        served.iter().map(Vec::len).sum::<usize>(),
        ROUNDS * COURIERS as usize,
        "every freed courier takes a waiting order"
    );
    // Orders created in phase B join behind the 1,500: none of them is served.
    assert_fair(
        "an older waiting order was passed over",
        &log_b,
        passed_over_only_held_rows("waiting order", &log_b, &served, &queue),
    );

    let snapshot = db.repo.snapshot().expect("snapshot");
    snapshot.check_invariants().expect("invariants");
    assert_eq!(
        snapshot.waiting[..QUEUE - ROUNDS * COURIERS as usize],
        queue[ROUNDS * COURIERS as usize..],
        "the queue keeps its order"
    );
}
