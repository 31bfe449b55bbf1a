//! Time, stable hashing and identifiers: every pseudo-random field of a task
//! derives from hash(seed, task ID), so answers are reproducible.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Milliseconds since the epoch as float seconds (e.g. 1767119745.524).
pub(crate) fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` of `ms`, with `us` extra microseconds (< 1000).
pub(crate) fn iso8601(ms: u64, us: u64) -> String {
    let at = UNIX_EPOCH + std::time::Duration::from_micros(ms * 1000 + us % 1000);
    humantime::format_rfc3339_micros(at).to_string()
}

/// `YYYY-MM-DDTHH:MM:SS.fffZ` of `ms` (millisecond precision).
pub(crate) fn iso8601_millis(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

pub(crate) fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Stable hash of (seed, s): FNV-1a finished with splitmix.
pub(crate) fn hash_str(seed: u64, s: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ splitmix(seed);
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    splitmix(h)
}

/// Derives the `n`th independent value from `key`.
pub(crate) fn mix(key: u64, n: u64) -> u64 {
    splitmix(key ^ splitmix(n))
}

/// Uniform in [0, 1).
pub(crate) fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

pub(crate) fn uuid_of(a: u64, b: u64) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

pub(crate) fn uuid(k: u64) -> String {
    uuid_of(k, splitmix(k))
}

pub(crate) fn random_uuid() -> String {
    let mut rng = rand::thread_rng();
    uuid_of(rng.r#gen(), rng.r#gen())
}

/// A 24-hex-digit Mongo-like `_id`.
pub(crate) fn hex24(k: u64) -> String {
    format!("{k:016x}{:08x}", splitmix(k) as u32)
}
