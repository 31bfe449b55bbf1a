//! Callbacks as hints. The upstream can call a URL when a task settles
//! (`callback_url`), but that call is unsigned and never retried, so it is
//! only ever a hint: the task it names is polled at once, ahead of every
//! task merely due, and the poll decides; a hint for a task whose poll is
//! on its way is kept for when that poll is recorded (`PollQueue::hurry`).
//! A hint is written to the store at once; hints arriving while a write is
//! under way share the next one (group commit), so a burst of callbacks
//! becomes a few store writes, and the hinted tasks share the next requests
//! the rate limit lets leave.
//! A flood (unknown IDs, forged bodies, one source calling too often)
//! changes nothing but counters: IDs are capped per body, sources are rate
//! capped, and the pending set is bounded; a watched task takes at most
//! `MAX_HINTS_PER_TASK` hints, so one naming watched IDs over and over
//! cannot keep them ahead of the rest.
//!
//! May call: `store` (to make tasks due), `ingest` (ID rules), `metrics`,
//! `clock`.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::store::PollQueue;

/// Task IDs read from one callback body at most.
pub const MAX_IDS_PER_BODY: usize = 10;
/// Task IDs waiting to be passed on at most; beyond, hints are dropped.
pub const MAX_PENDING: usize = 10_000;
/// How long after a failed store write hints are tried again.
pub const RETRY: Duration = Duration::from_secs(1);

/// The task IDs a callback body names: `task_id` or `id` at the top, or in
/// a `response` or `data` object (where some services put them). At most
/// [`MAX_IDS_PER_BODY`], each a valid task ID; nothing else of the body is
/// read.
pub fn ids_in(body: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut take = |o: &serde_json::Map<String, Value>| {
        for key in ["task_id", "id"] {
            if let Some(Value::String(id)) = o.get(key)
                && crate::ingest::check_id(id).is_ok()
                && !out.contains(id)
                && out.len() < MAX_IDS_PER_BODY
            {
                out.push(id.clone());
            }
        }
    };
    if let Value::Object(top) = body {
        take(top);
        for inner in ["response", "data"] {
            if let Some(Value::Object(o)) = top.get(inner) {
                take(o);
            }
        }
    }
    out
}

/// What became of one callback, for the `taskhook_callbacks_total` counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// It named task IDs; they were passed on to be polled.
    Hinted,
    /// Well-formed, but it named no task ID.
    NoId,
    /// Its source called more often than allowed.
    RateLimited,
    /// Too many hints were waiting already.
    Overflow,
}

impl Received {
    pub fn label(self) -> &'static str {
        match self {
            Received::Hinted => "hinted",
            Received::NoId => "no_id",
            Received::RateLimited => "rate_limited",
            Received::Overflow => "overflow",
        }
    }
}

/// Collects hints and passes them on in coalesced store writes.
pub struct Hints {
    pending: Mutex<Pending>,
    ready: Notify,
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

/// Hints waiting for the next write, by service.
#[derive(Default)]
struct Pending {
    by_service: HashMap<String, HashSet<String>>,
    ids: usize,
}

impl Pending {
    /// Adds `ids` of `service`; an ID already waiting counts once.
    fn add(&mut self, service: String, ids: impl IntoIterator<Item = String>) {
        let set = self.by_service.entry(service).or_default();
        let before = set.len();
        set.extend(ids);
        self.ids += set.len() - before;
    }
}

impl Hints {
    /// `per_source`: callbacks per second one source address may make
    /// (bursts of twice that).
    pub fn new(per_source: u32) -> Arc<Self> {
        let rate = NonZeroU32::new(per_source.max(1)).expect("at least 1");
        let burst = NonZeroU32::new(per_source.max(1).saturating_mul(2)).expect("at least 1");
        Arc::new(Hints {
            pending: Mutex::default(),
            ready: Notify::new(),
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
        })
    }

    /// Takes one callback's IDs from `source` for `service`.
    pub fn receive(&self, source: IpAddr, service: &str, ids: Vec<String>) -> Received {
        if self.limiter.check_key(&source).is_err() {
            return Received::RateLimited;
        }
        if ids.is_empty() {
            return Received::NoId;
        }
        let mut p = self.pending.lock().expect("hints lock");
        if p.ids + ids.len() > MAX_PENDING {
            return Received::Overflow;
        }
        p.add(service.to_string(), ids);
        drop(p);
        self.ready.notify_one();
        Received::Hinted
    }

    /// Takes back hints a write could not pass on, as far as the bound on
    /// pending hints allows.
    fn put_back(&self, service: String, ids: Vec<String>) {
        let mut p = self.pending.lock().expect("hints lock");
        let room = MAX_PENDING.saturating_sub(p.ids);
        p.add(service, ids.into_iter().take(room));
    }

    /// Passes hints on until cancelled: waits for one, then makes every
    /// watched task named since the last write due now (one write per
    /// service) and wakes the poller. No hint waits for company: those that
    /// arrive during a write are taken by the next.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<dyn PollQueue>,
        clock: SharedClock,
        poller_wake: Arc<Notify>,
        metrics: Arc<crate::metrics::Metrics>,
        shutdown: CancellationToken,
    ) {
        let mut last_cleanup = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = self.ready.notified() => {}
                _ = shutdown.cancelled() => return,
            }
            let batch = std::mem::take(&mut *self.pending.lock().expect("hints lock"));
            let mut hurried = 0;
            let mut failed = false;
            for (service, ids) in batch.by_service {
                let ids: Vec<String> = ids.into_iter().collect();
                match store
                    .hurry(clock.now_ms(), service.clone(), ids.clone())
                    .await
                {
                    Ok(n) => hurried += n,
                    Err(e) => {
                        // The upstream never calls twice: keep them for
                        // the next write.
                        tracing::warn!(service = %service, error = %e, "cannot pass callback hints on yet; trying again in 1s");
                        self.put_back(service, ids);
                        failed = true;
                    }
                }
            }
            metrics.hinted.inc_by(hurried);
            if hurried > 0 {
                poller_wake.notify_one();
            }
            if failed {
                self.ready.notify_one();
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            if last_cleanup.elapsed() > Duration::from_secs(60) {
                // Forget sources that have been quiet, so the limiter's
                // memory follows the sources calling now.
                self.limiter.retain_recent();
                self.limiter.shrink_to_fit();
                last_cleanup = std::time::Instant::now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_read_where_callbacks_put_them_and_nothing_else() {
        assert_eq!(ids_in(&json!({"task_id": "t1", "success": true})), ["t1"]);
        assert_eq!(ids_in(&json!({"id": "t2"})), ["t2"]);
        assert_eq!(
            ids_in(&json!({"response": {"task_id": "t3"}, "data": {"id": "t4"}})),
            ["t3", "t4"]
        );
        assert_eq!(ids_in(&json!({"task_id": "t1", "id": "t1"})), ["t1"]);
        assert!(ids_in(&json!({"task_id": 5})).is_empty());
        assert!(ids_in(&json!({"task_id": ""})).is_empty());
        assert!(ids_in(&json!({"task_id": "a\nb"})).is_empty());
        assert!(ids_in(&json!(["t1"])).is_empty());
        assert!(ids_in(&json!({"data": [{"task_id": "deep"}]})).is_empty());
    }

    /// A queue that records each `hurry` (when, and which IDs), and holds
    /// each call until the test lets it go.
    struct Recorder {
        started: tokio::time::Instant,
        calls: Mutex<Vec<(Duration, Vec<String>)>>,
        called: Notify,
        release: tokio::sync::Semaphore,
        /// Calls still to fail, as a store that is down would.
        fail: std::sync::atomic::AtomicU32,
    }

    impl Recorder {
        fn new(fail: u32) -> Arc<Self> {
            Arc::new(Recorder {
                started: tokio::time::Instant::now(),
                calls: Mutex::default(),
                called: Notify::new(),
                release: tokio::sync::Semaphore::new(0),
                fail: fail.into(),
            })
        }

        /// Runs a hints loop on this store.
        fn serve(self: &Arc<Self>) -> Served {
            let hints = Hints::new(1000);
            let wake = Arc::new(Notify::new());
            let shutdown = CancellationToken::new();
            let run = tokio::spawn(hints.clone().run(
                self.clone(),
                crate::clock::system(),
                wake.clone(),
                Arc::new(crate::metrics::Metrics::new()),
                shutdown.clone(),
            ));
            Served {
                hints,
                wake,
                shutdown,
                run,
            }
        }
    }

    /// A hints loop running on a [`Recorder`].
    struct Served {
        hints: Arc<Hints>,
        /// What the loop wakes the poller with.
        wake: Arc<Notify>,
        shutdown: CancellationToken,
        run: tokio::task::JoinHandle<()>,
    }

    impl Served {
        /// One callback from loopback naming `ids`.
        fn receive(&self, ids: &[&str]) -> Received {
            let source: IpAddr = "127.0.0.1".parse().unwrap();
            self.hints
                .receive(source, "suno", ids.iter().map(|s| s.to_string()).collect())
        }

        async fn stop(self) {
            self.shutdown.cancel();
            self.run.await.unwrap();
        }
    }

    #[async_trait::async_trait]
    impl PollQueue for Recorder {
        async fn hurry(
            &self,
            _now: crate::clock::Millis,
            _service: String,
            mut ids: Vec<String>,
        ) -> crate::store::StoreResult<u64> {
            ids.sort();
            let n = ids.len() as u64;
            self.calls
                .lock()
                .unwrap()
                .push((self.started.elapsed(), ids));
            self.called.notify_one();
            self.release.acquire().await.unwrap().forget();
            let failing = self.fail.load(std::sync::atomic::Ordering::SeqCst);
            if failing > 0 {
                self.fail
                    .store(failing - 1, std::sync::atomic::Ordering::SeqCst);
                return Err(crate::store::StoreError::unavailable_msg("down"));
            }
            Ok(n)
        }
        async fn enqueue(
            &self,
            _: crate::clock::Millis,
            _: crate::clock::Millis,
            _: Vec<crate::store::NewTask>,
        ) -> crate::store::StoreResult<crate::store::EnqueueOutcome> {
            unreachable!()
        }
        async fn claim_poll_batch(
            &self,
            _: crate::clock::Millis,
            _: crate::clock::Millis,
            _: crate::store::ClaimLimits,
            _: crate::clock::Millis,
        ) -> crate::store::StoreResult<crate::store::PollClaim> {
            unreachable!()
        }
        async fn record_polls(
            &self,
            _: crate::clock::Millis,
            _: Vec<crate::store::PollUpdate>,
            _: Option<crate::clock::Millis>,
        ) -> crate::store::StoreResult<Vec<crate::store::ClaimedDelivery>> {
            unreachable!()
        }
        async fn claim_expired(
            &self,
            _: crate::clock::Millis,
            _: crate::clock::Millis,
            _: usize,
            _: crate::clock::Millis,
        ) -> crate::store::StoreResult<Vec<crate::store::ClaimedTask>> {
            unreachable!()
        }
        async fn defer_service(
            &self,
            _: String,
            _: crate::clock::Millis,
        ) -> crate::store::StoreResult<u64> {
            unreachable!()
        }
        async fn demand(
            &self,
            _: crate::clock::Millis,
        ) -> crate::store::StoreResult<Vec<(String, u64)>> {
            unreachable!()
        }
        async fn learn_durations(
            &self,
            _: crate::clock::Millis,
            _: String,
            _: Vec<i64>,
        ) -> crate::store::StoreResult<crate::store::DurationModel> {
            unreachable!()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_hint_is_written_at_once_and_those_during_a_write_share_the_next() {
        let store = Recorder::new(0);
        let served = store.serve();
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

        assert_eq!(served.receive(&["t1"]), Received::Hinted);
        store.called.notified().await;
        // While that write runs, three more arrive (one twice).
        for id in ["t3", "t2", "t3"] {
            served.receive(&[id]);
        }
        store.release.add_permits(1);
        store.called.notified().await;
        served.wake.notified().await;
        store.release.add_permits(1);
        let calls = store.calls.lock().unwrap().clone();
        // The paused clock moves only when every task waits on a timer: a
        // write that waited for company would show its wait here.
        assert_eq!(
            calls,
            [
                (Duration::ZERO, ids(&["t1"])),
                (Duration::ZERO, ids(&["t2", "t3"]))
            ]
        );
        served.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn hints_a_failed_write_could_not_pass_on_are_tried_again() {
        let store = Recorder::new(1);
        let served = store.serve();
        served.receive(&["t1"]);
        store.called.notified().await;
        store.release.add_permits(2);
        served.wake.notified().await;
        let calls = store.calls.lock().unwrap().clone();
        let t1 = vec!["t1".to_string()];
        assert_eq!(calls, [(Duration::ZERO, t1.clone()), (RETRY, t1)]);
        served.stop().await;
    }

    #[test]
    fn a_source_calling_too_often_is_capped_and_pending_hints_are_bounded() {
        let h = Hints::new(5);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let results: Vec<Received> = (0..20)
            .map(|i| h.receive(a, "suno", vec![format!("t{i}")]))
            .collect();
        let limited = results
            .iter()
            .filter(|r| **r == Received::RateLimited)
            .count();
        assert!((10..=15).contains(&limited), "{results:?}");
        assert_eq!(h.receive(b, "suno", vec!["x".into()]), Received::Hinted);
        assert_eq!(h.receive(b, "suno", vec![]), Received::NoId);

        let big = Hints::new(1_000_000);
        for i in 0..MAX_PENDING {
            assert_eq!(
                big.receive(a, "suno", vec![format!("id{i}")]),
                Received::Hinted
            );
        }
        assert_eq!(
            big.receive(a, "suno", vec!["one-more".into()]),
            Received::Overflow
        );
        // A repeated ID does not count twice.
        let h = Hints::new(100);
        h.receive(a, "suno", vec!["same".into()]);
        h.receive(a, "suno", vec!["same".into()]);
        assert_eq!(h.pending.lock().unwrap().ids, 1);
    }
}
