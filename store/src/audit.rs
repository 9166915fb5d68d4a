//! The audit record's integrity: a keyed hash chain, signed checkpoints kept outside the
//! database, and the one verifier the command line and the API both use.
//!
//! Every row of `audit_log` written under the keyed scheme ([`SCHEME_KEYED`]) carries
//! `hash = HMAC-SHA256(key, prev_hash ‖ at ‖ actor ‖ institution_id ‖ action ‖ target ‖ patients ‖
//! outcome ‖ remote)`, each field length-prefixed and `NULL` told apart from the empty text. The
//! key lives outside the database, so whoever can only write the database cannot append a row,
//! edit one, or re-chain the rows after an edit without the verifier noticing.
//!
//! Deleting the newest rows (or all of them) leaves a valid chain; that is what checkpoints are
//! for. A checkpoint (rows counted, the last row's id and hash, when) is signed with the same key
//! and appended to a file outside the database; the verifier requires the database to still hold
//! every checkpointed prefix.
//!
//! Rows written before the keyed scheme (scheme [`SCHEME_LEGACY`], plain SHA-256) are checked as
//! before; the first keyed row covers the last legacy row's hash, so the legacy prefix cannot be
//! rewritten either once one keyed row follows it, and no legacy row may follow a keyed one.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use hmac::{Hmac, Mac};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit_log::{self, Reader};
use crate::{Pool, Result, Row, Tx};

/// Rows chained by plain SHA-256 (before migration 0009): the chain detects accidents, not
/// forgery.
pub const SCHEME_LEGACY: i64 = 1;
/// Rows chained by HMAC-SHA256 under the audit key.
pub const SCHEME_KEYED: i64 = 2;
/// The `prev_hash` of the first row.
pub const GENESIS: &str = "genesis";

type HmacSha256 = Hmac<Sha256>;

/// The secret the chain and the checkpoints are keyed with: 32 bytes, never stored in the
/// database.
#[derive(Clone, PartialEq, Eq)]
pub struct AuditKey([u8; 32]);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditKey({})", self.fingerprint())
    }
}

impl AuditKey {
    pub fn from_bytes(bytes: [u8; 32]) -> AuditKey {
        AuditKey(bytes)
    }

    /// A key written as 64 hexadecimal digits (surrounding white space ignored).
    pub fn from_hex(text: &str) -> std::result::Result<AuditKey, String> {
        let bytes =
            hex::decode(text.trim()).map_err(|_| "the audit key is not hexadecimal".to_string())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "the audit key has {} bytes; it must have 32 (64 hexadecimal digits)",
                b.len()
            )
        })?;
        Ok(AuditKey(bytes))
    }

    /// A fresh key from the operating system's random source.
    pub fn random() -> std::io::Result<AuditKey> {
        let mut bytes = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
        Ok(AuditKey(bytes))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A short, non-secret name of the key for logs: the first 8 bytes of HMAC(key, "name").
    pub fn fingerprint(&self) -> String {
        let mut mac = self.mac();
        mac.update(b"carepath-audit-key-fingerprint");
        hex::encode(&mac.finalize().into_bytes()[..8])
    }

    /// Reads a key file (64 hexadecimal digits).
    pub fn load(path: &Path) -> std::result::Result<AuditKey, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the audit key {}: {e}", path.display()))?;
        AuditKey::from_hex(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Reads the key file at `path`, or creates it (mode 0600) with a random key when it does
    /// not exist. Returns the key and whether it was created. Two processes creating it at once
    /// agree on one key: the file appears whole, by a hard link that fails if it exists.
    pub fn load_or_create(path: &Path) -> std::result::Result<(AuditKey, bool), String> {
        if path.exists() {
            return Ok((AuditKey::load(path)?, false));
        }
        let key = AuditKey::random().map_err(|e| format!("cannot draw a random key: {e}"))?;
        let tmp = PathBuf::from(format!("{}.{}.tmp", path.display(), std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = private_file(&tmp, false)?;
            f.write_all(format!("{}\n", key.to_hex()).as_bytes())?;
            f.sync_all()
        };
        let made = write().and_then(|()| std::fs::hard_link(&tmp, path));
        let _ = std::fs::remove_file(&tmp);
        match made {
            Ok(()) => Ok((key, true)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok((AuditKey::load(path)?, false))
            }
            Err(e) => Err(format!(
                "cannot create the audit key {}: {e}",
                path.display()
            )),
        }
    }

    fn mac(&self) -> HmacSha256 {
        <HmacSha256 as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length")
    }
}

/// Opens `path` for writing with mode 0600 (owner only): new, or for appending.
fn private_file(path: &Path, append: bool) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    if append {
        o.append(true).create(true);
    } else {
        o.write(true).create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    o.open(path)
}

static KEY: RwLock<Option<Arc<AuditKey>>> = RwLock::new(None);

/// Makes `key` the one this process chains audit rows with (and verifies them by default).
pub fn install(key: AuditKey) {
    *KEY.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(key));
}

/// The installed key. A process that installed none (a library user, a test) gets a random key
/// of its own, with a warning: its rows verify only within that process.
pub fn key() -> Arc<AuditKey> {
    if let Some(k) = KEY.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return k.clone();
    }
    let mut slot = KEY.write().unwrap_or_else(|e| e.into_inner());
    slot.get_or_insert_with(|| {
        tracing::warn!(
            "no audit key is configured: audit rows of this process are keyed with a random key that is not kept"
        );
        Arc::new(AuditKey::random().expect("the operating system's random source"))
    })
    .clone()
}

// ---------------------------------------------------------------------------------------------
// Row hashes

/// One stored audit row, as the verifier reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub institution: Option<String>,
    pub action: String,
    pub target: String,
    pub patients: String,
    pub outcome: String,
    pub remote: Option<String>,
    pub prev_hash: String,
    pub hash: String,
    pub scheme: i64,
}

/// The columns [`AuditRow::from_row`] reads, in order.
pub const ROW_COLUMNS: &str = "id, at, actor, institution_id, action, target, patients, outcome, remote, prev_hash, hash, scheme";

impl AuditRow {
    pub fn from_row(r: &Row) -> AuditRow {
        AuditRow {
            id: r.i64(0),
            at: r.i64(1),
            actor: r.text(2),
            institution: r.opt_text(3),
            action: r.text(4),
            target: r.text(5),
            patients: r.text(6),
            outcome: r.text(7),
            remote: r.opt_text(8),
            prev_hash: r.text(9),
            hash: r.text(10),
            scheme: r.i64(11),
        }
    }

    /// The hash this row should carry after `prev`, under its own scheme (None for an unknown
    /// scheme).
    pub fn expected_hash(&self, key: &AuditKey, prev: &str) -> Option<String> {
        match self.scheme {
            SCHEME_KEYED => Some(keyed_hash(
                key,
                prev,
                self.at,
                &self.actor,
                self.institution.as_deref(),
                &self.action,
                &self.target,
                &self.patients,
                &self.outcome,
                self.remote.as_deref(),
            )),
            SCHEME_LEGACY => Some(legacy_hash(
                prev,
                self.at,
                &self.actor,
                self.institution.as_deref().unwrap_or(""),
                &self.action,
                &self.target,
                &self.patients,
                &self.outcome,
            )),
            _ => None,
        }
    }
}

fn put_text(mac: &mut HmacSha256, v: Option<&str>) {
    match v {
        Some(s) => {
            mac.update(b"S");
            mac.update(&(s.len() as u64).to_be_bytes());
            mac.update(s.as_bytes());
        }
        None => mac.update(b"N"),
    }
}

/// The keyed hash of one row: HMAC-SHA256 over every column but the id (the chain orders rows)
/// and the hash itself, each length-prefixed, `NULL` distinct from empty.
#[allow(clippy::too_many_arguments)]
pub fn keyed_hash(
    key: &AuditKey,
    prev: &str,
    at: i64,
    actor: &str,
    institution: Option<&str>,
    action: &str,
    target: &str,
    patients: &str,
    outcome: &str,
    remote: Option<&str>,
) -> String {
    let mut mac = key.mac();
    mac.update(b"carepath-audit-row-v2");
    put_text(&mut mac, Some(prev));
    mac.update(b"I");
    mac.update(&at.to_be_bytes());
    for v in [
        Some(actor),
        institution,
        Some(action),
        Some(target),
        Some(patients),
        Some(outcome),
        remote,
    ] {
        put_text(&mut mac, v);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// The unkeyed hash of rows written before the keyed scheme (scheme 1), kept to verify them.
#[allow(clippy::too_many_arguments)]
pub fn legacy_hash(
    prev: &str,
    at: i64,
    actor: &str,
    inst: &str,
    action: &str,
    target: &str,
    patients: &str,
    outcome: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [
        prev,
        &at.to_string(),
        actor,
        inst,
        action,
        target,
        patients,
        outcome,
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}

// ---------------------------------------------------------------------------------------------
// Checkpoints

/// A signed statement that the audit record held `count` rows ending with row `last_id` whose
/// hash was `head`, at `at` (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub count: u64,
    pub last_id: i64,
    pub head: String,
    pub at: i64,
    /// HMAC-SHA256 under the audit key of the four fields above, hexadecimal.
    pub sig: String,
}

impl Checkpoint {
    pub fn signed(key: &AuditKey, count: u64, last_id: i64, head: &str, at: i64) -> Checkpoint {
        Checkpoint {
            count,
            last_id,
            head: head.to_string(),
            at,
            sig: checkpoint_sig(key, count, last_id, head, at),
        }
    }

    pub fn signature_valid(&self, key: &AuditKey) -> bool {
        checkpoint_sig(key, self.count, self.last_id, &self.head, self.at) == self.sig
    }
}

fn checkpoint_sig(key: &AuditKey, count: u64, last_id: i64, head: &str, at: i64) -> String {
    let mut mac = key.mac();
    mac.update(b"carepath-audit-checkpoint-v1");
    mac.update(&count.to_be_bytes());
    mac.update(&last_id.to_be_bytes());
    put_text(&mut mac, Some(head));
    mac.update(&at.to_be_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The newest row's id and hash, if any.
pub async fn head(pool: &Pool) -> Result<Option<(i64, String)>> {
    audit_log::head(pool).await
}

/// A checkpoint of the record as it stands, signed with `key`.
pub async fn take_checkpoint(pool: &Pool, key: &AuditKey, at: Timestamp) -> Result<Checkpoint> {
    Ok(match audit_log::counted_head(pool).await? {
        Some(h) => Checkpoint::signed(key, h.count, h.id, &h.hash, at.as_second()),
        None => Checkpoint::signed(key, 0, 0, GENESIS, at.as_second()),
    })
}

/// Appends one checkpoint as a JSON line to `path` (created with mode 0600).
pub fn append_checkpoint(path: &Path, cp: &Checkpoint) -> std::io::Result<()> {
    let mut line = serde_json::to_string(cp).map_err(std::io::Error::other)?;
    line.push('\n');
    let mut f = private_file(path, true)?;
    f.write_all(line.as_bytes())?;
    f.sync_data()
}

/// Takes a checkpoint and appends it to `path`.
pub async fn write_checkpoint(
    pool: &Pool,
    key: &AuditKey,
    path: &Path,
    at: Timestamp,
) -> std::result::Result<Checkpoint, String> {
    let cp = take_checkpoint(pool, key, at)
        .await
        .map_err(|e| format!("cannot read the audit record: {e}"))?;
    append_checkpoint(path, &cp)
        .map_err(|e| format!("cannot write the checkpoint to {}: {e}", path.display()))?;
    Ok(cp)
}

/// Every checkpoint in `path`, oldest first; none when the file does not exist. A line that is
/// not a checkpoint is an error (the file was damaged or edited).
pub fn read_checkpoints(path: &Path) -> std::result::Result<Vec<Checkpoint>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| format!("{} line {} is not a checkpoint: {e}", path.display(), i + 1))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Verification

/// The verifier's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Rows checked (all of them when intact; up to the broken one otherwise).
    pub rows: u64,
    /// Of those, rows under the unkeyed legacy scheme.
    pub legacy_rows: u64,
    /// Checkpoints whose signature was checked.
    pub checkpoints: u64,
    /// The first problem found, if any.
    pub broken: Option<Broken>,
}

impl Verification {
    pub fn intact(&self) -> bool {
        self.broken.is_none()
    }
}

/// Where the record stops being trustworthy, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broken {
    /// The first row that fails (none when the problem is rows missing at the end, or a
    /// checkpoint).
    pub id: Option<i64>,
    pub reason: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.id {
            Some(id) => write!(f, "row {id}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

/// Checks rows fed in id order against the key and the checkpoints.
pub struct Verifier<'k> {
    key: &'k AuditKey,
    checkpoints: Vec<Checkpoint>,
    next_checkpoint: usize,
    prev: String,
    keyed_seen: bool,
    out: Verification,
}

impl<'k> Verifier<'k> {
    pub fn new(key: &'k AuditKey, checkpoints: &[Checkpoint]) -> Verifier<'k> {
        let mut out = Verification {
            rows: 0,
            legacy_rows: 0,
            checkpoints: 0,
            broken: None,
        };
        for (i, cp) in checkpoints.iter().enumerate() {
            if !cp.signature_valid(key) {
                out.broken = Some(Broken {
                    id: None,
                    reason: format!(
                        "checkpoint {} (taken at {}) does not carry a valid signature under this key",
                        i + 1,
                        crate::ts(cp.at)
                    ),
                });
                break;
            }
            out.checkpoints += 1;
        }
        let mut checkpoints = checkpoints.to_vec();
        checkpoints.sort_by_key(|c| c.count);
        let mut v = Verifier {
            key,
            checkpoints,
            next_checkpoint: 0,
            prev: GENESIS.to_string(),
            keyed_seen: false,
            out,
        };
        v.match_checkpoints(None);
        v
    }

    fn broken(&mut self, id: Option<i64>, reason: String) {
        self.out.broken = Some(Broken { id, reason });
    }

    /// Checks the checkpoints that counted exactly the rows seen so far against the last row.
    fn match_checkpoints(&mut self, last: Option<&AuditRow>) {
        while self.out.broken.is_none()
            && self
                .checkpoints
                .get(self.next_checkpoint)
                .is_some_and(|c| c.count == self.out.rows)
        {
            let cp = &self.checkpoints[self.next_checkpoint];
            let (id, hash) = last.map_or((0, GENESIS), |r| (r.id, r.hash.as_str()));
            if cp.last_id != id || cp.head != hash {
                let reason = format!(
                    "the checkpoint of {} counted {} rows ending with row {}; row {} here is not that row",
                    crate::ts(cp.at),
                    cp.count,
                    cp.last_id,
                    self.out.rows
                );
                self.broken(last.map(|r| r.id), reason);
                return;
            }
            self.next_checkpoint += 1;
        }
    }

    /// Feeds the next row in id order; false once the record is found broken.
    pub fn feed(&mut self, row: &AuditRow) -> bool {
        if self.out.broken.is_some() {
            return false;
        }
        if row.prev_hash != self.prev {
            self.broken(
                Some(row.id),
                "does not follow the row before it (a row was removed, reordered or inserted)"
                    .into(),
            );
            return false;
        }
        match row.scheme {
            SCHEME_KEYED => self.keyed_seen = true,
            SCHEME_LEGACY if self.keyed_seen => {
                self.broken(
                    Some(row.id),
                    "an unkeyed row after keyed ones (appended without the key)".into(),
                );
                return false;
            }
            SCHEME_LEGACY => self.out.legacy_rows += 1,
            s => {
                self.broken(Some(row.id), format!("unknown chain scheme {s}"));
                return false;
            }
        }
        let expected = row.expected_hash(self.key, &self.prev);
        if expected.as_deref() != Some(row.hash.as_str()) {
            self.broken(
                Some(row.id),
                "was altered, or written without the audit key (hash mismatch)".into(),
            );
            return false;
        }
        self.prev = row.hash.clone();
        self.out.rows += 1;
        self.match_checkpoints(Some(row));
        self.out.broken.is_none()
    }

    /// The verdict once every row was fed: checkpoints counting more rows than there are mean
    /// rows were removed from the end.
    pub fn finish(mut self) -> Verification {
        if self.out.broken.is_none()
            && let Some(cp) = self.checkpoints.get(self.next_checkpoint)
        {
            let reason = format!(
                "the record holds {} rows but the checkpoint of {} counted {} ending with row {}: rows were removed",
                self.out.rows,
                crate::ts(cp.at),
                cp.count,
                cp.last_id,
            );
            self.broken(None, reason);
        }
        self.out
    }
}

/// Rows read per query while verifying.
const PAGE: i64 = 5000;

/// Verifies the whole record in `pool` against `key` and `checkpoints`.
pub async fn verify(
    pool: &Pool,
    key: &AuditKey,
    checkpoints: &[Checkpoint],
) -> Result<Verification> {
    verify_from(Reader::Pool(pool), key, checkpoints).await
}

/// [`verify`] inside a transaction (which sees its own uncommitted changes).
pub async fn verify_tx(
    tx: &mut Tx,
    key: &AuditKey,
    checkpoints: &[Checkpoint],
) -> Result<Verification> {
    verify_from(Reader::Tx(tx), key, checkpoints).await
}

async fn verify_from(
    mut reader: Reader<'_>,
    key: &AuditKey,
    checkpoints: &[Checkpoint],
) -> Result<Verification> {
    let mut v = Verifier::new(key, checkpoints);
    let mut after = i64::MIN;
    loop {
        let rows = reader.page(after, PAGE).await?;
        for row in &rows {
            after = row.id;
            if !v.feed(row) {
                return Ok(v.finish());
            }
        }
        if (rows.len() as i64) < PAGE {
            return Ok(v.finish());
        }
    }
}

/// After a key is installed: when the newest row is still unkeyed (a record written before the
/// keyed scheme), appends a keyed row that seals the legacy prefix. Returns whether it did.
pub async fn seal_legacy(pool: &Pool, at: Timestamp) -> Result<bool> {
    if audit_log::newest_scheme(pool).await? != Some(SCHEME_LEGACY) {
        return Ok(false);
    }
    let mut tx = pool.begin().await?;
    crate::queries::audit(
        &mut tx,
        &crate::queries::AuditEntry::new(
            "carepath",
            None,
            "audit.keyed_chain_start",
            "audit_log",
            &[],
            "ok",
            "local",
            at,
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}
