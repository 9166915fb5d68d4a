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
}
