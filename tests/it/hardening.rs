//! The defects an outside review found, each driven end to end through the
//! real daemon: refused services, the TTL on every path, unreadable
//! records, answers over the size cap, webhooks removed, renamed or
//! re-pointed by SIGHUP, receivers that stream without end, proxies, a
//! configuration without webhooks, JSON errors, `/readyz`'s cached write
//! check, a reloaded concurrency cap, colour in logs (a file, a terminal,
//! `NO_COLOR`), and signals sent the moment the daemon is up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

/// `text` with `lines` added at the top of `[section]`.
fn with(text: &str, section: &str, lines: &str) -> String {
    let header = format!("[{section}]\n");
    assert!(text.contains(&header), "no [{section}] in the config");
    text.replacen(&header, &format!("{header}{lines}\n"), 1)
}

/// Writes a daemon config: the test defaults with `edits` applied, then
/// `extra` appended.
fn config(dir: &Path, sim: &str, edits: &[(&str, &str)], extra: &str) -> PathBuf {
    let path = daemon_config(dir, sim, extra);
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (section, lines) in edits {
        text = with(&text, section, lines);
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn hup(pid: u32) {
    // SAFETY: kill(2) with a valid pid and signal number has no memory effects.
    let rc = unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    assert_eq!(
        rc,
        0,
        "kill -HUP {pid}: {}",
        std::io::Error::last_os_error()
    );
}

async fn sim_script(sim: &str, faults: &[&str]) {
    let (s, v) = post_json(&format!("{sim}/_sim/faults"), &json!({"script": faults})).await;
    assert_eq!(s, 200, "{v}");
}

async fn events(r: &Receiver) -> HashMap<String, String> {
    r.accepted_by_task()
        .into_iter()
        .map(|(id, hits)| (id, hits[0].body["type"].as_str().unwrap_or("").to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_service_waits_alone_and_its_tasks_still_expire() {
    // The simulator answers 404 for a path that is no AceData service.
    let sim = spawn_sim(&["--log-requests"]);
    let receiver = Receiver::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &sim.url,
        &[
            ("upstream", "broken_service_retry = \"300ms\""),
            ("poll", "task_ttl = \"4s\""),
        ],
        &(webhook_toml("pipeline", &receiver.url, None)
            + "[upstream.services.misspelled]\ntasks_path = \"/misspelled/tasks\"\n"),
    );
    let daemon = spawn_daemon(&cfg);
    // One full batch of tasks that all stay running for a while: polled
    // together, rescheduled together, so every request for them is due to
    // carry all 50 until they finish together.
    let good: Vec<String> = (0..50).map(|i| format!("good-{i}")).collect();
    sim_create_ids(&sim.url, &good, 1500).await;
    let broken: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("lost-{i}"), "service": "misspelled"}))
        .collect();
    let (s, v) = post_json(
        &format!("{}/v1/tasks", daemon.url),
        &json!({"tasks": broken}),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    enqueue_ids(&daemon.url, &good).await;

    // The refused service is visible everywhere an operator looks.
    let st = eventually(
        "the service marked broken",
        Duration::from_secs(10),
        || async {
            let (_, st) = get_json(&format!("{}/v1/stats", daemon.url)).await;
            (st["upstream"]["broken_services"][0]["service"] == "misspelled").then_some(st)
        },
    )
    .await;
    assert_eq!(st["upstream"]["broken_services"][0]["status"], 404, "{st}");
    assert_eq!(
        st["upstream"]["token_accepted"], true,
        "a 404 is not about the token"
    );
    let (s, ready) = get_json(&format!("{}/readyz", daemon.url)).await;
    assert_eq!(s, 200, "other services work: {ready}");
    assert!(
        ready["warnings"][0]
            .as_str()
            .unwrap()
            .contains("service misspelled"),
        "{ready}"
    );
    let gauge = metric_value(
        &daemon.url,
        "taskhook_upstream_service_broken{service=\"misspelled\"}",
    )
    .await;
    assert_eq!(gauge, Some(1.0));
    let out = taskhook_async(&["status", "--api", &daemon.url]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("refused service") && text.contains("misspelled: 404"),
        "{text}"
    );

    // Every other task is polled in full batches and delivered.
    eventually("the 50 good tasks", Duration::from_secs(30), || async {
        let e = events(&receiver).await;
        (good
            .iter()
            .all(|id| e.get(id).is_some_and(|t| t == "task.succeeded")))
        .then_some(())
    })
    .await;
    // Batches never shrank: every request for the other service after the
    // first refusal still carried all 50 of its due tasks, and the refused
    // service's own requests all 5 of its tasks.
    let (_, log) = get_json(&format!("{}/_sim/requests", sim.url)).await;
    let log = log["requests"].as_array().unwrap();
    let first_404 = log
        .iter()
        .find(|r| r["service"] == "misspelled")
        .map(|r| r["seq"].as_u64().unwrap())
        .expect("the refused service was asked");
    let ids_of = |service: &str| -> Vec<(u64, usize)> {
        log.iter()
            .filter(|r| r["service"] == service)
            .map(|r| {
                (
                    r["seq"].as_u64().unwrap(),
                    r["ids"].as_array().unwrap().len(),
                )
            })
            .collect()
    };
    let after: Vec<usize> = ids_of("producer")
        .into_iter()
        .filter(|(seq, _)| *seq > first_404)
        .map(|(_, n)| n)
        .collect();
    assert!(
        after.len() >= 2,
        "the other service was polled {} times after the 404",
        after.len()
    );
    assert!(
        after.iter().all(|n| *n == 50),
        "the other service's batches after the 404 (IDs each): {after:?}"
    );
    let refused_batches = ids_of("misspelled");
    assert!(
        refused_batches.iter().all(|(_, n)| *n == 5),
        "{refused_batches:?}"
    );
    let (_, sim_st) = get_json(&format!("{}/_sim/stats", sim.url)).await;
    assert_eq!(sim_st["max_ids_per_request"], 50, "{sim_st}");
    let refused = sim_st["requests_by_service"]["misspelled"]
        .as_u64()
        .unwrap();
    // The refused service is asked about once per retry period, not per
    // poll interval: a handful of requests over the test, not hundreds.
    assert!(refused <= 20, "{refused} requests to a refused service");

    // Nothing is watched for ever: the refused service's tasks expire.
    eventually(
        "the refused service's tasks expire",
        Duration::from_secs(20),
        || async {
            let e = events(&receiver).await;
            (0..5)
                .all(|i| {
                    e.get(&format!("lost-{i}"))
                        .is_some_and(|t| t == "task.expired")
                })
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_4xx_class_is_handled_as_what_it_is() {
    let sim = spawn_sim(&[]);
    let receiver = Receiver::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &sim.url,
        &[(
            "upstream",
            "broken_service_retry = \"300ms\"\ntoken_retry = \"300ms\"",
        )],
        &webhook_toml("pipeline", &receiver.url, None),
    );
    let log = dir.path().join("daemon.log");
    let (mut child, api) = spawn_daemon_logging(&cfg, "taskhook=info", &log);

    // 413: that service's batch halves (20 IDs, then 10).
    let ids: Vec<String> = (0..20).map(|i| format!("big-{i}")).collect();
    sim_create_ids(&sim.url, &ids, 100).await;
    sim_script(&sim.url, &["413"]).await;
    enqueue_ids(&api, &ids).await;
    eventually("20 events", Duration::from_secs(20), || async {
        (events(&receiver).await.len() == 20).then_some(())
    })
    .await;
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged
            .lines()
            .any(|l| l.contains("too large") && l.contains("\"next_batch\":10")),
        "{logged}"
    );

    // A firewall's 403, 405, api_not_implemented, token_mismatched: that
    // service waits; the token is not suspected.
    for fault in [
        "403-html",
        "405",
        "400-not-implemented",
        "400-token-mismatched",
    ] {
        let id = format!("t-{fault}");
        sim_create_ids(&sim.url, std::slice::from_ref(&id), 50).await;
        sim_script(&sim.url, &[fault]).await;
        enqueue_ids(&api, std::slice::from_ref(&id)).await;
        eventually(
            &format!("{fault} marks the service"),
            Duration::from_secs(10),
            || async {
                let (_, st) = get_json(&format!("{api}/v1/stats")).await;
                let b = &st["upstream"]["broken_services"][0];
                (b["service"] == "producer").then(|| {
                    (
                        b["status"].clone(),
                        st["upstream"]["token_accepted"].clone(),
                    )
                })
            },
        )
        .await;
        let (s, _) = get_json(&format!("{api}/readyz")).await;
        assert_eq!(s, 200, "{fault} does not pause the token");
        eventually(
            &format!("{id} delivered after {fault}"),
            Duration::from_secs(10),
            || async { events(&receiver).await.get(&id).cloned() },
        )
        .await;
    }

    // A 403 that says invalid_token is a refused token.
    let id = "t-403-token".to_string();
    sim_create_ids(&sim.url, std::slice::from_ref(&id), 50).await;
    sim_script(&sim.url, &["403-invalid-token"]).await;
    enqueue_ids(&api, std::slice::from_ref(&id)).await;
    eventually("the token refused", Duration::from_secs(10), || async {
        let (_, st) = get_json(&format!("{api}/v1/stats")).await;
        (st["upstream"]["token_accepted"] == false).then_some(())
    })
    .await;
    // The token is tried again after token_retry and works.
    eventually(
        "delivered once the token is tried again",
        Duration::from_secs(10),
        || async { events(&receiver).await.get(&id).cloned() },
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_record_delays_only_its_own_task() {
    let sim = spawn_sim(&[]);
    let receiver = Receiver::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &sim.url,
        &[],
        &webhook_toml("pipeline", &receiver.url, None),
    );
    let daemon = spawn_daemon(&cfg);
    let mut ids: Vec<String> = (0..9).map(|i| format!("r-{i}")).collect();
    sim_create_ids(&sim.url, &ids, 50).await;
    // An ID the upstream does not know: absent from every answer.
    ids.push("missing-r".into());
    // Every answer for a while carries one record that is not valid text.
    sim_script(&sim.url, &["corrupt-item"; 6]).await;
    enqueue_ids(&daemon.url, &ids).await;
    let e = eventually("every event", Duration::from_secs(20), || async {
        let e = events(&receiver).await;
        (e.len() == 10).then_some(e)
    })
    .await;
    for i in 0..9 {
        assert_eq!(e[&format!("r-{i}")], "task.succeeded");
    }
    // Misses kept counting although each answer had a bad record
    // (missing_grace is 3 in the test config).
    assert_eq!(e["missing-r"], "task.not_found");
    let (_, st) = get_json(&format!("{}/_sim/stats", sim.url)).await;
    assert!(st["faults"]["corrupt-item"].as_u64().unwrap() >= 3, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_removed_by_sighup_parks_its_deliveries_and_a_new_url_gets_them() {
    let sim = spawn_sim(&[]);
    let old = Receiver::start(Some(SECRET_A)).await;
    let new = Receiver::start(Some(SECRET_A)).await;
    *old.behaviour.lock().unwrap() = Behaviour {
        status: Some(500),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let base = config(dir.path(), &sim.url, &[], "");
    let text = std::fs::read_to_string(&base)
        .unwrap()
        .replace("retry_schedule = [\"100ms\", \"200ms\", \"300ms\"]", "retry_schedule = [\"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\"]");
    std::fs::write(
        &base,
        format!(
            "{text}{}",
            webhook_toml("pipeline", &old.url, Some(SECRET_A))
        ),
    )
    .unwrap();
    let daemon = spawn_daemon(&base);
    let ids: Vec<String> = (0..3).map(|i| format!("p-{i}")).collect();
    sim_create_ids(&sim.url, &ids, 50).await;
    enqueue_ids(&daemon.url, &ids).await;
    eventually(
        "the old receiver refusing",
        Duration::from_secs(10),
        || async { (old.hits().len() >= 3).then_some(()) },
    )
    .await;

    // The webhook is removed: its deliveries park, nothing goes anywhere.
    std::fs::write(&base, &text).unwrap();
    hup(daemon.pid());
    let parked = eventually(
        "three parked deliveries",
        Duration::from_secs(10),
        || async {
            let (_, v) = get_json(&format!(
                "{}/v1/deliveries?state=webhook_removed",
                daemon.url
            ))
            .await;
            let list = v["deliveries"].as_array().cloned().unwrap_or_default();
            (list.len() == 3).then_some(list)
        },
    )
    .await;
    assert!(parked.iter().all(|d| d["webhook"] == "pipeline"));
    let (_, st) = get_json(&format!("{}/v1/stats", daemon.url)).await;
    assert_eq!(st["deliveries"]["webhook_removed"], 3, "{st}");
    let before = old.hits().len();
    assert!(old.hits().iter().all(|h| h.signature_ok), "never unsigned");
    assert!(new.hits().is_empty());

    // Back under the same name, pointing elsewhere: the parked deliveries
    // resume and go to the new URL, signed.
    std::fs::write(
        &base,
        format!(
            "{text}{}",
            webhook_toml("pipeline", &new.url, Some(SECRET_A))
        ),
    )
    .unwrap();
    hup(daemon.pid());
    let got = eventually(
        "the new receiver gets all three",
        Duration::from_secs(10),
        || async {
            let got = new.accepted_by_task();
            (got.len() == 3).then_some(got)
        },
    )
    .await;
    assert!(got.values().all(|h| h[0].signature_ok));
    assert!(
        old.hits().len() <= before + 3,
        "at most the attempts in flight at the reload"
    );
    eventually("every task done", Duration::from_secs(10), || async {
        let (_, st) = get_json(&format!("{}/v1/stats", daemon.url)).await;
        (st["tasks"]["done"] == 3).then_some(())
    })
    .await;
}

/// A receiver that answers 200 and then streams `total` bytes of body,
/// made lazily a MiB at a time.
async fn streaming_receiver(total: u64) -> String {
    use axum::body::{Body, Bytes};
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || async move {
            let chunk = Bytes::from(vec![b'x'; 1 << 20]);
            let chunks = (0..total >> 20).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
            axum::response::Response::builder()
                .status(200)
                .body(Body::from_stream(futures::stream::iter(chunks)))
                .unwrap()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_streaming_a_gigabyte_is_read_a_few_kib_deep() {
    let sim = spawn_sim(&[]);
    let url = streaming_receiver(1 << 30).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &sim.url,
        &[],
        &webhook_toml("stream", &url, None),
    );
    let daemon = spawn_daemon(&cfg);
    let ids: Vec<String> = (0..4).map(|i| format!("s-{i}")).collect();
    sim_create_ids(&sim.url, &ids, 50).await;
    enqueue_ids(&daemon.url, &ids).await;
    eventually(
        "delivered, not stuck reading",
        Duration::from_secs(20),
        || async {
            let (_, st) = get_json(&format!("{}/v1/stats", daemon.url)).await;
            (st["tasks"]["done"] == 4).then_some(())
        },
    )
    .await;
    let rss = rss_kib(daemon.pid());
    assert!(
        rss < 200 * 1024,
        "daemon RSS {rss} KiB after four 1 GiB answers"
    );
}

/// A recording HTTP proxy: answers 200 to anything and keeps the request
/// targets it saw (absolute-form for proxied requests).
async fn recording_proxy() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let sink = sink.clone();
        async move {
            sink.lock()
                .unwrap()
                .push(format!("{} {}", req.method(), req.uri()));
            axum::http::StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_task_urls_never_go_through_an_environment_proxy_but_do_through_delivery_proxy() {
    let sim = spawn_sim(&[]);
    let (proxy, seen) = recording_proxy().await;
    // A public address: the guard lets it through, and nothing listens
    // there from this machine.
    let target = "http://192.0.0.9:9/hook";
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &sim.url,
        &[("delivery", "connect_timeout = \"500ms\"")],
        "",
    );
    let mut daemon = spawn(
        &["run", "-c", cfg.to_str().unwrap()],
        &[
            ("HTTP_PROXY", &proxy),
            ("http_proxy", &proxy),
            ("ALL_PROXY", &proxy),
            // The simulator is reached directly.
            ("NO_PROXY", "127.0.0.1,localhost"),
            ("no_proxy", "127.0.0.1,localhost"),
        ],
    );
    sim_create_ids(&sim.url, &["x1".to_string()], 50).await;
    let (s, v) = post_json(
        &format!("{}/v1/tasks", daemon.url),
        &json!({"id": "x1", "webhooks": [target]}),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let d = eventually("an attempt", Duration::from_secs(15), || async {
        let (_, v) = get_json(&format!("{}/v1/tasks/x1", daemon.url)).await;
        let d = v["deliveries"][0].clone();
        (d["attempts"].as_u64().unwrap_or(0) >= 1).then_some(d)
    })
    .await;
    assert!(
        seen.lock().unwrap().is_empty(),
        "went through the environment's proxy: {:?}",
        seen.lock().unwrap()
    );
    assert_eq!(
        d["state"], "pending",
        "it failed to connect and will retry: {d}"
    );
    daemon.kill9();

    // With delivery.proxy set, both clients use it.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &sim.url,
        &[("delivery", &format!("proxy = \"{proxy}\""))],
        "",
    );
    let daemon = spawn_daemon(&cfg);
    sim_create_ids(&sim.url, &["x2".to_string()], 50).await;
    let (s, _) = post_json(
        &format!("{}/v1/tasks", daemon.url),
        &json!({"id": "x2", "webhooks": [target]}),
    )
    .await;
    assert_eq!(s, 202);
    eventually(
        "delivered through the proxy",
        Duration::from_secs(15),
        || async {
            let (_, v) = get_json(&format!("{}/v1/tasks/x2", daemon.url)).await;
            (v["status"] == "done").then_some(())
        },
    )
    .await;
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|r| r == &format!("POST {target}")),
        "{:?}",
        seen.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_webhook_the_operator_is_warned_and_the_event_stays_visible() {
    let sim = spawn_sim(&[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &sim.url, &[], "");
    let out = taskhook_async(&["check-config", "-c", cfg.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: no [[webhooks]] configured"));
    let log = dir.path().join("daemon.log");
    let (mut child, api) = spawn_daemon_logging(&cfg, "taskhook=info", &log);
    let (_, ready) = get_json(&format!("{api}/readyz")).await;
    assert!(
        ready["warnings"][0]
            .as_str()
            .unwrap()
            .contains("no [[webhooks]]"),
        "{ready}"
    );
    sim_create_ids(&sim.url, &["v1".to_string()], 50).await;
    let (s, v) = post_json(&format!("{api}/v1/tasks"), &json!({"id": "v1"})).await;
    assert_eq!(s, 202);
    assert!(v["warning"].is_string(), "{v}");
    let t = eventually("v1 done", Duration::from_secs(10), || async {
        let (_, t) = get_json(&format!("{api}/v1/tasks/v1")).await;
        (t["status"] == "done").then_some(t)
    })
    .await;
    assert_eq!(t["event"]["type"], "task.succeeded", "{t}");
    assert_eq!(t["event"]["data"]["task_id"], "v1");
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("no [[webhooks]] configured")
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_error_is_json() {
    let sim = spawn_sim(&[]);
    let dir = tempfile::tempdir().unwrap();
    let daemon = spawn_daemon(&config(
        dir.path(),
        &sim.url,
        &[("api", "max_webhooks_per_task = 2")],
        "",
    ));
    let http = reqwest::Client::new();
    let cases: Vec<(reqwest::Method, String, Option<Value>, u16, &str)> = vec![
        (
            reqwest::Method::GET,
            "/v1/deliveries?limit=abc".into(),
            None,
            400,
            "invalid_query",
        ),
        (
            reqwest::Method::PUT,
            "/v1/tasks".into(),
            None,
            405,
            "method_not_allowed",
        ),
        (
            reqwest::Method::PATCH,
            "/v1/stats".into(),
            None,
            405,
            "method_not_allowed",
        ),
        (
            reqwest::Method::POST,
            "/v1/deliveries/abc/replay".into(),
            None,
            400,
            "invalid_field",
        ),
        (
            reqwest::Method::GET,
            "/v1/nothing-here".into(),
            None,
            404,
            "not_found",
        ),
        (
            reqwest::Method::POST,
            "/v1/tasks".into(),
            Some(
                json!({"id": "w", "webhooks": ["https://a.example", "https://b.example", "https://c.example"]}),
            ),
            422,
            "too_many_webhooks",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let mut req = http.request(method.clone(), format!("{}{path}", daemon.url));
        if let Some(b) = &body {
            req = req.json(b);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{method} {path}");
        let v: Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON: {e}"));
        assert_eq!(v["error"]["code"], code, "{method} {path}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_the_per_webhook_cap_by_sighup_widens_its_lane() {
    let sim = spawn_sim(&[]);
    let receiver = Receiver::start(None).await;
    *receiver.behaviour.lock().unwrap() = Behaviour {
        delay: Duration::from_millis(400),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &sim.url,
        &[("delivery", "max_concurrent_per_webhook = 2")],
        &webhook_toml("slow", &receiver.url, None),
    );
    let log = dir.path().join("daemon.log");
    let (mut child, api) = spawn_daemon_logging(&cfg, "taskhook=info", &log);
    let first: Vec<String> = (0..8).map(|i| format!("a-{i}")).collect();
    sim_create_ids(&sim.url, &first, 50).await;
    enqueue_ids(&api, &first).await;
    eventually("the first eight", Duration::from_secs(20), || async {
        (receiver.accepted_by_task().len() == 8).then_some(())
    })
    .await;
    assert_eq!(
        receiver
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );

    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "max_concurrent_per_webhook = 2",
        "max_concurrent_per_webhook = 6",
    );
    std::fs::write(&cfg, text).unwrap();
    hup(child.id());
    eventually("the reload applied", Duration::from_secs(5), || async {
        let out = std::fs::read_to_string(&log).unwrap();
        out.contains("configuration reloaded").then_some(())
    })
    .await;
    // The lane has seen traffic: it must follow the new cap too.
    let second: Vec<String> = (0..18).map(|i| format!("b-{i}")).collect();
    sim_create_ids(&sim.url, &second, 50).await;
    enqueue_ids(&api, &second).await;
    eventually("six at once", Duration::from_secs(20), || async {
        (receiver
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 6)
            .then_some(())
    })
    .await;
    assert!(
        receiver
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
            <= 6
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_written_to_a_file_carry_no_colour_codes() {
    let sim = spawn_sim(&[]);
    // Without NO_COLOR (a file is no terminal), and with it.
    for no_color in [None, Some("1")] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &sim.url, &[], "");
        let log = dir.path().join("daemon.log");
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["run", "-c", cfg.to_str().unwrap()])
            .env("RUST_LOG", "taskhook=info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        match no_color {
            Some(v) => cmd.env("NO_COLOR", v),
            None => cmd.env_remove("NO_COLOR"),
        };
        let _child = ChildGuard(cmd.spawn().unwrap());
        let text = eventually("the start line", Duration::from_secs(10), || async {
            let t = std::fs::read_to_string(&log).unwrap();
            t.contains("taskhook is running").then_some(t)
        })
        .await;
        assert!(
            !text.contains('\u{1b}'),
            "ANSI escapes in a log file (NO_COLOR={no_color:?}): {text:?}"
        );
        assert!(text.contains(" INFO "), "{text}");
    }
}

/// The pids of `parent`'s children, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The fields after the command name (in parentheses): state, ppid.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

/// Runs the daemon with its output at a pseudo-terminal (util-linux's
/// `script`) until it says it is running, stops it with SIGTERM, and
/// returns what the terminal showed.
async fn daemon_at_a_terminal(script: &Path, cfg: &Path, no_color: Option<&str>) -> String {
    use std::io::Read;
    let mut cmd = std::process::Command::new(script);
    cmd.args([
        "-q",
        "-e",
        "-c",
        &format!("exec '{BIN}' run -c '{}'", cfg.display()),
        "/dev/null",
    ])
    .env("RUST_LOG", "taskhook=info")
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::inherit());
    match no_color {
        Some(v) => cmd.env("NO_COLOR", v),
        None => cmd.env_remove("NO_COLOR"),
    };
    let mut child = ChildGuard(cmd.spawn().unwrap());
    let shown = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = shown.clone();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let text = || String::from_utf8_lossy(&shown.lock().unwrap()).into_owned();
    eventually(
        "the daemon running at a terminal",
        Duration::from_secs(20),
        || async { text().contains("taskhook is running").then_some(()) },
    )
    .await;
    // `script` runs the daemon as its child (the shell execs it).
    let daemon = eventually("the daemon's pid", Duration::from_secs(5), || async {
        children_of(child.id()).first().copied()
    })
    .await;
    send_signal(daemon, "TERM");
    let status = wait_child(&mut child, Duration::from_secs(20));
    assert!(status.success(), "{status:?}: {}", text());
    reader.join().unwrap();
    text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colour_only_at_a_terminal_and_never_under_no_color() {
    let Some(script) = external_tool("TASKHOOK_SCRIPT", "script", "util-linux's script") else {
        return;
    };
    let sim = spawn_sim(&[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &sim.url, &[], "");
    let shown = daemon_at_a_terminal(&script, &cfg, None).await;
    assert!(
        shown.contains("\u{1b}["),
        "no colour at a terminal: {shown:?}"
    );
    for value in ["1", "true"] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &sim.url, &[], "");
        let shown = daemon_at_a_terminal(&script, &cfg, Some(value)).await;
        assert!(shown.contains(" INFO "), "{shown:?}");
        assert!(
            !shown.contains('\u{1b}'),
            "colour at a terminal under NO_COLOR={value:?}: {shown:?}"
        );
    }
    // Empty is as if unset (no-color.org).
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &sim.url, &[], "");
    let shown = daemon_at_a_terminal(&script, &cfg, Some("")).await;
    assert!(
        shown.contains("\u{1b}["),
        "no colour at a terminal under an empty NO_COLOR: {shown:?}"
    );
}

/// The simulator's request log: every request in arrival order.
async fn sim_requests(sim: &str) -> Vec<Value> {
    let (s, v) = get_json(&format!("{sim}/_sim/requests")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["logging"], true,
        "start the simulator with --log-requests"
    );
    v["requests"].as_array().cloned().unwrap_or_default()
}

/// How many IDs each logged request for `service` carried, in order.
fn batch_sizes(log: &[Value], service: &str) -> Vec<usize> {
    log.iter()
        .filter(|r| r["service"] == service)
        .map(|r| r["ids"].as_array().map_or(0, Vec::len))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_the_cap_halves_only_that_services_batches() {
    let sim = spawn_sim(&["--log-requests"]);
    let receiver = Receiver::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    // The smallest cap the configuration allows: 64 KiB.
    let cap = 65_536;
    let cfg = config(
        dir.path(),
        &sim.url,
        &[("upstream", &format!("max_response_bytes = {cap}"))],
        &webhook_toml("pipeline", &receiver.url, None),
    );
    let daemon = spawn_daemon(&cfg);

    // A finished producer record as the simulator writes it, padded so that
    // 50 of them are well over the cap and 25 well under it.
    sim_create(&sim.url, vec![json!({"id": "template", "duration_ms": 0})]).await;
    let (s, answer) = post_json(
        &format!("{}/producer/tasks", sim.url),
        &json!({"ids": ["template"], "action": "retrieve_batch"}),
    )
    .await;
    assert_eq!(s, 200, "{answer}");
    let mut record = answer["items"][0].clone();
    assert!(record["finished_at"].is_number(), "{record}");
    let size = 1_900;
    let pad = size - serde_json::to_string(&record).unwrap().len();
    record["padding"] = json!("x".repeat(pad));
    assert!(50 * size > cap * 13 / 10 && 25 * size < cap * 8 / 10);
    let big: Vec<String> = (0..50).map(|i| format!("big-{i:02}")).collect();
    sim_create(
        &sim.url,
        big.iter()
            .map(|id| json!({"id": id, "duration_ms": 0, "record": record}))
            .collect(),
    )
    .await;
    // Another service's tasks, polled at the same time and for a while
    // after, with small answers.
    let other: Vec<String> = (0..40).map(|i| format!("kl-{i:02}")).collect();
    sim_create(
        &sim.url,
        other
            .iter()
            .map(|id| json!({"id": id, "service": "kling", "duration_ms": 1200}))
            .collect(),
    )
    .await;
    let tasks: Vec<Value> = big
        .iter()
        .map(|id| json!({"id": id}))
        .chain(other.iter().map(|id| json!({"id": id, "service": "kling"})))
        .collect();
    let (s, v) = post_json(
        &format!("{}/v1/tasks", daemon.url),
        &json!({"tasks": tasks}),
    )
    .await;
    assert_eq!(s, 202, "{v}");

    // Every task is delivered once the answers fit.
    let e = eventually("all 90 events", Duration::from_secs(30), || async {
        let e = events(&receiver).await;
        (e.len() == 90).then_some(e)
    })
    .await;
    for id in big.iter().chain(&other) {
        assert_eq!(e[id], "task.succeeded", "{id}");
    }
    // The answer over the cap failed its batch as too large...
    let too_large = metric_value(
        &daemon.url,
        "taskhook_upstream_requests_total{outcome=\"too_large\"}",
    )
    .await;
    assert_eq!(too_large, Some(1.0));
    // ...and halved that service's batch size: the first request asked
    // about all 50, every later one about at most 25.
    let log = sim_requests(&sim.url).await;
    let producer = batch_sizes(&log, "producer");
    assert_eq!(producer[0], 1, "the template: {producer:?}");
    assert_eq!(producer[1], 50, "{producer:?}");
    assert!(
        producer.len() >= 4 && producer[2..].iter().all(|n| *n <= 25),
        "{producer:?}"
    );
    assert_eq!(producer[2..].iter().sum::<usize>(), 50, "{producer:?}");
    // The other service was never touched: every request for it, before
    // and after the answer over the cap, asked about all 40 of its tasks.
    let too_large_at = log
        .iter()
        .find(|r| r["service"] == "producer" && r["ids"].as_array().unwrap().len() == 50)
        .map(|r| r["seq"].as_u64().unwrap())
        .unwrap();
    let kling = batch_sizes(&log, "kling");
    assert!(kling.iter().all(|n| *n == 40), "{kling:?}");
    let kling_after = log
        .iter()
        .filter(|r| r["service"] == "kling" && r["seq"].as_u64().unwrap() > too_large_at)
        .count();
    assert!(
        kling_after >= 2,
        "{kling_after} kling requests after the answer over the cap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_writes_to_the_store_at_most_once_a_second() {
    let sim = spawn_sim(&[]);
    let dir = tempfile::tempdir().unwrap();
    let daemon = spawn_daemon(&config(dir.path(), &sim.url, &[], ""));
    let writes = || async {
        metric_value(
            &daemon.url,
            "taskhook_store_query_duration_seconds_count{op=\"check_writable\"}",
        )
        .await
        .unwrap_or(0.0) as u64
    };
    assert_eq!(writes().await, 0, "nothing asked /readyz yet");
    let http = reqwest::Client::new();
    let url = format!("{}/readyz", daemon.url);
    let started = std::time::Instant::now();
    let mut calls = 0;
    // A burst of eight at a time, for two and a half seconds.
    while started.elapsed() < Duration::from_millis(2500) {
        let burst = (0..8).map(|_| http.get(&url).send());
        for r in futures::future::join_all(burst).await {
            assert_eq!(r.unwrap().status(), 200);
            calls += 1;
        }
    }
    let elapsed = started.elapsed();
    let written = writes().await;
    assert!(calls >= 40, "only {calls} calls");
    // One write, then one more each time the cached answer is a second old.
    let most = elapsed.as_secs() + 1;
    assert!(
        (2..=most).contains(&written),
        "{written} store writes for {calls} calls of /readyz in {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanently_unreadable_record_still_expires_at_the_ttl() {
    let sim = spawn_sim(&[]);
    let receiver = Receiver::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let ttl = Duration::from_secs(2);
    let cfg = config(
        dir.path(),
        &sim.url,
        &[("poll", "task_ttl = \"2s\"")],
        &webhook_toml("pipeline", &receiver.url, None),
    );
    let daemon = spawn_daemon(&cfg);
    sim_create_ids(&sim.url, &["bad".to_string()], 50).await;
    // Every answer about it carries its record with a lone surrogate.
    sim_script(&sim.url, &["corrupt-item"; 200]).await;
    let enqueued = std::time::SystemTime::now();
    enqueue_ids(&daemon.url, &["bad".to_string()]).await;
    let hit = eventually("the expiry", Duration::from_secs(20), || async {
        receiver.hits().into_iter().find(|h| h.status_sent < 300)
    })
    .await;
    assert_eq!(hit.body["type"], "task.expired", "{}", hit.body);
    assert_eq!(hit.body["data"]["task_id"], "bad");
    let enqueued_ms = enqueued
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        hit.received_at_ms - enqueued_ms >= ttl.as_millis() as i64,
        "expired {} ms after enqueue",
        hit.received_at_ms - enqueued_ms
    );
    // It was asked about (and unreadable) again and again until then.
    let (_, st) = get_json(&format!("{}/_sim/stats", sim.url)).await;
    assert!(st["faults"]["corrupt-item"].as_u64().unwrap() >= 3, "{st}");
}

/// Sends SIGHUP and waits for the daemon's log (at `log`) to say the
/// reload number `n` (1-based) was applied.
async fn reload(pid: u32, log: &Path, n: usize) {
    hup(pid);
    eventually("the reload applied", Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(log).unwrap();
        (text.matches("configuration reloaded").count() >= n).then_some(())
    })
    .await;
}

/// The deliveries in `state` (`failed`, `webhook_removed`, ...).
async fn deliveries_in(api: &str, state: &str) -> Vec<Value> {
    let (s, v) = get_json(&format!("{api}/v1/deliveries?state={state}")).await;
    assert_eq!(s, 200, "{v}");
    v["deliveries"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_a_webhook_by_sighup_parks_its_deliveries_under_the_old_name() {
    let sim = spawn_sim(&[]);
    // No secret of its own: each hit's signature is checked below against
    // the old name's secret and the new name's.
    let receiver = Receiver::start(None).await;
    *receiver.behaviour.lock().unwrap() = Behaviour {
        status: Some(500),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let base = config(dir.path(), &sim.url, &[], "");
    let text = std::fs::read_to_string(&base).unwrap().replace(
        "retry_schedule = [\"100ms\", \"200ms\", \"300ms\"]",
        &format!("retry_schedule = [{}]", vec!["\"300ms\""; 30].join(", ")),
    );
    let write = |name: &str, secret: &str| {
        std::fs::write(
            &base,
            format!("{text}{}", webhook_toml(name, &receiver.url, Some(secret))),
        )
        .unwrap()
    };
    write("pipeline", SECRET_A);
    let log = dir.path().join("daemon.log");
    let (child, api) = spawn_daemon_logging(&base, "taskhook=info", &log);
    let old: Vec<String> = (0..3).map(|i| format!("o-{i}")).collect();
    sim_create_ids(&sim.url, &old, 50).await;
    enqueue_ids(&api, &old).await;
    eventually(
        "the receiver refusing all three",
        Duration::from_secs(10),
        || async {
            let seen: std::collections::HashSet<String> = receiver
                .hits()
                .iter()
                .map(|h| h.body["data"]["task_id"].as_str().unwrap_or("").to_string())
                .collect();
            (seen.len() == 3).then_some(())
        },
    )
    .await;

    // Same URL, new name and secret: the old name's deliveries park under
    // the old name; none goes out under the new one.
    write("renamed", SECRET_B);
    reload(child.id(), &log, 1).await;
    let parked = eventually(
        "three parked deliveries",
        Duration::from_secs(10),
        || async {
            let list = deliveries_in(&api, "webhook_removed").await;
            (list.len() == 3).then_some(list)
        },
    )
    .await;
    assert!(
        parked.iter().all(|d| d["webhook"] == "pipeline"),
        "{parked:?}"
    );
    assert!(parked.iter().all(|d| d["kind"] == "webhook"), "{parked:?}");
    let (_, st) = get_json(&format!("{api}/v1/stats")).await;
    assert_eq!(st["deliveries"]["webhook_removed"], 3, "{st}");
    // Replaying one by hand while its name is gone parks it again.
    let id = parked[0]["id"].as_i64().unwrap();
    let (s, v) = post_json(&format!("{api}/v1/deliveries/{id}/replay"), &json!({})).await;
    assert_eq!(s, 202, "{v}");
    let before = parked[0]["updated_at"].as_str().unwrap().to_string();
    let again = eventually("parked again", Duration::from_secs(10), || async {
        let list = deliveries_in(&api, "webhook_removed").await;
        let d = list.into_iter().find(|d| d["id"] == id)?;
        (d["updated_at"].as_str()? > before.as_str()).then_some(d)
    })
    .await;
    assert_eq!(again["webhook"], "pipeline", "{again}");
    assert!(
        again["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not configured")),
        "{again}"
    );

    // The receiver accepts now. A new task goes out under the new name,
    // signed with its secret...
    *receiver.behaviour.lock().unwrap() = Behaviour::default();
    sim_create_ids(&sim.url, &["n-1".to_string()], 50).await;
    enqueue_ids(&api, &["n-1".to_string()]).await;
    let hit = eventually(
        "the new task delivered",
        Duration::from_secs(10),
        || async {
            receiver
                .accepted_by_task()
                .remove("n-1")
                .map(|h| h[0].clone())
        },
    )
    .await;
    assert!(signature_valid(SECRET_B, &hit.header_map(), &hit.raw));
    let (_, t) = get_json(&format!("{api}/v1/tasks/n-1")).await;
    assert_eq!(t["deliveries"][0]["webhook"], "renamed", "{t}");
    // ...while every request ever made for the old tasks was the old
    // name's: signed with its secret, never unsigned or with the new one,
    // and none was accepted (nothing went out after they parked).
    for h in receiver.hits() {
        if h.body["data"]["task_id"] == "n-1" {
            continue;
        }
        assert_eq!(
            h.status_sent, 500,
            "an old delivery went out after it parked"
        );
        assert!(
            signature_valid(SECRET_A, &h.header_map(), &h.raw),
            "not signed with the old name's secret: {:?}",
            h.headers
        );
    }

    // The old name back: its parked deliveries resume by themselves.
    write("pipeline", SECRET_A);
    reload(child.id(), &log, 2).await;
    let got = eventually(
        "the old three delivered",
        Duration::from_secs(10),
        || async {
            let got = receiver.accepted_by_task();
            old.iter().all(|id| got.contains_key(id)).then_some(got)
        },
    )
    .await;
    for id in &old {
        let h = &got[id][0];
        assert!(signature_valid(SECRET_A, &h.header_map(), &h.raw), "{id}");
    }
    assert!(deliveries_in(&api, "webhook_removed").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_dead_letter_goes_to_the_url_its_webhook_has_now() {
    let sim = spawn_sim(&[]);
    let old = Receiver::start(Some(SECRET_A)).await;
    *old.behaviour.lock().unwrap() = Behaviour {
        status: Some(500),
        ..Default::default()
    };
    let new = Receiver::start(Some(SECRET_A)).await;
    let dir = tempfile::tempdir().unwrap();
    let base = config(dir.path(), &sim.url, &[], "");
    let text = std::fs::read_to_string(&base).unwrap();
    let write = |url: &str| {
        std::fs::write(
            &base,
            format!("{text}{}", webhook_toml("pipeline", url, Some(SECRET_A))),
        )
        .unwrap()
    };
    write(&old.url);
    let log = dir.path().join("daemon.log");
    let (child, api) = spawn_daemon_logging(&base, "taskhook=info", &log);
    sim_create_ids(&sim.url, &["d-1".to_string()], 50).await;
    enqueue_ids(&api, &["d-1".to_string()]).await;
    // Four refused attempts (the test schedule has three retries).
    let dead = eventually("a dead letter", Duration::from_secs(15), || async {
        deliveries_in(&api, "failed").await.into_iter().next()
    })
    .await;
    assert_eq!(dead["webhook"], "pipeline");
    let refused = old.hits().len();
    assert_eq!(refused, 4);

    // The webhook now points elsewhere; the dead letter is replayed.
    write(&new.url);
    reload(child.id(), &log, 1).await;
    let id = dead["id"].as_i64().unwrap();
    let (s, v) = post_json(&format!("{api}/v1/deliveries/{id}/replay"), &json!({})).await;
    assert_eq!(s, 202, "{v}");
    let got = eventually("the new URL gets it", Duration::from_secs(10), || async {
        new.accepted_by_task().remove("d-1")
    })
    .await;
    assert!(got[0].signature_ok);
    assert_eq!(got[0].body["data"]["task_id"], "d-1");
    eventually("delivered", Duration::from_secs(10), || async {
        let (_, t) = get_json(&format!("{api}/v1/tasks/d-1")).await;
        (t["deliveries"][0]["state"] == "delivered").then_some(())
    })
    .await;
    assert_eq!(old.hits().len(), refused, "the old URL was asked again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_the_moment_the_daemon_announces_itself_is_handled() {
    // A supervisor may stop or reload the daemon as soon as it says it is
    // ready: by then SIGTERM must stop it cleanly and SIGHUP reload it,
    // not kill it with the default action.
    let sim = spawn_sim(&[]);
    for round in 0..6 {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &sim.url, &[], "");
        let mut daemon = spawn_daemon(&cfg);
        daemon.signal("TERM");
        assert_eq!(
            daemon.wait_exit(Duration::from_secs(20)),
            Some(0),
            "round {round}: SIGTERM right after the address line"
        );

        let log = dir.path().join("daemon.log");
        let (mut child, api) = spawn_daemon_logging(&cfg, "taskhook=info", &log);
        hup(child.id());
        eventually("the reload", Duration::from_secs(10), || async {
            let text = std::fs::read_to_string(&log).unwrap();
            text.contains("configuration reloaded").then_some(())
        })
        .await;
        assert!(
            child.try_wait().unwrap().is_none(),
            "round {round}: SIGHUP right after the address line ended the daemon"
        );
        let (s, _) = get_json(&format!("{api}/healthz")).await;
        assert_eq!(s, 200);
    }
}
