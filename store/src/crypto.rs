//! Patients' contact details, encrypted at rest.
//!
//! `patients.contact_enc` holds `v1.<key id>.<base64(nonce ‖ ciphertext ‖ tag)>`: AES-256-GCM with a
//! fresh random 96-bit nonce per encryption, keyed from `CAREPATH_CONTACT_KEY` (32 bytes, written as
//! base64 or hex). The key id is the first 8 hex digits of SHA-256 of the key, so a blob written
//! under another key is named as such instead of failing as "corrupt", and keys can be rotated.
//!
//! A [`Contact`] never prints its fields: `Debug` shows which details are present, not their values,
//! so a stray `{:?}` in a log line leaks nothing.

use std::fmt;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, Generate, KeyInit, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The environment variable the contact key is read from.
pub const CONTACT_KEY_ENV: &str = "CAREPATH_CONTACT_KEY";

const VERSION: &str = "v1";
const NONCE_LEN: usize = 12;

/// How to reach a patient. Every detail is optional: a patient without e-mail simply has no e-mail
/// channel, and the dispatcher falls back to the next channel.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wechat_openid: Option<String>,
    /// The name the patient is greeted by, if they gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `zh` or `en`; the delivery configuration's default language when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
}

impl fmt::Debug for Contact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |o: &Option<String>| if o.is_some() { "<set>" } else { "<none>" };
        f.debug_struct("Contact")
            .field("phone", &shown(&self.phone))
            .field("email", &shown(&self.email))
            .field("wechat_openid", &shown(&self.wechat_openid))
            .field("name", &shown(&self.name))
            .field("lang", &self.lang)
            .finish()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("{CONTACT_KEY_ENV} is not set; set it to 32 random bytes written as base64 or hex")]
    KeyMissing,
    #[error("the contact key must be 32 bytes written as base64 or hex ({0})")]
    KeyInvalid(String),
    #[error("contact details were encrypted with another key (key id {found}, this key is {ours})")]
    WrongKey { found: String, ours: String },
    #[error("contact details cannot be decrypted: {0}")]
    Corrupt(&'static str),
    #[error("no random nonce could be drawn from the system")]
    Random,
}

pub type Result<T> = std::result::Result<T, CryptoError>;

/// The AES-256-GCM key for contact details.
#[derive(Clone)]
pub struct ContactKey {
    cipher: Aes256Gcm,
    id: String,
}

impl fmt::Debug for ContactKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContactKey({})", self.id)
    }
}

impl ContactKey {
    /// Reads the key from `CAREPATH_CONTACT_KEY`.
    pub fn from_env() -> Result<ContactKey> {
        match std::env::var(CONTACT_KEY_ENV) {
            Ok(v) if !v.trim().is_empty() => ContactKey::parse(&v),
            _ => Err(CryptoError::KeyMissing),
        }
    }

    /// A key from 32 bytes written as hex (64 digits) or base64 (standard or URL-safe, padded or not).
    pub fn parse(text: &str) -> Result<ContactKey> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|e| CryptoError::KeyInvalid(e.to_string()))?
        } else {
            let engines = [
                base64::engine::general_purpose::STANDARD,
                base64::engine::general_purpose::STANDARD_NO_PAD,
                base64::engine::general_purpose::URL_SAFE,
                base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ];
            engines
                .iter()
                .find_map(|e| e.decode(text).ok())
                .ok_or_else(|| CryptoError::KeyInvalid("neither hex nor base64".into()))?
        };
        ContactKey::from_bytes(&bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<ContactKey> {
        if bytes.len() != 32 {
            return Err(CryptoError::KeyInvalid(format!(
                "{} bytes given",
                bytes.len()
            )));
        }
        let cipher = Aes256Gcm::new_from_slice(bytes)
            .map_err(|_| CryptoError::KeyInvalid("rejected by AES-256-GCM".into()))?;
        let id = hex::encode(&Sha256::digest(bytes)[..4]);
        Ok(ContactKey { cipher, id })
    }

    /// The key's public id (first 8 hex digits of SHA-256 of the key).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn encrypt(&self, contact: &Contact) -> Result<String> {
        let plain = serde_json::to_vec(contact).map_err(|_| CryptoError::Corrupt("serialize"))?;
        let nonce = Nonce::<Aes256Gcm>::try_generate().map_err(|_| CryptoError::Random)?;
        let sealed = self
            .cipher
            .encrypt(&nonce, plain.as_slice())
            .map_err(|_| CryptoError::Corrupt("encryption failed"))?;
        let mut blob = Vec::with_capacity(NONCE_LEN + sealed.len());
        blob.extend_from_slice(nonce.as_slice());
        blob.extend_from_slice(&sealed);
        Ok(format!("{VERSION}.{}.{}", self.id, B64.encode(blob)))
    }

    pub fn decrypt(&self, text: &str) -> Result<Contact> {
        let mut parts = text.trim().splitn(3, '.');
        let (Some(version), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(CryptoError::Corrupt("not in the form v1.<key id>.<data>"));
        };
        if version != VERSION {
            return Err(CryptoError::Corrupt("unknown format version"));
        }
        if id != self.id {
            return Err(CryptoError::WrongKey {
                found: id.to_string(),
                ours: self.id.clone(),
            });
        }
        let blob = B64
            .decode(body)
            .map_err(|_| CryptoError::Corrupt("not base64"))?;
        if blob.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Corrupt("too short"));
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let nonce =
            Nonce::<Aes256Gcm>::try_from(nonce).map_err(|_| CryptoError::Corrupt("nonce"))?;
        let plain = self
            .cipher
            .decrypt(&nonce, sealed)
            .map_err(|_| CryptoError::Corrupt("authentication failed (tampered or truncated)"))?;
        serde_json::from_slice(&plain).map_err(|_| CryptoError::Corrupt("not a contact record"))
    }
}

/// Encrypts with the key from `CAREPATH_CONTACT_KEY`.
pub fn encrypt_contact(contact: &Contact) -> Result<String> {
    ContactKey::from_env()?.encrypt(contact)
}

/// Decrypts with the key from `CAREPATH_CONTACT_KEY`.
pub fn decrypt_contact(text: &str) -> Result<Contact> {
    ContactKey::from_env()?.decrypt(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn contact() -> Contact {
        Contact {
            phone: Some("+8613800138000".into()),
            email: Some("li.hua@example.org".into()),
            wechat_openid: Some("oABC123".into()),
            name: Some("李华".into()),
            lang: None,
        }
    }

    #[test]
    fn round_trip_and_fresh_nonces() {
        let key = ContactKey::parse(HEX).unwrap();
        let a = key.encrypt(&contact()).unwrap();
        let b = key.encrypt(&contact()).unwrap();
        assert_ne!(a, b, "every encryption draws a fresh nonce");
        assert!(a.starts_with(&format!("v1.{}.", key.id())));
        assert!(!a.contains("138001"), "no plaintext in the blob");
        assert_eq!(key.decrypt(&a).unwrap(), contact());
        assert_eq!(key.decrypt(&b).unwrap(), contact());
    }

    #[test]
    fn hex_and_base64_keys_are_the_same_key() {
        let bytes = hex::decode(HEX).unwrap();
        let b64 = B64.encode(&bytes);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
        let k1 = ContactKey::parse(HEX).unwrap();
        let k2 = ContactKey::parse(&b64).unwrap();
        let k3 = ContactKey::parse(&format!("  {url}\n")).unwrap();
        let blob = k1.encrypt(&contact()).unwrap();
        assert_eq!(k2.decrypt(&blob).unwrap(), contact());
        assert_eq!(k3.decrypt(&blob).unwrap(), contact());
    }

    #[test]
    fn bad_keys_are_refused_clearly() {
        assert!(matches!(
            ContactKey::parse("abcd"),
            Err(CryptoError::KeyInvalid(_))
        ));
        let short = B64.encode([7u8; 16]);
        let e = ContactKey::parse(&short).unwrap_err();
        assert!(e.to_string().contains("16 bytes given"), "{e}");
        assert!(matches!(
            ContactKey::parse("not a key at all!"),
            Err(CryptoError::KeyInvalid(_))
        ));
    }

    #[test]
    fn wrong_key_tampering_and_garbage_are_errors() {
        let key = ContactKey::parse(HEX).unwrap();
        let other = ContactKey::from_bytes(&[9u8; 32]).unwrap();
        let blob = key.encrypt(&contact()).unwrap();
        assert!(matches!(
            other.decrypt(&blob),
            Err(CryptoError::WrongKey { .. })
        ));
        // Flip one bit of the ciphertext.
        let (head, body) = blob.rsplit_once('.').unwrap();
        let mut raw = B64.decode(body).unwrap();
        raw[NONCE_LEN + 2] ^= 1;
        let tampered = format!("{head}.{}", B64.encode(raw));
        assert!(matches!(
            key.decrypt(&tampered),
            Err(CryptoError::Corrupt(_))
        ));
        for junk in ["", "v1", "v1.x", "v2.abc.def", "v1.{}.!!!"] {
            let junk = junk.replace("{}", key.id());
            assert!(key.decrypt(&junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn debug_never_shows_details() {
        let shown = format!("{:?}", contact());
        for secret in ["13800138000", "li.hua", "oABC123", "李华"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("<set>"));
    }
}
