//! The control API as a pipeline sees it: auth, validation, duplicates,
//! inspection, dead letters and replay.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

async fn send(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_by_name_and_never_disturbs_the_queue() {
    let sim = spawn_sim(&[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(
        dir.path(),
        &sim.url,
        "[api]\ntoken = \"api-secret\"\nmax_body_bytes = 4096\nlisten = \"127.0.0.1:0\"\n",
    );
    // The extra [api] table repeats the section; write the file by hand instead.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[api]\nlisten = \"127.0.0.1:0\"\n", "");
    std::fs::write(&cfg, text).unwrap();
    let daemon = spawn_daemon(&cfg);
    sim_create(&sim.url, vec![json!({"id": "keep-1", "outcome": "never"})]).await;
    let tasks = format!("{}/v1/tasks", daemon.url);
    let tok = Some("api-secret");
    use reqwest::Method as M;

    // Auth.
    let (s, v) = send(M::POST, &tasks, None, Some(r#"{"id": "keep-1"}"#)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (s, _) = send(M::POST, &tasks, Some("wrong"), Some(r#"{"id": "keep-1"}"#)).await;
    assert_eq!(s, 401);
    let (s, _) = send(M::GET, &format!("{}/healthz", daemon.url), None, None).await;
    assert_eq!(s, 200, "health is open");

    // A good enqueue, then its duplicate.
    let (s, v) = send(
        M::POST,
        &tasks,
        tok,
        Some(r#"{"id": "keep-1", "metadata": {"a": 1}}"#),
    )
    .await;
    // No webhook is configured here, and the task names none: accepted,
    // with a warning that its result reaches nobody.
    assert_eq!(
        (s, &v["accepted"], &v["duplicates"]),
        (202, &json!(1), &json!(0))
    );
    assert!(
        v["warning"].as_str().unwrap().contains("reach no receiver"),
        "{v}"
    );
    let (s, v) = send(
        M::POST,
        &tasks,
        tok,
        Some(r#"{"tasks": [{"id": "keep-1"}, {"id": "new-1"}, {"id": "new-1"}]}"#),
    )
    .await;
    assert_eq!(
        (s, &v["accepted"], &v["duplicates"]),
        (202, &json!(1), &json!(2))
    );
    let (s, v) = send(
        M::POST,
        &tasks,
        tok,
        Some(r#"{"id": "own-hook-1", "webhooks": ["https://hooks.example.com/h"]}"#),
    )
    .await;
    assert_eq!(
        (s, v.get("warning")),
        (202, None),
        "a task with its own webhook: {v}"
    );

    // Each bad body: status, code, and a message naming the field.
    let long_id = format!(r#"{{"id": "{}"}}"#, "x".repeat(300));
    let cases: Vec<(&str, u16, &str, &str)> = vec![
        ("{not json", 400, "bad_json", "invalid JSON"),
        (r#"{"id": 12}"#, 400, "invalid_field", "id:"),
        (r#"{"id": ""}"#, 422, "invalid_id", "id:"),
        (&long_id, 422, "invalid_id", "id:"),
        (r#"{"id": "a\u0001"}"#, 422, "invalid_id", "id:"),
        (
            r#"{"tasks": [{"id": "ok-2"}, {"id": "x", "webhooks": ["file:///etc/passwd"]}]}"#,
            422,
            "invalid_webhook",
            "tasks[1].webhooks[0]",
        ),
        (
            r#"{"id": "x", "metadata": "no"}"#,
            400,
            "invalid_field",
            "metadata",
        ),
        // A misspelled service is refused, naming the services it knows.
        (
            r#"{"tasks": [{"id": "ok-3"}, {"id": "x", "service": "midjouney"}]}"#,
            422,
            "unknown_service",
            "tasks[1].service: \"midjouney\" is not a known service (known: captcha, ",
        ),
    ];
    for (body, status, code, field) in cases {
        let (s, v) = send(M::POST, &tasks, tok, Some(body)).await;
        assert_eq!(s, status, "{body}: {v}");
        assert_eq!(v["error"]["code"], code, "{body}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{body}: {v}"
        );
    }
    let big = format!(
        r#"{{"tasks": [{}]}}"#,
        vec![r#"{"id": "big"}"#; 400].join(",")
    );
    let (s, v) = send(M::POST, &tasks, tok, Some(&big)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("body_too_large"))
    );

    // Nothing of the refused requests was stored; the queue is as it was.
    for refused in ["ok-2", "ok-3"] {
        let (s, _) = send(M::GET, &format!("{tasks}/{refused}"), tok, None).await;
        assert_eq!(s, 404, "{refused}");
    }
    let (s, v) = send(M::GET, &format!("{tasks}/keep-1"), tok, None).await;
    assert_eq!(s, 200);
    assert_eq!(v["status"], "watching");
    assert_eq!(v["service"], "producer");
    assert_eq!(v["metadata"], json!({"a": 1}));
    let (_, st) = send(M::GET, &format!("{}/v1/stats", daemon.url), tok, None).await;
    assert_eq!(st["tasks"]["watching"], 3, "{st}");

    // The poller is working on it.
    eventually("a poll", Duration::from_secs(10), || async {
        let (_, v) = send(M::GET, &format!("{tasks}/keep-1"), tok, None).await;
        (v["polls"].as_u64().unwrap_or(0) > 0).then_some(())
    })
    .await;

    // Delete, then 404.
    let (s, _) = send(M::DELETE, &format!("{tasks}/new-1"), tok, None).await;
    assert_eq!(s, 204);
    let (s, v) = send(M::DELETE, &format!("{tasks}/new-1"), tok, None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    let (s, _) = send(M::GET, &format!("{}/readyz", daemon.url), None, None).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayable() {
    let sim = spawn_sim(&[]);
    let a = Receiver::start(None).await;
    *a.refuse_first.lock().unwrap() = 3; // the schedule allows 1 + 2 retries
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("[[webhooks]]\nname = \"down\"\nurl = \"{}\"\n", a.url);
    let cfg = daemon_config(dir.path(), &sim.url, &extra)
        .to_str()
        .unwrap()
        .to_string();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        r#"retry_schedule = ["100ms", "200ms", "300ms"]"#,
        r#"retry_schedule = ["100ms", "100ms"]"#,
    );
    std::fs::write(&cfg, text).unwrap();
    let daemon = spawn_daemon(std::path::Path::new(&cfg));
    sim_create(&sim.url, vec![json!({"id": "d1", "duration_ms": 50})]).await;
    let (s, v) = post_json(&format!("{}/v1/tasks", daemon.url), &json!({"id": "d1"})).await;
    assert_eq!(s, 202, "{v}");

    let list_url = format!("{}/v1/deliveries?state=failed", daemon.url);
    let failed = eventually("a dead letter", Duration::from_secs(20), || async {
        let (_, v) = get_json(&list_url).await;
        let list = v["deliveries"].as_array().cloned().unwrap_or_default();
        (!list.is_empty()).then_some(list)
    })
    .await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["task_id"], "d1");
    assert_eq!(failed[0]["attempts"], 3);
    assert_eq!(failed[0]["event_type"], "task.succeeded");
    let (_, t) = get_json(&format!("{}/v1/tasks/d1", daemon.url)).await;
    assert_eq!(t["status"], "done", "a dead letter settles the task");
    let (_, st) = get_json(&format!("{}/v1/stats", daemon.url)).await;
    assert_eq!(st["dead_letters"], 1);

    // The receiver is back: replay it by its ID.
    let id = failed[0]["id"].as_i64().unwrap();
    let (s, v) = post_json(
        &format!("{}/v1/deliveries/{id}/replay", daemon.url),
        &json!({}),
    )
    .await;
    assert_eq!((s, v), (202, json!({"replayed": 1})));
    eventually("the replayed delivery", Duration::from_secs(10), || async {
        a.accepted_by_task().contains_key("d1").then_some(())
    })
    .await;
    let ids: std::collections::HashSet<_> = a.hits().iter().map(|h| h.webhook_id.clone()).collect();
    assert_eq!(ids.len(), 1, "the replay keeps the webhook-id");
    let (s, _) = post_json(
        &format!("{}/v1/deliveries/{id}/replay", daemon.url),
        &json!({}),
    )
    .await;
    assert_eq!(s, 404, "only failed deliveries replay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_task_webhooks_cannot_reach_private_addresses_unless_allowed() {
    let sim = spawn_sim(&[]);
    let a = Receiver::start(None).await;
    let port = a
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    sim_create(
        &sim.url,
        vec![
            json!({"id": "p1", "duration_ms": 50}),
            json!({"id": "p2", "duration_ms": 50}),
        ],
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let daemon = spawn_daemon(&daemon_config(dir.path(), &sim.url, ""));
    let tasks = format!("{}/v1/tasks", daemon.url);
    for url in [
        "http://127.0.0.1:9/x",
        "http://169.254.169.254/latest",
        "http://[::1]/x",
        "http://10.0.0.8/x",
    ] {
        let (s, v) = post_json(&tasks, &json!({"id": "p1", "webhooks": [url]})).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (422, Some("invalid_webhook")),
            "{url}: {v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not a public address")
        );
    }
    // A name that resolves to loopback passes ingest but never gets a request.
    let sneaky = format!("http://localhost:{port}/hook");
    let (s, _) = post_json(&tasks, &json!({"id": "p1", "webhooks": [sneaky]})).await;
    assert_eq!(s, 202);
    let failed = eventually("the blocked delivery", Duration::from_secs(15), || async {
        let (_, v) = get_json(&format!("{}/v1/deliveries?state=failed", daemon.url)).await;
        v["deliveries"]
            .as_array()
            .filter(|l| !l.is_empty())
            .cloned()
    })
    .await;
    assert_eq!(failed[0]["attempts"], 1, "blocking is final, not retried");
    assert!(
        failed[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("blocked"),
        "{failed:?}"
    );
    assert!(a.hits().is_empty(), "the receiver on loopback got nothing");
    drop(daemon);

    // Allowed explicitly: the same kind of URL is delivered to.
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path(), &sim.url, "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[delivery]\n",
        "[delivery]\nallow_private_networks = true\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let daemon = spawn_daemon(&cfg);
    let (s, _) = post_json(
        &format!("{}/v1/tasks", daemon.url),
        &json!({"id": "p2", "webhooks": [a.url]}),
    )
    .await;
    assert_eq!(s, 202);
    eventually("the allowed delivery", Duration::from_secs(15), || async {
        a.accepted_by_task().contains_key("p2").then_some(())
    })
    .await;
}
