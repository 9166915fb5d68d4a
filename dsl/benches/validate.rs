//! Parses and validates every pathway file under `pathways/` (YAML and Rhai, fragments included)
//! N times and prints the time per full validation run and the peak resident memory.
//!
//! `cargo bench -p carepath-dsl` (no criterion: a plain binary with `harness = false`).
//! `VALIDATE_RUNS` sets N (default 200).

use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("pathways");
    let files = carepath_dsl::pathway_files(std::slice::from_ref(&root))
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", root.display()));
    let runs: u32 = std::env::var("VALIDATE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let bytes: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();

    // One run outside the timing, to report what the files hold.
    let (mut errors, mut warnings) = (0usize, 0usize);
    for f in &files {
        let c = carepath_dsl::compile_file(f);
        errors += c.errors().count();
        warnings += c.diagnostics.len() - c.errors().count();
        for d in c.errors() {
            eprintln!("{d}");
        }
    }

    let started = Instant::now();
    let mut diagnostics = 0usize;
    for _ in 0..runs {
        for f in &files {
            let c = std::hint::black_box(carepath_dsl::compile_file(std::hint::black_box(f)));
            diagnostics += c.diagnostics.len();
        }
    }
    let total = started.elapsed();
    std::hint::black_box(diagnostics);

    let mean_ms = total.as_secs_f64() * 1000.0 / f64::from(runs.max(1));
    println!(
        "pathways:   {}",
        root.canonicalize().unwrap_or(root.clone()).display()
    );
    println!(
        "files:      {} ({} bytes; {errors} errors, {warnings} warnings)",
        files.len(),
        bytes
    );
    println!("runs:       {runs}");
    println!("total:      {:.3} s", total.as_secs_f64());
    println!("mean:       {mean_ms:.3} ms per validation of all pathways");
    if !files.is_empty() {
        println!("per file:   {:.3} ms", mean_ms / files.len() as f64);
    }
    match peak_rss_kib() {
        Some(kib) => println!("peak RSS:   {:.1} MiB (VmHWM)", kib as f64 / 1024.0),
        None => println!("peak RSS:   unavailable (no /proc/self/status)"),
    }
}

/// The peak resident set size in KiB, from `VmHWM` in /proc/self/status (Linux).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
