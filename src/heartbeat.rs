//! Proof of life from the worker loops, for the systemd watchdog: each loop
//! beats every time round and never sleeps longer than its `max_idle`; the
//! watchdog is fed only while every loop beats. Monotonic time: a jump of
//! the wall clock neither starves nor fools the watchdog.
//!
//! May call: nothing of taskhook's.

use std::sync::Arc;
use std::time::Duration;

/// Proof of life from a loop: the last time it went round. The systemd
/// watchdog is fed only while every loop keeps beating, so a loop never
/// sleeps longer than [`Heartbeat::max_idle`]. Times are monotonic: a jump
/// of the wall clock neither starves nor fools the watchdog.
#[derive(Clone)]
pub struct Heartbeat {
    /// Nanoseconds since `origin` at the last beat.
    last: Arc<std::sync::atomic::AtomicU64>,
    origin: std::time::Instant,
    max_idle: Duration,
}

impl Heartbeat {
    pub fn new(max_idle: Duration) -> Self {
        let h = Heartbeat {
            last: Arc::default(),
            origin: std::time::Instant::now(),
            max_idle,
        };
        h.beat();
        h
    }
    pub fn beat(&self) {
        let since = self.origin.elapsed().as_nanos() as u64;
        self.last.store(since, std::sync::atomic::Ordering::Relaxed);
    }
    /// The longest the loop may sleep between beats.
    pub fn max_idle(&self) -> Duration {
        self.max_idle
    }
    /// How long ago the loop last beat.
    pub fn age(&self) -> Duration {
        let last = self.last.load(std::sync::atomic::Ordering::Relaxed);
        self.origin
            .elapsed()
            .saturating_sub(Duration::from_nanos(last))
    }
}
