//! Tasks and the simulator's mutable state: task specs, implicit tasks drawn
//! from the seed, and the one mutex that guards everything.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::SimArgs;
use crate::faults::{Bucket, FaultKind, Faults};
use crate::ids::{hash_str, mix, random_uuid, unit};
use crate::stats::Stats;

/// How a task ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    Succeeded,
    Failed,
    FailedString,
    ItemError,
    FailedUnfinished,
    Hiccup,
    Never,
}

/// What `response` looks like before any item has data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RunningShape {
    Missing,
    Null,
    Empty,
    Ack,
}

/// Vocabulary of item states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StateWords {
    Standard,
    Alt,
}

/// Body of `POST /_sim/tasks`: every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TaskSpec {
    pub(crate) id: Option<String>,
    pub(crate) service: Option<String>,
    pub(crate) outcome: Option<Outcome>,
    pub(crate) duration_ms: Option<u64>,
    pub(crate) items: Option<u8>,
    pub(crate) running_shape: Option<RunningShape>,
    pub(crate) state_words: Option<StateWords>,
}

/// One simulated upstream task.
#[derive(Debug, Clone)]
pub(crate) struct Task {
    pub(crate) id: String,
    pub(crate) service: String,
    pub(crate) outcome: Outcome,
    pub(crate) duration_ms: u64,
    pub(crate) items: u8,
    pub(crate) running_shape: RunningShape,
    pub(crate) state_words: StateWords,
    pub(crate) created_ms: u64,
    /// Seed of the task's stable pseudo-random fields.
    pub(crate) key: u64,
    pub(crate) polls: u64,
    pub(crate) hiccup_done: bool,
}

/// Everything mutable, behind one mutex.
#[derive(Debug)]
pub(crate) struct SimState {
    pub(crate) tasks: HashMap<String, Task>,
    pub(crate) stats: Stats,
    pub(crate) faults: Faults,
    pub(crate) bucket: Option<Bucket>,
    pub(crate) in_flight: usize,
    pub(crate) rng: StdRng,
}

impl SimState {
    pub(crate) fn new(args: &SimArgs) -> Self {
        Self {
            tasks: HashMap::new(),
            stats: Stats::default(),
            faults: Faults {
                rate: args.fault_rate,
                kinds: args.faults.clone(),
                script: VecDeque::new(),
                slow_ms: args.slow_ms,
            },
            bucket: args.rate_limit.map(|rate| Bucket {
                rate,
                tokens: rate.max(1.0),
                last: Instant::now(),
            }),
            in_flight: 0,
            rng: StdRng::seed_from_u64(args.seed),
        }
    }

    /// Picks the fault for this request: scripted first, then random.
    pub(crate) fn next_fault(&mut self) -> Option<FaultKind> {
        if let Some(kind) = self.faults.script.pop_front() {
            return Some(kind);
        }
        if self.faults.rate > 0.0 && self.rng.r#gen::<f64>() < self.faults.rate {
            let pool: &[FaultKind] = if self.faults.kinds.is_empty() {
                &FaultKind::ALL
            } else {
                &self.faults.kinds
            };
            return Some(pool[self.rng.gen_range(0..pool.len())]);
        }
        None
    }
}

/// Immutable options plus the mutable state.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) args: SimArgs,
    pub(crate) state: Mutex<SimState>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The known task, or one created at first sight from hash(seed, id),
    /// or `None` for IDs the upstream never knows.
    pub(crate) fn lookup<'a>(
        &self,
        st: &'a mut SimState,
        id: &str,
        service: &str,
        now: u64,
    ) -> Option<&'a mut Task> {
        if !st.tasks.contains_key(id) {
            let task = self.implicit_task(id, service, now)?;
            st.tasks.insert(id.to_owned(), task);
        }
        st.tasks.get_mut(id)
    }

    pub(crate) fn implicit_task(&self, id: &str, service: &str, now: u64) -> Option<Task> {
        let a = &self.args;
        let key = hash_str(a.seed, id);
        if id.starts_with("missing-") || unit(mix(key, 1)) < a.unknown_rate {
            return None;
        }
        let (lo, hi) = (
            a.min_duration_ms.min(a.max_duration_ms),
            a.max_duration_ms.max(a.min_duration_ms),
        );
        let outcome = if unit(mix(key, 2)) < a.fail_rate {
            [Outcome::Failed, Outcome::FailedString, Outcome::ItemError][(mix(key, 3) % 3) as usize]
        } else {
            Outcome::Succeeded
        };
        let shapes = [
            RunningShape::Ack,
            RunningShape::Missing,
            RunningShape::Null,
            RunningShape::Empty,
        ];
        Some(Task {
            id: id.to_owned(),
            service: service.to_owned(),
            outcome,
            duration_ms: lo + mix(key, 4) % (hi - lo + 1),
            items: 1 + (mix(key, 5) % 2) as u8,
            running_shape: shapes[(mix(key, 6) % 4) as usize],
            state_words: StateWords::Standard,
            created_ms: now,
            key,
            polls: 0,
            hiccup_done: false,
        })
    }

    pub(crate) fn task_from_spec(&self, spec: TaskSpec, now: u64) -> Task {
        let id = spec.id.unwrap_or_else(random_uuid);
        Task {
            key: hash_str(self.args.seed, &id),
            id,
            service: spec.service.unwrap_or_else(|| "producer".to_owned()),
            outcome: spec.outcome.unwrap_or(Outcome::Succeeded),
            duration_ms: spec.duration_ms.unwrap_or(1000),
            items: spec.items.unwrap_or(1).clamp(1, 4),
            running_shape: spec.running_shape.unwrap_or(RunningShape::Ack),
            state_words: spec.state_words.unwrap_or(StateWords::Standard),
            created_ms: now,
            polls: 0,
            hiccup_done: false,
        }
    }
}

/// Decrements the in-flight count when the request ends (or is cancelled).
pub(crate) struct InFlight(pub(crate) Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
    }
}
