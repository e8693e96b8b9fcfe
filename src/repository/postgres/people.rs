//! The statements behind the HTTP API's reads and courier edits ([`FleetDirectory`]). Kept
//! apart from the event path's statements (`tx`, `held`): none of these run per event.

use super::session::OpenTx;
use super::{
    classify, completed_by, courier_view, get, order_id, order_state, PgRepository, Plans,
    COURIERS, COURIERS_WHERE,
};
use crate::domain::{CourierId, OrderId};
use crate::repository::{
    CourierDelivery, CourierPatch, CourierRemoval, CourierView, DeliveryView, FleetDirectory,
    OrderView, QueueView, RepoError, WaitingOrder,
};

/// Lists take at most this many rows, whatever the caller asks.
const MOST_ROWS: i64 = 10_000;

impl FleetDirectory for PgRepository {
    fn couriers(&self) -> Result<Vec<CourierView>, RepoError> {
        self.read_whole_tables(|tx| {
            let rows = tx.query(COURIERS, &[]).map_err(classify)?;
            rows.iter().map(courier_view).collect()
        })
    }

    fn courier(&self, id: CourierId) -> Result<Option<CourierView>, RepoError> {
        self.read_whole_tables(|tx| one_courier(tx, id))
    }

    fn order(&self, order: &OrderId) -> Result<Option<OrderView>, RepoError> {
        const SQL: &str = "
            SELECT o.state, o.courier_id, co.courier_id, co.assigned_at, co.deadline,
                   co.completed_at, co.completed_by
            FROM orders o
            LEFT JOIN courier_orders co ON co.order_id = o.order_id
            WHERE o.order_id = $1 AND o.state <> 'unseen'";
        self.read_whole_tables(|tx| {
            let Some(row) = tx.query_opt(SQL, &[&order.as_str()]).map_err(classify)? else {
                return Ok(None);
            };
            let delivery = match get::<Option<i64>>(&row, 2)? {
                Some(courier) => Some(DeliveryView {
                    courier: CourierId(courier),
                    assigned_at: get(&row, 3)?,
                    deadline: get(&row, 4)?,
                    completed_at: get(&row, 5)?,
                    completed_by: completed_by(&row, 6)?,
                }),
                None => None,
            };
            Ok(Some(OrderView {
                state: order_state(&row, 0, 1)?,
                delivery,
            }))
        })
    }

    fn deliveries(
        &self,
        courier: CourierId,
        limit: usize,
    ) -> Result<Vec<CourierDelivery>, RepoError> {
        const SQL: &str = "
            SELECT order_id, assigned_at, deadline, completed_at, completed_by
            FROM courier_orders
            WHERE courier_id = $1
            ORDER BY assigned_at DESC, order_id DESC
            LIMIT $2";
        let limit = (limit as i64).min(MOST_ROWS);
        self.read_whole_tables(|tx| {
            tx.query(SQL, &[&courier.0, &limit])
                .map_err(classify)?
                .iter()
                .map(|row| {
                    Ok(CourierDelivery {
                        order: order_id(row, 0)?,
                        delivery: DeliveryView {
                            courier,
                            assigned_at: get(row, 1)?,
                            deadline: get(row, 2)?,
                            completed_at: get(row, 3)?,
                            completed_by: completed_by(row, 4)?,
                        },
                    })
                })
                .collect()
        })
    }

    fn queue(&self, limit: usize) -> Result<QueueView, RepoError> {
        // The queue's order (docs/rules.md): when the order was created, then its arrival.
        const HEAD: &str = "
            SELECT order_id, waiting_since FROM orders
            WHERE waiting_seq IS NOT NULL
            ORDER BY waiting_since, waiting_seq
            LIMIT $1";
        const COUNT: &str = "SELECT count(*) FROM orders WHERE waiting_seq IS NOT NULL";
        let limit = (limit as i64).min(MOST_ROWS);
        self.read_whole_tables(|tx| {
            let orders = tx
                .query(HEAD, &[&limit])
                .map_err(classify)?
                .iter()
                .map(|row| {
                    Ok(WaitingOrder {
                        order: order_id(row, 0)?,
                        since: get(row, 1)?,
                    })
                })
                .collect::<Result<_, RepoError>>()?;
            let count = get(&tx.query_one(COUNT, &[]).map_err(classify)?, 0)?;
            Ok(QueueView { count, orders })
        })
    }

    fn update_courier(
        &self,
        id: CourierId,
        patch: &CourierPatch,
    ) -> Result<Option<CourierView>, RepoError> {
        const SQL: &str = "
            UPDATE couriers
            SET name = coalesce($2, name),
                phone = coalesce($3, phone),
                transport_type = coalesce($4, transport_type),
                updated_at = now()
            WHERE id = $1";
        let mut conn = self.connection()?;
        let mut tx = self.begin(&mut conn, Plans::Index)?;
        let phone = patch.phone.as_ref().map(|p| p.as_str());
        let transport = patch.transport.map(|t| t.as_str());
        let changed = tx
            .execute(SQL, &[&id.0, &patch.name, &phone, &transport])
            .map_err(classify)?;
        if changed == 0 {
            return Ok(None);
        }
        let view = one_courier(&mut tx, id)?;
        tx.commit().map_err(classify)?;
        Ok(view)
    }

    fn remove_courier(&self, id: CourierId) -> Result<CourierRemoval, RepoError> {
        // The row lock keeps assignment away meanwhile: it takes couriers FOR UPDATE SKIP LOCKED.
        const LOCK: &str = "SELECT id FROM couriers WHERE id = $1 FOR UPDATE";
        const ACTIVE: &str =
            "SELECT order_id FROM courier_orders WHERE courier_id = $1 AND completed_at IS NULL";
        const FORGET: &str = "
            UPDATE orders SET courier_id = NULL, updated_at = now()
            WHERE courier_id = $1 AND state = 'completed'";
        const HISTORY: &str = "DELETE FROM courier_orders WHERE courier_id = $1";
        const COURIER: &str = "DELETE FROM couriers WHERE id = $1";
        let mut conn = self.connection()?;
        let mut tx = self.begin(&mut conn, Plans::Index)?;
        // Rare, and `orders` has no index on the courier: a scan is the right plan.
        tx.batch_execute("SET LOCAL enable_seqscan = on")
            .map_err(classify)?;
        if tx.query_opt(LOCK, &[&id.0]).map_err(classify)?.is_none() {
            return Ok(CourierRemoval::NotFound);
        }
        if let Some(row) = tx.query_opt(ACTIVE, &[&id.0]).map_err(classify)? {
            return Ok(CourierRemoval::Carrying(order_id(&row, 0)?));
        }
        for sql in [FORGET, HISTORY, COURIER] {
            tx.execute(sql, &[&id.0]).map_err(classify)?;
        }
        tx.commit().map_err(classify)?;
        Ok(CourierRemoval::Removed)
    }
}

fn one_courier(tx: &mut OpenTx<'_>, id: CourierId) -> Result<Option<CourierView>, RepoError> {
    tx.query_opt(COURIERS_WHERE, &[&id.0])
        .map_err(classify)?
        .as_ref()
        .map(courier_view)
        .transpose()
}
