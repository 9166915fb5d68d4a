//! One small database interface over two concrete backends.
//!
//! sqlx's `Any` driver lacks the types we need and code generic over `Database` drowns in trait
//! bounds, so the store speaks through this enum: a pool, a transaction and a row, each either
//! SQLite or PostgreSQL, with arguments in our own `Arg` type. The SQL text is shared (SQLite
//! accepts `$1` placeholders); the few statements that differ ask `is_postgres()`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, PgPool, Postgres, Row as _, Sqlite, SqlitePool, Transaction};

use super::sqlite_tx::SqliteTx;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
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

/// One column of arguments for every row of a multi-row PostgreSQL statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    I(Vec<Option<i64>>),
    F(Vec<Option<f64>>),
    T(Vec<Option<String>>),
}

impl Column {
    /// The PostgreSQL array type the column binds as.
    pub fn pg_array_type(&self) -> &'static str {
        match self {
            Column::I(_) => "bigint[]",
            Column::F(_) => "double precision[]",
            Column::T(_) => "text[]",
        }
    }

    /// Transposes rows of arguments into columns; each column takes the type of its first row's
    /// argument (`None` of any type fits any column).
    pub fn from_rows(rows: &[Vec<Arg>]) -> Vec<Column> {
        let Some(first) = rows.first() else {
            return Vec::new();
        };
        let mut cols: Vec<Column> = first
            .iter()
            .map(|a| match a {
                Arg::I(_) | Arg::OptI(_) => Column::I(Vec::with_capacity(rows.len())),
                Arg::F(_) | Arg::OptF(_) => Column::F(Vec::with_capacity(rows.len())),
                Arg::T(_) | Arg::OptT(_) => Column::T(Vec::with_capacity(rows.len())),
            })
            .collect();
        for row in rows {
            for (c, a) in cols.iter_mut().zip(row) {
                match (c, a) {
                    (Column::I(v), Arg::I(x)) => v.push(Some(*x)),
                    (Column::I(v), Arg::OptI(x)) => v.push(*x),
                    (Column::F(v), Arg::F(x)) => v.push(Some(*x)),
                    (Column::F(v), Arg::OptF(x)) => v.push(*x),
                    (Column::F(v), Arg::I(x)) => v.push(Some(*x as f64)),
                    (Column::T(v), Arg::T(x)) => v.push(Some(x.clone())),
                    (Column::T(v), Arg::OptT(x)) => v.push(x.clone()),
                    (Column::I(v), _) => v.push(None),
                    (Column::F(v), _) => v.push(None),
                    (Column::T(v), _) => v.push(None),
                }
            }
        }
        cols
    }
}

/// Builds an argument list: `args![a, b, c]`.
#[macro_export]
macro_rules! args {
    ($($x:expr),* $(,)?) => { vec![$($crate::db::Arg::from($x)),*] };
}

#[derive(Clone, Debug)]
pub enum Pool {
    /// The pool, and the checkpointer that lives as long as any clone of it.
    Sqlite(SqlitePool, Arc<Checkpointer>),
    Postgres(PgPool),
}

/// How often the checkpointer copies committed WAL pages into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// A WAL longer than this (pages of 4 KiB: 1 GiB) is checkpointed in full and restarted, waiting
/// for the writer between two transactions, so that a writer that never pauses cannot grow it
/// without bound.
const WAL_RESTART_PAGES: i64 = 262_144;

/// The SQLite WAL checkpointer: a task with its own connection that runs a passive checkpoint
/// (which never blocks readers or the writer) every [`CHECKPOINT_EVERY`], and a final one when
/// the last clone of the pool is dropped.
#[derive(Debug)]
pub struct Checkpointer {
    stop: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Checkpointer {
    fn start(opts: SqliteConnectOptions) -> Arc<Checkpointer> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(checkpoint_loop(opts, rx));
        Arc::new(Checkpointer {
            stop: std::sync::Mutex::new(Some(tx)),
            task: std::sync::Mutex::new(Some(task)),
        })
    }

    /// Stops the checkpointer after a last, full checkpoint, and waits for it.
    async fn finish(&self) {
        self.stop();
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    fn stop(&self) {
        if let Some(tx) = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn checkpoint_loop(opts: SqliteConnectOptions, mut stop: tokio::sync::oneshot::Receiver<()>) {
    use sqlx::{ConnectOptions as _, Connection as _};
    let mut conn = match opts.connect().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("the WAL checkpointer cannot open the database: {e}");
            return;
        }
    };
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = &mut stop => true,
            _ = tick.tick() => false,
        };
        let mode = if stopping { "TRUNCATE" } else { "PASSIVE" };
        match checkpoint(&mut conn, mode).await {
            Ok((_, log)) if !stopping && log > WAL_RESTART_PAGES => {
                if let Err(e) = checkpoint(&mut conn, "RESTART").await {
                    tracing::warn!("WAL restart failed: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("WAL checkpoint failed: {e}"),
        }
        if stopping {
            break;
        }
    }
    let _ = conn.close().await;
}

/// Runs `PRAGMA wal_checkpoint(mode)`; returns (busy, pages in the WAL).
async fn checkpoint(conn: &mut sqlx::SqliteConnection, mode: &str) -> Result<(i64, i64), DbError> {
    let (busy, log, _done): (i64, i64, i64) =
        sqlx::query_as(AssertSqlSafe(format!("PRAGMA wal_checkpoint({mode})")))
            .fetch_one(&mut *conn)
            .await?;
    Ok((busy, log))
}

pub enum Tx {
    Sqlite(SqliteTx),
    Postgres(Transaction<'static, Postgres>),
}

pub enum Row {
    S(SqliteRow),
    /// A row read inside a SQLite write transaction.
    D(Vec<rusqlite::types::Value>),
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
            // The planner needs fresh statistics to read "the tasks of these enrolments" through
            // their index rather than scanning every task; without autovacuum they go stale.
            let autovacuum: String = sqlx::query_scalar("SELECT current_setting('autovacuum')")
                .fetch_one(&pool)
                .await?;
            if autovacuum != "on" {
                tracing::warn!(
                    "autovacuum is off on this PostgreSQL server: table statistics go stale as tables grow and scheduler passes slow down; turn it on, or run ANALYZE after large loads"
                );
            }
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
            .pragma("temp_store", "memory")
            // The WAL file is cut back to this size when it restarts.
            .pragma("journal_size_limit", "67108864");
        // Writers never checkpoint: a checkpoint at commit copies every page written since the
        // last one into the database file and syncs it, which made commits the largest cost of a
        // scheduler batch. The checkpointer does it beside them, on its own connection.
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.clone().pragma("wal_autocheckpoint", "0"))
            .await?;
        Ok(Pool::Sqlite(pool, Checkpointer::start(opts)))
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
            Pool::Sqlite(p, _) => {
                Tx::Sqlite(SqliteTx::new(p.begin_with("BEGIN IMMEDIATE").await?).await?)
            }
            Pool::Postgres(p) => Tx::Postgres(p.begin().await?),
        })
    }

    /// Runs a read on a pooled connection.
    pub async fn fetch(&self, sql: &str, args: Vec<Arg>) -> Result<Vec<Row>, DbError> {
        Ok(match self {
            Pool::Sqlite(p, _) => bind_all!(sqlite_query(sql), args)
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
            Pool::Sqlite(p, _) => bind_all!(sqlite_query(sql), args)
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
            Pool::Sqlite(p, c) => {
                p.close().await;
                c.finish().await;
            }
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
            Tx::Sqlite(t) => t.exec(sql, &args)?,
            Tx::Postgres(t) => bind_all!(sqlx::query(AssertSqlSafe(sql.to_string())), args)
                .execute(&mut **t)
                .await?
                .rows_affected(),
        })
    }

    pub async fn fetch(&mut self, sql: &str, args: Vec<Arg>) -> Result<Vec<Row>, DbError> {
        Ok(match self {
            Tx::Sqlite(t) => t.fetch(sql, &args)?.into_iter().map(Row::D).collect(),
            Tx::Postgres(t) => bind_all!(sqlx::query(AssertSqlSafe(sql.to_string())), args)
                .fetch_all(&mut **t)
                .await?
                .into_iter()
                .map(Row::P)
                .collect(),
        })
    }

    /// Runs one statement once per argument list and returns the rows each changed: prepared once
    /// and stepped per row on SQLite, one round trip per row on PostgreSQL (which should prefer
    /// [`Tx::exec_columns`]).
    pub async fn exec_each(&mut self, sql: &str, rows: &[Vec<Arg>]) -> Result<Vec<u64>, DbError> {
        match self {
            Tx::Sqlite(t) => t.exec_each(sql, rows),
            Tx::Postgres(_) => {
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    out.push(self.exec(sql, r.clone()).await?);
                }
                Ok(out)
            }
        }
    }

    /// Runs a PostgreSQL statement whose parameters are whole columns (`$1::bigint[]`, … read with
    /// `UNNEST`): one short statement, prepared once, for any number of rows. Returns its rows
    /// with `returning`, else the number of rows it changed.
    pub async fn exec_columns(
        &mut self,
        sql: &str,
        columns: Vec<Column>,
        returning: bool,
    ) -> Result<(u64, Vec<Row>), DbError> {
        let Tx::Postgres(t) = self else {
            return Err(DbError::Invalid(
                "column-array parameters are for PostgreSQL only".into(),
            ));
        };
        let mut q = sqlx::query(AssertSqlSafe(sql.to_string()));
        for c in columns {
            q = match c {
                Column::I(v) => q.bind(v),
                Column::F(v) => q.bind(v),
                Column::T(v) => q.bind(v),
            };
        }
        if returning {
            let rows: Vec<Row> = q
                .fetch_all(&mut **t)
                .await?
                .into_iter()
                .map(Row::P)
                .collect();
            Ok((rows.len() as u64, rows))
        } else {
            Ok((q.execute(&mut **t).await?.rows_affected(), Vec::new()))
        }
    }

    /// Runs a PostgreSQL `COPY … FROM STDIN` statement with `data` (in the statement's format);
    /// returns the rows copied. Rows the table refuses fail the copy and the transaction.
    pub(crate) async fn copy_in(&mut self, statement: &str, data: &[u8]) -> Result<u64, DbError> {
        let Tx::Postgres(t) = self else {
            return Err(DbError::Invalid("COPY is for PostgreSQL only".into()));
        };
        let mut copy = t.copy_in_raw(statement).await?;
        // CopyData messages of 1 MiB keep the connection's write buffer small.
        for part in data.chunks(1 << 20) {
            if let Err(e) = copy.send(part).await {
                let _ = copy.abort(e.to_string()).await;
                return Err(e.into());
            }
        }
        Ok(copy.finish().await?)
    }

    pub async fn fetch_one(&mut self, sql: &str, args: Vec<Arg>) -> Result<Option<Row>, DbError> {
        Ok(self.fetch(sql, args).await?.into_iter().next())
    }

    /// Runs a script of several statements (migrations).
    pub async fn exec_script(&mut self, sql: &str) -> Result<(), DbError> {
        match self {
            Tx::Sqlite(t) => t.exec_batch(sql)?,
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
        use rusqlite::types::Value;
        match self {
            Row::D(r) => match r.get(i)? {
                Value::Integer(v) => Some(*v),
                Value::Real(v) => Some(*v as i64),
                Value::Text(t) => t.parse().ok(),
                _ => None,
            },
            Row::S(r) => r.try_get::<Option<i64>, _>(i).ok().flatten(),
            Row::P(r) => r.try_get::<Option<i64>, _>(i).ok().flatten(),
        }
    }

    pub fn f64(&self, i: usize) -> f64 {
        use rusqlite::types::Value;
        match self {
            Row::D(r) => match r.get(i) {
                Some(Value::Real(v)) => *v,
                Some(Value::Integer(v)) => *v as f64,
                _ => f64::NAN,
            },
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
        use rusqlite::types::Value;
        match self {
            Row::D(r) => match r.get(i)? {
                Value::Text(t) => Some(t.clone()),
                Value::Integer(v) => Some(v.to_string()),
                Value::Real(v) => Some(v.to_string()),
                Value::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
                Value::Null => None,
            },
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

#[cfg(test)]
mod column_tests {
    use super::{Arg, Column};

    #[test]
    fn rows_transpose_into_typed_columns_with_nulls() {
        let rows = vec![
            vec![
                Arg::T("a".into()),
                Arg::I(1),
                Arg::OptF(None),
                Arg::OptT(None),
            ],
            vec![
                Arg::T("b".into()),
                Arg::OptI(None),
                Arg::F(2.5),
                Arg::OptT(Some("x".into())),
            ],
        ];
        let cols = Column::from_rows(&rows);
        assert_eq!(
            cols,
            vec![
                Column::T(vec![Some("a".into()), Some("b".into())]),
                Column::I(vec![Some(1), None]),
                Column::F(vec![None, Some(2.5)]),
                Column::T(vec![None, Some("x".into())]),
            ]
        );
        assert_eq!(
            cols.iter().map(Column::pg_array_type).collect::<Vec<_>>(),
            ["text[]", "bigint[]", "double precision[]", "text[]"]
        );
        assert!(Column::from_rows(&[]).is_empty());
    }
}
