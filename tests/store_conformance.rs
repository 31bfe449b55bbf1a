//! The store conformance suite (`taskhook::store::testing`) on the SQLite
//! backend. SQLite-only cases (opening, restarts, bad files) live beside the
//! backend, in `src/store/sqlite/`.

use std::sync::Arc;

use taskhook::config::SyncMode;
use taskhook::store::testing::Fresh;
use taskhook::store::{SqliteStore, Store};

async fn sqlite() -> Fresh {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("t.db"), SyncMode::Normal, 0).unwrap());
    Some((store, Box::new(dir)))
}

taskhook::store_conformance!(sqlite);
