//! The monthly report, end to end: a seeded alliance lives through October 2026 (scheduler passes,
//! task completions and claims, sent follow-ups, answered scales, referral decisions, goals,
//! hospital stays, alarms, withdrawals, and some activity after the month), `carepath report`
//! writes the JSON and HTML, and every number in the JSON is compared with a count the test makes
//! itself with plain SQL over the raw rows (or, for stays, transitions and days, in Rust over raw
//! rows) — never through the indicator queries. Runs on SQLite, and on PostgreSQL when
//! `DATABASE_URL` is set.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use carepath_engine::observations::Reading;
use carepath_engine::scheduler::{self, PassOptions};
use carepath_engine::store::queries::{self, Caller, TaskAction};
use carepath_engine::store::{self, Pool};
use carepath_engine::{Programs, seed};
use jiff::Timestamp;
use serde_json::Value;

use crate::support::{self, Backend, HEART_CHECK, WOUND_CARE, carepath_ok, pathway_dir, ts};

/// October 2026 in Asia/Shanghai (UTC+8): `[FROM, TO)`.
const FROM: &str = "2026-09-30T16:00:00Z";
const TO: &str = "2026-10-31T16:00:00Z";
const AS_OF: &str = "2026-11-05T00:00:00Z";
const DAY: i64 = 86_400;

/// The test's heart pathway with a goal and an indicator of every counter kind. Its closing state
/// hands the kept care-plan task on (`keep_open_tasks`), so the fixture's staff find the open
/// tasks its month of activity was written for.
fn heart_check_with_indicators() -> String {
    let heart_check = HEART_CHECK.replacen(
        "    terminal: true\n",
        "    terminal: true\n    keep_open_tasks: true\n",
        1,
    );
    assert_ne!(
        heart_check, HEART_CHECK,
        "the heart pathway has a terminal state"
    );
    format!(
        r#"{heart_check}goals:
  - id: weight_logged
    title: {{ zh: 记录体重, en: Weight logged }}
    observation: weight
    days_logged: 5
    over: 7d
indicators:
  - {{ id: care_plan_on_time, title: {{ zh: 照护计划按时, en: Care plan on time }}, numerator: "task_on_time:care_plan", denominator: "task_done:care_plan", period: month, target: 0.5 }}
  - {{ id: weekly_call_rate, title: {{ zh: 每周电话, en: Weekly calls }}, numerator: "task_done:weekly_call", denominator: "entered:monitor", period: month, target: 0.4 }}
  - {{ id: referral_share, title: {{ zh: 上转比例, en: Referred up }}, numerator: "entered:refer_up", denominator: enrolled, period: quarter, target: 0.1 }}
  - {{ id: phq9_answered, title: {{ zh: 量表完成, en: PHQ-9 answered }}, numerator: "scale_answered:phq9", denominator: "entered:assess", period: month, target: 0.5 }}
  - {{ id: weight_goal, title: {{ zh: 体重目标, en: Weight goal met }}, numerator: "goal_met:weight_logged", denominator: enrolled, period: month, target: 0.2 }}
  - {{ id: reached, title: {{ zh: 随访送达, en: Reached by a follow-up }}, numerator: follow_up_sent, denominator: enrolled, period: week }}
  - {{ id: worsened, title: {{ zh: "病情加重 <比例> & 趋势", en: "Worsened <share> & trend" }}, numerator: "event:worsened", denominator: enrolled, period: year, target: 0.05 }}
  - {{ id: completion, title: {{ zh: 结案, en: Completed }}, numerator: completed, denominator: started, period: month }}
"#
    )
}

/// The first state of an entry point (entering it is not a transition, so it is not recorded as
/// one).
fn entry_state(pathway: &str, entry: &str) -> Option<&'static str> {
    match (pathway, entry) {
        ("heart_check", "discharge") => Some("assess"),
        ("heart_check", "clinic") => Some("monitor"),
        ("wound_care", "discharge") => Some("at_home"),
        _ => None,
    }
}

fn t(s: &str) -> i64 {
    ts(s).as_second()
}

fn at(s: i64) -> Timestamp {
    Timestamp::from_second(s).expect("a valid instant")
}

fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

async fn n(pool: &Pool, sql: &str) -> i64 {
    support::scalar(pool, sql).await
}

async fn texts(pool: &Pool, sql: &str, cols: usize) -> Vec<Vec<Option<String>>> {
    pool.fetch(sql, vec![])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| (0..cols).map(|i| r.opt_text(i)).collect())
        .collect()
}

async fn ints(pool: &Pool, sql: &str, cols: usize) -> Vec<Vec<Option<i64>>> {
    pool.fetch(sql, vec![])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| (0..cols).map(|i| r.opt_i64(i)).collect())
        .collect()
}

async fn pass(pool: &Pool, programs: &Programs, now: Timestamp) {
    let s = scheduler::run_pass(pool, programs, now, &PassOptions::default())
        .await
        .expect("pass");
    assert_eq!(s.errors, 0, "{s:?}");
}

async fn add_event(pool: &Pool, enrolment: i64, name: &str, when: i64, now: Timestamp) {
    let mut tx = pool.begin().await.expect("begin");
    store::add_event(
        &mut tx,
        enrolment,
        name,
        at(when),
        None,
        Some(format!("report-test:{enrolment}:{name}:{when}")),
        now,
    )
    .await
    .expect("add_event");
    tx.commit().await.expect("commit");
}

fn caller(staff: &str, institution: &str, role: &str) -> Caller {
    Caller {
        staff_id: staff.to_string(),
        institution_id: institution.to_string(),
        roles: vec![role.to_string()],
    }
}

/// One day of work at `now`: what staff, patients and devices did.
async fn activity(
    pool: &Pool,
    programs: &Programs,
    k: i64,
    now: Timestamp,
    staff: &BTreeSet<String>,
) {
    let s = now.as_second();
    // New patients every few days, at each institution.
    for (j, inst) in ["lead", "clinic_a", "clinic_b", "lead"].iter().enumerate() {
        let id = format!("pt-oct-{k}-{j}");
        let mut tx = pool.begin().await.expect("begin");
        store::insert_patient(
            &mut tx,
            &store::NewPatient {
                id: id.clone(),
                institution_id: inst.to_string(),
                birth_date: Some("1951-02-03".into()),
                sex: "male".into(),
                tz: "Asia/Shanghai".into(),
                contact_enc: None,
                preferred_channel: Some("sms".into()),
                home_institution: None,
                lang: None,
            },
            now,
        )
        .await
        .expect("patient");
        tx.commit().await.expect("commit");
        let (pathway, entry) = match j {
            3 => ("wound_care", "discharge"),
            2 => ("heart_check", "clinic"),
            _ => ("heart_check", "discharge"),
        };
        store::enrol(pool, programs, &id, pathway, None, entry, now)
            .await
            .expect("enrol");
    }
    // Tasks: complete every third open one (some late, some on time), claim others.
    let open = texts(
        pool,
        &format!(
            "SELECT CAST(id AS TEXT), institution_id, role FROM tasks WHERE status = 'open' AND created_at <= {s} ORDER BY id"
        ),
        3,
    )
    .await;
    for (i, row) in open.iter().enumerate() {
        let (id, inst, role) = (
            row[0]
                .clone()
                .unwrap_or_default()
                .parse::<i64>()
                .expect("id"),
            row[1].clone().unwrap_or_default(),
            row[2].clone().unwrap_or_default(),
        );
        let who = if inst == "lead" && role == "case_manager" && i % 2 == 0 {
            "lead.cm2".to_string()
        } else if staff.contains(&format!("{inst}.{role}")) {
            format!("{inst}.{role}")
        } else {
            format!("{inst}.case_manager")
        };
        if (i as i64 + k) % 3 == 0 {
            let outcome = if i % 4 == 1 { "unwell" } else { "done" };
            store::complete_task(pool, id, outcome, &who, now)
                .await
                .expect("complete");
        } else if i % 7 == 1 {
            queries::act_on_task(
                pool,
                programs,
                &caller(&who, &inst, &role),
                id,
                TaskAction::Claim {
                    lease_seconds: 3_600,
                },
                "test",
                now,
            )
            .await
            .expect("claim");
        }
    }
    // Follow-ups: most go out, some fail.
    pool.exec(
        &format!("UPDATE follow_ups SET status = 'sent' WHERE status = 'scheduled' AND send_at <= {s} AND id % 4 <> 0"),
        vec![],
    )
    .await
    .expect("send");
    pool.exec(
        &format!(
            "UPDATE follow_ups SET status = 'failed' WHERE status = 'scheduled' AND send_at <= {s}"
        ),
        vec![],
    )
    .await
    .expect("fail");
    // Scales: every other push is answered.
    let pushes = texts(
        pool,
        &format!("SELECT CAST(id AS TEXT), patient_id, scale, CAST(enrolment_id AS TEXT) FROM scale_pushes WHERE status = 'pending' AND created_at <= {s} ORDER BY id"),
        4,
    )
    .await;
    for (i, p) in pushes.iter().enumerate() {
        if i % 2 == 1 {
            continue;
        }
        let (id, patient, scale) = (
            p[0].clone().unwrap_or_default(),
            p[1].clone().unwrap_or_default(),
            p[2].clone().unwrap_or_default(),
        );
        pool.exec(
            &format!("INSERT INTO scale_answers (push_id, patient_id, scale, answers, score, band, at) VALUES ({id}, {}, {}, '[1,0,1,0,1,0,1,0,0]', 4, 'minimal', {s})", q(&patient), q(&scale)),
            vec![],
        )
        .await
        .expect("answer");
        pool.exec(
            &format!("UPDATE scale_pushes SET status = 'answered' WHERE id = {id}"),
            vec![],
        )
        .await
        .expect("answered");
        let e: i64 = p[3].clone().unwrap_or_default().parse().expect("enrolment");
        add_event(pool, e, &format!("scale_answered:{scale}"), s, now).await;
    }
    // Goals evaluated, hospital stays, withdrawals.
    let active = ints(
        pool,
        &format!(
            "SELECT id FROM enrolments WHERE status = 'active' AND enrolled_at <= {s} ORDER BY id"
        ),
        1,
    )
    .await;
    for r in &active {
        let e = r[0].expect("id");
        if e % 5 == k % 5 {
            // A goal whose status changes now and then, as its history records it.
            // Each enrolment's first day here (k < 5) also gives it two statuses before the
            // month; a third of them have no other.
            let first = if k < 5 { s - 40 * DAY } else { s };
            let met = (e / 5 + k) % 2;
            let mut sql = vec![format!(
                "INSERT INTO goals (dedupe_key, enrolment_id, goal_id, spec, created_at) VALUES ('test:{e}', {e}, 'weight_logged', '{{}}', {first}) ON CONFLICT (dedupe_key) DO NOTHING"
            )];
            if k < 5 {
                // Two statuses before the month: the second is the one that stands into it.
                for (key, at, met) in [
                    ("early", first, (e / 3) % 2),
                    ("later", s - 20 * DAY, 1 - (e / 3) % 2),
                ] {
                    sql.push(format!(
                        "INSERT INTO goal_status (dedupe_key, goal_row_id, enrolment_id, goal_id, met, readings, at) SELECT 'test:{e}:{key}', id, {e}, 'weight_logged', {met}, 0, {at} FROM goals WHERE dedupe_key = 'test:{e}'"
                    ));
                }
            }
            if e % 3 != 0 {
                sql.push(format!(
                    "INSERT INTO goal_status (dedupe_key, goal_row_id, enrolment_id, goal_id, met, readings, at) SELECT 'test:{e}:{k}', id, {e}, 'weight_logged', {met}, 0, {s} FROM goals WHERE dedupe_key = 'test:{e}'"
                ));
            }
            sql.push(format!(
                "UPDATE goals SET met = (SELECT met FROM goal_status g WHERE g.goal_row_id = goals.id ORDER BY at DESC LIMIT 1), evaluated_at = {s} WHERE dedupe_key = 'test:{e}'"
            ));
            for q in sql {
                pool.exec(&q, vec![]).await.expect("goal");
            }
        }
        if e % 11 == k % 11 {
            add_event(pool, e, "admitted", s - 4 * DAY - 3 * 3_600 - e, now).await;
            add_event(pool, e, "discharged", s, now).await;
        }
        if e % 13 == k {
            add_event(pool, e, "worsened", s, now).await;
        }
        if e % 23 == k {
            store::withdraw(pool, programs, e, "moved away", now)
                .await
                .expect("withdraw");
        }
    }
    // Low oxygen for every other patient still being assessed: an alarm episode each.
    let assessed = texts(
        pool,
        &format!("SELECT DISTINCT patient_id FROM enrolments WHERE state = 'assess' AND status = 'active' AND id % 2 = {} ORDER BY patient_id", k % 2),
        1,
    )
    .await;
    let readings: Vec<Reading> = assessed
        .iter()
        .map(|r| Reading {
            patient_id: r[0].clone().unwrap_or_default(),
            kind: "spo2".into(),
            value: 85.0,
            unit: None,
            at: at(s - 600),
            reading_id: format!("spo2-{k}"),
            source: "test".into(),
        })
        .collect();
    let visible: HashSet<String> = readings.iter().map(|r| r.patient_id.clone()).collect();
    store::ingest_readings(pool, &readings, &visible, now)
        .await
        .expect("readings");
}

/// Referral decisions at the lead hospital: accept a third, reject a third, leave the rest
/// waiting (to be decided, late, on a later day).
async fn decide_referrals(pool: &Pool, k: i64, now: Timestamp) {
    let refs = ints(
        pool,
        "SELECT id FROM referrals WHERE status = 'requested' AND from_institution <> 'lead' ORDER BY id",
        1,
    )
    .await;
    let coordinator = caller("lead.referral_coordinator", "lead", "referral_coordinator");
    for (i, r) in refs.iter().enumerate() {
        let id = r[0].expect("id");
        let decision = match (i as i64 + k) % 3 {
            0 => "accept",
            1 => "reject",
            _ => continue,
        };
        queries::decide_referral(
            pool,
            &coordinator,
            id,
            decision,
            Some("capacity"),
            "test",
            now,
        )
        .await
        .expect("decide");
    }
}

/// Seeds the alliance and lives through October (and a little of November).
async fn live_through_october(url: &str) -> (Pool, tempfile::TempDir) {
    let dir = pathway_dir(&[
        ("wound_care.yaml", WOUND_CARE),
        ("heart_check.yaml", &heart_check_with_indicators()),
    ]);
    let start = ts("2026-10-02T02:00:00Z");
    let pool = Pool::connect(url).await.expect("connect");
    store::migrate(&pool).await.expect("migrate");
    let programs = Programs::load_dir(dir.path()).expect("the test pathways load");
    store::publish(&pool, &programs, start)
        .await
        .expect("publish");
    let programs = store::load_programs(&pool).await.expect("programs");
    seed::seed(&pool, &programs, 160, 11, start)
        .await
        .expect("seed");
    seed::demo_staff(&pool).await.expect("staff");
    let mut tx = pool.begin().await.expect("begin");
    store::insert_staff(
        &mut tx,
        "lead.cm2",
        "lead",
        "王 <个管师> & co",
        &["case_manager", "nurse"],
        None,
    )
    .await
    .expect("staff");
    tx.commit().await.expect("commit");
    let staff: BTreeSet<String> = texts(&pool, "SELECT id FROM staff", 1)
        .await
        .into_iter()
        .filter_map(|r| r[0].clone())
        .collect();
    let days = [
        "2026-10-02T02:00:00Z",
        "2026-10-05T02:00:00Z",
        "2026-10-08T02:00:00Z",
        "2026-10-11T02:00:00Z",
        "2026-10-14T02:00:00Z",
        "2026-10-17T02:00:00Z",
        "2026-10-20T02:00:00Z",
        "2026-10-23T02:00:00Z",
        "2026-10-26T02:00:00Z",
        "2026-10-29T02:00:00Z",
        // The last evening of the month in Shanghai, then after the month ended.
        "2026-10-31T15:30:00Z",
        "2026-10-31T16:30:00Z",
        "2026-11-03T02:00:00Z",
    ];
    for (k, d) in days.iter().enumerate() {
        let now = ts(d);
        pass(&pool, &programs, now).await;
        activity(&pool, &programs, k as i64, now, &staff).await;
        pass(&pool, &programs, at(now.as_second() + 60)).await;
        decide_referrals(&pool, k as i64, at(now.as_second() + 2 * 3_600)).await;
        pass(&pool, &programs, at(now.as_second() + 2 * 3_600 + 60)).await;
    }
    (pool, dir)
}

/// Collects every mismatch, so one run names them all.
#[derive(Default)]
struct Check {
    problems: Vec<String>,
    compared: usize,
}

impl Check {
    fn int(&mut self, what: &str, got: &Value, want: i64) {
        self.compared += 1;
        if got.as_i64() != Some(want) {
            self.problems
                .push(format!("{what}: report says {got}, the rows say {want}"));
        }
    }

    fn float(&mut self, what: &str, got: &Value, want: Option<f64>) {
        self.compared += 1;
        let ok = match (got.as_f64(), want) {
            (Some(g), Some(w)) => (g - w).abs() <= 1e-9 * w.abs().max(1.0),
            (None, None) => got.is_null(),
            _ => false,
        };
        if !ok {
            self.problems
                .push(format!("{what}: report says {got}, the rows say {want:?}"));
        }
    }

    fn yes(&mut self, what: &str, ok: bool) {
        self.compared += 1;
        if !ok {
            self.problems.push(what.to_string());
        }
    }
}

fn ratio(n: i64, d: i64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

/// Plain-SQL counts for one institution, optionally one pathway, over `[from, to)`.
struct Rows<'a> {
    pool: &'a Pool,
    inst: &'a str,
    pathway: Option<&'a str>,
    from: i64,
    to: i64,
}

impl Rows<'_> {
    fn pw(&self) -> String {
        self.pathway
            .map(|p| format!(" AND e.pathway_id = {}", q(p)))
            .unwrap_or_default()
    }

    async fn tasks(&self, extra: &str, cond: &str) -> i64 {
        n(
            self.pool,
            &format!(
                "SELECT COUNT(*) FROM tasks t JOIN enrolments e ON e.id = t.enrolment_id WHERE t.institution_id = {}{}{extra} AND {cond}",
                q(self.inst),
                self.pw()
            ),
        )
        .await
    }

    /// Task counts with an extra filter (a role, an assignee), by the report's key names.
    async fn task_counts(&self, extra: &str) -> Vec<(&'static str, i64)> {
        let (f, t) = (self.from, self.to);
        let done = format!("t.status = 'done' AND t.completed_at >= {f} AND t.completed_at < {t}");
        let due = format!("t.status <> 'cancelled' AND t.due_at >= {f} AND t.due_at < {t}");
        vec![
            (
                "created",
                self.tasks(extra, &format!("t.created_at >= {f} AND t.created_at < {t}"))
                    .await,
            ),
            ("completed", self.tasks(extra, &done).await),
            (
                "completed_on_time",
                self.tasks(extra, &format!("{done} AND t.completed_at <= t.due_at"))
                    .await,
            ),
            ("due", self.tasks(extra, &due).await),
            (
                "due_on_time",
                self.tasks(
                    extra,
                    &format!("{due} AND t.status = 'done' AND t.completed_at <= t.due_at"),
                )
                .await,
            ),
            (
                "overdue",
                self.tasks(
                    extra,
                    &format!("{due} AND (t.completed_at IS NULL OR t.completed_at > t.due_at)"),
                )
                .await,
            ),
            (
                "enrolments",
                n(
                    self.pool,
                    &format!(
                        "SELECT COUNT(DISTINCT t.enrolment_id) FROM tasks t JOIN enrolments e ON e.id = t.enrolment_id \
                         WHERE t.institution_id = {}{}{extra} AND (({done}) OR ({due}))",
                        q(self.inst),
                        self.pw()
                    ),
                )
                .await,
            ),
        ]
    }

    async fn enrolment_count(&self, cond: &str) -> i64 {
        n(
            self.pool,
            &format!(
                "SELECT COUNT(*) FROM enrolments e WHERE e.institution_id = {}{} AND {cond}",
                q(self.inst),
                self.pw()
            ),
        )
        .await
    }

    async fn joined(&self, table: &str, alias: &str, inst_col: &str, cond: &str) -> i64 {
        n(
            self.pool,
            &format!(
                "SELECT COUNT(*) FROM {table} {alias} JOIN enrolments e ON e.id = {alias}.enrolment_id WHERE {inst_col} = {}{} AND {cond}",
                q(self.inst),
                self.pw()
            ),
        )
        .await
    }

    async fn stays(&self) -> (i64, f64) {
        let rows = texts(
            self.pool,
            &format!(
                "SELECT CAST(v.enrolment_id AS TEXT), v.name, CAST(v.at AS TEXT) FROM events v JOIN enrolments e ON e.id = v.enrolment_id \
                 WHERE v.name IN ('admitted', 'discharged') AND e.institution_id = {}{}",
                q(self.inst),
                self.pw()
            ),
            3,
        )
        .await;
        let mut admitted: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        let mut discharged = Vec::new();
        for r in rows {
            let (e, name, when) = (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
                r[2].clone().unwrap_or_default().parse::<i64>().expect("at"),
            );
            if name == "admitted" {
                admitted.entry(e).or_default().push(when);
            } else if when >= self.from && when < self.to {
                discharged.push((e, when));
            }
        }
        let (mut stays, mut days) = (0, 0.0);
        for (e, d) in discharged {
            if let Some(a) = admitted
                .get(&e)
                .and_then(|v| v.iter().filter(|a| **a <= d).max())
            {
                stays += 1;
                days += (d - a) as f64 / DAY as f64;
            }
        }
        (stays, days)
    }

    /// The built-in counts, by the report's key paths.
    async fn builtins(&self) -> Vec<(String, i64)> {
        let (f, t) = (self.from, self.to);
        let mut out: Vec<(String, i64)> = Vec::new();
        for (k, v) in self.task_counts("").await {
            out.push((format!("tasks.{k}"), v));
        }
        let ended = format!("e.ended_at >= {f} AND e.ended_at < {t}");
        for (k, cond) in [
            (
                "new",
                format!("e.enrolled_at >= {f} AND e.enrolled_at < {t}"),
            ),
            (
                "active",
                format!("e.enrolled_at < {t} AND (e.ended_at IS NULL OR e.ended_at >= {f})"),
            ),
            (
                "active_at_end",
                format!("e.enrolled_at < {t} AND (e.ended_at IS NULL OR e.ended_at >= {t})"),
            ),
            ("ended", ended.clone()),
            ("completed", format!("{ended} AND e.status = 'completed'")),
            ("withdrawn", format!("{ended} AND e.status = 'withdrawn'")),
        ] {
            out.push((format!("enrolments.{k}"), self.enrolment_count(&cond).await));
        }
        let fu = format!("f.send_at >= {f} AND f.send_at < {t} AND f.status <> 'cancelled'");
        out.push((
            "follow_ups.due".into(),
            self.joined("follow_ups", "f", "f.institution_id", &fu)
                .await,
        ));
        out.push((
            "follow_ups.sent".into(),
            self.joined(
                "follow_ups",
                "f",
                "f.institution_id",
                &format!("{fu} AND f.status = 'sent'"),
            )
            .await,
        ));
        // Follow-up calls (tasks named `…_call`) due in the month: the enrolments due one, and those
        // with one completed with an outcome that reached the patient.
        let calls = format!(
            "SELECT COUNT(DISTINCT t.enrolment_id) FROM tasks t JOIN enrolments e ON e.id = t.enrolment_id \
             WHERE t.institution_id = {}{} AND t.task_ref LIKE '%!_call' ESCAPE '!' \
             AND t.status <> 'cancelled' AND t.due_at >= {f} AND t.due_at < {t}",
            q(self.inst),
            self.pw()
        );
        out.push(("follow_ups.patients_due".into(), n(self.pool, &calls).await));
        out.push((
            "follow_ups.patients_followed_up".into(),
            n(
                self.pool,
                &format!(
                    "{calls} AND t.status = 'done' AND (t.outcome IS NULL OR t.outcome NOT IN \
                     ('unreachable', 'wrong_number', 'deceased', 'moved_away'))"
                ),
            )
            .await,
        ));
        let sp = format!("s.created_at >= {f} AND s.created_at < {t} AND s.status <> 'cancelled'");
        out.push((
            "scales.pushed".into(),
            self.joined("scale_pushes", "s", "s.institution_id", &sp)
                .await,
        ));
        out.push((
            "scales.answered".into(),
            self.joined(
                "scale_pushes",
                "s",
                "s.institution_id",
                &format!("{sp} AND s.status = 'answered'"),
            )
            .await,
        ));
        let sent = format!("r.requested_at >= {f} AND r.requested_at < {t}");
        for (k, dir) in [
            ("sent", ""),
            ("sent_up", " AND r.direction = 'up'"),
            ("sent_down", " AND r.direction = 'down'"),
        ] {
            out.push((
                format!("referrals.{k}"),
                self.joined(
                    "referrals",
                    "r",
                    "r.from_institution",
                    &format!("{sent}{dir}"),
                )
                .await,
            ));
        }
        let kind = texts(
            self.pool,
            &format!("SELECT kind FROM institutions WHERE id = {}", q(self.inst)),
            1,
        )
        .await[0][0]
            .clone()
            .unwrap_or_default();
        let received = format!(
            "SELECT COUNT(*) FROM referrals r JOIN enrolments e ON e.id = r.enrolment_id WHERE r.direction = 'up' AND {sent} \
             AND (r.to_institution = {i} OR (r.to_institution IS NULL AND r.from_institution <> {i} AND r.to_kind = {k})){pw}",
            i = q(self.inst),
            k = q(&kind),
            pw = self.pw()
        );
        out.push((
            "referrals.upward_received".into(),
            n(self.pool, &received).await,
        ));
        out.push((
            "referrals.upward_accepted_in_time".into(),
            n(
                self.pool,
                &format!(
                    "{received} AND r.status IN ('accepted', 'arrived') AND r.decided_at <= r.accept_by"
                ),
            )
            .await,
        ));
        out.push((
            "alarms".into(),
            n(
                self.pool,
                &format!(
                    "SELECT COUNT(*) FROM events v JOIN enrolments e ON e.id = v.enrolment_id WHERE v.name LIKE 'alarm:%' \
                     AND e.institution_id = {}{} AND v.at >= {f} AND v.at < {t}",
                    q(self.inst),
                    self.pw()
                ),
            )
            .await,
        ));
        out
    }
}

fn get<'v>(v: &'v Value, path: &str) -> &'v Value {
    path.split('.').fold(v, |v, k| &v[k])
}

/// Compares a `counts` object and its `rates` with the rows.
async fn check_builtins(
    c: &mut Check,
    label: &str,
    counts: &Value,
    rates: &Value,
    rows: &Rows<'_>,
) {
    let want = rows.builtins().await;
    let w: BTreeMap<&str, i64> = want.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    for (k, v) in &want {
        c.int(&format!("{label} {k}"), get(counts, k), *v);
    }
    let (stays, days) = rows.stays().await;
    c.int(
        &format!("{label} stays.stays"),
        &counts["stays"]["stays"],
        stays,
    );
    c.float(
        &format!("{label} stays.total_days"),
        &counts["stays"]["total_days"],
        Some(days),
    );
    for (rate, num, den) in [
        (
            "follow_up_rate",
            "follow_ups.patients_followed_up",
            "follow_ups.patients_due",
        ),
        ("on_time_task_rate", "tasks.due_on_time", "tasks.due"),
        ("overdue_rate", "tasks.overdue", "tasks.due"),
        ("scale_completion", "scales.answered", "scales.pushed"),
        ("referral_rate", "referrals.sent", "enrolments.active"),
        ("upward_share", "referrals.sent_up", "referrals.sent"),
        (
            "upward_accepted_in_time_rate",
            "referrals.upward_accepted_in_time",
            "referrals.upward_received",
        ),
    ] {
        c.float(
            &format!("{label} rates.{rate}"),
            &rates[rate],
            ratio(w[num], w[den]),
        );
    }
    c.float(
        &format!("{label} rates.average_length_of_stay_days"),
        &rates["average_length_of_stay_days"],
        (stays > 0).then(|| days / stays as f64),
    );
}

/// Every built-in indicator has a line list, and it lists, for the report's month, exactly the
/// rows the report counts: its numerator and denominator counted from the list are the report's
/// counts (the stays' total length to the second).
async fn check_line_lists(c: &mut Check, pool: &Pool, j: &Value) {
    use carepath_engine::indicators::BUILTIN;
    use carepath_engine::store::indicators::{self, LINE_LISTS, Period, Scope};
    c.yes(
        "every built-in indicator has a line list",
        BUILTIN.iter().all(|d| LINE_LISTS.contains(&d.name)) && LINE_LISTS.len() == BUILTIN.len(),
    );
    let institution = j["id"].as_str().expect("an institution id");
    let period = Period {
        from: t(FROM),
        to: t(TO),
        as_of: t(AS_OF),
    };
    let scope = Scope {
        institution,
        pathway: None,
    };
    for d in BUILTIN {
        let name = d.name;
        // Where the report keeps each count the indicator divides.
        let (num, den) = match name {
            "follow_up_rate" => (
                "counts.follow_ups.patients_followed_up",
                "counts.follow_ups.patients_due",
            ),
            "on_time_task_rate" => ("counts.tasks.due_on_time", "counts.tasks.due"),
            "overdue_rate" => ("counts.tasks.overdue", "counts.tasks.due"),
            "scale_completion" => ("counts.scales.answered", "counts.scales.pushed"),
            "referral_rate" => ("counts.referrals.sent", "counts.enrolments.active"),
            "upward_share" => ("counts.referrals.sent_up", "counts.referrals.sent"),
            "upward_accepted_in_time_rate" => (
                "counts.referrals.upward_accepted_in_time",
                "counts.referrals.upward_received",
            ),
            "average_length_of_stay_days" => ("counts.stays.total_seconds", "counts.stays.stays"),
            "case_load_per_case_manager" => ("counts.enrolments.active_at_end", "case_managers"),
            other => panic!("the line list `{other}` has no counts to be checked against"),
        };
        let rows = indicators::line_list(pool, &scope, &period, name, None)
            .await
            .expect("the line list")
            .expect("an indicator with a line list");
        let counted = indicators::line_list_counts(name, &rows).expect("a built-in indicator");
        // Stay days are compared as the seconds they are summed from.
        let side = |q| match q {
            carepath_engine::indicators::Quantity::StayDays => counted.stay_seconds,
            q => counted.count(q).expect("a whole count"),
        };
        c.int(
            &format!("{institution} {name} line list numerator"),
            get(j, num),
            side(d.numerator),
        );
        c.int(
            &format!("{institution} {name} line list denominator"),
            get(j, den),
            side(d.denominator),
        );
        // Each row is on a side, and the patients' rows name a patient.
        c.yes(
            &format!("{institution} {name} rows each count somewhere"),
            rows.iter().all(|r| r.in_numerator || r.in_denominator)
                && rows
                    .iter()
                    .all(|r| (r.kind == "staff") == r.patient_id.is_none()),
        );
    }
}

/// The instants a declared period covers in the October report, worked out by hand.
fn window(period: &str) -> (i64, i64) {
    let from = match period {
        "week" => "2026-10-24T16:00:00Z",
        "month" => FROM,
        "quarter" => "2026-07-31T16:00:00Z",
        "year" => "2025-10-31T16:00:00Z",
        other => panic!("unknown period {other}"),
    };
    (t(from), t(TO))
}

/// Counts a counter from the rows, independently of the engine's counter queries.
async fn counter(pool: &Pool, inst: &str, pathway: &str, text: &str, from: i64, to: i64) -> i64 {
    let e = format!(
        "e.institution_id = {} AND e.pathway_id = {}",
        q(inst),
        q(pathway)
    );
    let (kind, id) = text.split_once(':').unwrap_or((text, ""));
    let distinct = |table: &str, alias: &str, cond: String| {
        format!(
            "SELECT COUNT(DISTINCT {alias}.enrolment_id) FROM {table} {alias} JOIN enrolments e ON e.id = {alias}.enrolment_id WHERE {e} AND {cond}"
        )
    };
    let sql = match kind {
        "enrolled" => format!(
            "SELECT COUNT(*) FROM enrolments e WHERE {e} AND e.enrolled_at < {to} AND (e.ended_at IS NULL OR e.ended_at >= {from})"
        ),
        "started" => format!(
            "SELECT COUNT(*) FROM enrolments e WHERE {e} AND e.enrolled_at >= {from} AND e.enrolled_at < {to}"
        ),
        "completed" => format!(
            "SELECT COUNT(*) FROM enrolments e WHERE {e} AND e.status = 'completed' AND e.ended_at >= {from} AND e.ended_at < {to}"
        ),
        "goal_met" => {
            // Met at some instant of the period: each status stands from its history row to the
            // next, read here from the raw history; the enrolment still active in the period.
            let mut history: BTreeMap<String, Vec<(i64, bool, String)>> = BTreeMap::new();
            for r in texts(pool, &format!("SELECT CAST(s.goal_row_id AS TEXT), CAST(s.at AS TEXT), CAST(s.met AS TEXT), CAST(e.id AS TEXT) FROM goal_status s JOIN enrolments e ON e.id = s.enrolment_id WHERE {e} AND s.goal_id = {} AND (e.ended_at IS NULL OR e.ended_at >= {from})", q(id)), 4).await {
                let cell = |i: usize| r[i].clone().unwrap_or_default();
                history.entry(cell(0)).or_default().push((
                    cell(1).parse().expect("at"),
                    cell(2) == "1",
                    cell(3),
                ));
            }
            let mut met: BTreeSet<String> = BTreeSet::new();
            for rows in history.values_mut() {
                rows.sort();
                for (i, (at, is_met, enrolment)) in rows.iter().enumerate() {
                    let until = rows.get(i + 1).map_or(i64::MAX, |n| n.0);
                    if *is_met && *at < to && until > from {
                        met.insert(enrolment.clone());
                    }
                }
            }
            return met.len() as i64;
        }
        "event" => distinct(
            "events",
            "v",
            format!("v.name = {} AND v.at >= {from} AND v.at < {to}", q(id)),
        ),
        "task_done" => distinct(
            "tasks",
            "k",
            format!(
                "k.task_ref = {} AND k.status = 'done' AND k.completed_at >= {from} AND k.completed_at < {to}",
                q(id)
            ),
        ),
        "task_on_time" => distinct(
            "tasks",
            "k",
            format!(
                "k.task_ref = {} AND k.status = 'done' AND k.completed_at <= k.due_at AND k.completed_at >= {from} AND k.completed_at < {to}",
                q(id)
            ),
        ),
        "follow_up_sent" => distinct(
            "follow_ups",
            "f",
            format!(
                "f.status = 'sent' AND f.send_at >= {from} AND f.send_at < {}",
                to.min(t(AS_OF))
            ),
        ),
        "scale_answered" => {
            // Enrolments whose patient answered the scale in the window, counted in Rust.
            let answered: BTreeSet<String> = texts(pool, &format!("SELECT patient_id FROM scale_answers WHERE scale = {} AND at >= {from} AND at < {to}", q(id)), 1)
                .await.into_iter().filter_map(|r| r[0].clone()).collect();
            let enrolments = texts(
                pool,
                &format!("SELECT patient_id FROM enrolments e WHERE {e}"),
                1,
            )
            .await;
            return enrolments
                .iter()
                .filter(|r| r[0].as_ref().is_some_and(|p| answered.contains(p)))
                .count() as i64;
        }
        "entered" => {
            // Transitions into the state (from the record's JSON, parsed here) and enrolments
            // that started there.
            let mut ids: BTreeSet<String> = BTreeSet::new();
            for r in texts(pool, &format!("SELECT CAST(r.enrolment_id AS TEXT), r.detail FROM record r JOIN enrolments e ON e.id = r.enrolment_id WHERE {e} AND r.kind = 'transition' AND r.at >= {from} AND r.at < {to}"), 2).await {
                let detail: Value = serde_json::from_str(r[1].as_deref().unwrap_or("null")).expect("detail is JSON");
                if detail["to"] == id {
                    ids.extend(r[0].clone());
                }
            }
            for r in texts(pool, &format!("SELECT CAST(e.id AS TEXT), e.entry_point FROM enrolments e WHERE {e} AND e.enrolled_at >= {from} AND e.enrolled_at < {to}"), 2).await {
                if entry_state(pathway, r[1].as_deref().unwrap_or("")) == Some(id) {
                    ids.extend(r[0].clone());
                }
            }
            return ids.len() as i64;
        }
        other => panic!("the test does not know counter {other}"),
    };
    n(pool, &sql).await
}

/// Checks one institution's section of the report against the rows.
async fn check_institution(c: &mut Check, pool: &Pool, j: &Value) {
    let inst = j["id"].as_str().expect("institution id").to_string();
    let (from, to) = (t(FROM), t(TO));
    let rows = Rows {
        pool,
        inst: &inst,
        pathway: None,
        from,
        to,
    };
    check_builtins(c, &inst, &j["counts"], &j["rates"], &rows).await;

    // Case managers and their case load.
    let staff = texts(
        pool,
        &format!(
            "SELECT id, roles FROM staff WHERE institution_id = {}",
            q(&inst)
        ),
        2,
    )
    .await;
    let is_cm = |roles: &str| {
        roles.split(',').any(|r| {
            matches!(
                r.trim(),
                "case_manager" | "hospital_case_manager" | "clinic_case_manager"
            )
        })
    };
    let cms = staff
        .iter()
        .filter(|r| is_cm(r[1].as_deref().unwrap_or("")))
        .count() as i64;
    c.int(&format!("{inst} case_managers"), &j["case_managers"], cms);
    let at_end = rows
        .enrolment_count(&format!(
            "e.enrolled_at < {to} AND (e.ended_at IS NULL OR e.ended_at >= {to})"
        ))
        .await;
    c.float(
        &format!("{inst} case_load_per_case_manager"),
        &j["case_load_per_case_manager"],
        ratio(at_end, cms),
    );
    let live = n(
        pool,
        &format!(
            "SELECT COUNT(DISTINCT pathway_id) FROM enrolments WHERE institution_id = {} AND enrolled_at < {to} AND (ended_at IS NULL OR ended_at >= {from})",
            q(&inst)
        ),
    )
    .await;
    c.int(&format!("{inst} pathways_live"), &j["pathways_live"], live);

    // Per pathway: every pathway with enrolments here has a row, and every row matches.
    let pathways: Vec<String> = texts(
        pool,
        &format!(
            "SELECT DISTINCT pathway_id FROM enrolments WHERE institution_id = {} ORDER BY pathway_id",
            q(&inst)
        ),
        1,
    )
    .await
    .into_iter()
    .filter_map(|r| r[0].clone())
    .collect();
    let reported: Vec<&str> = j["by_pathway"]
        .as_array()
        .expect("by_pathway")
        .iter()
        .filter_map(|p| p["pathway"].as_str())
        .collect();
    for p in &pathways {
        let rows = Rows {
            pool,
            inst: &inst,
            pathway: Some(p),
            from,
            to,
        };
        let label = format!("{inst}/{p}");
        match j["by_pathway"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["pathway"] == p.as_str()))
        {
            Some(r) => check_builtins(c, &label, &r["counts"], &r["rates"], &rows).await,
            None => {
                let any = rows.builtins().await.iter().any(|(_, v)| *v != 0);
                c.yes(&format!("{label}: has counts but no row"), !any);
            }
        }
    }
    c.yes(
        &format!("{inst}: pathway rows {reported:?} not all among {pathways:?}"),
        reported.iter().all(|r| pathways.iter().any(|p| p == r)),
    );

    // Per role.
    let roles: Vec<String> = texts(
        pool,
        &format!(
            "SELECT DISTINCT role FROM tasks WHERE institution_id = {} ORDER BY role",
            q(&inst)
        ),
        1,
    )
    .await
    .into_iter()
    .filter_map(|r| r[0].clone())
    .collect();
    for role in &roles {
        let want = rows
            .task_counts(&format!(" AND t.role = {}", q(role)))
            .await;
        let row = j["by_role"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["role"] == role.as_str()));
        match row {
            Some(r) => {
                for (k, v) in &want {
                    c.int(&format!("{inst} role {role} {k}"), &r["tasks"][k], *v);
                }
                let m: BTreeMap<_, _> = want.iter().copied().collect();
                c.float(
                    &format!("{inst} role {role} on_time_task_rate"),
                    &r["on_time_task_rate"],
                    ratio(m["due_on_time"], m["due"]),
                );
            }
            None => c.yes(
                &format!("{inst}: role {role} has counts but no row"),
                want.iter().all(|(_, v)| *v == 0),
            ),
        }
    }
    c.yes(
        &format!("{inst}: a role row for a role without tasks"),
        j["by_role"]
            .as_array()
            .expect("by_role")
            .iter()
            .all(|r| roles.iter().any(|x| r["role"] == x.as_str())),
    );

    // Per staff member: every case manager has a row, and everyone with work to count.
    let by_staff = j["by_staff"].as_array().expect("by_staff");
    for s in &staff {
        let id = s[0].clone().unwrap_or_default();
        if by_staff.iter().any(|r| r["staff"] == id.as_str()) {
            continue;
        }
        c.yes(
            &format!("{inst}: no row for case manager {id}"),
            !is_cm(s[1].as_deref().unwrap_or("")),
        );
        let want = rows
            .task_counts(&format!(" AND t.assignee = {}", q(&id)))
            .await;
        c.yes(
            &format!("{inst}: staff member {id} has counts but no row"),
            want.iter().all(|(_, v)| *v == 0),
        );
    }
    for r in by_staff {
        let (extra, label) = match r["staff"].as_str() {
            Some(id) => (format!(" AND t.assignee = {}", q(id)), id.to_string()),
            None => (" AND t.assignee IS NULL".to_string(), "(unassigned)".into()),
        };
        let want = rows.task_counts(&extra).await;
        for (k, v) in &want {
            c.int(&format!("{inst} staff {label} {k}"), &r["tasks"][k], *v);
        }
        let m: BTreeMap<_, _> = want.iter().copied().collect();
        c.float(
            &format!("{inst} staff {label} on_time_task_rate"),
            &r["on_time_task_rate"],
            ratio(m["due_on_time"], m["due"]),
        );
        if let Some(id) = r["staff"].as_str() {
            let roles = staff
                .iter()
                .find(|s| s[0].as_deref() == Some(id))
                .and_then(|s| s[1].clone());
            c.yes(
                &format!("{inst} staff {id} case_manager flag"),
                r["case_manager"].as_bool() == Some(roles.as_deref().is_some_and(is_cm)),
            );
        }
    }
    // Assignees with work here who are missing from the table.
    for r in texts(
        pool,
        &format!("SELECT DISTINCT assignee FROM tasks WHERE institution_id = {} AND assignee IS NOT NULL", q(&inst)),
        1,
    )
    .await
    {
        let id = r[0].clone().unwrap_or_default();
        if by_staff.iter().any(|x| x["staff"] == id.as_str()) {
            continue;
        }
        let want = rows.task_counts(&format!(" AND t.assignee = {}", q(&id))).await;
        c.yes(
            &format!("{inst}: assignee {id} has counts but no row"),
            want.iter().all(|(_, v)| *v == 0),
        );
    }

    // Declared indicators: one per indicator of the published pathways.
    let indicators = j["indicators"].as_array().expect("indicators");
    c.int(
        &format!("{inst} number of indicators"),
        &Value::from(indicators.len()),
        8,
    );
    for i in indicators {
        let label = format!("{inst} indicator {}", i["id"]);
        let (wf, wt) = window(i["period"].as_str().unwrap_or(""));
        c.int(&format!("{label} from"), &i["from"], wf);
        c.int(&format!("{label} to"), &i["to"], wt);
        let pathway = i["pathway"].as_str().unwrap_or_default();
        let num = counter(
            pool,
            &inst,
            pathway,
            i["numerator"]["counter"].as_str().unwrap_or(""),
            wf,
            wt,
        )
        .await;
        let den = counter(
            pool,
            &inst,
            pathway,
            i["denominator"]["counter"].as_str().unwrap_or(""),
            wf,
            wt,
        )
        .await;
        c.int(&format!("{label} numerator"), &i["numerator"]["count"], num);
        c.int(
            &format!("{label} denominator"),
            &i["denominator"]["count"],
            den,
        );
        let value = ratio(num, den);
        c.float(&format!("{label} value"), &i["value"], value);
        let met = value.zip(i["target"].as_f64()).map(|(v, t)| v >= t);
        c.yes(
            &format!(
                "{label} target_met {} but value {value:?} and target {}",
                i["target_met"], i["target"]
            ),
            i["target_met"].as_bool() == met,
        );
    }

    // Tasks per day, by the day each instant falls on in Shanghai.
    let tz = jiff::tz::TimeZone::get("Asia/Shanghai").expect("zone");
    let dates: Vec<String> = j["daily"]["dates"]
        .as_array()
        .expect("dates")
        .iter()
        .filter_map(|d| d.as_str().map(str::to_string))
        .collect();
    c.yes(
        &format!("{inst}: dates {} … {}", dates[0], dates[dates.len() - 1]),
        dates.len() == 31 && dates[0] == "2026-10-01" && dates[30] == "2026-10-31",
    );
    for (key, sql) in [
        (
            "tasks_created",
            format!(
                "SELECT created_at FROM tasks WHERE institution_id = {}",
                q(&inst)
            ),
        ),
        (
            "tasks_completed",
            format!(
                "SELECT completed_at FROM tasks WHERE institution_id = {} AND status = 'done'",
                q(&inst)
            ),
        ),
    ] {
        let mut per_day: BTreeMap<String, i64> = BTreeMap::new();
        for r in ints(pool, &sql, 1).await {
            let day = at(r[0].expect("instant"))
                .to_zoned(tz.clone())
                .date()
                .to_string();
            *per_day.entry(day).or_default() += 1;
        }
        for (d, date) in dates.iter().enumerate() {
            c.int(
                &format!("{inst} {key} on {date}"),
                &j["daily"][key][d],
                per_day.get(date).copied().unwrap_or(0),
            );
        }
    }
}

async fn report_matches_the_rows(b: &Backend) {
    let (pool, _dir) = live_through_october(&b.url).await;
    let out = support::tempdir();
    let dir = out.path().display().to_string();
    carepath_ok(&[
        "report",
        "--month",
        "2026-10",
        "--db",
        &b.url,
        "--out",
        &dir,
        "--tz",
        "Asia/Shanghai",
        "--as-of",
        AS_OF,
    ]);
    let json_text = std::fs::read_to_string(out.path().join("report-2026-10.json")).expect("json");
    let html = std::fs::read_to_string(out.path().join("report-2026-10.html")).expect("html");
    let report: Value = serde_json::from_str(&json_text).expect("the report is JSON");
    let mut c = Check::default();
    c.int("from_s", &report["from_s"], t(FROM));
    c.int("to_s", &report["to_s"], t(TO));
    c.yes("month", report["month"] == "2026-10");
    let institutions = report["institutions"].as_array().expect("institutions");
    let ids: Vec<&str> = institutions
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    c.yes(
        &format!("institutions {ids:?}"),
        ids == ["clinic_a", "clinic_b", "lead"],
    );
    for j in institutions {
        check_institution(&mut c, &pool, j).await;
        check_line_lists(&mut c, &pool, j).await;
    }

    // The month had every kind of activity, so the comparisons above compared something.
    let lead = &institutions[ids.iter().position(|i| *i == "lead").expect("lead")];
    for path in [
        "counts.tasks.created",
        "counts.tasks.completed",
        "counts.tasks.completed_on_time",
        "counts.tasks.overdue",
        "counts.enrolments.new",
        "counts.enrolments.ended",
        "counts.follow_ups.sent",
        "counts.follow_ups.patients_due",
        "counts.follow_ups.patients_followed_up",
        "counts.scales.answered",
        "counts.referrals.upward_received",
        "counts.referrals.upward_accepted_in_time",
        "counts.alarms",
        "counts.stays.stays",
        "counts.stays.total_seconds",
        "counts.referrals.sent",
        "counts.enrolments.active",
        "counts.enrolments.active_at_end",
        "case_managers",
    ] {
        c.yes(
            &format!(
                "lead {path} is {} (the fixture should make it positive)",
                get(lead, path)
            ),
            get(lead, path).as_i64().is_some_and(|v| v > 0),
        );
    }
    c.yes(
        "clinics sent referrals up",
        institutions
            .iter()
            .any(|i| get(i, "counts.referrals.sent_up").as_i64() > Some(0)),
    );
    c.yes(
        "an indicator with a numerator",
        lead["indicators"]
            .as_array()
            .expect("indicators")
            .iter()
            .filter(|i| i["numerator"]["count"].as_i64() > Some(0))
            .count()
            >= 5,
    );
    c.yes(
        "a staff member with completed work",
        lead["by_staff"]
            .as_array()
            .expect("staff")
            .iter()
            .any(|s| s["staff"] == "lead.cm2" && s["tasks"]["completed"].as_i64() > Some(0)),
    );

    // The HTML: self-contained, with the charts and the numbers, escaped, and no patient in it.
    c.yes("html has no script", !html.contains("<script"));
    c.yes(
        "html has no external resource",
        !html.contains("src=\"http") && !html.contains("href=\"http"),
    );
    c.yes(
        "one bar chart and one line chart per institution",
        html.matches("<svg").count() == 2 * institutions.len()
            && html.matches("<polyline").count() == 2 * institutions.len(),
    );
    c.yes(
        "bars against targets",
        html.contains("class=\"bar\"") && html.contains("class=\"target\""),
    );
    c.yes(
        "titles are escaped",
        html.contains("病情加重 &lt;比例&gt; &amp; 趋势") && !html.contains("<比例>"),
    );
    c.yes(
        "staff names are escaped",
        html.contains("王 &lt;个管师&gt; &amp; co"),
    );
    for j in institutions {
        let inst = j["id"].as_str().unwrap_or_default();
        let cnt = &j["counts"];
        let frac = |n: &Value, d: &Value| {
            let (n, d) = (n.as_i64().unwrap_or(-1), d.as_i64().unwrap_or(-1));
            let r = ratio(n, d)
                .map(|r| format!("{:.1}%", r * 100.0))
                .unwrap_or_else(|| "—".into());
            format!("{n} / {d} ({r})")
        };
        for text in [
            format!("<td>{}</td>", cnt["tasks"]["created"]),
            frac(&cnt["follow_ups"]["sent"], &cnt["follow_ups"]["due"]),
            frac(&cnt["tasks"]["due_on_time"], &cnt["tasks"]["due"]),
            frac(
                &cnt["follow_ups"]["patients_followed_up"],
                &cnt["follow_ups"]["patients_due"],
            ),
            frac(&cnt["tasks"]["overdue"], &cnt["tasks"]["due"]),
            frac(&cnt["scales"]["answered"], &cnt["scales"]["pushed"]),
            format!("<td>{}</td>", cnt["alarms"]),
        ] {
            c.yes(
                &format!("{inst}: html lacks `{text}`"),
                html.contains(&text),
            );
        }
        for i in j["indicators"].as_array().into_iter().flatten() {
            let text = format!(
                "{} = {}",
                i["numerator"]["counter"].as_str().unwrap_or(""),
                i["numerator"]["count"]
            );
            c.yes(
                &format!("{inst}: html lacks `{text}`"),
                html.contains(&text),
            );
        }
    }
    let patients: Vec<String> = texts(&pool, "SELECT id FROM patients", 1)
        .await
        .into_iter()
        .filter_map(|r| r[0].clone())
        .collect();
    c.yes("patients exist", !patients.is_empty());
    for p in &patients {
        c.yes(
            &format!("patient {p} is named in the report"),
            !json_text.contains(p.as_str()) && !html.contains(p.as_str()),
        );
    }

    // One institution alone gives that institution's section.
    let one = support::tempdir();
    let one_dir = one.path().display().to_string();
    carepath_ok(&[
        "report",
        "--month",
        "2026-10",
        "--db",
        &b.url,
        "--out",
        &one_dir,
        "--institution",
        "clinic_a",
        "--as-of",
        AS_OF,
    ]);
    let alone: Value = serde_json::from_str(
        &std::fs::read_to_string(one.path().join("report-2026-10.json")).expect("json"),
    )
    .expect("JSON");
    c.yes(
        "--institution clinic_a reports clinic_a alone, as in the full report",
        alone["institutions"].as_array().map(Vec::len) == Some(1)
            && alone["institutions"][0] == institutions[0],
    );

    println!("{}: {} numbers compared", b.name(), c.compared);
    assert!(
        c.problems.is_empty(),
        "{}: the report disagrees with the rows in {} of {} comparisons:\n  {}",
        b.name(),
        c.problems.len(),
        c.compared,
        c.problems.join("\n  ")
    );
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monthly_report_matches_counts_from_the_raw_rows() {
    for b in support::backends() {
        report_matches_the_rows(&b).await;
    }
}

#[test]
fn report_refuses_a_bad_month_and_zone() {
    let b = support::sqlite();
    for (args, needle) in [
        (vec!["--month", "2026-13"], "is not a month"),
        (
            vec!["--month", "2026-10", "--tz", "Mars/Olympus"],
            "time zone",
        ),
        (
            vec!["--month", "2026-10", "--institution", "nowhere"],
            "institution nowhere",
        ),
    ] {
        let mut cmd = support::carepath();
        cmd.arg("report").args(&args).args(["--db", &b.url]);
        let out = cmd.output().expect("run carepath");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
