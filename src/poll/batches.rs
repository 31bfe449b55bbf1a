//! How many IDs one request carries, per service, and how many tasks one
//! claim takes.
//!
//! May call: `config`, `store` (claim limits).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::config::Config;
use crate::store::ClaimLimits;

/// The batch size in force per service, shared by the poll loop and its
/// rounds: `upstream.batch_size` capped by the profile's `max_batch`;
/// halved when the upstream refuses a batch as too large, lowered to the
/// page it served when its answer says items were left out, then growing
/// back by one per success to just below the size that failed.
#[derive(Debug, Default)]
pub struct Batches {
    state: Mutex<HashMap<String, BatchState>>,
}

/// One service's batch size and its ceiling.
#[derive(Debug)]
struct BatchState {
    current: usize,
    /// Below the smallest size refused lately; forgotten after [`CEILING_MEMORY`].
    ceiling: usize,
    lowered_at: Option<std::time::Instant>,
}

impl Default for BatchState {
    fn default() -> Self {
        BatchState {
            current: usize::MAX,
            ceiling: usize::MAX,
            lowered_at: None,
        }
    }
}

/// How long a refused batch size is remembered. A 400 may come from one
/// bad ID rather than the size, so the ceiling must not last for ever.
const CEILING_MEMORY: Duration = Duration::from_secs(600);

impl Batches {
    pub fn new() -> Self {
        Self::default()
    }
    fn with<T>(&self, service: &str, f: impl FnOnce(&mut BatchState) -> T) -> T {
        let mut s = self.state.lock().expect("batch lock");
        f(s.entry(service.to_string()).or_default())
    }
    /// The size to use now for `service`, at most `configured`.
    pub fn get(&self, service: &str, configured: usize) -> usize {
        let s = self.state.lock().expect("batch lock");
        s.get(service)
            .map_or(configured, |b| b.current.min(configured))
            .max(1)
    }
    /// A batch of `n` was refused: halve, and stay below `n` for a while.
    pub fn refused(&self, service: &str, n: usize) -> usize {
        self.lower(service, n.saturating_sub(1), n / 2)
    }
    /// A batch of `n` came back with only `served` items and a total that
    /// says more exist: the service pages; stay at `served`.
    pub fn paged(&self, service: &str, served: usize) -> usize {
        self.lower(service, served, served)
    }
    fn lower(&self, service: &str, ceiling: usize, current: usize) -> usize {
        self.with(service, |s| {
            s.ceiling = s.ceiling.min(ceiling).max(1);
            s.current = current.clamp(1, s.ceiling);
            s.lowered_at = Some(std::time::Instant::now());
            s.current
        })
    }
    pub fn succeeded(&self, service: &str) {
        let mut all = self.state.lock().expect("batch lock");
        let Some(s) = all.get_mut(service) else {
            return;
        };
        if s.lowered_at.is_some_and(|at| at.elapsed() > CEILING_MEMORY) {
            all.remove(service);
            return;
        }
        s.current = s.current.saturating_add(1).min(s.ceiling);
    }
    /// Services whose batch size is lowered now.
    pub(crate) fn lowered(&self) -> Vec<String> {
        self.state
            .lock()
            .expect("batch lock")
            .keys()
            .cloned()
            .collect()
    }
}

/// The IDs one request for `service` carries now.
pub(crate) fn batch_for(cfg: &Config, batches: &Batches, service: &str) -> usize {
    let profile = cfg.upstream.profiles.for_task(service);
    batches.get(service, cfg.upstream.batch_size.min(profile.max_batch))
}

/// How many tasks one claim takes: a full batch of the claimed service for
/// each of `requests`; none of a service that must wait.
pub(crate) fn claim_limits(
    cfg: &Config,
    batches: &Batches,
    paused: &[(String, Duration)],
    requests: usize,
) -> ClaimLimits {
    let slots = requests.max(1);
    let mut limits = ClaimLimits::from(cfg.upstream.batch_size * slots);
    let services: Vec<String> = cfg
        .upstream
        .profiles
        .names()
        .map(str::to_string)
        .chain(batches.lowered())
        .collect();
    for s in services {
        let n = batch_for(cfg, batches, &s) * slots;
        if n != limits.default {
            limits.per_service.insert(s, n);
        }
    }
    for (s, _) in paused {
        limits.per_service.insert(s.clone(), 0);
    }
    limits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::from_toml(
            "[poll]\nmissing_grace = 3\nfailure_confirmations = 2\ntask_ttl = \"1h\"\n\
             [[webhooks]]\nname = \"all\"\nurl = \"http://a.example/\"\n\
             [[webhooks]]\nname = \"failures\"\nurl = \"http://b.example/\"\nevents = [\"task.failed\"]",
        )
        .unwrap()
    }

    #[test]
    fn refused_batches_halve_and_never_regrow_to_the_refused_size() {
        let b = Batches::new();
        assert_eq!(b.get("p", 50), 50);
        assert_eq!(b.refused("p", 50), 25);
        assert_eq!(b.get("other", 50), 50, "other services keep their size");
        for _ in 0..100 {
            b.succeeded("p");
        }
        assert_eq!(b.get("p", 50), 49);
        assert_eq!(b.refused("p", 49), 24);
        assert_eq!(b.refused("p", 2), 1);
        assert_eq!(b.get("p", 50), 1);
        b.succeeded("p");
        assert_eq!(b.get("p", 50), 1, "the ceiling is now 1");
        assert_eq!(b.paged("q", 12), 12);
        b.succeeded("q");
        assert_eq!(b.get("q", 50), 12, "a paging service stays at its page");
    }

    #[test]
    fn claim_limits_follow_each_service_s_batch() {
        let c = cfg();
        let b = Batches::new();
        let l = claim_limits(&c, &b, &[], 4);
        assert_eq!(l.default, 50 * 4);
        assert_eq!(l.of("producer"), 200);
        assert_eq!(l.of("captcha"), 4, "one task per request");
        b.paged("openai", 12);
        assert_eq!(claim_limits(&c, &b, &[], 4).of("openai"), 48);
        let paused = [("kling".to_string(), Duration::from_secs(5))];
        assert_eq!(
            claim_limits(&c, &b, &paused, 4).of("kling"),
            0,
            "a refused service waits"
        );
    }
}
