//! Diagnostics: what is wrong, where, and how to fix it.
//!
//! Broken input is not an error of the compiler: every front-end returns the model it could build
//! together with every diagnostic it found. Codes are stable so editors, CI and the documentation can
//! refer to them.

use std::fmt;

use serde::Serialize;

/// A 1-based line and column in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, col: 1 };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// Stable diagnostic codes; `docs/pathway-language.md` lists them for authors. Case intake rules
/// (`intake.rs`) have their own family, `I…`, all errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    Syntax,
    UnknownKey,
    WrongType,
    MissingKey,
    DuplicateKey,
    DuplicateId,
    UnknownState,
    UnreachableState,
    NoWayOut,
    ImmediateCycle,
    UnknownRole,
    UnknownScale,
    UnknownChannel,
    UnknownObservation,
    UnknownFunction,
    ExprSyntax,
    BadDuration,
    InvalidValue,
    UnknownVariable,
    Fragment,
    Script,
    UnknownCounter,
    UnknownOutcome,
    UnsupportedCondition,
    UnknownEvent,
    UnknownCancel,
    UnknownSchedule,
    ConstantGuard,
    ShadowedTransition,
    UnusedVariable,
    GuardedImmediateCycle,
    WorkBornEnded,
    UnusedEvent,
    IntakeWrongType,
    IntakeUnknownKey,
    IntakeMissingKey,
    IntakeDuplicate,
    IntakeBadPattern,
    IntakeUnknownPathway,
    IntakeUnknownEntry,
    IntakeInvalidValue,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Syntax => "E001",
            Code::UnknownKey => "E002",
            Code::WrongType => "E003",
            Code::MissingKey => "E004",
            Code::DuplicateKey => "E005",
            Code::DuplicateId => "E006",
            Code::UnknownState => "E007",
            Code::UnreachableState => "E008",
            Code::NoWayOut => "E009",
            Code::ImmediateCycle => "E010",
            Code::UnknownRole => "E011",
            Code::UnknownScale => "E012",
            Code::UnknownChannel => "E013",
            Code::UnknownObservation => "E014",
            Code::UnknownFunction => "E015",
            Code::ExprSyntax => "E016",
            Code::BadDuration => "E017",
            Code::InvalidValue => "E018",
            Code::UnknownVariable => "E019",
            Code::Fragment => "E020",
            Code::Script => "E021",
            Code::UnknownCounter => "E022",
            Code::UnknownOutcome => "E023",
            Code::UnsupportedCondition => "E024",
            Code::UnknownEvent => "E025",
            Code::UnknownCancel => "E026",
            Code::UnknownSchedule => "E027",
            Code::ConstantGuard => "W001",
            Code::ShadowedTransition => "W002",
            Code::UnusedVariable => "W003",
            Code::GuardedImmediateCycle => "W004",
            Code::WorkBornEnded => "W005",
            Code::UnusedEvent => "W006",
            Code::IntakeWrongType => "I001",
            Code::IntakeUnknownKey => "I002",
            Code::IntakeMissingKey => "I003",
            Code::IntakeDuplicate => "I004",
            Code::IntakeBadPattern => "I005",
            Code::IntakeUnknownPathway => "I006",
            Code::IntakeUnknownEntry => "I007",
            Code::IntakeInvalidValue => "I008",
        }
    }

    pub fn severity(self) -> Severity {
        if self.as_str().starts_with('W') {
            Severity::Warning
        } else {
            Severity::Error
        }
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: Code,
    pub file: String,
    #[serde(flatten)]
    pub pos: Pos,
    pub message: String,
    pub hint: String,
}

impl Diagnostic {
    /// A diagnostic whose severity follows from its code.
    pub fn error(
        code: Code,
        file: &str,
        pos: Pos,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: code.severity(),
            code,
            file: file.to_string(),
            pos,
            message: message.into(),
            hint: hint.into(),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {sev}[{}]: {}",
            self.file,
            self.pos.line,
            self.pos.col,
            self.code.as_str(),
            self.message
        )?;
        if !self.hint.is_empty() {
            write!(f, "\n  hint: {}", self.hint)?;
        }
        Ok(())
    }
}

/// The closest candidate to `word` by edit distance, when it is close enough to be a likely typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(row[j]).min(row[j + 1])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// A hint that names the likely intended word, or lists the choices.
pub fn suggest(word: &str, candidates: &[&str]) -> String {
    match closest(word, candidates.iter().copied()) {
        Some(c) => format!("did you mean `{c}`?"),
        None if candidates.len() <= 16 => format!("expected one of: {}", candidates.join(", ")),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typo_finds_the_key() {
        assert_eq!(
            closest("trasitions", ["states", "transitions", "on_enter"]),
            Some("transitions")
        );
        assert_eq!(closest("zzzzzz", ["states", "transitions"]), None);
    }
}
