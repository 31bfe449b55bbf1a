//! The OpenAPI description of `/v1` (contract §5): the committed copy in
//! `docs/openapi.json` is the one the code generates, and the daemon serves
//! it without the token.

use crate::common::*;

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");

#[test]
fn the_committed_description_is_the_one_the_code_generates() {
    let generated = taskhook::api::openapi::to_json() + "\n";
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(COMMITTED, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json differs from what the code generates; regenerate it with \
         `UPDATE_OPENAPI=1 cargo test --test it openapi::` and commit it"
    );
    let v: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(v["openapi"], "3.1.0");
    let paths: Vec<&String> = v["paths"].as_object().unwrap().keys().collect();
    for p in [
        "/v1/tasks",
        "/v1/tasks/{id}",
        "/v1/stats",
        "/v1/activity",
        "/v1/deliveries",
        "/v1/deliveries/replay",
        "/v1/deliveries/{id}/replay",
    ] {
        assert!(paths.iter().any(|q| *q == p), "{p} is not described");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_its_description_openly_and_every_described_read_answers() {
    let sim = spawn_sim(&[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path(), &sim.url, "");
    set_api_token(&cfg, "sekret");
    let daemon = spawn_daemon(&cfg);

    let (status, served) = get_json(&format!("{}/v1/openapi.json", daemon.url)).await;
    assert_eq!(status, 200);
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(COMMITTED).unwrap()).unwrap();
    assert_eq!(served, committed);

    // Every described GET without parameters in its path answers 200 with
    // the token and 401 without it.
    let http = reqwest::Client::new();
    for (path, item) in served["paths"].as_object().unwrap() {
        if item.get("get").is_none() || path.contains('{') {
            continue;
        }
        let url = format!("{}{path}", daemon.url);
        let without = http.get(&url).send().await.unwrap().status();
        assert_eq!(without, 401, "{path} without the token");
        let with = http.get(&url).bearer_auth("sekret").send().await.unwrap();
        assert_eq!(with.status(), 200, "{path}: {}", with.text().await.unwrap());
    }
}
