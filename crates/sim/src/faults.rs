//! Faults: the ways the simulated upstream misbehaves on demand (random or
//! scripted), the token bucket of `--rate-limit`, and the answers they give.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::Response;

use crate::endpoint::{Call, answer, answer_body};
use crate::reply::{error_response, html, invalid_token, json_response, too_many_requests};
use crate::services::Profile;
use crate::state::Shared;

/// A way the simulated upstream can misbehave on one request.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum FaultKind {
    /// 429 too_many_requests with `Retry-After: 1` (or the seconds set as
    /// `retry_after_s` through `POST /_sim/faults`).
    #[serde(rename = "429")]
    #[value(name = "429")]
    RateLimited,
    /// 429 without Retry-After.
    #[serde(rename = "429-no-retry-after")]
    #[value(name = "429-no-retry-after")]
    RateLimitedNoRetryAfter,
    /// 500 with a JSON `api_error` body.
    #[serde(rename = "500")]
    #[value(name = "500")]
    ServerError,
    /// 502 with an HTML page body.
    #[serde(rename = "502-html")]
    #[value(name = "502-html")]
    BadGatewayHtml,
    /// 503 with an HTML page body.
    #[serde(rename = "503-html")]
    #[value(name = "503-html")]
    UnavailableHtml,
    /// 200 with the real JSON body cut off in the middle.
    #[serde(rename = "truncated")]
    #[value(name = "truncated")]
    Truncated,
    /// Answer normally as of the request's arrival, `slow_ms` late.
    #[serde(rename = "slow")]
    #[value(name = "slow")]
    Slow,
    /// The response body fails after the headers, so the connection is dropped.
    #[serde(rename = "reset")]
    #[value(name = "reset")]
    Reset,
    /// 401 invalid_token.
    #[serde(rename = "401")]
    #[value(name = "401")]
    Unauthorized,
    /// 403 with an HTML page: a web application firewall, not the token.
    #[serde(rename = "403-html")]
    #[value(name = "403-html")]
    ForbiddenHtml,
    /// 403 whose JSON body says invalid_token.
    #[serde(rename = "403-invalid-token")]
    #[value(name = "403-invalid-token")]
    ForbiddenToken,
    /// 404 not_found: no such endpoint.
    #[serde(rename = "404")]
    #[value(name = "404")]
    NotFound,
    /// 405 method_not_allowed.
    #[serde(rename = "405")]
    #[value(name = "405")]
    MethodNotAllowed,
    /// 413 request entity too large.
    #[serde(rename = "413")]
    #[value(name = "413")]
    TooLarge,
    /// 400 api_not_implemented.
    #[serde(rename = "400-not-implemented")]
    #[value(name = "400-not-implemented")]
    NotImplemented,
    /// 400 token_mismatched: the token is not enabled for this service.
    #[serde(rename = "400-token-mismatched")]
    #[value(name = "400-token-mismatched")]
    TokenMismatched,
    /// 200 with the normal answer, but the first item's record carries a
    /// string with a lone UTF-16 surrogate escape: valid JSON syntax, not
    /// valid text.
    #[serde(rename = "corrupt-item")]
    #[value(name = "corrupt-item")]
    CorruptItem,
}

impl FaultKind {
    /// Every kind, the default pool of random faults.
    pub(crate) const ALL: [FaultKind; 9] = [
        FaultKind::RateLimited,
        FaultKind::RateLimitedNoRetryAfter,
        FaultKind::ServerError,
        FaultKind::BadGatewayHtml,
        FaultKind::UnavailableHtml,
        FaultKind::Truncated,
        FaultKind::Slow,
        FaultKind::Reset,
        FaultKind::Unauthorized,
    ];

    /// The serde / CLI name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            FaultKind::RateLimited => "429",
            FaultKind::RateLimitedNoRetryAfter => "429-no-retry-after",
            FaultKind::ServerError => "500",
            FaultKind::BadGatewayHtml => "502-html",
            FaultKind::UnavailableHtml => "503-html",
            FaultKind::Truncated => "truncated",
            FaultKind::Slow => "slow",
            FaultKind::Reset => "reset",
            FaultKind::Unauthorized => "401",
            FaultKind::ForbiddenHtml => "403-html",
            FaultKind::ForbiddenToken => "403-invalid-token",
            FaultKind::NotFound => "404",
            FaultKind::MethodNotAllowed => "405",
            FaultKind::TooLarge => "413",
            FaultKind::NotImplemented => "400-not-implemented",
            FaultKind::TokenMismatched => "400-token-mismatched",
            FaultKind::CorruptItem => "corrupt-item",
        }
    }
}

/// The answer of a request that drew fault `kind`.
pub(crate) async fn fault(
    sh: &Shared,
    service: &str,
    profile: &Profile,
    call: Call,
    kind: FaultKind,
    slow_ms: u64,
) -> Response {
    let delay = sh.lock().faults.delay_ms;
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    match kind {
        FaultKind::RateLimited => too_many_requests(Some(sh.lock().faults.retry_after_s)),
        FaultKind::RateLimitedNoRetryAfter => too_many_requests(None),
        FaultKind::ServerError => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "internal server error",
        ),
        FaultKind::BadGatewayHtml => html(StatusCode::BAD_GATEWAY, "502 Bad Gateway"),
        FaultKind::UnavailableHtml => html(
            StatusCode::SERVICE_UNAVAILABLE,
            "503 Service Temporarily Unavailable",
        ),
        FaultKind::Unauthorized => invalid_token(),
        FaultKind::ForbiddenHtml => html(StatusCode::FORBIDDEN, "403 Forbidden"),
        FaultKind::ForbiddenToken => {
            error_response(StatusCode::FORBIDDEN, "invalid_token", "invalid token")
        }
        FaultKind::NotFound => error_response(StatusCode::NOT_FOUND, "not_found", "not found"),
        FaultKind::MethodNotAllowed => error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed",
        ),
        FaultKind::TooLarge => html(
            StatusCode::PAYLOAD_TOO_LARGE,
            "413 Request Entity Too Large",
        ),
        FaultKind::NotImplemented => error_response(
            StatusCode::BAD_REQUEST,
            "api_not_implemented",
            "this api is not implemented",
        ),
        FaultKind::TokenMismatched => error_response(
            StatusCode::BAD_REQUEST,
            "token_mismatched",
            "the token does not match this api",
        ),
        FaultKind::CorruptItem => {
            let (status, body) = answer_body(sh, service, profile, call);
            json_response(status, corrupt_first_item(body))
        }
        FaultKind::Slow => {
            // Read as the request arrived, sent late: a task may settle
            // while its answer is on the way.
            let late = answer(sh, service, profile, call);
            tokio::time::sleep(Duration::from_millis(slow_ms)).await;
            late
        }
        FaultKind::Truncated => {
            let (_, mut body) = answer_body(sh, service, profile, call);
            body.truncate(body.len() / 2);
            json_response(StatusCode::OK, body)
        }
        FaultKind::Reset => {
            let (_, body) = answer_body(sh, service, profile, call);
            let half = body.len() / 2;
            let mut body = body;
            body.truncate(half);
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::from(body)),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "simulated connection reset",
                )),
            ];
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(futures::stream::iter(chunks)))
                .expect("valid response")
        }
    }
}

/// Puts a lone surrogate escape into the first item of a batch answer,
/// keeping the rest byte for byte.
fn corrupt_first_item(body: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8(body).expect("answers are UTF-8");
    let marker = "\"items\":[{";
    match text.find(marker) {
        Some(i) => {
            let at = i + marker.len();
            format!("{}\"note\":\"\\udc00\",{}", &text[..at], &text[at..]).into_bytes()
        }
        None => text.into_bytes(),
    }
}

/// Fault settings, changeable through `POST /_sim/faults`.
#[derive(Debug)]
pub(crate) struct Faults {
    pub(crate) rate: f64,
    pub(crate) kinds: Vec<FaultKind>,
    pub(crate) script: VecDeque<FaultKind>,
    pub(crate) slow_ms: u64,
    /// The `Retry-After` (seconds) of a `429` fault.
    pub(crate) retry_after_s: u64,
    /// How long every fault waits before it answers (ms): a late 429.
    pub(crate) delay_ms: u64,
}

/// Token bucket of `--rate-limit`.
#[derive(Debug)]
pub(crate) struct Bucket {
    pub(crate) rate: f64,
    pub(crate) tokens: f64,
    pub(crate) last: Instant,
}

impl Bucket {
    pub(crate) fn take(&mut self) -> bool {
        let now = Instant::now();
        let cap = self.rate.max(1.0);
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(cap);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
