//! `carepath bench` on a small cohort, on each backend: it prints every figure it promises, the
//! ceiling it measures leaves no table behind, and it refuses a database that is not empty.

use std::path::Path;

use crate::support::{self, Backend, Kind, scalar_of};

fn bench(b: &Backend, pathways: &Path, enrolments: u64) -> std::process::Output {
    support::carepath()
        .args([
            "bench",
            "--enrolments",
            &enrolments.to_string(),
            "--db",
            &b.url,
        ])
        .arg("--pathways")
        .arg(pathways)
        .output()
        .expect("cannot run carepath bench")
}

fn bench_reports_its_figures(b: &Backend, pathways: &Path) {
    let name = b.name();
    let out = bench(b, pathways, 400);
    assert!(
        out.status.success(),
        "{name}: bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{name}: bench printed no JSON ({e})"));
    assert_eq!(v["backend"], name, "{v}");
    assert_eq!(v["enrolments"], 400, "{v}");
    let ceiling = v["insert_ceiling_rows_per_second"]
        .as_f64()
        .expect("ceiling");
    assert!(
        ceiling.is_finite() && ceiling > 0.0,
        "{name}: ceiling {ceiling}"
    );
    // A seed batch reaches PostgreSQL by COPY.
    assert_eq!(
        v["seed_transfer"],
        if b.kind == Kind::Postgres {
            "copy"
        } else {
            "statements"
        },
        "{name}: {v}"
    );
    assert!(
        v["seed_patients_per_second"].as_f64().unwrap_or(0.0) > 0.0,
        "{name}: {v}"
    );
    let rss = v["peak_rss_mib"].as_f64().expect("peak RSS");
    assert!(rss > 0.0, "{name}: peak RSS {rss}");
    assert_eq!(
        v["vacuum_analyze_before_nightly_seconds"].is_null(),
        b.kind == Kind::Sqlite,
        "{name}: vacuum and analyze are PostgreSQL's alone: {v}"
    );
    let passes = v["passes"].as_array().expect("passes");
    let names: Vec<&str> = passes.iter().filter_map(|p| p["pass"].as_str()).collect();
    assert_eq!(names, ["catch_up", "nightly"], "{v}");
    let catch_up = &passes[0];
    for key in ["stepped", "transitions", "actions", "rows_written"] {
        assert!(
            catch_up[key].as_u64().unwrap_or(0) > 0,
            "{name}: the catch-up pass reports no {key}: {v}"
        );
    }
    for p in passes {
        for key in [
            "goals_evaluated",
            "scale_reminders",
            "scale_expired",
            "stale",
        ] {
            assert!(p[key].is_u64(), "{name}: {key} missing from a pass: {v}");
        }
        for key in [
            "enrolment_steps_per_second",
            "actions_per_second",
            "rows_per_second",
            "ratio_to_insert_ceiling",
        ] {
            let x = p[key].as_f64().unwrap_or(f64::NAN);
            assert!(x.is_finite() && x >= 0.0, "{name}: {key} = {x}: {v}");
        }
    }
    // The rows the passes wrote are in the database; the ceiling's copies are gone.
    let records = scalar_of(&b.url, "SELECT COUNT(*) FROM record");
    assert!(records > 0, "{name}: nothing in the record");
    let leftovers = if b.kind == Kind::Sqlite {
        scalar_of(
            &b.url,
            "SELECT COUNT(*) FROM sqlite_master WHERE name LIKE 'bench\\_ceiling%' ESCAPE '\\'",
        )
    } else {
        scalar_of(
            &b.url,
            "SELECT COUNT(*) FROM pg_class WHERE relname LIKE 'bench\\_ceiling%' ESCAPE '\\'",
        )
    };
    assert_eq!(leftovers, 0, "{name}: the ceiling left tables or indexes");

    let again = bench(b, pathways, 10);
    assert!(
        !again.status.success(),
        "{name}: bench reused a full database"
    );
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("needs an empty database"),
        "{name}: unclear refusal: {stderr}"
    );
}

#[test]
fn the_benchmark_prints_its_figures_and_cleans_up_on_each_backend() {
    let Some(pathways) = support::real_pathways() else {
        return;
    };
    for b in support::backends() {
        bench_reports_its_figures(&b, &pathways);
    }
}

/// `carepath bench-api` builds its queue, signs the busiest board's staff member in to the
/// workstation as a browser does, and prints the board's load times.
#[test]
fn the_api_benchmark_times_the_busiest_board_on_each_backend() {
    let Some(pathways) = support::real_pathways() else {
        return;
    };
    for b in support::backends() {
        let out = support::carepath()
            .args(["bench-api", "--tasks", "3000", "--no-serve", "--db", &b.url])
            .arg("--pathways")
            .arg(&pathways)
            .output()
            .expect("cannot run carepath bench-api");
        let name = b.name();
        assert!(
            out.status.success(),
            "{name}: bench-api failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("board_render "))
            .unwrap_or_else(|| panic!("{name}: no board_render line in {stdout}"));
        let v: serde_json::Value = serde_json::from_str(line).expect("board_render is JSON");
        assert_eq!(v["samples"], 30, "{name}: {v}");
        assert!(v["open_tasks_on_board"].as_i64() > Some(0), "{name}: {v}");
        let median = v["ms"]["median"].as_f64().expect("a median");
        assert!(
            median > 0.0 && median <= v["ms"]["max"].as_f64().expect("a max"),
            "{name}: {v}"
        );
        // The busiest board: no board of the alliance holds more open tasks.
        let busiest = scalar_of(
            &b.url,
            "SELECT COUNT(*) FROM tasks WHERE status = 'open' GROUP BY institution_id, role ORDER BY 1 DESC LIMIT 1",
        );
        assert_eq!(
            v["open_tasks_on_board"].as_i64(),
            Some(busiest),
            "{name}: {v}"
        );
    }
}
