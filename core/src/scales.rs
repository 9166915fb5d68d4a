//! Assessment scales (量表) as data: one `pathways/scales/<id>.yaml` per scale.
//!
//! A scale file lists its items with their options (or a numeric `min`/`max`), how the answers are
//! scored, the score bands and the critical rules. The engine scores a patient's answers here and
//! stores the result as a [`ScaleResult`], which guards read through `score`, `band` and `item`.
//!
//! Meaning of the numbers, for authors:
//! - An answer is the raw `value` of the chosen option as printed on the questionnaire (for EPDS,
//!   the position of the box, top box 0), or the number itself for numeric items.
//! - An item listed in `scoring.reverse` is scored `reverse_max - value`; other items are scored
//!   as answered. The per-item values of a result (what `item(scale, n)` returns, 1-based) are these
//!   scored values, before any weight.
//! - `sum`: total of scored values. `weighted_sum`: each scored value times its weight (items
//!   without a weight count once). `mean`: the total divided by the number of items. `single`: the
//!   one item's scored value. `percent`: the total as a percentage of the possible range,
//!   `(total - lowest) * 100 / (highest - lowest)`; for WHO-5 (0–25) that is the raw sum × 4.
//! - Bands are ascending lower bounds: a score is in the last band whose `from` it reaches.
//! - A critical rule fires when its item's scored value is above `above`, whatever the total. When
//!   an answer is recorded, each rule that fires raises an urgent task at once for the rule's
//!   `role`, due after `due`, escalated to `escalate_to` after `escalate_after` when given.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::facts::ScaleResult;

/// Largest magnitude an option value, bound or `reverse_max` may have, so that no arithmetic on
/// answers can overflow and every total is exact in an f64.
const VALUE_LIMIT: i64 = 1_000_000;
/// Tolerance when comparing a declared score range with the one the items give.
const EPS: f64 = 1e-9;

/// A text in Chinese and English.
/// Bilingual text: the model's own type, so scale and pathway texts are one kind of value.
pub use carepath_dsl::Text;

/// One scale definition, as written in `pathways/scales/<id>.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleDef {
    pub scale: String,
    pub title: Text,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<Text>,
    /// Where the instrument and its scoring rules are published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Copyright and licence terms of the instrument.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licence: Option<String>,
    pub items: Vec<Item>,
    pub scoring: Scoring,
    pub bands: Vec<Band>,
    #[serde(default)]
    pub critical: Vec<Critical>,
}

/// A question: either a list of options or a numeric range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    pub id: String,
    pub text: Text,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<AnswerOption>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
    /// Labels of the two ends of a numeric item (e.g. "no pain" / "worst pain imaginable").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchors: Option<Anchors>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerOption {
    pub value: i64,
    pub text: Text,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anchors {
    pub low: Text,
    pub high: Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Sum,
    WeightedSum,
    Mean,
    Single,
    Percent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scoring {
    pub method: Method,
    /// The lowest and highest score the scale can give; checked against the items at load.
    pub min: f64,
    pub max: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reverse: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse_max: Option<i64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub weights: BTreeMap<String, f64>,
}

/// A score band: scores from `from` up to the next band's `from`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Band {
    pub from: f64,
    pub id: String,
    pub text: Text,
}

/// An answer that needs action whatever the total, e.g. thoughts of self-harm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Critical {
    pub item: String,
    pub above: i64,
    /// What the engine does when the rule fires; one of [`CRITICAL_ACTIONS`].
    pub action: String,
    /// The staff role whose board receives the urgent task.
    pub role: String,
    /// How soon the task is due, as a pathway duration (`30m`, `1h`).
    pub due: String,
    /// Escalation of the task when it is overdue: both or neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_to: Option<String>,
    pub text: Text,
}

/// The actions a critical rule may name.
pub const CRITICAL_ACTIONS: &[&str] = &["urgent_safety_task"];

impl Critical {
    /// The task's due delay; validated at load, so a stored definition always has one.
    pub fn due(&self) -> carepath_dsl::Duration {
        carepath_dsl::Duration::parse(&self.due).unwrap_or(carepath_dsl::Duration::hours(1))
    }

    /// The task's SLA, when the rule escalates.
    pub fn sla(&self) -> Option<carepath_dsl::Sla> {
        let after = carepath_dsl::Duration::parse(self.escalate_after.as_deref()?).ok()?;
        Some(carepath_dsl::Sla {
            remind_before: None,
            escalate_after: Some(after),
            escalate_to: Some(self.escalate_to.clone()?),
        })
    }
}

/// The result of scoring one set of answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub scale: String,
    pub score: f64,
    pub band: String,
    pub band_text: Text,
    /// Scored value of each item, in item order (`item(scale, n)` reads `items[n - 1]`).
    pub items: Vec<i64>,
    pub critical: Vec<CriticalHit>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CriticalHit {
    pub item: String,
    /// 1-based item number.
    pub number: usize,
    pub value: i64,
    pub action: String,
    pub text: Text,
    /// The rule that fired.
    #[serde(skip)]
    pub rule: Option<Critical>,
}

impl Scored {
    /// The result as the step's facts hold it.
    pub fn into_result(self, at: Timestamp) -> ScaleResult {
        ScaleResult {
            scale: self.scale,
            score: self.score,
            band: self.band,
            items: self.items,
            at,
        }
    }
}

/// Why a set of answers was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("no scale `{scale}`")]
    UnknownScale { scale: String },
    #[error("scale `{scale}` has no item `{item}`")]
    UnknownItem { scale: String, item: String },
    #[error("scale `{scale}`: the answers are incomplete, missing {}", .items.join(", "))]
    Missing { scale: String, items: Vec<String> },
    #[error(
        "scale `{scale}`: item `{item}` was answered {value}, which is not allowed; allowed: {allowed}"
    )]
    OutOfRange {
        scale: String,
        item: String,
        value: i64,
        allowed: String,
    },
}

/// One problem in a scale file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub item: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.item {
            Some(item) => write!(f, "{}: item `{item}`: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Every problem found while loading scale files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

struct Problems<'a> {
    file: &'a str,
    list: Vec<Problem>,
}

impl Problems<'_> {
    fn file(&mut self, message: impl Into<String>) {
        self.list.push(Problem {
            file: self.file.to_string(),
            item: None,
            message: message.into(),
        });
    }

    fn item(&mut self, item: &str, message: impl Into<String>) {
        self.list.push(Problem {
            file: self.file.to_string(),
            item: Some(item.to_string()),
            message: message.into(),
        });
    }

    fn at(&mut self, item: Option<&str>, message: impl Into<String>) {
        match item {
            Some(i) => self.item(i, message),
            None => self.file(message),
        }
    }

    fn text(&mut self, item: Option<&str>, what: &str, t: &Text) {
        if t.zh.trim().is_empty() {
            self.at(item, format!("{what} has an empty `zh` text"));
        }
        if t.en.trim().is_empty() {
            self.at(item, format!("{what} has an empty `en` text"));
        }
    }

    fn limit(&mut self, item: Option<&str>, what: &str, v: i64) {
        if v.abs() > VALUE_LIMIT {
            self.at(
                item,
                format!("{what} {v} is outside -{VALUE_LIMIT}..{VALUE_LIMIT}"),
            );
        }
    }
}

fn is_ident(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl Item {
    /// Whether `v` is an allowed answer.
    pub fn allows(&self, v: i64) -> bool {
        if self.options.is_empty() {
            matches!((self.min, self.max), (Some(lo), Some(hi)) if lo <= v && v <= hi)
        } else {
            self.options.iter().any(|o| o.value == v)
        }
    }

    /// The allowed answers, in words.
    pub fn allowed(&self) -> String {
        if self.options.is_empty() {
            match (self.min, self.max) {
                (Some(lo), Some(hi)) => format!("a whole number from {lo} to {hi}"),
                _ => "nothing (the item has neither options nor a range)".to_string(),
            }
        } else {
            let values: Vec<String> = self.options.iter().map(|o| o.value.to_string()).collect();
            format!("one of {}", values.join(", "))
        }
    }

    /// Lowest and highest raw answer, if the item is well formed.
    fn raw_range(&self) -> Option<(i64, i64)> {
        if self.options.is_empty() {
            match (self.min, self.max) {
                (Some(lo), Some(hi)) if lo <= hi => Some((lo, hi)),
                _ => None,
            }
        } else {
            let lo = self.options.iter().map(|o| o.value).min()?;
            let hi = self.options.iter().map(|o| o.value).max()?;
            Some((lo, hi))
        }
    }
}

impl ScaleDef {
    /// Reads, checks and returns one scale from YAML text; `file` names it in problems.
    pub fn from_yaml(file: &str, bytes: &[u8]) -> Result<ScaleDef, LoadError> {
        let problem = |item: Option<String>, message: String| LoadError {
            problems: vec![Problem {
                file: file.to_string(),
                item,
                message,
            }],
        };
        let root = carepath_dsl::yaml::parse(file, bytes, carepath_dsl::yaml::Budget::default())
            .map_err(|diags| LoadError {
                problems: diags
                    .iter()
                    .map(|d| Problem {
                        file: file.to_string(),
                        item: None,
                        message: format!(
                            "line {}, column {}: {}",
                            d.pos.line, d.pos.col, d.message
                        ),
                    })
                    .collect(),
            })?;
        let json = carepath_dsl::yaml::to_json(&root);
        let def: ScaleDef = match serde_json::from_value(json.clone()) {
            Ok(def) => def,
            Err(e) => {
                // Name the item when one item is at fault: serde's message alone does not say where.
                let items = json.get("items").and_then(|v| v.as_array());
                for (n, raw) in items.into_iter().flatten().enumerate() {
                    if let Err(ie) = serde_json::from_value::<Item>(raw.clone()) {
                        let id = raw
                            .get("id")
                            .and_then(|v| v.as_str())
                            .map(str::to_string)
                            .unwrap_or_else(|| format!("#{}", n + 1));
                        return Err(problem(Some(id), ie.to_string()));
                    }
                }
                return Err(problem(None, e.to_string()));
            }
        };
        let problems = def.validate(file);
        if problems.is_empty() {
            Ok(def)
        } else {
            Err(LoadError { problems })
        }
    }

    /// Reads and checks one scale file, whose name must be `<scale id>.yaml`.
    pub fn load_file(path: &Path) -> Result<ScaleDef, LoadError> {
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| LoadError {
            problems: vec![Problem {
                file: file.clone(),
                item: None,
                message: e.to_string(),
            }],
        })?;
        let def = ScaleDef::from_yaml(&file, &bytes)?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if stem != def.scale {
            return Err(LoadError {
                problems: vec![Problem {
                    file,
                    item: None,
                    message: format!(
                        "the file defines scale `{}` but is named `{stem}`; name it `{}.yaml`",
                        def.scale, def.scale
                    ),
                }],
            });
        }
        Ok(def)
    }

    /// Every problem in the definition; empty when it can be used.
    pub fn validate(&self, file: &str) -> Vec<Problem> {
        let mut p = Problems {
            file,
            list: Vec::new(),
        };
        if !is_ident(&self.scale) {
            p.file(format!(
                "scale id `{}` must start with a lower-case letter and hold only lower-case letters, digits and `_`",
                self.scale
            ));
        }
        p.text(None, "the title", &self.title);
        if let Some(t) = &self.instructions {
            p.text(None, "the instructions", t);
        }
        self.validate_items(&mut p);
        self.validate_scoring(&mut p);
        let sound = p.list.is_empty();
        if sound {
            // Only a sound definition has a computable range.
            if let Some((lo, hi)) = self.score_range() {
                let s = &self.scoring;
                if (lo - s.min).abs() > EPS || (hi - s.max).abs() > EPS {
                    p.file(format!(
                        "scoring declares a score range of {}..{} but the items give {lo}..{hi}",
                        s.min, s.max
                    ));
                }
            }
        }
        self.validate_bands(&mut p);
        self.validate_critical(&mut p, sound);
        p.list
    }

    fn validate_items(&self, p: &mut Problems<'_>) {
        if self.items.is_empty() {
            p.file("the scale has no items");
        }
        let mut seen = BTreeSet::new();
        for (n, item) in self.items.iter().enumerate() {
            let label = if item.id.is_empty() {
                format!("#{}", n + 1)
            } else {
                item.id.clone()
            };
            let id = Some(label.as_str());
            if !is_ident(&item.id) {
                p.at(
                    id,
                    "item id must start with a lower-case letter and hold only lower-case letters, digits and `_`",
                );
            }
            if !seen.insert(item.id.as_str()) {
                p.at(
                    id,
                    format!("item id is used twice (again as item {})", n + 1),
                );
            }
            p.text(id, "the item", &item.text);
            match (item.options.is_empty(), item.min, item.max) {
                (false, None, None) => {
                    let mut values = BTreeSet::new();
                    for (k, o) in item.options.iter().enumerate() {
                        p.limit(id, "option value", o.value);
                        if !values.insert(o.value) {
                            p.at(id, format!("option value {} is used twice", o.value));
                        }
                        p.text(id, &format!("option {}", k + 1), &o.text);
                    }
                }
                (true, Some(lo), Some(hi)) => {
                    p.limit(id, "min", lo);
                    p.limit(id, "max", hi);
                    if lo >= hi {
                        p.at(id, format!("min {lo} must be below max {hi}"));
                    }
                }
                (true, _, _) => p.at(id, "needs either `options` or both `min` and `max`"),
                (false, _, _) => p.at(
                    id,
                    "has both `options` and `min`/`max`; give one or the other",
                ),
            }
            if let Some(a) = &item.anchors {
                if !item.options.is_empty() {
                    p.at(
                        id,
                        "`anchors` label numeric items; options carry their own text",
                    );
                }
                p.text(id, "the low anchor", &a.low);
                p.text(id, "the high anchor", &a.high);
            }
        }
    }

    fn item_ids(&self) -> String {
        let ids: Vec<&str> = self.items.iter().map(|i| i.id.as_str()).collect();
        ids.join(", ")
    }

    fn validate_scoring(&self, p: &mut Problems<'_>) {
        let s = &self.scoring;
        let mut seen = BTreeSet::new();
        for r in &s.reverse {
            if self.item_number(r).is_none() {
                p.item(
                    r,
                    format!(
                        "scoring.reverse names an item the scale does not have (items: {})",
                        self.item_ids()
                    ),
                );
            }
            if !seen.insert(r) {
                p.item(r, "scoring.reverse names the item twice");
            }
        }
        match (s.reverse.is_empty(), s.reverse_max) {
            (false, None) => {
                p.file("scoring.reverse needs `reverse_max` (reversed = reverse_max - answer)")
            }
            (true, Some(_)) => p.file("scoring.reverse_max is given but no item is reversed"),
            (_, Some(m)) => p.limit(None, "scoring.reverse_max", m),
            (true, None) => {}
        }
        if s.method != Method::WeightedSum && !s.weights.is_empty() {
            p.file("scoring.weights only apply to `method: weighted_sum`");
        }
        if s.method == Method::WeightedSum && s.weights.is_empty() {
            p.file("`method: weighted_sum` needs `weights` (without them use `sum`)");
        }
        for (item, w) in &s.weights {
            if self.item_number(item).is_none() {
                p.item(
                    item,
                    format!(
                        "scoring.weights names an item the scale does not have (items: {})",
                        self.item_ids()
                    ),
                );
            }
            if !w.is_finite() || w.abs() > VALUE_LIMIT as f64 {
                p.item(item, format!("weight {w} must be a finite number"));
            }
        }
        if s.method == Method::Single && self.items.len() != 1 {
            p.file(format!(
                "`method: single` needs exactly one item, the scale has {}",
                self.items.len()
            ));
        }
        if !s.min.is_finite() || !s.max.is_finite() || s.min >= s.max {
            p.file(format!(
                "scoring min {} must be a number below max {}",
                s.min, s.max
            ));
        }
        if s.method == Method::Percent
            && let Some((lo, hi)) = self.raw_total_range()
            && lo >= hi
        {
            p.file("`method: percent` needs items whose total can vary");
        }
    }

    fn validate_bands(&self, p: &mut Problems<'_>) {
        let Some(first) = self.bands.first() else {
            p.file("the scale has no bands");
            return;
        };
        if (first.from - self.scoring.min).abs() > EPS {
            p.file(format!(
                "the first band `{}` starts at {} but the lowest score is {}: every score needs a band",
                first.id, first.from, self.scoring.min
            ));
        }
        let mut ids = BTreeSet::new();
        for (k, b) in self.bands.iter().enumerate() {
            if !is_ident(&b.id) {
                p.file(format!(
                    "band id `{}` must start with a lower-case letter and hold only lower-case letters, digits and `_`",
                    b.id
                ));
            }
            if !ids.insert(b.id.as_str()) {
                p.file(format!("band id `{}` is used twice", b.id));
            }
            p.text(None, &format!("band `{}`", b.id), &b.text);
            if !b.from.is_finite() {
                p.file(format!(
                    "band `{}` starts at {}, not a number",
                    b.id, b.from
                ));
            }
            if k > 0 {
                let prev = &self.bands[k - 1];
                if b.from.partial_cmp(&prev.from) != Some(std::cmp::Ordering::Greater) {
                    p.file(format!(
                        "bands must ascend: band `{}` starts at {}, not above band `{}` at {}",
                        b.id, b.from, prev.id, prev.from
                    ));
                }
            }
            if b.from > self.scoring.max {
                p.file(format!(
                    "band `{}` starts at {}, above the highest score {}: no score can reach it",
                    b.id, b.from, self.scoring.max
                ));
            }
        }
    }

    fn validate_critical(&self, p: &mut Problems<'_>, sound: bool) {
        for c in &self.critical {
            match self.item_number(&c.item) {
                None => p.item(
                    &c.item,
                    format!(
                        "a critical rule names an item the scale does not have (items: {})",
                        self.item_ids()
                    ),
                ),
                Some(n) if sound => {
                    if let Some((_, hi)) = self.scored_range(n - 1)
                        && c.above >= hi
                    {
                        p.item(
                            &c.item,
                            format!(
                                "the critical rule fires above {} but the item's highest scored value is {hi}: it can never fire",
                                c.above
                            ),
                        );
                    }
                }
                Some(_) => {}
            }
            if !is_ident(&c.action) {
                p.item(
                    &c.item,
                    format!(
                        "critical action `{}` must be an identifier such as `urgent_safety_task`",
                        c.action
                    ),
                );
            } else if !CRITICAL_ACTIONS.contains(&c.action.as_str()) {
                p.item(
                    &c.item,
                    format!(
                        "critical action `{}` is not one the engine performs ({})",
                        c.action,
                        CRITICAL_ACTIONS.join(", ")
                    ),
                );
            }
            let roles = carepath_dsl::catalog::ROLES;
            if !roles.contains(&c.role.as_str()) {
                p.item(
                    &c.item,
                    format!(
                        "critical rule role `{}` is not a staff role ({})",
                        c.role,
                        roles.join(", ")
                    ),
                );
            }
            if let Err(e) = carepath_dsl::Duration::parse(&c.due) {
                p.item(&c.item, format!("critical rule `due`: {e}"));
            }
            match (&c.escalate_after, &c.escalate_to) {
                (Some(after), Some(to)) => {
                    if let Err(e) = carepath_dsl::Duration::parse(after) {
                        p.item(&c.item, format!("critical rule `escalate_after`: {e}"));
                    }
                    if !roles.contains(&to.as_str()) {
                        p.item(
                            &c.item,
                            format!("critical rule `escalate_to` `{to}` is not a staff role"),
                        );
                    }
                }
                (None, None) => {}
                _ => p.item(
                    &c.item,
                    "a critical rule needs both `escalate_after` and `escalate_to`, or neither",
                ),
            }
            p.text(Some(&c.item), "the critical rule", &c.text);
        }
    }

    /// 1-based number of the item with this id.
    pub fn item_number(&self, id: &str) -> Option<usize> {
        self.items.iter().position(|i| i.id == id).map(|k| k + 1)
    }

    fn is_reversed(&self, id: &str) -> bool {
        self.scoring.reverse.iter().any(|r| r == id)
    }

    /// The scored value of an answer to item `k` (0-based).
    fn scored(&self, k: usize, raw: i64) -> i64 {
        match (
            self.is_reversed(&self.items[k].id),
            self.scoring.reverse_max,
        ) {
            (true, Some(m)) => m.saturating_sub(raw),
            _ => raw,
        }
    }

    /// Lowest and highest scored value of item `k` (0-based).
    fn scored_range(&self, k: usize) -> Option<(i64, i64)> {
        let item = self.items.get(k)?;
        let (lo, hi) = item.raw_range()?;
        let (a, b) = (self.scored(k, lo), self.scored(k, hi));
        Some((a.min(b), a.max(b)))
    }

    fn weight(&self, id: &str) -> f64 {
        self.scoring.weights.get(id).copied().unwrap_or(1.0)
    }

    /// Lowest and highest unweighted total of the scored values.
    fn raw_total_range(&self) -> Option<(i64, i64)> {
        (0..self.items.len()).try_fold((0i64, 0i64), |(lo, hi), k| {
            let (a, b) = self.scored_range(k)?;
            Some((lo.saturating_add(a), hi.saturating_add(b)))
        })
    }

    /// Lowest and highest score the items allow, by the scoring method.
    pub fn score_range(&self) -> Option<(f64, f64)> {
        let n = self.items.len();
        match self.scoring.method {
            Method::Sum => self
                .raw_total_range()
                .map(|(lo, hi)| (lo as f64, hi as f64)),
            Method::Mean => self
                .raw_total_range()
                .filter(|_| n > 0)
                .map(|(lo, hi)| (lo as f64 / n as f64, hi as f64 / n as f64)),
            Method::Single => self.scored_range(0).map(|(lo, hi)| (lo as f64, hi as f64)),
            Method::Percent => Some((0.0, 100.0)),
            Method::WeightedSum => (0..n).try_fold((0.0, 0.0), |(lo, hi), k| {
                let (a, b) = self.scored_range(k)?;
                let w = self.weight(&self.items[k].id);
                let (a, b) = (w * a as f64, w * b as f64);
                Some((lo + a.min(b), hi + a.max(b)))
            }),
        }
    }

    /// The band a score falls in.
    pub fn band_for(&self, score: f64) -> Option<&Band> {
        self.bands
            .iter()
            .rev()
            .find(|b| score >= b.from)
            .or(self.bands.first())
    }

    /// Scores a complete set of answers, keyed by item id.
    pub fn score(&self, answers: &BTreeMap<String, i64>) -> Result<Scored, AnswerError> {
        if let Some(unknown) = answers.keys().find(|k| self.item_number(k).is_none()) {
            return Err(AnswerError::UnknownItem {
                scale: self.scale.clone(),
                item: unknown.clone(),
            });
        }
        let missing: Vec<String> = self
            .items
            .iter()
            .filter(|i| !answers.contains_key(&i.id))
            .map(|i| i.id.clone())
            .collect();
        if !missing.is_empty() {
            return Err(AnswerError::Missing {
                scale: self.scale.clone(),
                items: missing,
            });
        }
        let mut values = Vec::with_capacity(self.items.len());
        for (k, item) in self.items.iter().enumerate() {
            let raw = answers[&item.id];
            if !item.allows(raw) {
                return Err(AnswerError::OutOfRange {
                    scale: self.scale.clone(),
                    item: item.id.clone(),
                    value: raw,
                    allowed: item.allowed(),
                });
            }
            values.push(self.scored(k, raw));
        }
        let total = values.iter().fold(0i64, |a, v| a.saturating_add(*v));
        let score = match self.scoring.method {
            Method::Sum => total as f64,
            Method::Mean => total as f64 / values.len().max(1) as f64,
            Method::Single => values.first().copied().unwrap_or(0) as f64,
            Method::WeightedSum => self
                .items
                .iter()
                .zip(&values)
                .map(|(item, v)| self.weight(&item.id) * *v as f64)
                .sum(),
            Method::Percent => match self.raw_total_range() {
                Some((lo, hi)) if hi > lo => (total - lo) as f64 * 100.0 / (hi - lo) as f64,
                _ => 0.0,
            },
        };
        let (band, band_text) = match self.band_for(score) {
            Some(b) => (b.id.clone(), b.text.clone()),
            None => (
                String::new(),
                Text {
                    zh: String::new(),
                    en: String::new(),
                },
            ),
        };
        let critical = self
            .critical
            .iter()
            .filter_map(|c| {
                let n = self.item_number(&c.item)?;
                let value = values[n - 1];
                (value > c.above).then(|| CriticalHit {
                    item: c.item.clone(),
                    number: n,
                    value,
                    action: c.action.clone(),
                    text: c.text.clone(),
                    rule: Some(c.clone()),
                })
            })
            .collect();
        Ok(Scored {
            scale: self.scale.clone(),
            score,
            band,
            band_text,
            items: values,
            critical,
        })
    }
}

impl ScaleDef {
    /// The answers whose scored values, in item order, are `items` (what `item(scale, n)` reads):
    /// a reverse-scored item's answer is `reverse_max - value`.
    pub fn answers_from_items(&self, items: &[i64]) -> Result<BTreeMap<String, i64>, String> {
        if items.len() != self.items.len() {
            return Err(format!(
                "scale `{}` has {} items ({}), but {} item values were given",
                self.scale,
                self.items.len(),
                self.item_ids(),
                items.len()
            ));
        }
        let mut answers = BTreeMap::new();
        for (k, (item, scored)) in self.items.iter().zip(items).enumerate() {
            let raw = match (self.is_reversed(&item.id), self.scoring.reverse_max) {
                (true, Some(m)) => m.saturating_sub(*scored),
                _ => *scored,
            };
            if !item.allows(raw) || self.scored(k, raw) != *scored {
                let scored_values: Vec<String> = self
                    .ladder(k)
                    .iter()
                    .map(|v| self.scored(k, *v).to_string())
                    .collect();
                return Err(format!(
                    "scale `{}`: item {} (`{}`) cannot score {scored}; it scores one of {}",
                    self.scale,
                    k + 1,
                    item.id,
                    scored_values.join(", ")
                ));
            }
            answers.insert(item.id.clone(), raw);
        }
        Ok(answers)
    }

    /// A complete set of answers that scores exactly `score`, chosen the same way every time: a
    /// critical item is answered as low as the score allows (a total that needs it still raises
    /// its rule, as a real answer would), and the other items are filled from the last one
    /// backwards. An error names the nearest scores the scale can give.
    pub fn answers_for(&self, score: f64) -> Result<BTreeMap<String, i64>, String> {
        const SCALE: f64 = 1e6;
        let key = |x: f64| (x * SCALE).round() as i64;
        let n = self.items.len();
        // What item `k` answered `raw` adds to the total the score is computed from.
        let part = |k: usize, raw: i64| -> i64 {
            let v = self.scored(k, raw) as f64;
            match self.scoring.method {
                Method::WeightedSum => key(self.weight(&self.items[k].id) * v),
                Method::Single if k > 0 => 0,
                _ => key(v),
            }
        };
        let (lo, hi) = self.raw_total_range().unwrap_or((0, 0));
        let to_total = |score: f64| match self.scoring.method {
            Method::Mean => score * n as f64,
            Method::Percent => lo as f64 + score * (hi - lo) as f64 / 100.0,
            _ => score,
        };
        let to_score = |total: f64| match self.scoring.method {
            Method::Mean => total / n.max(1) as f64,
            Method::Percent if hi > lo => (total - lo as f64) * 100.0 / (hi - lo) as f64,
            Method::Percent => 0.0,
            _ => total,
        };
        // Totals reachable by the first k items, for every k.
        let mut reach: Vec<BTreeSet<i64>> = vec![BTreeSet::from([0])];
        for k in 0..n {
            let next: BTreeSet<i64> = reach[k]
                .iter()
                .flat_map(|t| self.ladder(k).into_iter().map(move |raw| t + part(k, raw)))
                .collect();
            reach.push(next);
        }
        let target = key(to_total(score));
        if !reach[n].contains(&target) {
            let score_of = |t: &i64| to_score(*t as f64 / SCALE);
            let below = reach[n].range(..target).next_back().map(score_of);
            let above = reach[n].range(target..).next().map(score_of);
            let near: Vec<String> = [below, above]
                .into_iter()
                .flatten()
                .map(|s| format!("{}", (s * 1000.0).round() / 1000.0))
                .collect();
            return Err(format!(
                "scale `{}` cannot score {score}; the nearest scores it can give are {}",
                self.scale,
                near.join(" and ")
            ));
        }
        let critical: BTreeSet<&str> = self.critical.iter().map(|c| c.item.as_str()).collect();
        let mut answers = BTreeMap::new();
        let mut left = target;
        for k in (0..n).rev() {
            let mut ladder = self.ladder(k);
            // Lowest scored value first for a critical item, highest first for the others.
            ladder.sort_by_key(|raw| self.scored(k, *raw));
            if !critical.contains(self.items[k].id.as_str()) {
                ladder.reverse();
            }
            let raw = ladder
                .into_iter()
                .find(|raw| reach[k].contains(&(left - part(k, *raw))))
                .ok_or_else(|| format!("scale `{}` cannot score {score}", self.scale))?;
            left -= part(k, raw);
            answers.insert(self.items[k].id.clone(), raw);
        }
        Ok(answers)
    }

    /// The answers item `k` (0-based) allows, lowest first.
    fn ladder(&self, k: usize) -> Vec<i64> {
        let item = &self.items[k];
        let mut values: Vec<i64> = if item.options.is_empty() {
            match (item.min, item.max) {
                (Some(lo), Some(hi)) if lo <= hi => (lo..=hi).collect(),
                _ => Vec::new(),
            }
        } else {
            item.options.iter().map(|o| o.value).collect()
        };
        values.sort_unstable();
        values.dedup();
        values
    }
}

impl CriticalHit {
    /// The urgent task this hit raises when the answers are recorded at `at`: named
    /// `critical_<scale>_<item>`, for the rule's role, due the rule's `due` after `at` in elapsed
    /// time, kept whatever state the patient moves to, until a task of the pathway that
    /// `covers_critical` the scale takes it over. The store and `carepath test` raise exactly this.
    pub fn task(&self, scale: &str, at: Timestamp) -> Option<crate::step::Produced> {
        let rule = self.rule.as_ref()?;
        Some(crate::step::Produced::Task {
            task_ref: Some(format!("critical_{scale}_{}", self.item)),
            role: rule.role.clone(),
            title: self.text.clone(),
            due_at: crate::time::add(at, rule.due(), &jiff::tz::TimeZone::UTC),
            priority: carepath_dsl::Priority::Urgent,
            sla: rule.sla(),
            keep: true,
            covers_critical: None,
        })
    }
}

/// The shipped scale files, one per scale of `carepath_dsl::catalog::SCALES`.
const BUILTIN_FILES: &[(&str, &str)] = &[
    ("phq9.yaml", include_str!("../../pathways/scales/phq9.yaml")),
    ("gad7.yaml", include_str!("../../pathways/scales/gad7.yaml")),
    ("epds.yaml", include_str!("../../pathways/scales/epds.yaml")),
    (
        "barthel.yaml",
        include_str!("../../pathways/scales/barthel.yaml"),
    ),
    ("mrs.yaml", include_str!("../../pathways/scales/mrs.yaml")),
    ("nrs.yaml", include_str!("../../pathways/scales/nrs.yaml")),
    ("who5.yaml", include_str!("../../pathways/scales/who5.yaml")),
    ("cat.yaml", include_str!("../../pathways/scales/cat.yaml")),
    (
        "qol_breast.yaml",
        include_str!("../../pathways/scales/qol_breast.yaml"),
    ),
    (
        "satisfaction.yaml",
        include_str!("../../pathways/scales/satisfaction.yaml"),
    ),
    (
        "mrc_strength.yaml",
        include_str!("../../pathways/scales/mrc_strength.yaml"),
    ),
    (
        "morisky8.yaml",
        include_str!("../../pathways/scales/morisky8.yaml"),
    ),
];

/// Every scale of a deployment, by id.
#[derive(Debug, Clone, Default)]
pub struct Scales {
    by_id: BTreeMap<String, ScaleDef>,
}

impl Scales {
    /// Loads and checks every `*.yaml` / `*.yml` file directly under `dir`; reports every problem
    /// of every file at once.
    pub fn load_dir(dir: &Path) -> Result<Scales, LoadError> {
        let io = |e: std::io::Error| LoadError {
            problems: vec![Problem {
                file: dir.display().to_string(),
                item: None,
                message: e.to_string(),
            }],
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let yaml = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            );
            if path.is_file() && yaml && !name.ends_with(".test.yaml") {
                files.push(path);
            }
        }
        files.sort();
        let mut scales = Scales::default();
        let mut problems = Vec::new();
        for path in files {
            match ScaleDef::load_file(&path) {
                Ok(def) => {
                    if scales.by_id.contains_key(&def.scale) {
                        problems.push(Problem {
                            file: path.display().to_string(),
                            item: None,
                            message: format!(
                                "scale `{}` is defined by another file too",
                                def.scale
                            ),
                        });
                    } else {
                        scales.by_id.insert(def.scale.clone(), def);
                    }
                }
                Err(e) => problems.extend(e.problems),
            }
        }
        if problems.is_empty() {
            Ok(scales)
        } else {
            Err(LoadError { problems })
        }
    }

    /// The scales shipped in `pathways/scales/`, built into the binary: the catalogue of scales a
    /// pathway may push is fixed in code, so the definitions that score them travel with it.
    pub fn builtin() -> &'static Scales {
        static BUILTIN: std::sync::OnceLock<Scales> = std::sync::OnceLock::new();
        BUILTIN.get_or_init(|| {
            let mut scales = Scales::default();
            for (file, text) in BUILTIN_FILES {
                // A test loads every shipped file, so this cannot fail in a built binary.
                match ScaleDef::from_yaml(file, text.as_bytes()) {
                    Ok(def) => {
                        scales.by_id.insert(def.scale.clone(), def);
                    }
                    Err(e) => panic!("a shipped scale does not load: {e}"),
                }
            }
            scales
        })
    }

    pub fn get(&self, id: &str) -> Option<&ScaleDef> {
        self.by_id.get(id)
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.by_id.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ScaleDef> {
        self.by_id.values()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Scores answers to the named scale.
    pub fn score(
        &self,
        scale: &str,
        answers: &BTreeMap<String, i64>,
    ) -> Result<Scored, AnswerError> {
        self.get(scale)
            .ok_or_else(|| AnswerError::UnknownScale {
                scale: scale.to_string(),
            })?
            .score(answers)
    }
}

/// A push's reminders in the order they fall due: its plain reminders (a message over the
/// patient's preferred channel with the standard template, `None`) and its chain's steps, by
/// instant, plain ones first at the same instant. The store keeps them in this order and its
/// sweep, like `carepath test`, numbers them from 1 in it.
pub fn reminder_steps(
    plain: &[Timestamp],
    chain: &[(Timestamp, carepath_dsl::ReminderBy)],
) -> Vec<(Timestamp, Option<carepath_dsl::ReminderBy>)> {
    let mut all: Vec<(Timestamp, Option<carepath_dsl::ReminderBy>)> = plain
        .iter()
        .map(|t| (*t, None))
        .chain(chain.iter().map(|(t, by)| (*t, Some(by.clone()))))
        .collect();
    all.sort_by_key(|(t, _)| *t);
    all
}

/// What a scheduler pass does with one pending push's reminders at one instant (the store's
/// sweep, and `carepath test` playing it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReminderPlan {
    /// The reminder to send now (0-based, in time order), if any is due.
    pub send: Option<usize>,
    /// Due reminders passed over for a later one that is due too.
    pub skipped: usize,
    /// Reminders handled once this is done.
    pub sent: usize,
    /// When the next reminder is due.
    pub next: Option<i64>,
}

/// `times` in order, `sent` of them already handled: the reminders due at `now` are a run from
/// `sent` on, and only the latest of them is sent.
pub fn plan_reminders(times: &[i64], sent: usize, now: i64) -> ReminderPlan {
    let due_until = times.partition_point(|t| *t <= now).max(sent);
    ReminderPlan {
        send: (due_until > sent).then(|| due_until - 1),
        skipped: due_until.saturating_sub(sent).saturating_sub(1),
        sent: due_until,
        next: times.get(due_until).copied(),
    }
}

#[cfg(test)]
mod tests {
    fn plan(send: Option<usize>, skipped: usize, sent: usize, next: Option<i64>) -> ReminderPlan {
        ReminderPlan {
            send,
            skipped,
            sent,
            next,
        }
    }

    #[test]
    fn reminders_are_planned_once_each_in_time_order() {
        let times = [100, 200, 300];
        assert_eq!(plan_reminders(&times, 0, 99), plan(None, 0, 0, Some(100)));
        assert_eq!(
            plan_reminders(&times, 0, 100),
            plan(Some(0), 0, 1, Some(200))
        );
        // Handled: nothing again at the same instant, or before the next one.
        assert_eq!(plan_reminders(&times, 1, 100), plan(None, 0, 1, Some(200)));
        assert_eq!(plan_reminders(&times, 1, 199), plan(None, 0, 1, Some(200)));
        assert_eq!(
            plan_reminders(&times, 1, 200),
            plan(Some(1), 0, 2, Some(300))
        );
        // After downtime only the latest due one goes; the others are skipped.
        assert_eq!(plan_reminders(&times, 0, 301), plan(Some(2), 2, 3, None));
        assert_eq!(plan_reminders(&times, 3, 10_000), plan(None, 0, 3, None));
        assert_eq!(plan_reminders(&[], 0, 10_000), plan(None, 0, 0, None));
        // Two reminders at the same instant count as one due run.
        assert_eq!(plan_reminders(&[50, 50], 0, 50), plan(Some(1), 1, 2, None));
    }

    use std::path::PathBuf;
    use std::sync::OnceLock;

    use proptest::prelude::*;

    use super::*;

    fn scales_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../pathways/scales")
    }

    fn scales() -> &'static Scales {
        static SCALES: OnceLock<Scales> = OnceLock::new();
        SCALES.get_or_init(|| Scales::load_dir(&scales_dir()).unwrap_or_else(|e| panic!("{e}")))
    }

    fn def(id: &str) -> &'static ScaleDef {
        scales().get(id).unwrap_or_else(|| panic!("no scale {id}"))
    }

    /// Answers given in item order.
    fn answers(id: &str, values: &[i64]) -> BTreeMap<String, i64> {
        let d = def(id);
        assert_eq!(d.items.len(), values.len(), "{id}: wrong number of answers");
        d.items
            .iter()
            .zip(values)
            .map(|(i, v)| (i.id.clone(), *v))
            .collect()
    }

    fn score(id: &str, values: &[i64]) -> Scored {
        def(id)
            .score(&answers(id, values))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn check(id: &str, values: &[i64], expect_score: f64, expect_band: &str) -> Scored {
        let s = score(id, values);
        assert!(
            (s.score - expect_score).abs() < 1e-9,
            "{id} {values:?}: score {} != {expect_score}",
            s.score
        );
        assert_eq!(s.band, expect_band, "{id} {values:?}: score {}", s.score);
        s
    }

    #[test]
    fn scales_every_catalogue_scale_has_a_file_and_vice_versa() {
        let mut stems = BTreeSet::new();
        for entry in std::fs::read_dir(scales_dir()).unwrap() {
            let path = entry.unwrap().path();
            assert_eq!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml"),
                "unexpected file {}",
                path.display()
            );
            stems.insert(path.file_stem().unwrap().to_str().unwrap().to_string());
        }
        let catalogue: BTreeSet<String> = carepath_dsl::catalog::SCALES
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(stems, catalogue, "files vs catalog::SCALES");
        let loaded: BTreeSet<String> = scales().ids().map(str::to_string).collect();
        assert_eq!(loaded, catalogue);
    }

    #[test]
    fn scales_critical_rules_match_the_catalogue() {
        let mut from_files = Vec::new();
        for d in scales().iter() {
            for r in &d.critical {
                from_files.push((
                    d.scale.clone(),
                    r.item.clone(),
                    r.role.clone(),
                    r.due().nominal_seconds() / 60,
                ));
            }
        }
        from_files.sort();
        let mut catalogue: Vec<_> = carepath_dsl::catalog::CRITICAL_RULES
            .iter()
            .map(|r| {
                (
                    r.scale.to_string(),
                    r.item.to_string(),
                    r.role.to_string(),
                    i64::from(r.due_minutes),
                )
            })
            .collect();
        catalogue.sort();
        assert_eq!(
            from_files, catalogue,
            "scale files vs catalog::CRITICAL_RULES"
        );
    }

    #[test]
    fn scales_builtin_are_the_shipped_files() {
        let built = Scales::builtin();
        assert_eq!(built.len(), scales().len());
        for d in scales().iter() {
            assert_eq!(built.get(&d.scale), Some(d), "{}", d.scale);
        }
    }

    #[test]
    fn scales_declared_min_and_max_are_reached() {
        for d in scales().iter() {
            for want_max in [false, true] {
                let answers: BTreeMap<String, i64> = d
                    .items
                    .iter()
                    .enumerate()
                    .map(|(k, item)| {
                        let (lo, hi) = item.raw_range().unwrap();
                        let w = d.weight(&item.id);
                        let high = (d.scored(k, hi) as f64 * w) >= (d.scored(k, lo) as f64 * w);
                        let pick = if want_max == high { hi } else { lo };
                        (item.id.clone(), pick)
                    })
                    .collect();
                let s = d.score(&answers).unwrap();
                let want = if want_max {
                    d.scoring.max
                } else {
                    d.scoring.min
                };
                assert!(
                    (s.score - want).abs() < 1e-9,
                    "{}: extreme score {} != {want}",
                    d.scale,
                    s.score
                );
            }
        }
    }

    #[test]
    fn scales_phq9() {
        check("phq9", &[3; 9], 27.0, "severe");
        check("phq9", &[0; 9], 0.0, "minimal");
        check("phq9", &[1, 1, 1, 1, 0, 0, 0, 0, 0], 4.0, "minimal");
        check("phq9", &[1, 1, 1, 1, 1, 0, 0, 0, 0], 5.0, "mild");
        check("phq9", &[2, 2, 2, 2, 1, 0, 0, 0, 0], 9.0, "mild");
        check("phq9", &[2, 2, 2, 2, 2, 0, 0, 0, 0], 10.0, "moderate");
        check(
            "phq9",
            &[2, 2, 2, 2, 2, 2, 2, 1, 0],
            15.0,
            "moderately_severe",
        );
        check("phq9", &[3, 3, 3, 3, 3, 3, 2, 0, 0], 20.0, "severe");
        let s = check("phq9", &[0, 0, 0, 0, 0, 0, 0, 0, 1], 1.0, "minimal");
        assert_eq!(s.critical.len(), 1);
        assert_eq!(s.critical[0].item, "q9");
        assert_eq!(s.critical[0].number, 9);
        assert_eq!(s.critical[0].action, "urgent_safety_task");
        assert!(
            score("phq9", &[3, 3, 3, 3, 3, 3, 3, 3, 0])
                .critical
                .is_empty()
        );
    }

    #[test]
    fn scales_gad7() {
        check("gad7", &[3; 7], 21.0, "severe");
        check("gad7", &[0; 7], 0.0, "minimal");
        check("gad7", &[1, 1, 1, 1, 0, 0, 0], 4.0, "minimal");
        check("gad7", &[1, 1, 1, 1, 1, 0, 0], 5.0, "mild");
        check("gad7", &[2, 2, 2, 2, 1, 0, 0], 9.0, "mild");
        check("gad7", &[2, 2, 2, 2, 2, 0, 0], 10.0, "moderate");
        check("gad7", &[3, 2, 2, 2, 2, 2, 1], 14.0, "moderate");
        check("gad7", &[3, 3, 3, 2, 2, 1, 1], 15.0, "severe");
    }

    #[test]
    fn scales_epds() {
        // Answers are box positions, top box 0. Items 3 and 5-10 are reverse scored.
        let top = check("epds", &[0; 10], 21.0, "probable");
        assert_eq!(top.items, vec![0, 0, 3, 0, 3, 3, 3, 3, 3, 3]);
        let bottom = check("epds", &[3; 10], 9.0, "unlikely");
        assert_eq!(bottom.items, vec![3, 3, 0, 3, 0, 0, 0, 0, 0, 0]);
        // Most symptomatic answer everywhere: 30.
        check("epds", &[3, 3, 0, 3, 0, 0, 0, 0, 0, 0], 30.0, "probable");
        // No symptoms anywhere: 0.
        let none = check("epds", &[0, 0, 3, 0, 3, 3, 3, 3, 3, 3], 0.0, "unlikely");
        assert!(none.critical.is_empty());
        // Boundaries: 9 unlikely, 10 and 12 possible, 13 probable.
        check("epds", &[3, 3, 3, 3, 3, 3, 3, 3, 3, 3], 9.0, "unlikely");
        check("epds", &[3, 3, 3, 3, 2, 3, 3, 3, 3, 3], 10.0, "possible");
        check("epds", &[3, 3, 3, 3, 2, 2, 2, 3, 3, 3], 12.0, "possible");
        check("epds", &[3, 3, 3, 3, 2, 2, 2, 2, 3, 3], 13.0, "probable");
        // The pregnancy test's answers, as scored values.
        let s = score("epds", &[1, 0, 2, 1, 3, 2, 2, 2, 3, 3]);
        assert_eq!(s.items, vec![1, 0, 1, 1, 0, 1, 1, 1, 0, 0]);
        assert_eq!(s.score, 6.0);
        // Item 10 "hardly ever" (third box, scored 1) with a low total is still critical.
        let s = check("epds", &[0, 0, 3, 0, 3, 3, 3, 3, 3, 2], 1.0, "unlikely");
        assert_eq!(s.items[9], 1);
        assert_eq!(s.critical.len(), 1);
        assert_eq!(s.critical[0].item, "q10");
        assert_eq!(s.critical[0].number, 10);
        assert_eq!(s.critical[0].value, 1);
        assert_eq!(s.critical[0].action, "urgent_safety_task");
        // Item 10 "quite often" (top box) scores 3.
        assert_eq!(
            score("epds", &[0, 0, 3, 0, 3, 3, 3, 3, 3, 0]).critical[0].value,
            3
        );
    }

    #[test]
    fn scales_barthel() {
        // feeding, bathing, grooming, dressing, bowels, bladder, toilet, transfers, mobility, stairs
        check(
            "barthel",
            &[10, 5, 5, 10, 10, 10, 10, 15, 15, 10],
            100.0,
            "independent",
        );
        check("barthel", &[0; 10], 0.0, "total");
        check("barthel", &[10, 0, 0, 5, 5, 0, 0, 0, 0, 0], 20.0, "total");
        check("barthel", &[10, 0, 0, 5, 5, 0, 0, 5, 0, 0], 25.0, "severe");
        check(
            "barthel",
            &[10, 0, 5, 5, 10, 10, 5, 10, 5, 0],
            60.0,
            "severe",
        );
        check(
            "barthel",
            &[10, 0, 5, 5, 10, 10, 5, 10, 10, 0],
            65.0,
            "moderate",
        );
        check(
            "barthel",
            &[10, 0, 5, 10, 10, 10, 10, 15, 15, 5],
            90.0,
            "moderate",
        );
        check(
            "barthel",
            &[10, 0, 5, 10, 10, 10, 10, 15, 15, 10],
            95.0,
            "slight",
        );
        // Point values not on the form are refused, naming the item and what is allowed.
        let err = def("barthel")
            .score(&answers("barthel", &[15, 5, 5, 10, 10, 10, 10, 15, 15, 10]))
            .unwrap_err();
        assert_eq!(
            err,
            AnswerError::OutOfRange {
                scale: "barthel".into(),
                item: "feeding".into(),
                value: 15,
                allowed: "one of 0, 5, 10".into(),
            }
        );
        assert!(err.to_string().contains("feeding"), "{err}");
        let err = def("barthel")
            .score(&answers("barthel", &[10, 5, 5, 10, 10, 10, 10, 7, 15, 10]))
            .unwrap_err();
        assert!(
            err.to_string().contains("`transfers` was answered 7")
                && err.to_string().contains("one of 0, 5, 10, 15"),
            "{err}"
        );
    }

    #[test]
    fn scales_mrs() {
        check("mrs", &[0], 0.0, "independent");
        check("mrs", &[2], 2.0, "independent");
        check("mrs", &[3], 3.0, "dependent");
        check("mrs", &[5], 5.0, "dependent");
        check("mrs", &[6], 6.0, "dead");
        assert!(def("mrs").score(&answers("mrs", &[7])).is_err());
        assert!(def("mrs").score(&answers("mrs", &[-1])).is_err());
    }

    #[test]
    fn scales_nrs() {
        check("nrs", &[0], 0.0, "none");
        check("nrs", &[1], 1.0, "mild");
        check("nrs", &[3], 3.0, "mild");
        check("nrs", &[4], 4.0, "moderate");
        check("nrs", &[6], 6.0, "moderate");
        check("nrs", &[7], 7.0, "severe");
        check("nrs", &[10], 10.0, "severe");
        let err = def("nrs").score(&answers("nrs", &[11])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "scale `nrs`: item `pain` was answered 11, which is not allowed; allowed: a whole number from 0 to 10"
        );
    }

    #[test]
    fn scales_who5() {
        // Raw 13 -> 52 %, above the 50 cut-off.
        check("who5", &[3, 3, 3, 2, 2], 52.0, "adequate");
        check("who5", &[3, 3, 2, 2, 2], 48.0, "poor");
        check("who5", &[2, 2, 2, 2, 2], 40.0, "poor");
        check("who5", &[2, 2, 1, 1, 1], 28.0, "likely_depression");
        check("who5", &[5; 5], 100.0, "adequate");
        check("who5", &[0; 5], 0.0, "likely_depression");
    }

    #[test]
    fn scales_cat() {
        check("cat", &[5; 8], 40.0, "very_high");
        check("cat", &[0; 8], 0.0, "low");
        check("cat", &[2, 2, 1, 1, 1, 1, 1, 0], 9.0, "low");
        check("cat", &[2, 2, 1, 1, 1, 1, 1, 1], 10.0, "medium");
        check("cat", &[3, 3, 3, 3, 2, 2, 2, 2], 20.0, "medium");
        check("cat", &[3, 3, 3, 3, 3, 2, 2, 2], 21.0, "high");
        check("cat", &[4, 4, 4, 4, 4, 4, 3, 3], 30.0, "high");
        check("cat", &[4, 4, 4, 4, 4, 4, 4, 3], 31.0, "very_high");
    }

    #[test]
    fn scales_qol_breast() {
        let d = def("qol_breast");
        // Best answer everywhere (4 on positive items, 0 on reversed ones) is 100 %.
        let best: Vec<i64> = d
            .items
            .iter()
            .map(|i| if d.is_reversed(&i.id) { 0 } else { 4 })
            .collect();
        let s = check("qol_breast", &best, 100.0, "good");
        assert!(s.items.iter().all(|v| *v == 4));
        let worst: Vec<i64> = best.iter().map(|v| 4 - v).collect();
        check("qol_breast", &worst, 0.0, "poor");
        // Answering 2 everywhere is the middle of the range.
        check("qol_breast", &[2; 10], 50.0, "poor");
        // One step up from the middle on six items: 26/40 = 65 %.
        let mut v = vec![2; 10];
        let mut stepped = 0;
        for (k, item) in d.items.iter().enumerate() {
            if stepped < 6 {
                v[k] = if d.is_reversed(&item.id) { 1 } else { 3 };
                stepped += 1;
            }
        }
        check("qol_breast", &v, 65.0, "fair");
        assert!(!d.scoring.reverse.is_empty());
    }

    #[test]
    fn scales_satisfaction() {
        check("satisfaction", &[5; 5], 100.0, "satisfied");
        check("satisfaction", &[1; 5], 0.0, "dissatisfied");
        check("satisfaction", &[4; 5], 75.0, "satisfied");
        check("satisfaction", &[3; 5], 50.0, "neutral");
        check("satisfaction", &[4, 4, 4, 4, 3], 70.0, "neutral");
        check("satisfaction", &[5, 5, 5, 5, 4], 95.0, "satisfied");
        assert!(
            def("satisfaction")
                .score(&answers("satisfaction", &[0, 5, 5, 5, 5]))
                .is_err()
        );
    }

    #[test]
    fn scales_mrc_strength() {
        check("mrc_strength", &[0], 0.0, "paralysis");
        check("mrc_strength", &[1], 1.0, "severe");
        check("mrc_strength", &[2], 2.0, "severe");
        check("mrc_strength", &[3], 3.0, "moderate");
        check("mrc_strength", &[4], 4.0, "mild");
        check("mrc_strength", &[5], 5.0, "normal");
        assert!(
            def("mrc_strength")
                .score(&answers("mrc_strength", &[6]))
                .is_err()
        );
    }

    #[test]
    fn scales_morisky8() {
        // Items 1-4, 6, 7: yes 0, no 1. Item 5 reversed: yes scores 1. Item 8: 0-4 × 0.25.
        let best = check("morisky8", &[1, 1, 1, 1, 0, 1, 1, 4], 8.0, "high");
        assert_eq!(best.items, vec![1, 1, 1, 1, 1, 1, 1, 4]);
        check("morisky8", &[0, 0, 0, 0, 1, 0, 0, 0], 0.0, "low");
        // Answering "no" to item 5 loses its point.
        check("morisky8", &[1, 1, 1, 1, 1, 1, 1, 4], 7.0, "medium");
        // Item 8 in quarter points.
        check("morisky8", &[1, 1, 1, 1, 0, 1, 1, 3], 7.75, "medium");
        check("morisky8", &[0, 1, 1, 1, 0, 1, 0, 4], 6.0, "medium");
        check("morisky8", &[0, 1, 1, 1, 0, 1, 0, 3], 5.75, "low");
    }

    #[test]
    fn scales_incomplete_and_unknown_answers_are_refused() {
        let d = def("phq9");
        let mut a = answers("phq9", &[1; 9]);
        a.remove("q3");
        a.remove("q9");
        let err = d.score(&a).unwrap_err();
        assert_eq!(
            err,
            AnswerError::Missing {
                scale: "phq9".into(),
                items: vec!["q3".into(), "q9".into()],
            }
        );
        assert!(err.to_string().contains("missing q3, q9"), "{err}");
        let mut a = answers("phq9", &[1; 9]);
        a.insert("q10".into(), 1);
        assert!(matches!(
            d.score(&a),
            Err(AnswerError::UnknownItem { item, .. }) if item == "q10"
        ));
        assert!(matches!(
            scales().score("hads", &a),
            Err(AnswerError::UnknownScale { .. })
        ));
    }

    #[test]
    fn scales_result_feeds_the_guard_functions() {
        let s = score("epds", &[1, 0, 2, 1, 3, 2, 2, 2, 3, 3]);
        let r = s.into_result(Timestamp::UNIX_EPOCH);
        assert_eq!(r.scale, "epds");
        assert_eq!(r.band, "unlikely");
        assert_eq!(r.items[9], 0);
    }

    const GOOD: &str = r#"
scale: demo
title: { zh: 示例, en: Demo }
items:
  - id: a
    text: { zh: 甲, en: A }
    options:
      - { value: 0, text: { zh: 否, en: "No" } }
      - { value: 1, text: { zh: 是, en: "Yes" } }
  - id: b
    text: { zh: 乙, en: B }
    min: 0
    max: 3
scoring: { method: sum, min: 0, max: 4 }
bands:
  - { from: 0, id: low, text: { zh: 低, en: Low } }
  - { from: 2, id: high, text: { zh: 高, en: High } }
critical:
  - { item: a, above: 0, action: urgent_safety_task, role: doctor, due: 1h, text: { zh: 注意, en: Attention } }
"#;

    fn load(text: &str) -> Result<ScaleDef, LoadError> {
        ScaleDef::from_yaml("demo.yaml", text.as_bytes())
    }

    fn load_err(text: &str) -> String {
        load(text).unwrap_err().to_string()
    }

    #[test]
    fn scales_definition_errors_name_file_and_item() {
        assert!(load(GOOD).is_ok(), "{:?}", load(GOOD));
        let e = load_err(&GOOD.replace("id: b", "id: a"));
        assert!(
            e.contains("demo.yaml: item `a`: item id is used twice"),
            "{e}"
        );
        let e = load_err(&GOOD.replace("from: 2", "from: 0"));
        assert!(e.contains("demo.yaml: bands must ascend"), "{e}");
        let e = load_err(&GOOD.replace("{ item: a,", "{ item: c,"));
        assert!(
            e.contains("demo.yaml: item `c`: a critical rule names an item the scale does not have (items: a, b)"),
            "{e}"
        );
        let e = load_err(&GOOD.replace("above: 0", "above: 1"));
        assert!(e.contains("it can never fire"), "{e}");
        let e = load_err(&GOOD.replace("role: doctor", "role: janitor"));
        assert!(
            e.contains("critical rule role `janitor` is not a staff role"),
            "{e}"
        );
        let e = load_err(&GOOD.replace("due: 1h", "due: soon"));
        assert!(e.contains("item `a`: critical rule `due`"), "{e}");
        let e = load_err(&GOOD.replace("due: 1h,", "due: 1h, escalate_after: 30m,"));
        assert!(e.contains("both `escalate_after` and `escalate_to`"), "{e}");
        let e = load_err(&GOOD.replace("urgent_safety_task", "call_the_police"));
        assert!(e.contains("is not one the engine performs"), "{e}");
        let ok = load(&GOOD.replace(
            "due: 1h,",
            "due: 1h, escalate_after: 30m, escalate_to: head_nurse,",
        ))
        .unwrap();
        let sla = ok.critical[0].sla().unwrap();
        assert_eq!(sla.escalate_to.as_deref(), Some("head_nurse"));
        assert_eq!(ok.critical[0].due(), carepath_dsl::Duration::hours(1));
        let e = load_err(&GOOD.replace("max: 4", "max: 5"));
        assert!(e.contains("the items give 0..4"), "{e}");
        let e = load_err(&GOOD.replace("    max: 3\n", ""));
        assert!(
            e.contains("item `b`: needs either `options` or both `min` and `max`"),
            "{e}"
        );
        let e = load_err(&GOOD.replace("{ from: 0, id: low", "{ from: 1, id: low"));
        assert!(e.contains("every score needs a band"), "{e}");
        let e = load_err(&GOOD.replace("method: sum", "method: sum, reverse: [b]"));
        assert!(e.contains("needs `reverse_max`"), "{e}");
        let e = load_err(&GOOD.replace("    max: 3\n", "    max: 3\n    scale: 2\n"));
        assert!(e.contains("item `b`: unknown field `scale`"), "{e}");
        let e = load_err(&GOOD.replace("value: 1,", "value: 0,"));
        assert!(e.contains("option value 0 is used twice"), "{e}");
        let e = load_err(&GOOD.replace("method: sum", "method: median"));
        assert!(e.contains("demo.yaml: unknown variant `median`"), "{e}");
        let e = load_err("scale: [");
        assert!(e.starts_with("demo.yaml: line "), "{e}");
    }

    #[test]
    fn scales_load_dir_checks_file_names_and_reports_every_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("demo.yaml"), GOOD).unwrap();
        std::fs::write(dir.path().join("other.yaml"), GOOD).unwrap();
        std::fs::write(
            dir.path().join("broken.yaml"),
            GOOD.replace("scale: demo", "scale: broken")
                .replace("from: 2", "from: 0"),
        )
        .unwrap();
        let e = Scales::load_dir(dir.path()).unwrap_err();
        let text = e.to_string();
        assert_eq!(e.problems.len(), 2, "{text}");
        assert!(text.contains("broken.yaml: bands must ascend"), "{text}");
        assert!(
            text.contains("other.yaml: the file defines scale `demo` but is named `other`"),
            "{text}"
        );
        std::fs::remove_file(dir.path().join("other.yaml")).unwrap();
        std::fs::remove_file(dir.path().join("broken.yaml")).unwrap();
        let ok = Scales::load_dir(dir.path()).unwrap();
        assert_eq!(ok.ids().collect::<Vec<_>>(), vec!["demo"]);
    }

    /// An allowed answer for `item`, chosen by `seed`.
    fn pick(item: &Item, seed: u64) -> i64 {
        if item.options.is_empty() {
            let (lo, hi) = item.raw_range().unwrap();
            lo + (seed % (hi - lo + 1) as u64) as i64
        } else {
            item.options[(seed % item.options.len() as u64) as usize].value
        }
    }

    proptest! {
        #[test]
        fn scales_random_answers_score_within_the_declared_range(
            seeds in prop::collection::vec(any::<u64>(), 32)
        ) {
            for d in scales().iter() {
                prop_assert!(d.items.len() <= seeds.len());
                let answers: BTreeMap<String, i64> = d
                    .items
                    .iter()
                    .zip(&seeds)
                    .map(|(i, s)| (i.id.clone(), pick(i, *s)))
                    .collect();
                let s = d.score(&answers);
                prop_assert!(s.is_ok(), "{}: {:?}", d.scale, s);
                let s = s.unwrap();
                prop_assert!(
                    s.score >= d.scoring.min - EPS && s.score <= d.scoring.max + EPS,
                    "{}: {} outside {}..{}", d.scale, s.score, d.scoring.min, d.scoring.max
                );
                prop_assert!(!s.band.is_empty());
                prop_assert_eq!(s.items.len(), d.items.len());
            }
        }

        #[test]
        fn scales_arbitrary_answers_never_panic(
            values in prop::collection::vec(prop_oneof![any::<i64>(), -2i64..20], 32),
            drop in prop::collection::vec(any::<bool>(), 32),
        ) {
            for d in scales().iter() {
                let answers: BTreeMap<String, i64> = d
                    .items
                    .iter()
                    .zip(values.iter().zip(&drop))
                    .filter(|(_, (_, drop))| !**drop)
                    .map(|(i, (v, _))| (i.id.clone(), *v))
                    .collect();
                match d.score(&answers) {
                    Ok(s) => prop_assert!(s.score >= d.scoring.min - EPS && s.score <= d.scoring.max + EPS),
                    Err(e) => prop_assert!(!e.to_string().is_empty()),
                }
            }
        }
    }

    /// Every score one answer set gives, `answers_for` finds answers for, and they score it.
    #[test]
    fn answers_for_a_score_give_that_score_on_every_scale() {
        for d in scales().iter() {
            for k in 0..d.items.len() {
                let answers: BTreeMap<String, i64> = d
                    .items
                    .iter()
                    .enumerate()
                    .map(|(j, it)| {
                        let ladder = d.ladder(j);
                        let v = if j == k {
                            ladder[ladder.len() - 1]
                        } else {
                            ladder[0]
                        };
                        (it.id.clone(), v)
                    })
                    .collect();
                let want = d.score(&answers).expect("valid answers").score;
                let found = d
                    .answers_for(want)
                    .unwrap_or_else(|e| panic!("{}: {e}", d.scale));
                let got = d.score(&found).expect("valid answers").score;
                assert!((got - want).abs() < 1e-9, "{}: {want} gave {got}", d.scale);
            }
        }
    }

    #[test]
    fn answers_for_a_score_leave_a_critical_item_low_unless_the_score_needs_it() {
        let epds = def("epds");
        let low = epds.score(&epds.answers_for(27.0).unwrap()).unwrap();
        assert_eq!((low.score, low.items[9], low.critical.len()), (27.0, 0, 0));
        let top = epds.score(&epds.answers_for(30.0).unwrap()).unwrap();
        assert_eq!((top.items[9], top.critical.len()), (3, 1));
        let e = def("qol_breast").answers_for(78.0).unwrap_err();
        assert!(
            e.contains("cannot score 78; the nearest scores it can give are 77.5 and 80"),
            "{e}"
        );
        let e = def("phq9").answers_for(-1.0).unwrap_err();
        assert!(e.contains("the nearest scores it can give are 0"), "{e}");
    }

    #[test]
    fn answers_from_item_values_score_those_values() {
        let epds = def("epds");
        let items = [1, 1, 2, 1, 2, 1, 2, 2, 1, 1];
        let answers = epds.answers_from_items(&items).unwrap();
        // q3 is reverse scored (3 - answer).
        assert_eq!(answers["q3"], 1);
        let scored = epds.score(&answers).unwrap();
        assert_eq!((scored.items.as_slice(), scored.score), (&items[..], 14.0));
        let e = epds.answers_from_items(&[1, 2]).unwrap_err();
        assert!(
            e.contains("has 10 items") && e.contains("2 item values"),
            "{e}"
        );
        let e = epds
            .answers_from_items(&[1, 1, 4, 1, 2, 1, 2, 2, 1, 1])
            .unwrap_err();
        assert!(
            e.contains("item 3 (`q3`) cannot score 4; it scores one of"),
            "{e}"
        );
    }
}
