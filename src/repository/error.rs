//! Storage errors, typed by what the caller should do about them (docs/postgresql.md
//! lists the SQLSTATE classes behind each).

use std::fmt;

/// A storage failure. The variant decides the caller's next move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoError {
    /// Worth retrying with backoff, for as long as it takes: connection lost or refused, pool
    /// exhausted, deadlock, serialization failure, a server shutting down, a read-only server in
    /// the seconds of a failover. Never a dead letter.
    Transient(String),
    /// A uniqueness rule said no (for example a phone already taken). Retrying won't help.
    Conflict(String),
    /// The database refused the data itself (SQLSTATE class 22 or 23 other than a unique
    /// conflict: a value out of range, a check constraint). The same event would be refused
    /// again, so it is dead-lettered.
    Rejected(String),
    /// Anything else: a broken schema, a bug, a code nobody classified. Neither retrying soon
    /// nor dead-lettering is known to help: the event is retried a few times, then its worker
    /// stalls and says so on `/healthz` until it applies (never a dead letter).
    Unexpected(String),
}

impl RepoError {
    /// Whether the same work may succeed if run again later.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }

    /// Whether the event's own data is what was refused: the same event always will be.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, Self::Conflict(_) | Self::Rejected(_))
    }
}

impl fmt::Display for RepoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transient(m) => write!(f, "temporary storage failure: {m}"),
            Self::Conflict(m) => write!(f, "conflict: {m}"),
            Self::Rejected(m) => write!(f, "the database refused the data: {m}"),
            Self::Unexpected(m) => write!(f, "storage failure: {m}"),
        }
    }
}

impl std::error::Error for RepoError {}
