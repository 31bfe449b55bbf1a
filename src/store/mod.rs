//! The durable queue. Every piece of state that must survive a crash lives
//! behind these traits: watched tasks with their poll schedule, finished
//! tasks' events, and one delivery row per (event, webhook). The traits are
//! split by who uses them: the poller's [`PollQueue`], the dispatcher's
//! [`DeliveryQueue`], the API's [`ReadModel`] and the operators' [`Admin`];
//! a backend implements all four ([`Store`]). Backends: [`sqlite`] (one
//! daemon, embedded) and [`postgres`] (several daemons sharing one queue).
//!
//! Moving a store's content to another backend (`taskhook store copy`)
//! goes through [`Export`] (SQLite) and [`Import`] (PostgreSQL), driven by
//! [`copy`].
//!
//! Every method takes `now` (unix milliseconds) from the caller, so tests
//! control time. Claims hand out a fencing token (`claim`): a write that
//! carries a stale token is ignored, so a worker whose lease ran out can
//! never overwrite the work of the one that took over.
//!
//! May call: `clock`, `terminal` (the outcome vocabulary), `redact`.

pub mod copy;
pub mod durations;
mod error;
mod model;
pub mod postgres;
mod shared;
pub mod sqlite;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use error::{StoreError, StoreResult};
pub use model::*;
pub use postgres::{PostgresOptions, PostgresStore};
pub use sqlite::SqliteStore;

use async_trait::async_trait;

use crate::clock::Millis;

/// Rows removed per purge call and kind, so the writer is never held long.
/// How far before `now` a hinted task is made due, so that it sorts ahead
/// of every task merely due (polls run late only when the budget cannot
/// keep up, and never by a day). A claim overwrites it with the lease.
pub const HINT_LEAD_MS: crate::clock::Millis = 86_400_000;
/// How many hints may hurry one task while it is watched: the upstream
/// calls back once, and a second allows for a duplicate or a callback that
/// came before the record said the task had settled. Beyond, a hint for it
/// changes nothing, so a flood naming watched IDs cannot starve the rest.
pub const MAX_HINTS_PER_TASK: i64 = 2;

pub const PURGE_CHUNK: usize = 5_000;

/// What one purge call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Purged {
    pub rows: u64,
    /// A chunk was full: more may be waiting.
    pub more: bool,
}

/// The poller's side of the queue: tasks in, due tasks leased in batches,
/// what each poll found recorded.
#[async_trait]
pub trait PollQueue: Send + Sync {
    /// Stores new tasks, first poll at `now + first_poll_after_ms`. Returns
    /// only after the commit. IDs already watched or delivering count as
    /// duplicates; a done ID is watched afresh.
    async fn enqueue(
        &self,
        now: Millis,
        first_poll_after_ms: Millis,
        tasks: Vec<NewTask>,
    ) -> StoreResult<EnqueueOutcome>;

    /// Leases tasks of one service, at most `limits.of(service)`: the service
    /// of the earliest due task, taking its tasks due by `window_end` (≥ now)
    /// so batches fill. Leased tasks are not handed out again before
    /// `lease_until`.
    async fn claim_poll_batch(
        &self,
        now: Millis,
        window_end: Millis,
        limits: ClaimLimits,
        lease_until: Millis,
    ) -> StoreResult<PollClaim>;

    /// Applies one poll round in one transaction; stale claims are ignored.
    /// With `handoff_lease`, the new deliveries are stored already leased
    /// until then (claim 1) and returned, so the caller can send them
    /// without claiming; otherwise they wait to be claimed and none are
    /// returned.
    async fn record_polls(
        &self,
        now: Millis,
        updates: Vec<PollUpdate>,
        handoff_lease: Option<Millis>,
    ) -> StoreResult<Vec<ClaimedDelivery>>;

    /// Leases up to `limit` watched tasks enqueued before `enqueued_before`
    /// (past their TTL), whatever their next poll, unless leased now.
    async fn claim_expired(
        &self,
        now: Millis,
        enqueued_before: Millis,
        limit: usize,
        lease_until: Millis,
    ) -> StoreResult<Vec<ClaimedTask>>;

    /// Pushes the next poll of `service`'s unleased tasks to `until` (at
    /// the latest): the upstream refuses that service for now.
    async fn defer_service(&self, service: String, until: Millis) -> StoreResult<u64>;

    /// Makes the watched tasks named in `ids` (of `service`) due ahead of
    /// every other: a callback said they may have finished. An unleased
    /// task's due time becomes `now - HINT_LEAD_MS` (so claims take it
    /// first); a leased one (its poll may be in flight, and may have left
    /// before the task settled) is marked, and its round's reschedule
    /// makes it due the same way. Unknown IDs and tasks of another service
    /// change nothing, and so does a hint for a task hurried
    /// [`MAX_HINTS_PER_TASK`] times already. Returns how many tasks moved
    /// or were marked; a task already hinted does not count again.
    ///
    /// A leased task is its worker's, even once its lease ran out (it is
    /// due then anyway). Meant for a few hundred IDs per call (one key
    /// lookup each). PostgreSQL wakes the pollers when any task moved.
    async fn hurry(&self, now: Millis, service: String, ids: Vec<String>) -> StoreResult<u64>;

    /// Watched tasks that take polls now, per service, sorted by service:
    /// those polled at least once, and those due by `horizon` (not those
    /// whose first poll is planned later). What the poll budget must cover.
    async fn demand(&self, horizon: Millis) -> StoreResult<Vec<(String, u64)>>;

    /// Folds observed durations (milliseconds from enqueue to the upstream's
    /// finish) into `service`'s learned model and returns it.
    ///
    /// The estimator is [`durations`]' histogram. Negative durations and
    /// those over [`durations::ABSURD_MS`] are ignored; when none is left,
    /// nothing is written and the model is returned as it stands (for a
    /// service never learned: `count` 0, quantiles 0, `updated_at` 0).
    /// Instances learning at once add up (PostgreSQL merges in one upsert
    /// on the locked row).
    async fn learn_durations(
        &self,
        now: Millis,
        service: String,
        durations_ms: Vec<i64>,
    ) -> StoreResult<DurationModel>;
}

/// The dispatcher's side: due deliveries leased, given back unsent, and
/// attempts recorded.
#[async_trait]
pub trait DeliveryQueue: Send + Sync {
    /// Gives back leased deliveries (id, claim) unsent: due `now`, for any
    /// worker to claim. Stale claims are ignored.
    async fn release_deliveries(&self, now: Millis, leases: Vec<(i64, i64)>) -> StoreResult<()>;

    /// Leases up to `limit` due deliveries, skipping the webhooks in
    /// `exclude` (those this worker has at its concurrency limit), and never
    /// more of one webhook than leaves `per_webhook` deliveries of it leased
    /// at once across every worker sharing the store.
    async fn claim_deliveries(
        &self,
        now: Millis,
        limit: usize,
        lease_until: Millis,
        exclude: Vec<String>,
        per_webhook: usize,
    ) -> StoreResult<DeliveryClaim>;

    /// Records attempt results in one transaction; a task whose deliveries
    /// are all settled becomes done. Stale claims are ignored.
    ///
    /// Each report that updated its delivery appends one row to the attempt
    /// log (at `now`, its status, latency, error, the first KiB of its
    /// answer and the verdict's word: `delivered`, `retry`, `failed`,
    /// `gone`, `webhook_removed`); a stale report logs nothing. The row
    /// takes the delivery's stored name and attempt count, which the
    /// report's `webhook` and `attempt` repeat.
    async fn record_deliveries(&self, now: Millis, reports: Vec<DeliveryReport>)
    -> StoreResult<()>;
}

/// What the control API, the console and the CLI read.
#[async_trait]
pub trait ReadModel: Send + Sync {
    /// One task with its event, deliveries and attempt log (every attempt
    /// at its current event's deliveries, oldest first).
    async fn get_task(&self, id: String) -> StoreResult<Option<TaskView>>;
    async fn stats(&self) -> StoreResult<StoreStats>;
    async fn list_deliveries(
        &self,
        state: Option<DeliveryState>,
        limit: usize,
    ) -> StoreResult<Vec<DeliveryView>>;
    /// Tasks matching `filter`, newest first (by `enqueued_at`, then ID),
    /// at most `filter.limit`; without their deliveries, event and attempts.
    ///
    /// IDs compare in byte order (code points). An empty `id_prefix` is no
    /// filter; a prefix is a range on the primary key. A `limit` of 0
    /// lists nothing. Watched tasks are read through their age index; a
    /// listing of other states or of every task may scan the table (done
    /// tasks are purged after their retention).
    async fn list_tasks(&self, filter: TaskFilter) -> StoreResult<Vec<TaskView>>;
    /// Dead letters (or parked deliveries) matching `filter`, newest first,
    /// at most `limit`: what a bulk replay of that filter would take.
    ///
    /// Newest is by settle time (`updated_at`), then ID, descending. A
    /// `filter.state` other than `Failed` or `WebhookRemoved` lists
    /// nothing.
    async fn list_matching(
        &self,
        filter: ReplayFilter,
        limit: usize,
    ) -> StoreResult<Vec<DeliveryView>>;
    /// How many dead letters (or parked deliveries) match `filter`: what
    /// a bulk replay of it would take now.
    async fn count_matching(&self, filter: ReplayFilter) -> StoreResult<u64>;
    /// Enqueues, deliveries and failed attempts since `since`, and each
    /// webhook's health from the attempts logged since then.
    ///
    /// `enqueued` counts the tasks in the store enqueued since then (a
    /// deleted or purged task no longer counts). Deliveries and failures
    /// come from the attempt log (`delivered`; `retry` and `failed`).
    /// Per webhook (by its stored name, redacted, in name order): p50/p95
    /// are nearest-rank (rank `ceil(p·n)`) over the attempts with a
    /// latency; the last error is that of the latest attempt with one;
    /// `in_flight` counts its deliveries leased at `now` (pending, lease
    /// not run out), and a webhook with some shows even without attempts.
    async fn activity(&self, now: Millis, since: Millis) -> StoreResult<Activity>;
    /// The learned durations of every service that has one.
    async fn duration_models(&self) -> StoreResult<Vec<DurationModel>>;
}

/// Operators' actions and housekeeping.
#[async_trait]
pub trait Admin: Send + Sync {
    /// Stops watching: removes the task and its pending deliveries, and
    /// its event's attempt log.
    async fn delete_task(&self, id: String) -> StoreResult<bool>;
    /// Makes a failed (dead-lettered) or parked delivery pending again, due `now`.
    async fn replay_delivery(&self, now: Millis, id: i64) -> StoreResult<bool>;
    /// Makes every delivery matching `filter` pending again, due `now`
    /// (their tasks delivering again). Returns how many. The dispatcher's
    /// lanes then pace them within each webhook's cap.
    ///
    /// Each is replayed as [`Admin::replay_delivery`] does one (no
    /// attempts, `updated_at` now, a done task reopened); a `filter.state`
    /// other than `Failed` or `WebhookRemoved` replays nothing. One
    /// transaction whatever the count (tens of thousands are fine);
    /// PostgreSQL sends one wake-up.
    async fn replay_matching(&self, now: Millis, filter: ReplayFilter) -> StoreResult<u64>;
    /// Makes deliveries parked because their webhook left the
    /// configuration pending again, for the webhooks in `names` (those
    /// configured now). Returns how many.
    async fn resume_parked(&self, now: Millis, names: Vec<String>) -> StoreResult<u64>;
    /// Drops done tasks settled before `done_before` with their delivered
    /// deliveries, and dead letters (and parked deliveries) and attempt log
    /// rows older than `dead_before` (the longest retention), at most
    /// [`PURGE_CHUNK`] of each. Returns the rows removed; call again while
    /// it says [`Purged::more`].
    async fn purge(&self, done_before: Millis, dead_before: Millis) -> StoreResult<Purged>;
    /// Proves the store takes writes (for readiness).
    async fn check_writable(&self, now: Millis) -> StoreResult<()>;
}

/// What several daemons sharing one store agree on through it: who is
/// alive, who runs the periodic work, and when there is work. A backend
/// for one daemon alone answers for that daemon.
#[async_trait]
pub trait Coordination: Send + Sync {
    /// Records that `instance` is alive at `now`, for `ttl_ms`, and returns
    /// every live instance, oldest first.
    async fn heartbeat(
        &self,
        now: Millis,
        instance: InstanceInfo,
        ttl_ms: Millis,
    ) -> StoreResult<Vec<InstanceInfo>>;
    /// Takes or keeps leadership of the periodic work for `ttl_ms`: the
    /// term when `instance` leads now, `None` when another does.
    async fn lead(&self, now: Millis, instance: String, ttl_ms: Millis)
    -> StoreResult<Option<i64>>;
    /// The leader now, if any: (instance, term).
    async fn leader(&self, now: Millis) -> StoreResult<Option<(String, i64)>>;
    /// Gives up leadership and leaves the live set (a clean shutdown).
    async fn leave(&self, instance: String) -> StoreResult<()>;
    /// Wake-ups other instances sent (new tasks, new due deliveries), when
    /// the backend carries them; `None` when one daemon owns the store.
    fn wakeups(&self) -> Option<tokio::sync::broadcast::Receiver<Wake>> {
        None
    }
}

/// Reading a whole store in pages, to copy it into another one (`taskhook
/// store copy`). The SQLite backend implements it; it is read while no
/// daemon uses the store (its lock file says so), so pages do not shift
/// under the reader.
#[async_trait]
pub trait Export: Send + Sync {
    /// Up to `limit` tasks of every status, in ID order (bytes), those
    /// after `after` when given.
    async fn export_tasks(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> StoreResult<Vec<TaskRecord>>;
    /// Up to `limit` events in ID order, those after `after` when given,
    /// each with every delivery of it (pending, delivered, dead-lettered,
    /// gone, parked), in delivery ID order. Events whose task is gone (the
    /// dead letters of a deleted or purged task) are among them.
    async fn export_events(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> StoreResult<Vec<EventRecord>>;
    /// Every service's learned durations.
    async fn export_durations(&self) -> StoreResult<Vec<DurationRecord>>;
}

/// Writing what another store exported, idempotently: a row the store has
/// already (the same task ID, event ID or service) is counted as a
/// duplicate and left as it is, so a copy can be run again, or resumed
/// after it stopped halfway, without losing or doubling anything. The
/// PostgreSQL backend implements it; daemons may be running on it (they
/// are woken when work arrives).
#[async_trait]
pub trait Import: Send + Sync {
    /// Stores the tasks whose IDs are not in the store yet, unleased, with
    /// their schedule, poll count and state as given; one transaction.
    async fn import_tasks(&self, tasks: Vec<TaskRecord>) -> StoreResult<Imported>;
    /// Stores the events whose IDs are not in the store yet, each with all
    /// its deliveries (numbered afresh, unleased); an event the store has
    /// already keeps the deliveries it has. One transaction. Import an
    /// event after its task: a delivery settled before its task arrives
    /// would find no task to mark done.
    async fn import_events(&self, events: Vec<EventRecord>) -> StoreResult<Imported>;
    /// Stores the learned durations of services the store has learned
    /// nothing about yet; a service it knows keeps its own.
    async fn import_durations(&self, models: Vec<DurationRecord>) -> StoreResult<Imported>;
}

/// Work another instance made: what a wake-up says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Tasks were enqueued.
    Tasks,
    /// Deliveries became due (new events, replays, deliveries given back).
    Deliveries,
}

/// One live daemon, as the others see it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct InstanceInfo {
    pub id: String,
    pub host: String,
    #[serde(serialize_with = "crate::clock::ser_time")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: Millis,
    #[serde(serialize_with = "crate::clock::ser_time")]
    #[schema(value_type = String, format = DateTime)]
    pub heartbeat_at: Millis,
}

/// A whole backend: every role. See the module docs for the rules every
/// backend keeps; `testing` holds the suite that checks them.
pub trait Store: PollQueue + DeliveryQueue + ReadModel + Admin + Coordination + 'static {}

impl<T: PollQueue + DeliveryQueue + ReadModel + Admin + Coordination + 'static> Store for T {}
