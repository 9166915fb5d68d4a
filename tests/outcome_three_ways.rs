//! The outcome policy seen three ways: for generated pathways and patients, the real store,
//! `carepath test` and the simulator's patient must make the same tasks, follow-ups and scale
//! pushes from the same inputs, and end the same ones — born ended or ended later — with the same
//! due times. Each pathway is small (2–5 states, on-enter work, `cancel` actions naming earlier
//! work, immediate, event and timer transitions, withdrawals some states route, one terminal
//! state that may keep open tasks) and validated by the real validator first; the inputs are an
//! entry point and points in time at which the patient is stepped, some bringing an event, some a
//! withdrawal (in the store, `store::withdraw`; in `carepath test`, the `withdraw` given).
//!
//! All three step at exactly the same instants (before and after each point's event), so a
//! difference can only come from how a sink carries the policy out.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use carepath_engine::outcome::{Fate, Made};
use carepath_engine::pathway_test;
use carepath_engine::store;
use jiff::{SignedDuration, Timestamp};

use crate::support;

const CASES: u64 = 24;
const START: &str = "2026-03-02T08:00:00+08:00";
const TZ: &str = "Asia/Shanghai";
const EVENTS: [&str; 3] = ["ev_a", "ev_b", "ev_c"];
const WITHDRAWN: &str = carepath_dsl::catalog::WITHDRAWN;

/// A small deterministic generator (SplitMix64): the same pathways on every run.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One generated patient: a pathway, an entry point, and points (hours after the start, with an
/// event or none).
struct Generated {
    id: String,
    yaml: String,
    entry: &'static str,
    points: Vec<(i64, Option<&'static str>)>,
}

fn generate(g: &mut Gen, n: u64) -> Generated {
    let id = format!("gen_{n}");
    let states = 2 + g.below(4) as usize;
    // The work of each state first, so a `cancel` may name any of it.
    let mut work: Vec<Vec<String>> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    for i in 0..states {
        let mut actions = Vec::new();
        for k in 0..g.below(4) {
            actions.push(match g.below(3) {
                0 => {
                    let keep = if g.chance(30) { ", keep: true" } else { "" };
                    ids.push(format!("t{i}_{k}"));
                    format!(
                        "task: {{ id: t{i}_{k}, role: case_manager, title: {{ zh: 任务, en: Task }}, due: {}h{keep} }}",
                        1 + g.below(72)
                    )
                }
                1 => {
                    ids.push(format!("f{i}_{k}"));
                    format!(
                        "follow_up: {{ id: f{i}_{k}, channels: [sms], template: f{i}_{k}, after: {}d, at: \"09:00\" }}",
                        g.below(4)
                    )
                }
                _ => {
                    let scale = ["phq9", "gad7", "epds"][g.below(3) as usize];
                    ids.push(format!("s{i}_{k}"));
                    format!(
                        "scale: {{ id: s{i}_{k}, scale: {scale}, due: {}d }}",
                        1 + g.below(3)
                    )
                }
            });
        }
        work.push(actions);
    }
    for actions in work.iter_mut() {
        if !ids.is_empty() && g.chance(40) {
            let at = g.below(actions.len() as u64 + 1) as usize;
            actions.insert(
                at,
                format!("cancel: {}", ids[g.below(ids.len() as u64) as usize]),
            );
        }
    }
    let mut y = String::new();
    let _ = write!(
        y,
        "pathway: {id}\nversion: 1\ntitle: {{ zh: 生成, en: Generated }}\nowner_role: case_manager\n\
         roles: [case_manager]\nvariables:\n  flag: {{ type: bool, default: false }}\n\
         entry_points:\n  - {{ id: start, state: s0 }}\n  - {{ id: flagged, state: s0, set: {{ flag: true }} }}\nstates:\n"
    );
    for (i, actions) in work.iter().enumerate() {
        let terminal = i + 1 == states;
        let _ = write!(
            y,
            "  - id: s{i}\n    phase: {}\n",
            if terminal { "closed" } else { "follow_up" }
        );
        if !actions.is_empty() {
            y.push_str("    on_enter:\n");
        }
        for a in actions {
            let _ = writeln!(y, "      - {a}");
        }
        if terminal {
            y.push_str("    terminal: true\n");
            if g.chance(40) {
                y.push_str("    keep_open_tasks: true\n");
            }
            continue;
        }
        y.push_str("    transitions:\n");
        // A withdrawal this state routes goes to the terminal state, whose work is its closing
        // work; elsewhere it ends the enrolment where it stands.
        if g.chance(40) {
            let _ = writeln!(y, "      - on: withdrawn\n        to: s{}", states - 1);
        }
        // An immediate transition only forward, so there is no immediate cycle.
        if g.chance(40) {
            let to = i + 1 + g.below((states - i - 1) as u64) as usize;
            let guard = if g.chance(50) { "flag" } else { "!flag" };
            let _ = writeln!(y, "      - when: '{guard}'\n        to: s{to}");
        }
        for _ in 0..g.below(3) {
            let ev = EVENTS[g.below(3) as usize];
            let to = g.below(states as u64);
            let _ = writeln!(y, "      - on: {ev}\n        to: s{to}");
        }
        if g.chance(30) {
            let to = g.below(states as u64);
            let _ = writeln!(y, "      - after: {}h\n        to: s{to}", 1 + g.below(48));
        }
        // Every state leads on, so the terminal state is reachable from everywhere.
        let _ = writeln!(
            y,
            "      - after: {}d\n        to: s{}",
            1 + g.below(5),
            i + 1
        );
    }
    // The pathway's own events, declared as the validator requires: every event a patient may be
    // given, waited for or not, since production records only declared events.
    let _ = writeln!(y, "events: [{}]", EVENTS.join(", "));
    let entry = if g.chance(50) { "start" } else { "flagged" };
    let mut points: Vec<(i64, Option<&'static str>)> = (0..2 + g.below(8))
        .map(|_| {
            let at = g.below(24 * 20) as i64;
            let ev = match g.below(10) {
                0 => Some(WITHDRAWN),
                1..=5 => Some(EVENTS[g.below(3) as usize]),
                _ => None,
            };
            (at, ev)
        })
        .collect();
    points.sort();
    points.dedup_by_key(|(at, _)| *at);
    Generated {
        id,
        yaml: y,
        entry,
        points,
    }
}

fn start() -> Timestamp {
    START.parse().expect("start")
}

fn instant(hours: i64) -> Timestamp {
    start() + SignedDuration::from_hours(hours)
}

/// The work as compared: keyed by state-entry sequence and action index (the enrolment id differs
/// between the three), with kind, fate and due time.
type Work = BTreeMap<String, (&'static str, Fate, Timestamp)>;

fn keyed(made: &[Made]) -> Work {
    made.iter()
        .map(|m| {
            let key = m.key.split_once(':').map_or(m.key.as_str(), |(_, k)| k);
            (key.to_string(), (m.kind, m.fate, m.due_at))
        })
        .collect()
}

/// `carepath test`'s runner on a case with the generated inputs (points without an event are
/// expectations that check nothing, so the runner steps there too). Production refuses an event
/// for an enrolment that has ended, and so does the runner; such an event changes nothing in the
/// store or the simulator, so there the runner is only stepped.
fn by_carepath_test(prog: &carepath_engine::Program, case: &Generated) -> Work {
    let play = |points: &[(i64, Option<&str>)]| {
        let mut given = Vec::new();
        let mut expect = Vec::new();
        for (at, ev) in points {
            match ev {
                Some(ev) if *ev == WITHDRAWN => given
                    .push(serde_json::json!({ "at": format!("{at}h"), "withdraw": "generated" })),
                Some(ev) => given.push(serde_json::json!({ "at": format!("{at}h"), "event": ev })),
                None => expect.push(serde_json::json!({ "at": format!("{at}h") })),
            }
        }
        let test_case: pathway_test::Case = serde_json::from_value(serde_json::json!({
            "name": "generated",
            "entry": case.entry,
            "patient": { "tz": TZ },
            "start": START,
            "given": given,
            "expect": expect,
        }))
        .expect("a valid case");
        (
            pathway_test::play_case(prog, &test_case),
            pathway_test::work_of_case(prog, &test_case),
        )
    };
    let points: Vec<(i64, Option<&str>)> = case.points.clone();
    let (played, _) = play(&points);
    // Where the enrolment ended, and whether it ended before the events of that instant.
    let ended = played
        .steps
        .iter()
        .find(|s| s.status != carepath_engine::Status::Active)
        .map(|s| (s.at, !matches!(s.what, pathway_test::What::Given(_))));
    let points: Vec<(i64, Option<&str>)> = points
        .into_iter()
        .map(|(at, ev)| {
            let refused = ended.is_some_and(|(end, before_events)| {
                instant(at) > end || (instant(at) == end && before_events)
            });
            (at, if refused { None } else { ev })
        })
        .collect();
    let made = play(&points)
        .1
        .unwrap_or_else(|e| panic!("carepath test could not play:\n{}\n{e:?}", case.yaml));
    keyed(&made)
}

fn by_simulator(prog: &std::sync::Arc<carepath_engine::Program>, case: &Generated) -> Work {
    let points: Vec<(Timestamp, Option<String>)> = case
        .points
        .iter()
        .map(|(at, ev)| (instant(*at), ev.map(str::to_string)))
        .collect();
    let made = carepath_simulator::replay(prog.clone(), case.entry, TZ, start(), &points)
        .unwrap_or_else(|e| panic!("the simulator could not replay:\n{}\n{e}", case.yaml));
    keyed(&made)
}

/// The store's rows of one enrolment: kind, status, due time, keyed by dedupe key.
async fn stored(pool: &store::Pool, enrolment: i64) -> BTreeMap<String, (&'static str, bool, i64)> {
    let mut out = BTreeMap::new();
    for (table, kind, live, due) in [
        ("tasks", "task", "open", "due_at"),
        ("follow_ups", "follow_up", "scheduled", "send_at"),
        ("scale_pushes", "scale_push", "pending", "due_at"),
    ] {
        let rows = pool
            .fetch(
                &format!(
                    "SELECT dedupe_key, status, {due} FROM {table} WHERE enrolment_id = {enrolment}"
                ),
                vec![],
            )
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"));
        for r in rows {
            let status = r.opt_text(1).unwrap_or_default();
            assert!(
                status == live || status == "cancelled",
                "{kind} {} has status {status}",
                r.opt_text(0).unwrap_or_default()
            );
            out.insert(
                r.opt_text(0).unwrap_or_default(),
                (kind, status == live, r.i64(2)),
            );
        }
    }
    out
}

/// The store after every step: a row first seen cancelled was born ended; one seen open and later
/// cancelled ended later.
async fn by_store(
    pool: &store::Pool,
    programs: &carepath_engine::Programs,
    patient: &str,
    case: &Generated,
) -> Work {
    let (enrolment, _) = store::enrol(pool, programs, patient, &case.id, None, case.entry, start())
        .await
        .expect("enrol");
    let mut seen: BTreeMap<String, (&'static str, Fate, i64)> = BTreeMap::new();
    let look = async |seen: &mut BTreeMap<String, (&'static str, Fate, i64)>| {
        for (key, (kind, live, due)) in stored(pool, enrolment).await {
            let e = seen.entry(key).or_insert((
                kind,
                if live { Fate::Live } else { Fate::BornEnded },
                due,
            ));
            if !live && e.1 == Fate::Live {
                e.1 = Fate::EndedLater;
            }
        }
    };
    look(&mut seen).await;
    for (at, ev) in &case.points {
        let t = instant(*at);
        carepath_engine::scheduler::advance(pool, programs, enrolment, t)
            .await
            .expect("advance");
        look(&mut seen).await;
        if *ev == Some(WITHDRAWN) {
            // Refused once the enrolment has ended; then nothing changes, as elsewhere.
            match store::withdraw(pool, programs, enrolment, "generated", t).await {
                Ok(_) | Err(store::StoreError::Conflict(_)) => {}
                Err(e) => panic!("withdraw: {e}"),
            }
            look(&mut seen).await;
        } else if let Some(ev) = ev {
            let mut tx = pool.begin().await.expect("begin");
            store::add_events(
                &mut tx,
                &[store::NewEvent {
                    enrolment,
                    name: ev.to_string(),
                    at: t,
                    payload: None,
                    source_key: None,
                    created_at: t,
                }],
            )
            .await
            .expect("event");
            tx.commit().await.expect("commit");
            carepath_engine::scheduler::advance(pool, programs, enrolment, t)
                .await
                .expect("advance");
            look(&mut seen).await;
        }
    }
    seen.into_iter()
        .map(|(key, (kind, fate, due))| {
            let key = key
                .split_once(':')
                .map_or(key.clone(), |(_, k)| k.to_string());
            let due = Timestamp::from_second(due).expect("a stored instant");
            (key, (kind, fate, due))
        })
        .collect()
}

/// The first item on which two accounts differ, described.
fn first_difference(a_name: &str, a: &Work, b_name: &str, b: &Work) -> Option<String> {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter().find_map(|k| {
        let (x, y) = (a.get(k), b.get(k));
        (x != y).then(|| format!("item {k}: {a_name} says {x:?}, {b_name} says {y:?}"))
    })
}

fn describe_inputs(case: &Generated) -> String {
    let points: Vec<String> = case
        .points
        .iter()
        .map(|(at, ev)| format!("{at}h{}", ev.map(|e| format!(" {e}")).unwrap_or_default()))
        .collect();
    format!(
        "entry `{}` at {START}, stepped at [{}]",
        case.entry,
        points.join(", ")
    )
}

#[tokio::test]
async fn the_store_carepath_test_and_the_simulator_make_and_end_the_same_work() {
    let mut g = Gen(0x0C0F_FEE5_EED5);
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    for n in 0..CASES {
        let case = generate(&mut g, n);
        let compiled = carepath_dsl::compile_yaml(
            &format!("{}.yaml", case.id),
            case.yaml.as_bytes(),
            Path::new("."),
            &carepath_dsl::FsLoader,
        );
        match carepath_engine::program::into_pathway(compiled) {
            Ok(_) => accepted.push(case),
            Err(e) => rejected.push(format!("{}: {e}", case.yaml)),
        }
    }
    assert!(
        rejected.len() * 4 <= CASES as usize,
        "the validator rejected {} of {CASES} generated pathways, e.g.\n{}",
        rejected.len(),
        rejected.first().map(String::as_str).unwrap_or("")
    );
    let files: Vec<(String, String)> = accepted
        .iter()
        .map(|case| (format!("{}.yaml", case.id), case.yaml.clone()))
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, y)| (n.as_str(), y.as_str()))
        .collect();
    let dir = support::pathway_dir(&refs);
    let mut compared = 0;
    let (mut born_ended, mut ended_later, mut pushes_ended, mut withdrawn) = (0, 0, 0, 0);
    for b in support::backends() {
        let now = support::ts("2026-03-01T00:00:00Z");
        let (pool, programs) = support::open_store(&b.url, dir.path(), now).await;
        for case in &accepted {
            let prog = programs.get(&case.id, 1).expect("published").clone();
            let patient = format!("p-{}", case.id);
            support::add_patient(&pool, &patient, now).await;
            let store_work = by_store(&pool, &programs, &patient, case).await;
            let test_work = by_carepath_test(&prog, case);
            let sim_work = by_simulator(&prog, case);
            let store_name = format!("the store ({})", b.name());
            for (name, other) in [("carepath test", &test_work), ("the simulator", &sim_work)] {
                if let Some(d) = first_difference(&store_name, &store_work, name, other) {
                    panic!(
                        "{d}\ninputs: {}\npathway:\n{}",
                        describe_inputs(case),
                        case.yaml
                    );
                }
            }
            compared += 1;
            born_ended += store_work
                .values()
                .filter(|w| w.1 == Fate::BornEnded)
                .count();
            ended_later += store_work
                .values()
                .filter(|w| w.1 == Fate::EndedLater)
                .count();
            // Only a `cancel` or a withdrawal ends a scale push that was sent.
            pushes_ended += store_work
                .values()
                .filter(|w| w.0 == "scale_push" && w.1 == Fate::EndedLater)
                .count();
            withdrawn += support::scalar(
                &pool,
                &format!("SELECT COUNT(*) FROM enrolments WHERE patient_id = '{patient}' AND status = 'withdrawn'"),
            )
            .await;
        }
        pool.close().await;
    }
    // The generated cases exercise both kinds of ending, or the comparison proves little.
    assert!(
        compared > 0 && born_ended > 0 && ended_later > 0 && pushes_ended > 0 && withdrawn > 0,
        "{compared} compared; {born_ended} items born ended, {ended_later} ended later, \
         {pushes_ended} scale pushes ended later, {withdrawn} enrolments withdrawn"
    );
}
