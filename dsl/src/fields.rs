//! Reading a mapping of the positioned tree into its fields, for every document the crate reads
//! (pathways and fragments, intake rules): duplicate, non-text and unknown keys, and required keys
//! missing or empty, each reported once, located, under the codes of the document's family.

use std::collections::HashMap;

use crate::diag::{Code, Diagnostic};
use crate::yaml::{Node, Value};

/// A mapping's keys, each with its key node and value node.
pub(crate) type Fields<'n> = HashMap<&'n str, (&'n Node, &'n Node)>;

/// The codes a family of documents reports its mapping problems under.
pub(crate) struct KeyCodes {
    pub wrong_type: Code,
    pub unknown: Code,
    pub duplicate: Code,
    pub missing: Code,
}

/// Pathways and fragments.
pub(crate) const PATHWAY: KeyCodes = KeyCodes {
    wrong_type: Code::WrongType,
    unknown: Code::UnknownKey,
    duplicate: Code::DuplicateKey,
    missing: Code::MissingKey,
};

/// Intake rule files.
pub(crate) const INTAKE: KeyCodes = KeyCodes {
    wrong_type: Code::IntakeWrongType,
    unknown: Code::IntakeUnknownKey,
    duplicate: Code::IntakeDuplicate,
    missing: Code::IntakeMissingKey,
};

/// Whether `s` is an id as every document writes one: a lower-case letter, then lower-case
/// letters, digits and `_`, at most 64 in all.
pub(crate) fn is_ident(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 64
}

/// The hint for an id that is not one.
pub(crate) const IDENT_HINT: &str =
    "ids start with a lower-case letter and use only a-z, 0-9 and _";

/// Where diagnostics go: the file they name and the list they join.
pub(crate) struct Sink<'a> {
    pub file: &'a str,
    pub diags: &'a mut Vec<Diagnostic>,
    pub codes: &'a KeyCodes,
}

impl Sink<'_> {
    fn err(&mut self, code: Code, pos: crate::Pos, message: String, hint: String) {
        self.diags
            .push(Diagnostic::error(code, self.file, pos, message, hint));
    }

    /// Reads a mapping, reporting duplicate, non-text and unknown keys.
    pub(crate) fn fields<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
        allowed: &[&str],
    ) -> Option<Fields<'n>> {
        let Value::Map(entries) = &node.value else {
            self.err(
                self.codes.wrong_type,
                node.pos,
                format!("{what} must be a mapping, found {}", node.kind_name()),
                "write it as `key: value` lines".into(),
            );
            return None;
        };
        let mut out: Fields<'n> = HashMap::new();
        for (k, v) in entries {
            let Some(key) = k.as_str() else {
                self.err(
                    self.codes.wrong_type,
                    k.pos,
                    format!("keys in {what} must be text"),
                    String::new(),
                );
                continue;
            };
            if !allowed.contains(&key) {
                let hint = match crate::diag::closest(key, allowed.iter().copied()) {
                    Some(c) => format!("did you mean `{c}`? allowed here: {}", allowed.join(", ")),
                    // `{ en: a, b }` reads `b` as a second key with no value.
                    None if matches!(v.value, Value::Null) && k.pos.line == node.pos.line => {
                        "inside `{ … }` a comma starts a new key: quote text that contains commas, e.g. en: \"a, b\"".to_string()
                    }
                    None => format!("allowed here: {}", allowed.join(", ")),
                };
                self.err(
                    self.codes.unknown,
                    k.pos,
                    format!("unknown key `{key}` in {what}"),
                    hint,
                );
                continue;
            }
            if let Some((first, _)) = out.get(key) {
                let line = first.pos.line;
                self.err(
                    self.codes.duplicate,
                    k.pos,
                    format!("key `{key}` appears twice in {what}"),
                    format!("the first is on line {line}; keep one"),
                );
                continue;
            }
            out.insert(key, (k, v));
        }
        Some(out)
    }

    /// The value of a required key, reporting it missing or empty.
    pub(crate) fn req<'n>(
        &mut self,
        f: &Fields<'n>,
        key: &str,
        parent: &Node,
        what: &str,
    ) -> Option<&'n Node> {
        match f.get(key) {
            Some((_, v)) if !matches!(v.value, Value::Null) => Some(v),
            Some((k, _)) => {
                self.err(
                    self.codes.missing,
                    k.pos,
                    format!("`{key}` in {what} has no value"),
                    String::new(),
                );
                None
            }
            None => {
                self.err(
                    self.codes.missing,
                    parent.pos,
                    format!("{what} is missing `{key}`"),
                    format!("add `{key}:`"),
                );
                None
            }
        }
    }
}
