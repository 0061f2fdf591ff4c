//! Property tests: every message type encodes and decodes back to itself, whatever the
//! names and texts; line framing does not depend on how the stream is cut; journal
//! records survive encoding and any truncation keeps a valid prefix.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use natter::protocol::frames::{
    self, ErrorCode, Push, Reply, Request, ServerFrame, parse_request, parse_server_frame,
};
use natter::protocol::peer::{PeerFrame, parse_peer_line};
use natter::protocol::{Flow, Frame, LineDecoder};
use natter::server::store::record::{Record, decode_frames};
use proptest::prelude::*;

/// A name, token or password: printable, no white space.
fn word() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.@*$!#%&+=-]{1,24}"
}

/// Free text: any characters but line breaks, spaces anywhere but first (a message
/// is never empty: `MSG bob` alone is an invalid command).
fn text() -> impl Strategy<Value = String> {
    "[^\r\n]{1,80}"
        .prop_map(|s| {
            // Message text never holds terminal controls (the server refuses them).
            let s: String = s
                .chars()
                .filter(|c| natter::protocol::clean_text(&c.to_string()))
                .collect();
            s.trim_start().to_string()
        })
        .prop_filter("non-empty", |s| !s.is_empty())
}

fn line_of(encode: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut out = Vec::new();
    encode(&mut out);
    let s = String::from_utf8(out).expect("UTF-8");
    s.strip_suffix('\n')
        .expect("newline-terminated")
        .to_string()
}

fn check_request(r: Request<'_>) -> Result<(), TestCaseError> {
    let line = line_of(|o| r.encode(o));
    prop_assert_eq!(parse_request(&line).ok(), Some(r), "line {:?}", line);
    Ok(())
}

fn check_server(f: ServerFrame<'_>) -> Result<(), TestCaseError> {
    let line = line_of(|o| match &f {
        ServerFrame::Reply(r) => r.encode(o),
        ServerFrame::Push(p) => p.encode(o),
    });
    prop_assert_eq!(parse_server_frame(&line).ok(), Some(f), "line {:?}", line);
    Ok(())
}

proptest! {
    #[test]
    fn requests_round_trip(
        user in word(), password in word(), msg in text(), port in proptest::option::of(1u16..),
        secs in 0u64..10_000_000, n in any::<u64>(), version in any::<u32>(),
        key in "(SHA256:[0-9a-f:]{1,100})?",
    ) {
        // A key is only sent with a port.
        let peer_key = if port.is_some() { key.as_str() } else { "" };
        check_request(Request::Hello { version })?;
        check_request(Request::Login { user: &user, password: &password, peer_port: port, peer_key })?;
        check_request(Request::User { user: &user })?;
        check_request(Request::Pass { password: &password, peer_port: port, peer_key })?;
        check_request(Request::Msg { to: &user, text: &msg })?;
        check_request(Request::Bcast { text: &msg })?;
        check_request(Request::WhoElse)?;
        check_request(Request::WhoElseSince { window: Duration::from_secs(secs) })?;
        check_request(Request::Block { user: &user })?;
        check_request(Request::Unblock { user: &user })?;
        check_request(Request::Private { user: &user })?;
        check_request(Request::Active)?;
        check_request(Request::Ping { token: &password })?;
        check_request(Request::Logout)?;
        check_request(Request::Pong { seq: n })?;
        check_request(Request::Ack { id: n })?;
    }

    #[test]
    fn replies_and_pushes_round_trip(
        user in word(), other in word(), token in word(), msg in text(),
        names in proptest::collection::vec(word(), 0..8),
        ip in any::<u32>(), port in 1u16.., n in any::<u64>(), a in any::<u32>(), b in any::<u32>(),
        code in 0..ErrorCode::ALL.len(), key in "(SHA256:[0-9a-f:]{1,100})?",
    ) {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port);
        for r in [
            Reply::Hello { version: a, software: &user, ping: n },
            Reply::User { user: &user },
            Reply::Welcome,
            Reply::Sent { to: &user, stored: false },
            Reply::Sent { to: &user, stored: true },
            Reply::Bcast { delivered: a, blocked: b },
            Reply::Users(names.clone()),
            Reply::Blocked { user: &user },
            Reply::Unblocked { user: &user },
            Reply::Peer { user: &user, addr, token: &token, key: &key },
            Reply::Ok,
            Reply::Pong { token: &token },
            Reply::Bye,
            Reply::Error { code: ErrorCode::ALL[code], arg: &other },
        ] {
            check_server(ServerFrame::Reply(r))?;
        }
        let mut pushes = vec![
            Push::Msg { id: n, from: &user, text: &msg },
            Push::Bcast { from: &user, text: &msg },
            Push::Ping { seq: n },
            Push::Expect { user: &user, token: &token, key: &key },
            Push::Timeout,
            Push::Bye { reason: &other },
        ];
        if !names.is_empty() {
            pushes.push(Push::Login(names.clone()));
            pushes.push(Push::Logout(names.clone()));
        }
        for p in pushes {
            check_server(ServerFrame::Push(p))?;
        }
        // The hot-path encoders agree with the general one.
        prop_assert_eq!(
            line_of(|o| frames::encode_msg(o, n, &user, &msg)),
            line_of(|o| Push::Msg { id: n, from: &user, text: &msg }.encode(o))
        );
    }

    #[test]
    fn peer_frames_round_trip(user in word(), token in word(), msg in text()) {
        for f in [
            PeerFrame::Hello { user: &user, token: &token },
            PeerFrame::Ok { user: &user },
            PeerFrame::Msg { text: &msg },
            PeerFrame::Stop,
        ] {
            let line = f.to_line();
            prop_assert_eq!(parse_peer_line(&line), Some(f.clone()));
        }
    }

    #[test]
    fn framing_does_not_depend_on_how_the_stream_is_cut(
        lines in proptest::collection::vec("[^\n]{0,40}", 0..20),
        cuts in proptest::collection::vec(1usize..50, 0..40),
    ) {
        let mut stream = Vec::new();
        for l in &lines {
            stream.extend_from_slice(l.as_bytes());
            stream.push(b'\n');
        }
        let mut dec = LineDecoder::default();
        let mut got = Vec::new();
        let mut rest = &stream[..];
        for c in cuts {
            let (chunk, r) = rest.split_at(c.min(rest.len()));
            rest = r;
            dec.feed(chunk, 1024, |f| {
                if let Frame::Line(l) = f { got.push(l.to_string()) }
                Flow::Continue
            });
        }
        dec.feed(rest, 1024, |f| {
            if let Frame::Line(l) = f { got.push(l.to_string()) }
            Flow::Continue
        });
        let want: Vec<String> = lines.iter().map(|l| l.strip_suffix('\r').unwrap_or(l).to_string()).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn journal_records_round_trip_and_any_cut_keeps_a_prefix(
        user in word(), other in word(), msg in text(), n in any::<u64>(), cut in any::<prop::sample::Index>(),
    ) {
        let recs = vec![
            Record::Meta { next_id: n },
            Record::Msg { id: n, from: &user, to: &other, text: &msg },
            Record::Ack { to: &other, upto: n },
            Record::Block { who: &user, whom: &other },
            Record::Unblock { who: &user, whom: &other },
            Record::Login { who: &user, at: n },
            Record::Logout { who: &user, at: n },
            Record::Lock { who: &user, until: n },
            Record::LockIp { who: &user, ip: &other, until: n },
        ];
        let mut buf = Vec::new();
        for r in &recs {
            r.encode(&mut buf);
        }
        let mut got = Vec::new();
        let (valid, damage) = decode_frames(&buf, |r| got.push(r));
        prop_assert_eq!((valid, damage), (buf.len(), None));
        prop_assert_eq!(&got, &recs);
        let cut = cut.index(buf.len() + 1);
        let mut prefix = Vec::new();
        let (valid, _) = decode_frames(&buf[..cut], |r| prefix.push(r));
        prop_assert!(valid <= cut);
        prop_assert_eq!(&prefix[..], &recs[..prefix.len()]);
    }
}
