//! A line-framed TCP connection: the server link and every peer link use it.

use std::io;

use mio::net::TcpStream;

use crate::net::{Step, read_step, write_until_blocked};
use crate::protocol::frames;
use crate::protocol::{Flow, Frame, LineDecoder, OutBuf};

/// Bytes read from one connection before the others (and the terminal) get a turn.
const READ_BUDGET: usize = 64 * 1024;

pub(crate) struct Link {
    pub stream: TcpStream,
    decoder: LineDecoder,
    pub out: OutBuf,
}

impl Link {
    pub(super) fn new(stream: TcpStream) -> Link {
        Link {
            stream,
            decoder: LineDecoder::default(),
            out: OutBuf::default(),
        }
    }

    pub(super) fn send_bytes(&mut self, bytes: &[u8]) {
        self.out.tail().extend_from_slice(bytes);
    }

    pub(super) fn send_raw(&mut self, line: &str) {
        let t = self.out.tail();
        t.extend_from_slice(line.as_bytes());
        t.push(b'\n');
    }

    /// Writes what the socket takes now; Err means the link is dead.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let n = write_until_blocked(&mut self.stream, self.out.pending())?;
            self.out.consume(n);
        }
        Ok(())
    }

    /// Reads what is available, up to `READ_BUDGET` bytes; returns the complete lines
    /// and whether the stream ended. `more` is set when the budget ran out before the
    /// socket did: the caller must come back (readiness is edge-triggered), and a
    /// peer that sends without pause cannot make us hold more than a budget's lines.
    pub(super) fn read_lines(&mut self, buf: &mut [u8], more: &mut bool) -> (Vec<String>, bool) {
        let mut lines = Vec::new();
        let mut budget = READ_BUDGET;
        loop {
            if budget == 0 {
                *more = true;
                return (lines, false);
            }
            match read_step(&mut self.stream, buf) {
                Step::Done(n) => {
                    budget = budget.saturating_sub(n);
                    self.decoder.feed(&buf[..n], frames::MAX_LINE, |f| {
                        // An unreadable line becomes one no verb matches, so a handshake
                        // fails at once while an open session just ignores it.
                        lines.push(match f {
                            Frame::Line(l) => l.to_string(),
                            Frame::TooLong | Frame::BadUtf8 => "\u{0}".to_string(),
                        });
                        Flow::Continue
                    })
                }
                Step::WouldBlock => return (lines, false),
                Step::Closed | Step::Failed(_) => return (lines, true),
            }
        }
    }
}
