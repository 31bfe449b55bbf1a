//! The console's page shell and small formatting helpers: the `<head>`,
//! the skip link and navigation, the logout button, refusal pages, the
//! login form, and how times, durations and links to tasks are written.
//! Everything is rendered through maud, which escapes every value.
//!
//! May call: `clock`, `store`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::assets;
use crate::clock::Millis;

/// The form field that carries the CSRF token.
pub(super) const CSRF_FIELD: &str = "csrf";

/// The request's standing as a page needs it: whether to offer a logout
/// button, and the CSRF token its forms carry.
#[derive(Debug, Clone)]
pub(super) struct Ctx {
    pub csrf: String,
    /// A browser session (not the bearer token, not an open console).
    pub session: bool,
}

impl Ctx {
    /// The hidden field every state-changing form carries.
    pub fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name=(CSRF_FIELD) value=(self.csrf); }
    }
}

/// Which navigation entry a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Nav {
    Overview,
    Tasks,
    DeadLetters,
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="referrer" content="no-referrer";
            title { (title) " · taskhook" }
            link rel="icon" type="image/svg+xml" href=(assets::icon_href());
            link rel="stylesheet" href=(assets::css_href());
            script src=(assets::js_href()) defer {}
        }
    }
}

/// A whole console page: `title`, the navigation with `nav` marked, and
/// `body` in `<main>`. `events` is the server-sent events URL the page's
/// script follows for live numbers, if any.
pub(super) fn page(
    ctx: &Ctx,
    nav: Nav,
    title: &str,
    events: Option<&str>,
    body: Markup,
) -> Response {
    let item = |which: Nav, href: &str, label: &str| {
        html! {
            li {
                @if which == nav {
                    a href=(href) aria-current="page" { (label) }
                } @else {
                    a href=(href) { (label) }
                }
            }
        }
    };
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body data-events=[events] {
                a.skip-link href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui" { "taskhook" }
                    nav aria-label="Console" {
                        ul {
                            (item(Nav::Overview, "/ui", "Overview"))
                            (item(Nav::Tasks, "/ui/tasks", "Tasks"))
                            (item(Nav::DeadLetters, "/ui/dead-letters", "Dead letters"))
                        }
                    }
                    @if ctx.session {
                        form.logout method="post" action="/ui/logout" {
                            (ctx.csrf_field())
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main #main tabindex="-1" {
                    (body)
                }
                footer {
                    p { "taskhook " (env!("CARGO_PKG_VERSION"))
                        @if events.is_some() {
                            " · "
                            span #live-status role="status" aria-live="polite" { "reload for fresh numbers" }
                        }
                    }
                }
            }
        }
    };
    html_response(StatusCode::OK, markup)
}

/// `markup` as an HTML answer that no cache keeps.
pub(super) fn html_response(status: StatusCode, markup: Markup) -> Response {
    let mut resp = (status, markup).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A page that says why a request was refused or failed, with a way back.
pub(super) fn refusal(status: StatusCode, title: &str, message: &str) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip-link href="#main" { "Skip to content" }
                header.top { a.brand href="/ui" { "taskhook" } }
                main #main tabindex="-1" {
                    h1 { (title) }
                    p.notice.error role="alert" { (message) }
                    p { a href="/ui" { "Back to the console" } }
                }
            }
        }
    };
    html_response(status, markup)
}

/// The login form: the API token, posted (never in a URL), and where to
/// go afterwards. `error` says why the last try was refused.
pub(super) fn login_page(status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head("Log in"))
            body {
                a.skip-link href="#main" { "Skip to content" }
                header.top { span.brand { "taskhook" } }
                main #main.narrow tabindex="-1" {
                    h1 { "Log in to the console" }
                    @if let Some(e) = error {
                        p.notice.error role="alert" #login-error { (e) }
                    }
                    form method="post" action="/ui/login" {
                        input type="hidden" name="next" value=(next);
                        label for="token" { "API token" }
                        input #token type="password" name="token" required autocomplete="current-password" aria-describedby="token-hint" autofocus;
                        p.hint #token-hint { "The daemon's " code { "api.token" } ". It is asked once; the console then keeps a session cookie for 12 hours." }
                        button type="submit" { "Log in" }
                    }
                }
            }
        }
    };
    html_response(status, markup)
}

/// A store failure as a page (503): what failed, in its own words.
pub(super) fn store_failure(e: &crate::store::StoreError) -> Response {
    tracing::error!(error = %e, "store error in the console");
    refusal(
        StatusCode::SERVICE_UNAVAILABLE,
        "The store did not answer",
        &format!("{e}. Try again in a moment."),
    )
}

/// `t` as `<time>`: UTC to the second, the exact instant in `datetime`.
pub(super) fn time(t: Millis) -> Markup {
    html! { time datetime=(crate::clock::rfc3339(t)) { (fmt_time(t)) } }
}

/// `t` as `2026-01-01 12:00:00 UTC`.
pub(super) fn fmt_time(t: Millis) -> String {
    let s = crate::clock::rfc3339(t);
    // 2026-01-01T12:00:00.000Z -> 2026-01-01 12:00:00 UTC
    match (s.get(..10), s.get(11..19)) {
        (Some(d), Some(h)) => format!("{d} {h} UTC"),
        _ => s,
    }
}

/// A span of milliseconds in words: `850 ms`, `12 s`, `3 min 20 s`,
/// `2 h 5 min`, `3 d 4 h`.
pub(super) fn fmt_span(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1_000 {
        return format!("{ms} ms");
    }
    let s = ms / 1_000;
    let (big, unit, small, small_unit) = match s {
        0..60 => return format!("{s} s"),
        60..3_600 => (s / 60, "min", s % 60, "s"),
        3_600..86_400 => (s / 3_600, "h", (s % 3_600) / 60, "min"),
        _ => (s / 86_400, "d", (s % 86_400) / 3_600, "h"),
    };
    if small == 0 {
        format!("{big} {unit}")
    } else {
        format!("{big} {unit} {small} {small_unit}")
    }
}

/// `id` as one path segment: every byte but the unreserved ones
/// percent-encoded (a task ID may hold `/`, `?`, `#` or spaces).
pub(super) fn path_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The link to a task's page.
pub(super) fn task_href(id: &str) -> String {
    format!("/ui/tasks/{}", path_segment(id))
}

/// `pairs` as a query string (without `?`), empty values left out.
pub(super) fn query(pairs: &[(&str, &str)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if !v.is_empty() {
            q.append_pair(k, v);
        }
    }
    q.finish()
}

/// A JSON value indented for reading.
pub(super) fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_one_path_segment() {
        assert_eq!(path_segment("abc-1_2.3~"), "abc-1_2.3~");
        assert_eq!(path_segment("a/b?c#d e"), "a%2Fb%3Fc%23d%20e");
        assert_eq!(path_segment("<é>"), "%3C%C3%A9%3E");
    }

    #[test]
    fn spans_read_as_words() {
        assert_eq!(fmt_span(850), "850 ms");
        assert_eq!(fmt_span(12_000), "12 s");
        assert_eq!(fmt_span(200_000), "3 min 20 s");
        assert_eq!(fmt_span(7_500_000), "2 h 5 min");
        assert_eq!(fmt_span(3 * 86_400_000 + 4 * 3_600_000), "3 d 4 h");
        assert_eq!(fmt_span(15 * 60_000), "15 min");
        assert_eq!(fmt_span(7_200_000), "2 h");
    }

    #[test]
    fn times_are_utc_to_the_second() {
        assert_eq!(fmt_time(1_767_225_600_000), "2026-01-01 00:00:00 UTC");
    }
}
