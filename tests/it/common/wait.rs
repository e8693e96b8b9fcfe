//! Waiting for a condition, bounded by a generous deadline. Tests never sleep for a fixed time
//! and then assert: on a slow, busy machine that either fails or proves nothing.

use std::time::{Duration, Instant};

/// Waits up to `limit` for `cond`, polling every 100 ms; panics naming `what` after that.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(limit, what, || cond().then_some(()))
}

/// Waits up to `limit` until `probe` returns something, polling every 100 ms, and returns it;
/// panics naming `what` after that.
pub fn wait_for<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Retries `attempt` every second for up to `limit`; returns how many attempts it took. For
/// scripts that may refuse for a while after an abrupt stop (a dead server's sockets linger).
pub fn retry(
    limit: Duration,
    what: &str,
    mut attempt: impl FnMut() -> Result<String, String>,
) -> u32 {
    let start = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        match attempt() {
            Ok(_) => return attempts,
            Err(e) if start.elapsed() > limit => panic!("{what}: gave up after {limit:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}
