//! Why a store call failed, with its cause kept.
//!
//! May call: nothing of taskhook's.

use std::sync::Arc;

/// Why a store call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot take the request right now (disk full, read-only,
    /// locked, the database unreachable): transient, retry later.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// The store cannot be used at all (corrupt, written by a newer
    /// version, misconfigured): the daemon must not start.
    #[error("{0}")]
    Fatal(String),
}

impl StoreError {
    /// A transient failure with `cause` kept as its source.
    pub fn unavailable(cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Unavailable(Arc::new(cause))
    }

    /// A transient failure described in words.
    pub fn unavailable_msg(msg: impl Into<String>) -> Self {
        StoreError::Unavailable(Arc::new(Message(msg.into())))
    }

    /// True when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// A cause that is only words.
#[derive(Debug)]
struct Message(String);

impl std::fmt::Display for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

pub type StoreResult<T> = Result<T, StoreError>;
