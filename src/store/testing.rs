//! The store conformance suite: the rules every backend keeps, as cases a
//! backend's own tests run against a fresh store each (River's driver
//! tests). Time is driven through `now`; no case reads the clock.
//!
//! A backend's test file calls [`store_conformance!`](crate::store_conformance)
//! with a factory that returns a fresh store, or `None` to skip (a backend
//! whose server is not there):
//!
//! ```text
//! async fn sqlite() -> Option<(Arc<dyn Store>, Box<dyn std::any::Any + Send>)> { ... }
//! taskhook::store_conformance!(sqlite);
//! ```
//!
//! May call: `clock`, `outcome`, `redact`.

#![allow(missing_docs)]

use std::sync::Arc;

use super::*;
use crate::clock::Millis;
use crate::outcome::Outcome;

/// What a factory returns: the store, and whatever must live as long as it
/// (a temporary directory, a schema to drop).
pub type Fresh = Option<(Arc<dyn Store>, Box<dyn std::any::Any + Send>)>;

/// Runs every case of the suite as its own `#[tokio::test]`, each on a
/// store from `$factory` (an `async fn() -> Fresh`).
#[macro_export]
macro_rules! store_conformance {
    ($factory:path) => {
        $crate::store_conformance!(@cases $factory;
            enqueue_counts_duplicates_and_rewatches_done_ids,
            claims_only_due_tasks_of_one_service_and_fills_batches,
            leases_fence_stale_writers,
            finishing_records_the_event_and_its_deliveries_atomically,
            deliveries_retry_settle_and_finish_the_task,
            dead_letters_list_replay_and_purge,
            claims_skip_saturated_webhooks,
            delete_stops_watching,
            finished_events_leave_nothing_behind_but_dead_letters,
            handed_off_deliveries_are_leased_until_given_back,
            a_deleted_and_re_enqueued_task_never_takes_a_stale_write,
            delivery_ids_are_never_reused,
            tasks_past_their_ttl_are_claimed_whatever_their_next_poll,
            a_refused_service_is_deferred_and_skipped_by_claims,
            parked_deliveries_resume_when_their_webhook_returns,
            purge_works_in_chunks_and_says_when_more_is_left,
            a_dead_letter_replayed_after_its_task_was_purged_leaves_nothing,
            claims_and_views_carry_every_field_through,
            a_per_service_limit_caps_that_services_batch,
            deferral_leaves_leased_tasks_to_their_worker,
            an_expiry_claim_whose_lease_ran_out_is_claimed_again,
            replaying_every_dead_letter_leaves_parked_ones_parked,
            listings_are_newest_first_and_bounded,
            task_listings_are_newest_first_paged_and_filtered,
            task_listings_by_id_prefix_are_exact,
            bulk_replay_takes_the_dead_letters_its_filter_matches,
            bulk_replay_takes_parked_and_dead_letters_apart,
            the_attempt_log_keeps_every_attempt_that_landed,
            activity_counts_the_window_and_each_webhooks_health,
            hurry_brings_named_watched_tasks_forward,
            learned_durations_accumulate_per_service,
            demand_counts_the_tasks_that_take_polls_now
        );
    };
    (@cases $factory:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let Some((store, _keep)) = $factory().await else {
                    return;
                };
                $crate::store::testing::$case(store).await;
            }
        )*
    };
}

pub fn task(id: &str) -> NewTask {
    NewTask {
        id: id.into(),
        service: "producer".into(),
        webhooks: vec![],
        metadata: None,
    }
}

pub fn finish(t: &ClaimedTask, hooks: &[&str]) -> PollUpdate {
    finish_as(t, Outcome::Succeeded, hooks)
}

/// Finishes `t` with `outcome` (its event of the matching type) and
/// deliveries to the configured webhooks `hooks`.
pub fn finish_as(t: &ClaimedTask, outcome: Outcome, hooks: &[&str]) -> PollUpdate {
    PollUpdate::Finish {
        id: t.id.clone(),
        claim: t.claim,
        polled: true,
        outcome,
        upstream_state: outcome.as_str().into(),
        event: NewEvent {
            id: format!("msg_{}", t.id),
            body: format!(r#"{{"task":"{}"}}"#, t.id),
            deliveries: hooks
                .iter()
                .map(|h| NewDelivery {
                    webhook: h.to_string(),
                    kind: DeliveryKind::Webhook,
                    url: format!("http://{h}.example/"),
                })
                .collect(),
        },
    }
}

pub fn resched(t: &ClaimedTask, at: Millis) -> PollUpdate {
    PollUpdate::Reschedule {
        id: t.id.clone(),
        claim: t.claim,
        next_poll_at: at,
        polled: true,
        misses: 0,
        fail_seen: 0,
        upstream_state: Some("running".into()),
    }
}

/// Watches task "a", polls it once and finishes it with deliveries to
/// `hooks` (not handed off).
async fn finished_a(s: &Arc<dyn Store>, hooks: &[&str]) {
    s.enqueue(0, 0, vec![task("a")]).await.unwrap();
    let t = s
        .claim_poll_batch(0, 0, 10.into(), 1000)
        .await
        .unwrap()
        .tasks
        .remove(0);
    s.record_polls(10, vec![finish(&t, hooks)], None)
        .await
        .unwrap();
}

/// Settles every claimable delivery of the store with `verdict(task_id)`.
async fn settle_all(s: &Arc<dyn Store>, now: Millis, verdict: impl Fn(&str) -> DeliveryVerdict) {
    let ds = s
        .claim_deliveries(now, 100, now + 5000, vec![], 100)
        .await
        .unwrap()
        .deliveries;
    let reports = ds
        .iter()
        .map(|d| DeliveryReport {
            id: d.id,
            claim: d.claim,
            task_id: d.task_id.clone(),
            event_id: d.event_id.clone(),
            verdict: verdict(&d.task_id),
            status: None,
            error: None,
            webhook: String::new(),
            attempt: 1,
            latency_ms: None,
            answer: None,
        })
        .collect();
    s.record_deliveries(now, reports).await.unwrap();
}

pub async fn handed_off_deliveries_are_leased_until_given_back(s: Arc<dyn Store>) {
    s.enqueue(0, 0, vec![task("a")]).await.unwrap();
    let t = s
        .claim_poll_batch(0, 0, 10.into(), 1000)
        .await
        .unwrap()
        .tasks
        .remove(0);
    let handed = s
        .record_polls(10, vec![finish(&t, &["w1", "w2"])], Some(9_000))
        .await
        .unwrap();
    assert_eq!(handed.len(), 2);
    assert!(
        handed
            .iter()
            .all(|d| d.claim == 1 && d.attempts == 0 && &*d.body == r#"{"task":"a"}"#)
    );
    // Leased to the caller: nobody else can claim them before the lease ends.
    assert!(
        s.claim_deliveries(100, 10, 5000, vec![], 100)
            .await
            .unwrap()
            .deliveries
            .is_empty()
    );
    // Sent and reported with the hand-off's claim.
    let d = &handed[0];
    s.record_deliveries(
        200,
        vec![DeliveryReport {
            id: d.id,
            claim: d.claim,
            task_id: d.task_id.clone(),
            event_id: d.event_id.clone(),
            verdict: DeliveryVerdict::Delivered,
            status: Some(200),
            error: None,
            webhook: String::new(),
            attempt: 1,
            latency_ms: None,
            answer: None,
        }],
    )
    .await
    .unwrap();
    // The other one is given back unsent: claimable at once, with a new claim.
    s.release_deliveries(300, vec![(handed[1].id, handed[1].claim)])
        .await
        .unwrap();
    let again = s
        .claim_deliveries(300, 10, 5000, vec![], 100)
        .await
        .unwrap()
        .deliveries;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, handed[1].id);
    assert!(again[0].claim > handed[1].claim);
    // A stale give-back changes nothing.
    s.release_deliveries(400, vec![(handed[1].id, handed[1].claim)])
        .await
        .unwrap();
    assert!(
        s.claim_deliveries(400, 10, 5000, vec![], 100)
            .await
            .unwrap()
            .deliveries
            .is_empty()
    );
}

pub async fn finished_events_leave_nothing_behind_but_dead_letters(s: Arc<dyn Store>) {
    s.enqueue(0, 0, vec![task("a"), task("b")]).await.unwrap();
    let ts = s
        .claim_poll_batch(0, 0, 10.into(), 1000)
        .await
        .unwrap()
        .tasks;
    s.record_polls(
        10,
        ts.iter().map(|t| finish(t, &["ok", "down"])).collect(),
        None,
    )
    .await
    .unwrap();
    settle_all(&s, 20, |_| DeliveryVerdict::Delivered).await;
    let st = s.stats().await.unwrap();
    assert_eq!(st.deliveries_pending, 0, "{st:?}");
    // Deleting a done task drops its delivered deliveries.
    assert!(s.delete_task("b".into()).await.unwrap());
    assert_eq!(
        s.list_deliveries(None, 10)
            .await
            .unwrap()
            .iter()
            .filter(|d| d.task_id == "b")
            .count(),
        0
    );
    // Re-watching a done task drops its old event's leftovers.
    s.enqueue(30, 0, vec![task("a")]).await.unwrap();
    assert_eq!(
        s.list_deliveries(None, 10)
            .await
            .unwrap()
            .iter()
            .filter(|d| d.task_id == "a")
            .count(),
        0
    );
    // A dead letter outlives its task until its TTL.
    let t = s
        .claim_poll_batch(40, 40, 10.into(), 1000)
        .await
        .unwrap()
        .tasks
        .remove(0);
    s.record_polls(
        50,
        vec![
            finish(&t, &["down"]), /* reuses msg_a: the old event is gone */
        ],
        None,
    )
    .await
    .unwrap();
    settle_all(&s, 60, |_| DeliveryVerdict::DeadLetter).await;
    assert!(s.delete_task("a".into()).await.unwrap());
    let left = s.list_deliveries(None, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].state, DeliveryState::Failed);
    assert!(
        s.replay_delivery(70, left[0].id).await.unwrap(),
        "still replayable"
    );
}

pub async fn enqueue_counts_duplicates_and_rewatches_done_ids(s: Arc<dyn Store>) {
    let out = s
        .enqueue(1000, 100, vec![task("a"), task("b"), task("a")])
        .await
        .unwrap();
    assert_eq!(
        out,
        EnqueueOutcome {
            accepted: 2,
            duplicates: 1
        }
    );
    let out = s.enqueue(1000, 100, vec![task("a")]).await.unwrap();
    assert_eq!(out.duplicates, 1);
    let v = s.get_task("a".into()).await.unwrap().unwrap();
    assert_eq!(v.status, TaskStatus::Watching);
    assert_eq!(v.next_poll_at, Some(1100));
    // Finish "a" with no receivers: done at once; a new enqueue rewatches it.
    let c = s
        .claim_poll_batch(1100, 1100, 10.into(), 9000)
        .await
        .unwrap();
    let a = c.tasks.iter().find(|t| t.id == "a").unwrap();
    s.record_polls(1200, vec![finish(a, &[])], None)
        .await
        .unwrap();
    assert_eq!(
        s.get_task("a".into()).await.unwrap().unwrap().status,
        TaskStatus::Done
    );
    let out = s.enqueue(2000, 100, vec![task("a")]).await.unwrap();
    assert_eq!(out.accepted, 1);
    let v = s.get_task("a".into()).await.unwrap().unwrap();
    assert_eq!((v.status, v.polls), (TaskStatus::Watching, 0));
}

pub async fn claims_only_due_tasks_of_one_service_and_fills_batches(s: Arc<dyn Store>) {
    s.enqueue(0, 1000, vec![task("p1"), task("p2")])
        .await
        .unwrap();
    let mut mj = task("m1");
    mj.service = "midjourney".into();
    s.enqueue(500, 1000, vec![mj]).await.unwrap();
    s.enqueue(900, 1000, vec![task("p3")]).await.unwrap();

    let c = s.claim_poll_batch(999, 999, 10.into(), 5000).await.unwrap();
    assert!(c.tasks.is_empty());
    assert_eq!(c.next_due, Some(1000));

    // Due at 1000: p1, p2. The window pulls p3 (due 1900) but never m1.
    let c = s
        .claim_poll_batch(1000, 2000, 10.into(), 5000)
        .await
        .unwrap();
    let mut ids: Vec<_> = c.tasks.iter().map(|t| t.id.as_str()).collect();
    ids.sort();
    assert_eq!(c.service, "producer");
    assert_eq!(ids, vec!["p1", "p2", "p3"]);

    let c = s
        .claim_poll_batch(1500, 1500, 10.into(), 5000)
        .await
        .unwrap();
    assert_eq!(c.service, "midjourney");
    assert_eq!(c.tasks.len(), 1);

    // The limit caps a batch.
    s.enqueue(0, 0, (0..7).map(|i| task(&format!("x{i}"))).collect())
        .await
        .unwrap();
    let c = s.claim_poll_batch(10, 10, 5.into(), 5000).await.unwrap();
    assert_eq!(c.tasks.len(), 5);
}

pub async fn leases_fence_stale_writers(s: Arc<dyn Store>) {
    s.enqueue(0, 0, vec![task("a")]).await.unwrap();
    let first = s
        .claim_poll_batch(0, 0, 10.into(), 1000)
        .await
        .unwrap()
        .tasks
        .remove(0);
    // Leased: not handed out again before the lease ends.
    assert!(
        s.claim_poll_batch(999, 999, 10.into(), 2000)
            .await
            .unwrap()
            .tasks
            .is_empty()
    );
    let second = s
        .claim_poll_batch(1000, 1000, 10.into(), 5000)
        .await
        .unwrap()
        .tasks
        .remove(0);
    assert!(second.claim > first.claim);
    // The stale worker's write is ignored; the current one's lands.
    s.record_polls(1100, vec![finish(&first, &["w"])], None)
        .await
        .unwrap();
    let v = s.get_task("a".into()).await.unwrap().unwrap();
    assert_eq!(v.status, TaskStatus::Watching);
    assert!(
        s.claim_deliveries(1100, 10, 9000, vec![], 100)
            .await
            .unwrap()
            .deliveries
            .is_empty()
    );
    s.record_polls(1200, vec![resched(&second, 3000)], None)
        .await
        .unwrap();
    let v = s.get_task("a".into()).await.unwrap().unwrap();
    assert_eq!((v.polls, v.next_poll_at), (1, Some(3000)));
    assert_eq!(v.upstream_state.as_deref(), Some("running"));
}

pub async fn finishing_records_the_event_and_its_deliveries_atomically(s: Arc<dyn Store>) {
    finished_a(&s, &["w1", "w2"]).await;
    let v = s.get_task("a".into()).await.unwrap().unwrap();
    assert_eq!(v.status, TaskStatus::Delivering);
    assert_eq!(v.outcome.as_deref(), Some("succeeded"));
    assert_eq!(v.event_id.as_deref(), Some("msg_a"));
    assert_eq!(v.deliveries.len(), 2);
    assert!(
        v.deliveries
            .iter()
            .all(|d| d.state == DeliveryState::Pending)
    );
    let c = s.claim_deliveries(10, 10, 5000, vec![], 100).await.unwrap();
    assert_eq!(c.deliveries.len(), 2);
    assert_eq!(&*c.deliveries[0].body, r#"{"task":"a"}"#);
    assert_eq!(c.deliveries[0].event_id, "msg_a");
    assert_eq!(c.deliveries[0].attempts, 0);
}

pub async fn deliveries_retry_settle_and_finish_the_task(s: Arc<dyn Store>) {
    finished_a(&s, &["w1", "w2"]).await;
    let c = s
        .claim_deliveries(10, 10, 5000, vec![], 100)
        .await
        .unwrap()
        .deliveries;
    let report = |d: &ClaimedDelivery, verdict| DeliveryReport {
        id: d.id,
        claim: d.claim,
        task_id: d.task_id.clone(),
        event_id: d.event_id.clone(),
        verdict,
        status: Some(500),
        error: Some("HTTP 500".into()),
        webhook: String::new(),
        attempt: 1,
        latency_ms: None,
        answer: None,
    };
    s.record_deliveries(
        20,
        vec![
            report(&c[0], DeliveryVerdict::Delivered),
            report(&c[1], DeliveryVerdict::Retry { at: 100 }),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        s.get_task("a".into()).await.unwrap().unwrap().status,
        TaskStatus::Delivering
    );
    let none = s.claim_deliveries(99, 10, 5000, vec![], 100).await.unwrap();
    assert!(none.deliveries.is_empty());
    assert_eq!(none.next_due, Some(100));
    let again = s
        .claim_deliveries(100, 10, 5000, vec![], 100)
        .await
        .unwrap()
        .deliveries;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);
    // A stale report for the old claim is ignored.
    s.record_deliveries(110, vec![report(&c[1], DeliveryVerdict::Delivered)])
        .await
        .unwrap();
    assert_eq!(
        s.get_task("a".into()).await.unwrap().unwrap().status,
        TaskStatus::Delivering
    );
    s.record_deliveries(120, vec![report(&again[0], DeliveryVerdict::Gone)])
        .await
        .unwrap();
    let v = s.get_task("a".into()).await.unwrap().unwrap();
    assert_eq!(v.status, TaskStatus::Done);
    let states: Vec<_> = v.deliveries.iter().map(|d| d.state).collect();
    assert_eq!(states, vec![DeliveryState::Delivered, DeliveryState::Gone]);
    assert_eq!(v.deliveries[1].attempts, 2);
}

pub async fn dead_letters_list_replay_and_purge(s: Arc<dyn Store>) {
    s.enqueue(0, 0, vec![task("a"), task("b")]).await.unwrap();
    let ts = s
        .claim_poll_batch(0, 0, 10.into(), 1000)
        .await
        .unwrap()
        .tasks;
    s.record_polls(10, ts.iter().map(|t| finish(t, &["w"])).collect(), None)
        .await
        .unwrap();
    let ds = s
        .claim_deliveries(10, 10, 5000, vec![], 100)
        .await
        .unwrap()
        .deliveries;
    let reports = ds
        .iter()
        .map(|d| DeliveryReport {
            id: d.id,
            claim: d.claim,
            task_id: d.task_id.clone(),
            event_id: d.event_id.clone(),
            verdict: if d.task_id == "a" {
                DeliveryVerdict::DeadLetter
            } else {
                DeliveryVerdict::Delivered
            },
            status: Some(503),
            error: None,
            webhook: String::new(),
            attempt: 1,
            latency_ms: None,
            answer: None,
        })
        .collect();
    s.record_deliveries(20, reports).await.unwrap();
    let failed = s
        .list_deliveries(Some(DeliveryState::Failed), 10)
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].task_id, "a");
    assert_eq!(failed[0].event_type, "task.succeeded");
    let st = s.stats().await.unwrap();
    assert_eq!((st.done, st.dead_letters), (2, 1));

    assert!(s.replay_delivery(30, failed[0].id).await.unwrap());
    assert!(
        !s.replay_delivery(30, failed[0].id).await.unwrap(),
        "only failed ones replay"
    );
    assert_eq!(
        s.get_task("a".into()).await.unwrap().unwrap().status,
        TaskStatus::Delivering
    );
    let d = s
        .claim_deliveries(30, 10, 5000, vec![], 100)
        .await
        .unwrap()
        .deliveries
        .remove(0);
    assert_eq!((d.task_id.as_str(), d.attempts), ("a", 0));
    s.record_deliveries(
        40,
        vec![DeliveryReport {
            id: d.id,
            claim: d.claim,
            task_id: d.task_id.clone(),
            event_id: d.event_id.clone(),
            verdict: DeliveryVerdict::DeadLetter,
            status: None,
            error: Some("down".into()),
            webhook: String::new(),
            attempt: 1,
            latency_ms: None,
            answer: None,
        }],
    )
    .await
    .unwrap();
    assert_eq!(
        s.replay_matching(50, ReplayFilter::dead_letters())
            .await
            .unwrap(),
        1
    );
    let d = s
        .claim_deliveries(50, 10, 5000, vec![], 100)
        .await
        .unwrap()
        .deliveries
        .remove(0);
    s.record_deliveries(
        60,
        vec![DeliveryReport {
            id: d.id,
            claim: d.claim,
            task_id: d.task_id.clone(),
            event_id: d.event_id.clone(),
            verdict: DeliveryVerdict::DeadLetter,
            status: None,
            error: None,
            webhook: String::new(),
            attempt: 1,
            latency_ms: None,
            answer: None,
        }],
    )
    .await
    .unwrap();

    // Done tasks go after the retention; the dead letter stays until its TTL.
    s.purge(1000, 0).await.unwrap();
    assert!(s.get_task("a".into()).await.unwrap().is_none());
    assert!(s.get_task("b".into()).await.unwrap().is_none());
    assert_eq!(
        s.list_deliveries(Some(DeliveryState::Failed), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        s.list_deliveries(Some(DeliveryState::Delivered), 10)
            .await
            .unwrap()
            .is_empty()
    );
    s.purge(1000, 1000).await.unwrap();
    assert!(s.list_deliveries(None, 10).await.unwrap().is_empty());
}

pub async fn claims_skip_saturated_webhooks(s: Arc<dyn Store>) {
    finished_a(&s, &["slow", "fast"]).await;
    let c = s
        .claim_deliveries(10, 10, 5000, vec!["slow".into()], 100)
        .await
        .unwrap();
    let hooks: Vec<_> = c.deliveries.iter().map(|d| d.webhook.as_str()).collect();
    assert_eq!(hooks, vec!["fast"]);
}

pub async fn delete_stops_watching(s: Arc<dyn Store>) {
    s.enqueue(0, 0, vec![task("a"), task("b")]).await.unwrap();
    let ts = s
        .claim_poll_batch(0, 0, 10.into(), 1000)
        .await
        .unwrap()
        .tasks;
    let b = ts.iter().find(|t| t.id == "b").unwrap();
    s.record_polls(10, vec![finish(b, &["w"])], None)
        .await
        .unwrap();
    assert!(s.delete_task("a".into()).await.unwrap());
    assert!(s.delete_task("b".into()).await.unwrap());
    assert!(!s.delete_task("a".into()).await.unwrap());
    assert!(
        s.claim_deliveries(10, 10, 5000, vec![], 100)
            .await
            .unwrap()
            .deliveries
            .is_empty()
    );
    let st = s.stats().await.unwrap();
    assert_eq!(
        (st.watching, st.delivering, st.deliveries_pending),
        (0, 0, 0)
    );
}

fn report(d: &ClaimedDelivery, verdict: DeliveryVerdict) -> DeliveryReport {
    DeliveryReport {
        id: d.id,
        claim: d.claim,
        task_id: d.task_id.clone(),
        event_id: d.event_id.clone(),
        verdict,
        status: None,
        error: None,
        webhook: d.webhook.clone(),
        attempt: d.attempts + 1,
        latency_ms: None,
        answer: None,
    }
}

pub async fn a_deleted_and_re_enqueued_task_never_takes_a_stale_write(s: Arc<dyn Store>) {
    // Life one: claimed by a worker that then stalls.
    s.enqueue(0, 0, vec![task("a")]).await.unwrap();
    let stale = s
        .claim_poll_batch(0, 0, 10.into(), 100)
        .await
        .unwrap()
        .tasks
        .remove(0);
    assert!(s.delete_task("a".into()).await.unwrap());
    // Life two: enqueued again and claimed as many times as life one was.
    s.enqueue(1, 0, vec![task("a")]).await.unwrap();
    let mut fresh = None;
    for i in 0..3 {
        let now = 10 + i * 1000;
        let t = s
            .claim_poll_batch(now, now, 10.into(), now + 100)
            .await
            .unwrap()
            .tasks;
        assert_eq!(t.len(), 1);
        assert_ne!(
            t[0].claim, stale.claim,
            "a claim number is never handed out twice"
        );
        fresh = t.into_iter().next();
    }
    let fresh = fresh.unwrap();
    // The stalled worker of life one reports: nothing happens.
    s.record_polls(5000, vec![finish(&stale, &["w"])], None)
        .await
        .unwrap();
    let v = s.get_task("a".into()).await.unwrap().unwrap();
    assert_eq!(
        v.status,
        TaskStatus::Watching,
        "the stale finish was ignored"
    );
    s.record_polls(5000, vec![finish(&fresh, &["w"])], None)
        .await
        .unwrap();
    assert_eq!(
        s.get_task("a".into()).await.unwrap().unwrap().status,
        TaskStatus::Delivering
    );
}

pub async fn delivery_ids_are_never_reused(s: Arc<dyn Store>) {
    finished_a(&s, &["w"]).await;
    let old = s
        .claim_deliveries(20, 10, 5000, vec![], 100)
        .await
        .unwrap()
        .deliveries
        .remove(0);
    // The task is deleted while its attempt is in flight, then a new
    // event is stored.
    assert!(s.delete_task("a".into()).await.unwrap());
    s.enqueue(30, 0, vec![task("b")]).await.unwrap();
    let t = s
        .claim_poll_batch(30, 30, 10.into(), 1000)
        .await
        .unwrap()
        .tasks
        .remove(0);
    s.record_polls(40, vec![finish(&t, &["w"])], None)
        .await
        .unwrap();
    let new = s
        .claim_deliveries(50, 10, 5000, vec![], 100)
        .await
        .unwrap()
        .deliveries
        .remove(0);
    assert!(new.id > old.id, "delivery {} reused as {}", old.id, new.id);
    // The late report of the deleted delivery settles nothing.
    s.record_deliveries(60, vec![report(&old, DeliveryVerdict::Delivered)])
        .await
        .unwrap();
    let v = s.get_task("b".into()).await.unwrap().unwrap();
    assert_eq!(v.deliveries[0].state, DeliveryState::Pending, "{v:?}");
    assert_eq!(v.status, TaskStatus::Delivering);
}

pub async fn tasks_past_their_ttl_are_claimed_whatever_their_next_poll(s: Arc<dyn Store>) {
    s.enqueue(0, 1_000_000, vec![task("old")]).await.unwrap();
    s.enqueue(500, 1_000_000, vec![task("young")])
        .await
        .unwrap();
    // Neither is due; only the old one is past a TTL of 1 s at 1200.
    let t = s.claim_expired(1200, 1200 - 1000, 10, 2000).await.unwrap();
    let ids: Vec<_> = t.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["old"]);
    // Claimed once: not again while its lease runs.
    assert!(
        s.claim_expired(1300, 300, 10, 2000)
            .await
            .unwrap()
            .is_empty()
    );
    s.record_polls(1300, vec![finish(&t[0], &[])], None)
        .await
        .unwrap();
    assert_eq!(
        s.get_task("old".into()).await.unwrap().unwrap().status,
        TaskStatus::Done
    );
}

pub async fn a_refused_service_is_deferred_and_skipped_by_claims(s: Arc<dyn Store>) {
    let mut broken = task("b1");
    broken.service = "broken".into();
    let mut broken2 = task("b2");
    broken2.service = "broken".into();
    s.enqueue(0, 0, vec![broken, broken2]).await.unwrap();
    s.enqueue(10, 0, vec![task("p1")]).await.unwrap();
    // The broken service's tasks are due first, but it is skipped.
    let mut limits = ClaimLimits::from(10);
    limits.per_service.insert("broken".into(), 0);
    let c = s
        .claim_poll_batch(20, 20, limits.clone(), 1000)
        .await
        .unwrap();
    assert_eq!(c.service, "producer");
    assert_eq!(c.tasks.len(), 1);
    let p1 = c.tasks[0].clone();
    let c = s.claim_poll_batch(20, 20, limits, 1000).await.unwrap();
    assert!(c.tasks.is_empty(), "{c:?}");
    assert_eq!(
        c.next_due,
        Some(1000),
        "the skipped service's due tasks do not count"
    );
    // Deferred: not due before 5000 even when no longer skipped.
    assert_eq!(s.defer_service("broken".into(), 5000).await.unwrap(), 2);
    let c = s.claim_poll_batch(30, 30, 10.into(), 1000).await.unwrap();
    assert!(c.tasks.is_empty());
    assert_eq!(
        c.next_due,
        Some(1000),
        "the producer task's lease ends first"
    );
    s.record_polls(40, vec![resched(&p1, 100_000)], None)
        .await
        .unwrap();
    let c = s
        .claim_poll_batch(5000, 5000, 10.into(), 9000)
        .await
        .unwrap();
    assert_eq!((c.service.as_str(), c.tasks.len()), ("broken", 2));
}

pub async fn parked_deliveries_resume_when_their_webhook_returns(s: Arc<dyn Store>) {
    finished_a(&s, &["gone-hook", "kept"]).await;
    let ds = s
        .claim_deliveries(20, 10, 5000, vec![], 100)
        .await
        .unwrap()
        .deliveries;
    let reports = ds
        .iter()
        .map(|d| {
            report(
                d,
                if d.webhook == "gone-hook" {
                    DeliveryVerdict::WebhookRemoved
                } else {
                    DeliveryVerdict::Delivered
                },
            )
        })
        .collect();
    s.record_deliveries(30, reports).await.unwrap();
    let v = s.get_task("a".into()).await.unwrap().unwrap();
    assert_eq!(v.status, TaskStatus::Done, "parked is settled");
    let parked = s
        .list_deliveries(Some(DeliveryState::WebhookRemoved), 10)
        .await
        .unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].webhook, "gone-hook");
    assert_eq!(s.stats().await.unwrap().webhook_removed, 1);
    // Another webhook configured: nothing moves.
    assert_eq!(s.resume_parked(40, vec!["kept".into()]).await.unwrap(), 0);
    // Its name is back: pending again, the task delivering.
    assert_eq!(
        s.resume_parked(50, vec!["gone-hook".into()]).await.unwrap(),
        1
    );
    assert_eq!(
        s.get_task("a".into()).await.unwrap().unwrap().status,
        TaskStatus::Delivering
    );
    let d = s
        .claim_deliveries(60, 10, 5000, vec![], 100)
        .await
        .unwrap()
        .deliveries;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].webhook, "gone-hook");
    // A parked delivery also replays by hand.
    s.record_deliveries(70, vec![report(&d[0], DeliveryVerdict::WebhookRemoved)])
        .await
        .unwrap();
    assert!(s.replay_delivery(80, d[0].id).await.unwrap());
}

pub async fn purge_works_in_chunks_and_says_when_more_is_left(s: Arc<dyn Store>) {
    let n = PURGE_CHUNK + 10;
    let tasks: Vec<NewTask> = (0..n).map(|i| task(&format!("t{i}"))).collect();
    s.enqueue(0, 0, tasks).await.unwrap();
    let ts = s
        .claim_poll_batch(0, 0, n.into(), 1000)
        .await
        .unwrap()
        .tasks;
    assert_eq!(ts.len(), n);
    s.record_polls(10, ts.iter().map(|t| finish(t, &[])).collect(), None)
        .await
        .unwrap();
    assert_eq!(s.stats().await.unwrap().done, n as u64);
    let first = s.purge(100, 0).await.unwrap();
    assert!(first.more, "{first:?}");
    let second = s.purge(100, 0).await.unwrap();
    assert!(!second.more, "{second:?}");
    assert_eq!(s.stats().await.unwrap().done, 0);
}

pub async fn a_dead_letter_replayed_after_its_task_was_purged_leaves_nothing(s: Arc<dyn Store>) {
    finished_a(&s, &["w"]).await;
    settle_all(&s, 20, |_| DeliveryVerdict::DeadLetter).await;
    // The task is purged (done retention over); the dead letter stays.
    s.purge(100, 0).await.unwrap();
    assert!(s.get_task("a".into()).await.unwrap().is_none());
    let dead = s
        .list_deliveries(Some(DeliveryState::Failed), 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    // Replayed and delivered: nothing is left behind to grow the store.
    assert!(s.replay_delivery(200, dead[0].id).await.unwrap());
    settle_all(&s, 210, |_| DeliveryVerdict::Delivered).await;
    assert!(s.list_deliveries(None, 10).await.unwrap().is_empty());
}

/// What a task carries (service, metadata, per-task URLs, counters) comes
/// back unchanged in claims, and redacted in views; what a delivery
/// carries (kind, URL, the task's enqueue time, the body) comes back in
/// its claim and its view.
pub async fn claims_and_views_carry_every_field_through(s: Arc<dyn Store>) {
    let own = "http://user:pw@own.example/hook?token=abc";
    s.enqueue(
        1000,
        5,
        vec![NewTask {
            id: "k".into(),
            service: "kling".into(),
            webhooks: vec![own.into()],
            metadata: Some(r#"{"order": 7, "tags": ["a"]}"#.into()),
        }],
    )
    .await
    .unwrap();
    let v = s.get_task("k".into()).await.unwrap().unwrap();
    assert_eq!((v.service.as_str(), v.enqueued_at), ("kling", 1000));
    assert_eq!(v.next_poll_at, Some(1005));
    assert_eq!(v.webhooks, vec![crate::redact::url(own)]);
    assert_eq!(
        v.metadata,
        Some(serde_json::json!({"order": 7, "tags": ["a"]}))
    );
    let t = s
        .claim_poll_batch(1005, 1005, 10.into(), 2000)
        .await
        .unwrap()
        .tasks
        .remove(0);
    assert_eq!(t.service, "kling");
    assert_eq!(t.webhooks, vec![own.to_string()], "unredacted for sending");
    assert_eq!(
        t.metadata.as_deref(),
        Some(r#"{"order": 7, "tags": ["a"]}"#)
    );
    assert_eq!(
        (t.enqueued_at, t.polls, t.misses, t.fail_seen),
        (1000, 0, 0, 0)
    );
    // Counters as the poller left them; an unanswered poll counts nothing
    // and keeps the last upstream state.
    s.record_polls(
        2000,
        vec![PollUpdate::Reschedule {
            id: "k".into(),
            claim: t.claim,
            next_poll_at: 2100,
            polled: true,
            misses: 2,
            fail_seen: 1,
            upstream_state: Some("running".into()),
        }],
        None,
    )
    .await
    .unwrap();
    let t = s
        .claim_poll_batch(2100, 2100, 10.into(), 3000)
        .await
        .unwrap()
        .tasks
        .remove(0);
    assert_eq!((t.polls, t.misses, t.fail_seen), (1, 2, 1));
    s.record_polls(
        2200,
        vec![PollUpdate::Reschedule {
            id: "k".into(),
            claim: t.claim,
            next_poll_at: 2300,
            polled: false,
            misses: 3,
            fail_seen: 1,
            upstream_state: None,
        }],
        None,
    )
    .await
    .unwrap();
    let v = s.get_task("k".into()).await.unwrap().unwrap();
    assert_eq!((v.polls, v.upstream_state.as_deref()), (1, Some("running")));
    let t = s
        .claim_poll_batch(2300, 2300, 10.into(), 3000)
        .await
        .unwrap()
        .tasks
        .remove(0);
    assert_eq!((t.polls, t.misses), (1, 3));
    // Finished, failed, to a configured webhook and to the task's own URL.
    s.record_polls(
        2400,
        vec![PollUpdate::Finish {
            id: "k".into(),
            claim: t.claim,
            polled: true,
            outcome: Outcome::Failed,
            upstream_state: "failed".into(),
            event: NewEvent {
                id: "msg_k".into(),
                body: r#"{"type":"task.failed"}"#.into(),
                deliveries: vec![
                    NewDelivery {
                        webhook: "pipeline".into(),
                        kind: DeliveryKind::Webhook,
                        url: "http://pipeline.example/".into(),
                    },
                    NewDelivery {
                        webhook: crate::redact::url(own),
                        kind: DeliveryKind::TaskUrl,
                        url: own.into(),
                    },
                ],
            },
        }],
        None,
    )
    .await
    .unwrap();
    let v = s.get_task("k".into()).await.unwrap().unwrap();
    assert_eq!(v.status, TaskStatus::Delivering);
    assert_eq!((v.polls, v.outcome.as_deref()), (2, Some("failed")));
    assert_eq!(v.upstream_state.as_deref(), Some("failed"));
    assert_eq!((v.finished_at, v.next_poll_at), (Some(2400), None));
    assert_eq!(v.event, Some(serde_json::json!({"type": "task.failed"})));
    let kinds: Vec<_> = v
        .deliveries
        .iter()
        .map(|d| (d.kind, d.url.clone(), d.event_type.clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            (
                DeliveryKind::Webhook,
                "http://pipeline.example/".to_string(),
                "task.failed".to_string()
            ),
            (
                DeliveryKind::TaskUrl,
                crate::redact::url(own),
                "task.failed".to_string()
            ),
        ]
    );
    assert!(
        v.deliveries
            .iter()
            .all(|d| d.next_attempt_at == Some(2400) && d.created_at == 2400 && d.attempts == 0)
    );
    let ds = s
        .claim_deliveries(2500, 10, 9000, vec![], 100)
        .await
        .unwrap()
        .deliveries;
    assert_eq!(ds.len(), 2);
    let own_d = ds.iter().find(|d| d.kind == DeliveryKind::TaskUrl).unwrap();
    assert_eq!(own_d.url, own, "sent to the URL itself");
    assert_eq!(own_d.webhook, crate::redact::url(own));
    assert!(ds.iter().all(|d| d.enqueued_at == 1000
        && d.task_id == "k"
        && d.event_id == "msg_k"
        && &*d.body == r#"{"type":"task.failed"}"#));
    // A retry's status and error show in the view; the next attempt too.
    s.record_deliveries(
        2600,
        vec![DeliveryReport {
            id: own_d.id,
            claim: own_d.claim,
            task_id: "k".into(),
            event_id: "msg_k".into(),
            verdict: DeliveryVerdict::Retry { at: 5000 },
            status: Some(503),
            error: Some("HTTP 503".into()),
            webhook: String::new(),
            attempt: 1,
            latency_ms: None,
            answer: None,
        }],
    )
    .await
    .unwrap();
    let v = s.get_task("k".into()).await.unwrap().unwrap();
    let d = v.deliveries.iter().find(|d| d.id == own_d.id).unwrap();
    assert_eq!(
        (d.attempts, d.last_status, d.last_error.as_deref()),
        (1, Some(503), Some("HTTP 503"))
    );
    assert_eq!((d.next_attempt_at, d.updated_at), (Some(5000), 2600));
    s.check_writable(2700).await.unwrap();
}

pub async fn a_per_service_limit_caps_that_services_batch(s: Arc<dyn Store>) {
    let mj = |id: &str| {
        let mut t = task(id);
        t.service = "midjourney".into();
        t
    };
    s.enqueue(0, 0, (0..5).map(|i| mj(&format!("m{i}"))).collect())
        .await
        .unwrap();
    s.enqueue(10, 0, vec![task("p")]).await.unwrap();
    let mut limits = ClaimLimits::from(10);
    limits.per_service.insert("midjourney".into(), 2);
    let c = s
        .claim_poll_batch(20, 20, limits.clone(), 1000)
        .await
        .unwrap();
    assert_eq!((c.service.as_str(), c.tasks.len()), ("midjourney", 2));
    let c = s.claim_poll_batch(20, 20, limits, 1000).await.unwrap();
    assert_eq!((c.service.as_str(), c.tasks.len()), ("midjourney", 2));
    let c = s.claim_poll_batch(20, 20, 10.into(), 1000).await.unwrap();
    assert_eq!((c.service.as_str(), c.tasks.len()), ("midjourney", 1));
    let c = s.claim_poll_batch(20, 20, 10.into(), 1000).await.unwrap();
    assert_eq!((c.service.as_str(), c.tasks.len()), ("producer", 1));
}

/// A refused service's deferral moves only the tasks nobody holds: a
/// leased one is its worker's to reschedule.
pub async fn deferral_leaves_leased_tasks_to_their_worker(s: Arc<dyn Store>) {
    s.enqueue(0, 0, vec![task("a"), task("b")]).await.unwrap();
    let held = s
        .claim_poll_batch(0, 0, 1.into(), 1000)
        .await
        .unwrap()
        .tasks
        .remove(0);
    assert_eq!(s.defer_service("producer".into(), 5000).await.unwrap(), 1);
    let free = if held.id == "a" { "b" } else { "a" };
    let v = s.get_task(free.into()).await.unwrap().unwrap();
    assert_eq!(v.next_poll_at, Some(5000));
    s.record_polls(10, vec![resched(&held, 20)], None)
        .await
        .unwrap();
    let v = s.get_task(held.id.clone()).await.unwrap().unwrap();
    assert_eq!((v.next_poll_at, v.polls), (Some(20), 1));
    // A deferral never brings a task forward.
    assert_eq!(s.defer_service("producer".into(), 10).await.unwrap(), 0);
}

pub async fn an_expiry_claim_whose_lease_ran_out_is_claimed_again(s: Arc<dyn Store>) {
    s.enqueue(0, 1_000_000, vec![task("old")]).await.unwrap();
    let first = s.claim_expired(100, 50, 10, 500).await.unwrap().remove(0);
    assert!(s.claim_expired(499, 50, 10, 900).await.unwrap().is_empty());
    // The expiring worker died: at the lease's end the task is claimed
    // again, under a new claim; the dead worker's finish is ignored.
    let again = s.claim_expired(500, 50, 10, 900).await.unwrap().remove(0);
    assert!(again.claim > first.claim);
    s.record_polls(600, vec![finish(&first, &["w"])], None)
        .await
        .unwrap();
    assert_eq!(
        s.get_task("old".into()).await.unwrap().unwrap().status,
        TaskStatus::Watching
    );
    s.record_polls(600, vec![finish(&again, &[])], None)
        .await
        .unwrap();
    assert_eq!(
        s.get_task("old".into()).await.unwrap().unwrap().status,
        TaskStatus::Done
    );
}

pub async fn replaying_every_dead_letter_leaves_parked_ones_parked(s: Arc<dyn Store>) {
    finished_a(&s, &["dead", "parked"]).await;
    settle_all(&s, 20, |_| DeliveryVerdict::DeadLetter).await;
    let ds = s.list_deliveries(None, 10).await.unwrap();
    // Park the second one: replay it (it is a dead letter now), claim it
    // and report its webhook gone from the configuration.
    let parked = ds.iter().find(|d| d.webhook == "parked").unwrap().id;
    assert!(s.replay_delivery(30, parked).await.unwrap());
    let d = s
        .claim_deliveries(30, 10, 5000, vec![], 100)
        .await
        .unwrap()
        .deliveries
        .remove(0);
    s.record_deliveries(40, vec![report(&d, DeliveryVerdict::WebhookRemoved)])
        .await
        .unwrap();
    assert_eq!(s.resume_parked(50, vec![]).await.unwrap(), 0);
    assert_eq!(
        s.replay_matching(50, ReplayFilter::dead_letters())
            .await
            .unwrap(),
        1
    );
    let st = s.stats().await.unwrap();
    assert_eq!(
        (st.deliveries_pending, st.dead_letters, st.webhook_removed),
        (1, 0, 1)
    );
    let left = s
        .claim_deliveries(50, 10, 5000, vec![], 100)
        .await
        .unwrap()
        .deliveries;
    assert_eq!(left.len(), 1);
    assert_eq!((left[0].webhook.as_str(), left[0].attempts), ("dead", 0));
}

pub async fn listings_are_newest_first_and_bounded(s: Arc<dyn Store>) {
    s.enqueue(0, 1000, vec![task("a"), task("b"), task("c")])
        .await
        .unwrap();
    s.enqueue(500, 1000, vec![task("d")]).await.unwrap();
    let ts = s
        .claim_poll_batch(1000, 1000, 3.into(), 2000)
        .await
        .unwrap()
        .tasks;
    s.record_polls(1100, ts.iter().map(|t| finish(t, &["w"])).collect(), None)
        .await
        .unwrap();
    let all = s.list_deliveries(None, 10).await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let two = s
        .list_deliveries(Some(DeliveryState::Pending), 2)
        .await
        .unwrap();
    assert_eq!(
        two.iter().map(|d| d.id).collect::<Vec<_>>(),
        all[..2].iter().map(|d| d.id).collect::<Vec<_>>()
    );
    let st = s.stats().await.unwrap();
    assert_eq!((st.watching, st.delivering), (1, 3));
    assert_eq!(st.oldest_watching_enqueued_at, Some(500));
}

/// A listing of every task matching `f`, as (enqueued_at, id).
async fn listed(s: &Arc<dyn Store>, f: TaskFilter) -> Vec<(Millis, String)> {
    s.list_tasks(f)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.enqueued_at, t.id))
        .collect()
}

/// The IDs of a listing.
async fn listed_ids(s: &Arc<dyn Store>, f: TaskFilter) -> Vec<String> {
    listed(s, f).await.into_iter().map(|(_, id)| id).collect()
}

fn all_tasks() -> TaskFilter {
    TaskFilter {
        limit: 100,
        ..Default::default()
    }
}

/// Listings go newest first by enqueue time, then ID (both descending);
/// a page starts strictly after the `(enqueued_at, id)` it is given; the
/// filters combine; views carry no event, deliveries or attempts, and
/// per-task URLs are redacted.
pub async fn task_listings_are_newest_first_paged_and_filtered(s: Arc<dyn Store>) {
    let own = "http://user:pw@own.example/hook?token=abc";
    s.enqueue(0, 0, vec![task("held"), task("done")])
        .await
        .unwrap();
    s.enqueue(100, 1_000_000, vec![task("b"), task("a")])
        .await
        .unwrap();
    let mut k = task("k");
    k.service = "kling".into();
    k.webhooks = vec![own.into()];
    s.enqueue(200, 1_000_000, vec![k]).await.unwrap();
    s.enqueue(300, 1_000_000, vec![task("c")]).await.unwrap();

    let all = s.list_tasks(all_tasks()).await.unwrap();
    let order: Vec<_> = all.iter().map(|t| (t.enqueued_at, t.id.as_str())).collect();
    assert_eq!(
        order,
        [
            (300, "c"),
            (200, "k"),
            (100, "b"),
            (100, "a"),
            (0, "held"),
            (0, "done")
        ]
    );
    assert!(
        all.iter()
            .all(|t| t.event.is_none() && t.deliveries.is_empty() && t.attempts.is_empty())
    );
    let kv = all.iter().find(|t| t.id == "k").unwrap();
    assert_eq!(kv.webhooks, vec![crate::redact::url(own)]);
    assert_eq!(
        (kv.service.as_str(), kv.next_poll_at),
        ("kling", Some(1_000_200))
    );

    // Pages of two, each strictly after the last one shown.
    let page = |after: Option<(Millis, &str)>| TaskFilter {
        after: after.map(|(at, id)| (at, id.to_string())),
        limit: 2,
        ..Default::default()
    };
    assert_eq!(listed_ids(&s, page(None)).await, ["c", "k"]);
    assert_eq!(listed_ids(&s, page(Some((200, "k")))).await, ["b", "a"]);
    assert_eq!(listed_ids(&s, page(Some((100, "b")))).await, ["a", "held"]);
    assert_eq!(
        listed_ids(&s, page(Some((100, "a")))).await,
        ["held", "done"]
    );
    assert!(listed_ids(&s, page(Some((0, "done")))).await.is_empty());
    assert!(
        s.list_tasks(TaskFilter {
            limit: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .is_empty()
    );

    // "held" stays leased and watched; "done" finishes failed without
    // receivers (done); "a" finishes succeeded with one (delivering).
    let claimed = s
        .claim_poll_batch(0, 0, 10.into(), 5_000_000)
        .await
        .unwrap()
        .tasks;
    let done = claimed.iter().find(|t| t.id == "done").unwrap();
    s.record_polls(10, vec![finish_as(done, Outcome::Failed, &[])], None)
        .await
        .unwrap();
    let a = s
        .claim_poll_batch(1_000_100, 1_000_100, 10.into(), 2_000_000)
        .await
        .unwrap()
        .tasks;
    assert_eq!(a.len(), 2, "a and b");
    let (fin, back): (Vec<_>, Vec<_>) = a.iter().partition(|t| t.id == "a");
    s.record_polls(
        1_000_200,
        vec![finish(fin[0], &["w"]), resched(back[0], 5_000_000)],
        None,
    )
    .await
    .unwrap();

    let by = |f: fn(&mut TaskFilter)| {
        let mut filter = all_tasks();
        f(&mut filter);
        filter
    };
    assert_eq!(
        listed_ids(&s, by(|f| f.status = Some(TaskStatus::Watching))).await,
        ["c", "k", "b", "held"]
    );
    assert_eq!(
        listed_ids(&s, by(|f| f.status = Some(TaskStatus::Delivering))).await,
        ["a"]
    );
    assert_eq!(
        listed_ids(&s, by(|f| f.status = Some(TaskStatus::Done))).await,
        ["done"]
    );
    assert_eq!(
        listed_ids(&s, by(|f| f.outcome = Some("failed".into()))).await,
        ["done"]
    );
    assert_eq!(
        listed_ids(&s, by(|f| f.outcome = Some("succeeded".into()))).await,
        ["a"]
    );
    assert_eq!(
        listed_ids(&s, by(|f| f.service = Some("kling".into()))).await,
        ["k"]
    );
    assert_eq!(
        listed_ids(
            &s,
            by(|f| {
                f.service = Some("producer".into());
                f.status = Some(TaskStatus::Watching);
                f.after = Some((300, "c".into()));
            })
        )
        .await,
        ["b", "held"]
    );
    assert!(
        listed_ids(
            &s,
            by(|f| {
                f.service = Some("kling".into());
                f.status = Some(TaskStatus::Done);
            })
        )
        .await
        .is_empty()
    );
    // A watched task's view says when it is due (a leased one: its lease's end).
    let w = s
        .list_tasks(by(|f| f.status = Some(TaskStatus::Watching)))
        .await
        .unwrap();
    let held = w.iter().find(|t| t.id == "held").unwrap();
    assert_eq!(held.next_poll_at, Some(5_000_000));
    let d = s
        .list_tasks(by(|f| f.status = Some(TaskStatus::Delivering)))
        .await
        .unwrap();
    assert_eq!(
        (d[0].event_id.as_deref(), d[0].next_poll_at, d[0].polls),
        (Some("msg_a"), None, 1)
    );
}

/// An ID prefix takes exactly the IDs that start with it (a range on the
/// primary key in byte order), with the other filters and pages.
pub async fn task_listings_by_id_prefix_are_exact(s: Arc<dyn Store>) {
    let ids = [
        "job-1", "job-10", "job-1z", "job-2", "job.1", "job", "jo", "jobx", "Job-1", "job-1é", "k",
    ];
    s.enqueue(
        100,
        1_000_000,
        ids.iter().map(|id| task(id)).collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let prefixed = |p: &str| TaskFilter {
        id_prefix: Some(p.into()),
        limit: 100,
        ..Default::default()
    };
    let expect = |p: &str| {
        let mut v: Vec<String> = ids
            .iter()
            .filter(|id| id.starts_with(p))
            .map(|id| id.to_string())
            .collect();
        // Newest first: all at 100, so by ID descending (byte order).
        v.sort_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
        v
    };
    for p in [
        "job-1", "job", "jo", "job-", "job.", "J", "job-1é", "zz", "k",
    ] {
        assert_eq!(listed_ids(&s, prefixed(p)).await, expect(p), "prefix {p:?}");
    }
    assert_eq!(
        listed_ids(&s, prefixed("")).await.len(),
        ids.len(),
        "an empty prefix is no filter"
    );
    // Paged within a prefix.
    let mut f = prefixed("job-1");
    f.limit = 2;
    assert_eq!(listed_ids(&s, f.clone()).await, ["job-1é", "job-1z"]);
    f.after = Some((100, "job-1z".into()));
    assert_eq!(listed_ids(&s, f).await, ["job-10", "job-1"]);
    let mut f = prefixed("job");
    f.service = Some("kling".into());
    assert!(listed_ids(&s, f).await.is_empty());
}

/// A finished task `id` with deliveries to `hooks`, its event of type
/// `outcome`; returns its deliveries, claimed at `now`.
async fn finished_with(
    s: &Arc<dyn Store>,
    id: &str,
    outcome: Outcome,
    hooks: &[&str],
    now: Millis,
) -> Vec<ClaimedDelivery> {
    s.enqueue(now, 0, vec![task(id)]).await.unwrap();
    let t = s
        .claim_poll_batch(now, now, 10.into(), now + 1000)
        .await
        .unwrap()
        .tasks
        .remove(0);
    assert_eq!(t.id, id);
    s.record_polls(now, vec![finish_as(&t, outcome, hooks)], None)
        .await
        .unwrap();
    let mut ds = s
        .claim_deliveries(now, 100, now + 100_000, vec![], 100)
        .await
        .unwrap()
        .deliveries;
    ds.sort_by(|a, b| a.webhook.cmp(&b.webhook));
    assert_eq!(ds.len(), hooks.len());
    ds
}

fn replay_filter(state: DeliveryState) -> ReplayFilter {
    ReplayFilter {
        state,
        webhook: None,
        event_type: None,
        since: None,
        until: None,
    }
}

/// Which (task, webhook) pairs `list_matching` shows for `f`, in its
/// order; `count_matching` must count as many.
async fn matching(s: &Arc<dyn Store>, f: ReplayFilter) -> Vec<(String, String)> {
    let listed: Vec<(String, String)> = s
        .list_matching(f.clone(), 100)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.task_id, d.webhook))
        .collect();
    assert_eq!(
        s.count_matching(f.clone()).await.unwrap(),
        listed.len() as u64,
        "count_matching({f:?})"
    );
    listed
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(t, w)| (t.to_string(), w.to_string()))
        .collect()
}

/// Dead letters listed and replayed by webhook, event type and settle
/// window (`[since, until)`), newest first; a replay makes them pending
/// with no attempts, due now, reopens their tasks and says how many; only
/// dead letters and parked deliveries are ever taken.
pub async fn bulk_replay_takes_the_dead_letters_its_filter_matches(s: Arc<dyn Store>) {
    let s1 = finished_with(&s, "s1", Outcome::Succeeded, &["a", "b"], 10).await;
    let f1 = finished_with(&s, "f1", Outcome::Failed, &["a", "b"], 20).await;
    let s2 = finished_with(&s, "s2", Outcome::Succeeded, &["a", "b"], 30).await;
    let dead = |ds: &[ClaimedDelivery]| -> Vec<DeliveryReport> {
        ds.iter()
            .map(|d| report(d, DeliveryVerdict::DeadLetter))
            .collect()
    };
    s.record_deliveries(100, dead(&s1)).await.unwrap();
    s.record_deliveries(200, dead(&f1)).await.unwrap();
    s.record_deliveries(
        300,
        vec![
            report(&s2[0], DeliveryVerdict::DeadLetter),
            report(&s2[1], DeliveryVerdict::Delivered),
        ],
    )
    .await
    .unwrap();
    for t in ["s1", "f1", "s2"] {
        let v = s.get_task(t.into()).await.unwrap().unwrap();
        assert_eq!(v.status, TaskStatus::Done, "{t}");
    }
    let failed = || replay_filter(DeliveryState::Failed);
    assert_eq!(
        matching(&s, failed()).await,
        pairs(&[
            ("s2", "a"),
            ("f1", "b"),
            ("f1", "a"),
            ("s1", "b"),
            ("s1", "a")
        ]),
        "newest first: by settle time, then ID"
    );
    let views = s.list_matching(failed(), 2).await.unwrap();
    assert_eq!(views.len(), 2);
    assert_eq!(
        (views[0].state, views[0].updated_at, views[0].attempts),
        (DeliveryState::Failed, 300, 1)
    );
    assert!(s.list_matching(failed(), 0).await.unwrap().is_empty());

    let with = |f: fn(&mut ReplayFilter)| {
        let mut filter = failed();
        f(&mut filter);
        filter
    };
    assert_eq!(
        matching(&s, with(|f| f.webhook = Some("a".into()))).await,
        pairs(&[("s2", "a"), ("f1", "a"), ("s1", "a")])
    );
    assert_eq!(
        matching(&s, with(|f| f.event_type = Some("task.failed".into()))).await,
        pairs(&[("f1", "b"), ("f1", "a")])
    );
    assert_eq!(
        matching(&s, with(|f| f.since = Some(200))).await,
        pairs(&[("s2", "a"), ("f1", "b"), ("f1", "a")]),
        "since is inclusive"
    );
    assert_eq!(
        matching(&s, with(|f| f.until = Some(200))).await,
        pairs(&[("s1", "b"), ("s1", "a")]),
        "until is exclusive"
    );
    assert_eq!(
        matching(
            &s,
            with(|f| {
                f.since = Some(101);
                f.until = Some(301);
                f.webhook = Some("b".into());
                f.event_type = Some("task.failed".into());
            })
        )
        .await,
        pairs(&[("f1", "b")])
    );
    assert!(
        matching(&s, with(|f| f.webhook = Some("nobody".into())))
            .await
            .is_empty()
    );
    for other in [
        DeliveryState::Pending,
        DeliveryState::Delivered,
        DeliveryState::Gone,
    ] {
        assert!(matching(&s, replay_filter(other)).await.is_empty());
        assert_eq!(
            s.replay_matching(350, replay_filter(other)).await.unwrap(),
            0
        );
    }
    assert_eq!(s.stats().await.unwrap().dead_letters, 5);

    // Webhook "a", settled from 150 on: f1's and s2's.
    let n = s
        .replay_matching(
            400,
            with(|f| {
                f.webhook = Some("a".into());
                f.since = Some(150);
            }),
        )
        .await
        .unwrap();
    assert_eq!(n, 2);
    for (t, status) in [
        ("f1", TaskStatus::Delivering),
        ("s2", TaskStatus::Delivering),
        ("s1", TaskStatus::Done),
    ] {
        assert_eq!(
            s.get_task(t.into()).await.unwrap().unwrap().status,
            status,
            "{t}"
        );
    }
    let f1v = s.get_task("f1".into()).await.unwrap().unwrap();
    let fa = f1v.deliveries.iter().find(|d| d.webhook == "a").unwrap();
    assert_eq!(
        (fa.state, fa.attempts, fa.next_attempt_at, fa.updated_at),
        (DeliveryState::Pending, 0, Some(400), 400)
    );
    let st = s.stats().await.unwrap();
    assert_eq!((st.dead_letters, st.deliveries_pending), (3, 2));
    let mut again = s
        .claim_deliveries(400, 10, 5000, vec![], 100)
        .await
        .unwrap()
        .deliveries;
    again.sort_by(|x, y| x.task_id.cmp(&y.task_id));
    let got: Vec<_> = again
        .iter()
        .map(|d| (d.task_id.as_str(), d.webhook.as_str(), d.attempts))
        .collect();
    assert_eq!(got, [("f1", "a", 0), ("s2", "a", 0)]);
    // Delivered now: the tasks are done again.
    s.record_deliveries(
        410,
        again
            .iter()
            .map(|d| report(d, DeliveryVerdict::Delivered))
            .collect(),
    )
    .await
    .unwrap();
    assert_eq!(
        s.get_task("s2".into()).await.unwrap().unwrap().status,
        TaskStatus::Done
    );

    // By event type: s1's two; then nothing more of that type.
    let succeeded = || with(|f| f.event_type = Some("task.succeeded".into()));
    assert_eq!(s.replay_matching(500, succeeded()).await.unwrap(), 2);
    assert_eq!(
        s.get_task("s1".into()).await.unwrap().unwrap().status,
        TaskStatus::Delivering
    );
    assert_eq!(s.replay_matching(500, succeeded()).await.unwrap(), 0);
    // Everything left.
    assert_eq!(s.replay_matching(600, failed()).await.unwrap(), 1);
    assert!(matching(&s, failed()).await.is_empty());
    assert_eq!(s.stats().await.unwrap().deliveries_pending, 3);
}

/// A bulk replay of parked deliveries takes only parked ones, and one of
/// dead letters only dead letters.
pub async fn bulk_replay_takes_parked_and_dead_letters_apart(s: Arc<dyn Store>) {
    let ds = finished_with(&s, "a", Outcome::Succeeded, &["dead-hook", "gone-hook"], 10).await;
    s.record_deliveries(
        30,
        vec![
            report(&ds[0], DeliveryVerdict::DeadLetter),
            report(&ds[1], DeliveryVerdict::WebhookRemoved),
        ],
    )
    .await
    .unwrap();
    let parked = || replay_filter(DeliveryState::WebhookRemoved);
    let failed = || replay_filter(DeliveryState::Failed);
    assert_eq!(matching(&s, parked()).await, pairs(&[("a", "gone-hook")]));
    assert_eq!(matching(&s, failed()).await, pairs(&[("a", "dead-hook")]));
    let mut other_hook = parked();
    other_hook.webhook = Some("dead-hook".into());
    assert!(matching(&s, other_hook.clone()).await.is_empty());
    assert_eq!(s.replay_matching(40, other_hook).await.unwrap(), 0);

    assert_eq!(s.replay_matching(40, parked()).await.unwrap(), 1);
    let st = s.stats().await.unwrap();
    assert_eq!(
        (st.deliveries_pending, st.dead_letters, st.webhook_removed),
        (1, 1, 0)
    );
    assert_eq!(
        s.get_task("a".into()).await.unwrap().unwrap().status,
        TaskStatus::Delivering
    );
    let d = s
        .claim_deliveries(40, 10, 5000, vec![], 100)
        .await
        .unwrap()
        .deliveries;
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].webhook.as_str(), d[0].attempts), ("gone-hook", 0));
    assert_eq!(s.replay_matching(50, parked()).await.unwrap(), 0);
    assert_eq!(s.replay_matching(50, failed()).await.unwrap(), 1);
}

/// Every attempt whose report landed is logged once, under its delivery's
/// name and count, with its status, latency, error, the first KiB of the
/// answer and the verdict's word; a stale report logs nothing. A task's
/// view lists its attempts oldest first; a delete takes them along and the
/// purge drops those older than the longest retention.
pub async fn the_attempt_log_keeps_every_attempt_that_landed(s: Arc<dyn Store>) {
    let ds = finished_with(&s, "a", Outcome::Succeeded, &["w1", "w2"], 10).await;
    let (d1, d2) = (&ds[0], &ds[1]);
    assert!(d1.id < d2.id);
    let attempt = |d: &ClaimedDelivery,
                   verdict,
                   status: Option<u16>,
                   error: Option<&str>,
                   latency: Option<i64>,
                   answer: Option<String>| DeliveryReport {
        status,
        error: error.map(str::to_string),
        latency_ms: latency,
        answer,
        ..report(d, verdict)
    };
    s.record_deliveries(
        30,
        vec![
            attempt(
                d1,
                DeliveryVerdict::Retry { at: 100 },
                Some(503),
                Some("HTTP 503"),
                Some(120),
                Some("busy".into()),
            ),
            attempt(
                d2,
                DeliveryVerdict::Delivered,
                Some(200),
                None,
                Some(80),
                Some("ok".into()),
            ),
        ],
    )
    .await
    .unwrap();
    // Stale: d2 is settled.
    s.record_deliveries(35, vec![report(d2, DeliveryVerdict::Delivered)])
        .await
        .unwrap();
    let again = s
        .claim_deliveries(100, 10, 5000, vec![], 100)
        .await
        .unwrap()
        .deliveries
        .remove(0);
    assert_eq!((again.id, again.attempts), (d1.id, 1));
    // Stale: d1's first claim is spent.
    s.record_deliveries(110, vec![report(d1, DeliveryVerdict::DeadLetter)])
        .await
        .unwrap();
    let long = "é".repeat(1500);
    s.record_deliveries(
        120,
        vec![attempt(
            &again,
            DeliveryVerdict::DeadLetter,
            Some(500),
            Some("HTTP 500"),
            Some(5000),
            Some(long),
        )],
    )
    .await
    .unwrap();
    // Stale once more, after the settle.
    s.record_deliveries(130, vec![report(&again, DeliveryVerdict::Delivered)])
        .await
        .unwrap();

    let v = s.get_task("a".into()).await.unwrap().unwrap();
    assert_eq!(v.status, TaskStatus::Done);
    let log: Vec<_> = v
        .attempts
        .iter()
        .map(|a| {
            (
                a.delivery_id,
                a.webhook.as_str(),
                a.attempt,
                a.at,
                a.status,
                a.latency_ms,
                a.error.as_deref(),
                a.verdict.as_str(),
            )
        })
        .collect();
    assert_eq!(
        log,
        [
            (
                d1.id,
                "w1",
                1,
                30,
                Some(503),
                Some(120),
                Some("HTTP 503"),
                "retry"
            ),
            (d2.id, "w2", 1, 30, Some(200), Some(80), None, "delivered"),
            (
                d1.id,
                "w1",
                2,
                120,
                Some(500),
                Some(5000),
                Some("HTTP 500"),
                "failed"
            ),
        ]
    );
    assert_eq!(v.attempts[0].answer.as_deref(), Some("busy"));
    assert_eq!(v.attempts[1].answer.as_deref(), Some("ok"));
    let kept = v.attempts[2].answer.as_deref().unwrap();
    assert!(
        kept.len() <= 1024 && kept.len() > 1000 && kept.chars().all(|c| c == 'é'),
        "{} bytes kept",
        kept.len()
    );

    // Gone and parked verdicts have their words too.
    let b = finished_with(&s, "b", Outcome::Failed, &["g", "r"], 200).await;
    s.record_deliveries(
        210,
        vec![
            attempt(
                &b[0],
                DeliveryVerdict::Gone,
                Some(410),
                Some("410 Gone"),
                Some(9),
                None,
            ),
            attempt(
                &b[1],
                DeliveryVerdict::WebhookRemoved,
                None,
                Some("not configured"),
                None,
                None,
            ),
        ],
    )
    .await
    .unwrap();
    let words: Vec<_> = s
        .get_task("b".into())
        .await
        .unwrap()
        .unwrap()
        .attempts
        .into_iter()
        .map(|a| (a.webhook, a.verdict, a.latency_ms))
        .collect();
    assert_eq!(
        words,
        [
            ("g".to_string(), "gone".to_string(), Some(9)),
            ("r".to_string(), "webhook_removed".to_string(), None)
        ]
    );

    // The purge drops what is older than the longest retention.
    s.purge(0, 100).await.unwrap();
    let v = s.get_task("a".into()).await.unwrap().unwrap();
    let left: Vec<_> = v.attempts.iter().map(|a| a.at).collect();
    assert_eq!(left, [120]);
    // A delete takes the task's attempts along (nothing is left to show
    // in the activity either).
    assert!(s.delete_task("a".into()).await.unwrap());
    assert!(s.delete_task("b".into()).await.unwrap());
    let act = s.activity(1000, 0).await.unwrap();
    assert!(act.webhooks.is_empty(), "{act:?}");
    assert_eq!((act.delivered, act.failed_attempts), (0, 0));
}

/// The overview: tasks enqueued since a moment, deliveries delivered and
/// attempts failed (retries and dead letters) since then, and per webhook
/// (by name) its attempts, deliveries, nearest-rank p50/p95 latency, last
/// error, and deliveries leased now — a webhook with only leased ones
/// shows too, one whose leases ran out does not.
pub async fn activity_counts_the_window_and_each_webhooks_health(s: Arc<dyn Store>) {
    s.enqueue(0, 1_000_000, vec![task("old")]).await.unwrap();
    let ids: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    s.enqueue(1000, 0, ids.iter().map(|id| task(id)).collect())
        .await
        .unwrap();
    let ts = s
        .claim_poll_batch(1000, 1000, 10.into(), 2000)
        .await
        .unwrap()
        .tasks;
    assert_eq!(ts.len(), 10);
    s.record_polls(
        1000,
        ts.iter()
            .map(|t| finish(t, &["fast", "flaky", "idle"]))
            .collect(),
        None,
    )
    .await
    .unwrap();
    let ds = s
        .claim_deliveries(1100, 100, 6100, vec![], 100)
        .await
        .unwrap()
        .deliveries;
    assert_eq!(ds.len(), 30);
    let index = |d: &ClaimedDelivery| d.task_id[1..].parse::<i64>().unwrap();
    let mut now_reports = Vec::new();
    let mut later = Vec::new();
    for d in &ds {
        let i = index(d);
        let r = |verdict, status: Option<u16>, error: Option<&str>, latency| DeliveryReport {
            status,
            error: error.map(str::to_string),
            latency_ms: latency,
            ..report(d, verdict)
        };
        match d.webhook.as_str() {
            "fast" => now_reports.push(r(
                DeliveryVerdict::Delivered,
                Some(200),
                None,
                Some(10 * (i + 1)),
            )),
            "flaky" => match i {
                0..=5 => now_reports.push(r(
                    DeliveryVerdict::Retry { at: 5000 },
                    Some(503),
                    Some("HTTP 503"),
                    Some(1000 + i),
                )),
                6 | 7 => now_reports.push(r(
                    DeliveryVerdict::DeadLetter,
                    None,
                    Some("timed out"),
                    Some(30_000),
                )),
                8 => now_reports.push(r(
                    DeliveryVerdict::Gone,
                    Some(410),
                    Some("410 Gone"),
                    Some(7),
                )),
                _ => later.push(r(
                    DeliveryVerdict::WebhookRemoved,
                    None,
                    Some("not configured"),
                    None,
                )),
            },
            _ => {} // idle: in flight until 6100
        }
    }
    s.record_deliveries(1200, now_reports).await.unwrap();
    s.record_deliveries(1300, later).await.unwrap();

    let a = s.activity(1400, 500).await.unwrap();
    assert_eq!(a.since, 500);
    assert_eq!(
        (a.enqueued, a.delivered, a.failed_attempts),
        (10, 10, 8),
        "{a:?}"
    );
    let names: Vec<_> = a.webhooks.iter().map(|h| h.webhook.as_str()).collect();
    assert_eq!(names, ["fast", "flaky", "idle"]);
    assert_eq!(
        a.webhooks[0],
        WebhookHealth {
            webhook: "fast".into(),
            attempts: 10,
            delivered: 10,
            p50_ms: Some(50),
            p95_ms: Some(100),
            last_error: None,
            last_error_at: None,
            in_flight: 0,
        }
    );
    assert_eq!(
        a.webhooks[1],
        WebhookHealth {
            webhook: "flaky".into(),
            attempts: 10,
            delivered: 0,
            // 7, 1000..=1005, 30000, 30000: ranks 5 and 9 of 9.
            p50_ms: Some(1003),
            p95_ms: Some(30_000),
            last_error: Some("not configured".into()),
            last_error_at: Some(1300),
            in_flight: 0,
        }
    );
    assert_eq!(
        a.webhooks[2],
        WebhookHealth {
            webhook: "idle".into(),
            in_flight: 10,
            ..Default::default()
        }
    );
    assert_eq!(s.activity(1400, 0).await.unwrap().enqueued, 11);

    // A narrower window: only the parked attempt at 1300.
    let a = s.activity(1400, 1250).await.unwrap();
    assert_eq!((a.enqueued, a.delivered, a.failed_attempts), (0, 0, 0));
    let flaky = &a.webhooks[0];
    assert_eq!(
        (
            flaky.webhook.as_str(),
            flaky.attempts,
            flaky.p50_ms,
            flaky.last_error_at
        ),
        ("flaky", 1, None, Some(1300))
    );
    assert_eq!(a.webhooks.len(), 2, "{a:?}");
    assert_eq!(
        (a.webhooks[1].webhook.as_str(), a.webhooks[1].in_flight),
        ("idle", 10)
    );

    // The idle leases run out at 6100: nothing in flight, nothing to show.
    let a = s.activity(6100, 1250).await.unwrap();
    let names: Vec<_> = a.webhooks.iter().map(|h| h.webhook.as_str()).collect();
    assert_eq!(names, ["flaky"]);
    // The flaky retries, claimed again, are in flight.
    let again = s
        .claim_deliveries(6100, 100, 9000, vec!["idle".into()], 100)
        .await
        .unwrap()
        .deliveries;
    assert_eq!(again.len(), 6);
    let a = s.activity(6200, 6000).await.unwrap();
    assert_eq!(
        a.webhooks,
        [WebhookHealth {
            webhook: "flaky".into(),
            in_flight: 6,
            ..Default::default()
        }]
    );
}

/// A hint makes watched tasks of its service due ahead of every other
/// (`HINT_LEAD_MS` before now), already due ones too; a leased task is
/// marked instead, and its worker's reschedule makes it due the same way.
/// Done and other services' tasks, and unknown IDs, are left alone; a
/// task takes at most two hints while it is watched.
pub async fn hurry_brings_named_watched_tasks_forward(s: Arc<dyn Store>) {
    use crate::store::HINT_LEAD_MS as LEAD;
    s.enqueue(0, 0, vec![task("held"), task("done")])
        .await
        .unwrap();
    let ts = s
        .claim_poll_batch(0, 0, 10.into(), 50_000)
        .await
        .unwrap()
        .tasks;
    let done = ts.iter().find(|t| t.id == "done").unwrap();
    let held = ts.iter().find(|t| t.id == "held").unwrap().clone();
    s.record_polls(10, vec![finish(done, &[])], None)
        .await
        .unwrap();
    s.enqueue(100, 10_000, vec![task("a"), task("b"), task("c")])
        .await
        .unwrap();
    s.enqueue(100, 0, vec![task("due")]).await.unwrap();
    let mut k = task("k");
    k.service = "kling".into();
    s.enqueue(100, 10_000, vec![k]).await.unwrap();

    let named: Vec<String> = ["a", "b", "held", "done", "k", "nope", "due", "a"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        s.hurry(200, "producer".into(), named).await.unwrap(),
        4,
        "a, b, due moved; held marked"
    );
    let due_at = |id: &'static str| {
        let s = s.clone();
        async move { s.get_task(id.into()).await.unwrap().unwrap().next_poll_at }
    };
    assert_eq!(due_at("a").await, Some(200 - LEAD));
    assert_eq!(due_at("b").await, Some(200 - LEAD));
    assert_eq!(due_at("due").await, Some(200 - LEAD), "ahead of due tasks");
    assert_eq!(due_at("c").await, Some(10_100), "not named");
    assert_eq!(due_at("k").await, Some(10_100), "another service");
    assert_eq!(due_at("held").await, Some(50_000), "its lease untouched");
    assert_eq!(
        s.get_task("done".into()).await.unwrap().unwrap().status,
        TaskStatus::Done
    );
    assert_eq!(s.hurry(200, "producer".into(), vec![]).await.unwrap(), 0);
    assert_eq!(
        s.hurry(250, "producer".into(), vec!["a".into(), "held".into()])
            .await
            .unwrap(),
        0,
        "already hinted"
    );
    // Hinted tasks are claimed before a task due earlier; the held task's
    // worker still owns it.
    s.enqueue(100, 0, vec![task("early")]).await.unwrap();
    let c = s.claim_poll_batch(200, 200, 3.into(), 1000).await.unwrap();
    let mut got: Vec<_> = c.tasks.iter().map(|t| t.id.as_str()).collect();
    got.sort();
    assert_eq!(
        (c.service.as_str(), got),
        ("producer", vec!["a", "b", "due"])
    );
    // The worker's reschedule lands, ahead of the queue: it was hinted.
    s.record_polls(300, vec![resched(&held, 90_000)], None)
        .await
        .unwrap();
    assert_eq!(
        due_at("held").await,
        Some(300 - LEAD),
        "the remembered hint"
    );
    let c = s.claim_poll_batch(400, 400, 1.into(), 2000).await.unwrap();
    assert_eq!(c.tasks[0].id, "held", "claimed before the merely due task");
    // Its next reschedule is plain: the hint was used once.
    s.record_polls(500, vec![resched(&c.tasks[0], 90_000)], None)
        .await
        .unwrap();
    assert_eq!(due_at("held").await, Some(90_000));
    assert_eq!(
        s.hurry(400, "kling".into(), vec!["k".into()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(due_at("k").await, Some(400 - LEAD));
    // A task is hurried at most MAX_HINTS_PER_TASK (2) times while it is
    // watched: "held" took its first hint while leased, then one more.
    assert_eq!(crate::store::MAX_HINTS_PER_TASK, 2);
    assert_eq!(
        s.hurry(600, "producer".into(), vec!["held".into()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(due_at("held").await, Some(600 - LEAD));
    let c = s.claim_poll_batch(700, 700, 1.into(), 3000).await.unwrap();
    assert_eq!(c.tasks[0].id, "k", "hinted at 400, before held");
    let c = s.claim_poll_batch(700, 700, 1.into(), 3000).await.unwrap();
    assert_eq!(c.tasks[0].id, "held");
    s.record_polls(800, vec![resched(&c.tasks[0], 90_000)], None)
        .await
        .unwrap();
    assert_eq!(
        s.hurry(900, "producer".into(), vec!["held".into()])
            .await
            .unwrap(),
        0,
        "no third hint: naming it again cannot keep it ahead"
    );
    assert_eq!(due_at("held").await, Some(90_000));
}

/// Durations learned per service add up over calls; negative and absurd
/// ones are ignored; the quantiles follow the sample; every service with a
/// model is listed, by name.
pub async fn learned_durations_accumulate_per_service(s: Arc<dyn Store>) {
    assert!(s.duration_models().await.unwrap().is_empty());
    let none = s
        .learn_durations(5, "producer".into(), vec![-1])
        .await
        .unwrap();
    assert_eq!((none.service.as_str(), none.count), ("producer", 0));
    assert!(
        s.duration_models().await.unwrap().is_empty(),
        "nothing learned, no model"
    );
    // Uniform from 2 s to 10 s.
    let sample: Vec<i64> = (0..100).map(|i| 2_000 + i * 80).collect();
    let first = s
        .learn_durations(10, "producer".into(), sample.clone())
        .await
        .unwrap();
    assert_eq!((first.count, first.updated_at), (100, 10));
    let near = |got: i64, want: i64, tol: f64| {
        let off = (got - want).abs() as f64 / want as f64;
        assert!(off <= tol, "{got} is not within {tol} of {want}");
    };
    near(first.p50_ms, 6_000, 0.10);
    near(first.p10_ms, 2_800, 0.15);
    near(first.p90_ms, 9_200, 0.15);
    let mut more = sample.clone();
    more.extend([-5, i64::MAX, i64::MIN]);
    let second = s
        .learn_durations(20, "producer".into(), more)
        .await
        .unwrap();
    assert_eq!((second.count, second.updated_at), (200, 20));
    near(second.p50_ms, 6_000, 0.10);
    let k = s
        .learn_durations(30, "kling".into(), vec![60_000; 10])
        .await
        .unwrap();
    assert_eq!(k.count, 10);
    near(k.p50_ms, 60_000, 0.24);
    assert!(k.p10_ms <= k.p50_ms && k.p50_ms <= k.p90_ms);
    // Nothing usable: the model stands as it was.
    let same = s
        .learn_durations(40, "producer".into(), vec![-1, -2])
        .await
        .unwrap();
    assert_eq!(same, second);
    assert_eq!(s.duration_models().await.unwrap(), [k, second]);
}

/// The demand the poll budget must cover: watched tasks polled at least
/// once, or due by the horizon, per service (sorted by service); not
/// finished ones, not those whose first poll is planned past the horizon.
pub async fn demand_counts_the_tasks_that_take_polls_now(s: Arc<dyn Store>) {
    assert!(s.demand(0).await.unwrap().is_empty());
    s.enqueue(0, 0, vec![task("p1"), task("p2")]).await.unwrap();
    s.enqueue(0, 100_000, vec![task("later")]).await.unwrap();
    let mut k = task("k");
    k.service = "kling".into();
    s.enqueue(0, 0, vec![k]).await.unwrap();
    let ts = s
        .claim_poll_batch(0, 0, 10.into(), 50_000)
        .await
        .unwrap()
        .tasks;
    let by_id = |id: &str| ts.iter().find(|t| t.id == id).unwrap().clone();
    s.record_polls(
        10,
        vec![
            PollUpdate::Reschedule {
                id: "p1".into(),
                claim: by_id("p1").claim,
                next_poll_at: 500_000,
                polled: true,
                misses: 0,
                fail_seen: 0,
                upstream_state: Some("running".into()),
            },
            finish(&by_id("p2"), &[]),
        ],
        None,
    )
    .await
    .unwrap();
    let counts = |v: Vec<(String, u64)>| v;
    assert_eq!(
        counts(s.demand(10_000).await.unwrap()),
        vec![("kling".to_string(), 1), ("producer".to_string(), 1)],
        "p1 was polled; later waits for its first poll; p2 finished"
    );
    assert_eq!(
        counts(s.demand(200_000).await.unwrap()),
        vec![("kling".to_string(), 1), ("producer".to_string(), 2)]
    );
}
