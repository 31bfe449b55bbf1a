//! When to try a failed delivery again: the retry schedule, with jitter, a
//! receiver's `Retry-After` honoured within its bounds. Pure: the random
//! draw is passed in.
//!
//! May call: `poll::schedule` (the shared jitter).

use std::time::Duration;

use crate::poll::schedule::{RETRY_JITTER, spread};

/// The delay before the next attempt after attempt number `attempt`
/// (1-based) failed, or `None` when the schedule ran out (dead letter).
/// `retry_after` is the receiver's `Retry-After`, honoured but clamped
/// between this step's delay and the schedule's last step.
pub fn retry_after_attempt(
    schedule: &[Duration],
    attempt: u32,
    retry_after: Option<Duration>,
    r: f64,
) -> Option<Duration> {
    let step = schedule.get(attempt.saturating_sub(1) as usize)?;
    let base = spread(*step, RETRY_JITTER, r);
    let last = *schedule.last().expect("schedule is not empty");
    Some(match retry_after {
        Some(ra) => ra.clamp(base.min(last), last.max(base)),
        None => base,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn retries_follow_the_schedule_then_dead_letter() {
        let sch = [s(5), s(30), s(120)];
        assert_eq!(retry_after_attempt(&sch, 1, None, 0.5), Some(s(5)));
        assert_eq!(retry_after_attempt(&sch, 3, None, 0.5), Some(s(120)));
        assert_eq!(retry_after_attempt(&sch, 4, None, 0.5), None);
        match retry_after_attempt(&sch, 2, None, 0.0) {
            Some(d) => assert_eq!(d, s(27)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn receiver_retry_after_is_clamped_to_the_schedule() {
        let sch = [s(5), s(30), s(120)];
        assert_eq!(retry_after_attempt(&sch, 1, Some(s(60)), 0.5), Some(s(60)));
        assert_eq!(
            retry_after_attempt(&sch, 1, Some(s(9999)), 0.5),
            Some(s(120))
        );
        assert_eq!(retry_after_attempt(&sch, 2, Some(s(1)), 0.5), Some(s(30)));
    }
}
