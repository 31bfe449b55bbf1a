//! Fuzzes the enqueue body parser.
//!
//! Invariants: never panics; every accepted task has a valid ID and only
//! http(s) webhooks; every refusal is a 400, 413 or 422 with a message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use taskhook::ingest::{MAX_ID_BYTES, check_id, parse_enqueue};

fuzz_target!(|data: &[u8]| {
    match parse_enqueue(data, "producer") {
        Ok(tasks) => {
            assert!(!tasks.is_empty(), "accepted a body with no task");
            for t in &tasks {
                assert!(check_id(&t.id).is_ok(), "accepted bad id {:?}", t.id);
                assert!(!t.id.is_empty() && t.id.len() <= MAX_ID_BYTES, "{:?}", t.id);
                assert!(!t.id.chars().any(char::is_control), "{:?}", t.id);
                assert!(!t.service.is_empty(), "empty service");
                for w in &t.webhooks {
                    assert!(
                        w.starts_with("http://") || w.starts_with("https://"),
                        "accepted webhook {w:?}"
                    );
                }
                if let Some(m) = &t.metadata {
                    let v: serde_json::Value = serde_json::from_str(m).expect("metadata is JSON");
                    assert!(v.is_object(), "metadata not an object: {m}");
                }
            }
        }
        Err(e) => {
            assert!(matches!(e.status, 400 | 413 | 422), "status {}", e.status);
            assert!(!e.message.is_empty(), "empty message for code {}", e.code);
            assert!(!e.code.is_empty());
        }
    }
});
