//! Exactly once through the CLI: a second pass at the same instant creates nothing; a pass killed
//! (SIGKILL) at random points and then finished leaves exactly what an uninterrupted pass leaves;
//! two schedulers on one PostgreSQL database together do exactly what one does alone.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use carepath_engine::seed::SplitMix;

use crate::support::{
    self, Backend, Kind, assert_same, cli_run, cli_seed, counts, num, scalar_of, snapshot_of,
};

/// The instant every seeding and pass below is "as of".
const AS_OF: &str = "2026-06-01T00:00:00Z";

fn due_now(url: &str) -> i64 {
    let t = support::ts(AS_OF).as_second();
    scalar_of(
        url,
        &format!(
            "SELECT COUNT(*) FROM enrolments WHERE status = 'active' AND next_wake_at IS NOT NULL AND next_wake_at <= {t}"
        ),
    )
}

/// Seeds `patients`, runs a pass, runs it again at the same instant: the second creates nothing.
fn second_pass_creates_nothing(b: &Backend, pathways: &Path, patients: u64) {
    let name = b.name();
    cli_seed(&b.url, pathways, patients, 7, AS_OF);
    let first = cli_run(&b.url, AS_OF, 100);
    assert!(
        num(&first, "stepped") > 0 && num(&first, "actions") > 0,
        "{name}: the first pass did nothing: {first}"
    );
    assert_eq!(
        due_now(&b.url),
        0,
        "{name}: enrolments are still due after a complete pass"
    );
    let after_first = snapshot_of(&b.url);

    let second = cli_run(&b.url, AS_OF, 100);
    for key in ["stepped", "transitions", "actions", "cancelled_tasks"] {
        assert_eq!(
            num(&second, key),
            0,
            "{name}: the second pass at the same instant did work: {second}"
        );
    }
    let after_second = snapshot_of(&b.url);
    assert_eq!(
        counts(&after_first),
        counts(&after_second),
        "{name}: row counts changed"
    );
    assert_same(
        "after the first pass",
        &after_first,
        "after the second pass",
        &after_second,
    );
}

#[test]
fn a_second_pass_at_the_same_instant_creates_nothing() {
    let dir = support::test_pathways();
    for b in support::backends() {
        second_pass_creates_nothing(&b, dir.path(), 400);
    }
    if let Some(real) = support::real_pathways() {
        for b in support::backends() {
            second_pass_creates_nothing(&b, &real, 400);
        }
    }
}

/// Starts `carepath run` in the background.
fn spawn_run(url: &str, batch_size: i64) -> Child {
    support::carepath()
        .args([
            "run",
            "--as-of",
            AS_OF,
            "--json",
            "--batch-size",
            &batch_size.to_string(),
            "--db",
            url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start carepath run")
}

fn finish(child: Child) -> serde_json::Value {
    let out = child.wait_with_output().expect("wait for carepath run");
    assert!(
        out.status.success(),
        "carepath run failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    support::parse_summary(&String::from_utf8_lossy(&out.stdout))
}

/// SIGKILL at random points of a 10,000-enrolment pass on SQLite, then a run to completion: the
/// database ends up exactly like an uninterrupted pass left its copy. Set `CAREPATH_TEST_SEED` to
/// replay the kill points of a failed run.
#[test]
fn a_pass_killed_at_random_points_ends_exactly_like_an_uninterrupted_one() {
    const PATIENTS: u64 = 10_000;
    const KILLS: usize = 8;
    let started = Instant::now();
    let dir = support::test_pathways();
    let original = support::sqlite();
    let reference = support::sqlite();
    let (orig_path, ref_path) = (
        original.path.clone().expect("a file"),
        reference.path.clone().expect("a file"),
    );

    let t = Instant::now();
    let seeded = cli_seed(&original.url, dir.path(), PATIENTS, 11, AS_OF);
    assert_eq!(num(&seeded, "enrolments"), PATIENTS);
    let seed_took = t.elapsed();
    // No process has the database open now: copy it with its WAL.
    support::copy_sqlite(&orig_path, &ref_path);
    let due_at_start = due_now(&original.url);
    assert!(
        due_at_start > PATIENTS as i64 / 2,
        "too few enrolments due ({due_at_start}) to make the kills meaningful"
    );

    let t = Instant::now();
    let uninterrupted = cli_run(&reference.url, AS_OF, 100);
    let reference_took = t.elapsed();
    assert_eq!(num(&uninterrupted, "stepped") as i64, due_at_start);

    let seed = support::random_seed();
    let mut rng = SplitMix::new(seed);
    let mut killed = 0;
    let mut mid_pass = 0;
    let mut log = Vec::new();
    let mut due = due_at_start;
    for _ in 0..KILLS {
        // A kill lands within the first half of the time an uninterrupted pass would take over
        // what is still due, so that most runs are still running when killed however fast the
        // build is and however much earlier runs got done.
        let remaining = reference_took.mul_f64(due.max(1) as f64 / due_at_start as f64);
        let max_wait =
            (remaining / 2).clamp(Duration::from_millis(100), Duration::from_millis(1_500));
        let wait = Duration::from_millis(50 + rng.below(max_wait.as_millis() as u64 - 49));
        let mut child = spawn_run(&original.url, 100);
        std::thread::sleep(wait);
        match child.try_wait().expect("try_wait") {
            Some(status) => log.push(format!(
                "after {wait:?} the run had already exited with {status}"
            )),
            None => {
                child.kill().expect("SIGKILL");
                let status = child.wait().expect("wait");
                if status.success() {
                    // It finished between the check and the signal.
                    log.push(format!("after {wait:?} the run finished as it was killed"));
                } else {
                    killed += 1;
                }
            }
        }
        let now_due = due_now(&original.url);
        assert!(
            now_due <= due,
            "the number of due enrolments went up after a kill: {due} → {now_due}"
        );
        if now_due < due && now_due > 0 {
            mid_pass += 1;
        }
        log.push(format!("after {wait:?}: {now_due} still due"));
        due = now_due;
    }
    let finished = finish(spawn_run(&original.url, 100));
    eprintln!(
        "kill seed {seed} (CAREPATH_TEST_SEED={seed} replays it):\n  {}",
        log.join("\n  ")
    );
    assert!(
        killed >= 5,
        "only {killed} of {KILLS} runs were still running when killed: {log:?}"
    );
    assert!(
        mid_pass >= 1,
        "no kill landed after a pass had made progress: {log:?}"
    );
    assert_eq!(
        num(&finished, "stepped") as i64,
        due,
        "the finishing run stepped a different number than was due"
    );
    assert_eq!(due_now(&original.url), 0, "enrolments were left due");

    let (a, b) = (snapshot_of(&reference.url), snapshot_of(&original.url));
    assert!(
        a["tasks"].len() > 1_000 && a["outbox"].len() > 1_000 && a["record"].len() > 10_000,
        "the pass produced too little to compare: {:?}",
        counts(&a)
    );
    assert_same(
        "the uninterrupted pass",
        &a,
        "the killed-and-finished pass",
        &b,
    );
    // And a further pass finds nothing to do on either.
    for url in [&reference.url, &original.url] {
        let again = cli_run(url, AS_OF, 100);
        assert_eq!(
            (num(&again, "stepped"), num(&again, "actions")),
            (0, 0),
            "{again}"
        );
    }
    eprintln!(
        "{PATIENTS} enrolments: seeding took {seed_took:.1?}, the uninterrupted pass {reference_took:.1?}, the whole test {:.1?}",
        started.elapsed()
    );
}

/// Two `carepath run` processes at once on one PostgreSQL database do, together, exactly what one
/// pass does on an identically seeded second database.
#[test]
fn two_schedulers_on_postgres_do_exactly_what_one_does() {
    const PATIENTS: u64 = 1_500;
    let Some(shared) = support::postgres() else {
        support::loud("SKIPPED: the concurrent-scheduler test needs PostgreSQL (set DATABASE_URL)");
        return;
    };
    let single = support::postgres().expect("a second PostgreSQL database");
    assert_eq!((shared.kind, single.kind), (Kind::Postgres, Kind::Postgres));
    let dir = support::test_pathways();
    // Seed both at once: same seed, same instant, fresh databases, so the same enrolment ids.
    let seeders: Vec<_> = [&shared.url, &single.url]
        .into_iter()
        .map(|url| {
            let (url, dir) = (url.clone(), dir.path().to_path_buf());
            std::thread::spawn(move || cli_seed(&url, &dir, PATIENTS, 5, AS_OF))
        })
        .collect();
    for s in seeders {
        assert_eq!(
            num(&s.join().expect("seeding thread"), "enrolments"),
            PATIENTS
        );
    }
    support::assert_same(
        "the shared database",
        &snapshot_of(&shared.url),
        "the single database",
        &snapshot_of(&single.url),
    );
    let due = due_now(&shared.url);

    let reference = spawn_run(&single.url, 25);
    let workers = [spawn_run(&shared.url, 25), spawn_run(&shared.url, 25)];
    let results: Vec<serde_json::Value> = workers.into_iter().map(finish).collect();
    let reference = finish(reference);
    let stepped: Vec<u64> = results.iter().map(|r| num(r, "stepped")).collect();
    assert_eq!(num(&reference, "stepped") as i64, due);
    assert_eq!(
        stepped.iter().sum::<u64>(),
        num(&reference, "stepped"),
        "the two workers stepped {stepped:?}; one pass alone stepped {reference}"
    );
    assert!(
        stepped.iter().all(|n| *n > 0),
        "one worker did nothing, so the workers did not overlap: {stepped:?}"
    );
    let actions: u64 = results.iter().map(|r| num(r, "actions")).sum();
    assert_eq!(
        actions,
        num(&reference, "actions"),
        "{results:?} vs {reference}"
    );
    for r in &results {
        assert_eq!(num(r, "stale"), 0, "{r}");
    }
    assert_eq!(due_now(&shared.url), 0);
    assert_same(
        "one pass alone",
        &snapshot_of(&single.url),
        "two concurrent passes",
        &snapshot_of(&shared.url),
    );
}
