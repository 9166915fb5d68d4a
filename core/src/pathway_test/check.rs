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
