//! From a `postgres://` URL to connections: which schema, whether and how
//! TLS is used, the session settings every connection gets, the pool, and
//! how errors are classed (transient or fatal).
//!
//! Owns: the URL's taskhook-specific keys (`sslmode`, `sslrootcert`,
//! `search_path`), the rustls client configuration, the deadpool pool.
//! May call: `tokio-postgres`, `deadpool-postgres`, `rustls`, `webpki-roots`.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::{StoreError, StoreResult};

/// How long a session may sit idle inside a transaction before the server
/// ends it: a stalled holder of row locks never holds them for long.
pub(super) const IDLE_IN_TRANSACTION_TIMEOUT_MS: u64 = 30_000;
/// How long opening one connection may take when the URL says nothing.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive idle time: a server that vanished is noticed in about a
/// minute instead of the kernel's two hours.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

/// The TLS side of a connection: none, or rustls with the webpki roots (and
/// the URL's `sslrootcert`). Kept as an enum because `tokio-postgres` is
/// generic over it and a Unix socket (no host name) cannot go through rustls.
#[derive(Clone)]
pub(super) enum Tls {
    Off,
    On(MakeRustlsConnect),
}

/// Where and how to connect, worked out once from the URL and the options.
#[derive(Clone)]
pub(super) struct Target {
    pub config: tokio_postgres::Config,
    pub tls: Tls,
    /// The schema every table lives in (the connections' `search_path`).
    pub schema: String,
}

/// Reads `url` (a `postgres://` or `postgresql://` URL). The keys
/// `tokio-postgres` knows pass through; taskhook reads three itself:
///
/// - `sslmode`: absent or `disable` — no TLS; `require` or `verify-full` —
///   TLS, with the server's certificate chain checked against the webpki
///   roots (plus `sslrootcert`) and its name against the host (so `require`
///   is stricter than libpq's, which encrypts without checking). Other
///   libpq values (`allow`, `prefer`, `verify-ca`) are refused.
/// - `sslrootcert`: a PEM file of extra trusted CA certificates.
/// - `search_path`: the schema, when `schema` (the option) is not given;
///   else a `-c search_path=` in `options`; else `public`.
pub(super) fn target(url: &str, schema: Option<&str>) -> StoreResult<Target> {
    let fatal = |m: String| StoreError::Fatal(format!("store.url: {m}"));
    let mut parsed = url::Url::parse(url)
        .map_err(|e| fatal(format!("not a URL ({e}); expected postgres://user@host/db")))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(fatal(format!(
            "scheme {:?} is not postgres:// or postgresql://",
            parsed.scheme()
        )));
    }
    let mut sslmode = None;
    let mut rootcert = None;
    let mut url_schema = None;
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter_map(|(k, v)| {
            match &*k {
                "sslmode" => sslmode = Some(v.into_owned()),
                "sslrootcert" => rootcert = Some(v.into_owned()),
                "search_path" => url_schema = Some(v.into_owned()),
                _ => return Some((k.into_owned(), v.into_owned())),
            }
            None
        })
        .collect();
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    let mut config: tokio_postgres::Config = parsed
        .as_str()
        .parse()
        .map_err(|e: tokio_postgres::Error| fatal(e.to_string()))?;
    let tls_on = match sslmode.as_deref() {
        None | Some("disable") => false,
        Some("require") | Some("verify-full") => true,
        Some(other) => {
            return Err(fatal(format!(
                "sslmode={other} is not supported: use disable (no TLS), or require / \
                 verify-full (TLS, certificate and host name checked)"
            )));
        }
    };
    let options = config.get_options().unwrap_or_default().to_string();
    let schema = match schema.map(str::to_string).or(url_schema) {
        Some(s) => s,
        None => search_path_in(&options).unwrap_or_else(|| "public".into()),
    };
    check_schema_name(&schema)?;
    // JIT off: the store's statements are short, and a stale cost estimate
    // would have them spend tens of milliseconds compiling.
    config.options(format!(
        "{options} -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS} \
         -c jit=off -c search_path={schema}"
    ));
    if config.get_application_name().is_none() {
        config.application_name("taskhook");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.keepalives_idle(KEEPALIVE_IDLE);
    let tls = if tls_on {
        #[cfg(unix)]
        if config
            .get_hosts()
            .iter()
            .any(|h| matches!(h, tokio_postgres::config::Host::Unix(_)))
        {
            return Err(fatal(
                "TLS (sslmode) needs a host name; a Unix socket has none".into(),
            ));
        }
        config.ssl_mode(SslMode::Require);
        Tls::On(MakeRustlsConnect::new(client_tls(rootcert.as_deref())?))
    } else {
        config.ssl_mode(SslMode::Disable);
        Tls::Off
    };
    Ok(Target {
        config,
        tls,
        schema,
    })
}

/// The first schema of a `-c search_path=...` (or `-csearch_path=`) in a
/// libpq `options` string.
fn search_path_in(options: &str) -> Option<String> {
    let at = options.find("search_path=")?;
    let value = options[at + "search_path=".len()..]
        .split(|c: char| c.is_whitespace() || c == ',')
        .next()?;
    (!value.is_empty()).then(|| value.trim_matches('"').to_string())
}

/// Schema names are plain lower-case identifiers, so they go into
/// `search_path`, a NOTIFY payload and an advisory-lock key unquoted.
fn check_schema_name(schema: &str) -> StoreResult<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Fatal(format!(
            "store schema {schema:?}: use a lower-case identifier (a-z, 0-9, _; at most 63)"
        )))
    }
}

/// The rustls client configuration: webpki roots plus the CA certificates
/// of `rootcert` (a PEM file), TLS 1.2 and 1.3, ring as the provider.
fn client_tls(rootcert: Option<&str>) -> StoreResult<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = rootcert {
        let fatal = |m: String| StoreError::Fatal(format!("store.url: sslrootcert {path}: {m}"));
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| fatal(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fatal(e.to_string()))?;
        if certs.is_empty() {
            return Err(fatal("no PEM certificate in the file".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| fatal(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Fatal(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The pool: `size` connections at most, each checked out only if still
/// open (a connection the server dropped is replaced, never reused).
pub(super) fn pool(target: &Target, size: usize) -> StoreResult<Pool> {
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match &target.tls {
        Tls::Off => Manager::from_config(target.config.clone(), NoTls, manager_config),
        Tls::On(tls) => Manager::from_config(target.config.clone(), tls.clone(), manager_config),
    };
    Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(30)))
        .create_timeout(Some(CONNECT_TIMEOUT + Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| StoreError::Fatal(format!("store pool: {e}")))
}

/// A connection outside the pool, its driver spawned on the runtime (for
/// tests and tools).
#[cfg(any(test, feature = "testing"))]
pub(super) async fn connect_spawned(
    target: &Target,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    match &target.tls {
        Tls::Off => {
            let (client, conn) = target.config.connect(NoTls).await?;
            tokio::spawn(conn);
            Ok(client)
        }
        Tls::On(tls) => {
            let (client, conn) = target.config.connect(tls.clone()).await?;
            tokio::spawn(conn);
            Ok(client)
        }
    }
}

/// A database error class that no retry fixes: wrong credentials, a
/// database that does not exist, no permission.
pub(super) fn is_misconfiguration(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        c.code().starts_with("28")
            || *c == SqlState::UNDEFINED_DATABASE
            || *c == SqlState::INSUFFICIENT_PRIVILEGE
    })
}

/// A failure to reach the server at all (no route, refused, no answer in
/// time, a name that does not resolve), as opposed to a server that
/// answered: an error from the server, a failed TLS handshake or a closed
/// session are not this.
#[cfg(any(test, feature = "testing"))]
pub(super) fn is_unreachable(e: &tokio_postgres::Error) -> bool {
    let text = e.to_string();
    e.as_db_error().is_none()
        && (text.starts_with("error connecting to server")
            || text.starts_with("timeout waiting for server"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_with_their_taskhook_keys() {
        let t = target("postgres://u@db.example:5433/q", None).unwrap();
        assert_eq!(t.schema, "public");
        assert!(matches!(t.tls, Tls::Off));
        assert_eq!(t.config.get_application_name(), Some("taskhook"));
        let o = t.config.get_options().unwrap();
        assert!(
            o.contains("idle_in_transaction_session_timeout=30000"),
            "{o}"
        );
        assert!(o.contains("search_path=public"), "{o}");

        let t = target("postgres://u@h/q?search_path=jobs&sslmode=require", None).unwrap();
        assert_eq!(t.schema, "jobs");
        assert!(matches!(t.tls, Tls::On(_)));
        assert_eq!(t.config.get_ssl_mode(), SslMode::Require);

        let t = target("postgres://u@h/q?options=-c%20search_path%3Dother", None).unwrap();
        assert_eq!(t.schema, "other");
        let t = target("postgres://u@h/q?search_path=jobs", Some("mine")).unwrap();
        assert_eq!(t.schema, "mine");
        let t = target("postgres://u@%2Fvar%2Frun%2Fpostgresql/q", None).unwrap();
        assert!(matches!(t.tls, Tls::Off), "a Unix socket, without TLS");
        let t = target("postgres://u@h/q?application_name=x&sslmode=disable", None).unwrap();
        assert_eq!(t.config.get_application_name(), Some("x"));
        assert!(matches!(t.tls, Tls::Off));

        for bad in [
            "mysql://h/q",
            "postgres://h/q?sslmode=prefer",
            "postgres://h/q?sslmode=verify-ca",
            "postgres://h/q?search_path=Bad-Name",
            "postgres://h/q?sslrootcert=/nonexistent.pem&sslmode=require",
            "postgres://h/q?nonsense=1",
            "postgres://u@%2Fvar%2Frun%2Fpostgresql/q?sslmode=require",
        ] {
            let e = target(bad, None).err().unwrap();
            assert!(matches!(e, StoreError::Fatal(_)), "{bad}: {e}");
        }
    }
}
