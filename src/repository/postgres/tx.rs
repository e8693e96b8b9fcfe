//! One PostgreSQL transaction behind the [`StorageTx`] steps. Steps work on [`HeldRows`]: the
//! rows the transaction has locked, with its changes kept in memory. A batch locks everything it
//! will touch in two statements ([`StorageTx::lock_batch`]): its orders, then, counted from
//! their states, exactly the free couriers and waiting orders its steps will take (a row held
//! and not taken would be passed over by concurrent transactions: README, "The rules"). Its
//! steps then cost no round trip, and [`PgTx::flush`] writes the net changes in one set-based
//! statement. So a batch of 256 events costs five round trips (with BEGIN and COMMIT) instead of
//! three to six per event.
//!
//! Whenever a step needs the database after all (a row not locked up front, a pick the held rows
//! can't answer), pending changes are written first, so every read sees the transaction's own
//! changes.

use chrono::{DateTime, Utc};
use postgres::types::ToSql;
use postgres::Row;

use super::held::{Changes, Coverage, HeldRows, Pick, QueuePlace};
use super::session::OpenTx;
use super::{bad_row, classify, get, order_id, order_state, parse_col};
use crate::domain::{
    CompletedBy, CourierId, CourierRank, CourierStatus, NewCourier, OrderId, QueueKey,
};
use crate::repository::{
    BatchOutline, CourierRecord, OrderState, OverdueDelivery, RepoError, StorageTx,
};

/// Locks orders by id, in id order. An order without a row is new: it is held as `unseen` and
/// inserted by the transaction's first write (see `HeldRows::take_changes`); if another
/// transaction inserted it meanwhile, that write fails as a transient conflict and the batch is
/// applied again.
const LOCK_ORDERS: &str = "
    SELECT order_id, state, courier_id, waiting_seq, waiting_since FROM orders
    WHERE order_id = ANY ($1::text[])
    ORDER BY order_id
    FOR UPDATE";

/// Deletes the `unseen` rows a write before the commit inserted for orders no step then gave a
/// state (an assignment the API refused, say), so that a refusal writes nothing.
const DROP_PLACEHOLDERS: &str = "
    DELETE FROM orders WHERE order_id = ANY ($1::text[]) AND state = 'unseen'";

/// Locks, in one statement: couriers by id ($1); the `$2` best free couriers nobody else holds
/// (`CourierRank`: fewest completed deliveries, then available longest, then lowest id; the
/// index `couriers_next_available`); the first `$3` waiting orders nobody else holds
/// (`QueueKey`: created earliest, then arrived first; the index `orders_queue_by_creation`).
/// `$2` and `$3` are what the batch's steps will take ([`BatchOutline::needs`]), and `$4` more
/// waiting orders once all `$2` couriers are found (the ends of orders the batch assigns). A
/// row per locked courier or order, its `kind` first.
const LOCK_COURIERS_AND_QUEUE: &str = "
    WITH named AS (
        SELECT c.id, c.status, c.transport_type, c.completed_deliveries, c.available_since,
               (SELECT co.order_id FROM courier_orders co
                WHERE co.courier_id = c.id AND co.completed_at IS NULL) AS active_order
        FROM couriers c
        WHERE c.id = ANY ($1::int8[])
        ORDER BY c.id
        FOR UPDATE OF c
    ), free AS (
        SELECT c.id, c.status, c.transport_type, c.completed_deliveries, c.available_since,
               NULL::text AS active_order
        FROM couriers c
        WHERE c.status = 'available'
        ORDER BY c.completed_deliveries, c.available_since, c.id
        LIMIT $2
        FOR UPDATE OF c SKIP LOCKED
    ), waiting AS (
        SELECT order_id, state, courier_id, waiting_seq, waiting_since FROM orders
        WHERE waiting_seq IS NOT NULL
        ORDER BY waiting_since, waiting_seq
        LIMIT $3::int8 + CASE WHEN (SELECT count(*) FROM free) >= $2 THEN $4::int8 ELSE 0 END
        FOR UPDATE SKIP LOCKED
    )
    SELECT 'named' AS kind, *, NULL::text, NULL::text, NULL::int8, NULL::int8,
           NULL::timestamptz
    FROM named
    UNION ALL
    SELECT 'free', *, NULL, NULL, NULL, NULL, NULL FROM free
    UNION ALL
    SELECT 'waiting', NULL, NULL, NULL, NULL, NULL, NULL, order_id, state, courier_id, waiting_seq,
           waiting_since
    FROM waiting";

/// Where the order columns start in a row of `LOCK_COURIERS_AND_QUEUE`.
const QUEUE_COLUMNS: usize = 7;

/// Writes the net changes, one statement for all of them. The changes touch disjoint rows, so
/// their order within the statement does not matter, with two exceptions. New orders are
/// inserted (`orders_new`) in id order: two transactions that insert the same new orders wait
/// on each other in id order only (see `HeldRows::take_changes`). New deliveries are inserted
/// (`delivered`) last, after the deletes and completions, so a courier's previous delivery is
/// no longer active (the partial unique index allows one per courier), and only if every new
/// order went in.
/// Orders that joined the queue take places from the sequence in queue order (`fresh` reads its
/// array in order), and keep when they were created (`waiting_since`, the queue's first key).
const WRITE_CHANGES: &str = "
    WITH dropped AS (
        DELETE FROM courier_orders WHERE order_id = ANY ($1::text[])
        RETURNING 1
    ), finished AS (
        UPDATE courier_orders co SET completed_at = f.at, completed_by = f.by
        FROM unnest($2::text[], $3::int8[], $4::timestamptz[], $20::text[])
             AS f (order_id, courier_id, at, by)
        WHERE co.order_id = f.order_id AND co.courier_id = f.courier_id
          -- Not written `IS NULL`, which would invite the one-active-per-courier index.
          AND co.completed_at IS NOT DISTINCT FROM NULL
        RETURNING 1
    ), couriers_set AS (
        UPDATE couriers c
        SET status = u.status, completed_deliveries = u.completed, available_since = u.since,
            updated_at = now()
        FROM unnest($5::int8[], $6::text[], $7::int8[], $8::timestamptz[])
             AS u (id, status, completed, since)
        WHERE c.id = u.id
        RETURNING 1
    ), fresh AS (
        SELECT id, nextval('orders_waiting_seq') AS seq FROM unnest($13::text[]) AS f (id)
    ), orders_new AS (
        INSERT INTO orders (order_id, state, courier_id, waiting_seq, waiting_since)
        SELECT n.id, n.state, n.courier, CASE WHEN n.state = 'waiting' THEN fresh.seq END,
               CASE WHEN n.state = 'waiting' THEN n.since END
        FROM unnest($22::text[], $23::text[], $24::int8[], $25::timestamptz[])
             AS n (id, state, courier, since)
        LEFT JOIN fresh ON fresh.id = n.id
        -- One another transaction committed after this one found it missing is left out, not
        -- waited on: a third transaction may hold it, and wait on one of these new orders.
        WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.order_id = n.id)
        ORDER BY n.id
        ON CONFLICT (order_id) DO NOTHING
        RETURNING 1
    ), orders_set AS (
        UPDATE orders o
        SET state = u.state, courier_id = u.courier,
            waiting_seq = CASE WHEN u.state = 'waiting' THEN coalesce(u.seq, fresh.seq) END,
            waiting_since = CASE WHEN u.state = 'waiting' THEN u.since END,
            updated_at = now()
        FROM unnest($9::text[], $10::text[], $11::int8[], $12::int8[], $19::timestamptz[])
             AS u (id, state, courier, seq, since)
        LEFT JOIN fresh ON fresh.id = u.id
        WHERE o.order_id = u.id
        RETURNING 1
    ), delivered AS (
        INSERT INTO courier_orders (order_id, courier_id, assigned_at, deadline, completed_at,
                                    completed_by)
        SELECT * FROM unnest($14::text[], $15::int8[], $16::timestamptz[], $17::timestamptz[],
                             $18::timestamptz[], $21::text[])
        -- Reading these counts runs the deletes, completions and new orders to the end before
        -- the first row is inserted: a courier's previous delivery stops being active first.
        -- And none is inserted unless every new order was: one that another transaction
        -- inserted and committed meanwhile makes this write a transient failure (see
        -- `PgTx::write_changes`), and inserting its delivery anyway could wait on a third
        -- transaction that holds that order's delivery row and waits on this one's new orders.
        WHERE (SELECT count(*) FROM dropped) >= 0 AND (SELECT count(*) FROM finished) >= 0
          AND (SELECT count(*) FROM orders_new) = cardinality($22::text[])
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM dropped), (SELECT count(*) FROM finished),
           (SELECT count(*) FROM couriers_set), (SELECT count(*) FROM orders_set),
           (SELECT count(*) FROM delivered), (SELECT count(*) FROM orders_new)";

/// Locks the orders of up to `$2` overdue deliveries at `$1` (see `OVERDUE`), earliest deadline
/// first, skipping orders another transaction holds. `o.state = 'assigned'` is checked again on
/// the locked row's newest version, so an order an event completed or cancelled meanwhile is
/// left out.
const LOCK_OVERDUE: &str = "
    SELECT o.order_id, o.state, o.courier_id, o.waiting_seq, o.waiting_since, co.deadline
    FROM courier_orders co
    JOIN orders o ON o.order_id = co.order_id
    WHERE co.completed_at IS NULL AND co.deadline <= $1
      AND co.assigned_on + (co.deadline - co.assigned_at) <= $1
      AND o.state = 'assigned'
    ORDER BY co.deadline, co.order_id
    LIMIT $2
    FOR UPDATE OF o SKIP LOCKED";

/// Hires a courier, paused.
const INSERT_COURIER: &str = "
    INSERT INTO couriers (name, phone, status, transport_type, available_since)
    VALUES ($1, $2, 'paused', $3, $4)
    RETURNING id";

/// What one `LOCK_COURIERS_AND_QUEUE` locked of the free couriers and the queue.
#[derive(Debug, Default)]
struct Locked {
    /// The free couriers, best first.
    free: Vec<CourierId>,
    /// The waiting orders, first in line first.
    waiting: Vec<OrderId>,
    /// The rank of the last free courier: every free courier not locked ranks after it.
    last_free: Option<CourierRank>,
    /// The key of the last waiting order: every waiting order not locked comes after it.
    last_waiting: Option<QueueKey<QueuePlace>>,
}

/// One open transaction (with its connection's statement cache) and the rows it holds.
pub(super) struct PgTx<'a> {
    tx: OpenTx<'a>,
    held: HeldRows,
    /// Orders a write before the commit inserted as `unseen` (see `DROP_PLACEHOLDERS`).
    placed: Vec<OrderId>,
    /// Whether a write went out: new orders held after it would be inserted by a later
    /// statement, out of the one id order (see `HeldRows::take_changes`).
    wrote: bool,
}

impl<'a> PgTx<'a> {
    /// Wraps an open transaction.
    pub fn new(tx: OpenTx<'a>) -> Self {
        Self {
            tx,
            held: HeldRows::default(),
            placed: Vec::new(),
            wrote: false,
        }
    }

    /// Writes what is pending and commits.
    pub fn commit(mut self) -> Result<(), RepoError> {
        self.flush(true)?;
        let unused: Vec<&str> = self
            .placed
            .iter()
            .filter(|id| self.held.order(id) == Some(&OrderState::Unseen))
            .map(OrderId::as_str)
            .collect();
        if !unused.is_empty() {
            self.tx
                .query_prepared(DROP_PLACEHOLDERS, &[&unused])
                .map_err(classify)?;
        }
        self.tx.commit().map_err(classify)
    }

    fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, RepoError> {
        self.tx.query_prepared(sql, params).map_err(classify)
    }

    /// Writes the pending changes: one statement, none when nothing changed. The `last` write
    /// is the commit's.
    fn flush(&mut self, last: bool) -> Result<(), RepoError> {
        let changes = self.held.take_changes(last);
        if changes.is_empty() {
            return Ok(());
        }
        self.write_changes(&changes)?;
        self.wrote = true;
        self.placed.extend(
            changes
                .new_orders
                .iter()
                .filter(|o| o.state == OrderState::Unseen)
                .map(|o| o.id.clone()),
        );
        Ok(())
    }

    fn write_changes(&mut self, c: &Changes) -> Result<(), RepoError> {
        let dropped: Vec<&str> = c.deleted.iter().map(OrderId::as_str).collect();
        let finished_orders: Vec<&str> = c.completed.iter().map(|d| d.order.as_str()).collect();
        let finished_couriers: Vec<i64> = c.completed.iter().map(|d| d.courier.0).collect();
        let finished_at: Vec<DateTime<Utc>> = c.completed.iter().map(|d| d.at).collect();
        let finished_by: Vec<&str> = c.completed.iter().map(|d| d.by.as_str()).collect();
        let courier_ids: Vec<i64> = c.couriers.iter().map(|k| k.id.0).collect();
        let courier_statuses: Vec<&str> = c.couriers.iter().map(|k| k.status.as_str()).collect();
        let courier_completed: Vec<i64> =
            c.couriers.iter().map(|k| k.completed_deliveries).collect();
        let courier_since: Vec<DateTime<Utc>> =
            c.couriers.iter().map(|k| k.available_since).collect();
        let order_ids: Vec<&str> = c.orders.iter().map(|o| o.id.as_str()).collect();
        let order_states: Vec<&str> = c.orders.iter().map(|o| o.state.as_str()).collect();
        let order_couriers: Vec<Option<i64>> =
            c.orders.iter().map(|o| courier_of(&o.state)).collect();
        let order_seqs: Vec<Option<i64>> = c.orders.iter().map(|o| o.queue_seq).collect();
        let order_since: Vec<Option<DateTime<Utc>>> =
            c.orders.iter().map(|o| o.waiting_since).collect();
        let new_ids: Vec<&str> = c.new_orders.iter().map(|o| o.id.as_str()).collect();
        let new_states: Vec<&str> = c.new_orders.iter().map(|o| o.state.as_str()).collect();
        let new_couriers: Vec<Option<i64>> =
            c.new_orders.iter().map(|o| courier_of(&o.state)).collect();
        let new_since: Vec<Option<DateTime<Utc>>> =
            c.new_orders.iter().map(|o| o.waiting_since).collect();
        let fresh: Vec<&str> = c.fresh_waiting.iter().map(OrderId::as_str).collect();
        let new_deliveries: Vec<&str> = c.inserted.iter().map(|d| d.order.as_str()).collect();
        let new_couriers_of: Vec<i64> = c.inserted.iter().map(|d| d.delivery.courier.0).collect();
        let assigned: Vec<DateTime<Utc>> =
            c.inserted.iter().map(|d| d.delivery.assigned_at).collect();
        let deadlines: Vec<DateTime<Utc>> =
            c.inserted.iter().map(|d| d.delivery.deadline).collect();
        let completed: Vec<Option<DateTime<Utc>>> =
            c.inserted.iter().map(|d| d.delivery.completed_at).collect();
        let completed_by: Vec<Option<&str>> = c
            .inserted
            .iter()
            .map(|d| d.delivery.completed_by.map(CompletedBy::as_str))
            .collect();
        let rows = self.query(
            WRITE_CHANGES,
            &[
                &dropped,
                &finished_orders,
                &finished_couriers,
                &finished_at,
                &courier_ids,
                &courier_statuses,
                &courier_completed,
                &courier_since,
                &order_ids,
                &order_states,
                &order_couriers,
                &order_seqs,
                &fresh,
                &new_deliveries,
                &new_couriers_of,
                &assigned,
                &deadlines,
                &completed,
                &order_since,
                &finished_by,
                &completed_by,
                &new_ids,
                &new_states,
                &new_couriers,
                &new_since,
            ],
        )?;
        let row = rows
            .first()
            .ok_or_else(|| bad_row("writing changes returned no counts"))?;
        // Two transactions that both found an order new (its `created` read by two instances at
        // once) both insert it; the later one inserts nothing (`orders_new`) and no delivery
        // (`delivered`). Applied again, it finds the order and the event is a duplicate: a
        // transient failure, never a dead letter.
        let inserted: i64 = get(row, 5)?;
        if usize::try_from(inserted).ok() != Some(c.new_orders.len()) {
            return Err(RepoError::Transient(format!(
                "{} of {} new orders were inserted by another transaction meanwhile",
                c.new_orders.len() as i64 - inserted,
                c.new_orders.len()
            )));
        }
        let counts: [i64; 5] = [
            get(row, 0)?,
            get(row, 1)?,
            get(row, 2)?,
            get(row, 3)?,
            get(row, 4)?,
        ];
        let expected = [
            c.deleted.len(),
            c.completed.len(),
            c.couriers.len(),
            c.orders.len(),
            c.inserted.len(),
        ];
        let what = [
            "deliveries deleted",
            "deliveries completed",
            "couriers written",
            "orders written",
            "deliveries inserted",
        ];
        for ((n, want), what) in counts.iter().zip(expected).zip(what) {
            if usize::try_from(*n).ok() != Some(want) {
                return Err(RepoError::Unexpected(format!(
                    "{what}: {n} rows, expected {want}: a locked row changed under the transaction"
                )));
            }
        }
        Ok(())
    }

    /// Locks orders by id and holds them, those without a row as new (see `LOCK_ORDERS`).
    fn lock_orders(&mut self, ids: &[&OrderId]) -> Result<(), RepoError> {
        let names: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        for row in &self.query(LOCK_ORDERS, &[&names])? {
            self.hold_order_row(row, 0)?;
        }
        for &id in ids {
            if self.held.order(id).is_none() {
                // Every order a step names is in its batch's outline, locked before the first
                // write. Were one not, it would be inserted by a later write, and two such
                // transactions could deadlock (PostgreSQL would end one: a transient failure).
                debug_assert!(!self.wrote, "order {id} first locked after a write");
                self.held.hold_new_order(id.clone());
            }
        }
        Ok(())
    }

    /// Holds the order in `row`'s columns `at..at + 5`: id, state, courier, queue place, when
    /// created (the last two while waiting).
    fn hold_order_row(&mut self, row: &Row, at: usize) -> Result<OrderId, RepoError> {
        let id = order_id(row, at)?;
        self.held.hold_order(
            id.clone(),
            order_state(row, at + 1, at + 2)?,
            get(row, at + 3)?,
            get(row, at + 4)?,
        );
        Ok(id)
    }

    /// Locks and holds couriers by id, the `free` best free couriers and the `waiting`
    /// longest-waiting orders nobody else holds (`waiting_once_free` more if all `free` couriers
    /// were found).
    fn lock_couriers_and_queue(
        &mut self,
        ids: &[i64],
        free: usize,
        waiting: usize,
        waiting_once_free: usize,
    ) -> Result<Locked, RepoError> {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX / 4);
        let (free, waiting, more) = (count(free), count(waiting), count(waiting_once_free));
        let rows = self.query(LOCK_COURIERS_AND_QUEUE, &[&ids, &free, &waiting, &more])?;
        let mut locked = Locked::default();
        for row in &rows {
            let kind: &str = get(row, 0)?;
            if kind == "waiting" {
                let key = QueueKey {
                    created_at: get(row, QUEUE_COLUMNS + 4)?,
                    arrival: QueuePlace::Stored(get(row, QUEUE_COLUMNS + 3)?),
                };
                locked.last_waiting = locked.last_waiting.max(Some(key));
                locked
                    .waiting
                    .push(self.hold_order_row(row, QUEUE_COLUMNS)?);
                continue;
            }
            let record = CourierRecord {
                id: CourierId(get(row, 1)?),
                status: parse_col(row, 2)?,
                transport: parse_col(row, 3)?,
                active_order: get::<Option<String>>(row, 6)?
                    .map(|s| OrderId::parse(s).map_err(|e| bad_row(e.to_string())))
                    .transpose()?,
            };
            let (completed_deliveries, available_since) = (get(row, 4)?, get(row, 5)?);
            if kind == "free" {
                let rank = CourierRank {
                    completed_deliveries,
                    available_since,
                    id: record.id,
                };
                locked.last_free = locked.last_free.max(Some(rank));
                locked.free.push(record.id);
            }
            self.held
                .hold_courier(record, completed_deliveries, available_since);
        }
        Ok(locked)
    }

    /// A courier, held (locked) first if need be.
    fn held_courier(&mut self, id: CourierId) -> Result<CourierRecord, RepoError> {
        self.lock_courier(id)?
            .ok_or_else(|| RepoError::Unexpected(format!("courier {id} does not exist")))
    }
}

impl StorageTx for PgTx<'_> {
    fn lock_batch(&mut self, outline: &BatchOutline) -> Result<(), RepoError> {
        let mut ids: Vec<&OrderId> = outline
            .orders
            .iter()
            .filter(|o| self.held.order(o).is_none())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if !ids.is_empty() {
            self.lock_orders(&ids)?;
        }
        // From the orders' states, exactly how many free couriers and queue heads the steps
        // will take: a row held and not taken would push concurrent transactions to a worse
        // courier or a younger order (README, "The rules").
        let needs = outline.needs(|id| self.held.order(id).cloned());
        let carriers: Vec<i64> = self
            .held
            .unheld_couriers_of_orders()
            .into_iter()
            .map(|c| c.0)
            .collect();
        if !carriers.is_empty() || needs.couriers > 0 || needs.queue_heads > 0 {
            let locked = self.lock_couriers_and_queue(
                &carriers,
                needs.couriers,
                needs.queue_heads,
                needs.queue_heads_once_assigned,
            )?;
            // The statement asked for the extra heads only if it found every courier.
            let heads = needs.queue_heads
                + if locked.free.len() >= needs.couriers {
                    needs.queue_heads_once_assigned
                } else {
                    0
                };
            self.held.free_couriers =
                Coverage::after_asking(needs.couriers, locked.free.len(), locked.last_free);
            self.held.waiting_orders =
                Coverage::after_asking(heads, locked.waiting.len(), locked.last_waiting);
        }
        Ok(())
    }

    fn lock_order(&mut self, order: &OrderId) -> Result<OrderState, RepoError> {
        if let Some(state) = self.held.order(order) {
            return Ok(state.clone());
        }
        // Orders not held have no pending changes, so no flush is needed before reading one.
        self.lock_orders(&[order])?;
        self.held
            .order(order)
            .cloned()
            .ok_or_else(|| bad_row(format!("order {order} was locked but is not held")))
    }

    fn set_order_state(
        &mut self,
        order: &OrderId,
        state: &OrderState,
        at: DateTime<Utc>,
    ) -> Result<(), RepoError> {
        self.held.set_order_state(order, state, at)
    }

    fn take_available_courier(&mut self) -> Result<Option<CourierRecord>, RepoError> {
        match self.held.pick_free_courier() {
            Pick::Held(courier) => Ok(courier),
            Pick::AskDatabase => {
                self.flush(false)?;
                let locked = self.lock_couriers_and_queue(&[], 1, 0, 0)?;
                Ok(locked
                    .free
                    .first()
                    .and_then(|id| self.held.courier(*id).cloned()))
            }
        }
    }

    fn lock_overdue_deliveries(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<OverdueDelivery>, RepoError> {
        self.flush(false)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.query(LOCK_OVERDUE, &[&now, &limit])?;
        let mut overdue = Vec::with_capacity(rows.len());
        for row in &rows {
            let order = self.hold_order_row(row, 0)?;
            let Some(OrderState::Assigned(courier)) = self.held.order(&order).cloned() else {
                return Err(bad_row(format!("overdue order {order} is not assigned")));
            };
            overdue.push(OverdueDelivery {
                order,
                courier,
                deadline: get(row, 5)?,
            });
        }
        Ok(overdue)
    }

    fn lock_courier(&mut self, id: CourierId) -> Result<Option<CourierRecord>, RepoError> {
        if let Some(record) = self.held.courier(id) {
            return Ok(Some(record.clone()));
        }
        // Its active delivery may have pending changes: write them before reading it.
        self.flush(false)?;
        self.lock_couriers_and_queue(&[id.0], 0, 0, 0)?;
        Ok(self.held.courier(id).cloned())
    }

    fn next_waiting_order(&mut self) -> Result<Option<OrderId>, RepoError> {
        match self.held.pick_waiting_order() {
            Pick::Held(order) => Ok(order),
            Pick::AskDatabase => {
                self.flush(false)?;
                let locked = self.lock_couriers_and_queue(&[], 0, 1, 0)?;
                Ok(locked.waiting.into_iter().next())
            }
        }
    }

    fn start_delivery(
        &mut self,
        order: &OrderId,
        courier: &CourierRecord,
        at: DateTime<Utc>,
    ) -> Result<(), RepoError> {
        let courier = self.held_courier(courier.id)?;
        self.held
            .start_delivery(order, courier.id, courier.transport, at)
    }

    fn finish_delivery(
        &mut self,
        order: &OrderId,
        courier: CourierId,
        at: DateTime<Utc>,
        by: CompletedBy,
    ) -> Result<(), RepoError> {
        self.held_courier(courier)?;
        self.held.finish_delivery(order, courier, at, by)
    }

    fn drop_delivery(&mut self, order: &OrderId, _at: DateTime<Utc>) -> Result<(), RepoError> {
        self.held.drop_delivery(order)
    }

    fn set_courier_status(
        &mut self,
        id: CourierId,
        status: CourierStatus,
        at: DateTime<Utc>,
    ) -> Result<(), RepoError> {
        self.held_courier(id)?;
        self.held.set_courier_status(id, status, at)
    }

    fn insert_courier(
        &mut self,
        courier: &NewCourier,
        at: DateTime<Utc>,
    ) -> Result<CourierRecord, RepoError> {
        self.flush(false)?;
        let rows = self
            .query(
                INSERT_COURIER,
                &[
                    &courier.name,
                    &courier.phone.as_str(),
                    &courier.transport.as_str(),
                    &at,
                ],
            )
            .map_err(|e| match e {
                RepoError::Conflict(_) => RepoError::Conflict(format!(
                    "phone {} belongs to another courier",
                    courier.phone
                )),
                other => other,
            })?;
        let id = rows
            .first()
            .map(|r| get(r, 0))
            .transpose()?
            .ok_or_else(|| bad_row("INSERT returned no id"))?;
        let record = CourierRecord {
            id: CourierId(id),
            status: CourierStatus::Paused,
            transport: courier.transport,
            active_order: None,
        };
        self.held.hold_courier(record.clone(), 0, at);
        Ok(record)
    }
}

/// The courier an order state names, as the `courier_id` column holds it.
fn courier_of(state: &OrderState) -> Option<i64> {
    match state {
        OrderState::Assigned(c) | OrderState::Completed(Some(c)) => Some(c.0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whitespace collapsed, so a statement's layout does not matter.
    fn flat(sql: &str) -> String {
        sql.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// `columns` with each prefixed by `alias.`.
    fn qualified(alias: &str, columns: &str) -> String {
        columns
            .split(", ")
            .map(|c| format!("{alias}.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    #[test]
    fn the_statements_sort_by_the_domain_keys() {
        let lock = flat(LOCK_COURIERS_AND_QUEUE);
        let rank = format!("ORDER BY {}", qualified("c", CourierRank::SQL_ORDER));
        let queue = format!("ORDER BY {}", QueueKey::<i64>::SQL_ORDER);
        assert!(
            lock.contains(&rank),
            "{rank} not in LOCK_COURIERS_AND_QUEUE"
        );
        assert!(
            lock.contains(&queue),
            "{queue} not in LOCK_COURIERS_AND_QUEUE"
        );
        // The indexes the two picks read in order.
        for schema in [
            include_str!("../../../migrations/0001_initial.sql"),
            include_str!("../../../schema.sql"),
        ] {
            let schema = flat(schema);
            let rank = format!("ON couriers ({})", CourierRank::SQL_ORDER);
            let queue = format!("ON orders ({})", QueueKey::<i64>::SQL_ORDER);
            assert!(schema.contains(&rank), "no index {rank}");
            assert!(schema.contains(&queue), "no index {queue}");
        }
    }
}
