//! Criterion benches: the codec, routing through the real hub state (no sockets),
//! broadcast fan-out, the timer wheel and the journal's append and recovery paths. `cargo bench`; reports in target/criterion.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use natter::protocol::frames::{self, ServerFrame};
use natter::protocol::{Flow, LineDecoder};
use natter::server::accounts::Credential;
use natter::server::core::durability::JournalStore;
use natter::server::store::{Record, record, recover};
use natter::server::timer::TimerWheel;
use natter::server::{Core, CoreConfig};

/// One line of every request type.
const REQUESTS: [(&str, &str); 14] = [
    ("hello", "HELLO 1"),
    ("login", "LOGIN hans falcon*solo 40000"),
    (
        "msg",
        "MSG yoda hello there, this is a sixty-four byte chat message.....",
    ),
    ("bcast", "BCAST hello everyone, this is a broadcast"),
    ("whoelse", "WHOELSE"),
    ("whoelsesince", "WHOELSESINCE 1h 30m"),
    ("block", "BLOCK vader"),
    ("unblock", "UNBLOCK vader"),
    ("private", "PRIVATE yoda"),
    ("active", "ACTIVE"),
    ("ping", "PING marker"),
    ("logout", "LOGOUT"),
    ("pong", "PONG 42"),
    ("ack", "ACK 123456789"),
];

/// One line of every reply and push type.
const SERVER_FRAMES: [(&str, &str); 21] = [
    ("hello", "+HELLO 1 natterd/0.1.0"),
    ("welcome", "+WELCOME"),
    ("sent", "+SENT yoda"),
    ("stored", "+STORED yoda"),
    ("bcast", "+BCAST 998 1"),
    ("users", "+USERS hans leia luke yoda"),
    ("blocked", "+BLOCKED vader"),
    ("unblocked", "+UNBLOCKED vader"),
    (
        "peer",
        "+PEER yoda 10.0.0.7 40001 0123456789abcdef0123456789abcdef",
    ),
    ("ok", "+OK"),
    ("pong", "+PONG marker"),
    ("bye", "+BYE"),
    ("error", "-BLOCKED_BY yoda"),
    (
        "push_msg",
        "*MSG 123456 hans hello there, this is a sixty-four byte chat message",
    ),
    ("push_bcast", "*BCAST hans hello everyone"),
    ("push_login", "*LOGIN leia luke yoda"),
    ("push_logout", "*LOGOUT leia"),
    ("push_ping", "*PING 7"),
    (
        "push_expect",
        "*EXPECT hans 0123456789abcdef0123456789abcdef",
    ),
    ("push_timeout", "*TIMEOUT"),
    ("push_bye", "*BYE shutdown"),
];

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    for (name, line) in REQUESTS {
        g.bench_with_input(BenchmarkId::new("parse_request", name), line, |b, l| {
            b.iter(|| frames::parse_request(black_box(l)).is_ok())
        });
        let req = frames::parse_request(line).expect("a valid request");
        g.bench_with_input(BenchmarkId::new("encode_request", name), &req, |b, r| {
            let mut out = Vec::with_capacity(256);
            b.iter(|| {
                out.clear();
                black_box(r).encode(&mut out);
                out.len()
            })
        });
    }
    for (name, line) in SERVER_FRAMES {
        g.bench_with_input(BenchmarkId::new("parse_server", name), line, |b, l| {
            b.iter(|| frames::parse_server_frame(black_box(l)).is_ok())
        });
        let frame = frames::parse_server_frame(line).expect("a valid server frame");
        g.bench_with_input(BenchmarkId::new("encode_server", name), &frame, |b, f| {
            let mut out = Vec::with_capacity(256);
            b.iter(|| {
                out.clear();
                match black_box(f) {
                    ServerFrame::Reply(r) => r.encode(&mut out),
                    ServerFrame::Push(p) => p.encode(&mut out),
                }
                out.len()
            })
        });
    }
    let mut stream = Vec::new();
    for i in 0..1000 {
        stream
            .extend_from_slice(format!("MSG yoda message number {i} with some text\n").as_bytes());
    }
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("decode_1000_lines_in_4k_reads", |b| {
        b.iter(|| {
            let mut d = LineDecoder::default();
            let mut n = 0;
            for chunk in stream.chunks(4096) {
                d.feed(black_box(chunk), 8192, |_| {
                    n += 1;
                    Flow::Continue
                });
            }
            n
        })
    });
    g.throughput(Throughput::Elements(1));
    let text = "x".repeat(64);
    g.bench_function("encode_push_msg_fast_path", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            frames::encode_msg(&mut out, black_box(123456), "hans", &text);
            out.len()
        })
    });
    g.finish();
}

/// A hub with `n` users all logged in on socket-less sessions.
fn hub_with(n: usize) -> (Core, Vec<usize>, Instant) {
    hub_with_store(n, false)
}

/// The same, with the journal's store (records encoded into batches) when `journaled`.
fn hub_with_store(n: usize, journaled: bool) -> (Core, Vec<usize>, Instant) {
    let creds = (0..n)
        .map(|i| Credential {
            name: format!("u{i}"),
            password: "pw".into(),
        })
        .collect();
    let now = Instant::now();
    let cfg = CoreConfig {
        max_queued: usize::MAX,
        ..CoreConfig::default()
    };
    let mut hub = if journaled {
        Core::new(creds, cfg, Box::new(JournalStore::default()), now)
    } else {
        Core::in_memory(creds, cfg, now)
    };
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let mut keys = Vec::new();
    for i in 0..n {
        let k = hub.handle_accept(addr, now);
        hub.handle_read(k, format!("HELLO 1\nLOGIN u{i} pw\n").as_bytes(), now);
        keys.push(k);
        // Presence lines pile up quadratically: drain as we go.
        drain(&mut hub);
    }
    drain(&mut hub);
    (hub, keys, now)
}

/// Pretends every queued byte was written (the time only matters to connections
/// that fail a write, which none does here).
fn drain(hub: &mut Core) {
    hub.poll_transmit(|_, b| Ok(b.len()), *EPOCH);
}

static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("hub");
    g.throughput(Throughput::Elements(1));
    let (mut hub, keys, now) = hub_with(1000);
    let msg = b"MSG u1 hello there, this is a sixty-four byte chat message.......\n";
    g.bench_function("direct_message_and_ack", |b| {
        b.iter(|| {
            hub.handle_read(keys[0], black_box(msg), now);
            hub.handle_read(keys[1], b"ACK 18446744073709551615\n", now);
            drain(&mut hub);
        })
    });
    for n in [1000usize, 10_000] {
        let (mut hub, keys, now) = hub_with(n);
        g.throughput(Throughput::Elements(n as u64 - 1));
        g.bench_with_input(BenchmarkId::new("broadcast_fanout", n), &n, |b, _| {
            b.iter(|| {
                hub.handle_read(
                    keys[0],
                    black_box(
                        b"BCAST hello everyone, a sixty-four byte broadcast message.......\n",
                    ),
                    now,
                );
                drain(&mut hub);
            })
        });
    }
    g.finish();
}

fn timers(c: &mut Criterion) {
    let mut g = c.benchmark_group("timer_wheel");
    let n = 100_000u64;
    g.throughput(Throughput::Elements(n));
    let t0 = Instant::now();
    g.bench_function(BenchmarkId::new("insert", n), |b| {
        b.iter(|| {
            let mut w = TimerWheel::new(t0, Duration::from_millis(100), 1024);
            for i in 0..n {
                w.insert(t0 + Duration::from_millis(i % 600_000), i);
            }
            w.len()
        })
    });
    g.bench_function(BenchmarkId::new("reset", n), |b| {
        let mut w = TimerWheel::new(t0, Duration::from_millis(100), 1024);
        let hs: Vec<_> = (0..n)
            .map(|i| w.insert(t0 + Duration::from_millis(i % 600_000), i))
            .collect();
        let mut shift = 0;
        b.iter(|| {
            shift += 1;
            for (i, h) in hs.iter().enumerate() {
                w.reset(*h, t0 + Duration::from_millis((i as u64 + shift) % 600_000));
            }
        })
    });
    g.bench_function(BenchmarkId::new("insert_then_expire_all", n), |b| {
        b.iter(|| {
            let mut w = TimerWheel::new(t0, Duration::from_millis(100), 1024);
            for i in 0..n {
                w.insert(t0 + Duration::from_millis(i % 60_000), i);
            }
            let mut fired = 0u64;
            w.expire(t0 + Duration::from_secs(61), |_| fired += 1);
            fired
        })
    });
    g.finish();
}

fn store(c: &mut Criterion) {
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    let text = "hello there, this is a sixty-four byte chat message.............";
    g.bench_function("encode_msg_record", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            Record::Msg {
                id: black_box(123_456),
                from: "hans",
                to: "yoda",
                text,
            }
            .encode(&mut out);
            out.len()
        })
    });
    // The hub's whole append path: route, encode the record, hold the reply, hand the
    // batch over and release the reply (the writer thread's I/O is not included).
    let (mut hub, keys, now) = hub_with_store(1000, true);
    let msg = b"MSG u1 hello there, this is a sixty-four byte chat message.......\n";
    let mut seq = 0;
    g.bench_function("direct_message_and_ack_journaled", |b| {
        b.iter(|| {
            hub.handle_read(keys[0], black_box(msg), now);
            hub.handle_read(keys[1], b"ACK 18446744073709551615\n", now);
            if let Some(batch) = hub.poll_batch() {
                seq += 1;
                black_box(batch);
            }
            hub.handle_durable(seq);
            drain(&mut hub);
        })
    });
    let n = 10_000u64;
    let mut journal = record::MAGIC.to_vec();
    for i in 0..n {
        Record::Msg {
            id: i,
            from: "hans",
            to: if i % 2 == 0 { "yoda" } else { "leia" },
            text,
        }
        .encode(&mut journal);
    }
    g.throughput(Throughput::Elements(n));
    g.bench_function(BenchmarkId::new("replay_msgs", n), |b| {
        b.iter(|| recover::replay(black_box(&journal)).map(|r| r.valid))
    });
    g.finish();
}

criterion_group!(benches, codec, routing, timers, store);
criterion_main!(benches);
