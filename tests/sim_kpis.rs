//! The simulator's built-in indicators equal those `GET /kpis` computes over the same events: a
//! small cohort of a real pathway is simulated, what it did is written into a fresh store as the
//! scheduler's rows, and the store's counts (the same function `/kpis` serves) must give every
//! indicator the simulation computes, with the same numerator and denominator.

use std::path::Path;

use carepath_engine::store::{indicators, replay};
use carepath_simulator::report::{Report, is_simulated_indicator};
use carepath_simulator::{Scenario, load_pathways, run, setup::Setup};
use jiff::Timestamp;
use serde_json::Value;

use crate::support::{self, backends, open_store};

/// A small run of one real pathway at one institution: (setup, report, what the cohort did).
fn simulate(pathway: &str, cohort: u64, days: u32) -> (Setup, Report, replay::Cohort) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pathways");
    let mut sc = Scenario::load(&dir.join(format!("{pathway}.scenario.yaml"))).expect("scenario");
    sc.start = Some("2025-03-03".into());
    sc.tz = Some("Asia/Shanghai".into());
    let programs = load_pathways(&[dir.join(format!("{pathway}.yaml"))]).expect("pathway");
    let mut s = Setup::new(programs, &sc, cohort, days, 7).expect("setup");
    s.export = true;
    let raw = run::simulate(&s, 2, &mut |_, _| {});
    let report = Report::build(&s, &raw, sc.scenario.clone());
    let c = raw.tally.cohort.clone();
    (s, report, c)
}

#[test]
fn simulated_indicators_equal_kpis_over_the_same_events() {
    let (s, report, cohort) = simulate("breast_cancer_surgery", 120, 60);
    assert_eq!(s.institutions.len(), 1, "one institution");
    let institution = s.institutions[0].id.clone();
    let sim = &report.totals;
    // The run must exercise the indicators, or equality would prove nothing.
    for (q, n) in [
        ("tasks_due", sim.counts.tasks_due),
        ("follow_up_due", sim.counts.follow_up_due),
        ("scales_pushed", sim.counts.scales_pushed),
        ("stays", sim.counts.stays),
        (
            "enrolments_active_at_end",
            sim.counts.enrolments_active_at_end,
        ),
    ] {
        assert!(n > 0, "the simulation counted no {q}: {:?}", sim.counts);
    }
    let period = indicators::Period {
        from: s.day_starts[0],
        to: s.horizon(),
        as_of: s.horizon(),
    };
    let pathways_dir = support::real_pathways()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("pathways"));
    support::runtime().block_on(async {
        for b in backends() {
            let now = Timestamp::from_second(period.from).expect("start");
            let (pool, programs) = open_store(&b.url, &pathways_dir, now).await;
            replay::write(&pool, &cohort, &s.tz, now)
                .await
                .expect("write the cohort");
            let latest = programs.latest();
            let pathways: Vec<&carepath_dsl::Pathway> = latest.iter().map(|p| &p.pathway).collect();
            let req = indicators::KpiRequest {
                scope: indicators::Scope {
                    institution: &institution,
                    pathway: None,
                },
                period,
                by: None,
            };
            let kpis = indicators::kpis(&pool, &pathways, &req)
                .await
                .expect("kpis");
            let mut compared = 0;
            for (name, value) in sim.values.iter() {
                assert!(is_simulated_indicator(name));
                let served = &kpis["builtin"][name];
                let d = carepath_engine::indicators::definition(name).expect("built in");
                let (num, den) = d.sides(&sim.counts);
                let side = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
                assert!(
                    (side(&served["numerator"]) - num).abs() < 1e-9
                        && (side(&served["denominator"]) - den).abs() < 1e-9,
                    "{}: `{name}` is {num} / {den} in the simulation, {} / {} in /kpis",
                    b.name(),
                    served["numerator"],
                    served["denominator"]
                );
                match (value, served["value"].as_f64()) {
                    (None, None) => {}
                    (Some(a), Some(b)) if (a - b).abs() < 1e-9 => {}
                    (a, b) => panic!("`{name}`: the simulation says {a:?}, /kpis says {b:?}"),
                }
                compared += 1;
            }
            assert!(compared >= 7, "only {compared} indicators compared");
            pool.close().await;
        }
    });
}
