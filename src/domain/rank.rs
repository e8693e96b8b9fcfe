//! The two orders the rules promise (README, "The rules"): which free courier is the best
//! (fewest completed deliveries, then available longest, then lowest id) and which waiting order
//! goes first (created earliest, then arrived first). Each is defined once, here, as a type
//! whose `Ord` is the rule: the in-memory fake and the rows a PostgreSQL transaction holds sort
//! by these types, and the statements of `repository/postgres` sort by the columns named in
//! `SQL_ORDER`, which a unit test in `src/repository/postgres/tx.rs` pins to the statements and
//! the indexes. The contract tests (`tests/it/contract.rs`, `picks_and_serves_by_the_domain_keys`)
//! check that every store picks and serves in exactly these orders.

use chrono::{DateTime, Utc};

use super::CourierId;

/// Where a free courier stands in the line for the next order: the smallest is the best. The
/// fields are compared in declaration order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CourierRank {
    /// Fewest completed deliveries first, so work is spread evenly.
    pub completed_deliveries: i64,
    /// Then the one available longest (earliest "available since").
    pub available_since: DateTime<Utc>,
    /// Then the lowest id, so the rank is total.
    pub id: CourierId,
}

impl CourierRank {
    /// The `couriers` columns of the rank, in its order, as SQL's `ORDER BY` names them.
    pub const SQL_ORDER: &'static str = "completed_deliveries, available_since, id";
}

/// Where a waiting order stands in the queue: the smallest is served first. The fields are
/// compared in declaration order. `A` is how a store numbers arrivals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueueKey<A> {
    /// When the order was created (its `created` event's `created_at`): first created, first
    /// served, whatever order the events arrived in.
    pub created_at: DateTime<Utc>,
    /// Then arrival, for orders created at the same instant.
    pub arrival: A,
}

impl<A> QueueKey<A> {
    /// The `orders` columns of the key, in its order, as SQL's `ORDER BY` names them.
    pub const SQL_ORDER: &'static str = "waiting_since, waiting_seq";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).expect("time")
    }

    #[test]
    fn fewer_deliveries_beat_a_longer_wait_and_the_id_breaks_ties() {
        let rank = |d, s, id| CourierRank {
            completed_deliveries: d,
            available_since: at(s),
            id: CourierId(id),
        };
        assert!(rank(0, 50, 9) < rank(1, 0, 1));
        assert!(rank(1, 0, 9) < rank(1, 5, 1));
        assert!(rank(1, 5, 1) < rank(1, 5, 2));
    }

    #[test]
    fn the_order_created_first_goes_first_whatever_its_arrival() {
        let key = |s, a: u64| QueueKey {
            created_at: at(s),
            arrival: a,
        };
        assert!(key(1, 99) < key(2, 0));
        assert!(key(2, 0) < key(2, 1));
    }
}
