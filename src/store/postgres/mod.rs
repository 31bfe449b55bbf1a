//! The shared backend: one PostgreSQL schema that several daemons use at
//! once. It keeps the SQLite backend's answers, fencing, purge and orphan
//! rules (the conformance suite checks both), and adds what sharing needs:
//!
//! - Claims lock the rows they lease with `FOR UPDATE SKIP LOCKED` in one
//!   statement, so concurrent claimers never wait on or get the same row;
//!   a crashed instance's leases simply expire (no take-back at start).
//! - Task claim numbers come from a sequence that only grows, delivery IDs
//!   from an identity: a stale worker's write matches no row.
//! - Writes that decide whether an event is settled (attempt reports,
//!   replays, resumes, deletes) first lock the task and event rows, in that
//!   order, so two instances settling the last two deliveries of one event
//!   cannot both miss the other's (each statement would see the other's row
//!   still pending under READ COMMITTED).
//! - Delivery claims take a transaction-scoped advisory lock per schema
//!   before counting each webhook's leased deliveries: the per-webhook cap
//!   holds across instances.
//! - NOTIFY on new tasks and newly due deliveries; one LISTEN connection
//!   per store turns them into [`Wake`]s.
//! - Live instances and one leader with a term, in unlogged tables.
//! - What another store exported (`taskhook store copy`) comes in through
//!   [`Import`] (`import`), idempotently.
//!
//! Owns: `conn` (URL, TLS, pool), `listen` (the LISTEN session), the
//! migrations, the SQL. May call: `store` (the traits and values),
//! `clock`, `redact`.

mod admin;
mod conn;
mod coord;
mod import;
mod listen;
mod queue;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::sync::Arc;

use deadpool_postgres::{Object, Pool};

use super::*;

/// This backend's schema migrations, in order; the `taskhook_migrations`
/// table lists those applied.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/v1.sql"),
    include_str!("migrations/v2.sql"),
    include_str!("migrations/v3.sql"),
    include_str!("migrations/v4.sql"),
    include_str!("migrations/v5.sql"),
];

/// Advisory-lock class of the migration (the object is the schema's
/// hash): two instances starting together migrate one after the other.
const MIGRATION_LOCK: i32 = 0x7468_6d67;
/// Advisory-lock class of delivery claims (the object is the schema's
/// hash): claims of one schema count leased deliveries one at a time.
const DELIVERY_CLAIM_LOCK: i32 = 0x7468_646c;

/// NOTIFY channel for enqueued tasks; the payload is the schema.
const TASKS_CHANNEL: &str = "taskhook_tasks";
/// NOTIFY channel for deliveries that became due; the payload is the schema.
const DELIVERIES_CHANNEL: &str = "taskhook_deliveries";

/// How to connect: the pool's size and the schema. The URL says the rest.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Connections the store keeps open at most (the LISTEN session is one
    /// more).
    pub pool_size: usize,
    /// The schema holding the tables; `None`: the URL's `search_path`, else
    /// `public`. Created if missing.
    pub schema: Option<String>,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            pool_size: 8,
            schema: None,
        }
    }
}

/// The PostgreSQL store. Cheap to clone; the LISTEN session stops when the
/// last clone is dropped.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

/// What every clone shares.
struct Inner {
    pool: Pool,
    schema: String,
    listener: listen::Listener,
    /// The instance this store serves, once its first heartbeat named it:
    /// leases it takes carry it, so others can give them back if it dies.
    me: std::sync::RwLock<Option<String>>,
}

impl PostgresStore {
    /// Connects to `url`, creates the schema if needed and brings it to this
    /// version's layout (once, whoever else starts at the same time). The
    /// URL keys taskhook reads itself (`sslmode`: `disable`, `require`,
    /// `verify-full`; `sslrootcert`; `search_path`) are described in
    /// `conn::target`; every connection gets `application_name=taskhook`
    /// (unless the URL names one) and a 30 s
    /// `idle_in_transaction_session_timeout`.
    /// Unreachable servers are [`StoreError::Unavailable`]; bad URLs, wrong
    /// credentials and a schema written by a newer taskhook are
    /// [`StoreError::Fatal`].
    pub async fn connect(url: &str, opts: PostgresOptions) -> StoreResult<PostgresStore> {
        let target = conn::target(url, opts.schema.as_deref())?;
        let pool = conn::pool(&target, opts.pool_size)?;
        let mut client = pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => at_connect(e),
            e => StoreError::unavailable(Chained(e)),
        })?;
        if let Err(e) = migrate(&mut client, &target.schema).await {
            // Not back to the pool with its transaction possibly open.
            drop(Object::take(client));
            return Err(e);
        }
        drop(client);
        let listener = listen::spawn(target.clone());
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                pool,
                schema: target.schema,
                listener,
                me: Default::default(),
            }),
        })
    }

    /// The instance leases are taken for (`None` before the first heartbeat).
    fn me(&self) -> Option<String> {
        self.inner.me.read().expect("instance lock").clone()
    }

    /// The schema this store works in.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The schema version of the store (the migrations applied).
    pub async fn schema_version(&self) -> StoreResult<i64> {
        let c = self.conn().await?;
        let row = c
            .query_one(
                "SELECT coalesce(max(version), 0)::bigint FROM taskhook_migrations",
                &[],
            )
            .await
            .map_err(db)?;
        Ok(row.get(0))
    }

    /// A pooled connection.
    async fn conn(&self) -> StoreResult<Object> {
        self.inner
            .pool
            .get()
            .await
            .map_err(|e| StoreError::unavailable(Chained(e)))
    }

    /// A pooled connection for a transaction this code opens itself.
    async fn tx(&self) -> StoreResult<Tx> {
        Ok(Tx {
            obj: Some(self.conn().await?),
        })
    }
}

/// Applies the missing migrations in one transaction holding the migration
/// lock; refuses a schema written by a newer taskhook.
async fn migrate(client: &mut Object, schema: &str) -> StoreResult<()> {
    let fatal_or_transient = at_connect;
    let tx = client.transaction().await.map_err(fatal_or_transient)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&MIGRATION_LOCK, &schema],
    )
    .await
    .map_err(fatal_or_transient)?;
    let exists = tx
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await
        .map_err(fatal_or_transient)?
        .is_some();
    // The name is a checked plain identifier (see `conn`).
    if !exists {
        tx.batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .map_err(fatal_or_transient)?;
    }
    tx.batch_execute(&format!(
        "SET LOCAL search_path TO {schema}; \
         CREATE TABLE IF NOT EXISTS taskhook_migrations ( \
           version integer PRIMARY KEY, taskhook text NOT NULL)"
    ))
    .await
    .map_err(fatal_or_transient)?;
    let version: i64 = tx
        .query_one(
            "SELECT coalesce(max(version), 0)::bigint FROM taskhook_migrations",
            &[],
        )
        .await
        .map_err(fatal_or_transient)?
        .get(0);
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::Fatal(format!(
            "store schema {schema}: written by a newer taskhook (schema version {version}, \
             this one knows up to {known}); upgrade taskhook or point store.url elsewhere"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let v = i as i32 + 1;
        let step = |e: tokio_postgres::Error| {
            StoreError::Fatal(format!(
                "store schema {schema}: migrating to schema version {v}: {}",
                describe(&e)
            ))
        };
        tx.batch_execute(sql).await.map_err(step)?;
        tx.execute(
            "INSERT INTO taskhook_migrations (version, taskhook) VALUES ($1, $2)",
            &[&v, &env!("CARGO_PKG_VERSION")],
        )
        .await
        .map_err(step)?;
    }
    tx.commit().await.map_err(fatal_or_transient)
}

/// A failure while connecting: fatal when no retry can fix it (bad
/// credentials, no such database, no permission), else transient.
fn at_connect(e: tokio_postgres::Error) -> StoreError {
    if conn::is_misconfiguration(&e) {
        StoreError::Fatal(format!("store: {}", describe(&e)))
    } else {
        StoreError::unavailable(Chained(e))
    }
}

/// An error with the server's message and detail, when there is one.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => e.to_string(),
    }
}

/// A failed statement: transient, with its cause kept.
fn db(e: tokio_postgres::Error) -> StoreError {
    StoreError::unavailable(Chained(e))
}

/// A driver or pool error shown with its causes ("db error: ERROR:
/// deadlock detected"; the driver's own text stops at "db error"), and
/// kept whole as the source.
#[derive(Debug)]
struct Chained<E>(E);

impl<E: std::error::Error + 'static> std::fmt::Display for Chained<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Chained<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// A pooled connection inside a transaction this code opened (often with
/// `BEGIN` pipelined in front of the statements). Dropped before
/// [`Tx::done`] (an error, or the caller gave up waiting), the connection
/// is closed rather than returned to the pool, so no one else ever runs in
/// a transaction left open; the server rolls it back.
struct Tx {
    obj: Option<Object>,
}

impl Tx {
    fn client(&self) -> &Object {
        self.obj.as_ref().expect("present until done")
    }

    /// The transaction ended (committed or rolled back): the connection
    /// goes back to the pool.
    fn done(mut self) {
        self.obj.take();
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if let Some(obj) = self.obj.take() {
            drop(Object::take(obj));
        }
    }
}

const WATCHING: i16 = 0;
const DELIVERING: i16 = 1;

const PENDING: i16 = 0;
const DELIVERED: i16 = 1;
const FAILED: i16 = 2;
const GONE: i16 = 3;
const REMOVED: i16 = 4;

fn state_code(s: DeliveryState) -> i16 {
    match s {
        DeliveryState::Pending => PENDING,
        DeliveryState::Delivered => DELIVERED,
        DeliveryState::Failed => FAILED,
        DeliveryState::Gone => GONE,
        DeliveryState::WebhookRemoved => REMOVED,
    }
}

fn state_of(code: i16) -> DeliveryState {
    match code {
        PENDING => DeliveryState::Pending,
        DELIVERED => DeliveryState::Delivered,
        FAILED => DeliveryState::Failed,
        REMOVED => DeliveryState::WebhookRemoved,
        _ => DeliveryState::Gone,
    }
}

/// A counter for an `integer` column (they never come near 2³¹).
fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// A counter read back from an `integer` column.
fn count(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

/// Splits `items` into rounds in which no key appears twice, keeping their
/// order: one statement cannot update a row twice, so a batch that names a
/// row twice is applied round after round, as one after the other.
fn rounds<T, K: Eq + std::hash::Hash>(items: Vec<T>, key: impl Fn(&T) -> K) -> Vec<Vec<T>> {
    let mut rounds: Vec<(std::collections::HashSet<K>, Vec<T>)> = Vec::new();
    for item in items {
        let k = key(&item);
        // The round after the last one that holds this key.
        let at = rounds
            .iter()
            .rposition(|(keys, _)| keys.contains(&k))
            .map_or(0, |i| i + 1);
        if at == rounds.len() {
            rounds.push(Default::default());
        }
        rounds[at].0.insert(k);
        rounds[at].1.push(item);
    }
    rounds.into_iter().map(|(_, items)| items).collect()
}

#[cfg(test)]
mod tests;
