//! The route table: every route once, with its method, path, the module a caller's roles must
//! grant, the action its refusals are audited under, who audits it when served, its handler and
//! its OpenAPI description. The router, the permission checks, the audit layer's list of
//! configuration routes and the OpenAPI document are all built from [`ROUTES`], and the
//! permission-matrix test walks it, so none of them can name a route the others do not.

use axum::routing::{MethodFilter, MethodRouter, on};
use serde_json::Value;

use crate::AppState;
use crate::auth::Module;
use crate::handlers::{
    alarms, audit, catalog, intake, kpis, migrations, observations, patients, queue, referrals,
    service,
};
use crate::openapi as doc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    /// The method as OpenAPI writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Post => "post",
            Method::Put => "put",
            Method::Delete => "delete",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Method::Get => MethodFilter::GET,
            Method::Post => MethodFilter::POST,
            Method::Put => MethodFilter::PUT,
            Method::Delete => MethodFilter::DELETE,
        }
    }
}

/// Who writes the audit entry of a request that was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// No one: a public route names no caller.
    Nothing,
    /// The store, with the patients concerned: in the transaction of a write, before a read of
    /// patient data is returned.
    Store,
    /// The audit layer, once the answer is known: configuration and indicator reads, and pathway
    /// publication, which touch no patient.
    Layer,
}

/// How an operation is described in the OpenAPI document.
pub struct Doc {
    pub summary: &'static str,
    /// Query parameters: (name, JSON type).
    pub query: &'static [(&'static str, &'static str)],
    /// The request body's schema.
    pub body: Option<fn() -> Value>,
    /// The success status and its response object.
    pub success: fn() -> (u16, Value),
}

pub struct Route {
    pub method: Method,
    pub path: &'static str,
    /// The module a caller's roles must grant; `None` for a public route (no token needed).
    pub module: Option<Module>,
    /// The action a refusal for want of the module is audited under.
    pub action: &'static str,
    pub record: Record,
    pub(crate) handler: fn(MethodFilter) -> MethodRouter<AppState>,
    /// `None` for the document itself, which does not describe itself.
    pub doc: Option<Doc>,
}

impl Route {
    /// This route's handler, for its method.
    pub(crate) fn method_router(&self) -> MethodRouter<AppState> {
        (self.handler)(self.method.filter())
    }
}

use Method::{Delete, Get, Post, Put};
use Module::*;

const fn public(
    path: &'static str,
    handler: fn(MethodFilter) -> MethodRouter<AppState>,
    doc: Option<Doc>,
) -> Route {
    Route {
        method: Get,
        path,
        module: None,
        action: "",
        record: Record::Nothing,
        handler,
        doc,
    }
}

pub static ROUTES: &[Route] = &[
    public(
        "/health",
        |m| on(m, service::health),
        Some(Doc {
            summary: "Liveness",
            query: &[],
            body: None,
            success: doc::ok_health,
        }),
    ),
    public(
        "/ready",
        |m| on(m, service::ready),
        Some(Doc {
            summary: "Readiness: the database answers",
            query: &[],
            body: None,
            success: doc::ok_ready,
        }),
    ),
    public(
        "/metrics",
        |m| on(m, service::metrics),
        Some(Doc {
            summary: "Prometheus metrics: request latency, scheduler lag, due backlog, outbox backlog",
            query: &[],
            body: None,
            success: doc::ok_metrics,
        }),
    ),
    public("/openapi.json", |m| on(m, service::openapi), None),
    Route {
        method: Get,
        path: "/pathways",
        module: Some(Catalog),
        action: "pathway.list",
        record: Record::Layer,
        handler: |m| on(m, catalog::list),
        doc: Some(Doc {
            summary: "Published pathway versions",
            query: &[],
            body: None,
            success: doc::ok_pathways,
        }),
    },
    Route {
        method: Post,
        path: "/pathways",
        module: Some(Pathways),
        action: "pathway.publish",
        record: Record::Layer,
        handler: |m| on(m, catalog::publish),
        doc: Some(Doc {
            summary: "Upload, validate and publish a pathway version",
            query: &[],
            body: Some(doc::s_publish),
            success: doc::ok_published,
        }),
    },
    Route {
        method: Post,
        path: "/migrations/dry-run",
        module: Some(Pathways),
        action: "migration.dry_run",
        record: Record::Layer,
        handler: |m| on(m, migrations::dry_run),
        doc: Some(Doc {
            summary: "What a migration plan would do to each enrolment it selects, without writing (docs/releasing.md)",
            query: &[],
            body: Some(doc::s_plan),
            success: doc::ok_dry_run,
        }),
    },
    Route {
        method: Post,
        path: "/migrations",
        module: Some(Pathways),
        action: "migration.apply",
        record: Record::Layer,
        handler: |m| on(m, migrations::apply),
        doc: Some(Doc {
            summary: "Apply a migration plan: move the enrolments it selects, in batches, exactly once",
            query: &[],
            body: Some(doc::s_plan),
            success: doc::ok_applied,
        }),
    },
    Route {
        method: Get,
        path: "/migrations/{id}",
        module: Some(Pathways),
        action: "migration.read",
        record: Record::Layer,
        handler: |m| on(m, migrations::status),
        doc: Some(Doc {
            summary: "A migration run: its status, lease and the enrolments it moved",
            query: &[],
            body: None,
            success: doc::ok_run,
        }),
    },
    Route {
        method: Post,
        path: "/migrations/{id}/rollback",
        module: Some(Pathways),
        action: "migration.rollback",
        record: Record::Layer,
        handler: |m| on(m, migrations::rollback),
        doc: Some(Doc {
            summary: "Move a run's enrolments back to the version, state and variables they had",
            query: &[],
            body: None,
            success: doc::ok_rolled_back,
        }),
    },
    Route {
        method: Get,
        path: "/pathways/{id}/{version}/graph",
        module: Some(Catalog),
        action: "pathway.graph",
        record: Record::Layer,
        handler: |m| on(m, catalog::graph),
        doc: Some(Doc {
            summary: "A pathway's state graph",
            query: &[("format", "string")],
            body: None,
            success: doc::ok_graph,
        }),
    },
    Route {
        method: Post,
        path: "/patients",
        module: Some(Patients),
        action: "patient.create",
        record: Record::Store,
        handler: |m| on(m, patients::create),
        doc: Some(Doc {
            summary: "Register a patient (pseudonymous id) in the caller's institution",
            query: &[],
            body: Some(doc::s_patient),
            success: doc::ok_patient_created,
        }),
    },
    Route {
        method: Get,
        path: "/patients/{id}",
        module: Some(Patients),
        action: "patient.read",
        record: Record::Store,
        handler: |m| on(m, patients::read),
        doc: Some(Doc {
            summary: "A patient and their enrolments; contact details masked",
            query: &[],
            body: None,
            success: doc::ok_patient,
        }),
    },
    Route {
        method: Put,
        path: "/patients/{id}",
        module: Some(Patients),
        action: "patient.update",
        record: Record::Store,
        handler: |m| on(m, patients::update),
        doc: Some(Doc {
            summary: "Correct a patient's record (PIPL correction): the fields given replace the stored ones; contact details as a whole",
            query: &[],
            body: Some(doc::s_patient_change),
            success: doc::ok_patient_updated,
        }),
    },
    Route {
        method: Get,
        path: "/patients/{id}/contact",
        module: Some(Contacts),
        action: "patient.contact.read",
        record: Record::Store,
        handler: |m| on(m, patients::contact),
        doc: Some(Doc {
            summary: "A patient's full contact details, for staff who reach the patient themselves",
            query: &[],
            body: None,
            success: doc::ok_contact,
        }),
    },
    Route {
        method: Delete,
        path: "/patients/{id}/contact",
        module: Some(Patients),
        action: "patient.erase_contact",
        record: Record::Store,
        handler: |m| on(m, patients::erase_contact),
        doc: Some(Doc {
            summary: "Erase a patient's contact details (PIPL deletion); the pseudonymous clinical record stays",
            query: &[],
            body: None,
            success: doc::ok_patient_updated,
        }),
    },
    Route {
        method: Post,
        path: "/enrolments",
        module: Some(Patients),
        action: "enrolment.create",
        record: Record::Store,
        handler: |m| on(m, patients::enrol),
        doc: Some(Doc {
            summary: "Enrol a patient at a pathway's entry point, now or (`at`) up to 30 days ago",
            query: &[],
            body: Some(doc::s_enrol),
            success: doc::ok_enrolled,
        }),
    },
    Route {
        method: Get,
        path: "/enrolments/{id}/timeline",
        module: Some(Patients),
        action: "enrolment.timeline",
        record: Record::Store,
        handler: |m| on(m, patients::timeline),
        doc: Some(Doc {
            summary: "Everything that happened in an enrolment, with the trace behind each step",
            query: &[],
            body: None,
            success: doc::ok_timeline,
        }),
    },
    Route {
        method: Post,
        path: "/enrolments/{id}/events",
        module: Some(Patients),
        action: "enrolment.event",
        record: Record::Store,
        handler: |m| on(m, patients::event),
        doc: Some(Doc {
            summary: "Record an event the enrolment's pathway declares under `events:`, or a built-in one (e.g. discharged); the enrolment advances at once. Any other name is refused with 400",
            query: &[],
            body: Some(doc::s_event),
            success: doc::ok_event,
        }),
    },
    Route {
        method: Post,
        path: "/enrolments/{id}/withdraw",
        module: Some(Patients),
        action: "enrolment.withdraw",
        record: Record::Store,
        handler: |m| on(m, patients::withdraw),
        doc: Some(Doc {
            summary: "Withdraw an enrolment: the event `withdrawn`, which its pathway may route to a closing state; open work ends as the outcome policy says",
            query: &[],
            body: Some(doc::s_reason),
            success: doc::ok_withdrawn,
        }),
    },
    Route {
        method: Get,
        path: "/enrolments/{id}/scale-pushes",
        module: Some(Patients),
        action: "scale_push.list",
        record: Record::Store,
        handler: |m| on(m, patients::scale_pushes),
        doc: Some(Doc {
            summary: "An enrolment's scale pushes: status, due, expiry, reminders, and the score once answered",
            query: &[],
            body: None,
            success: doc::ok_scale_pushes,
        }),
    },
    Route {
        method: Post,
        path: "/scale-pushes/{id}/answers",
        module: Some(Patients),
        action: "scale_push.answer",
        record: Record::Store,
        handler: |m| on(m, patients::answer),
        doc: Some(Doc {
            summary: "Answer a pending scale push: scored and banded; critical items raise an urgent task; the enrolment advances at once",
            query: &[],
            body: Some(doc::s_answers),
            success: doc::ok_answered,
        }),
    },
    Route {
        method: Post,
        path: "/observations",
        module: Some(Observations),
        action: "observations.post",
        record: Record::Store,
        handler: |m| on(m, observations::post),
        doc: Some(Doc {
            summary: "Post readings in a batch; alarm rules are evaluated at once",
            query: &[],
            body: Some(doc::s_readings),
            success: doc::ok_observations,
        }),
    },
    Route {
        method: Get,
        path: "/queues/tasks",
        module: Some(Queue),
        action: "queue.read",
        record: Record::Store,
        handler: |m| on(m, queue::page),
        doc: Some(Doc {
            summary: "The caller's institution's task board, by priority then due time",
            query: &[
                ("role", "string"),
                ("status", "string"),
                ("assignee", "string"),
                ("due_before", "string"),
                ("due_after", "string"),
                ("pathway", "string"),
                ("cursor", "string"),
                ("limit", "integer"),
            ],
            body: None,
            success: doc::ok_queue,
        }),
    },
    Route {
        method: Post,
        path: "/tasks/{id}/{action}",
        module: Some(Queue),
        action: "task.act",
        record: Record::Store,
        handler: |m| on(m, queue::act),
        doc: Some(Doc {
            summary: "claim | complete | reassign | snooze a task",
            query: &[],
            body: Some(doc::s_task),
            success: doc::ok_task,
        }),
    },
    Route {
        method: Get,
        path: "/alarms",
        module: Some(Queue),
        action: "alarm.list",
        record: Record::Store,
        handler: |m| on(m, alarms::list),
        doc: Some(Doc {
            summary: "Alarm episodes of the caller's institution for the caller's roles (the episode's task role or the role it escalates to), oldest first",
            query: &[
                ("status", "string"),
                ("role", "string"),
                ("cursor", "string"),
                ("limit", "integer"),
            ],
            body: None,
            success: doc::ok_alarms,
        }),
    },
    Route {
        method: Post,
        path: "/alarms/{id}/{action}",
        module: Some(Queue),
        action: "alarm.act",
        record: Record::Store,
        handler: |m| on(m, alarms::act),
        doc: Some(Doc {
            summary: "acknowledge | resolve (with a reason) an alarm episode",
            query: &[],
            body: Some(doc::s_alarm),
            success: doc::ok_alarm_act,
        }),
    },
    Route {
        method: Get,
        path: "/intake",
        module: Some(Intake),
        action: "intake.list",
        record: Record::Store,
        handler: |m| on(m, intake::list),
        doc: Some(Doc {
            summary: "Case-intake candidates of the caller's institution, pending first, then the newest",
            query: &[("status", "string"), ("limit", "integer")],
            body: None,
            success: doc::ok_intake,
        }),
    },
    Route {
        method: Post,
        path: "/intake/{id}/accept",
        module: Some(Intake),
        action: "intake.accept",
        record: Record::Store,
        handler: |m| on(m, intake::accept),
        doc: Some(Doc {
            summary: "Accept a pending candidate: enrol the patient in its pathway at its entry point",
            query: &[],
            body: None,
            success: doc::ok_intake_decided,
        }),
    },
    Route {
        method: Post,
        path: "/intake/{id}/reject",
        module: Some(Intake),
        action: "intake.reject",
        record: Record::Store,
        handler: |m| on(m, intake::reject),
        doc: Some(Doc {
            summary: "Reject a pending candidate, with a reason",
            query: &[],
            body: Some(doc::s_intake_reject),
            success: doc::ok_intake_decided,
        }),
    },
    Route {
        method: Get,
        path: "/referrals",
        module: Some(Referrals),
        action: "referral.list",
        record: Record::Store,
        handler: |m| on(m, referrals::list),
        doc: Some(Doc {
            summary: "Referrals sent by or addressed to the caller's institution",
            query: &[("status", "string")],
            body: None,
            success: doc::ok_referrals,
        }),
    },
    Route {
        method: Post,
        path: "/referrals/{id}/{decision}",
        module: Some(Referrals),
        action: "referral.decide",
        record: Record::Store,
        handler: |m| on(m, referrals::decide),
        doc: Some(Doc {
            summary: "accept | reject | arrive; accepting moves the referral's roles (`moves`), or else the whole enrolment, to the caller's institution",
            query: &[],
            body: Some(doc::s_decision),
            success: doc::ok_decision,
        }),
    },
    Route {
        method: Get,
        path: "/kpis",
        module: Some(Kpis),
        action: "kpi.read",
        record: Record::Layer,
        handler: |m| on(m, kpis::read),
        doc: Some(Doc {
            summary: "Indicators for the caller's institution over a period: built-in ones, broken down by pathway, role or staff member, and those the pathways declare",
            query: &[
                ("from", "string"),
                ("to", "string"),
                ("by", "string"),
                ("pathway", "string"),
            ],
            body: None,
            success: doc::ok_kpis,
        }),
    },
    Route {
        method: Get,
        path: "/kpis/{indicator}/rows",
        module: Some(Kpis),
        action: "kpi.rows",
        record: Record::Store,
        handler: |m| on(m, kpis::rows),
        doc: Some(Doc {
            summary: "The rows behind a built-in indicator's figure over the period `GET /kpis` counts (tasks, scale pushes, referrals, enrolments, stays or case managers), each marked with the sides that count it; with `staff`, that staff member's share of a task figure (tasks assigned to them) as `by=staff` counts it",
            query: &[
                ("from", "string"),
                ("to", "string"),
                ("pathway", "string"),
                ("staff", "string"),
            ],
            body: None,
            success: doc::ok_kpi_rows,
        }),
    },
    Route {
        method: Get,
        path: "/audit/verify",
        module: Some(Audit),
        action: "audit.verify",
        record: Record::Layer,
        handler: |m| on(m, audit::verify),
        doc: Some(Doc {
            summary: "Verify the audit record's keyed hash chain and its signed checkpoints",
            query: &[],
            body: None,
            success: doc::ok_audit,
        }),
    },
];

/// The route `path` (a matched template) answers for `method`, if any.
pub(crate) fn find(method: &axum::http::Method, path: &str) -> Option<&'static Route> {
    ROUTES
        .iter()
        .chain(crate::fhir::ROUTES)
        .find(|r| r.path == path && r.method.as_str().eq_ignore_ascii_case(method.as_str()))
}
