//! Ingest: turns an enqueue request body into validated [`NewTask`]s, or an
//! error that names the field at fault. A request is taken whole or not at
//! all, so bad input never half-enqueues.
//!
//! May call: `config`, `profile`, `store`.

use serde_json::{Map, Value};

use crate::config::valid_service;
use crate::profile::Profiles;
use crate::store::NewTask;

/// The longest task ID accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// Why a body was refused: HTTP status, machine code, human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

fn bad_field(message: String) -> IngestError {
    IngestError {
        status: 400,
        code: "invalid_field",
        message,
    }
}

fn unprocessable(code: &'static str, message: String) -> IngestError {
    IngestError {
        status: 422,
        code,
        message,
    }
}

/// What enqueue needs to know besides the body: the service of a task that
/// names none, and which services may be watched.
#[derive(Clone, Copy)]
pub struct Rules<'a> {
    pub default_service: &'a str,
    pub profiles: &'a Profiles,
    /// The most webhook URLs one task may name.
    pub max_webhooks: usize,
}

/// Parses `{"id", ...}` or `{"tasks": [{"id", ...}, ...]}`.
pub fn parse_enqueue(body: &[u8], rules: Rules<'_>) -> Result<Vec<NewTask>, IngestError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| IngestError {
        status: 400,
        code: "bad_json",
        message: format!("invalid JSON: {e}"),
    })?;
    let Value::Object(obj) = value else {
        return Err(bad_field("body: must be a JSON object".into()));
    };
    if obj.contains_key("tasks") {
        if obj.len() > 1 {
            let other = obj
                .keys()
                .find(|k| *k != "tasks")
                .expect("more than one key");
            return Err(bad_field(format!(
                "{other}: unknown field beside \"tasks\" (put it inside each task)"
            )));
        }
        let Some(Value::Array(list)) = obj.get("tasks") else {
            return Err(bad_field("tasks: must be an array of task objects".into()));
        };
        if list.is_empty() {
            return Err(unprocessable(
                "invalid_field",
                "tasks: must not be empty".into(),
            ));
        }
        list.iter()
            .enumerate()
            .map(|(i, t)| match t {
                Value::Object(o) => parse_task(o, &format!("tasks[{i}]."), rules),
                _ => Err(bad_field(format!("tasks[{i}]: must be an object"))),
            })
            .collect()
    } else {
        Ok(vec![parse_task(&obj, "", rules)?])
    }
}

/// Checks a task ID: non-empty, at most 256 bytes, no control characters.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.len() > MAX_ID_BYTES {
        return Err(format!("is {} bytes, longer than {MAX_ID_BYTES}", id.len()));
    }
    if id.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// Checks a webhook URL: absolute http(s) with a host.
pub fn check_webhook_url(u: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(u).map_err(|e| format!("{u:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{u:?} must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{u:?} has no host"));
    }
    Ok(url)
}

fn parse_task(o: &Map<String, Value>, at: &str, rules: Rules<'_>) -> Result<NewTask, IngestError> {
    if let Some(k) = o
        .keys()
        .find(|k| !matches!(k.as_str(), "id" | "service" | "webhooks" | "metadata"))
    {
        return Err(bad_field(format!(
            "{at}{k}: unknown field (known: id, service, webhooks, metadata)"
        )));
    }
    let id = match o.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(bad_field(format!("{at}id: must be a string"))),
        None => return Err(bad_field(format!("{at}id: is required"))),
    };
    check_id(&id).map_err(|m| unprocessable("invalid_id", format!("{at}id: {m}")))?;
    let service = match o.get("service") {
        None | Some(Value::Null) => rules.default_service.to_string(),
        Some(Value::String(s)) if valid_service(s) => {
            if rules.profiles.get(s).is_none() {
                let known: Vec<&str> = rules.profiles.names().collect();
                return Err(unprocessable(
                    "unknown_service",
                    format!(
                        "{at}service: {s:?} is not a known service (known: {}); describe it in \
                         [upstream.services.{s}] or set upstream.allow_unknown_services = true",
                        known.join(", ")
                    ),
                ));
            }
            s.clone()
        }
        Some(Value::String(s)) => {
            return Err(unprocessable(
                "invalid_service",
                format!("{at}service: {s:?} must be letters, digits, '-' or '_' (at most 64)"),
            ));
        }
        Some(_) => return Err(bad_field(format!("{at}service: must be a string"))),
    };
    let webhooks = match o.get("webhooks") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) if list.len() > rules.max_webhooks => {
            return Err(unprocessable(
                "too_many_webhooks",
                format!(
                    "{at}webhooks: {} URLs, more than api.max_webhooks_per_task ({})",
                    list.len(),
                    rules.max_webhooks
                ),
            ));
        }
        Some(Value::Array(list)) => {
            let mut out = Vec::with_capacity(list.len());
            for (i, w) in list.iter().enumerate() {
                let Value::String(s) = w else {
                    return Err(bad_field(format!("{at}webhooks[{i}]: must be a string")));
                };
                let url = check_webhook_url(s).map_err(|m| {
                    unprocessable("invalid_webhook", format!("{at}webhooks[{i}]: {m}"))
                })?;
                out.push(url.to_string());
            }
            out
        }
        Some(_) => {
            return Err(bad_field(format!("{at}webhooks: must be an array of URLs")));
        }
    };
    let metadata = match o.get("metadata") {
        None | Some(Value::Null) => None,
        Some(m @ Value::Object(_)) => Some(m.to_string()),
        Some(_) => return Err(bad_field(format!("{at}metadata: must be an object"))),
    };
    Ok(NewTask {
        id,
        service,
        webhooks,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profiles(allow_unknown: bool) -> Profiles {
        Profiles::new(&Default::default(), allow_unknown, "producer").unwrap()
    }

    fn parse(body: &[u8]) -> Result<Vec<NewTask>, IngestError> {
        let p = profiles(false);
        parse_enqueue(
            body,
            Rules {
                default_service: "producer",
                profiles: &p,
                max_webhooks: 3,
            },
        )
    }

    fn err(body: &str) -> IngestError {
        parse(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn single_and_batch_forms() {
        let one = parse(br#"{"id": "a", "metadata": {"k": 1}}"#).unwrap();
        assert_eq!(one[0].service, "producer");
        assert_eq!(one[0].metadata.as_deref(), Some(r#"{"k":1}"#));
        let many = parse(
            br#"{"tasks": [{"id": "a", "service": "midjourney", "webhooks": ["https://x.example/h"]}, {"id": "b"}]}"#,
        )
        .unwrap();
        assert_eq!(many.len(), 2);
        assert_eq!(many[0].webhooks, vec!["https://x.example/h".to_string()]);
    }

    #[test]
    fn every_error_names_its_field() {
        assert_eq!(err("{").status, 400);
        assert_eq!(err("{").code, "bad_json");
        assert_eq!(err(r#"{"id": 5}"#).message, "id: must be a string");
        let e = err(r#"{"id": ""}"#);
        assert_eq!(
            (e.status, e.message.as_str()),
            (422, "id: must not be empty")
        );
        let long = format!(r#"{{"id": "{}"}}"#, "x".repeat(257));
        assert_eq!(err(&long).status, 422);
        assert_eq!(err(r#"{"id": "a\u0007b"}"#).code, "invalid_id");
        let e = err(r#"{"tasks": [{"id": "a"}, {"id": "b", "webhooks": ["ftp://x"]}]}"#);
        assert_eq!((e.status, e.code), (422, "invalid_webhook"));
        assert!(
            e.message.starts_with("tasks[1].webhooks[0]:"),
            "{}",
            e.message
        );
        assert!(
            err(r#"{"id": "a", "metadata": [1]}"#)
                .message
                .starts_with("metadata:")
        );
        assert!(
            err(r#"{"id": "a", "hook": "x"}"#)
                .message
                .starts_with("hook: unknown field")
        );
        assert_eq!(err(r#"{"id": "a", "service": "../x"}"#).status, 422);
        assert_eq!(err(r#"{"tasks": []}"#).status, 422);
        let e = err(
            r#"{"id": "a", "webhooks": ["https://a.example", "https://b.example", "https://c.example", "https://d.example"]}"#,
        );
        assert_eq!((e.status, e.code), (422, "too_many_webhooks"));
        assert!(e.message.starts_with("webhooks: 4 URLs"), "{}", e.message);
    }

    #[test]
    fn unknown_services_are_refused_by_name_unless_allowed() {
        let e = err(r#"{"tasks": [{"id": "a"}, {"id": "b", "service": "midjourny"}]}"#);
        assert_eq!((e.status, e.code), (422, "unknown_service"));
        assert!(
            e.message
                .starts_with("tasks[1].service: \"midjourny\" is not a known service (known: "),
            "{}",
            e.message
        );
        assert!(e.message.contains("midjourney"), "{}", e.message);
        let p = profiles(true);
        let ok = parse_enqueue(
            br#"{"id": "a", "service": "brand-new"}"#,
            Rules {
                default_service: "producer",
                profiles: &p,
                max_webhooks: 3,
            },
        )
        .unwrap();
        assert_eq!(ok[0].service, "brand-new");
    }
}
