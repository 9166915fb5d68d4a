//! Sending one message on one channel: a signed JSON POST to a gateway, or an e-mail over SMTP.
//!
//! A failure is *transient* (time-out, connection, HTTP 408/425/429/5xx, SMTP 4xx: try again later)
//! or *permanent* for this channel (any other refusal, no address for the patient: fall back to the
//! next channel at once). Errors name the channel and the status only: a gateway's or mail server's
//! reply text can echo the recipient, so it is never stored or logged.

use hmac::{Hmac, Mac};
use lettre::AsyncTransport as _;
use lettre::Message;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::config::{Lang, SmtpConfig, WebhookConfig};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Transient(String),
    Permanent(String),
}

impl Failure {
    pub fn message(&self) -> &str {
        match self {
            Failure::Transient(m) | Failure::Permanent(m) => m,
        }
    }
}

/// One rendered message for one recipient on one channel.
#[derive(Clone)]
pub struct Outgoing {
    pub key: String,
    pub channel: String,
    pub to: String,
    pub lang: Lang,
    pub subject: String,
    pub text: String,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("key", &self.key)
            .field("channel", &self.channel)
            .field("lang", &self.lang)
            .finish_non_exhaustive()
    }
}

/// The JSON a gateway receives. Field order is fixed, and nothing in it changes between retries of
/// the same message, so a gateway may compare a retried body with the first.
#[derive(Serialize)]
struct Body<'a> {
    idempotency_key: &'a str,
    channel: &'a str,
    to: &'a str,
    lang: &'a str,
    text: &'a str,
}

/// `sha256=<hex HMAC-SHA256 of body>`, the `X-Carepath-Signature` header.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The JSON body for `out`, exactly as posted.
pub fn webhook_body(out: &Outgoing) -> Vec<u8> {
    serde_json::to_vec(&Body {
        idempotency_key: &out.key,
        channel: &out.channel,
        to: &out.to,
        lang: out.lang.as_str(),
        text: &out.text,
    })
    .unwrap_or_default()
}

pub async fn post(cfg: &WebhookConfig, out: &Outgoing) -> Result<(), Failure> {
    let body = webhook_body(out);
    let sig = signature(&cfg.secret, &body);
    let ch = &out.channel;
    let res = cfg
        .client
        .post(&cfg.url)
        .header("Content-Type", "application/json")
        .header("X-Carepath-Signature", sig)
        .header("Idempotency-Key", &out.key)
        .body(body)
        .send()
        .await;
    match res {
        Ok(r) => {
            let code = r.status().as_u16();
            // Read (and drop) the body so the connection can be reused.
            let _ = r.bytes().await;
            match code {
                200..=299 => Ok(()),
                408 | 425 | 429 | 500..=599 => Err(Failure::Transient(format!(
                    "{ch}: gateway answered HTTP {code}"
                ))),
                _ => Err(Failure::Permanent(format!(
                    "{ch}: gateway refused with HTTP {code}"
                ))),
            }
        }
        Err(e) if e.is_timeout() => Err(Failure::Transient(format!(
            "{ch}: no answer within {} ms",
            cfg.timeout.as_millis()
        ))),
        Err(e) if e.is_connect() => Err(Failure::Transient(format!(
            "{ch}: cannot connect to the gateway"
        ))),
        Err(e) => Err(Failure::Transient(format!(
            "{ch}: request failed ({})",
            if e.is_body() || e.is_decode() {
                "reading the answer"
            } else if e.is_request() {
                "sending"
            } else {
                "other"
            }
        ))),
    }
}

/// A Message-ID derived from the outbox key: a resend of the same message carries the same id, so
/// mail clients show one message.
pub fn message_id(key: &str, domain: &str) -> String {
    let h = hex::encode(&Sha256::digest(key.as_bytes())[..12]);
    format!("<{h}@{domain}>")
}

pub async fn email(cfg: &SmtpConfig, out: &Outgoing) -> Result<(), Failure> {
    let Ok(address) = out.to.parse() else {
        return Err(Failure::Permanent(
            "email: the patient's address is not valid".into(),
        ));
    };
    let msg = Message::builder()
        .from(cfg.from.clone())
        .to(Mailbox::new(None, address))
        .subject(out.subject.clone())
        .message_id(Some(message_id(&out.key, cfg.from.email.domain())))
        .header(ContentType::TEXT_PLAIN)
        .body(out.text.clone())
        .map_err(|_| Failure::Permanent("email: the message cannot be built".into()))?;
    match cfg.transport.send(msg).await {
        Ok(_) => Ok(()),
        Err(e) => {
            let code = e.status().map(|c| format!(" {c}")).unwrap_or_default();
            if e.is_permanent() {
                Err(Failure::Permanent(format!(
                    "email: the mail server refused{code}"
                )))
            } else if e.is_timeout() {
                Err(Failure::Transient(format!(
                    "email: no answer within {} ms",
                    cfg.timeout.as_millis()
                )))
            } else if e.is_transient() {
                Err(Failure::Transient(format!(
                    "email: the mail server deferred{code}"
                )))
            } else if e.is_tls() {
                Err(Failure::Transient("email: TLS failed".into()))
            } else {
                Err(Failure::Transient(
                    "email: cannot talk to the mail server".into(),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn bodies_are_stable_and_ids_follow_the_key() {
        let o = Outgoing {
            key: "e1:2:0".into(),
            channel: "sms".into(),
            to: "+8613800138000".into(),
            lang: Lang::Zh,
            subject: String::new(),
            text: "您好".into(),
        };
        assert_eq!(
            String::from_utf8(webhook_body(&o)).unwrap(),
            r#"{"idempotency_key":"e1:2:0","channel":"sms","to":"+8613800138000","lang":"zh","text":"您好"}"#
        );
        assert_eq!(message_id("e1:2:0", "x.org"), message_id("e1:2:0", "x.org"));
        assert_ne!(message_id("e1:2:0", "x.org"), message_id("e1:2:1", "x.org"));
        assert!(!format!("{o:?}").contains("138001"));
    }
}
