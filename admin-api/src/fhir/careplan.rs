//! An enrolment as a CarePlan: its pathway, state and period, its goals (contained Goals with
//! whether they are met), and the activities ahead of it — open tasks, pending scale pushes and
//! scheduled follow-ups.

use carepath_engine::store::records::CarePlanRow;
use serde_json::{Value, json};

use super::questionnaire;
use super::task::ROLE_SYSTEM;

fn status(s: &str) -> &'static str {
    match s {
        "active" => "active",
        "completed" => "completed",
        "withdrawn" => "revoked",
        "error" => "on-hold",
        _ => "unknown",
    }
}

pub(crate) fn render(p: &CarePlanRow) -> Value {
    let subject = json!({"reference": format!("Patient/{}", p.patient_id)});
    let contained: Vec<Value> = p
        .goals
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let achievement = match g.met {
                Some(true) => "achieved",
                Some(false) => "not-achieved",
                None => "in-progress",
            };
            let mut goal = json!({
                "resourceType": "Goal",
                "id": format!("goal{i}"),
                "lifecycleStatus": "active",
                "achievementStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/goal-achievement", "code": achievement}]},
                "description": {"coding": [{"system": "urn:carepath:goal", "code": g.goal_id}], "text": g.goal_id},
                "subject": subject,
                "note": [{"text": g.spec}],
            });
            if let Some(at) = g.evaluated_at {
                goal["statusDate"] = json!(at.strftime("%Y-%m-%d").to_string());
            }
            goal
        })
        .collect();
    let mut activity: Vec<Value> = p
        .open_tasks
        .iter()
        .map(|t| {
            json!({"detail": {
                "kind": "Task",
                "code": {"coding": t.task_ref.iter().map(|r| json!({"system": "urn:carepath:task", "code": r})).collect::<Vec<_>>(), "text": t.title_en},
                "status": if t.status == "claimed" { "in-progress" } else { "not-started" },
                "scheduledPeriod": {"end": t.due_at.to_string()},
                "performer": [{"display": t.role, "identifier": {"system": ROLE_SYSTEM, "value": t.role}}],
                "description": format!("Task/{}", t.id),
            }})
        })
        .collect();
    activity.extend(p.pending_pushes.iter().map(|s| {
        let mut period = json!({"start": s.due_at.to_string()});
        if let Some(e) = s.expires_at {
            period["end"] = json!(e.to_string());
        }
        json!({"detail": {
            "kind": "Task",
            "instantiatesCanonical": [questionnaire::canonical(&s.scale)],
            "code": {"coding": [{"system": "urn:carepath:scale", "code": s.scale}], "text": format!("questionnaire {}", s.scale)},
            "status": "scheduled",
            "scheduledPeriod": period,
            "description": format!("scale push {}", s.id),
        }})
    }));
    activity.extend(p.follow_ups.iter().map(|f| {
        json!({"detail": {
            "kind": "CommunicationRequest",
            "code": {"coding": [{"system": "urn:carepath:follow-up", "code": f.template}], "text": f.follow_up_ref.clone().unwrap_or_else(|| f.template.clone())},
            "status": "scheduled",
            "scheduledPeriod": {"start": f.send_at.to_string()},
        }})
    }));
    let mut period = json!({"start": p.enrolled_at.to_string()});
    if let Some(e) = p.ended_at {
        period["end"] = json!(e.to_string());
    }
    let mut out = json!({
        "resourceType": "CarePlan",
        "id": p.enrolment_id.to_string(),
        "status": status(&p.status),
        "intent": "plan",
        "title": format!("{} v{}", p.pathway, p.version),
        "description": format!("pathway {} version {}, state {}", p.pathway, p.version, p.state),
        "instantiatesUri": [format!("urn:carepath:pathway:{}:{}", p.pathway, p.version)],
        "subject": subject,
        "period": period,
        "author": {"identifier": {"system": "urn:carepath:institution", "value": p.institution_id}},
    });
    if !contained.is_empty() {
        out["goal"] = json!(
            (0..contained.len())
                .map(|i| json!({"reference": format!("#goal{i}")}))
                .collect::<Vec<_>>()
        );
        out["contained"] = json!(contained);
    }
    if !activity.is_empty() {
        out["activity"] = json!(activity);
    }
    out
}
