//! Cluster mode's broker connection: NATS with JetStream, one more socket on the loop.
//!
//! [`Broker`] is the client side of the NATS protocol ([`nats`]) and of the JetStream
//! JSON API, driven by the event loop like any other socket (no thread, no async
//! runtime): it hands the core's batches to the broker and the broker's answers to the
//! core. What it keeps:
//!
//! - **Publishes not yet acknowledged**, each with a `Nats-Msg-Id` (node incarnation
//!   and a counter): they are sent again after a reconnect, and the broker's duplicate
//!   window makes a publish that did land count once. A batch is reported durable
//!   ([`Core::handle_durable`]) once every publish in it and before it is acknowledged.
//! - **The stream consumer**: an ephemeral push consumer with no acks, delivering every
//!   record from the last one applied (all of them at start: that is the replica's
//!   restore), checked for gaps by its consumer sequence (a gap makes a new one).
//! - **Heartbeats**: every node says `natter.c.hb <node> <incarnation>` every second;
//!   an incarnation with users online that is [`PROBE_AFTER`] late is asked for on
//!   `natter.c.probe.<incarnation>` ("no responders": its connection is gone) and one
//!   not heard for [`DEAD_AFTER`] is gone anyway; either is reported to the core
//!   ([`Core::handle_node_gone`]); an older incarnation of this node's own name is
//!   gone at once. Logins probe the same way (`Op::Probe`).
//! - **Purges**: once a second, all mail below the lowest message any user still
//!   waits for (one request, [`Core::mail_watermark`]); recipients acknowledged above
//!   it (old mail waiting for someone holds the mark back) a few per second, one
//!   request each. The stream holds what is still undelivered plus the latest record
//!   of each other subject.
//!
//! While the connection is down the core is told the store is unavailable
//! (new messages are refused as on a full disk), and the connection is made again with
//! a backoff, trying each configured URL in turn.

mod config;
mod consumer;
mod liveness;
pub mod nats;
mod publish;
mod purge;
pub mod record;

pub use config::{BrokerUrl, ClusterConfig, parse_urls, valid_node_name};

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use serde_json::{Value, json};

use self::consumer::{Consumer, Delivery};
use self::liveness::{Asker, Liveness, Verdict};
pub use self::liveness::{DEAD_AFTER, HEARTBEAT, PROBE_AFTER};
use self::nats::{Event, Msg};
use self::purge::Purges;
use self::record::Rec;
use crate::server::core::{Core, IntroAnswer, Op};

/// How long an introduction asked of another node may take.
const INTRO_TIMEOUT: Duration = Duration::from_secs(3);
/// Silence from the broker (which echoes our own heartbeats) after which the
/// connection is presumed dead and made again.
const BROKER_SILENCE: Duration = Duration::from_secs(6);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A JetStream set-up request unanswered this long is asked again.
const SETUP_TIMEOUT: Duration = Duration::from_secs(2);
/// The consumer sends an idle heartbeat every second: this long without one (or a
/// record) and it is made again.
const CONSUMER_SILENCE: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Output queued for the broker beyond which new messages are refused until it drains.
const MAX_QUEUED: usize = 32 << 20;

/// Subscription ids.
const SID_INBOX: u64 = 1;
const SID_HEARTBEAT: u64 = 2;
const SID_BROADCAST: u64 = 3;
const SID_INTRO: u64 = 4;
const SID_PROBE: u64 = 5;
/// The consumer's deliveries: this plus its generation.
const SID_CONSUMER: u64 = 100;

/// JetStream's "wrong last sequence" (a compare-and-set that lost).
const ERR_WRONG_LAST_SEQUENCE: u64 = 10071;
/// JetStream's "stream name already in use" (with another configuration).
const ERR_STREAM_NAME_IN_USE: u64 = 10058;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No connection; the next attempt is at `retry_at`.
    Down,
    /// TCP connecting.
    Connecting,
    /// Waiting for `INFO`, then for the `PONG` that confirms `CONNECT`.
    Handshake,
    /// Creating the stream and the consumer.
    Setup,
    /// Serving.
    Ready,
}

/// The connection to the broker and everything waiting on it.
pub struct Broker {
    cfg: ClusterConfig,
    inc: u64,
    token: Token,
    conn: Option<TcpStream>,
    state: State,
    parser: nats::Parser,
    out: Vec<u8>,
    write_interest: bool,
    url_index: usize,
    retry_at: Option<Instant>,
    connect_deadline: Option<Instant>,
    backoff: Duration,
    ready_since: Option<Instant>,
    last_rx: Instant,
    /// Publishes not yet acknowledged, by id (also their `Nats-Msg-Id`).
    pubs: publish::Publishes,
    next_id: u64,
    /// Direct gets in flight for lost claims: request id -> claim serial.
    gets: HashMap<u64, u64>,
    /// Introductions asked of other nodes: request id -> (core's id, deadline).
    intros: HashMap<u64, (u64, Instant)>,
    /// The stream consumer: its generation (deliver subject and sid) and progress.
    consumer: Consumer,
    /// Other nodes' heartbeats and probes.
    live: Liveness,
    /// Recipients whose acknowledged messages can be purged: below this sequence.
    purges: Purges,
    told_healthy: Option<bool>,
    /// The read buffer (kept, not zeroed per wake-up).
    scratch: Box<[u8]>,
    /// The last read stopped at its budget with bytes left in the socket.
    read_more: bool,
    /// Addresses of the current URL not tried yet (popped from the end).
    addrs: Vec<SocketAddr>,
    ever_ready: bool,
    setup_deadline: Option<Instant>,
}

impl Broker {
    /// A broker connection for this node (incarnation `inc`), not connected yet.
    pub fn new(cfg: ClusterConfig, inc: u64, token: Token, now: Instant) -> Broker {
        Broker {
            cfg,
            inc,
            token,
            conn: None,
            state: State::Down,
            parser: nats::Parser::default(),
            out: Vec::new(),
            write_interest: false,
            url_index: 0,
            retry_at: Some(now),
            connect_deadline: None,
            backoff: BACKOFF_MIN,
            ready_since: None,
            last_rx: now,
            pubs: publish::Publishes::default(),
            next_id: 1,
            gets: HashMap::new(),
            intros: HashMap::new(),
            consumer: Consumer::new(now),
            live: Liveness::new(now),
            purges: Purges::new(now),
            told_healthy: None,
            scratch: Box::default(),
            read_more: false,
            addrs: Vec::new(),
            ever_ready: false,
            setup_deadline: None,
        }
    }

    /// Connected, set up, and the replica has applied every record the stream had
    /// when the consumer was made (the node may serve logins).
    pub fn caught_up(&self) -> bool {
        self.state == State::Ready && self.consumer.caught_up
    }

    /// Publishes not yet acknowledged.
    pub fn unacknowledged(&self) -> usize {
        self.pubs.len()
    }

    /// The last stream sequence applied.
    pub fn applied(&self) -> u64 {
        self.consumer.applied
    }

    /// For the counters line: the connection's state and what waits on it.
    pub fn stats(&self) -> String {
        format!(
            "broker={:?} applied={} unacknowledged={} queued_to_broker={}",
            self.state,
            self.consumer.applied,
            self.pubs.len(),
            self.out.len()
        )
        .to_lowercase()
    }

    fn inbox(&self, kind: char, id: u64) -> String {
        format!("_INBOX.{:016x}.{kind}.{id}", self.inc)
    }

    fn api(&self, what: &str) -> String {
        format!("$JS.API.{what}.{}", self.cfg.stream)
    }

    // ---- the socket ---------------------------------------------------------------

    fn connect(&mut self, registry: &Registry, now: Instant) {
        if self.addrs.is_empty() {
            // The next URL's addresses, IPv4 first (nats-server listens on 0.0.0.0
            // unless told otherwise, where "localhost" may resolve to ::1 first).
            let url = &self.cfg.urls[self.url_index % self.cfg.urls.len()];
            self.url_index += 1;
            let mut addrs: Vec<SocketAddr> = match url.addr.to_socket_addrs() {
                Ok(a) => a.collect(),
                Err(e) => {
                    warn!("broker {}: cannot resolve the address: {e}", url.addr);
                    return self.schedule_retry(now);
                }
            };
            addrs.sort_by_key(|a| std::cmp::Reverse(a.is_ipv4()));
            addrs.reverse();
            self.addrs = addrs;
        }
        let Some(addr) = self.addrs.pop() else {
            return self.schedule_retry(now);
        };
        match TcpStream::connect(addr) {
            Ok(mut s) => {
                if let Err(e) =
                    registry.register(&mut s, self.token, Interest::READABLE | Interest::WRITABLE)
                {
                    warn!("broker {addr}: register failed: {e}");
                    return self.schedule_retry(now);
                }
                let _ = s.set_nodelay(true);
                debug!("broker {addr}: connecting");
                self.conn = Some(s);
                self.write_interest = true;
                self.state = State::Connecting;
                self.connect_deadline = Some(now + CONNECT_TIMEOUT);
                self.retry_at = None;
                self.parser.reset();
                self.out.clear();
                self.last_rx = now;
            }
            Err(e) => {
                warn!("broker {addr}: cannot connect: {e}");
                self.schedule_retry(now);
            }
        }
    }

    fn schedule_retry(&mut self, now: Instant) {
        if !self.addrs.is_empty() {
            // Another address of the same broker: at once.
            self.retry_at = Some(now);
            return;
        }
        self.retry_at = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Drops the connection (it is made again after the backoff).
    fn disconnect(&mut self, registry: &Registry, why: &str, now: Instant) {
        if let Some(mut s) = self.conn.take() {
            let _ = registry.deregister(&mut s);
        }
        if self.state == State::Ready {
            warn!("broker connection lost: {why}; reconnecting");
        } else {
            warn!("broker connection failed: {why}");
        }
        self.state = State::Down;
        self.ready_since = None;
        self.connect_deadline = None;
        self.out.clear();
        self.gets.clear();
        self.pubs.all_unsent();
        self.schedule_retry(now);
    }

    /// The socket is ready: reads everything there is, handing it to the core.
    pub fn on_event(&mut self, registry: &Registry, core: &mut Core, now: Instant) {
        if self.state == State::Connecting {
            let Some(s) = &self.conn else { return };
            match (s.take_error(), s.peer_addr()) {
                (Ok(None), Ok(_)) => {
                    self.state = State::Handshake;
                    self.connect_deadline = Some(now + CONNECT_TIMEOUT);
                }
                (Ok(Some(e)) | Err(e), _) => return self.disconnect(registry, &e.to_string(), now),
                (_, Err(e)) if e.kind() == io::ErrorKind::NotConnected => return,
                (_, Err(e)) => return self.disconnect(registry, &e.to_string(), now),
            }
        }
        self.read_more = false;
        let mut buf = std::mem::take(&mut self.scratch);
        if buf.is_empty() {
            buf = vec![0u8; 64 * 1024].into_boxed_slice();
        }
        self.read_into(&mut buf, registry, core, now);
        self.scratch = buf;
        if self.state == State::Down {
            self.disconnect(registry, "refused by the broker", now);
        }
    }

    /// Reads until the socket is drained or this wake-up's budget is spent (then
    /// `read_more` says to come back without waiting for an event: the socket's
    /// readiness is edge-triggered).
    fn read_into(&mut self, buf: &mut [u8], registry: &Registry, core: &mut Core, now: Instant) {
        let mut budget: usize = 4 << 20;
        loop {
            let Some(s) = &mut self.conn else { return };
            match s.read(buf) {
                Ok(0) => return self.disconnect(registry, "closed by the broker", now),
                Ok(n) => {
                    self.last_rx = now;
                    let mut parser = std::mem::take(&mut self.parser);
                    let result = parser.feed(&buf[..n], |e| self.on_nats(core, e, now));
                    self.parser = parser;
                    if let Err(e) = result {
                        return self.disconnect(registry, &format!("protocol error: {}", e.0), now);
                    }
                    if self.conn.is_none() {
                        return;
                    }
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        self.read_more = true;
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.disconnect(registry, &e.to_string(), now),
            }
        }
    }

    fn flush(&mut self, registry: &Registry, now: Instant) {
        let Some(s) = &mut self.conn else { return };
        if self.state == State::Connecting {
            return;
        }
        let mut written = 0;
        while written < self.out.len() {
            match s.write(&self.out[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.out.drain(..written);
                    return self.disconnect(registry, &e.to_string(), now);
                }
            }
        }
        self.out.drain(..written);
        let want = !self.out.is_empty();
        if want != self.write_interest {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if registry.reregister(s, self.token, interest).is_ok() {
                self.write_interest = want;
            }
        }
        if self.out.is_empty() && self.out.capacity() > 1 << 20 {
            self.out.shrink_to(64 * 1024);
        }
    }

    // ---- what the broker says -------------------------------------------------------

    fn on_nats(&mut self, core: &mut Core, e: Event<'_>, now: Instant) {
        match e {
            Event::Ping => self.out.extend_from_slice(b"PONG\r\n"),
            Event::Pong if self.state == State::Handshake => self.setup(),
            Event::Pong | Event::Ok => {}
            Event::Info(_) if self.state == State::Handshake => self.send_connect(),
            Event::Info(_) => {}
            Event::Err(text) => {
                error!("broker says: {text}");
                let lower = text.to_ascii_lowercase();
                if self.state != State::Ready
                    || lower.contains("authorization")
                    || lower.contains("slow consumer")
                {
                    // Fatal for this connection: made again after the backoff.
                    self.state = State::Down;
                }
            }
            Event::Msg(m) => self.on_msg(core, m, now),
        }
    }

    fn send_connect(&mut self) {
        let url = &self.cfg.urls[(self.url_index + self.cfg.urls.len() - 1) % self.cfg.urls.len()];
        let mut c = json!({
            "verbose": false,
            "pedantic": false,
            "lang": "rust",
            "version": env!("CARGO_PKG_VERSION"),
            "name": format!("natterd {}", self.cfg.node),
            "protocol": 1,
            "headers": true,
            "no_responders": true,
            "echo": true,
        });
        if let Some((u, p)) = &url.user {
            c["user"] = json!(u);
            c["pass"] = json!(p);
        }
        if let Some(t) = &url.token {
            c["auth_token"] = json!(t);
        }
        self.out
            .extend_from_slice(format!("CONNECT {c}\r\nPING\r\n").as_bytes());
    }

    /// Connected: subscribes and creates the stream (then the consumer).
    fn setup(&mut self) {
        self.state = State::Setup;
        self.connect_deadline = None;
        let inbox = format!("_INBOX.{:016x}.>", self.inc);
        nats::sub(&mut self.out, &inbox, SID_INBOX);
        nats::sub(&mut self.out, "natter.c.hb", SID_HEARTBEAT);
        nats::sub(&mut self.out, "natter.c.bcast", SID_BROADCAST);
        nats::sub(
            &mut self.out,
            &format!("natter.c.intro.{:016x}", self.inc),
            SID_INTRO,
        );
        nats::sub(
            &mut self.out,
            &format!("natter.c.probe.{:016x}", self.inc),
            SID_PROBE,
        );
        self.create_stream();
    }

    fn create_stream(&mut self) {
        self.setup_deadline = Some(Instant::now() + SETUP_TIMEOUT);
        let cfg = json!({
            "name": self.cfg.stream,
            "subjects": [record::STREAM_SUBJECTS],
            "retention": "limits",
            "storage": "file",
            "num_replicas": self.cfg.replicas,
            "discard": "new",
            "allow_rollup_hdrs": true,
            "allow_direct": true,
            "duplicate_window": 30_000_000_000u64,
        });
        let subject = self.api("STREAM.CREATE");
        let reply = self.inbox('s', 1);
        nats::publish(
            &mut self.out,
            &subject,
            Some(&reply),
            cfg.to_string().as_bytes(),
        );
    }

    /// A new consumer from the record after the last applied one.
    fn create_consumer(&mut self) {
        let old = self.consumer.generation;
        if old > 0 {
            // The one it replaces goes at once (not after its inactivity threshold).
            nats::unsub(&mut self.out, SID_CONSUMER + old);
            let subject = format!(
                "{}.{}",
                self.api("CONSUMER.DELETE"),
                Consumer::name(self.inc, old)
            );
            let reply = self.inbox('x', 0);
            nats::publish(&mut self.out, &subject, Some(&reply), b"");
        }
        let generation = self.consumer.renew(Instant::now());
        let deliver = format!("natter.d.{:016x}.{generation}", self.inc);
        nats::sub(&mut self.out, &deliver, SID_CONSUMER + generation);
        let name = Consumer::name(self.inc, generation);
        let config = self.consumer.config(&name, &deliver);
        let body = json!({"stream_name": self.cfg.stream, "config": config});
        let subject = format!("{}.{name}", self.api("CONSUMER.CREATE"));
        let reply = self.inbox('s', 2);
        nats::publish(
            &mut self.out,
            &subject,
            Some(&reply),
            body.to_string().as_bytes(),
        );
    }

    fn on_msg(&mut self, core: &mut Core, m: Msg<'_>, now: Instant) {
        match m.sid {
            SID_INBOX => self.on_reply(core, m, now),
            SID_HEARTBEAT => {
                let text = String::from_utf8_lossy(m.payload);
                let mut f = text.split(' ');
                if let (Some(name), Some(inc)) = (
                    f.next(),
                    f.next().and_then(|i| u64::from_str_radix(i, 16).ok()),
                ) {
                    if name == self.cfg.node && inc != self.inc && self.live.clash(now) {
                        // Each would log the other's users out as an earlier run of
                        // itself: say so loudly.
                        error!(
                            "another natterd runs as node {name} (incarnation {inc:016x}): every node needs its own --node name"
                        );
                    }
                    self.live.heard(inc, now);
                }
            }
            SID_BROADCAST => {
                if let Some((from, text)) = std::str::from_utf8(m.payload)
                    .ok()
                    .and_then(|p| p.split_once(' '))
                    .filter(|(f, t)| record::word(f) && crate::protocol::frames::clean_text(t))
                {
                    core.handle_cluster_broadcast(from, text, now);
                }
            }
            SID_INTRO => {
                let Some(reply) = m.reply else { return };
                let answer = match std::str::from_utf8(m.payload)
                    .ok()
                    .map(|p| p.split(' ').collect::<Vec<_>>())
                {
                    Some(f) if f.len() == 3 && f.iter().all(|w| record::word(w)) => {
                        let key = if f[2] == "-" { "" } else { f[2] };
                        core.handle_intro_request(f[0], f[1], key)
                    }
                    _ => IntroAnswer::Offline,
                };
                nats::publish(
                    &mut self.out,
                    reply,
                    None,
                    encode_answer(&answer).as_bytes(),
                );
            }
            SID_PROBE => {
                if let Some(reply) = m.reply {
                    nats::publish(&mut self.out, reply, None, b"here");
                }
            }
            sid if sid == SID_CONSUMER + self.consumer.generation => self.on_record(core, m, now),
            _ => {}
        }
    }

    /// A record from the consumer.
    fn on_record(&mut self, core: &mut Core, m: Msg<'_>, now: Instant) {
        if m.status().is_some() {
            // An idle heartbeat (100): says which record was delivered last.
            let last = m
                .header("Nats-Last-Consumer")
                .and_then(|c| c.parse::<u64>().ok());
            if self.consumer.heartbeat(last, now) {
                warn!("stream consumer lost records: making a new one");
                self.create_consumer();
            }
            return;
        }
        let (delivery, caught_up) = self.consumer.delivery(m.reply, now);
        if caught_up {
            self.set_caught_up(now);
        }
        match delivery {
            Delivery::Apply(sseq) => match Rec::parse(m.subject, m.payload) {
                Some(rec) => core.handle_cluster_record(sseq, rec, now),
                None => warn!("stream record {sseq} on {} is not ours; skipped", m.subject),
            },
            Delivery::Gap { after } => {
                warn!(
                    "stream consumer skipped after delivery {after}: making a new one from {}",
                    self.consumer.applied + 1
                );
                self.create_consumer();
            }
            Delivery::Duplicate | Delivery::Unknown => {}
        }
    }

    /// An answer on our inbox: a publish acknowledgement, a direct get, an
    /// introduction, or a set-up step.
    fn on_reply(&mut self, core: &mut Core, m: Msg<'_>, now: Instant) {
        let mut tail = m.subject.rsplitn(3, '.');
        let (Some(id), Some(kind)) = (tail.next().and_then(|i| i.parse::<u64>().ok()), tail.next())
        else {
            return;
        };
        match kind {
            "p" => self.on_pub_ack(core, id, &m, now),
            "g" => {
                let Some(serial) = self.gets.remove(&id) else {
                    return;
                };
                let current = match (
                    m.status(),
                    m.header("Nats-Sequence"),
                    m.header("Nats-Subject"),
                ) {
                    (None, Some(seq), Some(subject)) => seq
                        .parse::<u64>()
                        .ok()
                        .and_then(|seq| Some((seq, Rec::parse(subject, m.payload)?))),
                    _ => None,
                };
                core.handle_claim_conflict(serial, current, now);
            }
            "i" => {
                let Some((cid, _)) = self.intros.remove(&id) else {
                    return;
                };
                let answer = if m.status().is_some() {
                    IntroAnswer::Offline
                } else {
                    decode_answer(m.payload)
                };
                core.handle_intro_answer(cid, answer, now);
            }
            "r" => {
                let Some(asker) = self.live.answered(id) else {
                    return;
                };
                // No responders: nobody holds that node's subscription any more.
                let alive = m.status() != Some(503);
                match asker {
                    Asker::Login(pid) => core.handle_probe_answer(pid, alive, now),
                    Asker::Silence(inc) if alive => self.live.heard(inc, now),
                    Asker::Silence(inc) => {
                        warn!("node incarnation {inc:016x} is late and no longer connected");
                        self.live.gone(inc, now);
                        core.handle_node_gone(inc, now);
                    }
                }
            }
            "s" => self.on_setup_reply(id, &m, now),
            _ => {}
        }
    }

    fn on_setup_reply(&mut self, step: u64, m: &Msg<'_>, now: Instant) {
        let v: Value = serde_json::from_slice(m.payload).unwrap_or(Value::Null);
        let err = v.get("error");
        let code = err.and_then(|e| e.get("err_code")).and_then(Value::as_u64);
        match step {
            1 => {
                if m.status() == Some(503) {
                    error!("the broker has no JetStream (start nats-server with -js)");
                    self.state = State::Down;
                    return;
                }
                let last = v
                    .get("state")
                    .and_then(|st| st.get("last_seq"))
                    .and_then(Value::as_u64);
                if let Some(last) = last.filter(|&l| l < self.consumer.applied) {
                    // The broker lost its storage (or the stream was deleted): what
                    // this node applied is gone from the cluster. Apply the new stream
                    // from its start; restarting every node gives clean replicas.
                    error!(
                        "stream {} ends at {last}, before what this node applied ({}): the broker lost the cluster's state; restart the nodes",
                        self.cfg.stream, self.consumer.applied
                    );
                    self.consumer.applied = 0;
                }
                match (err, code) {
                    (None, _) => {}
                    (Some(_), Some(ERR_STREAM_NAME_IN_USE)) => {
                        warn!(
                            "stream {} exists with another configuration; using it as it is",
                            self.cfg.stream
                        );
                    }
                    (Some(e), _) => {
                        error!("cannot create stream {}: {e}", self.cfg.stream);
                        self.state = State::Down;
                        return;
                    }
                }
                self.create_consumer();
            }
            2 => {
                if let Some(e) = err {
                    error!("cannot create the stream consumer: {e}");
                    self.state = State::Down;
                    return;
                }
                let pending = v.get("num_pending").and_then(Value::as_u64).unwrap_or(0);
                if pending == 0 {
                    self.set_caught_up(now);
                }
                if self.state == State::Setup {
                    if self.ever_ready {
                        warn!("broker connection restored ({pending} records to apply)");
                    } else {
                        info!(
                            "broker ready (node {}, stream {}, {pending} records to apply)",
                            self.cfg.node, self.cfg.stream
                        );
                    }
                    self.ever_ready = true;
                    self.addrs.clear();
                    // Who was heard before this connection says nothing about now:
                    // everyone gets DEAD_AFTER from here to be heard again.
                    self.live.forget_heard();
                    self.state = State::Ready;
                    self.ready_since = Some(now);
                    self.backoff = BACKOFF_MIN;
                    self.send_pubs();
                }
            }
            _ => {}
        }
    }

    fn on_pub_ack(&mut self, core: &mut Core, id: u64, m: &Msg<'_>, now: Instant) {
        if m.status() == Some(503) {
            // No stream to take it (the broker lost its storage, or JetStream is
            // starting): set the stream up again and send everything again.
            warn!("publish not taken by the broker (no responders); setting the stream up again");
            if let Some(p) = self.pubs.get_mut(id) {
                p.sent = false;
            }
            self.pubs.retry_at = Some(now + BACKOFF_MAX);
            if self.state == State::Ready {
                self.create_stream_again();
            }
            return;
        }
        // The usual answer, `{"stream":"NATTER","seq":N}`, is not worth a JSON parse.
        let v: Value = if memchr::memmem::find(m.payload, b"\"error\"").is_none() {
            Value::Null
        } else {
            serde_json::from_slice(m.payload).unwrap_or(Value::Null)
        };
        let err = v.get("error");
        let code = err.and_then(|e| e.get("err_code")).and_then(Value::as_u64);
        let Some(p) = self.pubs.get_mut(id) else {
            return;
        };
        match (err, code) {
            (None, _) => {
                self.pubs.failing = false;
            }
            (Some(_), Some(ERR_WRONG_LAST_SEQUENCE)) => {
                if let Some(serial) = p.claim {
                    // Ask what is there now; the core decides.
                    let body = json!({"last_by_subj": p.subject}).to_string();
                    let get = self.next_id;
                    self.next_id += 1;
                    self.gets.insert(get, serial);
                    let subject = self.api("DIRECT.GET");
                    let reply = self.inbox('g', get);
                    nats::publish(&mut self.out, &subject, Some(&reply), body.as_bytes());
                }
            }
            (Some(e), _) => {
                warn!("broker refused a record on {}: {e}; retrying", p.subject);
                p.sent = false;
                self.pubs.failing = true;
                self.pubs.retry_at = Some(now + Duration::from_secs(1));
                return;
            }
        }
        self.pubs.done(id);
        self.advance_durable(core);
    }

    /// The replica has applied everything the stream had: users of this node's
    /// earlier runs are logged out at once (at the next commit), not a heartbeat later.
    fn set_caught_up(&mut self, now: Instant) {
        if !self.consumer.caught_up {
            self.consumer.caught_up = true;
            self.live.next_beat = now;
        }
    }

    fn create_stream_again(&mut self) {
        self.state = State::Setup;
        self.create_stream();
    }

    fn advance_durable(&mut self, core: &mut Core) {
        if let Some(durable) = self.pubs.newly_durable() {
            core.handle_durable(durable);
        }
    }

    // ---- what the core asks ---------------------------------------------------------

    fn send_pubs(&mut self) {
        for id in self.pubs.unsent() {
            self.send_pub(id);
        }
    }

    fn send_pub(&mut self, id: u64) {
        let reply = self.inbox('p', id);
        let msg_id = format!("{:016x}-{id}", self.inc);
        let Some(p) = self.pubs.get_mut(id) else {
            return;
        };
        let expect = p.expect.map(|e| e.to_string());
        let mut headers: Vec<(&str, &str)> = vec![("Nats-Msg-Id", &msg_id)];
        if let Some(e) = &expect {
            headers.push(("Nats-Expected-Last-Subject-Sequence", e));
        }
        if p.rollup {
            headers.push(("Nats-Rollup", "sub"));
        }
        nats::hpublish(&mut self.out, &p.subject, &reply, &headers, &p.payload);
        p.sent = true;
        p.sent_at = Instant::now();
    }

    /// Each iteration: takes the core's batches, keeps time (reconnects, heartbeats,
    /// gone nodes, timeouts, purges), writes, and tells the core what is durable and
    /// whether the broker can be used.
    pub fn commit(&mut self, registry: &Registry, core: &mut Core, now: Instant) {
        if self.read_more {
            self.on_event(registry, core, now);
        }
        while let Some((batch, ops)) = core.poll_cluster(now) {
            let mut n = 0;
            for op in ops {
                match op {
                    Op::Publish { rec, expect } => {
                        n += 1;
                        self.queue_pub(batch, rec, expect);
                    }
                    Op::Broadcast { from, text } => {
                        if self.state == State::Ready {
                            let payload = format!("{from} {text}");
                            nats::publish(
                                &mut self.out,
                                "natter.c.bcast",
                                None,
                                payload.as_bytes(),
                            );
                        }
                    }
                    Op::Probe { id, inc } => {
                        if self.state != State::Ready {
                            // Cannot tell: presumed still there.
                            core.handle_probe_answer(id, true, now);
                            continue;
                        }
                        self.probe(Asker::Login(id), inc, now);
                    }
                    Op::Intro {
                        id,
                        inc,
                        from,
                        to,
                        key,
                    } => {
                        if self.state != State::Ready {
                            core.handle_intro_answer(id, IntroAnswer::Offline, now);
                            continue;
                        }
                        let rid = self.next_id;
                        self.next_id += 1;
                        self.intros.insert(rid, (id, now + INTRO_TIMEOUT));
                        let key = if key.is_empty() { "-" } else { &key };
                        let payload = format!("{from} {to} {key}");
                        let reply = self.inbox('i', rid);
                        nats::publish(
                            &mut self.out,
                            &format!("natter.c.intro.{inc:016x}"),
                            Some(&reply),
                            payload.as_bytes(),
                        );
                    }
                }
            }
            self.pubs.batch(batch, n);
        }
        self.advance_durable(core);
        self.tick(registry, core, now);
        self.flush(registry, now);
        let healthy =
            self.state == State::Ready && !self.pubs.failing && self.out.len() < MAX_QUEUED;
        if self.told_healthy != Some(healthy) {
            self.told_healthy = Some(healthy);
            core.handle_store_health(healthy);
        }
    }

    fn queue_pub(&mut self, batch: u64, rec: Rec, expect: Option<u64>) {
        if let Rec::Ack { to, upto } = &rec {
            self.purges.acked(to, *upto);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.pubs.add(id, batch, &rec, expect);
        if self.state == State::Ready {
            self.send_pub(id);
        }
    }

    fn tick(&mut self, registry: &Registry, core: &mut Core, now: Instant) {
        if self.state == State::Down && self.conn.is_some() {
            self.disconnect(registry, "refused by the broker", now);
        }
        if self.state == State::Down && self.retry_at.is_some_and(|t| t <= now) {
            self.connect(registry, now);
        }
        if self.connect_deadline.is_some_and(|t| t <= now) {
            self.disconnect(registry, "no answer from the broker", now);
        }
        for id in take_expired(&mut self.intros, now) {
            core.handle_intro_answer(id, IntroAnswer::Offline, now);
        }
        for asker in self.live.expired(now) {
            if let Asker::Login(id) = asker {
                core.handle_probe_answer(id, true, now);
            }
        }
        if matches!(self.state, State::Setup | State::Ready) && self.live.next_beat <= now {
            // Heard from as soon as connected: a broker electing a JetStream leader
            // (the stream is not ready yet) must not make other nodes think this one
            // is gone.
            self.live.next_beat = now + HEARTBEAT;
            let beat = format!("{} {:016x}", self.cfg.node, self.inc);
            nats::publish(&mut self.out, "natter.c.hb", None, beat.as_bytes());
            if self.state == State::Ready {
                self.check_nodes(core, now);
            }
        }
        if self.state == State::Setup && self.setup_deadline.is_some_and(|t| t <= now) {
            // A JetStream request unanswered (the broker has no leader yet): again.
            debug!("stream set-up unanswered; asking again");
            self.create_stream();
        }
        if self.state != State::Ready {
            return;
        }
        if now.saturating_duration_since(self.last_rx) > BROKER_SILENCE {
            return self.disconnect(registry, "the broker went silent", now);
        }
        // A consumer silent while the connection is not (our own heartbeats come back
        // every second) died with its server; a broker that is slow as a whole is
        // waited for, and a new consumer is given time to start.
        if now.saturating_duration_since(self.consumer.rx) > CONSUMER_SILENCE
            && now.saturating_duration_since(self.last_rx) < HEARTBEAT * 2
            && now.saturating_duration_since(self.consumer.made) > CONSUMER_SILENCE * 3
        {
            warn!("stream consumer silent (its broker server gone?): making a new one");
            self.create_consumer();
        }
        if self.pubs.stale(now) || self.pubs.retry_at.is_some_and(|t| t <= now) {
            // Unacknowledged for long (lost in a broker fail-over) or refused for a
            // while: sent again; the broker's duplicate window makes it count once.
            self.pubs.retry_at = None;
            self.pubs.expire(now);
            self.send_pubs();
        }
        if self.consumer.caught_up {
            // Never past what this replica has applied (a later record may be mail it
            // has not seen yet).
            let mark = core.mail_watermark().min(self.consumer.applied + 1);
            let subject = self.api("STREAM.PURGE");
            for body in self.purges.due(mark, now) {
                let reply = self.inbox('x', 0);
                nats::publish(&mut self.out, &subject, Some(&reply), body.as_bytes());
            }
        }
    }

    /// Asks whether node incarnation `inc` is still connected.
    fn probe(&mut self, asker: Asker, inc: u64, now: Instant) {
        let rid = self.next_id;
        self.next_id += 1;
        self.live.asked(rid, asker, now);
        let reply = self.inbox('r', rid);
        let subject = format!("natter.c.probe.{inc:016x}");
        nats::publish(&mut self.out, &subject, Some(&reply), b"");
    }

    /// Reports node incarnations with users online that have gone silent, and asks
    /// after those that are late.
    fn check_nodes(&mut self, core: &mut Core, now: Instant) {
        if !self.consumer.caught_up {
            return;
        }
        let nodes = core.cluster_incarnations();
        let verdicts = self
            .live
            .judge(self.inc, &self.cfg.node, &nodes, self.ready_since, now);
        for (inc, verdict) in verdicts {
            match verdict {
                Verdict::Gone => core.handle_node_gone(inc, now),
                Verdict::Probe => self.probe(Asker::Silence(inc), inc, now),
            }
        }
    }

    /// When [`Broker::commit`] must run next.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.read_more {
            return Some(Instant::now());
        }
        let mut t = [
            self.retry_at.filter(|_| self.state == State::Down),
            self.connect_deadline,
        ]
        .into_iter()
        .flatten()
        .chain(self.intros.values().map(|(_, d)| *d))
        .chain(self.live.deadline())
        .min();
        if self.state == State::Setup {
            let more = [Some(self.live.next_beat), self.setup_deadline];
            t = t.into_iter().chain(more.into_iter().flatten()).min();
        }
        if self.state == State::Ready {
            let more = [
                Some(self.live.next_beat),
                self.pubs.retry_at,
                Some(self.last_rx + BROKER_SILENCE),
                Some(self.consumer.rx + CONSUMER_SILENCE),
                self.pubs.deadline(),
            ];
            t = t.into_iter().chain(more.into_iter().flatten()).min();
        }
        t
    }
}

/// Removes and returns the requests in `pending` (request id -> (what, deadline)) whose
/// deadline has passed.
fn take_expired<T>(pending: &mut HashMap<u64, (T, Instant)>, now: Instant) -> Vec<T> {
    let late: Vec<u64> = pending
        .iter()
        .filter(|(_, (_, t))| *t <= now)
        .map(|(&rid, _)| rid)
        .collect();
    late.into_iter()
        .filter_map(|rid| pending.remove(&rid).map(|(what, _)| what))
        .collect()
}

fn encode_answer(a: &IntroAnswer) -> String {
    match a {
        IntroAnswer::Peer { addr, token, key } => {
            let key = if key.is_empty() { "-" } else { key };
            format!("PEER {} {} {token} {key}", addr.ip(), addr.port())
        }
        IntroAnswer::Offline => "OFFLINE".into(),
        IntroAnswer::NoPeer => "NOPEER".into(),
    }
}

fn decode_answer(payload: &[u8]) -> IntroAnswer {
    let text = String::from_utf8_lossy(payload);
    let f: Vec<&str> = text.split(' ').collect();
    match f.as_slice() {
        ["PEER", ip, port, token, key] => match (ip.parse(), port.parse()) {
            (Ok(ip), Ok(port)) if record::word(token) && record::word(key) => IntroAnswer::Peer {
                addr: SocketAddr::new(ip, port),
                token: (*token).into(),
                key: if *key == "-" {
                    "".into()
                } else {
                    (*key).into()
                },
            },
            _ => IntroAnswer::Offline,
        },
        ["NOPEER"] => IntroAnswer::NoPeer,
        _ => IntroAnswer::Offline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn introduction_answers_survive_the_wire() {
        for a in [
            IntroAnswer::Peer {
                addr: "127.0.0.9:4242".parse().expect("addr"),
                token: "t0k".into(),
                key: "".into(),
            },
            IntroAnswer::Peer {
                addr: "[::1]:1".parse().expect("addr"),
                token: "t".into(),
                key: "ab:cd".into(),
            },
            IntroAnswer::Offline,
            IntroAnswer::NoPeer,
        ] {
            assert_eq!(decode_answer(encode_answer(&a).as_bytes()), a);
        }
    }
}
