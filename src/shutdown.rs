//! Stopping, as one small type: SIGINT or SIGTERM sets a flag; the poller stops polling, the
//! workers drain and exit, the final offsets are committed. Loops ask `is_shutdown()`; waits use
//! `sleep()`, which returns early when stopping.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A shared "we are stopping" flag, and when it was set.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<Flag>);

#[derive(Debug, Default)]
struct Flag {
    set: AtomicBool,
    since: OnceLock<Instant>,
}

impl Shutdown {
    /// A flag that is not set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the flag on SIGINT and SIGTERM (ctrlc's `termination` feature).
    pub fn install_signal_handler(&self) -> Result<(), ctrlc::Error> {
        let flag = self.clone();
        ctrlc::set_handler(move || {
            if !flag.is_shutdown() {
                log::info!("stop requested (SIGINT/SIGTERM): finishing queued events");
            }
            flag.trigger();
        })
    }

    /// Asks everything to stop.
    pub fn trigger(&self) {
        let _ = self.0.since.set(Instant::now());
        self.0.set.store(true, Ordering::SeqCst);
    }

    /// Whether stopping was requested.
    pub fn is_shutdown(&self) -> bool {
        self.0.set.load(Ordering::SeqCst)
    }

    /// Whether stopping was requested more than `budget` ago.
    pub fn stopping_longer_than(&self, budget: Duration) -> bool {
        self.0.since.get().is_some_and(|t| t.elapsed() > budget)
    }

    /// Sleeps for `d`, waking early when stopping. Returns `false` if stopping.
    pub fn sleep(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        while !self.is_shutdown() {
            let now = Instant::now();
            if now >= end {
                return true;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(25)));
        }
        false
    }
}

/// Capped exponential backoff: 100 ms, 200 ms, … up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at 100 ms, doubles up to `max`.
    pub fn new(max: Duration) -> Self {
        Self {
            next: Duration::from_millis(100),
            max,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to the first delay after a success.
    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(500));
        let got: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }

    #[test]
    fn sleep_wakes_up_on_shutdown() {
        let s = Shutdown::new();
        let t = s.clone();
        let h = std::thread::spawn(move || t.sleep(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(50));
        s.trigger();
        assert_eq!(h.join().ok(), Some(false));
        assert!(s.is_shutdown());
    }
}
