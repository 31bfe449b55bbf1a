//! Property tests for the pure rules: the retry and poll schedules, the
//! upstream back-off and the terminal rule (checked against an oracle that
//! restates the product contract independently of `terminal.rs`).

use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use taskhook::deliver::retry::retry_after_attempt;
use taskhook::outcome::Outcome;
use taskhook::poll::schedule::{
    MAX_UPSTREAM_PAUSE, POLL_JITTER, PollSchedule, RETRY_JITTER, upstream_backoff,
};
use taskhook::poll::terminal::{Verdict, assess};
use taskhook::profile::Profiles;

// ---------------------------------------------------------------------------
// Helpers

const HOUR_MS: u64 = 3_600_000;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `d × k` in seconds, as an exact-enough float bound.
fn scaled(d: Duration, k: f64) -> f64 {
    d.as_secs_f64() * k
}

/// `lo <= x <= hi`, with a nanosecond of slack for float rounding.
fn within(x: Duration, lo: f64, hi: f64) -> bool {
    let x = x.as_secs_f64();
    let slack = 1e-9 + 1e-12 * hi.abs();
    x >= lo - slack && x <= hi + slack
}

fn after(r: Option<Duration>) -> Duration {
    r.expect("unexpected dead letter")
}

/// A non-decreasing schedule of 1 to 10 steps, each 1 ms to 10 h.
fn schedule() -> impl Strategy<Value = Vec<Duration>> {
    prop::collection::vec(1..=10 * HOUR_MS, 1..=10).prop_map(|mut v| {
        v.sort_unstable();
        v.into_iter().map(ms).collect()
    })
}

/// A uniform draw, with both ends of [0, 1] among the cases.
fn draw() -> impl Strategy<Value = f64> {
    prop_oneof![1 => Just(0.0), 1 => Just(1.0), 8 => 0.0..1.0f64]
}

// ---------------------------------------------------------------------------
// Delivery retry schedule

proptest! {
    #[test]
    fn retry_delay_stays_within_the_jitter_of_its_step(
        (sched, attempt) in schedule().prop_flat_map(|s| {
            let n = s.len() as u32;
            (Just(s), 1..=n)
        }),
        r in draw(),
    ) {
        let step = sched[attempt as usize - 1];
        let d = after(retry_after_attempt(&sched, attempt, None, r));
        prop_assert!(
            within(d, scaled(step, 1.0 - RETRY_JITTER), scaled(step, 1.0 + RETRY_JITTER)),
            "attempt {attempt}: {d:?} outside ±10% of {step:?}"
        );
    }

    #[test]
    fn retry_delays_never_shrink_for_a_fixed_draw(sched in schedule(), r in draw()) {
        let mut prev = Duration::ZERO;
        for attempt in 1..=sched.len() as u32 {
            let d = after(retry_after_attempt(&sched, attempt, None, r));
            prop_assert!(d >= prev, "attempt {attempt}: {d:?} < {prev:?}");
            prev = d;
        }
    }

    #[test]
    fn past_the_schedule_is_dead_letter(
        sched in schedule(),
        beyond in prop_oneof![0u32..100, Just(u32::MAX - 20)],
        r in draw(),
        retry_after in proptest::option::of((0..=20 * HOUR_MS).prop_map(ms)),
    ) {
        let len = sched.len() as u32;
        for attempt in [len + 1, len + 1 + beyond, u32::MAX] {
            prop_assert_eq!(
                retry_after_attempt(&sched, attempt, retry_after, r),
                None,
                "attempt {}", attempt
            );
        }
    }

    #[test]
    fn receiver_retry_after_is_clamped_between_step_and_last(
        (sched, attempt) in schedule().prop_flat_map(|s| {
            let n = s.len() as u32;
            (Just(s), 1..=n)
        }),
        retry_after in prop_oneof![
            Just(Duration::ZERO),
            (0..=20 * HOUR_MS).prop_map(ms),
            (0..=u64::MAX / 2).prop_map(Duration::from_nanos),
            Just(Duration::MAX),
        ],
        r in draw(),
    ) {
        let step = sched[attempt as usize - 1];
        let last = *sched.last().unwrap();
        let d = after(retry_after_attempt(&sched, attempt, Some(retry_after), r));
        let lo = scaled(step, 1.0 - RETRY_JITTER).min(last.as_secs_f64());
        let hi = scaled(step, 1.0 + RETRY_JITTER).max(last.as_secs_f64());
        prop_assert!(
            within(d, lo, hi),
            "attempt {attempt}, Retry-After {retry_after:?}: {d:?} outside [{lo}, {hi}] s"
        );
    }
}

// ---------------------------------------------------------------------------
// Poll schedule

fn poll_schedule() -> impl Strategy<Value = PollSchedule> {
    (
        0..=HOUR_MS,
        1..=10 * HOUR_MS,
        0..=10 * HOUR_MS,
        prop_oneof![1 => Just(1.0), 1 => Just(10.0), 8 => 1.0..=10.0f64],
    )
        .prop_map(|(first, interval, extra, factor)| PollSchedule {
            first_poll_after: ms(first),
            interval: ms(interval),
            max_interval: ms(interval + extra),
            backoff_factor: factor,
        })
}

proptest! {
    #[test]
    fn poll_delays_grow_and_stay_under_the_cap(
        p in poll_schedule(),
        far in prop_oneof![60u32..2000, Just(u32::MAX)],
    ) {
        let mut prev = Duration::ZERO;
        for polls in (1..=60).chain([far]) {
            let d = p.delay_after(polls);
            prop_assert!(d >= prev, "poll {polls}: {d:?} < {prev:?} for {p:?}");
            prop_assert!(d <= p.max_interval, "poll {polls}: {d:?} over the cap for {p:?}");
            prop_assert!(d >= p.interval.min(p.max_interval), "poll {polls}: {d:?} under the interval");
            prev = d;
        }
    }

    #[test]
    fn poll_jitter_only_shortens_by_up_to_ten_percent(
        p in poll_schedule(),
        polls in prop_oneof![1u32..80, Just(u32::MAX)],
        r in draw(),
    ) {
        let d = p.delay_after(polls);
        let j = p.jittered_delay_after(polls, r);
        prop_assert!(j <= d, "{j:?} > {d:?}");
        prop_assert!(
            within(j, scaled(d, 1.0 - POLL_JITTER), d.as_secs_f64()),
            "{j:?} below 90% of {d:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Upstream back-off

proptest! {
    #[test]
    fn upstream_backoff_is_bounded_unless_retry_after_is_longer(
        failures in prop_oneof![1u32..64, Just(u32::MAX)],
        initial in (1..=60_000u64).prop_map(ms),
        max in (1..=HOUR_MS).prop_map(ms),
        r in draw(),
        retry_after in proptest::option::of(prop_oneof![
            (0..=2 * HOUR_MS).prop_map(ms),
            Just(Duration::MAX),
        ]),
    ) {
        let d = upstream_backoff(failures, retry_after, r, initial, max);
        let bound = scaled(max, 1.0 + RETRY_JITTER);
        match retry_after {
            Some(ra) if ra.as_secs_f64() > bound => {
                // The longer Retry-After wins, capped, but never below the back-off.
                let capped = ra.min(MAX_UPSTREAM_PAUSE);
                prop_assert!(d >= capped, "{d:?} shorter than {capped:?}");
                prop_assert!(d == capped || within(d, 0.0, bound), "{d:?}");
            }
            _ => prop_assert!(
                within(d, 0.0, bound),
                "{d:?} over 110% of {max:?} (failures {failures}, Retry-After {retry_after:?})"
            ),
        }
        if retry_after.is_none() {
            // Without a Retry-After it is the doubling step, ± jitter.
            let exp = failures.saturating_sub(1).min(30);
            let step = initial.saturating_mul(1 << exp).min(max);
            prop_assert!(
                within(d, scaled(step, 1.0 - RETRY_JITTER), scaled(step, 1.0 + RETRY_JITTER)),
                "{d:?} not within ±10% of {step:?}"
            );
        }
    }
}

proptest! {
    /// With `backoff_max` within the cap on upstream pauses, a Retry-After
    /// can only lengthen the pause. (With a larger `backoff_max`, a long
    /// Retry-After is cut to `MAX_UPSTREAM_PAUSE`, below the plain back-off.)
    #[test]
    fn upstream_retry_after_never_shortens_the_pause(
        failures in 1u32..64,
        initial in (1..=60_000u64).prop_map(ms),
        max in (1..=270_000u64).prop_map(ms),
        r in draw(),
        retry_after in prop_oneof![(0..=2 * HOUR_MS).prop_map(ms), Just(Duration::MAX)],
    ) {
        let plain = upstream_backoff(failures, None, r, initial, max);
        let d = upstream_backoff(failures, Some(retry_after), r, initial, max);
        prop_assert!(d >= plain, "{d:?} < {plain:?} with Retry-After {retry_after:?}");
        prop_assert!(d <= plain.max(MAX_UPSTREAM_PAUSE));
    }
}

// ---------------------------------------------------------------------------
// Terminal rule (the producer profile: items in `response.data[]` with a
// `state` word, a URL settling an item that has none)

const SUCCESS: [&str; 9] = [
    "succeeded",
    "succeed",
    "success",
    "successful",
    "completed",
    "complete",
    "done",
    "ready",
    "finished",
];
const FAILURE: [&str; 10] = [
    "failed",
    "failure",
    "fail",
    "error",
    "errored",
    "cancelled",
    "canceled",
    "rejected",
    "timeout",
    "expired",
];
const RUNNING: [&str; 4] = ["pending", "running", "queued", "processing"];

#[derive(Debug, Clone)]
enum StateWord {
    Missing,
    NotAString,
    Text(String),
}

#[derive(Debug, Clone)]
enum Progress {
    Missing,
    Text(String),
    Number(u32),
}

#[derive(Debug, Clone)]
struct Item {
    state: StateWord,
    progress: Progress,
    url: bool,
}

#[derive(Debug, Clone)]
enum Data {
    Missing,
    Null,
    Array(Vec<Item>),
}

#[derive(Debug, Clone)]
enum ErrorField {
    Missing,
    Null,
    Object,
    Text(String),
}

#[derive(Debug, Clone)]
enum Response {
    Missing,
    Null,
    Empty,
    Ack,
    Object {
        success: Option<bool>,
        error: ErrorField,
        data: Data,
    },
}

#[derive(Debug, Clone)]
enum FinishedAt {
    Missing,
    Null,
    Number(f64),
    Text,
}

#[derive(Debug, Clone)]
struct Rec {
    finished_at: FinishedAt,
    response: Response,
}

fn word() -> impl Strategy<Value = StateWord> {
    let known: Vec<&str> = SUCCESS
        .iter()
        .chain(&FAILURE)
        .chain(&RUNNING)
        .copied()
        .collect();
    prop_oneof![
        6 => prop::sample::select(known).prop_map(|w| StateWord::Text(w.to_string())),
        1 => prop::sample::select(&["Succeeded", " FAILED ", "Running"][..])
            .prop_map(|w| StateWord::Text(w.to_string())),
        2 => "[a-z_]{0,10}".prop_map(StateWord::Text),
        2 => Just(StateWord::Missing),
        1 => Just(StateWord::NotAString),
    ]
}

fn progress() -> impl Strategy<Value = Progress> {
    prop_oneof![
        Just(Progress::Missing),
        (0u32..=100).prop_map(|n| Progress::Text(format!("{n}%"))),
        Just(Progress::Text(String::new())),
        (0u32..=100).prop_map(Progress::Number),
    ]
}

fn item() -> impl Strategy<Value = Item> {
    (word(), progress(), any::<bool>()).prop_map(|(state, progress, url)| Item {
        state,
        progress,
        url,
    })
}

fn response() -> impl Strategy<Value = Response> {
    let data = prop_oneof![
        1 => Just(Data::Missing),
        1 => Just(Data::Null),
        6 => prop::collection::vec(item(), 0..=4).prop_map(Data::Array),
    ];
    let error = prop_oneof![
        3 => Just(ErrorField::Missing),
        1 => Just(ErrorField::Null),
        1 => Just(ErrorField::Object),
        1 => "[a-z ]{0,8}".prop_map(ErrorField::Text),
    ];
    prop_oneof![
        1 => Just(Response::Missing),
        1 => Just(Response::Null),
        1 => Just(Response::Empty),
        1 => Just(Response::Ack),
        8 => (proptest::option::of(any::<bool>()), error, data)
            .prop_map(|(success, error, data)| Response::Object { success, error, data }),
    ]
}

fn record() -> impl Strategy<Value = Rec> {
    let finished_at = prop_oneof![
        4 => Just(FinishedAt::Missing),
        1 => Just(FinishedAt::Null),
        2 => (0.0..2e9f64).prop_map(FinishedAt::Number),
        1 => Just(FinishedAt::Text),
    ];
    (finished_at, response()).prop_map(|(finished_at, response)| Rec {
        finished_at,
        response,
    })
}

fn item_json(i: &Item) -> Value {
    let mut o = Map::new();
    o.insert("id".into(), json!("item"));
    match &i.state {
        StateWord::Missing => {}
        StateWord::NotAString => {
            o.insert("state".into(), json!(7));
        }
        StateWord::Text(w) => {
            o.insert("state".into(), json!(w));
        }
    }
    match &i.progress {
        Progress::Missing => {}
        Progress::Text(s) => {
            o.insert("progress".into(), json!(s));
        }
        Progress::Number(n) => {
            o.insert("progress".into(), json!(n));
        }
    }
    o.insert(
        "audio_url".into(),
        if i.url {
            json!("https://cdn.example/a.mp3")
        } else {
            Value::Null
        },
    );
    Value::Object(o)
}

fn record_json(r: &Rec) -> Value {
    let mut o = Map::new();
    o.insert("id".into(), json!("task"));
    // A platform record always carries its request (with URLs, which are
    // inputs, never results).
    o.insert(
        "request".into(),
        json!({"image_url": "https://in.example/i.png", "callback_url": "https://cb.example/"}),
    );
    match r.finished_at {
        FinishedAt::Missing => {}
        FinishedAt::Null => {
            o.insert("finished_at".into(), Value::Null);
        }
        FinishedAt::Number(f) => {
            o.insert("finished_at".into(), json!(f));
        }
        FinishedAt::Text => {
            o.insert("finished_at".into(), json!("2026-01-01T00:00:00Z"));
        }
    }
    let response = match &r.response {
        Response::Missing => None,
        Response::Null => Some(Value::Null),
        Response::Empty => Some(json!({})),
        Response::Ack => Some(json!({"success": true, "task_id": "task"})),
        Response::Object {
            success,
            error,
            data,
        } => {
            let mut resp = Map::new();
            resp.insert("task_id".into(), json!("task"));
            if let Some(s) = success {
                resp.insert("success".into(), json!(s));
            }
            match error {
                ErrorField::Missing => {}
                ErrorField::Null => {
                    resp.insert("error".into(), Value::Null);
                }
                ErrorField::Object => {
                    resp.insert(
                        "error".into(),
                        json!({"code": "api_error", "message": "failed"}),
                    );
                }
                ErrorField::Text(s) => {
                    resp.insert("error".into(), json!(s));
                }
            }
            match data {
                Data::Missing => {}
                Data::Null => {
                    resp.insert("data".into(), Value::Null);
                }
                Data::Array(items) => {
                    resp.insert(
                        "data".into(),
                        Value::Array(items.iter().map(item_json).collect()),
                    );
                }
            }
            Some(Value::Object(resp))
        }
    };
    if let Some(resp) = response {
        o.insert("response".into(), resp);
    }
    Value::Object(o)
}

/// What an item's word means, `None` when it has no string state.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Class {
    Success,
    Failure,
    Running,
    Unknown,
}

fn class_of(i: &Item) -> Option<Class> {
    let StateWord::Text(w) = &i.state else {
        return None;
    };
    let w = w.trim().to_lowercase();
    Some(if FAILURE.contains(&w.as_str()) {
        Class::Failure
    } else if SUCCESS.contains(&w.as_str()) {
        Class::Success
    } else if RUNNING.contains(&w.as_str()) || w == "unknown" || w == "generating" {
        Class::Running
    } else {
        Class::Unknown
    })
}

/// An item without a word settles once it has its URL and its progress,
/// if it shows one, is not below 100%.
fn has_result(i: &Item) -> bool {
    let below = match &i.progress {
        Progress::Missing => false,
        Progress::Text(s) => s
            .trim_end_matches('%')
            .parse::<u32>()
            .is_ok_and(|n| s.ends_with('%') && n < 100),
        Progress::Number(n) => *n > 1 && *n < 100,
    };
    i.url && !below
}

/// The contract's rule (§2), restated over the generator's own model.
fn oracle(r: &Rec) -> Verdict {
    let (success, error, items): (Option<bool>, bool, &[Item]) = match &r.response {
        Response::Missing | Response::Null | Response::Empty => (None, false, &[]),
        Response::Ack => (Some(true), false, &[]),
        Response::Object {
            success,
            error,
            data,
        } => (
            *success,
            match error {
                ErrorField::Missing | ErrorField::Null => false,
                ErrorField::Object => true,
                ErrorField::Text(s) => !s.trim().is_empty(),
            },
            match data {
                Data::Array(items) => items,
                _ => &[],
            },
        ),
    };
    let settled = |i: &Item| match class_of(i) {
        Some(Class::Success) | Some(Class::Failure) => true,
        Some(_) => false,
        None => has_result(i),
    };
    let all_terminal = !items.is_empty() && items.iter().all(settled);
    let any_failed = items.iter().any(|i| class_of(i) == Some(Class::Failure));
    let failure = (success == Some(false) && error)
        || (any_failed
            && (all_terminal || !matches!(r.finished_at, FinishedAt::Missing | FinishedAt::Null)));
    let finished = !matches!(r.finished_at, FinishedAt::Missing | FinishedAt::Null);
    if finished {
        return Verdict::Finished(if failure || success == Some(false) {
            Outcome::Failed
        } else {
            Outcome::Succeeded
        });
    }
    if failure {
        return Verdict::FailureSighted;
    }
    if all_terminal {
        return Verdict::Finished(Outcome::Succeeded);
    }
    Verdict::Running
}

/// Distinct unknown state words, lower-cased, in order of first appearance.
fn unknown_words(r: &Rec) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Response::Object {
        data: Data::Array(items),
        ..
    } = &r.response
    {
        for i in items {
            if class_of(i) == Some(Class::Unknown)
                && let StateWord::Text(w) = &i.state
            {
                let w = w.trim().to_lowercase();
                if !out.contains(&w) {
                    out.push(w);
                }
            }
        }
    }
    out
}

fn profiles() -> Profiles {
    Profiles::new(&Default::default(), true, "producer").unwrap()
}

proptest! {
    #[test]
    fn terminal_rule_matches_the_contract(r in record()) {
        let v = record_json(&r);
        let p = profiles();
        let a = assess(p.get("producer").unwrap(), &v);
        prop_assert_eq!(&a.verdict, &oracle(&r), "record {}", v);
        prop_assert!(!a.state.is_empty(), "empty state label for {}", v);
        prop_assert_eq!(&a.unknown_states, &unknown_words(&r), "record {}", v);
        match &a.verdict {
            Verdict::Finished(o) => prop_assert_eq!(a.state.as_str(), o.as_str()),
            Verdict::FailureSighted => prop_assert_eq!(a.state.as_str(), "failing"),
            Verdict::Running => {}
        }
        // The generic profile (an unknown service) reads the platform
        // record family the same way.
        prop_assert_eq!(&assess(p.generic(), &v).verdict, &a.verdict, "generic, record {}", v);
    }

    #[test]
    fn a_lone_data_object_counts_as_one_item(
        finished in any::<bool>(),
        success in proptest::option::of(any::<bool>()),
        it in item(),
    ) {
        let mut resp = json!({"data": item_json(&it)});
        if let Some(s) = success {
            resp["success"] = json!(s);
        }
        let mut lone = json!({"id": "task", "request": {}, "response": resp});
        if finished {
            lone["finished_at"] = json!(1.0);
        }
        let mut as_array = lone.clone();
        as_array["response"]["data"] = json!([item_json(&it)]);
        let p = profiles();
        let producer = p.get("producer").unwrap();
        prop_assert_eq!(assess(producer, &lone), assess(producer, &as_array));
    }
}

#[test]
fn an_empty_lone_data_object_is_no_item() {
    let p = profiles();
    let producer = p.get("producer").unwrap();
    let a = assess(producer, &json!({"request": {}, "response": {"data": {}}}));
    assert_eq!(a.verdict, Verdict::Running);
    let a = assess(
        producer,
        &json!({"finished_at": 1, "response": {"data": {}}}),
    );
    assert_eq!(a.verdict, Verdict::Finished(Outcome::Succeeded));
}

#[test]
fn a_blank_state_word_still_gets_a_label() {
    // Found by fuzzing: `{"state": ""}` used to give an empty label.
    let p = profiles();
    let producer = p.get("producer").unwrap();
    for w in ["", " "] {
        let a = assess(
            producer,
            &json!({"response": {"data": [{"state": w}, {"id": "x"}]}}),
        );
        assert_eq!(a.verdict, Verdict::Running);
        assert_eq!(a.state, "running");
        let a = assess(
            producer,
            &json!({"response": {"data": [{"state": w, "progress": "50%"}]}}),
        );
        assert_eq!(a.state, "running 50%");
    }
}
