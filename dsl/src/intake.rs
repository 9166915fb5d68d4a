//! Case intake rules (收案规则): which hospital facts enrol a patient in which pathway.
//!
//! A rule file is YAML read by the same positioned reader as the pathways (`yaml.rs`), so its
//! problems are located and reported all at once like a pathway's, under their own code family
//! (`I001`…). Reading a file checks its shape; whether the pathways and entry points it names
//! exist is checked against the pathways of a run by [`check_set`], which the validator and the
//! engine's loader both call. [`decide`] is the one matcher: pure, no clock, no storage — the engine
//! hands it what an encounter says and gets back the enrolments to make or to queue for review.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::diag::{Code, Diagnostic, Pos};
use crate::yaml::{self, Node, Value};

/// The triggers an encounter produces (see [`encounter_triggers`]); a rule may also name any
/// other event, fired by whoever records it.
pub const ENCOUNTER_TRIGGERS: &[&str] = &[
    "admitted",
    "discharged",
    "registered",
    "pregnancy_registered",
];

const RULE_KEYS: &[&str] = &[
    "id",
    "title",
    "when",
    "department",
    "principal_diagnosis",
    "any_diagnosis",
    "class",
    "age",
    "sex",
    "enrolled_in",
    "exclude",
    "enrol",
    "mode",
];
const MATCHER_KEYS: &[&str] = &[
    "department",
    "principal_diagnosis",
    "any_diagnosis",
    "class",
    "age",
    "sex",
    "enrolled_in",
];
const ENROL_KEYS: &[&str] = &["pathway", "entry"];
const AGE_KEYS: &[&str] = &["min", "max"];

/// The kind of encounter, as the hospital's records give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Inpatient,
    Outpatient,
    Emergency,
}

impl Class {
    pub const ALL: &'static [(&'static str, Class)] = &[
        ("inpatient", Class::Inpatient),
        ("outpatient", Class::Outpatient),
        ("emergency", Class::Emergency),
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sex {
    Female,
    Male,
}

impl Sex {
    pub fn parse(s: &str) -> Option<Sex> {
        match s {
            "female" => Some(Sex::Female),
            "male" => Some(Sex::Male),
            _ => None,
        }
    }
}

/// Whether a match enrols at once or waits in a case manager's intake queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Auto,
    Review,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Review => "review",
        }
    }
}

/// An ICD-10 code pattern. Codes are compared without their dot and in upper case, and a code
/// matches every finer code below it: `I63` and `I63.*` match `I63.9` and the national clinical
/// extension `I63.900x001`; `I60-I69` matches every code from category I60 to I69.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum IcdPattern {
    Prefix(String),
    Range(String, String),
}

impl From<IcdPattern> for String {
    fn from(p: IcdPattern) -> String {
        match p {
            IcdPattern::Prefix(c) => c,
            IcdPattern::Range(a, b) => format!("{a}-{b}"),
        }
    }
}

/// A code without dot, spaces and anything after its alphanumeric run, upper case: the form
/// patterns and recorded codes are compared in.
pub fn normalise_code(code: &str) -> String {
    code.trim()
        .chars()
        .filter(|c| *c != '.')
        .take_while(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Reads one ICD-10 code of a pattern: a letter, two characters of the category (a digit, then a
/// digit or letter, as in `C4A`), and an optional subdivision of one to four characters.
fn icd_code(s: &str) -> Option<String> {
    let s = s.trim();
    let (category, sub) = match s.split_once('.') {
        Some((c, sub)) => (c, Some(sub)),
        None => (s, None),
    };
    let c: Vec<char> = category.chars().collect();
    let category_ok = c.len() == 3
        && c[0].is_ascii_alphabetic()
        && c[1].is_ascii_digit()
        && c[2].is_ascii_alphanumeric();
    let sub_ok = sub.is_none_or(|sub| {
        (1..=4).contains(&sub.len()) && sub.chars().all(|ch| ch.is_ascii_alphanumeric())
    });
    (category_ok && sub_ok).then(|| normalise_code(s))
}

impl IcdPattern {
    pub fn parse(text: &str) -> Option<IcdPattern> {
        let text = text.trim();
        if let Some(category) = text.strip_suffix(".*") {
            return (category.len() == 3)
                .then(|| icd_code(category))
                .flatten()
                .map(IcdPattern::Prefix);
        }
        if let Some((lo, hi)) = text.split_once('-') {
            let (lo, hi) = (icd_code(lo)?, icd_code(hi)?);
            return (lo.len() == hi.len() && lo <= hi).then_some(IcdPattern::Range(lo, hi));
        }
        icd_code(text).map(IcdPattern::Prefix)
    }

    /// Whether a recorded code (any spelling: `I63.9`, `i639`, `I63.900x001`) falls under this
    /// pattern.
    pub fn matches(&self, code: &str) -> bool {
        let code = normalise_code(code);
        match self {
            IcdPattern::Prefix(p) => code.starts_with(p.as_str()),
            IcdPattern::Range(lo, hi) => {
                code.len() >= lo.len() && {
                    let head = &code[..lo.len()];
                    lo.as_str() <= head && head <= hi.as_str()
                }
            }
        }
    }
}

/// What a rule looks at; every matcher given must match, and in a list any item may.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Matchers {
    /// Department names, compared case-insensitively after trimming.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub department: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub principal_diagnosis: Vec<IcdPattern>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub any_diagnosis: Vec<IcdPattern>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub class: Vec<Class>,
    /// Completed years, both ends inclusive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age: Option<(Option<u32>, Option<u32>)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sex: Option<Sex>,
    /// Pathways the patient is actively enrolled in.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub enrolled_in: Vec<String>,
}

impl Matchers {
    fn is_empty(&self) -> bool {
        *self == Matchers::default()
    }

    /// Each matcher given, judged alone; `None` when the input cannot say (no age, no sex).
    fn judgements(&self, input: &IntakeInput) -> Vec<Option<bool>> {
        let mut out = Vec::new();
        if !self.department.is_empty() {
            out.push(Some(input.department.as_deref().is_some_and(|d| {
                let d = d.trim().to_lowercase();
                self.department.iter().any(|n| n.trim().to_lowercase() == d)
            })));
        }
        if !self.principal_diagnosis.is_empty() {
            out.push(Some(input.diagnoses.iter().any(|d| {
                d.principal && self.principal_diagnosis.iter().any(|p| p.matches(&d.code))
            })));
        }
        if !self.any_diagnosis.is_empty() {
            out.push(Some(
                input
                    .diagnoses
                    .iter()
                    .any(|d| self.any_diagnosis.iter().any(|p| p.matches(&d.code))),
            ));
        }
        if !self.class.is_empty() {
            out.push(Some(input.class.is_some_and(|c| self.class.contains(&c))));
        }
        if let Some((min, max)) = self.age {
            out.push(
                input
                    .age
                    .map(|a| min.is_none_or(|m| a >= m) && max.is_none_or(|m| a <= m)),
            );
        }
        if let Some(sex) = self.sex {
            out.push(input.sex.map(|s| s == sex));
        }
        if !self.enrolled_in.is_empty() {
            out.push(Some(
                self.enrolled_in
                    .iter()
                    .any(|p| input.active_pathways.contains(p)),
            ));
        }
        out
    }

    /// Every matcher matches; an unknown age or sex does not.
    fn all_match(&self, input: &IntakeInput) -> bool {
        self.judgements(input).into_iter().all(|j| j == Some(true))
    }

    /// Some matcher matches; an unknown age or sex excludes no one.
    fn any_match(&self, input: &IntakeInput) -> bool {
        self.judgements(input).into_iter().any(|j| j == Some(true))
    }
}

/// Where a rule's enrolment target was written, for the check against the pathways.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetPos {
    pub pathway: Pos,
    pub entry: Pos,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IntakeRule {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub when: String,
    #[serde(rename = "match")]
    pub matchers: Matchers,
    /// Any one of these matching keeps the patient out.
    pub exclude: Matchers,
    pub pathway: String,
    pub entry: String,
    pub mode: Mode,
    #[serde(skip)]
    pub file: String,
    #[serde(skip)]
    pub pos: Pos,
    #[serde(skip)]
    pub target_pos: TargetPos,
}

/// One rule file: the rules that could be read and every problem found.
#[derive(Debug, Clone)]
pub struct IntakeFile {
    pub file: String,
    pub rules: Vec<IntakeRule>,
    pub diagnostics: Vec<Diagnostic>,
}

impl IntakeFile {
    pub fn is_ok(&self) -> bool {
        !self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// The pathways rules may enrol in: pathway id → its entry points.
pub type KnownPathways = BTreeMap<String, BTreeSet<String>>;

/// The pathways and entry points of compiled pathways.
pub fn known_pathways<'a>(pathways: impl IntoIterator<Item = &'a crate::Pathway>) -> KnownPathways {
    let mut out = KnownPathways::new();
    for p in pathways {
        out.entry(p.id.clone())
            .or_default()
            .extend(p.entry_points.iter().map(|e| e.id.clone()));
    }
    out
}

/// Reads a rule file from its text; the shape is checked, the targets are not (see [`check_set`]).
pub fn parse(file: &str, bytes: &[u8]) -> IntakeFile {
    match yaml::parse(file, bytes, yaml::Budget::default()) {
        Ok(root) => from_tree(file, &root),
        Err(diagnostics) => IntakeFile {
            file: file.to_string(),
            rules: Vec::new(),
            diagnostics,
        },
    }
}

/// Reads a rule file from its positioned tree.
pub fn from_tree(file: &str, root: &Node) -> IntakeFile {
    let mut r = Reader {
        file,
        diags: Vec::new(),
    };
    let mut rules = Vec::new();
    if let Some(top) = r.fields(root, "a rule file", &["intake"]) {
        match top.get("intake") {
            None => r.err(
                Code::IntakeMissingKey,
                root.pos,
                "a rule file is missing `intake`",
                "start the file with `intake:` and list the rules under it",
            ),
            Some((_, list)) => {
                let mut seen: HashMap<String, Pos> = HashMap::new();
                for item in r.list(list, "`intake`") {
                    // A repeated id is reported even when the first rule has other problems.
                    if let Some(id) = id_of(item) {
                        if let Some(first) = seen.get(id) {
                            r.err(
                                Code::IntakeDuplicate,
                                item.pos,
                                format!("rule `{id}` is defined twice"),
                                format!(
                                    "the first is on line {}; rule ids must be unique",
                                    first.line
                                ),
                            );
                            continue;
                        }
                        seen.insert(id.to_string(), item.pos);
                    }
                    if let Some(rule) = r.rule(item) {
                        rules.push(rule);
                    }
                }
            }
        }
    }
    let mut diagnostics = r.diags;
    diagnostics.sort_by(|a, b| (a.pos, a.code.as_str()).cmp(&(b.pos, b.code.as_str())));
    diagnostics.dedup();
    IntakeFile {
        file: file.to_string(),
        rules,
        diagnostics,
    }
}

/// The text of a rule's `id`, if it has one.
fn id_of(rule: &Node) -> Option<&str> {
    match &rule.value {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.as_str() == Some("id"))
            .and_then(|(_, v)| v.as_str()),
        _ => None,
    }
}

/// Checks rule files together against the pathways they may enrol in: each rule's pathway and
/// entry point exist, and no rule id is used twice across the files.
pub fn check_set(files: &[IntakeFile], known: &KnownPathways) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut seen: HashMap<&str, (&str, Pos)> = HashMap::new();
    for f in files {
        for rule in &f.rules {
            match seen.get(rule.id.as_str()) {
                Some((file, pos)) if *file != f.file => out.push(Diagnostic::error(
                    Code::IntakeDuplicate,
                    &f.file,
                    rule.pos,
                    format!("rule `{}` is also defined in {file}:{}", rule.id, pos.line),
                    "rule ids must be unique across the rule files",
                )),
                Some(_) => {}
                None => {
                    seen.insert(&rule.id, (&f.file, rule.pos));
                }
            }
            match known.get(&rule.pathway) {
                None => {
                    let names: Vec<&str> = known.keys().map(String::as_str).collect();
                    out.push(Diagnostic::error(
                        Code::IntakeUnknownPathway,
                        &f.file,
                        rule.target_pos.pathway,
                        format!("rule `{}` enrols in `{}`, which is not a pathway", rule.id, rule.pathway),
                        if names.is_empty() {
                            "no pathways were found to enrol in; validate the rules with their pathways folder".to_string()
                        } else {
                            crate::diag::suggest(&rule.pathway, &names)
                        },
                    ));
                }
                Some(entries) if !entries.contains(&rule.entry) => {
                    let names: Vec<&str> = entries.iter().map(String::as_str).collect();
                    out.push(Diagnostic::error(
                        Code::IntakeUnknownEntry,
                        &f.file,
                        rule.target_pos.entry,
                        format!(
                            "pathway `{}` has no entry point `{}`",
                            rule.pathway, rule.entry
                        ),
                        if names.is_empty() {
                            "the pathway declares no entry points".to_string()
                        } else {
                            format!("its entry points: {}", names.join(", "))
                        },
                    ));
                }
                Some(_) => {}
            }
        }
    }
    out
}

/// A diagnosis as an encounter records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntakeDiagnosis {
    pub code: String,
    pub principal: bool,
}

/// What the matcher sees of one happening to one patient.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IntakeInput {
    pub trigger: String,
    pub department: Option<String>,
    pub class: Option<Class>,
    pub diagnoses: Vec<IntakeDiagnosis>,
    /// Completed years at the time of the happening.
    pub age: Option<u32>,
    pub sex: Option<Sex>,
    /// Pathways the patient is actively enrolled in.
    pub active_pathways: Vec<String>,
}

/// A rule that matched: enrol (auto) or queue for a case manager (review).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IntakeDecision {
    pub rule: String,
    pub pathway: String,
    pub entry: String,
    pub mode: Mode,
}

/// The rules that take this input, in rule order: the trigger is the rule's, every matcher
/// matches, no exclusion does. A pathway the patient is actively enrolled in is skipped, and
/// each pathway is decided once, by its first matching rule.
pub fn decide(rules: &[IntakeRule], input: &IntakeInput) -> Vec<IntakeDecision> {
    let mut out: Vec<IntakeDecision> = Vec::new();
    for rule in rules {
        if rule.when != input.trigger
            || input.active_pathways.contains(&rule.pathway)
            || out.iter().any(|d| d.pathway == rule.pathway)
            || !rule.matchers.all_match(input)
            || rule.exclude.any_match(input)
        {
            continue;
        }
        out.push(IntakeDecision {
            rule: rule.id.clone(),
            pathway: rule.pathway.clone(),
            entry: rule.entry.clone(),
            mode: rule.mode,
        });
    }
    out
}

/// The ICD-10 codes that register a pregnancy at an outpatient visit: pregnant state (Z33),
/// supervision of a normal (Z34) or high-risk (Z35) pregnancy, antenatal screening (Z36).
const PREGNANCY_REGISTRATION: &[&str] = &["Z33", "Z34", "Z35", "Z36"];

/// The triggers an encounter's change fires: `admitted` and `discharged` when those are newly
/// recorded; `registered` when an outpatient or emergency visit is first recorded, with
/// `pregnancy_registered` as well when that visit carries a pregnancy-registration code.
pub fn encounter_triggers(
    admitted: bool,
    discharged: bool,
    registered: bool,
    diagnoses: &[IntakeDiagnosis],
) -> Vec<&'static str> {
    let mut out = Vec::new();
    if admitted {
        out.push("admitted");
    }
    if discharged {
        out.push("discharged");
    }
    if registered {
        out.push("registered");
        if diagnoses.iter().any(|d| {
            let code = normalise_code(&d.code);
            PREGNANCY_REGISTRATION.iter().any(|p| code.starts_with(p))
        }) {
            out.push("pregnancy_registered");
        }
    }
    out
}

// ---- reading ---------------------------------------------------------------------------------

use crate::fields::Fields;

struct Reader<'f> {
    file: &'f str,
    diags: Vec<Diagnostic>,
}

impl Reader<'_> {
    fn err(&mut self, code: Code, pos: Pos, message: impl Into<String>, hint: impl Into<String>) {
        self.diags
            .push(Diagnostic::error(code, self.file, pos, message, hint));
    }

    fn fields<'n>(&mut self, node: &'n Node, what: &str, allowed: &[&str]) -> Option<Fields<'n>> {
        self.sink().fields(node, what, allowed)
    }

    fn req<'n>(
        &mut self,
        f: &Fields<'n>,
        key: &str,
        parent: &Node,
        what: &str,
    ) -> Option<&'n Node> {
        self.sink().req(f, key, parent, what)
    }

    fn sink(&mut self) -> crate::fields::Sink<'_> {
        crate::fields::Sink {
            file: self.file,
            diags: &mut self.diags,
            codes: &crate::fields::INTAKE,
        }
    }

    fn opt<'n>(f: &Fields<'n>, key: &str) -> Option<&'n Node> {
        f.get(key)
            .map(|(_, v)| *v)
            .filter(|v| !matches!(v.value, Value::Null))
    }

    fn text(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Scalar { text, .. } if !text.trim().is_empty() => Some(text.clone()),
            Value::Scalar { .. } => {
                self.err(
                    Code::IntakeInvalidValue,
                    node.pos,
                    format!("{what} is empty"),
                    "",
                );
                None
            }
            _ => {
                self.err(
                    Code::IntakeWrongType,
                    node.pos,
                    format!("{what} must be text, found {}", node.kind_name()),
                    "",
                );
                None
            }
        }
    }

    fn ident(&mut self, node: &Node, what: &str) -> Option<String> {
        let s = self.text(node, what)?;
        if !crate::fields::is_ident(&s) {
            self.err(
                Code::IntakeInvalidValue,
                node.pos,
                format!("{what} `{s}` is not a valid id"),
                crate::fields::IDENT_HINT,
            );
            return None;
        }
        Some(s)
    }

    /// A list, or a single value standing for a list of one.
    fn items<'n>(&mut self, node: &'n Node, what: &str) -> &'n [Node] {
        match &node.value {
            Value::Seq(items) => items,
            Value::Scalar { .. } => std::slice::from_ref(node),
            Value::Null => &[],
            Value::Map(_) => {
                self.err(
                    Code::IntakeWrongType,
                    node.pos,
                    format!("{what} must be a list, found a mapping"),
                    "write it as `[a, b]` or `- item` lines",
                );
                &[]
            }
        }
    }

    fn list<'n>(&mut self, node: &'n Node, what: &str) -> &'n [Node] {
        match &node.value {
            Value::Seq(items) => items,
            Value::Null => &[],
            _ => {
                self.err(
                    Code::IntakeWrongType,
                    node.pos,
                    format!("{what} must be a list, found {}", node.kind_name()),
                    "write each rule as a `- id: …` item",
                );
                &[]
            }
        }
    }

    fn choice<T: Copy>(&mut self, node: &Node, what: &str, options: &[(&str, T)]) -> Option<T> {
        let s = self.text(node, what)?;
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == s) {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        self.err(
            Code::IntakeInvalidValue,
            node.pos,
            format!("{what} `{s}` is not one of {}", names.join(", ")),
            crate::diag::suggest(&s, &names),
        );
        None
    }

    fn years(&mut self, node: &Node, what: &str) -> Option<u32> {
        let s = self.text(node, what)?;
        match s.trim().parse::<u32>() {
            Ok(v) if v <= 150 => Some(v),
            _ => {
                self.err(
                    Code::IntakeInvalidValue,
                    node.pos,
                    format!("{what} `{s}` is not a number of years"),
                    "write whole years from 0 to 150",
                );
                None
            }
        }
    }

    fn patterns(&mut self, node: &Node, what: &str) -> Vec<IcdPattern> {
        let mut out = Vec::new();
        for item in self.items(node, what) {
            let Some(s) = self.text(item, "an ICD-10 pattern") else {
                continue;
            };
            match IcdPattern::parse(&s) {
                Some(p) => out.push(p),
                None => self.err(
                    Code::IntakeBadPattern,
                    item.pos,
                    format!("`{s}` is not an ICD-10 code pattern"),
                    "write a code (`I63`, `I63.9`), a category with its subdivisions (`I63.*`) or a range of codes of one length (`I60-I69`)",
                ),
            }
        }
        out
    }

    fn matchers(&mut self, f: &Fields<'_>, what: &str) -> Matchers {
        let mut m = Matchers::default();
        if let Some(n) = Self::opt(f, "department") {
            for item in self.items(n, "`department`") {
                if let Some(s) = self.text(item, "a department") {
                    m.department.push(s.trim().to_string());
                }
            }
        }
        if let Some(n) = Self::opt(f, "principal_diagnosis") {
            m.principal_diagnosis = self.patterns(n, "`principal_diagnosis`");
        }
        if let Some(n) = Self::opt(f, "any_diagnosis") {
            m.any_diagnosis = self.patterns(n, "`any_diagnosis`");
        }
        if let Some(n) = Self::opt(f, "class") {
            for item in self.items(n, "`class`") {
                if let Some(c) = self.choice(item, "class", Class::ALL)
                    && !m.class.contains(&c)
                {
                    m.class.push(c);
                }
            }
        }
        if let Some(n) = Self::opt(f, "age")
            && let Some(af) = self.fields(n, &format!("`age` in {what}"), AGE_KEYS)
        {
            let min = Self::opt(&af, "min").and_then(|v| self.years(v, "`age.min`"));
            let max = Self::opt(&af, "max").and_then(|v| self.years(v, "`age.max`"));
            match (min, max) {
                (None, None) if !af.contains_key("min") && !af.contains_key("max") => self.err(
                    Code::IntakeInvalidValue,
                    n.pos,
                    "`age` gives neither `min` nor `max`",
                    "write `age: { min: 18 }`, `age: { max: 17 }` or both (whole years, inclusive)",
                ),
                (Some(lo), Some(hi)) if lo > hi => self.err(
                    Code::IntakeInvalidValue,
                    n.pos,
                    format!("`age` range is empty: min {lo} is above max {hi}"),
                    "both ends are inclusive",
                ),
                (None, None) => {}
                range => m.age = Some(range),
            }
        }
        if let Some(n) = Self::opt(f, "sex") {
            m.sex = self.choice(n, "sex", &[("female", Sex::Female), ("male", Sex::Male)]);
        }
        if let Some(n) = Self::opt(f, "enrolled_in") {
            for item in self.items(n, "`enrolled_in`") {
                if let Some(p) = self.ident(item, "a pathway id") {
                    m.enrolled_in.push(p);
                }
            }
        }
        m
    }

    fn rule(&mut self, node: &Node) -> Option<IntakeRule> {
        let f = self.fields(node, "a rule", RULE_KEYS)?;
        let id = self
            .req(&f, "id", node, "a rule")
            .and_then(|n| self.ident(n, "rule id"));
        let what = format!("rule `{}`", id.as_deref().unwrap_or("?"));
        let when = self
            .req(&f, "when", node, &what)
            .and_then(|n| self.ident(n, "the trigger `when`"));
        let title = Self::opt(&f, "title").and_then(|n| self.text(n, "`title`"));
        let matchers = self.matchers(&f, &what);
        let exclude = match Self::opt(&f, "exclude") {
            Some(n) => match self.fields(n, &format!("`exclude` in {what}"), MATCHER_KEYS) {
                Some(ef) => {
                    let m = self.matchers(&ef, &what);
                    if m.is_empty() && ef.is_empty() {
                        self.err(
                            Code::IntakeInvalidValue,
                            n.pos,
                            format!("`exclude` in {what} names nothing"),
                            format!("give one or more of: {}", MATCHER_KEYS.join(", ")),
                        );
                    }
                    m
                }
                None => Matchers::default(),
            },
            None => Matchers::default(),
        };
        let mut target_pos = TargetPos::default();
        let target = self.req(&f, "enrol", node, &what).and_then(|n| {
            let ef = self.fields(n, &format!("`enrol` in {what}"), ENROL_KEYS)?;
            let pathway = self.req(&ef, "pathway", n, "`enrol`");
            let entry = self.req(&ef, "entry", n, "`enrol`");
            let pathway = pathway.and_then(|p| {
                target_pos.pathway = p.pos;
                self.ident(p, "pathway id")
            });
            let entry = entry.and_then(|e| {
                target_pos.entry = e.pos;
                self.ident(e, "entry point")
            });
            Some((pathway?, entry?))
        });
        let mode = match Self::opt(&f, "mode") {
            Some(n) => self.choice(n, "mode", &[("auto", Mode::Auto), ("review", Mode::Review)]),
            None => {
                self.err(
                    Code::IntakeMissingKey,
                    node.pos,
                    format!("{what} is missing `mode`"),
                    "add `mode: auto` to enrol at once or `mode: review` to queue the case for a case manager",
                );
                None
            }
        };
        let (pathway, entry) = target?;
        Some(IntakeRule {
            id: id?,
            title,
            when: when?,
            matchers,
            exclude,
            pathway,
            entry,
            mode: mode?,
            file: self.file.to_string(),
            pos: node.pos,
            target_pos,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> KnownPathways {
        let mut k = KnownPathways::new();
        k.insert("stroke".into(), ["admission".to_string()].into());
        k.insert(
            "pregnancy".into(),
            ["whole", "mid", "late"].map(String::from).into(),
        );
        k
    }

    fn rules(src: &str) -> Vec<IntakeRule> {
        let f = parse("t.yaml", src.as_bytes());
        assert!(f.diagnostics.is_empty(), "{:?}", f.diagnostics);
        let d = check_set(std::slice::from_ref(&f), &known());
        assert!(d.is_empty(), "{d:?}");
        f.rules
    }

    fn codes(src: &str) -> Vec<(String, u32, u32)> {
        let f = parse("t.yaml", src.as_bytes());
        let mut d = f.diagnostics.clone();
        d.extend(check_set(std::slice::from_ref(&f), &known()));
        d.iter()
            .map(|d| (d.code.as_str().to_string(), d.pos.line, d.pos.col))
            .collect()
    }

    const STROKE: &str = "intake:
  - id: stroke_discharge
    when: discharged
    department: [Neurology, 神经内科]
    principal_diagnosis: [I63.*, I61]
    class: inpatient
    age: { min: 18 }
    exclude:
      any_diagnosis: [Z51.5, R95-R99]
    enrol: { pathway: stroke, entry: admission }
    mode: auto
";

    fn discharge(code: &str) -> IntakeInput {
        IntakeInput {
            trigger: "discharged".into(),
            department: Some(" neurology ".into()),
            class: Some(Class::Inpatient),
            diagnoses: vec![IntakeDiagnosis {
                code: code.into(),
                principal: true,
            }],
            age: Some(70),
            sex: Some(Sex::Female),
            active_pathways: vec![],
        }
    }

    #[test]
    fn icd_patterns_read_and_match() {
        let p = IcdPattern::parse("I63.*").unwrap();
        assert!(p.matches("I63.9") && p.matches("i63") && p.matches("I63.900x001"));
        assert!(!p.matches("I64") && !p.matches("I6"));
        let exact = IcdPattern::parse("Z51.5").unwrap();
        assert!(exact.matches("Z51.5") && exact.matches("Z51.500"));
        assert!(!exact.matches("Z51.1"));
        let r = IcdPattern::parse("I60-I69").unwrap();
        assert!(r.matches("I60.0") && r.matches("I69.8") && r.matches("I63"));
        assert!(!r.matches("I70") && !r.matches("I59.9") && !r.matches("I"));
        let sub = IcdPattern::parse("C50.1-C50.4").unwrap();
        assert!(sub.matches("C50.2") && !sub.matches("C50.5") && !sub.matches("C50"));
        for bad in [
            "I6",
            "I63.",
            "63.1",
            "I63.12345",
            "I69-I60",
            "I63-I64.1",
            "I6.*",
            "*",
            "",
        ] {
            assert_eq!(IcdPattern::parse(bad), None, "{bad}");
        }
        assert!(IcdPattern::parse("C4A.1").is_some());
    }

    #[test]
    fn a_neurology_stroke_discharge_enrols() {
        let r = rules(STROKE);
        let d = decide(&r, &discharge("I63.9"));
        assert_eq!(
            d,
            vec![IntakeDecision {
                rule: "stroke_discharge".into(),
                pathway: "stroke".into(),
                entry: "admission".into(),
                mode: Mode::Auto
            }]
        );
    }

    #[test]
    fn each_matcher_can_refuse() {
        let r = rules(STROKE);
        let mut i = discharge("I63.9");
        i.trigger = "admitted".into();
        assert!(decide(&r, &i).is_empty(), "trigger");
        let mut i = discharge("I50.9");
        assert!(decide(&r, &i).is_empty(), "principal");
        i.diagnoses.push(IntakeDiagnosis {
            code: "I63.9".into(),
            principal: false,
        });
        assert!(
            decide(&r, &i).is_empty(),
            "secondary stroke is not principal"
        );
        let mut i = discharge("I63.9");
        i.department = Some("Cardiology".into());
        assert!(decide(&r, &i).is_empty(), "department");
        i.department = None;
        assert!(decide(&r, &i).is_empty(), "no department");
        let mut i = discharge("I63.9");
        i.class = Some(Class::Emergency);
        assert!(decide(&r, &i).is_empty(), "class");
        let mut i = discharge("I63.9");
        i.age = Some(17);
        assert!(decide(&r, &i).is_empty(), "age");
        i.age = None;
        assert!(
            decide(&r, &i).is_empty(),
            "unknown age does not match a range"
        );
        let mut i = discharge("I61.0");
        i.department = Some("神经内科".into());
        assert_eq!(
            decide(&r, &i).len(),
            1,
            "second pattern, Chinese department"
        );
    }

    #[test]
    fn exclusions_and_active_enrolments_keep_patients_out() {
        let r = rules(STROKE);
        let mut i = discharge("I63.9");
        i.diagnoses.push(IntakeDiagnosis {
            code: "Z51.5".into(),
            principal: false,
        });
        assert!(decide(&r, &i).is_empty(), "palliative care");
        let mut i = discharge("I63.9");
        i.diagnoses.push(IntakeDiagnosis {
            code: "R96.0".into(),
            principal: false,
        });
        assert!(decide(&r, &i).is_empty(), "death");
        let mut i = discharge("I63.9");
        i.active_pathways = vec!["stroke".into()];
        assert!(decide(&r, &i).is_empty(), "already enrolled");
        i.active_pathways = vec!["pregnancy".into()];
        assert_eq!(decide(&r, &i).len(), 1, "another pathway does not matter");
    }

    #[test]
    fn an_unknown_fact_excludes_no_one_and_one_rule_decides_a_pathway() {
        let r = rules(
            "intake:
  - id: adults_review
    when: discharged
    exclude: { age: { max: 17 }, sex: male }
    enrol: { pathway: stroke, entry: admission }
    mode: review
  - id: everyone
    when: discharged
    enrol: { pathway: stroke, entry: admission }
    mode: auto
",
        );
        let mut i = discharge("A00");
        i.age = None;
        i.sex = None;
        let d = decide(&r, &i);
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].rule.as_str(), d[0].mode),
            ("adults_review", Mode::Review)
        );
        i.age = Some(12);
        let d = decide(&r, &i);
        assert_eq!(
            d[0].rule, "everyone",
            "a child falls through to the next rule"
        );
    }

    #[test]
    fn enrolled_in_matches_active_pathways() {
        let r = rules(
            "intake:
  - id: postpartum_mood
    when: mood_screen_positive
    enrolled_in: pregnancy
    enrol: { pathway: stroke, entry: admission }
    mode: review
",
        );
        let mut i = IntakeInput {
            trigger: "mood_screen_positive".into(),
            ..Default::default()
        };
        assert!(decide(&r, &i).is_empty());
        i.active_pathways = vec!["pregnancy".into()];
        assert_eq!(decide(&r, &i).len(), 1);
    }

    #[test]
    fn shape_problems_are_located_with_their_codes() {
        let src = "intake:
  - id: a
    when: discharged
    departmnet: [x]
    principal_diagnosis: [I63.*, X1]
    class: [inpatient, ward]
    age: { min: 70, max: 18 }
    enrol: { pathway: strok, entry: admision }
    mode: sometimes
  - id: a
    when: discharged
    enrol: { pathway: pregnancy, entry: early }
    mode: auto
  - when: admitted
    enrol: { pathway: stroke }
    mode: auto
";
        assert_eq!(
            codes(src),
            vec![
                ("I002".into(), 4, 5),
                ("I005".into(), 5, 34),
                ("I008".into(), 6, 24),
                ("I008".into(), 7, 10),
                ("I008".into(), 9, 11),
                ("I004".into(), 10, 5),
                ("I003".into(), 14, 5),
                ("I003".into(), 15, 12),
            ]
        );
        let f = parse("t.yaml", src.as_bytes());
        let unknown = &f.diagnostics[0];
        assert!(
            unknown.hint.contains("did you mean `department`"),
            "{}",
            unknown.hint
        );
        assert!(
            unknown.hint.contains("principal_diagnosis"),
            "{}",
            unknown.hint
        );
    }

    #[test]
    fn targets_are_checked_against_the_pathways() {
        let src = "intake:
  - id: a
    when: discharged
    enrol: { pathway: strok, entry: admission }
    mode: auto
  - id: b
    when: registered
    enrol: { pathway: pregnancy, entry: early }
    mode: review
";
        assert_eq!(
            codes(src),
            vec![("I006".into(), 4, 23), ("I007".into(), 8, 41)]
        );
        let f = parse("t.yaml", src.as_bytes());
        let d = check_set(std::slice::from_ref(&f), &known());
        assert!(d[0].hint.contains("did you mean `stroke`"), "{}", d[0].hint);
        assert!(d[1].hint.contains("whole"), "{}", d[1].hint);
    }

    #[test]
    fn a_rule_id_twice_across_files_is_reported_where_it_repeats() {
        let one = parse(
            "one.yaml",
            b"intake:\n  - { id: a, when: discharged, enrol: { pathway: stroke, entry: admission }, mode: auto }\n",
        );
        let two = parse(
            "two.yaml",
            b"intake:\n  - { id: a, when: admitted, enrol: { pathway: stroke, entry: admission }, mode: auto }\n",
        );
        let d = check_set(&[one, two], &known());
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            (d[0].file.as_str(), d[0].code.as_str()),
            ("two.yaml", "I004")
        );
        assert!(d[0].message.contains("one.yaml:2"), "{}", d[0].message);
    }

    #[test]
    fn encounters_fire_their_triggers() {
        let preg = [IntakeDiagnosis {
            code: "Z34.0".into(),
            principal: true,
        }];
        assert_eq!(
            encounter_triggers(false, false, true, &preg),
            vec!["registered", "pregnancy_registered"]
        );
        assert_eq!(
            encounter_triggers(false, false, false, &preg),
            Vec::<&str>::new(),
            "a resent visit registers nothing"
        );
        assert_eq!(
            encounter_triggers(true, true, false, &[]),
            vec!["admitted", "discharged"]
        );
    }

    #[test]
    fn a_file_without_intake_or_with_a_bad_list_says_so() {
        assert_eq!(codes("intake: 3\n"), vec![("I001".into(), 1, 9)]);
        assert_eq!(codes("intake:\n  - 3\n"), vec![("I001".into(), 2, 5)]);
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    const WORDS: &[&str] = &[
        "intake",
        "id",
        "title",
        "when",
        "department",
        "principal_diagnosis",
        "any_diagnosis",
        "class",
        "age",
        "min",
        "max",
        "sex",
        "enrolled_in",
        "exclude",
        "enrol",
        "pathway",
        "entry",
        "mode",
        "auto",
        "review",
        "discharged",
        "I63.*",
        "I60-I69",
        "Z51.5",
        "C50",
        "stroke",
        "admission",
        "female",
        "inpatient",
        "-",
        ":",
        "[",
        "]",
        "{",
        "}",
        ",",
        "\n",
        "  ",
        "&a",
        "*a",
        "!!str",
        "'",
        "\"",
        "#",
        "神经内科",
        "0",
        "-1",
        "999999999999",
    ];

    fn located(f: &IntakeFile) -> Result<(), TestCaseError> {
        for d in &f.diagnostics {
            prop_assert!(d.pos.line >= 1 && d.pos.col >= 1, "{}", d);
            prop_assert_eq!(d.file.as_str(), "p.yaml");
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(crate::props_test::config())]

        #[test]
        fn arbitrary_bytes_never_panic_the_intake_reader(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let f = parse("p.yaml", &bytes);
            located(&f)?;
            let _ = check_set(std::slice::from_ref(&f), &KnownPathways::new());
        }

        #[test]
        fn rule_shaped_text_never_panics_the_intake_reader(
            words in proptest::collection::vec(proptest::sample::select(WORDS), 0..120)
        ) {
            let text = format!("intake:\n  - {}", words.join(" "));
            let f = parse("p.yaml", text.as_bytes());
            located(&f)?;
            let input = IntakeInput { trigger: "discharged".into(), ..Default::default() };
            let _ = decide(&f.rules, &input);
        }

        #[test]
        fn any_pattern_text_is_read_or_refused_without_panic(s in "\\PC{0,12}", code in "\\PC{0,12}") {
            if let Some(p) = IcdPattern::parse(&s) {
                let _ = p.matches(&code);
            }
        }
    }
}
