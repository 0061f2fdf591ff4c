//! The `ceiling` relay: the least work a server could do for the `direct` traffic.
//!
//! One thread, one `mio::Poll`, no parsing and no routing: connections are paired in
//! the order they arrive (1st with 2nd, 3rd with 4th, ...) and every byte read from one
//! is written to its partner, with the same flush-once-per-iteration discipline as
//! natterd. Whatever natterd achieves is read as a fraction of this on the same machine.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::{Phase, Shared};
use crate::net::{Step, read_step, sync_write_interest, write_until_blocked};

const LISTENER: Token = Token(usize::MAX);

struct Conn {
    stream: TcpStream,
    partner: Option<usize>,
    out: Vec<u8>,
    write_interest: bool,
}

/// CPU time this thread has used, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Binds on loopback and returns the address; the relay runs until the phase is `Stop`.
pub(super) fn start(shared: Arc<Shared>) -> io::Result<(SocketAddr, std::thread::JoinHandle<()>)> {
    let mut listener = TcpListener::bind("127.0.0.1:0".parse().map_err(io::Error::other)?)?;
    let addr = listener.local_addr()?;
    let poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let handle = std::thread::Builder::new()
        .name("natter-bench-relay".into())
        .spawn(move || {
            if let Err(e) = run(poll, listener, &shared) {
                eprintln!("natter-bench: relay failed: {e}");
            }
        })?;
    Ok((addr, handle))
}

fn run(mut poll: Poll, listener: TcpListener, shared: &Shared) -> io::Result<()> {
    let mut events = Events::with_capacity(1024);
    let mut conns: Slab<Conn> = Slab::new();
    let mut unpaired: Option<usize> = None;
    let mut scratch = vec![0u8; 64 * 1024];
    let mut dirty: Vec<usize> = Vec::new();
    let mut phase = Phase::Setup;
    loop {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(20))) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let now = shared.phase();
        if now != phase {
            if now == Phase::Measure {
                shared
                    .relay_cpu_start
                    .store(thread_cpu_ns(), Ordering::Relaxed);
            } else if phase == Phase::Measure {
                shared
                    .relay_cpu_end
                    .store(thread_cpu_ns(), Ordering::Relaxed);
            }
            phase = now;
            if phase == Phase::Stop {
                return Ok(());
            }
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok((mut stream, _)) = listener.accept() {
                    stream.set_nodelay(true)?;
                    let key = conns.vacant_key();
                    poll.registry()
                        .register(&mut stream, Token(key), Interest::READABLE)?;
                    let partner = unpaired.take();
                    conns.insert(Conn {
                        stream,
                        partner,
                        out: Vec::new(),
                        write_interest: false,
                    });
                    match partner {
                        Some(p) => conns[p].partner = Some(key),
                        None => unpaired = Some(key),
                    }
                }
                continue;
            }
            let key = ev.token().0;
            if ev.is_writable() {
                dirty.push(key);
            }
            let hup = ev.is_read_closed() || ev.is_error();
            if !(ev.is_readable() || hup) {
                continue;
            }
            while let Some(c) = conns.get_mut(key) {
                let partner = c.partner;
                match read_step(&mut c.stream, &mut scratch) {
                    Step::Done(n) => {
                        if let Some(p) = partner.and_then(|p| conns.get_mut(p)) {
                            if p.out.is_empty() {
                                dirty.push(partner.unwrap_or(usize::MAX));
                            }
                            p.out.extend_from_slice(&scratch[..n]);
                        }
                        // Drained (natterd's rule: a short read empties the socket).
                        if n < scratch.len() && !hup {
                            break;
                        }
                    }
                    Step::WouldBlock => break,
                    Step::Closed | Step::Failed(_) => {
                        let mut c = conns.remove(key);
                        let _ = poll.registry().deregister(&mut c.stream);
                        if unpaired == Some(key) {
                            unpaired = None;
                        }
                        break;
                    }
                }
            }
        }
        for key in dirty.drain(..) {
            let Some(c) = conns.get_mut(key) else {
                continue;
            };
            if !c.out.is_empty() {
                match write_until_blocked(&mut c.stream, &c.out) {
                    Ok(n) => {
                        c.out.drain(..n);
                    }
                    Err(_) => {
                        c.out.clear();
                    }
                }
            }
            let want = !c.out.is_empty();
            sync_write_interest(
                poll.registry(),
                &mut c.stream,
                Token(key),
                want,
                &mut c.write_interest,
            )?;
        }
    }
}
