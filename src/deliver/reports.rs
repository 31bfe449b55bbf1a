//! Recording attempt results: reports collected and written in batches,
//! one store call each, retried (never dropped) when the store fails.
//!
//! May call: `store`, `clock`, `metrics`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use crate::clock::SharedClock;
use crate::store::{DeliveryQueue, DeliveryReport};

/// Collects attempt reports and writes them in batches, one transaction
/// each. A failed write is retried (the reports stay in memory) so a store
/// hiccup does not turn into re-deliveries.
pub(super) async fn write_reports(
    metrics: Arc<crate::metrics::Metrics>,
    clock: SharedClock,
    store: Arc<dyn DeliveryQueue>,
    mut rx: mpsc::Receiver<DeliveryReport>,
    wake: Arc<Notify>,
) {
    let mut buf = Vec::with_capacity(1024);
    while rx.recv_many(&mut buf, 1024).await > 0 {
        let batch = std::mem::take(&mut buf);
        let mut delay = Duration::from_millis(100);
        loop {
            let started = std::time::Instant::now();
            let recorded = store.record_deliveries(clock.now_ms(), batch.clone()).await;
            metrics.store_call("record_deliveries", started);
            match recorded {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = %e, reports = batch.len(), "cannot record delivery results; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        wake.notify_one();
    }
}
