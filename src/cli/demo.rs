//! `taskhook demo`: the simulator, the daemon on a temporary store and a
//! webhook receiver that checks signatures, all on loopback; a few tasks are
//! enqueued through the control API and their events printed as they land.
//!
//! May call: `config`, `runtime`.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::runtime::Daemon;

/// The flags of `taskhook demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Exit once every event has arrived instead of waiting for Ctrl-C.
    #[arg(long)]
    pub exit_when_done: bool,
}

/// The demo's tasks: (id, service, simulator spec, what it shows). Three
/// differently shaped services: producer (items with a state word),
/// midjourney (a flat response with only progress and an image URL),
/// kling (a flat response with `state: succeed`) and minimax (a `{"task"}`
/// envelope with `status`).
fn demo_tasks() -> Vec<(&'static str, &'static str, Value, &'static str)> {
    vec![
        (
            "demo-song-1",
            "producer",
            json!({"outcome": "succeeded", "duration_ms": 1500, "items": 2}),
            "producer: succeeds; its two items finish at different times",
        ),
        (
            "demo-image-2",
            "midjourney",
            json!({"outcome": "succeeded", "duration_ms": 2500}),
            "midjourney: succeeds (no state word: progress reaches 100, the image URL appears)",
        ),
        (
            "demo-video-3",
            "kling",
            json!({"outcome": "succeeded", "duration_ms": 2000}),
            "kling: succeeds (a flat response whose state becomes \"succeed\")",
        ),
        (
            "demo-video-4",
            "minimax",
            json!({"outcome": "failed", "duration_ms": 2000}),
            "minimax: fails (status \"failed\" inside a {\"task\": ...} envelope)",
        ),
        (
            "demo-song-5",
            "producer",
            json!({"outcome": "hiccup", "duration_ms": 4000}),
            "producer: reports one transient failure, then succeeds",
        ),
        (
            "demo-song-6",
            "producer",
            json!({"outcome": "item_error", "duration_ms": 3000, "items": 2}),
            "producer: one of its items errors",
        ),
        (
            "missing-demo-7",
            "producer",
            Value::Null,
            "producer: unknown to the upstream",
        ),
    ]
}

/// What the receiver saw: event type, task, webhook-id, signature verdict.
struct Received {
    kind: String,
    task: String,
    id: String,
    signature_ok: bool,
}

/// The receiver's state: the verifier of the webhook's secret and where
/// to report each delivery.
type ReceiverState = (
    Arc<standardwebhooks::Webhook>,
    mpsc::UnboundedSender<Received>,
);

async fn receive(
    State((verifier, tx)): State<ReceiverState>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("");
    // Every delivery is verified, by the Standard Webhooks specification's
    // own library rather than by taskhook's signing code.
    let signature_ok = verifier.verify(&body, &headers).is_ok();
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let _ = tx.send(Received {
        kind: v["type"].as_str().unwrap_or("?").to_string(),
        task: v["data"]["task_id"].as_str().unwrap_or("?").to_string(),
        id: h("webhook-id").to_string(),
        signature_ok,
    });
    if signature_ok {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::UNAUTHORIZED
    }
}

/// Serves `app` on a free loopback port until `stop`; returns its base URL.
async fn serve_on_loopback(app: axum::Router, stop: CancellationToken) -> anyhow::Result<String> {
    Ok(taskhook_sim::serve_on_loopback(app, async move { stop.cancelled().await }).await?)
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let dir = tempfile::tempdir().context("creating a temporary store directory")?;

    let sim_url = serve_on_loopback(
        taskhook_sim::router(taskhook_sim::SimArgs::default()),
        stop.clone(),
    )
    .await?;

    let secret = format!("whsec_{}", {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 24]>())
    });
    let verifier = standardwebhooks::Webhook::new(&secret)
        .map_err(|e| anyhow::anyhow!("the demo's secret: {e}"))?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let receiver = axum::Router::new()
        .route("/hooks", post(receive))
        .with_state((Arc::new(verifier), tx));
    let receiver_url = format!("{}/hooks", serve_on_loopback(receiver, stop.clone()).await?);

    let config = Config::from_toml(&format!(
        r#"
[upstream]
base_url = "{sim_url}"
token = "demo-token"
max_requests_per_second = 20
[poll]
first_poll_after = "500ms"
interval = "1s"
max_interval = "2s"
missing_grace = 3
[store]
path = "{store}"
sync = "normal"
[api]
listen = "127.0.0.1:0"
[delivery]
retry_schedule = ["1s", "2s", "5s"]
[daemon]
shutdown_grace = "3s"
[[webhooks]]
name = "demo-receiver"
url = "{receiver_url}"
secret = "{secret}"
"#,
        store = dir.path().join("taskhook.db").display()
    ))
    .map_err(|e| anyhow::anyhow!("demo config: {e}"))?;
    let daemon = Daemon::start(config).await?;
    let api = format!("http://{}", daemon.api_addr);
    let daemon_stop = daemon.shutdown_token();
    let daemon_done = tokio::spawn(daemon.run_until_stopped());

    let mut out = std::io::stdout();
    writeln!(
        out,
        "taskhook demo: the upstream simulator, the daemon and a webhook receiver, on loopback"
    )?;
    writeln!(out, "  upstream simulator  {sim_url}")?;
    writeln!(
        out,
        "  control API         {api}   (try: taskhook status --api {api})"
    )?;
    writeln!(
        out,
        "  console             {api}/ui   (open it in a browser: no login, the demo sets no API token)"
    )?;
    writeln!(
        out,
        "  webhook receiver    {receiver_url}  (checks every signature)"
    )?;
    writeln!(
        out,
        "  store               {}",
        dir.path().join("taskhook.db").display()
    )?;

    let http = reqwest::Client::new();
    let tasks = demo_tasks();
    for (id, service, spec, _) in &tasks {
        if spec.is_null() {
            continue;
        }
        let mut spec = spec.clone();
        spec["id"] = json!(id);
        spec["service"] = json!(service);
        http.post(format!("{sim_url}/_sim/tasks"))
            .json(&spec)
            .send()
            .await?
            .error_for_status()
            .context("creating simulator tasks")?;
    }
    let body = json!({"tasks": tasks.iter().map(|(id, service, _, _)| json!({"id": id, "service": service, "metadata": {"pipeline_job": id}})).collect::<Vec<_>>()});
    let started = Instant::now();
    let resp: Value = http
        .post(format!("{api}/v1/tasks"))
        .json(&body)
        .send()
        .await?
        .error_for_status()
        .context("enqueueing through the control API")?
        .json()
        .await?;
    writeln!(
        out,
        "\nenqueued {} tasks through POST /v1/tasks:",
        resp["accepted"]
    )?;
    for (id, _, _, what) in &tasks {
        writeln!(out, "  {id:<16} {what}")?;
    }
    writeln!(out, "\nevents as the receiver gets them:")?;
    out.flush()?;

    let mut seen = 0;
    let mut all_ok = true;
    let ctrl_c = crate::runtime::signal();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    while seen < tasks.len() {
        tokio::select! {
            Some(r) = rx.recv() => {
                seen += 1;
                all_ok &= r.signature_ok;
                writeln!(
                    out,
                    "  +{:>5.1}s  {:<15} {:<16} webhook-id {}  signature {}",
                    started.elapsed().as_secs_f64(),
                    r.kind,
                    r.task,
                    r.id,
                    if r.signature_ok { "ok" } else { "INVALID" }
                )?;
                out.flush()?;
            }
            _ = &mut ctrl_c => { interrupted = true; break; }
            _ = tokio::time::sleep(Duration::from_secs(60)) => {
                anyhow::bail!("no event for 60 s; something is wrong");
            }
        }
    }
    if !interrupted {
        let stats: Value = http
            .get(format!("{sim_url}/_sim/stats"))
            .send()
            .await?
            .json()
            .await?;
        writeln!(
            out,
            "\nall {seen} events delivered{}; the upstream saw {} requests for {} task IDs ({:.1} IDs per request)",
            if all_ok {
                ", every signature valid"
            } else {
                " (SOME SIGNATURES INVALID)"
            },
            stats["requests"],
            stats["ids_requested"],
            stats["mean_ids_per_request"].as_f64().unwrap_or(0.0),
        )?;
        if !args.exit_when_done {
            writeln!(out, "the daemon keeps running; press Ctrl-C to stop")?;
            out.flush()?;
            ctrl_c.await;
        }
    }
    daemon_stop.cancel();
    let _ = daemon_done.await;
    stop.cancel();
    writeln!(out, "stopped")?;
    Ok(())
}
