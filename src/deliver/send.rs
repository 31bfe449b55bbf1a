//! One delivery request: the Standard Webhooks headers, the signature, the
//! webhook's extra headers, the body; at most a few KiB of the answer read.
//!
//! May call: `deliver::{sign, ssrf}`, `http`, `config` (the key type).

use std::time::Duration;

use super::sign::sign_all;
use crate::config::SigningKey;

/// Where one attempt should go and what it carries.
pub struct Attempt<'a> {
    pub url: &'a str,
    pub event_id: &'a str,
    pub body: &'a [u8],
    /// One signature per key (the newest first); none: unsigned.
    pub keys: &'a [SigningKey],
    pub headers: &'a [(String, String)],
}

/// What became of one attempt on the wire (what it means is for
/// `attempt::classify` to say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The receiver answered with this status, `Retry-After` if it sent
    /// one, and the start of its body (at most [`ANSWER_KEPT`] bytes).
    Status {
        code: u16,
        retry_after: Option<Duration>,
        body: String,
    },
    /// The SSRF guard refused the destination.
    Blocked(String),
    /// No answer: the connection failed, timed out or broke off.
    NoAnswer(String),
}

/// How much of a receiver's answer is read.
pub const RECEIVER_ANSWER_CAP: usize = 4096;
/// How much of it is kept in the attempt log.
pub const ANSWER_KEPT: usize = 1024;

/// Sends one attempt. Never follows redirects (the client is built so).
pub async fn send(client: &reqwest::Client, a: &Attempt<'_>) -> Answer {
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
    if !a.keys.is_empty() {
        req = req.header(
            "webhook-signature",
            sign_all(a.keys, a.event_id, now, a.body),
        );
    }
    match req.body(a.body.to_vec()).send().await {
        Ok(resp) => {
            let code = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(crate::http::parse_retry_after);
            // Read at most a few KiB of the answer (a receiver that streams
            // without end must not exhaust memory); a short answer is read
            // whole, so the connection can be reused.
            let body = match crate::http::read_capped(resp, RECEIVER_ANSWER_CAP).await {
                Ok((bytes, _)) => excerpt(&bytes),
                Err(_) => String::new(),
            };
            Answer::Status {
                code,
                retry_after,
                body,
            }
        }
        Err(e) => {
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                if let Some(blocked) = s.downcast_ref::<super::ssrf::Blocked>() {
                    return Answer::Blocked(blocked.0.clone());
                }
                source = s.source();
            }
            Answer::NoAnswer(crate::http::describe_reqwest_error(&e))
        }
    }
}

/// The start of an answer, as text: at most [`ANSWER_KEPT`] bytes, cut at
/// a character boundary.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(ANSWER_KEPT + 3)]);
    let mut end = text.len().min(ANSWER_KEPT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_excerpt_is_at_most_a_kib_and_whole_characters() {
        assert_eq!(excerpt(b"ok"), "ok");
        let long = "é".repeat(1000);
        let e = excerpt(long.as_bytes());
        assert!(
            e.len() <= ANSWER_KEPT && e.chars().all(|c| c == 'é'),
            "{}",
            e.len()
        );
    }
}
