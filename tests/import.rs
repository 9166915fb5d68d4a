//! `carepath import`: patients and enrolments from NDJSON, on each backend. Bad lines are
//! reported with their number and reason and write nothing; good lines are written whole; a
//! rerun after the import was killed part-way finishes it with the rows of one uninterrupted run.

use std::io::Write as _;
use std::process::Stdio;

use crate::support::{self, rows};

fn line(i: usize) -> String {
    let pathway = ["hypertension", "diabetes"][i % 2];
    let entry = ["community", "community"][i % 2];
    format!(
        r#"{{"patient": {{"id": "IMP-{i:06}", "birth_date": "1950-01-01", "sex": "female", "lang": "zh", "home_institution": "clinic_a"}}, "institution": "lead", "enrol": [{{"pathway": "{pathway}", "entry": "{entry}", "at": "2026-02-20T09:00:00+08:00"}}]}}"#
    )
}

fn file(n: usize) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = support::tempdir();
    let path = dir.path().join("patients.ndjson");
    let mut f = std::fs::File::create(&path).unwrap();
    for i in 0..n {
        writeln!(f, "{}", line(i)).unwrap();
        if i == 3 {
            // Bad lines among good ones.
            writeln!(f, "{{not json").unwrap();
            writeln!(
                f,
                r#"{{"patient": {{"id": "IMP-BAD1", "sex": "robot"}}, "institution": "lead"}}"#
            )
            .unwrap();
            writeln!(
                f,
                r#"{{"patient": {{"id": "IMP-BAD2"}}, "institution": "nowhere"}}"#
            )
            .unwrap();
            writeln!(f, r#"{{"patient": {{"id": "IMP-BAD3"}}, "institution": "lead", "enrol": [{{"pathway": "stroke", "entry": "nope"}}]}}"#).unwrap();
            writeln!(f, r#"{{"patient": {{"id": "IMP-BAD4", "contact": {{"phone": "13800138000"}}}}, "institution": "lead"}}"#).unwrap();
            writeln!(f, "{}", line(0)).unwrap();
        }
    }
    (dir, path)
}

fn import(path: &std::path::Path, url: &str) -> std::process::Child {
    support::carepath()
        .args([
            "import",
            path.to_str().unwrap(),
            "--batch-size",
            "50",
            "--as-of",
            "2026-03-02T00:00:00Z",
            "--db",
            url,
        ])
        .env_remove("CAREPATH_CONTACT_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

#[test]
fn bad_lines_are_reported_good_lines_written_whole_and_a_rerun_finishes_a_killed_import() {
    let rt = support::runtime();
    let Some(real) = support::real_pathways() else {
        return;
    };
    for b in support::backends() {
        let (pool, _) = rt.block_on(support::open_store(
            &b.url,
            &real,
            support::ts("2026-01-01T00:00:00Z"),
        ));
        rt.block_on(pool.close());
        let (_dir, path) = file(600);
        // Killed as soon as it has started writing, then run again to the end.
        let mut first = import(&path, &b.url);
        std::thread::sleep(std::time::Duration::from_millis(400));
        let _ = first.kill();
        let _ = first.wait();
        let out = import(&path, &b.url).wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}: rejected lines make exit 1: {stderr}",
            b.name()
        );
        for (n, why) in [
            (5, "not a valid line"),
            (6, "sex `robot`"),
            (7, "institution `nowhere` does not exist"),
            (8, "`nope` is not an entry point of stroke"),
            (9, "no contact key"),
            (10, "given on an earlier line"),
        ] {
            assert!(
                stderr
                    .lines()
                    .any(|l| l.contains(&format!(":{n}: ")) && l.contains(why)),
                "{}: line {n} ({why}) not reported: {stderr}",
                b.name()
            );
        }
        let check = |sql: &str| support::scalar_of(&b.url, sql);
        assert_eq!(
            check("SELECT COUNT(*) FROM patients WHERE id LIKE 'IMP-%'"),
            600,
            "{}",
            b.name()
        );
        assert_eq!(
            check("SELECT COUNT(*) FROM patients WHERE id LIKE 'IMP-BAD%'"),
            0
        );
        assert_eq!(
            check("SELECT COUNT(*) FROM enrolments WHERE patient_id LIKE 'IMP-%'"),
            600,
            "{}: every patient with its one enrolment, none twice",
            b.name()
        );
        assert_eq!(
            check(
                "SELECT COUNT(*) FROM patients p WHERE p.id LIKE 'IMP-%' AND NOT EXISTS (SELECT 1 FROM enrolments e WHERE e.patient_id = p.id)"
            ),
            0,
            "{}: no patient without the enrolment its line gave",
            b.name()
        );
        let tasks = rt.block_on(async {
            let pool = carepath_engine::store::Pool::connect(&b.url).await.unwrap();
            let r = rows(&pool, "SELECT COUNT(*) FROM tasks", 1).await;
            pool.close().await;
            r
        });
        assert!(!tasks.is_empty());
        // The import's audit entries are chained under the database's key, killed run included.
        support::assert_audit_intact(&b.url, b.name());
    }
}
