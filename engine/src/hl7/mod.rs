//! HL7 v2 ADT over MLLP: hospital information systems tell carepath who was admitted,
//! transferred, discharged or registered, and carepath records it through the same entry point
//! as every other source of hospital facts (`crate::hospital`).
//!
//! Layers, each usable alone: `message` (bytes → segments, fields, escapes, character sets),
//! `time` (HL7 times), `adt` (a message → a typed ADT event, or the field at fault), `ack`
//! (acknowledgements), `mllp` (framing and the listener). Nothing in them panics on input or
//! logs patient data; the listener logs control ids, triggers and outcomes only.

pub mod ack;
pub mod adt;
pub mod message;
pub mod mllp;
mod receive;
pub mod time;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use jiff::Timestamp;

pub use ack::AckCode;
pub use adt::{Adt, Header, Trigger};
pub use message::{Charset, Message};
pub use mllp::Limits;
pub use receive::handle;

use crate::Programs;
use crate::hospital::Hospital;
use crate::intake::IntakeRules;
use crate::store::Pool;
use crate::store::crypto::ContactKey;

/// What the listener applies messages with, for as long as it runs: the programs as the admin
/// API publishes and reloads them, the intake rules and the contact key.
#[derive(Clone)]
pub struct Service {
    pub pool: Pool,
    pub programs: Arc<RwLock<Programs>>,
    pub intake: Arc<IntakeRules>,
    pub contact_key: Option<Arc<ContactKey>>,
}

impl mllp::Responder for Service {
    async fn respond(&self, message: Vec<u8>, peer: SocketAddr) -> Vec<u8> {
        let programs = self
            .programs
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
        let hospital = Hospital {
            programs: &programs,
            intake: &self.intake,
            contact_key: self.contact_key.as_deref(),
        };
        handle(
            &self.pool,
            &hospital,
            &peer.ip().to_string(),
            &message,
            Timestamp::now(),
        )
        .await
    }

    fn oversize(&self, prefix: &[u8]) -> Vec<u8> {
        let header = header_of_unreadable(prefix);
        tracing::info!(control_id = %header.control_id, trigger = %header.trigger_code, outcome = "AR", "HL7 message too large");
        let problem = Problem::size(format!(
            "the message is larger than {} bytes, the most accepted",
            message::MAX_MESSAGE
        ));
        ack::build(&header, AckCode::Rejected, Some(&problem), Timestamp::now())
    }
}

/// Serves HL7 v2 ADT over MLLP on `listener` until `shutdown` resolves.
pub async fn listen(
    listener: tokio::net::TcpListener,
    service: Service,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    mllp::serve(listener, limits, Arc::new(service), shutdown).await
}

/// Why a message was not accepted: the HL7 error code (table 0357), where (`PV1-19`), and a
/// reason a person can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub code: u16,
    pub location: String,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Problem {}

impl Problem {
    fn new(code: u16, location: &str, reason: String) -> Problem {
        Problem {
            code,
            location: location.to_owned(),
            reason,
        }
    }
    pub fn sequence(location: &str, reason: String) -> Problem {
        Problem::new(100, location, reason)
    }
    pub fn required(location: &str, reason: String) -> Problem {
        Problem::new(101, location, reason)
    }
    pub fn data_type(location: &str, reason: String) -> Problem {
        Problem::new(102, location, reason)
    }
    pub fn table(location: &str, reason: String) -> Problem {
        Problem::new(103, location, reason)
    }
    pub fn size(reason: String) -> Problem {
        Problem::new(102, "", reason)
    }
    pub fn unsupported_type(reason: String) -> Problem {
        Problem::new(200, "MSH-9", reason)
    }
    pub fn unsupported_event(reason: String) -> Problem {
        Problem::new(201, "MSH-9.2", reason)
    }
    pub fn unsupported_processing(reason: String) -> Problem {
        Problem::new(202, "MSH-11", reason)
    }
    pub fn unsupported_version(reason: String) -> Problem {
        Problem::new(203, "MSH-12", reason)
    }
    /// A record the message names does not exist (an unknown facility, patient or visit).
    pub fn unknown_key(location: &str, reason: String) -> Problem {
        Problem::new(204, location, reason)
    }
    /// Applying the message failed.
    pub fn application(reason: String) -> Problem {
        Problem::new(207, "", reason)
    }

    /// The text of HL7 table 0357 for the code.
    pub fn code_text(&self) -> &'static str {
        match self.code {
            100 => "Segment sequence error",
            101 => "Required field missing",
            102 => "Data type error",
            103 => "Table value not found",
            200 => "Unsupported message type",
            201 => "Unsupported event code",
            202 => "Unsupported processing id",
            203 => "Unsupported version id",
            204 => "Unknown key identifier",
            205 => "Duplicate key identifier",
            206 => "Application record locked",
            _ => "Application internal error",
        }
    }
}

/// A message refused: the header to acknowledge it with, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub header: Header,
    pub problem: Problem,
}

/// The ADT event in `raw` (one message, unframed), or why it is refused.
pub fn read(raw: &[u8]) -> Result<Adt, Box<Refused>> {
    match message::parse(raw) {
        Ok(msg) => adt::read(&msg).map_err(|problem| {
            Box::new(Refused {
                header: Header::lenient(&msg),
                problem,
            })
        }),
        Err(problem) => Err(Box::new(Refused {
            header: header_of_unreadable(raw),
            problem,
        })),
    }
}

/// What can be read of MSH in a message that does not parse: ASCII fields only, so the
/// acknowledgement still reaches the right sender with the right control id where possible.
pub fn header_of_unreadable(raw: &[u8]) -> Header {
    let mut header = Header {
        sending_application: String::new(),
        sending_facility: String::new(),
        receiving_application: String::new(),
        receiving_facility: String::new(),
        trigger_code: String::new(),
        control_id: String::new(),
        processing_id: String::new(),
        version: String::new(),
        charset: Charset::Utf8,
        charset_name: String::new(),
    };
    let start = raw
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n' | b' ' | b'\t'))
        .unwrap_or(raw.len());
    let raw = &raw[start..];
    if !raw.starts_with(b"MSH") || raw.len() < 8 {
        return header;
    }
    let sep = raw[3];
    let (component, repetition) = (raw[4], raw[5]);
    if !sep.is_ascii_punctuation() {
        return header;
    }
    let end = raw
        .iter()
        .take(4096)
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(raw.len().min(4096));
    let fields: Vec<&[u8]> = raw[..end].split(|&b| b == sep).collect();
    let get = |n: usize, c: usize| -> String {
        let Some(f) = fields.get(n - 1) else {
            return String::new();
        };
        let rep = f.split(|&b| b == repetition).next().unwrap_or_default();
        let comp = rep
            .split(|&b| b == component)
            .nth(c - 1)
            .unwrap_or_default();
        if comp.is_ascii() && comp.len() <= 199 && !comp.iter().any(u8::is_ascii_control) {
            String::from_utf8_lossy(comp).trim().to_owned()
        } else {
            String::new()
        }
    };
    header.sending_application = get(3, 1);
    header.sending_facility = get(4, 1);
    header.receiving_application = get(5, 1);
    header.receiving_facility = get(6, 1);
    header.trigger_code = get(9, 2);
    header.control_id = get(10, 1);
    header.processing_id = get(11, 1);
    header.version = get(12, 1);
    let declared = get(18, 1);
    if let Ok(charset) = Charset::from_msh18(Some(&declared)) {
        header.charset = charset;
        header.charset_name = declared;
    }
    header
}

#[cfg(test)]
mod tests;
