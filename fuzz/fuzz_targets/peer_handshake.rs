//! A stranger on a client's peer port can send anything: the peer-line parser must not
//! panic, and what it accepts must round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter::protocol::peer::parse_peer_line;
use natter::protocol::{Flow, Frame, LineDecoder};

fuzz_target!(|data: &[u8]| {
    let mut dec = LineDecoder::default();
    dec.feed(data, 8192, |f| {
        if let Frame::Line(line) = f
            && let Some(frame) = parse_peer_line(line)
        {
            let again = frame.to_line();
            assert_eq!(parse_peer_line(&again), Some(frame), "line {line:?}");
        }
        Flow::Continue
    });
});
