//! `carepath test` tells the truth: every case of every pathway test in the repository
//! (`pathways/*.test.yaml`, `pathways/twins/*.test.yaml`) is played by the runner
//! (`pathway_test::play_case`) and replayed through the real store and scheduler, on SQLite and on
//! PostgreSQL when `DATABASE_URL` is set, and both must give the same states at every instant and
//! the same rows at the end.
//!
//! The replay takes nothing from the runner but what happened and when (`Played::steps`): the
//! patient is registered with the case's birth date, sex and zone and enrolled at the case's
//! start (`store::enrol`); at each instant the runner stepped at, a scheduler pass runs
//! (`scheduler::run_pass`), and each given is first recorded through the function the admin API
//! calls for it — `event_scoped` for an event, `ingest_visible` for a reading (which judges the
//! alarm rules and goals), `answer_push` for answers (the push the runner answered, by its key),
//! `act_on_task` for a completion, `decide_referral` for a decision, `withdraw_scoped` for a
//! withdrawal — by a caller of the institution production would have act. After every pass the
//! enrolment's state and status must be the runner's; at the end every task, follow-up, scale push
//! and referral must match the runner's by key, kind, name, due time and status, and work the
//! store first saw already cancelled must be what the runner made born ended.
//!
//! Left out, each loudly or for a stated reason:
//! - Scale reminder messages (follow-ups the sweep makes for a pending push, `follow_up_ref`
//!   `scale_push:<id>`, the standard `scale_reminder` template or a chain's own): messages to the
//!   patient that change no state and no work of the pathway; the runner delivers no messages.
//!   Their number is printed. A reminder chain's *task* steps are compared: they are work on a
//!   board, and `carepath test` makes them by the store's own reminder plan.
//! - Cases with inputs no production interface records (case `vars`, `risk` givens): skipped, and
//!   named on stderr. The repository's tests have none; the count is printed.
//! - Alarm rule, alarm episode and goal rows themselves: they are compared through what they do
//!   (an episode's task, the event that moves the state, a guard reading `goal_met`). Staff
//!   acknowledging or resolving an episode is no given of a pathway test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use carepath_engine::pathway_test::{self, Input, Played, What, Work, WorkStatus};
use carepath_engine::scheduler::{self, PassOptions};
use carepath_engine::store::queries::{self, Caller, TaskAction};
use carepath_engine::store::{self, Arg, NewPatient, Pool};
use carepath_engine::{Program, Programs};
use jiff::Timestamp;

use crate::support;

const REMOTE: &str = "pathway-test-replay";

/// The repository's test files.
fn test_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("pathways");
    pathway_test::test_files(&[root]).expect("the pathway tests are readable")
}

/// A work row as compared: kind, name, due (seconds), status, born ended.
/// Kind, name, due time, status, born ended, and for a task the institution holding it.
type Row = (&'static str, String, i64, WorkStatus, bool, String);

/// The runner's account, keyed by dedupe key.
/// `holders`: the institution that accepted each referral (by the runner's key); `home`: the
/// institution the patient was enrolled at.
fn by_runner(
    work: &[Work],
    holders: &BTreeMap<String, String>,
    home: &str,
) -> BTreeMap<String, Row> {
    work.iter()
        .map(|w| {
            (
                w.key.clone(),
                (
                    w.kind,
                    w.name.clone(),
                    w.due_at.as_second(),
                    w.status,
                    w.born_ended,
                    match (w.kind, &w.held_by) {
                        ("task", None) => home.to_string(),
                        ("task", Some(referral)) => holders
                            .get(referral)
                            .cloned()
                            .unwrap_or_else(|| format!("no institution accepted {referral}")),
                        _ => String::new(),
                    },
                ),
            )
        })
        .collect()
}

/// One stored row of the enrolment's work, with its key in the runner's form.
#[derive(Debug, Clone)]
struct Stored {
    id: i64,
    key: String,
    kind: &'static str,
    name: String,
    due: i64,
    status: WorkStatus,
    /// A task's role and institution; a referral's receiving kind and institution.
    role: String,
    institution: Option<String>,
}

/// The store's status words, as the runner names them.
fn status_of(kind: &str, status: &str) -> WorkStatus {
    match (kind, status) {
        ("task", "open" | "claimed")
        | ("follow_up", "scheduled")
        | ("scale_push", "pending")
        | ("referral", "requested") => WorkStatus::Open,
        ("task", "done") | ("scale_push", "answered") => WorkStatus::Done,
        (_, "cancelled") => WorkStatus::Cancelled,
        ("scale_push", "expired") => WorkStatus::Expired,
        ("referral", "accepted") => WorkStatus::Accepted,
        ("referral", "rejected") => WorkStatus::Rejected,
        ("referral", "arrived") => WorkStatus::Arrived,
        _ => panic!("a stored {kind} has status `{status}`, which no pathway test makes"),
    }
}

/// The enrolment's work as stored. Keys are written as the runner writes them: the enrolment is
/// `e1`, an alarm episode's task names its rule by the rule's key, a critical item's task its push
/// by key.
async fn stored(pool: &Pool, enrolment: i64) -> Vec<Stored> {
    let e = Arg::I(enrolment);
    let ours = |key: String| key.replace(&format!("e{enrolment}:"), "e1:");
    let mut rules = BTreeMap::new();
    for r in pool
        .fetch(
            "SELECT id, dedupe_key FROM alarm_rules WHERE enrolment_id = $1",
            vec![e.clone()],
        )
        .await
        .expect("alarm rules")
    {
        rules.insert(r.i64(0).to_string(), ours(r.text(1)));
    }
    let mut pushes = BTreeMap::new();
    for r in pool
        .fetch(
            "SELECT id, dedupe_key FROM scale_pushes WHERE enrolment_id = $1",
            vec![e.clone()],
        )
        .await
        .expect("pushes")
    {
        pushes.insert(r.i64(0).to_string(), ours(r.text(1)));
    }
    let key_of = |key: String| -> String {
        let parts: Vec<&str> = key.split(':').collect();
        match parts.as_slice() {
            ["alarm", rule, "episode", n] => format!("alarm:{}:episode:{n}", rules[*rule]),
            ["scale", push, "critical", item] => {
                format!("scale:{}:critical:{item}", pushes[*push])
            }
            ["scale", push, "reminder", n] => {
                format!("scale:{}:reminder:{n}", pushes[*push])
            }
            _ => ours(key),
        }
    };
    let mut out = Vec::new();
    for (kind, sql) in [
        (
            "task",
            "SELECT id, dedupe_key, COALESCE(task_ref, ''), due_at, status, role, institution_id FROM tasks WHERE enrolment_id = $1",
        ),
        (
            "follow_up",
            "SELECT id, dedupe_key, template, send_at, status, '', NULL FROM follow_ups WHERE enrolment_id = $1 AND (follow_up_ref IS NULL OR follow_up_ref NOT LIKE 'scale\\_push:%' ESCAPE '\\')",
        ),
        (
            "scale_push",
            "SELECT id, dedupe_key, scale, due_at, status, '', NULL FROM scale_pushes WHERE enrolment_id = $1",
        ),
        (
            "referral",
            "SELECT id, dedupe_key, direction, accept_by, status, to_kind, to_institution FROM referrals WHERE enrolment_id = $1",
        ),
    ] {
        for r in pool.fetch(sql, vec![e.clone()]).await.expect(kind) {
            out.push(Stored {
                id: r.i64(0),
                key: key_of(r.text(1)),
                kind,
                // A reminder chain's task names its push by id; the runner by key.
                name: match r.text(2).strip_prefix("scale_push:") {
                    Some(push) => format!("scale_push:{}", pushes[push]),
                    None => r.text(2),
                },
                due: r.i64(3),
                status: status_of(kind, &r.text(4)),
                role: r.text(5),
                institution: r.opt_text(6),
            });
        }
    }
    out
}

/// A member of staff of `institution` holding `roles`.
fn caller(institution: &str, roles: &[&str]) -> Caller {
    Caller {
        staff_id: format!("replay_{institution}"),
        institution_id: institution.to_string(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
    }
}

/// What one case needs of the store.
struct Replay<'a> {
    pool: &'a Pool,
    programs: &'a Programs,
    backend: &'static str,
    patient: String,
    home: String,
    enrolment: i64,
    /// Keys first seen cancelled: born ended.
    born_ended: BTreeMap<String, bool>,
    /// The institution that accepted each referral, by the runner's key.
    accepted_by: BTreeMap<String, String>,
}

impl Replay<'_> {
    fn find(&self, rows: &[Stored], key: &str, kind: &str) -> Stored {
        rows.iter()
            .find(|s| s.key == key && s.kind == kind)
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "{}: the runner acted on {kind} `{key}`, which the store does not hold",
                    self.backend
                )
            })
    }

    /// Records one input as the admin API records it.
    async fn record(&mut self, input: &Input, at: Timestamp) {
        let home = caller(&self.home, &[]);
        let rows = stored(self.pool, self.enrolment).await;
        let done = match input {
            Input::Event { name } => queries::event_scoped(
                self.pool,
                self.programs,
                &home,
                &queries::ReportedEvent {
                    enrolment: self.enrolment,
                    name,
                    at,
                    data: None,
                },
                REMOTE,
                at,
            )
            .await
            .map(|_| ()),
            Input::Reading { id, values } => {
                let readings: Vec<_> = values
                    .iter()
                    .map(|(kind, value)| carepath_engine::observations::Reading {
                        patient_id: self.patient.clone(),
                        kind: kind.clone(),
                        value: *value,
                        unit: None,
                        at,
                        reading_id: format!("{}:{id}", self.patient),
                        source: "device".into(),
                    })
                    .collect();
                let s = queries::ingest_visible(self.pool, &home, &readings, REMOTE, at)
                    .await
                    .expect("readings");
                assert!(s.refused.is_empty(), "readings refused: {:?}", s.refused);
                Ok(())
            }
            Input::Answer { push, answers, .. } => {
                let push = self.find(&rows, push, "scale_push");
                store::scales::answer_push(
                    self.pool,
                    carepath_engine::scales::Scales::builtin(),
                    &home,
                    push.id,
                    answers,
                    Some(at),
                    REMOTE,
                    at,
                )
                .await
                .map(|_| ())
            }
            Input::TaskDone { task, outcome, .. } => {
                let t = self.find(&rows, task, "task");
                let staff = caller(
                    t.institution.as_deref().unwrap_or(&self.home),
                    &[t.role.as_str()],
                );
                queries::act_on_task(
                    self.pool,
                    self.programs,
                    &staff,
                    t.id,
                    TaskAction::Complete { outcome },
                    REMOTE,
                    at,
                )
                .await
                .map(|_| ())
            }
            Input::Referral { referral, decision } => {
                let r = self.find(&rows, referral, "referral");
                let deciding = match r.institution.clone() {
                    Some(receiving) => receiving,
                    None => self.addressed(r.id, &r.role).await,
                };
                let reason = (*decision == pathway_test::Decision::Reject)
                    .then_some("declined in a pathway test");
                if *decision == pathway_test::Decision::Accept {
                    self.accepted_by.insert(referral.clone(), deciding.clone());
                }
                queries::decide_referral(
                    self.pool,
                    &caller(&deciding, &[]),
                    r.id,
                    decision.as_str(),
                    reason,
                    REMOTE,
                    at,
                )
                .await
                .map(|_| ())
            }
            Input::Withdraw { reason } => queries::withdraw_scoped(
                self.pool,
                self.programs,
                &home,
                self.enrolment,
                reason,
                REMOTE,
                at,
            )
            .await
            .map(|_| ()),
            Input::Risk { .. } => unreachable!("cases with risk givens are not replayed"),
        };
        done.unwrap_or_else(|e| panic!("{}: recording {input:?} at {at}: {e}", self.backend));
    }

    /// An institution of `kind` the referral is addressed to: any but the one that sent it.
    async fn addressed(&self, referral: i64, kind: &str) -> String {
        let rows = self
            .pool
            .fetch(
                "SELECT i.id FROM institutions i JOIN referrals r ON r.id = $1 \
                 WHERE i.kind = $2 AND i.id <> r.from_institution ORDER BY i.id",
                vec![Arg::I(referral), Arg::T(kind.into())],
            )
            .await
            .expect("institutions");
        rows.first().map(|r| r.text(0)).unwrap_or_else(|| {
            panic!("no institution of kind {kind} to decide referral {referral}")
        })
    }

    /// Notes the work the store holds now: a key first seen cancelled was born ended.
    async fn look(&mut self) {
        for s in stored(self.pool, self.enrolment).await {
            self.born_ended
                .entry(s.key)
                .or_insert(s.status == WorkStatus::Cancelled);
        }
    }

    async fn state(&self) -> (String, String) {
        let rows = self
            .pool
            .fetch(
                "SELECT state, status FROM enrolments WHERE id = $1",
                vec![Arg::I(self.enrolment)],
            )
            .await
            .expect("enrolment");
        let r = rows.first().expect("the enrolment");
        (r.text(0), r.text(1))
    }
}

/// Replays one played case into the store; panics at the first difference. Returns how many scale
/// reminders the store sent, which are not compared.
async fn replay(
    pool: &Pool,
    programs: &Programs,
    backend: &'static str,
    prog: &Program,
    entry: &str,
    played: &Played,
    n: usize,
) -> i64 {
    let patient = format!("replay{n}");
    // An upward referral goes from primary care to the lead hospital: a patient whose first
    // referral is upward is registered at a community clinic, every other at the lead hospital.
    let first_up = played
        .work
        .iter()
        .find(|w| w.kind == "referral")
        .is_some_and(|w| w.name == "up");
    let home = if first_up {
        carepath_engine::seed::CLINICS[0]
    } else {
        carepath_engine::seed::LEAD
    };
    let mut tx = pool.begin().await.expect("begin");
    store::insert_patient(
        &mut tx,
        &NewPatient {
            id: patient.clone(),
            institution_id: home.into(),
            birth_date: played.birth_date.map(|d| d.to_string()),
            sex: played.sex.clone(),
            tz: played.tz.clone(),
            contact_enc: None,
            preferred_channel: Some("wechat".into()),
            home_institution: None,
            lang: None,
        },
        played.start,
    )
    .await
    .expect("patient");
    tx.commit().await.expect("commit");
    let mut r = Replay {
        pool,
        programs,
        backend,
        patient,
        home: home.into(),
        enrolment: 0,
        born_ended: BTreeMap::new(),
        accepted_by: BTreeMap::new(),
    };
    let case = &played.case;
    for (i, step) in played.steps.iter().enumerate() {
        match &step.what {
            What::Enrolled => {
                r.enrolment = store::enrol(
                    pool,
                    programs,
                    &r.patient,
                    &prog.pathway.id,
                    Some(prog.pathway.version),
                    entry,
                    step.at,
                )
                .await
                .expect("enrol")
                .0;
            }
            What::Pass => pass(pool, programs, step.at).await,
            What::Given(input) => {
                r.record(input, step.at).await;
                // What the input itself made (an alarm's task, a critical item's), before the step.
                r.look().await;
                pass(pool, programs, step.at).await;
            }
        }
        r.look().await;
        let (state, status) = r.state().await;
        assert!(
            state == step.state && status == step.status.as_str(),
            "{backend}, case `{case}`: after step {i} ({:?}) at {}, the store has the patient in `{state}` ({status}), carepath test in `{}` ({})",
            step.what,
            step.at,
            step.state,
            step.status.as_str()
        );
    }
    let ours = by_runner(&played.work, &r.accepted_by, &r.home);
    let theirs: BTreeMap<String, Row> = stored(pool, r.enrolment)
        .await
        .into_iter()
        .map(|s| {
            let born = r.born_ended.get(&s.key).copied().unwrap_or(false);
            let holder = match s.kind {
                "task" => s.institution.clone().unwrap_or_default(),
                _ => String::new(),
            };
            (s.key, (s.kind, s.name, s.due, s.status, born, holder))
        })
        .collect();
    let keys: std::collections::BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| ours.get(*k) != theirs.get(*k))
        .map(|k| {
            format!(
                "{k}: carepath test {:?}, the store {:?}",
                ours.get(k),
                theirs.get(k)
            )
        })
        .collect();
    assert!(
        diffs.is_empty(),
        "{backend}, case `{case}`: the work differs (kind, name, due, status, born ended, holder):\n  {}",
        diffs.join("\n  ")
    );
    let reminders = support::scalar(
        pool,
        &format!(
            "SELECT COUNT(*) FROM follow_ups WHERE enrolment_id = {} AND follow_up_ref LIKE 'scale\\_push:%' ESCAPE '\\'",
            r.enrolment
        ),
    )
    .await;
    // Out of the way of the next case's passes.
    if r.state().await.1 == "active" {
        store::withdraw(pool, programs, r.enrolment, "replayed", played.start)
            .await
            .expect("withdraw");
    }
    reminders
}

async fn pass(pool: &Pool, programs: &Programs, at: Timestamp) {
    let s = scheduler::run_pass(pool, programs, at, &PassOptions::default())
        .await
        .expect("pass");
    assert_eq!(s.errors, 0, "a pass at {at} failed: {s:?}");
}

/// Publishes the pathway of every test file and sets up an alliance with one institution of each
/// kind a referral can name.
async fn open(url: &str, progs: &[std::sync::Arc<Program>]) -> (Pool, Programs) {
    let pool = Pool::connect(url).await.expect("connect");
    store::migrate(&pool).await.expect("migrate");
    let mut programs = Programs::default();
    for p in progs {
        let source = carepath_engine::program::Source::new(
            &format!("{}.yaml", p.pathway.id),
            String::new(),
            &p.pathway,
        );
        programs
            .insert(p.pathway.clone(), source)
            .expect("compiles");
    }
    let now = support::ts("2026-01-01T00:00:00Z");
    store::publish(&pool, &programs, now)
        .await
        .expect("publish");
    let programs = store::load_programs(&pool).await.expect("load");
    carepath_engine::seed::alliance(&pool)
        .await
        .expect("alliance");
    let mut tx = pool.begin().await.expect("begin");
    store::insert_institution(
        &mut tx,
        "specialist",
        "Specialist hospital",
        "specialist_hospital",
        Some(carepath_engine::seed::LEAD),
    )
    .await
    .expect("institution");
    tx.commit().await.expect("commit");
    (pool, programs)
}

#[test]
fn every_case_of_every_pathway_test_is_what_the_store_does() {
    let mut loaded = Vec::new();
    for f in test_files() {
        let (file, prog) =
            pathway_test::load_program(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        loaded.push((f, file, prog));
    }
    assert!(
        loaded.len() >= 6,
        "expected the pathway tests of pathways/ and pathways/twins/"
    );
    let progs: Vec<_> = loaded.iter().map(|(_, _, p)| p.clone()).collect();
    for b in support::backends() {
        support::runtime().block_on(async {
            let (pool, programs) = open(&b.url, &progs).await;
            let (mut replayed, mut skipped, mut reminders) = (0, Vec::new(), 0);
            for (f, file, prog) in &loaded {
                for case in &file.cases {
                    let played = pathway_test::play_case(prog, case);
                    assert!(
                        played.errors.is_empty(),
                        "{}: {:?}",
                        f.display(),
                        played.errors
                    );
                    if !played.outside_production.is_empty() {
                        skipped.push(format!(
                            "{}: `{}`: {}",
                            f.display(),
                            case.name,
                            played.outside_production.join("; ")
                        ));
                        continue;
                    }
                    replayed += 1;
                    reminders += replay(
                        &pool,
                        &programs,
                        b.name(),
                        prog,
                        &case.entry,
                        &played,
                        replayed,
                    )
                    .await;
                }
            }
            if !skipped.is_empty() {
                support::loud(&format!(
                    "NOT REPLAYED ({}): cases with inputs no production interface records:\n{}",
                    skipped.len(),
                    skipped.join("\n")
                ));
            }
            support::loud(&format!(
                "NOT COMPARED ({}): {reminders} scale reminder messages the store's sweep made in {replayed} replayed cases (carepath test sends no messages)",
                b.name()
            ));
            assert!(replayed > 100, "only {replayed} cases replayed");
            pool.close().await;
        });
    }
}
