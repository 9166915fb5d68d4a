//! Helpers for the end-to-end tests: temporary folders, the `carepath` binary, the database
//! backends (a fresh SQLite file, and a fresh PostgreSQL database when `DATABASE_URL` is set), the
//! test pathways, and row snapshots to compare two databases by.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};

use carepath_engine::Programs;
use carepath_engine::store::{self, NewPatient, Pool};
use jiff::Timestamp;

/// The binary under test, as built by cargo for this test run.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_carepath");

/// Prints past the test harness's output capture, so a skip is seen even when the test passes.
pub(crate) fn loud(msg: &str) {
    let _ = writeln!(std::io::stderr(), "\n********** {msg} **********\n");
}

pub(crate) fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("carepath-e2e-")
        .tempdir()
        .expect("cannot create a temporary folder")
}

/// A small runtime for synchronous tests that look into a database.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot build a tokio runtime")
}

/// Runs `f` to completion on its own runtime in its own thread, so it may be called from inside a
/// `#[tokio::test]` (and from `Drop`).
fn on_own_runtime<T: Send + 'static>(
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    std::thread::spawn(move || runtime().block_on(f))
        .join()
        .expect("helper thread panicked")
}

pub(crate) fn ts(s: &str) -> Timestamp {
    s.parse().expect("a valid instant")
}

// ---------------------------------------------------------------------------------------------
// Backends

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Sqlite,
    Postgres,
}

/// One fresh, empty database. PostgreSQL databases are dropped (best effort) when this is dropped.
pub(crate) struct Backend {
    pub kind: Kind,
    pub url: String,
    /// The SQLite file (SQLite only).
    pub path: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<PgDatabase>,
}

impl Backend {
    pub(crate) fn name(&self) -> &'static str {
        match self.kind {
            Kind::Sqlite => "sqlite",
            Kind::Postgres => "postgres",
        }
    }
}

struct PgDatabase {
    admin_url: String,
    name: String,
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        on_own_runtime(async move {
            if let Ok(pool) = Pool::connect(&admin).await {
                if let Err(e) = pool
                    .exec(
                        &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
                        vec![],
                    )
                    .await
                {
                    loud(&format!("could not drop the test database {name}: {e}"));
                }
                pool.close().await;
            }
        });
    }
}

/// A fresh SQLite database in its own temporary folder.
pub(crate) fn sqlite() -> Backend {
    let dir = tempdir();
    let path = dir.path().join("carepath.db");
    Backend {
        kind: Kind::Sqlite,
        url: format!("sqlite:{}", path.display()),
        path: Some(path),
        _dir: Some(dir),
        _pg: None,
    }
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let host_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[host_start..].find('/') {
        Some(i) => &base[..host_start + i],
        None => base,
    };
    format!("{root}/{name}{query}")
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh PostgreSQL database on the server `DATABASE_URL` points at, or `None` (with a loud
/// message) when it is not set.
pub(crate) fn postgres() -> Option<Backend> {
    let Ok(admin_url) = std::env::var("DATABASE_URL") else {
        loud(
            "SKIPPED: PostgreSQL conformance tests need DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/test); only SQLite was tested",
        );
        return None;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!(
        "carepath_t_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let (admin, db) = (admin_url.clone(), name.clone());
    on_own_runtime(async move {
        let pool = Pool::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("DATABASE_URL is set but PostgreSQL is not reachable: {e}"));
        pool.exec(&format!("CREATE DATABASE \"{db}\""), vec![])
            .await
            .unwrap_or_else(|e| panic!("cannot create the test database {db}: {e}"));
        pool.close().await;
    });
    let url = with_database(&admin_url, &name);
    Some(Backend {
        kind: Kind::Postgres,
        url,
        path: None,
        _dir: None,
        _pg: Some(PgDatabase { admin_url, name }),
    })
}

/// A fresh database of one kind: SQLite always, PostgreSQL when configured.
pub(crate) fn backend(kind: Kind) -> Option<Backend> {
    match kind {
        Kind::Sqlite => Some(sqlite()),
        Kind::Postgres => postgres(),
    }
}

/// Every backend to run a conformance test against: SQLite always, PostgreSQL when configured.
pub(crate) fn backends() -> Vec<Backend> {
    let mut all = vec![sqlite()];
    all.extend(postgres());
    all
}

// ---------------------------------------------------------------------------------------------
// Pathways

/// The wound-care pathway: an entry point, a follow-up, tasks, an event transition, a timeout
/// and a terminal state.
pub(crate) const WOUND_CARE: &str = r#"pathway: wound_care
version: 1
title: { zh: 术后伤口随访, en: Post-operative wound follow-up }
owner_role: case_manager
roles: [case_manager, ward_nurse]
events: [wound_problem_reported]
entry_points:
  - { id: discharge, state: at_home }
states:
  - id: at_home
    phase: follow_up
    on_enter:
      - follow_up: { channels: [wechat, sms], template: wound_check, after: 3d, at: "09:00" }
      - task: { id: day1_call, role: case_manager, title: { zh: 出院次日电话, en: Day-1 call }, due: 24h }
    transitions:
      - on: wound_problem_reported
        to: nurse_call
      - after: 7d
        to: closed
  - id: nurse_call
    phase: follow_up
    on_enter:
      - task: { id: wound_call, role: ward_nurse, title: { zh: 电话随访伤口, en: Call about the wound }, due: 4h, priority: high }
    transitions:
      - on: task_done:wound_call
        to: closed
      - after: 3d
        to: closed
  - id: closed
    phase: closed
    terminal: true
"#;

/// A richer pathway so every kind of row is produced: risk, scale push, kept task, note, alarms
/// (state and enrolment scope), referral, urgent follow-up, guards, variables, a loop.
pub(crate) const HEART_CHECK: &str = r#"pathway: heart_check
version: 1
title: { zh: 心衰随访（测试）, en: Heart failure follow-up (test) }
owner_role: case_manager
roles: [case_manager, doctor]
events:
  - { name: worsened, description: The patient's condition worsened }
variables:
  severe: { type: bool, default: false }
  entries: { type: integer, default: 0 }
entry_points:
  - { id: discharge, state: assess }
  - { id: clinic, state: monitor, set: { severe: true } }
states:
  - id: assess
    phase: discharge_preparation
    on_enter:
      - risk: { id: frailty, model: formula, formula: "(age() - 60) / 10.0 + open_tasks()", bands: { low: 0, high: 3 } }
      - scale: { scale: phq9, due: 2d, reminders: [1d], expires: 7d }
      - task: { id: care_plan, role: case_manager, title: { zh: 制定照护计划, en: Write the care plan }, due: 24h, keep: true }
      - note: { zh: 开始评估, en: Assessment started }
      - alarm:
          id: low_spo2
          when: "spo2 < 90"
          scope: enrolment
          task: { role: doctor, title: { zh: 血氧偏低, en: Low oxygen saturation }, due: 1h, priority: urgent }
    transitions:
      - on: worsened
        to: refer_up
      - on: scale_answered:phq9
        to: monitor
      - after: 2d
        to: monitor
  - id: monitor
    phase: follow_up
    on_enter:
      - set: { entries: "entries + 1" }
      - follow_up: { id: weekly_msg, channels: [wechat, sms], template: hf_weekly, after: 7d, at: "09:00" }
      - task: { id: weekly_call, role: case_manager, outcomes: [done, unwell], title: { zh: 每周电话随访, en: Weekly call }, due: 7d }
      - alarm:
          id: weight_gain
          when: "weight >= 90"
          count: 2
          within: 3d
          task: { role: doctor, title: { zh: 体重增加, en: Weight gain }, due: 2h, priority: urgent }
    transitions:
      - on: worsened
        to: refer_up
      - on: task_done:weekly_call
        when: 'outcome("weekly_call") == "unwell"'
        to: refer_up
      - on: task_done:weekly_call
        to: review
      - after: 14d
        to: review
  - id: review
    phase: follow_up
    on_enter:
      - task: { id: doctor_review, role: doctor, title: { zh: 医生复核, en: Doctor review }, due: 3d }
      - follow_up: { channels: [sms], template: hf_review, after: 1d }
    transitions:
      - on: worsened
        to: refer_up
      - when: "entries < 2 && severe"
        to: monitor
      - after: 10d
        to: closed
  - id: refer_up
    phase: referral
    on_enter:
      - referral: { direction: up, to: lead_hospital, reason: { zh: 病情加重, en: Worsening }, accept_within: 24h }
      - follow_up: { channels: [phone], template: hf_referral, urgent: true }
    transitions:
      - on: referral_accepted
        to: closed
      - on: referral_rejected
        to: monitor
      - after: 5d
        to: closed
  - id: closed
    phase: closed
    terminal: true
    on_enter:
      - note: { zh: 结案, en: Closed }
"#;

/// Writes `files` (name, text) into a new temporary folder.
pub(crate) fn pathway_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempdir();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("cannot write a test pathway");
    }
    dir
}

/// The test pathways (wound care and heart check) in a temporary folder.
pub(crate) fn test_pathways() -> tempfile::TempDir {
    pathway_dir(&[
        ("wound_care.yaml", WOUND_CARE),
        ("heart_check.yaml", HEART_CHECK),
    ])
}

/// The repository's real pathways, when `carepath validate pathways/` passes; otherwise `None`,
/// with a loud message.
pub(crate) fn real_pathways() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pathways");
    let out = Command::new(BIN)
        .arg("validate")
        .arg(&dir)
        .output()
        .expect("cannot run carepath validate");
    if out.status.success() {
        Some(dir)
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        loud(&format!(
            "SKIPPED with the real pathways: `carepath validate pathways/` fails ({}); only the test pathways were used",
            stderr.lines().last().unwrap_or("").trim()
        ));
        None
    }
}

// ---------------------------------------------------------------------------------------------
// The binary

/// A `carepath` command that ignores the caller's `CAREPATH_DB` and logs warnings only.
pub(crate) fn carepath() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("CAREPATH_DB")
        .env_remove("CAREPATH_AUDIT_KEY")
        .env_remove("CAREPATH_AUDIT_KEY_FILE")
        .env_remove("CAREPATH_AUDIT_CHECKPOINTS")
        .env_remove("CAREPATH_TRUSTED_PROXIES")
        // Audit keys and checkpoints of PostgreSQL databases (SQLite ones sit beside the file).
        .env("CAREPATH_DATA_DIR", audit_data_dir())
        .env("CAREPATH_LOG", "warn");
    cmd
}

/// Where the binary keeps the audit key and checkpoints of test PostgreSQL databases: one folder
/// per test process, kept out of the working tree.
pub(crate) fn audit_data_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("carepath-e2e-audit-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("cannot create the audit data folder");
        d
    })
    .clone()
}

/// Runs `carepath ARGS`, asserts success, returns stdout.
pub(crate) fn carepath_ok(args: &[&str]) -> String {
    let out: Output = carepath().args(args).output().expect("cannot run carepath");
    assert!(
        out.status.success(),
        "`carepath {}` failed with {}:\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `carepath audit verify` on `url` succeeds: every audit row the commands wrote is chained under
/// the database's audit key, and the checkpoints match.
pub(crate) fn assert_audit_intact(url: &str, label: &str) {
    let out = carepath()
        .args(["audit", "verify", "--db", url])
        .output()
        .expect("cannot run carepath");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("intact"),
        "{label}: `carepath audit verify` {}:\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `carepath seed`; returns its JSON summary.
pub(crate) fn cli_seed(
    url: &str,
    pathways: &Path,
    patients: u64,
    seed: u64,
    as_of: &str,
) -> serde_json::Value {
    let (n, s, dir) = (
        patients.to_string(),
        seed.to_string(),
        pathways.display().to_string(),
    );
    let out = carepath_ok(&[
        "seed",
        "--patients",
        &n,
        "--seed",
        &s,
        "--pathways",
        &dir,
        "--as-of",
        as_of,
        "--db",
        url,
    ]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("seed printed no JSON ({e}): {out}"))
}

/// `carepath run --as-of T --json --batch-size N`; returns its JSON summary.
pub(crate) fn cli_run(url: &str, as_of: &str, batch_size: i64) -> serde_json::Value {
    let b = batch_size.to_string();
    let out = carepath_ok(&[
        "run",
        "--as-of",
        as_of,
        "--json",
        "--batch-size",
        &b,
        "--db",
        url,
    ]);
    parse_summary(&out)
}

pub(crate) fn parse_summary(out: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(out).unwrap_or_else(|e| panic!("run printed no JSON ({e}): {out}"));
    assert_eq!(v["errors"], 0, "the pass reported errors: {v}");
    v
}

pub(crate) fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` missing from {v}"))
}

/// Copies a SQLite database that no process has open: the file and its `-wal` and `-shm`.
pub(crate) fn copy_sqlite(from: &Path, to: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let src = PathBuf::from(format!("{}{suffix}", from.display()));
        if src.exists() {
            std::fs::copy(&src, format!("{}{suffix}", to.display()))
                .expect("cannot copy the database");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Store set-up for in-process tests

/// Connects, migrates, publishes the pathways in `dir`, loads every published program and creates
/// the demo alliance.
pub(crate) async fn open_store(url: &str, dir: &Path, now: Timestamp) -> (Pool, Programs) {
    let pool = Pool::connect(url).await.expect("connect");
    store::migrate(&pool).await.expect("migrate");
    let programs = Programs::load_dir(dir).expect("the test pathways load");
    store::publish(&pool, &programs, now)
        .await
        .expect("publish");
    let programs = store::load_programs(&pool).await.expect("load programs");
    carepath_engine::seed::alliance(&pool)
        .await
        .expect("alliance");
    (pool, programs)
}

pub(crate) async fn add_patient(pool: &Pool, id: &str, now: Timestamp) {
    add_patient_at(pool, id, "lead", now).await
}

/// A patient of `institution`.
pub(crate) async fn add_patient_at(pool: &Pool, id: &str, institution: &str, now: Timestamp) {
    let mut tx = pool.begin().await.expect("begin");
    let p = NewPatient {
        id: id.to_string(),
        institution_id: institution.into(),
        birth_date: Some("1950-05-01".into()),
        sex: "female".into(),
        tz: "Asia/Shanghai".into(),
        contact_enc: None,
        preferred_channel: Some("wechat".into()),
        home_institution: None,
        lang: None,
    };
    store::insert_patient(&mut tx, &p, now)
        .await
        .expect("insert patient");
    tx.commit().await.expect("commit");
}

pub(crate) async fn scalar(pool: &Pool, sql: &str) -> i64 {
    pool.fetch(sql, vec![])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .first()
        .map(|r| r.i64(0))
        .unwrap_or(0)
}

pub(crate) async fn count(pool: &Pool, table: &str) -> i64 {
    scalar(pool, &format!("SELECT COUNT(*) FROM {table}")).await
}

/// The text columns of every row `sql` returns, each row joined with `|` (NULL as `∅`), sorted.
pub(crate) async fn rows(pool: &Pool, sql: &str, columns: usize) -> Vec<String> {
    let mut out: Vec<String> = pool
        .fetch(sql, vec![])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| {
            (0..columns)
                .map(|i| r.opt_text(i).unwrap_or_else(|| "∅".into()))
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect();
    out.sort();
    out
}

/// What a snapshot holds of each table (every column as text, in a stable order; the first is the
/// dedupe key). Surrogate ids are left out, except the enrolment id, which dedupe keys embed.
pub(crate) const SNAPSHOT: &[(&str, &[&str])] = &[
    (
        "enrolments",
        &[
            "id",
            "state",
            "state_seq",
            "status",
            "next_wake_at",
            "row_version",
            "last_event_seq",
            "vars",
            "ended_at",
            "version",
        ],
    ),
    (
        "tasks",
        &[
            "dedupe_key",
            "enrolment_id",
            "state_seq",
            "task_ref",
            "role",
            "status",
            "due_at",
            "created_at",
            "keep",
            "cancel_reason",
        ],
    ),
    (
        "follow_ups",
        &[
            "dedupe_key",
            "enrolment_id",
            "state_seq",
            "template",
            "channels",
            "send_at",
            "urgent",
            "status",
        ],
    ),
    (
        "outbox",
        &[
            "dedupe_key",
            "(SELECT f.dedupe_key FROM follow_ups f WHERE f.id = outbox.follow_up_id)",
            "patient_id",
            "channel",
            "template",
            "status",
            "next_attempt_at",
            "attempts",
        ],
    ),
    (
        "record",
        &["dedupe_key", "enrolment_id", "kind", "at", "detail"],
    ),
    (
        "scale_pushes",
        &[
            "dedupe_key",
            "enrolment_id",
            "scale",
            "due_at",
            "status",
            "reminders_sent",
            "next_reminder_at",
        ],
    ),
    (
        "risk_predictions",
        &["dedupe_key", "enrolment_id", "model", "score", "band", "at"],
    ),
    (
        "referrals",
        &[
            "dedupe_key",
            "enrolment_id",
            "direction",
            "to_kind",
            "status",
            "accept_by",
        ],
    ),
    (
        "alarm_rules",
        &[
            "dedupe_key",
            "enrolment_id",
            "alarm_id",
            "scope",
            "active",
            "due_at",
        ],
    ),
    (
        "alarm_episodes",
        &["dedupe_key", "enrolment_id", "alarm_id", "status"],
    ),
    ("goals", &["dedupe_key", "enrolment_id", "goal_id", "met"]),
    ("goal_status", &["dedupe_key", "goal_id", "met", "readings"]),
];

pub(crate) type Snapshot = BTreeMap<&'static str, Vec<String>>;

pub(crate) async fn snapshot(pool: &Pool) -> Snapshot {
    let mut out = Snapshot::new();
    for (table, cols) in SNAPSHOT {
        let select: Vec<String> = cols.iter().map(|c| format!("CAST({c} AS TEXT)")).collect();
        out.insert(
            table,
            rows(
                pool,
                &format!("SELECT {} FROM {table}", select.join(", ")),
                cols.len(),
            )
            .await,
        );
    }
    out
}

/// Opens `url`, takes a snapshot, closes (for synchronous tests).
pub(crate) fn snapshot_of(url: &str) -> Snapshot {
    let url = url.to_string();
    on_own_runtime(async move {
        let pool = Pool::connect(&url).await.expect("connect");
        let s = snapshot(&pool).await;
        pool.close().await;
        s
    })
}

/// One number from `url` (for synchronous tests).
pub(crate) fn scalar_of(url: &str, sql: &str) -> i64 {
    let (url, sql) = (url.to_string(), sql.to_string());
    on_own_runtime(async move {
        let pool = Pool::connect(&url).await.expect("connect");
        let n = scalar(&pool, &sql).await;
        pool.close().await;
        n
    })
}

/// Row counts per snapshot table.
pub(crate) fn counts(s: &Snapshot) -> BTreeMap<&'static str, usize> {
    s.iter().map(|(t, rows)| (*t, rows.len())).collect()
}

/// Asserts that no dedupe key occurs twice in any table of `s` (a table's first column).
pub(crate) fn assert_no_duplicate_keys(label: &str, s: &Snapshot) {
    for (table, rows) in s {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for r in rows {
            let key = r.split('|').next().unwrap_or("");
            if key != "∅" {
                *seen.entry(key).or_default() += 1;
            }
        }
        let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(10).collect();
        assert!(
            dups.is_empty(),
            "{label}: duplicate keys in {table}: {dups:?}"
        );
    }
}

/// Asserts two snapshots hold exactly the same rows, table by table, naming the first differences.
pub(crate) fn assert_same(a_label: &str, a: &Snapshot, b_label: &str, b: &Snapshot) {
    assert_no_duplicate_keys(a_label, a);
    assert_no_duplicate_keys(b_label, b);
    let mut problems = Vec::new();
    for (table, a_rows) in a {
        let b_rows = &b[table];
        if a_rows == b_rows {
            continue;
        }
        let only = |x: &Vec<String>, y: &Vec<String>| -> Vec<String> {
            let mut y = y.clone();
            let mut out = Vec::new();
            for r in x {
                match y.binary_search(r) {
                    Ok(i) => {
                        y.remove(i);
                    }
                    Err(_) => out.push(r.clone()),
                }
            }
            out
        };
        let (oa, ob) = (only(a_rows, b_rows), only(b_rows, a_rows));
        problems.push(format!(
            "{table}: {} rows in {a_label}, {} in {b_label}; {} only in {a_label}, e.g. {:?}; {} only in {b_label}, e.g. {:?}",
            a_rows.len(),
            b_rows.len(),
            oa.len(),
            &oa[..oa.len().min(5)],
            ob.len(),
            &ob[..ob.len().min(5)]
        ));
    }
    assert!(
        problems.is_empty(),
        "{a_label} and {b_label} differ:\n  {}",
        problems.join("\n  ")
    );
}

/// A seedable source of random numbers for kill points: `CAREPATH_TEST_SEED` or the clock.
pub(crate) fn random_seed() -> u64 {
    std::env::var("CAREPATH_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        })
}

// ---------------------------------------------------------------------------------------------
// The workstation, served in-process

/// Every workstation staff member's password.
pub(crate) const STAFF_PASSWORD: &str = "correct horse battery";
/// `lead.admin`'s TOTP secret: base32 of RFC 6238's key `12345678901234567890`.
pub(crate) const ADMIN_TOTP_SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
/// 2026-11-23T08:00:00+08:00, a Monday: the workstation's clock starts there.
const WORKSTATION_START: i64 = 1_795_392_000;

/// The workstation's staff: (id, institution, role).
const WORKSTATION_STAFF: &[(&str, &str, &str)] = &[
    ("lead.cm", "lead", "case_manager"),
    ("lead.admin", "lead", "admin"),
    ("lead.auditor", "lead", "auditor"),
    ("lead.informaticist", "lead", "informaticist"),
    ("clinic_a.cm", "clinic_a", "case_manager"),
    ("clinic_b.nurse", "clinic_b", "nurse"),
];

/// An urgent call with structured outcomes for the case manager, whose outcome decides the next
/// state.
pub(crate) const FALL_CHECK: &str = r#"pathway: fall_check
version: 1
title: { zh: 跌倒后随访（测试）, en: Follow-up after a fall (test) }
owner_role: case_manager
roles: [case_manager, nurse]
entry_points:
  - { id: reported, state: triage }
states:
  - id: triage
    phase: follow_up
    title: { zh: 跌倒分诊, en: Fall triage }
    on_enter:
      - task: { id: fall_call, role: case_manager, outcomes: [safe_at_home, needs_visit], priority: urgent, title: { zh: 跌倒后2小时内电话评估, en: Call within 2 h of the fall }, due: 2h }
    transitions:
      - on: task_done:fall_call
        when: 'outcome("fall_call") == "needs_visit"'
        to: home_visit
      - on: task_done:fall_call
        to: closed
  - id: home_visit
    phase: follow_up
    title: { zh: 上门评估, en: Home visit }
    on_enter:
      - task: { id: visit, role: nurse, title: { zh: 上门评估跌倒风险, en: Visit to assess the risk of falls }, due: 2d }
    transitions:
      - on: task_done:visit
        to: closed
  - id: closed
    phase: closed
    terminal: true
"#;

/// The admin API and workstation over a fresh database of one backend, with the test pathways
/// (wound care, heart check, fall check) published, the demo alliance, staff who sign in with
/// [`STAFF_PASSWORD`] (`lead.admin` and `lead.auditor` also with a code of [`ADMIN_TOTP_SECRET`]) and whose bearer
/// token is `tok-<id>`, and a clock that moves only when told.
pub(crate) struct Workstation {
    pub pool: Pool,
    pub programs: Programs,
    pub app: axum::Router,
    clock: std::sync::Arc<std::sync::atomic::AtomicI64>,
    _pathways: tempfile::TempDir,
    backend: Backend,
}

impl Workstation {
    pub(crate) async fn new(backend: Backend) -> Workstation {
        use carepath_engine::store::queries::token_hash;
        use carepath_engine::store::sign_in::{Credential, set_credential};
        let now = Timestamp::from_second(WORKSTATION_START).expect("instant");
        let dir = pathway_dir(&[
            ("wound_care.yaml", WOUND_CARE),
            ("heart_check.yaml", HEART_CHECK),
            ("fall_check.yaml", FALL_CHECK),
        ]);
        let (pool, programs) = open_store(&backend.url, dir.path(), now).await;
        let mut tx = pool.begin().await.expect("begin");
        for (id, inst, role) in WORKSTATION_STAFF {
            store::insert_staff(
                &mut tx,
                id,
                inst,
                &format!("{role} of {inst}"),
                &[role],
                Some(token_hash(&format!("tok-{id}"))),
            )
            .await
            .expect("staff");
        }
        tx.commit().await.expect("commit");
        let hash = carepath_admin_api::web::hash_password(STAFF_PASSWORD).expect("hash");
        for (id, ..) in WORKSTATION_STAFF {
            assert!(
                set_credential(&pool, id, Credential::Password(&hash), now)
                    .await
                    .expect("password")
            );
        }
        for id in ["lead.admin", "lead.auditor"] {
            set_credential(&pool, id, Credential::Totp(ADMIN_TOTP_SECRET), now)
                .await
                .expect("totp");
        }
        let clock = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(WORKSTATION_START));
        let c = clock.clone();
        let mut state = carepath_admin_api::AppState::new(pool.clone(), programs.clone());
        state.clock = std::sync::Arc::new(move || {
            Timestamp::from_second(c.load(Ordering::SeqCst)).expect("instant")
        });
        state.uploads.root = dir.path().to_path_buf();
        Workstation {
            app: carepath_admin_api::router(state),
            pool,
            programs,
            clock,
            _pathways: dir,
            backend,
        }
    }

    pub(crate) fn backend(&self) -> &'static str {
        self.backend.name()
    }

    pub(crate) fn now(&self) -> Timestamp {
        Timestamp::from_second(self.clock.load(Ordering::SeqCst)).expect("instant")
    }

    pub(crate) fn advance(&self, seconds: i64) {
        self.clock.fetch_add(seconds, Ordering::SeqCst);
    }

    /// How many audit entries have this action and outcome.
    pub(crate) async fn audited(&self, action: &str, outcome: &str) -> i64 {
        scalar(
            &self.pool,
            &format!(
                "SELECT COUNT(*) FROM audit_log WHERE action = '{action}' AND outcome = '{outcome}'"
            ),
        )
        .await
    }

    /// Enrols a new patient of `inst` in heart_check at `clinic` (state `monitor`: a weekly call
    /// for the case manager), `days_ago` days back.
    pub(crate) async fn enrolled(&self, patient: &str, inst: &str, days_ago: i64) -> i64 {
        add_patient_at(&self.pool, patient, inst, self.now()).await;
        self.enrol(patient, inst, "heart_check", "clinic", days_ago)
            .await
    }

    /// Enrols an existing patient of `inst` in `pathway` at `entry`, `days_ago` days back, as
    /// the institution's case manager; returns the enrolment's id.
    pub(crate) async fn enrol(
        &self,
        patient: &str,
        inst: &str,
        pathway: &str,
        entry: &str,
        days_ago: i64,
    ) -> i64 {
        let now = self.now();
        let caller = store::queries::Caller {
            staff_id: format!("{inst}.cm"),
            institution_id: inst.into(),
            roles: vec!["case_manager".into()],
        };
        let new = store::NewEnrolment {
            patient_id: patient.into(),
            pathway_id: pathway.into(),
            version: None,
            entry: entry.into(),
            at: now - jiff::SignedDuration::from_hours(24 * days_ago),
            catch_up_to: Some(now),
        };
        store::patients::enrol(&self.pool, &self.programs, &caller, &new, "test", now)
            .await
            .expect("enrol")
            .0
    }

    /// `GET uri` of the JSON API as `staff` (bearer `tok-<staff>`), asserting 200.
    pub(crate) async fn api(&self, staff: &str, uri: &str) -> serde_json::Value {
        let req = axum::http::Request::get(uri)
            .header(
                axum::http::header::AUTHORIZATION,
                format!("Bearer tok-{staff}"),
            )
            .body(axum::body::Body::empty())
            .expect("request");
        let (status, body) = self.call(req).await;
        assert_eq!(status, axum::http::StatusCode::OK, "{uri}: {body}");
        serde_json::from_str(&body).expect("json")
    }

    /// One request to the router, in-process: the status and the body as text.
    pub(crate) async fn call(
        &self,
        req: axum::http::Request<axum::body::Body>,
    ) -> (axum::http::StatusCode, String) {
        use http_body_util::BodyExt as _;
        use tower::ServiceExt as _;
        let res = self.app.clone().oneshot(req).await.expect("answer");
        let status = res.status();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Serves the router on a free port of 127.0.0.1 until the answer is dropped.
    pub(crate) async fn serve(&self) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        Served::spawn(listener, self.app.clone())
    }
}

/// A router served on a port; it stops when this is dropped.
pub(crate) struct Served {
    pub addr: std::net::SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Served {
    /// Serves `app` on `listener` as `carepath serve` does, on the current runtime.
    pub(crate) fn spawn(listener: tokio::net::TcpListener, app: axum::Router) -> Served {
        let addr = listener.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            carepath_admin_api::serve(listener, app, async {
                let _ = stopped.await;
            })
            .await
            .expect("the router serves");
        });
        Served { addr, _stop: stop }
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Runs `f` on a fresh workstation of every backend (SQLite always, PostgreSQL when configured).
pub(crate) async fn on_each_workstation<F, Fut>(f: F)
where
    F: Fn(Workstation) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for backend in backends() {
        eprintln!("workstation test on {}", backend.name());
        f(Workstation::new(backend).await).await;
    }
}
