//! The events a pathway may name: the built-in ones (`catalog::BUILTIN_EVENTS`), checked against
//! what the pathway has (`task_done:<task>` needs the task, `alarm:<alarm>` the alarm rule,
//! `scale_answered:<scale>` a push of the scale), and its own, declared under `events:`.
//!
//! One resolver serves the validator, which locates every problem in the file, and the admin API,
//! which refuses an event no enrolment of the pathway could ever wait for. Transitions (`on:`),
//! schedules and times (`until: { event }`, `from:`), guards (`days_since`, `hours_since`,
//! `event_count`) and indicator counters (`event:<name>`) all name events through it, so a typo is
//! caught where it is written rather than by a patient whose enrolment waits forever.

use std::collections::BTreeSet;

use crate::catalog::{self, EventQualifier};
use crate::diag::{Code, closest};
use crate::model::{Action, Anchor, Expr, Pathway, RiskModel, Trigger, Until};

/// Why a pathway cannot have an event: the diagnostic code, what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub code: Code,
    pub message: String,
    pub hint: String,
}

/// What a pathway has that events name: its declared events, tasks, alarm rules and pushed scales.
pub struct Known<'p> {
    declared: Vec<&'p str>,
    tasks: Vec<String>,
    alarms: Vec<&'p str>,
    scales: Vec<&'p str>,
}

impl<'p> Known<'p> {
    pub fn of(p: &'p Pathway) -> Known<'p> {
        Known {
            declared: p.events.iter().map(|e| e.name.as_str()).collect(),
            tasks: p.task_refs(),
            alarms: p.alarm_ids().collect(),
            scales: p.scales_pushed(),
        }
    }

    /// Every event name the pathway can receive: its declared events, the plain built-in events,
    /// and each family for each task, alarm or scale it names. The candidates of a did-you-mean.
    pub fn names(&self) -> Vec<String> {
        let mut out: Vec<String> = self.declared.iter().map(|d| d.to_string()).collect();
        for b in catalog::BUILTIN_EVENTS {
            let ids: Vec<&str> = match b.qualifier {
                EventQualifier::None => {
                    out.push(b.name.to_string());
                    continue;
                }
                EventQualifier::Task => self.tasks.iter().map(String::as_str).collect(),
                EventQualifier::Alarm => self.alarms.clone(),
                EventQualifier::Scale => self.scales.clone(),
            };
            out.extend(ids.iter().map(|id| format!("{}:{id}", b.name)));
        }
        out
    }

    /// Whether the pathway can receive `name`; if not, why.
    pub fn resolve(&self, name: &str) -> Result<(), Problem> {
        if self.declared.contains(&name) {
            return Ok(());
        }
        let Some((event, qualifier)) = catalog::builtin_event(name) else {
            return Err(self.undeclared(name));
        };
        let Some(id) = qualifier else {
            return Ok(());
        };
        let (has, ids): (bool, Vec<&str>) = match event.qualifier {
            EventQualifier::None => (true, Vec::new()),
            EventQualifier::Task => (
                self.tasks.iter().any(|t| t == id),
                self.tasks.iter().map(String::as_str).collect(),
            ),
            EventQualifier::Alarm => (self.alarms.contains(&id), self.alarms.clone()),
            EventQualifier::Scale if !catalog::SCALES.contains(&id) => {
                return Err(Problem {
                    code: Code::UnknownScale,
                    message: format!("unknown scale `{id}` in event `{name}`"),
                    hint: crate::diag::suggest(id, catalog::SCALES),
                });
            }
            EventQualifier::Scale => (self.scales.contains(&id), self.scales.clone()),
        };
        if has {
            return Ok(());
        }
        let noun = event.qualifier.noun();
        let message = match event.qualifier {
            EventQualifier::Scale => format!(
                "`{name}` never arrives: the pathway pushes no `{id}` (add a `scale` action that pushes it)"
            ),
            _ => format!("`{name}` names no {noun} of this pathway"),
        };
        let hint = match closest(id, ids.iter().copied()) {
            Some(c) => format!("did you mean `{}:{c}`?", event.name),
            None if ids.is_empty() => format!("the pathway has no {noun} to name"),
            None => format!(
                "the pathway's {noun}s: {}",
                shortened(&ids.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>())
            ),
        };
        Err(Problem {
            code: Code::UnknownEvent,
            message,
            hint,
        })
    }

    /// An event that is neither declared nor built in.
    fn undeclared(&self, name: &str) -> Problem {
        let head = name.split_once(':').map_or(name, |(h, _)| h);
        let family = catalog::BUILTIN_EVENTS.iter().find(|b| b.name == head);
        let names = self.names();
        let hint = match (family, closest(name, names.iter().map(String::as_str))) {
            (_, Some(c)) => format!("did you mean `{c}`?"),
            (Some(b), None) if b.qualifier == EventQualifier::None => {
                format!("`{}` is written without a `:` qualifier", b.name)
            }
            (Some(b), None) => format!("write `{}`", b.pattern()),
            (None, None) => format!(
                "declare it under `events:` (in Rhai, `p.event(\"{name}\")`), or use a built-in event"
            ),
        };
        Problem {
            code: Code::UnknownEvent,
            message: format!("event `{name}` is not declared and is not a built-in event"),
            hint,
        }
    }
}

/// Checks event names outside a pathway (a fragment compiled on its own, whose tasks and events
/// belong to the pathways that include it): only a scale an event names can be checked there.
pub fn resolve_in_fragment(name: &str) -> Result<(), Problem> {
    match catalog::builtin_event(name) {
        Some((e, Some(id)))
            if e.qualifier == EventQualifier::Scale && !catalog::SCALES.contains(&id) =>
        {
            Err(Problem {
                code: Code::UnknownScale,
                message: format!("unknown scale `{id}` in event `{name}`"),
                hint: crate::diag::suggest(id, catalog::SCALES),
            })
        }
        _ => Ok(()),
    }
}

/// Why an event named `name` cannot be recorded for an enrolment of `p`, or `None` when it can:
/// the pathway declares it, or it is a built-in event. The admin API answers 400 with this reason.
///
/// A version published before the pathway's own events were declared has no `events:`; for it,
/// the events its transitions wait for and its guards read stand for the declaration.
pub fn refusal(p: &Pathway, name: &str) -> Option<String> {
    if catalog::builtin_event(name).is_some() || p.events.iter().any(|e| e.name == name) {
        return None;
    }
    if p.events.is_empty() && used_by(p).contains(name) {
        return None;
    }
    let own: Vec<String> = p.events.iter().map(|e| format!("`{}`", e.name)).collect();
    let builtin: Vec<String> = catalog::BUILTIN_EVENTS
        .iter()
        .map(|b| format!("`{}`", b.pattern()))
        .collect();
    let mut candidates: Vec<&str> = p.events.iter().map(|e| e.name.as_str()).collect();
    candidates.extend(
        catalog::BUILTIN_EVENTS
            .iter()
            .filter(|b| b.qualifier == EventQualifier::None)
            .map(|b| b.name),
    );
    let mean = closest(name, candidates)
        .map(|c| format!("did you mean `{c}`? "))
        .unwrap_or_default();
    let declared = if own.is_empty() {
        format!(
            "pathway `{}` v{} declares no events of its own",
            p.id, p.version
        )
    } else {
        format!(
            "pathway `{}` v{} declares {}",
            p.id,
            p.version,
            shortened(&own)
        )
    };
    Some(format!(
        "event `{name}` is neither declared by the enrolment's pathway nor a built-in event; {mean}{declared}; built-in events: {}",
        builtin.join(", ")
    ))
}

/// The events a pathway's transitions wait for, its schedules and times count from or end at, and
/// its guards, `set` values and risk terms read.
fn used_by(p: &Pathway) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut exprs: Vec<&Expr> = Vec::new();
    let anchor = |a: &Anchor, out: &mut BTreeSet<String>| {
        if let Anchor::Event(e) = a {
            out.insert(e.clone());
        }
    };
    for s in &p.states {
        for t in &s.transitions {
            if let Trigger::Event(e) = &t.trigger {
                out.insert(e.clone());
            }
            exprs.extend(&t.guard);
        }
    }
    for sc in p
        .states
        .iter()
        .flat_map(|s| &s.schedules)
        .chain(&p.schedules)
    {
        anchor(&sc.first.from, &mut out);
        match &sc.until {
            Some(Until::Event(e)) => {
                out.insert(e.clone());
            }
            Some(Until::At(t)) => anchor(&t.from, &mut out),
            None => {}
        }
    }
    for (_, a) in p.actions() {
        match a {
            Action::Set(values) => exprs.extend(values.iter().map(|(_, e)| e)),
            Action::Risk(r) => match &r.model {
                RiskModel::Logistic { terms, .. } => exprs.extend(terms.iter().map(|t| &t.expr)),
                RiskModel::Formula(e) => exprs.push(e),
                RiskModel::Lace => {}
            },
            Action::Task(t) => {
                if let Some(d) = &t.due_at {
                    anchor(&d.from, &mut out);
                }
            }
            Action::FollowUp(f) => anchor(&f.from, &mut out),
            _ => {}
        }
    }
    for e in exprs {
        out.extend(
            crate::reads::reads(&e.0)
                .map(|r| r.events)
                .unwrap_or_default(),
        );
    }
    out
}

/// A list for a message, cut after twelve names.
fn shortened(names: &[String]) -> String {
    match names.len() {
        0..=12 => names.join(", "),
        n => format!("{}, … ({n} in all)", names[..12].join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FsLoader, compile_yaml};

    const PATHWAY: &str = r#"pathway: p
version: 3
title: t
owner_role: doctor
roles: [doctor]
events:
  - fall_reported
  - { name: app_check_in, description: The patient checked in }
entry_points: [{ id: e, state: a }]
states:
  - id: a
    phase: follow_up
    on_enter:
      - task: { id: call, role: doctor, title: t, due: 1d }
      - scale: { scale: epds, due: 1d }
      - alarm: { id: bp_high, when: 'bp_systolic > 180', task: { role: doctor, title: t, due: 1h } }
    transitions:
      - { on: fall_reported, to: b }
      - { on: task_done:call, to: b }
      - { on: alarm:bp_high, to: b }
      - { on: scale_answered:epds, to: b }
      - { when: 'event_count("app_check_in") > 2', to: b }
  - { id: b, phase: closed, terminal: true }
"#;

    fn pathway() -> Pathway {
        let c = compile_yaml(
            "p.yaml",
            PATHWAY.as_bytes(),
            std::path::Path::new(""),
            &FsLoader,
        );
        assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
        c.pathway.expect("pathway")
    }

    #[test]
    fn built_in_families_name_what_the_pathway_has() {
        let p = pathway();
        let known = Known::of(&p);
        for ok in [
            "fall_reported",
            "discharged",
            "task_done:call",
            "task_done:alarm_bp_high",
            "task_done:critical_epds_q10",
            "alarm:bp_high",
            "scale_answered:epds",
            "scale_expired:epds",
            "referral_accepted",
        ] {
            assert_eq!(known.resolve(ok), Ok(()), "{ok}");
        }
        let code = |name: &str| known.resolve(name).map_err(|p| p.code);
        assert_eq!(code("task_done:cal"), Err(Code::UnknownEvent));
        assert!(
            known
                .resolve("task_done:cal")
                .unwrap_err()
                .hint
                .contains("`task_done:call`")
        );
        assert_eq!(code("alarm:bp_low"), Err(Code::UnknownEvent));
        assert_eq!(code("scale_answered:phq9"), Err(Code::UnknownEvent));
        assert_eq!(code("scale_answered:phq99"), Err(Code::UnknownScale));
        assert_eq!(code("fall_reportd"), Err(Code::UnknownEvent));
        assert!(
            known
                .resolve("fall_reportd")
                .unwrap_err()
                .hint
                .contains("`fall_reported`")
        );
        assert!(
            known
                .resolve("task_done")
                .unwrap_err()
                .hint
                .contains("task_done:<task>")
        );
        assert!(
            known
                .resolve("moved_house")
                .unwrap_err()
                .hint
                .contains("events:")
        );
    }

    #[test]
    fn the_api_accepts_declared_and_built_in_events_only() {
        let p = pathway();
        for ok in [
            "fall_reported",
            "app_check_in",
            "died",
            "task_done:anything",
        ] {
            assert_eq!(refusal(&p, ok), None, "{ok}");
        }
        let why = refusal(&p, "fall_reportd").expect("refused");
        assert!(why.contains("did you mean `fall_reported`?"), "{why}");
        assert!(why.contains("`task_done:<task>`"), "{why}");
        assert!(refusal(&p, "task_done").is_some());
    }

    #[test]
    fn a_version_published_without_declarations_accepts_what_it_waits_for() {
        let mut p = pathway();
        p.events.clear();
        assert_eq!(refusal(&p, "fall_reported"), None);
        assert_eq!(refusal(&p, "app_check_in"), None);
        let why = refusal(&p, "wound_photo").expect("refused");
        assert!(why.contains("declares no events of its own"), "{why}");
    }
}
