//! Pure timing rules of polling: when to poll a task next, how long to back
//! off from the upstream, and the jitter both use. Each takes its random
//! draw as an argument so tests can pin it; callers pass
//! `rand::random::<f64>()`.
//!
//! May call: `config` (the `[poll]` section).

use std::time::Duration;

use crate::config::PollConfig;

/// Jitter applied to poll delays: the delay shrinks by up to this fraction,
/// so jitter spreads load without ever pushing a poll past `max_interval`.
pub const POLL_JITTER: f64 = 0.1;
/// Jitter applied to upstream back-off (and delivery retries): ± this fraction.
pub const RETRY_JITTER: f64 = 0.1;

/// The un-jittered poll schedule of one task.
#[derive(Debug, Clone, PartialEq)]
pub struct PollSchedule {
    pub first_poll_after: Duration,
    pub interval: Duration,
    pub max_interval: Duration,
    pub backoff_factor: f64,
}

impl PollSchedule {
    /// The schedule `[poll]` configures.
    pub fn of(poll: &PollConfig) -> PollSchedule {
        PollSchedule {
            first_poll_after: poll.first_poll_after,
            interval: poll.interval,
            max_interval: poll.max_interval,
            backoff_factor: poll.backoff_factor,
        }
    }

    /// Delay between poll number `polls` (1-based, just done) and the next:
    /// `interval × backoff_factor^(polls-1)`, capped at `max_interval`.
    pub fn delay_after(&self, polls: u32) -> Duration {
        let exp = polls.saturating_sub(1).min(1000) as i32;
        let secs = self.interval.as_secs_f64() * self.backoff_factor.powi(exp);
        let max = self.max_interval.as_secs_f64();
        Duration::from_secs_f64(if secs.is_finite() { secs.min(max) } else { max })
    }

    /// [`Self::delay_after`] with downward jitter; `r` is uniform in [0, 1).
    pub fn jittered_delay_after(&self, polls: u32, r: f64) -> Duration {
        shrink(self.delay_after(polls), POLL_JITTER, r)
    }
}

/// `d` reduced by up to `frac` of itself.
pub fn shrink(d: Duration, frac: f64, r: f64) -> Duration {
    d.mul_f64(1.0 - frac * r.clamp(0.0, 1.0))
}

/// `d` scaled into [1 - frac, 1 + frac].
pub fn spread(d: Duration, frac: f64, r: f64) -> Duration {
    d.mul_f64(1.0 - frac + 2.0 * frac * r.clamp(0.0, 1.0))
}

/// Upstream back-off after `failures` consecutive failed requests (1-based):
/// `initial` doubling up to `max` (by default 1, 2, 4, 8, 16 s), each
/// ± jitter. A `Retry-After` longer than that wins, up to
/// `MAX_UPSTREAM_PAUSE`.
pub fn upstream_backoff(
    failures: u32,
    retry_after: Option<Duration>,
    r: f64,
    initial: Duration,
    max: Duration,
) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let step = initial.saturating_mul(1 << exp).min(max);
    let base = spread(step, RETRY_JITTER, r);
    match retry_after {
        Some(ra) if ra > base => ra.min(MAX_UPSTREAM_PAUSE).max(base),
        _ => base,
    }
}

/// The longest pause a `Retry-After` from the upstream can impose.
pub const MAX_UPSTREAM_PAUSE: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn sched() -> PollSchedule {
        PollSchedule {
            first_poll_after: s(10),
            interval: s(5),
            max_interval: s(60),
            backoff_factor: 1.5,
        }
    }

    #[test]
    fn poll_delays_grow_by_the_factor_and_stop_at_the_cap() {
        let p = sched();
        assert_eq!(p.delay_after(1), s(5));
        assert_eq!(p.delay_after(2), Duration::from_millis(7500));
        assert_eq!(p.delay_after(3), Duration::from_millis(11250));
        assert_eq!(p.delay_after(50), s(60));
        assert_eq!(p.delay_after(u32::MAX), s(60));
        let mut last = Duration::ZERO;
        for n in 1..40 {
            let d = p.delay_after(n);
            assert!(d >= last && d <= s(60));
            last = d;
        }
    }

    #[test]
    fn poll_jitter_only_shortens() {
        let p = sched();
        for r in [0.0, 0.3, 0.999] {
            let d = p.jittered_delay_after(50, r);
            assert!(d <= s(60) && d >= s(54), "{d:?}");
        }
    }

    #[test]
    fn upstream_backoff_doubles_to_sixteen_seconds() {
        let want = [1, 2, 4, 8, 16, 16, 16];
        for (i, w) in want.iter().enumerate() {
            assert_eq!(
                upstream_backoff(i as u32 + 1, None, 0.5, s(1), s(16)),
                s(*w)
            );
        }
        assert_eq!(upstream_backoff(1, Some(s(7)), 0.5, s(1), s(16)), s(7));
        assert_eq!(upstream_backoff(5, Some(s(7)), 0.5, s(1), s(16)), s(16));
        assert_eq!(
            upstream_backoff(1, Some(s(100_000)), 0.5, s(1), s(16)),
            MAX_UPSTREAM_PAUSE
        );
        let d = upstream_backoff(3, None, 0.0, s(1), s(16));
        assert!(d >= Duration::from_millis(3600) && d <= Duration::from_millis(4400));
    }
}
