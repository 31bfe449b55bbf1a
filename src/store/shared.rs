//! What both backends work out the same way before they write their SQL:
//! the range an ID prefix covers, the words of the attempt log, how much of
//! a receiver's answer is kept, which states a bulk replay takes.
//!
//! May call: `redact`.

use std::collections::BTreeMap;

use super::{DeliveryState, DeliveryVerdict, WebhookHealth};

/// The most of a receiver's answer the attempt log keeps, in bytes.
pub const ANSWER_MAX: usize = 1024;

/// The smallest string greater than every string that starts with
/// `prefix`, in code-point (UTF-8 byte) order: `prefix` with its last
/// character replaced by the next one. `None` when there is none (the
/// prefix is empty, or made only of `char::MAX`). So `id >= prefix AND id
/// < bound` is exactly the IDs starting with `prefix`, a range on the
/// primary key.
pub fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = last as u32 + 1;
        // Skip the surrogates: no character lies between.
        if (0xD800..=0xDFFF).contains(&next) {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The attempt log's word for a verdict.
pub fn verdict_word(v: &DeliveryVerdict) -> &'static str {
    match v {
        DeliveryVerdict::Delivered => "delivered",
        DeliveryVerdict::Retry { .. } => "retry",
        DeliveryVerdict::DeadLetter => "failed",
        DeliveryVerdict::Gone => "gone",
        DeliveryVerdict::WebhookRemoved => "webhook_removed",
    }
}

/// At most [`ANSWER_MAX`] bytes of an answer, cut at a character
/// boundary; an empty answer is none.
pub fn answer_kept(answer: Option<String>) -> Option<String> {
    let mut a = answer.filter(|a| !a.is_empty())?;
    if a.len() > ANSWER_MAX {
        let mut end = ANSWER_MAX;
        while !a.is_char_boundary(end) {
            end -= 1;
        }
        a.truncate(end);
    }
    Some(a)
}

/// Whether a bulk replay can take deliveries in `state`: dead letters and
/// parked deliveries only.
pub fn replayable(state: DeliveryState) -> bool {
    matches!(state, DeliveryState::Failed | DeliveryState::WebhookRemoved)
}

/// The attempt log's status column read back (an HTTP status fits).
pub fn status_of(s: Option<i64>) -> Option<u16> {
    s.and_then(|s| u16::try_from(s).ok())
}

/// Webhooks' health as an activity query gathers it, by name.
#[derive(Default)]
pub struct HealthBook(BTreeMap<String, WebhookHealth>);

impl HealthBook {
    /// The entry of the webhook stored as `stored` (shown redacted).
    pub fn entry(&mut self, stored: &str) -> &mut WebhookHealth {
        let name = crate::redact::url(stored);
        self.0.entry(name.clone()).or_insert_with(|| WebhookHealth {
            webhook: name,
            ..Default::default()
        })
    }

    /// Every webhook, by name.
    pub fn into_sorted(self) -> Vec<WebhookHealth> {
        self.0.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_bound_is_the_next_string_after_every_match() {
        assert_eq!(prefix_upper_bound("job-1").as_deref(), Some("job-2"));
        assert_eq!(prefix_upper_bound("a").as_deref(), Some("b"));
        assert_eq!(prefix_upper_bound("az").as_deref(), Some("a{"));
        assert_eq!(prefix_upper_bound("é").as_deref(), Some("ê"));
        assert_eq!(
            prefix_upper_bound("x\u{D7FF}").as_deref(),
            Some("x\u{E000}")
        );
        assert_eq!(
            prefix_upper_bound("a\u{10FFFF}").as_deref(),
            Some("b"),
            "the last character has no successor: the one before moves"
        );
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
        // Every string with the prefix sorts below the bound, in byte order.
        for id in ["job-1", "job-1\u{10FFFF}", "job-10", "job-1zzz"] {
            assert!(id.as_bytes() < "job-2".as_bytes());
        }
    }

    #[test]
    fn answers_are_kept_to_a_kib_of_whole_characters() {
        assert_eq!(answer_kept(None), None);
        assert_eq!(answer_kept(Some(String::new())), None);
        assert_eq!(answer_kept(Some("ok".into())).as_deref(), Some("ok"));
        let long = answer_kept(Some("é".repeat(600))).unwrap();
        assert!(long.len() <= ANSWER_MAX && long.chars().all(|c| c == 'é'));
        assert_eq!(long.len(), ANSWER_MAX);
    }
}
