//! FHIR R4 at `/fhir`, served on a real port: a real client (`fhirpy`, installed with pip when
//! missing) creates, reads, searches and posts transaction and batch Bundles, and every resource
//! carepath returns is validated with the `fhir.resources` R4B models; then hundreds of
//! malformed resources must each be answered with a 4xx OperationOutcome, write nothing and leave
//! the server serving. Every test runs on SQLite, and on PostgreSQL when `DATABASE_URL` is set.

use std::process::{Command, Stdio};
use std::sync::Mutex;

use carepath_admin_api::{AppState, ROLE_MODULES, allowed};
use carepath_engine::store::{self, Pool};
use carepath_engine::{Programs, seed};
use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{self, Backend, loud, scalar};

/// A clinic_a staff member holding the roles the hypertension pathway gives its tasks to.
const CM: &str = "cp_fhir_clinic_a_care_team";
const PATIENT: &str = "fhir-pt-a";
/// A patient of another clinic, which clinic_a may not see.
const OTHER: &str = "fhir-pt-b";
/// A clinic_a patient on the stroke pathway, whose admission the hospital sends.
const STROKE: &str = "fhir-pt-stroke";
const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

struct Served {
    pool: Pool,
    addr: std::net::SocketAddr,
    server: tokio::task::JoinHandle<()>,
    /// When the stroke patient was admitted (and enrolled): five days ago, to the minute.
    admitted: Timestamp,
    stroke_enrolment: i64,
}

async fn serve(b: &Backend) -> Served {
    let now = Timestamp::now();
    let pool = Pool::connect(&b.url).await.expect("connect");
    store::migrate(&pool).await.expect("migrate");
    let pathways = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pathways");
    let programs = Programs::load_dir(&pathways).expect("pathways load");
    store::publish(&pool, &programs, now)
        .await
        .expect("publish");
    let programs = store::load_programs(&pool).await.expect("programs");
    seed::alliance(&pool).await.expect("alliance");
    let mut tx = pool.begin().await.expect("begin");
    for (role, _) in ROLE_MODULES {
        let token = format!("cp_fhir_clinic_a_{role}");
        store::insert_staff(
            &mut tx,
            &format!("clinic_a.fhir_{role}"),
            "clinic_a",
            role,
            &[role],
            Some(store::queries::token_hash(&token)),
        )
        .await
        .expect("staff");
    }
    let team = ["case_manager", "clinic_case_manager", "doctor", "nurse"];
    store::insert_staff(
        &mut tx,
        "clinic_a.fhir_team",
        "clinic_a",
        "Care team",
        &team,
        Some(store::queries::token_hash(CM)),
    )
    .await
    .expect("staff");
    tx.commit().await.expect("commit");
    support::add_patient_at(&pool, PATIENT, "clinic_a", now).await;
    support::add_patient_at(&pool, OTHER, "clinic_b", now).await;
    let (enrolment, _) = store::enrol(
        &pool,
        &programs,
        PATIENT,
        "hypertension",
        None,
        "community",
        now,
    )
    .await
    .expect("enrol");
    support::add_patient_at(&pool, STROKE, "clinic_a", now).await;
    let admitted = now - jiff::SignedDuration::from_secs(5 * 86_400 - 60);
    let (stroke_enrolment, _) = store::enrol(
        &pool,
        &programs,
        STROKE,
        "stroke",
        None,
        "admission",
        admitted,
    )
    .await
    .expect("enrol in stroke");
    pool.exec(
        &format!(
            "INSERT INTO scale_pushes (dedupe_key, enrolment_id, patient_id, institution_id, state_seq, scale, due_at, expires_at, reminders, status, created_at) \
             VALUES ('fhir-push', {enrolment}, '{PATIENT}', 'clinic_a', 1, 'nrs', {}, NULL, '[]', 'pending', {})",
            now.as_second() + 86_400,
            now.as_second() - 60
        ),
        vec![],
    )
    .await
    .expect("push");
    let key = carepath_engine::crypto::ContactKey::parse(KEY).expect("key");
    let app =
        carepath_admin_api::router(AppState::new(pool.clone(), programs).with_contact_key(key));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await;
    });
    Served {
        pool,
        addr,
        server,
        admitted,
        stroke_enrolment,
    }
}

/// One HTTP/1.1 call on a fresh connection: (status, content type, body).
async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> (u16, String, String) {
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .expect("the server is alive");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.expect("write");
    // A server may answer (413) and close before it has read a body it refuses.
    let _ = conn.write_all(body).await;
    let mut raw = Vec::new();
    let _ = conn.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let ct = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    // Bodies may be chunked: take the JSON object inside.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if b >= a => body[a..=b].to_string(),
        _ => body.to_string(),
    };
    (status, ct, body)
}

/// Makes sure `fhirpy` and `fhir.resources` can be imported: installs them with pip when missing,
/// loudly.
fn ensure_fhir_python() {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _once = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let importable = || {
        Command::new("python3")
            .args(["-c", "import fhirpy, fhir.resources.R4B"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if importable() {
        return;
    }
    loud(
        "fhirpy / fhir.resources are not installed: installing them with `python3 -m pip install --quiet fhirpy fhir.resources`",
    );
    let ok = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "fhirpy",
            "fhir.resources",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok && importable(),
        "fhirpy and fhir.resources could not be installed with pip"
    );
}

async fn fhir_client_round_trips(b: Backend) {
    ensure_fhir_python();
    let s = serve(&b).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fhir/client.py");
    let base = format!("http://{}/fhir", s.addr);
    let admitted = s.admitted.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(&script)
            .args([base.as_str(), CM, PATIENT, OTHER, STROKE, admitted.as_str()])
            .output()
    })
    .await
    .expect("joined")
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "[{}] the client failed:\n{stdout}\n{}",
        b.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("a JSON summary");
    let name = b.name();
    assert_eq!(
        summary["capability_resources"],
        json!([
            "CarePlan",
            "Condition",
            "Encounter",
            "Observation",
            "Patient",
            "Questionnaire",
            "QuestionnaireResponse",
            "Task"
        ]),
        "[{name}]"
    );
    // 126 mg/dL is 6.99 mmol/L.
    assert_eq!(
        summary["glucose"],
        json!(["15074-8", 6.99, "mmol/L"]),
        "[{name}] {summary}"
    );
    assert_eq!(
        summary["observations_found"],
        json!(2),
        "[{name}] {summary}"
    );
    assert_eq!(summary["observations_before_2026"], json!(0), "[{name}]");
    assert_eq!(
        summary["transaction"],
        json!(["201 Created", "201 Created", "201 Created"]),
        "[{name}]"
    );
    assert_eq!(
        summary["bad_transaction"],
        json!([422, "Bundle.entry[2].resource.code"]),
        "[{name}] {summary}"
    );
    let batch = summary["batch"].as_array().expect("batch");
    assert_eq!(batch[0], json!("201 Created"), "[{name}] {summary}");
    assert!(
        batch[1].as_str().is_some_and(|s| s.starts_with("422")),
        "[{name}] another clinic's patient: {summary}"
    );
    assert_eq!(summary["claimed"][1], json!("in-progress"), "[{name}]");
    assert_eq!(summary["care_plans"], json!(1), "[{name}]");
    assert!(
        summary["care_plan_activities"].as_u64().unwrap_or(0) >= 1,
        "[{name}] {summary}"
    );
    let scales = carepath_engine::scales::Scales::builtin().len() as u64;
    assert_eq!(summary["questionnaires"], json!(scales), "[{name}]");
    assert_eq!(summary["other_patient_search"], json!([200, 0]), "[{name}]");
    // Patients: a conditional create made one patient, a plain create of it is a conflict; read
    // back with the contact details masked.
    assert_eq!(
        summary["patient_conditional"],
        json!([201, 200, "fhir-pt-new", "fhir-pt-new"]),
        "[{name}] {summary}"
    );
    assert_eq!(summary["patient_duplicate"], json!(409), "[{name}]");
    assert_eq!(
        summary["patient_read"],
        json!({"telecom": ["**********8000", "l***@example.org", "o***"], "gender": "female", "birthDate": "1948-05-12", "lang": "zh"}),
        "[{name}] {summary}"
    );
    assert_eq!(
        summary["patients_by_identifier"],
        json!(["fhir-pt-new"]),
        "[{name}]"
    );
    assert_eq!(
        summary["patient_update"],
        json!([200, ["**********9111"]]),
        "[{name}] {summary}"
    );
    // The hospital's transaction: the patient updated, the admission, three diagnoses, five
    // emergency visits.
    let mut statuses = vec![json!("200 OK"), json!("201 Created")];
    statuses.extend(std::iter::repeat_n(json!("201 Created"), 8));
    assert_eq!(
        summary["hospital_transaction"],
        json!(statuses),
        "[{name}] {summary}"
    );
    assert_eq!(
        summary["encounters"],
        json!([6, "finished", 3]),
        "[{name}] {summary}"
    );
    assert_eq!(
        summary["conditions"],
        json!(["E11.2", "I50.9", "I63.9"]),
        "[{name}]"
    );
    assert_eq!(
        summary["encounter_conditional"],
        json!([200, true]),
        "[{name}]"
    );
    assert_eq!(
        summary["snomed_condition"],
        json!([422, "Condition.code"]),
        "[{name}] {summary}"
    );
    for ty in [
        "Patient",
        "Encounter",
        "Condition",
        "Observation",
        "Bundle",
        "Task",
        "CarePlan",
        "Questionnaire",
        "OperationOutcome",
        "CapabilityStatement",
    ] {
        assert!(
            summary["validated"][ty].as_u64().unwrap_or(0) > 0,
            "[{name}] no {ty} validated: {summary}"
        );
    }
    // The database: the panel's two values under one reading id, the glucose in mmol/L, the
    // transaction's two readings (and not the failed one's), the batch's good one, the answer.
    let p = &s.pool;
    let count = |sql: String| async move { scalar(p, &sql).await };
    assert_eq!(count(format!("SELECT COUNT(*) FROM observations WHERE patient_id = '{PATIENT}' AND reading_id = 'urn:device:cuff-7|r-1001'")).await, 2, "[{name}]");
    assert_eq!(count(format!("SELECT COUNT(*) FROM observations WHERE patient_id = '{PATIENT}' AND kind = 'glucose_fasting' AND value > 6.98 AND value < 7.0")).await, 1, "[{name}]");
    assert_eq!(count(format!("SELECT COUNT(*) FROM observations WHERE patient_id = '{PATIENT}' AND kind IN ('heart_rate', 'hba1c')")).await, 3, "[{name}]");
    assert_eq!(
        count(format!(
            "SELECT COUNT(*) FROM observations WHERE patient_id = '{OTHER}'"
        ))
        .await,
        0,
        "[{name}]"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM scale_answers WHERE scale = 'nrs'".into()).await,
        1,
        "[{name}]"
    );
    assert_eq!(count("SELECT COUNT(*) FROM scale_pushes WHERE dedupe_key = 'fhir-push' AND status = 'answered'".into()).await, 1, "[{name}]");
    // The crisis reading raised the pathway's alarm, as any reading does.
    assert!(count(format!("SELECT COUNT(*) FROM alarm_episodes WHERE alarm_id = 'bp_crisis' AND patient_id = '{PATIENT}'")).await >= 1, "[{name}] no crisis alarm");
    assert_eq!(count("SELECT COUNT(*) FROM tasks WHERE status = 'claimed' AND assignee = 'clinic_a.fhir_team'".into()).await, 1, "[{name}]");
    // The hospital facts, as the store holds them: the contact details encrypted, the admission
    // with its times and diagnoses, the events it raised on the stroke enrolment, and LACE
    // scored by the discharge pass: 5 days (4), acute (3), Charlson 4 (5), four visits in the
    // six months before (4).
    let e = s.stroke_enrolment;
    assert_eq!(count("SELECT COUNT(*) FROM patients WHERE id = 'fhir-pt-new' AND institution_id = 'clinic_a' AND sex = 'female' AND lang = 'zh' AND contact_enc IS NOT NULL AND contact_enc NOT LIKE '%8613%'".into()).await, 1, "[{name}]");
    assert_eq!(
        count("SELECT COUNT(*) FROM patients WHERE id = 'fhir-pt-new'".into()).await,
        1,
        "[{name}]"
    );
    assert_eq!(count(format!("SELECT COUNT(*) FROM patients WHERE id = '{STROKE}' AND preferred_channel = 'sms' AND birth_date = '1950-01-01'")).await, 1, "[{name}]");
    assert_eq!(count(format!("SELECT COUNT(*) FROM encounters WHERE patient_id = '{STROKE}' AND class = 'inpatient' AND identifier = 'ZY-2026-0001' AND acute = 1 AND department = 'neurology' AND discharged_at - admitted_at BETWEEN {} AND {}", 5 * 86_400 - 60, 5 * 86_400 + 600)).await, 1, "[{name}]");
    assert_eq!(
        count(format!(
            "SELECT COUNT(*) FROM encounters WHERE patient_id = '{STROKE}' AND class = 'emergency'"
        ))
        .await,
        5,
        "[{name}]"
    );
    assert_eq!(count(format!("SELECT COUNT(*) FROM diagnoses d JOIN encounters n ON n.id = d.encounter_id WHERE d.patient_id = '{STROKE}' AND n.identifier = 'ZY-2026-0001'")).await, 3, "[{name}]");
    assert_eq!(
        count(format!(
            "SELECT COUNT(*) FROM diagnoses WHERE patient_id = '{STROKE}' AND principal = 1"
        ))
        .await,
        1,
        "[{name}]"
    );
    assert_eq!(count(format!("SELECT COUNT(*) FROM diagnoses WHERE patient_id = '{STROKE}' AND principal = 1 AND code = 'I639'")).await, 1, "[{name}]");
    for event in ["admitted", "discharged"] {
        assert_eq!(
            count(format!(
                "SELECT COUNT(*) FROM events WHERE enrolment_id = {e} AND name = '{event}'"
            ))
            .await,
            1,
            "[{name}] {event}"
        );
    }
    assert_eq!(
        support::rows(
            p,
            &format!(
                "SELECT model, CAST(CAST(ROUND(score) AS INTEGER) AS TEXT), band FROM risk_predictions WHERE enrolment_id = {e}"
            ),
            3
        )
        .await,
        ["readmission|16|high"],
        "[{name}] LACE from the facts the transaction sent: {:?}",
        support::rows(
            p,
            &format!("SELECT contributions, CAST(at AS TEXT) FROM risk_predictions WHERE enrolment_id = {e}"),
            2
        )
        .await
    );
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM external_ids WHERE kind = 'Patient' AND value = 'MRN-778'".into()
        )
        .await,
        1,
        "[{name}]"
    );
    // Everything the client read and wrote is in the audit record, under its caller.
    assert!(count("SELECT COUNT(*) FROM audit_log WHERE actor = 'clinic_a.fhir_team' AND action LIKE 'fhir.%'".into()).await >= 4, "[{name}]");
    s.server.abort();
    s.pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fhir_client_round_trips_on_sqlite() {
    fhir_client_round_trips(support::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fhir_client_round_trips_on_postgres() {
    if let Some(b) = support::postgres() {
        fhir_client_round_trips(b).await;
    }
}

/// A valid Observation to break.
fn observation() -> Value {
    json!({"resourceType": "Observation", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
           "subject": {"reference": format!("Patient/{PATIENT}")},
           "effectiveDateTime": "2026-03-01T08:00:00+08:00",
           "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}})
}

fn questionnaire_response() -> Value {
    json!({"resourceType": "QuestionnaireResponse", "status": "completed",
           "questionnaire": "urn:carepath:questionnaire:nrs",
           "subject": {"reference": format!("Patient/{PATIENT}")},
           "item": [{"linkId": "pain", "answer": [{"valueInteger": 3}]}]})
}

fn patient(id: &str) -> Value {
    json!({"resourceType": "Patient",
           "identifier": [{"system": "urn:carepath:patient", "value": id}],
           "gender": "male", "birthDate": "1950-01-01",
           "telecom": [{"system": "phone", "value": "+8613800138000", "use": "mobile"}]})
}

fn encounter() -> Value {
    json!({"resourceType": "Encounter", "status": "finished",
           "identifier": [{"system": "urn:oid:1.2.156.112604.1.2", "value": "ZY-HOSTILE"}],
           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
           "subject": {"reference": format!("Patient/{PATIENT}")},
           "period": {"start": "2026-03-01T08:00:00+08:00", "end": "2026-03-06T08:00:00+08:00"}})
}

fn condition() -> Value {
    json!({"resourceType": "Condition",
           "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I10"}]},
           "subject": {"reference": format!("Patient/{PATIENT}")}})
}

/// Malformed patients, encounters and conditions: bad contact details, dates, codes and
/// references, each refused with nothing written.
fn hostile_hospital() -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    let fresh = "fhir-hostile-new";
    let telecoms = [
        json!("+8613800138000"),
        json!({"system": "phone", "value": "+8613800138000"}),
        json!([{"system": "phone", "value": "call me"}]),
        json!([{"system": "phone", "value": "1234"}]),
        json!([{"system": "phone", "value": "+86138001380001234567"}]),
        json!([{"system": "phone", "value": 8613800138000_i64}]),
        json!([{"system": "phone"}]),
        json!([{"value": "+8613800138000"}]),
        json!([{"system": "fax", "value": "+8613800138000"}]),
        json!([{"system": "pager", "value": "12345"}]),
        json!([{"system": "url", "value": "https://example.org"}]),
        json!([{"system": "other", "value": "oWx123"}]),
        json!([{"system": "other", "value": "o Wx 123", "extension": [{"url": "urn:carepath:wechat", "valueBoolean": true}]}]),
        json!([{"system": "email", "value": "a@@b.cn"}]),
        json!([{"system": "email", "value": "li hua@example.org"}]),
        json!([{"system": "email", "value": "nobody"}]),
        json!([{"system": "phone", "value": "+8613800138000", "use": "car"}]),
        json!([{"system": "phone", "value": "+8613800138000", "rank": 0}]),
        json!([{"system": "phone", "value": "+8613800138000", "rank": "1"}]),
        json!([{"system": "sms", "value": "\u{0}138"}]),
    ];
    for t in telecoms {
        let mut p = patient(fresh);
        p["telecom"] = t;
        out.push(("/fhir/Patient", p));
    }
    for d in [
        json!("2026-13-45"),
        json!("1950"),
        json!("1950-01"),
        json!("1800-01-01"),
        json!("9999-12-31"),
        json!("yesterday"),
        json!(19500101),
        json!("1950-01-01T00:00:00Z"),
    ] {
        let mut p = patient(fresh);
        p["birthDate"] = d;
        out.push(("/fhir/Patient", p));
    }
    for (key, v) in [
        ("gender", json!("yes")),
        ("gender", json!(1)),
        ("identifier", json!([])),
        (
            "identifier",
            json!([{"system": "urn:oid:1.2.3", "value": "MRN-1"}]),
        ),
        ("identifier", json!([{"value": fresh}])),
        (
            "identifier",
            json!([{"system": "urn:carepath:patient", "value": "李华"}]),
        ),
        (
            "identifier",
            json!([{"system": "urn:carepath:patient", "value": "../etc"}]),
        ),
        (
            "identifier",
            json!([{"system": "urn:carepath:patient", "value": "x".repeat(100)}]),
        ),
        (
            "identifier",
            json!([{"system": "urn:carepath:patient", "value": fresh}, {"system": "urn:carepath:patient", "value": "fhir-other-id"}]),
        ),
        (
            "communication",
            json!([{"language": {"coding": [{"code": "fr"}]}}]),
        ),
        ("communication", json!([{"language": "zh"}])),
        ("name", json!([{}])),
        ("name", json!([{"text": "x".repeat(200)}])),
        ("address", json!([{"city": "Hangzhou"}])),
        ("active", json!("yes")),
    ] {
        let mut p = patient(fresh);
        p[key] = v;
        out.push(("/fhir/Patient", p));
    }
    // A plain create of a known patient, and of another clinic's.
    out.push(("/fhir/Patient", patient(PATIENT)));
    out.push(("/fhir/Patient", patient(OTHER)));

    let set = |path: &[&str], v: Value| {
        let mut e = encounter();
        let mut at = &mut e;
        for k in &path[..path.len() - 1] {
            at = &mut at[*k];
        }
        at[path[path.len() - 1]] = v;
        e
    };
    for (path, v) in [
        (&["class"][..], json!("IMP")),
        (&["class"][..], json!({"code": "HH"})),
        (
            &["class"][..],
            json!({"system": "http://example.org/classes", "code": "IMP"}),
        ),
        (
            &["class"][..],
            json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode"}),
        ),
        (&["class"][..], json!(null)),
        (&["status"][..], json!("done")),
        (&["status"][..], json!(null)),
        (&["status"][..], json!("cancelled")),
        (&["identifier"][..], json!([])),
        (
            &["identifier"][..],
            json!([{"system": "urn:x", "value": "v".repeat(200)}]),
        ),
        (&["period", "end"][..], json!("2026-02-28T08:00:00+08:00")),
        (&["period", "start"][..], json!("2026-03-01")),
        (&["period", "start"][..], json!("2026-13-45T08:00:00+08:00")),
        (&["period", "start"][..], json!("2999-01-01T00:00:00Z")),
        (&["period", "end"][..], json!("2999-01-01T00:00:00Z")),
        (&["period", "end"][..], json!("soon")),
        (&["period"][..], json!("2026-03-01/2026-03-06")),
        (
            &["subject"][..],
            json!({"reference": format!("Patient/{OTHER}")}),
        ),
        (
            &["subject"][..],
            json!({"reference": "Patient/fhir-nobody"}),
        ),
        (&["subject"][..], json!({"reference": "Observation/1"})),
        (
            &["subject"][..],
            json!({"reference": "urn:uuid:00000000-0000-0000-0000-000000000009"}),
        ),
        (&["subject"][..], json!(null)),
        (
            &["priority"][..],
            json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActPriority", "code": "ZZ"}]}),
        ),
        (
            &["diagnosis"][..],
            json!([{"condition": {"reference": "#nothing"}}]),
        ),
        (
            &["diagnosis"][..],
            json!([{"condition": {"reference": "Condition/1"}}]),
        ),
        (
            &["diagnosis"][..],
            json!([{"condition": {"reference": "#c1"}, "rank": 0}]),
        ),
        (&["serviceType"][..], json!("neurology")),
    ] {
        out.push(("/fhir/Encounter", set(path, v)));
    }
    for code in [
        json!({"coding": [{"system": "http://snomed.info/sct", "code": "230690007"}]}),
        json!({"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "stroke"}]}),
        json!({"text": "stroke"}),
    ] {
        let mut e = encounter();
        e["contained"] = json!([{"resourceType": "Condition", "id": "c1", "code": code}]);
        e["diagnosis"] = json!([{"condition": {"reference": "#c1"}, "rank": 1}]);
        out.push(("/fhir/Encounter", e));
    }
    let mut e = encounter();
    e["class"]["code"] = json!("EMER");
    e.as_object_mut().expect("object").remove("period");
    out.push(("/fhir/Encounter", e));

    for (key, v) in [
        (
            "code",
            json!({"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]}),
        ),
        (
            "code",
            json!({"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "ABC"}]}),
        ),
        ("code", json!({"coding": [{"code": "hypertension"}]})),
        ("code", json!({"text": "I10"})),
        ("code", json!("I10")),
        ("code", json!(null)),
        ("subject", json!({"reference": format!("Patient/{OTHER}")})),
        ("subject", json!({"reference": "Encounter/1"})),
        ("subject", json!(null)),
        ("encounter", json!({"reference": "Encounter/999999"})),
        ("encounter", json!({"reference": "Encounter/abc"})),
        ("encounter", json!({"identifier": {"value": "ZY-NOWHERE"}})),
        (
            "verificationStatus",
            json!({"coding": [{"code": "refuted"}]}),
        ),
        (
            "verificationStatus",
            json!({"coding": [{"code": "entered-in-error"}]}),
        ),
        (
            "extension",
            json!([{"url": "urn:carepath:principal-diagnosis", "valueBoolean": "yes"}]),
        ),
        ("evidence", json!([{}])),
    ] {
        let mut c = condition();
        c[key] = v;
        out.push(("/fhir/Condition", c));
    }
    // A transaction whose Patient is good and whose Encounter or Condition is not: nothing of it.
    for (i, bad) in [
        set(&["period", "end"], json!("2026-02-28T08:00:00+08:00")),
        set(&["class", "code"], json!("VR")),
    ]
    .into_iter()
    .enumerate()
    {
        let mut bad = bad;
        bad["subject"] = json!({"reference": "urn:uuid:9b7a0c1e-0000-4000-8000-000000000001"});
        let mut cond = condition();
        cond["subject"] = bad["subject"].clone();
        if i == 1 {
            cond["code"] =
                json!({"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]});
            bad = encounter();
            bad["subject"] = cond["subject"].clone();
        }
        out.push((
            "/fhir",
            json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"fullUrl": "urn:uuid:9b7a0c1e-0000-4000-8000-000000000001", "resource": patient(fresh), "request": {"method": "POST", "url": "Patient"}},
                {"resource": bad, "request": {"method": "POST", "url": "Encounter"}},
                {"resource": cond, "request": {"method": "POST", "url": "Condition"}},
            ]}),
        ));
    }
    out
}

/// Values of every JSON type, and some that look almost right.
fn wrong_values(n: usize) -> Vec<Value> {
    vec![
        json!(null),
        json!(true),
        json!(0),
        json!(-1),
        json!(1e308),
        json!(""),
        json!(" "),
        json!("x".repeat(100_000)),
        json!("\u{0}\u{1}"),
        json!([]),
        json!([1, 2]),
        json!({}),
        json!({"reference": "Patient/"}),
        json!({"reference": format!("Patient/{OTHER}")}),
        json!({"reference": "urn:uuid:00000000-0000-0000-0000-000000000000"}),
        json!("2026-13-45"),
        json!("2026-03-01"),
        json!("yesterday"),
        json!("9999-12-31T00:00:00Z"),
        json!({"value": "72", "code": "/min"}),
        json!({"value": 72, "code": "furlongs"}),
        json!({"value": 9000, "code": "/min"}),
        json!([{"system": "http://loinc.org"}]),
        json!(format!("{n}")),
    ]
}

/// The malformed resources: each element of each resource replaced by each wrong value or
/// removed, unknown and huge elements, unknown resource types, and Bundles with one bad entry.
fn hostile() -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    for (path, base) in [
        ("/fhir/Observation", observation()),
        ("/fhir/QuestionnaireResponse", questionnaire_response()),
    ] {
        let keys: Vec<String> = base.as_object().expect("object").keys().cloned().collect();
        for (i, k) in keys.iter().enumerate() {
            for v in wrong_values(i) {
                let mut r = base.clone();
                r[k] = v;
                out.push((path, r));
            }
            let mut r = base.clone();
            r.as_object_mut().expect("object").remove(k);
            out.push((path, r));
        }
        for extra in [
            "modifierExtension",
            "name",
            "implicitRules",
            "x".repeat(5_000).as_str(),
        ] {
            let mut r = base.clone();
            r[extra] = json!([{"url": "urn:x", "valueString": "y"}]);
            out.push((path, r));
        }
    }
    // Inside the Observation's value and code.
    for v in wrong_values(0) {
        let mut r = observation();
        r["valueQuantity"]["value"] = v.clone();
        out.push(("/fhir/Observation", r));
        let mut r = observation();
        r["valueQuantity"]
            .as_object_mut()
            .expect("quantity")
            .remove("unit");
        r["valueQuantity"]["code"] = v.clone();
        out.push(("/fhir/Observation", r));
        let mut r = observation();
        r["code"]["coding"][0]["code"] = v.clone();
        out.push(("/fhir/Observation", r));
        let mut r = observation();
        r["subject"]["reference"] = v.clone();
        out.push(("/fhir/Observation", r));
        // 0 is a valid pain score.
        if v != json!(0) {
            let mut r = questionnaire_response();
            r["item"][0]["answer"][0]["valueInteger"] = v.clone();
            out.push(("/fhir/QuestionnaireResponse", r));
        }
        let mut r = questionnaire_response();
        r["item"][0]["linkId"] = v;
        out.push(("/fhir/QuestionnaireResponse", r));
    }
    for ty in [
        "Patientt",
        "Medication",
        "Bundle",
        "OperationOutcome",
        "../etc",
        "Observation/1",
        "",
    ] {
        let mut r = observation();
        r["resourceType"] = json!(ty);
        out.push(("/fhir/Observation", r));
    }
    for (i, v) in wrong_values(0).into_iter().enumerate() {
        // A transaction whose last entry is broken: nothing of it may be written.
        let mut bad = observation();
        let keys = [
            "status",
            "code",
            "subject",
            "effectiveDateTime",
            "valueQuantity",
        ];
        bad[keys[i % keys.len()]] = v.clone();
        let good = observation();
        out.push((
            "/fhir",
            json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": good, "request": {"method": "POST", "url": "Observation"}},
                {"resource": bad, "request": {"method": "POST", "url": "Observation"}},
            ]}),
        ));
        out.push((
            "/fhir",
            json!({"resourceType": "Bundle", "type": v, "entry": []}),
        ));
        out.push((
            "/fhir",
            json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": observation(), "request": {"method": v, "url": "Observation"}}]}),
        ));
    }
    out
}

/// A call as sent: method, path, content type, token, body.
type RawCall<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, &'a [u8]);

async fn hostile_input_is_refused(b: Backend) {
    let s = serve(&b).await;
    let name = b.name();
    let mut cases = hostile();
    assert!(cases.len() >= 500, "only {} hostile cases", cases.len());
    cases.extend(hostile_hospital());
    let facts = "SELECT (SELECT COUNT(*) FROM patients) * 1000000 + (SELECT COUNT(*) FROM encounters) * 10000 + (SELECT COUNT(*) FROM diagnoses) * 100 + (SELECT COUNT(*) FROM external_ids)";
    let facts_before = scalar(&s.pool, facts).await;
    let before = scalar(&s.pool, "SELECT COUNT(*) FROM observations").await;
    let answers_before = scalar(&s.pool, "SELECT COUNT(*) FROM scale_answers").await;
    for (i, (path, body)) in cases.iter().enumerate() {
        let bytes = serde_json::to_vec(body).expect("json");
        let (status, ct, text) = call(
            s.addr,
            "POST",
            path,
            Some(CM),
            "application/fhir+json",
            &bytes,
        )
        .await;
        assert!(
            (400..500).contains(&status),
            "[{name}] case {i} {path}: {status} {}\n{}",
            text.chars().take(300).collect::<String>(),
            body.to_string().chars().take(300).collect::<String>()
        );
        assert!(
            ct.starts_with("application/fhir+json"),
            "[{name}] case {i}: {ct}"
        );
        let outcome: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("[{name}] case {i}: {e}: {text}"));
        assert_eq!(
            outcome["resourceType"], "OperationOutcome",
            "[{name}] case {i}: {text}"
        );
        let issue = &outcome["issue"][0];
        assert_eq!(issue["severity"], "error", "[{name}] case {i}");
        assert!(
            issue["code"].is_string() && issue["diagnostics"].is_string(),
            "[{name}] case {i}: {text}"
        );
    }
    // Bodies that are not resources at all, and calls carepath does not serve.
    let raw: Vec<RawCall> = vec![
        (
            "POST",
            "/fhir/Observation",
            "application/fhir+json",
            Some(CM),
            b"{not json",
        ),
        (
            "POST",
            "/fhir/Observation",
            "application/fhir+json",
            Some(CM),
            b"[1,2]",
        ),
        ("POST", "/fhir/Observation", "text/plain", Some(CM), b"{}"),
        (
            "POST",
            "/fhir/Observation",
            "application/fhir+json",
            Some(CM),
            br#"{"resourceType":"Observation","status":"final","status":"final"}"#,
        ),
        (
            "POST",
            "/fhir/Observation",
            "application/fhir+json",
            None,
            b"{}",
        ),
        (
            "POST",
            "/fhir/Observation",
            "application/fhir+json",
            Some("cp_not_a_token"),
            b"{}",
        ),
        (
            "POST",
            "/fhir/Medication",
            "application/fhir+json",
            Some(CM),
            b"{}",
        ),
        (
            "DELETE",
            "/fhir/Observation/1",
            "application/fhir+json",
            Some(CM),
            b"",
        ),
        (
            "GET",
            "/fhir/Observation?foo=bar",
            "application/fhir+json",
            Some(CM),
            b"",
        ),
        (
            "GET",
            "/fhir/Observation?date=gextra",
            "application/fhir+json",
            Some(CM),
            b"",
        ),
        (
            "GET",
            "/fhir/Observation?_count=0",
            "application/fhir+json",
            Some(CM),
            b"",
        ),
        (
            "GET",
            "/fhir/Observation/999999",
            "application/fhir+json",
            Some(CM),
            b"",
        ),
        (
            "GET",
            "/fhir/Task/abc",
            "application/fhir+json",
            Some(CM),
            b"",
        ),
        (
            "PUT",
            "/fhir/Task/999999",
            "application/fhir+json",
            Some(CM),
            br#"{"resourceType":"Task","status":"completed","intent":"order"}"#,
        ),
    ];
    let big = vec![b' '; 2 * 1024 * 1024];
    for (method, path, ct, token, body) in
        raw.iter()
            .copied()
            .chain([("POST", "/fhir", "application/fhir+json", Some(CM), &big[..])])
    {
        let (status, rct, text) = call(s.addr, method, path, token, ct, body).await;
        assert!(
            (400..500).contains(&status),
            "[{name}] {method} {path}: {status} {text}"
        );
        assert!(
            rct.starts_with("application/fhir+json"),
            "[{name}] {method} {path}: {rct} {text}"
        );
        assert!(
            text.contains("OperationOutcome"),
            "[{name}] {method} {path}: {text}"
        );
    }
    // Nothing was written, and the server still serves.
    assert_eq!(
        scalar(&s.pool, facts).await,
        facts_before,
        "[{name}] patients, encounters, diagnoses, identifiers"
    );
    assert_eq!(
        scalar(&s.pool, "SELECT COUNT(*) FROM observations").await,
        before,
        "[{name}]"
    );
    assert_eq!(
        scalar(&s.pool, "SELECT COUNT(*) FROM scale_answers").await,
        answers_before,
        "[{name}]"
    );
    let (status, _, text) = call(
        s.addr,
        "POST",
        "/fhir/Observation",
        Some(CM),
        "application/fhir+json",
        observation().to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 201, "[{name}] {text}");
    s.server.abort();
    s.pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_fhir_input_is_refused_on_sqlite() {
    hostile_input_is_refused(support::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_fhir_input_is_refused_on_postgres() {
    if let Some(b) = support::postgres() {
        hostile_input_is_refused(b).await;
    }
}

/// Every FHIR route × every role: refused (403, OperationOutcome `forbidden`, audited) exactly
/// when the role lacks the route's module; without a token, 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_routes_follow_the_permission_table() {
    let b = support::sqlite();
    let s = serve(&b).await;
    for route in carepath_admin_api::fhir::ROUTES {
        let path = route.path.replace("{id}", "1");
        let method = match route.method {
            carepath_admin_api::Method::Get => "GET",
            carepath_admin_api::Method::Post => "POST",
            carepath_admin_api::Method::Put => "PUT",
            carepath_admin_api::Method::Delete => "DELETE",
        };
        let (status, _, text) =
            call(s.addr, method, &path, None, "application/fhir+json", b"{}").await;
        assert_eq!(status, 401, "{method} {path} without a token: {text}");
        assert!(text.contains("OperationOutcome"), "{text}");
        for (role, _) in ROLE_MODULES {
            let token = format!("cp_fhir_clinic_a_{role}");
            let (status, _, text) = call(
                s.addr,
                method,
                &path,
                Some(&token),
                "application/fhir+json",
                b"{}",
            )
            .await;
            let may = route.module.is_none_or(|m| allowed(&[role.to_string()], m));
            if may {
                assert_ne!(status, 403, "{role} {method} {path}: {text}");
            } else {
                assert_eq!(status, 403, "{role} {method} {path}: {text}");
                assert!(text.contains("\"forbidden\""), "{text}");
            }
            assert!(status < 500, "{role} {method} {path}: {status} {text}");
        }
    }
    let denied = scalar(
        &s.pool,
        "SELECT COUNT(*) FROM audit_log WHERE outcome = 'denied' AND action LIKE 'fhir.%'",
    )
    .await;
    assert!(denied > 0, "refusals are audited");
    s.server.abort();
    s.pool.close().await;
}
