//! The demo's living history (`carepath demo`): a small cohort lives a few weeks through the
//! production store and scheduler, and the lead hospital's indicators, boards, referrals, alarms
//! and messages then look like a service at work — and the same seed lives the same history.

use std::collections::BTreeMap;
use std::path::Path;

use carepath_engine::store::{Pool, indicators};
use carepath_simulator::living::{self, Options, Summary};
use jiff::Timestamp;

use crate::support::{self, backends, open_store, rows};

const PATIENTS: u64 = 36;
const DAYS: u32 = 28;

fn options(seed: u64) -> Options {
    Options {
        patients: PATIENTS,
        days: DAYS,
        seed,
        end: jiff::civil::date(2026, 3, 2),
        tz: "Asia/Shanghai".into(),
        institutions: carepath_engine::seed::shares(),
        capacity: carepath_engine::seed::capacity(),
    }
}

/// The history's end: midnight of its last date in the hospital's zone.
fn end_of(o: &Options) -> i64 {
    o.end
        .to_zoned(jiff::tz::TimeZone::get(&o.tz).expect("zone"))
        .expect("midnight")
        .timestamp()
        .as_second()
}

/// Lives the history into a fresh store at `url`.
async fn live(url: &str, o: &Options) -> (Pool, carepath_engine::program::Programs, Summary) {
    let dir = support::real_pathways()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("pathways"));
    let start =
        Timestamp::from_second(end_of(o) - i64::from(o.days) * 86_400 - 86_400).expect("start");
    let (pool, programs) = open_store(url, &dir, start).await;
    let summary = living::live(&pool, &programs, o, carepath_engine::seed::home_of)
        .await
        .expect("the history is lived");
    (pool, programs, summary)
}

/// What the history left, counted by kind and status: equal for equal seeds.
async fn shape(pool: &Pool) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for (name, sql, columns) in [
        (
            "tasks",
            "SELECT institution_id, role, status, COALESCE(outcome, ''), CAST(COUNT(*) AS TEXT) FROM tasks GROUP BY institution_id, role, status, outcome ORDER BY 1, 2, 3, 4",
            5,
        ),
        (
            "enrolments",
            "SELECT pathway_id, state, status, CAST(COUNT(*) AS TEXT) FROM enrolments GROUP BY pathway_id, state, status ORDER BY 1, 2, 3",
            4,
        ),
        (
            "referrals",
            "SELECT direction, status, CAST(COUNT(*) AS TEXT) FROM referrals GROUP BY direction, status ORDER BY 1, 2",
            3,
        ),
        (
            "alarms",
            "SELECT alarm_id, status, CAST(COUNT(*) AS TEXT) FROM alarm_episodes GROUP BY alarm_id, status ORDER BY 1, 2",
            3,
        ),
        (
            "pushes",
            "SELECT scale, status, CAST(COUNT(*) AS TEXT) FROM scale_pushes GROUP BY scale, status ORDER BY 1, 2",
            3,
        ),
        (
            "outbox",
            "SELECT channel, status, CAST(COUNT(*) AS TEXT) FROM outbox GROUP BY channel, status ORDER BY 1, 2",
            3,
        ),
        (
            "readings",
            "SELECT CAST(COUNT(*) AS TEXT) FROM observations",
            1,
        ),
    ] {
        out.insert(name.to_string(), rows(pool, sql, columns).await);
    }
    out
}

async fn count(pool: &Pool, sql: &str) -> i64 {
    support::scalar(pool, sql).await
}

#[test]
fn the_demo_history_looks_like_a_service_at_work_and_repeats_for_a_seed() {
    support::runtime().block_on(async {
        for b in backends() {
            let o = options(1);
            let (pool, programs, summary) = live(&b.url, &o).await;
            let label = b.name();
            assert_eq!(summary.patients, PATIENTS, "{label}");
            assert!(summary.tasks_done > 0, "{label}: {summary:?}");

            // The lead hospital's indicators over the history's last four weeks.
            let end = end_of(&o);
            let latest = programs.latest();
            let pathways: Vec<&carepath_dsl::Pathway> = latest.iter().map(|p| &p.pathway).collect();
            let req = indicators::KpiRequest {
                scope: indicators::Scope {
                    institution: carepath_engine::seed::LEAD,
                    pathway: None,
                },
                period: indicators::Period {
                    from: end - 28 * 86_400,
                    to: end,
                    as_of: end,
                },
                by: None,
            };
            let kpis = indicators::kpis(&pool, &pathways, &req)
                .await
                .expect("kpis");
            let value = |name: &str| -> f64 {
                kpis["builtin"][name]["value"]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{label}: {name} has no value: {kpis}"))
            };
            for name in ["follow_up_rate", "on_time_task_rate", "scale_completion"] {
                let v = value(name);
                assert!(
                    v > 0.2 && v <= 1.0,
                    "{label}: {name} = {v} is not plausible: {kpis}"
                );
            }
            let overdue = value("overdue_rate");
            assert!(overdue < 0.5, "{label}: overdue rate {overdue}: {kpis}");
            // Work done late as well as on time, by the demo's staff, audited as themselves.
            let late = count(&pool, "SELECT COUNT(*) FROM tasks WHERE status = 'done' AND completed_at > due_at").await;
            let on_time = count(&pool, "SELECT COUNT(*) FROM tasks WHERE status = 'done' AND completed_at <= due_at").await;
            assert!(on_time > late && late > 0, "{label}: {on_time} on time, {late} late");
            assert_eq!(
                count(&pool, "SELECT COUNT(*) FROM tasks WHERE status = 'done' AND assignee NOT LIKE '%.%'").await,
                0,
                "{label}: a task done by someone not of the demo staff"
            );
            assert!(
                count(&pool, "SELECT COUNT(*) FROM audit_log WHERE actor = 'lead.case_manager' AND action = 'task.complete'").await > 0,
                "{label}: completions are audited as the staff member"
            );
            // What is still open at the lead hospital, a minority of it overdue.
            let boards = carepath_engine::store::stats::open_boards(
                &pool,
                Timestamp::from_second(end).expect("end"),
            )
            .await
            .expect("boards");
            let (open, overdue_now) = boards
                .iter()
                .filter(|b| b.institution_id == carepath_engine::seed::LEAD)
                .fold((0, 0), |(o, d), b| (o + b.open, d + b.overdue));
            assert!(overdue_now * 2 <= open, "{label}: {boards:?}");
            // Referrals decided, alarms acknowledged and resolved, messages sent.
            assert!(summary.referrals_accepted > 0, "{label}: {summary:?}");
            assert!(
                count(&pool, "SELECT COUNT(*) FROM referrals WHERE status IN ('accepted', 'arrived')").await > 0,
                "{label}"
            );
            assert!(
                count(&pool, "SELECT COUNT(*) FROM alarm_episodes WHERE acknowledged_at IS NOT NULL").await > 0,
                "{label}: {summary:?}"
            );
            assert!(
                count(&pool, "SELECT COUNT(*) FROM alarm_episodes WHERE status = 'resolved'").await > 0,
                "{label}: {summary:?}"
            );
            assert!(
                count(&pool, "SELECT COUNT(*) FROM outbox WHERE status = 'sent'").await > 0,
                "{label}: {summary:?}"
            );
            assert!(summary.answers > 0 && summary.readings > 0, "{label}: {summary:?}");

            // The same seed lives the same history.
            if b.name() == "sqlite" {
                let first = shape(&pool).await;
                let again = support::sqlite();
                let (pool2, _, summary2) = live(&again.url, &o).await;
                assert_eq!(summary, summary2, "{label}: the same seed, another history");
                assert_eq!(first, shape(&pool2).await, "{label}");
            }
        }
    });
}

/// `carepath demo` as it runs by default: every busy board ends its history with open work, some
/// of it overdue, and none flooded; the lead hospital's case manager's board is one of them.
#[test]
fn the_demo_ends_with_open_work_on_every_busy_board() {
    support::runtime().block_on(async {
        let o = Options::demo(
            living::DEMO_PATIENTS,
            living::DEMO_DAYS,
            jiff::civil::date(2026, 3, 2),
        );
        let b = support::sqlite();
        let (pool, _, _) = live(&b.url, &o).await;
        let end = end_of(&o);
        let boards = carepath_engine::store::stats::open_boards(
            &pool,
            Timestamp::from_second(end).expect("end"),
        )
        .await
        .expect("boards");
        let board = |inst: &str, role: &str| {
            boards
                .iter()
                .find(|b| b.institution_id == inst && b.role == role)
                .map_or((0, 0), |b| (b.open, b.overdue))
        };
        let (open, overdue) = board(carepath_engine::seed::LEAD, "case_manager");
        assert!(
            (3..=40).contains(&open) && overdue >= 1 && overdue < open,
            "the lead case manager's board: {open} open, {overdue} overdue: {boards:?}"
        );
        // Every board that got work every day of the last four weeks ends with some of it open and
        // none is flooded.
        let busy = rows(
            &pool,
            &format!(
                "SELECT institution_id, role FROM tasks WHERE created_at >= {} GROUP BY institution_id, role HAVING COUNT(*) >= 56",
                end - 28 * 86_400
            ),
            2,
        )
        .await;
        assert!(busy.len() >= 4, "{busy:?}");
        for b in &busy {
            let (inst, role) = b.split_once('|').expect("institution|role");
            let (open, overdue) = board(inst, role);
            assert!(
                (1..=40).contains(&open) && overdue <= open,
                "{inst} {role}: {open} open, {overdue} overdue: {boards:?}"
            );
        }
        assert!(
            boards.iter().all(|b| b.open <= 40),
            "a flooded board: {boards:?}"
        );
    });
}
