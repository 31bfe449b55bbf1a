//! Thin clients of the control API: the `enqueue`, `status`,
//! `deliveries`, `replay` and `health` subcommands.
//!
//! May call: `clock`.

use std::io::BufRead;

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// A client of the control API.
struct ApiClient {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl ApiClient {
    fn new(api: &str) -> Self {
        ApiClient {
            base: api.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            token: std::env::var("TASKHOOK_API_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| {
            format!(
                "cannot reach the daemon at {} (set --api or TASKHOOK_API)",
                self.base
            )
        })?;
        let status = resp.status();
        let text = resp.text().await?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = value
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or(text.as_str());
            bail!("{status}: {msg}");
        }
        Ok(value)
    }
}

pub async fn enqueue(
    api: &str,
    service: Option<String>,
    webhooks: Vec<String>,
    metadata: Option<String>,
    ids: Vec<String>,
    wait: bool,
) -> anyhow::Result<()> {
    let metadata: Option<Value> = match metadata {
        Some(m) => Some(serde_json::from_str(&m).context("--metadata: not JSON")?),
        None => None,
    };
    let mut all = Vec::new();
    for id in ids {
        if id == "-" {
            for line in std::io::stdin().lock().lines() {
                let line = line?;
                let line = line.trim();
                if !line.is_empty() {
                    all.push(line.to_string());
                }
            }
        } else {
            all.push(id);
        }
    }
    let client = ApiClient::new(api);
    let (mut accepted, mut duplicates) = (0, 0);
    for chunk in all.chunks(1000) {
        let tasks: Vec<Value> = chunk
            .iter()
            .map(|id| {
                let mut t = json!({"id": id});
                if let Some(s) = &service {
                    t["service"] = json!(s);
                }
                if !webhooks.is_empty() {
                    t["webhooks"] = json!(webhooks);
                }
                if let Some(m) = &metadata {
                    t["metadata"] = m.clone();
                }
                t
            })
            .collect();
        let out = client
            .call(
                reqwest::Method::POST,
                "/v1/tasks",
                Some(json!({"tasks": tasks})),
            )
            .await?;
        accepted += out["accepted"].as_u64().unwrap_or(0);
        duplicates += out["duplicates"].as_u64().unwrap_or(0);
    }
    println!("accepted {accepted}, duplicates {duplicates}");
    if wait {
        wait_for(&client, &all).await?;
    }
    Ok(())
}

pub async fn status(
    api: &str,
    as_json: bool,
    id: Option<String>,
    watch: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let client = ApiClient::new(api);
    let tty = std::io::stdout().is_terminal();
    loop {
        let (value, text) = match &id {
            Some(id) => {
                let path = format!("/v1/tasks/{}", url_escape(id));
                let t = client.call(reqwest::Method::GET, &path, None).await?;
                let text = render_task(&t);
                (t, text)
            }
            None => {
                let st = client.call(reqwest::Method::GET, "/v1/stats", None).await?;
                let text = render_summary(&st);
                (st, text)
            }
        };
        let out = if as_json {
            serde_json::to_string_pretty(&value)?
        } else {
            text
        };
        match watch {
            None => {
                println!("{out}");
                return Ok(());
            }
            Some(every) => {
                use std::io::Write;
                // Clear the screen and redraw in place; plain blocks otherwise.
                let frame = if tty {
                    format!("\x1b[2J\x1b[H{out}\n")
                } else {
                    format!("{out}\n\n")
                };
                let mut stdout = std::io::stdout().lock();
                if stdout
                    .write_all(frame.as_bytes())
                    .and_then(|_| stdout.flush())
                    .is_err()
                {
                    return Ok(()); // the reader went away (`| head`)
                }
                drop(stdout);
                tokio::time::sleep(every).await;
            }
        }
    }
}

/// The queue summary as a small table.
fn render_summary(st: &Value) -> String {
    let up = &st["upstream"];
    let health = if up["token_accepted"] == json!(false) {
        "token refused (401): fix upstream.token, then SIGHUP".to_string()
    } else if up["consecutive_failures"].as_u64().unwrap_or(0) > 0 {
        format!("failing: {}", show(&up["last_error"]))
    } else if up["requests"].as_u64().unwrap_or(0) == 0 {
        "no requests yet".to_string()
    } else {
        format!("ok ({} req/s allowed)", show(&up["requests_per_second"]))
    };
    let mut rows = vec![
        ("watching", show(&st["tasks"]["watching"])),
        ("delivering", show(&st["tasks"]["delivering"])),
        ("done", show(&st["tasks"]["done"])),
        ("pending deliveries", show(&st["deliveries"]["pending"])),
        ("dead letters", show(&st["dead_letters"])),
        ("oldest watching", show(&st["oldest_watching_enqueued_at"])),
        ("upstream", health),
    ];
    let p = &st["polling"];
    if let Some(effective) = p["effective_interval_ms"].as_u64() {
        let floor = p["floor_interval_ms"].as_u64().unwrap_or(0);
        let pace = if effective > floor {
            format!(
                "every {} (the budget cannot cover {})",
                ms(effective),
                ms(floor)
            )
        } else {
            format!("every {}", ms(effective))
        };
        rows.push((
            "polling",
            format!(
                "{pace}; {:.0}% of {} req/s in use ({})",
                p["budget_in_use"].as_f64().unwrap_or(0.0) * 100.0,
                show(&p["budget_requests_per_second"]),
                show(&p["strategy"])
            ),
        ));
    }
    for sp in p["services"].as_array().into_iter().flatten() {
        let first = ms(sp["first_poll_after_ms"].as_u64().unwrap_or(0));
        let learned = match sp["learned"]["count"].as_u64() {
            Some(n) => format!(
                " (learned from {n} tasks: p10 {}, p50 {}, p90 {})",
                ms(sp["learned"]["p10_ms"].as_u64().unwrap_or(0)),
                ms(sp["learned"]["p50_ms"].as_u64().unwrap_or(0)),
                ms(sp["learned"]["p90_ms"].as_u64().unwrap_or(0)),
            ),
            None => String::new(),
        };
        rows.push((
            "service",
            format!(
                "{}: {} watched, {} IDs per request, first poll after {first}{learned}",
                show(&sp["service"]),
                show(&sp["watching"]),
                show(&sp["batch"]),
            ),
        ));
    }
    let parked = st["deliveries"]["webhook_removed"].as_u64().unwrap_or(0);
    if parked > 0 {
        rows.push((
            "webhook removed",
            format!("{parked} deliveries parked (their webhook is no longer configured)"),
        ));
    }
    for b in up["broken_services"].as_array().into_iter().flatten() {
        rows.push((
            "refused service",
            format!(
                "{}: {} {} since {} (tasks wait; retried at {})",
                show(&b["service"]),
                show(&b["status"]),
                show(&b["code"]),
                show(&b["broken_since"]),
                show(&b["retry_at"]),
            ),
        ));
    }
    rows.iter()
        .map(|(k, v)| format!("{k:<19}{v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Milliseconds as a short duration: `850ms`, `2.5s`, `4m10s`.
fn ms(v: u64) -> String {
    if v < 1000 {
        format!("{v}ms")
    } else if v < 60_000 {
        format!("{}s", (v as f64 / 100.0).round() / 10.0)
    } else {
        humantime::format_duration(std::time::Duration::from_secs(v / 1000)).to_string()
    }
}

/// One task, field by field, then its deliveries.
fn render_task(t: &Value) -> String {
    let mut lines: Vec<String> = [
        ("task", "id"),
        ("service", "service"),
        ("status", "status"),
        ("upstream", "upstream_state"),
        ("outcome", "outcome"),
        ("polls", "polls"),
        ("enqueued", "enqueued_at"),
        ("next poll", "next_poll_at"),
        ("event", "event_id"),
    ]
    .iter()
    .map(|(label, key)| format!("{label:<12}{}", show(&t[*key])))
    .collect();
    for d in t["deliveries"].as_array().into_iter().flatten() {
        lines.push(format!(
            "{:<12}#{} {} {} attempts={} {}",
            "delivery",
            show(&d["id"]),
            show(&d["webhook"]),
            show(&d["state"]),
            show(&d["attempts"]),
            show(&d["last_error"])
        ));
    }
    lines.join("\n")
}

/// A one-line progress summary of a task, and whether it is settled.
fn progress_line(t: &Value) -> (String, bool) {
    let status = t["status"].as_str().unwrap_or("?");
    let mut line = match status {
        "watching" => format!(
            "watching: {} (polls: {})",
            show(&t["upstream_state"]),
            show(&t["polls"])
        ),
        _ => format!("{status}: {}", show(&t["outcome"])),
    };
    for d in t["deliveries"].as_array().into_iter().flatten() {
        let state = d["state"].as_str().unwrap_or("?");
        line.push_str(&format!(" | {} {state}", show(&d["webhook"])));
        if state == "pending" && d["attempts"].as_u64().unwrap_or(0) > 0 {
            line.push_str(&format!(
                " (attempt {}, {})",
                show(&d["attempts"]),
                show(&d["last_error"])
            ));
        }
    }
    (line, status == "done")
}

/// Follows tasks until each is settled: a live line per task on a
/// terminal, a plain line per change otherwise.
async fn wait_for(client: &ApiClient, ids: &[String]) -> anyhow::Result<()> {
    use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
    use std::io::IsTerminal;
    let tty = std::io::stdout().is_terminal();
    let multi = MultiProgress::with_draw_target(if tty {
        ProgressDrawTarget::stdout()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style =
        ProgressStyle::with_template("{spinner} {prefix} {wide_msg}").expect("valid template");
    let width = ids.iter().map(String::len).max().unwrap_or(0);
    let bars: Vec<ProgressBar> = ids
        .iter()
        .map(|id| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(style.clone());
            bar.set_prefix(format!("{id:<width$}"));
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        })
        .collect();
    let mut last: Vec<String> = vec![String::new(); ids.len()];
    let mut settled = vec![false; ids.len()];
    let mut dead = 0;
    while settled.iter().any(|s| !s) {
        for (i, id) in ids.iter().enumerate() {
            if settled[i] {
                continue;
            }
            let path = format!("/v1/tasks/{}", url_escape(id));
            let (line, done) = match client.call(reqwest::Method::GET, &path, None).await {
                Ok(t) => {
                    let (line, done) = progress_line(&t);
                    if done {
                        dead += t["deliveries"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter(|d| d["state"] == "failed")
                            .count();
                    }
                    (line, done)
                }
                Err(e) if e.to_string().starts_with("404") => {
                    ("gone: no longer watched".to_string(), true)
                }
                Err(e) => return Err(e),
            };
            if line != last[i] {
                if tty {
                    bars[i].set_message(line.clone());
                } else {
                    println!("{id}: {line}");
                }
                last[i] = line;
            }
            if done {
                settled[i] = true;
                bars[i].finish();
            }
        }
        if settled.iter().any(|s| !s) {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
    if dead > 0 {
        bail!("{dead} deliveries were dead-lettered (see `taskhook deliveries --failed`)");
    }
    Ok(())
}

pub async fn health(api: &str, live: bool) -> anyhow::Result<()> {
    let path = if live { "/healthz" } else { "/readyz" };
    let url = format!("{}{path}", api.trim_end_matches('/'));
    let resp = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if status.is_success() {
        println!("{body}");
        Ok(())
    } else {
        bail!("{status}: {body}")
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn url_escape(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

pub async fn deliveries(
    api: &str,
    failed: bool,
    limit: usize,
    as_json: bool,
) -> anyhow::Result<()> {
    let client = ApiClient::new(api);
    let mut path = format!("/v1/deliveries?limit={limit}");
    if failed {
        path.push_str("&state=failed");
    }
    let out = client.call(reqwest::Method::GET, &path, None).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:>8}  {:<10} {:<16} {:<24} {:>8}  last error",
        "id", "state", "type", "task", "attempts"
    );
    for d in out["deliveries"].as_array().cloned().unwrap_or_default() {
        println!(
            "{:>8}  {:<10} {:<16} {:<24} {:>8}  {}",
            show(&d["id"]),
            show(&d["state"]),
            show(&d["event_type"]),
            show(&d["task_id"]),
            show(&d["attempts"]),
            show(&d["last_error"])
        );
    }
    Ok(())
}

/// The filter of a bulk replay, as given on the command line.
pub struct ReplayFilter {
    pub since: Option<String>,
    pub until: Option<String>,
    pub webhook: Option<String>,
    pub event_type: Option<String>,
    pub parked: bool,
    pub dry_run: bool,
}

/// `2h` (that long ago) or an RFC 3339 time, as RFC 3339.
fn instant(flag: &str, v: &str) -> anyhow::Result<String> {
    if crate::clock::parse_rfc3339(v).is_some() {
        return Ok(v.to_string());
    }
    let ago = humantime::parse_duration(v).with_context(|| {
        format!("--{flag}: {v:?} is neither a duration (2h, 30m) nor an RFC 3339 time")
    })?;
    Ok(crate::clock::rfc3339(
        crate::clock::now_ms() - ago.as_millis() as i64,
    ))
}

pub async fn replay(api: &str, id: Option<i64>, f: ReplayFilter) -> anyhow::Result<()> {
    let client = ApiClient::new(api);
    if let Some(id) = id {
        let out = client
            .call(
                reqwest::Method::POST,
                &format!("/v1/deliveries/{id}/replay"),
                None,
            )
            .await?;
        println!("replayed {}", show(&out["replayed"]));
        return Ok(());
    }
    let mut body = json!({"state": if f.parked { "webhook_removed" } else { "failed" }});
    if let Some(v) = &f.since {
        body["since"] = json!(instant("since", v)?);
    }
    if let Some(v) = &f.until {
        body["until"] = json!(instant("until", v)?);
    }
    if let Some(v) = f.webhook {
        body["webhook"] = json!(v);
    }
    if let Some(v) = f.event_type {
        body["type"] = json!(v);
    }
    if f.dry_run {
        body["dry_run"] = json!(true);
    }
    let out = client
        .call(reqwest::Method::POST, "/v1/deliveries/replay", Some(body))
        .await?;
    if f.dry_run {
        println!(
            "{} match (dry run: nothing replayed)",
            show(&out["matching"])
        );
    } else {
        println!("replayed {}", show(&out["replayed"]));
    }
    Ok(())
}
