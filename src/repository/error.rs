//! Storage errors, typed by what the caller should do about them.

use std::fmt;

/// A storage failure. The variant decides the caller's next move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoError {
    /// Worth retrying with backoff: connection lost or refused, pool exhausted, deadlock,
    /// serialization failure, server shutting down.
    Transient(String),
    /// A uniqueness rule said no (for example a phone already taken). Retrying won't help.
    Conflict(String),
    /// Anything else: a broken schema or a bug. Retrying won't help.
    Permanent(String),
}

impl RepoError {
    /// Whether the same work may succeed if run again later.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }
}

impl fmt::Display for RepoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transient(m) => write!(f, "temporary storage failure: {m}"),
            Self::Conflict(m) => write!(f, "conflict: {m}"),
            Self::Permanent(m) => write!(f, "storage failure: {m}"),
        }
    }
}

impl std::error::Error for RepoError {}
