//! Reading a FHIR resource field by field. Resources arrive as JSON values and are read through
//! [`Node`], which knows its FHIRPath location, so every refusal names the element at fault
//! (`Observation.component[1].valueQuantity.unit`) and no shape of input can panic or reach the
//! store unchecked.

use jiff::Timestamp;
use serde_json::{Map, Value};

use super::outcome::Outcome;

/// The longest string carepath accepts in any element it reads.
pub(crate) const MAX_STRING: usize = 1_024;
/// The most entries of any repeating element carepath reads.
pub(crate) const MAX_REPEATS: usize = 200;

/// A JSON value and where it is in the resource.
#[derive(Clone)]
pub(crate) struct Node<'a> {
    pub(crate) v: &'a Value,
    pub(crate) path: String,
}

impl<'a> Node<'a> {
    /// The resource itself, which must be an object of `resource_type` with only `allowed`
    /// elements (besides the ones every resource may carry).
    pub(crate) fn resource(
        v: &'a Value,
        resource_type: &str,
        allowed: &[&str],
    ) -> Result<Node<'a>, Outcome> {
        let node = Node {
            v,
            path: resource_type.to_string(),
        };
        let obj = node.object()?;
        match obj.get("resourceType").and_then(Value::as_str) {
            Some(t) if t == resource_type => {}
            Some(t) => {
                return Err(Outcome::invalid(
                    &format!("{resource_type}.resourceType"),
                    format!("expected a {resource_type}, got `{}`", clip(t)),
                ));
            }
            None => {
                return Err(Outcome::invalid(
                    &format!("{resource_type}.resourceType"),
                    format!("resourceType must be \"{resource_type}\""),
                ));
            }
        }
        const COMMON: [&str; 6] = [
            "resourceType",
            "id",
            "meta",
            "text",
            "language",
            "extension",
        ];
        for key in obj.keys() {
            if key == "modifierExtension" {
                return Err(Outcome::not_supported(
                    &format!("{resource_type}.modifierExtension"),
                    "carepath understands no modifier extension, so it cannot accept one",
                ));
            }
            if key == "implicitRules" {
                return Err(Outcome::not_supported(
                    &format!("{resource_type}.implicitRules"),
                    "resources with implicit rules are not accepted",
                ));
            }
            if !COMMON.contains(&key.as_str()) && !allowed.contains(&key.as_str()) {
                return Err(Outcome::invalid(
                    &format!("{resource_type}.{}", clip(key)),
                    format!(
                        "carepath does not accept the element `{}` in a {resource_type}; it accepts {}",
                        clip(key),
                        allowed.join(", ")
                    ),
                ));
            }
        }
        if let Some(id) = node.get("id") {
            id.id()?;
        }
        if let Some(meta) = node.get("meta") {
            meta.object()?;
        }
        if let Some(ext) = node.get("extension") {
            ext.array()?;
        }
        Ok(node)
    }

    /// The element `key`, when present and not null.
    pub(crate) fn get(&self, key: &str) -> Option<Node<'a>> {
        match self.v.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(Node {
                v,
                path: format!("{}.{key}", self.path),
            }),
        }
    }

    /// The element `key`, which must be present.
    pub(crate) fn req(&self, key: &str) -> Result<Node<'a>, Outcome> {
        self.get(key).ok_or_else(|| {
            let path = format!("{}.{key}", self.path);
            let mut o = Outcome::invalid(&path, format!("{path} is required"));
            o.code = "required";
            o
        })
    }

    pub(crate) fn object(&self) -> Result<&'a Map<String, Value>, Outcome> {
        self.v
            .as_object()
            .ok_or_else(|| Outcome::invalid(&self.path, format!("{} must be an object", self.path)))
    }

    /// The entries of an array (a single object is refused: FHIR JSON writes repeats as arrays).
    pub(crate) fn array(&self) -> Result<Vec<Node<'a>>, Outcome> {
        let items = self.v.as_array().ok_or_else(|| {
            Outcome::invalid(&self.path, format!("{} must be an array", self.path))
        })?;
        if items.len() > MAX_REPEATS {
            return Err(Outcome::invalid(
                &self.path,
                format!("{} has more than {MAX_REPEATS} entries", self.path),
            ));
        }
        Ok(items
            .iter()
            .enumerate()
            .map(|(i, v)| Node {
                v,
                path: format!("{}[{i}]", self.path),
            })
            .collect())
    }

    /// The entries of an optional array element (none when absent).
    pub(crate) fn list(&self, key: &str) -> Result<Vec<Node<'a>>, Outcome> {
        self.get(key).map_or(Ok(Vec::new()), |n| n.array())
    }

    /// A non-empty string of at most [`MAX_STRING`] characters.
    pub(crate) fn str(&self) -> Result<&'a str, Outcome> {
        let s = self.v.as_str().ok_or_else(|| {
            Outcome::invalid(&self.path, format!("{} must be a string", self.path))
        })?;
        if s.trim().is_empty() {
            return Err(Outcome::invalid(
                &self.path,
                format!("{} is empty", self.path),
            ));
        }
        if s.chars().count() > MAX_STRING {
            return Err(Outcome::invalid(
                &self.path,
                format!("{} is longer than {MAX_STRING} characters", self.path),
            ));
        }
        if s.chars()
            .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
        {
            return Err(Outcome::invalid(
                &self.path,
                format!("{} holds control characters", self.path),
            ));
        }
        Ok(s)
    }

    /// An optional string element.
    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<&'a str>, Outcome> {
        self.get(key).map(|n| n.str()).transpose()
    }

    /// A FHIR `id`: 1–64 letters, digits, `-` and `.`.
    pub(crate) fn id(&self) -> Result<&'a str, Outcome> {
        let s = self.str()?;
        if s.len() > 64
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(Outcome::invalid(
                &self.path,
                format!(
                    "{} is not a FHIR id (1–64 letters, digits, - and .)",
                    self.path
                ),
            ));
        }
        Ok(s)
    }

    /// A code from `allowed`.
    pub(crate) fn code(&self, allowed: &[&'static str]) -> Result<&'static str, Outcome> {
        let s = self.str()?;
        allowed.iter().find(|a| **a == s).copied().ok_or_else(|| {
            let mut o = Outcome::invalid(
                &self.path,
                format!(
                    "{} `{}` is not one of {}",
                    self.path,
                    clip(s),
                    allowed.join(", ")
                ),
            );
            o.code = "value";
            o
        })
    }

    pub(crate) fn number(&self) -> Result<f64, Outcome> {
        self.v
            .as_f64()
            .filter(|v| v.is_finite())
            .ok_or_else(|| Outcome::invalid(&self.path, format!("{} must be a number", self.path)))
    }

    pub(crate) fn integer(&self) -> Result<i64, Outcome> {
        self.v.as_i64().ok_or_else(|| {
            Outcome::invalid(&self.path, format!("{} must be an integer", self.path))
        })
    }

    /// A FHIR `dateTime` or `instant` with a time and a zone offset (a bare date names no
    /// instant and is refused).
    pub(crate) fn instant(&self) -> Result<Timestamp, Outcome> {
        let s = self.str()?;
        s.parse::<Timestamp>().map_err(|_| {
            Outcome::invalid(
                &self.path,
                format!(
                    "{} `{}` is not a date and time with a zone offset such as 2026-03-01T08:30:00+08:00",
                    self.path,
                    clip(s)
                ),
            )
        })
    }

    /// The codings of a CodeableConcept: (system, code) pairs, each checked.
    pub(crate) fn codings(&self) -> Result<Vec<Coding<'a>>, Outcome> {
        self.object()?;
        let mut out = Vec::new();
        for c in self.list("coding")? {
            c.object()?;
            let system = c.opt_str("system")?;
            if let Some(code) = c.get("code") {
                out.push((system, code.str()?, code.path.clone()));
            }
        }
        Ok(out)
    }
}

/// A coding as read: its system, its code, and where the code is.
pub(crate) type Coding<'a> = (Option<&'a str>, &'a str, String);

/// At most 64 characters of untrusted text, for a diagnostic.
pub(crate) fn clip(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}
