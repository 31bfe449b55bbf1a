//! The control API against its own OpenAPI description, fuzzed by
//! schemathesis: across every operation, with the token, no 5xx, no answer
//! that breaks the schema, no undocumented status, schema-violating input
//! refused, wrong methods refused with `allow`.
//!
//! `.ci/run` installs schemathesis; elsewhere set `TASKHOOK_SCHEMATHESIS` or
//! put `schemathesis` on the PATH (`pip install schemathesis`).

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::common::*;

/// The checks run. `positive_data_acceptance` is left out: some input the
/// schema allows is refused by rules a schema cannot state (a service with
/// no profile, `until` before `since`, more webhooks than
/// `api.max_webhooks_per_task`), each with a documented 4xx.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_headers_conformance,response_schema_conformance,negative_data_rejection,\
missing_required_header,unsupported_method,ignored_auth";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_description() {
    let Some(st) = external_tool(
        "TASKHOOK_SCHEMATHESIS",
        "schemathesis",
        "pip install schemathesis",
    ) else {
        return;
    };
    let sim = spawn_sim(&[]);
    let down = Receiver::start(None).await;
    down.behaviour.lock().unwrap().status = Some(500);
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(
        dir.path(),
        &sim.url,
        &webhook_toml("down", &down.url, Some(SECRET_A)),
    );
    set_api_token(&cfg, "fuzz-token");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "retry_schedule = [\"100ms\", \"200ms\", \"300ms\"]",
        "retry_schedule = [\"50ms\"]",
    );
    std::fs::write(&cfg, text).unwrap();
    let daemon = spawn_daemon(&cfg);

    // Something to read: tasks watched, delivered, and dead letters.
    let ids: Vec<String> = (0..6).map(|i| format!("fz-{i}")).collect();
    sim_create_ids(&sim.url, &ids[..3], 50).await;
    let http = reqwest::Client::new();
    let enqueue = http
        .post(format!("{}/v1/tasks", daemon.url))
        .bearer_auth("fuzz-token")
        .json(&json!({"tasks": ids.iter().map(|id| json!({"id": id})).collect::<Vec<_>>()}))
        .send()
        .await
        .unwrap();
    assert_eq!(enqueue.status(), 202);
    eventually("dead letters to fuzz with", Duration::from_secs(30), || {
        let http = http.clone();
        let url = format!("{}/v1/stats", daemon.url);
        async move {
            let st: serde_json::Value = http
                .get(url)
                .bearer_auth("fuzz-token")
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (st["dead_letters"].as_u64() == Some(3)).then_some(())
        }
    })
    .await;

    let spec = format!("{}/v1/openapi.json", daemon.url);
    let (_, description) = get_json(&spec).await;
    let operations: usize = description["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    // Its cache of findings goes in a scratch directory, not the checkout.
    let scratch = tempfile::tempdir().unwrap();
    let cwd = scratch.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        output_within(
            Command::new(st)
                .current_dir(cwd)
                .args(["run", &spec])
                .args(["--header", "Authorization: Bearer fuzz-token"])
                .args(["--checks", CHECKS])
                .args(["--max-examples", "40"])
                .args(["--workers", "2"])
                .env("NO_COLOR", "1"),
            Duration::from_secs(600),
        )
    })
    .await
    .unwrap();
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}"
    );
    assert!(
        report.contains(&format!("Tested: {operations}")),
        "not every one of the {operations} operations was tested:\n{report}"
    );

    // The daemon took all of it and still works. (The seeded tasks may be
    // gone: the stateful phase deletes the IDs it finds, as it may.)
    let (s, v) = get_json(&format!("{}/readyz", daemon.url)).await;
    assert_eq!(s, 200, "{v}");
    let r = http
        .get(format!("{}/v1/stats", daemon.url))
        .bearer_auth("fuzz-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
