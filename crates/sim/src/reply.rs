//! HTTP answers shared by every endpoint: JSON bodies, the upstream's error
//! shape, and the canned 401, 429 and HTML pages.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use crate::ids::random_uuid;

pub(crate) fn to_json(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a Value always serializes")
}

pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub(crate) fn error_body(code: &str, message: &str) -> Vec<u8> {
    to_json(&json!({
        "success": false,
        "error": {"code": code, "message": message},
        "trace_id": random_uuid(),
    }))
}

pub(crate) fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(status, error_body(code, message))
}

pub(crate) fn invalid_token() -> Response {
    error_response(
        StatusCode::UNAUTHORIZED,
        "invalid_token",
        "invalid or missing bearer token",
    )
}

/// 429 too_many_requests, with `Retry-After: SECS` when `retry_after` is set.
pub(crate) fn too_many_requests(retry_after: Option<u64>) -> Response {
    let mut resp = error_response(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
        "too many requests, please slow down",
    );
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

pub(crate) fn html(status: StatusCode, title: &str) -> Response {
    let page = format!(
        "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n\
         <center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    );
    let mut resp = Response::new(Body::from(page));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}
