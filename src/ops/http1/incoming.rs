//! The bytes of one connection not yet used: a buffer over the stream that the head parser and
//! the body readers take from in turn, so bytes read past a head (a body, a pipelined request)
//! are kept for what comes next.

use std::io::{ErrorKind, Read};

/// Bytes asked of the stream per read.
const READ_CHUNK: usize = 8 * 1024;

/// A stream and what has been read from it but not used.
pub struct Incoming<S> {
    /// The connection.
    stream: S,
    /// Read bytes; those before `start` are used.
    buf: Vec<u8>,
    /// Where the unused bytes begin.
    start: usize,
}

impl<S: Read> Incoming<S> {
    /// Nothing read yet.
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// The bytes read and not yet used.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Marks the first `n` buffered bytes used.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            // A large head or body read does not keep its buffer for the connection's life.
            self.buf.shrink_to(READ_CHUNK);
        }
    }

    /// Reads once more from the stream into the buffer: how many bytes came (0: the peer
    /// closed). Errors are the stream's (a timeout is `WouldBlock` or `TimedOut`).
    pub fn fill(&mut self) -> std::io::Result<usize> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + READ_CHUNK, 0);
        let read = loop {
            match self.stream.read(&mut self.buf[len..]) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        self.buf.truncate(len + *read.as_ref().unwrap_or(&0));
        read
    }

    /// The stream, to write to it.
    pub fn stream(&mut self) -> &mut S {
        &mut self.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unused_bytes_stay_for_the_next_reader() {
        let mut incoming = Incoming::new(&b"abcdef"[..]);
        assert_eq!(incoming.fill().ok(), Some(6));
        incoming.consume(2);
        assert_eq!(incoming.buffered(), b"cdef");
        assert_eq!(incoming.fill().ok(), Some(0));
        assert_eq!(incoming.buffered(), b"cdef");
        incoming.consume(10);
        assert_eq!(incoming.buffered(), b"");
    }
}
