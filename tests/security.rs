//! Scoping and integrity of staff actions, on every backend: referrals stay inside their alliance
//! and go only where they are addressed; exactly one of many concurrent actions on a task or a
//! referral wins; tasks are acted on by their roles, with the outcomes their pathway declares;
//! refusals are audited.

use carepath_engine::Programs;
use carepath_engine::store::queries::{self, Caller, QueueFilter, TaskAction};
use carepath_engine::store::{self, Arg, NewPatient, Pool, StoreError};
use jiff::Timestamp;

use crate::support::{self, Backend, scalar};

const TRIAGE: &str = r#"pathway: triage
version: 1
title: { zh: 分诊决定（测试）, en: Triage decision (test) }
owner_role: case_manager
roles: [case_manager, doctor, head_nurse]
entry_points:
  - { id: start, state: decide }
states:
  - id: decide
    phase: follow_up
    on_enter:
      - task: { id: decision, role: doctor, outcomes: [refer_up, manage_locally], title: { zh: 决定, en: Decide }, due: 1d, sla: { escalate_after: 1d, escalate_to: head_nurse } }
      - task: { id: call, role: case_manager, title: { zh: 电话, en: Call }, due: 1d }
    transitions:
      - on: task_done:decision
        when: 'outcome("decision") == "refer_up"'
        to: up
      - on: task_done:decision
        to: local
      - after: 30d
        to: local
  - id: up
    phase: referral
    on_enter:
      - referral: { direction: up, to: lead_hospital, reason: { zh: 上转, en: Up } }
    transitions:
      - after: 10d
        to: local
  - id: local
    phase: closed
    terminal: true
"#;

fn now() -> Timestamp {
    support::ts("2026-11-02T08:00:00Z")
}

fn caller(inst: &str, role: &str) -> Caller {
    Caller {
        staff_id: format!("{inst}.{role}"),
        institution_id: inst.into(),
        roles: vec![role.into()],
    }
}

struct World {
    pool: Pool,
    programs: Programs,
    _dir: tempfile::TempDir,
}

/// The demo alliance (lead, clinic_a, clinic_b) and a second one (north_lead, north_clinic), a
/// staff member of each role used here at each institution.
async fn world(b: &Backend) -> World {
    let dir = support::pathway_dir(&[("triage.yaml", TRIAGE)]);
    let (pool, programs) = support::open_store(&b.url, dir.path(), now()).await;
    let mut tx = pool.begin().await.expect("begin");
    store::insert_institution(&mut tx, "north_lead", "North", "lead_hospital", None)
        .await
        .expect("institution");
    store::insert_institution(
        &mut tx,
        "north_clinic",
        "North clinic",
        "community_clinic",
        Some("north_lead"),
    )
    .await
    .expect("institution");
    for inst in ["lead", "clinic_a", "clinic_b", "north_lead", "north_clinic"] {
        for role in [
            "doctor",
            "case_manager",
            "head_nurse",
            "rehab_therapist",
            "device_gateway",
        ] {
            store::insert_staff(
                &mut tx,
                &format!("{inst}.{role}"),
                inst,
                role,
                &[role],
                None,
            )
            .await
            .expect("staff");
        }
    }
    tx.commit().await.expect("commit");
    World {
        pool,
        programs,
        _dir: dir,
    }
}

impl World {
    /// A patient of `inst` enrolled in the triage pathway; returns the enrolment.
    async fn enrol(&self, patient: &str, inst: &str) -> i64 {
        let mut tx = self.pool.begin().await.expect("begin");
        let p = NewPatient {
            id: patient.into(),
            institution_id: inst.into(),
            birth_date: Some("1950-05-01".into()),
            sex: "female".into(),
            tz: "Asia/Shanghai".into(),
            contact_enc: None,
            preferred_channel: None,
            home_institution: None,
            lang: None,
        };
        store::insert_patient(&mut tx, &p, now())
            .await
            .expect("patient");
        tx.commit().await.expect("commit");
        store::enrol(
            &self.pool,
            &self.programs,
            patient,
            "triage",
            None,
            "start",
            now(),
        )
        .await
        .expect("enrol")
        .0
    }

    async fn task(&self, enrolment: i64, task_ref: &str) -> i64 {
        scalar(
            &self.pool,
            &format!(
                "SELECT id FROM tasks WHERE enrolment_id = {enrolment} AND task_ref = '{task_ref}'"
            ),
        )
        .await
    }

    /// A requested referral written as the scheduler writes one, from `from` for `kind`, named to
    /// `to` when given.
    async fn referral(
        &self,
        enrolment: i64,
        patient: &str,
        from: &str,
        kind: &str,
        to: Option<&str>,
    ) -> i64 {
        let key = format!("test:referral:{enrolment}:{from}:{kind}:{to:?}");
        self.pool
            .exec(
                "INSERT INTO referrals (dedupe_key, enrolment_id, patient_id, direction, to_kind, from_institution, to_institution, status, requested_at, accept_by) \
                 VALUES ($1, $2, $3, 'down', $4, $5, $6, 'requested', $7, $8)",
                vec![
                    Arg::T(key.clone()),
                    Arg::I(enrolment),
                    Arg::T(patient.into()),
                    Arg::T(kind.into()),
                    Arg::T(from.into()),
                    Arg::OptT(to.map(str::to_string)),
                    Arg::I(now().as_second()),
                    Arg::I(now().as_second() + 86_400),
                ],
            )
            .await
            .expect("referral");
        scalar(
            &self.pool,
            &format!("SELECT id FROM referrals WHERE dedupe_key = '{key}'"),
        )
        .await
    }

    async fn listed(&self, who: &Caller) -> Vec<i64> {
        queries::referrals(&self.pool, who, None)
            .await
            .expect("list")
            .iter()
            .map(|r| r.id)
            .collect()
    }

    async fn decide(&self, who: &Caller, referral: i64, decision: &str) -> store::Result<()> {
        queries::decide_referral(
            &self.pool,
            who,
            referral,
            decision,
            Some("test"),
            "test",
            now(),
        )
        .await
        .map(|_| ())
    }

    async fn act(&self, who: &Caller, task: i64, action: TaskAction<'_>) -> store::Result<()> {
        queries::act_on_task(&self.pool, &self.programs, who, task, action, "test", now())
            .await
            .map(|_| ())
    }

    async fn audited(&self, target: &str, outcome: &str) -> i64 {
        scalar(
            &self.pool,
            &format!(
                "SELECT COUNT(*) FROM audit_log WHERE target = '{target}' AND outcome = '{outcome}'"
            ),
        )
        .await
    }
}

#[tokio::test]
async fn referrals_stay_in_their_alliance_and_go_only_where_addressed() {
    for b in support::backends() {
        let w = world(&b).await;
        let name = b.name();
        let e = w.enrol("p-down", "lead").await;
        let open = w
            .referral(e, "p-down", "lead", "community_clinic", None)
            .await;
        let named = w
            .referral(e, "p-down", "lead", "township_hospital", Some("clinic_b"))
            .await;
        let north = caller("north_clinic", "case_manager");
        let clinic_a = caller("clinic_a", "case_manager");
        let clinic_b = caller("clinic_b", "case_manager");

        // Another alliance's clinic of the right kind sees nothing and can decide nothing.
        assert!(w.listed(&north).await.is_empty(), "{name}");
        for (r, d) in [(open, "accept"), (open, "reject"), (named, "accept")] {
            let err = w.decide(&north, r, d).await.expect_err("refused");
            assert!(matches!(err, StoreError::NotFound(_)), "{name}: {err}");
        }
        assert_eq!(
            w.audited(&format!("referral/{open}"), "not_found").await,
            2,
            "{name}: each refused probe is audited"
        );
        assert!(
            !queries::patient_visible(&w.pool, &north, "p-down")
                .await
                .expect("visible"),
            "{name}"
        );

        // A named referral is for its target alone.
        assert_eq!(w.listed(&clinic_a).await, vec![open], "{name}");
        assert!(
            w.decide(&clinic_a, named, "accept").await.is_err(),
            "{name}"
        );
        assert_eq!(w.listed(&clinic_b).await, vec![named], "{name}");

        // The addressed clinic of the same alliance accepts; from then on it sees the patient.
        w.decide(&clinic_a, open, "accept").await.expect("accept");
        assert!(
            queries::patient_visible(&w.pool, &clinic_a, "p-down")
                .await
                .expect("visible"),
            "{name}"
        );
        // The sender lists what it sent; the other alliance still sees nothing.
        let sent = w.listed(&caller("lead", "case_manager")).await;
        assert!(sent.contains(&open) && sent.contains(&named), "{name}");
        assert!(w.listed(&north).await.is_empty(), "{name}");
        // Only the receiving institution confirms arrival.
        assert!(w.decide(&clinic_b, open, "arrive").await.is_err(), "{name}");
        w.decide(&clinic_a, open, "arrive").await.expect("arrive");

        // An upward referral produced by the pathway at a clinic goes to its own lead only.
        let up = w.enrol("p-up", "clinic_a").await;
        let decision = w.task(up, "decision").await;
        w.act(
            &caller("clinic_a", "doctor"),
            decision,
            TaskAction::Complete {
                outcome: "refer_up",
            },
        )
        .await
        .expect("complete");
        carepath_engine::scheduler::advance(&w.pool, &w.programs, up, now())
            .await
            .expect("advance");
        let referral = scalar(
            &w.pool,
            &format!("SELECT id FROM referrals WHERE enrolment_id = {up}"),
        )
        .await;
        let north_lead = caller("north_lead", "doctor");
        assert!(!w.listed(&north_lead).await.contains(&referral), "{name}");
        assert!(w.decide(&north_lead, referral, "accept").await.is_err());
        assert!(
            w.listed(&caller("lead", "doctor"))
                .await
                .contains(&referral),
            "{name}"
        );
        w.decide(&caller("lead", "doctor"), referral, "accept")
            .await
            .expect("the lead accepts");
        w.pool.close().await;
    }
}

/// Runs `n` copies of one action at once, each as a different staff member of `inst` holding
/// `role`; returns how many succeeded and how many were conflicts.
async fn race(
    w: &World,
    inst: &str,
    role: &str,
    task: i64,
    complete: bool,
    n: usize,
) -> (usize, usize) {
    let mut handles = Vec::new();
    for i in 0..n {
        let (pool, programs) = (w.pool.clone(), w.programs.clone());
        let who = Caller {
            staff_id: format!("{inst}.{role}.{i}"),
            institution_id: inst.into(),
            roles: vec![role.into()],
        };
        handles.push(tokio::spawn(async move {
            let action = if complete {
                TaskAction::Complete {
                    outcome: if i % 2 == 0 {
                        "refer_up"
                    } else {
                        "manage_locally"
                    },
                }
            } else {
                TaskAction::Claim { lease_seconds: 600 }
            };
            queries::act_on_task(&pool, &programs, &who, task, action, "test", now()).await
        }));
    }
    let (mut ok, mut conflicts) = (0, 0);
    for h in handles {
        match h.await.expect("join") {
            Ok(_) => ok += 1,
            Err(StoreError::Conflict(_)) => conflicts += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    (ok, conflicts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_eight_concurrent_actions_on_a_task_exactly_one_wins() {
    for b in support::backends() {
        let w = world(&b).await;
        let name = b.name();
        for round in 0..3 {
            let e = w.enrol(&format!("p-race-{round}"), "lead").await;
            let task = w.task(e, "decision").await;
            assert_eq!(
                race(&w, "lead", "doctor", task, false, 8).await,
                (1, 7),
                "{name}: claims"
            );
            // Release the lease so that every completer may try.
            w.pool
                .exec(
                    "UPDATE tasks SET lease_until = 0 WHERE id = $1",
                    vec![Arg::I(task)],
                )
                .await
                .expect("release");
            assert_eq!(
                race(&w, "lead", "doctor", task, true, 8).await,
                (1, 7),
                "{name}: completions"
            );
            let t = format!("task/{task}");
            assert_eq!(
                w.audited(&t, "ok").await,
                2,
                "{name}: one claim, one completion"
            );
            assert_eq!(w.audited(&t, "conflict").await, 14, "{name}");
            assert_eq!(
                scalar(&w.pool, &format!(
                    "SELECT COUNT(*) FROM record WHERE enrolment_id = {e} AND kind = 'task_done'"
                ))
                .await,
                1,
                "{name}"
            );
            assert_eq!(
                scalar(&w.pool, &format!(
                    "SELECT COUNT(*) FROM events WHERE enrolment_id = {e} AND name = 'task_done:decision'"
                ))
                .await,
                1,
                "{name}"
            );
            // The stored outcome is the one the pathway acts on.
            let rows = support::rows(
                &w.pool,
                &format!(
                    "SELECT t.outcome, e.payload FROM tasks t JOIN events e ON e.enrolment_id = t.enrolment_id \
                     WHERE t.id = {task} AND e.name = 'task_done:decision'"
                ),
                2,
            )
            .await;
            let (stored, payload) = rows[0].split_once('|').expect("two columns");
            assert!(payload.contains(stored), "{name}: {stored} vs {payload}");
        }
        w.pool.close().await;
    }
}

#[tokio::test]
async fn tasks_are_acted_on_by_their_roles_with_their_declared_outcomes() {
    for b in support::backends() {
        let w = world(&b).await;
        let name = b.name();
        let e = w.enrol("p-roles", "lead").await;
        let decision = w.task(e, "decision").await;
        let call = w.task(e, "call").await;
        let done = || TaskAction::Complete { outcome: "done" };

        // A therapist may neither complete the doctor's task nor read the doctors' board.
        let rehab = caller("lead", "rehab_therapist");
        let err = w.act(&rehab, decision, done()).await.expect_err("refused");
        assert!(matches!(err, StoreError::Forbidden(_)), "{name}: {err}");
        assert_eq!(w.audited(&format!("task/{decision}"), "denied").await, 1);
        let doctors = QueueFilter {
            role: Some("doctor".into()),
            limit: 50,
            ..Default::default()
        };
        let err = queries::queue(&w.pool, &w.programs, &rehab, &doctors)
            .await
            .expect_err("not their board");
        assert!(matches!(err, StoreError::Forbidden(_)), "{name}");
        // Without a role, a board holds only the caller's own roles' tasks.
        let all = QueueFilter {
            limit: 50,
            ..Default::default()
        };
        let mine = queries::queue(&w.pool, &w.programs, &caller("lead", "case_manager"), &all)
            .await
            .expect("queue");
        assert!(mine.iter().all(|t| t.role == "case_manager"), "{name}");
        assert!(mine.iter().any(|t| t.id == call), "{name}");
        // The head nurse supervises the doctors' triage task: she sees the board and may act.
        let head = caller("lead", "head_nurse");
        let board = queries::queue(&w.pool, &w.programs, &head, &doctors)
            .await
            .expect("supervised board");
        assert!(board.iter().any(|t| t.id == decision), "{name}");

        // Reassignment goes to staff holding the task's role, never to a device gateway.
        let doctor = caller("lead", "doctor");
        for to in [
            "lead.device_gateway",
            "lead.rehab_therapist",
            "clinic_a.doctor",
        ] {
            let err = w
                .act(&doctor, decision, TaskAction::Reassign { assignee: to })
                .await
                .expect_err("refused");
            assert!(matches!(err, StoreError::Invalid(_)), "{name} {to}: {err}");
        }
        w.act(
            &doctor,
            decision,
            TaskAction::Reassign {
                assignee: "lead.head_nurse",
            },
        )
        .await
        .expect("to the escalation role");

        // Outcomes are the task's own: the default set is refused where the pathway declared one.
        let err = w.act(&doctor, decision, done()).await.expect_err("refused");
        assert!(
            matches!(&err, StoreError::Invalid(m) if m.contains("refer_up, manage_locally")),
            "{name}: {err}"
        );
        assert_eq!(w.audited(&format!("task/{decision}"), "invalid").await, 4);
        w.act(
            &head,
            decision,
            TaskAction::Complete {
                outcome: "manage_locally",
            },
        )
        .await
        .expect("a declared outcome");
        let err = w
            .act(
                &caller("lead", "case_manager"),
                call,
                TaskAction::Complete {
                    outcome: "refer_up",
                },
            )
            .await
            .expect_err("not a default outcome");
        assert!(matches!(err, StoreError::Invalid(_)), "{name}");
        w.act(
            &caller("lead", "case_manager"),
            call,
            TaskAction::Complete { outcome: "reached" },
        )
        .await
        .expect("a default outcome");
        carepath_engine::scheduler::advance(&w.pool, &w.programs, e, now())
            .await
            .expect("advance");
        let state = support::rows(
            &w.pool,
            &format!("SELECT state FROM enrolments WHERE id = {e}"),
            1,
        )
        .await;
        assert_eq!(state, vec!["local".to_string()], "{name}");
        w.pool.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_eight_concurrent_decisions_on_a_referral_exactly_one_wins() {
    for b in support::backends() {
        let w = world(&b).await;
        let e = w.enrol("p-ref-race", "lead").await;
        let r = w
            .referral(e, "p-ref-race", "lead", "community_clinic", None)
            .await;
        let mut handles = Vec::new();
        for i in 0..8 {
            let pool = w.pool.clone();
            // clinic_b is a township hospital, not addressed: it can never win.
            let who = if i % 4 == 1 {
                caller("clinic_b", "case_manager")
            } else {
                Caller {
                    staff_id: format!("clinic_a.cm{i}"),
                    ..caller("clinic_a", "case_manager")
                }
            };
            let decision = if i % 3 == 0 { "reject" } else { "accept" };
            handles.push(tokio::spawn(async move {
                queries::decide_referral(&pool, &who, r, decision, Some("full"), "test", now())
                    .await
            }));
        }
        let mut ok = 0;
        for h in handles {
            match h.await.expect("join") {
                Ok(_) => ok += 1,
                Err(StoreError::Conflict(_) | StoreError::NotFound(_)) => {}
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert_eq!(ok, 1, "{}", b.name());
        assert_eq!(
            w.audited(&format!("referral/{r}"), "ok").await,
            1,
            "{}",
            b.name()
        );
        assert_eq!(
            scalar(
                &w.pool,
                &format!("SELECT COUNT(*) FROM events WHERE enrolment_id = {e} AND name LIKE 'referral_%'")
            )
            .await,
            1,
            "{}",
            b.name()
        );
        w.pool.close().await;
    }
}

/// In the demo alliance every board of the real pathways has someone allowed to work it, at every
/// institution: roles are enforced, so a role without staff would leave its tasks undone.
#[tokio::test]
async fn every_board_of_the_real_pathways_has_staff_in_the_demo() {
    let Some(dir) = support::real_pathways() else {
        support::loud("SKIPPED: the real pathways are not beside the tests");
        return;
    };
    let b = support::sqlite();
    let (pool, programs) = support::open_store(&b.url, &dir, now()).await;
    let staff = carepath_engine::seed::demo_staff(&pool)
        .await
        .expect("staff");
    let roles: Vec<String> = programs
        .latest()
        .iter()
        .flat_map(|p| {
            p.pathway
                .task_specs()
                .map(|t| t.role.clone())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(roles.len() > 10, "{roles:?}");
    for inst in ["lead", "clinic_a", "clinic_b"] {
        for role in &roles {
            let worked = staff.iter().any(|(_, i, r, _)| {
                i == inst && programs.boards_for(std::slice::from_ref(r)).contains(role)
            });
            assert!(worked, "nobody at {inst} may work the {role} board");
        }
    }
    pool.close().await;
}
