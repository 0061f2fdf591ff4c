//! Whatever a (hostile) server sends, the client's frame parser must not panic, and
//! what it accepts must encode back to a line it parses the same way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter::protocol::frames::{ServerFrame, parse_server_frame};
use natter::protocol::{Flow, Frame, LineDecoder};

fuzz_target!(|data: &[u8]| {
    let mut dec = LineDecoder::default();
    dec.feed(data, 8192, |f| {
        if let Frame::Line(line) = f
            && let Ok(frame) = parse_server_frame(line)
        {
            let mut out = Vec::new();
            match &frame {
                ServerFrame::Reply(r) => r.encode(&mut out),
                ServerFrame::Push(p) => p.encode(&mut out),
            }
            let again = String::from_utf8(out).expect("encoders write UTF-8");
            let reparsed = parse_server_frame(again.trim_end_matches('\n'));
            assert_eq!(reparsed.ok(), Some(frame), "line {line:?}");
        }
        Flow::Continue
    });
});
