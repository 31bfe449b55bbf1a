//! The browser console at `/ui`, on the API listener: server-rendered
//! pages (maud, no build step, assets compiled in) for the overview, tasks
//! and dead letters, with live numbers by server-sent events. Every page is
//! readable and every action usable without scripts.
//!
//! Auth is the API's: with `api.token` set, a login form asks for it once
//! and a stateless session cookie follows (`session`); every POST carries a
//! CSRF token checked before its handler runs.
//!
//! One concept per file: `session` (login, cookie, CSRF), `layout` (page
//! shell, formatting), `overview`, `tasks`, `dead_letters` (list, replay,
//! bulk replay with a confirmation), `events` (SSE), `assets`.
//!
//! May call: `api` (its state), `store` (`ReadModel`, `Admin`),
//! `poll::upstream` (health), `config`, `redact`, `clock`.

mod assets;
mod dead_letters;
mod events;
mod layout;
mod overview;
mod session;
mod tasks;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Redirect, Response};
use axum::routing::{get, post};

use crate::api::ApiState;

/// What a console page may load and where it may send forms: only this
/// origin; no inline scripts or styles, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's routes, to merge into the API router. Everything but the
/// login form and the assets passes [`session::guard`].
pub fn router(state: ApiState) -> Router<ApiState> {
    let guarded = Router::new()
        .route("/ui", get(overview::page))
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route("/ui/events", get(events::stream))
        .route("/ui/tasks", get(tasks::list))
        .route("/ui/tasks/{id}", get(tasks::show))
        .route("/ui/deliveries/{id}/replay", post(dead_letters::replay_one))
        .route("/ui/dead-letters", get(dead_letters::list))
        .route(
            "/ui/dead-letters/replay",
            get(dead_letters::confirm).post(dead_letters::replay_matching),
        )
        .route("/ui/logout", post(session::logout))
        .route("/ui/{*rest}", get(not_found).post(not_found))
        .route_layer(middleware::from_fn_with_state(state, session::guard));
    Router::new()
        .merge(guarded)
        .route("/ui/login", get(session::login_form).post(session::login))
        .route("/ui/assets/{name}", get(assets::serve))
        .layer(middleware::from_fn(security_headers))
}

async fn not_found() -> Response {
    layout::refusal(
        StatusCode::NOT_FOUND,
        "Not found",
        "The console has no page at this address.",
    )
}

/// Adds the console's security headers to every answer under `/ui`.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    for (k, v) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
    ] {
        h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    resp
}
