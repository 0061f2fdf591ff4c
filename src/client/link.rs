//! A line-framed TCP connection: the server link and every peer link use it.

use std::io;

use mio::net::TcpStream;

use crate::net::{Step, read_step, read_tls_step, write_tls_until_blocked, write_until_blocked};
use crate::protocol::frames;
use crate::protocol::{Flow, Frame, LineDecoder, OutBuf};

/// Bytes read from one connection before the others (and the terminal) get a turn.
const READ_BUDGET: usize = 64 * 1024;

pub(crate) struct Link {
    pub stream: TcpStream,
    decoder: LineDecoder,
    pub out: OutBuf,
    /// The TLS session, when the link is encrypted (the server link by default; a
    /// private session when both peers have certificates).
    tls: Option<Box<rustls::Connection>>,
}

/// Plain text a TLS session may buffer for writing; the rest waits in `out`, where
/// the client's own bound applies.
const TLS_BUFFER: usize = 64 * 1024;

impl Link {
    pub(super) fn new(stream: TcpStream) -> Link {
        Link {
            stream,
            decoder: LineDecoder::default(),
            out: OutBuf::default(),
            tls: None,
        }
    }

    /// Encrypts the link with `tls` (before anything is written).
    pub(super) fn with_tls(mut self, tls: impl Into<rustls::Connection>) -> Link {
        self.start_tls(tls.into());
        self
    }

    /// Encrypts the link from now on (an inbound peer that opened with a handshake).
    pub(super) fn start_tls(&mut self, mut tls: rustls::Connection) {
        tls.set_buffer_limit(Some(TLS_BUFFER));
        self.tls = Some(Box::new(tls));
    }

    /// The fingerprint of the certificate the other end presented, once known.
    pub(super) fn peer_fingerprint(&self) -> Option<String> {
        let tls = self.tls.as_ref()?;
        let cert = tls.peer_certificates()?.first()?;
        Some(crate::tls::fingerprint(cert))
    }

    /// The first byte waiting on the socket, without taking it (`Ok(None)`: the other
    /// end closed; `WouldBlock`: nothing yet).
    pub(super) fn peek_first(&self) -> io::Result<Option<u8>> {
        let mut b = [0u8; 1];
        match self.stream.peek(&mut b)? {
            0 => Ok(None),
            _ => Ok(Some(b[0])),
        }
    }

    /// Writes what rustls has ready; `Ok` also when the socket is full.
    fn write_tls(&mut self) -> io::Result<()> {
        match self.tls.as_deref_mut() {
            None => Ok(()),
            Some(rustls::Connection::Client(c)) => write_tls_until_blocked(c, &mut self.stream),
            Some(rustls::Connection::Server(c)) => write_tls_until_blocked(c, &mut self.stream),
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
        if let Some(tls) = &mut self.tls {
            if !self.out.is_empty() {
                let n = io::Write::write(&mut tls.writer(), self.out.pending())?;
                self.out.consume(n);
            }
            return self.write_tls();
        }
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
        let closed = loop {
            if budget == 0 {
                *more = true;
                break false;
            }
            match self.read_step(buf) {
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
                Step::WouldBlock => break false,
                Step::Closed | Step::Failed(_) => break true,
            }
        };
        // Handshake messages to answer go out now.
        let _ = self.write_tls();
        (lines, closed)
    }

    /// One read: from the socket, or through the TLS session when there is one.
    fn read_step(&mut self, buf: &mut [u8]) -> Step {
        match self.tls.as_deref_mut() {
            None => read_step(&mut self.stream, buf),
            Some(rustls::Connection::Client(c)) => read_tls_step(c, &mut self.stream, buf),
            Some(rustls::Connection::Server(c)) => read_tls_step(c, &mut self.stream, buf),
        }
    }
}
