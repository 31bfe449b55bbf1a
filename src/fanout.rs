//! Fan-out: a finished task becomes one event (the envelope of contract
//! §6, with its fixed `webhook-id`) and one delivery per receiver that
//! wants it: every configured webhook whose `events` filter matches, and
//! the URLs the task named itself.
//!
//! May call: `config`, `store` (the new event's shape), `outcome`, `redact`,
//! `clock`.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::clock::Millis;
use crate::config::Config;
use crate::outcome::Outcome;
use crate::store::{ClaimedTask, DeliveryKind, NewDelivery, NewEvent};

/// A fresh event ID, `msg_` and 24 random base62 characters.
pub fn new_event_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::thread_rng();
    let tail: String = (0..24)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("msg_{tail}")
}

/// The event body (contract §6).
#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: &'a str,
    data: EnvelopeData<'a>,
}

/// The envelope's `data`.
#[derive(Serialize)]
struct EnvelopeData<'a> {
    task_id: &'a str,
    service: &'a str,
    outcome: &'a str,
    metadata: &'a RawValue,
    task: &'a RawValue,
}

/// The JSON body of an event: contract §6, with the upstream record embedded
/// byte for byte as it was received (`null` for not_found and expired).
pub fn envelope(
    outcome: Outcome,
    at: std::time::SystemTime,
    task_id: &str,
    service: &str,
    metadata: Option<&RawValue>,
    record: Option<&RawValue>,
) -> String {
    let null = RawValue::from_string("null".into()).expect("null is JSON");
    let empty = RawValue::from_string("{}".into()).expect("{} is JSON");
    let ts = humantime::format_rfc3339_seconds(at).to_string();
    serde_json::to_string(&Envelope {
        kind: outcome.event_type(),
        timestamp: &ts,
        data: EnvelopeData {
            task_id,
            service,
            outcome: outcome.as_str(),
            metadata: metadata.unwrap_or(&empty),
            task: record.unwrap_or(&null),
        },
    })
    .expect("envelope serializes")
}

/// The event of a task that finished with `outcome` (the upstream's record
/// as received, if any), routed to every receiver that wants it.
pub fn event(
    cfg: &Config,
    task: &ClaimedTask,
    outcome: Outcome,
    record: Option<&RawValue>,
    now: Millis,
) -> NewEvent {
    let metadata = task
        .metadata
        .as_deref()
        .and_then(|m| RawValue::from_string(m.to_string()).ok());
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(now.max(0) as u64);
    let body = envelope(
        outcome,
        at,
        &task.id,
        &task.service,
        metadata.as_deref(),
        record,
    );
    NewEvent {
        id: new_event_id(),
        body,
        deliveries: receivers(cfg, task, outcome),
    }
}

/// Who gets a task's event: each configured webhook that wants `outcome`,
/// then each URL the task named (once, secrets redacted in its name).
fn receivers(cfg: &Config, task: &ClaimedTask, outcome: Outcome) -> Vec<NewDelivery> {
    let mut deliveries: Vec<NewDelivery> = cfg
        .webhooks
        .iter()
        .filter(|w| w.wants(outcome))
        .map(|w| NewDelivery {
            webhook: w.name.clone(),
            kind: DeliveryKind::Webhook,
            url: w.url.to_string(),
        })
        .collect();
    for url in &task.webhooks {
        let taken = deliveries
            .iter()
            .any(|d| d.kind == DeliveryKind::TaskUrl && &d.url == url);
        if !taken {
            deliveries.push(NewDelivery {
                webhook: crate::redact::url(url),
                kind: DeliveryKind::TaskUrl,
                url: url.clone(),
            });
        }
    }
    deliveries
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn envelope_embeds_the_record_verbatim() {
        let rec = RawValue::from_string(r#"{"id":"t1","odd":  [1,2]}"#.into()).unwrap();
        let meta = RawValue::from_string(r#"{"job":7}"#.into()).unwrap();
        let at = std::time::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let body = envelope(
            Outcome::Succeeded,
            at,
            "t1",
            "producer",
            Some(&meta),
            Some(&rec),
        );
        assert_eq!(
            body,
            r#"{"type":"task.succeeded","timestamp":"2026-01-01T00:00:00Z","data":{"task_id":"t1","service":"producer","outcome":"succeeded","metadata":{"job":7},"task":{"id":"t1","odd":  [1,2]}}}"#
        );
        let nf = envelope(Outcome::NotFound, at, "t2", "p", None, None);
        assert!(nf.contains(r#""metadata":{},"task":null"#), "{nf}");
    }

    #[test]
    fn event_ids_look_like_standard_webhooks_message_ids() {
        let id = new_event_id();
        assert!(id.starts_with("msg_") && id.len() == 28, "{id}");
        assert_ne!(id, new_event_id());
    }
}
