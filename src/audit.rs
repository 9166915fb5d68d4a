//! Where the audit key and the audit checkpoints live, and `carepath audit …`.
//!
//! The key: `CAREPATH_AUDIT_KEY` (64 hexadecimal digits), else the file `--audit-key-file`
//! (`CAREPATH_AUDIT_KEY_FILE`), else a default file: `<db file>.audit-key` beside a SQLite
//! database, `<data dir>/carepath-audit.key` for PostgreSQL. A command that writes the record
//! creates the default file (mode 0600, a random key) when it is missing and says where; `audit
//! verify` never creates one.
//!
//! The checkpoints: `--audit-checkpoints` (`CAREPATH_AUDIT_CHECKPOINTS`), else
//! `<db file>.audit-checkpoints` beside a SQLite database, `<data dir>/<database>.audit-checkpoints`
//! for PostgreSQL. The data dir is `--data-dir` (`CAREPATH_DATA_DIR`), else the working folder.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use carepath_engine::audit::{self, AuditKey, Checkpoint};
use carepath_engine::store;
use jiff::Timestamp;

/// Where the audit key and checkpoints are.
#[derive(clap::Args, Clone, Default)]
pub(crate) struct AuditArgs {
    /// The audit key file (64 hexadecimal digits). `CAREPATH_AUDIT_KEY` holding the key itself
    /// takes precedence.
    #[arg(
        long = "audit-key-file",
        visible_alias = "key-file",
        env = "CAREPATH_AUDIT_KEY_FILE"
    )]
    key_file: Option<PathBuf>,
    /// The append-only file of signed audit checkpoints.
    #[arg(
        long = "audit-checkpoints",
        visible_alias = "checkpoints",
        env = "CAREPATH_AUDIT_CHECKPOINTS"
    )]
    checkpoints: Option<PathBuf>,
    /// Where the default audit key and checkpoint files of a PostgreSQL database go (default: the
    /// working folder). A SQLite database's are beside its file.
    #[arg(long = "data-dir", env = "CAREPATH_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

/// The SQLite file a URL names, if it names one.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return None;
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let path = path.split('?').next().unwrap_or(path);
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// A PostgreSQL URL's database name, safe as a file name.
fn database_name(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let rest = rest.split('?').next().unwrap_or(rest);
    let name = rest.rsplit_once('/').map_or("", |(_, n)| n);
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.is_empty() {
        "carepath".into()
    } else {
        safe
    }
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

impl AuditArgs {
    fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from("."))
    }

    pub(crate) fn key_path(&self, url: &str) -> PathBuf {
        if let Some(p) = &self.key_file {
            return p.clone();
        }
        match sqlite_file(url) {
            Some(f) => with_suffix(&f, ".audit-key"),
            None => self.data_dir().join("carepath-audit.key"),
        }
    }

    pub(crate) fn checkpoints_path(&self, url: &str) -> PathBuf {
        if let Some(p) = &self.checkpoints {
            return p.clone();
        }
        // Beside a SQLite file, as its key is: two databases of the same file name in different
        // folders never share a checkpoint file.
        match sqlite_file(url) {
            Some(f) => with_suffix(&f, ".audit-checkpoints"),
            None => self
                .data_dir()
                .join(format!("{}.audit-checkpoints", database_name(url))),
        }
    }

    /// The key, from the environment or its file; with `create`, a missing default file is made.
    pub(crate) fn key(&self, url: &str, create: bool) -> anyhow::Result<AuditKey> {
        if let Ok(hex) = std::env::var("CAREPATH_AUDIT_KEY") {
            return AuditKey::from_hex(&hex)
                .map_err(|e| anyhow::anyhow!("CAREPATH_AUDIT_KEY: {e}"));
        }
        let path = self.key_path(url);
        if !create {
            return AuditKey::load(&path)
                .map_err(|e| anyhow::anyhow!("{e} (give --key-file, or set CAREPATH_AUDIT_KEY)"));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let (key, created) = AuditKey::load_or_create(&path).map_err(anyhow::Error::msg)?;
        if created {
            tracing::warn!(
                key = %path.display(),
                fingerprint = %key.fingerprint(),
                "created a new audit key; keep it (and a copy away from the database's administrators): the audit record cannot be verified without it"
            );
        }
        Ok(key)
    }

    /// Installs the key for this process's audit rows, seals an unkeyed (pre-0009) record with
    /// a keyed row, and returns where checkpoints go.
    pub(crate) async fn install(&self, pool: &store::Pool, url: &str) -> anyhow::Result<Audit> {
        let key = self.key(url, true)?;
        audit::install(key.clone());
        if audit::seal_legacy(pool, Timestamp::now()).await? {
            tracing::warn!("the audit record's unkeyed rows are now sealed by a keyed row");
        }
        Ok(Audit {
            key: Arc::new(key),
            checkpoints: self.checkpoints_path(url),
        })
    }
}

/// The installed key and the checkpoint file.
#[derive(Clone)]
pub(crate) struct Audit {
    pub key: Arc<AuditKey>,
    pub checkpoints: PathBuf,
}

impl Audit {
    /// Appends a checkpoint of the record as it stands.
    pub(crate) async fn checkpoint(&self, pool: &store::Pool) -> anyhow::Result<Checkpoint> {
        audit::write_checkpoint(pool, &self.key, &self.checkpoints, Timestamp::now())
            .await
            .map_err(anyhow::Error::msg)
    }

    /// Appends a checkpoint when the record's newest row differs from `last`'s; keeps the newest
    /// checkpoint in `last`. Errors are logged: a missed checkpoint only widens the window in
    /// which a truncation goes unnoticed.
    pub(crate) async fn checkpoint_if_changed(
        &self,
        pool: &store::Pool,
        last: &mut Option<Checkpoint>,
    ) {
        let head = match audit::head(pool).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!("audit checkpoint: cannot read the record: {e}");
                return;
            }
        };
        let (id, hash) = head.unwrap_or((0, audit::GENESIS.to_string()));
        if last
            .as_ref()
            .is_some_and(|c| c.last_id == id && c.head == hash)
        {
            return;
        }
        match self.checkpoint(pool).await {
            Ok(c) => *last = Some(c),
            Err(e) => tracing::error!("audit checkpoint failed: {e:#}"),
        }
    }
}

/// `carepath audit verify`: prints what was checked; exit 0 when intact, 1 when not.
pub(crate) async fn verify(url: &str, args: &AuditArgs, json: bool) -> anyhow::Result<ExitCode> {
    let key = args.key(url, false)?;
    let path = args.checkpoints_path(url);
    let pool = store::Pool::connect(url)
        .await
        .with_context(|| format!("cannot open the database {}", crate::cli::redact(url)))?;
    let outcome = match audit::read_checkpoints(&path) {
        Ok(checkpoints) => audit::verify(&pool, &key, &checkpoints).await?,
        Err(why) => audit::Verification {
            rows: 0,
            legacy_rows: 0,
            checkpoints: 0,
            broken: Some(audit::Broken {
                id: None,
                reason: why,
            }),
        },
    };
    pool.close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        println!(
            "rows checked: {} ({} under the unkeyed pre-0009 scheme)",
            outcome.rows, outcome.legacy_rows
        );
        println!(
            "checkpoints checked: {} (from {})",
            outcome.checkpoints,
            path.display()
        );
        match &outcome.broken {
            None => println!("intact"),
            Some(b) => println!("TAMPERED: first broken: {b}"),
        }
    }
    Ok(if outcome.intact() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_paths() {
        let a = AuditArgs::default();
        assert_eq!(
            a.key_path("sqlite:/var/lib/cp/carepath.db"),
            PathBuf::from("/var/lib/cp/carepath.db.audit-key")
        );
        assert_eq!(
            a.checkpoints_path("sqlite:data.db?mode=rwc"),
            PathBuf::from("data.db.audit-checkpoints")
        );
        assert_eq!(
            a.checkpoints_path("postgres://u:p@h:5432/care?sslmode=require"),
            PathBuf::from("./care.audit-checkpoints")
        );
        assert_eq!(
            a.key_path("postgres://h/care"),
            PathBuf::from("./carepath-audit.key")
        );
    }
}
