//! Copying one store into another (`taskhook store copy`): tasks first,
//! then events with their deliveries, then learned durations, a page at a
//! time, each page in one transaction of the target. Tasks go before
//! events so that a daemon already running on the target never settles a
//! delivery whose task has not arrived (it could not mark the task done).
//! Every page is idempotent ([`Import`]), so a copy that stopped halfway
//! is finished by running it again.
//!
//! Not copied: leases (copies start unleased; the source was opened by its
//! single owner, which takes every lease back), delivery IDs (the target
//! numbers its own) and the attempt log (history only; a task's page on
//! the target lists attempts made there).
//!
//! May call: the store traits and values.

use super::*;

/// Rows per page: one transaction of the target each.
pub const PAGE: usize = 1_000;

/// What a copy read from the source and what it wrote to the target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Tasks read, by status: watching, delivering, done.
    pub tasks_read: [u64; 3],
    pub tasks: Imported,
    pub events_read: u64,
    /// Deliveries read with those events, by state: pending, delivered,
    /// failed (dead letters), gone, parked (webhook removed).
    pub deliveries_read: [u64; 5],
    pub events: Imported,
    pub durations_read: u64,
    pub durations: Imported,
}

impl CopyReport {
    /// Every task read.
    pub fn tasks_total(&self) -> u64 {
        self.tasks_read.iter().sum()
    }

    /// Every delivery read.
    pub fn deliveries_total(&self) -> u64 {
        self.deliveries_read.iter().sum()
    }

    /// The report as lines for a person (and for scripts: each starts with
    /// its kind and the number read).
    pub fn lines(&self) -> Vec<String> {
        let [watching, delivering, done] = self.tasks_read;
        let [pending, delivered, failed, gone, parked] = self.deliveries_read;
        vec![
            format!(
                "tasks: {} read ({watching} watching, {delivering} delivering, {done} done); \
                 {} copied, {} already there",
                self.tasks_total(),
                self.tasks.copied,
                self.tasks.duplicates
            ),
            format!(
                "events: {} read with {} deliveries ({pending} pending, {delivered} delivered, \
                 {failed} dead letters, {gone} gone, {parked} parked); {} copied with {} \
                 deliveries, {} already there",
                self.events_read,
                self.deliveries_total(),
                self.events.copied,
                self.events.deliveries,
                self.events.duplicates
            ),
            format!(
                "durations: {} services read; {} copied, {} already there",
                self.durations_read, self.durations.copied, self.durations.duplicates
            ),
        ]
    }
}

fn status_index(s: TaskStatus) -> usize {
    match s {
        TaskStatus::Watching => 0,
        TaskStatus::Delivering => 1,
        TaskStatus::Done => 2,
    }
}

fn state_index(s: DeliveryState) -> usize {
    match s {
        DeliveryState::Pending => 0,
        DeliveryState::Delivered => 1,
        DeliveryState::Failed => 2,
        DeliveryState::Gone => 3,
        DeliveryState::WebhookRemoved => 4,
    }
}

/// Copies everything `from` holds into `to`, [`PAGE`] rows at a time.
/// An error stops the copy where it is; what was written stays written,
/// and running the copy again finishes it.
pub async fn copy(from: &dyn Export, to: &dyn Import) -> StoreResult<CopyReport> {
    let mut report = CopyReport::default();
    let mut after = None;
    loop {
        let page = from.export_tasks(after.take(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for t in &page {
            report.tasks_read[status_index(t.status)] += 1;
        }
        report.tasks += to.import_tasks(page).await?;
    }
    loop {
        let page = from.export_events(after.take(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        report.events_read += page.len() as u64;
        for d in page.iter().flat_map(|e| &e.deliveries) {
            report.deliveries_read[state_index(d.state)] += 1;
        }
        report.events += to.import_events(page).await?;
    }
    let models = from.export_durations().await?;
    report.durations_read = models.len() as u64;
    report.durations += to.import_durations(models).await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SyncMode;
    use crate::store::postgres::testing::fresh;
    use crate::store::testing::{finish, resched, task};

    fn answer(d: &ClaimedDelivery, verdict: DeliveryVerdict) -> DeliveryReport {
        let ok = verdict == DeliveryVerdict::Delivered;
        DeliveryReport {
            id: d.id,
            claim: d.claim,
            task_id: d.task_id.clone(),
            event_id: d.event_id.clone(),
            verdict,
            status: Some(if ok { 200 } else { 500 }),
            error: (!ok).then(|| "HTTP 500".to_string()),
            webhook: d.webhook.clone(),
            attempt: d.attempts + 1,
            latency_ms: Some(5),
            answer: None,
        }
    }

    const META: &str = r#"{"job": 42, "b": [1, 2], "a": "z"}"#;
    const TASK_URL: &str = "https://u:secret@hooks.example/x?token=abc";

    /// A SQLite store with something of every kind: two watched tasks
    /// polled once (one with metadata and a per-task URL), a delivering
    /// task (a dead letter, a delivery waiting for its retry), a done one,
    /// the dead letter and parked delivery of a deleted task, and learned
    /// durations.
    async fn varied(path: &std::path::Path) -> SqliteStore {
        let s = SqliteStore::open(path, SyncMode::Normal, 0).unwrap();
        let mut extras = task("w-meta");
        extras.metadata = Some(META.into());
        extras.webhooks = vec![TASK_URL.into()];
        let tasks = vec![
            extras,
            task("w-plain"),
            task("d-one"),
            task("d-two"),
            task("deleted"),
        ];
        s.enqueue(1_000, 100, tasks).await.unwrap();
        let c = s
            .claim_poll_batch(1_100, 1_100, 10.into(), 60_000)
            .await
            .unwrap();
        assert_eq!(c.tasks.len(), 5);
        let updates = c
            .tasks
            .iter()
            .map(|t| {
                if t.id.starts_with("w-") {
                    resched(t, 50_000)
                } else {
                    finish(t, &["a", "b"])
                }
            })
            .collect();
        s.record_polls(1_200, updates, None).await.unwrap();
        let claim = s
            .claim_deliveries(2_000, 100, 60_000, vec![], 100)
            .await
            .unwrap();
        assert_eq!(claim.deliveries.len(), 6);
        let reports = claim
            .deliveries
            .iter()
            .map(|d| {
                let verdict = match (d.task_id.as_str(), d.webhook.as_str()) {
                    ("d-one", _) => DeliveryVerdict::Delivered,
                    ("d-two", "b") => DeliveryVerdict::Retry { at: 90_000 },
                    (_, "a") => DeliveryVerdict::DeadLetter,
                    _ => DeliveryVerdict::WebhookRemoved,
                };
                answer(d, verdict)
            })
            .collect();
        s.record_deliveries(2_100, reports).await.unwrap();
        assert!(s.delete_task("deleted".into()).await.unwrap());
        s.learn_durations(3_000, "producer".into(), vec![1_000, 2_000, 50_000])
            .await
            .unwrap();
        s
    }

    /// A task's view without what a copy does not keep: delivery IDs (the
    /// target numbers its own) and the attempt log.
    fn comparable(mut v: TaskView) -> TaskView {
        for d in &mut v.deliveries {
            d.id = 0;
        }
        v.attempts.clear();
        v
    }

    fn comparable_list(mut l: Vec<DeliveryView>) -> Vec<DeliveryView> {
        for d in &mut l {
            d.id = 0;
        }
        l
    }

    #[tokio::test]
    async fn a_sqlite_store_copies_into_postgres_whole_and_only_once() {
        let Some((pg, _guard)) = fresh(2).await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let sqlite = varied(&dir.path().join("t.db")).await;

        let report = copy(&sqlite, &pg).await.unwrap();
        assert_eq!(report.tasks_read, [2, 1, 1], "{report:?}");
        assert_eq!(
            report.tasks,
            Imported {
                copied: 4,
                duplicates: 0,
                deliveries: 0
            }
        );
        assert_eq!(report.events_read, 3);
        assert_eq!(report.deliveries_read, [1, 2, 2, 0, 1], "{report:?}");
        assert_eq!(
            report.events,
            Imported {
                copied: 3,
                duplicates: 0,
                deliveries: 6
            }
        );
        assert_eq!((report.durations_read, report.durations.copied), (1, 1));

        // Every task reads the same on both, but for delivery IDs and the
        // attempt log.
        for id in ["w-meta", "w-plain", "d-one", "d-two", "deleted"] {
            let want = sqlite.get_task(id.into()).await.unwrap().map(comparable);
            let got = pg.get_task(id.into()).await.unwrap().map(comparable);
            assert_eq!(got, want, "{id}");
        }
        assert_eq!(pg.stats().await.unwrap(), sqlite.stats().await.unwrap());
        for state in [DeliveryState::Failed, DeliveryState::WebhookRemoved] {
            assert_eq!(
                comparable_list(pg.list_deliveries(Some(state), 10).await.unwrap()),
                comparable_list(sqlite.list_deliveries(Some(state), 10).await.unwrap()),
                "{state:?}"
            );
        }
        assert_eq!(
            pg.duration_models().await.unwrap(),
            sqlite.duration_models().await.unwrap()
        );

        // Again: everything is there already, nothing is written twice.
        let again = copy(&sqlite, &pg).await.unwrap();
        assert_eq!(
            (again.tasks, again.events, again.durations),
            (
                Imported {
                    copied: 0,
                    duplicates: 4,
                    deliveries: 0
                },
                Imported {
                    copied: 0,
                    duplicates: 3,
                    deliveries: 0
                },
                Imported {
                    copied: 0,
                    duplicates: 1,
                    deliveries: 0
                }
            )
        );
        assert_eq!(pg.stats().await.unwrap(), sqlite.stats().await.unwrap());

        // The copies work on PostgreSQL: watched tasks come due when they
        // were due, with their poll count, metadata byte for byte and
        // per-task URL unredacted...
        assert!(
            pg.claim_poll_batch(49_999, 49_999, 10.into(), 60_000)
                .await
                .unwrap()
                .tasks
                .is_empty()
        );
        let polled = pg
            .claim_poll_batch(50_000, 50_000, 10.into(), 60_000)
            .await
            .unwrap()
            .tasks;
        let meta = polled.iter().find(|t| t.id == "w-meta").unwrap();
        assert_eq!(polled.len(), 2);
        assert_eq!((meta.polls, meta.enqueued_at), (1, 1_000));
        assert_eq!(meta.metadata.as_deref(), Some(META));
        assert_eq!(meta.webhooks, vec![TASK_URL.to_string()]);
        // ... the delivery waiting for its retry goes out then with its
        // event's body and attempt count, and settles its task ...
        let claim = pg
            .claim_deliveries(90_000, 10, 100_000, vec![], 10)
            .await
            .unwrap();
        assert_eq!(claim.deliveries.len(), 1);
        let d = &claim.deliveries[0];
        assert_eq!((d.task_id.as_str(), d.attempts), ("d-two", 1));
        assert_eq!(&*d.body, r#"{"task":"d-two"}"#);
        pg.record_deliveries(90_100, vec![answer(d, DeliveryVerdict::Delivered)])
            .await
            .unwrap();
        let v = pg.get_task("d-two".into()).await.unwrap().unwrap();
        assert_eq!(v.status, TaskStatus::Done);
        // ... and the dead letters, the deleted task's too, replay.
        assert_eq!(
            pg.replay_matching(91_000, crate::store::ReplayFilter::dead_letters())
                .await
                .unwrap(),
            2
        );
    }
}
