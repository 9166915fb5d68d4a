//! `cargo bench -p carepath-simulator`: the repository's pathways, 100,000 patients, 365 days,
//! 2 threads. Prints wall time and peak resident memory (VmHWM) against the goals of under a
//! minute and under 2 GiB.
//!
//! Environment: SIM_PATIENTS, SIM_DAYS, SIM_THREADS, SIM_SEED override the defaults.

use std::time::Instant;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument that names something else skips the run.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"simulate".contains(a.as_str()))
    {
        return;
    }
    let patients: u64 = env_or("SIM_PATIENTS", 100_000);
    let days: u32 = env_or("SIM_DAYS", 365);
    let threads: usize = env_or("SIM_THREADS", 2);
    let seed: u64 = env_or("SIM_SEED", 1);
    let out = std::env::temp_dir().join(format!("carepath-sim-bench-{}", std::process::id()));
    let opts = carepath_simulator::Options {
        pathways: vec![carepath_simulator::repo_pathways()],
        cohort: Some(patients),
        days: Some(days),
        seed: Some(seed),
        threads,
        out: Some(out.clone()),
        progress: true,
        ..Default::default()
    };
    let rss_before = carepath_simulator::peak_rss_mib();
    let started = Instant::now();
    let sim = match carepath_simulator::simulate(&opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("simulation failed: {e}");
            std::process::exit(2);
        }
    };
    let wall = started.elapsed().as_secs_f64();
    let peak = carepath_simulator::peak_rss_mib();
    let _ = std::fs::remove_dir_all(&out);
    let t = &sim.report.totals;
    let steps = t.steps;
    println!(
        "simulate: {patients} patients x {days} days on {threads} thread(s), {} pathway(s)",
        sim.report.pathways.len()
    );
    println!(
        "  wall time      {wall:8.2} s   (goal < 60 s: {})",
        if wall < 60.0 { "met" } else { "MISSED" }
    );
    println!(
        "  peak RSS       {peak:8.1} MiB (goal < 2048 MiB: {}; {rss_before:.1} MiB before the run)",
        if peak < 2048.0 { "met" } else { "MISSED" }
    );
    println!(
        "  steps          {steps:>10}  ({:.0} steps/s)",
        steps as f64 / wall.max(1e-9)
    );
    println!(
        "  tasks created  {:>10}   device readings {:>10}   follow-ups sent {:>9}",
        t.tasks_created, t.device_readings, t.follow_ups_sent
    );
    println!(
        "{}",
        serde_json::json!({
            "patients": patients,
            "days": days,
            "threads": threads,
            "wall_seconds": (wall * 100.0).round() / 100.0,
            "peak_rss_mib": (peak * 10.0).round() / 10.0,
            "steps": steps,
            "tasks_created": t.tasks_created,
            "device_readings": t.device_readings,
        })
    );
}
