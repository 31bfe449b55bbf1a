//! Standard Webhooks signing: `webhook-signature: v1,BASE64(HMAC-SHA256(
//! key, "{id}.{timestamp}.{body}"))`, checked against the specification's
//! published vectors.
//!
//! May call: `config` (the key type).

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::SigningKey;

/// `v1,BASE64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))`.
pub fn sign(key: &SigningKey, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.bytes()).expect("HMAC takes any key");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("v1,{sig}")
}

/// The `webhook-signature` header: one `v1,` signature per key,
/// space-separated (Standard Webhooks lets a receiver accept any of
/// them, so keys can rotate without downtime).
pub fn sign_all(keys: &[SigningKey], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| sign(k, msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks a `webhook-signature` header (space-separated `v1,...` entries),
/// as a receiver would. Used by the demo's receiver.
pub fn verify(key: &SigningKey, msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let want = sign(key, msg_id, timestamp, body);
    header.split(' ').any(|sig| {
        sig.len() == want.len()
            && sig
                .bytes()
                .zip(want.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_signature_vectors() {
        let key = SigningKey::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            sign(
                &key,
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            sign(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn verify_accepts_any_listed_signature_and_rejects_tampering() {
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let good = sign(&key, "msg_1", 5, b"{}");
        assert!(verify(&key, "msg_1", 5, b"{}", &format!("v1,bogus {good}")));
        assert!(!verify(&key, "msg_1", 5, b"{ }", &good));
        assert!(!verify(&key, "msg_1", 6, b"{}", &good));
    }

    #[test]
    fn a_rotation_signs_with_every_key_newest_first() {
        let new = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let old = SigningKey::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let header = sign_all(&[new.clone(), old.clone()], "msg_1", 5, b"{}");
        assert_eq!(
            header,
            format!(
                "{} {}",
                sign(&new, "msg_1", 5, b"{}"),
                sign(&old, "msg_1", 5, b"{}")
            )
        );
        assert!(verify(&new, "msg_1", 5, b"{}", &header));
        assert!(verify(&old, "msg_1", 5, b"{}", &header));
    }
}
