//! How each transaction opens: its settings travel with `BEGIN` (`SET LOCAL`, one round trip),
//! never in the connection's startup options, which connection poolers in transaction mode
//! (PgBouncer, RDS Proxy) refuse or drop. Behind such a pooler, statements are also prepared
//! per transaction and closed before it ends, since the next transaction may run on another
//! server connection. docs/postgresql.md says when to set what.

use std::collections::HashMap;

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, Row, Statement};

use super::PgConnection;

/// Every statement of ours reads or writes a few rows through an index. A young table that grows
/// fast (a new deployment draining a backlog) has the statistics of an empty one, and a plan
/// prepared then (cached for the connection's life) would keep scanning the whole table or
/// hashing it. These settings make the planner take the indexes whatever the statistics say.
/// JIT goes too: the penalty those settings put on a scan that must read a whole table would
/// otherwise trigger JIT compilation, which costs more than the query.
const INDEX_PLANS: &[(&str, &str)] = &[
    ("enable_seqscan", "off"),
    ("enable_hashjoin", "off"),
    ("enable_mergejoin", "off"),
    ("jit", "off"),
];

/// For reads that count or list every row: a table of many dead row versions is far quicker to
/// scan than to walk through an index, so the planner keeps its whole-table strategies.
const WHOLE_TABLE_PLANS: &[(&str, &str)] = &[("jit", "off")];

/// What sits between the service and PostgreSQL (DB_POOLER).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooler {
    /// Nothing, or a pooler in session mode: a connection is ours from connect to close, so
    /// each one keeps the statements it prepared.
    #[default]
    None,
    /// A pooler in transaction mode: only a transaction is ours. Statements are prepared per
    /// transaction, and migrations (which hold a session-level lock) are refused.
    Transaction,
}

/// The server-side bounds every transaction sets for itself (0 turns one off), so that a stuck
/// query, a lock held too long or a forgotten transaction ends in an error, retried like any
/// transient failure, instead of a worker waiting forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransactionLimits {
    /// `statement_timeout`: the server cancels a statement running longer.
    pub statement_ms: u64,
    /// `lock_timeout`: the server gives up waiting for a row or table lock.
    pub lock_ms: u64,
    /// `idle_in_transaction_session_timeout`: the server ends a session idle inside a
    /// transaction.
    pub idle_in_transaction_ms: u64,
}

impl Default for TransactionLimits {
    fn default() -> Self {
        Self {
            statement_ms: 30_000,
            lock_ms: 10_000,
            idle_in_transaction_ms: 60_000,
        }
    }
}

/// The `BEGIN` batches of a repository: built once, sent as one simple query per transaction.
#[derive(Debug, Clone)]
pub(super) struct Openers {
    /// A read-write transaction with index plans (the event path, the API's edits, small reads).
    pub index_plans: String,
    /// A read-only snapshot with whole-table plans (counts, lists, snapshots).
    pub whole_table_reads: String,
    /// What is between us and the server.
    pub pooler: Pooler,
}

impl Openers {
    pub fn new(limits: TransactionLimits, pooler: Pooler) -> Self {
        let bounds = [
            ("statement_timeout", limits.statement_ms.to_string()),
            ("lock_timeout", limits.lock_ms.to_string()),
            (
                "idle_in_transaction_session_timeout",
                limits.idle_in_transaction_ms.to_string(),
            ),
        ];
        let settings = |plans: &[(&str, &str)]| {
            let each: Vec<String> = bounds
                .iter()
                .map(|(name, value)| (*name, value.as_str()))
                .chain(plans.iter().copied())
                .map(|(name, value)| format!("set_config('{name}', '{value}', true)"))
                .collect();
            // `set_config(…, true)` is `SET LOCAL`; one statement is cheaper for the server
            // than one `SET LOCAL` each, and this batch runs once per transaction.
            format!("SELECT {}", each.join(", "))
        };
        Self {
            index_plans: format!("BEGIN; {}", settings(INDEX_PLANS)),
            whole_table_reads: format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {}",
                settings(WHOLE_TABLE_PLANS)
            ),
            pooler,
        }
    }

    /// Whether a connection keeps its prepared statements from one transaction to the next:
    /// only when the server connection is ours for the connection's life.
    pub fn keep_statements(&self) -> bool {
        self.pooler == Pooler::None
    }
}

/// An open transaction on a pooled connection, with the connection's statement cache. Rolled
/// back when dropped uncommitted (an error, a panic). `postgres::Transaction` can't be used: it
/// opens with a bare `BEGIN`, a round trip of its own.
///
/// A server that answers `25006 read-only transaction` is a standby or a demoted primary (a
/// failover): the connection is retired, so the retry opens a new one, which
/// `target_session_attrs=read-write` points at the new primary.
pub(super) struct OpenTx<'a> {
    client: &'a mut Client,
    statements: &'a mut HashMap<&'static str, Statement>,
    retired: &'a mut bool,
    keep_statements: bool,
    open: bool,
}

impl<'a> OpenTx<'a> {
    /// Sends `opener` (one of [`Openers`]) on `conn` and returns the open transaction.
    pub fn begin(
        conn: &'a mut PgConnection,
        opener: &str,
        keep_statements: bool,
    ) -> Result<Self, postgres::Error> {
        let PgConnection {
            client,
            statements,
            retired,
        } = conn;
        let mut tx = Self {
            client,
            statements,
            retired,
            keep_statements,
            open: true,
        };
        // On failure the guard is dropped open, so whatever began is rolled back.
        let began = tx.client.batch_execute(opener);
        tx.watch(began)?;
        Ok(tx)
    }

    /// Passes `result` on, retiring the connection when the server no longer takes writes.
    fn watch<T>(&mut self, result: Result<T, postgres::Error>) -> Result<T, postgres::Error> {
        if let Err(e) = &result {
            if e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION) {
                *self.retired = true;
            }
        }
        result
    }

    /// `sql` prepared: once per connection, or once per transaction behind a transaction
    /// pooler.
    pub fn statement(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let prepared = self.client.prepare(sql);
        let s = self.watch(prepared)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    pub fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, postgres::Error> {
        let rows = self.client.query(sql, params);
        self.watch(rows)
    }

    pub fn query_prepared(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, postgres::Error> {
        let stmt = self.statement(sql)?;
        let rows = self.client.query(&stmt, params);
        self.watch(rows)
    }

    pub fn query_one(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, postgres::Error> {
        let row = self.client.query_one(sql, params);
        self.watch(row)
    }

    pub fn query_opt(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, postgres::Error> {
        let row = self.client.query_opt(sql, params);
        self.watch(row)
    }

    pub fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        let n = self.client.execute(sql, params);
        self.watch(n)
    }

    pub fn batch_execute(&mut self, sql: &str) -> Result<(), postgres::Error> {
        let done = self.client.batch_execute(sql);
        self.watch(done)
    }

    pub fn commit(mut self) -> Result<(), postgres::Error> {
        self.close_statements();
        self.open = false;
        let committed = self.client.batch_execute("COMMIT");
        self.watch(committed)
    }

    /// Behind a transaction pooler: closes this transaction's statements while the server
    /// connection is still ours (dropping a statement sends its Close ahead of what follows).
    fn close_statements(&mut self) {
        if !self.keep_statements {
            self.statements.clear();
        }
    }
}

impl Drop for OpenTx<'_> {
    fn drop(&mut self) {
        if self.open {
            self.close_statements();
            // A connection that broke is dropped by the pool anyway (`has_broken`).
            let _ = self.client.batch_execute("ROLLBACK");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openers_set_every_bound_and_plan_for_the_transaction_only() {
        let o = Openers::new(TransactionLimits::default(), Pooler::None);
        assert_eq!(
            o.index_plans,
            "BEGIN; SELECT set_config('statement_timeout', '30000', true), \
             set_config('lock_timeout', '10000', true), \
             set_config('idle_in_transaction_session_timeout', '60000', true), \
             set_config('enable_seqscan', 'off', true), set_config('enable_hashjoin', 'off', true), \
             set_config('enable_mergejoin', 'off', true), set_config('jit', 'off', true)"
        );
        assert!(o.whole_table_reads.starts_with(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT set_config('statement_timeout'"
        ));
        assert!(!o.whole_table_reads.contains("enable_seqscan"));
        assert!(o.keep_statements());
        assert!(!Openers::new(TransactionLimits::default(), Pooler::Transaction).keep_statements());
    }
}
