//! Tasks and the simulator's mutable state: task specs, implicit tasks drawn
//! from the seed, and the one mutex that guards everything.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::SimArgs;
use crate::callbacks::{Callbacks, Plan, parse_callback_url};
use crate::faults::{Bucket, FaultKind, Faults};
use crate::ids::{hash_str, mix, random_uuid, unit};
use crate::records::place_id;
use crate::services::{ANY, Family, Profile, profile};
use crate::stats::Stats;

/// How a task ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// Every result arrives.
    Succeeded,
    /// The upstream reports a structured error (`error: {code, message}`).
    Failed,
    /// Items family: the error is a bare string.
    FailedString,
    /// Items family: the last item ends in an error state, the others succeed.
    ItemError,
    /// Items family: a failure answer that never gets `finished_at`.
    FailedUnfinished,
    /// Items family: one transient failure answer half-way, then success.
    Hiccup,
    /// Stays running for ever.
    Never,
}

impl Outcome {
    /// The outcome a task of `family` really gets. The items family knows
    /// every outcome; the other families have one success shape and one
    /// failure shape, so the items-only outcomes map to the nearest:
    /// `failed_string`, `item_error` and `failed_unfinished` to `failed`
    /// (each is a failure of the task, or of part of it), `hiccup` to
    /// `succeeded` (a hiccup is transient; the task ends well).
    pub(crate) fn for_family(self, family: Family) -> Outcome {
        match (family, self) {
            (Family::Items, o) => o,
            (_, Outcome::FailedString | Outcome::ItemError | Outcome::FailedUnfinished) => {
                Outcome::Failed
            }
            (_, Outcome::Hiccup) => Outcome::Succeeded,
            (_, o) => o,
        }
    }
}

/// Items family: what `response` looks like before any item has data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RunningShape {
    /// No `response` key.
    Missing,
    /// `response: null`.
    Null,
    /// `response: {}`.
    Empty,
    /// `response: {"success": true, "task_id"}`.
    Ack,
}

/// Items family: vocabulary of item states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StateWords {
    /// `succeeded` / `error`.
    Standard,
    /// `completed` and `complete` / `failed`.
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
    /// The record served once `duration_ms` has passed (replay); `{}` makes
    /// the ID unknown to the upstream.
    pub(crate) record: Option<Value>,
    /// Where to POST the final body when the task settles (`--callback-url`
    /// otherwise; `""`: no callback even then).
    pub(crate) callback_url: Option<String>,
    /// Overrides `--callback-delay-ms`.
    pub(crate) callback_delay_ms: Option<u64>,
    /// Overrides `--callback-loss-rate` (0 to 1).
    pub(crate) callback_loss: Option<f64>,
    /// Overrides `--callback-duplicate-rate` (0 to 1).
    pub(crate) callback_duplicate: Option<f64>,
}

/// One simulated upstream task.
#[derive(Debug, Clone)]
pub(crate) struct Task {
    pub(crate) id: String,
    /// The service (path name) it belongs to; polled under another, it is unknown.
    pub(crate) service: String,
    /// How that service speaks.
    pub(crate) profile: &'static Profile,
    pub(crate) outcome: Outcome,
    pub(crate) duration_ms: u64,
    pub(crate) items: u8,
    pub(crate) running_shape: RunningShape,
    pub(crate) state_words: StateWords,
    /// A replayed final record, the ID already written in.
    pub(crate) record: Option<Arc<Value>>,
    pub(crate) created_ms: u64,
    /// Seed of the task's stable pseudo-random fields.
    pub(crate) key: u64,
    pub(crate) polls: u64,
    pub(crate) hiccup_done: bool,
    /// The callback it makes when it settles, if any.
    pub(crate) callback: Option<Arc<Plan>>,
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
                retry_after_s: 1,
                delay_ms: 0,
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
    pub(crate) callbacks: Callbacks,
}

impl Shared {
    pub(crate) fn new(args: SimArgs) -> Self {
        Self {
            state: Mutex::new(SimState::new(&args)),
            callbacks: Callbacks::new(args.callback_concurrency),
            args,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How `service` speaks: its table row, the producer shape under
    /// `--any-service`, or `None` (the path does not exist).
    pub(crate) fn profile(&self, service: &str) -> Option<&'static Profile> {
        profile(service).or(self.args.any_service.then_some(&ANY))
    }

    /// The known task of `service`, or one created at first sight from
    /// hash(seed, id), or `None` for IDs the upstream does not know: never
    /// known, known under another service, or replaying `{}`.
    pub(crate) fn lookup<'a>(
        &self,
        st: &'a mut SimState,
        id: &str,
        service: &str,
        now: u64,
    ) -> Option<&'a mut Task> {
        if !st.tasks.contains_key(id) {
            let task = self.implicit_task(id, service, now)?;
            self.callbacks.schedule(&task);
            st.tasks.insert(id.to_owned(), task);
        }
        st.tasks
            .get_mut(id)
            .filter(|t| t.service == service && !t.replays_nothing())
    }

    pub(crate) fn implicit_task(&self, id: &str, service: &str, now: u64) -> Option<Task> {
        let a = &self.args;
        let profile = self.profile(service)?;
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
        let items = if profile.has_items() {
            1 + (mix(key, 5) % 2) as u8
        } else {
            1
        };
        Some(Task {
            id: id.to_owned(),
            service: service.to_owned(),
            profile,
            outcome: outcome.for_family(profile.family),
            duration_ms: lo + mix(key, 4) % (hi - lo + 1),
            items,
            running_shape: shapes[(mix(key, 6) % 4) as usize],
            state_words: StateWords::Standard,
            record: None,
            created_ms: now,
            callback: a
                .callback_url
                .clone()
                .map(|url| Arc::new(self.plan(url, None, None, None, key))),
            key,
            polls: 0,
            hiccup_done: false,
        })
    }

    /// The callback plan of the task of hash `key`: the spec's knobs, or
    /// the command line's.
    fn plan(
        &self,
        url: String,
        delay_ms: Option<u64>,
        loss: Option<f64>,
        duplicate: Option<f64>,
        key: u64,
    ) -> Plan {
        let a = &self.args;
        Plan::new(
            url,
            delay_ms.unwrap_or(a.callback_delay_ms),
            loss.unwrap_or(a.callback_loss_rate),
            duplicate.unwrap_or(a.callback_duplicate_rate),
            key,
        )
    }

    /// The task `spec` asks for, or why it cannot exist.
    pub(crate) fn task_from_spec(&self, spec: TaskSpec, now: u64) -> Result<Task, String> {
        let service = spec.service.unwrap_or_else(|| "producer".to_owned());
        let profile = self.profile(&service).ok_or_else(|| {
            format!("unknown service `{service}` (start the simulator with --any-service to serve any name)")
        })?;
        let id = spec.id.unwrap_or_else(random_uuid);
        let record = match spec.record {
            None => None,
            Some(Value::Object(o)) => Some(Arc::new(place_id(profile, Value::Object(o), &id))),
            Some(_) => return Err("`record` must be a JSON object".to_owned()),
        };
        let items = if profile.has_items() {
            spec.items.unwrap_or(1).clamp(1, 4)
        } else {
            1
        };
        for (name, rate) in [
            ("callback_loss", spec.callback_loss),
            ("callback_duplicate", spec.callback_duplicate),
        ] {
            if rate.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
                return Err(format!("`{name}` must be between 0 and 1"));
            }
        }
        let key = hash_str(self.args.seed, &id);
        let callback = match spec.callback_url.or_else(|| self.args.callback_url.clone()) {
            Some(url) if url.is_empty() => None,
            Some(url) => {
                let url = parse_callback_url(&url)?;
                let plan = self.plan(
                    url,
                    spec.callback_delay_ms,
                    spec.callback_loss,
                    spec.callback_duplicate,
                    key,
                );
                Some(Arc::new(plan))
            }
            None => None,
        };
        Ok(Task {
            key,
            callback,
            id,
            service,
            profile,
            outcome: spec
                .outcome
                .unwrap_or(Outcome::Succeeded)
                .for_family(profile.family),
            duration_ms: spec.duration_ms.unwrap_or(1000),
            items,
            running_shape: spec.running_shape.unwrap_or(RunningShape::Ack),
            state_words: spec.state_words.unwrap_or(StateWords::Standard),
            record,
            created_ms: now,
            polls: 0,
            hiccup_done: false,
        })
    }
}

impl Task {
    /// Whether the task replays `{}`: the upstream answers nothing for it.
    pub(crate) fn replays_nothing(&self) -> bool {
        self.record
            .as_deref()
            .and_then(Value::as_object)
            .is_some_and(serde_json::Map::is_empty)
    }
}

/// Decrements the in-flight count when the request ends (or is cancelled).
pub(crate) struct InFlight(pub(crate) Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
    }
}
