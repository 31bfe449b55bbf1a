//! The systemd watchdog: fed while every worker loop beats.
//!
//! May call: `heartbeat`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::heartbeat::Heartbeat;

/// Feeds the systemd watchdog every `timeout / 2` while every loop has
/// beaten within `timeout`; a stuck loop starves it and systemd restarts us.
pub(super) async fn watchdog(
    timeout: Duration,
    beats: Vec<Heartbeat>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(timeout / 2) => {}
            _ = shutdown.cancelled() => return,
        }
        if beats.iter().all(|b| b.age() < timeout) {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        } else {
            tracing::error!("a worker loop is stuck; not feeding the systemd watchdog");
        }
    }
}
