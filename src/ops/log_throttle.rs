//! Rate-limited log lines. A producer that goes bad can send thousands of bad events a minute;
//! one warning each would drown every other line. So for each kind (a dead-letter reason, say)
//! the first line is logged in full, and after it at most one summary a minute: how many more
//! there were and the latest of them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How often a kind may log once its first line is out.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Lines of one kind since its last logged line.
#[derive(Debug)]
struct Kind {
    /// When its last line (full or summary) was logged.
    logged_at: Instant,
    /// Lines held back since then.
    held_back: u64,
    /// The latest line held back, and its level.
    latest: Option<(log::Level, String)>,
}

/// Per-kind throttle: the first line, then one summary per [`SUMMARY_EVERY`] at most.
#[derive(Debug)]
pub struct LogThrottle {
    every: Duration,
    what: &'static str,
    kinds: BTreeMap<String, Kind>,
}

impl LogThrottle {
    /// A throttle whose summaries count `what` (e.g. "dead letters"), at most one per kind per
    /// `every`.
    pub fn new(what: &'static str, every: Duration) -> Self {
        Self {
            every,
            what,
            kinds: BTreeMap::new(),
        }
    }

    /// One occurrence of `kind`: logs `line` at `level`, or a summary, or holds it back.
    pub fn note(&mut self, kind: &str, level: log::Level, line: String) {
        if let Some((level, text)) = self.note_at(kind, level, line, Instant::now()) {
            log::log!(level, "{text}");
        }
    }

    /// Logs the summaries that are due: kinds with lines held back for [`SUMMARY_EVERY`].
    /// Call it now and then, so a burst that stopped is still reported.
    pub fn tick(&mut self) {
        for (level, text) in self.due_at(Instant::now(), false) {
            log::log!(level, "{text}");
        }
    }

    /// Logs every summary still held back (when stopping).
    pub fn flush(&mut self) {
        for (level, text) in self.due_at(Instant::now(), true) {
            log::log!(level, "{text}");
        }
    }

    /// What to log for one occurrence at `now`, if anything.
    fn note_at(
        &mut self,
        kind: &str,
        level: log::Level,
        line: String,
        now: Instant,
    ) -> Option<(log::Level, String)> {
        let Some(k) = self.kinds.get_mut(kind) else {
            self.kinds.insert(
                kind.to_owned(),
                Kind {
                    logged_at: now,
                    held_back: 0,
                    latest: None,
                },
            );
            return Some((level, line));
        };
        if now.duration_since(k.logged_at) < self.every {
            k.held_back += 1;
            k.latest = Some((level, line));
            return None;
        }
        let text = if k.held_back == 0 {
            line
        } else {
            summary(self.what, kind, k.held_back + 1, now - k.logged_at, &line)
        };
        k.logged_at = now;
        k.held_back = 0;
        k.latest = None;
        Some((level, text))
    }

    /// Summaries due at `now` (all of them with `all`), each kind's window restarted.
    fn due_at(&mut self, now: Instant, all: bool) -> Vec<(log::Level, String)> {
        let mut out = Vec::new();
        for (kind, k) in &mut self.kinds {
            if k.held_back == 0 || (!all && now.duration_since(k.logged_at) < self.every) {
                continue;
            }
            if let Some((level, line)) = k.latest.take() {
                let since = now.duration_since(k.logged_at);
                out.push((level, summary(self.what, kind, k.held_back, since, &line)));
            }
            k.logged_at = now;
            k.held_back = 0;
        }
        out
    }
}

fn summary(what: &str, kind: &str, n: u64, over: Duration, latest: &str) -> String {
    format!(
        "{n} more {what} ({kind}) in the last {} s (at most one line a minute per kind); \
         the latest: {latest}",
        over.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_in_full_then_one_summary_per_window_per_kind() {
        let mut t = LogThrottle::new("dead letters", Duration::from_secs(60));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let warn = log::Level::Warn;
        let first = t.note_at("invalid_json", warn, "bad at 0/1".into(), at(0));
        assert_eq!(first, Some((warn, "bad at 0/1".into())));
        // Another kind has its own window.
        assert!(t
            .note_at("empty", warn, "empty at 0/2".into(), at(1))
            .is_some());
        for i in 0..500 {
            assert_eq!(
                t.note_at("invalid_json", warn, format!("bad at 0/{i}"), at(2)),
                None
            );
        }
        assert!(t.due_at(at(30), false).is_empty());
        let due = t.due_at(at(61), false);
        assert_eq!(due.len(), 1);
        assert!(due[0]
            .1
            .starts_with("500 more dead letters (invalid_json) in the last 61 s"));
        assert!(
            due[0].1.ends_with("the latest: bad at 0/499"),
            "{}",
            due[0].1
        );
        assert!(t.due_at(at(200), false).is_empty());
        // Quiet for a window: the next one is logged in full again.
        assert_eq!(
            t.note_at("invalid_json", warn, "bad again".into(), at(300)),
            Some((warn, "bad again".into()))
        );
        assert_eq!(
            t.note_at("invalid_json", warn, "held".into(), at(301)),
            None
        );
        let flushed = t.due_at(at(302), true);
        assert_eq!(flushed.len(), 1);
        assert!(flushed[0]
            .1
            .starts_with("1 more dead letters (invalid_json)"));
    }
}
