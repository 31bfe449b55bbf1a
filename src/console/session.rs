//! Who is asking, and whether a state-changing request was meant: the
//! console's login, its session cookie, and its CSRF tokens.
//!
//! Sessions hold no server state, so they work across several daemons that
//! share a store and survive restarts: the cookie is an expiry, a random
//! nonce and an HMAC-SHA256 of both, keyed with a key derived from
//! `api.token` (changing the token logs everyone out). Every POST under `/ui` must carry a CSRF
//! token, an HMAC of the caller's credential, checked in constant time
//! before any handler runs. Without `api.token` there is no login, and the
//! CSRF key is a random key of this process (a page from before a restart
//! must be reloaded before its buttons work).
//!
//! May call: `api` (its state and the token check), `config`, `clock`.

use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::{Form, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::layout::{self, CSRF_FIELD, Ctx};
use crate::api::ApiState;

/// The session cookie's name.
pub(super) const COOKIE: &str = "taskhook_session";
/// How long a login lasts.
pub(super) const LIFETIME_SECS: i64 = 12 * 60 * 60;
/// The largest form body the console reads (its forms are a few fields).
const MAX_FORM_BYTES: usize = 16 * 1024;

/// Whom a request speaks for, once authenticated; what its CSRF token is
/// derived from. Put in the request's extensions by [`guard`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Principal {
    /// No `api.token` is configured: anyone who reaches the listener.
    Open,
    /// The request carried `authorization: Bearer TOKEN` (scripts, curl).
    Bearer,
    /// A browser with a valid session cookie (its value).
    Session(String),
}

/// The console's keys: one for session cookies, one for CSRF tokens, both
/// derived from `api.token`, or from a random key of this process when no
/// token is set.
struct Keys {
    session: [u8; 32],
    csrf: [u8; 32],
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// A random key drawn once per process: the CSRF key when no token is set.
fn process_key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(rand::random)
}

fn keys(token: Option<&str>) -> Keys {
    let root: Vec<u8> = match token {
        Some(t) => mac(t.as_bytes(), &[b"taskhook console keys v1"]).to_vec(),
        None => process_key().to_vec(),
    };
    Keys {
        session: mac(&root, &[b"session"]),
        csrf: mac(&root, &[b"csrf"]),
    }
}

fn api_token(s: &ApiState) -> Option<String> {
    s.config
        .borrow()
        .api
        .token
        .as_ref()
        .map(|t| t.expose().to_string())
}

/// Compares in time independent of where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A session cookie value that expires at `exp` (unix seconds), made
/// unique by `nonce`: `EXP.NONCE.MAC`.
fn session_value(token: &str, exp: i64, nonce: &str) -> String {
    let k = keys(Some(token));
    let tag = mac(
        &k.session,
        &[
            b"session.",
            exp.to_string().as_bytes(),
            b".",
            nonce.as_bytes(),
        ],
    );
    format!("{exp}.{nonce}.{}", B64.encode(tag))
}

/// A new session's cookie value: each login gets its own (and so its own
/// CSRF token), even two in the same second.
fn new_session(token: &str, exp: i64) -> String {
    let nonce: [u8; 16] = rand::random();
    session_value(token, exp, &B64.encode(nonce))
}

/// True when `value` is a session cookie made with `token` and not expired
/// at `now_secs`.
fn session_valid(token: &str, value: &str, now_secs: i64) -> bool {
    let mut parts = value.split('.');
    let (Some(exp), Some(nonce), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Ok(exp) = exp.parse::<i64>() else {
        return false;
    };
    exp > now_secs
        && constant_time_eq(
            session_value(token, exp, nonce).as_bytes(),
            value.as_bytes(),
        )
}

/// The CSRF token of `principal`: a keyed hash of its credential, so a
/// page's token works only for the session (or token) it was shown to.
pub(super) fn csrf_token(s: &ApiState, principal: &Principal) -> String {
    let token = api_token(s);
    let k = keys(token.as_deref());
    let what: &[u8] = match principal {
        Principal::Open => b"open",
        Principal::Bearer => b"bearer",
        Principal::Session(v) => v.as_bytes(),
    };
    B64.encode(mac(&k.csrf, &[b"csrf.", what]))
}

/// The session cookie a request carries, if any.
fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim().to_string())
}

/// Who the request speaks for, or `None` when it must log in.
fn authenticate(s: &ApiState, headers: &HeaderMap) -> Option<Principal> {
    let Some(token) = api_token(s) else {
        return Some(Principal::Open);
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(given) = bearer {
        return constant_time_eq(given.trim().as_bytes(), token.as_bytes())
            .then_some(Principal::Bearer);
    }
    let now = s.clock.now_ms() / 1000;
    cookie_value(headers)
        .filter(|v| session_valid(&token, v, now))
        .map(Principal::Session)
}

/// Whether the request reached us over HTTPS through a proxy that says so:
/// the cookie is then marked `Secure`. On plain HTTP (loopback) it cannot
/// be, or the browser would drop it.
fn behind_https(headers: &HeaderMap) -> bool {
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    let forwarded = headers
        .get(header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("proto=https"));
    proto || forwarded
}

fn set_cookie(value: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Max-Age={max_age}; Path=/ui; HttpOnly; SameSite=Strict{secure}"
    ))
    .expect("a cookie of ASCII")
}

/// A path inside the console to return to after logging in; anything else
/// (another site, a scheme-relative `//host`) becomes `/ui`.
pub(super) fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if (n == "/ui" || n.starts_with("/ui/") || n.starts_with("/ui?"))
                && !n.contains("//")
                && !n.contains('\\')
                && n.chars().all(|c| c.is_ascii_graphic()) =>
        {
            n.to_string()
        }
        _ => "/ui".to_string(),
    }
}

/// The gate in front of every console route but the login form and the
/// assets: authenticates (session cookie, or the bearer token like `/v1`),
/// and checks the CSRF token of every POST before its handler runs.
pub(super) async fn guard(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    let Some(principal) = authenticate(&s, req.headers()) else {
        if req.method() == Method::GET || req.method() == Method::HEAD {
            if req.uri().path() == "/ui/events" {
                return (StatusCode::UNAUTHORIZED, "log in at /ui/login").into_response();
            }
            let here = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/ui");
            let target = format!(
                "/ui/login?{}",
                url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("next", &safe_next(Some(here)))
                    .finish()
            );
            return Redirect::to(&target).into_response();
        }
        return layout::refusal(
            StatusCode::FORBIDDEN,
            "Not logged in",
            "This action needs a login. Log in again, then repeat it from its page.",
        );
    };
    let req = if req.method() == Method::POST {
        match check_csrf(&s, &principal, req).await {
            Ok(req) => req,
            Err(resp) => return resp,
        }
    } else {
        req
    };
    let mut req = req;
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// Reads a POST's form, checks its CSRF field against `principal`'s token
/// in constant time, and puts the body back for the handler.
async fn check_csrf(
    s: &ApiState,
    principal: &Principal,
    req: Request,
) -> Result<Request, Response> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| {
            layout::refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Form too large",
                "The console's forms are a few fields; this one was too large to read.",
            )
        })?;
    let given = url::form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == CSRF_FIELD)
        .map(|(_, v)| v.into_owned());
    let want = csrf_token(s, principal);
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), want.as_bytes()) => {
            Ok(Request::from_parts(parts, Body::from(bytes)))
        }
        g => {
            tracing::warn!(
                path = %parts.uri.path(),
                csrf = if g.is_some() { "wrong" } else { "missing" },
                "console request refused: CSRF check failed"
            );
            Err(layout::refusal(
                StatusCode::FORBIDDEN,
                "Request refused",
                "This request did not carry a valid form token (CSRF check failed), so \
                 nothing was done. Go back, reload the page and try again: the page may be \
                 older than your login or than the daemon's last restart.",
            ))
        }
    }
}

/// The query of the login form: where to go afterwards.
#[derive(Deserialize, Default)]
pub(super) struct LoginQuery {
    next: Option<String>,
}

/// The login form's fields.
#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
    next: Option<String>,
}

/// `GET /ui/login`: the form (or straight to the console when no token is
/// set or the session is still valid).
pub(super) async fn login_form(
    State(s): State<ApiState>,
    headers: HeaderMap,
    q: Result<Query<LoginQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let next = safe_next(q.as_ref().ok().and_then(|q| q.next.as_deref()));
    if api_token(&s).is_none() || authenticate(&s, &headers).is_some() {
        return Redirect::to(&next).into_response();
    }
    layout::login_page(StatusCode::OK, &next, None)
}

/// `POST /ui/login`: the token, checked in constant time; on success a
/// session cookie and back to where the user was going.
pub(super) async fn login(
    State(s): State<ApiState>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Some(token) = api_token(&s) else {
        return Redirect::to("/ui").into_response();
    };
    let Ok(Form(form)) = form else {
        return layout::login_page(
            StatusCode::BAD_REQUEST,
            "/ui",
            Some("The form could not be read. Enter the API token."),
        );
    };
    let next = safe_next(form.next.as_deref());
    if !constant_time_eq(form.token.trim().as_bytes(), token.as_bytes()) {
        tracing::warn!("console login refused: wrong token");
        return layout::login_page(
            StatusCode::UNAUTHORIZED,
            &next,
            Some("That is not the API token (api.token)."),
        );
    }
    let exp = s.clock.now_ms() / 1000 + LIFETIME_SECS;
    let value = new_session(&token, exp);
    let mut resp = Redirect::to(&next).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(&value, LIFETIME_SECS, behind_https(&headers)),
    );
    tracing::info!("console login");
    resp
}

/// `POST /ui/logout`: drops the cookie (CSRF-checked by [`guard`]). The
/// cookie's value stays valid until it expires; changing `api.token` ends
/// every session at once.
pub(super) async fn logout(headers: HeaderMap) -> Response {
    let mut resp = Redirect::to("/ui/login").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie("", 0, behind_https(&headers)),
    );
    resp
}

/// A page's [`Ctx`] comes from the principal [`guard`] let in.
impl FromRequestParts<ApiState> for Ctx {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &ApiState) -> Result<Self, Self::Rejection> {
        let principal = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| {
                layout::refusal(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Not authenticated",
                    "This page was reached without passing the console's login check.",
                )
            })?;
        Ok(Ctx {
            csrf: csrf_token(s, &principal),
            session: matches!(principal, Principal::Session(_)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_verifies_only_with_its_token_and_before_expiry() {
        let v = new_session("tok", 2_000);
        assert!(session_valid("tok", &v, 1_999));
        assert!(!session_valid("tok", &v, 2_000), "expired");
        assert!(!session_valid("other", &v, 1_000), "another token");
        let (_, rest) = v.split_once('.').unwrap();
        assert!(
            !session_valid("tok", &format!("3000.{rest}"), 1_000),
            "a moved expiry"
        );
        let (nonce, tag) = rest.split_once('.').unwrap();
        assert!(
            !session_valid("tok", &format!("2000.x{nonce}.{tag}"), 1_000),
            "another nonce"
        );
        assert!(!session_valid("tok", "garbage", 1_000));
        assert_ne!(new_session("tok", 2_000), v, "each login its own");
    }

    #[test]
    fn next_stays_inside_the_console() {
        assert_eq!(
            safe_next(Some("/ui/tasks?status=done")),
            "/ui/tasks?status=done"
        );
        assert_eq!(safe_next(Some("/ui")), "/ui");
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/ui//evil",
            "/v1/stats",
            "/uix",
            "/ui\\x",
            "/ui/é",
            "/ui/a b",
            "/ui/\n",
        ] {
            assert_eq!(safe_next(Some(bad)), "/ui", "{bad}");
        }
        assert_eq!(safe_next(None), "/ui");
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_scoped() {
        let c = set_cookie("v", 10, false);
        let c = c.to_str().unwrap();
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Path=/ui"));
        assert!(!c.contains("Secure"));
        assert!(
            set_cookie("v", 10, true)
                .to_str()
                .unwrap()
                .ends_with("; Secure")
        );
    }
}
