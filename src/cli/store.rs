//! `taskhook store ...`: work on a store directly, without a daemon.
//! `store copy` moves what a SQLite store holds (watched tasks, pending
//! deliveries, dead letters, learned durations) into a PostgreSQL store,
//! so that several daemons can take over its queue.
//!
//! May call: `config`, `store`, `redact`, `clock`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::config::{self, Backend, Config};
use crate::store::{PostgresOptions, PostgresStore, SqliteStore, StoreError};

/// Connections the copy opens to PostgreSQL (the LISTEN session is one
/// more): it writes one page at a time.
const POOL_SIZE: usize = 2;

/// What `store copy` was given; what is missing comes from the
/// configuration.
pub struct CopyArgs {
    pub from: Option<PathBuf>,
    pub to: Option<String>,
    pub config: Option<PathBuf>,
}

/// `taskhook store copy`: opens the SQLite store (refusing one a daemon
/// holds), connects to PostgreSQL (creating or migrating its schema),
/// copies, and prints what it read and what it wrote.
pub async fn copy(args: CopyArgs) -> anyhow::Result<()> {
    let (from, to) = endpoints(args)?;
    let shown_to = crate::redact::password(&to);
    check_url(&to, &shown_to)?;
    if !from.is_file() {
        bail!(
            "--from {}: no SQLite store there (give the store.path of the daemon to migrate)",
            from.display()
        );
    }
    let in_use = crate::store::sqlite::in_use(&from)
        .with_context(|| format!("--from {}: cannot check its lock file", from.display()))?;
    if in_use {
        bail!(
            "--from {}: a running taskhook uses this store (it holds the lock file {}); \
             stop it first (systemctl stop taskhook), so that nothing changes behind the copy",
            from.display(),
            from.with_extension("lock").display()
        );
    }
    let source = open_sqlite(&from).await?;
    let target = PostgresStore::connect(
        &to,
        PostgresOptions {
            pool_size: POOL_SIZE,
            schema: None,
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("--to {shown_to}: {}", plain(e)))?;
    println!(
        "taskhook store copy: from SQLite at {} to PostgreSQL at {shown_to} (schema {})",
        from.display(),
        target.schema()
    );
    std::io::stdout().flush()?;
    let report = crate::store::copy::copy(&source, &target)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "copying to {shown_to}: {}; what was copied stays, run the copy again to finish it",
                plain(e)
            )
        })?;
    for line in report.lines() {
        println!("{line}");
    }
    println!(
        "done: point every daemon at the PostgreSQL store (store.url) and do not start one on \
         {} again, or its tasks would be polled and delivered twice",
        from.display()
    );
    Ok(())
}

/// The SQLite path and the PostgreSQL URL: the flags, else the
/// configuration's `store.path` and `store.url` (with `url_file`,
/// `password_file` and the environment applied). Only `[store]` is
/// checked: the daemon's other secret files (systemd credentials) exist
/// only inside its service.
fn endpoints(args: CopyArgs) -> anyhow::Result<(PathBuf, String)> {
    if let (Some(from), Some(to)) = (&args.from, &args.to) {
        return Ok((from.clone(), to.clone()));
    }
    let file = config::resolve_path(args.config.as_deref());
    let store = Config::load_store(file.as_deref()).map_err(|e| {
        anyhow::anyhow!("invalid configuration (needed for what --from or --to leaves out): {e}")
    })?;
    let from = args.from.unwrap_or_else(|| store.path.clone());
    let to = match args.to {
        Some(to) => to,
        None => match store.backend() {
            Backend::Postgres(url) => url.to_string(),
            Backend::Sqlite(_) => bail!(
                "no PostgreSQL store to copy to: give --to postgres://... or set store.url \
                 (or store.url_file, or TASKHOOK__STORE__URL) in the configuration"
            ),
        },
    };
    Ok((from, to))
}

/// Refuses anything but a `postgres://` URL up front, naming the flag.
fn check_url(url: &str, shown: &str) -> anyhow::Result<()> {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "postgres" | "postgresql") => Ok(()),
        Ok(_) => bail!("--to: must be a postgres:// or postgresql:// URL, got {shown:?}"),
        Err(e) => bail!("--to: invalid URL {shown:?}: {e}"),
    }
}

/// Opens the SQLite store on a blocking thread (it migrates it to this
/// version's schema and takes back the leases its last daemon left, as a
/// daemon starting on it would).
async fn open_sqlite(path: &Path) -> anyhow::Result<SqliteStore> {
    let owned = path.to_path_buf();
    let now = crate::clock::now_ms();
    tokio::task::spawn_blocking(move || {
        SqliteStore::open(&owned, crate::config::SyncMode::Full, now)
    })
    .await
    .context("opening the SQLite store")?
    .map_err(|e| anyhow::anyhow!("--from {}: {}", path.display(), plain(e)))
}

/// A store error in words: a fatal one as its message, a transient one
/// with its causes (its text already carries them).
fn plain(e: StoreError) -> String {
    match e {
        StoreError::Fatal(m) => m,
        e => e.to_string(),
    }
}
