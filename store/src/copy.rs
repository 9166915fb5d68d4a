//! PostgreSQL's `COPY … FROM STDIN` for bulk writes (importing and seeding patients).
//!
//! A batch of thousands of enrolments writes tens of thousands of rows; as statement parameters
//! (`UNNEST` of column arrays) each row is bound, parsed and planned through a statement, as COPY
//! it is one stream the server reads straight into the table. Rows are encoded in COPY's binary
//! format: every value is typed and sized, so a tab, a newline, a backslash or a text reading
//! `\N` is only bytes, and no escaping can go wrong.
//!
//! Rows that nothing can conflict with (a new patient, an enrolment under an id just drawn from
//! its sequence) are copied into their table. Rows with a dedupe key are copied into a temporary
//! staging table of their shape and moved into their table by `INSERT … SELECT … ON CONFLICT
//! (dedupe_key) DO NOTHING`, with the expressions of the statement path's `VALUES` tuple, in the
//! order they were buffered: both paths write the same rows, under the same ids, and a batch
//! written again adds nothing. Staging tables live as long as their connection and are emptied
//! at every commit (`ON COMMIT DELETE ROWS`) and before every use, by `DELETE` rather than
//! `TRUNCATE`: truncating gives the table a new file and leaves a dead catalog row behind each
//! time, which thousands of batches would pile up in `pg_class`.
//!
//! A table with fewer than [`COPY_MIN_ROWS`] rows in a batch is written as one statement instead
//! (its columns as arrays, the statement path's `INSERT … SELECT … FROM UNNEST`, with the same
//! expressions): the end of a COPY waits for the server to acknowledge the stream, which for a
//! short one is mostly the server's delayed acknowledgement (about 40 ms, the driver leaving
//! Nagle's algorithm on), longer than binding the rows.

use super::db::{Arg, DbError, Row, Tx};
use super::writer::insert_unnest;

/// The fewest rows of one table in one call that are sent by COPY; fewer are one statement.
pub(crate) const COPY_MIN_ROWS: usize = 256;

/// The type of a staged column, taken from the first row's argument (as
/// [`super::db::Column::from_rows`] types a column-array parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnType {
    Int,
    Real,
    Text,
}

impl ColumnType {
    fn of(a: &Arg) -> ColumnType {
        match a {
            Arg::I(_) | Arg::OptI(_) => ColumnType::Int,
            Arg::F(_) | Arg::OptF(_) => ColumnType::Real,
            Arg::T(_) | Arg::OptT(_) => ColumnType::Text,
        }
    }

    fn sql(self) -> &'static str {
        match self {
            ColumnType::Int => "bigint",
            ColumnType::Real => "double precision",
            ColumnType::Text => "text",
        }
    }

    fn letter(self) -> char {
        match self {
            ColumnType::Int => 'i',
            ColumnType::Real => 'r',
            ColumnType::Text => 't',
        }
    }
}

/// The column types of `rows`, from the first row.
pub(crate) fn types_of(rows: &[Vec<Arg>]) -> Vec<ColumnType> {
    rows.first()
        .map(|r| r.iter().map(ColumnType::of).collect())
        .unwrap_or_default()
}

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// `rows` in COPY's binary format, each preceded by its 1-based position when `ordinal` is set.
/// A value must fit its column's type (an integer fits a real column); any value may be NULL.
pub(crate) fn encode(
    rows: &[Vec<Arg>],
    types: &[ColumnType],
    ordinal: bool,
) -> Result<Vec<u8>, DbError> {
    let fields = types.len() + usize::from(ordinal);
    let fields = i16::try_from(fields)
        .map_err(|_| DbError::Invalid(format!("{fields} columns are too many for COPY")))?;
    // The exact size, so that the buffer is never moved while it grows.
    let size: usize = rows
        .iter()
        .flatten()
        .map(|a| match a {
            Arg::OptI(None) | Arg::OptF(None) | Arg::OptT(None) => 4,
            Arg::I(_) | Arg::OptI(Some(_)) | Arg::F(_) | Arg::OptF(Some(_)) => 12,
            Arg::T(v) | Arg::OptT(Some(v)) => 4 + v.len(),
        })
        .sum();
    let per_row = 2 + if ordinal { 12 } else { 0 };
    let mut out = Vec::with_capacity(21 + rows.len() * per_row + size);
    out.extend_from_slice(SIGNATURE);
    out.extend_from_slice(&0i32.to_be_bytes()); // flags
    out.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    for (i, row) in rows.iter().enumerate() {
        if row.len() != types.len() {
            return Err(DbError::Invalid(format!(
                "row {} has {} values for {} columns",
                i + 1,
                row.len(),
                types.len()
            )));
        }
        out.extend_from_slice(&fields.to_be_bytes());
        if ordinal {
            int(&mut out, i as i64 + 1);
        }
        for (j, (a, t)) in row.iter().zip(types).enumerate() {
            match (t, a) {
                (_, Arg::OptI(None) | Arg::OptF(None) | Arg::OptT(None)) => {
                    out.extend_from_slice(&(-1i32).to_be_bytes());
                }
                (ColumnType::Int, Arg::I(v) | Arg::OptI(Some(v))) => int(&mut out, *v),
                (ColumnType::Real, Arg::F(v) | Arg::OptF(Some(v))) => real(&mut out, *v),
                (ColumnType::Real, Arg::I(v) | Arg::OptI(Some(v))) => real(&mut out, *v as f64),
                (ColumnType::Text, Arg::T(v) | Arg::OptT(Some(v))) => {
                    let len = i32::try_from(v.len()).map_err(|_| {
                        DbError::Invalid(format!("a text of {} bytes is too long", v.len()))
                    })?;
                    out.extend_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(v.as_bytes());
                }
                (t, a) => {
                    return Err(DbError::Invalid(format!(
                        "row {}, column {}: {a:?} is not a value of type {}",
                        i + 1,
                        j + 1,
                        t.sql()
                    )));
                }
            }
        }
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    Ok(out)
}

fn int(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&8i32.to_be_bytes());
    out.extend_from_slice(&v.to_be_bytes());
}

fn real(out: &mut Vec<u8>, v: f64) {
    out.extend_from_slice(&8i32.to_be_bytes());
    out.extend_from_slice(&v.to_bits().to_be_bytes());
}

/// Copies `rows` into `table`'s `columns` (a comma-separated list); returns how many were
/// copied. The columns' types in the table must be the values' (`bigint`, `double precision`,
/// `text`). A row the table refuses (a key already stored, a missing reference) fails the whole
/// copy, and with it the transaction. Fewer than [`COPY_MIN_ROWS`] rows are one statement, which
/// fails alike.
pub(crate) async fn copy_into(
    tx: &mut Tx,
    table: &str,
    columns: &str,
    rows: &[Vec<Arg>],
) -> Result<u64, DbError> {
    if rows.is_empty() {
        return Ok(0);
    }
    if rows.len() < COPY_MIN_ROWS {
        let select: Vec<String> = (1..=rows[0].len()).map(|i| format!("u.c{i}")).collect();
        let (n, _) =
            insert_unnest(tx, table, columns, &select.join(", "), rows, false, None).await?;
        return Ok(n);
    }
    let data = encode(rows, &types_of(rows), false)?;
    tx.copy_in(
        &format!("COPY {table} ({columns}) FROM STDIN (FORMAT binary)"),
        &data,
    )
    .await
}

/// Writes `rows` into `table` through a staging table: each row's values `c1 … cN` become the
/// row `select` makes of them (an expression list over `u.c1 … u.cN`, `u` being the staged row),
/// inserted into `columns` unless its dedupe key is already stored, in the order of `rows`.
/// Returns how many were inserted and, with `returning`, those columns of each inserted row.
/// Fewer than [`COPY_MIN_ROWS`] rows are one statement with the same `select`, which writes the
/// same rows.
pub(crate) async fn insert_staged(
    tx: &mut Tx,
    table: &str,
    columns: &str,
    select: &str,
    rows: &[Vec<Arg>],
    returning: Option<&str>,
) -> Result<(u64, Vec<Row>), DbError> {
    if rows.is_empty() {
        return Ok((0, Vec::new()));
    }
    if rows.len() < COPY_MIN_ROWS {
        return insert_unnest(tx, table, columns, select, rows, true, returning).await;
    }
    let types = types_of(rows);
    let shape: String = types.iter().map(|t| t.letter()).collect();
    let staging = format!("copy_{table}_{shape}");
    let defs: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, t)| format!("c{} {}", i + 1, t.sql()))
        .collect();
    let names: Vec<String> = (1..=types.len()).map(|i| format!("c{i}")).collect();
    // `IF NOT EXISTS` says "already exists, skipping" as a notice on every use but the first.
    tx.exec_script(&format!(
        "SET LOCAL client_min_messages = warning; \
         CREATE TEMP TABLE IF NOT EXISTS {staging} (n bigint, {}) ON COMMIT DELETE ROWS; \
         SET LOCAL client_min_messages = DEFAULT; \
         DELETE FROM {staging}",
        defs.join(", ")
    ))
    .await?;
    let data = encode(rows, &types, true)?;
    tx.copy_in(
        &format!(
            "COPY {staging} (n, {}) FROM STDIN (FORMAT binary)",
            names.join(", ")
        ),
        &data,
    )
    .await?;
    let mut sql = format!(
        "INSERT INTO {table} ({columns}) SELECT {select} FROM {staging} AS u ORDER BY u.n \
         ON CONFLICT (dedupe_key) DO NOTHING"
    );
    if let Some(r) = returning {
        sql.push_str(" RETURNING ");
        sql.push_str(r);
        let rows = tx.fetch(&sql, Vec::new()).await?;
        Ok((rows.len() as u64, rows))
    } else {
        Ok((tx.exec(&sql, Vec::new()).await?, Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::{ColumnType, encode, types_of};
    use crate::db::Arg;

    #[test]
    fn rows_encode_as_typed_fields_with_nulls_and_bytes_as_they_are() {
        let rows = vec![
            vec![Arg::T("a\tb\n\\N".into()), Arg::I(-2), Arg::F(0.5)],
            vec![Arg::OptT(None), Arg::OptI(Some(7)), Arg::I(3)],
        ];
        let types = types_of(&rows);
        assert_eq!(types, [ColumnType::Text, ColumnType::Int, ColumnType::Real]);
        let data = encode(&rows, &types, true).expect("encode");
        let mut want: Vec<u8> = b"PGCOPY\n\xff\r\n\0".to_vec();
        want.extend([0, 0, 0, 0, 0, 0, 0, 0]);
        // Row 1: four fields, the ordinal, the text's own bytes, -2, 0.5.
        want.extend([0, 4, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend([0, 0, 0, 6]);
        want.extend(b"a\tb\n\\N");
        want.extend([0, 0, 0, 8]);
        want.extend((-2i64).to_be_bytes());
        want.extend([0, 0, 0, 8]);
        want.extend(0.5f64.to_bits().to_be_bytes());
        // Row 2: NULL is length -1 with no bytes; an integer in a real column is a real.
        want.extend([0, 4, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 2]);
        want.extend([0xff, 0xff, 0xff, 0xff]);
        want.extend([0, 0, 0, 8]);
        want.extend(7i64.to_be_bytes());
        want.extend([0, 0, 0, 8]);
        want.extend(3.0f64.to_bits().to_be_bytes());
        want.extend([0xff, 0xff]);
        assert_eq!(data, want);
        assert_eq!(data.capacity(), data.len(), "sized exactly");
    }

    #[test]
    fn a_value_of_another_type_or_a_short_row_is_refused() {
        let types = [ColumnType::Int];
        let err = encode(&[vec![Arg::T("1".into())]], &types, false).expect_err("text as int");
        assert!(err.to_string().contains("row 1, column 1"), "{err}");
        let err = encode(&[vec![]], &types, false).expect_err("short row");
        assert!(err.to_string().contains("0 values for 1 columns"), "{err}");
    }
}
