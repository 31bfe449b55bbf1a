//! HTTP helpers shared by the upstream client and the webhook sender:
//! the user agent, reading a body without reading too much, describing a
//! failure without its URL, and `Retry-After`.
//!
//! May call: nothing of taskhook's.

use std::time::Duration;

/// `taskhook/VERSION`.
pub fn user_agent() -> String {
    format!("taskhook/{}", env!("CARGO_PKG_VERSION"))
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
    }
}
