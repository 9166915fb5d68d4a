//! Reads of the audit record for its verifier and its checkpoints (appending is in `queries`,
//! beside the writes it accompanies). The chain's rules live in [`crate::audit`].

use super::{Pool, Result, Row, Tx};
use crate::args;
use crate::audit::{AuditRow, ROW_COLUMNS};

/// The newest row's id and hash, if any.
pub async fn head(pool: &Pool) -> Result<Option<(i64, String)>> {
    Ok(pool
        .fetch(
            "SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1",
            vec![],
        )
        .await?
        .first()
        .map(|r| (r.i64(0), r.text(1))))
}

/// The newest row as a checkpoint covers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountedHead {
    /// Rows up to and including the newest.
    pub count: u64,
    pub id: i64,
    pub hash: String,
}

/// The newest row and the number of rows up to it, read in one statement so the three come from
/// one snapshot; `None` for an empty record.
pub async fn counted_head(pool: &Pool) -> Result<Option<CountedHead>> {
    let rows = pool
        .fetch(
            "SELECT a.id, a.hash, (SELECT COUNT(*) FROM audit_log b WHERE b.id <= a.id) FROM audit_log a ORDER BY a.id DESC LIMIT 1",
            vec![],
        )
        .await?;
    Ok(rows.first().map(|r| CountedHead {
        count: r.i64(2) as u64,
        id: r.i64(0),
        hash: r.text(1),
    }))
}

/// The scheme of the newest row, if any.
pub async fn newest_scheme(pool: &Pool) -> Result<Option<i64>> {
    Ok(pool
        .fetch(
            "SELECT scheme FROM audit_log ORDER BY id DESC LIMIT 1",
            vec![],
        )
        .await?
        .first()
        .map(|r| r.i64(0)))
}

/// Where the record is read from: pooled connections, or one transaction (which sees its own
/// uncommitted rows).
pub enum Reader<'a> {
    Pool(&'a Pool),
    Tx(&'a mut Tx),
}

impl Reader<'_> {
    /// Up to `limit` rows after id `after`, in id order.
    pub async fn page(&mut self, after: i64, limit: i64) -> Result<Vec<AuditRow>> {
        let sql =
            format!("SELECT {ROW_COLUMNS} FROM audit_log WHERE id > $1 ORDER BY id LIMIT {limit}");
        let rows: Vec<Row> = match self {
            Reader::Pool(p) => p.fetch(&sql, args![after]).await?,
            Reader::Tx(t) => t.fetch(&sql, args![after]).await?,
        };
        Ok(rows.iter().map(AuditRow::from_row).collect())
    }
}

/// What an auditor asks of the record: the entries of one institution, newest first, narrowed
/// by who acted, what they did and which patient it touched, a page at a time.
#[derive(Debug, Clone, Default)]
pub struct Search<'a> {
    pub institution: &'a str,
    pub actor: Option<&'a str>,
    /// An action, or a family of them by its prefix ending in `.` (`enrolment.`).
    pub action: Option<&'a str>,
    pub patient: Option<&'a str>,
    /// Entries older than this id (the last id of the previous page).
    pub before: Option<i64>,
    pub limit: i64,
}

/// The entries [`Search`] asks for, newest first.
pub async fn search(pool: &Pool, q: &Search<'_>) -> Result<Vec<AuditRow>> {
    let mut args: Vec<crate::db::Arg> = vec![q.institution.into()];
    let mut sql = format!("SELECT {ROW_COLUMNS} FROM audit_log WHERE institution_id = $1");
    if let Some(actor) = q.actor {
        args.push(actor.into());
        sql.push_str(&format!(" AND actor = ${}", args.len()));
    }
    match q.action {
        Some(family) if family.ends_with('.') => {
            args.push(family.into());
            let n = args.len();
            sql.push_str(&format!(" AND substr(action, 1, length(${n})) = ${n}"));
        }
        Some(action) => {
            args.push(action.into());
            sql.push_str(&format!(" AND action = ${}", args.len()));
        }
        None => {}
    }
    if let Some(patient) = q.patient {
        // `patients` is a JSON list of identifiers, which hold no quotes.
        args.push(format!("\"{patient}\"").into());
        let find = if pool.is_postgres() {
            "strpos"
        } else {
            "instr"
        };
        sql.push_str(&format!(" AND {find}(patients, ${}) > 0", args.len()));
    }
    if let Some(before) = q.before {
        args.push(before.into());
        sql.push_str(&format!(" AND id < ${}", args.len()));
    }
    sql.push_str(&format!(
        " ORDER BY id DESC LIMIT {}",
        q.limit.clamp(1, 500)
    ));
    let rows = pool.fetch(&sql, args).await?;
    Ok(rows.iter().map(AuditRow::from_row).collect())
}
