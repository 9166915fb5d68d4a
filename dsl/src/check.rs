//! Whole-pathway checks that run after lowering: names, expressions and the state graph.
//!
//! Pathways legitimately loop (remind → wait → remind), so the graph check does not forbid cycles; it
//! looks for groups of states with no way out (strongly connected components that nothing leaves and
//! that hold no terminal state) and for cycles made only of immediate transitions, which would spin.

use std::collections::{HashMap, HashSet, VecDeque};

use petgraph::algo::tarjan_scc;
use petgraph::graph::DiGraph;
use petgraph::visit::EdgeRef;

use crate::catalog;
use crate::counter::{self, Counter, CounterError, Names};
use crate::diag::{Code, Diagnostic, closest, suggest};
use crate::events;
use crate::expr::{ExprChecker, Purpose};
use crate::guards;
use crate::lower::{Loc, SourceMap};
use crate::model::{Action, Pathway, Trigger};

struct Sink<'a> {
    diags: &'a mut Vec<Diagnostic>,
}

impl Sink<'_> {
    fn at(&mut self, code: Code, loc: &Loc, message: impl Into<String>, hint: impl Into<String>) {
        self.diags
            .push(Diagnostic::error(code, &loc.file, loc.pos, message, hint));
    }
}

pub(crate) fn check_pathway(
    p: &Pathway,
    map: &SourceMap,
    checker: &ExprChecker,
    diags: &mut Vec<Diagnostic>,
) {
    let mut sink = Sink { diags };
    let fallback = map.root.clone().unwrap_or(Loc {
        file: String::new(),
        pos: crate::diag::Pos::START,
    });
    let state_loc = |i: usize| {
        map.states
            .get(i)
            .cloned()
            .unwrap_or_else(|| fallback.clone())
    };
    // Where transition `ti` of state `si` was written (its state, failing that).
    let transition_loc = |si: usize, ti: usize| {
        map.transitions
            .get(si)
            .and_then(|v| v.get(ti))
            .cloned()
            .unwrap_or_else(|| state_loc(si))
    };

    // Duplicate ids.
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, s) in p.states.iter().enumerate() {
        if let Some(first) = seen.insert(&s.id, i) {
            let line = state_loc(first).pos.line;
            sink.at(
                Code::DuplicateId,
                &state_loc(i),
                format!("state `{}` is defined twice", s.id),
                format!("the first definition is on line {line}; rename one"),
            );
        }
    }
    let mut entry_seen = HashSet::new();
    for (i, e) in p.entry_points.iter().enumerate() {
        if !entry_seen.insert(&e.id) {
            let loc = map.entry_point_ids.get(i).unwrap_or(&fallback);
            sink.at(
                Code::DuplicateId,
                loc,
                format!("entry point `{}` is defined twice", e.id),
                "",
            );
        }
    }
    let mut action_seen: HashMap<&str, &Loc> = HashMap::new();
    for (id, loc) in &map.action_ids {
        if let Some(first) = action_seen.insert(id, loc) {
            sink.at(
                Code::DuplicateId,
                loc,
                format!("action id `{id}` is used twice"),
                format!(
                    "the first is at line {}; ids name one action",
                    first.pos.line
                ),
            );
        }
    }

    // What `cancel` actions name: a task, follow-up or scale push of the pathway with that id.
    let work_ids: Vec<&str> = p.actions().filter_map(|(_, a)| a.work_id()).collect();
    let other_ids: Vec<(&str, &str)> = p
        .actions()
        .flat_map(|(_, a)| match a {
            Action::Risk(r) => vec![(r.id.as_str(), "a risk prediction")],
            Action::Goal(g) => vec![(g.id.as_str(), "a goal")],
            Action::Alarm(al) => {
                let mut ids = vec![(al.id.as_str(), "an alarm rule")];
                ids.extend(al.task.id.as_deref().map(|t| (t, "an alarm's task")));
                ids
            }
            _ => Vec::new(),
        })
        .collect();
    for (target, loc) in &map.cancels {
        if work_ids.contains(&target.as_str()) {
            continue;
        }
        let message = match other_ids.iter().find(|(id, _)| id == target) {
            Some((_, what)) => {
                format!("`cancel: {target}` names {what}, which is not work a `cancel` can end")
            }
            None => format!("`cancel: {target}` names no action of this pathway"),
        };
        let hint = match closest(target, work_ids.iter().copied()) {
            Some(c) => format!("did you mean `{c}`?"),
            None if work_ids.is_empty() => {
                "give the task, follow-up or scale push to cancel an `id`".into()
            }
            None => format!(
                "`cancel` names a task, follow-up or scale push by its `id`: {}",
                work_ids.join(", ")
            ),
        };
        sink.at(Code::UnknownCancel, loc, message, hint);
    }

    // Roles.
    for (role, loc) in &map.declared_roles {
        if !catalog::ROLES.contains(&role.as_str()) {
            sink.at(
                Code::UnknownRole,
                loc,
                format!("unknown role `{role}`"),
                suggest(role, catalog::ROLES),
            );
        }
    }
    let declared: Vec<&str> = p.roles.iter().map(String::as_str).collect();
    for (role, loc) in &map.roles {
        if !declared.contains(&role.as_str()) {
            let hint = if catalog::ROLES.contains(&role.as_str()) {
                format!("add `{role}` to the pathway's `roles`")
            } else {
                suggest(role, &declared)
            };
            sink.at(
                Code::UnknownRole,
                loc,
                format!("role `{role}` is not one of the pathway's roles"),
                hint,
            );
        }
    }

    // Targets.
    let index: HashMap<&str, usize> = p
        .states
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let names: Vec<&str> = p.states.iter().map(|s| s.id.as_str()).collect();
    for (i, e) in p.entry_points.iter().enumerate() {
        if !index.contains_key(e.state.as_str()) {
            let loc = map.entry_points.get(i).unwrap_or(&fallback);
            sink.at(
                Code::UnknownState,
                loc,
                format!(
                    "entry point `{}` starts at `{}`, which is not a state",
                    e.id, e.state
                ),
                suggest(&e.state, &names),
            );
        }
    }
    for (si, s) in p.states.iter().enumerate() {
        for (ti, t) in s.transitions.iter().enumerate() {
            if !index.contains_key(t.to.as_str()) {
                let loc = transition_loc(si, ti);
                sink.at(
                    Code::UnknownState,
                    &loc,
                    format!(
                        "transition from `{}` goes to `{}`, which is not a state",
                        s.id, t.to
                    ),
                    suggest(&t.to, &names),
                );
            }
            // A withdrawal ends the enrolment: routed, it goes to the state of its closing work.
            if matches!(&t.trigger, Trigger::Event(e) if e == catalog::WITHDRAWN)
                && let Some(target) = index.get(t.to.as_str()).map(|&i| &p.states[i])
                && !target.terminal
            {
                sink.at(
                    Code::InvalidValue,
                    &transition_loc(si, ti),
                    format!(
                        "`on: {}` from `{}` goes to `{}`, which is not terminal",
                        catalog::WITHDRAWN,
                        s.id,
                        t.to
                    ),
                    "a withdrawal ends the enrolment: route it to a terminal state whose actions are the closing work",
                );
            }
        }
        if s.terminal && !s.transitions.is_empty() {
            sink.at(
                Code::InvalidValue,
                &state_loc(si),
                format!("terminal state `{}` has transitions", s.id),
                "a terminal state ends the enrolment; remove `terminal: true` or the transitions",
            );
        }
    }

    // Expressions and variables.
    let var_names: Vec<String> = p.variables.iter().map(|v| v.name.clone()).collect();
    let mut used: HashSet<String> = HashSet::new();
    let tasks: HashMap<&str, &crate::model::TaskSpec> = p.tasks().collect();
    // Events named in expressions (`days_since("discharged")`), checked with the transitions' own.
    let mut event_uses: Vec<(String, Loc)> = map.event_uses.clone();
    let schedules = p.schedule_ids();
    for e in &map.exprs {
        if let Some(c) = checker.check(&e.src, e.purpose, &var_names, &e.site, sink.diags) {
            for lit in &c.outcome_literals {
                outcome_check(&tasks, lit, &e.site.file, sink.diags);
            }
            for (name, pos) in &c.schedule_literals {
                if !schedules.contains(&name.as_str()) {
                    let hint = if schedules.is_empty() {
                        "the pathway has no schedules; `occurrence` counts a schedule's occurrences"
                            .to_string()
                    } else {
                        suggest(name, &schedules)
                    };
                    sink.diags.push(Diagnostic::error(
                        Code::UnknownSchedule,
                        &e.site.file,
                        *pos,
                        format!("`occurrence(\"{name}\")` names no schedule of this pathway"),
                        hint,
                    ));
                }
            }
            event_uses.extend(c.event_literals.into_iter().map(|(name, pos)| {
                let loc = Loc {
                    file: e.site.file.clone(),
                    pos,
                };
                (name, loc)
            }));
            if c.constant && e.purpose == Purpose::Guard {
                sink.diags.push(Diagnostic::error(
                    Code::ConstantGuard,
                    &e.site.file,
                    e.site.pos,
                    format!("guard `{}` is constant", e.src),
                    "a guard should read patient facts; drop `when` for a transition that is always taken",
                ));
            }
            used.extend(c.variables);
        }
    }
    // The LACE model reads its inputs from these variables.
    if p.actions().any(|(_, a)| matches!(a, crate::model::Action::Risk(r) if r.model == crate::model::RiskModel::Lace)) {
        used.extend(["los_days", "acute_admission", "charlson", "ed_visits"].map(String::from));
    }
    for (name, loc) in &map.assignments {
        if !var_names.contains(name) {
            let known: Vec<&str> = var_names.iter().map(String::as_str).collect();
            sink.at(
                Code::UnknownVariable,
                loc,
                format!("`set` writes `{name}`, which is not a declared variable"),
                suggest(name, &known),
            );
        }
    }
    for (v, loc) in p.variables.iter().zip(&map.variables) {
        if !used.contains(&v.name) {
            sink.at(
                Code::UnusedVariable,
                loc,
                format!("variable `{}` is never read by a guard or formula", v.name),
                "remove it, or use it in a `when`",
            );
        }
    }

    // Shadowed transitions.
    for (si, s) in p.states.iter().enumerate() {
        let mut always = false;
        let mut events: HashSet<&str> = HashSet::new();
        for (ti, t) in s.transitions.iter().enumerate() {
            let loc = transition_loc(si, ti);
            let shadowed =
                always || matches!(&t.trigger, Trigger::Event(e) if events.contains(e.as_str()));
            if shadowed {
                sink.at(Code::ShadowedTransition, &loc, format!("this transition from `{}` can never be taken", s.id), "an earlier transition always matches first; transitions are tried in written order");
            }
            if t.guard.is_none() {
                match &t.trigger {
                    Trigger::Immediate => always = true,
                    Trigger::Event(e) => {
                        events.insert(e);
                    }
                    _ => {}
                }
            }
        }
    }

    // Work made in a state that is always left in the step that enters it.
    for (si, s) in p.states.iter().enumerate() {
        let Some(ti) = s
            .transitions
            .iter()
            .position(|t| t.trigger == Trigger::Immediate && t.guard.is_none())
        else {
            continue;
        };
        let mut lost: Vec<&str> = Vec::new();
        for a in &s.on_enter {
            let work = crate::policy::Work::of_action(a);
            if work.is_some_and(|w| crate::policy::ends(w, crate::policy::Cause::BornIntoLeftState))
                && !lost.contains(&a.kind())
            {
                lost.push(a.kind());
            }
        }
        if lost.is_empty() {
            continue;
        }
        let loc = transition_loc(si, ti);
        sink.at(
            Code::WorkBornEnded,
            &loc,
            format!(
                "`{}` is always left in the step that enters it, so its {} actions are cancelled as they are made and never reach anyone",
                s.id,
                lost.join(", ")
            ),
            "give this transition a wait or a guard, move the actions to the state it leads to, or mark a task `keep: true`",
        );
    }

    let known = events::Known::of(p);
    let mut counted = indicator_checks(p, map, &known, &mut sink);
    event_checks(p, map, &known, &event_uses, &mut counted, &mut sink);
    graph_checks(p, map, &index, &mut sink, &state_loc);
}

/// A guard compares a task's outcome with a value that task accepts; a value it does not accept
/// is a branch no one can ever take.
fn outcome_check(
    tasks: &HashMap<&str, &crate::model::TaskSpec>,
    lit: &crate::expr::OutcomeLiteral,
    file: &str,
    diags: &mut Vec<Diagnostic>,
) {
    let Some(task) = tasks.get(lit.task.as_str()) else {
        let mut ids: Vec<&str> = tasks.keys().copied().collect();
        ids.sort_unstable();
        diags.push(Diagnostic::error(
            Code::UnknownOutcome,
            file,
            lit.pos,
            format!("`outcome(\"{}\")` names no task of this pathway", lit.task),
            suggest(&lit.task, &ids),
        ));
        return;
    };
    let accepted = task.accepted_outcomes();
    if !accepted.contains(&lit.outcome.as_str()) {
        let hint = if task.outcomes.is_empty() {
            format!(
                "task `{}` declares no `outcomes:`, so it accepts only {}; declare the ones staff record, e.g. `outcomes: [{}, …]`",
                lit.task,
                accepted.join(", "),
                lit.outcome
            )
        } else {
            format!(
                "task `{}` accepts {}; add `{}` to its `outcomes:` or compare with one of them",
                lit.task,
                accepted.join(", "),
                lit.outcome
            )
        };
        diags.push(Diagnostic::error(
            Code::UnknownOutcome,
            file,
            lit.pos,
            format!(
                "task `{}` can never complete with outcome `{}`",
                lit.task, lit.outcome
            ),
            hint,
        ));
    }
}

/// Every event a transition waits for, a schedule or time counts from or ends at, or an expression
/// reads is one the pathway has (declared, or built in and naming a task, alarm or scale of the
/// pathway); every declared event is used by one of them or by an indicator (`counted`, the events
/// indicators count).
fn event_checks(
    p: &Pathway,
    map: &SourceMap,
    known: &events::Known<'_>,
    uses: &[(String, Loc)],
    counted: &mut HashSet<String>,
    sink: &mut Sink<'_>,
) {
    for (name, loc) in uses {
        if let Err(problem) = known.resolve(name) {
            sink.at(problem.code, loc, problem.message, problem.hint);
        }
        counted.insert(name.clone());
    }
    for (e, loc) in p.events.iter().zip(&map.declared_events) {
        if !counted.contains(&e.name) {
            sink.at(
                Code::UnusedEvent,
                loc,
                format!(
                    "event `{}` is declared but nothing waits for it, counts from it, reads it or counts it",
                    e.name
                ),
                "remove it from `events:`, or add a transition `on:` it",
            );
        }
    }
}

/// Indicator counters parse, and name goals, states, tasks, scales and events the pathway has.
/// Returns the events they count.
fn indicator_checks(
    p: &Pathway,
    map: &SourceMap,
    events_known: &events::Known<'_>,
    sink: &mut Sink<'_>,
) -> HashSet<String> {
    let mut counted = HashSet::new();
    let mut seen: HashMap<&str, &Loc> = HashMap::new();
    for (id, loc) in &map.indicator_ids {
        if let Some(first) = seen.insert(id, loc) {
            sink.at(
                Code::DuplicateId,
                loc,
                format!("indicator `{id}` is defined twice"),
                format!("the first is at line {}", first.pos.line),
            );
        }
    }
    let goals: Vec<&str> = p
        .goals
        .iter()
        .map(|g| g.id.as_str())
        .chain(p.actions().filter_map(|(_, a)| match a {
            Action::Goal(g) => Some(g.id.as_str()),
            _ => None,
        }))
        .collect();
    let states: Vec<&str> = p.states.iter().map(|s| s.id.as_str()).collect();
    let task_refs = p.task_refs();
    let tasks: Vec<&str> = task_refs.iter().map(String::as_str).collect();
    let known = |names: Names| -> (&str, Vec<&str>) {
        match names {
            Names::Goal => ("goal", goals.clone()),
            Names::State => ("state", states.clone()),
            Names::Task => ("task", tasks.clone()),
            Names::Scale => ("scale", catalog::SCALES.to_vec()),
            Names::Event => ("event", Vec::new()),
            Names::Nothing => ("", Vec::new()),
        }
    };
    // A list of choices, shortened when long.
    let choices = |what: &str, names: &[&str]| -> String {
        match names.len() {
            0 => format!("the pathway declares no {what} with an id"),
            1..=12 => format!("{what}s: {}", names.join(", ")),
            n => format!("{what}s: {}, … ({n} in all)", names[..12].join(", ")),
        }
    };
    for (text, loc) in &map.counters {
        let counter = match Counter::parse(text) {
            Ok(c) => c,
            Err(e) => {
                let hint = match &e {
                    CounterError::UnknownKind(k) => suggest(k, &counter::kind_names()),
                    CounterError::UnexpectedId(k) => format!("write `{k}` alone"),
                    CounterError::MissingId(k) => {
                        let names = counter::KINDS
                            .iter()
                            .find(|(kind, _, _)| kind == k)
                            .map(|(_, n, _)| *n)
                            .unwrap_or(Names::Nothing);
                        let (what, ids) = known(names);
                        match ids.first() {
                            Some(first) => format!("write `{k}:<{what}>`, e.g. `{k}:{first}`"),
                            None => format!("write `{k}:<{what}>`"),
                        }
                    }
                    CounterError::BadId(..) => {
                        "ids start with a lower-case letter and use only a-z, 0-9 and _".into()
                    }
                };
                sink.at(Code::UnknownCounter, loc, e.to_string(), hint);
                continue;
            }
        };
        let (what, ids) = known(counter.names());
        if counter.names() == Names::Event {
            let name = counter.id().unwrap_or_default();
            if let Err(problem) = events_known.resolve(name) {
                sink.at(
                    Code::UnknownCounter,
                    loc,
                    format!(
                        "`{text}` counts an event the pathway cannot receive: {}",
                        problem.message
                    ),
                    problem.hint,
                );
            }
            counted.insert(name.to_string());
            continue;
        }
        if counter.names() == Names::Nothing {
            continue;
        }
        let id = counter.id().unwrap_or_default();
        if !ids.contains(&id) {
            let hint = match closest(id, ids.iter().copied()) {
                Some(c) => format!("did you mean `{}:{c}`?", counter.kind()),
                None => choices(what, &ids),
            };
            sink.at(
                Code::UnknownCounter,
                loc,
                format!("`{text}` counts {what} `{id}`, which the pathway does not have"),
                hint,
            );
        }
    }
    counted
}

fn graph_checks(
    p: &Pathway,
    map: &SourceMap,
    index: &HashMap<&str, usize>,
    sink: &mut Sink<'_>,
    state_loc: &dyn Fn(usize) -> Loc,
) {
    let n = p.states.len();
    let mut g: DiGraph<usize, ()> = DiGraph::with_capacity(n, n * 2);
    let nodes: Vec<_> = (0..n).map(|i| g.add_node(i)).collect();
    // Transitions taken without waiting: no trigger, or a wait of zero.
    let mut imm: Vec<ImmEdge> = Vec::new();
    for (si, s) in p.states.iter().enumerate() {
        for (k, t) in s.transitions.iter().enumerate() {
            let Some(&ti) = index.get(t.to.as_str()) else {
                continue;
            };
            g.add_edge(nodes[si], nodes[ti], ());
            let no_wait = match &t.trigger {
                Trigger::Immediate => true,
                Trigger::After { after, at: None } => after.nominal_seconds() == 0,
                // A time from the enrolment or an event may have passed when the state is
                // entered: it does not make a cycle wait.
                Trigger::Anchored(_) => true,
                _ => false,
            };
            if no_wait {
                imm.push(ImmEdge {
                    from: si,
                    to: ti,
                    transition: k,
                    requires: t
                        .guard
                        .as_ref()
                        .map(|g| guards::requires(&g.0))
                        .unwrap_or_default(),
                });
            }
        }
    }

    // Reachability from the entry points.
    let mut reached = vec![false; n];
    let mut queue: VecDeque<usize> = p
        .entry_points
        .iter()
        .filter_map(|e| index.get(e.state.as_str()).copied())
        .collect();
    for &i in &queue {
        reached[i] = true;
    }
    while let Some(i) = queue.pop_front() {
        for nb in g.neighbors(nodes[i]) {
            let j = g[nb];
            if !reached[j] {
                reached[j] = true;
                queue.push_back(j);
            }
        }
    }
    if !p.entry_points.is_empty() {
        for (i, s) in p.states.iter().enumerate() {
            if !reached[i] && index.get(s.id.as_str()) == Some(&i) {
                sink.at(
                    Code::UnreachableState,
                    &state_loc(i),
                    format!("state `{}` cannot be reached from any entry point", s.id),
                    "add a transition into it, or remove it",
                );
            }
        }
    }

    // Groups of states with no way out.
    for scc in tarjan_scc(&g) {
        let members: HashSet<usize> = scc.iter().map(|ni| g[*ni]).collect();
        if members.iter().any(|&i| p.states[i].terminal) {
            continue;
        }
        let leaves = members
            .iter()
            .any(|&i| g.neighbors(nodes[i]).any(|nb| !members.contains(&g[nb])));
        if leaves {
            continue;
        }
        let mut ids: Vec<usize> = members.into_iter().collect();
        ids.sort_unstable();
        let first = ids[0];
        if ids.len() == 1 && p.states[first].transitions.is_empty() {
            sink.at(
                Code::NoWayOut,
                &state_loc(first),
                format!(
                    "state `{}` is not terminal and has no transitions",
                    p.states[first].id
                ),
                "add a transition out of it, or mark it `terminal: true`",
            );
        } else {
            let names: Vec<&str> = ids.iter().map(|&i| p.states[i].id.as_str()).collect();
            sink.at(
                Code::NoWayOut,
                &state_loc(first),
                format!("states {} form a loop with no way out", names.join(", ")),
                "add a transition that leaves the loop (e.g. on `died`, or after a final timeout) to a state that ends",
            );
        }
    }

    // Cycles of transitions with no wait.
    no_wait_checks(p, map, &g, &nodes, &imm, sink, state_loc);
}

/// Cycles of transitions with no wait (no trigger, a wait of zero, or a time from an anchor that
/// may have passed). Each elementary cycle is read from the state it is entered at (the first of
/// its states reached from the pathway's entry points, breadth first in written order), so the
/// transition that closes it is the one returning to that state. A cycle whose guards exclude
/// each other never spins; one whose states change what its guards read (`set`, a risk result)
/// may spin, warning `W004`; any other spins whenever its guards hold together, error `E010`.
fn no_wait_checks(
    p: &Pathway,
    map: &SourceMap,
    g: &DiGraph<usize, ()>,
    nodes: &[petgraph::graph::NodeIndex],
    imm: &[ImmEdge],
    sink: &mut Sink<'_>,
    state_loc: &dyn Fn(usize) -> Loc,
) {
    let n = p.states.len();
    // The order states are reached in from the entry points; unreached ones after, as written.
    let mut rank: Vec<usize> = vec![usize::MAX; n];
    let mut next = 0usize;
    let mut queue: VecDeque<usize> = VecDeque::new();
    for e in &p.entry_points {
        if let Some(i) = p.state_index(&e.state)
            && rank[i] == usize::MAX
        {
            rank[i] = next;
            next += 1;
            queue.push_back(i);
        }
    }
    while let Some(i) = queue.pop_front() {
        let mut out: Vec<_> = g.edges(nodes[i]).collect();
        // petgraph lists a node's edges newest first.
        out.sort_by_key(|e| e.id());
        for e in out {
            let j = g[e.target()];
            if rank[j] == usize::MAX {
                rank[j] = next;
                next += 1;
                queue.push_back(j);
            }
        }
    }
    for (i, r) in rank.iter_mut().enumerate() {
        if *r == usize::MAX {
            *r = n + i;
        }
    }

    let (cycles, complete) = elementary_cycles(n, imm, &rank);
    // One report per closing transition: its shortest cycle of each verdict.
    let mut reported: HashMap<(usize, usize), Code> = HashMap::new();
    let mut found: Vec<(Code, Vec<&ImmEdge>)> = Vec::new();
    for cycle in cycles {
        let Some(code) = verdict(p, &cycle) else {
            continue;
        };
        found.push((code, cycle));
    }
    found.sort_by_key(|(code, c)| (*code != Code::ImmediateCycle, c.len()));
    for (code, cycle) in found {
        let Some(last) = cycle.last() else { continue };
        let closing = (last.from, last.transition);
        if reported.contains_key(&closing) {
            continue;
        }
        reported.insert(closing, code);
        let names: Vec<String> = cycle
            .iter()
            .map(|e| format!("`{}`", p.states[e.from].id))
            .collect();
        let path: Vec<&str> = cycle
            .iter()
            .map(|e| p.states[e.from].id.as_str())
            .chain([p.states[cycle[0].from].id.as_str()])
            .collect();
        let loc = map
            .transitions
            .get(last.from)
            .and_then(|v| v.get(last.transition))
            .cloned()
            .unwrap_or_else(|| state_loc(last.from));
        let msg = if code == Code::ImmediateCycle {
            format!(
                "this transition closes a cycle of transitions with no wait ({}) whose guards can all hold: the states {} would be entered over and over at one instant",
                path.join(" → "),
                names.join(", ")
            )
        } else {
            format!(
                "this transition closes a cycle of transitions with no wait ({}) through states {} that change what its guards read: it spins if the changes let the guards hold again",
                path.join(" → "),
                names.join(", ")
            )
        };
        sink.at(
            code,
            &loc,
            msg,
            "give one of these transitions an event (`on:`) or a wait longer than zero (`after:`/`at:`), or guards that cannot hold together",
        );
    }
    if !complete {
        sink.at(
            Code::ImmediateCycle,
            &map.root.clone().unwrap_or_else(|| state_loc(0)),
            "the transitions with no wait form too many cycles to check each one",
            "give some of these transitions an event (`on:`) or a wait longer than zero",
        );
    }
}

/// What a cycle of transitions with no wait is: `None` when its guards exclude each other,
/// `W004` when its states change what its guards read, `E010` otherwise.
fn verdict(p: &Pathway, cycle: &[&ImmEdge]) -> Option<Code> {
    let requires: Vec<&guards::Requires> = cycle.iter().map(|e| &e.requires).collect();
    // What entering (or staying in) a state on the cycle may change.
    let mut changing: Vec<guards::Term> = Vec::new();
    for e in cycle {
        for a in p.states[e.to].actions() {
            match a {
                Action::Set(assignments) => changing.extend(
                    assignments
                        .iter()
                        .map(|(name, _)| guards::Term::Variable(name.clone())),
                ),
                Action::Risk(r) => changing.extend(
                    ["risk", "risk_band"].map(|f| guards::Term::Call(format!("{f}({:?})", r.id))),
                ),
                _ => {}
            }
        }
    }
    if guards::exclude_each_other(&requires, &changing) {
        return None;
    }
    let reads_change = changing.iter().any(|t| {
        requires.iter().any(|r| match t {
            guards::Term::Variable(v) => r.variables.contains(v),
            guards::Term::Call(c) => r.risks.iter().any(|x| c.ends_with(&format!("({x:?})"))),
        })
    });
    Some(if reads_change {
        Code::GuardedImmediateCycle
    } else {
        Code::ImmediateCycle
    })
}

/// A transition taken without waiting, from state `from` (its `transition`-th) to state `to`, and
/// what its guard requires.
struct ImmEdge {
    from: usize,
    to: usize,
    transition: usize,
    requires: guards::Requires,
}

/// At most this many steps of the search for cycles, so that no pathway makes validation slow.
const CYCLE_SEARCH_BUDGET: usize = 100_000;

/// Every elementary cycle of `edges`, each as its edges in the order taken from the state of
/// lowest `rank` on it; and whether the search completed within its budget.
fn elementary_cycles<'e>(
    n: usize,
    edges: &'e [ImmEdge],
    rank: &[usize],
) -> (Vec<Vec<&'e ImmEdge>>, bool) {
    let mut out_edges: Vec<Vec<&ImmEdge>> = vec![Vec::new(); n];
    for e in edges {
        out_edges[e.from].push(e);
    }
    let mut starts: Vec<usize> = (0..n).collect();
    starts.sort_by_key(|&i| rank[i]);
    let mut budget = CYCLE_SEARCH_BUDGET;
    let mut cycles = Vec::new();
    for &start in &starts {
        // Paths from `start` through states ranked after it, back to `start`.
        let mut path: Vec<&ImmEdge> = Vec::new();
        let mut on_path = vec![false; n];
        on_path[start] = true;
        // Each frame: a state and the index of its next edge to try.
        let mut frames: Vec<(usize, usize)> = vec![(start, 0)];
        while let Some(&(at, k)) = frames.last() {
            if budget == 0 {
                return (cycles, false);
            }
            budget -= 1;
            let Some(e) = out_edges[at].get(k).copied() else {
                frames.pop();
                on_path[at] = false;
                path.pop();
                continue;
            };
            if let Some(top) = frames.last_mut() {
                top.1 += 1;
            }
            if e.to == start {
                let mut cycle = path.clone();
                cycle.push(e);
                cycles.push(cycle);
            } else if rank[e.to] > rank[start] && !on_path[e.to] {
                on_path[e.to] = true;
                path.push(e);
                frames.push((e.to, 0));
            }
        }
    }
    (cycles, true)
}
