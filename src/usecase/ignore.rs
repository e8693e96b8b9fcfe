//! `pending`, `confirmed`, `cooking`, `delivering`, `updated`: progress that changes nothing for
//! couriers. Acknowledged and counted, never stored.

use super::Outcome;

/// Does nothing, on purpose.
pub fn handle() -> Outcome {
    Outcome::Ignored
}
