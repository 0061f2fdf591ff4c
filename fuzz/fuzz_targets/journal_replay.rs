//! A damaged journal must be recovered from, never crash the server: any bytes replay
//! to a valid prefix.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter::server::store::recover::replay;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = replay(data) {
        assert!(r.valid <= data.len());
    }
});
