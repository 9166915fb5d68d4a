//! Expectations, checked against the patient as the runner keeps it at the expectation's instant.
//! Each key of an expectation is its own assertion, and each failure says what was expected and
//! what exists (the caller adds the case and the instant).
//!
//! Work made already cancelled (its state was left at the instant it was made) never reached a
//! board or the patient: no positive assertion matches it and no `no_…` assertion counts it, but
//! failure messages list it, saying so.

use jiff::Timestamp;

use super::format::{Expect, PushExpect, ReferralExpect, instant, local};
use super::world::{Item, WorkStatus, World, direction_name};
use crate::step::Produced;

/// What one expectation requires of one piece of work: each field that is given must match.
#[derive(Default)]
struct Wanted<'a> {
    kind: &'static str,
    name: Option<&'a str>,
    role: Option<&'a str>,
    priority: Option<&'a str>,
    channel: Option<&'a str>,
    to: Option<&'a str>,
    due: Option<&'a str>,
    status: Option<&'a str>,
    held_by: Option<&'a str>,
    sent: Option<&'a str>,
}

impl Wanted<'_> {
    /// In words, for a failure message.
    fn describe(&self) -> String {
        let noun = match self.kind {
            "task" => "a task",
            "follow_up" => "a follow-up",
            "scale_push" => "a push of a scale",
            _ => "a referral",
        };
        let mut parts = vec![noun.to_string()];
        if let Some(n) = self.name {
            parts.push(format!("`{n}`"));
        }
        for (label, v) in [
            ("role", self.role),
            ("priority", self.priority),
            ("channel", self.channel),
            ("to", self.to),
            ("due", self.due),
            ("status", self.status),
            ("held by", self.held_by),
            ("sent", self.sent),
        ] {
            if let Some(v) = v {
                parts.push(format!("{label} {v}"));
            }
        }
        parts.join(" ")
    }
}

/// Every failed assertion of `x` at `t`.
pub(super) fn check(x: &Expect, w: &World<'_>) -> Vec<String> {
    let mut fails = Vec::new();
    let e = &w.enrolment;
    if let Some(state) = &x.state
        && &e.state != state
    {
        fails.push(format!(
            "expected state `{state}`, but the patient is in `{}` ({})",
            e.state,
            e.status.as_str()
        ));
    }
    if let Some(status) = &x.status
        && e.status.as_str() != status
    {
        fails.push(format!(
            "expected status `{status}`, found `{}` (in `{}`)",
            e.status.as_str(),
            e.state
        ));
    }
    let mut wanted = Vec::new();
    if let Some(task) = &x.task {
        wanted.push(Wanted {
            kind: "task",
            name: task.id.as_deref(),
            role: task.role.as_deref(),
            priority: task.priority.as_deref(),
            due: task.due.as_deref(),
            status: task.status.as_deref(),
            held_by: task.held_by.as_deref(),
            ..Default::default()
        });
    }
    if let Some(f) = &x.follow_up {
        wanted.push(Wanted {
            kind: "follow_up",
            name: Some(&f.template),
            channel: f.channel.as_deref(),
            due: f.due.as_deref(),
            status: f.status.as_deref(),
            sent: f.sent.as_deref(),
            ..Default::default()
        });
    }
    match &x.scale_push {
        Some(PushExpect::Scale(scale)) => wanted.push(Wanted {
            kind: "scale_push",
            name: Some(scale),
            ..Default::default()
        }),
        Some(PushExpect::Push(p)) => wanted.push(Wanted {
            kind: "scale_push",
            name: Some(&p.scale),
            due: p.due.as_deref(),
            status: p.status.as_deref(),
            ..Default::default()
        }),
        None => {}
    }
    match &x.referral {
        Some(ReferralExpect::Direction(d)) => wanted.push(Wanted {
            kind: "referral",
            name: Some(d),
            ..Default::default()
        }),
        Some(ReferralExpect::Referral(r)) => wanted.push(Wanted {
            kind: "referral",
            name: r.direction.as_deref(),
            to: r.to.as_deref(),
            due: r.due.as_deref(),
            status: r.status.as_deref(),
            ..Default::default()
        }),
        None => {}
    }
    for want in &wanted {
        match find(want, w) {
            Ok(true) => {}
            Ok(false) => fails.push(format!(
                "expected {}; {} so far: {}",
                want.describe(),
                plural(want.kind),
                w.describe(want.kind)
            )),
            Err(e) => fails.push(e),
        }
    }
    for (kind, name) in [
        ("task", &x.no_task),
        ("follow_up", &x.no_follow_up),
        ("scale_push", &x.no_scale_push),
        ("referral", &x.no_referral),
    ] {
        let Some(name) = name else { continue };
        if kind == "referral" && !matches!(name.as_str(), "up" | "down" | "any") {
            fails.push(format!(
                "`no_referral: {name}`: write `up`, `down` or `any`"
            ));
            continue;
        }
        let made: Vec<String> = w
            .items
            .iter()
            .filter(|it| {
                !it.born_ended
                    && it.made.action.kind() == kind
                    && (it.name() == *name || name == "any")
            })
            .map(|it| w.describe_item(it))
            .collect();
        if !made.is_empty() {
            fails.push(format!(
                "expected no {} `{name}`, but {} made: {}",
                kind.replace('_', " "),
                if made.len() == 1 {
                    "one was"
                } else {
                    "some were"
                },
                made.join("; ")
            ));
        }
    }
    if let Some(model) = &x.risk
        && !w.items.iter().any(|it| {
            !it.born_ended
                && matches!(&it.made.action, Produced::Risk { model: m, .. } if m == model)
        })
    {
        let made: Vec<String> = w
            .items
            .iter()
            .filter_map(|it| match &it.made.action {
                Produced::Risk { model, band, .. } => Some(format!("{model} ({band})")),
                _ => None,
            })
            .collect();
        fails.push(format!(
            "expected a `{model}` risk prediction; predictions so far: {}",
            if made.is_empty() {
                "none".into()
            } else {
                made.join(", ")
            }
        ));
    }
    if let Some(o) = &x.occurrence {
        fails.extend(occurrence(o, w));
    }
    if let Some(a) = &x.alarm {
        fails.extend(alarm(a, w));
    }
    if let Some(id) = &x.no_alarm
        && let Some(n) = w.episodes_opened.get(id)
    {
        fails.push(format!(
            "expected no episode of alarm `{id}`, but {n} opened ({})",
            if w.episodes.contains(id) {
                "one is open"
            } else {
                "none is open now"
            }
        ));
    }
    if let Some(vars) = &x.var {
        for (name, want) in vars {
            let got = e
                .vars
                .get(name)
                .map(|v| serde_json::to_value(v).unwrap_or_default());
            let same = match (&got, want.as_f64()) {
                (Some(g), Some(w)) => g.as_f64().is_some_and(|g| (g - w).abs() < 1e-9),
                (Some(g), None) => g == want,
                _ => false,
            };
            if !same {
                fails.push(format!(
                    "expected variable `{name}` = {want}, found {}",
                    got.map(|g| g.to_string()).unwrap_or("nothing".into())
                ));
            }
        }
    }
    fails
}

/// The work occurrence `n` of a schedule made (keys `…:<schedule>#<n>:…`), not born ended.
fn occurrence(o: &super::format::OccurrenceExpect, w: &World<'_>) -> Option<String> {
    let mark = format!(":{}#{}:", o.schedule, o.n);
    let made = match o.made.as_deref().map(|m| instant(w.start, m, &w.tz)) {
        Some(Err(e)) => return Some(format!("`made`: {e}")),
        Some(Ok(t)) => Some(t),
        None => None,
    };
    let of_it: Vec<&Item> = w
        .items
        .iter()
        .filter(|it| !it.born_ended && it.made.key.contains(&mark))
        .collect();
    if of_it.iter().any(|it| made.is_none_or(|m| it.made.at == m)) {
        return None;
    }
    let so_far: Vec<String> = w
        .items
        .iter()
        .filter(|it| !it.born_ended && it.made.key.contains(&format!(":{}#", o.schedule)))
        .filter_map(|it| {
            let n = it.made.key.split(&format!(":{}#", o.schedule)).nth(1)?;
            Some(format!(
                "#{} at {}",
                n.split(':').next().unwrap_or(n),
                local(it.made.at, &w.tz)
            ))
        })
        .collect();
    Some(format!(
        "expected occurrence {} of schedule `{}`{}; its occurrences so far: {}",
        o.n,
        o.schedule,
        made.map(|m| format!(" made at {}", local(m, &w.tz)))
            .unwrap_or_default(),
        if so_far.is_empty() {
            "none".into()
        } else {
            so_far.join(", ")
        }
    ))
}

/// An alarm's episodes as the store keeps them: one open at most, counted as opened.
fn alarm(a: &super::format::AlarmExpect, w: &World<'_>) -> Vec<String> {
    let opened = w.episodes_opened.get(&a.id).copied().unwrap_or(0);
    let open = w.episodes.contains(&a.id);
    let now = match (open, opened) {
        (true, _) => "open",
        (false, 0) => "never raised",
        (false, _) => "closed",
    };
    let mut fails = Vec::new();
    match a.status.as_deref() {
        None => {}
        Some(s @ ("open" | "closed")) if s != now => fails.push(format!(
            "expected alarm `{}` {s}, but it is {now} ({opened} episode(s) opened)",
            a.id
        )),
        Some("open" | "closed") => {}
        Some(other) => fails.push(format!(
            "`alarm: {{ status: {other} }}`: an alarm's status is `open` or `closed`"
        )),
    }
    if let Some(n) = a.episodes
        && n != opened
    {
        fails.push(format!(
            "expected {n} episode(s) of alarm `{}`, found {opened} (it is {now})",
            a.id
        ));
    }
    fails
}

fn plural(kind: &str) -> &'static str {
    match kind {
        "task" => "tasks",
        "follow_up" => "follow-ups",
        "scale_push" => "pushes",
        _ => "referrals",
    }
}

/// Whether some work that was made (not born ended) matches every field of `want`; `Err` when a
/// field is not readable.
fn find(want: &Wanted<'_>, w: &World<'_>) -> Result<bool, String> {
    let due = want
        .due
        .map(|d| instant(w.start, d, &w.tz).map_err(|e| format!("`due`: {e}")))
        .transpose()?;
    let status = want.status.map(WorkStatus::parse).transpose()?;
    let sent = want
        .sent
        .map(|d| instant(w.start, d, &w.tz).map_err(|e| format!("`sent`: {e}")))
        .transpose()?;
    if let Some(h) = want.held_by
        && !matches!(h, "enrolling" | "receiving")
    {
        return Err(format!(
            "`held_by: {h}`: a task is held by the `enrolling` or the `receiving` institution"
        ));
    }
    if want.kind == "referral"
        && let Some(d) = want.name
        && !matches!(d, "up" | "down")
    {
        return Err(format!(
            "`referral: {d}`: a referral's direction is `up` or `down`"
        ));
    }
    Ok(w.items
        .iter()
        .filter(|it| !it.born_ended && it.made.action.kind() == want.kind)
        .any(|it| {
            want.name.is_none_or(|n| it.name() == n)
                && due.is_none_or(|d| it.due_at() == d)
                && status.is_none_or(|s| it.status == s)
                && sent.is_none_or(|s| w.sent_at(it) == s)
                && want
                    .held_by
                    .is_none_or(|h| (h == "receiving") == it.held_by.is_some())
                && details_match(it, want)
        }))
}

fn details_match(it: &Item, want: &Wanted<'_>) -> bool {
    match &it.made.action {
        Produced::Task { role, priority, .. } => {
            want.role.is_none_or(|r| r == role)
                && want.priority.is_none_or(|p| p == priority.as_str())
        }
        Produced::FollowUp { channels, .. } => want
            .channel
            .is_none_or(|c| channels.first().map(|x| x.as_str()) == Some(c)),
        Produced::Referral { to, direction, .. } => {
            want.to.is_none_or(|k| k == to.as_str())
                && want.name.is_none_or(|d| d == direction_name(*direction))
        }
        _ => true,
    }
}

/// The instant as the case wrote it and as the patient's clock shows it.
pub(super) fn when(text: &str, t: Timestamp, w: &World<'_>) -> String {
    format!("at `{text}` ({})", local(t, &w.tz))
}

#[cfg(test)]
mod tests {
    use crate::pathway_test::testing::play;

    /// The case's failures, each checked to name the case and the instant.
    fn failures(given: &str, expect: &str) -> Vec<String> {
        let played = play(given, expect);
        assert!(played.errors.is_empty(), "{:?}", played.errors);
        for f in &played.failures {
            assert!(f.starts_with("case `the case`, at `"), "{f}");
            assert!(
                f.contains("+08:00)"),
                "the instant on the patient's clock: {f}"
            );
        }
        played.failures
    }

    fn holds(given: &str, expect: &str) {
        let f = failures(given, expect);
        assert!(f.is_empty(), "{f:#?}");
    }

    fn fails(given: &str, expect: &str, says: &[&str]) {
        let f = failures(given, expect);
        assert_eq!(f.len(), 1, "{f:#?}");
        for s in says {
            assert!(f[0].contains(s), "`{s}` missing from: {}", f[0]);
        }
    }

    #[test]
    fn a_task_with_its_due_time_and_status() {
        holds(
            "  - { at: 2h, task_done: { task: call } }",
            "  - { at: 1h, task: { id: call, role: nurse, due: 4h, status: open } }\n\
             \x20 - { at: 1h, task: { id: call, due: 0d 13:00 } }\n\
             \x20 - { at: 2h, task: { id: call, status: done } }\n\
             \x20 - { at: 2h, task: { id: review, priority: high, due: 2026-03-03T11:00:00+08:00, status: open } }",
        );
        fails(
            "  []",
            "  - { at: 1h, task: { id: call, due: 5h } }",
            &[
                "at `1h` (2026-03-02T10:00:00+08:00)",
                "expected a task `call` due 5h",
                "`call` (nurse, normal) due 2026-03-02T13:00:00+08:00, open",
            ],
        );
        fails(
            "  - { at: 2h, task_done: { task: call } }",
            "  - { at: 2h, task: { id: call, status: open } }",
            &[
                "expected a task `call` status open",
                "`call` (nurse, normal) due 2026-03-02T13:00:00+08:00, done",
            ],
        );
    }

    #[test]
    fn a_follow_up_with_its_send_time_and_status() {
        holds(
            "  - { at: 2h, task_done: { task: call } }",
            "  - { at: 1h, follow_up: { template: welcome, channel: wechat, due: 1d 18:00, status: open } }\n\
             \x20 - { at: 2h, follow_up: { template: welcome, status: cancelled } }",
        );
        fails(
            "  []",
            "  - { at: 1h, follow_up: { template: welcome, due: 1d 09:00 } }",
            &[
                "expected a follow-up `welcome` due 1d 09:00",
                "`welcome` (wechat, sms) due 2026-03-03T18:00:00+08:00, open",
            ],
        );
    }

    #[test]
    fn a_push_with_its_due_time_and_status() {
        holds(
            "  []",
            "  - { at: 0m, scale_push: phq9 }\n\
             \x20 - { at: 1d, scale_push: { scale: phq9, due: 2d, status: open } }\n\
             \x20 - { at: 3d, scale_push: { scale: phq9, status: expired } }",
        );
        holds(
            "  - { at: 1d, scale: { scale: phq9, score: 4 } }",
            "  - { at: 1d, scale_push: { scale: phq9, status: done } }",
        );
        fails(
            "  []",
            "  - { at: 3d, scale_push: { scale: phq9, status: open } }",
            &[
                "expected a push of a scale `phq9` status open",
                "`phq9` due 2026-03-04T09:00:00+08:00, expired",
            ],
        );
    }

    #[test]
    fn a_referral_with_its_accept_by_time_and_status() {
        holds(
            "  - { at: 1d, event: worse }\n\
             \x20 - { at: 30h, referral: accept }",
            "  - { at: 1d, referral: up }\n\
             \x20 - { at: 1d, referral: { direction: up, to: lead_hospital, due: 2d, status: open } }\n\
             \x20 - { at: 30h, referral: { direction: up, status: accepted } }\n\
             \x20 - { at: 30h, state: closed }",
        );
        fails(
            "  - { at: 1d, event: worse }",
            "  - { at: 1d, referral: { direction: down } }",
            &[
                "expected a referral `down`",
                "`up` to lead_hospital due 2026-03-04T09:00:00+08:00, open",
            ],
        );
        let f = failures("  []", "  - { at: 1d, referral: sideways }");
        assert!(f[0].contains("`up` or `down`"), "{f:?}");
    }

    #[test]
    fn no_task_follow_up_push_or_referral() {
        holds(
            "  []",
            "  - { at: 1d, no_task: review }\n\
             \x20 - { at: 1d, no_follow_up: goodbye }\n\
             \x20 - { at: 1d, no_scale_push: epds }\n\
             \x20 - { at: 1d, no_referral: any }",
        );
        fails(
            "  []",
            "  - { at: 1h, no_task: call }",
            &[
                "expected no task `call`, but one was made: `call` (nurse, normal) due 2026-03-02T13:00:00+08:00, open",
            ],
        );
        fails(
            "  []",
            "  - { at: 1h, no_follow_up: welcome }",
            &["expected no follow up `welcome`", "`welcome` (wechat, sms)"],
        );
        fails(
            "  []",
            "  - { at: 1h, no_scale_push: phq9 }",
            &["expected no scale push `phq9`"],
        );
        fails(
            "  - { at: 1d, event: worse }",
            "  - { at: 1d, no_referral: up }",
            &["expected no referral `up`", "`up` to lead_hospital"],
        );
    }

    #[test]
    fn an_unreadable_due_or_status_is_a_failure_that_says_so() {
        let f = failures(
            "  []",
            "  - { at: 1h, task: { id: call, status: finished } }",
        );
        assert!(f[0].contains("`finished` is not a status"), "{f:?}");
        let f = failures("  []", "  - { at: 1h, task: { id: call, due: tomorrow } }");
        assert!(f[0].contains("`due`") && f[0].contains("tomorrow"), "{f:?}");
    }

    #[test]
    fn an_alarm_is_open_closed_or_never_raised() {
        holds(
            "  - { at: 1d, observation: { bp_systolic: 186 } }",
            "  - { at: 2h, no_alarm: bp_crisis }\n\
             \x20 - { at: 1d, alarm: { id: bp_crisis, status: open, episodes: 1 } }",
        );
        fails(
            "  - { at: 1d, observation: { bp_systolic: 186 } }",
            "  - { at: 1d, alarm: { id: bp_crisis, status: closed } }",
            &["expected alarm `bp_crisis` closed, but it is open (1 episode(s) opened)"],
        );
        fails(
            "  - { at: 1d, observation: { bp_systolic: 186 } }",
            "  - { at: 2d, no_alarm: bp_crisis }",
            &["expected no episode of alarm `bp_crisis`, but 1 opened (one is open)"],
        );
        fails(
            "  []",
            "  - { at: 1d, alarm: { id: bp_crisis, episodes: 1 } }",
            &["expected 1 episode(s) of alarm `bp_crisis`, found 0 (it is never raised)"],
        );
    }

    /// A case of `PATHWAY` (written in full) with its own quiet hours.
    fn quiet(hours: &str, expect: &str) -> Vec<String> {
        let mut case = crate::pathway_test::testing::case("  []", expect);
        case.quiet_hours = Some(hours.into());
        let played =
            crate::pathway_test::play_case(&crate::pathway_test::testing::program(), &case);
        let mut out = played.errors;
        out.extend(played.failures);
        out
    }

    #[test]
    fn a_message_due_in_quiet_hours_is_sent_at_their_end() {
        // `welcome` is due on day 1 at 18:00: outside the default 21:00-08:00.
        assert!(
            quiet(
                "21:00-08:00",
                "  - { at: 1d, follow_up: { template: welcome, sent: 1d 18:00 } }"
            )
            .is_empty()
        );
        assert!(
            quiet(
                "17:00-07:30",
                "  - { at: 1d, follow_up: { template: welcome, due: 1d 18:00, sent: 2d 07:30 } }"
            )
            .is_empty()
        );
        let f = quiet(
            "17:00-07:30",
            "  - { at: 1d, follow_up: { template: welcome, sent: 1d 18:00 } }",
        );
        assert!(
            f.len() == 1 && f[0].contains("(sent 2026-03-04T07:30:00+08:00, after quiet hours)"),
            "{f:?}"
        );
        assert!(
            quiet(
                "off",
                "  - { at: 1d, follow_up: { template: welcome, sent: 1d 18:00 } }"
            )
            .is_empty()
        );
        let f = quiet("late", "  - { at: 1d, state: home }");
        assert!(
            f[0].contains("`quiet_hours`") && f[0].contains("HH:MM-HH:MM"),
            "{f:?}"
        );
    }

    /// A schedule and a downward referral that hands the nurse's work to the community.
    const HANDOVER: &str = r#"pathway: h
version: 1
title: { zh: 交接, en: Handover }
owner_role: nurse
roles: [nurse, doctor]
entry_points: [{ id: start, state: home }]
states:
  - id: home
    phase: follow_up
    on_enter:
      - task: { id: visit, role: nurse, title: { zh: 家访, en: Visit }, due: 20d }
      - task: { id: plan, role: doctor, title: { zh: 计划, en: Plan }, due: 20d }
      - referral: { direction: down, to: community_clinic, accept_within: 24h, moves: [nurse] }
    schedules:
      - id: weekly
        first: { after: 7d, at: "09:00" }
        every: 7d
        count: 3
        actions:
          - task: { id: weekly_call, role: nurse, title: { zh: 周访, en: Weekly call }, due: 1d }
    transitions:
      - { after: 60d, to: done }
  - { id: done, phase: closed, terminal: true }
"#;

    fn handover(given: &str, expect: &str) -> Vec<String> {
        let compiled = carepath_dsl::compile_yaml(
            "h.yaml",
            HANDOVER.as_bytes(),
            std::path::Path::new("."),
            &carepath_dsl::FsLoader,
        );
        let pathway = crate::program::into_pathway(compiled).expect("a valid pathway");
        let source = crate::program::Source::new("h.yaml", HANDOVER.into(), &pathway);
        let prog = crate::program::Programs::default()
            .insert(pathway, source)
            .expect("compiles");
        let played = crate::pathway_test::play_case(
            &prog,
            &crate::pathway_test::testing::case(given, expect),
        );
        let mut out = played.errors;
        out.extend(played.failures);
        out
    }

    #[test]
    fn occurrences_are_found_by_number_and_instant() {
        let f = handover(
            "  []",
            "  - { at: 15d, occurrence: { schedule: weekly, n: 2, made: 14d 09:00 } }\n\
             \x20 - { at: 30d, occurrence: { schedule: weekly, n: 3 } }",
        );
        assert!(f.is_empty(), "{f:?}");
        let f = handover(
            "  []",
            "  - { at: 15d, occurrence: { schedule: weekly, n: 3 } }",
        );
        assert!(
            f.len() == 1
                && f[0].contains("expected occurrence 3 of schedule `weekly`")
                && f[0]
                    .contains("#1 at 2026-03-09T09:00:00+08:00, #2 at 2026-03-16T09:00:00+08:00"),
            "{f:?}"
        );
        let f = handover(
            "  []",
            "  - { at: 15d, occurrence: { schedule: weekly, n: 2, made: 14d 10:00 } }",
        );
        assert!(
            f.len() == 1 && f[0].contains("made at 2026-03-16T10:00:00+08:00"),
            "{f:?}"
        );
    }

    #[test]
    fn an_accepted_referral_moves_the_roles_it_names_with_their_open_and_later_tasks() {
        let f = handover(
            "  - { at: 2d, referral: accept }",
            "  - { at: 1d, task: { id: visit, held_by: enrolling } }\n\
             \x20 - { at: 2d, task: { id: visit, held_by: receiving } }\n\
             \x20 - { at: 2d, task: { id: plan, held_by: enrolling } }\n\
             \x20 - { at: 8d, task: { id: weekly_call, held_by: receiving } }",
        );
        assert!(f.is_empty(), "{f:?}");
        let f = handover(
            "  []",
            "  - { at: 8d, task: { id: weekly_call, held_by: receiving } }",
        );
        assert!(
            f.len() == 1 && f[0].contains("expected a task `weekly_call` held by receiving"),
            "{f:?}"
        );
        let f = handover("  []", "  - { at: 1d, task: { id: visit, held_by: home } }");
        assert!(f[0].contains("`held_by: home`"), "{f:?}");
    }
}
