//! This daemon among others on a shared store: who it is, which daemons are
//! live, whether it leads the periodic work (purge, expiry), and whether its
//! share of the upstream budget is known yet. On SQLite it is alone: always
//! the leader, the whole budget.
//!
//! May call: `store` (the instance type), `clock`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use crate::clock::Millis;
use crate::store::InstanceInfo;

/// One daemon's view of the cluster.
#[derive(Debug)]
pub struct Cluster {
    pub me: InstanceInfo,
    leading: AtomicBool,
    term: AtomicI64,
    /// Its share of the budget is set: it may poll.
    ready: AtomicBool,
    live: Mutex<Vec<InstanceInfo>>,
    leader: Mutex<Option<(String, i64)>>,
}

impl Cluster {
    /// This daemon, started at `now`: `host-pid-random`.
    pub fn new(now: Millis) -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let id = format!(
            "{host}-{}-{:04x}",
            std::process::id(),
            rand::random::<u16>()
        );
        Cluster {
            me: InstanceInfo {
                id,
                host,
                started_at: now,
                heartbeat_at: now,
            },
            leading: AtomicBool::new(false),
            term: AtomicI64::new(0),
            ready: AtomicBool::new(false),
            live: Mutex::new(Vec::new()),
            leader: Mutex::new(None),
        }
    }

    /// True while this daemon leads the periodic work.
    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    /// The leadership term this daemon holds, 0 when it does not lead.
    pub fn term(&self) -> i64 {
        self.term.load(Ordering::Acquire)
    }

    pub(crate) fn set_leading(&self, term: Option<i64>) {
        self.term.store(term.unwrap_or(0), Ordering::Release);
        self.leading.store(term.is_some(), Ordering::Release);
    }

    /// True once this daemon knows its share of the upstream budget.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// The live daemons, oldest first (this one among them).
    pub fn live(&self) -> Vec<InstanceInfo> {
        self.live.lock().expect("cluster lock").clone()
    }

    pub(crate) fn set_live(&self, live: Vec<InstanceInfo>) {
        *self.live.lock().expect("cluster lock") = live;
    }

    /// The leader as last seen: (instance, term).
    pub fn leader(&self) -> Option<(String, i64)> {
        self.leader.lock().expect("cluster lock").clone()
    }

    pub(crate) fn set_leader(&self, l: Option<(String, i64)>) {
        *self.leader.lock().expect("cluster lock") = l;
    }

    /// This daemon's place among the live ones (0: the oldest).
    pub fn rank(&self) -> usize {
        self.live
            .lock()
            .expect("cluster lock")
            .iter()
            .position(|i| i.id == self.me.id)
            .unwrap_or(0)
    }
}
