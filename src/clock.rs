//! Time. Every loop asks a [`Clock`] for the wall time it records (unix
//! milliseconds, what the store keeps) and sleeps with tokio's timer, so a
//! test can run the daemon's loops under tokio's paused time with
//! [`TokioClock`]. The daemon uses [`SystemClock`].
//!
//! May call: nothing of taskhook's.

use std::sync::Arc;

/// Unix time in milliseconds.
pub type Millis = i64;

/// Where the wall time comes from.
pub trait Clock: Send + Sync + 'static {
    /// Now, in unix milliseconds.
    fn now_ms(&self) -> Millis;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        now_ms()
    }
}

/// A wall clock that moves with tokio's time: `start` plus the tokio time
/// elapsed since it was made. Under `tokio::time::pause` it advances only as
/// the runtime's virtual time does.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start_ms: Millis,
    origin: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(start_ms: Millis) -> Self {
        TokioClock {
            start_ms,
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> Millis {
        self.start_ms + self.origin.elapsed().as_millis() as Millis
    }
}

/// The clock a component holds.
pub type SharedClock = Arc<dyn Clock>;

/// The system clock, shared.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// The system's wall clock in unix milliseconds.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// Serializes unix milliseconds as an RFC 3339 timestamp.
pub fn ser_time<S: serde::Serializer>(t: &Millis, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

/// [`ser_time`] for optional times (`null` when absent).
pub fn ser_opt_time<S: serde::Serializer>(t: &Option<Millis>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&rfc3339(*t)),
        None => s.serialize_none(),
    }
}

/// Unix milliseconds as RFC 3339 with milliseconds, e.g. `2026-01-01T00:00:00.000Z`.
pub fn rfc3339(t: Millis) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(t.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

/// Reads an RFC 3339 timestamp (any offset) as unix milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_follows_paused_time() {
        let c = TokioClock::starting_at(1_000);
        assert_eq!(c.now_ms(), 1_000);
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        assert_eq!(c.now_ms(), 1_000 + 3_600_000);
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn rfc3339_reads_any_offset_and_round_trips() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01Z"), Some(1_000));
        assert_eq!(parse_rfc3339("1970-01-01T09:00:01.5+09:00"), Some(1_500));
        assert_eq!(
            parse_rfc3339(&rfc3339(1_764_000_000_123)),
            Some(1_764_000_000_123)
        );
        assert_eq!(parse_rfc3339("2 hours ago"), None);
        assert_eq!(parse_rfc3339("2026-11-28"), None);
    }
}
