//! Fuzzes the batch-answer parser and the terminal rule behind it, under
//! every built-in service profile (the first byte picks one).
//!
//! Invariants: neither panics; a record with a non-null `finished_at` is
//! always `Finished`; the state label is never empty; every record is
//! filed under the ID it names.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use taskhook::profile::{Profile, Profiles};
use taskhook::poll::terminal::{Verdict, assess};
use taskhook::poll::upstream::parse_batch;

fn check(profile: &Profile, record: &Value) {
    let a = assess(profile, record);
    let finished_at = profile
        .record(record)
        .get("finished_at")
        .is_some_and(|f| !f.is_null());
    if finished_at {
        assert!(
            matches!(a.verdict, Verdict::Finished(_)),
            "finished_at set but verdict {:?} for {record}",
            a.verdict
        );
    }
    assert!(!a.state.is_empty(), "empty state label for {record}");
}

/// The built-in profiles, loaded once (not per input).
static PROFILES: LazyLock<Profiles> =
    LazyLock::new(|| Profiles::new(&Default::default(), true, "producer").expect("built-ins load"));

fuzz_target!(|data: &[u8]| {
    let Some((pick, data)) = data.split_first() else {
        return;
    };
    let profiles = &*PROFILES;
    let names: Vec<&str> = profiles.names().collect();
    let profile = match names.get(*pick as usize) {
        Some(name) => profiles.get(name).expect("known"),
        None => profiles.generic(),
    };
    if let Ok(answer) = parse_batch(data, profile) {
        for (id, record) in &answer.records {
            assert_eq!(profile.record_id(&record.value), Some(id.as_str()));
            // The forwarded bytes must be the same JSON as the parsed value.
            let reparsed: Value = serde_json::from_str(record.raw.get()).expect("raw reparses");
            assert_eq!(reparsed, record.value);
            check(profile, &record.value);
        }
    }
    if let Ok(v @ Value::Object(_)) = serde_json::from_slice::<Value>(data) {
        check(profile, &v);
    }
});
