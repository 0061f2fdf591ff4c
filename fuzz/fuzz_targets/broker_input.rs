//! Whatever the broker connection carries (a broken or hostile NATS server, or
//! anything published on our subjects), the NATS parser and the record parser must not
//! panic; a record they accept must encode back to the same subject and payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter::server::cluster::nats::{Event, Parser};
use natter::server::cluster::record::Rec;

fuzz_target!(|data: &[u8]| {
    // Split the input in two reads at its first byte, to exercise partial frames.
    let cut = data.first().map_or(0, |&b| b as usize % (data.len().max(1)));
    let mut p = Parser::default();
    let mut check = |e: Event<'_>| {
        if let Event::Msg(m) = e {
            let _ = m.status();
            let _ = m.header("Nats-Sequence");
            if let Some(rec) = Rec::parse(m.subject, m.payload) {
                assert_eq!(rec.subject(), m.subject);
                let again = Rec::parse(&rec.subject(), rec.payload().as_bytes());
                assert_eq!(again.as_ref(), Some(&rec));
            }
        }
    };
    if p.feed(&data[..cut], &mut check).is_ok() {
        let _ = p.feed(&data[cut..], &mut check);
    }
});
