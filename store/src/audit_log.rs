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
