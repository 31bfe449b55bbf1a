//! Proof of life from the worker loops, for the systemd watchdog: each loop
//! beats every time round and never sleeps longer than its `max_idle`; the
//! watchdog is fed only while every loop beats. Monotonic time (tokio's,
//! which the watchdog's own timer also follows): a jump of the wall clock
//! neither starves nor fools the watchdog.
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
    origin: tokio::time::Instant,
    max_idle: Duration,
}

impl Heartbeat {
    pub fn new(max_idle: Duration) -> Self {
        let h = Heartbeat {
            last: Arc::default(),
            origin: tokio::time::Instant::now(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The age follows tokio's monotonic clock: under paused time it moves
    /// exactly as far as the clock is advanced and no further, whatever
    /// the wall clock does meanwhile.
    #[tokio::test(start_paused = true)]
    async fn the_age_follows_the_monotonic_clock() {
        let h = Heartbeat::new(Duration::from_secs(10));
        assert_eq!(h.age(), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(7)).await;
        assert_eq!(h.age(), Duration::from_secs(7));
        // A clone is the same loop's heartbeat.
        let seen_by_watchdog = h.clone();
        h.beat();
        assert_eq!(seen_by_watchdog.age(), Duration::ZERO);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(seen_by_watchdog.age(), Duration::from_millis(1500));
        // Real time passing while the clock is paused does not age it.
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(seen_by_watchdog.age(), Duration::from_millis(1500));
        assert_eq!(h.max_idle(), Duration::from_secs(10));
    }
}
