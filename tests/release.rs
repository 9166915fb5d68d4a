//! Releasing the next version of the real hypertension pathway to a seeded cohort on its current
//! version, on each backend: a renamed state, a removed state and a new schedule. The next version
//! is made from the current file's text and numbered from the version the compiler reads in it,
//! so publishing a new version of the pathway changes nothing here. The dry run predicts what the
//! move ends and what each moved enrolment's next pass makes, and the move followed by that pass
//! does exactly that; an application stopped part-way and run again ends as one run straight
//! through (in process, and by SIGKILL through the command line); a second applier refuses;
//! the rollback restores version, state and variables.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;

use carepath_dsl::migration::{MigrationPlan, read_plan};
use carepath_engine::Programs;
use carepath_engine::scheduler::{self, PassOptions};
use carepath_engine::store::release::{self, ApplyOptions, QuietHours};
use carepath_engine::store::{self, Pool, StoreError};
use jiff::{SignedDuration, Timestamp};

use crate::support::{self, rows, scalar};

const QUIET: QuietHours = QuietHours { start: 21, end: 8 };

fn t0() -> Timestamp {
    support::ts("2026-03-02T00:00:00Z")
}

/// The real pathway's text and the version the compiler reads in it.
fn current(real: &Path) -> (String, u32) {
    let path = real.join("hypertension.yaml");
    let compiled = carepath_dsl::compile_file(&path);
    let version = compiled.pathway.expect("the real pathway compiles").version;
    (std::fs::read_to_string(&path).unwrap(), version)
}

/// The next version of `text` (version `from`): `community_care` renamed `community_follow_up`
/// (with a monthly check schedule besides its own), `stability_review` removed (its way in goes
/// to the downward referral).
fn next(text: &str, from: u32) -> String {
    let start = text
        .find("  - id: stability_review")
        .expect("stability_review");
    let end = text[start..]
        .find("  # ---- downward referral")
        .expect("the next section")
        + start;
    let mut s = format!("{}{}", &text[..start], &text[end..]);
    s = s
        .replacen(
            &format!("\nversion: {from}\n"),
            &format!("\nversion: {}\n", from + 1),
            1,
        )
        .replace("to: stability_review", "to: downward_referral")
        .replace("community_care", "community_follow_up");
    let state = s
        .find("  - id: community_follow_up\n")
        .expect("the renamed state");
    let anchor = "    schedules:\n";
    let at = s[state..].find(anchor).expect("the state's schedules") + state + anchor.len();
    s.insert_str(
        at,
        "      - id: monthly_check\n        first: 7d\n        every: 30d\n        actions:\n\
         \x20         - task: { id: monthly_check, role: clinic_case_manager, title: { zh: 每月血压核查, en: Monthly BP check }, due: 2d }\n",
    );
    assert!(s.contains(&format!("\nversion: {}\n", from + 1)), "{s}");
    s
}

/// The plan that moves enrolments from version `from` to the next.
fn plan(from: u32) -> String {
    format!(
        "migration: htn-next\npathway: hypertension\nfrom: {from}\nto: {}\n\
         states: {{ community_care: community_follow_up, stability_review: downward_referral }}\nopen_work: cancel\n",
        from + 1
    )
}

/// The active enrolments still on version `from`.
fn on_version(from: u32) -> String {
    format!(
        "SELECT COUNT(*) FROM enrolments WHERE pathway_id = 'hypertension' AND version = {from} AND status = 'active'"
    )
}

struct Fixture {
    pool: Pool,
    programs: Programs,
    plan: MigrationPlan,
    /// The version the cohort is on; the plan moves it to the next.
    from: u32,
    now: Timestamp,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn fixture(b: &support::Backend, patients: u64) -> Option<Fixture> {
    let real = support::real_pathways()?;
    let (text, from) = current(&real);
    let (pool, programs) = support::open_store(&b.url, &real, t0()).await;
    carepath_engine::seed::seed(&pool, &programs, patients, 7, t0())
        .await
        .expect("seed");
    let now = t0() + SignedDuration::from_hours(24 * 40);
    scheduler::run_pass(
        &pool,
        &programs,
        now,
        &PassOptions {
            batch_size: 500,
            max_batches: None,
        },
    )
    .await
    .expect("a pass on the current version");
    let dir = support::pathway_dir(&[("hypertension.yaml", &next(&text, from))]);
    let next_version = Programs::load_dir(dir.path()).expect("the next version compiles");
    store::publish(&pool, &next_version, now)
        .await
        .expect("publish the next version");
    let programs = store::load_programs(&pool).await.unwrap();
    let plan_text = plan(from);
    let plan = read_plan("plan.yaml", plan_text.as_bytes(), |p, v| {
        programs.get(p, v).map(|x| &x.pathway)
    })
    .expect("the plan is valid");
    let plan_dir = support::pathway_dir(&[("plan.yaml", &plan_text)]);
    Some(Fixture {
        pool,
        programs,
        plan,
        from,
        now,
        _dirs: (dir, plan_dir),
    })
}

/// `key` of each task, follow-up and scale push made at `at`.
async fn made_at(pool: &Pool, at: Timestamp) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for table in ["tasks", "follow_ups", "scale_pushes"] {
        for k in rows(
            pool,
            &format!(
                "SELECT dedupe_key FROM {table} WHERE created_at = {}",
                at.as_second()
            ),
            1,
        )
        .await
        {
            out.insert(k);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dry_run_predicts_what_the_move_and_the_next_pass_do_and_rollback_restores() {
    for b in support::backends() {
        let Some(f) = fixture(&b, 10_000).await else {
            return;
        };
        let report = release::dry_run(&f.pool, &f.programs, &f.plan, QUIET, f.now)
            .await
            .expect("dry run");
        println!(
            "{}: dry run of htn-next over a seeded cohort of 10,000: {:?}",
            b.name(),
            report.total
        );
        assert!(
            report.total.enrolments > 100,
            "{}: {:?}",
            b.name(),
            report.total
        );
        assert!(
            report
                .by_state
                .keys()
                .any(|k| k == "community_care → community_follow_up")
        );
        let before = support::snapshot(&f.pool).await;
        let versions_before = rows(
            &f.pool,
            "SELECT CAST(id AS TEXT), CAST(version AS TEXT), state, vars FROM enrolments WHERE pathway_id = 'hypertension'",
            4,
        )
        .await;

        // Stopped after two batches, then run again: the same as straight through.
        let opts = |max| ApplyOptions {
            owner: "tester",
            batch_size: 100,
            max_batches: max,
            progress: None,
        };
        let part = release::apply(&f.pool, &f.programs, &f.plan, &opts(Some(2)), f.now)
            .await
            .unwrap();
        assert!(
            !part.complete && part.moved == 200,
            "{}: {part:?}",
            b.name()
        );
        // Another applier refuses while the lease is live.
        let other = ApplyOptions {
            owner: "someone_else",
            ..opts(None)
        };
        let err = release::apply(&f.pool, &f.programs, &f.plan, &other, f.now)
            .await
            .expect_err("a second applier");
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        let rest = release::apply(&f.pool, &f.programs, &f.plan, &opts(None), f.now)
            .await
            .unwrap();
        assert!(rest.complete, "{rest:?}");
        assert_eq!(
            (part.moved + rest.moved) as usize,
            report.total.enrolments,
            "{}: every selected enrolment moved once",
            b.name()
        );
        assert_eq!(rest.already_moved, 200);
        assert_eq!(scalar(&f.pool, &on_version(f.from)).await, 0);
        // What the move ended is what the dry run said it would end.
        let predicted_tasks: usize = report
            .enrolments
            .iter()
            .map(|p| p.cancels.iter().filter(|c| c.starts_with("task:")).count())
            .sum();
        assert_eq!(
            scalar(
                &f.pool,
                &format!(
                    "SELECT COUNT(*) FROM tasks WHERE cancel_reason = 'migrated to v{} by htn-next'",
                    f.from + 1
                )
            )
            .await as usize,
            predicted_tasks,
            "{}",
            b.name()
        );
        // The next pass makes what the dry run predicted for each moved enrolment.
        let pass_at = f.now;
        let before_pass = made_at(&f.pool, pass_at).await;
        scheduler::run_pass(
            &f.pool,
            &f.programs,
            pass_at,
            &PassOptions {
                batch_size: 500,
                max_batches: None,
            },
        )
        .await
        .unwrap();
        let made: BTreeSet<String> = made_at(&f.pool, pass_at)
            .await
            .difference(&before_pass)
            .cloned()
            .collect();
        let predicted: BTreeSet<String> = report
            .enrolments
            .iter()
            .flat_map(|p| p.moved.work.iter())
            .filter(|w| {
                w.starts_with("task:")
                    || w.starts_with("follow_up:")
                    || w.starts_with("scale_push:")
            })
            .filter_map(|w| w.split(' ').nth(1).map(str::to_string))
            .collect();
        let made_hypertension: BTreeSet<String> = made
            .iter()
            .filter(|k| {
                let id: i64 = k[1..].split(':').next().unwrap_or("0").parse().unwrap_or(0);
                report.enrolments.iter().any(|p| p.enrolment == id)
            })
            .cloned()
            .collect();
        assert_eq!(made_hypertension, predicted, "{}: the next pass", b.name());

        // The rollback restores version, state and variables of those still where the run put
        // them; those the pass above moved on (a timer that had come due) stay where they are.
        let r = release::rollback(&f.pool, "htn-next", "tester", f.now)
            .await
            .unwrap();
        assert_eq!(
            r.restored as usize + r.left.len(),
            report.total.enrolments,
            "{}: {r:?}",
            b.name()
        );
        // Those the pass moved on are left where they are; the others are as they were.
        let left: BTreeSet<String> = r.left.iter().map(|e| format!("{e}|")).collect();
        let unmoved = |rows: Vec<String>| -> Vec<String> {
            rows.into_iter()
                .filter(|row| !left.iter().any(|l| row.starts_with(l.as_str())))
                .collect()
        };
        let versions_before = unmoved(versions_before);
        let after = rows(
            &f.pool,
            "SELECT CAST(id AS TEXT), CAST(version AS TEXT), state, vars FROM enrolments WHERE pathway_id = 'hypertension'",
            4,
        )
        .await;
        assert_eq!(unmoved(after), versions_before, "{}", b.name());
        let err = release::rollback(&f.pool, "htn-next", "tester", f.now)
            .await
            .expect_err("twice");
        assert!(matches!(err, StoreError::Conflict(_)));
        drop(before);

        // Moved again under another run, the new schedule makes its monthly check.
        let again = MigrationPlan {
            id: "htn-next-again".into(),
            ..f.plan.clone()
        };
        release::apply(&f.pool, &f.programs, &again, &opts(None), f.now)
            .await
            .unwrap();
        let later = f.now + SignedDuration::from_hours(24 * 31);
        scheduler::run_pass(
            &f.pool,
            &f.programs,
            later,
            &PassOptions {
                batch_size: 500,
                max_batches: None,
            },
        )
        .await
        .unwrap();
        assert!(
            scalar(
                &f.pool,
                "SELECT COUNT(*) FROM tasks WHERE task_ref = 'monthly_check'"
            )
            .await
                > 0,
            "{}: the new schedule makes work",
            b.name()
        );
    }
}

/// The CLI's applications of the plan, once straight through and once killed part-way and run
/// again, on copies of one SQLite database and on PostgreSQL.
#[test]
fn sigkill_during_apply_and_a_rerun_give_the_rows_of_one_uninterrupted_run() {
    let rt = support::runtime();
    for b in support::backends() {
        let Some(f) = rt.block_on(fixture(&b, 3_000)) else {
            return;
        };
        let plan_path = f._dirs.1.path().join("plan.yaml");
        let as_of = f.now.to_string();
        let run = |url: &str, kill_after: Option<u32>| {
            let mut cmd = support::carepath();
            cmd.args([
                "migrate-enrolments",
                plan_path.to_str().unwrap(),
                "--apply",
                "--batch-size",
                "20",
                "--as-of",
                &as_of,
                "--db",
                url,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            let mut child = cmd.spawn().expect("spawn");
            if let Some(batches) = kill_after {
                // SIGKILL once the given number of batches has committed.
                use std::io::BufRead;
                let err = child.stderr.take().expect("stderr");
                for line in std::io::BufReader::new(err).lines() {
                    if line
                        .unwrap_or_default()
                        .starts_with(&format!("batch {batches}:"))
                    {
                        break;
                    }
                }
                let _ = child.kill();
            }
            child.wait_with_output().expect("wait")
        };
        rt.block_on(f.pool.close());
        let (reference_url, killed_url) = match &b.path {
            Some(path) => {
                let copy = path.with_extension("copy.db");
                support::copy_sqlite(path, &copy);
                (format!("sqlite:{}", copy.display()), b.url.clone())
            }
            // PostgreSQL has no file to copy: the killed run is checked against the invariants of
            // one run (each selected enrolment moved once, none left behind).
            None => (String::new(), b.url.clone()),
        };
        let killed = run(&killed_url, Some(3));
        assert!(!killed.status.success(), "{}: the run was killed", b.name());
        assert!(
            support::scalar_of(
                &killed_url,
                "SELECT COUNT(*) FROM migration_runs WHERE status = 'running'"
            ) == 1,
            "{}: killed part-way",
            b.name()
        );
        let rerun = run(&killed_url, None);
        assert!(
            rerun.status.success(),
            "{}: the rerun failed: {}",
            b.name(),
            String::from_utf8_lossy(&rerun.stderr)
        );
        let _ = killed;
        support::assert_audit_intact(&killed_url, b.name());
        let moved_sql = "SELECT CAST(enrolment_id AS TEXT), from_state, to_state, vars_before FROM migration_moves";
        let state_sql = "SELECT CAST(id AS TEXT), CAST(version AS TEXT), state, vars FROM enrolments WHERE pathway_id = 'hypertension'";
        let task_sql = "SELECT dedupe_key, status, cancel_reason FROM tasks";
        let of = |url: &str, sql: &str, n: usize| {
            let rt = support::runtime();
            rt.block_on(async {
                let pool = Pool::connect(url).await.unwrap();
                let r = rows(&pool, sql, n).await;
                pool.close().await;
                r
            })
        };
        if reference_url.is_empty() {
            // Every selected enrolment moved exactly once, none left on the version it was on.
            let moved = of(&killed_url, moved_sql, 4);
            let unique: BTreeSet<&String> = moved.iter().collect();
            assert_eq!(moved.len(), unique.len());
            assert_eq!(support::scalar_of(&killed_url, &on_version(f.from)), 0);
            continue;
        }
        let straight = run(&reference_url, None);
        assert!(straight.status.success());
        for (sql, n) in [(moved_sql, 4), (state_sql, 4), (task_sql, 3)] {
            assert_eq!(
                of(&killed_url, sql, n),
                of(&reference_url, sql, n),
                "{}: {sql}",
                b.name()
            );
        }
    }
}

/// `carepath simulate --compare`: one version against itself changes nothing; against the next
/// version the removed stability review takes work off the doctors, and the scenario's behaviour
/// for its task is said to be unused there.
#[test]
fn simulate_compare_runs_one_cohort_through_both_versions() {
    let Some(real) = support::real_pathways() else {
        return;
    };
    let (text, from) = current(&real);
    let this = real.join("hypertension.yaml");
    let dir = support::pathway_dir(&[("hypertension.yaml", &next(&text, from))]);
    let next_version = dir.path().join("hypertension.yaml");
    let opts = carepath_simulator::Options {
        scenario: Some(real.join("hypertension.scenario.yaml")),
        cohort: Some(300),
        days: Some(120),
        threads: 1,
        ..Default::default()
    };
    let same = carepath_simulator::compare::compare(&this, &this, &opts).expect("compare");
    assert!(
        same.indicators
            .iter()
            .chain(same.workload.iter())
            .all(|r| r.change == Some(0.0) || r.change.is_none_or(f64::is_nan)),
        "{}",
        same.text()
    );
    let out = support::tempdir();
    let c = carepath_simulator::compare::compare(
        &this,
        &next_version,
        &carepath_simulator::Options {
            out: Some(out.path().to_path_buf()),
            ..opts
        },
    )
    .expect("compare");
    let doctor = c
        .workload
        .iter()
        .find(|r| r.measure == "doctor.created")
        .expect("doctors' work");
    assert!(doctor.change.unwrap() < 0.0, "{}", c.text());
    assert!(
        c.notes.iter().any(|n| n.contains("stability_decision")),
        "{:?}",
        c.notes
    );
    assert!(out.path().join("compare.json").exists() && out.path().join("compare.svg").exists());
}
