//! Operational figures read by the metrics endpoint, the CLI and the benchmark: whether the
//! database answers, the scheduler's and the outbox's backlogs, open work per board, row counts,
//! and the benchmark's insert ceiling. None of them touches patient data, so none is audited.

use std::time::Instant;

use jiff::Timestamp;

use super::{Pool, Result, StoreError};
use crate::args;

/// Runs the cheapest statement there is; an error means the database does not answer.
pub async fn ping(pool: &Pool) -> Result<()> {
    pool.fetch("SELECT 1", vec![]).await?;
    Ok(())
}

/// Active enrolments due now, and the oldest wake time among them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DueBacklog {
    pub due: i64,
    pub oldest_wake_at: Option<i64>,
}

pub async fn due_backlog(pool: &Pool, now: Timestamp) -> Result<DueBacklog> {
    let rows = pool
        .fetch(
            "SELECT COUNT(*), MIN(next_wake_at) FROM enrolments WHERE status = 'active' AND next_wake_at IS NOT NULL AND next_wake_at <= $1",
            args![now.as_second()],
        )
        .await?;
    Ok(rows
        .first()
        .map(|r| DueBacklog {
            due: r.i64(0),
            oldest_wake_at: r.opt_i64(1),
        })
        .unwrap_or_default())
}

/// Messages pending whose next attempt is due.
pub async fn outbox_backlog(pool: &Pool, now: Timestamp) -> Result<i64> {
    let rows = pool
        .fetch(
            "SELECT COUNT(*) FROM outbox WHERE status = 'pending' AND next_attempt_at <= $1",
            args![now.as_second()],
        )
        .await?;
    Ok(rows.first().map(|r| r.i64(0)).unwrap_or(0))
}

/// Open tasks of one board of one institution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenBoard {
    pub institution_id: String,
    pub role: String,
    pub open: i64,
    /// Open and due before `now`.
    pub overdue: i64,
}

/// Open work per (institution, role), in that order.
pub async fn open_boards(pool: &Pool, now: Timestamp) -> Result<Vec<OpenBoard>> {
    let rows = pool
        .fetch(
            "SELECT institution_id, role, COUNT(*), COUNT(CASE WHEN due_at < $1 THEN 1 END) FROM tasks WHERE status = 'open' GROUP BY institution_id, role ORDER BY institution_id, role",
            args![now.as_second()],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| OpenBoard {
            institution_id: r.text(0),
            role: r.text(1),
            open: r.i64(2),
            overdue: r.i64(3),
        })
        .collect())
}

async fn count(pool: &Pool, sql: &str) -> Result<i64> {
    Ok(pool
        .fetch(sql, vec![])
        .await?
        .first()
        .map(|r| r.i64(0))
        .unwrap_or(0))
}

pub async fn patient_count(pool: &Pool) -> Result<i64> {
    count(pool, "SELECT COUNT(*) FROM patients").await
}

pub async fn enrolment_count(pool: &Pool) -> Result<i64> {
    count(pool, "SELECT COUNT(*) FROM enrolments").await
}

pub async fn open_task_count(pool: &Pool) -> Result<i64> {
    count(pool, "SELECT COUNT(*) FROM tasks WHERE status = 'open'").await
}

/// Open tasks on one board: an institution's tasks for a role.
pub async fn open_tasks_on_board(pool: &Pool, institution: &str, role: &str) -> Result<i64> {
    let rows = pool
        .fetch(
            "SELECT COUNT(*) FROM tasks WHERE institution_id = $1 AND role = $2 AND status = 'open'",
            crate::args![institution, role],
        )
        .await?;
    Ok(rows.first().map_or(0, |r| r.i64(0)))
}

/// Refreshes PostgreSQL's planner statistics after a bulk load (SQLite needs none here).
pub async fn analyze(pool: &Pool) -> Result<()> {
    if pool.is_postgres() {
        pool.exec("ANALYZE", vec![]).await?;
    }
    Ok(())
}

/// What PostgreSQL's autovacuum does within a day after a large pass: `VACUUM ANALYZE`. A
/// catch-up that moves a million enrolments on leaves a dead entry for each at the head of the
/// due-enrolment index; until they are vacuumed, every claim of the next pass steps over them
/// (measured at 1,000,000 enrolments: the nightly pass 17.3 s before, 13.6 s after).
pub async fn vacuum_analyze(pool: &Pool) -> Result<()> {
    if pool.is_postgres() {
        pool.exec("VACUUM ANALYZE", vec![]).await?;
    }
    Ok(())
}

/// The tables a scheduler pass writes produced rows to.
pub const WRITTEN_TABLES: [&str; 8] = [
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
pub async fn written_table_rows(pool: &Pool) -> Result<Vec<i64>> {
    let mut counts = Vec::with_capacity(WRITTEN_TABLES.len());
    for t in WRITTEN_TABLES {
        counts.push(count(pool, &format!("SELECT COUNT(*) FROM {t}")).await?);
    }
    Ok(counts)
}

/// Rows per transaction and per statement when the ceiling copies rows.
const CEILING_TX_ROWS: i64 = 5_000;
const CEILING_STATEMENT_ROWS: i64 = 500;

/// Creates `bench_ceiling_<table>`: an empty table with the columns, constraints and indexes of
/// `table` (triggers aside: they guard updates and deletes, which the ceiling does not do).
async fn clone_table(pool: &Pool, table: &str) -> Result<String> {
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
            args![table],
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
        if !sql.contains(&copy) {
            return Err(StoreError::Invalid(format!(
                "cannot copy the schema of {table}: unexpected {kind} statement {sql}"
            )));
        }
        pool.exec(&sql, vec![]).await?;
    }
    Ok(copy)
}

/// The database's ceiling for the rows a pass wrote (`written`, per [`WRITTEN_TABLES`]): about `n`
/// of them, taken from each table in the proportion the passes wrote to it, copied by the
/// database itself (`INSERT … SELECT`, no client work at all) into empty tables with the same
/// columns and indexes, `CEILING_STATEMENT_ROWS` per statement and `CEILING_TX_ROWS` per
/// transaction. Rows per second.
pub async fn insert_ceiling(pool: &Pool, written: &[i64], n: i64) -> Result<f64> {
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
                args![take],
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
                        args![from, to],
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

/// Bytes the database holds, in all and per table (indexes included): PostgreSQL's relation sizes
/// over the public schema; SQLite's pages in use after a WAL checkpoint, per table where the library
/// has the `dbstat` table (else only the total).
pub async fn storage_bytes(pool: &Pool) -> Result<(i64, Vec<(String, i64)>)> {
    if pool.is_postgres() {
        let rows = pool
            .fetch(
                "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 2 DESC",
                vec![],
            )
            .await?;
        let tables: Vec<(String, i64)> = rows.iter().map(|r| (r.text(0), r.i64(1))).collect();
        return Ok((tables.iter().map(|(_, b)| b).sum(), tables));
    }
    pool.exec("PRAGMA wal_checkpoint(TRUNCATE)", vec![]).await?;
    // Pages in use: free pages (the benchmark's ceiling drops the tables it copied into, and the
    // file keeps their pages for reuse) hold nothing.
    let total = count(
        pool,
        "SELECT (page_count - freelist_count) * page_size FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()",
    )
    .await?;
    // Each index is counted with its table (`sqlite_master.tbl_name`).
    let tables = match pool
        .fetch(
            "SELECT m.tbl_name, SUM(d.pgsize) FROM dbstat d JOIN sqlite_master m ON m.name = d.name \
             GROUP BY m.tbl_name ORDER BY 2 DESC",
            vec![],
        )
        .await
    {
        Ok(rows) => rows.iter().map(|r| (r.text(0), r.i64(1))).collect(),
        Err(_) => Vec::new(),
    };
    Ok((total, tables))
}
