//! In-process tests of the admin API over a fresh database of each backend: the full permission
//! matrix (every route of the route table × role × own/other institution), malformed input, the
//! audit chain, alarm latency, scale answers (score, band, critical items, once only) and KPIs;
//! every answer is checked against the OpenAPI document.

use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use carepath_admin_api::{AppState, Module, ROLE_MODULES, ROUTES, Record, allowed};
use carepath_engine::store::{self, Pool};
use carepath_engine::{Programs, seed};
use http_body_util::BodyExt;
use jiff::Timestamp;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::{self, Backend, scalar};

const INSTS: [&str; 3] = ["lead", "clinic_a", "clinic_b"];

fn kind(inst: &str) -> &'static str {
    match inst {
        "lead" => "lead_hospital",
        "clinic_a" => "community_clinic",
        _ => "township_hospital",
    }
}

/// The scoping rule: own patients, patients of the clinics one leads (accepted referrals are not
/// part of these fixtures).
fn patient_visible(caller: &str, target: &str) -> bool {
    caller == target || (caller == "lead" && target != "lead")
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Scope {
    /// No token needed.
    Public,
    /// A module, no object.
    Plain(Module),
    Patient(Module),
    Task(Module),
    Referral(Module),
    /// An alarm episode: of the caller's institution, for its task's role or escalation role.
    Alarm(Module),
    /// Observations: a batch; a reading for an invisible patient is refused, not 404.
    Obs(Module),
    /// An intake candidate: of the caller's institution only.
    Intake(Module),
}

impl Scope {
    fn module(self) -> Option<Module> {
        match self {
            Scope::Public => None,
            Scope::Plain(m)
            | Scope::Patient(m)
            | Scope::Task(m)
            | Scope::Referral(m)
            | Scope::Alarm(m)
            | Scope::Obs(m)
            | Scope::Intake(m) => Some(m),
        }
    }
    fn has_object(self) -> bool {
        matches!(
            self,
            Scope::Patient(_)
                | Scope::Task(_)
                | Scope::Referral(_)
                | Scope::Alarm(_)
                | Scope::Obs(_)
                | Scope::Intake(_)
        )
    }
}

/// A route of the table, with what the matrix needs to call it.
struct Route {
    method: &'static str,
    path: &'static str,
    scope: Scope,
    /// Reads or writes patient data (the store audits it when served).
    patient_data: bool,
    /// The status of a call the caller may make.
    success: u16,
}

/// Every route of the route table, with the object its calls are scoped by.
fn routes() -> Vec<Route> {
    ROUTES
        .iter()
        .map(|r| {
            let scope = match (r.module, r.path) {
                (None, _) => Scope::Public,
                (Some(m), "/observations") => Scope::Obs(m),
                (Some(m), "/tasks/{id}/{action}") => Scope::Task(m),
                (Some(m), "/alarms/{id}/{action}") => Scope::Alarm(m),
                (Some(m), p) if p.starts_with("/intake/") => Scope::Intake(m),
                (Some(m), "/referrals/{id}/{decision}") => Scope::Referral(m),
                (Some(m), "/patients/{id}" | "/enrolments" | "/scale-pushes/{id}/answers") => {
                    Scope::Patient(m)
                }
                (Some(m), p) if p.starts_with("/enrolments/") => Scope::Patient(m),
                (Some(m), _) => Scope::Plain(m),
            };
            Route {
                method: match r.method {
                    carepath_admin_api::Method::Get => "GET",
                    carepath_admin_api::Method::Post => "POST",
                    carepath_admin_api::Method::Put => "PUT",
                    carepath_admin_api::Method::Delete => "DELETE",
                },
                path: r.path,
                scope,
                patient_data: r.record == Record::Store,
                success: r.doc.as_ref().map_or(200, |d| (d.success)().0),
            }
        })
        .collect()
}

struct Ctx {
    app: Router,
    pool: Pool,
    programs: Programs,
    n: u64,
    /// Every answer `call` received is checked against this document.
    schema: Conformance,
}

/// Fresh objects at one institution, so that a mutating cell never depends on an earlier one.
struct Fixture {
    patient: String,
    bare_patient: String,
    enrolment: i64,
    task: i64,
    referral: i64,
    /// A pending NRS push of the enrolment.
    scale_push: i64,
    /// An open alarm episode of the enrolment's crisis alarm.
    alarm: i64,
    /// A pending intake candidate enrolling `bare_patient` in hypertension.
    candidate: i64,
}

impl Ctx {
    fn next(&mut self) -> u64 {
        self.n += 1;
        self.n
    }

    /// The graph of the published hypertension pathway, whichever its version.
    fn hypertension_graph(&self) -> String {
        let version = self
            .programs
            .latest()
            .into_iter()
            .find(|p| p.pathway.id == "hypertension")
            .expect("hypertension is published")
            .pathway
            .version;
        format!("/pathways/hypertension/{version}/graph")
    }

    async fn patient(&mut self, inst: &str) -> String {
        let id = format!("pt-{inst}-{}", self.next());
        support::add_patient_at(&self.pool, &id, inst, Timestamp::now()).await;
        id
    }

    async fn fixture(&mut self, inst: &str) -> Fixture {
        let patient = self.patient(inst).await;
        let bare_patient = self.patient(inst).await;
        let (enrolment, _) = store::enrol(
            &self.pool,
            &self.programs,
            &patient,
            "hypertension",
            None,
            "community",
            Timestamp::now(),
        )
        .await
        .expect("enrol");
        let task = self
            .pool
            .fetch(
                &format!(
                    "SELECT id FROM tasks WHERE enrolment_id = {enrolment} AND status = 'open' ORDER BY id LIMIT 1"
                ),
                vec![],
            )
            .await
            .expect("task")
            .first()
            .map(|r| r.i64(0))
            .expect("the enrolment has an open task");
        // A referral addressed to this institution's kind, sent by another institution.
        let from = if inst == "lead" { "clinic_a" } else { "lead" };
        let now = Timestamp::now().as_second();
        let key = format!("matrix:{}", self.next());
        self.pool
            .fetch(
                &format!(
                    "INSERT INTO referrals (dedupe_key, enrolment_id, patient_id, direction, to_kind, from_institution, status, requested_at, accept_by) \
                     VALUES ('{key}', {enrolment}, '{patient}', 'up', '{}', '{from}', 'requested', {now}, {})",
                    kind(inst),
                    now + 86_400
                ),
                vec![],
            )
            .await
            .expect("insert referral");
        let referral = scalar(&self.pool, "SELECT MAX(id) FROM referrals").await;
        let key = format!("matrix-push:{}", self.next());
        self.pool
            .fetch(
                &format!(
                    "INSERT INTO scale_pushes (dedupe_key, enrolment_id, patient_id, institution_id, state_seq, scale, due_at, expires_at, reminders, status, created_at) \
                     VALUES ('{key}', {enrolment}, '{patient}', '{inst}', 1, 'nrs', {}, NULL, '[]', 'pending', {})",
                    now + 86_400,
                    now - 60
                ),
                vec![],
            )
            .await
            .expect("insert scale push");
        let scale_push = scalar(&self.pool, "SELECT MAX(id) FROM scale_pushes").await;
        let rule = scalar(
            &self.pool,
            &format!("SELECT MIN(id) FROM alarm_rules WHERE enrolment_id = {enrolment} AND alarm_id = 'bp_crisis'"),
        )
        .await;
        let key = format!("matrix-alarm:{}", self.next());
        self.pool
            .fetch(
                &format!(
                    "INSERT INTO alarm_episodes (dedupe_key, rule_id, enrolment_id, patient_id, institution_id, alarm_id, role, status, opened_at, detail) \
                     VALUES ('{key}', {rule}, {enrolment}, '{patient}', '{inst}', 'bp_crisis', 'clinic_case_manager', 'open', {now}, '{{}}')"
                ),
                vec![],
            )
            .await
            .expect("insert alarm episode");
        let alarm = scalar(&self.pool, "SELECT MAX(id) FROM alarm_episodes").await;
        let rule = format!("matrix_{}", self.next());
        self.pool
            .fetch(
                &format!(
                    "INSERT INTO intake_candidates (institution_id, patient_id, rule, pathway_id, entry, status, created_at) \
                     VALUES ('{inst}', '{bare_patient}', '{rule}', 'hypertension', 'community', 'pending', {now})"
                ),
                vec![],
            )
            .await
            .expect("insert intake candidate");
        let candidate = scalar(&self.pool, "SELECT MAX(id) FROM intake_candidates").await;
        Fixture {
            patient,
            bare_patient,
            enrolment,
            task,
            referral,
            scale_push,
            alarm,
            candidate,
        }
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Option<String>, Vec<u8>) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(b)
            }
            None => Body::empty(),
        };
        let res = self
            .app
            .clone()
            .oneshot(req.body(body).expect("request"))
            .await
            .expect("infallible");
        let status = res.status();
        let ctype = res
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = res
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec();
        self.schema
            .check(method, uri, status.as_u16(), ctype.as_deref(), &bytes);
        (status, ctype, bytes)
    }
}

/// Checks answers against the OpenAPI document: the status is one the operation declares, the
/// content type one it declares for that status, and a JSON body matches its schema. Records which
/// (method, path, status) were seen.
struct Conformance {
    doc: Value,
    seen: std::sync::Mutex<std::collections::BTreeSet<(String, String, u16)>>,
}

impl Conformance {
    fn new(doc: Value) -> Conformance {
        Conformance {
            doc,
            seen: Default::default(),
        }
    }

    /// The document's path template that `uri` matches (literal segments preferred).
    fn template(&self, uri: &str) -> Option<String> {
        let path = uri.split('?').next().unwrap_or(uri);
        let segs: Vec<&str> = path.split('/').collect();
        let paths = self.doc["paths"].as_object()?;
        paths
            .keys()
            .filter_map(|t| {
                let tsegs: Vec<&str> = t.split('/').collect();
                if tsegs.len() != segs.len() {
                    return None;
                }
                let mut literal = 0;
                for (a, b) in tsegs.iter().zip(&segs) {
                    if a.starts_with('{') {
                        if b.is_empty() {
                            return None;
                        }
                    } else if a == b {
                        literal += 1;
                    } else {
                        return None;
                    }
                }
                Some((literal, t.clone()))
            })
            .max()
            .map(|(_, t)| t)
    }

    fn check(&self, method: &str, uri: &str, status: u16, ctype: Option<&str>, body: &[u8]) {
        // Routes outside the document (the document itself, unknown paths) are not checked.
        let Some(path) = self.template(uri) else {
            return;
        };
        let method = method.to_ascii_lowercase();
        let Some(op) = self.doc["paths"][&path].get(&method) else {
            return;
        };
        let at = format!("{method} {uri} → {status}");
        let answer = op["responses"]
            .get(status.to_string())
            .unwrap_or_else(|| panic!("{at}: status not in the document"));
        let media = ctype
            .map(|c| c.split(';').next().unwrap_or(c).trim().to_string())
            .unwrap_or_default();
        let content = &answer["content"];
        let schema = content
            .get(&media)
            .map(|m| &m["schema"])
            .unwrap_or_else(|| {
                panic!("{at}: content type `{media}` not in the document ({content})")
            });
        if media.ends_with("json") {
            let v: Value = serde_json::from_slice(body)
                .unwrap_or_else(|e| panic!("{at}: body is not JSON: {e}"));
            let mut problems = Vec::new();
            validate(&self.doc, schema, &v, "$", &mut problems);
            assert!(problems.is_empty(), "{at}: {problems:?}\nbody: {v}");
        }
        self.seen
            .lock()
            .expect("seen")
            .insert((method, path, status));
    }
}

/// A small JSON Schema (OpenAPI 3.0) subset: $ref, type, nullable, enum, required, properties,
/// additionalProperties (as a schema or false), items, oneOf.
fn validate(doc: &Value, schema: &Value, v: &Value, at: &str, problems: &mut Vec<String>) {
    if let Some(r) = schema["$ref"].as_str() {
        let target = r
            .trim_start_matches("#/")
            .split('/')
            .fold(doc, |node, key| &node[key]);
        assert!(!target.is_null(), "unresolved {r}");
        return validate(doc, target, v, at, problems);
    }
    if v.is_null() {
        if schema["nullable"] != json!(true) && schema.get("type").is_some() {
            problems.push(format!("{at}: null where {} is expected", schema["type"]));
        }
        return;
    }
    if let Some(alternatives) = schema["oneOf"].as_array() {
        let matching = alternatives
            .iter()
            .filter(|alt| {
                let mut p = Vec::new();
                validate(doc, alt, v, at, &mut p);
                p.is_empty()
            })
            .count();
        if matching != 1 {
            problems.push(format!("{at}: matches {matching} of oneOf"));
        }
    }
    if let Some(ty) = schema["type"].as_str() {
        let ok = match ty {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            other => panic!("schema type `{other}` not supported"),
        };
        if !ok {
            problems.push(format!("{at}: {v} is not of type {ty}"));
            return;
        }
    }
    if let Some(values) = schema["enum"].as_array()
        && !values.contains(v)
    {
        problems.push(format!("{at}: {v} is not one of {values:?}"));
    }
    if let Some(obj) = v.as_object() {
        for key in schema["required"].as_array().into_iter().flatten() {
            let key = key.as_str().unwrap_or_default();
            if !obj.contains_key(key) {
                problems.push(format!("{at}: missing required `{key}`"));
            }
        }
        let props = schema["properties"].as_object();
        for (key, value) in obj {
            match props.and_then(|p| p.get(key)) {
                Some(sub) => validate(doc, sub, value, &format!("{at}.{key}"), problems),
                None => match &schema["additionalProperties"] {
                    Value::Bool(false) => problems.push(format!("{at}: unexpected `{key}`")),
                    extra if extra.is_object() => {
                        validate(doc, extra, value, &format!("{at}.{key}"), problems)
                    }
                    _ => {}
                },
            }
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), v.as_array()) {
        for (i, item) in list.iter().enumerate() {
            validate(doc, items, item, &format!("{at}[{i}]"), problems);
        }
    }
}

#[test]
fn the_validator_catches_drift() {
    let doc = json!({"components": {"schemas": {"P": {"type": "object", "required": ["a"], "properties": {
        "a": {"type": "integer"}, "b": {"type": "string", "nullable": true, "enum": ["x", null]},
        "c": {"type": "array", "items": {"type": "number"}}}}}}});
    let schema = json!({"$ref": "#/components/schemas/P"});
    let check = |v: Value| {
        let mut p = Vec::new();
        validate(&doc, &schema, &v, "$", &mut p);
        p
    };
    assert!(check(json!({"a": 1, "b": null, "c": [1, 2.5]})).is_empty());
    assert!(!check(json!({"b": "x"})).is_empty(), "missing a");
    assert!(
        !check(json!({"a": "1"})).is_empty(),
        "a string for an integer"
    );
    assert!(
        !check(json!({"a": 1.5})).is_empty(),
        "a fraction for an integer"
    );
    assert!(
        !check(json!({"a": 1, "b": "y"})).is_empty(),
        "outside the enum"
    );
    assert!(!check(json!({"a": 1, "c": ["1"]})).is_empty(), "a bad item");
    assert!(
        !check(json!({"a": null})).is_empty(),
        "null where not nullable"
    );
}

fn migration_plan(id: &str) -> String {
    format!("migration: {id}\npathway: matrix_probe\nfrom: 900001\nto: 900002\n")
}

fn probe_pathway(version: u64) -> String {
    format!(
        r#"pathway: matrix_probe
version: {version}
title: {{ zh: 探针, en: Probe }}
owner_role: case_manager
roles: [case_manager]
entry_points:
  - {{ id: start, state: only }}
states:
  - id: only
    phase: follow_up
    terminal: true
    on_enter:
      - task: {{ id: t, role: case_manager, title: {{ zh: 任务, en: Task }}, due: 1d }}
"#
    )
}

async fn setup(backend: &Backend) -> (Ctx, Vec<(String, String, String, String)>) {
    let pool = Pool::connect(&backend.url).await.expect("connect");
    store::migrate(&pool).await.expect("migrate");
    let pathways = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pathways");
    let programs = Programs::load_dir(&pathways).expect("pathways load");
    store::publish(&pool, &programs, Timestamp::now())
        .await
        .expect("publish");
    // Two versions of a probe pathway for the migration routes.
    for v in [900_001, 900_002] {
        let dir = support::pathway_dir(&[("probe.yaml", &probe_pathway(v))]);
        let one = Programs::load_dir(dir.path()).expect("probe loads");
        store::publish(&pool, &one, Timestamp::now())
            .await
            .expect("publish probe");
    }
    let programs = store::load_programs(&pool).await.expect("load programs");
    seed::alliance(&pool).await.expect("alliance");
    let mut staff = seed::demo_staff(&pool).await.expect("staff");
    // Roles of the table that the demo staff lacks get a member at the lead and at clinic_a.
    let mut tx = pool.begin().await.expect("begin");
    for (role, _) in ROLE_MODULES {
        if staff.iter().any(|s| s.2 == *role) {
            continue;
        }
        for inst in ["lead", "clinic_a"] {
            let (id, tok) = (format!("{inst}.{role}"), format!("cp_test_{inst}_{role}"));
            add_staff(&mut tx, &id, inst, role, &tok).await;
            staff.push((id, inst.to_string(), role.to_string(), tok));
        }
    }
    tx.commit().await.expect("commit");
    let app = carepath_admin_api::router(AppState::new(pool.clone(), programs.clone()));
    let mut ctx = Ctx {
        app,
        pool,
        programs,
        n: 0,
        schema: Conformance::new(carepath_admin_api::openapi_document()),
    };
    // Baseline patients with enrolments (and so tasks) at the lead and at clinic_a.
    ctx.fixture("lead").await;
    ctx.fixture("clinic_a").await;
    (ctx, staff)
}

/// A token of a staff member of `inst` holding `role` alone, created when first asked for.
async fn staff_with_role(ctx: &Ctx, inst: &str, role: &str) -> String {
    let (id, tok) = (
        format!("{inst}.only_{role}"),
        format!("cp_test_{inst}_only_{role}"),
    );
    let mut tx = ctx.pool.begin().await.expect("begin");
    add_staff(&mut tx, &id, inst, role, &tok).await;
    tx.commit().await.expect("commit");
    tok
}

/// A staff member holding `role` alone, signed in with `token`.
async fn add_staff(
    tx: &mut carepath_engine::store::Tx,
    id: &str,
    inst: &str,
    role: &str,
    token: &str,
) {
    store::insert_staff(
        tx,
        id,
        inst,
        role,
        &[role],
        Some(store::queries::token_hash(token)),
    )
    .await
    .expect("staff");
}

/// The roles whose staff may act on a task: its role and its SLA's escalation role.
async fn task_roles(pool: &carepath_engine::store::Pool, task: i64) -> Vec<String> {
    let rows = pool
        .fetch(
            // The SLA is stored as a record part's hash (or, written by older steps, inline).
            "SELECT t.role, COALESCE(p.body, t.sla) FROM tasks t \
             LEFT JOIN record_parts p ON p.dedupe_key = t.sla WHERE t.id = $1",
            vec![carepath_engine::store::Arg::I(task)],
        )
        .await
        .expect("task");
    let mut roles = vec![rows[0].text(0)];
    if let Some(sla) = rows[0].opt_text(1) {
        let v: Value = serde_json::from_str(&sla).expect("sla json");
        roles.extend(v["escalate_to"].as_str().map(str::to_string));
    }
    roles
}

/// The roles whose staff may act on an alarm episode: its role and its task's escalation role.
async fn alarm_roles(pool: &carepath_engine::store::Pool, episode: i64) -> Vec<String> {
    let rows = pool
        .fetch(
            "SELECT role, escalate_to FROM alarm_episodes WHERE id = $1",
            vec![carepath_engine::store::Arg::I(episode)],
        )
        .await
        .expect("alarm episode");
    let mut roles = vec![rows[0].text(0)];
    roles.extend(rows[0].opt_text(1));
    roles
}

/// The status the table and the scoping rule call for.
/// `task_roles`: the roles that may act on the fixture task of `target` (its own and its SLA's
/// escalation role).
fn expected(
    route: &Route,
    role: Option<&str>,
    caller: &str,
    target: &str,
    task_roles: &[String],
    alarm_roles: &[String],
) -> String {
    let Some(role) = role else {
        return if route.scope == Scope::Public {
            "200"
        } else {
            "401"
        }
        .into();
    };
    if let Some(m) = route.scope.module()
        && !allowed(&[role.to_string()], m)
    {
        return "403".into();
    }
    let ok = route.success.to_string();
    match route.scope {
        Scope::Patient(_) if !patient_visible(caller, target) => "404".into(),
        Scope::Task(_) | Scope::Referral(_) if caller != target => "404".into(),
        Scope::Task(_) if !task_roles.iter().any(|r| r == role) => "403".into(),
        Scope::Alarm(_) | Scope::Intake(_) if caller != target => "404".into(),
        Scope::Alarm(_) if !alarm_roles.iter().any(|r| r == role) => "403".into(),
        Scope::Obs(_) => format!(
            "200 {}",
            if patient_visible(caller, target) {
                "accepted"
            } else {
                "refused"
            }
        ),
        _ => ok,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_matrix_audit_malformed_and_alarm() {
    for backend in support::backends() {
        println!("--- {}", backend.name());
        permission_matrix_on(&backend).await;
    }
}

async fn permission_matrix_on(backend: &Backend) {
    let (mut ctx, staff) = setup(backend).await;
    let routes = routes();

    // Every role in the table must be exercised by at least one token.
    for (role, _) in ROLE_MODULES {
        assert!(
            staff.iter().any(|s| s.2 == *role),
            "demo_staff has no {role}"
        );
    }

    // Callers: every staff token, plus no token and a bad token (as if at each institution).
    let mut callers: Vec<(String, Option<String>, Option<String>, String)> = staff
        .iter()
        .map(|(id, inst, role, tok)| {
            (
                id.clone(),
                Some(role.clone()),
                Some(tok.clone()),
                inst.clone(),
            )
        })
        .collect();
    callers.push(("<no token>".into(), None, None, "lead".into()));
    callers.push((
        "<bad token>".into(),
        None,
        Some("cp_not_a_real_token".into()),
        "lead".into(),
    ));

    let mut cells = 0usize;
    let mut mismatches = Vec::new();
    let mut forbidden = 0i64;
    let mut unaudited = Vec::new();
    for route in &routes {
        for (who, role, token, inst) in &callers {
            let targets: Vec<&str> = if route.scope.has_object() {
                INSTS.to_vec()
            } else {
                vec![inst.as_str()]
            };
            for target in targets {
                let fx = ctx.fixture(target).await;
                let n = ctx.next();
                let (uri, body): (String, Option<Value>) = match route.path {
                    "/pathways" if route.method == "POST" => (
                        "/pathways".into(),
                        Some(json!({"source": probe_pathway(n)})),
                    ),
                    "/pathways/{id}/{version}/graph" => (ctx.hypertension_graph(), None),
                    "/kpis/{indicator}/rows" => ("/kpis/on_time_task_rate/rows".into(), None),
                    "/patients" => (
                        "/patients".into(),
                        Some(
                            json!({"id": format!("new-{n}"), "birth_date": "1960-01-02", "sex": "male"}),
                        ),
                    ),
                    "/patients/{id}" if route.method == "PUT" => (
                        format!("/patients/{}", fx.patient),
                        Some(json!({"lang": "zh", "preferred_channel": "sms"})),
                    ),
                    "/patients/{id}" => (format!("/patients/{}", fx.patient), None),
                    "/patients/{id}/contact" => (format!("/patients/{}/contact", fx.patient), None),
                    "/enrolments" => (
                        "/enrolments".into(),
                        Some(
                            json!({"patient_id": fx.bare_patient, "pathway": "hypertension", "entry": "community"}),
                        ),
                    ),
                    "/enrolments/{id}/timeline" => {
                        (format!("/enrolments/{}/timeline", fx.enrolment), None)
                    }
                    "/enrolments/{id}/events" => (
                        format!("/enrolments/{}/events", fx.enrolment),
                        Some(json!({"name": "admitted"})),
                    ),
                    "/enrolments/{id}/withdraw" => (
                        format!("/enrolments/{}/withdraw", fx.enrolment),
                        Some(json!({"reason": "matrix"})),
                    ),
                    "/enrolments/{id}/scale-pushes" => {
                        (format!("/enrolments/{}/scale-pushes", fx.enrolment), None)
                    }
                    "/scale-pushes/{id}/answers" => (
                        format!("/scale-pushes/{}/answers", fx.scale_push),
                        Some(json!({"answers": {"pain": 4}})),
                    ),
                    "/observations" => (
                        "/observations".into(),
                        Some(
                            json!([{"patient_id": fx.patient, "kind": "bp_systolic", "value": 122.0,
                            "at": Timestamp::now().checked_sub(jiff::SignedDuration::from_secs(60)).expect("time").to_string(),
                            "reading_id": format!("m-{n}")}]),
                        ),
                    ),
                    "/tasks/{id}/{action}" => (
                        format!("/tasks/{}/claim", fx.task),
                        Some(json!({"lease_minutes": 30})),
                    ),
                    "/alarms/{id}/{action}" => (format!("/alarms/{}/acknowledge", fx.alarm), None),
                    "/referrals/{id}/{decision}" => (
                        format!("/referrals/{}/reject", fx.referral),
                        Some(json!({"reason": "no capacity"})),
                    ),
                    "/kpis" => ("/kpis?from=2026-01-01&to=2027-01-01&by=staff".into(), None),
                    "/migrations/dry-run" | "/migrations" => (
                        route.path.to_string(),
                        Some(json!({"plan": migration_plan(&format!("m-{n}"))})),
                    ),
                    "/migrations/{id}" | "/migrations/{id}/rollback" => {
                        // A run of its own for each call.
                        let id = format!("m-{n}");
                        let plan = carepath_dsl::migration::read_plan(
                            "plan.yaml",
                            migration_plan(&id).as_bytes(),
                            |p, v| ctx.programs.get(p, v).map(|x| &x.pathway),
                        )
                        .expect("plan");
                        store::release::apply(
                            &ctx.pool,
                            &ctx.programs,
                            &plan,
                            &store::release::ApplyOptions {
                                owner: "matrix",
                                batch_size: 10,
                                max_batches: None,
                                progress: None,
                            },
                            Timestamp::now(),
                        )
                        .await
                        .expect("apply");
                        (route.path.replace("{id}", &id), None)
                    }
                    "/intake/{id}/accept" => (format!("/intake/{}/accept", fx.candidate), None),
                    "/intake/{id}/reject" => (
                        format!("/intake/{}/reject", fx.candidate),
                        Some(json!({"reason": "followed elsewhere"})),
                    ),
                    p => (p.to_string(), None),
                };
                let audit_before = scalar(&ctx.pool, "SELECT COUNT(*) FROM audit_log").await;
                let (status, _ctype, bytes) = ctx
                    .call(
                        route.method,
                        &uri,
                        token.as_deref(),
                        body.map(|b| b.to_string().into_bytes()),
                    )
                    .await;
                let audit_after = scalar(&ctx.pool, "SELECT COUNT(*) FROM audit_log").await;
                let mut got = status.as_u16().to_string();
                if route.scope.has_object()
                    && matches!(route.scope, Scope::Obs(_))
                    && status == StatusCode::OK
                {
                    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    let accepted = v["accepted"].as_u64().unwrap_or(0);
                    got = format!("200 {}", if accepted == 1 { "accepted" } else { "refused" });
                }
                if route.path == "/queues/tasks" && status == StatusCode::OK {
                    // No task of another institution on the board.
                    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    for t in v["tasks"].as_array().into_iter().flatten() {
                        let id = t["id"].as_i64().unwrap_or(-1);
                        let owner = ctx
                            .pool
                            .fetch(
                                &format!("SELECT institution_id FROM tasks WHERE id = {id}"),
                                vec![],
                            )
                            .await
                            .expect("task owner");
                        if owner.first().map(|r| r.text(0)).as_deref() != Some(inst.as_str()) {
                            got = format!("200 LEAK task {id}");
                        }
                    }
                }
                if route.path == "/alarms" && status == StatusCode::OK {
                    // No episode of another institution, nor for a role the caller lacks.
                    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    for a in v["alarms"].as_array().into_iter().flatten() {
                        let id = a["id"].as_i64().unwrap_or(-1);
                        let owner = ctx
                            .pool
                            .fetch(
                                &format!(
                                    "SELECT institution_id FROM alarm_episodes WHERE id = {id}"
                                ),
                                vec![],
                            )
                            .await
                            .expect("episode owner");
                        let mine = alarm_roles(&ctx.pool, id)
                            .await
                            .iter()
                            .any(|r| Some(r.as_str()) == role.as_deref());
                        if owner.first().map(|r| r.text(0)).as_deref() != Some(inst.as_str())
                            || !mine
                        {
                            got = format!("200 LEAK alarm {id}");
                        }
                    }
                }
                if route.path == "/intake" && status == StatusCode::OK {
                    // No candidate of another institution in the queue.
                    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    for c in v["candidates"].as_array().into_iter().flatten() {
                        let id = c["id"].as_i64().unwrap_or(-1);
                        let owner = ctx
                            .pool
                            .fetch(
                                &format!(
                                    "SELECT institution_id FROM intake_candidates WHERE id = {id}"
                                ),
                                vec![],
                            )
                            .await
                            .expect("candidate owner");
                        if owner.first().map(|r| r.text(0)).as_deref() != Some(inst.as_str()) {
                            got = format!("200 LEAK intake candidate {id}");
                        }
                    }
                }
                if route.path == "/kpis" && status == StatusCode::OK {
                    // Indicators of the caller's institution only, and only its staff.
                    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    if v["institution"] != inst.as_str() {
                        got = format!("200 LEAK institution {}", v["institution"]);
                    }
                    for r in v["breakdown"]["rows"].as_array().into_iter().flatten() {
                        if let Some(id) = r["staff"].as_str()
                            && !id.starts_with(&format!("{inst}."))
                        {
                            got = format!("200 LEAK staff {id}");
                        }
                    }
                }
                let task_roles = task_roles(&ctx.pool, fx.task).await;
                let alarm_roles = alarm_roles(&ctx.pool, fx.alarm).await;
                let want = expected(
                    route,
                    role.as_deref(),
                    inst,
                    target,
                    &task_roles,
                    &alarm_roles,
                );
                let side = if target == inst { "own" } else { "other" };
                if got != want {
                    mismatches.push(format!(
                        "{} {} | {who} ({}) | {side}:{target} | expected {want}, got {got} {}",
                        route.method,
                        route.path,
                        role.as_deref().unwrap_or("-"),
                        String::from_utf8_lossy(&bytes)
                            .chars()
                            .take(160)
                            .collect::<String>()
                    ));
                }
                if status == StatusCode::FORBIDDEN {
                    forbidden += 1;
                    if audit_after != audit_before + 1 {
                        unaudited.push(format!("403 {} {} by {who}", route.method, uri));
                    }
                }
                if status.is_success() && route.patient_data && audit_after <= audit_before {
                    unaudited.push(format!("{} {} by {who}", route.method, uri));
                }
                if status == StatusCode::UNAUTHORIZED && audit_after != audit_before {
                    unaudited.push(format!("401 wrote audit: {} {}", route.method, uri));
                }
                // Every authenticated call to anything but health and metrics leaves a trace,
                // allowed or refused.
                if status != StatusCode::UNAUTHORIZED
                    && route.scope != Scope::Public
                    && audit_after == audit_before
                {
                    unaudited.push(format!(
                        "{status} left no audit row: {} {} by {who}",
                        route.method, uri
                    ));
                }
                cells += 1;
            }
        }
    }
    println!(
        "permission matrix: {} routes × {} callers ({} staff tokens + no token + bad token) × own/other → {cells} cells, {} mismatches",
        routes.len(),
        callers.len(),
        staff.len(),
        mismatches.len()
    );
    assert!(
        mismatches.is_empty(),
        "{} of {cells} cells differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert!(
        unaudited.is_empty(),
        "audit gaps:\n{}",
        unaudited.join("\n")
    );

    // ---- audit chain -------------------------------------------------------------------------
    let denied = scalar(
        &ctx.pool,
        "SELECT COUNT(*) FROM audit_log WHERE outcome = 'denied'",
    )
    .await;
    println!("403 responses: {forbidden}, denied audit rows: {denied}");
    assert_eq!(denied, forbidden, "every 403 leaves exactly one denied row");
    let auditor = token(&staff, "lead", "auditor");
    let verifications =
        "SELECT COUNT(*) FROM audit_log WHERE action = 'GET /audit/verify' AND outcome = 'ok'";
    let verified_before = scalar(&ctx.pool, verifications).await;
    let (status, _, bytes) = ctx.call("GET", "/audit/verify", Some(auditor), None).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(v["valid"], json!(true), "{v}");
    let entries = scalar(&ctx.pool, "SELECT COUNT(*) FROM audit_log").await;
    // Verifying is itself audited, once the answer is known.
    assert_eq!(v["entries"].as_i64(), Some(entries - 1));
    assert_eq!(scalar(&ctx.pool, verifications).await, verified_before + 1);
    println!("audit chain valid: {entries} entries");
    let admin = token(&staff, "lead", "admin");
    let fx = ctx.fixture("lead").await;
    for (m, uri) in [
        ("GET", format!("/patients/{}", fx.patient)),
        ("GET", format!("/enrolments/{}/timeline", fx.enrolment)),
        ("GET", "/queues/tasks".to_string()),
        ("GET", "/referrals".to_string()),
        ("GET", "/audit/verify".to_string()),
    ] {
        let (status, _, _) = ctx.call(m, &uri, Some(admin), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "admin {m} {uri}");
    }

    malformed(&mut ctx, &staff).await;
    events(&mut ctx, &staff).await;
    alarm(&mut ctx, &staff).await;
    scale_answers(&mut ctx, &staff).await;
    kpis(&mut ctx, &staff).await;

    // Every answer above was checked against the document (in `call`); every operation's success
    // answer was among them, so no success schema goes unchecked.
    let seen = ctx.schema.seen.lock().expect("seen").clone();
    let doc = &ctx.schema.doc;
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().expect("ops") {
            let success = op["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .filter_map(|s| s.parse::<u16>().ok())
                .find(|s| (200..300).contains(s))
                .expect("a success answer");
            assert!(
                seen.contains(&(method.clone(), path.clone(), success)),
                "no {success} answer of {method} {path} was checked against its schema"
            );
        }
    }
    println!(
        "checked {} (operation, status) pairs against the document",
        seen.len()
    );
}

/// Sums the `tasks` counts of breakdown rows.
fn row_sum(v: &Value, key: &str) -> i64 {
    v["breakdown"]["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            r["tasks"][key]
                .as_i64()
                .or_else(|| r["counts"]["tasks"][key].as_i64())
                .unwrap_or(0)
        })
        .sum()
}

/// `GET /kpis` breaks the totals down by pathway, role and staff member, and the rows add up to
/// the totals; `pathway=` narrows everything, declared indicators included; the old keys stay.
async fn kpis(ctx: &mut Ctx, staff: &[(String, String, String, String)]) {
    // Some completed work at the lead, by the case manager.
    let cm = token(staff, "lead", "case_manager");
    let fx = ctx.fixture("lead").await;
    let role = task_roles(&ctx.pool, fx.task).await.remove(0);
    let worker = staff_with_role(ctx, "lead", &role).await;
    let (status, _, bytes) = ctx
        .call(
            "POST",
            &format!("/tasks/{}/complete", fx.task),
            Some(&worker),
            Some(br#"{"outcome": "done"}"#.to_vec()),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let get = async |uri: &str, tok: &str| -> Value {
        let (status, _, bytes) = ctx.call("GET", uri, Some(tok), None).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{uri}: {}",
            String::from_utf8_lossy(&bytes)
        );
        serde_json::from_slice(&bytes).expect("json")
    };
    let period = "from=2020-01-01&to=2100-01-01";
    let total = get(&format!("/kpis?{period}"), cm).await;
    for key in [
        "follow_up_rate",
        "on_time_task_rate",
        "overdue_tasks",
        "open_tasks",
        "scale_completion",
        "referrals",
        "upward_accepted_within_24h",
        "case_load_per_case_manager",
        "active_enrolments",
        "enrolments_in_period",
        "average_length_of_stay_days",
    ] {
        assert!(
            total.get(key).is_some(),
            "`{key}` is gone from /kpis: {total}"
        );
    }
    assert!(total["breakdown"].is_null());
    let created = total["counts"]["tasks"]["created"]
        .as_i64()
        .expect("created");
    let completed = total["counts"]["tasks"]["completed"]
        .as_i64()
        .expect("completed");
    assert!(created > 0 && completed > 0, "{total}");
    for by in ["pathway", "role", "staff"] {
        let v = get(&format!("/kpis?{period}&by={by}"), cm).await;
        assert_eq!(v["breakdown"]["by"], by);
        assert_eq!(row_sum(&v, "created"), created, "by {by}: {v}");
        assert_eq!(row_sum(&v, "completed"), completed, "by {by}: {v}");
    }
    let v = get(&format!("/kpis?{period}&by=staff"), cm).await;
    let done_by_cm = v["breakdown"]["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["staff"] == format!("lead.only_{role}").as_str())
        .map(|r| r["tasks"]["completed"].as_i64().unwrap_or(0));
    assert!(done_by_cm >= Some(1), "{v}");
    // One pathway: its rows only, and its declared indicators.
    let v = get(
        &format!("/kpis?{period}&pathway=hypertension&by=pathway"),
        cm,
    )
    .await;
    assert_eq!(v["pathway"], "hypertension");
    let rows = v["breakdown"]["rows"].as_array().expect("rows");
    assert!(rows.iter().all(|r| r["pathway"] == "hypertension"), "{v}");
    let indicators = v["indicators"].as_array().expect("indicators");
    assert!(!indicators.is_empty(), "{v}");
    assert!(
        indicators.iter().all(|i| i["pathway"] == "hypertension"),
        "{v}"
    );
    let bp = indicators
        .iter()
        .find(|i| i["id"] == "bp_control_rate")
        .expect("bp_control_rate");
    assert_eq!(bp["numerator"]["counter"], "goal_met:bp_controlled");
    assert_eq!(bp["denominator"]["counter"], "enrolled");
    assert!(bp["denominator"]["count"].as_i64() > Some(0), "{bp}");
    assert_eq!(bp["target"], json!(0.6));
    // Another institution sees its own numbers, not the lead's.
    let clinic = get(
        &format!("/kpis?{period}&by=staff"),
        token(staff, "clinic_a", "case_manager"),
    )
    .await;
    assert_eq!(clinic["institution"], "clinic_a");
    let clinic_done = clinic["counts"]["tasks"]["completed"]
        .as_i64()
        .unwrap_or(-1);
    assert!(
        clinic_done < completed,
        "clinic_a {clinic_done} vs lead {completed}"
    );
    // The OpenAPI document lists the new parameters.
    let (_, _, bytes) = ctx.call("GET", "/openapi.json", None, None).await;
    let doc: Value = serde_json::from_slice(&bytes).expect("json");
    let params = doc["paths"]["/kpis"]["get"]["parameters"]
        .as_array()
        .expect("params");
    let by = params.iter().find(|p| p["name"] == "by").expect("by");
    assert_eq!(by["schema"]["enum"], json!(["pathway", "role", "staff"]));
    assert!(params.iter().any(|p| p["name"] == "pathway"));
}

fn token<'a>(staff: &'a [(String, String, String, String)], inst: &str, role: &str) -> &'a str {
    &staff
        .iter()
        .find(|s| s.1 == inst && s.2 == role)
        .expect("staff")
        .3
}

/// (method, uri, body, expected status or any 4xx)
type Case = (&'static str, String, Option<Vec<u8>>, Option<u16>);

async fn malformed(ctx: &mut Ctx, staff: &[(String, String, String, String)]) {
    let cm = token(staff, "lead", "case_manager");
    let informaticist = token(staff, "lead", "informaticist");
    let fx = ctx.fixture("lead").await;
    let huge = {
        let mut s = String::from("{\"id\": \"");
        s.push_str(&"x".repeat(1024 * 1024 + 10));
        s.push_str("\"}");
        s.into_bytes()
    };
    let e = fx.enrolment;
    let t = fx.task;
    let p = fx.scale_push;
    let graph = ctx.hypertension_graph();
    let many_answers = json!({"answers": (0..201).map(|i| (format!("q{i}"), json!(0))).collect::<serde_json::Map<String, Value>>()}).to_string();
    let huge_answers = {
        let mut s = String::from("{\"answers\": {\"pain\": 4}, \"answered_at\": \"");
        s.push_str(&"9".repeat(1024 * 1024 + 10));
        s.push_str("\"}");
        s.into_bytes()
    };
    let cases: Vec<Case> = vec![
        ("POST", "/patients".into(), Some(b"{not json".to_vec()), None),
        ("POST", "/patients".into(), Some(b"{\"id\": 5}".to_vec()), None),
        ("POST", "/patients".into(), Some(b"[]".to_vec()), None),
        ("POST", "/patients".into(), Some(br#"{"id": "ok-1", "name": "Zhang San"}"#.to_vec()), None),
        ("POST", "/patients".into(), Some(br#"{"id": "ok-2", "birth_date": "1960-02-30"}"#.to_vec()), None),
        ("POST", "/patients".into(), Some(br#"{"id": "ok-3", "tz": "Mars/Olympus"}"#.to_vec()), None),
        ("POST", "/patients".into(), Some(br#"{"id": "bad id!"}"#.to_vec()), None),
        ("POST", "/patients".into(), Some(huge.clone()), Some(413)),
        ("POST", "/observations".into(), Some(huge.clone()), Some(413)),
        ("POST", format!("/tasks/{t}/claim"), Some(huge), Some(413)),
        ("POST", "/patients".into(), Some(Vec::new()), None),
        ("POST", "/patients".into(), Some(br#"{"id": "dup-1", "id": "dup-2"}"#.to_vec()), Some(400)),
        ("POST", "/patients".into(), Some(br#"{"id": "ok-4", "preferred_channel": "pigeon"}"#.to_vec()), Some(400)),
        ("POST", "/patients".into(), Some(br#"{"id": "ok-5", "birth_date": "0001-01-01"}"#.to_vec()), Some(400)),
        ("POST", "/patients".into(), Some(br#"{"id": "ok-6", "birth_date": "9999-12-31"}"#.to_vec()), Some(400)),
        ("POST", format!("/tasks/{t}/snooze"), Some(br#"{"until": "9000-01-01T00:00:00Z", "reason": "later"}"#.to_vec()), Some(400)),
        ("POST", format!("/tasks/{t}/complete"), Some(br#"{"outcome": "done", "outcome": "reached"}"#.to_vec()), Some(400)),
        ("POST", format!("/enrolments/{e}/events"), Some(br#"{"name": "admitted", "at": "2001-01-01T00:00:00Z"}"#.to_vec()), Some(400)),
        ("POST", format!("/enrolments/{e}/events"), Some(br#"{"name": "discharge"}"#.to_vec()), Some(400)),
        ("POST", format!("/enrolments/{e}/events"), Some(br#"{"name": "matrix_probe"}"#.to_vec()), Some(400)),
        ("GET", "/patients/no-such-patient".into(), None, Some(404)),
        ("GET", "/enrolments/99999999/timeline".into(), None, Some(404)),
        ("GET", "/enrolments/abc/timeline".into(), None, None),
        ("GET", "/enrolments/99999999999999999999999/timeline".into(), None, None),
        ("POST", "/enrolments/99999999/events".into(), Some(br#"{"name": "admitted"}"#.to_vec()), Some(404)),
        ("POST", format!("/enrolments/{e}/events"), Some(br#"{"name": "Discharged!"}"#.to_vec()), None),
        ("POST", format!("/enrolments/{e}/events"), Some(br#"{"name": "admitted", "at": "yesterday"}"#.to_vec()), None),
        ("POST", format!("/enrolments/{e}/events"), Some(br#"{"name": "admitted", "at": "2999-01-01T00:00:00Z"}"#.to_vec()), None),
        ("POST", format!("/enrolments/{e}/events"), Some(br#"{"name": 7}"#.to_vec()), None),
        ("POST", format!("/enrolments/{e}/withdraw"), Some(br#"{"reason": "  "}"#.to_vec()), None),
        ("POST", format!("/enrolments/{e}/withdraw"), Some(br#"{"reason": "x", "extra": 1}"#.to_vec()), None),
        ("POST", "/enrolments".into(), Some(br#"{"patient_id": "nobody", "pathway": "hypertension", "entry": "community"}"#.to_vec()), Some(404)),
        ("POST", "/enrolments".into(), Some(format!(r#"{{"patient_id": "{}", "pathway": "no_such", "entry": "community"}}"#, fx.bare_patient).into_bytes()), None),
        ("POST", "/enrolments".into(), Some(format!(r#"{{"patient_id": "{}", "pathway": "hypertension", "entry": "nowhere"}}"#, fx.bare_patient).into_bytes()), None),
        ("POST", "/enrolments".into(), Some(format!(r#"{{"patient_id": "{}", "pathway": "hypertension", "version": 99, "entry": "community"}}"#, fx.bare_patient).into_bytes()), None),
        ("POST", "/enrolments".into(), Some(format!(r#"{{"patient_id": "{}", "pathway": "hypertension", "version": -1, "entry": "community"}}"#, fx.bare_patient).into_bytes()), None),
        ("POST", "/observations".into(), Some(br#"{"patient_id": "x"}"#.to_vec()), None),
        ("POST", "/observations".into(), Some(br#"[{"patient_id": "x", "kind": "bp_systolic", "value": "high", "at": "2026-01-01T00:00:00Z", "reading_id": "r"}]"#.to_vec()), None),
        ("POST", "/observations".into(), Some(br#"[{"patient_id": "x", "kind": "bp_systolic", "value": 120, "at": "last tuesday", "reading_id": "r"}]"#.to_vec()), None),
        ("GET", "/queues/tasks?cursor=abc".into(), None, Some(400)),
        ("GET", "/queues/tasks?cursor=1.2".into(), None, Some(400)),
        ("GET", "/queues/tasks?cursor=1.2.3.4".into(), None, Some(400)),
        ("GET", "/queues/tasks?limit=0".into(), None, Some(400)),
        ("GET", "/queues/tasks?limit=201".into(), None, Some(400)),
        ("GET", "/queues/tasks?limit=-5".into(), None, Some(400)),
        ("GET", "/queues/tasks?limit=abc".into(), None, Some(400)),
        ("GET", "/queues/tasks?limit=99999999999999999999".into(), None, Some(400)),
        ("GET", "/queues/tasks?status=weird".into(), None, Some(400)),
        ("GET", "/queues/tasks?due_before=tomorrow".into(), None, Some(400)),
        ("GET", "/queues/tasks?bogus=1".into(), None, Some(400)),
        ("GET", "/kpis?from=2026-13-45".into(), None, Some(400)),
        ("GET", "/kpis?from=2027-01-01&to=2026-01-01".into(), None, Some(400)),
        ("GET", "/kpis?to=yesterday".into(), None, Some(400)),
        ("GET", "/kpis?from=-9999-01-01".into(), None, None),
        ("GET", "/kpis?by=ward".into(), None, Some(400)),
        ("GET", "/kpis?by=".into(), None, Some(400)),
        ("GET", "/kpis?pathway=no_such_pathway".into(), None, Some(400)),
        ("GET", "/referrals?bogus=1".into(), None, Some(400)),
        ("POST", "/tasks/99999999/claim".into(), Some(b"{}".to_vec()), Some(404)),
        ("POST", "/tasks/abc/claim".into(), Some(b"{}".to_vec()), None),
        ("POST", format!("/tasks/{t}/explode"), Some(b"{}".to_vec()), Some(404)),
        ("POST", format!("/tasks/{t}/claim"), Some(b"{not json".to_vec()), None),
        ("POST", format!("/tasks/{t}/claim"), Some(br#"{"lease_minutes": 100000}"#.to_vec()), Some(400)),
        ("POST", format!("/tasks/{t}/claim"), Some(br#"{"lease_minutes": "long"}"#.to_vec()), None),
        ("POST", format!("/tasks/{t}/complete"), Some(b"{}".to_vec()), Some(400)),
        ("POST", format!("/tasks/{t}/complete"), Some(br#"{"outcome": "exploded"}"#.to_vec()), Some(400)),
        ("POST", format!("/tasks/{t}/reassign"), Some(br#"{"assignee": "clinic_b.doctor"}"#.to_vec()), Some(400)),
        ("POST", format!("/tasks/{t}/snooze"), Some(br#"{"until": "soon", "reason": "x"}"#.to_vec()), Some(400)),
        ("POST", format!("/tasks/{t}/snooze"), Some(br#"{"until": "2000-01-01T00:00:00Z", "reason": "x"}"#.to_vec()), Some(400)),
        ("POST", format!("/tasks/{t}/snooze"), Some(br#"{"until": "2999-01-01T00:00:00Z"}"#.to_vec()), Some(400)),
        ("POST", "/referrals/99999999/accept".into(), Some(b"{}".to_vec()), Some(404)),
        ("POST", format!("/referrals/{}/dance", fx.referral), Some(b"{}".to_vec()), Some(404)),
        ("POST", format!("/referrals/{}/accept", fx.referral), Some(b"{oops".to_vec()), None),
        ("GET", "/pathways/hypertension/99/graph".into(), None, Some(404)),
        ("GET", "/pathways/hypertension/x/graph".into(), None, None),
        ("GET", format!("{graph}?format=png"), None, Some(400)),
        ("GET", "/no/such/route".into(), None, Some(404)),
        ("POST", "/pathways".into(), Some(json!({"source": "pathway: [unclosed"}).to_string().into_bytes()), Some(422)),
        ("POST", "/pathways".into(), Some(json!({"source": probe_pathway(1).replace("    terminal: true\n", "")}).to_string().into_bytes()), Some(422)),
        ("POST", "/pathways".into(), Some(json!({"source": "x", "format": "xml"}).to_string().into_bytes()), Some(400)),
        ("POST", format!("/scale-pushes/{p}/answers"), Some(b"{not json".to_vec()), None),
        ("POST", format!("/scale-pushes/{p}/answers"), Some(b"[]".to_vec()), None),
        ("POST", format!("/scale-pushes/{p}/answers"), Some(b"{}".to_vec()), None),
        ("POST", format!("/scale-pushes/{p}/answers"), Some(br#"{"answers": "all fine"}"#.to_vec()), None),
        ("POST", format!("/scale-pushes/{p}/answers"), Some(br#"{"answers": {"pain": "4"}}"#.to_vec()), None),
        ("POST", format!("/scale-pushes/{p}/answers"), Some(br#"{"answers": {"pain": 4.5}}"#.to_vec()), None),
        ("POST", format!("/scale-pushes/{p}/answers"), Some(br#"{"answers": {"pain": null}}"#.to_vec()), None),
        ("POST", format!("/scale-pushes/{p}/answers"), Some(br#"{"answers": {"pain": 99999999999999999999999}}"#.to_vec()), None),
        ("POST", format!("/scale-pushes/{p}/answers"), Some(br#"{"answers": {"ache": 4}}"#.to_vec()), Some(400)),
        ("POST", format!("/scale-pushes/{p}/answers"), Some(br#"{"answers": {"pain": 4, "ache": 4}}"#.to_vec()), Some(400)),
        ("POST", format!("/scale-pushes/{p}/answers"), Some(br#"{"answers": {"pain": 11}}"#.to_vec()), Some(400)),
        ("POST", format!("/scale-pushes/{p}/answers"), Some(br#"{"answers": {"pain": -1}}"#.to_vec()), Some(400)),
        ("POST", format!("/scale-pushes/{p}/answers"), Some(br#"{"answers": {"pain": -9223372036854775808}}"#.to_vec()), Some(400)),
        ("POST", format!("/scale-pushes/{p}/answers"), Some(br#"{"answers": {}}"#.to_vec()), Some(400)),
        ("POST", format!("/scale-pushes/{p}/answers"), Some(br#"{"answers": {"pain": 4}, "score": 0}"#.to_vec()), None),
        ("POST", format!("/scale-pushes/{p}/answers"), Some(br#"{"answers": {"pain": 4}, "answered_at": "yesterday"}"#.to_vec()), Some(400)),
        ("POST", format!("/scale-pushes/{p}/answers"), Some(br#"{"answers": {"pain": 4}, "answered_at": "2999-01-01T00:00:00Z"}"#.to_vec()), Some(400)),
        ("POST", format!("/scale-pushes/{p}/answers"), Some(br#"{"answers": {"pain": 4}, "answered_at": "2000-01-01T00:00:00Z"}"#.to_vec()), Some(400)),
        ("POST", format!("/scale-pushes/{p}/answers"), Some(many_answers.into_bytes()), Some(400)),
        ("POST", format!("/scale-pushes/{p}/answers"), Some(huge_answers), Some(413)),
        ("POST", "/scale-pushes/99999999/answers".into(), Some(br#"{"answers": {"pain": 4}}"#.to_vec()), Some(404)),
        ("POST", "/scale-pushes/abc/answers".into(), Some(br#"{"answers": {"pain": 4}}"#.to_vec()), None),
        ("POST", "/scale-pushes/99999999999999999999999/answers".into(), Some(br#"{"answers": {"pain": 4}}"#.to_vec()), None),
        ("GET", "/enrolments/99999999/scale-pushes".into(), None, Some(404)),
        ("GET", "/enrolments/abc/scale-pushes".into(), None, None),
    ];
    // Task actions come from staff of the fixture task's role, so that what is refused is the
    // request itself, not the role.
    let role = task_roles(&ctx.pool, t).await.remove(0);
    let task_staff = staff_with_role(ctx, "lead", &role).await;
    let mut bad = Vec::new();
    for (m, uri, body, want) in &cases {
        let tok = if uri == "/pathways" {
            informaticist
        } else if uri.starts_with("/tasks/") {
            task_staff.as_str()
        } else {
            cm
        };
        let (status, ctype, bytes) = ctx.call(m, uri, Some(tok), body.clone()).await;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let detail_ok = v["detail"].as_str().is_some_and(|d| !d.trim().is_empty());
        let problem = ctype.as_deref() == Some("application/problem+json");
        let status_ok = match want {
            Some(w) => status.as_u16() == *w,
            None => status.is_client_error(),
        };
        if !status_ok || !detail_ok || !problem {
            bad.push(format!(
                "{m} {uri}: {status} {ctype:?} {}",
                String::from_utf8_lossy(&bytes)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ));
        }
    }
    println!("malformed input: {} cases", cases.len());
    assert!(
        bad.is_empty(),
        "malformed input handled badly:\n{}",
        bad.join("\n")
    );
    // None of the refused answers touched the push.
    assert_eq!(
        scalar(
            &ctx.pool,
            &format!("SELECT COUNT(*) FROM scale_pushes WHERE id = {p} AND status = 'pending'")
        )
        .await,
        1
    );
    assert_eq!(
        scalar(
            &ctx.pool,
            &format!("SELECT COUNT(*) FROM scale_answers WHERE push_id = {p}")
        )
        .await,
        0
    );
    // A body refused before its handler runs is still audited, under its caller.
    let before = scalar(
        &ctx.pool,
        "SELECT COUNT(*) FROM audit_log WHERE outcome = 'invalid' AND actor = 'lead.case_manager'",
    )
    .await;
    let (status, _, _) = ctx
        .call(
            "POST",
            "/patients",
            Some(cm),
            Some(br#"{"id": "twice", "id": "again"}"#.to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let after = scalar(
        &ctx.pool,
        "SELECT COUNT(*) FROM audit_log WHERE outcome = 'invalid' AND actor = 'lead.case_manager'",
    )
    .await;
    assert_eq!(after, before + 1);
    // The scheme of `Authorization` is case-insensitive.
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let req = Request::builder()
            .uri("/queues/tasks")
            .header(header::AUTHORIZATION, format!("{scheme} {cm}"))
            .body(Body::empty())
            .expect("request");
        let res = ctx.app.clone().oneshot(req).await.expect("infallible");
        assert_eq!(res.status(), StatusCode::OK, "scheme {scheme}");
    }
    // A reading dated in the future is refused, with its reason.
    let later = Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(2))
        .expect("time");
    let body = json!([{"patient_id": fx.patient, "kind": "bp_systolic", "value": 120.0, "at": later.to_string(), "reading_id": "future-1"}]);
    let (status, _, bytes) = ctx
        .call(
            "POST",
            "/observations",
            Some(cm),
            Some(body.to_string().into_bytes()),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(v["accepted"], json!(0), "{v}");
    assert!(v.to_string().contains("in the future"), "{v}");
    // Auth failures are problems too.
    for tok in [None, Some("nope")] {
        let (status, ctype, bytes) = ctx.call("GET", "/queues/tasks", tok, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(ctype.as_deref(), Some("application/problem+json"));
        let v: Value = serde_json::from_slice(&bytes).expect("json");
        assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
}

/// A pathway with an event of its own, published through the API.
const FALLS_PROBE: &str = r#"pathway: falls_probe
version: 1
title: { zh: 跌倒随访（接口测试）, en: Falls follow-up (API test) }
owner_role: case_manager
roles: [case_manager]
events:
  - { name: fall_reported, description: A fall reported through the patient app }
entry_points:
  - { id: start, state: home }
states:
  - id: home
    phase: follow_up
    transitions:
      - on: fall_reported
        to: done
      - after: 30d
        to: done
  - id: done
    phase: closed
    terminal: true
"#;

/// The event endpoint records what the enrolment's pathway declares or has built in, and refuses
/// any other name with the reason and the likely intended event.
async fn events(ctx: &mut Ctx, staff: &[(String, String, String, String)]) {
    let cm = token(staff, "lead", "case_manager");
    let informaticist = token(staff, "lead", "informaticist");
    let body = |v: Value| Some(v.to_string().into_bytes());
    let (status, _, bytes) = ctx
        .call(
            "POST",
            "/pathways",
            Some(informaticist),
            body(json!({"source": FALLS_PROBE})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let patient = ctx.patient("lead").await;
    let (status, _, bytes) = ctx
        .call(
            "POST",
            "/enrolments",
            Some(cm),
            body(json!({"patient_id": patient, "pathway": "falls_probe", "entry": "start"})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let enrolment = serde_json::from_slice::<Value>(&bytes).expect("json")["id"]
        .as_i64()
        .expect("id");
    let uri = format!("/enrolments/{enrolment}/events");
    for (name, hint) in [
        ("fall_reportd", "did you mean `fall_reported`?"),
        ("wound_problem_reported", "declares `fall_reported`"),
        ("task_done", "`task_done:<task>`"),
    ] {
        let (status, _, bytes) = ctx
            .call("POST", &uri, Some(cm), body(json!({"name": name})))
            .await;
        let v: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {v}");
        let detail = v["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(&format!("event `{name}` is neither declared"))
                && detail.contains(hint),
            "{name}: {detail}"
        );
    }
    // A built-in event and the pathway's own are recorded; only the one it waits for moves it on.
    for (name, transitions) in [("discharged", 0), ("fall_reported", 1)] {
        let (status, _, bytes) = ctx
            .call("POST", &uri, Some(cm), body(json!({"name": name})))
            .await;
        let v: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(status, StatusCode::OK, "{name}: {v}");
        assert_eq!(v["transitions"], json!(transitions), "{name}: {v}");
    }
    let stored = scalar(
        &ctx.pool,
        &format!(
            "SELECT COUNT(*) FROM events WHERE enrolment_id = {enrolment} AND name IN ('fall_reportd', 'wound_problem_reported', 'task_done')"
        ),
    )
    .await;
    assert_eq!(stored, 0, "a refused event is not stored");
}

async fn alarm(ctx: &mut Ctx, staff: &[(String, String, String, String)]) {
    let cm = token(staff, "lead", "case_manager");
    let patient = ctx.patient("lead").await;
    // The hypertension `enrolment` state arms bp_crisis (systolic ≥ 180) for the whole enrolment.
    store::enrol(
        &ctx.pool,
        &ctx.programs,
        &patient,
        "hypertension",
        None,
        "lead_hospital",
        Timestamp::now(),
    )
    .await
    .expect("enrol");
    let at = Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_secs(30))
        .expect("time")
        .to_string();
    let body = json!([{"patient_id": patient, "kind": "bp_systolic", "value": 190.0, "at": at, "reading_id": "alarm-1"},
                      {"patient_id": patient, "kind": "bp_diastolic", "value": 100.0, "at": at, "reading_id": "alarm-1"}]);
    let started = Instant::now();
    let (status, _, bytes) = ctx
        .call(
            "POST",
            "/observations",
            Some(cm),
            Some(body.to_string().into_bytes()),
        )
        .await;
    let latency = started.elapsed();
    let v: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(status, StatusCode::OK, "{v}");
    println!("alarm: POST /observations (bp_systolic 190) took {latency:?}; response {v}");
    let alarm_task = v["alarm_tasks"]
        .as_array()
        .and_then(|a| a.first())
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("no alarm task: {v}"));
    assert!(latency.as_secs() < 10, "sanity bound: {latency:?}");
    // The board belongs to its role: a case manager of another role may not read it.
    let board = "/queues/tasks?role=clinic_case_manager&limit=200";
    let (status, _, _) = ctx.call("GET", board, Some(cm), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let ccm = staff_with_role(ctx, "lead", "clinic_case_manager").await;
    let (status, _, bytes) = ctx.call("GET", board, Some(&ccm), None).await;
    assert_eq!(status, StatusCode::OK);
    let q: Value = serde_json::from_slice(&bytes).expect("json");
    let urgent =
        q["tasks"].as_array().into_iter().flatten().find(|t| {
            t["patient_id"] == json!(patient) && t["task_ref"] == json!("bp_crisis_call")
        });
    let urgent = urgent.unwrap_or_else(|| panic!("no bp_crisis_call task for {patient} in {q}"));
    assert_eq!(urgent["priority"], json!("urgent"));
    assert_eq!(urgent["id"], json!(alarm_task));
    // The reading opened an episode, which the board's role lists and may acknowledge.
    let episode = v["alarm_episodes"][0]
        .as_i64()
        .unwrap_or_else(|| panic!("no alarm episode: {v}"));
    // The matrix's fixtures hold many open episodes before it: the cursor starts after them.
    let (status, _, bytes) = ctx
        .call(
            "GET",
            &format!("/alarms?status=open&cursor={}&limit=1", episode - 1),
            Some(&ccm),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let a: Value = serde_json::from_slice(&bytes).expect("json");
    let listed = &a["alarms"][0];
    assert_eq!(listed["id"], json!(episode), "{a}");
    assert_eq!(a["next_cursor"], json!(episode.to_string()), "{a}");
    assert_eq!(listed["alarm"], json!("bp_crisis"));
    assert_eq!(listed["task_id"], json!(alarm_task));
    let (status, _, _) = ctx
        .call(
            "POST",
            &format!("/alarms/{episode}/acknowledge"),
            Some(&ccm),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        q["tasks"][0]["priority"],
        json!("urgent"),
        "urgent tasks lead the board"
    );
}

/// EPDS with a guard on item 10 and on the total, published through the API.
const EPDS_PROBE: &str = r#"pathway: epds_probe
version: 1
title: { zh: 产后抑郁筛查（接口测试）, en: Postnatal depression screening (API test) }
owner_role: case_manager
roles: [case_manager, doctor]
entry_points:
  - { id: start, state: screen }
states:
  - id: screen
    phase: follow_up
    on_enter:
      - scale: { scale: epds, due: 3d, reminders: [1d], expires: 7d }
    transitions:
      - on: scale_answered:epds
        when: 'item("epds", 10) > 0'
        to: safety
      - on: scale_answered:epds
        to: done
  - id: safety
    phase: follow_up
    on_enter:
      - task: { id: safety_call, role: doctor, title: { zh: 安全评估, en: Safety assessment }, due: 1h, priority: urgent }
    transitions:
      - on: task_done:safety_call
        to: done
  - id: done
    phase: closed
    terminal: true
"#;

async fn scale_answers(ctx: &mut Ctx, staff: &[(String, String, String, String)]) {
    let cm = token(staff, "lead", "case_manager");
    let informaticist = token(staff, "lead", "informaticist");
    let post = |uri: String, body: Value| (uri, Some(body.to_string().into_bytes()));
    let (uri, body) = post("/pathways".into(), json!({"source": EPDS_PROBE}));
    let (status, _, bytes) = ctx.call("POST", &uri, Some(informaticist), body).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let patient = ctx.patient("lead").await;
    let (uri, body) = post(
        "/enrolments".into(),
        json!({"patient_id": patient, "pathway": "epds_probe", "entry": "start"}),
    );
    let (status, _, bytes) = ctx.call("POST", &uri, Some(cm), body).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let enrolment = serde_json::from_slice::<Value>(&bytes).expect("json")["id"]
        .as_i64()
        .expect("id");
    let (status, _, bytes) = ctx
        .call(
            "GET",
            &format!("/enrolments/{enrolment}/scale-pushes"),
            Some(cm),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let list: Value = serde_json::from_slice(&bytes).expect("json");
    let push = &list["scale_pushes"][0];
    assert_eq!(push["scale"], json!("epds"), "{list}");
    assert_eq!(push["status"], json!("pending"), "{list}");
    assert_eq!(
        push["reminders"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
    let push = push["id"].as_i64().expect("push id");

    // Item 10 "hardly ever" (second box from the bottom) with a low total.
    let mut answers = serde_json::Map::new();
    for n in 1..=9 {
        answers.insert(
            format!("q{n}"),
            json!(if matches!(n, 1 | 2 | 4) { 0 } else { 3 }),
        );
    }
    answers.insert("q10".into(), json!(2));
    let body = json!({"answers": answers});
    let started = Instant::now();
    let (status, _, bytes) = ctx
        .call(
            "POST",
            &format!("/scale-pushes/{push}/answers"),
            Some(cm),
            Some(body.to_string().into_bytes()),
        )
        .await;
    let latency = started.elapsed();
    let v: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(status, StatusCode::CREATED, "{v}");
    println!("scale answer: POST /scale-pushes/{push}/answers took {latency:?}; response {v}");
    assert_eq!(v["score"], json!(1.0), "{v}");
    assert_eq!(v["band"], json!("unlikely"), "{v}");
    assert_eq!(v["critical"][0]["item"], json!("q10"), "{v}");
    assert_eq!(v["critical"][0]["role"], json!("doctor"), "{v}");
    assert_eq!(
        v["transitions"],
        json!(1),
        "the guard on item 10 acted at once: {v}"
    );
    let critical_task = v["critical"][0]["task_id"].as_i64().expect("critical task");
    // On the doctor's board at once, urgent, beside the pathway's own safety task.
    let doctor = token(staff, "lead", "doctor");
    let (status, _, bytes) = ctx
        .call(
            "GET",
            "/queues/tasks?role=doctor&limit=200",
            Some(doctor),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let q: Value = serde_json::from_slice(&bytes).expect("json");
    let mine: Vec<&Value> = q["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["patient_id"] == json!(patient))
        .collect();
    assert!(
        mine.iter()
            .any(|t| t["id"] == json!(critical_task) && t["priority"] == json!("urgent")),
        "{q}"
    );
    assert!(
        mine.iter().any(|t| t["task_ref"] == json!("safety_call")),
        "{q}"
    );
    let (_, _, bytes) = ctx
        .call(
            "GET",
            &format!("/enrolments/{enrolment}/timeline"),
            Some(cm),
            None,
        )
        .await;
    let timeline: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(timeline["state"], json!("safety"), "{timeline}");
    // A second answer to the same push is a conflict, and changes nothing.
    let (status, ctype, bytes) = ctx
        .call(
            "POST",
            &format!("/scale-pushes/{push}/answers"),
            Some(cm),
            Some(body.to_string().into_bytes()),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    assert_eq!(ctype.as_deref(), Some("application/problem+json"));
    assert_eq!(
        scalar(
            &ctx.pool,
            &format!("SELECT COUNT(*) FROM scale_answers WHERE push_id = {push}")
        )
        .await,
        1
    );
    let (_, _, bytes) = ctx
        .call(
            "GET",
            &format!("/enrolments/{enrolment}/scale-pushes"),
            Some(cm),
            None,
        )
        .await;
    let list: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(
        list["scale_pushes"][0]["status"],
        json!("answered"),
        "{list}"
    );
    assert_eq!(list["scale_pushes"][0]["band"], json!("unlikely"), "{list}");
}
