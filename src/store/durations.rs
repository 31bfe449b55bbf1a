//! How long a service's tasks take, learned as they finish: the estimator
//! behind [`PollQueue::learn_durations`](super::PollQueue::learn_durations)
//! and [`ReadModel::duration_models`](super::ReadModel::duration_models),
//! shared by both backends (they only store its counts).
//!
//! # The estimator
//!
//! A fixed histogram of [`BUCKETS`] log-spaced buckets between [`MIN_MS`]
//! (100 ms) and [`MAX_MS`] (24 h): bucket `i` holds durations in
//! `[MIN_MS·r^i, MIN_MS·r^(i+1))` with `r = (MAX_MS/MIN_MS)^(1/64) ≈ 1.238`.
//! Durations under 100 ms count in the first bucket, durations over 24 h in
//! the last; negative ones and those over [`ABSURD_MS`] (30 days: a clock
//! jump, not a task) are ignored. A quantile is read by walking the
//! cumulative counts to the bucket that holds its rank and interpolating
//! linearly inside that bucket (as if its durations were spread evenly).
//!
//! Why this one: the state is 64 integers per service (one row, an
//! integer array in PostgreSQL, JSON text in SQLite), an update is an
//! element-wise addition (so two daemons learning at once merge exactly,
//! in one statement), any quantile can be read back, and the error is
//! bounded whatever the distribution: the estimate lies in the same
//! bucket as the true sample quantile, so it is off by less than one
//! bucket's width, `r - 1 ≈ 23.8 %` of the value, at worst. Interpolation
//! does much better on smooth distributions; measured against the exact
//! nearest-rank quantiles (see the tests), p10 / p50 / p90 are off by:
//!
//! | sample                          | p10   | p50   | p90   |
//! |---------------------------------|-------|-------|-------|
//! | uniform 2–10 s (10 000)         | 0.1 % | 0.2 % | 3.5 % |
//! | log-normal, median 30 s, σ = 1  | 0.2 % | 0.5 % | 1.2 % |
//! | exponential, mean 60 s          | 0.2 % | 0.3 % | 0.2 % |
//! | two peaks, 5 s and 5 min        | 3.9 % | 5.2 % | 0.6 % |
//!
//! The larger errors come from a quantile in a bucket the sample fills
//! only in part (the end of a uniform range, the gap between two peaks).
//! P² would be more precise for one quantile of a stationary stream but
//! cannot be merged, and needs five markers per quantile.
//!
//! # Forgetting
//!
//! A model that never forgets would follow a service that got slower only
//! after as many tasks as it had seen. So when a merge takes the
//! histogram's total over [`AGE_ABOVE`], every count is halved (rounded
//! up, so no bucket that held a task empties): the model weighs roughly
//! the last 50–100 thousand tasks, newer ones more. The observed count
//! ([`DurationModel::count`]) keeps counting every task.
//!
//! May call: `clock`.

use super::DurationModel;
use crate::clock::Millis;

/// Buckets in a histogram.
pub const BUCKETS: usize = 64;
/// The lower edge of the first bucket, in milliseconds.
pub const MIN_MS: f64 = 100.0;
/// The upper edge of the last bucket, in milliseconds (24 h).
pub const MAX_MS: f64 = 86_400_000.0;
/// Durations above this (30 days) are ignored: no task takes that long.
pub const ABSURD_MS: i64 = 30 * 86_400_000;
/// When a merge takes the total over this, every count is halved.
pub const AGE_ABOVE: u64 = 100_000;

/// The ratio between two consecutive bucket edges.
fn ratio() -> f64 {
    (MAX_MS / MIN_MS).powf(1.0 / BUCKETS as f64)
}

/// The lower edge of bucket `i` (`edge(BUCKETS)` is [`MAX_MS`]).
pub fn edge(i: usize) -> f64 {
    if i >= BUCKETS {
        return MAX_MS;
    }
    MIN_MS * ratio().powi(i as i32)
}

/// The bucket of a duration, or `None` when it is ignored (negative or
/// absurd).
pub fn bucket_of(ms: i64) -> Option<usize> {
    if !(0..=ABSURD_MS).contains(&ms) {
        return None;
    }
    let x = (ms as f64).max(MIN_MS);
    let i = ((x / MIN_MS).ln() / ratio().ln()).floor() as usize;
    // Float rounding at an edge may land one off; the edges decide.
    let mut i = i.min(BUCKETS - 1);
    if i > 0 && x < edge(i) {
        i -= 1;
    } else if i + 1 < BUCKETS && x >= edge(i + 1) {
        i += 1;
    }
    Some(i)
}

/// Counts of durations per bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    pub counts: [u64; BUCKETS],
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: [0; BUCKETS],
        }
    }
}

impl Histogram {
    /// The histogram of `durations_ms`, with how many were taken (the
    /// others were ignored).
    pub fn of(durations_ms: &[i64]) -> Histogram {
        let mut h = Histogram::default();
        for &d in durations_ms {
            if let Some(i) = bucket_of(d) {
                h.counts[i] += 1;
            }
        }
        h
    }

    /// A histogram read back from storage: missing buckets are empty,
    /// extra ones and negative counts are dropped.
    pub fn from_stored(counts: &[i64]) -> Histogram {
        let mut h = Histogram::default();
        for (c, &n) in h.counts.iter_mut().zip(counts) {
            *c = n.max(0) as u64;
        }
        h
    }

    /// The counts as stored (a bigint array, a JSON array).
    pub fn to_stored(&self) -> Vec<i64> {
        self.counts
            .iter()
            .map(|&c| i64::try_from(c).unwrap_or(i64::MAX))
            .collect()
    }

    /// Durations counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds `other`'s counts; when the total goes over [`AGE_ABOVE`], halves
    /// every count once, rounding up (the PostgreSQL backend's merge
    /// statement does the same in SQL).
    pub fn merge(&mut self, other: &Histogram) {
        for (c, o) in self.counts.iter_mut().zip(other.counts) {
            *c = c.saturating_add(o);
        }
        if self.total() > AGE_ABOVE {
            for c in self.counts.iter_mut() {
                *c = c.div_ceil(2);
            }
        }
    }

    /// The estimated `q`-quantile (0 ≤ q ≤ 1) in milliseconds, `None` when
    /// empty.
    pub fn quantile(&self, q: f64) -> Option<i64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let target = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0.0;
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let c = c as f64;
            if below + c >= target {
                let frac = ((target - below) / c).clamp(0.0, 1.0);
                let (lo, hi) = (edge(i), edge(i + 1));
                return Some((lo + (hi - lo) * frac).round() as i64);
            }
            below += c;
        }
        // Only reached through float rounding at q = 1.
        let last = self.counts.iter().rposition(|&c| c > 0)?;
        Some(edge(last + 1).round() as i64)
    }

    /// The model this histogram says, for `service`: p10, p50, p90 (0 when
    /// nothing was learned).
    pub fn model(&self, service: String, observed: u64, updated_at: Millis) -> DurationModel {
        let q = |p| self.quantile(p).unwrap_or(0);
        DurationModel {
            service,
            count: observed,
            p10_ms: q(0.10),
            p50_ms: q(0.50),
            p90_ms: q(0.90),
            updated_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The exact nearest-rank quantile of a sample.
    fn exact(sample: &mut [i64], q: f64) -> i64 {
        sample.sort_unstable();
        let rank = ((q * sample.len() as f64).ceil() as usize).max(1);
        sample[rank - 1]
    }

    /// The relative error of the estimate of each of p10, p50, p90.
    fn errors(sample: &mut [i64]) -> [f64; 3] {
        let h = Histogram::of(sample);
        [0.10, 0.50, 0.90].map(|q| {
            let est = h.quantile(q).unwrap() as f64;
            let truth = exact(sample, q) as f64;
            (est - truth).abs() / truth
        })
    }

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(0x7461_736b)
    }

    #[test]
    fn buckets_cover_100ms_to_a_day_in_64_log_steps() {
        assert_eq!(edge(0), MIN_MS);
        assert!((edge(BUCKETS) - MAX_MS).abs() < 1e-6);
        assert!((ratio() - 1.238).abs() < 0.001, "{}", ratio());
        for i in 0..BUCKETS {
            let lo = edge(i).ceil() as i64;
            assert_eq!(bucket_of(lo), Some(i), "lower edge of {i}");
            let hi = edge(i + 1).ceil() as i64 - 1;
            assert_eq!(bucket_of(hi), Some(i), "just under the upper edge of {i}");
        }
        assert_eq!(bucket_of(0), Some(0));
        assert_eq!(bucket_of(99), Some(0));
        assert_eq!(bucket_of(2 * 86_400_000), Some(BUCKETS - 1));
        assert_eq!(bucket_of(-1), None);
        assert_eq!(bucket_of(ABSURD_MS + 1), None);
        assert_eq!(bucket_of(i64::MAX), None);
    }

    #[test]
    fn a_uniform_2_to_10_s_sample_is_read_within_one_percent_inside_the_range() {
        let mut r = rng();
        let mut sample: Vec<i64> = (0..10_000).map(|_| r.gen_range(2_000..=10_000)).collect();
        let [p10, p50, p90] = errors(&mut sample);
        // Measured: 0.1 %, 0.2 %, 3.5 %. The p90 sits in the bucket that
        // holds the sample's end (8.9–11 s, filled only to 10 s), which
        // interpolation spreads over its whole width.
        assert!(p10 < 0.01 && p50 < 0.01 && p90 < 0.05, "{p10} {p50} {p90}");
        let h = Histogram::of(&sample);
        let p50 = h.quantile(0.5).unwrap();
        assert!(
            (5_400..=6_600).contains(&p50),
            "p50 {p50} within 10 % of 6 s"
        );
    }

    #[test]
    fn a_log_normal_sample_is_read_within_two_percent() {
        // Median 30 s, σ = 1 (p10 ≈ 8.3 s, p90 ≈ 108 s): a long tail.
        let mut r = rng();
        let mut sample: Vec<i64> = (0..20_000)
            .map(|_| {
                // Box–Muller.
                let (u1, u2): (f64, f64) = (r.r#gen::<f64>().max(1e-12), r.r#gen());
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                (30_000.0 * z.exp()) as i64
            })
            .collect();
        // Measured: 0.2 %, 0.5 %, 1.2 %.
        let e = errors(&mut sample);
        assert!(e.iter().all(|&e| e < 0.02), "{e:?}");
    }

    #[test]
    fn an_exponential_sample_and_a_two_peaked_one_stay_within_a_bucket() {
        let mut r = rng();
        let mut exp: Vec<i64> = (0..20_000)
            .map(|_| (-60_000.0 * (1.0 - r.r#gen::<f64>()).ln()) as i64)
            .collect();
        // Measured: 0.2 %, 0.3 %, 0.2 %.
        let e = errors(&mut exp);
        assert!(e.iter().all(|&e| e < 0.02), "exponential {e:?}");
        // Half the tasks take ~5 s, half ~5 min: the worst case for
        // interpolation is still bounded by a bucket's width.
        let mut two: Vec<i64> = (0..10_000)
            .map(|i| {
                let base = if i % 2 == 0 { 5_000 } else { 300_000 };
                base + r.gen_range(0..base / 10)
            })
            .collect();
        // Measured: 3.9 %, 5.2 % (the median falls between the peaks),
        // 0.6 %.
        let e = errors(&mut two);
        assert!(e.iter().all(|&e| e < ratio() - 1.0), "two peaks {e:?}");
    }

    #[test]
    fn small_samples_land_in_their_bucket() {
        let h = Histogram::of(&[42_000]);
        for q in [0.1, 0.5, 0.9] {
            let est = h.quantile(q).unwrap() as f64;
            assert!((est - 42_000.0).abs() / 42_000.0 < ratio() - 1.0, "{est}");
        }
        assert_eq!(Histogram::default().quantile(0.5), None);
        let m = Histogram::default().model("s".into(), 0, 5);
        assert_eq!((m.count, m.p10_ms, m.p50_ms, m.p90_ms), (0, 0, 0, 0));
    }

    #[test]
    fn negative_and_absurd_durations_are_ignored() {
        let h = Histogram::of(&[-5, 3_000, ABSURD_MS + 1, i64::MIN, 3_000]);
        assert_eq!(h.total(), 2);
    }

    #[test]
    fn merging_equals_learning_everything_at_once() {
        let mut r = rng();
        let all: Vec<i64> = (0..5_000).map(|_| r.gen_range(100..600_000)).collect();
        let mut merged = Histogram::default();
        for chunk in all.chunks(333) {
            merged.merge(&Histogram::of(chunk));
        }
        assert_eq!(merged, Histogram::of(&all));
        let back = Histogram::from_stored(&merged.to_stored());
        assert_eq!(back, merged);
        assert_eq!(
            Histogram::from_stored(&[1, -3]).counts[..3],
            [1, 0, 0],
            "short and negative stored counts"
        );
    }

    #[test]
    fn a_full_model_forgets_by_halves_and_follows_a_slower_service() {
        let fast = Histogram::of(&vec![2_000; 1_000]);
        let slow = Histogram::of(&vec![20_000; 1_000]);
        let mut h = Histogram::default();
        for _ in 0..100 {
            h.merge(&fast);
        }
        assert!(h.total() <= AGE_ABOVE, "{}", h.total());
        assert!(h.total() > AGE_ABOVE / 2, "{}", h.total());
        // The service slows down: after as many slow tasks as the model
        // weighs, its median is the new speed.
        for _ in 0..100 {
            h.merge(&slow);
        }
        let p50 = h.quantile(0.5).unwrap();
        assert!((17_000..24_000).contains(&p50), "{p50}");
        // A bucket that held a task never empties by halving.
        let mut one = Histogram::of(&[1_000]);
        one.merge(&Histogram::of(&vec![5_000; AGE_ABOVE as usize + 1]));
        assert_eq!(one.counts[bucket_of(1_000).unwrap()], 1);
    }
}
