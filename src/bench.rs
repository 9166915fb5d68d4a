//! `carepath bench`: a nightly pass over a seeded cohort, with throughput, peak memory and the
//! database's own ceiling for inserting the same rows, measured in the same run so the ratio can
//! be read.

use std::time::Instant;

use anyhow::Context;
use carepath_engine::{Programs, scheduler, seed, store};
use jiff::Timestamp;

pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

const WRITTEN_TABLES: [&str; 8] = [
    "tasks",
    "follow_ups",
    "outbox",
    "scale_pushes",
    "risk_predictions",
    "referrals",
    "alarm_rules",
    "record",
];

/// Rows in each of [`WRITTEN_TABLES`], in that order.
async fn table_rows(pool: &store::Pool) -> anyhow::Result<Vec<i64>> {
    let mut counts = Vec::with_capacity(WRITTEN_TABLES.len());
    for t in WRITTEN_TABLES {
        counts.push(
            pool.fetch(&format!("SELECT COUNT(*) FROM {t}"), vec![])
                .await?
                .first()
                .map(|r| r.i64(0))
                .unwrap_or(0),
        );
    }
    Ok(counts)
}

/// Rows per transaction and per statement when the ceiling copies rows.
const CEILING_TX_ROWS: i64 = 5_000;
const CEILING_STATEMENT_ROWS: i64 = 500;

/// Creates `bench_ceiling_<table>`: an empty table with the columns, constraints and indexes of
/// `table` (triggers aside: they guard updates and deletes, which the ceiling does not do).
async fn clone_table(pool: &store::Pool, table: &str) -> anyhow::Result<String> {
    let copy = format!("bench_ceiling_{table}");
    pool.exec(&format!("DROP TABLE IF EXISTS {copy}"), vec![])
        .await?;
    if pool.is_postgres() {
        pool.exec(
            &format!(
                "CREATE TABLE {copy} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)"
            ),
            vec![],
        )
        .await?;
        return Ok(copy);
    }
    let schema = pool
        .fetch(
            "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = $1 AND type IN ('table', 'index') AND sql IS NOT NULL ORDER BY type DESC",
            vec![store::Arg::T(table.into())],
        )
        .await?;
    for r in schema {
        let (kind, name, sql) = (r.text(0), r.text(1), r.text(2));
        let sql = if kind == "table" {
            sql.replacen(
                &format!("CREATE TABLE {table}"),
                &format!("CREATE TABLE {copy}"),
                1,
            )
        } else {
            sql.replacen(
                &format!("INDEX {name} ON {table} "),
                &format!("INDEX bench_ceiling_{name} ON {copy} "),
                1,
            )
        };
        anyhow::ensure!(
            sql.contains(&copy),
            "cannot copy the schema of {table}: unexpected {kind} statement {sql}"
        );
        pool.exec(&sql, vec![]).await?;
    }
    Ok(copy)
}

/// The database's ceiling for the rows the passes wrote: about `n` of them, taken from each table in
/// the proportion the passes wrote to it, copied by the database itself (`INSERT … SELECT`, no
/// client work at all) into empty tables with the same columns and indexes, `CEILING_STATEMENT_ROWS`
/// per statement and `CEILING_TX_ROWS` per transaction. Rows per second.
async fn insert_ceiling(pool: &store::Pool, written: &[i64], n: i64) -> anyhow::Result<f64> {
    let total: i64 = written.iter().sum::<i64>().max(1);
    let mut plan = Vec::new();
    for (table, &w) in WRITTEN_TABLES.iter().zip(written) {
        let take = n * w / total;
        if take == 0 {
            continue;
        }
        let copy = clone_table(pool, table).await?;
        let bounds = pool
            .fetch(
                &format!("SELECT MIN(id), MAX(id) FROM (SELECT id FROM {table} ORDER BY id DESC LIMIT $1) AS newest"),
                vec![store::Arg::I(take)],
            )
            .await?;
        let (lo, hi) = bounds
            .first()
            .map(|r| (r.opt_i64(0).unwrap_or(0), r.opt_i64(1).unwrap_or(-1)))
            .unwrap_or((0, -1));
        plan.push((*table, copy, lo, hi));
    }
    let mut copied = 0u64;
    let started = Instant::now();
    for (table, copy, lo, hi) in &plan {
        let mut from = *lo;
        while from <= *hi {
            let mut tx = pool.begin().await?;
            let tx_end = (from + CEILING_TX_ROWS).min(hi + 1);
            while from < tx_end {
                let to = (from + CEILING_STATEMENT_ROWS).min(tx_end);
                copied += tx
                    .exec(
                        &format!(
                            "INSERT INTO {copy} SELECT * FROM {table} WHERE id >= $1 AND id < $2"
                        ),
                        vec![store::Arg::I(from), store::Arg::I(to)],
                    )
                    .await?;
                from = to;
            }
            tx.commit().await?;
        }
    }
    let rate = copied as f64 / started.elapsed().as_secs_f64();
    for (_, copy, _, _) in &plan {
        pool.exec(&format!("DROP TABLE {copy}"), vec![]).await?;
    }
    Ok(rate)
}

pub async fn run(
    url: &str,
    enrolments: u64,
    pathways: &std::path::Path,
    batch_size: i64,
) -> anyhow::Result<serde_json::Value> {
    let pool = store::Pool::connect(url)
        .await
        .context("cannot open the benchmark database")?;
    store::migrate(&pool).await?;
    let existing = pool
        .fetch("SELECT COUNT(*) FROM enrolments", vec![])
        .await?
        .first()
        .map(|r| r.i64(0))
        .unwrap_or(0);
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
    let mut written_by_table = vec![0; WRITTEN_TABLES.len()];
    let mut analyze_seconds = None;
    for (name, hours) in [("catch_up", 8), ("nightly", 32)] {
        if name == "nightly" && pool.is_postgres() {
            // The catch-up pass multiplies the size of every fact table. A server with autovacuum
            // on re-analyzes them within the day; the benchmark does it explicitly, outside the
            // timed pass, so the nightly figure is that server's and not one planning from stale
            // statistics.
            let started = Instant::now();
            pool.exec("ANALYZE", vec![]).await?;
            analyze_seconds = Some(started.elapsed().as_secs_f64());
        }
        let before = table_rows(&pool).await?;
        let at = t0.checked_add(jiff::Span::new().hours(hours))?;
        let started = Instant::now();
        let pass = scheduler::run_pass(
            &pool,
            &programs,
            at,
            &scheduler::PassOptions {
                batch_size,
                max_batches: None,
            },
        )
        .await?;
        let secs = started.elapsed().as_secs_f64();
        let after = table_rows(&pool).await?;
        let mut written = 0;
        for (i, (a, b)) in after.iter().zip(&before).enumerate() {
            written_by_table[i] += a - b;
            written += a - b;
        }
        eprintln!("{name} pass: {} stepped in {secs:.1}s", pass.stepped);
        passes.push(serde_json::json!({
            "pass": name,
            "seconds": secs,
            "stepped": pass.stepped,
            "transitions": pass.transitions,
            "actions": pass.actions,
            // Work of the pass that is not an enrolment step, done in the same timed span.
            "goals_evaluated": pass.goals_evaluated,
            "scale_reminders": pass.scale_reminders,
            "scale_expired": pass.scale_expired,
            "rows_written": written,
            "enrolment_steps_per_second": pass.stepped as f64 / secs,
            "actions_per_second": pass.actions as f64 / secs,
            "rows_per_second": written as f64 / secs,
        }));
    }
    let total_written: i64 = written_by_table.iter().sum();
    let ceiling = insert_ceiling(
        &pool,
        &written_by_table,
        total_written.clamp(10_000, 200_000),
    )
    .await?;
    for p in &mut passes {
        let rate = p["rows_per_second"].as_f64().unwrap_or(0.0);
        p["ratio_to_insert_ceiling"] = serde_json::json!(rate / ceiling);
    }
    let out = serde_json::json!({
        "backend": pool.backend(),
        "enrolments": seeded.enrolments,
        "seed_seconds": seed_secs,
        "analyze_before_nightly_seconds": analyze_seconds,
        "passes": passes,
        "insert_ceiling_rows_per_second": ceiling,
        "peak_rss_mib": peak_rss_mib(),
    });
    pool.close().await;
    Ok(out)
}

/// `carepath bench-api`: a database with `tasks` open tasks across the demo alliance (built in bulk
/// unless `reuse`), fresh staff tokens printed as `token INSTITUTION ROLE TOKEN` for every role that
/// reads task queues, then the admin API alone (no scheduler), for a load generator in another
/// process (`bench/queue-pull.sh`).
pub async fn api(
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
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            anyhow::Ok(
                pool.fetch(sql, vec![])
                    .await?
                    .first()
                    .map(|r| r.i64(0))
                    .unwrap_or(0),
            )
        }
    };
    let enrolments = count("SELECT COUNT(*) FROM enrolments").await?;
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
    let open = count("SELECT COUNT(*) FROM tasks WHERE status = 'open'").await?;
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
    if !serve {
        pool.close().await;
        return Ok(());
    }
    let programs = store::load_programs(&pool).await?;
    let app = carepath_admin_api::router(carepath_admin_api::AppState::new(pool, programs));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    println!("serving the admin API on http://{addr}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    carepath_admin_api::serve(listener, app, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
