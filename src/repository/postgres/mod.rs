//! PostgreSQL, the truth. Blocking transactions at READ COMMITTED over an r2d2 pool; each
//! connection caches its prepared statements. The steps of a transaction are in [`tx`]; the
//! statements of [`crate::repository::FleetDirectory`] are in `people`.
//!
//! Concurrency, across workers and across instances:
//! - an order's events serialise on its `orders` row (`lock_order`);
//! - couriers and waiting orders are picked with `FOR UPDATE SKIP LOCKED`, so two transactions
//!   never take the same one, and the partial unique index on `courier_orders` backs that up;
//! - "this order waits" and "this courier is free" committed at the same moment can miss each
//!   other; the usecase layer closes that gap with a pairing pass after such commits (see
//!   `usecase::handover::pair_waiting`), without any lock that would serialise workers.

mod held;
mod migrate;
mod people;
mod session;
mod tx;

pub use migrate::{
    latest_version, MigrateError, MigrateReport, Migration, SchemaStatus, MIGRATIONS,
};
pub use session::{Pooler, TransactionLimits};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::{Client, NoTls, Row, Statement};
use r2d2_postgres::PostgresConnectionManager;
use session::{OpenTx, Openers};

use super::{
    CourierRepository, CourierView, DeliveryView, FleetGauges, OrderState, RepoError, Snapshot,
    StorageTx,
};
use crate::domain::{CompletedBy, CourierId, OrderId, Phone, TransportType};
use crate::shutdown::Shutdown;

/// How long a caller waits for a pooled connection (r2d2 keeps trying to open one meanwhile).
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a caller waiting for a connection looks whether the process is stopping.
const CHECKOUT_SLICE: Duration = Duration::from_millis(100);

/// Advisory lock key serialising concurrent migrations (mixed with the schema's name, see
/// `migrate`).
const MIGRATION_LOCK: i64 = 0x0C0E_1E40_0002;

/// A pooled connection with the statements it has prepared, so each SQL text is parsed once per
/// connection instead of once per call.
pub struct PgConnection {
    client: Client,
    statements: HashMap<&'static str, Statement>,
    /// Set when the server stopped accepting writes (see `session::OpenTx`): the pool closes
    /// the connection instead of lending it again.
    retired: bool,
}

/// Opens [`PgConnection`]s through r2d2_postgres and drops broken ones.
struct PgConnectionManager(PostgresConnectionManager<NoTls>);

impl r2d2::ManageConnection for PgConnectionManager {
    type Connection = PgConnection;
    type Error = postgres::Error;

    fn connect(&self) -> Result<PgConnection, postgres::Error> {
        Ok(PgConnection {
            client: self.0.connect()?,
            statements: HashMap::new(),
            retired: false,
        })
    }

    fn is_valid(&self, conn: &mut PgConnection) -> Result<(), postgres::Error> {
        conn.client.simple_query("").map(|_| ())
    }

    fn has_broken(&self, conn: &mut PgConnection) -> bool {
        conn.client.is_closed() || conn.retired
    }
}

/// The PostgreSQL repository: an r2d2 pool of blocking connections.
#[derive(Clone)]
pub struct PgRepository {
    pool: r2d2::Pool<PgConnectionManager>,
    target: String,
    /// Once stopping for longer than the given grace, waiting for a connection ends at once:
    /// with the database down, a stop must not wait out a checkout timeout per queued event.
    give_up: Option<(Shutdown, Duration)>,
    /// How transactions open (their `SET LOCAL` bounds and plans), and what is between us and
    /// the server.
    openers: Arc<Openers>,
}

/// Where a connection string points, for messages: its hosts and ports and the database, never
/// the password (`db-a:5432,db-b:5432/courier`).
pub fn describe_target(config: &postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = match host {
                postgres::config::Host::Tcp(h) => h.clone(),
                #[cfg(unix)]
                postgres::config::Host::Unix(p) => p.display().to_string(),
            };
            // One port for every host, or one each.
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_owned()
    } else {
        hosts.join(",")
    };
    let db = config.get_dbname().or(config.get_user()).unwrap_or("?");
    format!("{hosts}/{db}")
}

impl PgRepository {
    /// A pool of `size` connections. Connections open lazily; call [`PgRepository::ping`] to find
    /// out whether the database answers.
    pub fn new(mut config: postgres::Config, size: u32) -> Self {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        let target = describe_target(&config);
        let manager = PgConnectionManager(PostgresConnectionManager::new(config, NoTls));
        let pool = r2d2::Pool::builder()
            .max_size(size.max(1))
            .min_idle(Some(0))
            .connection_timeout(CHECKOUT_TIMEOUT)
            // No test query on every checkout: it is a round trip per transaction. A connection
            // that died is found by the statement that uses it (a transient error, retried),
            // and r2d2 drops it on return (`has_broken`).
            .test_on_check_out(false)
            // r2d2 logs every failed connect at error level; our callers report failures once.
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(manager);
        Self {
            pool,
            target,
            give_up: None,
            openers: Arc::new(Openers::new(TransactionLimits::default(), Pooler::None)),
        }
    }

    /// Sets the bounds every transaction sets for itself and what is between us and the
    /// server (defaults: [`TransactionLimits::default`], [`Pooler::None`]).
    pub fn with_limits(mut self, limits: TransactionLimits, pooler: Pooler) -> Self {
        self.openers = Arc::new(Openers::new(limits, pooler));
        self
    }

    /// Makes waits for a connection end as soon as `shutdown` has been stopping for longer than
    /// `grace` (a transient error, so the caller leaves its event for redelivery).
    pub fn give_up_when_stopping(mut self, shutdown: Shutdown, grace: Duration) -> Self {
        self.give_up = Some((shutdown, grace));
        self
    }

    /// `host:port/database`, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Checks that the database answers.
    pub fn ping(&self) -> Result<(), RepoError> {
        let mut conn = self.connection()?;
        conn.client.simple_query("SELECT 1").map_err(classify)?;
        Ok(())
    }

    fn connection(&self) -> Result<r2d2::PooledConnection<PgConnectionManager>, RepoError> {
        let unreachable =
            |e| RepoError::Transient(format!("cannot reach PostgreSQL at {}: {e}", self.target));
        let Some((shutdown, grace)) = &self.give_up else {
            return self.pool.get().map_err(unreachable);
        };
        let deadline = Instant::now() + CHECKOUT_TIMEOUT;
        loop {
            match self.pool.get_timeout(CHECKOUT_SLICE) {
                Ok(conn) => return Ok(conn),
                Err(e) if Instant::now() >= deadline || shutdown.stopping_longer_than(*grace) => {
                    return Err(unreachable(e))
                }
                Err(_) => {}
            }
        }
    }
}

impl CourierRepository for PgRepository {
    fn transaction<T>(
        &self,
        work: &mut dyn FnMut(&mut dyn StorageTx) -> Result<T, RepoError>,
    ) -> Result<T, RepoError> {
        let mut conn = self.connection()?;
        let mut pg = tx::PgTx::new(self.begin(&mut conn, Plans::Index)?);
        let out = work(&mut pg)?;
        pg.commit()?;
        Ok(out)
    }

    fn snapshot(&self) -> Result<Snapshot, RepoError> {
        const ORDERS: &str =
            "SELECT order_id, state, courier_id FROM orders WHERE state <> 'unseen'";
        const DELIVERIES: &str = "
            SELECT order_id, courier_id, assigned_at, deadline, completed_at, completed_by
            FROM courier_orders";
        const WAITING: &str = "
            SELECT order_id FROM orders WHERE waiting_seq IS NOT NULL
            ORDER BY waiting_since, waiting_seq";
        self.read_whole_tables(|tx| {
            let couriers = tx
                .query(COURIERS, &[])
                .map_err(classify)?
                .iter()
                .map(courier_view)
                .collect::<Result<_, _>>()?;
            let mut orders = std::collections::BTreeMap::new();
            for row in tx.query(ORDERS, &[]).map_err(classify)? {
                orders.insert(order_id(&row, 0)?, order_state(&row, 1, 2)?);
            }
            let mut deliveries = std::collections::BTreeMap::new();
            for row in tx.query(DELIVERIES, &[]).map_err(classify)? {
                let delivery = DeliveryView {
                    courier: CourierId(get(&row, 1)?),
                    assigned_at: get(&row, 2)?,
                    deadline: get(&row, 3)?,
                    completed_at: get(&row, 4)?,
                    completed_by: completed_by(&row, 5)?,
                };
                deliveries.insert(order_id(&row, 0)?, delivery);
            }
            let waiting = tx
                .query(WAITING, &[])
                .map_err(classify)?
                .iter()
                .map(|r| order_id(r, 0))
                .collect::<Result<_, _>>()?;
            Ok(Snapshot {
                couriers,
                orders,
                deliveries,
                waiting,
            })
        })
    }

    fn fleet(&self) -> Result<FleetGauges, RepoError> {
        self.read_fleet()
    }

    fn count_overdue(&self, now: chrono::DateTime<chrono::Utc>) -> Result<i64, RepoError> {
        // Active deliveries are one per busy courier: the partial index
        // `courier_orders_one_active_per_courier` holds exactly them.
        const SQL: &str = "
            SELECT count(*) FROM courier_orders WHERE completed_at IS NULL AND deadline <= $1";
        let row = self.query_one_prepared(SQL, &[&now])?;
        get(&row, 0)
    }

    fn has_waiting_beside_available(&self) -> Result<bool, RepoError> {
        const SQL: &str = "
            SELECT EXISTS (SELECT 1 FROM couriers WHERE status = 'available')
               AND EXISTS (SELECT 1 FROM orders WHERE waiting_seq IS NOT NULL)";
        let row = self.query_one_prepared(SQL, &[])?;
        get(&row, 0)
    }
}

impl PgRepository {
    /// Opens a transaction on `conn`, its settings in the same round trip.
    fn begin<'c>(&self, conn: &'c mut PgConnection, plans: Plans) -> Result<OpenTx<'c>, RepoError> {
        let opener = match plans {
            Plans::Index => &self.openers.index_plans,
            Plans::WholeTables => &self.openers.whole_table_reads,
        };
        OpenTx::begin(conn, opener, self.openers.keep_statements()).map_err(classify)
    }

    /// One row of a small read through an index, in a transaction of its own (so that its
    /// bounds and plans apply, and so that it works behind a transaction pooler).
    fn query_one_prepared(
        &self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Row, RepoError> {
        let mut conn = self.connection()?;
        let mut tx = self.begin(&mut conn, Plans::Index)?;
        let row = tx
            .query_prepared(sql, params)
            .map_err(classify)?
            .into_iter()
            .next()
            .ok_or_else(|| bad_row("a query of one row returned none"))?;
        tx.commit().map_err(classify)?;
        Ok(row)
    }

    fn read_fleet(&self) -> Result<FleetGauges, RepoError> {
        const SQL: &str = "
            SELECT count(*) FILTER (WHERE status = 'available'),
                   count(*) FILTER (WHERE status = 'busy'),
                   count(*) FILTER (WHERE status = 'paused'),
                   (SELECT count(*) FROM orders WHERE waiting_seq IS NOT NULL)
            FROM couriers";
        self.read_whole_tables(|tx| {
            let row = tx.query_one(SQL, &[]).map_err(classify)?;
            Ok(FleetGauges {
                available: get(&row, 0)?,
                busy: get(&row, 1)?,
                paused: get(&row, 2)?,
                waiting_orders: get(&row, 3)?,
            })
        })
    }

    /// Runs `read` in a read-only snapshot with the planner's whole-table strategies (see
    /// `session`): these reads count or list every row.
    fn read_whole_tables<T>(
        &self,
        read: impl FnOnce(&mut OpenTx<'_>) -> Result<T, RepoError>,
    ) -> Result<T, RepoError> {
        let mut conn = self.connection()?;
        let mut tx = self.begin(&mut conn, Plans::WholeTables)?;
        let out = read(&mut tx)?;
        tx.commit().map_err(classify)?;
        Ok(out)
    }
}

/// Which plans a transaction wants (see `session`).
#[derive(Debug, Clone, Copy)]
enum Plans {
    /// Through the indexes, whatever the statistics say: every statement of the event path.
    Index,
    /// Whatever the planner finds best: reads of whole tables, in a read-only snapshot.
    WholeTables,
}

const COURIERS: &str = "
    SELECT c.id, c.name, c.phone, c.status, c.transport_type, c.completed_deliveries, co.order_id,
           co.deadline
    FROM couriers c
    LEFT JOIN courier_orders co ON co.courier_id = c.id AND co.completed_at IS NULL
    ORDER BY c.id";

/// One courier, as in [`COURIERS`].
const COURIERS_WHERE: &str = "
    SELECT c.id, c.name, c.phone, c.status, c.transport_type, c.completed_deliveries, co.order_id,
           co.deadline
    FROM couriers c
    LEFT JOIN courier_orders co ON co.courier_id = c.id AND co.completed_at IS NULL
    WHERE c.id = $1";

/// Sorts a PostgreSQL error by what the caller should do (see [`RepoError`]; the table is in
/// docs/postgresql.md, "How each PostgreSQL error is handled").
fn classify(e: postgres::Error) -> RepoError {
    let Some(db) = e.as_db_error() else {
        // No answer from a server: the connection broke or never opened.
        let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
        return if e.is_closed() || io {
            RepoError::Transient(format!("connection lost: {e}"))
        } else {
            RepoError::Unexpected(e.to_string())
        };
    };
    let code = db.code();
    let message = format!("{} (SQLSTATE {})", db.message(), code.code());
    if *code == SqlState::UNIQUE_VIOLATION {
        return RepoError::Conflict(message);
    }
    match sqlstate_kind(code.code()) {
        SqlStateKind::Transient => RepoError::Transient(message),
        SqlStateKind::BadData => RepoError::Rejected(message),
        SqlStateKind::Unknown => RepoError::Unexpected(message),
    }
}

/// What a SQLSTATE says about the next move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SqlStateKind {
    /// The server or the moment, not the data: retry.
    Transient,
    /// The data: the same statement with the same values fails again.
    BadData,
    /// Neither is known.
    Unknown,
}

fn sqlstate_kind(code: &str) -> SqlStateKind {
    match code {
        // 25006: read-only transaction, what a demoted primary or a standby answers during a
        // failover; 55P03: lock not available (lock_timeout); XX000: internal error, seen from
        // a server in trouble (XX001/XX002, corrupted data or index, are not transient).
        "25006" | "55P03" | "XX000" => SqlStateKind::Transient,
        _ => match code.get(..2) {
            // 08 connection; 40 serialization failure, deadlock; 53 insufficient resources
            // (too many connections, disk full); 57 operator intervention (shutdown, statement
            // timeout, cancel); 58 system error (I/O) outside PostgreSQL.
            Some("08" | "40" | "53" | "57" | "58") => SqlStateKind::Transient,
            // 22 data exception; 23 integrity constraint violation.
            Some("22" | "23") => SqlStateKind::BadData,
            _ => SqlStateKind::Unknown,
        },
    }
}

fn bad_row(msg: impl Into<String>) -> RepoError {
    RepoError::Unexpected(format!("unexpected row in the database: {}", msg.into()))
}

fn get<'a, T: postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, RepoError> {
    row.try_get(i).map_err(|e| bad_row(e.to_string()))
}

fn parse_col<T>(row: &Row, i: usize) -> Result<T, RepoError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let raw: &str = get(row, i)?;
    raw.parse().map_err(|e: T::Err| bad_row(e.to_string()))
}

fn order_id(row: &Row, i: usize) -> Result<OrderId, RepoError> {
    OrderId::parse(get::<String>(row, i)?).map_err(|e| bad_row(e.to_string()))
}

fn order_state(row: &Row, state: usize, courier: usize) -> Result<OrderState, RepoError> {
    let courier: Option<i64> = get(row, courier)?;
    let courier = courier.map(CourierId);
    Ok(match get::<&str>(row, state)? {
        "unseen" => OrderState::Unseen,
        "waiting" => OrderState::Waiting,
        "assigned" => OrderState::Assigned(
            courier.ok_or_else(|| bad_row("assigned order without a courier"))?,
        ),
        "completed" => OrderState::Completed(courier),
        "cancelled" => OrderState::Cancelled,
        other => return Err(bad_row(format!("order state {other:?}"))),
    })
}

fn courier_view(row: &Row) -> Result<CourierView, RepoError> {
    Ok(CourierView {
        id: CourierId(get(row, 0)?),
        name: get(row, 1)?,
        phone: Phone::parse(get(row, 2)?).map_err(|e| bad_row(e.to_string()))?,
        status: parse_col(row, 3)?,
        transport: parse_col::<TransportType>(row, 4)?,
        completed_deliveries: get(row, 5)?,
        active_order: get::<Option<String>>(row, 6)?
            .map(|s| OrderId::parse(s).map_err(|e| bad_row(e.to_string())))
            .transpose()?,
        deadline: get(row, 7)?,
    })
}

/// The `completed_by` column at `i`: what ended a delivery, `None` while active.
fn completed_by(row: &Row, i: usize) -> Result<Option<CompletedBy>, RepoError> {
    get::<Option<&str>>(row, i)?
        .map(|s| s.parse().map_err(bad_row))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::{describe_target, sqlstate_kind, SqlStateKind};

    #[test]
    fn targets_name_every_host_and_no_password() {
        let one: postgres::Config = "postgres://u:secret@db:6432/courier".parse().expect("url");
        assert_eq!(describe_target(&one), "db:6432/courier");
        let two: postgres::Config =
            "postgres://u:secret@db-a:5432,db-b:5433/courier?target_session_attrs=read-write"
                .parse()
                .expect("url");
        assert_eq!(describe_target(&two), "db-a:5432,db-b:5433/courier");
        let shared: postgres::Config = "host=a,b port=7 user=u dbname=d".parse().expect("kv");
        assert_eq!(describe_target(&shared), "a:7,b:7/d");
    }

    #[test]
    fn sqlstates_sort_by_the_next_move() {
        use SqlStateKind::*;
        for (code, kind) in [
            ("08006", Transient), // connection failure
            ("08001", Transient), // cannot connect now
            ("40001", Transient), // serialization failure
            ("40P01", Transient), // deadlock
            ("53300", Transient), // too many connections
            ("57014", Transient), // statement timeout
            ("57P01", Transient), // admin shutdown
            ("57P03", Transient), // cannot connect now (starting up, recovering)
            ("58030", Transient), // I/O error
            ("25006", Transient), // read-only transaction (a standby, mid-failover)
            ("55P03", Transient), // lock timeout
            ("XX000", Transient), // internal error
            ("22001", BadData),   // value too long
            ("22P02", BadData),   // invalid text representation
            ("23514", BadData),   // check constraint
            ("23503", BadData),   // foreign key
            ("42P01", Unknown),   // undefined table: a schema problem, not the event
            ("42703", Unknown),   // undefined column
            ("0A000", Unknown),   // feature not supported (cached plan changed)
            ("25P02", Unknown),   // in failed transaction: a bug
            ("XX001", Unknown),   // data corrupted
            ("55000", Unknown),   // object not in prerequisite state
        ] {
            assert_eq!(sqlstate_kind(code), kind, "{code}");
        }
    }
}
