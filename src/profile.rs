//! Service profiles: where each AceData Cloud service keeps a task's state
//! and result, which words it uses, and how it is queried. The built-in
//! profiles are data (`services.toml`, compiled in); an operator's
//! `[upstream.services.NAME]` table overrides any key of one, or describes a
//! new service, and is checked by the same code. The terminal rule
//! (`terminal.rs`) reads records only through a [`Profile`].
//!
//! May call: nothing of taskhook's.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

/// The built-in profiles, as data.
pub const BUILTIN_TOML: &str = include_str!("services.toml");

/// When a task without `finished_at` counts as settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Settle {
    /// When every item (or the record's own state) carries a success or
    /// failure word.
    State,
    /// As `State`, and an item without a state word counts as succeeded
    /// once it carries a result URL.
    Result,
    /// Only `finished_at` settles a task.
    Never,
}

/// How a service is asked about its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestMode {
    /// `{"ids": [...], "action": "retrieve_batch", "limit": N}`.
    Batch,
    /// One task per request: `{id_key: ID, "action": action}`.
    Single,
}

/// A dotted path into a record, e.g. `response.data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    fn parse(s: &str) -> Result<FieldPath, String> {
        let parts: Vec<String> = s.split('.').map(str::to_string).collect();
        if parts.iter().any(|p| {
            p.is_empty()
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        }) {
            return Err(format!(
                "{s:?} is not a dotted path of field names (e.g. \"response.data\")"
            ));
        }
        Ok(FieldPath(parts))
    }

    /// The value at this path. A path that starts at `response` follows the
    /// bare-response rule of [`response_of`].
    pub fn resolve<'a>(&self, record: &'a Value) -> Option<&'a Value> {
        let (start, rest) = match self.0.split_first() {
            Some((first, rest)) if first == "response" => (response_of(record)?, rest),
            _ => (record, &self.0[..]),
        };
        rest.iter().try_fold(start, |v, k| v.get(k))
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

impl Serialize for FieldPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A task record's `response`: the field when present (`None` when null),
/// or the record itself when it has neither `response` nor `request` (some
/// services answer flat, and some docs show only the bare response).
pub fn response_of(record: &Value) -> Option<&Value> {
    let obj = record.as_object()?;
    match obj.get("response") {
        Some(Value::Null) => None,
        Some(r) => Some(r),
        None if !obj.contains_key("request") => Some(record),
        None => None,
    }
}

/// Where a profile finds the result items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Items {
    /// `response.data` when present, else the response itself.
    Auto,
    /// A list's elements, or a lone object, at this path.
    At(FieldPath),
}

impl Serialize for Items {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Items::Auto => s.serialize_str("auto"),
            Items::At(p) => p.serialize(s),
        }
    }
}

/// What one state word means under a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Word {
    Success,
    Failure,
    Running,
    Unknown,
}

/// How taskhook reads one service's records and asks about its tasks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    /// The endpoint; `None` means `/{service}/tasks`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks_path: Option<String>,
    /// A key whose object is the task record when present (`task`).
    pub unwrap: String,
    pub items: Items,
    pub item_state: Vec<String>,
    pub record_state: Vec<FieldPath>,
    pub success_words: Vec<String>,
    pub failure_words: Vec<String>,
    pub running_words: Vec<String>,
    pub settle_without_finished_at: Settle,
    pub count_field: String,
    pub request: RequestMode,
    pub id_key: String,
    pub action: String,
    pub max_batch: usize,
}

impl Profile {
    /// The path of `service`'s tasks endpoint, e.g. `/producer/tasks`.
    pub fn tasks_path(&self, service: &str) -> String {
        self.tasks_path
            .clone()
            .unwrap_or_else(|| format!("/{service}/tasks"))
    }

    /// The task record inside what the upstream sent (unwrapping `task`).
    pub fn record<'a>(&self, answer: &'a Value) -> &'a Value {
        if self.unwrap.is_empty() {
            return answer;
        }
        match answer.get(&self.unwrap) {
            Some(inner @ Value::Object(_)) if answer.get("response").is_none() => inner,
            _ => answer,
        }
    }

    /// The task ID a record names: `id`, else `task_id`.
    pub fn record_id<'a>(&self, answer: &'a Value) -> Option<&'a str> {
        let r = self.record(answer);
        ["id", "task_id"]
            .iter()
            .find_map(|k| r.get(*k).and_then(Value::as_str))
    }

    /// What `word` means, case and surrounding space ignored.
    pub fn classify(&self, word: &str) -> Word {
        let w = word.trim().to_ascii_lowercase();
        let has = |list: &[String]| list.contains(&w);
        if has(&self.failure_words) {
            Word::Failure
        } else if has(&self.success_words) {
            Word::Success
        } else if has(&self.running_words) {
            Word::Running
        } else {
            Word::Unknown
        }
    }

    /// The result items of a (unwrapped) record.
    pub fn items<'a>(&self, record: &'a Value) -> Vec<&'a Value> {
        let at = match &self.items {
            Items::At(path) => path.resolve(record),
            Items::Auto => {
                let resp = response_of(record);
                match resp.and_then(|r| r.get("data")) {
                    Some(d) if !d.is_null() => Some(d),
                    _ => resp,
                }
            }
        };
        match at {
            Some(Value::Array(a)) => a.iter().filter(|v| !v.is_null()).collect(),
            Some(o @ Value::Object(m)) if !m.is_empty() => vec![o],
            Some(s @ Value::String(_)) => vec![s],
            _ => Vec::new(),
        }
    }

    /// The state word an item carries, if any.
    pub fn item_word<'a>(&self, item: &'a Value) -> Option<&'a str> {
        self.item_state
            .iter()
            .find_map(|f| item.get(f).and_then(Value::as_str))
    }

    /// The state word that speaks for the whole task, if any.
    pub fn record_word<'a>(&self, record: &'a Value) -> Option<&'a str> {
        self.record_state
            .iter()
            .find_map(|p| p.resolve(record).and_then(Value::as_str))
    }
}

/// True when `item` carries a result: a URL (a string starting with `http`
/// under a key `url`, `*_url` or `*_urls`, at any depth but never an input
/// such as `callback_url`), and no progress below 100%.
pub fn has_result(item: &Value) -> bool {
    fn is_url(v: &Value) -> bool {
        match v {
            Value::String(s) => s.starts_with("http://") || s.starts_with("https://"),
            Value::Array(a) => a.iter().any(is_url),
            _ => false,
        }
    }
    fn url_key(k: &str) -> bool {
        k != "callback_url" && (k == "url" || k.ends_with("_url") || k.ends_with("_urls"))
    }
    fn find(v: &Value, depth: u8) -> bool {
        if depth > 6 {
            return false;
        }
        match v {
            Value::Object(m) => m
                .iter()
                .any(|(k, v)| (url_key(k) && is_url(v)) || find(v, depth + 1)),
            Value::Array(a) => a.iter().any(|v| find(v, depth + 1)),
            _ => false,
        }
    }
    let unfinished = ["progress", "percent"]
        .iter()
        .any(|k| item.get(*k).is_some_and(progress_below_full));
    match item {
        Value::String(_) => is_url(item),
        _ => !unfinished && find(item, 0),
    }
}

/// A progress value that says "not done yet": a number strictly between 1
/// and 100, or a string such as "45%". (0..=1 is ambiguous between a
/// fraction and a percentage, so it proves nothing.)
fn progress_below_full(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_f64().is_some_and(|p| p > 1.0 && p < 100.0),
        Value::String(s) => s
            .trim()
            .trim_end_matches('%')
            .trim()
            .parse::<f64>()
            .is_ok_and(|p| s.contains('%') && p < 100.0),
        _ => false,
    }
}

/// One `[upstream.services.NAME]` table (or a built-in entry) as written:
/// every key optional, each replacing the one it overrides.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileOverride {
    pub tasks_path: Option<String>,
    pub unwrap: Option<String>,
    pub items: Option<String>,
    pub item_state: Option<Vec<String>>,
    pub record_state: Option<Vec<String>>,
    pub success_words: Option<Vec<String>>,
    pub failure_words: Option<Vec<String>>,
    pub running_words: Option<Vec<String>>,
    pub settle_without_finished_at: Option<String>,
    pub count_field: Option<String>,
    pub request: Option<String>,
    pub id_key: Option<String>,
    pub action: Option<String>,
    pub max_batch: Option<i64>,
}

/// The shape of `services.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BuiltIn {
    generic: ProfileOverride,
    services: BTreeMap<String, ProfileOverride>,
}

/// Every profile in force: the built-ins with the operator's overrides, the
/// generic profile, and whether services nobody described may be enqueued.
#[derive(Debug, Clone, PartialEq)]
pub struct Profiles {
    generic: Profile,
    services: BTreeMap<String, Profile>,
    /// Services named in the configuration and the default service: the
    /// ones `check-config` shows.
    shown: BTreeSet<String>,
    allow_unknown: bool,
}

impl Serialize for Profiles {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(
            self.shown
                .iter()
                .map(|n| (n, ShownProfile(n, self.for_task(n)))),
        )
    }
}

/// A profile as `check-config` prints it: with its endpoint filled in.
struct ShownProfile<'a>(&'a str, &'a Profile);

impl Serialize for ShownProfile<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut p = self.1.clone();
        p.tasks_path = Some(p.tasks_path(self.0));
        p.serialize(s)
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn words(key: &str, list: &[String]) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(list.len());
    for w in list {
        let w = w.trim().to_ascii_lowercase();
        if w.is_empty() {
            return Err(format!("{key}: words must not be empty"));
        }
        if !out.contains(&w) {
            out.push(w);
        }
    }
    Ok(out)
}

impl ProfileOverride {
    /// `self` laid over `base`, checked; errors name `prefix.key`.
    fn apply(&self, base: &Profile, prefix: &str) -> Result<Profile, String> {
        let key = |k: &str| format!("{prefix}.{k}");
        let mut p = base.clone();
        if let Some(t) = &self.tasks_path {
            if !t.starts_with('/') {
                return Err(format!(
                    "{}: must start with '/', got {t:?}",
                    key("tasks_path")
                ));
            }
            p.tasks_path = Some(t.clone());
        }
        if let Some(u) = &self.unwrap {
            if !u.is_empty() && !is_name(u) {
                return Err(format!("{}: not a field name: {u:?}", key("unwrap")));
            }
            p.unwrap = u.clone();
        }
        if let Some(i) = &self.items {
            p.items = if i == "auto" {
                Items::Auto
            } else {
                Items::At(FieldPath::parse(i).map_err(|e| format!("{}: {e}", key("items")))?)
            };
        }
        if let Some(fields) = &self.item_state {
            if let Some(bad) = fields.iter().find(|f| !is_name(f)) {
                return Err(format!("{}: not a field name: {bad:?}", key("item_state")));
            }
            p.item_state = fields.clone();
        }
        if let Some(paths) = &self.record_state {
            p.record_state = paths
                .iter()
                .map(|s| FieldPath::parse(s))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: {e}", key("record_state")))?;
        }
        if let Some(w) = &self.success_words {
            p.success_words = words(&key("success_words"), w)?;
        }
        if let Some(w) = &self.failure_words {
            p.failure_words = words(&key("failure_words"), w)?;
        }
        if let Some(w) = &self.running_words {
            p.running_words = words(&key("running_words"), w)?;
        }
        if let Some(s) = &self.settle_without_finished_at {
            p.settle_without_finished_at = match s.as_str() {
                "state" => Settle::State,
                "result" => Settle::Result,
                "never" => Settle::Never,
                other => {
                    return Err(format!(
                        "{}: must be \"state\", \"result\" or \"never\", got {other:?}",
                        key("settle_without_finished_at")
                    ));
                }
            };
        }
        if let Some(c) = &self.count_field {
            if !is_name(c) {
                return Err(format!("{}: not a field name: {c:?}", key("count_field")));
            }
            p.count_field = c.clone();
        }
        if let Some(r) = &self.request {
            p.request = match r.as_str() {
                "batch" => RequestMode::Batch,
                "single" => RequestMode::Single,
                other => {
                    return Err(format!(
                        "{}: must be \"batch\" or \"single\", got {other:?}",
                        key("request")
                    ));
                }
            };
        }
        if let Some(k) = &self.id_key {
            if !is_name(k) {
                return Err(format!("{}: not a field name: {k:?}", key("id_key")));
            }
            p.id_key = k.clone();
        }
        if let Some(a) = &self.action {
            p.action = a.clone();
        }
        if let Some(n) = self.max_batch {
            if !(1..=500).contains(&n) {
                return Err(format!("{}: must be 1..=500, got {n}", key("max_batch")));
            }
            p.max_batch = n as usize;
        }
        if p.request == RequestMode::Single {
            p.max_batch = 1;
        }
        for (a, la, b, lb) in [
            (
                &p.success_words,
                "success_words",
                &p.failure_words,
                "failure_words",
            ),
            (
                &p.success_words,
                "success_words",
                &p.running_words,
                "running_words",
            ),
            (
                &p.failure_words,
                "failure_words",
                &p.running_words,
                "running_words",
            ),
        ] {
            if let Some(w) = a.iter().find(|w| b.contains(w)) {
                return Err(format!(
                    "{}: {w:?} is also in {lb}; a word means one thing",
                    key(la)
                ));
            }
        }
        Ok(p)
    }
}

/// The generic profile's starting point, before `services.toml`'s
/// `[generic]` is applied to it.
fn blank() -> Profile {
    Profile {
        tasks_path: None,
        unwrap: String::new(),
        items: Items::Auto,
        item_state: Vec::new(),
        record_state: Vec::new(),
        success_words: Vec::new(),
        failure_words: Vec::new(),
        running_words: Vec::new(),
        settle_without_finished_at: Settle::Result,
        count_field: "count".into(),
        request: RequestMode::Batch,
        id_key: "id".into(),
        action: "retrieve".into(),
        max_batch: 500,
    }
}

/// The built-in profiles alone, the default service `producer`.
impl Default for Profiles {
    fn default() -> Self {
        Profiles::new(&BTreeMap::new(), false, "producer").expect("the built-in profiles load")
    }
}

impl Profiles {
    /// The built-in profiles with `overrides` laid over them. Errors name the
    /// key at fault as `upstream.services.NAME.KEY`.
    pub fn new(
        overrides: &BTreeMap<String, ProfileOverride>,
        allow_unknown: bool,
        default_service: &str,
    ) -> Result<Profiles, String> {
        let built: BuiltIn =
            toml::from_str(BUILTIN_TOML).map_err(|e| format!("built-in services: {e}"))?;
        let generic = built.generic.apply(&blank(), "services.generic")?;
        let mut services = BTreeMap::new();
        for (name, o) in &built.services {
            services.insert(
                name.clone(),
                o.apply(&generic, &format!("services.{name}"))?,
            );
        }
        for (name, o) in overrides {
            let prefix = format!("upstream.services.{name}");
            if !is_name(name) || name.len() > 64 {
                return Err(format!(
                    "{prefix}: service names use letters, digits, '-' and '_'"
                ));
            }
            let base = services.get(name).unwrap_or(&generic).clone();
            services.insert(name.clone(), o.apply(&base, &prefix)?);
        }
        Ok(Profiles {
            generic,
            services,
            shown: overrides
                .keys()
                .cloned()
                .chain([default_service.to_string()])
                .collect(),
            allow_unknown,
        })
    }

    /// The profile of a known service (built in or configured), or the
    /// generic one when unknown services are allowed.
    pub fn get(&self, service: &str) -> Option<&Profile> {
        self.services
            .get(service)
            .or_else(|| self.allow_unknown.then_some(&self.generic))
    }

    /// The profile to read a queued task's records with: its service's, or
    /// the generic one (a task queued before its service was removed from
    /// the configuration keeps being watched).
    pub fn for_task(&self, service: &str) -> &Profile {
        self.services.get(service).unwrap_or(&self.generic)
    }

    pub fn generic(&self) -> &Profile {
        &self.generic
    }

    /// Names of every known service, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.services.keys().map(String::as_str)
    }

    pub fn allows_unknown(&self) -> bool {
        self.allow_unknown
    }

    /// The services `check-config` shows: those configured, and the default.
    pub fn shown(&self) -> impl Iterator<Item = &str> {
        self.shown.iter().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn profiles() -> Profiles {
        Profiles::new(&BTreeMap::new(), false, "producer").unwrap()
    }

    #[test]
    fn the_built_in_table_loads_and_names_every_documented_service() {
        let p = profiles();
        for s in [
            "suno",
            "producer",
            "midjourney",
            "luma",
            "kling",
            "veo",
            "sora",
            "seedance",
            "seedream",
            "nano-banana",
            "flux",
            "hailuo",
            "wan",
            "gemini",
            "grok",
            "happyhorse",
            "openai",
            "fish",
            "maestro",
            "dreamina",
            "minimax",
            "qrart",
            "headshots",
            "captcha",
            "digital-human",
            "webextrator",
            "pixverse",
            "qwen-image",
            "pika",
        ] {
            assert!(p.get(s).is_some(), "{s}");
        }
        assert!(p.get("nonesuch").is_none());
        assert_eq!(p.get("minimax").unwrap().count_field, "total");
        assert_eq!(p.get("captcha").unwrap().request, RequestMode::Single);
        assert_eq!(p.get("captcha").unwrap().max_batch, 1);
        assert_eq!(p.get("kling").unwrap().tasks_path("kling"), "/kling/tasks");
    }

    #[test]
    fn overrides_replace_keys_and_are_checked() {
        let mut o = BTreeMap::new();
        o.insert(
            "kling".to_string(),
            ProfileOverride {
                success_words: Some(vec!["Succeed".into(), "ok".into()]),
                settle_without_finished_at: Some("never".into()),
                ..Default::default()
            },
        );
        o.insert(
            "brand-new".to_string(),
            ProfileOverride {
                tasks_path: Some("/v2/new/tasks".into()),
                ..Default::default()
            },
        );
        let p = Profiles::new(&o, false, "producer").unwrap();
        let k = p.get("kling").unwrap();
        assert_eq!(k.success_words, vec!["succeed", "ok"]);
        assert_eq!(k.settle_without_finished_at, Settle::Never);
        assert_eq!(k.items, Items::At(FieldPath::parse("response").unwrap()));
        assert_eq!(
            p.get("brand-new").unwrap().tasks_path("brand-new"),
            "/v2/new/tasks"
        );
        assert_eq!(
            p.shown().collect::<Vec<_>>(),
            ["brand-new", "kling", "producer"]
        );

        let bad = |o: ProfileOverride| {
            Profiles::new(
                &BTreeMap::from([("luma".to_string(), o)]),
                false,
                "producer",
            )
            .unwrap_err()
        };
        assert_eq!(
            bad(ProfileOverride {
                settle_without_finished_at: Some("sometimes".into()),
                ..Default::default()
            }),
            "upstream.services.luma.settle_without_finished_at: must be \"state\", \"result\" or \"never\", got \"sometimes\""
        );
        assert!(
            bad(ProfileOverride {
                running_words: Some(vec!["completed".into()]),
                ..Default::default()
            })
            .starts_with(
                "upstream.services.luma.success_words: \"completed\" is also in running_words"
            )
        );
        assert!(
            bad(ProfileOverride {
                items: Some("response..data".into()),
                ..Default::default()
            })
            .starts_with("upstream.services.luma.items:")
        );
        assert!(
            bad(ProfileOverride {
                max_batch: Some(0),
                ..Default::default()
            })
            .starts_with("upstream.services.luma.max_batch:")
        );
    }

    #[test]
    fn unknown_services_use_the_generic_profile_only_when_allowed() {
        let p = Profiles::new(&BTreeMap::new(), true, "producer").unwrap();
        assert_eq!(p.get("nonesuch"), Some(p.generic()));
        assert_eq!(profiles().for_task("nonesuch"), profiles().generic());
    }

    #[test]
    fn the_bare_response_rule_and_unwrapping() {
        // A platform record whose response is missing has no response.
        let running = json!({"id": "t", "request": {"image_url": "https://x/y.png"}});
        assert!(response_of(&running).is_none());
        // A bare response (or a flat answer) is its own response.
        let bare = json!({"success": true, "data": [{"image_url": "https://x"}]});
        assert_eq!(response_of(&bare), Some(&bare));
        assert!(response_of(&json!({"id": "t", "response": null})).is_none());
        let p = profiles();
        let minimax = p.get("minimax").unwrap();
        let wrapped = json!({"task": {"id": "m", "status": "running"}});
        assert_eq!(minimax.record_id(&wrapped), Some("m"));
        assert_eq!(minimax.record_id(&json!({"id": "b"})), Some("b"));
        assert_eq!(
            p.get("captcha")
                .unwrap()
                .record_id(&json!({"task_id": "c"})),
            Some("c")
        );
    }

    #[test]
    fn results_are_urls_but_never_inputs_or_unfinished_progress() {
        assert!(has_result(&json!({"audio_url": "https://a/b.mp3"})));
        assert!(has_result(&json!({"content": {"url": "https://a"}})));
        assert!(has_result(&json!({"image_urls": ["https://a"]})));
        assert!(has_result(&json!("https://a/b.png")));
        assert!(!has_result(&json!({"callback_url": "https://me/cb"})));
        assert!(!has_result(&json!({"video_url": null})));
        assert!(!has_result(&json!({"video_url": ""})));
        assert!(!has_result(&json!({"video_url": "ftp://x"})));
        assert!(!has_result(
            &json!({"image_url": "https://a", "progress": 45})
        ));
        assert!(!has_result(
            &json!({"image_url": "https://a", "progress": "45%"})
        ));
        assert!(has_result(
            &json!({"image_url": "https://a", "progress": 100})
        ));
        assert!(has_result(
            &json!({"image_url": "https://a", "progress": "100%"})
        ));
        assert!(has_result(
            &json!({"image_url": "https://a", "progress": 1})
        ));
    }
}
