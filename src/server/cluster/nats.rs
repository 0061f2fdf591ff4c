//! The NATS client protocol, sans I/O: a parser for what the server sends and
//! encoders for what a client sends (<https://docs.nats.io/reference/reference-protocols/nats-protocol>).
//!
//! The protocol is text control lines ending in CRLF; `MSG` and `HMSG` are followed by
//! a payload of the announced size and a CRLF. Headers (`HMSG`, `HPUB`) are an
//! HTTP-like block starting `NATS/1.0` (with a status code on server replies such as
//! "no responders").

use std::io::Write;

/// Longest control line accepted (the server's default `max_control_line` is 4 KiB).
const MAX_CONTROL: usize = 4096;
/// Largest message accepted (the server's default `max_payload` is 1 MiB; a stream
/// message with headers stays below this).
const MAX_PAYLOAD: usize = 8 << 20;

/// One thing the server said.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// `INFO {json}`.
    Info(&'a [u8]),
    /// A message on a subscription.
    Msg(Msg<'a>),
    /// `PING`: answer `PONG`.
    Ping,
    /// `PONG`.
    Pong,
    /// `+OK` (verbose mode only).
    Ok,
    /// `-ERR '<text>'`.
    Err(&'a str),
}

/// A delivered message.
#[derive(Debug, PartialEq, Eq)]
pub struct Msg<'a> {
    /// Its subject.
    pub subject: &'a str,
    /// The subscription it arrived on.
    pub sid: u64,
    /// Where to answer, if anywhere.
    pub reply: Option<&'a str>,
    /// The header block (`HMSG` only), `NATS/1.0...` up to the blank line.
    pub headers: Option<&'a [u8]>,
    /// The payload.
    pub payload: &'a [u8],
}

impl Msg<'_> {
    /// The status code of a header-only status message (`NATS/1.0 503`), if any.
    pub fn status(&self) -> Option<u16> {
        let h = self.headers?;
        let first = h.split(|&b| b == b'\n').next()?;
        let first = std::str::from_utf8(first).ok()?.trim();
        first.strip_prefix("NATS/1.0 ")?.get(..3)?.parse().ok()
    }

    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        let h = std::str::from_utf8(self.headers?).ok()?;
        h.split("\r\n").skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// The server broke the protocol (the connection is dropped and made again).
#[derive(Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

/// Bytes from the server in, events out; keeps a partial frame between reads.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
}

impl Parser {
    /// Feeds bytes read from the socket; calls `on` for every complete event.
    pub fn feed(
        &mut self,
        data: &[u8],
        mut on: impl FnMut(Event<'_>),
    ) -> Result<(), ProtocolError> {
        // Nothing left over from the last read (the usual case): parse the read
        // buffer itself and keep only a trailing partial frame.
        if self.buf.is_empty() {
            let used = parse_all(data, &mut on)?;
            self.buf.extend_from_slice(&data[used..]);
            return Ok(());
        }
        self.buf.extend_from_slice(data);
        let used = parse_all(&self.buf, &mut on)?;
        self.buf.drain(..used);
        if self.buf.capacity() > 1 << 20 && self.buf.len() < 1 << 16 {
            self.buf.shrink_to(1 << 16);
        }
        Ok(())
    }

    /// Forgets a partial frame (a new connection starts clean).
    pub fn reset(&mut self) {
        self.buf.clear();
    }
}

/// Every complete event at the front of `buf`; returns the bytes they used.
fn parse_all(buf: &[u8], on: &mut impl FnMut(Event<'_>)) -> Result<usize, ProtocolError> {
    let mut pos = 0;
    while let Some((event, used)) = parse_one(&buf[pos..])? {
        on(event);
        pos += used;
    }
    Ok(pos)
}

fn bad(what: &str, line: &[u8]) -> ProtocolError {
    ProtocolError(format!(
        "{what}: {:?}",
        String::from_utf8_lossy(&line[..line.len().min(120)])
    ))
}

/// One event from the front of `buf` and the bytes it used, or `None` if incomplete.
fn parse_one(buf: &[u8]) -> Result<Option<(Event<'_>, usize)>, ProtocolError> {
    // Control lines end in CRLF and contain no LF of their own.
    let end = memchr::memchr(b'\n', buf).and_then(|i| i.checked_sub(1));
    let Some(end) = end.filter(|&e| buf[e] == b'\r') else {
        if memchr::memchr(b'\n', buf).is_some() {
            return Err(bad("line not ended by CRLF", buf));
        }
        if buf.len() > MAX_CONTROL {
            return Err(bad("control line too long", buf));
        }
        return Ok(None);
    };
    let line = &buf[..end];
    let after = end + 2;
    let text = std::str::from_utf8(line).map_err(|_| bad("not UTF-8", line))?;
    let (verb, rest) = text.split_once([' ', '\t']).unwrap_or((text, ""));
    let is = |v: &str| verb.eq_ignore_ascii_case(v);
    let event = if is("PING") {
        Event::Ping
    } else if is("PONG") {
        Event::Pong
    } else if is("+OK") {
        Event::Ok
    } else if is("-ERR") {
        Event::Err(rest.trim().trim_matches('\''))
    } else if is("INFO") {
        Event::Info(rest.trim().as_bytes())
    } else if is("MSG") || is("HMSG") {
        {
            let with_headers = is("HMSG");
            // At most five fields: no allocation per message.
            let mut f = [""; 5];
            let mut count = 0;
            for field in rest.split_ascii_whitespace() {
                if count == f.len() {
                    return Err(bad("bad MSG line", line));
                }
                f[count] = field;
                count += 1;
            }
            let n = |s: &str| s.parse::<usize>().map_err(|_| bad("bad size", line));
            // MSG <subject> <sid> [reply] <size>; HMSG <subject> <sid> [reply] <hdr> <total>
            let (reply, hdr, total) = match (with_headers, count) {
                (false, 3) => (None, 0, n(f[2])?),
                (false, 4) => (Some(f[2]), 0, n(f[3])?),
                (true, 4) => (None, n(f[2])?, n(f[3])?),
                (true, 5) => (Some(f[2]), n(f[3])?, n(f[4])?),
                _ => return Err(bad("bad MSG line", line)),
            };
            if total > MAX_PAYLOAD || hdr > total {
                return Err(bad("bad payload size", line));
            }
            let sid = f[1].parse().map_err(|_| bad("bad sid", line))?;
            if buf.len() < after + total + 2 {
                return Ok(None);
            }
            if &buf[after + total..after + total + 2] != b"\r\n" {
                return Err(bad("payload not followed by CRLF", line));
            }
            let body = &buf[after..after + total];
            let msg = Msg {
                subject: f[0],
                sid,
                reply,
                headers: with_headers.then(|| &body[..hdr]),
                payload: &body[hdr..],
            };
            return Ok(Some((Event::Msg(msg), after + total + 2)));
        }
    } else {
        return Err(bad("unknown operation", line));
    };
    Ok(Some((event, after)))
}

/// `SUB <subject> <sid>`.
pub fn sub(out: &mut Vec<u8>, subject: &str, sid: u64) {
    let _ = write!(out, "SUB {subject} {sid}\r\n");
}

/// `UNSUB <sid>`.
pub fn unsub(out: &mut Vec<u8>, sid: u64) {
    let _ = write!(out, "UNSUB {sid}\r\n");
}

/// `PUB <subject> [reply] <size>` and the payload.
pub fn publish(out: &mut Vec<u8>, subject: &str, reply: Option<&str>, payload: &[u8]) {
    let _ = match reply {
        Some(r) => write!(out, "PUB {subject} {r} {}\r\n", payload.len()),
        None => write!(out, "PUB {subject} {}\r\n", payload.len()),
    };
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// `HPUB <subject> <reply> <hdr> <total>`: a message with headers (`name: value`).
pub fn hpublish(
    out: &mut Vec<u8>,
    subject: &str,
    reply: &str,
    headers: &[(&str, &str)],
    payload: &[u8],
) {
    let mut h = Vec::with_capacity(64);
    h.extend_from_slice(b"NATS/1.0\r\n");
    for (k, v) in headers {
        let _ = write!(h, "{k}: {v}\r\n");
    }
    h.extend_from_slice(b"\r\n");
    let _ = write!(
        out,
        "HPUB {subject} {reply} {} {}\r\n",
        h.len(),
        h.len() + payload.len()
    );
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(p: &mut Parser, data: &[u8]) -> Vec<String> {
        let mut got = Vec::new();
        p.feed(data, |e| got.push(format!("{e:?}"))).expect("parse");
        got
    }

    #[test]
    fn frames_split_anywhere_come_out_whole() {
        let wire = b"INFO {\"server_id\":\"x\"}\r\nPING\r\nMSG a.b 5 _INBOX.1 3\r\nabc\r\nHMSG c 6 18 21\r\nNATS/1.0\r\nK: v\r\n\r\nxyz\r\nHMSG r 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n+OK\r\n-ERR 'Authorization Violation'\r\n";
        let mut whole = Parser::default();
        let all = events(&mut whole, wire);
        assert_eq!(all.len(), 7, "{all:?}");
        for cut in 1..wire.len() {
            let mut p = Parser::default();
            let mut got = events(&mut p, &wire[..cut]);
            got.extend(events(&mut p, &wire[cut..]));
            assert_eq!(got, all, "cut at {cut}");
        }
        let mut p = Parser::default();
        let mut msgs = Vec::new();
        p.feed(wire, |e| {
            if let Event::Msg(m) = e {
                msgs.push((
                    m.subject.to_string(),
                    m.reply.map(str::to_string),
                    m.status(),
                    m.header("k").map(str::to_string),
                    m.payload.to_vec(),
                ));
            }
        })
        .expect("parse");
        assert_eq!(
            msgs,
            [
                (
                    "a.b".into(),
                    Some("_INBOX.1".into()),
                    None,
                    None,
                    b"abc".to_vec()
                ),
                ("c".into(), None, None, Some("v".into()), b"xyz".to_vec()),
                ("r".into(), None, Some(503), None, vec![]),
            ]
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_crash() {
        for wire in [
            &b"WHAT\r\n"[..],
            b"MSG a x 3\r\nabc\r\n",
            b"MSG a 1 99999999999\r\n",
            b"MSG a 1 3\r\nabcde\r\n",
            b"HMSG a 1 9 3\r\nabc\r\n",
        ] {
            let mut p = Parser::default();
            assert!(p.feed(wire, |_| {}).is_err(), "{wire:?}");
        }
        let mut p = Parser::default();
        assert!(p.feed(&[b'x'; 5000], |_| {}).is_err());
    }

    #[test]
    fn publishes_are_framed_with_sizes() {
        let mut out = Vec::new();
        publish(&mut out, "s", Some("r"), b"hi");
        hpublish(&mut out, "t", "r2", &[("Nats-Msg-Id", "1")], b"yo");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "PUB s r 2\r\nhi\r\nHPUB t r2 28 30\r\nNATS/1.0\r\nNats-Msg-Id: 1\r\n\r\nyo\r\n"
        );
    }
}
