//! The request rate limiter: at most `rate` requests per second on
//! average, with a short burst allowed, held back while the upstream asked
//! for a pause. The rate follows AIMD (halved on a 429, raised a step per
//! success, never above the share configured), which a fixed-quota limiter
//! such as `governor` cannot do on the fly.
//!
//! It is the generic cell rate algorithm with reservations: `tat` (the
//! theoretical arrival time) moves one emission interval per request, and a
//! request may start once `tat` is within the burst's tolerance of now.
//! Every method takes `now`, so the tests drive time.
//!
//! May call: nothing of the daemon.

use std::time::{Duration, Instant};

/// Additive increase of the request rate per successful request (req/s).
pub const RATE_STEP: f64 = 0.25;
/// The request rate never drops below this (req/s).
pub const MIN_RATE: f64 = 0.2;

/// Paces requests: where the budget stands, and any pause.
///
/// Why a burst: a request that must leave now (a callback said its task
/// finished) should not wait behind the even spacing of the others when
/// the budget has room. The burst is half a second's worth of requests, so
/// an upstream counting `rate` requests per second (a token bucket of one
/// second, as most are) still has half its bucket to absorb jitter, and no
/// rolling second ever sees more than one and a half times `rate`.
#[derive(Debug)]
pub struct Pacer {
    /// When the budget is fully spent, given the requests reserved so far.
    tat: Instant,
    paused_until: Instant,
    rate: f64,
    max_rate: f64,
}

impl Pacer {
    pub fn new(rate: f64, now: Instant) -> Self {
        Pacer {
            tat: now,
            paused_until: now,
            rate,
            max_rate: rate,
        }
    }

    /// The rate in force now (req/s).
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The most the rate may climb back to (req/s).
    pub fn max_rate(&self) -> f64 {
        self.max_rate
    }

    /// Requests that may start at once with a full budget.
    pub fn burst(&self) -> usize {
        ((self.rate / 2.0).floor() as usize).max(1)
    }

    fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.rate)
    }

    /// How far ahead of `tat` a request may start.
    fn tolerance(&self) -> Duration {
        self.interval() * (self.burst() as u32 - 1)
    }

    /// When the next request may start (`now` or later).
    pub fn ready_at(&self, now: Instant) -> Instant {
        now.max(self.paused_until)
            .max(self.tat.checked_sub(self.tolerance()).unwrap_or(now))
    }

    /// How many requests may start at `now` without waiting.
    pub fn ready_now(&self, now: Instant) -> usize {
        if self.paused_until > now {
            return 0;
        }
        let spent = self.tat.saturating_duration_since(now);
        let room = self.tolerance().saturating_sub(spent) + self.interval();
        if spent > self.tolerance() {
            return 0;
        }
        ((room.as_secs_f64() * self.rate + 1e-9).floor() as usize).min(self.burst())
    }

    /// Reserves the next start and returns it (`now` or later).
    pub fn reserve(&mut self, now: Instant) -> Instant {
        let at = self.ready_at(now);
        self.tat = self.tat.max(at) + self.interval();
        at
    }

    /// How long `requests` more requests take from `now`, after any pause:
    /// what a claim's lease must cover.
    pub fn time_for(&self, now: Instant, requests: usize) -> Duration {
        self.ready_at(now).saturating_duration_since(now)
            + Duration::from_secs_f64(requests as f64 / self.rate)
    }

    /// How long from `now` until requests may flow again.
    pub fn pause_remaining(&self, now: Instant) -> Duration {
        self.paused_until.saturating_duration_since(now)
    }

    /// No request starts before `until` (a pause only ever grows), and the
    /// requests after it start one interval apart: an upstream that asked
    /// for a pause gets no burst at its end.
    pub fn pause_until(&mut self, until: Instant) {
        self.paused_until = self.paused_until.max(until);
        self.tat = self.tat.max(self.paused_until + self.tolerance());
    }

    /// Ends any pause now (a new token was installed): requests start again
    /// at once, one interval apart.
    pub fn resume(&mut self, now: Instant) {
        self.paused_until = now;
        self.tat = self.tat.min(now + self.tolerance());
    }

    /// A request succeeded: a step faster, up to the share.
    pub fn faster(&mut self) {
        self.rate = (self.rate + RATE_STEP).min(self.max_rate);
    }

    /// The upstream said too many: half the rate.
    pub fn slower(&mut self) {
        self.rate = (self.rate / 2.0).max(MIN_RATE.min(self.max_rate));
    }

    /// This instance's share of the budget changed.
    pub fn set_max_rate(&mut self, rate: f64) {
        if (self.max_rate - rate).abs() > f64::EPSILON {
            self.max_rate = rate;
            self.rate = self.rate.min(rate).max(MIN_RATE.min(rate));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_budget_lets_a_burst_go_at_once_then_spaces_the_rest() {
        let t0 = Instant::now();
        let mut p = Pacer::new(10.0, t0);
        assert_eq!(p.burst(), 5);
        assert_eq!(p.ready_now(t0), 5);
        let starts: Vec<Duration> = (0..8).map(|_| p.reserve(t0) - t0).collect();
        assert_eq!(&starts[..5], &[Duration::ZERO; 5], "{starts:?}");
        // Then one per interval.
        for (i, s) in starts[5..].iter().enumerate() {
            let want = ms(100 * (i as u64 + 1));
            assert!(s.abs_diff(want) < ms(1), "{starts:?}");
        }
        assert_eq!(p.ready_now(t0), 0);
        // The budget refills at the rate.
        assert!(p.ready_at(t0).duration_since(t0).abs_diff(ms(400)) < ms(1));
        assert_eq!(p.ready_now(t0 + ms(1_300)), 5);
    }

    #[test]
    fn no_second_ever_starts_more_than_one_and_a_half_times_the_rate() {
        for rate in [0.5, 1.0, 3.3, 10.0, 58.0] {
            let t0 = Instant::now();
            let mut p = Pacer::new(rate, t0);
            // Callers arrive every 7 ms for a minute and each takes its slot.
            let mut starts = Vec::new();
            let mut now = t0;
            while now < t0 + Duration::from_secs(60) {
                starts.push(p.reserve(now));
                now += ms(7);
            }
            starts.retain(|s| *s < t0 + Duration::from_secs(60));
            let most = starts
                .iter()
                .map(|s| {
                    starts
                        .iter()
                        .filter(|x| *x >= s && **x < *s + ms(1_000))
                        .count()
                })
                .max()
                .unwrap();
            assert!(
                most as f64 <= (rate * 1.5).ceil() + 1.0,
                "rate {rate}: {most} in one second"
            );
            let average = starts.len() as f64 / 60.0;
            assert!(
                (average - rate).abs() <= rate * 0.05 + 0.05,
                "rate {rate}: {average} per second on average"
            );
        }
    }

    #[test]
    fn after_a_pause_requests_start_one_interval_apart_without_a_burst() {
        let t0 = Instant::now();
        let mut p = Pacer::new(10.0, t0);
        p.pause_until(t0 + ms(2_000));
        let end = t0 + ms(2_000);
        assert_eq!((p.ready_now(t0), p.ready_now(end)), (0, 1));
        // Requests held by the pause, all asking at its end.
        let starts: Vec<Duration> = (0..3).map(|_| p.reserve(end) - end).collect();
        for (i, s) in starts.iter().enumerate() {
            assert!(s.abs_diff(ms(100 * i as u64)) < ms(1), "{starts:?}");
        }
    }

    #[test]
    fn a_slow_rate_keeps_even_spacing() {
        let t0 = Instant::now();
        let mut p = Pacer::new(1.5, t0);
        assert_eq!(p.burst(), 1);
        assert_eq!(p.reserve(t0), t0);
        assert!((p.reserve(t0) - t0).abs_diff(ms(667)) < ms(1));
    }

    #[test]
    fn a_pause_holds_every_request_and_aimd_moves_the_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new(10.0, t0);
        p.pause_until(t0 + ms(500));
        assert_eq!(p.ready_now(t0), 0);
        assert_eq!(p.reserve(t0), t0 + ms(500));
        p.pause_until(t0 + ms(100));
        assert_eq!(p.pause_remaining(t0), ms(500), "a pause never shrinks");
        p.resume(t0);
        assert_eq!(p.pause_remaining(t0), Duration::ZERO);
        assert_eq!(p.reserve(t0), t0, "a resume lets a request go at once");
        p.slower();
        assert_eq!(p.rate(), 5.0);
        p.faster();
        assert_eq!(p.rate(), 5.25);
        p.set_max_rate(2.0);
        assert_eq!(p.rate(), 2.0);
        for _ in 0..100 {
            p.slower();
        }
        assert_eq!(p.rate(), MIN_RATE);
        assert!(p.time_for(t0, 2) >= Duration::from_secs(10));
    }
}
