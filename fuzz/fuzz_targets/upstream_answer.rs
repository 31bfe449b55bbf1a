//! Fuzzes the batch-answer parser and the terminal rule behind it.
//!
//! Invariants: neither panics; a record with a non-null `finished_at` is
//! always `Finished`; the state label is never empty.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use taskhook::terminal::{Verdict, assess};
use taskhook::upstream::parse_batch;

fn check(record: &Value) {
    let a = assess(record);
    let finished_at = record.get("finished_at").is_some_and(|f| !f.is_null());
    if finished_at {
        assert!(
            matches!(a.verdict, Verdict::Finished(_)),
            "finished_at set but verdict {:?} for {record}",
            a.verdict
        );
    }
    assert!(!a.state.is_empty(), "empty state label for {record}");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(answer) = parse_batch(data) {
        for (id, record) in &answer.records {
            assert_eq!(
                record.value.get("id").and_then(Value::as_str),
                Some(id.as_str())
            );
            // The forwarded bytes must be the same JSON as the parsed value.
            let reparsed: Value = serde_json::from_str(record.raw.get()).expect("raw reparses");
            assert_eq!(reparsed, record.value);
            check(&record.value);
        }
    }
    if let Ok(v @ Value::Object(_)) = serde_json::from_slice::<Value>(data) {
        check(&v);
    }
});
