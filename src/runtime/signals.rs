//! The stop signals.
//!
//! May call: nothing of taskhook's.

use std::future::Future;

/// Resolves on SIGTERM or SIGINT (Ctrl-C). The signals are caught from the
/// moment this is called, not from the future's first poll: call it before
/// announcing readiness (an address, systemd's READY), or a supervisor
/// that signals at once would find the default action (termination) still
/// in place. Must be called within a tokio runtime.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
