//! Redaction of secrets that travel inside values taskhook prints: a URL's
//! userinfo (`user:pass@`) and its query values (`?token=...`), and header
//! values. Everything that shows a URL or a header to a person (logs,
//! `check-config`, the control API, metrics) goes through here.
//!
//! May call: nothing of taskhook's.

/// What replaces a secret.
pub const REDACTED: &str = "[redacted]";

/// `url` with its userinfo and every query value replaced by
/// [`REDACTED`]; the scheme, host, port, path and query keys stay. Text
/// that is not a URL is returned as is unless it looks like one.
pub fn url(s: &str) -> String {
    let Ok(mut u) = url::Url::parse(s) else {
        return s.to_string();
    };
    if !u.username().is_empty() || u.password().is_some() {
        let _ = u.set_username(REDACTED);
        let _ = u.set_password(None);
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if v.is_empty() {
                    String::new()
                } else {
                    REDACTED.to_string()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    if u.fragment().is_some() {
        u.set_fragment(Some(REDACTED));
    }
    u.to_string()
}

/// `url` with only its password replaced by [`REDACTED`] (the user stays:
/// it says which role connects). Text that is not a URL is fully redacted
/// when it might hold a password.
pub fn password(s: &str) -> String {
    match url::Url::parse(s) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some(REDACTED));
            }
            u.to_string()
        }
        Err(_) if s.contains('@') || s.contains("password") => REDACTED.to_string(),
        Err(_) => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_query_values_and_fragments_are_redacted() {
        assert_eq!(
            url("https://bob:hunter2@hooks.example.com:8443/a/b?token=abc&x=&mode=1#frag"),
            "https://%5Bredacted%5D@hooks.example.com:8443/a/b?token=%5Bredacted%5D&x=&mode=%5Bredacted%5D#[redacted]"
        );
        assert_eq!(
            url("https://hooks.example.com/h"),
            "https://hooks.example.com/h"
        );
        assert_eq!(url("pipeline"), "pipeline");
        let out = url("http://u:SECRET@h/?k=SECRET");
        assert!(!out.contains("SECRET"), "{out}");
    }

    #[test]
    fn a_database_url_keeps_its_user_and_loses_its_password() {
        assert_eq!(
            password("postgres://taskhook:s3cret@db:5432/taskhook?sslmode=require"),
            "postgres://taskhook:%5Bredacted%5D@db:5432/taskhook?sslmode=require"
        );
        assert_eq!(
            password("postgres://taskhook@db/t"),
            "postgres://taskhook@db/t"
        );
        assert_eq!(password("host=db password=x"), REDACTED);
    }
}
