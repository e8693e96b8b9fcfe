//! Dead letters that Kafka has not accepted yet (the dead-letter topic missing, the broker
//! refusing), held in memory with their offsets uncommitted. Without a bound they, and every
//! offset fetched after them, pile up for as long as the outage lasts. [`DeadLetterBacklog`]
//! holds them in order and says when the poller must stop fetching (a bound in letters and in
//! payload bytes) and when it may start again (below half of both, so fetching does not
//! flap on and off with every letter sent). It never drops a letter: a letter dropped would be
//! an offset committed without its event having gone anywhere.
//!
//! The bound can be passed by at most one poll's worth of bad events: the poller checks
//! [`DeadLetterBacklog::must_pause`] before each poll, not in the middle of one.

use std::collections::VecDeque;
use std::fmt;

use super::dead_letter::DeadLetter;

/// Letters held before fetching pauses, by default.
pub const DEFAULT_MAX_LETTERS: usize = 1000;
/// Value bytes held before fetching pauses, by default (a letter holds its event's whole value,
/// at most what one fetch reads).
pub const DEFAULT_MAX_BYTES: usize = 16 << 20;

/// Unsent dead letters, oldest first, with the pause decision.
#[derive(Debug)]
pub struct DeadLetterBacklog {
    /// The letters, oldest first.
    letters: VecDeque<DeadLetter>,
    /// Value bytes held.
    bytes: usize,
    /// Letters held past which fetching pauses.
    max_letters: usize,
    /// Value bytes held past which fetching pauses.
    max_bytes: usize,
    /// Whether fetching is paused (kept between calls: pausing has hysteresis).
    paused: bool,
}

/// Whether the poller may fetch, for `/healthz` and the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BacklogState {
    /// Below the bound (or back below half of it): fetch.
    Flowing {
        /// Letters held.
        held: usize,
    },
    /// At the bound: do not fetch until letters are sent.
    Paused {
        /// Letters held.
        held: usize,
        /// Payload bytes held.
        bytes: usize,
    },
}

impl fmt::Display for BacklogState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Flowing { held } => write!(f, "{held} dead letters waiting to be sent"),
            Self::Paused { held, bytes } => write!(
                f,
                "fetching paused: {held} dead letters ({bytes} payload bytes) cannot be sent to \
                 the dead-letter topic; their offsets stay uncommitted"
            ),
        }
    }
}

impl DeadLetterBacklog {
    /// A backlog that pauses fetching at `max_letters` letters or `max_bytes` payload bytes
    /// (each at least 1).
    pub fn new(max_letters: usize, max_bytes: usize) -> Self {
        Self {
            letters: VecDeque::new(),
            bytes: 0,
            max_letters: max_letters.max(1),
            max_bytes: max_bytes.max(1),
            paused: false,
        }
    }

    /// Holds a letter until it is sent. Always accepted (see the module doc).
    pub fn push(&mut self, letter: DeadLetter) {
        self.bytes += letter.value.len();
        self.letters.push_back(letter);
        self.update();
    }

    /// The oldest letter, to send next.
    pub fn front(&self) -> Option<&DeadLetter> {
        self.letters.front()
    }

    /// Removes the oldest letter once Kafka accepted it.
    pub fn pop_front(&mut self) -> Option<DeadLetter> {
        let letter = self.letters.pop_front()?;
        self.bytes -= letter.value.len();
        self.update();
        Some(letter)
    }

    /// The letters held, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &DeadLetter> {
        self.letters.iter()
    }

    /// Keeps only the letters `keep` accepts (those of partitions handed back are the next
    /// owner's to produce again).
    pub fn retain(&mut self, mut keep: impl FnMut(&DeadLetter) -> bool) {
        let mut bytes = 0;
        self.letters.retain(|l| {
            let kept = keep(l);
            if kept {
                bytes += l.value.len();
            }
            kept
        });
        self.bytes = bytes;
        self.update();
    }

    /// Letters held.
    pub fn len(&self) -> usize {
        self.letters.len()
    }

    /// Whether no letter is held.
    pub fn is_empty(&self) -> bool {
        self.letters.is_empty()
    }

    /// Whether the poller must not fetch now.
    pub fn must_pause(&self) -> bool {
        self.paused
    }

    /// The state, for `/healthz` and the gauge.
    pub fn state(&self) -> BacklogState {
        if self.paused {
            BacklogState::Paused {
                held: self.letters.len(),
                bytes: self.bytes,
            }
        } else {
            BacklogState::Flowing {
                held: self.letters.len(),
            }
        }
    }

    fn update(&mut self) {
        let (n, b) = (self.letters.len(), self.bytes);
        if n >= self.max_letters || b >= self.max_bytes {
            self.paused = true;
        } else if n <= self.max_letters / 2 && b <= self.max_bytes / 2 {
            self.paused = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(offset: i64, size: usize) -> DeadLetter {
        DeadLetter::new(
            "invalid_json",
            "x".into(),
            "t",
            0,
            offset,
            None,
            &vec![b'a'; size],
        )
    }

    #[test]
    fn fetching_pauses_at_the_letter_bound_and_resumes_below_half_of_it() {
        let mut b = DeadLetterBacklog::new(4, 1 << 20);
        for o in 0..3 {
            b.push(letter(o, 10));
            assert!(!b.must_pause(), "paused with {} letters", b.len());
        }
        b.push(letter(3, 10));
        assert!(b.must_pause());
        assert_eq!(b.state(), BacklogState::Paused { held: 4, bytes: 40 });
        // Past the bound (one poll's worth): still accepted, never dropped.
        b.push(letter(4, 10));
        assert_eq!(b.len(), 5);
        // Sending one or two is not enough to resume: hysteresis.
        assert_eq!(b.pop_front().map(|l| l.offset), Some(0));
        assert_eq!(b.pop_front().map(|l| l.offset), Some(1));
        assert!(b.must_pause(), "resumed at 3 of 4");
        assert_eq!(b.pop_front().map(|l| l.offset), Some(2));
        assert!(!b.must_pause(), "still paused at 2 of 4");
        assert_eq!(b.state(), BacklogState::Flowing { held: 2 });
        assert_eq!(b.front().map(|l| l.offset), Some(3), "oldest first");
    }

    #[test]
    fn fetching_pauses_at_the_byte_bound() {
        let mut b = DeadLetterBacklog::new(1000, 100);
        b.push(letter(0, 60));
        assert!(!b.must_pause());
        b.push(letter(1, 40));
        assert!(b.must_pause());
        assert!(b
            .state()
            .to_string()
            .starts_with("fetching paused: 2 dead letters (100"));
        b.push(letter(2, 20));
        b.pop_front();
        assert!(b.must_pause(), "60 of 100 bytes left: above half");
        b.pop_front();
        assert!(!b.must_pause(), "20 of 100 bytes left: resumed");
    }

    #[test]
    fn an_empty_backlog_flows() {
        let mut b = DeadLetterBacklog::new(1, 1);
        assert!(b.is_empty() && !b.must_pause());
        assert_eq!(b.pop_front(), None);
        b.push(letter(0, 0));
        assert!(b.must_pause(), "a bound of one letter");
        b.pop_front();
        assert!(!b.must_pause());
    }
}
