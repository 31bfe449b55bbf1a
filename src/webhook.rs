//! What goes over the wire to a receiver: the event envelope, the Standard
//! Webhooks signature, and one delivery attempt with its verdict.

use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::value::RawValue;
use sha2::Sha256;

use crate::config::SigningKey;

/// `v1,BASE64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))`.
pub fn sign(key: &SigningKey, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.bytes()).expect("HMAC takes any key");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("v1,{sig}")
}

/// Checks a `webhook-signature` header (space-separated `v1,...` entries),
/// as a receiver would. Used by the demo's receiver.
pub fn verify(key: &SigningKey, msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let want = sign(key, msg_id, timestamp, body);
    header.split(' ').any(|sig| {
        sig.len() == want.len()
            && sig
                .bytes()
                .zip(want.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

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
    outcome: crate::terminal::Outcome,
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

/// Where one attempt should go and what it carries.
pub struct Attempt<'a> {
    pub url: &'a str,
    pub event_id: &'a str,
    pub body: &'a [u8],
    pub key: Option<&'a SigningKey>,
    pub headers: &'a [(String, String)],
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// Any 2xx.
    Delivered { status: u16 },
    /// 410 Gone: the receiver asks never to be sent this again.
    Gone,
    /// The SSRF guard refused the destination: retrying cannot help.
    Blocked { reason: String },
    /// Anything else: retry per the schedule, honouring `retry_after`.
    Failed {
        status: Option<u16>,
        error: String,
        retry_after: Option<Duration>,
    },
}

/// How much of a receiver's answer is read.
pub const RECEIVER_ANSWER_CAP: usize = 4096;

pub fn user_agent() -> String {
    format!("taskhook/{}", env!("CARGO_PKG_VERSION"))
}

/// Sends one attempt. Never follows redirects (the client is built so).
pub async fn send(client: &reqwest::Client, a: &Attempt<'_>) -> AttemptResult {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut req = client
        .post(a.url)
        .header("content-type", "application/json")
        .header("webhook-id", a.event_id)
        .header("webhook-timestamp", now.to_string());
    for (k, v) in a.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    if let Some(key) = a.key {
        req = req.header("webhook-signature", sign(key, a.event_id, now, a.body));
    }
    match req.body(a.body.to_vec()).send().await {
        Ok(resp) => {
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            // Read at most a few KiB of the answer (a receiver that streams
            // without end must not exhaust memory); a short answer is read
            // whole, so the connection can be reused.
            let _ = read_capped(resp, RECEIVER_ANSWER_CAP).await;
            if status.is_success() {
                AttemptResult::Delivered {
                    status: status.as_u16(),
                }
            } else if status.as_u16() == 410 {
                AttemptResult::Gone
            } else {
                let honours = matches!(status.as_u16(), 429 | 503);
                AttemptResult::Failed {
                    status: Some(status.as_u16()),
                    error: format!("HTTP {status}"),
                    retry_after: if honours { retry_after } else { None },
                }
            }
        }
        Err(e) => {
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                if let Some(blocked) = s.downcast_ref::<crate::ssrf::Blocked>() {
                    return AttemptResult::Blocked {
                        reason: blocked.0.clone(),
                    };
                }
                source = s.source();
            }
            AttemptResult::Failed {
                status: None,
                error: describe_reqwest_error(&e),
                retry_after: None,
            }
        }
    }
}

/// Reads at most `cap` bytes of a response body, chunk by chunk, so a peer
/// that streams without end cannot exhaust memory. Returns the bytes read
/// and whether the body went on past `cap` (the rest is never read).
pub async fn read_capped(
    mut resp: reqwest::Response,
    cap: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Ok((Vec::new(), true));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = cap - out.len();
        if chunk.len() > room {
            out.extend_from_slice(&chunk[..room]);
            return Ok((out, true));
        }
        out.extend_from_slice(&chunk);
    }
    Ok((out, false))
}

/// A short reason for a transport error, without URLs (which may carry
/// credentials in userinfo or query strings).
pub fn describe_reqwest_error(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_redirect() {
        "redirect not followed"
    } else if e.is_body() || e.is_decode() {
        "body error"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

/// `Retry-After` as delta-seconds or an HTTP date (any of the three forms
/// HTTP allows); a date in the past means now.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_signature_vectors() {
        let key = SigningKey::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            sign(
                &key,
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            sign(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn verify_accepts_any_listed_signature_and_rejects_tampering() {
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let good = sign(&key, "msg_1", 5, b"{}");
        assert!(verify(&key, "msg_1", 5, b"{}", &format!("v1,bogus {good}")));
        assert!(!verify(&key, "msg_1", 5, b"{ }", &good));
        assert!(!verify(&key, "msg_1", 6, b"{}", &good));
    }

    #[test]
    fn envelope_embeds_the_record_verbatim() {
        let rec = RawValue::from_string(r#"{"id":"t1","odd":  [1,2]}"#.into()).unwrap();
        let meta = RawValue::from_string(r#"{"job":7}"#.into()).unwrap();
        let at = std::time::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let body = envelope(
            crate::terminal::Outcome::Succeeded,
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
        let nf = envelope(
            crate::terminal::Outcome::NotFound,
            at,
            "t2",
            "p",
            None,
            None,
        );
        assert!(nf.contains(r#""metadata":{},"task":null"#), "{nf}");
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        // A date 90 s ahead gives about 90 s (a mis-parse gives None or 0).
        let ahead = std::time::SystemTime::now() + Duration::from_secs(90);
        let d = parse_retry_after(&httpdate::fmt_http_date(ahead)).unwrap();
        assert!(
            d > Duration::from_secs(85) && d <= Duration::from_secs(90),
            "{d:?}"
        );
        // The obsolete forms HTTP still allows.
        let d = parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT").unwrap();
        assert_eq!(d, Duration::ZERO, "a past date means now");
        assert!(parse_retry_after("Sun Nov  6 08:49:37 1994").is_some());
        assert_eq!(parse_retry_after("soon"), None);
        assert!(new_event_id().starts_with("msg_"));
    }
}
