//! Fuzzes the enqueue body parser.
//!
//! Invariants: never panics; every accepted task has a valid ID and only
//! http(s) webhooks; every refusal is a 400, 413 or 422 with a message.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use taskhook::ingest::{MAX_ID_BYTES, Rules, check_id, parse_enqueue};
use taskhook::profile::Profiles;

/// The built-in profiles, loaded once (not per input).
static PROFILES: LazyLock<Profiles> = LazyLock::new(|| {
    Profiles::new(&Default::default(), false, "producer").expect("built-ins load")
});

fuzz_target!(|data: &[u8]| {
    let profiles = &*PROFILES;
    let rules = Rules {
        default_service: "producer",
        profiles,
        max_webhooks: 10,
    };
    match parse_enqueue(data, rules) {
        Ok(tasks) => {
            assert!(!tasks.is_empty(), "accepted a body with no task");
            for t in &tasks {
                assert!(check_id(&t.id).is_ok(), "accepted bad id {:?}", t.id);
                assert!(!t.id.is_empty() && t.id.len() <= MAX_ID_BYTES, "{:?}", t.id);
                assert!(!t.id.chars().any(char::is_control), "{:?}", t.id);
                assert!(
                    profiles.get(&t.service).is_some(),
                    "accepted unknown service {:?}",
                    t.service
                );
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
