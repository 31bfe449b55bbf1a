//! How configuration values are read and shown: durations as humantime
//! strings (`"30s"`), URLs and headers with their secrets redacted.
//!
//! May call: `redact`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};
use url::Url;

fn parse(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|_| format!("invalid duration {s:?} (use e.g. \"250ms\", \"30s\", \"2h\")"))
}

/// One duration: `"250ms"`, `"30s"`, `"2h"`, `"7d"`.
pub mod duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// A list of durations.
pub mod durations {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let list = Vec::<String>::deserialize(d)?;
        list.iter()
            .map(|s| parse(s))
            .collect::<Result<_, _>>()
            .map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(d: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(d.iter().map(|d| humantime::format_duration(*d).to_string()))
    }
}

pub fn ser_url<S: Serializer>(u: &Url, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::redact::url(u.as_str()))
}

pub fn ser_opt_url<S: Serializer>(u: &Option<Url>, s: S) -> Result<S::Ok, S::Error> {
    match u {
        Some(u) => ser_url(u, s),
        None => s.serialize_none(),
    }
}

pub fn ser_headers<S: Serializer>(h: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(h.keys().map(|k| (k, crate::redact::REDACTED)))
}

/// A database URL with its password (only) redacted.
pub fn ser_db_url<S: Serializer>(u: &Option<super::Secret>, s: S) -> Result<S::Ok, S::Error> {
    match u {
        Some(u) => s.serialize_str(&crate::redact::password(u.expose())),
        None => s.serialize_none(),
    }
}
