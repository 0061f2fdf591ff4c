//! A damaged journal must be recovered from, never crash the server: any bytes replay
//! to a valid prefix; `journal check` accounts for every byte; and what `journal
//! repair` writes replays cleanly, with every intact record it found.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter::server::store::check;
use natter::server::store::recover::replay;

fuzz_target!(|data: &[u8]| {
    let Ok(r) = replay(data) else {
        return;
    };
    assert!(r.valid <= data.len());
    assert_eq!(r.resumes_at.is_some(), r.damage.is_some() && r.resumes_at.is_some());
    let report = check(data).expect("replay accepted it, so check does");
    let damaged: usize = report.spans.iter().map(|s| s.len).sum();
    let magic = data.len().min(8);
    assert_eq!(report.repaired.len() - 8 + damaged, data.len() - magic);
    let fixed = replay(&report.repaired).expect("a repaired journal is a journal");
    assert!(fixed.damage.is_none(), "repair left damage: {:?}", fixed.damage);
    assert_eq!(fixed.state.records, report.records_before + report.records_after);
    // Without damage in the middle, a start keeps exactly what repair keeps.
    if report.only_torn_tail() {
        assert_eq!(r.state.records, report.records_before);
    }
});
