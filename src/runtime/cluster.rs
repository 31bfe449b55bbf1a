//! Keeping this daemon's place among others on a shared store: a heartbeat
//! every [`EVERY`] (live for [`TTL`]), its share of the upstream budget
//! worked out from the live daemons, and the leadership of the periodic
//! work taken or kept. A newcomer waits one heartbeat before it polls, so
//! the others have shrunk their share by then: together they never go over
//! the budget.
//!
//! May call: `cluster`, `store` (coordination), `poll::upstream`, `metrics`,
//! `clock`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::{Millis, SharedClock};
use crate::cluster::Cluster;
use crate::poll::upstream::UpstreamClient;
use crate::store::Coordination;

/// How often this daemon says it is alive and renews its leadership.
pub const EVERY: Duration = Duration::from_secs(2);
/// How long a heartbeat and a leadership last without renewal: a killed
/// daemon's share and leadership move to the others within this.
pub const TTL: Duration = Duration::from_secs(8);

fn ms(d: Duration) -> Millis {
    d.as_millis() as Millis
}

/// Heartbeats, budget share and leadership, until `shutdown`; then leaves
/// the live set so the others take over at once.
pub(super) async fn run(
    cluster: Arc<Cluster>,
    store: Arc<dyn Coordination>,
    upstream: Arc<UpstreamClient>,
    metrics: Arc<crate::metrics::Metrics>,
    clock: SharedClock,
    shutdown: CancellationToken,
) {
    let mut first = true;
    loop {
        let now = clock.now_ms();
        let mut me = cluster.me.clone();
        me.heartbeat_at = now;
        match store.heartbeat(now, me, ms(TTL)).await {
            Ok(live) => {
                let others = live.iter().any(|i| i.id != cluster.me.id);
                cluster.set_live(live);
                upstream.set_share(cluster.live().len(), cluster.rank());
                metrics.instances.set(cluster.live().len() as i64);
                // A newcomer beside others waits one round, so they have
                // taken the smaller share before it polls.
                if !first || !others {
                    cluster.set_ready();
                }
                first = false;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot record this daemon's heartbeat; keeping its last share")
            }
        }
        match store.lead(now, cluster.me.id.clone(), ms(TTL)).await {
            Ok(term) => {
                if term.is_some() != cluster.is_leader() {
                    match term {
                        Some(t) => tracing::info!(term = t, "this daemon leads the periodic work"),
                        None => tracing::info!("another daemon leads the periodic work"),
                    }
                }
                cluster.set_leading(term);
                metrics.leader.set(term.is_some() as i64);
            }
            Err(e) => {
                // Without a renewal the lease may lapse: stop leading now
                // rather than overlap with a new leader for long.
                tracing::warn!(error = %e, "cannot renew leadership; standing down");
                cluster.set_leading(None);
                metrics.leader.set(0);
            }
        }
        match store.leader(now).await {
            Ok(l) => cluster.set_leader(l.or_else(|| {
                cluster
                    .is_leader()
                    .then(|| (cluster.me.id.clone(), cluster.term()))
            })),
            Err(e) => tracing::debug!(error = %e, "cannot read the leader"),
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    cluster.set_leading(None);
    if let Err(e) = store.leave(cluster.me.id.clone()).await {
        tracing::debug!(error = %e, "cannot leave the live set; its heartbeat will lapse");
    }
}
