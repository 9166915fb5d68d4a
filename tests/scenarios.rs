//! The scenarios shipped with the pathways pass, and a broken copy of a pathway fails its scenario
//! with a message that says what was never reached and by how much the indicators missed.

use std::path::{Path, PathBuf};

use carepath_simulator::{Options, repo_pathways, simulate};

fn scenarios() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(repo_pathways())
        .expect("the pathways folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".scenario.yaml"))
        .collect();
    out.sort();
    out
}

fn run(scenario: &Path) -> carepath_simulator::Simulation {
    simulate(&Options {
        scenario: Some(scenario.to_path_buf()),
        threads: 2,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{}: {e}", scenario.display()))
}

#[test]
fn every_pathway_has_a_scenario_and_it_passes() {
    let scenarios = scenarios();
    let pathways: Vec<String> = carepath_dsl::pathway_files(&[repo_pathways()])
        .unwrap()
        .into_iter()
        .filter(|p| {
            !p.components().any(|c| c.as_os_str() == "twins")
                && carepath_dsl::compile_file(p).kind == carepath_dsl::DocKind::Pathway
        })
        .map(|p| p.file_stem().unwrap().to_string_lossy().to_string())
        .collect();
    for p in &pathways {
        assert!(
            scenarios
                .iter()
                .any(|s| s.file_name().unwrap().to_string_lossy() == format!("{p}.scenario.yaml")),
            "pathways/{p} has no {p}.scenario.yaml"
        );
    }
    for s in &scenarios {
        let sim = run(s);
        assert!(
            sim.failures.is_empty(),
            "{} fails:\n  {}\n{}",
            s.display(),
            sim.failures.join("\n  "),
            sim.report.text()
        );
        assert_eq!(sim.report.errors, 0, "{}", sim.report.text());
    }
}

/// A temporary folder removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(dir.join("fragments")).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_broken_copy_of_stroke_fails_its_scenario_saying_what_was_never_reached() {
    let src = repo_pathways();
    let tmp = TempDir::new("carepath-broken-stroke");
    // The change under review: the discharge-triage branch to the community clinic now asks for a
    // Barthel index of 600 (the scale stops at 100), so no patient is ever referred down. The
    // pathway still validates — every state can be reached on paper — but not in practice.
    let pathway = std::fs::read_to_string(src.join("stroke.yaml")).unwrap();
    let guard = r#"when: "discharge_barthel >= 60""#;
    assert!(
        pathway.contains(guard),
        "stroke.yaml changed: update this test"
    );
    std::fs::write(
        tmp.0.join("stroke.yaml"),
        pathway.replace(guard, r#"when: "discharge_barthel >= 600""#),
    )
    .unwrap();
    std::fs::copy(
        src.join("fragments/standard_follow_up.yaml"),
        tmp.0.join("fragments/standard_follow_up.yaml"),
    )
    .unwrap();
    std::fs::copy(
        src.join("stroke.scenario.yaml"),
        tmp.0.join("stroke.scenario.yaml"),
    )
    .unwrap();
    let compiled = carepath_dsl::compile_file(&tmp.0.join("stroke.yaml"));
    assert!(compiled.is_ok(), "the broken copy must still validate");

    let sim = run(&tmp.0.join("stroke.scenario.yaml"));
    let all = sim.failures.join("\n");
    assert!(
        !sim.failures.is_empty(),
        "the broken pathway passed its scenario"
    );
    // Which branch is dead, by name, and everything behind it.
    let visited = sim
        .failures
        .iter()
        .find(|f| f.starts_with("`every_state_visited`"))
        .unwrap_or_else(|| panic!("no coverage failure in:\n{all}"));
    for state in [
        "stroke.downward_referral",
        "stroke.community_first_month",
        "stroke.community_day90",
    ] {
        assert!(visited.contains(state), "{state} not named in: {visited}");
    }
    assert!(visited.contains("state(s) never visited"), "{visited}");
    // And by how much the referral count missed.
    assert!(
        all.contains("`referrals_down >= 300`: referrals_down = 0, 300 short"),
        "{all}"
    );
    // The report lists the never-taken branch itself first.
    let p = &sim.report.pathways[0];
    let first = &p.coverage.transition_counts[0];
    assert_eq!(first.taken, 0);
    assert!(
        p.coverage
            .never_taken
            .contains(&"discharge_triage#2".to_string()),
        "{:?}",
        p.coverage.never_taken
    );
    assert!(sim.report.text().contains(
        "never taken:   discharge_triage#2 → downward_referral (when discharge_barthel >= 600)"
    ));
}

#[test]
fn an_unanswered_scale_expires_and_the_pathway_hears_of_it() {
    let tmp = TempDir::new("carepath-scale-expiry");
    std::fs::write(
        tmp.0.join("screen.yaml"),
        r#"pathway: screen
version: 1
title: { zh: 筛查, en: Screening }
owner_role: case_manager
roles: [case_manager]
entry_points:
  - { id: start, state: screen }
states:
  - id: screen
    phase: follow_up
    on_enter:
      - scale: { scale: who5, due: 2d, expires: 5d }
    transitions:
      - on: scale_answered:who5
        to: answered
      - on: scale_expired:who5
        to: missed
      - after: 10d
        to: forgotten
  - id: answered
    phase: closed
    terminal: true
  - id: missed
    phase: closed
    terminal: true
  - id: forgotten
    phase: closed
    terminal: true
"#,
    )
    .unwrap();
    std::fs::write(
        tmp.0.join("screen.scenario.yaml"),
        r#"scenario: screen
pathways: [screen.yaml]
cohort: 400
days: 60
seed: 7
arrivals_days: 10
patients:
  age: { normal: [60, 10], min: 18, max: 95 }
  female: 0.5
  entry: { start: 1 }
scales:
  who5: { answer: 0.5, delay: { exponential: 20h }, score: { mean: 60, sd: 20 } }
expect:
  - visits.missed >= 100
  - visits.forgotten == 0
"#,
    )
    .unwrap();
    let sim = run(&tmp.0.join("screen.scenario.yaml"));
    assert!(
        sim.failures.is_empty(),
        "{}\n{}",
        sim.failures.join("\n"),
        sim.report.text()
    );
    let visits = |state: &str| {
        sim.report.pathways[0]
            .coverage
            .state_counts
            .iter()
            .find(|v| v.state == state)
            .map_or(0, |v| v.visits)
    };
    // Half answer within the window; the rest expire, none wait out the 10-day timer.
    assert_eq!(visits("answered") + visits("missed"), 400);
    assert!(visits("missed") >= 150, "{}", sim.report.text());
}
