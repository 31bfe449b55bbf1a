//! Keeping this daemon's place among others on a shared store: a heartbeat
//! every [`EVERY`] (live for [`TTL`]), its share of the upstream budget
//! worked out from the live daemons, and the leadership of the periodic
//! work taken or kept. A newcomer polls only once the others have shrunk
//! their share and their requests begun under the larger one are done
//! ([`Joining`]): together they never go over the budget.
//!
//! May call: `cluster`, `store` (coordination), `poll::upstream`, `metrics`,
//! `clock`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::{Millis, SharedClock};
use crate::cluster::Cluster;
use crate::poll::upstream::UpstreamClient;
use crate::store::{Coordination, InstanceInfo};

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
    let mut joining: Option<Joining> = None;
    loop {
        let now = clock.now_ms();
        let mut me = cluster.me.clone();
        me.heartbeat_at = now;
        match store.heartbeat(now, me, ms(TTL)).await {
            Ok(live) => {
                let ready = joining
                    .get_or_insert_with(|| Joining::beside(&live, &cluster.me.id))
                    .observe(&live);
                cluster.set_live(live);
                upstream.set_share(cluster.live().len(), cluster.rank());
                metrics.instances.set(cluster.live().len() as i64);
                if ready && !cluster.is_ready() {
                    cluster.set_ready();
                    metrics.sharing.set(1);
                }
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

/// A newcomer's wait for room in the budget. The daemons live when it
/// joined must each heartbeat twice after it: the first may have read the
/// live set before the newcomer was in it, the second cannot have, so by
/// then each has shrunk its share. Then one more heartbeat of the
/// newcomer's own, for the requests they began under the larger share.
/// Alone, a daemon polls at once.
#[derive(Debug)]
pub struct Joining {
    /// Each older daemon's heartbeat as last seen, and how often it moved.
    older: HashMap<String, (Millis, u32)>,
    /// Whether the room was there at the last heartbeat.
    room: bool,
}

impl Joining {
    /// The wait of daemon `me`, from the live set its first heartbeat saw.
    pub fn beside(live: &[InstanceInfo], me: &str) -> Joining {
        Joining {
            older: live
                .iter()
                .filter(|i| i.id != me)
                .map(|i| (i.id.clone(), (i.heartbeat_at, 0)))
                .collect(),
            room: false,
        }
    }

    /// Takes one heartbeat's live set; true once this daemon may poll.
    pub fn observe(&mut self, live: &[InstanceInfo]) -> bool {
        // A daemon gone from the live set holds nothing any more.
        self.older.retain(|id, _| live.iter().any(|i| &i.id == id));
        for i in live {
            if let Some((seen, moved)) = self.older.get_mut(&i.id)
                && *seen != i.heartbeat_at
            {
                *seen = i.heartbeat_at;
                *moved += 1;
            }
        }
        let had_room = self.room;
        self.room = self.older.values().all(|(_, moved)| *moved >= 2);
        self.older.is_empty() || (had_room && self.room)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(id: &str, heartbeat_at: Millis) -> InstanceInfo {
        InstanceInfo {
            id: id.into(),
            host: "h".into(),
            started_at: 0,
            heartbeat_at,
        }
    }

    #[test]
    fn a_newcomer_polls_once_the_others_have_made_room() {
        // Alone: at once.
        assert!(Joining::beside(&[at("me", 0)], "me").observe(&[at("me", 0)]));
        // Beside a: a must heartbeat twice, then one more round passes.
        let mut j = Joining::beside(&[at("a", 100), at("me", 150)], "me");
        let rounds = [
            vec![at("a", 100), at("me", 150)],
            vec![at("a", 2_100), at("me", 2_150)],
            vec![at("a", 2_100), at("me", 4_150)], // a is late: no change
            vec![at("a", 4_200), at("me", 6_150)], // a's second: room now
            vec![at("a", 4_200), at("me", 8_150)], // and a round for a's requests
        ];
        let ready: Vec<bool> = rounds.iter().map(|l| j.observe(l)).collect();
        assert_eq!(ready, [false, false, false, false, true]);
        // One that leaves is no longer waited for.
        let mut j = Joining::beside(&[at("a", 0), at("b", 0), at("me", 0)], "me");
        assert!(!j.observe(&[at("a", 0), at("b", 0), at("me", 0)]));
        assert!(!j.observe(&[at("a", 1), at("b", 1), at("me", 1)]));
        assert!(
            !j.observe(&[at("a", 2), at("me", 2)]),
            "b left; a has moved twice"
        );
        assert!(j.observe(&[at("a", 2), at("me", 3)]));
        // A younger daemon joining meanwhile does not hold this one up.
        let mut j = Joining::beside(&[at("a", 0), at("me", 0)], "me");
        for t in 1..=3 {
            let ready = j.observe(&[at("a", t), at("me", t), at("young", t)]);
            assert_eq!(ready, t == 3, "round {t}");
        }
    }
}
