//! Secrets in the configuration: given inline, as a `*_file` (Docker
//! secrets, systemd credentials) or through an environment variable, and
//! never printed.
//!
//! May call: `redact`.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{ConfigError, err};

/// A secret value. Never printed: `Debug`, `Display` and serialization all
/// show a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(crate::redact::REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(crate::redact::REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// A Standard Webhooks signing key: the bytes behind `whsec_BASE64`.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    /// Parses `whsec_BASE64` (the prefix is optional).
    pub fn parse(s: &str) -> Option<Self> {
        use base64::Engine;
        let b64 = s.trim().strip_prefix("whsec_").unwrap_or(s.trim());
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        (!bytes.is_empty()).then_some(SigningKey(bytes))
    }
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(crate::redact::REDACTED)
    }
}

impl Serialize for SigningKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(crate::redact::REDACTED)
    }
}

/// One secret from at most one of: inline, file, environment variable.
/// `key` names the inline key (`upstream.token`); the others are
/// `{key}_file` and `{key}_env`.
pub fn resolve(
    key: &str,
    inline: Option<Secret>,
    file: Option<&Path>,
    env: Option<&str>,
) -> Result<Option<Secret>, ConfigError> {
    let given = [inline.is_some(), file.is_some(), env.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        return err(key, "give the secret one way only (inline, _file or _env)");
    }
    let value = if let Some(v) = inline {
        v.0
    } else if let Some(path) = file {
        std::fs::read_to_string(path).or_else(|e| {
            err(
                &format!("{key}_file"),
                format!("cannot read {}: {e}", path.display()),
            )
        })?
    } else if let Some(var) = env {
        std::env::var(var).or_else(|_| {
            err(
                &format!("{key}_env"),
                format!("environment variable {var} is not set"),
            )
        })?
    } else {
        return Ok(None);
    };
    let value = value.trim().to_string();
    if value.is_empty() {
        return err(key, "is empty");
    }
    Ok(Some(Secret(value)))
}

/// The signing keys of a resolved secret: one key, or several separated
/// by whitespace (a rotation: the new key first, then the old ones).
pub fn signing_keys(key: &str, s: Option<Secret>) -> Result<Vec<SigningKey>, ConfigError> {
    let Some(s) = s else {
        return Ok(Vec::new());
    };
    let words: Vec<&str> = s.expose().split_whitespace().collect();
    words
        .iter()
        .enumerate()
        .map(|(i, k)| {
            SigningKey::parse(k).ok_or_else(|| {
                let which = if words.len() > 1 {
                    format!("key {} of {}", i + 1, words.len())
                } else {
                    "it".to_string()
                };
                ConfigError(format!("{key}: {which} must be whsec_ followed by base64"))
            })
        })
        .collect()
}

/// The keys of `secrets = [new, old, ...]`, or of the one secret given
/// another way (inline, file, variable). Giving both is an error.
pub fn rotation(
    key: &str,
    list: Option<Vec<Secret>>,
    single: Option<Secret>,
) -> Result<Vec<SigningKey>, ConfigError> {
    let keys_key = format!("{}s", key);
    match (list, single) {
        (Some(_), Some(_)) => err(
            &keys_key,
            format!("give {key} or {keys_key}, not both (list every key in {keys_key})"),
        ),
        (Some(list), None) => {
            if list.is_empty() {
                return err(&keys_key, "must list at least one key");
            }
            let mut keys = Vec::with_capacity(list.len());
            for (i, s) in list.iter().enumerate() {
                let k = format!("{keys_key}[{i}]");
                match signing_keys(&k, Some(s.clone()))?.as_slice() {
                    [one] => keys.push(one.clone()),
                    _ => return err(&k, "must be one key (whsec_ followed by base64)"),
                }
            }
            Ok(keys)
        }
        (None, single) => signing_keys(key, single),
    }
}
