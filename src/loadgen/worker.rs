//! One load-generator thread: its own `mio::Poll` driving a share of the clients.
//!
//! Each client is a small state machine over the natter protocol (or, for the
//! `ceiling` scenario, over the relay's raw pairing). Messages carry
//! `<sender>.<seq>.<send time in ns>.` at the start of their text, so the receiving
//! side computes delivery latency and detects loss and duplicates without any shared
//! state beyond a few counters. Threads touch the shared atomics once per read batch,
//! never per message, so the generator stays cheaper than what it measures.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::{Mode, Phase, Plan, Shared, mono_ns};
use crate::net::{
    Step, read_step, read_tls_step, sync_write_interest, write_tls_until_blocked,
    write_until_blocked,
};

/// Connection attempts a thread keeps outstanding at once: more only overflow the
/// server's listen backlog, and a dropped SYN costs a one-second retransmit.
const MAX_CONNECTING: usize = 512;

/// What one thread hands back when it stops.
pub(super) struct ThreadResult {
    /// Delivery latency in microseconds, for messages received while measuring.
    pub latency: Histogram<u64>,
    /// Reply latency (request sent to `+SENT`/`+STORED`/`+BCAST`), microseconds.
    pub reply_latency: Histogram<u64>,
    /// One key per message received, for loss and duplicate checks: `sender << 40 | seq`
    /// for direct messages; broadcasts add the recipient (`recipient << 44 | sender << 24
    /// | seq`, seq modulo 2^24) since every recipient gets the same sender and seq.
    pub received: Vec<u64>,
    /// Messages the server accepted (`+SENT`/`+STORED`), or relay round trips.
    pub accepted: u64,
    /// Broadcast deliveries the server reported (`+BCAST <delivered> ...`).
    pub bcast_expected: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum St {
    Connecting,
    /// Handshake and login written, waiting for `+WELCOME`.
    LoggingIn,
    Active,
    /// `LOGOUT` sent (churn), waiting for the server to close.
    LoggingOut,
}

struct Conn {
    stream: TcpStream,
    /// The TLS session (`--tls`); `rbuf`/`wbuf` hold plain text either way.
    tls: Option<Box<rustls::ClientConnection>>,
    idx: usize,
    st: St,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    write_interest: bool,
    inflight: u32,
    seq: u64,
    /// When each request still waiting for its reply was sent (replies come in order).
    sent_at: std::collections::VecDeque<u64>,
    /// Highest `*MSG` id not yet acknowledged.
    ack: Option<u64>,
    touched: bool,
}

struct Worker {
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    poll: Poll,
    conns: Slab<Conn>,
    touched: Vec<usize>,
    rng: u64,
    text_pad: String,
    scratch: Vec<u8>,
    result: ThreadResult,
    measuring: bool,
    sending: bool,
    // Batched updates for the shared counters.
    delivered: u64,
    presence: u64,
    inflight_delta: i64,
    accepted: u64,
    bcast_expected: u64,
    /// Open-loop pacing (`--rate`): send credits, refilled at rate x clients.
    pace_tokens: f64,
    pace_at: std::time::Instant,
    pace_cursor: usize,
    /// Clients not connected yet: `next_idx..hi`.
    next_idx: usize,
    hi: usize,
    connecting: usize,
}

/// Runs clients `lo..hi` until the phase becomes `Stop`.
pub(super) fn run(
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    lo: usize,
    hi: usize,
    seed: u64,
) -> io::Result<ThreadResult> {
    let mut w = Worker {
        text_pad: "x".repeat(plan.msg_size),
        plan,
        shared,
        poll: Poll::new()?,
        conns: Slab::with_capacity(hi - lo),
        touched: Vec::new(),
        rng: seed | 1,
        scratch: vec![0; 64 * 1024],
        result: ThreadResult {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).map_err(io::Error::other)?,
            reply_latency: Histogram::new_with_bounds(1, 60_000_000, 3)
                .map_err(io::Error::other)?,
            received: Vec::new(),
            accepted: 0,
            bcast_expected: 0,
        },
        measuring: false,
        sending: false,
        delivered: 0,
        presence: 0,
        inflight_delta: 0,
        accepted: 0,
        bcast_expected: 0,
        pace_tokens: 0.0,
        pace_at: std::time::Instant::now(),
        pace_cursor: 0,
        next_idx: lo,
        hi,
        connecting: 0,
    };
    w.connect_more()?;
    w.run()?;
    Ok(w.result)
}

impl Worker {
    fn next_rand(&mut self) -> u64 {
        // xorshift64*: plenty for picking recipients.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Starts connections until `MAX_CONNECTING` are outstanding or all are started.
    fn connect_more(&mut self) -> io::Result<()> {
        while self.connecting < MAX_CONNECTING && self.next_idx < self.hi {
            let idx = self.next_idx;
            self.next_idx += 1;
            self.connect(idx)?;
        }
        Ok(())
    }

    fn connect(&mut self, idx: usize) -> io::Result<()> {
        let addrs = &self.plan.addrs;
        let addr: SocketAddr = addrs[idx % addrs.len()];
        let mut stream = TcpStream::connect(addr)?;
        // Like any chat client: Nagle plus delayed ACKs would add 40 ms to a message
        // written while an earlier line is unacknowledged.
        stream.set_nodelay(true)?;
        let key = self.conns.vacant_key();
        self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let mut wbuf = Vec::new();
        if self.plan.mode != Mode::Ceiling {
            wbuf.extend_from_slice(
                format!(
                    "HELLO 1\nLOGIN {} {}\n",
                    self.plan.user(idx),
                    self.plan.password(idx)
                )
                .as_bytes(),
            );
        }
        let tls = match &self.plan.tls {
            Some(config) => {
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                let conn = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(io::Error::other)?;
                Some(Box::new(conn))
            }
            None => None,
        };
        self.connecting += 1;
        self.conns.insert(Conn {
            stream,
            tls,
            idx,
            st: St::Connecting,
            rbuf: Vec::new(),
            wbuf,
            write_interest: true,
            inflight: 0,
            seq: 0,
            sent_at: std::collections::VecDeque::new(),
            ack: None,
            touched: false,
        });
        Ok(())
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut phase = Phase::Setup;
        loop {
            // Paced runs wake every millisecond to spread their sends evenly.
            let tick = if self.plan.rate.is_some() && self.sending {
                1
            } else {
                20
            };
            if let Err(e) = self
                .poll
                .poll(&mut events, Some(Duration::from_millis(tick)))
            {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in events.iter() {
                let key = ev.token().0;
                let Some(c) = self.conns.get_mut(key) else {
                    continue;
                };
                if c.st == St::Connecting {
                    // Connected once writable with no error and a peer address; an
                    // event that shows neither (a stale one for a reused key) is ignored.
                    if c.stream.take_error().ok().flatten().is_some() {
                        self.drop_conn(key);
                        continue;
                    }
                    if !ev.is_writable() || c.stream.peer_addr().is_err() {
                        continue;
                    }
                    self.connecting -= 1;
                    c.st = if self.plan.mode == Mode::Ceiling {
                        self.shared.logged_in.fetch_add(1, Ordering::Relaxed);
                        St::Active
                    } else {
                        St::LoggingIn
                    };
                }
                if ev.is_readable() || ev.is_read_closed() {
                    self.read(key);
                }
                self.touch(key);
            }
            let now_phase = self.shared.phase();
            if now_phase != phase {
                phase = now_phase;
                self.measuring = phase == Phase::Measure;
                self.sending = matches!(phase, Phase::Run | Phase::Measure);
                if phase == Phase::Stop {
                    return Ok(());
                }
                let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                for k in keys {
                    self.touch(k);
                }
            }
            self.pace();
            for key in std::mem::take(&mut self.touched) {
                if let Some(c) = self.conns.get_mut(key) {
                    c.touched = false;
                }
                self.refill(key);
                self.flush(key);
            }
            self.publish();
            self.connect_more()?;
        }
    }

    fn touch(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key)
            && !c.touched
        {
            c.touched = true;
            self.touched.push(key);
        }
    }

    fn publish(&mut self) {
        let s = &self.shared;
        if self.delivered > 0 {
            s.delivered
                .fetch_add(std::mem::take(&mut self.delivered), Ordering::Relaxed);
        }
        if self.presence > 0 {
            s.presence
                .fetch_add(std::mem::take(&mut self.presence), Ordering::Relaxed);
        }
        if self.accepted > 0 {
            let n = std::mem::take(&mut self.accepted);
            self.result.accepted += n;
            s.accepted.fetch_add(n, Ordering::Relaxed);
        }
        if self.bcast_expected > 0 {
            let n = std::mem::take(&mut self.bcast_expected);
            self.result.bcast_expected += n;
            s.bcast_expected.fetch_add(n, Ordering::Relaxed);
        }
        if self.inflight_delta != 0 {
            s.inflight
                .fetch_add(std::mem::take(&mut self.inflight_delta), Ordering::Relaxed);
        }
    }

    fn drop_conn(&mut self, key: usize) {
        if let Some(mut c) = self.conns.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            if c.st == St::Connecting {
                self.connecting -= 1;
            }
            self.inflight_delta -= i64::from(c.inflight);
            let churn_cycle = self.plan.mode == Mode::Churn && c.st == St::LoggingOut;
            let winding_down = matches!(self.shared.phase(), Phase::Drain | Phase::Stop);
            if churn_cycle {
                self.shared.cycles.fetch_add(1, Ordering::Relaxed);
            } else if !winding_down {
                self.shared.errors.fetch_add(1, Ordering::Relaxed);
            }
            if c.st == St::Active || c.st == St::LoggingOut {
                self.shared.logged_in.fetch_sub(1, Ordering::Relaxed);
            }
            if self.plan.mode == Mode::Churn && self.sending {
                // Reconnect at once: churn is connect, log in, message, log out, repeat.
                if self.connect(c.idx).is_err() {
                    self.shared.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn read(&mut self, key: usize) {
        loop {
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            match read_plain(c, &mut self.scratch) {
                Step::Done(n) => {
                    let mut rbuf = std::mem::take(&mut c.rbuf);
                    rbuf.extend_from_slice(&self.scratch[..n]);
                    let mut start = 0;
                    while let Some(nl) = memchr::memchr(b'\n', &rbuf[start..]) {
                        self.line(key, &rbuf[start..start + nl]);
                        start += nl + 1;
                    }
                    rbuf.drain(..start);
                    let Some(c) = self.conns.get_mut(key) else {
                        return;
                    };
                    c.rbuf = rbuf;
                }
                Step::WouldBlock => break,
                Step::Closed | Step::Failed(_) => return self.drop_conn(key),
            }
        }
        // One cumulative acknowledgement per read batch.
        if let Some(c) = self.conns.get_mut(key)
            && let Some(id) = c.ack.take()
        {
            c.wbuf.extend_from_slice(format!("ACK {id}\n").as_bytes());
        }
    }

    /// Records a delivered message text `<sender>.<seq>.<t_ns>.padding`.
    fn delivery(&mut self, key: usize, text: &[u8]) {
        let mut parts = text.splitn(4, |&b| b == b'.');
        let num = |p: Option<&[u8]>| -> Option<u64> { std::str::from_utf8(p?).ok()?.parse().ok() };
        let (Some(sender), Some(seq), Some(t)) =
            (num(parts.next()), num(parts.next()), num(parts.next()))
        else {
            self.shared.errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.delivered += 1;
        if self.plan.check {
            let id = if self.plan.mode == Mode::Broadcast {
                let recipient = self.conns.get(key).map_or(0, |c| c.idx as u64);
                (recipient << 44) | ((sender & 0xf_ffff) << 24) | (seq & 0xff_ffff)
            } else {
                (sender << 40) | seq
            };
            self.result.received.push(id);
        }
        if self.measuring {
            let us = mono_ns().saturating_sub(t) / 1000;
            let _ = self.result.latency.record(us.max(1));
        }
    }

    fn line(&mut self, key: usize, line: &[u8]) {
        let mode = self.plan.mode;
        if mode == Mode::Ceiling {
            // From the partner, through the relay: `MSG <to> <text>` or `ACK <seq>`.
            if let Some(rest) = line.strip_prefix(b"MSG ") {
                let text = rest.splitn(2, |&b| b == b' ').nth(1).unwrap_or_default();
                self.delivery(key, text);
                if let Some(c) = self.conns.get_mut(key) {
                    c.wbuf.extend_from_slice(b"ACK 0\n");
                }
            } else if line.starts_with(b"ACK ") {
                self.replied(key);
            }
            return;
        }
        if let Some(rest) = line.strip_prefix(b"*MSG ") {
            let mut parts = rest.splitn(3, |&b| b == b' ');
            let id = parts
                .next()
                .and_then(|p| std::str::from_utf8(p).ok())
                .and_then(|p| p.parse::<u64>().ok());
            let text = parts.nth(1).unwrap_or_default();
            self.delivery(key, text);
            if let (Some(id), Some(c)) = (id, self.conns.get_mut(key)) {
                c.ack = Some(id);
            }
        } else if let Some(rest) = line.strip_prefix(b"*BCAST ") {
            let text = rest.splitn(2, |&b| b == b' ').nth(1).unwrap_or_default();
            self.delivery(key, text);
        } else if line.starts_with(b"+SENT ") || line.starts_with(b"+STORED ") {
            self.accepted += 1;
            self.replied(key);
        } else if let Some(rest) = line.strip_prefix(b"+BCAST ") {
            let delivered = rest
                .split(|&b| b == b' ')
                .next()
                .and_then(|p| std::str::from_utf8(p).ok())
                .and_then(|p| p.parse::<u64>().ok())
                .unwrap_or(0);
            self.accepted += 1;
            self.bcast_expected += delivered;
            self.replied(key);
        } else if let Some(rest) = line.strip_prefix(b"*LOGIN ") {
            self.presence += rest.split(|&b| b == b' ').count() as u64;
        } else if line.starts_with(b"*LOGOUT ")
            || line.starts_with(b"+HELLO ")
            || line.starts_with(b"+BYE")
        {
        } else if let Some(seq) = line.strip_prefix(b"*PING ") {
            if let Some(c) = self.conns.get_mut(key) {
                c.wbuf.extend_from_slice(b"PONG ");
                c.wbuf.extend_from_slice(seq);
                c.wbuf.push(b'\n');
            }
        } else if line == b"+WELCOME" {
            if let Some(c) = self.conns.get_mut(key) {
                c.st = St::Active;
            }
            self.shared.logged_in.fetch_add(1, Ordering::Relaxed);
            self.shared.welcomes.fetch_add(1, Ordering::Relaxed);
        } else if line.starts_with(b"-") {
            // An error reply: to a message (it still ends its slot in the window) or to
            // the login (a setup problem the report shows).
            self.shared.errors.fetch_add(1, Ordering::Relaxed);
            if self
                .conns
                .get(key)
                .is_some_and(|c| c.st == St::Active && c.inflight > 0)
            {
                self.replied(key);
            }
        }
    }

    fn replied(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key) {
            if let Some(t) = c.sent_at.pop_front()
                && self.measuring
            {
                let us = mono_ns().saturating_sub(t) / 1000;
                let _ = self.result.reply_latency.record(us.max(1));
            }
            c.inflight = c.inflight.saturating_sub(1);
            self.inflight_delta -= 1;
            if self.plan.mode == Mode::Churn && c.st == St::Active {
                c.wbuf.extend_from_slice(b"LOGOUT\n");
                c.st = St::LoggingOut;
            }
        }
        if self.plan.mode == Mode::Ceiling {
            self.accepted += 1;
        }
    }

    /// With `--rate`: adds the credits earned since the last call and offers them to
    /// the clients in turn (each still bounded by its window).
    fn pace(&mut self) {
        let Some(rate) = self.plan.rate else {
            return;
        };
        let now = std::time::Instant::now();
        let n = self.conns.len().max(1) as f64;
        let earned = now.duration_since(self.pace_at).as_secs_f64() * rate * n;
        self.pace_at = now;
        if !self.sending {
            self.pace_tokens = 0.0;
            return;
        }
        self.pace_tokens = (self.pace_tokens + earned).min(n);
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for i in 0..keys.len() {
            if self.pace_tokens < 1.0 {
                break;
            }
            let key = keys[(self.pace_cursor + i) % keys.len()];
            self.touch(key);
        }
        self.pace_cursor = self.pace_cursor.wrapping_add(1);
    }

    /// Tops the client's window up with new messages while sending is on (and, when
    /// paced, while send credits last).
    fn refill(&mut self, key: usize) {
        if !self.sending {
            return;
        }
        let plan = self.plan.clone();
        let window = match plan.mode {
            Mode::Direct | Mode::Ceiling => plan.window,
            Mode::Broadcast => {
                let idx = self.conns.get(key).map_or(usize::MAX, |c| c.idx);
                if idx < plan.senders { plan.window } else { 0 }
            }
            Mode::Churn => 1,
            Mode::LoginStorm | Mode::Idle => 0,
        };
        loop {
            let Some(c) = self.conns.get(key) else {
                return;
            };
            if c.st != St::Active || c.inflight >= window {
                return;
            }
            if plan.mode == Mode::Churn && c.seq > 0 {
                return;
            }
            if plan.rate.is_some() {
                if self.pace_tokens < 1.0 {
                    return;
                }
                self.pace_tokens -= 1.0;
            }
            let (idx, seq) = (c.idx, c.seq);
            let to = if plan.offline {
                plan.clients + (self.next_rand() % plan.clients as u64) as usize
            } else if plan.clients > 1 {
                let r = (self.next_rand() % (plan.clients as u64 - 1)) as usize;
                if r >= idx { r + 1 } else { r }
            } else {
                idx
            };
            let now = mono_ns();
            let head = format!("{idx}.{seq}.{now}.");
            let pad = plan.msg_size.saturating_sub(head.len());
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            match plan.mode {
                Mode::Broadcast => c.wbuf.extend_from_slice(b"BCAST "),
                _ => {
                    c.wbuf.extend_from_slice(b"MSG ");
                    c.wbuf.extend_from_slice(plan.user(to).as_bytes());
                    c.wbuf.push(b' ');
                }
            }
            c.wbuf.extend_from_slice(head.as_bytes());
            c.wbuf.extend_from_slice(&self.text_pad.as_bytes()[..pad]);
            c.wbuf.push(b'\n');
            c.sent_at.push_back(now);
            c.inflight += 1;
            c.seq += 1;
            self.inflight_delta += 1;
        }
    }

    fn flush(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.st == St::Connecting {
            return;
        }
        if write_plain(c).is_err() {
            return self.drop_conn(key);
        }
        let want = !c.wbuf.is_empty() || c.tls.as_ref().is_some_and(|t| t.wants_write());
        let registry = self.poll.registry();
        if sync_write_interest(
            registry,
            &mut c.stream,
            Token(key),
            want,
            &mut c.write_interest,
        )
        .is_err()
        {
            self.drop_conn(key);
        }
    }
}

/// Reads plain text into `buf`: straight from the socket, or out of the TLS session
/// after feeding it the records the socket has.
fn read_plain(c: &mut Conn, buf: &mut [u8]) -> Step {
    match c.tls.as_deref_mut() {
        Some(tls) => read_tls_step(tls, &mut c.stream, buf),
        None => read_step(&mut c.stream, buf),
    }
}

/// Writes what `wbuf` holds (through the TLS session, if any) until the socket is full.
fn write_plain(c: &mut Conn) -> io::Result<()> {
    let Some(tls) = &mut c.tls else {
        if !c.wbuf.is_empty() {
            let n = write_until_blocked(&mut c.stream, &c.wbuf)?;
            c.wbuf.drain(..n);
        }
        return Ok(());
    };
    if !c.wbuf.is_empty() {
        let n = io::Write::write(&mut tls.writer(), &c.wbuf)?;
        c.wbuf.drain(..n);
    }
    write_tls_until_blocked(tls, &mut c.stream)
}
