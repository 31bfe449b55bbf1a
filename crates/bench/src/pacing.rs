//! The pacing scenarios of `taskhook bench`: what budget-aware polling
//! spends upstream and what lag it buys.
//!
//! - `floor`: taskhook with its default pacing beside a poller that asks one
//!   ID per request on the very schedule taskhook's configuration gives
//!   (first poll after `poll.first_poll_after`, then every `poll.interval`),
//!   both at once, each against its own simulator serving the same task
//!   durations: upstream requests per task and detection lag (finish →
//!   webhook received for taskhook, finish → detected for the baseline).
//! - `callbacks`: the same load with the simulator calling the daemon's
//!   `POST /v1/callbacks/{service}` as each task settles, 10 % of the calls
//!   lost. The simulator says which callbacks arrived (`GET
//!   /_sim/callbacks`): the lag of those tasks against one mean upstream
//!   round trip (the daemon's own measure), the lag of the rest against
//!   `floor`'s, and requests per task against the run without callbacks.
//! - `sweep`: 1,000, 10,000 and 100,000 watched tasks at the default budget:
//!   the interval in force, upstream requests/s and lag p99 of each, plotted
//!   in `pacing-sweep.svg` beside the results. Each daemon starts in its
//!   steady state (the tasks' next polls spread over one interval, as after
//!   a long run; written into its store while it is stopped), so the figures
//!   need no warm-up. A point whose interval is longer than the bench can
//!   wait gives its lag as expected from the poll period it measured.
//!
//! The daemons keep the defaults of everything pacing depends on
//! (`poll.strategy`, `poll.interval`, `poll.first_poll_after`,
//! `upstream.max_requests_per_second`, `batch_size`,
//! `max_concurrent_requests`); what they used is read back with `taskhook
//! check-config` and printed. The smoke run (`--quick`) shortens the
//! interval to fit a few seconds and checks only that everything completes
//! and is delivered.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{
    Daemon, Figure, Harness, Plan, daemon_config, fig, limited_upstream, now_ms, percentile,
    signature_counts, signatures, taskhook_binary, thousands,
};

/// The share of the request budget the daemon plans to use for polling
/// (`poll::pace::UTILISATION`): the sweep places its seeded polls by it.
const UTILISATION: f64 = 0.8;

/// The file the sweep's chart is written to, beside the results.
pub(crate) const SWEEP_SVG: &str = "pacing-sweep.svg";

// ---- the pacing in force -------------------------------------------------------

/// The settings pacing depends on, as the daemon reads its configuration
/// file (`taskhook check-config` prints the effective configuration).
#[derive(Debug, Clone, PartialEq)]
struct Pacing {
    strategy: String,
    interval: Duration,
    first_poll_after: Duration,
    learn_first_poll: bool,
    budget: f64,
    batch: usize,
    concurrent: usize,
    callbacks_per_source: u64,
}

impl Pacing {
    /// Runs `taskhook check-config -c FILE` and reads its answer.
    fn of(config: &Path) -> anyhow::Result<Pacing> {
        let out = std::process::Command::new(taskhook_binary()?)
            .args(["check-config", "-c"])
            .arg(config)
            .output()
            .context("running taskhook check-config")?;
        if !out.status.success() {
            bail!(
                "taskhook check-config refused the bench's file: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Pacing::parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// Reads the settings from an effective configuration (TOML).
    fn parse(toml: &str) -> anyhow::Result<Pacing> {
        let get = |section: &str, key: &str| {
            setting(toml, section, key).with_context(|| format!("no {section}.{key} in {toml}"))
        };
        let duration = |key: &str| -> anyhow::Result<Duration> {
            let v = get("poll", key)?;
            humantime::parse_duration(&v).with_context(|| format!("poll.{key} = {v:?}"))
        };
        Ok(Pacing {
            strategy: get("poll", "strategy")?,
            interval: duration("interval")?,
            first_poll_after: duration("first_poll_after")?,
            learn_first_poll: get("poll", "learn_first_poll")? == "true",
            budget: get("upstream", "max_requests_per_second")?.parse()?,
            batch: get("upstream", "batch_size")?.parse()?,
            concurrent: get("upstream", "max_concurrent_requests")?.parse()?,
            callbacks_per_source: get("api", "callbacks_per_second_per_source")?.parse()?,
        })
    }

    /// The interval the daemon gives every one of `watched` tasks: the
    /// floor while the budget covers them, longer in proportion beyond.
    fn interval_for(&self, watched: usize) -> Duration {
        let requests = watched.div_ceil(self.batch.max(1)) as f64;
        let need = requests / self.interval.as_secs_f64();
        let usable = self.budget * UTILISATION;
        if need <= usable {
            self.interval
        } else {
            self.interval.mul_f64(need / usable)
        }
    }

    /// One line for the table.
    fn describe(&self) -> String {
        format!(
            "poll.strategy {}, interval {}, first poll {}{}; {} requests/s, {} IDs per request, {} in flight",
            self.strategy,
            secs(self.interval),
            secs(self.first_poll_after),
            if self.learn_first_poll {
                " (then learned)"
            } else {
                ""
            },
            self.budget,
            self.batch,
            self.concurrent,
        )
    }
}

/// The value of `key` in `[section]` of a TOML text, unquoted; enough for
/// the flat keys `check-config` prints.
fn setting(toml: &str, section: &str, key: &str) -> Option<String> {
    let mut current = "";
    for line in toml.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim();
            continue;
        }
        if current != section {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if k.trim() == key {
            let v = v.trim();
            return Some(v.trim_matches('"').to_string());
        }
    }
    None
}

/// A duration as the table shows it: "5 s", "500 ms", "1.5 s".
fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        let s = d.as_secs_f64();
        if s.fract() == 0.0 {
            format!("{s:.0} s")
        } else {
            format!("{s:.1} s")
        }
    }
}

/// The value of a metric line `NAME VALUE` (`NAME` with its labels, if any)
/// in Prometheus text; 0 when absent.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// p50 and p99 of `values` (any order).
fn p50_p99(values: &[i64]) -> (i64, i64) {
    let mut v = values.to_vec();
    v.sort_unstable();
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

// ---- the load ------------------------------------------------------------------

/// The tasks `floor` and `callbacks` watch, and the poll settings the
/// smoke run shortens.
#[derive(Debug, Clone, Copy)]
struct Load {
    tasks: usize,
    /// Durations, spread evenly between these (ms).
    shortest_ms: u64,
    longest_ms: u64,
    /// `[poll]` settings replacing the defaults (the smoke run's).
    poll: &'static str,
}

impl Load {
    fn of(plan: &Plan) -> Load {
        if plan.quick {
            Load {
                tasks: 100,
                shortest_ms: 600,
                longest_ms: 1_100,
                poll: "[poll]\ninterval = \"500ms\"\nfirst_poll_after = \"500ms\"\n",
            }
        } else {
            // Durations from the default first poll (10 s) to two intervals
            // later; 1,500 tasks take 6 of the 8 requests/s polling plans
            // to use at the default budget, so every task is polled at
            // the floor.
            Load {
                tasks: 1_500,
                shortest_ms: 10_000,
                longest_ms: 20_000,
                poll: "",
            }
        }
    }

    /// Task `i`'s duration: spread evenly, in a scrambled order.
    fn duration_ms(&self, i: usize) -> u64 {
        let span = (self.longest_ms - self.shortest_ms).max(1);
        self.shortest_ms + (i as u64 * 7919) % span
    }

    /// IDs and simulator specs; `callback` is the URL each task calls
    /// when it settles, if any.
    fn specs(&self, prefix: &str, callback: Option<&str>) -> (Vec<String>, Vec<Value>) {
        let ids: Vec<String> = (0..self.tasks).map(|i| format!("{prefix}-{i}")).collect();
        let specs = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let mut s = json!({"id": id, "duration_ms": self.duration_ms(i)});
                if let Some(url) = callback {
                    s["callback_url"] = url.into();
                }
                s
            })
            .collect();
        (ids, specs)
    }

    fn describe(&self) -> String {
        format!(
            "{} tasks, durations {}–{}",
            self.tasks,
            secs(Duration::from_millis(self.shortest_ms)),
            secs(Duration::from_millis(self.longest_ms))
        )
    }
}

/// Fraction of the simulator's callbacks lost in `callbacks`.
const CALLBACK_LOSS: f64 = 0.1;

/// Callbacks per second one source may make in `callbacks`: the simulator
/// sends every callback from one loopback address (the real upstream from
/// many), and its bursts of a hundred a second would otherwise be capped by
/// `api.callbacks_per_second_per_source` (50 by default).
const CALLBACKS_PER_SOURCE: u64 = 1_000;

/// What one daemon run over the load measured.
struct Leg {
    pacing: Pacing,
    /// Upstream requests, and IDs per request.
    requests: f64,
    ids_per_request: f64,
    /// Per task: finish → webhook received (ms).
    lags: HashMap<String, i64>,
    /// The daemon's mean upstream request duration (ms).
    mean_rtt_ms: f64,
    /// Deliveries whose signature verified, and refused.
    signed: (u64, u64),
    /// The simulator's record of each task's callback (with callbacks).
    callbacks: Value,
    /// The daemon's `taskhook_callbacks_total` by result, and the tasks hinted.
    callback_results: Vec<(String, f64)>,
    hinted: f64,
}

impl Leg {
    fn requests_per_task(&self) -> f64 {
        self.requests / self.lags.len().max(1) as f64
    }
}

/// A daemon started over the load, waiting for its tasks.
struct Prepared {
    daemon: Daemon,
    sim: String,
    pacing: Pacing,
    with_callbacks: bool,
}

impl Prepared {
    /// Starts a simulator and a daemon with the pacing defaults (the
    /// load's `[poll]` settings aside); `with_callbacks`: the simulator
    /// calls the daemon back as each task settles, [`CALLBACK_LOSS`] lost.
    /// `budget`, when given, replaces `upstream.max_requests_per_second`.
    async fn start(
        h: &Harness,
        load: &Load,
        name: &str,
        with_callbacks: bool,
        budget: Option<u32>,
    ) -> anyhow::Result<Prepared> {
        let sim = h
            .sim(taskhook_sim::SimArgs {
                callback_loss_rate: if with_callbacks { CALLBACK_LOSS } else { 0.0 },
                ..limited_upstream()
            })
            .await?;
        let extra = match budget {
            Some(b) => format!("max_requests_per_second = {b}\n{}", load.poll),
            None => load.poll.to_string(),
        };
        let cfg = daemon_config(h, name, &sim, &extra, 1)?;
        if with_callbacks {
            let text = std::fs::read_to_string(&cfg)?.replace(
                "[api]\n",
                &format!("[api]\ncallbacks_per_second_per_source = {CALLBACKS_PER_SOURCE}\n"),
            );
            std::fs::write(&cfg, text)?;
        }
        let pacing = Pacing::of(&cfg)?;
        Ok(Prepared {
            daemon: Daemon::start(&cfg)?,
            sim,
            pacing,
            with_callbacks,
        })
    }

    /// Creates the load's tasks, enqueues them, waits for every delivery
    /// and reads what the run cost.
    async fn run(&self, h: &Harness, load: &Load, prefix: &str) -> anyhow::Result<Leg> {
        h.reset();
        h.seen
            .track_lag
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let hook = format!("{}/v1/callbacks/producer", self.daemon.api);
        let (ids, specs) = load.specs(prefix, self.with_callbacks.then_some(hook.as_str()));
        h.create_sim_tasks(&self.sim, specs).await?;
        h.enqueue(&self.daemon.api, &ids, 1_000).await?;
        let limit = Duration::from_millis(load.longest_ms)
            + self.pacing.first_poll_after
            + self.pacing.interval * 4
            + Duration::from_secs(30);
        h.wait_for(prefix, 0, load.tasks as u64, limit).await?;
        h.seen
            .track_lag
            .store(false, std::sync::atomic::Ordering::Relaxed);
        // Every callback has been answered (a lost one counts at once).
        let started = Instant::now();
        let stats = loop {
            let stats = h.sim_stats(&self.sim).await?;
            if stats["callbacks_pending"].as_u64().unwrap_or(0) == 0 {
                break stats;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("{prefix}: callbacks still pending after 30 s: {stats}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let callbacks = if self.with_callbacks {
            h.http
                .get(format!("{}/_sim/callbacks", self.sim))
                .send()
                .await?
                .json::<Value>()
                .await?["callbacks"]
                .take()
        } else {
            Value::Null
        };
        let metrics = h
            .http
            .get(format!("{}/metrics", self.daemon.api))
            .send()
            .await?
            .text()
            .await?;
        let lags = h
            .seen
            .lag
            .lock()
            .expect("lock")
            .iter()
            .map(|(id, (at, fin))| (id.clone(), at - fin))
            .collect();
        let callback_results = [
            "hinted",
            "rate_limited",
            "overflow",
            "no_id",
            "unknown_service",
        ]
        .iter()
        .map(|r| {
            let name = format!("taskhook_callbacks_total{{result=\"{r}\"}}");
            (r.to_string(), metric(&metrics, &name))
        })
        .collect();
        Ok(Leg {
            pacing: self.pacing.clone(),
            requests: stats["requests"].as_f64().unwrap_or(0.0),
            ids_per_request: stats["mean_ids_per_request"].as_f64().unwrap_or(0.0),
            lags,
            mean_rtt_ms: 1000.0
                * metric(&metrics, "taskhook_upstream_request_duration_seconds_sum")
                / metric(&metrics, "taskhook_upstream_request_duration_seconds_count").max(1.0),
            signed: signature_counts(h),
            callbacks,
            callback_results,
            hinted: metric(&metrics, "taskhook_callback_hinted_tasks_total"),
        })
    }

    fn stop(self) -> anyhow::Result<()> {
        self.daemon.stop()
    }
}

/// One-ID-per-request polling of the load on taskhook's schedule: each task
/// asked at `first`, then every `every` after, until it is finished.
/// Returns the upstream requests made and each task's lag (finish →
/// detected, ms).
async fn baseline(
    h: &Harness,
    load: &Load,
    first: Duration,
    every: Duration,
) -> anyhow::Result<(f64, Vec<i64>)> {
    let sim = h.sim(taskhook_sim::SimArgs::default()).await?;
    let (ids, specs) = load.specs("base", None);
    h.create_sim_tasks(&sim, specs).await?;
    let start = tokio::time::Instant::now();
    let lags = Arc::new(Mutex::new(Vec::with_capacity(ids.len())));
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    let mut pollers = Vec::with_capacity(ids.len());
    for id in ids {
        let (http, sim, lags, gate) = (h.http.clone(), sim.clone(), lags.clone(), gate.clone());
        pollers.push(tokio::spawn(async move {
            let mut due = start + first;
            loop {
                tokio::time::sleep_until(due).await;
                due += every;
                let _turn = gate.acquire().await.expect("never closed");
                let answer = http
                    .post(format!("{sim}/producer/tasks"))
                    .json(&json!({"id": id, "action": "retrieve"}))
                    .send()
                    .await;
                let Ok(answer) = answer else { continue };
                let r: Value = answer.json().await.unwrap_or(Value::Null);
                if let Some(fin) = r["finished_at"].as_f64() {
                    let lag = now_ms() - (fin * 1000.0) as i64;
                    lags.lock().expect("lock").push(lag);
                    return;
                }
            }
        }));
    }
    for p in pollers {
        p.await?;
    }
    let requests = h.sim_stats(&sim).await?["requests"].as_f64().unwrap_or(0.0);
    let lags = lags.lock().expect("lock").clone();
    Ok((requests, lags))
}

/// The no-callback figures `callbacks` compares with: `floor`'s, when it
/// ran first in this process.
#[derive(Debug, Clone, Copy)]
struct Reference {
    requests_per_task: f64,
    p99_ms: i64,
}

static NO_CALLBACKS: Mutex<Option<Reference>> = Mutex::new(None);

/// A target's cell and whether it holds: the smoke run shows the full
/// run's target and checks none of these (it checks delivery only).
fn target(plan: &Plan, text: String, holds: bool) -> (String, Option<bool>) {
    if plan.quick {
        (format!("{text} (full run)"), None)
    } else {
        (text, Some(holds))
    }
}

fn checked(
    scenario: &'static str,
    name: &str,
    value: String,
    (target, holds): (String, Option<bool>),
) -> Figure {
    fig(scenario, name, value, &target, holds)
}

// ---- (a) taskhook against a one-ID-per-request poller at the same floor -------------

pub(crate) async fn floor(h: &Harness, plan: &Plan, out: &mut Vec<Figure>) -> anyhow::Result<()> {
    let load = Load::of(plan);
    let th = Prepared::start(h, &load, "floor", false, None).await?;
    let pacing = th.pacing.clone();
    let (leg, base) = tokio::join!(
        th.run(h, &load, "floor"),
        baseline(h, &load, pacing.first_poll_after, pacing.interval)
    );
    th.stop()?;
    let (leg, (base_requests, base_lags)) = (leg?, base?);
    let n = load.tasks as f64;
    let lags: Vec<i64> = leg.lags.values().copied().collect();
    let (p50, p99) = p50_p99(&lags);
    let (b50, b99) = p50_p99(&base_lags);
    let per_task = leg.requests_per_task();
    let base_per_task = base_requests / n;
    let ratio = base_per_task / per_task.max(1e-9);
    *NO_CALLBACKS.lock().expect("lock") = Some(Reference {
        requests_per_task: per_task,
        p99_ms: p99,
    });

    out.push(fig(
        "floor",
        "taskhook pacing (the defaults, read back by check-config)",
        leg.pacing.describe(),
        "",
        None,
    ));
    out.push(fig(
        "floor",
        "load, the same for both, run side by side",
        format!(
            "{}; baseline: one ID per request, first poll at {}, then every {}",
            load.describe(),
            secs(pacing.first_poll_after),
            secs(pacing.interval)
        ),
        "",
        None,
    ));
    out.push(fig(
        "floor",
        "taskhook upstream requests per task (IDs per request)",
        format!("{per_task:.3} ({:.1})", leg.ids_per_request),
        "",
        None,
    ));
    out.push(fig(
        "floor",
        "baseline upstream requests per task",
        format!("{base_per_task:.2}"),
        "",
        None,
    ));
    out.push(checked(
        "floor",
        "fewer requests than the baseline",
        format!("{ratio:.0}×"),
        target(plan, "≥ 30×".into(), ratio >= 30.0),
    ));
    out.push(fig(
        "floor",
        "taskhook finish → webhook received, p50 / p99",
        format!("{p50} ms / {p99} ms"),
        "",
        None,
    ));
    out.push(fig(
        "floor",
        "baseline finish → detected, p50 / p99",
        format!("{b50} ms / {b99} ms"),
        "",
        None,
    ));
    out.push(checked(
        "floor",
        "taskhook lag minus baseline lag, p50 / p99",
        format!("{:+} ms / {:+} ms", p50 - b50, p99 - b99),
        target(
            plan,
            "≤ 0 / ≤ 0 (no worse)".into(),
            p50 <= b50 && p99 <= b99,
        ),
    ));
    out.push(signatures("floor", leg.signed, load.tasks as u64));
    Ok(())
}

// ---- (b) the same load with callbacks, 10 % lost -----------------------------------------

pub(crate) async fn callbacks(
    h: &Harness,
    plan: &Plan,
    out: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    let load = Load::of(plan);
    let memo = *NO_CALLBACKS.lock().expect("lock");
    let (reference, from) = match memo {
        Some(r) => (r, "floor's run"),
        None => {
            // `floor` did not run first: measure the no-callback figures here.
            let th = Prepared::start(h, &load, "callbacks-reference", false, None).await?;
            let leg = th.run(h, &load, "cbref").await;
            th.stop()?;
            let leg = leg?;
            let lags: Vec<i64> = leg.lags.values().copied().collect();
            let r = Reference {
                requests_per_task: leg.requests_per_task(),
                p99_ms: p50_p99(&lags).1,
            };
            (r, "a run of its own")
        }
    };
    let th = Prepared::start(h, &load, "callbacks", true, None).await?;
    let leg = th.run(h, &load, "cb").await;
    th.stop()?;
    let leg = leg?;
    // The same with room in the budget: what the pacer's wait costs.
    let th = Prepared::start(h, &load, "callbacks-room", true, Some(ROOM_BUDGET)).await?;
    let room = th.run(h, &load, "cbroom").await;
    th.stop()?;
    let room = room?;

    let Split {
        arrived,
        rest,
        lost,
        callback_ms,
    } = Split::of(&leg);
    let (a50, a99) = p50_p99(&arrived);
    let (r50, r99) = p50_p99(&rest);
    let (c50, c99) = p50_p99(&callback_ms);
    let rtt = leg.mean_rtt_ms;
    let per_task = leg.requests_per_task();
    let results: Vec<String> = leg
        .callback_results
        .iter()
        .filter(|(_, n)| *n > 0.0)
        .map(|(r, n)| format!("{n:.0} {r}"))
        .collect();

    out.push(fig(
        "callbacks",
        "load and pacing as in floor; the simulator calls /v1/callbacks/producer",
        format!(
            "{}; {:.0} % of callbacks lost; api.callbacks_per_second_per_source {}",
            load.describe(),
            100.0 * CALLBACK_LOSS,
            leg.pacing.callbacks_per_source
        ),
        "",
        None,
    ));
    out.push(fig(
        "callbacks",
        "callbacks arrived / not (lost)",
        format!("{} / {} ({lost})", arrived.len(), rest.len(),),
        "",
        None,
    ));
    out.push(fig(
        "callbacks",
        "daemon: callbacks received by result / tasks hinted",
        format!("{} / {:.0}", results.join(", "), leg.hinted),
        "",
        None,
    ));
    out.push(fig(
        "callbacks",
        "finish → callback answered by the daemon, p50 / p99",
        format!("{c50} ms / {c99} ms"),
        "",
        None,
    ));
    out.push(fig(
        "callbacks",
        "mean upstream round trip (the daemon's own measure)",
        format!("{rtt:.1} ms"),
        "",
        None,
    ));
    let arrived_bound = rtt + 100.0;
    out.push(fig(
        "callbacks",
        "callback arrived: finish → webhook received, p50",
        format!("{a50} ms"),
        "",
        None,
    ));
    out.push(checked(
        "callbacks",
        "callback arrived: finish → webhook received, p99",
        format!("{a99} ms"),
        target(
            plan,
            format!("≤ {arrived_bound:.0} ms (round trip + 100 ms)"),
            a99 as f64 <= arrived_bound,
        ),
    ));
    let rest_bound = reference.p99_ms + 100;
    out.push(checked(
        "callbacks",
        "callback lost: finish → webhook received, p50 / p99",
        format!("{r50} ms / {r99} ms"),
        target(
            plan,
            format!(
                "p99 ≤ {rest_bound} ms (p99 without callbacks, {from}: {} ms, + 100 ms)",
                reference.p99_ms
            ),
            r99 <= rest_bound,
        ),
    ));
    out.push(checked(
        "callbacks",
        "upstream requests per task (IDs per request)",
        format!("{per_task:.3} ({:.1})", leg.ids_per_request),
        target(
            plan,
            format!(
                "< {:.3} (without callbacks, {from})",
                reference.requests_per_task
            ),
            per_task < reference.requests_per_task,
        ),
    ));
    out.push(signatures("callbacks", leg.signed, load.tasks as u64));

    let in_room = Split::of(&room);
    let (m50, m99) = p50_p99(&in_room.arrived);
    let room_bound = room.mean_rtt_ms + 100.0;
    out.push(checked(
        "callbacks",
        &format!(
            "with room in the budget (max_requests_per_second {ROOM_BUDGET}): callback arrived, p50 / p99"
        ),
        format!("{m50} ms / {m99} ms"),
        target(
            plan,
            format!(
                "p99 ≤ {room_bound:.0} ms (round trip {:.1} ms + 100 ms)",
                room.mean_rtt_ms
            ),
            m99 as f64 <= room_bound,
        ),
    ));
    out.push(fig(
        "callbacks",
        "with room in the budget: requests per task (IDs per request)",
        format!(
            "{:.3} ({:.1})",
            room.requests_per_task(),
            room.ids_per_request
        ),
        "",
        None,
    ));
    out.push(signatures("callbacks", room.signed, load.tasks as u64));
    Ok(())
}

/// The budget of the `callbacks` leg run with room to spare: at the
/// default (10 requests/s) a request can leave only every 100 ms once the
/// callbacks' polls use the whole budget, so a hinted task may wait that
/// long for one.
const ROOM_BUDGET: u32 = 50;

/// A callbacks leg's tasks, by what became of their callback.
struct Split {
    /// Lag (ms) of the tasks whose callback arrived.
    arrived: Vec<i64>,
    /// Lag (ms) of the others.
    rest: Vec<i64>,
    /// Callbacks the simulator dropped on purpose.
    lost: usize,
    /// Finish → the daemon answered the callback (ms).
    callback_ms: Vec<i64>,
}

impl Split {
    fn of(leg: &Leg) -> Split {
        let mut split = Split {
            arrived: Vec::new(),
            rest: Vec::new(),
            lost: 0,
            callback_ms: Vec::new(),
        };
        for (id, lag) in &leg.lags {
            let record = &leg.callbacks[id.as_str()];
            if record["outcome"] == "delivered" {
                split.arrived.push(*lag);
                if let (Some(answered), Some(due)) = (
                    record["answered_at_ms"].as_i64(),
                    record["due_at_ms"].as_i64(),
                ) {
                    split.callback_ms.push(answered - due);
                }
            } else {
                split.lost += usize::from(record["outcome"] == "lost");
                split.rest.push(*lag);
            }
        }
        split
    }
}

// ---- (c) the budget sweep ----------------------------------------------------------------

/// One point of the sweep.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SweepPoint {
    pub(crate) watched: usize,
    /// The interval the daemon said it polls every task at (s).
    pub(crate) interval_s: f64,
    /// The poll period measured: watched tasks / IDs asked per second (s).
    pub(crate) period_s: f64,
    /// Upstream requests per second measured.
    pub(crate) requests_per_s: f64,
    /// Lag p99 (s): finish → webhook received when `measured`, else
    /// expected from the measured period (0.99 of it).
    pub(crate) lag_p99_s: f64,
    pub(crate) measured: bool,
}

/// The sweep's points and budget when it ran in this process, for the chart.
static SWEEP: Mutex<Option<(Vec<SweepPoint>, f64)>> = Mutex::new(None);

/// The sizes and timings of the sweep.
struct SweepPlan {
    /// Watched tasks of each point, and how many of them finish (0: the
    /// lag is not waited for).
    sizes: Vec<(usize, usize)>,
    /// The longest the bench waits for a point's finishing tasks.
    longest_wait: Duration,
    /// From writing the steady state into the store to its first poll
    /// (the daemon restarts meanwhile).
    margin: Duration,
    /// How long a point without finishing tasks is measured.
    window: Duration,
    /// `[poll]` settings: no first poll during the enqueue (and the smoke
    /// run's shorter interval).
    poll: &'static str,
}

impl SweepPlan {
    fn of(plan: &Plan) -> SweepPlan {
        if plan.quick {
            SweepPlan {
                sizes: vec![(200, 50), (2_000, 0)],
                longest_wait: Duration::from_secs(10),
                margin: Duration::from_millis(600),
                window: Duration::from_millis(600),
                poll: "[poll]\ninterval = \"500ms\"\nfirst_poll_after = \"1h\"\n",
            }
        } else {
            SweepPlan {
                sizes: vec![(1_000, 200), (10_000, 200), (100_000, 0)],
                longest_wait: Duration::from_secs(35),
                margin: Duration::from_millis(1_500),
                // About a hundred requests at the default budget.
                window: Duration::from_secs(10),
                poll: "[poll]\nfirst_poll_after = \"1h\"\n",
            }
        }
    }
}

pub(crate) async fn sweep(h: &Harness, plan: &Plan, out: &mut Vec<Figure>) -> anyhow::Result<()> {
    let sp = SweepPlan::of(plan);
    let mut points = Vec::new();
    let mut pacing = None;
    let mut delivered_ok = true;
    for &(watched, finishing) in &sp.sizes {
        let (point, p, delivered) = sweep_point(h, &sp, watched, finishing).await?;
        delivered_ok &= delivered;
        points.push(point);
        pacing = Some(p);
    }
    let pacing = pacing.context("an empty sweep")?;
    out.push(fig(
        "sweep",
        "taskhook pacing (the defaults, read back by check-config)",
        format!(
            "poll.strategy {}, interval {}; {} requests/s, {} IDs per request, {} in flight; \
             the tasks enqueued with the first poll an hour away, then each point's steady \
             state written into the store; a simulator enforcing 60 requests/s and 5 in flight",
            pacing.strategy,
            secs(pacing.interval),
            pacing.budget,
            pacing.batch,
            pacing.concurrent
        ),
        "",
        None,
    ));
    for p in &points {
        let w = thousands(p.watched as f64);
        out.push(fig(
            "sweep",
            &format!("{w} watched: interval in force / poll period measured"),
            format!("{:.1} s / {:.1} s", p.interval_s, p.period_s),
            "",
            None,
        ));
        out.push(checked(
            "sweep",
            &format!("{w} watched: upstream requests/s"),
            format!("{:.1}", p.requests_per_s),
            target(
                plan,
                format!("≤ {} (the budget)", pacing.budget),
                p.requests_per_s <= pacing.budget,
            ),
        ));
        if p.measured {
            let bound = p.interval_s + 1.0;
            out.push(checked(
                "sweep",
                &format!("{w} watched: lag p99, finish → webhook received"),
                format!("{:.2} s", p.lag_p99_s),
                target(
                    plan,
                    format!("≤ {bound:.1} s (the interval + 1 s)"),
                    p.lag_p99_s <= bound,
                ),
            ));
        } else {
            out.push(fig(
                "sweep",
                &format!("{w} watched: lag p99, expected (0.99 × the poll period; not waited for)"),
                format!("≈ {:.0} s", p.lag_p99_s),
                "",
                None,
            ));
        }
    }
    out.push(fig(
        "sweep",
        "every finished task delivered",
        delivered_ok.to_string(),
        "true",
        Some(delivered_ok),
    ));
    *SWEEP.lock().expect("lock") = Some((points, pacing.budget));
    Ok(())
}

/// One point: `watched` tasks in the steady state, `finishing` of them
/// finishing soon after the start (their lag is measured when there are
/// any), the rest running for an hour. Returns the point, the pacing in
/// force and whether every finishing task was delivered.
async fn sweep_point(
    h: &Harness,
    sp: &SweepPlan,
    watched: usize,
    finishing: usize,
) -> anyhow::Result<(SweepPoint, Pacing, bool)> {
    h.reset();
    let name = format!("sweep-{watched}");
    let sim = h
        .sim(taskhook_sim::SimArgs {
            min_duration_ms: 3_600_000,
            max_duration_ms: 3_600_000,
            fail_rate: 0.0,
            ..limited_upstream()
        })
        .await?;
    let cfg = daemon_config(h, &name, &sim, sp.poll, 1)?;
    let pacing = Pacing::of(&cfg)?;
    // Enqueue everything with the first poll an hour away, then stop.
    let ids: Vec<String> = (0..watched)
        .map(|i| {
            if i < finishing {
                format!("sw{watched}-f{i}")
            } else {
                format!("sw{watched}-{i}")
            }
        })
        .collect();
    let daemon = Daemon::start(&cfg)?;
    h.enqueue(&daemon.api, &ids, 10_000).await?;
    daemon.stop()?;

    // The steady state of a long run: each task polled once already, its
    // next poll somewhere in the coming interval (a scrambled order, so the
    // finishing tasks are spread too).
    let interval = pacing.interval_for(watched);
    let base = now_ms() + sp.margin.as_millis() as i64;
    {
        let db = h.dir.path().join(format!("{name}.db"));
        let c = rusqlite::Connection::open(&db)?;
        c.execute(
            "UPDATE tasks SET polls = 1, next_poll_at = ?1 + ((rowid * 7919) % ?2) * ?3 / ?2 \
             WHERE status = 0",
            rusqlite::params![base, watched as i64, interval.as_millis() as i64],
        )?;
    }
    // The finishing tasks settle in the first half second of the run (or
    // two seconds, for longer intervals), the others run for an hour.
    let spread_ms = (interval.as_millis() as i64 / 2).clamp(250, 2_000);
    let now = now_ms();
    let specs: Vec<Value> = ids[..finishing]
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let settles = base + 250 + i as i64 * spread_ms / finishing.max(1) as i64;
            json!({"id": id, "duration_ms": (settles - now).max(0)})
        })
        .collect();
    h.create_sim_tasks(&sim, specs).await?;
    h.seen
        .track_lag
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let daemon = Daemon::start(&cfg)?;

    // Measure from the first seeded poll on.
    let wait = base - now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    let before = h.sim_stats(&sim).await?;
    let started = Instant::now();
    let delivered = if finishing > 0 {
        let limit = (interval + Duration::from_secs(5)).min(sp.longest_wait);
        h.wait_for(&name, 0, finishing as u64, limit).await.is_ok()
    } else {
        tokio::time::sleep(sp.window).await;
        true
    };
    let after = h.sim_stats(&sim).await?;
    let window = started.elapsed().as_secs_f64();
    let view: Value = h
        .http
        .get(format!("{}/v1/stats", daemon.api))
        .send()
        .await?
        .json()
        .await?;
    daemon.stop()?;
    h.seen
        .track_lag
        .store(false, std::sync::atomic::Ordering::Relaxed);

    let delta = |k: &str| after[k].as_f64().unwrap_or(0.0) - before[k].as_f64().unwrap_or(0.0);
    let requests_per_s = delta("requests") / window;
    let ids_per_s = delta("ids_requested") / window;
    let period_s = watched as f64 / ids_per_s.max(1e-9);
    let interval_s = view["polling"]["effective_interval_ms"]
        .as_f64()
        .unwrap_or(0.0)
        / 1000.0;
    let lags: Vec<i64> = h
        .seen
        .lag
        .lock()
        .expect("lock")
        .values()
        .map(|(at, fin)| at - fin)
        .collect();
    let measured = finishing > 0 && delivered;
    let lag_p99_s = if measured {
        p50_p99(&lags).1 as f64 / 1000.0
    } else {
        0.99 * period_s
    };
    let point = SweepPoint {
        watched,
        interval_s,
        period_s,
        requests_per_s,
        lag_p99_s,
        measured,
    };
    Ok((point, pacing, delivered))
}

// ---- the chart -----------------------------------------------------------------------------

/// Writes the sweep's chart beside `results` and adds its link to `md`,
/// when the sweep ran.
pub(crate) fn write_chart(results: &Path, md: &mut String) -> anyhow::Result<()> {
    let Some((points, budget)) = SWEEP.lock().expect("lock").clone() else {
        return Ok(());
    };
    let path = results.with_file_name(SWEEP_SVG);
    std::fs::write(&path, sweep_svg(&points, budget))
        .with_context(|| format!("writing {}", path.display()))?;
    md.push_str(&format!(
        "\nThe budget sweep, plotted: [{SWEEP_SVG}]({SWEEP_SVG}) (lag p99 and upstream requests/s against watched tasks).\n"
    ));
    Ok(())
}

/// Escapes text for XML.
fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A short label for a count of tasks: 1k, 10k, 100k, 1M.
fn tasks_label(n: f64) -> String {
    if n >= 1e6 {
        format!("{}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{}k", n / 1e3)
    } else {
        format!("{n}")
    }
}

/// A short label for seconds on a log axis: 0.1 s, 1 s, 10 s.
fn seconds_label(s: f64) -> String {
    if s < 1.0 {
        format!("{s} s")
    } else {
        format!("{s:.0} s")
    }
}

/// The decades covering `lo..=hi` (log10 bounds), at least one wide.
fn decades(lo: f64, hi: f64) -> (f64, f64) {
    let a = lo.max(1e-3).log10().floor();
    let b = hi.max(1e-3).log10().ceil();
    (a, if b > a { b } else { a + 1.0 })
}

/// One panel's frame: the plot area and how values map onto it.
struct Panel {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
}

impl Panel {
    fn x(&self, frac: f64) -> f64 {
        self.left + frac * self.width
    }
    fn y(&self, frac: f64) -> f64 {
        self.top + self.height - frac * self.height
    }
}

/// The sweep as an SVG: on the left lag p99 (log scale), on the right
/// upstream requests/s with the budget, both against watched tasks (log
/// scale). Measured points are filled, expected ones hollow.
pub(crate) fn sweep_svg(points: &[SweepPoint], budget: f64) -> String {
    const W: f64 = 800.0;
    const H: f64 = 340.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>\n"
    );
    let watched: Vec<f64> = points.iter().map(|p| p.watched as f64).collect();
    let (x0, x1) = decades(
        watched.iter().copied().fold(f64::INFINITY, f64::min),
        watched.iter().copied().fold(0.0, f64::max),
    );
    let xfrac = |n: f64| (n.max(1e-3).log10() - x0) / (x1 - x0);
    let lags: Vec<f64> = points.iter().map(|p| p.lag_p99_s).collect();
    let (l0, l1) = decades(
        lags.iter().copied().fold(f64::INFINITY, f64::min),
        lags.iter().copied().fold(0.0, f64::max),
    );
    let rate_top = points
        .iter()
        .map(|p| p.requests_per_s)
        .fold(budget, f64::max)
        * 1.2;
    let panels = [
        (
            Panel {
                left: 70.0,
                top: 40.0,
                width: 290.0,
                height: 230.0,
            },
            "Lag p99, finish → webhook (log scale)",
        ),
        (
            Panel {
                left: 470.0,
                top: 40.0,
                width: 290.0,
                height: 230.0,
            },
            "Upstream requests per second",
        ),
    ];
    for (i, (p, title)) in panels.iter().enumerate() {
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"24\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">{}</text>\n",
            p.x(0.5),
            xml(title)
        ));
        s.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"none\" stroke=\"#444\"/>\n",
            p.left, p.top, p.width, p.height
        ));
        // The x axis: a tick per decade of watched tasks.
        let mut d = x0;
        while d <= x1 + 1e-9 {
            let x = p.x((d - x0) / (x1 - x0));
            s.push_str(&format!(
                "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\n\
                 <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
                p.top,
                p.top + p.height,
                p.top + p.height + 16.0,
                xml(&tasks_label(10f64.powf(d)))
            ));
            d += 1.0;
        }
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">watched tasks (log scale)</text>\n",
            p.x(0.5),
            p.top + p.height + 36.0
        ));
        // The y axis, the series and its labels.
        let yfrac: Box<dyn Fn(f64) -> f64> = if i == 0 {
            let mut d = l0;
            while d <= l1 + 1e-9 {
                let y = p.y((d - l0) / (l1 - l0));
                s.push_str(&format!(
                    "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\n\
                     <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
                    p.left,
                    p.left + p.width,
                    p.left - 6.0,
                    y + 4.0,
                    xml(&seconds_label(10f64.powf(d)))
                ));
                d += 1.0;
            }
            Box::new(move |v: f64| (v.max(1e-3).log10() - l0) / (l1 - l0))
        } else {
            let step = nice_step(rate_top / 5.0);
            let mut v = 0.0;
            while v <= rate_top + 1e-9 {
                let y = p.y(v / rate_top);
                s.push_str(&format!(
                    "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\n\
                     <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
                    p.left,
                    p.left + p.width,
                    p.left - 6.0,
                    y + 4.0,
                    xml(&format!("{v}"))
                ));
                v += step;
            }
            for (value, label, dash) in [
                (budget, format!("budget {budget}/s"), "6 3"),
                (
                    budget * UTILISATION,
                    format!("planned {:.0} %", 100.0 * UTILISATION),
                    "2 3",
                ),
            ] {
                let y = p.y(value / rate_top);
                s.push_str(&format!(
                    "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#b00\" stroke-dasharray=\"{dash}\"/>\n\
                     <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#b00\">{}</text>\n",
                    p.left,
                    p.left + p.width,
                    p.left + p.width - 4.0,
                    y - 4.0,
                    xml(&label)
                ));
            }
            Box::new(move |v: f64| v / rate_top)
        };
        let value = |pt: &SweepPoint| {
            if i == 0 {
                pt.lag_p99_s
            } else {
                pt.requests_per_s
            }
        };
        let coords: Vec<(f64, f64)> = points
            .iter()
            .map(|pt| (p.x(xfrac(pt.watched as f64)), p.y(yfrac(value(pt)))))
            .collect();
        let line: Vec<String> = coords
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        s.push_str(&format!(
            "<polyline points=\"{}\" fill=\"none\" stroke=\"#1f5fa8\" stroke-width=\"2\"/>\n",
            line.join(" ")
        ));
        for (pt, (x, y)) in points.iter().zip(&coords) {
            let measured = i == 1 || pt.measured;
            let label = if i == 0 {
                let v = pt.lag_p99_s;
                if v < 10.0 {
                    format!("{v:.1} s")
                } else {
                    format!("{v:.0} s")
                }
            } else {
                format!("{:.1}/s", pt.requests_per_s)
            };
            s.push_str(&format!(
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"4.5\" fill=\"{}\" stroke=\"#1f5fa8\" stroke-width=\"2\"/>\n\
                 <text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
                if measured { "#1f5fa8" } else { "white" },
                x + 7.0,
                y - 7.0,
                xml(&label)
            ));
        }
    }
    s.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#444\">{}</text>\n",
        W / 2.0,
        H - 10.0,
        xml(&format!(
            "At the default budget ({budget} requests/s): filled points measured, hollow ones expected from the measured poll period"
        ))
    ));
    s.push_str("</svg>\n");
    s
}

/// A round step near `raw`: 1, 2 or 5 times a power of ten.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks `text` is well-formed XML as far as the chart needs: every
    /// tag closed in order, attributes quoted, no bare `<` or `&` in text.
    /// Returns the element names in document order.
    fn well_formed(text: &str) -> Result<Vec<String>, String> {
        let mut stack: Vec<String> = Vec::new();
        let mut names = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('<') {
            check_text(&rest[..open])?;
            let close = rest[open..]
                .find('>')
                .ok_or_else(|| format!("unclosed tag at {:?}", &rest[open..]))?;
            let tag = &rest[open + 1..open + close];
            rest = &rest[open + close + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                match stack.pop() {
                    Some(top) if top == name.trim() => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name = body.split_whitespace().next().unwrap_or("").to_string();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(format!("bad element name in <{tag}>"));
            }
            // Attributes: name="value" pairs, values without `<` or bare `&`.
            let mut attrs = body[name.len()..].trim();
            while !attrs.is_empty() {
                let (key, after) = attrs
                    .split_once("=\"")
                    .ok_or_else(|| format!("unquoted attribute in <{tag}>"))?;
                if key.trim().is_empty() || key.trim().contains(' ') {
                    return Err(format!("bad attribute name {key:?} in <{tag}>"));
                }
                let (value, after) = after
                    .split_once('"')
                    .ok_or_else(|| format!("unterminated attribute in <{tag}>"))?;
                check_text(value)?;
                attrs = after.trim();
            }
            names.push(name.clone());
            if !self_closing {
                stack.push(name);
            }
        }
        check_text(rest)?;
        if !stack.is_empty() {
            return Err(format!("unclosed elements {stack:?}"));
        }
        Ok(names)
    }

    fn check_text(t: &str) -> Result<(), String> {
        if t.contains('<') {
            return Err(format!("bare < in {t:?}"));
        }
        let mut rest = t;
        while let Some(i) = rest.find('&') {
            let entity = &rest[i..];
            if !["&amp;", "&lt;", "&gt;", "&quot;"]
                .iter()
                .any(|e| entity.starts_with(e))
            {
                return Err(format!("bare & in {t:?}"));
            }
            rest = &rest[i + 1..];
        }
        Ok(())
    }

    fn points() -> Vec<SweepPoint> {
        vec![
            SweepPoint {
                watched: 1_000,
                interval_s: 5.0,
                period_s: 5.1,
                requests_per_s: 4.1,
                lag_p99_s: 4.97,
                measured: true,
            },
            SweepPoint {
                watched: 10_000,
                interval_s: 25.0,
                period_s: 25.2,
                requests_per_s: 8.0,
                lag_p99_s: 24.8,
                measured: true,
            },
            SweepPoint {
                watched: 100_000,
                interval_s: 250.0,
                period_s: 251.0,
                requests_per_s: 8.0,
                lag_p99_s: 248.6,
                measured: false,
            },
        ]
    }

    #[test]
    fn the_chart_is_well_formed_xml_with_every_point_and_label() {
        let svg = sweep_svg(&points(), 10.0);
        let names = well_formed(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        assert_eq!(names[0], "svg");
        // Three points in each of the two panels, one polyline each.
        assert_eq!(names.iter().filter(|n| *n == "circle").count(), 6);
        assert_eq!(names.iter().filter(|n| *n == "polyline").count(), 2);
        for label in [
            "1k",
            "10k",
            "100k",
            "5.0 s",
            "25 s",
            "249 s",
            "4.1/s",
            "8.0/s",
            "1 s",
            "10 s",
            "100 s",
            "1000 s",
            "budget 10/s",
            "planned 80 %",
            "watched tasks (log scale)",
            "Lag p99, finish → webhook (log scale)",
            "Upstream requests per second",
        ] {
            assert!(svg.contains(&format!(">{label}<")), "{label} in\n{svg}");
        }
        // The expected point is hollow; the measured ones are filled.
        assert_eq!(svg.matches("fill=\"white\" stroke=\"#1f5fa8\"").count(), 1);
    }

    #[test]
    fn points_sit_where_their_values_say() {
        let svg = sweep_svg(&points(), 10.0);
        // The lag panel spans 1k..100k across 290 px from x = 70: 10k is
        // in the middle; 1 s..1000 s across 230 px from the bottom (270).
        let cx = |i: usize| -> f64 {
            let c = svg.match_indices("<circle").nth(i).unwrap().0;
            let v = &svg[c..];
            let start = v.find("cx=\"").unwrap() + 4;
            v[start..start + v[start..].find('"').unwrap()]
                .parse()
                .unwrap()
        };
        assert!((cx(0) - 70.0).abs() < 0.1);
        assert!((cx(1) - 215.0).abs() < 0.1);
        assert!((cx(2) - 360.0).abs() < 0.1);
    }

    #[test]
    fn the_checker_refuses_what_is_not_xml() {
        assert!(well_formed("<svg><g></svg>").is_err());
        assert!(well_formed("<svg>a < b</svg>").is_err());
        assert!(well_formed("<svg>a & b</svg>").is_err());
        assert!(well_formed("<svg x=1></svg>").is_err());
        assert!(well_formed("<svg x=\"1\"><g/>a &amp; b</svg>").is_ok());
        assert!(well_formed(&format!("<svg>{}</svg>", xml("a < b & \"c\""))).is_ok());
    }

    #[test]
    fn decades_cover_the_values() {
        assert_eq!(decades(1_000.0, 100_000.0), (3.0, 5.0));
        assert_eq!(decades(4.97, 248.6), (0.0, 3.0));
        assert_eq!(decades(0.45, 0.5), (-1.0, 0.0));
        assert_eq!(decades(10.0, 10.0), (1.0, 2.0));
        assert_eq!(tasks_label(1e3), "1k");
        assert_eq!(tasks_label(1e5), "100k");
        assert_eq!(tasks_label(1e6), "1M");
        assert_eq!(seconds_label(0.1), "0.1 s");
        assert_eq!(seconds_label(100.0), "100 s");
        assert_eq!(nice_step(2.4), 5.0);
        assert_eq!(nice_step(1.9), 2.0);
        assert_eq!(nice_step(0.7), 1.0);
    }

    #[test]
    fn percentiles_of_unsorted_lags() {
        let lags: Vec<i64> = (1..=100).rev().collect();
        assert_eq!(p50_p99(&lags), (51, 99));
        assert_eq!(p50_p99(&[]), (0, 0));
        assert_eq!(p50_p99(&[7]), (7, 7));
    }

    const EFFECTIVE: &str = r#"# effective configuration: defaults + x.toml + environment
[upstream]
base_url = "http://127.0.0.1:1/"
batch_size = 50
max_requests_per_second = 10.0
max_concurrent_requests = 4

[upstream.services.producer]
batch_size = 7

[poll]
first_poll_after = "10s"
interval = "5s"
max_interval = "1m"
strategy = "budget"
learn_first_poll = true

[api]
callbacks_per_second_per_source = 50
"#;

    #[test]
    fn the_pacing_is_read_from_the_effective_configuration() {
        let p = Pacing::parse(EFFECTIVE).unwrap();
        assert_eq!(
            p,
            Pacing {
                strategy: "budget".into(),
                interval: Duration::from_secs(5),
                first_poll_after: Duration::from_secs(10),
                learn_first_poll: true,
                budget: 10.0,
                batch: 50,
                concurrent: 4,
                callbacks_per_source: 50,
            }
        );
        assert_eq!(
            p.describe(),
            "poll.strategy budget, interval 5 s, first poll 10 s (then learned); \
             10 requests/s, 50 IDs per request, 4 in flight"
        );
        assert!(Pacing::parse("[poll]\ninterval = \"5s\"\n").is_err());
    }

    #[test]
    fn the_interval_follows_the_demand_past_the_budget() {
        let p = Pacing::parse(EFFECTIVE).unwrap();
        // 8 of the 10 requests/s are planned: 2,000 tasks at 5 s fit.
        assert_eq!(p.interval_for(1_000), Duration::from_secs(5));
        assert_eq!(p.interval_for(2_000), Duration::from_secs(5));
        assert_eq!(p.interval_for(10_000), Duration::from_secs(25));
        assert_eq!(p.interval_for(100_000), Duration::from_secs(250));
    }

    #[test]
    fn metric_lines_are_read_by_their_whole_name() {
        let text = "taskhook_callbacks_total{result=\"hinted\"} 12\n\
                    taskhook_callbacks_total{result=\"rate_limited\"} 3\n\
                    taskhook_x_sum 1.5\ntaskhook_x_sum_other 9\n";
        assert_eq!(
            metric(text, "taskhook_callbacks_total{result=\"hinted\"}"),
            12.0
        );
        assert_eq!(
            metric(text, "taskhook_callbacks_total{result=\"rate_limited\"}"),
            3.0
        );
        assert_eq!(metric(text, "taskhook_x_sum"), 1.5);
        assert_eq!(metric(text, "taskhook_y"), 0.0);
    }
}
