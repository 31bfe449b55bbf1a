//! Configuration: the shipped file, bad values by key, layers, redaction.

use super::*;

#[test]
fn the_shipped_file_is_a_valid_config() {
    let c = Config::load_with_env(None, std::iter::empty()).unwrap();
    assert_eq!(c.upstream.batch_size, 50);
    assert_eq!(c.poll.interval, Duration::from_secs(5));
    assert_eq!(c.delivery.retry_schedule.len(), 8);
    assert_eq!(c.api.listen.to_string(), "127.0.0.1:8080");
    assert!(c.webhooks.is_empty());
    assert_eq!(
        c.upstream.tasks_url("producer"),
        "https://api.acedata.cloud/producer/tasks"
    );
}

fn bad(toml: &str) -> String {
    Config::from_toml(toml).unwrap_err().0
}

#[test]
fn bad_values_name_their_key() {
    assert_eq!(
        bad("[upstream]\nbatch_size = 0"),
        "upstream.batch_size: must be 1..=500, got 0"
    );
    assert_eq!(
        bad("[poll]\ninterval = \"soon\""),
        "poll.interval: invalid duration \"soon\" (use e.g. \"250ms\", \"30s\", \"2h\")"
    );
    assert!(bad("[upstream]\nbatchsize = 3").contains("batchsize"));
    assert!(
        bad("[delivery]\nretry_schedule = [\"5s\", \"1s\"]")
            .starts_with("delivery.retry_schedule[1]:")
    );
    assert!(bad("[[webhooks]]\nname = \"a\"\nurl = \"ftp://x\"").starts_with("webhooks[0].url:"));
    assert!(
        bad("[[webhooks]]\nname = \"a\"\nurl = \"http://x\"\nevents = [\"task.done\"]")
            .starts_with("webhooks[0].events:")
    );
    assert!(
        bad("[[webhooks]]\nname = \"a\"\nurl = \"http://x\"\nsecret = \"nope!\"")
            .starts_with("webhooks[0].secret:")
    );
    assert!(bad("[upstream]\ntoken_file = \"/nonexistent/t\"").starts_with("upstream.token_file:"));
}

#[test]
fn env_overrides_the_file() {
    let env = vec![
        (
            "TASKHOOK__UPSTREAM__BATCH_SIZE".to_string(),
            "77".to_string(),
        ),
        (
            "TASKHOOK__DELIVERY__RETRY_SCHEDULE".to_string(),
            "1s,2s".to_string(),
        ),
        ("TASKHOOK__UPSTREAM__TOKEN".to_string(), "12345".to_string()),
    ];
    let c = Config::load_with_env(None, env).unwrap();
    assert_eq!(c.upstream.batch_size, 77);
    assert_eq!(
        c.delivery.retry_schedule,
        vec![Duration::from_secs(1), Duration::from_secs(2)]
    );
    assert_eq!(c.upstream.token.unwrap().expose(), "12345");
}

#[test]
fn redacted_output_hides_every_secret() {
    let c = Config::from_toml(
        "[upstream]\ntoken = \"tok-SECRET\"\n[api]\ntoken = \"api-SECRET\"\n\
         [[webhooks]]\nname = \"a\"\nurl = \"http://x\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"",
    )
    .unwrap();
    let out = c.to_redacted_toml();
    assert!(!out.contains("SECRET"), "{out}");
    assert!(!out.contains("MfKQ9r8"), "{out}");
    assert!(out.contains("[redacted]"));
    assert!(!format!("{c:?}").contains("SECRET"));
}

#[test]
fn a_secret_rotation_lists_every_key_newest_first() {
    const NEW: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const OLD: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let c = Config::from_toml(&format!(
        "[[webhooks]]\nname = \"a\"\nurl = \"http://x\"\nsecrets = [\"{NEW}\", \"{OLD}\"]\n\
         [delivery]\nsecrets = [\"{OLD}\"]"
    ))
    .unwrap();
    assert_eq!(
        c.webhooks[0].keys,
        vec![
            SigningKey::parse(NEW).unwrap(),
            SigningKey::parse(OLD).unwrap()
        ]
    );
    assert_eq!(c.delivery.keys.len(), 1);
    let out = c.to_redacted_toml();
    assert!(!out.contains(NEW) && !out.contains(OLD), "{out}");

    // A file (a Docker secret, a systemd credential) may hold several keys.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, format!("{NEW}\n{OLD}\n")).unwrap();
    let c = Config::from_toml(&format!(
        "[[webhooks]]\nname = \"a\"\nurl = \"http://x\"\nsecret_file = \"{}\"",
        file.display()
    ))
    .unwrap();
    assert_eq!(c.webhooks[0].keys.len(), 2);

    assert_eq!(
        bad(&format!(
            "[[webhooks]]\nname = \"a\"\nurl = \"http://x\"\nsecret = \"{NEW}\"\nsecrets = [\"{OLD}\"]"
        )),
        "webhooks[0].secrets: give webhooks[0].secret or webhooks[0].secrets, not both (list every key in webhooks[0].secrets)"
    );
    assert_eq!(
        bad(&format!(
            "[[webhooks]]\nname = \"a\"\nurl = \"http://x\"\nsecrets = [\"{NEW}\", \"nope!\"]"
        )),
        "webhooks[0].secrets[1]: it must be whsec_ followed by base64"
    );
    assert_eq!(
        bad("[[webhooks]]\nname = \"a\"\nurl = \"http://x\"\nsecrets = []"),
        "webhooks[0].secrets: must list at least one key"
    );
}

#[test]
fn the_store_password_may_be_kept_apart_from_the_url() {
    // One file with the password alone, as a Docker secret or a systemd
    // credential holds it (the database server reads the same file).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("db_password");
    std::fs::write(&file, "p@ss:w/rd%20 x?#é\n").unwrap();
    let check = |c: &Config| {
        let url = c.store.url.as_ref().expect("store.url").expose();
        let pg: tokio_postgres::Config = url.parse().unwrap();
        assert_eq!(pg.get_user(), Some("taskhook"));
        assert_eq!(
            pg.get_password(),
            Some("p@ss:w/rd%20 x?#é".as_bytes()),
            "{url}"
        );
        assert_eq!(pg.get_dbname(), Some("taskhook"));
        let out = c.to_redacted_toml();
        assert!(!out.contains("p@ss") && !out.contains("p%40ss"), "{out}");
        assert!(!format!("{c:?}").contains("ss:w"));
    };
    let c = Config::from_toml(&format!(
        "[store]\nurl = \"postgres://taskhook@db:5432/taskhook?sslmode=require\"\n\
         password_file = \"{}\"",
        file.display()
    ))
    .unwrap();
    check(&c);
    assert!(
        c.store
            .url
            .as_ref()
            .unwrap()
            .expose()
            .ends_with("?sslmode=require"),
        "the rest of the URL is kept"
    );
    let env = [
        ("TASKHOOK__STORE__URL", "postgres://taskhook@db/taskhook"),
        ("TASKHOOK__STORE__PASSWORD_FILE", file.to_str().unwrap()),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    check(&Config::load_with_env(None, env).unwrap());

    let url = "url = \"postgres://taskhook@db/taskhook\"";
    assert_eq!(
        bad("[store]\npassword = \"x\""),
        "store.password: is set but store.url is not (give the URL without its password in \
         store.url, store.url_file or TASKHOOK__STORE__URL)"
    );
    assert_eq!(
        bad("[store]\nurl = \"postgres://taskhook:y@db/taskhook\"\npassword = \"x\""),
        "store.password: store.url carries a password already: give it one way only"
    );
    assert_eq!(
        bad("[store]\nurl = \"postgres://db/taskhook?password=y\"\npassword = \"x\""),
        "store.password: store.url carries a password already: give it one way only"
    );
    assert_eq!(
        bad("[store]\nurl = \"postgres://db/taskhook\"\npassword = \"x\""),
        "store.password: store.url names no user to go with it (postgres://USER@host/db), \
         got \"postgres://db/taskhook\""
    );
    assert!(
        bad(&format!(
            "[store]\n{url}\npassword_file = \"/nonexistent/p\""
        ))
        .starts_with("store.password_file: cannot read /nonexistent/p:")
    );
    assert_eq!(
        bad(&format!(
            "[store]\n{url}\npassword = \"x\"\npassword_file = \"{}\"",
            file.display()
        )),
        "store.password: give the secret one way only (inline, _file or _env)"
    );
    std::fs::write(&file, "\n").unwrap();
    assert_eq!(
        bad(&format!(
            "[store]\n{url}\npassword_file = \"{}\"",
            file.display()
        )),
        "store.password: is empty"
    );
}

#[test]
fn the_store_section_loads_alone_without_the_daemons_other_secrets() {
    // `taskhook store copy` outside the daemon's service: a webhook's
    // secret file (a systemd credential) is not there; the store's is.
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("db_password");
    std::fs::write(&password, "pw\n").unwrap();
    let file = dir.path().join("taskhook.toml");
    std::fs::write(
        &file,
        "[[webhooks]]\nname = \"a\"\nurl = \"http://x\"\n\
         secret_file = \"/run/credentials/taskhook.service/a\"\n",
    )
    .unwrap();
    let env = [
        ("TASKHOOK__STORE__URL", "postgres://taskhook@db/taskhook"),
        ("TASKHOOK__STORE__PASSWORD_FILE", password.to_str().unwrap()),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    assert!(
        Config::load_with_env(Some(&file), env.clone())
            .unwrap_err()
            .0
            .starts_with("webhooks[0].secret_file:")
    );
    let store = Config::load_store_with_env(Some(&file), env).unwrap();
    assert_eq!(
        store.backend(),
        Backend::Postgres("postgres://taskhook:pw@db/taskhook")
    );
    // The store section itself is checked.
    let env = [("TASKHOOK__STORE__URL", "mysql://db/taskhook")]
        .map(|(k, v)| (k.to_string(), v.to_string()));
    assert!(
        Config::load_store_with_env(Some(&file), env)
            .unwrap_err()
            .0
            .starts_with("store.url: must be a postgres://")
    );
}
