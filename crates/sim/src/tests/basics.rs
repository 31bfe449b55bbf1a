//! The items family (today's producer shape and its knobs), faults, limits,
//! statistics and implicit tasks.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{assert_error_shape, finished, start, states};
use crate::SimArgs;
use crate::faults::FaultKind;
use crate::ids::{iso8601, secs};

#[tokio::test]
async fn batch_omits_unknown_and_keeps_duplicates() {
    let sim = start(SimArgs::default()).await;
    sim.create(json!({"id": "a", "duration_ms": 5000})).await;
    let v = sim.batch(&["a", "missing-x", "a", "implicit-1"]).await;
    let ids: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "a", "implicit-1"]);
    assert_eq!(v["count"], 3);
    let resp = sim.retrieve("missing-y").await;
    assert_eq!(resp.status(), 404);
    assert_error_shape(&resp.json().await.unwrap(), "not_found");
    let info = sim.get_json("/_sim/tasks/a").await;
    assert_eq!(info["polls"], 2);

    let never_known = start(SimArgs {
        unknown_rate: 1.0,
        duplicate_rate: 1.0,
        ..SimArgs::default()
    })
    .await;
    assert_eq!(never_known.batch(&["x", "y"]).await["count"], 0);
    never_known.create(json!({"id": "x"})).await;
    // The duplicate is the upstream misbehaving: the count stays the number
    // of requested IDs it knows.
    let v = never_known.batch(&["x"]).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    assert_eq!(v["count"], 1);
}

#[tokio::test]
async fn succeeded_task_evolves_and_finishes_on_time() {
    let sim = start(SimArgs::default()).await;
    sim.create(json!({"id": "s", "duration_ms": 400})).await;
    let first = sim.record("s").await;
    assert_eq!(first["response"], json!({"success": true, "task_id": "s"}));
    assert!(!finished(&first));
    let seen = sim.poll_until("s", finished).await;
    let all: BTreeSet<String> = seen.iter().flat_map(states).collect();
    assert!(
        all.contains("pending") && all.contains("running"),
        "{all:?}"
    );
    let last = seen.last().unwrap();
    assert_eq!(states(last), ["succeeded"]);
    assert_eq!(last["response"]["task_id"], "s");
    let item = &last["response"]["data"][0];
    assert_eq!(item["progress"], "100%");
    assert_eq!(item["audio_url"], "https://example.invalid/a.m4a");
    assert!(item["video_url"].is_null());
    assert_eq!(item["created_at"].as_str().unwrap().len(), 27);
    assert_eq!(last["_id"].as_str().unwrap().len(), 24);
    assert_eq!(last["type"], "audios");
    for k in [
        "api_id",
        "application_id",
        "user_id",
        "credential_id",
        "trace_id",
    ] {
        assert_eq!(last[k].as_str().unwrap().len(), 36, "{k}");
    }
    let info = sim.get_json("/_sim/tasks/s").await;
    let created = info["created_at_ms"].as_u64().unwrap();
    assert_eq!(info["finishes_at_ms"].as_u64().unwrap(), created + 400);
    let fin = last["finished_at"].as_f64().unwrap();
    assert!((fin * 1000.0 - (created + 400) as f64).abs() < 0.5);
    assert!((last["created_at"].as_f64().unwrap() * 1000.0 - created as f64).abs() < 0.5);
    assert!(last["started_at"].is_f64());
    assert_eq!(last["duration"], 0.4);
    assert!(last["elapsed"].is_f64());
}

#[tokio::test]
async fn running_shapes_and_service_type() {
    let sim = start(SimArgs::default()).await;
    let specs: Vec<Value> = ["missing", "null", "empty"]
        .iter()
        .map(|s| json!({"id": s, "running_shape": s, "duration_ms": 60000}))
        .collect();
    sim.create(json!({"tasks": specs})).await;
    assert!(sim.record("missing").await.get("response").is_none());
    assert!(sim.record("null").await["response"].is_null());
    assert_eq!(sim.record("empty").await["response"], json!({}));
    sim.create(json!({"id": "v", "service": "veo"})).await;
    assert_eq!(
        sim.post_json("/veo/tasks", json!({"id": "v"})).await["type"],
        "videos"
    );
    assert_eq!(sim.record("empty").await.get("started_at"), None);
}

#[tokio::test]
async fn failure_outcomes() {
    let sim = start(SimArgs::default()).await;
    let specs: Vec<Value> = [
        "failed",
        "failed_string",
        "item_error",
        "failed_unfinished",
        "never",
    ]
    .iter()
    .map(|o| json!({"id": o, "outcome": o, "duration_ms": 150, "items": 2}))
    .collect();
    sim.create(json!({"tasks": specs})).await;
    sim.poll_until("failed", finished).await;
    sim.poll_until("failed_unfinished", |r| r["response"]["success"] == false)
        .await;
    let ids = [
        "failed",
        "failed_string",
        "item_error",
        "failed_unfinished",
        "never",
    ];
    let v = sim.batch(&ids).await;
    let items = v["items"].as_array().unwrap();
    let [failed, failed_string, item_error, unfinished, never] = &items[..] else {
        panic!("{v}");
    };
    assert!(finished(failed));
    assert_eq!(failed["response"]["error"]["code"], "generation_failed");
    assert_eq!(failed["response"]["task_id"], "failed");
    assert!(failed["response"]["trace_id"].is_string());
    assert!(finished(failed_string));
    assert_eq!(failed_string["response"]["success"], false);
    assert!(failed_string["response"]["error"].is_string());
    assert!(finished(item_error));
    assert_eq!(states(item_error), ["succeeded", "error"]);
    assert!(!finished(unfinished));
    assert!(unfinished["response"]["error"]["message"].is_string());
    assert!(!finished(never));
    assert_eq!(states(never), ["running", "running"]);
    let info = sim.get_json("/_sim/tasks/never").await;
    assert!(info["finishes_at_ms"].is_null());
    assert_eq!(info["outcome"], "never");
    let info = sim.get_json("/_sim/tasks/failed_unfinished").await;
    assert!(info["finishes_at_ms"].is_u64());
}

#[tokio::test]
async fn hiccup_appears_exactly_once() {
    let sim = start(SimArgs::default()).await;
    sim.create(json!({"id": "h", "outcome": "hiccup", "duration_ms": 300}))
        .await;
    let seen = sim.poll_until("h", finished).await;
    let hiccups: Vec<&Value> = seen
        .iter()
        .filter(|r| r["response"]["success"] == false)
        .collect();
    assert_eq!(hiccups.len(), 1, "{seen:?}");
    assert!(!finished(hiccups[0]));
    assert!(hiccups[0]["response"]["error"]["code"].is_string());
    assert_eq!(states(seen.last().unwrap()), ["succeeded"]);
    assert_ne!(seen.last().unwrap()["response"]["success"], false);
}

#[tokio::test]
async fn items_finish_staggered() {
    let sim = start(SimArgs::default()).await;
    sim.create(json!({"id": "two", "items": 2, "duration_ms": 1000}))
        .await;
    let seen = sim
        .poll_until("two", |r| states(r) == ["succeeded", "running"])
        .await;
    let last = seen.last().unwrap();
    assert!(!finished(last));
    assert!(last["response"]["data"][1]["progress"].is_u64());
    let running_even = seen
        .iter()
        .find(|r| states(r).first().is_some_and(|s| s == "running"))
        .expect("item 0 seen running");
    let p = running_even["response"]["data"][0]["progress"]
        .as_str()
        .unwrap();
    assert!(p.ends_with('%'));

    sim.create(json!({"id": "alt", "items": 2, "duration_ms": 50, "state_words": "alt"}))
        .await;
    let seen = sim.poll_until("alt", finished).await;
    assert_eq!(states(seen.last().unwrap()), ["completed", "complete"]);
}

#[tokio::test]
async fn scripted_faults_in_order() {
    let sim = start(SimArgs::default()).await;
    sim.create(json!({"id": "t"})).await;
    let script = [
        "429",
        "429-no-retry-after",
        "500",
        "502-html",
        "503-html",
        "truncated",
        "reset",
        "401",
    ];
    let settings: Value = sim
        .post("/_sim/faults", json!({"script": script}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(settings["script"].as_array().unwrap().len(), script.len());

    let r = sim.retrieve("t").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_error_shape(&r.json().await.unwrap(), "too_many_requests");
    let r = sim.retrieve("t").await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_none());
    let r = sim.retrieve("t").await;
    assert_eq!(r.status(), 500);
    assert_error_shape(&r.json().await.unwrap(), "api_error");
    for status in [502, 503] {
        let r = sim.retrieve("t").await;
        assert_eq!(r.status(), status);
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("text/html"));
        assert!(r.text().await.unwrap().contains("<html>"));
    }
    let r = sim.retrieve("t").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body = r.bytes().await.unwrap();
    assert!(!body.is_empty());
    assert!(serde_json::from_slice::<Value>(&body).is_err());
    let url = format!("{}/producer/tasks", sim.base);
    let reset = match sim.client.post(url).json(&json!({"id": "t"})).send().await {
        Ok(r) => r.bytes().await.is_err(),
        Err(_) => true,
    };
    assert!(reset, "reset must surface as a client error");
    let r = sim.retrieve("t").await;
    assert_eq!(r.status(), 401);
    assert_error_shape(&r.json().await.unwrap(), "invalid_token");
    assert_eq!(sim.record("t").await["id"], "t");

    let stats = sim.get_json("/_sim/stats").await;
    for name in script {
        assert_eq!(stats["faults"][name], 1, "{name}: {stats}");
    }
    assert_eq!(stats["statuses"]["429"], 2);
    assert_eq!(stats["statuses"]["200"], 3);
}

#[tokio::test]
async fn random_and_slow_faults() {
    let sim = start(SimArgs {
        fault_rate: 1.0,
        faults: vec![FaultKind::ServerError],
        ..SimArgs::default()
    })
    .await;
    assert_eq!(sim.retrieve("x").await.status(), 500);
    let v: Value = sim
        .post(
            "/_sim/faults",
            json!({"rate": 0.0, "script": ["slow"], "slow_ms": 150}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["slow_ms"], 150);
    let t0 = Instant::now();
    assert_eq!(sim.retrieve("x").await.status(), 200);
    assert!(t0.elapsed() >= Duration::from_millis(150));
    assert_eq!(sim.retrieve("x").await.status(), 200);
}

#[tokio::test]
async fn auth_batch_limit_and_rate_limit() {
    let sim = start(SimArgs {
        token: Some("s3cret".into()),
        max_batch: Some(2),
        ..SimArgs::default()
    })
    .await;
    let r = sim.retrieve("x").await;
    assert_eq!(r.status(), 401);
    assert_error_shape(&r.json().await.unwrap(), "invalid_token");
    let url = format!("{}/producer/tasks", sim.base);
    let send = |token: &'static str, ids: Vec<&'static str>| {
        sim.client
            .post(&url)
            .header("authorization", format!("Bearer {token}"))
            .json(&json!({"ids": ids, "action": "retrieve_batch"}))
            .send()
    };
    assert_eq!(send("wrong", vec!["x"]).await.unwrap().status(), 401);
    assert_eq!(send("s3cret", vec!["x", "y"]).await.unwrap().status(), 200);
    let r = send("s3cret", vec!["x", "y", "z"]).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_error_shape(&r.json().await.unwrap(), "bad_request");

    let limited = start(SimArgs {
        rate_limit: Some(2.0),
        ..SimArgs::default()
    })
    .await;
    assert_eq!(limited.retrieve("a").await.status(), 200);
    assert_eq!(limited.retrieve("a").await.status(), 200);
    let r = limited.retrieve("a").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_error_shape(&r.json().await.unwrap(), "too_many_requests");
}

#[tokio::test]
async fn bad_requests_and_stats() {
    let sim = start(SimArgs::default()).await;
    sim.record("one").await;
    sim.batch(&["a", "b", "c"]).await;
    sim.batch(&["a", "b", "c", "d", "e"]).await;
    let r = sim
        .post("/producer/tasks", json!({"id": "a", "action": "delete"}))
        .await;
    assert_eq!(r.status(), 400);
    assert_error_shape(&r.json().await.unwrap(), "api_not_implemented");
    let url = format!("{}/producer/tasks", sim.base);
    let r = sim.client.post(url).body("not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_error_shape(&r.json().await.unwrap(), "bad_request");

    let s = sim.get_json("/_sim/stats").await;
    assert_eq!(s["requests"], 5);
    assert_eq!(s["single_requests"], 1);
    assert_eq!(s["batch_requests"], 2);
    assert_eq!(s["ids_requested"], 8);
    assert_eq!(s["max_ids_per_request"], 5);
    assert_eq!(s["mean_ids_per_request"], 4.0);
    assert_eq!(s["statuses"], json!({"200": 3, "400": 2}));
    assert_eq!(s["tasks"], 6);
    assert_eq!(s["max_in_flight"], 1);
    assert_eq!(s["faults"], json!({}));

    let r = sim.post("/_sim/reset", json!({})).await;
    assert_eq!(r.status(), 200);
    let s = sim.get_json("/_sim/stats").await;
    assert_eq!(s["requests"], 0);
    assert_eq!(s["tasks"], 6);
}

#[tokio::test]
async fn the_request_log_keeps_every_request_in_order() {
    // Off by default: nothing kept.
    let quiet = start(SimArgs::default()).await;
    quiet.batch(&["a"]).await;
    let v = quiet.get_json("/_sim/requests").await;
    assert_eq!(v, json!({"logging": false, "requests": []}));

    let sim = start(SimArgs {
        log_requests: true,
        ..SimArgs::default()
    })
    .await;
    let before = crate::ids::now_ms();
    sim.batch(&["a", "b", "a"]).await;
    sim.record("c").await;
    let (status, _) = sim
        .call(
            "/nosuch/tasks",
            json!({"ids": ["x", "y"], "action": "retrieve_batch"}),
        )
        .await;
    assert_eq!(status, 404);
    sim.post_json("/_sim/faults", json!({"script": ["500"]}))
        .await;
    assert_eq!(sim.retrieve("d").await.status(), 500);
    let v = sim.get_json("/_sim/requests").await;
    assert_eq!(v["logging"], true);
    let log = v["requests"].as_array().unwrap();
    let row = |r: &Value| {
        (
            r["seq"].as_u64().unwrap(),
            r["service"].as_str().unwrap().to_owned(),
            r["ids"].clone(),
            r["status"].as_u64().unwrap(),
            r["fault"].clone(),
        )
    };
    let rows: Vec<_> = log.iter().map(row).collect();
    assert_eq!(
        rows,
        [
            (
                1,
                "producer".into(),
                json!(["a", "b", "a"]),
                200,
                Value::Null
            ),
            (2, "producer".into(), json!(["c"]), 200, Value::Null),
            (3, "nosuch".into(), json!(["x", "y"]), 404, Value::Null),
            (4, "producer".into(), json!(["d"]), 500, json!("500")),
        ]
    );
    for r in log {
        let (at, answered) = (
            r["at_ms"].as_u64().unwrap(),
            r["answered_ms"].as_u64().unwrap(),
        );
        assert!(at >= before && answered >= at, "{r}");
    }
    // The single-task services name theirs as `task_id`.
    sim.call("/captcha/tasks", json!({"task_id": "k"})).await;
    let v = sim.get_json("/_sim/requests").await;
    assert_eq!(v["requests"][4]["ids"], json!(["k"]));
    assert_eq!(v["requests"][4]["service"], "captcha");

    // A request whose client gives up before the answer is logged as
    // it arrived, unanswered.
    sim.post_json("/_sim/faults", json!({"script": ["slow"], "slow_ms": 2000}))
        .await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let url = format!("{}/producer/tasks", sim.base);
    assert!(
        impatient
            .post(url)
            .json(&json!({"id": "s"}))
            .send()
            .await
            .is_err()
    );
    let v = sim.get_json("/_sim/requests").await;
    let last = &v["requests"][5];
    assert_eq!(
        (&last["ids"], &last["fault"]),
        (&json!(["s"]), &json!("slow"))
    );
    assert!(
        last["status"].is_null() && last["answered_ms"].is_null(),
        "{last}"
    );

    // A reset starts the log afresh.
    sim.post("/_sim/reset", json!({})).await;
    sim.batch(&["e"]).await;
    let v = sim.get_json("/_sim/requests").await;
    assert_eq!(v["requests"].as_array().unwrap().len(), 1);
    assert_eq!(v["requests"][0]["seq"], 1);
    assert_eq!(v["requests"][0]["ids"], json!(["e"]));
}

#[tokio::test]
async fn a_429_fault_sends_the_retry_after_and_the_delay_it_is_given() {
    let sim = start(SimArgs::default()).await;
    let v = sim
        .post_json(
            "/_sim/faults",
            json!({"script": ["429", "429"], "retry_after_s": 40}),
        )
        .await;
    assert_eq!(v["retry_after_s"], 40);
    let r = sim.retrieve("t").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "40");
    sim.post_json("/_sim/faults", json!({"retry_after_s": 1}))
        .await;
    let r = sim.retrieve("t").await;
    assert_eq!(r.headers()["retry-after"], "1");
    // A late 429: every fault waits delay_ms before it answers; a request
    // that draws no fault does not.
    let v = sim
        .post_json("/_sim/faults", json!({"script": ["429"], "delay_ms": 300}))
        .await;
    assert_eq!(v["delay_ms"], 300);
    let t0 = Instant::now();
    assert_eq!(sim.retrieve("t").await.status(), 429);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    let t0 = Instant::now();
    assert_eq!(sim.retrieve("t").await.status(), 200);
    assert!(t0.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn implicit_tasks_are_deterministic() {
    let args = SimArgs {
        seed: 7,
        fail_rate: 1.0,
        min_duration_ms: 100,
        max_duration_ms: 200,
        ..SimArgs::default()
    };
    let (a, b) = (start(args.clone()).await, start(args).await);
    let ids: Vec<String> = (0..20).map(|i| format!("id-{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    a.batch(&refs).await;
    b.batch(&refs).await;
    let mut outcomes = BTreeSet::new();
    for id in &ids {
        let (ia, ib) = (
            a.get_json(&format!("/_sim/tasks/{id}")).await,
            b.get_json(&format!("/_sim/tasks/{id}")).await,
        );
        assert_eq!(ia["duration_ms"], ib["duration_ms"]);
        assert_eq!(ia["outcome"], ib["outcome"]);
        assert_eq!(ia["items"], ib["items"]);
        let d = ia["duration_ms"].as_u64().unwrap();
        assert!((100..=200).contains(&d));
        outcomes.insert(ia["outcome"].as_str().unwrap().to_owned());
    }
    let expected = ["failed", "failed_string", "item_error"].map(String::from);
    assert_eq!(outcomes, BTreeSet::from(expected));
    let r = a
        .client
        .get(format!("{}/_sim/tasks/nope", a.base))
        .send()
        .await;
    assert_eq!(r.unwrap().status(), 404);
}

#[test]
fn names_cli_and_dates() {
    use clap::{Parser, ValueEnum};
    for kind in FaultKind::ALL {
        assert_eq!(serde_json::to_value(kind).unwrap(), kind.name());
        assert_eq!(FaultKind::from_str(kind.name(), false), Ok(kind));
    }
    /// A command line that embeds the simulator's flags, as `taskhook sim` does.
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }
    let cli = Cli::parse_from(["sim", "--faults", "429,502-html,reset", "--max-batch", "50"]);
    assert_eq!(
        cli.sim.faults,
        [
            FaultKind::RateLimited,
            FaultKind::BadGatewayHtml,
            FaultKind::Reset
        ]
    );
    assert_eq!(cli.sim.max_batch, Some(50));
    assert!(!cli.sim.any_service);
    assert!(Cli::parse_from(["sim", "--any-service"]).sim.any_service);
    assert_eq!(cli.sim.listen.port(), 8090);
    assert_eq!(cli.sim.fail_rate, 0.2);
    assert_eq!(
        iso8601(1_767_119_760_994, 141),
        "2025-12-30T18:36:00.994141Z"
    );
    assert_eq!(iso8601(951_782_400_000, 0), "2000-02-29T00:00:00.000000Z");
    assert_eq!(secs(1_767_119_745_524).to_string(), "1767119745.524");
}
