//! A SQLite write transaction whose statements run directly on the connection it holds.
//!
//! sqlx runs each SQLite connection on a worker thread and hands it every statement, and every
//! row of every result, over a channel: two thread wake-ups per statement and one per row. In a
//! scheduler batch of thousands of statements and tens of thousands of rows those hand-offs, not
//! SQLite, were most of the time. A write transaction begins through sqlx (`BEGIN IMMEDIATE`,
//! whose wait for the write lock stays asynchronous) and commits through it; in between, its
//! statements are prepared, bound and stepped on the same handle from the calling thread.
//!
//! They never wait on another connection: the transaction already holds the database's only write
//! lock, and in WAL mode reads inside it do not wait for anyone. So each call is plain CPU and
//! page I/O, like any other computation of the task that makes it.

use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use sqlx::{Sqlite, Transaction};

use super::db::{Arg, DbError};

/// Statements kept prepared per transaction (a scheduler batch uses a few dozen).
const STATEMENT_CACHE: usize = 64;

pub struct SqliteTx {
    // Declared before `tx`: dropped first, finalizing this transaction's statements before sqlx
    // rolls back an uncommitted transaction on the worker thread.
    db: rusqlite::Connection,
    tx: Transaction<'static, Sqlite>,
}

impl rusqlite::ToSql for Arg {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Arg::I(v) | Arg::OptI(Some(v)) => ValueRef::Integer(*v),
            Arg::F(v) | Arg::OptF(Some(v)) => ValueRef::Real(*v),
            Arg::T(v) | Arg::OptT(Some(v)) => ValueRef::Text(v.as_bytes()),
            Arg::OptI(None) | Arg::OptF(None) | Arg::OptT(None) => ValueRef::Null,
        }))
    }
}

impl SqliteTx {
    /// Wraps a transaction that has just begun.
    pub async fn new(mut tx: Transaction<'static, Sqlite>) -> Result<SqliteTx, DbError> {
        let handle = tx.lock_handle().await?.as_raw_handle();
        let db = share_handle(handle)?;
        db.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(SqliteTx { db, tx })
    }

    /// Runs one statement; returns the rows it changed.
    pub fn exec(&mut self, sql: &str, args: &[Arg]) -> Result<u64, DbError> {
        let mut st = match self.prepare(sql, args) {
            Err(DbError::Sqlite(rusqlite::Error::MultipleStatement)) if args.is_empty() => {
                self.db.execute_batch(sql)?;
                return Ok(self.db.changes());
            }
            other => other?,
        };
        let mut rows = st.raw_query();
        while rows.next()?.is_some() {}
        drop(rows);
        Ok(self.db.changes())
    }

    /// Runs one statement for each argument list, prepared once; returns the rows each changed.
    pub fn exec_each(&mut self, sql: &str, rows: &[Vec<Arg>]) -> Result<Vec<u64>, DbError> {
        let mut st = self.db.prepare_cached(&numbered(sql))?;
        let mut changed = Vec::with_capacity(rows.len());
        for args in rows {
            bind(&mut st, args)?;
            let mut r = st.raw_query();
            while r.next()?.is_some() {}
            drop(r);
            changed.push(self.db.changes());
        }
        Ok(changed)
    }

    /// Runs one query; returns every row.
    pub fn fetch(&mut self, sql: &str, args: &[Arg]) -> Result<Vec<Vec<Value>>, DbError> {
        let mut st = self.prepare(sql, args)?;
        let n = st.column_count();
        let mut rows = st.raw_query();
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut row = Vec::with_capacity(n);
            for i in 0..n {
                row.push(r.get::<_, Value>(i)?);
            }
            out.push(row);
        }
        Ok(out)
    }

    /// Runs a script of several statements without arguments.
    pub fn exec_batch(&mut self, sql: &str) -> Result<(), DbError> {
        Ok(self.db.execute_batch(sql)?)
    }

    pub async fn commit(self) -> Result<(), DbError> {
        let SqliteTx { db, tx } = self;
        drop(db);
        Ok(tx.commit().await?)
    }

    pub async fn rollback(self) -> Result<(), DbError> {
        let SqliteTx { db, tx } = self;
        drop(db);
        Ok(tx.rollback().await?)
    }

    fn prepare(&self, sql: &str, args: &[Arg]) -> Result<rusqlite::CachedStatement<'_>, DbError> {
        let mut st = self.db.prepare_cached(&numbered(sql))?;
        bind(&mut st, args)?;
        Ok(st)
    }
}

/// Binds `args` to the statement's parameters `?1 … ?n`.
fn bind(st: &mut rusqlite::Statement<'_>, args: &[Arg]) -> Result<(), DbError> {
    for (i, a) in args.iter().enumerate() {
        st.raw_bind_parameter(i + 1, a)?;
    }
    Ok(())
}

/// A `rusqlite` view of the handle the transaction holds; it never closes it.
///
/// Soundness: sqlx's worker thread touches the handle only while executing a command sent to it,
/// and commands come only from the owner of the connection. `SqliteTx` owns the transaction (so
/// the connection) exclusively and issues no sqlx command between `new` and `commit` or
/// `rollback`, which drop this view first; the channel hand-off of those commands orders our
/// calls before the worker's. SQLite is built thread-safe, so a handle used by one thread at a
/// time may move between threads.
#[allow(unsafe_code)]
fn share_handle(
    handle: std::ptr::NonNull<rusqlite::ffi::sqlite3>,
) -> Result<rusqlite::Connection, DbError> {
    // SAFETY: see above; `from_handle` does not take ownership of the handle.
    Ok(unsafe { rusqlite::Connection::from_handle(handle.as_ptr()) }?)
}

/// `sql` with each `$n` placeholder (outside quoted strings) written as SQLite's numbered `?n`,
/// which binds by position in O(1) whatever the order or repetition of the placeholders.
pub(crate) fn numbered(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let (mut last, mut quoted) = (0, false);
    for i in 0..b.len() {
        match b[i] {
            b'\'' => quoted = !quoted,
            b'$' if !quoted && b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                out.push_str(&sql[last..i]);
                out.push('?');
                last = i + 1;
            }
            _ => {}
        }
    }
    out.push_str(&sql[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::numbered;

    #[test]
    fn placeholders_become_numbered_outside_strings() {
        assert_eq!(
            numbered("SELECT $2, '$1', json_extract(x, '$[0]') FROM t WHERE a = $1 AND b = $2"),
            "SELECT ?2, '$1', json_extract(x, '$[0]') FROM t WHERE a = ?1 AND b = ?2"
        );
        assert_eq!(numbered("SELECT 1"), "SELECT 1");
        assert_eq!(numbered("VALUES ($10, $11)"), "VALUES (?10, ?11)");
    }
}
