//! Arbitrary bytes from two clients through the server's real state machine: the line
//! decoder, the request parser and every handler in the hub (no sockets). Byte 0 of
//! each chunk picks the connection; the time advances with every chunk so timers fire.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use natter::server::accounts::Credential;
use natter::server::core::durability::JournalStore;
use natter::server::{Core, CoreConfig};

fuzz_target!(|data: &[u8]| {
    let creds = ["hans", "yoda", "luke"]
        .iter()
        .map(|n| Credential {
            name: (*n).into(),
            password: "pw".into(),
        })
        .collect();
    let start = Instant::now();
    let cfg = CoreConfig {
        max_line: 64,
        max_queued: 4096,
        ack_window: 4,
        mailbox_max_messages: 8,
        flood_burst: 16,
        limit_loopback: true,
        ..CoreConfig::default()
    };
    let mut core = Core::new(creds, cfg, Box::new(JournalStore::default()), start);
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let keys = [
        core.handle_accept(addr, start),
        core.handle_accept(addr, start),
    ];
    let mut now = start;
    for chunk in data.chunks(17) {
        let (sel, bytes) = chunk.split_first().unwrap();
        now += Duration::from_millis(u64::from(*sel) * 40);
        core.handle_read(keys[usize::from(sel & 1)], bytes, now);
        core.settle_without_io(now);
    }
});
