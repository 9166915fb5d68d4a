//! One small database interface over two concrete backends.
//!
//! sqlx's `Any` driver lacks the types we need and code generic over `Database` drowns in trait
//! bounds, so the store speaks through this enum: a pool, a transaction and a row, each either
//! SQLite or PostgreSQL, with arguments in our own `Arg` type. The SQL text is shared (SQLite
//! accepts `$1` placeholders); the few statements that differ ask `is_postgres()`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, PgPool, Postgres, Row as _, Sqlite, SqlitePool, Transaction};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("{0}")]
    Invalid(String),
}

/// A query argument.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    I(i64),
    F(f64),
    T(String),
    OptI(Option<i64>),
    OptT(Option<String>),
    OptF(Option<f64>),
}

impl From<i64> for Arg {
    fn from(v: i64) -> Arg {
        Arg::I(v)
    }
}
impl From<f64> for Arg {
    fn from(v: f64) -> Arg {
        Arg::F(v)
    }
}
impl From<&str> for Arg {
    fn from(v: &str) -> Arg {
        Arg::T(v.to_string())
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Arg {
        Arg::T(v)
    }
}
impl From<&String> for Arg {
    fn from(v: &String) -> Arg {
        Arg::T(v.clone())
    }
}
impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Arg {
        Arg::OptI(v)
    }
}
impl From<Option<f64>> for Arg {
    fn from(v: Option<f64>) -> Arg {
        Arg::OptF(v)
    }
}
impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Arg {
        Arg::OptT(v)
    }
}

/// Builds an argument list: `args![a, b, c]`.
#[macro_export]
macro_rules! args {
    ($($x:expr),* $(,)?) => { vec![$($crate::store::db::Arg::from($x)),*] };
}

#[derive(Clone, Debug)]
pub enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

pub enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

pub enum Row {
    S(SqliteRow),
    P(PgRow),
}

/// A SQLite statement from shared `$n` SQL. When the placeholders are `$1, $2, …, $n`, each once
/// and in order (as in every generated multi-row statement), they become anonymous `?`: SQLite
/// resolves a named parameter by a linear search of the statement's names, so binding `n` named
/// parameters costs `n²`, which dominated statements of a few thousand parameters.
fn sqlite_query(sql: &str) -> sqlx::query::Query<'static, Sqlite, sqlx::sqlite::SqliteArguments> {
    sqlx::query(AssertSqlSafe(
        positional(sql).unwrap_or_else(|| sql.to_string()),
    ))
}

/// `sql` with `$1 … $n` replaced by `?`, or `None` when they are not each used once in order
/// (outside quoted strings).
pub(crate) fn positional(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let (mut i, mut next, mut last) = (0, 1u64, 0);
    let mut quoted = false;
    while i < b.len() {
        let c = b[i];
        if c == b'\'' {
            quoted = !quoted;
        } else if c == b'$' && !quoted && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
            let mut j = i + 1;
            let mut n = 0u64;
            while j < b.len() && b[j].is_ascii_digit() {
                n = n * 10 + u64::from(b[j] - b'0');
                j += 1;
            }
            if n != next {
                return None;
            }
            next += 1;
            out.push_str(&sql[last..i]);
            out.push('?');
            last = j;
            i = j;
            continue;
        }
        i += 1;
    }
    if next == 1 {
        return None;
    }
    out.push_str(&sql[last..]);
    Some(out)
}

macro_rules! bind_all {
    ($q:expr, $args:expr) => {{
        let mut q = $q;
        for a in $args {
            q = match a {
                Arg::I(v) => q.bind(v),
                Arg::F(v) => q.bind(v),
                Arg::T(v) => q.bind(v),
                Arg::OptI(v) => q.bind(v),
                Arg::OptT(v) => q.bind(v),
                Arg::OptF(v) => q.bind(v),
            };
        }
        q
    }};
}

impl Pool {
    /// Connects to `url`: `sqlite:PATH` (created if missing) or `postgres://…`.
    pub async fn connect(url: &str) -> Result<Pool, DbError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await?;
            return Ok(Pool::Postgres(pool));
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        let opts = SqliteConnectOptions::from_str(&format!("sqlite:{path}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true)
            // A page cache of 32 MiB per connection (the default is 2 MiB): index inserts into a
            // large record stop going to the kernel for most pages.
            .pragma("cache_size", "-32768")
            .pragma("temp_store", "memory");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        Ok(Pool::Sqlite(pool))
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Pool::Postgres(_))
    }

    pub fn backend(&self) -> &'static str {
        if self.is_postgres() {
            "postgres"
        } else {
            "sqlite"
        }
    }

    /// Begins a write transaction (`BEGIN IMMEDIATE` on SQLite, so it never fails on upgrade).
    pub async fn begin(&self) -> Result<Tx, DbError> {
        Ok(match self {
            Pool::Sqlite(p) => Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
            Pool::Postgres(p) => Tx::Postgres(p.begin().await?),
        })
    }

    /// Runs a read on a pooled connection.
    pub async fn fetch(&self, sql: &str, args: Vec<Arg>) -> Result<Vec<Row>, DbError> {
        Ok(match self {
            Pool::Sqlite(p) => bind_all!(sqlite_query(sql), args)
                .fetch_all(p)
                .await?
                .into_iter()
                .map(Row::S)
                .collect(),
            Pool::Postgres(p) => {
                let q = sqlx::query(AssertSqlSafe(sql.to_string()));
                bind_all!(q, args)
                    .fetch_all(p)
                    .await?
                    .into_iter()
                    .map(Row::P)
                    .collect()
            }
        })
    }

    pub async fn exec(&self, sql: &str, args: Vec<Arg>) -> Result<u64, DbError> {
        Ok(match self {
            Pool::Sqlite(p) => bind_all!(sqlite_query(sql), args)
                .execute(p)
                .await?
                .rows_affected(),
            Pool::Postgres(p) => bind_all!(sqlx::query(AssertSqlSafe(sql.to_string())), args)
                .execute(p)
                .await?
                .rows_affected(),
        })
    }

    pub async fn close(&self) {
        match self {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }
}

impl Tx {
    pub fn is_postgres(&self) -> bool {
        matches!(self, Tx::Postgres(_))
    }

    pub async fn exec(&mut self, sql: &str, args: Vec<Arg>) -> Result<u64, DbError> {
        Ok(match self {
            Tx::Sqlite(t) => bind_all!(sqlite_query(sql), args)
                .execute(&mut **t)
                .await?
                .rows_affected(),
            Tx::Postgres(t) => bind_all!(sqlx::query(AssertSqlSafe(sql.to_string())), args)
                .execute(&mut **t)
                .await?
                .rows_affected(),
        })
    }

    pub async fn fetch(&mut self, sql: &str, args: Vec<Arg>) -> Result<Vec<Row>, DbError> {
        Ok(match self {
            Tx::Sqlite(t) => bind_all!(sqlite_query(sql), args)
                .fetch_all(&mut **t)
                .await?
                .into_iter()
                .map(Row::S)
                .collect(),
            Tx::Postgres(t) => bind_all!(sqlx::query(AssertSqlSafe(sql.to_string())), args)
                .fetch_all(&mut **t)
                .await?
                .into_iter()
                .map(Row::P)
                .collect(),
        })
    }

    pub async fn fetch_one(&mut self, sql: &str, args: Vec<Arg>) -> Result<Option<Row>, DbError> {
        Ok(self.fetch(sql, args).await?.into_iter().next())
    }

    /// Runs a script of several statements (migrations).
    pub async fn exec_script(&mut self, sql: &str) -> Result<(), DbError> {
        match self {
            Tx::Sqlite(t) => {
                sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
                    .execute(&mut **t)
                    .await?;
            }
            Tx::Postgres(t) => {
                sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
                    .execute(&mut **t)
                    .await?;
            }
        }
        Ok(())
    }

    pub async fn commit(self) -> Result<(), DbError> {
        match self {
            Tx::Sqlite(t) => t.commit().await?,
            Tx::Postgres(t) => t.commit().await?,
        }
        Ok(())
    }

    pub async fn rollback(self) -> Result<(), DbError> {
        match self {
            Tx::Sqlite(t) => t.rollback().await?,
            Tx::Postgres(t) => t.rollback().await?,
        }
        Ok(())
    }
}

impl Row {
    pub fn i64(&self, i: usize) -> i64 {
        self.opt_i64(i).unwrap_or(0)
    }

    pub fn opt_i64(&self, i: usize) -> Option<i64> {
        match self {
            Row::S(r) => r.try_get::<Option<i64>, _>(i).ok().flatten(),
            Row::P(r) => r.try_get::<Option<i64>, _>(i).ok().flatten(),
        }
    }

    pub fn f64(&self, i: usize) -> f64 {
        match self {
            Row::S(r) => r
                .try_get::<Option<f64>, _>(i)
                .ok()
                .flatten()
                .unwrap_or(f64::NAN),
            Row::P(r) => r
                .try_get::<Option<f64>, _>(i)
                .ok()
                .flatten()
                .unwrap_or(f64::NAN),
        }
    }

    pub fn text(&self, i: usize) -> String {
        self.opt_text(i).unwrap_or_default()
    }

    pub fn opt_text(&self, i: usize) -> Option<String> {
        match self {
            Row::S(r) => r.try_get::<Option<String>, _>(i).ok().flatten(),
            Row::P(r) => r.try_get::<Option<String>, _>(i).ok().flatten(),
        }
    }
}

/// `$first, $first+1, …` placeholders for an IN list of `n` values.
pub fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod positional_tests {
    use super::positional;

    #[test]
    fn in_order_placeholders_become_anonymous() {
        assert_eq!(
            positional("SELECT a FROM t WHERE b = $1 AND c IN ($2, $3)").as_deref(),
            Some("SELECT a FROM t WHERE b = ? AND c IN (?, ?)")
        );
        assert_eq!(positional("SELECT 1"), None);
    }

    #[test]
    fn repeated_or_reordered_placeholders_stay_named() {
        assert_eq!(positional("VALUES ($1, $2, $1)"), None);
        assert_eq!(positional("VALUES ($2, $1)"), None);
        assert_eq!(positional("VALUES ($1, $3)"), None);
    }

    #[test]
    fn dollars_in_strings_are_not_placeholders() {
        assert_eq!(
            positional("SELECT '$2' WHERE a = $1").as_deref(),
            Some("SELECT '$2' WHERE a = ?")
        );
    }
}
