//! A pathway written in working days, validated and stepped: the fixture
//! `dsl/tests/fixtures/good/working_days.yaml` through the real step, in the national calendar and
//! in an institution's, and across the end of the calendar's years.

use std::collections::BTreeMap;
use std::sync::Arc;

use carepath_dsl::FsLoader;
use jiff::Timestamp;

use crate::calendar::{Calendar, Day, Overrides};
use crate::facts::PatientFacts;
use crate::sandbox::{self, CompiledExprs};
use crate::step::{self, Outcome, Produced, Program};
use crate::time;

const FIXTURE: &str = include_str!("../../dsl/tests/fixtures/good/working_days.yaml");

fn program() -> Program {
    let compiled = carepath_dsl::compile_yaml(
        "working_days.yaml",
        FIXTURE.as_bytes(),
        std::path::Path::new("."),
        &FsLoader,
    );
    assert!(
        compiled.diagnostics.is_empty(),
        "{:?}",
        compiled.diagnostics
    );
    let pathway = compiled.into_pathway().expect("the fixture validates");
    let exprs = CompiledExprs::compile(Arc::new(sandbox::engine()), &pathway).expect("compiles");
    Program { pathway, exprs }
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn enrol(prog: &Program, at: &str) -> Result<Outcome, step::StepError> {
    step::enrol(
        prog,
        1,
        "discharge",
        "Asia/Shanghai",
        &PatientFacts::default(),
        &[],
        ts(at),
    )
}

/// The call task's due time and the message's send time.
fn due_and_send(out: &Outcome) -> (Timestamp, Timestamp) {
    let mut due = None;
    let mut send = None;
    for e in &out.actions {
        match &e.action {
            Produced::Task { due_at, .. } => due = Some(*due_at),
            Produced::FollowUp { send_at, .. } => send = Some(*send_at),
            _ => {}
        }
    }
    (due.expect("a task"), send.expect("a follow-up"))
}

#[test]
fn deadlines_in_working_days_cross_spring_festival_2026() {
    let prog = program();
    // Friday 13 February 2026, 10:00 in Shanghai. Saturday the 14th is worked (调休); 15–23
    // February are off; the 24th is the next working day.
    let out = enrol(&prog, "2026-02-13T02:00:00Z").unwrap();
    let (due, send) = due_and_send(&out);
    assert_eq!(due, ts("2026-02-24T02:00:00Z"), "2 working days, 10:00");
    assert_eq!(send, ts("2026-02-14T01:00:00Z"), "1 working day, at 09:00");
    // The review timer: 14, 24, 25, 26 and 27 February.
    assert_eq!(out.next_wake, Some(ts("2026-02-27T02:00:00Z")));

    let waiting = step::step(
        &prog,
        &out.enrolment,
        &PatientFacts::default(),
        &[],
        ts("2026-02-27T01:59:59Z"),
    )
    .unwrap();
    assert_eq!(waiting.enrolment.state, "at_home");
    let moved = step::step(
        &prog,
        &out.enrolment,
        &PatientFacts::default(),
        &[],
        ts("2026-02-27T02:00:00Z"),
    )
    .unwrap();
    assert_eq!(moved.enrolment.state, "review");
    assert_eq!(moved.transitions[0].because, "after 5 working days");
}

#[test]
fn an_institution_closure_moves_the_deadlines_inside_its_scope() {
    let prog = program();
    let mut days = BTreeMap::new();
    days.insert(
        jiff::civil::date(2026, 2, 24),
        Day {
            working: false,
            reason: Some("院内停诊".into()),
        },
    );
    let closed = Calendar::national()
        .unwrap()
        .with_overrides(Overrides { days, hours: None });
    let out = time::with_calendar(&closed, || enrol(&prog, "2026-02-13T02:00:00Z")).unwrap();
    let (due, _) = due_and_send(&out);
    assert_eq!(due, ts("2026-02-25T02:00:00Z"));
    // The review timer: 14, 25, 26 and 27 February, then Saturday the 28th (worked, 调休).
    assert_eq!(out.next_wake, Some(ts("2026-02-28T02:00:00Z")));
}

#[test]
fn a_deadline_past_the_calendars_years_fails_the_step_naming_the_year() {
    let prog = program();
    // Monday 27 December 2027: the fifth working day after it falls in 2028, which has no file.
    let err = enrol(&prog, "2027-12-27T02:00:00Z").unwrap_err();
    assert_eq!(err.state, "at_home");
    assert!(err.message.contains("2028"), "{}", err.message);
}
