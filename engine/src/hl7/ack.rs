//! Acknowledgements: an ACK message answering one received message, in the sender's character
//! set and HL7 version, with MSA-1 `AA`, `AE` or `AR` and, when not accepted, an ERR segment
//! whose user message (ERR-8, and MSA-3 for v2.3 readers) says why.

use std::sync::atomic::{AtomicU32, Ordering};

use jiff::Timestamp;

use super::Problem;
use super::adt::Header;
use super::message::{Separators, escape};
use super::time;

/// MSA-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// `AA`: accepted and applied.
    Accepted,
    /// `AE`: understood, but applying it failed; nothing was changed.
    Error,
    /// `AR`: refused as unreadable or invalid; nothing was changed.
    Rejected,
}

impl AckCode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::Accepted => "AA",
            AckCode::Error => "AE",
            AckCode::Rejected => "AR",
        }
    }
}

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// A control id for an acknowledgement: the time in milliseconds and a per-process sequence
/// number (at most 20 characters, as v2.3–v2.5 allow).
fn control_id(now: Timestamp) -> String {
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed) % 100_000;
    format!(
        "{}{seq:05}",
        now.as_millisecond().rem_euclid(10_i64.pow(15))
    )
}

/// The acknowledgement of the message `header` describes, as bytes in its character set.
pub fn build(header: &Header, code: AckCode, problem: Option<&Problem>, now: Timestamp) -> Vec<u8> {
    header.charset.encode(&text(header, code, problem, now))
}

/// The acknowledgement as text (before encoding).
pub fn text(header: &Header, code: AckCode, problem: Option<&Problem>, now: Timestamp) -> String {
    let seps = Separators::STANDARD;
    let e = |s: &str| escape(s, &seps);
    let version = if header.version.is_empty() {
        "2.5"
    } else {
        header.version.as_str()
    };
    let trigger = if header.trigger_code.is_empty() {
        String::new()
    } else {
        format!("^{}", e(&header.trigger_code))
    };
    let structure = if !trigger.is_empty() && version != "2.3" && version != "2.3.1" {
        "^ACK"
    } else {
        ""
    };
    let processing = if header.processing_id.is_empty() {
        "P"
    } else {
        header.processing_id.as_str()
    };
    let mut out = format!(
        "MSH|{}|{}|{}|{}|{}|{}||ACK{trigger}{structure}|{}|{}|{}||||||{}\rMSA|{}|{}",
        seps.encoding_characters(),
        e(&header.receiving_application),
        e(&header.receiving_facility),
        e(&header.sending_application),
        e(&header.sending_facility),
        time::format(now),
        control_id(now),
        e(processing),
        e(version),
        e(&header.charset_name),
        code.as_str(),
        e(&header.control_id),
    );
    if let Some(p) = problem.filter(|_| code != AckCode::Accepted) {
        out.push('|');
        out.push_str(&e(&p.reason));
        out.push_str(&format!(
            "\rERR||{}|{}^{}^HL70357|E||||{}",
            location(&p.location),
            p.code,
            p.code_text(),
            e(&p.reason)
        ));
    }
    out.push('\r');
    out
}

/// ERR-2 for a location written `SEG-F` or `SEG-F.C`.
fn location(at: &str) -> String {
    let Some((segment, rest)) = at.split_once('-') else {
        return escape(at, &Separators::STANDARD);
    };
    let (field, component) = rest.split_once('.').unwrap_or((rest, ""));
    let ok = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric());
    if !ok(segment) || !ok(field) || !ok(component) {
        return String::new();
    }
    if component.is_empty() {
        format!("{segment}^1^{field}")
    } else {
        format!("{segment}^1^{field}^1^{component}")
    }
}
