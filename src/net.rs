//! Small I/O helpers shared by the server, the client and the load generator.
//!
//! Non-blocking sockets report readiness that may be spurious, short, or interrupted;
//! [`read_step`] and [`write_step`] sort every outcome into one enum so each loop
//! handles the cases in one `match` instead of re-deriving them.

use std::io::{self, Read, Write};

/// The outcome of one non-blocking read or write attempt.
#[derive(Debug)]
pub(crate) enum Step {
    /// `n > 0` bytes moved.
    Done(usize),
    /// The socket has nothing more for now; wait for the next readiness event.
    WouldBlock,
    /// End of stream (read), or the peer will take no more (write of zero bytes).
    Closed,
    /// A real error: the connection is over.
    Failed(io::Error),
}

/// Reads once into `buf`, retrying on `Interrupted`.
pub(crate) fn read_step(r: &mut impl Read, buf: &mut [u8]) -> Step {
    loop {
        return match r.read(buf) {
            Ok(0) => Step::Closed,
            Ok(n) => Step::Done(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Step::Failed(e),
        };
    }
}

/// Writes once from `buf`, retrying on `Interrupted`.
pub(crate) fn write_step(w: &mut impl Write, buf: &[u8]) -> Step {
    loop {
        return match w.write(buf) {
            Ok(0) => Step::Closed,
            Ok(n) => Step::Done(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Step::Failed(e),
        };
    }
}

/// Writes as much of `buf` as the socket takes now; returns bytes written, or an error
/// when the connection is over.
pub(crate) fn write_until_blocked(w: &mut impl Write, buf: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match write_step(w, &buf[done..]) {
            Step::Done(n) => done += n,
            Step::WouldBlock => break,
            Step::Closed => return Err(io::ErrorKind::WriteZero.into()),
            Step::Failed(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Keeps a connection's write interest in step with whether it has output pending:
/// re-registers only when `want` differs from `*current` (which it then updates).
/// Readable interest is always kept.
pub(crate) fn sync_write_interest(
    registry: &mio::Registry,
    source: &mut impl mio::event::Source,
    token: mio::Token,
    want: bool,
    current: &mut bool,
) -> io::Result<()> {
    if want == *current {
        return Ok(());
    }
    let interest = if want {
        mio::Interest::READABLE | mio::Interest::WRITABLE
    } else {
        mio::Interest::READABLE
    };
    *current = want;
    registry.reregister(source, token, interest)
}

/// Writes the TLS records a rustls session has ready until it has none or the socket is
/// full (`Ok` in both cases); handshake messages are records like any other. Shared by
/// natterd's loop, the client's links and the load generator.
pub(crate) fn write_tls_until_blocked<D>(
    tls: &mut rustls::ConnectionCommon<D>,
    stream: &mut impl Write,
) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(stream) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One read through a rustls session: plain text it already decrypted first; when it
/// has none, the records the socket has are fed to it. `Done(n)`: `n` bytes of plain
/// text in `buf`; `WouldBlock`: the socket has nothing more; `Closed`: the other end
/// closed; `Failed`: the connection is over (after a protocol error the alert saying
/// why has been sent).
pub(crate) fn read_tls_step<D>(
    tls: &mut rustls::ConnectionCommon<D>,
    stream: &mut (impl Read + Write),
    buf: &mut [u8],
) -> Step {
    loop {
        match tls.reader().read(buf) {
            Ok(0) => return Step::Closed,
            Ok(n) => return Step::Done(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Step::Failed(e),
        }
        match tls.read_tls(stream) {
            Ok(0) => return Step::Closed,
            Ok(_) => {
                if let Err(e) = tls.process_new_packets() {
                    let _ = write_tls_until_blocked(tls, stream);
                    return Step::Failed(io::Error::other(e));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Step::Failed(e),
        }
    }
}
