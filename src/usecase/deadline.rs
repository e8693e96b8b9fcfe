//! The deadline pass (docs/rules.md): every delivery has a deadline (30, 15 or 5 minutes by
//! transport). Under `DEADLINE_POLICY=complete`, the course's rule, a delivery still active at
//! its deadline is completed at it: it counts, it is marked `completed_by = deadline`, and its
//! courier is freed and takes the oldest waiting order at once. Without it, a courier whose
//! order never ends (a stopped service-order, an order frozen by a PUT) stays busy for good.
//!
//! Safe with several workers and instances: the pass locks the orders it completes with
//! `SKIP LOCKED` (an order whose event is being applied is left for the next round), and an
//! order completed by either path is terminal, so a later `completed` or `cancelled` event does
//! nothing, and a second pass finds nothing.

use chrono::{DateTime, Utc};

use super::{handover, Release};
use crate::domain::{CompletedBy, OrderId};
use crate::repository::{BatchOutline, BatchStep, OrderState, RepoError, StepKind, StorageTx};

/// A delivery the pass completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadlineCompletion {
    /// The order.
    pub order: OrderId,
    /// When it was due: its `completed_at`.
    pub deadline: DateTime<Utc>,
    /// Its courier, and the waiting order they took, if any.
    pub release: Release,
}

/// Completes up to `limit` deliveries due at or before `now`, earliest deadline first, in the
/// transaction `tx`. Completions are stamped with the deadline (so a replay writes the same);
/// what no event causes, a freed courier's "available since" and the `assigned_at` of the
/// order they take, is stamped `now`, the pass's clock.
pub fn complete_overdue(
    tx: &mut dyn StorageTx,
    now: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<DeadlineCompletion>, RepoError> {
    let overdue = tx.lock_overdue_deliveries(now, limit)?;
    if overdue.is_empty() {
        return Ok(Vec::new());
    }
    // Their couriers, and as many waiting orders as couriers are freed, in one round trip.
    tx.lock_batch(&BatchOutline::of_steps(
        overdue
            .iter()
            .map(|d| BatchStep {
                order: d.order.clone(),
                kind: StepKind::End,
            })
            .collect(),
    ))?;
    let mut completed = Vec::with_capacity(overdue.len());
    for due in overdue {
        // Locked and held already: no round trip.
        if tx.lock_order(&due.order)? != OrderState::Assigned(due.courier) {
            continue;
        }
        tx.finish_delivery(&due.order, due.courier, due.deadline, CompletedBy::Deadline)?;
        let release = handover::release(tx, due.courier, now)?;
        completed.push(DeadlineCompletion {
            order: due.order,
            deadline: due.deadline,
            release,
        });
    }
    Ok(completed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CourierId, NewCourier, Phone, TransportType};
    use crate::repository::{CourierRepository, MemoryRepository};
    use crate::usecase::{couriers, factory::StatusHandler};

    fn order(s: &str) -> OrderId {
        OrderId::parse(s).expect("order id")
    }

    /// Minutes from when the tests started: the store stamps when it made each assignment with
    /// the wall clock, and the pass waits a whole window of that too.
    fn at(minutes: i64) -> DateTime<Utc> {
        static START: std::sync::OnceLock<DateTime<Utc>> = std::sync::OnceLock::new();
        *START.get_or_init(Utc::now) + chrono::Duration::minutes(minutes)
    }

    fn hire(repo: &MemoryRepository, phone: &str, transport: TransportType) -> CourierId {
        let courier = NewCourier {
            name: "Ann".into(),
            phone: Phone::parse(phone).expect("phone"),
            transport,
        };
        couriers::add(repo, &courier, at(0)).expect("hired").id
    }

    fn apply(repo: &MemoryRepository, handler: StatusHandler, id: &str, when: DateTime<Utc>) {
        repo.transaction(&mut |tx| handler.handle(tx, &order(id), when))
            .expect("applied");
    }

    #[test]
    fn an_overdue_delivery_is_completed_at_its_deadline_and_its_courier_takes_the_oldest_order() {
        let repo = MemoryRepository::new();
        let car = hire(&repo, "+79990000001", TransportType::Car);
        apply(&repo, StatusHandler::Assign, "a", at(0));
        apply(&repo, StatusHandler::Assign, "young", at(2));
        apply(&repo, StatusHandler::Assign, "old", at(1));

        // At minute 4 the car's 5-minute deadline has not passed.
        let none = repo
            .transaction(&mut |tx| complete_overdue(tx, at(4), 10))
            .expect("pass");
        assert!(none.is_empty());

        let done = repo
            .transaction(&mut |tx| complete_overdue(tx, at(7), 10))
            .expect("pass");
        assert_eq!(
            done,
            vec![DeadlineCompletion {
                order: order("a"),
                deadline: at(5),
                release: Release {
                    courier: car,
                    took: Some(order("old")),
                },
            }]
        );
        let snapshot = repo.snapshot().expect("snapshot");
        let a = &snapshot.deliveries[&order("a")];
        assert_eq!(a.completed_at, Some(at(5)));
        assert_eq!(a.completed_by, Some(CompletedBy::Deadline));
        assert_eq!(
            snapshot.orders[&order("a")],
            OrderState::Completed(Some(car))
        );
        // "old" was taken at the pass's clock, so its own deadline runs from there.
        assert_eq!(snapshot.deliveries[&order("old")].assigned_at, at(7));
        assert_eq!(snapshot.couriers[0].completed_deliveries, 1);
        snapshot.check_invariants().expect("invariants");
    }

    #[test]
    fn a_later_cancel_or_complete_of_a_deadline_completed_order_does_nothing() {
        let repo = MemoryRepository::new();
        hire(&repo, "+79990000002", TransportType::Scooter);
        apply(&repo, StatusHandler::Assign, "a", at(0));
        repo.transaction(&mut |tx| complete_overdue(tx, at(20), 10))
            .expect("pass");
        let before = repo.snapshot().expect("snapshot");
        for handler in [
            StatusHandler::Cancel,
            StatusHandler::Complete,
            StatusHandler::Assign,
        ] {
            let outcome = repo
                .transaction(&mut |tx| handler.handle(tx, &order("a"), at(21)))
                .expect("applied");
            assert_eq!(outcome, crate::usecase::Outcome::Duplicate);
        }
        assert_eq!(repo.snapshot().expect("snapshot"), before);
        // And a second pass finds nothing.
        let again = repo
            .transaction(&mut |tx| complete_overdue(tx, at(30), 10))
            .expect("pass");
        assert!(again.is_empty());
    }

    #[test]
    fn a_delivery_assigned_late_from_a_backlog_waits_its_whole_window() {
        let repo = MemoryRepository::new();
        hire(&repo, "+79990000005", TransportType::Car);
        // An hour-old `created` from a backlog: its deadline passed long ago, but its own
        // `cancelled` may be right behind it.
        apply(&repo, StatusHandler::Assign, "late", at(-60));
        let early = repo
            .transaction(&mut |tx| complete_overdue(tx, at(1), 10))
            .expect("pass");
        assert!(early.is_empty());
        // Past its deadline, so counted (and shown) as overdue all the same.
        assert_eq!(repo.count_overdue(at(1)).expect("count"), 1);
        apply(&repo, StatusHandler::Cancel, "late", at(-59));
        let after = repo.snapshot().expect("snapshot");
        assert_eq!(after.orders[&order("late")], OrderState::Cancelled);
        assert!(after.statistics().values().all(|n| *n == 0));
        // Held for its whole window since: completed at its (event-time) deadline.
        apply(&repo, StatusHandler::Assign, "late-2", at(-60));
        let done = repo
            .transaction(&mut |tx| complete_overdue(tx, at(6), 10))
            .expect("pass");
        assert_eq!(done[0].deadline, at(-55));
    }

    #[test]
    fn a_round_is_bounded_earliest_deadline_first() {
        let repo = MemoryRepository::new();
        let foot = hire(&repo, "+79990000003", TransportType::OnFoot);
        let car = hire(&repo, "+79990000004", TransportType::Car);
        // Both free with no deliveries: the first hired (available longest) goes first.
        apply(&repo, StatusHandler::Assign, "slow", at(0));
        apply(&repo, StatusHandler::Assign, "fast", at(0));
        let first = repo
            .transaction(&mut |tx| complete_overdue(tx, at(60), 1))
            .expect("pass");
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].order, order("fast"));
        assert_eq!(first[0].release.courier, car);
        let second = repo
            .transaction(&mut |tx| complete_overdue(tx, at(60), 1))
            .expect("pass");
        assert_eq!(second[0].release.courier, foot);
        assert_eq!(second[0].deadline, at(30));
    }
}
