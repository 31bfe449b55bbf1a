//! The store conformance suite (`taskhook::store::testing`) on every
//! backend: SQLite, and PostgreSQL on a fresh schema per case. Backend-only
//! cases live beside each backend (`src/store/sqlite/`,
//! `src/store/postgres/`).
//!
//! PostgreSQL is `TASKHOOK_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). When it cannot be reached
//! its cases pass after one `SKIPPED:` line on stderr, except under
//! `CI=true`, where they fail.

mod sqlite {
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
}

mod postgres {
    use taskhook::store::testing::Fresh;

    async fn postgres() -> Fresh {
        taskhook::store::postgres::testing::fresh_store().await
    }

    taskhook::store_conformance!(postgres);
}
