//! `carepath bench`: a nightly pass over a seeded cohort, with throughput, peak memory and the
//! database's own ceiling for inserting the same rows, measured in the same run so the ratio can
//! be read.

use std::time::Instant;

use anyhow::Context;
use carepath_engine::store::{self, stats};
use carepath_engine::{Programs, scheduler, seed};
use jiff::Timestamp;

pub(crate) async fn run(
    url: &str,
    enrolments: u64,
    pathways: &std::path::Path,
    batch_size: i64,
    workers: usize,
) -> anyhow::Result<serde_json::Value> {
    let pool = store::Pool::connect(url)
        .await
        .context("cannot open the benchmark database")?;
    store::migrate(&pool).await?;
    let existing = stats::enrolment_count(&pool).await?;
    if existing > 0 {
        anyhow::bail!(
            "the benchmark needs an empty database; {url} already holds {existing} enrolment(s)"
        );
    }
    let t0: Timestamp = "2026-06-01T18:00:00Z".parse()?;
    let programs = Programs::load_dir(pathways)?;
    store::publish(&pool, &programs, t0).await?;
    let programs = store::load_programs(&pool).await?;

    let started = Instant::now();
    let seeded = seed::seed(&pool, &programs, enrolments, 42, t0).await?;
    let seed_secs = started.elapsed().as_secs_f64();
    eprintln!("seeded {} enrolments in {seed_secs:.1}s", seeded.enrolments);

    // The first pass catches every enrolment up on months of seeded history; the second is an
    // ordinary nightly pass a day later. Both are measured.
    let mut passes = Vec::new();
    let mut written_by_table = vec![0; stats::WRITTEN_TABLES.len()];
    let mut analyze_seconds = None;
    for (name, hours) in [("catch_up", 8), ("nightly", 32)] {
        if name == "nightly" && pool.is_postgres() {
            // The catch-up pass multiplies the size of every fact table and leaves a dead index
            // entry for every enrolment it moved on. A server with autovacuum on vacuums and
            // re-analyzes them within the day; the benchmark does it explicitly, outside the
            // timed pass, so the nightly figure is that server's and not one planning from stale
            // statistics and stepping over the catch-up's dead rows.
            let started = Instant::now();
            stats::vacuum_analyze(&pool).await?;
            analyze_seconds = Some(started.elapsed().as_secs_f64());
        }
        let before = stats::written_table_rows(&pool).await?;
        let at = t0.checked_add(jiff::Span::new().hours(hours))?;
        let started = Instant::now();
        let pass = passes_at(&pool, &programs, at, batch_size, workers).await?;
        let secs = started.elapsed().as_secs_f64();
        let after = stats::written_table_rows(&pool).await?;
        let mut written = 0;
        for (i, (a, b)) in after.iter().zip(&before).enumerate() {
            written_by_table[i] += a - b;
            written += a - b;
        }
        // With several workers an enrolment is now and then stepped by two of them; the one
        // whose write finds the enrolment already moved on discards its result (`stale`). Only
        // steps that were written count toward the rate.
        let stepped = pass.stepped.saturating_sub(pass.stale);
        eprintln!("{name} pass: {stepped} stepped in {secs:.1}s");
        // `serve` follows its cron pass with the escalation sweep; timed on its own, after the
        // pass's rows are counted.
        let started = Instant::now();
        let escalated = store::queries::escalate_overdue(&pool, at).await?;
        let sweep_secs = started.elapsed().as_secs_f64();
        eprintln!("{name} escalation sweep: {escalated} escalated in {sweep_secs:.2}s");
        passes.push(serde_json::json!({
            "pass": name,
            "seconds": secs,
            "stepped": stepped,
            "stale": pass.stale,
            "transitions": pass.transitions,
            "actions": pass.actions,
            // Work of the pass that is not an enrolment step, done in the same timed span.
            "goals_evaluated": pass.goals_evaluated,
            "scale_reminders": pass.scale_reminders,
            "scale_expired": pass.scale_expired,
            "rows_written": written,
            "enrolment_steps_per_second": stepped as f64 / secs,
            "actions_per_second": pass.actions as f64 / secs,
            "rows_per_second": written as f64 / secs,
            "escalation_sweep": {"escalated": escalated, "seconds": sweep_secs},
        }));
    }
    let total_written: i64 = written_by_table.iter().sum();
    let ceiling = stats::insert_ceiling(
        &pool,
        &written_by_table,
        total_written.clamp(10_000, 200_000),
    )
    .await?;
    for p in &mut passes {
        let rate = p["rows_per_second"].as_f64().unwrap_or(0.0);
        p["ratio_to_insert_ceiling"] = serde_json::json!(rate / ceiling);
    }
    // What the database holds once every enrolment has caught up and had a night: the record of
    // each patient included, indexes included.
    let (bytes, by_table) = stats::storage_bytes(&pool).await?;
    let per_enrolment = bytes as f64 / seeded.enrolments.max(1) as f64;
    let out = serde_json::json!({
        "backend": pool.backend(),
        "workers": workers,
        "enrolments": seeded.enrolments,
        "stored_bytes": bytes,
        "stored_bytes_per_enrolment": per_enrolment,
        "stored_bytes_by_table": by_table.iter().take(12).map(|(t, b)| serde_json::json!({"table": t, "bytes": b})).collect::<Vec<_>>(),
        "rows_written_by_table": stats::WRITTEN_TABLES.iter().zip(&written_by_table).map(|(t, n)| serde_json::json!({"table": t, "rows": n})).collect::<Vec<_>>(),
        "seed_seconds": seed_secs,
        "seed_transfer": seeded.transfer,
        "seed_patients_per_second": seeded.patients as f64 / seed_secs,
        "vacuum_analyze_before_nightly_seconds": analyze_seconds,
        "passes": passes,
        "insert_ceiling_rows_per_second": ceiling,
        "peak_rss_mib": carepath_simulator::peak_rss_mib(),
    });
    pool.close().await;
    Ok(out)
}

/// `workers` scheduler passes at `at` at once over one database, as that many `carepath run`
/// processes would share it (on PostgreSQL each claims its batches with `SKIP LOCKED`; SQLite
/// takes one writer at a time); what they did, summed.
async fn passes_at(
    pool: &store::Pool,
    programs: &Programs,
    at: Timestamp,
    batch_size: i64,
    workers: usize,
) -> anyhow::Result<scheduler::PassSummary> {
    let opts = scheduler::PassOptions {
        batch_size,
        max_batches: None,
    };
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let (pool, programs, opts) = (pool.clone(), programs.clone(), opts.clone());
        set.spawn(async move { scheduler::run_pass(&pool, &programs, at, &opts).await });
    }
    let mut sum = scheduler::PassSummary::default();
    while let Some(done) = set.join_next().await {
        let p = done??;
        sum.stepped += p.stepped;
        sum.transitions += p.transitions;
        sum.actions += p.actions;
        sum.goals_evaluated += p.goals_evaluated;
        sum.scale_reminders += p.scale_reminders;
        sum.scale_expired += p.scale_expired;
        sum.errors += p.errors;
        sum.stale += p.stale;
    }
    Ok(sum)
}

/// `carepath bench-api`: a database with `tasks` open tasks across the demo alliance (built in bulk
/// unless `reuse`), fresh staff tokens printed as `token INSTITUTION ROLE TOKEN` for every role that
/// reads task queues, then the admin API alone (no scheduler), for a load generator in another
/// process (`bench/queue-pull.sh`).
pub(crate) async fn api(
    url: &str,
    tasks: u64,
    pathways: &std::path::Path,
    addr: &str,
    reuse: bool,
    serve: bool,
) -> anyhow::Result<()> {
    let pool = store::Pool::connect(url)
        .await
        .context("cannot open the benchmark database")?;
    let started = Instant::now();
    store::migrate(&pool).await?;
    let migrate_secs = started.elapsed().as_secs_f64();
    let enrolments = stats::enrolment_count(&pool).await?;
    if reuse {
        if enrolments == 0 {
            anyhow::bail!("--reuse needs a database built by an earlier `carepath bench-api`");
        }
        eprintln!("migrations applied in {migrate_secs:.1}s");
    } else {
        if enrolments > 0 {
            anyhow::bail!(
                "{url} already holds {enrolments} enrolment(s); pass --reuse to serve it as it is, or start from an empty database"
            );
        }
        let now = Timestamp::now();
        let programs = Programs::load_dir(pathways)?;
        store::publish(&pool, &programs, now).await?;
        let programs = store::load_programs(&pool).await?;
        let started = Instant::now();
        let mut last_report = Instant::now();
        let summary = seed::task_queue(&pool, &programs, tasks, now, |rows| {
            if last_report.elapsed().as_secs() >= 5 {
                eprintln!(
                    "  {rows} rows written ({:.0}s)",
                    started.elapsed().as_secs_f64()
                );
                last_report = Instant::now();
            }
        })
        .await?;
        println!(
            "built {} open and {} claimed or done task(s) for {} enrolment(s) on {} in {:.1}s",
            summary.open_tasks,
            summary.closed_tasks,
            summary.enrolments,
            pool.backend(),
            started.elapsed().as_secs_f64()
        );
    }
    let open = stats::open_task_count(&pool).await?;
    println!("open tasks: {open}");
    let tokens = seed::demo_staff(&pool).await?;
    for (_, inst, role, token) in &tokens {
        if carepath_admin_api::allowed(
            std::slice::from_ref(role),
            carepath_admin_api::Module::Queue,
        ) {
            println!("token {inst} {role} {token}");
        }
    }
    let programs = store::load_programs(&pool).await?;
    // The workstation's board for the role with the most open tasks of its institution.
    if let Some((open, staff, inst, role)) = busiest_board(&pool, &tokens).await? {
        let samples = board_render(&pool, &programs, &staff).await?;
        println!(
            "board_render {}",
            serde_json::json!({"staff": staff, "institution": inst, "role": role, "open_tasks_on_board": open,
                               "samples": samples.len(), "ms": summary_ms(&samples)})
        );
    }
    if !serve {
        pool.close().await;
        return Ok(());
    }
    let app = carepath_admin_api::router(carepath_admin_api::AppState::new(pool, programs));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    println!("serving the admin API on http://{addr}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    crate::cli::serve_until_interrupted(listener, app).await?;
    Ok(())
}

/// The staff member whose board (institution and role) holds the most open tasks, among the
/// staff the demo alliance has tokens for.
async fn busiest_board(
    pool: &store::Pool,
    tokens: &[(String, String, String, String)],
) -> anyhow::Result<Option<(i64, String, String, String)>> {
    let mut best: Option<(i64, String, String, String)> = None;
    for (staff, inst, role, _) in tokens {
        if !carepath_admin_api::allowed(
            std::slice::from_ref(role),
            carepath_admin_api::Module::Queue,
        ) {
            continue;
        }
        let open = stats::open_tasks_on_board(pool, inst, role).await?;
        if best.as_ref().is_none_or(|b| open > b.0) {
            best = Some((open, staff.clone(), inst.clone(), role.clone()));
        }
    }
    Ok(best)
}

/// Signs `staff` in to the workstation as a browser does (the sign-in page, its form, the session
/// cookie) on a server of its own, then loads the task board `BOARD_SAMPLES` times: each load's
/// time in milliseconds, request to last byte, on localhost.
async fn board_render(
    pool: &store::Pool,
    programs: &Programs,
    staff: &str,
) -> anyhow::Result<Vec<f64>> {
    const BOARD_SAMPLES: usize = 30;
    let password = format!("bench-{}", std::process::id());
    let hash = carepath_admin_api::web::hash_password(&password).map_err(anyhow::Error::msg)?;
    store::sign_in::set_credential(
        pool,
        staff,
        store::sign_in::Credential::Password(&hash),
        Timestamp::now(),
    )
    .await?;
    let app = carepath_admin_api::router(carepath_admin_api::AppState::new(
        pool.clone(),
        programs.clone(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(carepath_admin_api::serve(listener, app, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let mut cookies: Vec<(String, String)> = Vec::new();
    let keep = |res: &reqwest::Response, cookies: &mut Vec<(String, String)>| {
        for c in res.headers().get_all(reqwest::header::SET_COOKIE) {
            let Ok(c) = c.to_str() else { continue };
            let kv = c.split(';').next().unwrap_or_default();
            if let Some((k, v)) = kv.split_once('=') {
                cookies.retain(|(n, _)| n != k);
                cookies.push((k.to_string(), v.to_string()));
            }
        }
    };
    let header = |cookies: &[(String, String)]| {
        cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let page = client.get(format!("{base}/app/login")).send().await?;
    keep(&page, &mut cookies);
    let html = page.text().await?;
    let csrf = html
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("the sign-in page carries no form token")?
        .to_string();
    let signed = client
        .post(format!("{base}/app/login"))
        .header(reqwest::header::COOKIE, header(&cookies))
        .form(&[
            ("csrf", csrf.as_str()),
            ("staff", staff),
            ("password", password.as_str()),
            ("totp", ""),
        ])
        .send()
        .await?;
    keep(&signed, &mut cookies);
    anyhow::ensure!(
        signed.status().is_redirection(),
        "signing {staff} in answered {}",
        signed.status()
    );
    let mut samples = Vec::with_capacity(BOARD_SAMPLES);
    for _ in 0..BOARD_SAMPLES {
        let started = Instant::now();
        let res = client
            .get(format!("{base}/app/board"))
            .header(reqwest::header::COOKIE, header(&cookies))
            .send()
            .await?;
        let status = res.status();
        let body = res.bytes().await?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            status.is_success() && !body.is_empty(),
            "the board answered {status}"
        );
    }
    let _ = stop.send(());
    let _ = server.await;
    Ok(samples)
}

/// Median, 95th percentile and largest of millisecond samples.
fn summary_ms(samples: &[f64]) -> serde_json::Value {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let at = |q: f64| {
        s.get(((s.len() as f64 - 1.0) * q).round() as usize)
            .copied()
    };
    serde_json::json!({"median": at(0.5), "p95": at(0.95), "max": s.last()})
}
