//! Fresh PostgreSQL stores for tests: one new schema per store, dropped
//! with its guard, so tests run in parallel on one database.
//!
//! The server is `TASKHOOK_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). A server that cannot be
//! reached skips the test with one line on stderr, unless `CI` is true:
//! there a missing server fails. A server that answers never skips: any
//! other error (credentials, a missing database, a failed migration)
//! fails the test.
//!
//! May call: the parent module (`conn`, `PostgresStore`).

use std::io::Write;
use std::sync::{Arc, Once};
use std::time::Duration;

use super::conn;
use super::{PostgresOptions, PostgresStore};
use crate::store::Store;
use crate::store::testing::Fresh;

/// Where the test server is named.
pub const URL_VAR: &str = "TASKHOOK_TEST_DATABASE_URL";
/// The test server when [`URL_VAR`] is unset.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The test server's URL.
pub fn url() -> String {
    std::env::var(URL_VAR)
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_URL.into())
}

/// Drops its schema (and everything in it) when dropped.
pub struct SchemaGuard {
    url: String,
    schema: String,
}

impl SchemaGuard {
    /// A guard for `schema` on `url` (which need not exist yet).
    pub fn new(url: String, schema: String) -> Self {
        SchemaGuard { url, schema }
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        // Drop runs inside a test's runtime, which cannot block on itself:
        // a thread of its own does the work.
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                let target = conn::target(&url, Some(&schema)).map_err(|e| e.to_string())?;
                let client = conn::connect_spawned(&target)
                    .await
                    .map_err(|e| e.to_string())?;
                // A store dropped just before its guard may still have a
                // session whose end this (blocked) runtime never got to
                // send: end whatever still holds a lock in the schema.
                client
                    .execute(
                        "SELECT pg_terminate_backend(l.pid) FROM pg_locks l \
                         JOIN pg_class c ON c.oid = l.relation \
                         JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE n.nspname = $1 AND l.pid <> pg_backend_pid()",
                        &[&schema],
                    )
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                client
                    .batch_execute(&format!(
                        "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {schema} CASCADE"
                    ))
                    .await
                    .map_err(|e| format!("{e:?}"))
            })
        })
        .join();
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "warning: test schema {} was not dropped: {e}",
                    self.schema
                );
            }
            Err(_) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "warning: test schema {} was not dropped",
                    self.schema
                );
            }
        }
    }
}

/// Whether the test server can be reached: `false` (after one line on
/// stderr) when it cannot and this is not CI. Panics in CI, and when the
/// server answers with an error.
pub async fn reachable() -> bool {
    static SKIPPED: Once = Once::new();
    let url = url();
    let target = conn::target(&url, None)
        .unwrap_or_else(|e| panic!("{URL_VAR} is not a usable PostgreSQL URL: {e}"));
    let attempt =
        tokio::time::timeout(Duration::from_secs(5), conn::connect_spawned(&target)).await;
    let unreachable = match attempt {
        Ok(Ok(_client)) => return true,
        Ok(Err(e)) if conn::is_unreachable(&e) => chain(&e),
        Ok(Err(e)) => panic!(
            "PostgreSQL at {} answered with an error: {}",
            redacted(&url),
            chain(&e)
        ),
        Err(_) => "no answer within 5 s".to_string(),
    };
    if is_ci() {
        panic!(
            "PostgreSQL not reachable at {} ({unreachable}); CI needs the server \
             (set {URL_VAR})",
            redacted(&url)
        );
    }
    SKIPPED.call_once(|| {
        // Straight to the process's stderr: the test harness captures
        // `eprintln!` of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: PostgreSQL not reachable at {}; set {URL_VAR} (postgres tests need a server)",
            redacted(&url)
        );
    });
    false
}

fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The URL with its password hidden.
fn redacted(url: &str) -> String {
    match ::url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("redacted"));
            }
            u.to_string()
        }
        Err(_) => "(not a URL)".into(),
    }
}

/// An error with its causes: "error connecting to server: Connection refused".
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A new schema name, unique enough for parallel tests.
pub fn schema_name() -> String {
    format!("th_test_{:016x}", rand::random::<u64>())
}

/// A store on a fresh schema with its guard, or `None` when the server is
/// not there (see the module docs).
pub async fn fresh(pool_size: usize) -> Option<(PostgresStore, SchemaGuard)> {
    if !reachable().await {
        return None;
    }
    let guard = SchemaGuard {
        url: url(),
        schema: schema_name(),
    };
    let store = open(&guard, pool_size).await;
    Some((store, guard))
}

/// Another store on `guard`'s schema (another "instance").
pub async fn open(guard: &SchemaGuard, pool_size: usize) -> PostgresStore {
    PostgresStore::connect(
        &guard.url,
        PostgresOptions {
            pool_size,
            schema: Some(guard.schema.clone()),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("connecting a test store to schema {}: {e}", guard.schema))
}

/// The conformance suite's factory.
pub async fn fresh_store() -> Fresh {
    let (store, guard) = fresh(4).await?;
    let store: Arc<dyn Store> = Arc::new(store);
    Some((store, Box::new(guard)))
}
