//! The simulator over HTTP: a router on 127.0.0.1:0 and a reqwest client.
//! `basics` covers the items family, faults, limits and statistics;
//! `families` every other family of shapes, paging and replay; `callbacks`
//! what tasks POST to their `callback_url` when they settle.

mod basics;
mod callbacks;
mod families;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::{SimArgs, serve};

/// A running simulator; dropping it shuts the server down.
struct TestSim {
    base: String,
    client: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

async fn start(args: SimArgs) -> TestSim {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve(listener, args, async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    TestSim {
        base,
        client,
        _stop: stop,
    }
}

impl TestSim {
    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        let url = format!("{}{path}", self.base);
        self.client.post(url).json(&body).send().await.unwrap()
    }

    /// POSTs `body` to `path`: the status and the JSON body (`null` if none).
    async fn call(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self.post(path, body).await;
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// POSTs `body` to `path`; asserts 200; the JSON body.
    async fn post_json(&self, path: &str, body: Value) -> Value {
        let (status, v) = self.call(path, body).await;
        assert_eq!(status, 200, "{path}: {v}");
        v
    }

    async fn get_json(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.base);
        self.client
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn create(&self, spec: Value) {
        let resp = self.post("/_sim/tasks", spec).await;
        assert_eq!(resp.status(), 201);
    }

    async fn retrieve(&self, id: &str) -> reqwest::Response {
        self.post("/producer/tasks", json!({"id": id, "action": "retrieve"}))
            .await
    }

    async fn record(&self, id: &str) -> Value {
        let resp = self.retrieve(id).await;
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    async fn batch(&self, ids: &[&str]) -> Value {
        let body = json!({"ids": ids, "action": "retrieve_batch"});
        let resp = self.post("/producer/tasks", body).await;
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    /// Polls `id` every 5 ms until `done` holds; returns every record seen.
    async fn poll_until(&self, id: &str, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(4);
        let mut seen = Vec::new();
        loop {
            let r = self.record(id).await;
            let stop = done(&r);
            seen.push(r);
            if stop {
                return seen;
            }
            assert!(Instant::now() < deadline, "deadline passed polling {id}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn finished(r: &Value) -> bool {
    r.get("finished_at").is_some()
}

fn states(r: &Value) -> Vec<String> {
    r["response"]["data"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|i| i["state"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn assert_error_shape(v: &Value, code: &str) {
    assert_eq!(v["success"], false, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    assert_eq!(v["trace_id"].as_str().unwrap().len(), 36, "{v}");
}
