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

#![allow(missing_docs)]

use std::sync::Arc;

use super::*;
use crate::clock::Millis;
use crate::poll::terminal::Outcome;

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
            listings_are_newest_first_and_bounded
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
    PollUpdate::Finish {
        id: t.id.clone(),
        claim: t.claim,
        polled: true,
        outcome: Outcome::Succeeded,
        upstream_state: "succeeded".into(),
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
    assert_eq!(s.replay_all_failed(50).await.unwrap(), 1);
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
    assert_eq!(s.replay_all_failed(50).await.unwrap(), 1);
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
