//! Working days end to end: a pathway written in working days, enrolled and stepped through the
//! store on every backend, each patient in their institution's calendar; and `carepath calendar`.

use carepath_engine::calendar::Overrides;
use carepath_engine::scheduler::{self, PassOptions};
use carepath_engine::store::{self, Pool};

use crate::support::{self, add_patient_at, carepath_ok, open_store, rows, ts};

const WORKING_DAYS: &str = include_str!("../dsl/tests/fixtures/good/working_days.yaml");

/// Friday 13 February 2026, 10:00 in Shanghai: Saturday the 14th is worked (调休), 15–23
/// February are Spring Festival, the 24th is the next working day.
const ENROLLED: &str = "2026-02-13T02:00:00Z";

/// The lead hospital closes on the first working day after the festival.
const LEAD_CALENDAR: &str =
    "institutions:\n  lead:\n    closed:\n      - { date: 2026-02-24, reason: 院内停诊 }\n";

async fn task_due(pool: &Pool, patient: &str) -> Vec<String> {
    rows(
        pool,
        &format!("SELECT task_ref, CAST(due_at AS TEXT) FROM tasks WHERE patient_id = '{patient}'"),
        2,
    )
    .await
}

async fn state_of(pool: &Pool, patient: &str) -> Vec<String> {
    rows(
        pool,
        &format!("SELECT state FROM enrolments WHERE patient_id = '{patient}'"),
        1,
    )
    .await
}

#[tokio::test]
async fn working_days_count_in_each_patients_institution_calendar() {
    for b in support::backends() {
        let name = b.name();
        let dir = support::pathway_dir(&[("working_days.yaml", WORKING_DAYS)]);
        let (pool, programs) = open_store(&b.url, dir.path(), ts(ENROLLED)).await;
        let lead = Overrides::from_yaml("lead.yaml", LEAD_CALENDAR).expect("calendar file");
        let mut tx = pool.begin().await.expect("begin");
        store::calendars::replace(&mut tx, "lead", &lead["lead"])
            .await
            .expect("store the lead hospital's calendar");
        tx.commit().await.expect("commit");

        add_patient_at(&pool, "p_lead", "lead", ts(ENROLLED)).await;
        add_patient_at(&pool, "p_clinic", "clinic_a", ts(ENROLLED)).await;
        for p in ["p_lead", "p_clinic"] {
            store::enrol(
                &pool,
                &programs,
                p,
                "working_days",
                None,
                "discharge",
                ts(ENROLLED),
            )
            .await
            .expect("enrol");
        }
        // 2 working days: the clinic counts 14 and 24 February; the lead hospital, closed on the
        // 24th, counts 14 and 25 February.
        let at = |s: &str| ts(s).as_second().to_string();
        assert_eq!(
            task_due(&pool, "p_clinic").await,
            [format!("first_call|{}", at("2026-02-24T02:00:00Z"))],
            "{name}"
        );
        assert_eq!(
            task_due(&pool, "p_lead").await,
            [format!("first_call|{}", at("2026-02-25T02:00:00Z"))],
            "{name}"
        );

        // After 5 working days the review starts: 27 February at the clinic, 28 February (a
        // worked Saturday) at the lead hospital, which lost the 24th.
        scheduler::run_pass(
            &pool,
            &programs,
            ts("2026-02-27T02:00:00Z"),
            &PassOptions::default(),
        )
        .await
        .expect("pass");
        assert_eq!(state_of(&pool, "p_clinic").await, ["review"], "{name}");
        assert_eq!(state_of(&pool, "p_lead").await, ["at_home"], "{name}");
        scheduler::run_pass(
            &pool,
            &programs,
            ts("2026-02-28T02:00:00Z"),
            &PassOptions::default(),
        )
        .await
        .expect("pass");
        assert_eq!(state_of(&pool, "p_lead").await, ["review"], "{name}");

        // Replacing a calendar replaces it: the closure is gone, hours are set.
        let hours = Overrides::from_yaml(
            "h.yaml",
            "institutions:\n  lead: { hours: \"08:00-17:30\" }\n",
        )
        .expect("calendar file");
        let mut tx = pool.begin().await.expect("begin");
        store::calendars::replace(&mut tx, "lead", &hours["lead"])
            .await
            .expect("replace");
        let cals = store::calendars::for_institutions(&mut tx, ["lead", "clinic_a"])
            .await
            .expect("read calendars");
        tx.commit().await.expect("commit");
        assert!(
            cals.of("lead")
                .is_working_day(jiff::civil::date(2026, 2, 24))
                .unwrap(),
            "{name}"
        );
        assert_eq!(
            cals.of("lead").overrides().hours.map(|h| h.to_string()),
            Some("08:00-17:30".into()),
            "{name}"
        );
        assert!(cals.of("clinic_a").overrides().days.is_empty(), "{name}");

        let mut tx = pool.begin().await.expect("begin");
        let unknown = store::calendars::replace(&mut tx, "nowhere", &hours["lead"]).await;
        assert!(
            unknown.is_err(),
            "{name}: an unknown institution is refused"
        );
    }
}

#[tokio::test]
async fn a_deadline_past_the_calendar_puts_the_enrolment_in_error_naming_the_year() {
    let b = support::sqlite();
    let dir = support::pathway_dir(&[("working_days.yaml", WORKING_DAYS)]);
    let now = ts("2027-12-27T02:00:00Z");
    let (pool, programs) = open_store(&b.url, dir.path(), now).await;
    add_patient_at(&pool, "p1", "lead", now).await;
    let err = store::enrol(
        &pool,
        &programs,
        "p1",
        "working_days",
        None,
        "discharge",
        now,
    )
    .await
    .expect_err("the review timer needs 2028");
    assert!(err.to_string().contains("2028"), "{err}");
}

#[test]
fn carepath_calendar_shows_the_sources_and_loads_institution_calendars() {
    let shown = carepath_ok(&["calendar", "show"]);
    assert!(
        shown.contains("2025: official, 国务院办公厅关于2025年部分节假日安排的通知 (国办发明电〔2024〕12号, 2024-11-12)"),
        "{shown}"
    );
    assert!(shown.contains("2026: official"), "{shown}");
    assert!(shown.contains("2027: PROVISIONAL"), "{shown}");

    let b = support::sqlite();
    let dir = support::pathway_dir(&[("working_days.yaml", WORKING_DAYS)]);
    support::runtime().block_on(async {
        let (pool, _) = open_store(&b.url, dir.path(), ts(ENROLLED)).await;
        pool.close().await;
    });
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/calendar.example.yaml");
    let loaded = carepath_ok(&["calendar", "load", example, "--db", &b.url]);
    assert!(
        loaded.contains("lead: 1 closure(s), 1 extra working day(s), hours 08:00-17:30"),
        "{loaded}"
    );
    assert!(
        loaded.contains("clinic_a: 2 closure(s), 0 extra working day(s), hours all day"),
        "{loaded}"
    );
    let days = support::runtime().block_on(async {
        let pool = Pool::connect(&b.url).await.expect("connect");
        rows(
            &pool,
            "SELECT institution_id, day, CAST(working AS TEXT) FROM institution_days",
            3,
        )
        .await
    });
    assert_eq!(
        days,
        [
            "clinic_a|2026-07-20|0",
            "clinic_a|2026-07-21|0",
            "lead|2026-03-12|0",
            "lead|2026-03-14|1"
        ]
    );
}
