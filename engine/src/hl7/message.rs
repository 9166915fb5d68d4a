//! HL7 v2 message text: the character set, segments, fields, repetitions, components and escape
//! sequences, read from bytes that came off the wire.
//!
//! Built to take hostile input: every size is bounded before it is read, nothing indexes without a
//! check, and every problem is a [`Problem`] naming what was wrong. The character set is read
//! from MSH-18 on the raw bytes (the MSH segment is ASCII in practice) and then confirmed on the
//! decoded text, so a multi-byte sequence that hid a separator during the scan cannot go unseen.

use std::borrow::Cow;

use super::Problem;

/// The largest message accepted (bytes, as received).
pub const MAX_MESSAGE: usize = 1 << 20;
/// The largest field accepted (bytes of decoded text, all repetitions together).
pub const MAX_FIELD: usize = 64 << 10;

/// The character sets a message may declare in MSH-18.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// `ASCII`: 7-bit text only.
    Ascii,
    /// MSH-18 empty, or `UNICODE UTF-8`.
    Utf8,
    /// `GB 18030-2000`, `GB18030`, `CHINESE-GB18030`.
    Gb18030,
}

impl Charset {
    /// The character set MSH-18 names (its first repetition, first component); `None` or an empty
    /// value means UTF-8.
    pub fn from_msh18(name: Option<&str>) -> Result<Charset, Problem> {
        let name = name.map(str::trim).unwrap_or("");
        let key: String = name
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '_'))
            .flat_map(char::to_uppercase)
            .collect();
        match key.as_str() {
            "" | "UNICODEUTF8" | "UTF8" => Ok(Charset::Utf8),
            "ASCII" | "USASCII" => Ok(Charset::Ascii),
            "GB18030" | "GB180302000" | "GB180302005" | "GB180302022" | "CHINESEGB18030" => {
                Ok(Charset::Gb18030)
            }
            _ => Err(Problem::table(
                "MSH-18",
                format!(
                    "MSH-18 (character set) `{}` is not supported: use UNICODE UTF-8, ASCII or GB 18030-2000",
                    printable(name)
                ),
            )),
        }
    }

    /// `text` decoded from `bytes` in this character set, or why it cannot be.
    pub fn decode<'b>(self, bytes: &'b [u8]) -> Result<Cow<'b, str>, String> {
        match self {
            Charset::Ascii => match bytes.iter().position(|b| !b.is_ascii()) {
                Some(at) => Err(format!(
                    "byte 0x{:02X} at offset {at} is not ASCII, the character set MSH-18 declares",
                    bytes[at]
                )),
                None => Ok(Cow::Borrowed(
                    std::str::from_utf8(bytes).map_err(|e| e.to_string())?,
                )),
            },
            Charset::Utf8 => std::str::from_utf8(bytes).map(Cow::Borrowed).map_err(|e| {
                format!(
                    "the bytes at offset {} are not UTF-8, the character set MSH-18 declares",
                    e.valid_up_to()
                )
            }),
            Charset::Gb18030 => {
                let mut decoder = encoding_rs::GB18030.new_decoder_without_bom_handling();
                let mut out = String::with_capacity(bytes.len() * 3 / 2 + 4);
                let mut read = 0;
                loop {
                    let (result, n) = decoder.decode_to_string_without_replacement(
                        &bytes[read..],
                        &mut out,
                        true,
                    );
                    read += n;
                    match result {
                        encoding_rs::DecoderResult::InputEmpty => return Ok(Cow::Owned(out)),
                        encoding_rs::DecoderResult::OutputFull => {
                            out.reserve(bytes.len() - read + 16);
                        }
                        encoding_rs::DecoderResult::Malformed(bad, _) => {
                            return Err(format!(
                                "the bytes before offset {read} are not GB 18030 (a malformed sequence of {bad} byte(s)), the character set MSH-18 declares"
                            ));
                        }
                    }
                }
            }
        }
    }

    /// `text` encoded in this character set (ASCII replaces what it cannot say with `?`).
    pub fn encode(self, text: &str) -> Vec<u8> {
        match self {
            Charset::Utf8 => text.as_bytes().to_vec(),
            Charset::Ascii => text
                .chars()
                .map(|c| if c.is_ascii() { c as u8 } else { b'?' })
                .collect(),
            Charset::Gb18030 => encoding_rs::GB18030.encode(text).0.into_owned(),
        }
    }
}

/// The delimiters of one message, from MSH-1 and MSH-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Separators {
    pub field: char,
    pub component: char,
    pub repetition: char,
    pub escape: char,
    pub subcomponent: char,
}

impl Separators {
    /// The usual `|^~\&`, used for acknowledgements.
    pub const STANDARD: Separators = Separators {
        field: '|',
        component: '^',
        repetition: '~',
        escape: '\\',
        subcomponent: '&',
    };

    /// MSH-2 as it is written (`^~\&`).
    pub fn encoding_characters(&self) -> String {
        [
            self.component,
            self.repetition,
            self.escape,
            self.subcomponent,
        ]
        .iter()
        .collect()
    }

    /// The delimiters of the message beginning `raw` (which starts with `MSH`).
    fn read(raw: &[u8]) -> Result<Separators, Problem> {
        let field = *raw.get(3).ok_or_else(|| {
            Problem::required("MSH-1", "MSH-1 (field separator) is missing".into())
        })?;
        if !is_delimiter(field) {
            return Err(Problem::data_type(
                "MSH-1",
                format!(
                    "MSH-1 (field separator) must be a punctuation character, not byte 0x{field:02X}"
                ),
            ));
        }
        let rest = &raw[4..];
        let end = rest
            .iter()
            .position(|&b| b == field || b == b'\r' || b == b'\n')
            .unwrap_or(rest.len());
        let enc = &rest[..end];
        // v2.7 adds a fifth (truncation) character; it changes nothing here.
        if !(enc.len() == 4 || enc.len() == 5) || !enc.iter().all(|&b| is_delimiter(b)) {
            return Err(Problem::data_type(
                "MSH-2",
                "MSH-2 (encoding characters) must be four punctuation characters, such as ^~\\&"
                    .into(),
            ));
        }
        let mut all = vec![field];
        all.extend_from_slice(&enc[..4]);
        for (i, b) in all.iter().enumerate() {
            if all[..i].contains(b) {
                return Err(Problem::data_type(
                    "MSH-2",
                    format!(
                        "MSH-1 and MSH-2 must use five different delimiters; `{}` appears twice",
                        *b as char
                    ),
                ));
            }
        }
        Ok(Separators {
            field: field as char,
            component: enc[0] as char,
            repetition: enc[1] as char,
            escape: enc[2] as char,
            subcomponent: enc[3] as char,
        })
    }
}

fn is_delimiter(b: u8) -> bool {
    b.is_ascii_punctuation()
}

/// One segment: its id and its fields, numbered as HL7 numbers them (`fields[n]` is SEG-n; for MSH,
/// `fields[1]` is the field separator and `fields[2]` the encoding characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub id: String,
    fields: Vec<String>,
}

/// A parsed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub separators: Separators,
    pub charset: Charset,
    /// MSH-18 as written (empty when absent), echoed in acknowledgements.
    pub charset_name: String,
    pub segments: Vec<Segment>,
}

/// Reads `raw` (one message, without MLLP framing): bounded, never panicking.
pub fn parse(raw: &[u8]) -> Result<Message, Problem> {
    if raw.len() > MAX_MESSAGE {
        return Err(Problem::size(format!(
            "the message is {} bytes; at most {MAX_MESSAGE} are accepted",
            raw.len()
        )));
    }
    let start = raw
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n' | b' ' | b'\t'))
        .unwrap_or(raw.len());
    let raw = &raw[start..];
    if !raw.starts_with(b"MSH") {
        return Err(Problem::sequence(
            "MSH",
            "the message does not begin with an MSH segment".into(),
        ));
    }
    let separators = Separators::read(raw)?;
    let declared = scan_msh18(raw, separators)?;
    let charset = Charset::from_msh18(declared.as_deref())?;
    let text = charset
        .decode(raw)
        .map_err(|why| Problem::data_type("MSH-18", why))?;
    let mut segments = Vec::new();
    for (n, line) in text
        .split(['\r', '\n'])
        .filter(|l| !l.trim().is_empty())
        .enumerate()
    {
        segments.push(segment(line, n + 1, &separators)?);
    }
    let msg = Message {
        separators,
        charset,
        charset_name: declared.clone().unwrap_or_default(),
        segments,
    };
    // The scan read MSH-18 from bytes; the decoded text must say the same.
    let decoded = msg
        .segment("MSH")
        .map(|msh| msh.value(18).component(1).raw.trim().to_owned())
        .unwrap_or_default();
    if decoded != declared.unwrap_or_default() {
        return Err(Problem::data_type(
            "MSH-18",
            "MSH-18 (character set) cannot be read unambiguously: keep the MSH segment ASCII"
                .into(),
        ));
    }
    Ok(msg)
}

/// MSH-18 (first repetition, first component) read from the MSH segment's bytes.
fn scan_msh18(raw: &[u8], seps: Separators) -> Result<Option<String>, Problem> {
    let end = raw
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(raw.len());
    let msh = &raw[..end];
    // parts[0] is "MSH", parts[1] MSH-2, so MSH-n is parts[n - 1].
    let Some(field) = msh.split(|&b| b == seps.field as u8).nth(17) else {
        return Ok(None);
    };
    let first = field
        .split(|&b| b == seps.repetition as u8)
        .next()
        .unwrap_or_default();
    let value = first
        .split(|&b| b == seps.component as u8)
        .next()
        .unwrap_or_default();
    if !value.is_ascii() {
        return Err(Problem::data_type(
            "MSH-18",
            "MSH-18 (character set) is not ASCII text".into(),
        ));
    }
    let value = String::from_utf8_lossy(value).trim().to_owned();
    Ok((!value.is_empty()).then_some(value))
}

fn segment(line: &str, n: usize, seps: &Separators) -> Result<Segment, Problem> {
    let id: String = line.chars().take(3).collect();
    let well_formed = id.len() == 3
        && id.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && id
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    let after = line.get(3..).unwrap_or("");
    if !well_formed || !(after.is_empty() || after.starts_with(seps.field)) {
        return Err(Problem::sequence(
            "",
            format!(
                "segment {n} does not begin with a segment id (three capital letters or digits) and a field separator"
            ),
        ));
    }
    let mut fields: Vec<String> = Vec::new();
    fields.push(id.clone());
    let body = after.strip_prefix(seps.field).unwrap_or("");
    if id == "MSH" {
        fields.push(seps.field.to_string());
    }
    if !body.is_empty() || id == "MSH" {
        for (i, f) in body.split(seps.field).enumerate() {
            if f.len() > MAX_FIELD {
                let number = if id == "MSH" { i + 2 } else { i + 1 };
                return Err(Problem::size(format!(
                    "{id}-{number} is {} bytes; a field may hold at most {MAX_FIELD}",
                    f.len()
                )));
            }
            fields.push(f.to_owned());
        }
    }
    Ok(Segment { id, fields })
}

impl Message {
    /// The first segment named `id`.
    pub fn segment(&self, id: &str) -> Option<Seg<'_>> {
        self.segments
            .iter()
            .find(|s| s.id == id)
            .map(|s| Seg { msg: self, seg: s })
    }

    /// Every segment named `id`, in order.
    pub fn segments_named<'m>(&'m self, id: &'m str) -> impl Iterator<Item = Seg<'m>> + 'm {
        self.segments
            .iter()
            .filter(move |s| s.id == id)
            .map(move |s| Seg { msg: self, seg: s })
    }
}

/// A segment of a message, for reading values.
#[derive(Debug, Clone, Copy)]
pub struct Seg<'m> {
    msg: &'m Message,
    seg: &'m Segment,
}

impl<'m> Seg<'m> {
    pub fn id(&self) -> &'m str {
        &self.seg.id
    }

    /// The first repetition of field `n` (empty when absent). MSH-1 and MSH-2 are whole.
    pub fn value(&self, n: usize) -> Value<'m> {
        self.repetitions(n).into_iter().next().unwrap_or(Value {
            raw: "",
            msg: self.msg,
        })
    }

    /// Every repetition of field `n` (none when the field is absent or empty).
    pub fn repetitions(&self, n: usize) -> Vec<Value<'m>> {
        let raw = self.seg.fields.get(n).map(String::as_str).unwrap_or("");
        if raw.is_empty() {
            return Vec::new();
        }
        if self.seg.id == "MSH" && n <= 2 {
            return vec![Value { raw, msg: self.msg }];
        }
        raw.split(self.msg.separators.repetition)
            .map(|raw| Value { raw, msg: self.msg })
            .collect()
    }
}

/// A field repetition, component or subcomponent, still escaped.
#[derive(Debug, Clone, Copy)]
pub struct Value<'m> {
    pub raw: &'m str,
    msg: &'m Message,
}

impl<'m> Value<'m> {
    /// Component `n` (from 1).
    pub fn component(&self, n: usize) -> Value<'m> {
        self.part(self.msg.separators.component, n)
    }

    /// Subcomponent `n` (from 1).
    pub fn subcomponent(&self, n: usize) -> Value<'m> {
        self.part(self.msg.separators.subcomponent, n)
    }

    fn part(&self, sep: char, n: usize) -> Value<'m> {
        let raw = n
            .checked_sub(1)
            .and_then(|i| self.raw.split(sep).nth(i))
            .unwrap_or("");
        Value { raw, msg: self.msg }
    }

    /// The text with escape sequences resolved, trimmed; `""` (HL7's explicit null) reads as
    /// empty.
    pub fn text(&self) -> Result<String, String> {
        let raw = self.raw.trim();
        if raw == "\"\"" {
            return Ok(String::new());
        }
        unescape(raw, &self.msg.separators, self.msg.charset)
    }

    /// The text, or `None` when empty.
    pub fn opt_text(&self) -> Result<Option<String>, String> {
        self.text().map(|t| (!t.is_empty()).then_some(t))
    }
}

/// `raw` with `\F\ \S\ \T\ \R\ \E\` and `\Xhh..\` resolved and highlighting (`\H\ \N\`)
/// dropped; other sequences (formatting) are kept as written.
pub fn unescape(raw: &str, seps: &Separators, charset: Charset) -> Result<String, String> {
    let esc = seps.escape;
    if !raw.contains(esc) {
        return Ok(raw.to_owned());
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find(esc) {
        out.push_str(&rest[..i]);
        let after = &rest[i + esc.len_utf8()..];
        let Some(j) = after.find(esc) else {
            // An escape character with no closing one is text.
            out.push_str(&rest[i..]);
            return Ok(out);
        };
        let seq = &after[..j];
        match seq {
            "F" => out.push(seps.field),
            "S" => out.push(seps.component),
            "T" => out.push(seps.subcomponent),
            "R" => out.push(seps.repetition),
            "E" => out.push(esc),
            "H" | "N" => {}
            _ if seq.starts_with('X') => out.push_str(&hex(&seq[1..], charset)?),
            _ => {
                out.push(esc);
                out.push_str(seq);
                out.push(esc);
            }
        }
        rest = &after[j + esc.len_utf8()..];
    }
    out.push_str(rest);
    Ok(out)
}

fn hex(digits: &str, charset: Charset) -> Result<String, String> {
    let bad = || {
        format!(
            "`\\X{}\\` is not an even number of hexadecimal digits",
            printable(digits)
        )
    };
    if digits.is_empty()
        || !digits.len().is_multiple_of(2)
        || !digits.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    charset
        .decode(&bytes)
        .map(Cow::into_owned)
        .map_err(|why| format!("a hexadecimal escape is not text: {why}"))
}

/// `text` written safely inside a field: delimiters escaped, line breaks and other control
/// characters replaced by spaces.
pub fn escape(text: &str, seps: &Separators) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let code = if c == seps.escape {
            Some('E')
        } else if c == seps.field {
            Some('F')
        } else if c == seps.component {
            Some('S')
        } else if c == seps.subcomponent {
            Some('T')
        } else if c == seps.repetition {
            Some('R')
        } else {
            None
        };
        match code {
            Some(code) => {
                out.push(seps.escape);
                out.push(code);
                out.push(seps.escape);
            }
            None if c.is_control() => out.push(' '),
            None => out.push(c),
        }
    }
    out
}

/// `s` cut to a short, printable excerpt for an error message.
pub(crate) fn printable(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(40)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() > 40 {
        out.push('…');
    }
    out
}
