//! Lowering the positioned YAML tree into the model, collecting every problem on the way.
//!
//! Each reader takes a node, reports what is wrong with it, and returns what it could make of it;
//! lowering goes on after a problem so the author sees every diagnostic in one run. What can only be
//! checked once the whole pathway is known (names of states, roles, variables; the graph) is recorded
//! with its location in a `SourceMap` and checked afterwards by `check`.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use crate::catalog;
use crate::diag::{Code, Diagnostic, Pos, suggest};
use crate::expr::{Purpose, Site};
use crate::model::*;
use crate::yaml::{Node, Value};

/// A location: file and position.
#[derive(Debug, Clone, PartialEq)]
pub struct Loc {
    pub file: String,
    pub pos: Pos,
}

/// An expression waiting to be checked once the variables are known.
#[derive(Debug, Clone)]
pub struct PendingExpr {
    pub src: String,
    pub purpose: Purpose,
    pub site: Site,
}

/// Where things came from, for the checks that run after lowering.
#[derive(Debug, Default, Clone)]
pub struct SourceMap {
    pub states: Vec<Loc>,
    /// Per state, per transition: where its `to` was written.
    pub transitions: Vec<Vec<Loc>>,
    pub entry_points: Vec<Loc>,
    /// Per entry point: where its `id` was written.
    pub entry_point_ids: Vec<Loc>,
    pub roles: Vec<(String, Loc)>,
    pub declared_roles: Vec<(String, Loc)>,
    pub action_ids: Vec<(String, Loc)>,
    /// The action ids `cancel` actions name: (id, location).
    pub cancels: Vec<(String, Loc)>,
    pub variables: Vec<Loc>,
    /// Per declared event (aligned with `Pathway::events`): where its name was written.
    pub declared_events: Vec<Loc>,
    /// Events transitions wait for (`on:`), schedules end at (`until: { event }`) and times count
    /// from (`from:`), as written, with where.
    pub event_uses: Vec<(String, Loc)>,
    pub exprs: Vec<PendingExpr>,
    /// Assignments to variables by `set` actions: (variable, location).
    pub assignments: Vec<(String, Loc)>,
    /// Indicator numerators and denominators as written, checked once the pathway is known.
    pub counters: Vec<(String, Loc)>,
    /// Indicator ids, for the duplicate check.
    pub indicator_ids: Vec<(String, Loc)>,
    pub root: Option<Loc>,
}

/// Reads fragment files named by `include`.
pub trait Loader {
    fn load(&self, path: &Path) -> Result<Vec<u8>, String>;
}

/// The largest fragment file a loader reads, in bytes (the largest pathway file the parser takes).
pub fn max_fragment_bytes() -> u64 {
    crate::yaml::Budget::default().max_bytes as u64
}

/// Loads from the file system, any regular file (the compiler still refuses fragment paths that
/// are absolute or climb with `..`). For trusted callers only; an uploaded pathway must be compiled
/// with a [`RootedLoader`].
pub struct FsLoader;

impl Loader for FsLoader {
    fn load(&self, path: &Path) -> Result<Vec<u8>, String> {
        let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
        if !meta.is_file() {
            return Err("not a regular file".into());
        }
        read_capped(path, max_fragment_bytes())
    }
}

/// Loads only regular files inside one folder (the root), judged after resolving `..` and symbolic
/// links; everything else is refused with one message, so a refusal does not tell whether a path
/// outside the root exists. Files are size-capped before and while reading, and nothing but a
/// regular file is ever opened (a FIFO or a device would block or never end).
#[derive(Debug, Clone)]
pub struct RootedLoader {
    root: PathBuf,
    max_bytes: u64,
}

/// The refusal of a fragment that is missing, outside the root, or not a file one may include.
pub const NOT_IN_ROOT: &str = "no such fragment file inside the pathway folder";

impl RootedLoader {
    /// A loader confined to `root`; the root is resolved at each load, so it may be relative to the
    /// working directory and need not exist yet (then every load is refused).
    pub fn new(root: impl Into<PathBuf>) -> RootedLoader {
        RootedLoader {
            root: root.into(),
            max_bytes: max_fragment_bytes(),
        }
    }

    /// The same loader with another size cap.
    pub fn with_max_bytes(mut self, max_bytes: u64) -> RootedLoader {
        self.max_bytes = max_bytes;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The resolved path of `path` if it names a regular file inside the root.
    fn resolve(&self, path: &Path) -> Result<PathBuf, String> {
        let refuse = || NOT_IN_ROOT.to_string();
        let here = Path::new(".");
        let given = if self.root.as_os_str().is_empty() {
            here
        } else {
            &self.root
        };
        let root = std::fs::canonicalize(given).map_err(|_| refuse())?;
        // A path is joined onto the root only when it is relative and free of `..`; an absolute
        // path or one climbing out is refused before the file system is asked anything about it.
        let rel = match path.strip_prefix(&self.root) {
            Ok(rel) => rel,
            Err(_) => path.strip_prefix(&root).map_err(|_| refuse())?,
        };
        if rel.as_os_str().is_empty()
            || !rel.components().all(|c| {
                matches!(
                    c,
                    std::path::Component::Normal(_) | std::path::Component::CurDir
                )
            })
        {
            return Err(refuse());
        }
        let full = std::fs::canonicalize(root.join(rel)).map_err(|_| refuse())?;
        if !full.starts_with(&root) {
            return Err(refuse());
        }
        // Canonical, so no symbolic link is left to follow: the metadata is the file's own.
        let meta = std::fs::symlink_metadata(&full).map_err(|_| refuse())?;
        if !meta.is_file() {
            return Err("not a regular file; a fragment must be a YAML file".into());
        }
        if meta.len() > self.max_bytes {
            return Err(too_large(meta.len()));
        }
        Ok(full)
    }
}

impl Loader for RootedLoader {
    fn load(&self, path: &Path) -> Result<Vec<u8>, String> {
        let full = self.resolve(path)?;
        read_capped(&full, self.max_bytes)
    }
}

fn too_large(len: u64) -> String {
    format!("file is {len} bytes, larger than a pathway file may be")
}

/// Reads a regular file of at most `cap` bytes: the opened file is checked again (it may have been
/// replaced since it was looked at) and read no further than one byte past the cap.
fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let file = open_nonblocking(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file; a fragment must be a YAML file".into());
    }
    if meta.len() > cap {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > cap {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Opens for reading without waiting: on Unix with `O_NONBLOCK`, so a FIFO swapped in after the
/// file type was checked cannot hold the caller (the flag does not change reading a regular file).
fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.custom_flags(libc::O_NONBLOCK);
    }
    opts.open(path)
}

pub(crate) struct Lowerer<'a> {
    pub file: String,
    pub diags: &'a mut Vec<Diagnostic>,
    pub map: SourceMap,
    pub loader: &'a dyn Loader,
    pub base_dir: PathBuf,
    /// State-id prefix and exit mapping while lowering a fragment.
    fragment: Option<FragmentCtx>,
    depth: usize,
    /// Whether expressions sit in the file where their node is (YAML), so diagnostics inside them
    /// can be placed exactly; false while lowering a Rhai pathway's result.
    pub exact_exprs: bool,
}

/// Whether a task's `due` may be written in working days: a pathway's own tasks may, an alarm's
/// task may not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    MayCountWorkingDays,
    Elapsed,
}

#[derive(Clone)]
struct FragmentCtx {
    prefix: String,
    exits: HashMap<String, String>,
    declared_exits: Vec<String>,
}

use crate::fields::Fields;

const PATHWAY_KEYS: &[&str] = &[
    "pathway",
    "version",
    "title",
    "description",
    "disease",
    "owner_role",
    "roles",
    "variables",
    "events",
    "entry_points",
    "include",
    "states",
    "schedules",
    "goals",
    "indicators",
];
const STATE_KEYS: &[&str] = &[
    "id",
    "phase",
    "title",
    "terminal",
    "keep_open_tasks",
    "on_enter",
    "transitions",
    "schedules",
];
const SCHEDULE_KEYS: &[&str] = &[
    "id",
    "first",
    "every",
    "until",
    "count",
    "missed",
    "grace",
    "working_days",
    "actions",
];
/// Actions a schedule's occurrence may make: work and records, not state changes.
const OCCURRENCE_ACTIONS: &[&str] = &["task", "follow_up", "scale", "note", "risk"];
const TRANSITION_KEYS: &[&str] = &["to", "on", "after", "at", "from", "when", "label"];
/// Words Rhai reserves, which therefore cannot name a variable.
const RESERVED: &[&str] = &[
    "as",
    "async",
    "await",
    "begin",
    "break",
    "call",
    "case",
    "catch",
    "const",
    "continue",
    "curry",
    "debug",
    "default",
    "do",
    "else",
    "end",
    "enum",
    "eval",
    "exit",
    "export",
    "false",
    "fn",
    "for",
    "global",
    "go",
    "goto",
    "if",
    "import",
    "in",
    "include",
    "is",
    "let",
    "loop",
    "match",
    "module",
    "new",
    "nil",
    "null",
    "package",
    "print",
    "private",
    "protected",
    "public",
    "return",
    "shared",
    "spawn",
    "static",
    "struct",
    "super",
    "switch",
    "sync",
    "this",
    "thread",
    "throw",
    "true",
    "try",
    "type",
    "type_of",
    "until",
    "use",
    "var",
    "void",
    "while",
    "with",
    "yield",
];
const ACTION_KINDS: &[&str] = &[
    "task",
    "follow_up",
    "scale",
    "risk",
    "alarm",
    "referral",
    "goal",
    "note",
    "set",
    "cancel",
];

/// Where a referral may be addressed: a kind of institution, or (`None`) the patient's own
/// community institution.
const REFERRAL_TARGETS: [(&str, Option<InstitutionKind>); 5] = [
    ("lead_hospital", Some(InstitutionKind::LeadHospital)),
    ("community_clinic", Some(InstitutionKind::CommunityClinic)),
    ("township_hospital", Some(InstitutionKind::TownshipHospital)),
    (
        "specialist_hospital",
        Some(InstitutionKind::SpecialistHospital),
    ),
    ("own_community", None),
];

impl<'a> Lowerer<'a> {
    pub(crate) fn new(
        file: &str,
        base_dir: PathBuf,
        loader: &'a dyn Loader,
        diags: &'a mut Vec<Diagnostic>,
    ) -> Self {
        Lowerer {
            file: file.to_string(),
            diags,
            map: SourceMap::default(),
            loader,
            base_dir,
            fragment: None,
            depth: 0,
            exact_exprs: true,
        }
    }

    fn loc(&self, pos: Pos) -> Loc {
        Loc {
            file: self.file.clone(),
            pos,
        }
    }

    fn err(&mut self, code: Code, pos: Pos, message: impl Into<String>, hint: impl Into<String>) {
        self.diags
            .push(Diagnostic::error(code, &self.file, pos, message, hint));
    }

    // ---- generic readers -------------------------------------------------------------------

    /// Reads a mapping, reporting duplicate, non-text and unknown keys.
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
            file: &self.file,
            diags: self.diags,
            codes: &crate::fields::PATHWAY,
        }
    }

    fn opt<'n>(f: &Fields<'n>, key: &str) -> Option<&'n Node> {
        f.get(key)
            .map(|(_, v)| *v)
            .filter(|v| !matches!(v.value, Value::Null))
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Scalar { text, .. } => Some(text.clone()),
            _ => {
                self.err(
                    Code::WrongType,
                    node.pos,
                    format!("{what} must be text, found {}", node.kind_name()),
                    "",
                );
                None
            }
        }
    }

    fn ident(&mut self, node: &Node, what: &str) -> Option<String> {
        let s = self.string(node, what)?;
        if !crate::fields::is_ident(&s) {
            self.err(
                Code::InvalidValue,
                node.pos,
                format!("{what} `{s}` is not a valid id"),
                crate::fields::IDENT_HINT,
            );
            return None;
        }
        Some(s)
    }

    /// An indicator counter, kept as text; `check` parses it once the goals, states and tasks it
    /// may name are known.
    fn counter(&mut self, node: &Node, what: &str) -> Option<String> {
        let s = self.string(node, what)?;
        self.map.counters.push((s.clone(), self.loc(node.pos)));
        Some(s)
    }

    /// An event the pathway waits for or counts from (a transition's `on:`, a schedule's `until`,
    /// an anchor's `from`), recorded with where it is written: `check` says whether the pathway
    /// has such an event.
    fn event_ref(&mut self, node: &Node) -> Option<String> {
        let e = self.event_name(node)?;
        self.map.event_uses.push((e.clone(), self.loc(node.pos)));
        Some(e)
    }

    /// An event name as written, checked for its spelling only.
    fn event_name(&mut self, node: &Node) -> Option<String> {
        let s = self.string(node, "an event")?;
        if !catalog::is_event_name(&s) {
            self.err(
                Code::InvalidValue,
                node.pos,
                format!("`{s}` is not a valid event name"),
                "events are lower case, e.g. `discharged` or `task_done:day7_call`",
            );
            return None;
        }
        Some(s)
    }

    /// The pathway's own events: each a name, or `{ name, description }`.
    fn events(&mut self, node: &Node) -> Vec<EventDecl> {
        let mut out: Vec<EventDecl> = Vec::new();
        for item in self.list(node, "events") {
            let (name_node, description) = match &item.value {
                Value::Map(_) => {
                    let Some(f) = self.fields(item, "an event", &["name", "description"]) else {
                        continue;
                    };
                    let description =
                        Self::opt(&f, "description").and_then(|n| self.string(n, "description"));
                    let Some(n) = self.req(&f, "name", item, "the event") else {
                        continue;
                    };
                    (n, description)
                }
                _ => (item, None),
            };
            let Some(name) = self.event_name(name_node) else {
                continue;
            };
            let head = name.split_once(':').map_or(name.as_str(), |(h, _)| h);
            if let Some(b) = catalog::BUILTIN_EVENTS.iter().find(|b| b.name == head) {
                self.err(
                    Code::InvalidValue,
                    name_node.pos,
                    format!(
                        "`{name}` is a built-in event name (`{}`); it cannot be declared",
                        b.pattern()
                    ),
                    "remove it from `events:`: built-in events need no declaration, and the pathway's own events need a name of their own",
                );
                continue;
            }
            if let Some(first) = out.iter().position(|e| e.name == name) {
                let line = self.map.declared_events[first].pos.line;
                self.err(
                    Code::DuplicateId,
                    name_node.pos,
                    format!("event `{name}` is declared twice"),
                    format!("the first is on line {line}; keep one"),
                );
                continue;
            }
            self.map.declared_events.push(self.loc(name_node.pos));
            out.push(EventDecl { name, description });
        }
        out
    }

    fn choice<T: Copy>(&mut self, node: &Node, what: &str, options: &[(&str, T)]) -> Option<T> {
        let s = self.string(node, what)?;
        match options.iter().find(|(n, _)| *n == s) {
            Some((_, v)) => Some(*v),
            None => {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                self.err(
                    Code::InvalidValue,
                    node.pos,
                    format!("`{s}` is not a valid {what}"),
                    suggest(&s, &names),
                );
                None
            }
        }
    }

    fn uint(&mut self, node: &Node, what: &str) -> Option<u32> {
        let s = self.string(node, what)?;
        match s.parse::<u32>() {
            Ok(v) => Some(v),
            Err(_) => {
                self.err(
                    Code::WrongType,
                    node.pos,
                    format!("{what} must be a whole number, found `{s}`"),
                    "",
                );
                None
            }
        }
    }

    fn float(&mut self, node: &Node, what: &str) -> Option<f64> {
        let s = self.string(node, what)?;
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() => Some(v),
            _ => {
                self.err(
                    Code::WrongType,
                    node.pos,
                    format!("{what} must be a number, found `{s}`"),
                    "",
                );
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        match node.as_str() {
            Some("true") => Some(true),
            Some("false") => Some(false),
            _ => {
                self.err(
                    Code::WrongType,
                    node.pos,
                    format!("{what} must be true or false"),
                    "",
                );
                None
            }
        }
    }

    fn text(&mut self, node: &Node, what: &str) -> Option<Text> {
        if let Value::Scalar { text, .. } = &node.value {
            return Some(Text::both(text));
        }
        let f = self.fields(node, what, &["zh", "en"])?;
        let zh = self
            .req(&f, "zh", node, what)
            .and_then(|n| self.string(n, "zh text"));
        let en = self
            .req(&f, "en", node, what)
            .and_then(|n| self.string(n, "en text"));
        Some(Text { zh: zh?, en: en? })
    }

    fn duration(&mut self, node: &Node) -> Option<Duration> {
        let s = self.string(node, "a duration")?;
        match Duration::parse(&s) {
            Ok(d) => Some(d),
            Err(e) => {
                let hint = if Duration::parse_deadline(&s).is_ok() {
                    "write this one in `m`, `h`, `d` or `w`"
                } else {
                    "durations are written `30m`, `24h`, `7d` or `6w`"
                };
                self.err(Code::BadDuration, node.pos, e, hint);
                None
            }
        }
    }

    /// An alarm's task is raised when a reading arrives, outside the step and its calendar of
    /// working days, so its due time is elapsed or calendar time.
    fn alarm_task_due(&mut self, node: &Node) -> Option<Duration> {
        if let Some(s) = node.as_str()
            && Duration::parse_deadline(s).is_ok_and(|d| d.in_working_days().is_some())
        {
            self.err(
                Code::BadDuration,
                node.pos,
                format!("an alarm's task cannot be due in working days (`{s}`)"),
                "an alarm raises its task at once, whatever the day: write e.g. `due: 2h`",
            );
            return None;
        }
        self.duration(node)
    }

    /// A task's due time, a follow-up's or a transition's wait: a duration that may also be
    /// written in working days.
    fn deadline(&mut self, node: &Node) -> Option<Duration> {
        let s = self.string(node, "a duration")?;
        match Duration::parse_deadline(&s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(
                    Code::BadDuration,
                    node.pos,
                    e,
                    "durations are written `30m`, `24h`, `7d`, `6w` or `2 working days`",
                );
                None
            }
        }
    }

    fn time_of_day(&mut self, node: &Node) -> Option<LocalTime> {
        let s = self.string(node, "a time of day")?;
        match LocalTime::parse(&s) {
            Ok(t) => Some(t),
            Err(e) => {
                self.err(Code::BadDuration, node.pos, e, "quote it: at: \"09:00\"");
                None
            }
        }
    }

    fn list<'n>(&mut self, node: &'n Node, what: &str) -> &'n [Node] {
        match &node.value {
            Value::Seq(items) => items,
            Value::Null => &[],
            _ => {
                self.err(
                    Code::WrongType,
                    node.pos,
                    format!("{what} must be a list, found {}", node.kind_name()),
                    "write it as `- item` lines or `[a, b]`",
                );
                &[]
            }
        }
    }

    fn expr(&mut self, node: &Node, purpose: Purpose) -> Option<Expr> {
        let src = self.string(node, "an expression")?;
        let quoted = matches!(node.value, Value::Scalar { quoted: true, .. });
        self.map.exprs.push(PendingExpr {
            src: src.clone(),
            purpose,
            site: Site {
                file: self.file.clone(),
                pos: node.pos,
                quoted,
                exact: self.exact_exprs,
            },
        });
        Some(Expr(src))
    }

    fn role_ref(&mut self, node: &Node) -> Option<String> {
        let r = self.string(node, "a role")?;
        self.map.roles.push((r.clone(), self.loc(node.pos)));
        Some(r)
    }

    fn action_id(&mut self, node: &Node) -> Option<String> {
        let id = self.ident(node, "action id")?;
        self.map.action_ids.push((id.clone(), self.loc(node.pos)));
        Some(id)
    }

    // ---- the pathway -----------------------------------------------------------------------

    pub(crate) fn pathway(&mut self, root: &Node) -> Option<Pathway> {
        self.map.root = Some(self.loc(root.pos));
        if !matches!(root.value, Value::Map(_)) {
            self.err(
                Code::Syntax,
                root.pos,
                format!(
                    "a pathway file must be a mapping, found {}",
                    root.kind_name()
                ),
                "start the file with `pathway: <id>`",
            );
            return None;
        }
        let f = self.fields(root, "the pathway", PATHWAY_KEYS)?;
        let id = self
            .req(&f, "pathway", root, "the pathway")
            .and_then(|n| self.ident(n, "pathway id"));
        let version = self
            .req(&f, "version", root, "the pathway")
            .and_then(|n| self.uint(n, "version"));
        if version == Some(0) {
            let pos = f["version"].1.pos;
            self.err(Code::InvalidValue, pos, "version must be 1 or more", "");
        }
        let title = self
            .req(&f, "title", root, "the pathway")
            .and_then(|n| self.text(n, "title"));
        let description = Self::opt(&f, "description").and_then(|n| self.string(n, "description"));
        let disease = Self::opt(&f, "disease").and_then(|n| self.string(n, "disease"));
        let owner_role = self
            .req(&f, "owner_role", root, "the pathway")
            .and_then(|n| self.role_ref(n));
        let mut roles = Vec::new();
        if let Some(n) = self.req(&f, "roles", root, "the pathway") {
            for item in self.list(n, "roles") {
                if let Some(r) = self.string(item, "a role") {
                    self.map
                        .declared_roles
                        .push((r.clone(), self.loc(item.pos)));
                    roles.push(r);
                }
            }
        }
        let variables = Self::opt(&f, "variables")
            .map(|n| self.variables(n))
            .unwrap_or_default();
        let events = Self::opt(&f, "events")
            .map(|n| self.events(n))
            .unwrap_or_default();
        let mut entry_points = Vec::new();
        if let Some(n) = self.req(&f, "entry_points", root, "the pathway") {
            for item in self.list(n, "entry_points") {
                if let Some(e) = self.entry_point(item, &variables) {
                    entry_points.push(e);
                }
            }
        }
        let mut states = Vec::new();
        if let Some(n) = self.req(&f, "states", root, "the pathway") {
            for item in self.list(n, "states") {
                if let Some(s) = self.state(item) {
                    states.push(s);
                }
            }
        }
        if let Some(n) = Self::opt(&f, "include") {
            for item in self.list(n, "include") {
                self.include(item, &mut states);
            }
        }
        let mut schedules: Vec<Schedule> = Vec::new();
        if let Some(n) = Self::opt(&f, "schedules") {
            for item in self.list(n, "schedules") {
                if let Some(sc) = self.schedule(item, true) {
                    if schedules.iter().any(|o| o.id == sc.id) {
                        self.err(
                            Code::DuplicateId,
                            item.pos,
                            format!("schedule `{}` is declared twice in the pathway", sc.id),
                            "give each schedule of the enrolment its own id",
                        );
                    }
                    schedules.push(sc);
                }
            }
        }
        let mut goals = Vec::new();
        if let Some(n) = Self::opt(&f, "goals") {
            for item in self.list(n, "goals") {
                if let Some(g) = self.goal(item) {
                    goals.push(g);
                }
            }
        }
        let mut indicators = Vec::new();
        if let Some(n) = Self::opt(&f, "indicators") {
            for item in self.list(n, "indicators") {
                if let Some(i) = self.indicator(item) {
                    indicators.push(i);
                }
            }
        }
        Some(Pathway {
            id: id?,
            version: version?,
            title: title?,
            description,
            disease,
            owner_role: owner_role?,
            roles,
            variables,
            events,
            entry_points,
            states,
            schedules,
            goals,
            indicators,
        })
    }

    fn variables(&mut self, node: &Node) -> Vec<Variable> {
        let Value::Map(entries) = &node.value else {
            self.err(
                Code::WrongType,
                node.pos,
                "variables must be a mapping of name to `{ type, default }`",
                "",
            );
            return Vec::new();
        };
        let mut out: Vec<Variable> = Vec::new();
        for (k, v) in entries {
            let Some(name) = self.ident(k, "variable name") else {
                continue;
            };
            if RESERVED.contains(&name.as_str()) {
                self.err(
                    Code::InvalidValue,
                    k.pos,
                    format!("`{name}` is a reserved word in the guard language"),
                    format!("rename it, e.g. `{name}_kind`"),
                );
                continue;
            }
            if out.iter().any(|x| x.name == name) {
                self.err(
                    Code::DuplicateId,
                    k.pos,
                    format!("variable `{name}` is declared twice"),
                    "",
                );
                continue;
            }
            let Some(f) = self.fields(v, "a variable", &["type", "default", "description"]) else {
                continue;
            };
            let ty = self.req(&f, "type", v, "the variable").and_then(|n| {
                self.choice(
                    n,
                    "variable type",
                    &[
                        ("number", VarType::Number),
                        ("integer", VarType::Integer),
                        ("bool", VarType::Bool),
                        ("text", VarType::Text),
                    ],
                )
            });
            let description =
                Self::opt(&f, "description").and_then(|n| self.string(n, "description"));
            let Some(ty) = ty else { continue };
            let default = match f.get("default").map(|(_, n)| *n) {
                Some(n) => self.constant(n, ty),
                None => Some(match ty {
                    VarType::Number => VarValue::Number(0.0),
                    VarType::Integer => VarValue::Integer(0),
                    VarType::Bool => VarValue::Bool(false),
                    VarType::Text => VarValue::Text(String::new()),
                }),
            };
            let Some(default) = default else { continue };
            self.map.variables.push(self.loc(k.pos));
            out.push(Variable {
                name,
                ty,
                default,
                description,
            });
        }
        out
    }

    fn constant(&mut self, node: &Node, ty: VarType) -> Option<VarValue> {
        let text = match &node.value {
            Value::Scalar { text, .. } => text.clone(),
            Value::Null if ty == VarType::Text => String::new(),
            _ => {
                self.err(
                    Code::WrongType,
                    node.pos,
                    format!("expected a {ty:?} value, found {}", node.kind_name()).to_lowercase(),
                    "",
                );
                return None;
            }
        };
        let quoted = matches!(node.value, Value::Scalar { quoted: true, .. });
        let v = match ty {
            VarType::Number if !quoted => text
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(VarValue::Number),
            VarType::Integer if !quoted => text.parse::<i64>().ok().map(VarValue::Integer),
            VarType::Bool if !quoted => match text.as_str() {
                "true" => Some(VarValue::Bool(true)),
                "false" => Some(VarValue::Bool(false)),
                _ => None,
            },
            VarType::Text => Some(VarValue::Text(text.clone())),
            _ => None,
        };
        if v.is_none() {
            self.err(
                Code::WrongType,
                node.pos,
                format!(
                    "`{text}` is not a {} value",
                    format!("{ty:?}").to_lowercase()
                ),
                "",
            );
        }
        v
    }

    fn entry_point(&mut self, node: &Node, variables: &[Variable]) -> Option<EntryPoint> {
        let f = self.fields(node, "an entry point", &["id", "state", "title", "set"])?;
        let id = self
            .req(&f, "id", node, "the entry point")
            .and_then(|n| self.ident(n, "entry point id"));
        let state = self
            .req(&f, "state", node, "the entry point")
            .and_then(|n| self.string(n, "a state"));
        let state_pos = f.get("state").map(|(_, v)| v.pos).unwrap_or(node.pos);
        let title = Self::opt(&f, "title").and_then(|n| self.text(n, "title"));
        let mut set = Vec::new();
        if let Some(n) = Self::opt(&f, "set") {
            if let Value::Map(entries) = &n.value {
                let mut seen: Vec<&str> = Vec::new();
                for (k, v) in entries {
                    let Some(name) = k.as_str() else { continue };
                    if seen.contains(&name) {
                        self.err(
                            Code::DuplicateKey,
                            k.pos,
                            format!("`{name}` is set twice"),
                            "keep one",
                        );
                        continue;
                    }
                    seen.push(name);
                    match variables.iter().find(|x| x.name == name) {
                        Some(var) => {
                            if let Some(value) = self.constant(v, var.ty) {
                                set.push((name.to_string(), value));
                            }
                        }
                        None => {
                            let names: Vec<&str> =
                                variables.iter().map(|v| v.name.as_str()).collect();
                            self.err(
                                Code::UnknownVariable,
                                k.pos,
                                format!("unknown variable `{name}`"),
                                suggest(name, &names),
                            );
                        }
                    }
                }
            } else {
                self.err(
                    Code::WrongType,
                    n.pos,
                    "`set` must be a mapping of variable to value",
                    "",
                );
            }
        }
        let (id, state) = (id?, state?);
        let id_pos = f.get("id").map(|(_, v)| v.pos).unwrap_or(node.pos);
        self.map.entry_points.push(self.loc(state_pos));
        self.map.entry_point_ids.push(self.loc(id_pos));
        Some(EntryPoint {
            id,
            state,
            title,
            set,
        })
    }

    fn state(&mut self, node: &Node) -> Option<State> {
        let f = self.fields(node, "a state", STATE_KEYS)?;
        let id = self
            .req(&f, "id", node, "the state")
            .and_then(|n| self.ident(n, "state id"));
        // A missing or invalid phase is reported but the state is kept, so its transitions are still
        // checked (and `map.states` stays aligned with the states that are built).
        let phase = self
            .req(&f, "phase", node, "the state")
            .and_then(|n| self.choice(n, "phase", &Phase::ALL))
            .unwrap_or(Phase::FollowUp);
        let title = Self::opt(&f, "title").and_then(|n| self.text(n, "title"));
        let terminal = Self::opt(&f, "terminal")
            .and_then(|n| self.boolean(n, "terminal"))
            .unwrap_or(false);
        let keep_open_tasks = match Self::opt(&f, "keep_open_tasks") {
            Some(n) => {
                let keep = self.boolean(n, "keep_open_tasks").unwrap_or(false);
                if keep && !terminal {
                    self.err(
                        Code::InvalidValue,
                        n.pos,
                        "`keep_open_tasks` applies to a terminal state",
                        "a state that is not terminal ends no enrolment; mark the task `keep: true` to keep it past its state",
                    );
                }
                keep && terminal
            }
            None => false,
        };
        let mut on_enter = Vec::new();
        if let Some(n) = Self::opt(&f, "on_enter") {
            for item in self.list(n, "on_enter") {
                if let Some(a) = self.action(item) {
                    on_enter.push(a);
                }
            }
        }
        let mut schedules: Vec<Schedule> = Vec::new();
        if let Some(n) = Self::opt(&f, "schedules") {
            for item in self.list(n, "schedules") {
                if let Some(sc) = self.schedule(item, false) {
                    if schedules.iter().any(|o| o.id == sc.id) {
                        self.err(
                            Code::DuplicateId,
                            item.pos,
                            format!("schedule `{}` is declared twice in this state", sc.id),
                            "give each schedule of a state its own id",
                        );
                    }
                    schedules.push(sc);
                }
            }
            if terminal && !schedules.is_empty() {
                self.err(
                    Code::InvalidValue,
                    n.pos,
                    "a terminal state cannot have schedules: the enrolment ends when it is entered",
                    "move the schedule to the state before it",
                );
            }
        }
        let mut transitions = Vec::new();
        let mut trans_locs = Vec::new();
        if let Some(n) = Self::opt(&f, "transitions") {
            for item in self.list(n, "transitions") {
                if let Some((t, loc)) = self.transition(item) {
                    transitions.push(t);
                    trans_locs.push(loc);
                }
            }
        }
        let id = id?;
        let id = match &self.fragment {
            Some(ctx) => format!("{}{}", ctx.prefix, id),
            None => id,
        };
        let id_pos = f.get("id").map(|(_, v)| v.pos).unwrap_or(node.pos);
        self.map.states.push(self.loc(id_pos));
        self.map.transitions.push(trans_locs);
        Some(State {
            id,
            phase,
            title,
            terminal,
            keep_open_tasks,
            on_enter,
            transitions,
            schedules,
        })
    }

    /// `state` (the default), `enrolment`, or an event name.
    fn anchor(&mut self, node: &Node) -> Option<Anchor> {
        let s = self.string(node, "an anchor")?;
        match s.as_str() {
            "state" => Some(Anchor::State),
            "enrolment" => Some(Anchor::Enrolment),
            _ => self.event_ref(node).map(Anchor::Event),
        }
    }

    /// A time from an anchor: `{ after: 2d, at: "18:00", from: discharged }`; a plain duration
    /// is `after` from `default`.
    fn time_spec(&mut self, node: &Node, what: &str) -> Option<TimeSpec> {
        self.time_from(node, what, Anchor::State)
    }

    /// A time from an anchor, `default` when none is written.
    fn time_from(&mut self, node: &Node, what: &str, default: Anchor) -> Option<TimeSpec> {
        if let Value::Map(_) = node.value {
            let f = self.fields(node, what, &["after", "at", "from"])?;
            let after = Self::opt(&f, "after")
                .and_then(|n| self.deadline(n))
                .unwrap_or(Duration::ZERO);
            let at = Self::opt(&f, "at").and_then(|n| self.time_of_day(n));
            let from = match Self::opt(&f, "from") {
                Some(n) => self.anchor(n)?,
                None => default.clone(),
            };
            return Some(TimeSpec { after, at, from });
        }
        let after = self.deadline(node)?;
        Some(TimeSpec {
            after,
            at: None,
            from: default,
        })
    }

    /// A schedule of a state, or of the whole enrolment (`enrolment`): its times count from the
    /// state's entry, or from the enrolment's start, unless they name another anchor; an
    /// enrolment's schedule cannot count from a state's entry.
    fn schedule(&mut self, node: &Node, enrolment: bool) -> Option<Schedule> {
        let f = self.fields(node, "a schedule", SCHEDULE_KEYS)?;
        let id = self
            .req(&f, "id", node, "the schedule")
            .and_then(|n| self.ident(n, "schedule id"));
        let default = if enrolment {
            Anchor::Enrolment
        } else {
            Anchor::State
        };
        let from_state = |this: &mut Self, n: &Node, spec: &TimeSpec| {
            if enrolment && spec.from == Anchor::State {
                this.err(
                    Code::InvalidValue,
                    n.pos,
                    "a schedule of the whole enrolment cannot count from a state's entry",
                    "count from `enrolment` or an event, or move the schedule into the state",
                );
            }
        };
        let first = match Self::opt(&f, "first") {
            Some(n) => {
                let spec = self.time_from(n, "the first occurrence", default.clone());
                if let Some(spec) = &spec {
                    from_state(self, n, spec);
                }
                spec
            }
            None => Some(TimeSpec {
                after: Duration::ZERO,
                at: None,
                from: default.clone(),
            }),
        };
        let every = self.req(&f, "every", node, "the schedule").and_then(|n| {
            let d = self.deadline(n)?;
            if d.nominal_seconds() == 0 {
                self.err(
                    Code::BadDuration,
                    n.pos,
                    "a schedule repeats every zero time",
                    "give a period such as `every: 30d`",
                );
                return None;
            }
            Some(d)
        });
        let until = match Self::opt(&f, "until") {
            Some(n) => match &n.value {
                Value::Map(entries) if entries.iter().any(|(k, _)| k.as_str() == Some("event")) => {
                    let u = self.fields(n, "`until`", &["event"])?;
                    Self::opt(&u, "event")
                        .and_then(|e| self.event_ref(e))
                        .map(Until::Event)
                }
                _ => {
                    let spec = self.time_from(n, "`until`", default.clone());
                    if let Some(spec) = &spec {
                        from_state(self, n, spec);
                    }
                    spec.map(Until::At)
                }
            },
            None => None,
        };
        let count = Self::opt(&f, "count").and_then(|n| {
            let c = self.uint(n, "count")?;
            if c == 0 {
                self.err(
                    Code::InvalidValue,
                    n.pos,
                    "a schedule with `count: 0` never occurs",
                    "remove the schedule, or count at least 1",
                );
                return None;
            }
            Some(c)
        });
        let missed = Self::opt(&f, "missed")
            .and_then(|n| self.choice(n, "missed", &Missed::ALL))
            .unwrap_or_default();
        let grace = Self::opt(&f, "grace")
            .and_then(|n| self.duration(n))
            .unwrap_or(Schedule::GRACE);
        let working_days = Self::opt(&f, "working_days")
            .and_then(|n| self.boolean(n, "working_days"))
            .unwrap_or(false);
        let mut actions = Vec::new();
        if let Some(n) = self.req(&f, "actions", node, "the schedule") {
            for item in self.list(n, "actions") {
                if let Value::Map(entries) = &item.value
                    && let [(k, _)] = entries.as_slice()
                    && let Some(kind) = k.as_str()
                    && !OCCURRENCE_ACTIONS.contains(&kind)
                    && ACTION_KINDS.contains(&kind)
                {
                    self.err(
                        Code::InvalidValue,
                        k.pos,
                        format!("a schedule's occurrence cannot make a `{kind}` action"),
                        format!(
                            "an occurrence makes {}; put `{kind}` in `on_enter`",
                            OCCURRENCE_ACTIONS.join(", ")
                        ),
                    );
                    continue;
                }
                if let Some(a) = self.action(item) {
                    actions.push(a);
                }
            }
            if actions.is_empty() && matches!(n.value, Value::Seq(ref v) if v.is_empty()) {
                self.err(
                    Code::MissingKey,
                    n.pos,
                    "a schedule makes at least one action",
                    "e.g. actions: [{ scale: { scale: phq9, due: 3d } }]",
                );
            }
        }
        Some(Schedule {
            id: id?,
            first: first?,
            every: every?,
            until,
            count,
            missed,
            grace,
            working_days,
            actions,
        })
    }

    fn transition(&mut self, node: &Node) -> Option<(Transition, Loc)> {
        let f = self.fields(node, "a transition", TRANSITION_KEYS)?;
        let to_node = self.req(&f, "to", node, "the transition");
        let mut to = to_node.and_then(|n| self.string(n, "a target state"));
        let to_loc = self.loc(to_node.map(|n| n.pos).unwrap_or(node.pos));
        if let (Some(target), Some(ctx)) = (to.clone(), self.fragment.clone()) {
            to = match target.strip_prefix("exit:") {
                Some(exit) if !ctx.declared_exits.iter().any(|e| e == exit) => {
                    self.err(
                        Code::Fragment,
                        to_loc.pos,
                        format!("`{exit}` is not an exit of this fragment"),
                        format!("declared exits: {}", ctx.declared_exits.join(", ")),
                    );
                    None
                }
                Some(exit) => match ctx.exits.get(exit) {
                    Some(mapped) => Some(mapped.clone()),
                    None => Some(target.clone()),
                },
                None => Some(format!("{}{}", ctx.prefix, target)),
            };
        }
        let on = Self::opt(&f, "on").and_then(|n| self.event_ref(n));
        let after = Self::opt(&f, "after").and_then(|n| self.deadline(n));
        let at = Self::opt(&f, "at").and_then(|n| self.time_of_day(n));
        if on.is_some() && (after.is_some() || at.is_some()) {
            self.err(
                Code::InvalidValue,
                node.pos,
                "a transition waits for an event or for time, not both",
                "split it into two transitions",
            );
        }
        let from = Self::opt(&f, "from").and_then(|n| self.anchor(n));
        if from.is_some() && after.is_none() {
            self.err(
                Code::MissingKey,
                node.pos,
                "`from` says what `after` counts from, and there is no `after`",
                "e.g. `after: 365d` with `from: enrolment`",
            );
        }
        let trigger = match (on, after, at) {
            (Some(e), _, _) => Trigger::Event(e),
            (None, Some(after), at) => match from {
                Some(from) if from != Anchor::State => {
                    Trigger::Anchored(TimeSpec { after, at, from })
                }
                _ => Trigger::After { after, at },
            },
            (None, None, Some(at)) => Trigger::At(at),
            // A trigger was written but could not be read (reported above): keep the transition as a
            // waiting one, so it neither shadows the ones after it nor joins an immediate cycle.
            (None, None, None)
                if ["on", "after", "at"]
                    .iter()
                    .any(|k| Self::opt(&f, k).is_some()) =>
            {
                Trigger::After {
                    after: Duration::ZERO,
                    at: None,
                }
            }
            (None, None, None) => Trigger::Immediate,
        };
        let guard = Self::opt(&f, "when").and_then(|n| self.expr(n, Purpose::Guard));
        let label = Self::opt(&f, "label").and_then(|n| self.text(n, "label"));
        Some((
            Transition {
                to: to?,
                trigger,
                guard,
                label,
            },
            to_loc,
        ))
    }

    fn action(&mut self, node: &Node) -> Option<Action> {
        let Value::Map(entries) = &node.value else {
            self.err(
                Code::WrongType,
                node.pos,
                format!(
                    "an action must be a one-key mapping such as `task: {{…}}`, found {}",
                    node.kind_name()
                ),
                format!("action kinds: {}", ACTION_KINDS.join(", ")),
            );
            return None;
        };
        if entries.len() != 1 {
            self.err(
                Code::InvalidValue,
                node.pos,
                format!(
                    "an action has exactly one kind, found {} keys",
                    entries.len()
                ),
                "start each action with its own `- `",
            );
            return None;
        }
        let (k, v) = &entries[0];
        let kind = k.as_str().unwrap_or("");
        match kind {
            "task" => self.task(v, Due::MayCountWorkingDays).map(Action::Task),
            "follow_up" => self.follow_up(v).map(Action::FollowUp),
            "scale" => self.scale_push(v).map(Action::Scale),
            "risk" => self.risk(v).map(Action::Risk),
            "alarm" => self.alarm(v).map(Action::Alarm),
            "referral" => self.referral(v).map(Action::Referral),
            "goal" => self.goal(v).map(Action::Goal),
            "note" => self.text(v, "note").map(Action::Note),
            "set" => self.set(v).map(Action::Set),
            "cancel" => {
                let id = self.ident(v, "the action id to cancel")?;
                self.map.cancels.push((id.clone(), self.loc(v.pos)));
                Some(Action::Cancel(id))
            }
            other => {
                self.err(
                    Code::UnknownKey,
                    k.pos,
                    format!("unknown action `{other}`"),
                    suggest(other, ACTION_KINDS),
                );
                None
            }
        }
    }

    fn task(&mut self, node: &Node, kind: Due) -> Option<TaskSpec> {
        let f = self.fields(
            node,
            "a task",
            &[
                "id",
                "role",
                "title",
                "due",
                "priority",
                "sla",
                "keep",
                "covers_critical",
                "outcomes",
            ],
        )?;
        let id = Self::opt(&f, "id").and_then(|n| self.action_id(n));
        let role = self
            .req(&f, "role", node, "the task")
            .and_then(|n| self.role_ref(n));
        let title = self
            .req(&f, "title", node, "the task")
            .and_then(|n| self.text(n, "title"));
        let due_node = self.req(&f, "due", node, "the task");
        let (due, due_at) = match due_node {
            Some(n) if matches!(n.value, Value::Map(_)) && kind == Due::MayCountWorkingDays => {
                match self.time_spec(n, "a due time") {
                    Some(spec) => (Some(spec.after), Some(spec)),
                    None => (None, None),
                }
            }
            Some(n) => (
                match kind {
                    Due::MayCountWorkingDays => self.deadline(n),
                    Due::Elapsed => self.alarm_task_due(n),
                },
                None,
            ),
            None => (None, None),
        };
        let priority = Self::opt(&f, "priority")
            .and_then(|n| self.choice(n, "priority", &Priority::ALL))
            .unwrap_or(Priority::Normal);
        let keep = Self::opt(&f, "keep")
            .and_then(|n| self.boolean(n, "keep"))
            .unwrap_or(false);
        let sla = match Self::opt(&f, "sla") {
            Some(n) => {
                let s = self.fields(
                    n,
                    "an SLA",
                    &["remind_before", "escalate_after", "escalate_to"],
                )?;
                let remind_before = Self::opt(&s, "remind_before").and_then(|n| self.duration(n));
                let escalate_after = Self::opt(&s, "escalate_after").and_then(|n| self.duration(n));
                let escalate_to = Self::opt(&s, "escalate_to").and_then(|n| self.role_ref(n));
                if escalate_after.is_some() != escalate_to.is_some() {
                    self.err(
                        Code::MissingKey,
                        n.pos,
                        "`escalate_after` and `escalate_to` go together",
                        "say after how long, and to which role",
                    );
                }
                Some(Sla {
                    remind_before,
                    escalate_after,
                    escalate_to,
                })
            }
            None => None,
        };
        let covers_critical = Self::opt(&f, "covers_critical").and_then(|n| {
            let scale = self.scale_name(n)?;
            self.check_covers(n, &scale, priority, role.as_deref(), due);
            Some(scale)
        });
        let outcomes = Self::opt(&f, "outcomes")
            .map(|n| self.outcome_list(n))
            .unwrap_or_default();
        Some(TaskSpec {
            id,
            role: role?,
            title: title?,
            due: due?,
            due_at,
            priority,
            sla,
            keep,
            covers_critical,
            outcomes,
        })
    }

    /// A task's declared outcomes: ids, each once, at least one.
    fn outcome_list(&mut self, n: &Node) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for item in self.list(n, "outcomes") {
            if let Some(o) = self.ident(item, "outcome") {
                if out.contains(&o) {
                    self.err(
                        Code::DuplicateId,
                        item.pos,
                        format!("outcome `{o}` is listed twice"),
                        "list each outcome once",
                    );
                } else {
                    out.push(o);
                }
            }
        }
        if out.is_empty() && matches!(n.value, Value::Seq(_) | Value::Null) {
            self.err(
                Code::InvalidValue,
                n.pos,
                "`outcomes` is empty",
                "list the outcomes staff may record, or remove `outcomes` to accept the default ones",
            );
        }
        out
    }

    /// A task that takes over a scale's critical-item task must answer at least as fast: urgent,
    /// to the rule's role, and due no later than the rule's task would be.
    fn check_covers(
        &mut self,
        n: &Node,
        scale: &str,
        priority: Priority,
        role: Option<&str>,
        due: Option<Duration>,
    ) {
        let rules: Vec<_> = catalog::CRITICAL_RULES
            .iter()
            .filter(|r| r.scale == scale)
            .collect();
        if rules.is_empty() {
            let with: Vec<&str> = catalog::CRITICAL_RULES.iter().map(|r| r.scale).collect();
            self.err(
                Code::InvalidValue,
                n.pos,
                format!("scale `{scale}` has no critical items to cover"),
                format!("scales with critical items: {}", with.join(", ")),
            );
            return;
        }
        if priority != Priority::Urgent {
            self.err(
                Code::InvalidValue,
                n.pos,
                format!("a task that covers `{scale}`'s critical items must be urgent"),
                "add `priority: urgent`: it replaces the scale's own urgent task",
            );
        }
        for r in rules {
            let within = if r.due_minutes % 60 == 0 {
                format!("{}h", r.due_minutes / 60)
            } else {
                format!("{}m", r.due_minutes)
            };
            if let Some(role) = role
                && role != r.role
            {
                self.err(
                    Code::InvalidValue,
                    n.pos,
                    format!(
                        "`{scale}` item {} raises its urgent task for `{}`, but this task goes to `{role}`",
                        r.item, r.role
                    ),
                    format!("give the task to `{}`", r.role),
                );
            }
            if let Some(due) = due
                && due.nominal_seconds() > i64::from(r.due_minutes) * 60
            {
                self.err(
                    Code::InvalidValue,
                    n.pos,
                    format!(
                        "`{scale}` item {} raises its urgent task due within {within}, but this task is due in {due}",
                        r.item
                    ),
                    format!("make it due within {within} or sooner"),
                );
            }
        }
    }

    /// A list of channel names; an unknown one is reported with the nearest known name.
    fn channels(&mut self, n: &Node) -> Vec<Channel> {
        let mut channels = Vec::new();
        for c in self.list(n, "channels") {
            let Some(name) = self.string(c, "a channel") else {
                continue;
            };
            match Channel::ALL.iter().find(|(n, _)| *n == name) {
                Some((_, ch)) => channels.push(*ch),
                None => {
                    let names: Vec<&str> = Channel::ALL.iter().map(|(n, _)| *n).collect();
                    self.err(
                        Code::UnknownChannel,
                        c.pos,
                        format!("unknown channel `{name}`"),
                        suggest(&name, &names),
                    );
                }
            }
        }
        channels
    }

    fn follow_up(&mut self, node: &Node) -> Option<FollowUpSpec> {
        let f = self.fields(
            node,
            "a follow-up",
            &[
                "id", "channels", "template", "after", "at", "from", "urgent",
            ],
        )?;
        let id = Self::opt(&f, "id").and_then(|n| self.action_id(n));
        let mut channels = Vec::new();
        if let Some(n) = self.req(&f, "channels", node, "the follow-up") {
            channels = self.channels(n);
            if channels.is_empty() && matches!(n.value, Value::Seq(ref v) if v.is_empty()) {
                self.err(
                    Code::MissingKey,
                    n.pos,
                    "a follow-up needs at least one channel",
                    "e.g. channels: [wechat, sms]",
                );
            }
        }
        let template = self
            .req(&f, "template", node, "the follow-up")
            .and_then(|n| self.ident(n, "template id"));
        let after = Self::opt(&f, "after")
            .and_then(|n| self.deadline(n))
            .unwrap_or(Duration::ZERO);
        let at = Self::opt(&f, "at").and_then(|n| self.time_of_day(n));
        let from = match Self::opt(&f, "from") {
            Some(n) => self.anchor(n).unwrap_or_default(),
            None => Anchor::State,
        };
        let urgent = Self::opt(&f, "urgent")
            .and_then(|n| self.boolean(n, "urgent"))
            .unwrap_or(false);
        Some(FollowUpSpec {
            id,
            channels,
            template: template?,
            after,
            at,
            from,
            urgent,
        })
    }

    fn scale_name(&mut self, node: &Node) -> Option<String> {
        let s = self.string(node, "a scale")?;
        if !catalog::SCALES.contains(&s.as_str()) {
            self.err(
                Code::UnknownScale,
                node.pos,
                format!("unknown scale `{s}`"),
                suggest(&s, catalog::SCALES),
            );
            return None;
        }
        Some(s)
    }

    fn observation(&mut self, node: &Node) -> Option<String> {
        let s = self.string(node, "an observation kind")?;
        if !catalog::is_observation(&s) {
            self.err(
                Code::UnknownObservation,
                node.pos,
                format!("unknown observation kind `{s}`"),
                suggest(&s, &catalog::observation_names()),
            );
            return None;
        }
        Some(s)
    }

    fn scale_push(&mut self, node: &Node) -> Option<ScalePushSpec> {
        let f = self.fields(
            node,
            "a scale push",
            &[
                "id",
                "scale",
                "due",
                "reminders",
                "expires",
                "channels",
                "template",
            ],
        )?;
        let id = Self::opt(&f, "id").and_then(|n| self.action_id(n));
        let mut chain = Vec::new();
        let scale = self
            .req(&f, "scale", node, "the scale push")
            .and_then(|n| self.scale_name(n));
        let due = self
            .req(&f, "due", node, "the scale push")
            .and_then(|n| self.duration(n));
        let mut reminders = Vec::new();
        if let Some(n) = Self::opt(&f, "reminders") {
            for r in self.list(n, "reminders") {
                if matches!(r.value, Value::Map(_)) {
                    if let Some(step) = self.reminder_step(r) {
                        chain.push(step);
                    }
                } else if let Some(d) = self.duration(r) {
                    reminders.push(d);
                }
            }
        }
        let expires = Self::opt(&f, "expires").and_then(|n| self.duration(n));
        let invite = match (Self::opt(&f, "channels"), Self::opt(&f, "template")) {
            (None, None) => None,
            (Some(c), Some(t)) => {
                let channels = self.channels(c);
                let template = self.ident(t, "template id");
                match (channels.is_empty(), template) {
                    (false, Some(template)) => Some(Invite { channels, template }),
                    _ => None,
                }
            }
            (Some(n), None) | (None, Some(n)) => {
                self.err(
                    Code::MissingKey,
                    n.pos,
                    "a scale push sent as a message names both its `channels` and its `template`",
                    "add the missing one, e.g. `channels: [wechat, sms], template: epds_invitation`, or drop both to leave the push in the app",
                );
                None
            }
        };
        Some(ScalePushSpec {
            id,
            scale: scale?,
            due: due?,
            reminders,
            expires,
            chain,
            invite,
        })
    }

    /// `{ after: 3d, channels: [sms], template: phq_reminder }` or
    /// `{ after: 3d, task: { role: nurse, title: …, due: 1d } }`, `after` counted from the due.
    fn reminder_step(&mut self, node: &Node) -> Option<ReminderStep> {
        let f = self.fields(
            node,
            "a reminder step",
            &["after", "channels", "template", "task"],
        )?;
        let after = Self::opt(&f, "after")
            .and_then(|n| self.duration(n))
            .unwrap_or(Duration::ZERO);
        let by = match Self::opt(&f, "task") {
            Some(t) => {
                if f.contains_key("channels") || f.contains_key("template") {
                    self.err(
                        Code::InvalidValue,
                        node.pos,
                        "a reminder step is a message or a task, not both",
                        "split it into two steps",
                    );
                }
                let tf = self.fields(t, "a reminder task", &["role", "title", "due"])?;
                let role = self
                    .req(&tf, "role", t, "the reminder task")
                    .and_then(|n| self.role_ref(n));
                let title = self
                    .req(&tf, "title", t, "the reminder task")
                    .and_then(|n| self.text(n, "title"));
                let due = Self::opt(&tf, "due")
                    .and_then(|n| self.duration(n))
                    .unwrap_or(Duration::days(1));
                ReminderBy::Task {
                    role: role?,
                    title: title?,
                    due,
                }
            }
            None => {
                let channels = self
                    .req(&f, "channels", node, "the reminder step")
                    .map(|n| self.channels(n))
                    .unwrap_or_default();
                let template = self
                    .req(&f, "template", node, "the reminder step")
                    .and_then(|n| self.ident(n, "template id"));
                if channels.is_empty() {
                    return None;
                }
                ReminderBy::Message {
                    channels,
                    template: template?,
                }
            }
        };
        Some(ReminderStep { after, by })
    }

    fn bands(&mut self, node: &Node) -> Vec<(String, f64)> {
        let Value::Map(entries) = &node.value else {
            self.err(
                Code::WrongType,
                node.pos,
                "bands must be a mapping of band name to lower bound",
                "e.g. bands: { low: 0, high: 0.3 }",
            );
            return Vec::new();
        };
        let mut out: Vec<(String, f64)> = Vec::new();
        for (k, v) in entries {
            if let (Some(name), Some(lower)) = (
                self.ident(k, "band name"),
                self.float(v, "a band's lower bound"),
            ) {
                if let Some((_, prev)) = out.last()
                    && lower <= *prev
                {
                    self.err(
                        Code::InvalidValue,
                        v.pos,
                        "band lower bounds must increase",
                        "list bands from lowest to highest",
                    );
                }
                out.push((name, lower));
            }
        }
        out
    }

    fn risk(&mut self, node: &Node) -> Option<RiskSpec> {
        let f = self.fields(
            node,
            "a risk prediction",
            &["id", "model", "intercept", "terms", "formula", "bands"],
        )?;
        let id = self
            .req(&f, "id", node, "the risk prediction")
            .and_then(|n| self.action_id(n));
        let kind = self
            .req(&f, "model", node, "the risk prediction")
            .and_then(|n| {
                self.choice(
                    n,
                    "risk model",
                    &[("lace", 0), ("logistic", 1), ("formula", 2)],
                )
            });
        let model = match kind? {
            0 => RiskModel::Lace,
            1 => {
                let intercept = self
                    .req(&f, "intercept", node, "a logistic model")
                    .and_then(|n| self.float(n, "intercept"));
                let mut terms = Vec::new();
                if let Some(n) = self.req(&f, "terms", node, "a logistic model") {
                    for t in self.list(n, "terms") {
                        let Some(tf) = self.fields(t, "a term", &["name", "expr", "coef"]) else {
                            continue;
                        };
                        let name = self
                            .req(&tf, "name", t, "the term")
                            .and_then(|n| self.ident(n, "term name"));
                        let expr = self
                            .req(&tf, "expr", t, "the term")
                            .and_then(|n| self.expr(n, Purpose::Value));
                        let coef = self
                            .req(&tf, "coef", t, "the term")
                            .and_then(|n| self.float(n, "coefficient"));
                        if let (Some(name), Some(expr), Some(coef)) = (name, expr, coef) {
                            terms.push(RiskTerm { name, expr, coef });
                        }
                    }
                }
                RiskModel::Logistic {
                    intercept: intercept?,
                    terms,
                }
            }
            _ => RiskModel::Formula(
                self.req(&f, "formula", node, "a formula model")
                    .and_then(|n| self.expr(n, Purpose::Value))?,
            ),
        };
        let bands = match Self::opt(&f, "bands") {
            Some(n) => self.bands(n),
            None if model == RiskModel::Lace => vec![
                ("low".into(), 0.0),
                ("moderate".into(), 5.0),
                ("high".into(), 10.0),
            ],
            None => {
                self.err(
                    Code::MissingKey,
                    node.pos,
                    "this risk model needs `bands`",
                    "e.g. bands: { low: 0, high: 0.3 }",
                );
                Vec::new()
            }
        };
        Some(RiskSpec {
            id: id?,
            model,
            bands,
        })
    }

    fn alarm(&mut self, node: &Node) -> Option<AlarmSpec> {
        let f = self.fields(
            node,
            "an alarm rule",
            &[
                "id",
                "when",
                "count",
                "within",
                "consecutive",
                "for",
                "clear",
                "no_reading",
                "scope",
                "task",
            ],
        )?;
        let id = self
            .req(&f, "id", node, "the alarm rule")
            .and_then(|n| self.action_id(n));
        let no_reading = Self::opt(&f, "no_reading").map(|n| self.no_reading(n));
        let when = match (&no_reading, Self::opt(&f, "when")) {
            (None, None) => {
                self.err(
                    Code::MissingKey,
                    node.pos,
                    "the alarm rule is missing `when`",
                    "add `when:` (a reading condition), or `no_reading: { kind: …, for: … }` for an alarm on missing readings",
                );
                None
            }
            (None, Some(n)) => self.expr(n, Purpose::Reading),
            (Some(_), Some(_)) => {
                self.err(
                    Code::InvalidValue,
                    f["when"].0.pos,
                    "an alarm rule is raised by `when` or by `no_reading`, not both",
                    "write two alarm rules",
                );
                None
            }
            (Some(_), None) => None,
        };
        if no_reading.is_some() {
            // Silence raises it and the next reading clears it: nothing to debounce or clear by.
            for key in ["count", "within", "consecutive", "for", "clear"] {
                if let Some((k, _)) = f.get(key) {
                    self.err(
                        Code::InvalidValue,
                        k.pos,
                        format!("`{key}` does not apply to a no-reading alarm"),
                        "a no-reading alarm is raised once its kind has had no reading for `no_reading.for`, and clears when the next reading arrives",
                    );
                }
            }
        }
        let windowed = ["count", "within"].into_iter().find(|k| f.contains_key(k));
        let run = ["consecutive", "for"]
            .into_iter()
            .find(|k| f.contains_key(k));
        if let (Some(w), Some(r)) = (windowed, run)
            && no_reading.is_none()
        {
            self.err(
                Code::InvalidValue,
                f[r].0.pos,
                format!("`{r}` and `{w}` are two ways to debounce an alarm; use one"),
                "count/within: that many matching readings within a window; consecutive/for: an unbroken run of matching readings",
            );
        }
        let count = Self::opt(&f, "count")
            .and_then(|n| self.uint(n, "count"))
            .unwrap_or(1);
        if count == 0 {
            self.err(
                Code::InvalidValue,
                f["count"].1.pos,
                "count must be 1 or more",
                "",
            );
        }
        let within = Self::opt(&f, "within")
            .and_then(|n| self.duration(n))
            .unwrap_or(Duration::days(1));
        let (consecutive, held_for) = self.debounce_run(&f);
        let clear = Self::opt(&f, "clear").and_then(|n| self.alarm_clear(n));
        let scope = Self::opt(&f, "scope")
            .and_then(|n| {
                self.choice(
                    n,
                    "alarm scope",
                    &[
                        ("state", AlarmScope::State),
                        ("enrolment", AlarmScope::Enrolment),
                    ],
                )
            })
            .unwrap_or(AlarmScope::State);
        let task = self
            .req(&f, "task", node, "the alarm rule")
            .and_then(|n| self.task(n, Due::Elapsed));
        let no_reading = match no_reading {
            Some(n) => Some(n?),
            None => None,
        };
        if no_reading.is_none() && when.is_none() {
            return None;
        }
        Some(AlarmSpec {
            id: id?,
            when,
            count: count.max(1),
            within,
            consecutive,
            held_for,
            clear,
            no_reading,
            scope,
            task: task?,
        })
    }

    /// `consecutive` and `for` of an alarm or of its `clear`: each, when given, above zero.
    fn debounce_run(&mut self, f: &Fields<'_>) -> (Option<u32>, Option<Duration>) {
        let consecutive = Self::opt(f, "consecutive").and_then(|n| {
            let v = self.uint(n, "consecutive")?;
            if v == 0 {
                self.err(
                    Code::InvalidValue,
                    n.pos,
                    "consecutive must be 1 or more",
                    "the number of matching readings in a row, e.g. consecutive: 3",
                );
                return None;
            }
            Some(v)
        });
        let held_for = Self::opt(f, "for").and_then(|n| self.positive_duration(n, "for"));
        (consecutive, held_for)
    }

    fn positive_duration(&mut self, n: &Node, what: &str) -> Option<Duration> {
        let d = self.duration(n)?;
        if d.nominal_seconds() == 0 {
            self.err(
                Code::InvalidValue,
                n.pos,
                format!("`{what}` must be longer than zero"),
                "e.g. 2d",
            );
            return None;
        }
        Some(d)
    }

    /// An alarm's `clear`: a reading condition, or `{ when, consecutive, for }`.
    fn alarm_clear(&mut self, node: &Node) -> Option<AlarmClear> {
        if matches!(node.value, Value::Scalar { .. }) {
            return Some(AlarmClear {
                when: self.expr(node, Purpose::Reading)?,
                consecutive: None,
                held_for: None,
            });
        }
        let f = self.fields(
            node,
            "an alarm's clear condition",
            &["when", "consecutive", "for"],
        )?;
        let when = self
            .req(&f, "when", node, "the clear condition")
            .and_then(|n| self.expr(n, Purpose::Reading));
        let (consecutive, held_for) = self.debounce_run(&f);
        Some(AlarmClear {
            when: when?,
            consecutive,
            held_for,
        })
    }

    /// An alarm's `no_reading: { kind, for }`.
    fn no_reading(&mut self, node: &Node) -> Option<NoReading> {
        let f = self.fields(node, "a no-reading alarm", &["kind", "for"])?;
        let kind = self
            .req(&f, "kind", node, "the no-reading alarm")
            .and_then(|n| self.observation(n));
        let after = self
            .req(&f, "for", node, "the no-reading alarm")
            .and_then(|n| self.positive_duration(n, "for"));
        Some(NoReading {
            kind: kind?,
            after: after?,
        })
    }

    fn referral(&mut self, node: &Node) -> Option<ReferralSpec> {
        let f = self.fields(
            node,
            "a referral",
            &["direction", "to", "reason", "accept_within", "moves"],
        )?;
        let direction = self
            .req(&f, "direction", node, "the referral")
            .and_then(|n| {
                self.choice(
                    n,
                    "direction",
                    &[("up", Direction::Up), ("down", Direction::Down)],
                )
            });
        let to_node = self.req(&f, "to", node, "the referral");
        let to = to_node.and_then(|n| self.choice(n, "referral target", &REFERRAL_TARGETS));
        if let (Some(None), Some(Direction::Up), Some(n)) = (to, direction, to_node) {
            self.err(
                Code::InvalidValue,
                n.pos,
                "`own_community` is where a downward referral goes",
                "write `direction: down`, or name the kind of institution an upward referral goes to (e.g. `lead_hospital`)",
            );
        }
        let reason = Self::opt(&f, "reason").and_then(|n| self.text(n, "reason"));
        let accept_within = Self::opt(&f, "accept_within")
            .and_then(|n| self.duration(n))
            .unwrap_or(Duration::hours(24));
        let mut moves: Vec<String> = Vec::new();
        if let Some(n) = Self::opt(&f, "moves") {
            for item in self.list(n, "moves") {
                let Some(role) = self.role_ref(item) else {
                    continue;
                };
                if moves.contains(&role) {
                    self.err(
                        Code::DuplicateId,
                        item.pos,
                        format!("role `{role}` is listed twice in `moves`"),
                        "list each role once",
                    );
                } else {
                    moves.push(role);
                }
            }
        }
        let to = to?;
        Some(ReferralSpec {
            direction: direction?,
            // A patient with no home community institution is referred as to a community clinic.
            to: to.unwrap_or(InstitutionKind::CommunityClinic),
            own_community: to.is_none(),
            reason,
            accept_within,
            moves,
        })
    }

    fn goal(&mut self, node: &Node) -> Option<Goal> {
        let f = self.fields(
            node,
            "a goal",
            &[
                "id",
                "title",
                "observation",
                "reading",
                "at_least",
                "days_logged",
                "over",
            ],
        )?;
        let id = self
            .req(&f, "id", node, "the goal")
            .and_then(|n| self.action_id(n));
        let title = self
            .req(&f, "title", node, "the goal")
            .and_then(|n| self.text(n, "title"));
        let observation = self
            .req(&f, "observation", node, "the goal")
            .and_then(|n| self.observation(n));
        let over = self
            .req(&f, "over", node, "the goal")
            .and_then(|n| self.duration(n));
        let measure = match (Self::opt(&f, "reading"), Self::opt(&f, "days_logged")) {
            (Some(r), None) => {
                let reading = self.expr(r, Purpose::GoalReading);
                let at_least = self
                    .req(&f, "at_least", node, "a share-of-readings goal")
                    .and_then(|n| self.float(n, "at_least"));
                if let Some(share) = at_least
                    && !(0.0..=1.0).contains(&share)
                {
                    self.err(
                        Code::InvalidValue,
                        f["at_least"].1.pos,
                        "at_least is a share between 0 and 1",
                        "write 0.8 for 80 %",
                    );
                }
                GoalMeasure::ShareOfReadings {
                    reading: reading?,
                    at_least: at_least?,
                    over: over?,
                }
            }
            (None, Some(d)) => GoalMeasure::DaysLogged {
                days: self.uint(d, "days_logged")?,
                over: over?,
            },
            _ => {
                self.err(
                    Code::MissingKey,
                    node.pos,
                    "a goal is measured by `reading` + `at_least`, or by `days_logged`",
                    "see Goals in docs/pathway-language.md",
                );
                return None;
            }
        };
        Some(Goal {
            id: id?,
            title: title?,
            observation: observation?,
            measure,
        })
    }

    fn indicator(&mut self, node: &Node) -> Option<Indicator> {
        let f = self.fields(
            node,
            "an indicator",
            &[
                "id",
                "title",
                "numerator",
                "denominator",
                "period",
                "target",
            ],
        )?;
        let id = self.req(&f, "id", node, "the indicator").and_then(|n| {
            let id = self.ident(n, "indicator id")?;
            self.map.indicator_ids.push((id.clone(), self.loc(n.pos)));
            Some(id)
        });
        let title = self
            .req(&f, "title", node, "the indicator")
            .and_then(|n| self.text(n, "title"));
        let numerator = self
            .req(&f, "numerator", node, "the indicator")
            .and_then(|n| self.counter(n, "numerator"));
        let denominator = self
            .req(&f, "denominator", node, "the indicator")
            .and_then(|n| self.counter(n, "denominator"));
        let period = Self::opt(&f, "period")
            .and_then(|n| {
                self.choice(
                    n,
                    "period",
                    &[
                        ("week", Period::Week),
                        ("month", Period::Month),
                        ("quarter", Period::Quarter),
                        ("year", Period::Year),
                    ],
                )
            })
            .unwrap_or(Period::Month);
        let target = Self::opt(&f, "target").and_then(|n| self.float(n, "target"));
        Some(Indicator {
            id: id?,
            title: title?,
            numerator: numerator?,
            denominator: denominator?,
            period,
            target,
        })
    }

    fn set(&mut self, node: &Node) -> Option<Vec<(String, Expr)>> {
        let Value::Map(entries) = &node.value else {
            self.err(
                Code::WrongType,
                node.pos,
                "`set` must be a mapping of variable to expression",
                "",
            );
            return None;
        };
        let mut out = Vec::new();
        for (k, v) in entries {
            let name = self.string(k, "a variable");
            if let Some(dup) = name.as_ref().filter(|n| out.iter().any(|(o, _)| o == *n)) {
                self.err(
                    Code::DuplicateKey,
                    k.pos,
                    format!("`{dup}` is set twice"),
                    "keep one",
                );
                continue;
            }
            let (Some(name), Some(expr)) = (name, self.expr(v, Purpose::Value)) else {
                continue;
            };
            self.map.assignments.push((name.clone(), self.loc(k.pos)));
            out.push((name, expr));
        }
        Some(out)
    }

    // ---- fragments -------------------------------------------------------------------------

    fn include(&mut self, node: &Node, states: &mut Vec<State>) {
        let Some(f) = self.fields(node, "an include", &["fragment", "prefix", "exits"]) else {
            return;
        };
        let Some(path_node) = self.req(&f, "fragment", node, "the include") else {
            return;
        };
        let Some(rel) = self.string(path_node, "a fragment path") else {
            return;
        };
        let prefix = Self::opt(&f, "prefix")
            .and_then(|n| self.string(n, "prefix"))
            .unwrap_or_default();
        let mut exits = HashMap::new();
        if let Some(n) = Self::opt(&f, "exits")
            && let Value::Map(entries) = &n.value
        {
            for (k, v) in entries {
                if let (Some(k), Some(v)) = (k.as_str(), self.string(v, "a state")) {
                    exits.insert(k.to_string(), v);
                }
            }
        }
        if self.depth >= 4 {
            self.err(
                Code::Fragment,
                path_node.pos,
                "fragments nest more than 4 deep",
                "a fragment may not include itself",
            );
            return;
        }
        let path = self.base_dir.join(&rel);
        // A fragment path names a file inside the pathway's folder: never absolute, never climbing.
        let inside = Path::new(&rel)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        let loaded = if inside {
            self.loader.load(&path)
        } else {
            Err(NOT_IN_ROOT.to_string())
        };
        let bytes = match loaded {
            Ok(b) => b,
            Err(e) => {
                self.err(
                    Code::Fragment,
                    path_node.pos,
                    format!("cannot read fragment `{rel}`: {e}"),
                    "the path is relative to the pathway file's folder and must stay inside it",
                );
                return;
            }
        };
        let file = path.display().to_string();
        let root = match crate::yaml::parse(&file, &bytes, crate::yaml::Budget::default()) {
            Ok(root) => root,
            Err(d) => {
                self.diags.extend(d);
                return;
            }
        };
        let saved_file = std::mem::replace(&mut self.file, file);
        let saved_frag = self.fragment.take();
        let saved_exact = std::mem::replace(&mut self.exact_exprs, true);
        self.depth += 1;
        let declared = self.fragment_states(&root, &prefix, exits.clone(), states);
        self.depth -= 1;
        self.exact_exprs = saved_exact;
        self.fragment = saved_frag;
        self.file = saved_file;
        if let Some(declared) = declared {
            for exit in &declared {
                if !exits.contains_key(exit) {
                    self.err(
                        Code::Fragment,
                        node.pos,
                        format!("the include does not map the fragment's exit `{exit}`"),
                        format!("add `exits: {{ {exit}: <state> }}`"),
                    );
                }
            }
            for (k, _) in exits.iter().filter(|(k, _)| !declared.contains(k)) {
                self.err(
                    Code::Fragment,
                    node.pos,
                    format!("the fragment has no exit `{k}`"),
                    format!("its exits: {}", declared.join(", ")),
                );
            }
        }
    }

    /// Lowers a fragment file's states into `states`; returns its declared exits.
    pub(crate) fn fragment_states(
        &mut self,
        root: &Node,
        prefix: &str,
        exits: HashMap<String, String>,
        states: &mut Vec<State>,
    ) -> Option<Vec<String>> {
        let f = self.fields(
            root,
            "the fragment",
            &[
                "fragment",
                "title",
                "description",
                "exits",
                "roles",
                "entry",
                "states",
            ],
        )?;
        self.req(&f, "fragment", root, "the fragment")
            .and_then(|n| self.ident(n, "fragment id"));
        if let Some(n) = Self::opt(&f, "title") {
            self.text(n, "title");
        }
        let mut declared = Vec::new();
        if let Some(n) = Self::opt(&f, "exits") {
            for e in self.list(n, "exits") {
                if let Some(e) = self.ident(e, "exit name") {
                    declared.push(e);
                }
            }
        }
        if let Some(n) = Self::opt(&f, "roles") {
            for r in self.list(n, "roles") {
                self.role_ref(r);
            }
        }
        let entry =
            Self::opt(&f, "entry").and_then(|n| self.string(n, "entry state").map(|s| (s, n.pos)));
        self.fragment = Some(FragmentCtx {
            prefix: prefix.to_string(),
            exits,
            declared_exits: declared.clone(),
        });
        let first = states.len();
        if let Some(n) = self.req(&f, "states", root, "the fragment") {
            for item in self.list(n, "states") {
                if let Some(s) = self.state(item) {
                    states.push(s);
                }
            }
        }
        if let Some((entry, pos)) = entry {
            let full = format!("{prefix}{entry}");
            if !states[first..].iter().any(|s| s.id == full) {
                self.err(
                    Code::UnknownState,
                    pos,
                    format!("fragment entry `{entry}` is not one of its states"),
                    "",
                );
            }
        }
        Some(declared)
    }
}
