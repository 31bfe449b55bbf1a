//! The per-service table: which family of record shapes each AceData Cloud
//! service speaks, and the few facts that differ between services of one
//! family (record `type`, where the ID lives, the batch count key and default
//! page, state words, result URL fields, timestamps, the not-found answer).
//!
//! Everything here comes from the documented records in
//! `tests/fixtures/upstream-records/` (see its `INDEX.md`).

/// A family of record shapes: how a service says "running", "succeeded" and
/// "failed". The record builders in `families.rs` have one function each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// Platform record, `response.data[]` items carrying `state` and `progress`.
    Items,
    /// Platform record, `response.data[]` items carrying result URLs, no state word.
    Urls,
    /// Platform record, flat `response` with `state`, no `data`.
    FlatState,
    /// Platform record, flat `response` with `success` and `progress`, no state word.
    FlatProgress,
    /// Platform record, `response.data` is one object with `status`.
    DataObject,
    /// Record with a top-level `status` and `progress {percent, stage, message}`.
    TopStatus,
    /// A bare task object with `status`; `retrieve` wraps it in `{"task": ...}`.
    TaskEnvelope,
    /// A flat answer queried one task at a time by `task_id`; no batch.
    Single,
    /// `response` absent until done; ISO-8601 timestamps.
    FinishedOnly,
}

impl Family {
    /// The name shown by `GET /_sim/tasks/{id}`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Family::Items => "items",
            Family::Urls => "urls",
            Family::FlatState => "flat_state",
            Family::FlatProgress => "flat_progress",
            Family::DataObject => "data_object",
            Family::TopStatus => "top_status",
            Family::TaskEnvelope => "task_envelope",
            Family::Single => "single",
            Family::FinishedOnly => "finished_only",
        }
    }
}

/// Where a record keeps its task's ID (and where a replayed `record` gets it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdAt {
    /// The platform record's `id`.
    Id,
    /// minimax: the task object's `id` (`task.id` in a `{"task": ...}` answer).
    Task,
    /// The flat answer's `task_id` (captcha, digital-human).
    TaskId,
    /// Both `id` and `task_id` (webextrator).
    IdAndTaskId,
}

/// Whether a task has several results, and when they appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Multi {
    /// One result; the `items` knob is ignored.
    No,
    /// Several results, each finishing at its own time.
    Staggered,
    /// Several results, all appearing when the task settles.
    AtOnce,
}

/// Which timestamps a record carries, and when. Times are Unix float seconds
/// unless said otherwise; "settled" means succeeded or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Clock {
    /// `started_at` once started; `finished_at` and `elapsed` once settled.
    Full,
    /// `finished_at` only, once settled.
    FinishedAt,
    /// `finished_at` and `duration` (not `elapsed`) once settled.
    Duration,
    /// Nothing when it succeeds (the daemon must decide from the URLs);
    /// `finished_at` when it fails.
    FailureOnly,
    /// `started_at` and `finished_at` present as `null` until set; `elapsed` once settled.
    Nullable,
    /// `finished_at` present as `null` until settled; no `started_at`.
    FinishedNullable,
    /// `started_at`, `finished_at` and `elapsed` appear together once settled.
    AtSettle,
    /// As `Full`, as ISO-8601 strings (`2025-05-02T10:30:05.456Z`).
    Iso,
    /// None: the task object has integer `created_at` / `updated_at` instead.
    Never,
}

/// How `retrieve` answers an ID the upstream does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotFound {
    /// 404 `{"success": false, "error": {"code": "not_found", ...}, "trace_id"}`.
    Error404,
    /// 404 `{"success": false, "error": {"code": "not_found", ...}}` (captcha).
    Plain404,
    /// 404 `{"error": {"code": "no_task", ...}}` (digital-human).
    NoTask404,
    /// 200 `{}` ("returns an empty object when no tasks are matched").
    Empty200,
}

/// The state vocabulary of a service that has one: the key carrying it and
/// its words while pending, while running, on success and on failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Words {
    pub(crate) key: &'static str,
    pub(crate) pending: &'static str,
    pub(crate) running: &'static str,
    pub(crate) done: &'static str,
    pub(crate) failed: &'static str,
}

/// A result URL field: its key and its value (`None`: present as `null`).
pub(crate) type UrlField = (&'static str, Option<&'static str>);

/// One row of the table: everything the simulator needs to know to speak
/// one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Profile {
    /// The path segment: `POST /{name}/tasks`.
    pub(crate) name: &'static str,
    pub(crate) family: Family,
    /// The record's `type` (`""`: no `type` key; `"*"`: the path's service name).
    pub(crate) type_word: &'static str,
    pub(crate) id_at: IdAt,
    /// The count key of a batch answer (`count`, or `total` for minimax).
    pub(crate) count_key: &'static str,
    /// How many items a batch answer holds when the request has no `limit`.
    pub(crate) page: Option<usize>,
    pub(crate) multi: Multi,
    pub(crate) clock: Clock,
    /// The result URL fields of each item (or of the flat result).
    pub(crate) urls: &'static [UrlField],
    pub(crate) words: Words,
    pub(crate) not_found: NotFound,
}

impl Profile {
    /// Whether the service answers `retrieve_batch` at all.
    pub(crate) fn batches(&self) -> bool {
        self.family != Family::Single
    }

    /// Whether tasks of this service can have several results.
    pub(crate) fn has_items(&self) -> bool {
        self.multi != Multi::No
    }
}

// Result URL fields.
const PRODUCER: &[UrlField] = &[
    ("image_url", Some("https://example.invalid/i.jpg")),
    ("audio_url", Some("https://example.invalid/a.m4a")),
    ("video_url", None),
];
const SUNO: &[UrlField] = &[
    ("audio_url", Some("https://example.invalid/a.mp3")),
    ("video_url", Some("https://example.invalid/v.mp4")),
    ("image_url", Some("https://example.invalid/i.jpeg")),
];
const PIKA: &[UrlField] = &[
    ("video_url", Some("https://example.invalid/v.mp4")),
    ("image_url", Some("https://example.invalid/i.jpg")),
];
const LUMA: &[UrlField] = &[
    ("video_url", Some("https://example.invalid/v.mp4")),
    ("thumbnail_url", Some("https://example.invalid/t.jpg")),
];
const MIDJOURNEY: &[UrlField] = &[
    ("image_url", Some("https://example.invalid/i.png")),
    ("raw_image_url", Some("https://example.invalid/raw.png")),
];
const VIDEO: &[UrlField] = &[("video_url", Some("https://example.invalid/v.mp4"))];
const IMAGE: &[UrlField] = &[("image_url", Some("https://example.invalid/i.png"))];
const AUDIO: &[UrlField] = &[("audio_url", Some("https://example.invalid/a.mp3"))];
const URL: &[UrlField] = &[("url", Some("https://example.invalid/u.png"))];
const PAGE: &[UrlField] = &[("url", Some("https://example.invalid/page"))];
const OUTPUT: &[UrlField] = &[("output_url", Some("https://example.invalid/o.mp4"))];
const NONE: &[UrlField] = &[];

/// Builds a [`Words`] (a const fn so the table stays one line per service).
const fn w(
    key: &'static str,
    pending: &'static str,
    running: &'static str,
    done: &'static str,
    failed: &'static str,
) -> Words {
    Words {
        key,
        pending,
        running,
        done,
        failed,
    }
}

// State words. The items family's item words are chosen per task
// (`state_words`); ITEM is the standard set.
const ITEM: Words = w("state", "pending", "running", "succeeded", "error");
const NO_WORDS: Words = w("", "", "", "", "");
const LUMA_W: Words = w("state", "pending", "processing", "completed", "failed");
const KLING_W: Words = w("state", "submitted", "processing", "succeed", "failed");
const WAN_W: Words = w("state", "pending", "running", "completed", "failed");
const SEEDANCE_W: Words = w("status", "queued", "running", "succeeded", "failed");
const DREAMINA_W: Words = w("status", "generating", "generating", "done", "failed");
// maestro's running words are planning, then producing (see families.rs).
const MAESTRO_W: Words = w("status", "pending", "planning", "succeeded", "failed");
const MINIMAX_W: Words = w("status", "queued", "running", "succeeded", "failed");
const CAPTCHA_W: Words = w("status", "processing", "processing", "ready", "failed");
const DH_W: Words = w("state", "pending", "processing", "succeed", "failed");

/// Builds a [`Profile`] (a const fn so the table stays one line per service).
#[allow(clippy::too_many_arguments)]
const fn p(
    name: &'static str,
    family: Family,
    type_word: &'static str,
    id_at: IdAt,
    count_key: &'static str,
    page: Option<usize>,
    multi: Multi,
    clock: Clock,
    urls: &'static [UrlField],
    words: Words,
    not_found: NotFound,
) -> Profile {
    Profile {
        name,
        family,
        type_word,
        id_at,
        count_key,
        page,
        multi,
        clock,
        urls,
        words,
        not_found,
    }
}

use Clock::*;
use Family::*;
use IdAt::*;
use Multi::*;
use NotFound::*;

/// Every documented service. Columns: path name, family, record `type`, where
/// the ID lives, batch count key, default page (no `limit`), several results?,
/// timestamps, result URL fields, state words, not-found answer.
#[rustfmt::skip]
pub(crate) const SERVICES: &[Profile] = &[
    //  name             family         type       id_at        count    page      multi      clock             urls        words       not_found
    p("producer",      Items,         "audios",  Id,          "count", None,     Staggered, Full,             PRODUCER,   ITEM,       Error404),
    p("veo",           Items,         "videos",  Id,          "count", None,     Staggered, Full,             VIDEO,      ITEM,       Error404),
    p("sora",          Items,         "videos",  Id,          "count", None,     Staggered, Full,             VIDEO,      ITEM,       Error404),
    p("hailuo",        Items,         "",        Id,          "count", None,     Staggered, Full,             VIDEO,      ITEM,       Error404),
    p("gemini",        Items,         "videos",  Id,          "count", None,     Staggered, Full,             VIDEO,      ITEM,       Error404),
    p("grok",          Items,         "videos",  Id,          "count", None,     Staggered, Full,             VIDEO,      ITEM,       Error404),
    p("happyhorse",    Items,         "videos",  Id,          "count", None,     Staggered, Full,             VIDEO,      ITEM,       Error404),
    p("pika",          Items,         "videos",  Id,          "count", None,     Staggered, Full,             PIKA,       ITEM,       Error404),
    p("suno",          Urls,          "",        Id,          "count", None,     Staggered, Full,             SUNO,       NO_WORDS,   Error404),
    p("seedream",      Urls,          "images",  Id,          "count", None,     Staggered, FailureOnly,      IMAGE,      NO_WORDS,   Error404),
    p("nano-banana",   Urls,          "images",  Id,          "count", None,     Staggered, Full,             IMAGE,      NO_WORDS,   Error404),
    p("flux",          Urls,          "",        Id,          "count", None,     Staggered, Full,             IMAGE,      NO_WORDS,   Error404),
    p("fish",          Urls,          "audios",  Id,          "count", None,     Staggered, FailureOnly,      AUDIO,      NO_WORDS,   Error404),
    p("pixverse",      Urls,          "",        Id,          "count", None,     Staggered, FailureOnly,      VIDEO,      NO_WORDS,   Error404),
    p("headshots",     Urls,          "",        Id,          "count", None,     Staggered, FailureOnly,      IMAGE,      NO_WORDS,   Error404),
    p("qwen-image",    Urls,          "images",  Id,          "count", None,     Staggered, Full,             IMAGE,      NO_WORDS,   Error404),
    p("openai",        Urls,          "images",  Id,          "count", Some(12), AtOnce,    Full,             URL,        NO_WORDS,   Empty200),
    p("luma",          FlatState,     "",        Id,          "count", None,     No,        FinishedAt,       LUMA,       LUMA_W,     Error404),
    p("kling",         FlatState,     "videos",  Id,          "count", None,     No,        Full,             VIDEO,      KLING_W,    Error404),
    p("wan",           FlatState,     "videos",  Id,          "count", None,     No,        Full,             VIDEO,      WAN_W,      Error404),
    p("midjourney",    FlatProgress,  "imagine", Id,          "count", None,     No,        Duration,         MIDJOURNEY, NO_WORDS,   Error404),
    p("qrart",         FlatProgress,  "",        Id,          "count", None,     No,        FailureOnly,      IMAGE,      NO_WORDS,   Error404),
    p("seedance",      DataObject,    "videos",  Id,          "count", None,     No,        Full,             VIDEO,      SEEDANCE_W, Error404),
    p("dreamina",      DataObject,    "",        Id,          "count", None,     No,        Full,             VIDEO,      DREAMINA_W, Empty200),
    p("maestro",       TopStatus,     "",        Id,          "count", Some(20), AtOnce,    Nullable,         OUTPUT,     MAESTRO_W,  Error404),
    p("minimax",       TaskEnvelope,  "",        Task,        "total", None,     No,        Never,            URL,        MINIMAX_W,  Error404),
    p("captcha",       Single,        "",        TaskId,      "count", None,     No,        AtSettle,         NONE,       CAPTCHA_W,  Plain404),
    p("digital-human", Single,        "",        TaskId,      "count", None,     No,        FinishedNullable, VIDEO,      DH_W,       NoTask404),
    p("webextrator",   FinishedOnly,  "render",  IdAndTaskId, "count", Some(12), No,        Iso,              PAGE,       NO_WORDS,   Error404),
];

/// What `--any-service` serves under a name the table does not have: the
/// producer shape, with the path's name as the record `type`.
pub(crate) const ANY: Profile = p(
    "*", Items, "*", Id, "count", None, Staggered, Full, PRODUCER, ITEM, Error404,
);

/// The table's row for `name`.
pub(crate) fn profile(name: &str) -> Option<&'static Profile> {
    SERVICES.iter().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_single_services_do_not_batch() {
        let mut names: Vec<&str> = SERVICES.iter().map(|p| p.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SERVICES.len());
        let single: Vec<&str> = SERVICES
            .iter()
            .filter(|p| !p.batches())
            .map(|p| p.name)
            .collect();
        assert_eq!(single, ["captcha", "digital-human"]);
        assert_eq!(profile("minimax").unwrap().count_key, "total");
        assert!(profile("nope").is_none());
    }
}
