//! carepath's pathway language: text in, a validated `Pathway` and every diagnostic out.
//!
//! Architecture invariants: this crate knows nothing of storage, time or patients; it never panics
//! on input, however broken or hostile; and it returns every problem at once, each located in its
//! file. `compile_*` returns the model whenever one could be built, and `Compiled::is_ok` says
//! whether it is fit to run (no errors; warnings allowed).

#![forbid(unsafe_code)]

pub mod catalog;
mod check;
pub mod condition;
pub mod counter;
pub mod diag;
pub mod diff;
pub mod events;
pub mod expr;
mod fields;
pub mod graph;
mod guards;
pub mod intake;
pub mod lower;
pub mod migration;
pub mod model;
pub mod policy;
pub mod reads;
pub mod rhai_front;
pub mod yaml;

#[cfg(test)]
mod condition_test;
#[cfg(test)]
mod cycles_test;
#[cfg(test)]
mod docs_test;
#[cfg(test)]
mod fixtures_test;
#[cfg(test)]
mod hostile_test;
#[cfg(test)]
mod props_test;
#[cfg(test)]
mod rooted_test;

use std::path::{Path, PathBuf};

pub use diag::{Code, Diagnostic, Pos, Severity};
pub use lower::{FsLoader, Loader, RootedLoader};
pub use model::*;

/// What kind of document a file holds, judged by its top-level key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocKind {
    Pathway,
    Fragment,
    /// Case intake rules (`intake:`): read by [`intake`], checked against pathways by
    /// [`intake::check_set`].
    Intake,
    /// Scales and pathway tests are read by the engine, not by this crate.
    Other,
}

#[derive(Debug, Clone)]
pub struct Compiled {
    pub file: String,
    pub kind: DocKind,
    pub pathway: Option<Pathway>,
    /// The rules of a case intake file (shape checked; targets are checked with the pathways).
    pub intake: Option<intake::IntakeFile>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Compiled {
    pub fn is_ok(&self) -> bool {
        !self.diagnostics.iter().any(Diagnostic::is_error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }

    /// The pathway, only if it has no errors.
    pub fn into_pathway(self) -> Result<Pathway, Vec<Diagnostic>> {
        match self.pathway {
            Some(p) if !self.diagnostics.iter().any(Diagnostic::is_error) => Ok(p),
            _ => Err(self.diagnostics),
        }
    }
}

fn top_key(root: &yaml::Node) -> Option<&str> {
    match &root.value {
        yaml::Value::Map(entries) => entries.iter().filter_map(|(k, _)| k.as_str()).find(|k| {
            matches!(
                *k,
                "pathway" | "fragment" | "intake" | "scale" | "tests" | "templates"
            )
        }),
        _ => None,
    }
}

fn finish(
    file: &str,
    kind: DocKind,
    pathway: Option<Pathway>,
    mut diagnostics: Vec<Diagnostic>,
) -> Compiled {
    diagnostics
        .sort_by(|a, b| (&a.file, a.pos, a.code.as_str()).cmp(&(&b.file, b.pos, b.code.as_str())));
    diagnostics.dedup();
    Compiled {
        file: file.to_string(),
        kind,
        pathway,
        intake: None,
        diagnostics,
    }
}

/// Lowers and checks a positioned tree (from either front-end). `exact` says whether the tree's
/// positions are where its text is written (YAML) or where a Rhai builder call made it.
fn compile_tree(
    file: &str,
    root: &yaml::Node,
    base_dir: &Path,
    loader: &dyn Loader,
    exact: bool,
) -> Compiled {
    let mut diags = Vec::new();
    let kind = match top_key(root) {
        Some("fragment") => DocKind::Fragment,
        Some("intake") => DocKind::Intake,
        Some("scale" | "tests" | "templates") => DocKind::Other,
        _ => DocKind::Pathway,
    };
    let checker = expr::ExprChecker::new();
    let pathway = match kind {
        DocKind::Other => None,
        DocKind::Intake => {
            let rules = intake::from_tree(file, root);
            let mut compiled = finish(file, kind, None, rules.diagnostics.clone());
            compiled.intake = Some(rules);
            return compiled;
        }
        DocKind::Fragment => {
            let mut lw = lower::Lowerer::new(file, base_dir.to_path_buf(), loader, &mut diags);
            lw.exact_exprs = exact;
            let mut states = Vec::new();
            lw.fragment_states(root, "", Default::default(), &mut states);
            let map = std::mem::take(&mut lw.map);
            drop(lw);
            let names: std::collections::HashSet<&str> =
                states.iter().map(|s| s.id.as_str()).collect();
            for (si, s) in states.iter().enumerate() {
                for (ti, t) in s.transitions.iter().enumerate() {
                    if !t.to.starts_with("exit:") && !names.contains(t.to.as_str()) {
                        let pos = map
                            .transitions
                            .get(si)
                            .and_then(|v| v.get(ti))
                            .map(|l| l.pos)
                            .unwrap_or(Pos::START);
                        diags.push(Diagnostic::error(
                            Code::UnknownState,
                            file,
                            pos,
                            format!(
                                "transition goes to `{}`, which is not a state of this fragment",
                                t.to
                            ),
                            "use `exit:<name>` to leave the fragment",
                        ));
                    }
                }
            }
            let mut events: Vec<(String, String, Pos)> = map
                .event_uses
                .iter()
                .map(|(name, loc)| (name.clone(), loc.file.clone(), loc.pos))
                .collect();
            for e in &map.exprs {
                if let Some(c) = checker.check(&e.src, e.purpose, &[], &e.site, &mut diags) {
                    events.extend(
                        c.event_literals
                            .into_iter()
                            .map(|(name, pos)| (name, e.site.file.clone(), pos)),
                    );
                }
            }
            for (name, file, pos) in events {
                if let Err(p) = events::resolve_in_fragment(&name) {
                    diags.push(Diagnostic::error(p.code, &file, pos, p.message, p.hint));
                }
            }
            None
        }
        DocKind::Pathway => {
            let mut lw = lower::Lowerer::new(file, base_dir.to_path_buf(), loader, &mut diags);
            lw.exact_exprs = exact;
            let pathway = lw.pathway(root);
            let map = std::mem::take(&mut lw.map);
            drop(lw);
            if let Some(p) = &pathway {
                check::check_pathway(p, &map, &checker, &mut diags);
            }
            pathway
        }
    };
    finish(file, kind, pathway, diags)
}

/// Compiles YAML source.
pub fn compile_yaml(file: &str, bytes: &[u8], base_dir: &Path, loader: &dyn Loader) -> Compiled {
    match yaml::parse(file, bytes, yaml::Budget::default()) {
        Ok(root) => compile_tree(file, &root, base_dir, loader, true),
        Err(diags) => finish(file, DocKind::Pathway, None, diags),
    }
}

/// Compiles a Rhai pathway script.
pub fn compile_rhai(file: &str, bytes: &[u8], base_dir: &Path, loader: &dyn Loader) -> Compiled {
    match rhai_front::run(file, bytes) {
        Ok(root) => compile_tree(file, &root, base_dir, loader, false),
        Err(diags) => finish(file, DocKind::Pathway, None, diags),
    }
}

/// Compiles a Rhai pathway script that must finish running by `deadline`; a script still running
/// then is stopped and reported (E021) where it was.
pub fn compile_rhai_until(
    file: &str,
    bytes: &[u8],
    base_dir: &Path,
    loader: &dyn Loader,
    deadline: std::time::Instant,
) -> Compiled {
    match rhai_front::run_until(file, bytes, Some(deadline)) {
        Ok(root) => compile_tree(file, &root, base_dir, loader, false),
        Err(diags) => finish(file, DocKind::Pathway, None, diags),
    }
}

/// The diagnostic of a compilation stopped for taking longer than it may.
pub fn too_long(file: &str, pos: Pos, limit: std::time::Duration) -> Diagnostic {
    Diagnostic::error(
        Code::Script,
        file,
        pos,
        format!(
            "the script took too long: it was stopped after {:.1} s",
            limit.as_secs_f64()
        ),
        "a pathway script only builds the pathway; keep it free of loops and large nested values",
    )
}

/// Compiles a file by its extension (`.rhai`, else YAML). Its fragments are read only from inside
/// its folder (a [`RootedLoader`] rooted there).
pub fn compile_file(path: &Path) -> Compiled {
    let file = path.display().to_string();
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let bytes = match FsLoader.load(path) {
        Ok(b) => b,
        Err(e) => {
            let d = Diagnostic::error(
                Code::Syntax,
                &file,
                Pos::START,
                format!("cannot read file: {e}"),
                "check the path",
            );
            return finish(&file, DocKind::Pathway, None, vec![d]);
        }
    };
    let loader = RootedLoader::new(&base);
    if path.extension().is_some_and(|e| e == "rhai") {
        compile_rhai(&file, &bytes, &base, &loader)
    } else {
        compile_yaml(&file, &bytes, &base, &loader)
    }
}

/// Checks the case intake rules among `compiled` against the pathways compiled with them. Rules
/// validated without their pathways (`carepath validate pathways/intake`) are checked against the
/// pathways of the folder above their own.
pub fn check_intake(compiled: &[Compiled]) -> Vec<Diagnostic> {
    let files: Vec<intake::IntakeFile> = compiled.iter().filter_map(|c| c.intake.clone()).collect();
    if files.is_empty() {
        return Vec::new();
    }
    let mut known = intake::known_pathways(compiled.iter().filter_map(|c| c.pathway.as_ref()));
    if known.is_empty() {
        let mut dirs: Vec<PathBuf> = files
            .iter()
            .filter_map(|f| Path::new(&f.file).parent()?.parent().map(Path::to_path_buf))
            .collect();
        dirs.sort();
        dirs.dedup();
        let pathways: Vec<Pathway> = pathway_files(&dirs)
            .unwrap_or_default()
            .iter()
            .filter_map(|p| compile_file(p).pathway)
            .collect();
        known = intake::known_pathways(&pathways);
    }
    intake::check_set(&files, &known)
}

/// Pathway files under the given files and folders (`.yaml`, `.yml`, `.rhai`), sorted.
pub fn pathway_files(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for entry in std::fs::read_dir(&p)? {
                stack.push(entry?.path());
            }
        } else if paths.contains(&p) || is_source(&p) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

fn is_source(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let ext_ok = matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "rhai")
    );
    ext_ok && !name.ends_with(".test.yaml") && !name.ends_with(".scenario.yaml")
}

#[cfg(test)]
mod twin_tests {
    use std::path::PathBuf;

    fn twins() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../pathways/twins")
    }

    #[test]
    fn a_yaml_pathway_and_its_rhai_twin_compile_to_equal_models() {
        for name in ["wound_care", "home_monitoring"] {
            let yaml = super::compile_file(&twins().join(format!("{name}.yaml")));
            let rhai = super::compile_file(&twins().join(format!("{name}.rhai")));
            assert!(
                yaml.diagnostics.is_empty(),
                "{name}: {:?}",
                yaml.diagnostics
            );
            assert!(
                rhai.diagnostics.is_empty(),
                "{name}: {:?}",
                rhai.diagnostics
            );
            let (yaml, rhai) = (
                yaml.pathway.expect("yaml model"),
                rhai.pathway.expect("rhai model"),
            );
            assert!(!yaml.states.is_empty());
            assert_eq!(yaml, rhai, "{name}");
        }
    }

    #[test]
    fn working_days_read_the_same_in_yaml_and_rhai() {
        let good = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/good");
        let yaml = super::compile_file(&good.join("working_days.yaml"))
            .into_pathway()
            .expect("yaml model");
        let rhai = super::compile_file(&good.join("working_days_script.rhai"))
            .into_pathway()
            .expect("rhai model");
        assert_eq!(yaml.states, rhai.states);
        let first = &yaml.states[0];
        let crate::Action::Task(call) = &first.on_enter[0] else {
            panic!("the first action is the call task");
        };
        assert_eq!(call.due, crate::Duration::working_days(2));
        let crate::Action::FollowUp(message) = &first.on_enter[1] else {
            panic!("the second action is the message");
        };
        assert_eq!(message.after, crate::Duration::working_days(1));
        assert_eq!(
            first.transitions[1].trigger,
            crate::Trigger::After {
                after: crate::Duration::working_days(5),
                at: None
            }
        );
        assert_eq!(
            first.transitions[1].trigger.describe(),
            "after 5 working days"
        );
    }

    /// A schedule of the whole enrolment reads the same from both front-ends, counts from the
    /// enrolment when no anchor is written, and `occurrence()` may name it.
    #[test]
    fn enrolment_schedules_read_the_same_in_yaml_and_rhai() {
        let good = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/good");
        let yaml = super::compile_file(&good.join("enrolment_schedule.yaml"));
        let rhai = super::compile_file(&good.join("enrolment_schedule_script.rhai"));
        assert!(yaml.diagnostics.is_empty(), "{:?}", yaml.diagnostics);
        assert!(rhai.diagnostics.is_empty(), "{:?}", rhai.diagnostics);
        let (yaml, rhai) = (yaml.pathway.expect("yaml"), rhai.pathway.expect("rhai"));
        assert_eq!(yaml.schedules, rhai.schedules);
        assert_eq!(yaml.states, rhai.states);
        let sc = &yaml.schedules[0];
        assert_eq!(sc.first.from, crate::Anchor::Enrolment);
        assert_eq!(sc.until, Some(crate::Until::Event("programme_left".into())));
        assert!(yaml.states.iter().all(|s| s.schedules.is_empty()));
    }

    /// A transition timed from an anchor, as the documentation writes it in both front-ends.
    #[test]
    fn a_transition_from_an_anchor_reads_the_same_in_yaml_and_rhai() {
        let head = "pathway: p\nversion: 1\ntitle: t\nowner_role: nurse\nroles: [nurse]\nentry_points: [{ id: e, state: a }]\n";
        let yaml = format!(
            "{head}states:\n  - id: a\n    phase: follow_up\n    transitions:\n      - after: 365d\n        from: enrolment\n        to: completed\n  - id: completed\n    phase: closed\n    terminal: true\n"
        );
        let rhai = r#"let p = pathway("p", 1, "t", "t");
p.owner_role = "nurse";
p.roles = ["nurse"];
p.entry("e", "a");
let s = state("a", "follow_up");
let end = after("365d", "completed");
end.from = "enrolment";
s.transition(end);
p.add(s);
p.add(terminal("completed"));
p"#;
        let dir = std::path::Path::new("");
        let y = super::compile_yaml("p.yaml", yaml.as_bytes(), dir, &super::FsLoader);
        let r = super::compile_rhai("p.rhai", rhai.as_bytes(), dir, &super::FsLoader);
        assert!(r.diagnostics.is_empty(), "{:?}", r.diagnostics);
        let (y, r) = (y.pathway.expect("yaml"), r.pathway.expect("rhai"));
        assert_eq!(
            y.states[0].transitions[0].trigger,
            crate::Trigger::Anchored(crate::TimeSpec {
                after: crate::Duration::parse("365d").expect("a duration"),
                at: None,
                from: crate::Anchor::Enrolment,
            })
        );
        assert_eq!(y.states[0].transitions, r.states[0].transitions);
    }

    /// Withdrawal routing, `cancel`, `keep_open_tasks` and a referral to the patient's own
    /// community institution that moves a role's tasks: the same model from both front-ends.
    #[test]
    fn the_ownership_fixtures_compile_to_equal_models() {
        let good = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/good");
        let yaml = super::compile_file(&good.join("home_referral.yaml"));
        let rhai = super::compile_file(&good.join("home_referral_script.rhai"));
        assert!(yaml.diagnostics.is_empty(), "{:?}", yaml.diagnostics);
        assert!(rhai.diagnostics.is_empty(), "{:?}", rhai.diagnostics);
        let (yaml, rhai) = (yaml.pathway.expect("yaml"), rhai.pathway.expect("rhai"));
        let handover = yaml.state("handover").expect("handover");
        let Some(crate::Action::Referral(r)) = handover.on_enter.last() else {
            panic!("a referral: {:?}", handover.on_enter)
        };
        assert!(
            r.own_community && r.moves == ["clinic_case_manager"],
            "{r:?}"
        );
        assert_eq!(r.to, crate::InstitutionKind::CommunityClinic);
        assert!(
            yaml.state("withdrawn_closing")
                .expect("closing")
                .keep_open_tasks
        );
        assert_eq!(yaml, rhai);
    }

    #[test]
    fn a_changed_twin_is_no_longer_equal() {
        let yaml = super::compile_file(&twins().join("wound_care.yaml"))
            .pathway
            .expect("model");
        let src = std::fs::read_to_string(twins().join("wound_care.rhai")).expect("read");
        let changed = src.replacen("\"4h\"", "\"5h\"", 1);
        assert_ne!(
            src, changed,
            "the twin should contain a 4h due time to change"
        );
        let rhai = super::compile_rhai("t.rhai", changed.as_bytes(), &twins(), &super::FsLoader)
            .pathway
            .expect("model");
        assert_ne!(yaml, rhai);
    }
}
