//! The audit record resists tampering by whoever can write the database but does not hold the
//! key: random edits of every column, deletions, truncations, reorderings, forged appends and
//! re-chains are each detected by the verifier, on SQLite and PostgreSQL; `carepath audit verify`
//! exits 1 on a tampered record; the audited address is the socket peer's unless a trusted proxy
//! forwarded the request.

use carepath_engine::audit::{self, AuditKey, AuditRow, Checkpoint, ROW_COLUMNS};
use carepath_engine::store::queries::{self, AuditEntry};
use carepath_engine::store::{self, Arg, Pool, Tx};
use jiff::Timestamp;

use crate::support::{self, Backend, Kind};

/// A small deterministic generator (xorshift64*), so every case can be replayed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    fn word(&mut self) -> String {
        let len = 1 + self.below(12) as usize;
        (0..len)
            .map(|_| (b'a' + self.below(26) as u8) as char)
            .collect()
    }
}

/// Rows in the record under test, and where the two checkpoints are taken.
const ROWS: i64 = 40;
const MID_CHECKPOINT: i64 = 17;
const CASES: u64 = 1000;

fn entry(rng: &mut Rng, i: i64, now: Timestamp) -> AuditEntry {
    let institution = match rng.below(4) {
        0 => None,
        1 => Some("clinic"),
        _ => Some("lead"),
    };
    let patients: Vec<String> = (0..rng.below(3)).map(|k| format!("P{i}-{k}")).collect();
    let remote = match rng.below(3) {
        0 => "unknown".to_string(),
        1 => format!("10.0.{}.{}", rng.below(256), rng.below(256)),
        _ => "2001:db8::1".to_string(),
    };
    AuditEntry::new(
        &format!("staff{}", rng.below(9)),
        institution,
        [
            "patient.read",
            "task.claim",
            "queue.read",
            "referral.accept",
        ][rng.below(4) as usize],
        &format!("thing/{i}"),
        &patients,
        ["ok", "denied", "not_found"][rng.below(3) as usize],
        &remote,
        Timestamp::from_second(now.as_second() + i).expect("instant"),
    )
}

/// A record of [`ROWS`] keyed rows appended in a few transactions, with checkpoints after
/// [`MID_CHECKPOINT`] rows and at the end.
async fn build_record(pool: &Pool, rng: &mut Rng) -> Vec<Checkpoint> {
    store::migrate(pool).await.expect("migrate");
    let key = audit::key();
    let now: Timestamp = "2026-06-01T08:00:00Z".parse().expect("instant");
    let mut checkpoints = Vec::new();
    let mut written = 0;
    for batch in [5, 12, 1, 9, 13] {
        let mut tx = pool.begin().await.expect("begin");
        let entries: Vec<AuditEntry> = (written..written + batch)
            .map(|i| entry(rng, i, now))
            .collect();
        queries::append_audit(&mut tx, &entries)
            .await
            .expect("append");
        tx.commit().await.expect("commit");
        written += batch;
        if written == MID_CHECKPOINT || written == ROWS {
            checkpoints.push(
                audit::take_checkpoint(pool, &key, now)
                    .await
                    .expect("checkpoint"),
            );
        }
    }
    assert_eq!(written, ROWS);
    assert_eq!(checkpoints.len(), 2);
    assert_eq!(checkpoints[0].count, MID_CHECKPOINT as u64);
    checkpoints
}

/// Lets this transaction change and delete audit rows, as a database superuser could.
async fn lift_guards(tx: &mut Tx, kind: Kind) {
    match kind {
        Kind::Sqlite => {
            tx.exec("DROP TRIGGER IF EXISTS audit_no_update", vec![])
                .await
                .expect("drop update trigger");
            tx.exec("DROP TRIGGER IF EXISTS audit_no_delete", vec![])
                .await
                .expect("drop delete trigger");
        }
        Kind::Postgres => {
            tx.exec("SET LOCAL session_replication_role = replica", vec![])
                .await
                .expect("replica role (the test user must be a superuser)");
        }
    }
}

async fn all_rows(tx: &mut Tx) -> Vec<AuditRow> {
    tx.fetch(
        &format!("SELECT {ROW_COLUMNS} FROM audit_log ORDER BY id"),
        vec![],
    )
    .await
    .expect("rows")
    .iter()
    .map(AuditRow::from_row)
    .collect()
}

fn hex64(rng: &mut Rng) -> String {
    (0..4).map(|_| format!("{:016x}", rng.next())).collect()
}

/// Every column of `r` but its id, in the order of the statements below.
fn columns(r: &AuditRow) -> Vec<Arg> {
    vec![
        Arg::I(r.at),
        Arg::T(r.actor.clone()),
        Arg::OptT(r.institution.clone()),
        Arg::T(r.action.clone()),
        Arg::T(r.target.clone()),
        Arg::T(r.patients.clone()),
        Arg::T(r.outcome.clone()),
        Arg::OptT(r.remote.clone()),
        Arg::T(r.prev_hash.clone()),
        Arg::T(r.hash.clone()),
        Arg::I(r.scheme),
    ]
}

/// Inserts `row` as it stands (its id included).
async fn insert_row(tx: &mut Tx, r: &AuditRow) {
    tx.exec(
        "INSERT INTO audit_log (id, at, actor, institution_id, action, target, patients, outcome, remote, prev_hash, hash, scheme) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        [vec![Arg::I(r.id)], columns(r)].concat(),
    )
    .await
    .expect("insert row");
}

/// A forged row after `prev`, hashed without the key: unkeyed (either scheme label) or under
/// another key.
fn forged_row(rng: &mut Rng, id: i64, prev: &str, wrong: &AuditKey) -> (AuditRow, &'static str) {
    let mut r = AuditRow {
        id,
        at: 1_780_000_000 + rng.range(0, 10_000),
        actor: format!("forger{}", rng.below(5)),
        institution: Some("lead".into()),
        action: "patient.read".into(),
        target: format!("patient/{}", rng.word()),
        patients: "[]".into(),
        outcome: "ok".into(),
        remote: Some("10.9.9.9".into()),
        prev_hash: prev.to_string(),
        hash: String::new(),
        scheme: audit::SCHEME_KEYED,
    };
    let label = match rng.below(3) {
        0 => {
            r.scheme = audit::SCHEME_LEGACY;
            "unkeyed append (scheme 1)"
        }
        1 => "unkeyed append labelled keyed",
        _ => "append under a wrong key",
    };
    r.hash = if label == "append under a wrong key" {
        r.expected_hash(wrong, prev).expect("scheme")
    } else {
        audit::legacy_hash(
            prev,
            r.at,
            &r.actor,
            r.institution.as_deref().unwrap_or(""),
            &r.action,
            &r.target,
            &r.patients,
            &r.outcome,
        )
    };
    (r, label)
}

const COLUMNS: [&str; 11] = [
    "at",
    "actor",
    "institution_id",
    "action",
    "target",
    "patients",
    "outcome",
    "remote",
    "prev_hash",
    "hash",
    "scheme",
];

/// Changes `column` of `row` to another value of its kind; returns a label.
fn edit(rng: &mut Rng, row: &mut AuditRow, column: &str, others: &[AuditRow]) -> String {
    fn other_text(rng: &mut Rng, old: &str) -> String {
        match rng.below(3) {
            0 if !old.is_empty() => String::new(),
            1 if !old.is_empty() => {
                let mut s = old.to_string();
                s.pop();
                s
            }
            _ => format!("{old}{}", rng.word()),
        }
    }
    fn other_opt(rng: &mut Rng, old: &Option<String>) -> Option<String> {
        match old {
            // NULL and the empty text are different values.
            Some(o) if rng.below(3) == 0 => {
                let _ = o;
                None
            }
            Some(o) => Some(other_text(rng, o)),
            None if rng.below(2) == 0 => Some(String::new()),
            None => Some(rng.word()),
        }
    }
    match column {
        "at" => {
            let d = rng.range(1, 100_000) * if rng.below(2) == 0 { 1 } else { -1 };
            row.at += d;
        }
        "actor" => row.actor = other_text(rng, &row.actor),
        "institution_id" => row.institution = other_opt(rng, &row.institution),
        "action" => row.action = other_text(rng, &row.action),
        "target" => row.target = other_text(rng, &row.target),
        "patients" => {
            row.patients = if row.patients == "[]" {
                format!("[\"{}\"]", rng.word())
            } else {
                "[]".into()
            }
        }
        "outcome" => row.outcome = other_text(rng, &row.outcome),
        "remote" => row.remote = other_opt(rng, &row.remote),
        "prev_hash" | "hash" => {
            let new = match rng.below(2) {
                0 => hex64(rng),
                _ => {
                    let o = &others[rng.below(others.len() as u64) as usize];
                    if o.hash == row.hash {
                        hex64(rng)
                    } else {
                        o.hash.clone()
                    }
                }
            };
            if column == "hash" {
                row.hash = new;
            } else if new != row.prev_hash {
                row.prev_hash = new;
            } else {
                row.prev_hash = hex64(rng);
            }
        }
        "scheme" => row.scheme = [audit::SCHEME_LEGACY, 0, 3][rng.below(3) as usize],
        other => panic!("no column {other}"),
    }
    format!("edit {column}")
}

/// Writes `row`'s fields over the stored row with its id.
async fn overwrite(tx: &mut Tx, r: &AuditRow) {
    let n = tx
        .exec(
            "UPDATE audit_log SET at = $1, actor = $2, institution_id = $3, action = $4, target = $5, patients = $6, outcome = $7, remote = $8, prev_hash = $9, hash = $10, scheme = $11 WHERE id = $12",
            [columns(r), vec![Arg::I(r.id)]].concat(),
        )
        .await
        .expect("update");
    assert_eq!(n, 1);
}

/// Applies one random tampering inside `tx`; returns what it did. The checkpoints may be
/// tampered with too (a forged checkpoint).
async fn tamper(
    tx: &mut Tx,
    rng: &mut Rng,
    rows: &[AuditRow],
    checkpoints: &mut [Checkpoint],
    wrong: &AuditKey,
) -> String {
    let n = rows.len();
    let pick = |rng: &mut Rng| rng.below(n as u64) as usize;
    match rng.below(10) {
        0..=2 => {
            let i = pick(rng);
            let mut r = rows[i].clone();
            let column = COLUMNS[rng.below(COLUMNS.len() as u64) as usize];
            let label = edit(rng, &mut r, column, rows);
            overwrite(tx, &r).await;
            format!("{label} of row {}", r.id)
        }
        3 => {
            let i = 1 + rng.below(n as u64 - 2) as usize;
            tx.exec(
                "DELETE FROM audit_log WHERE id = $1",
                vec![Arg::I(rows[i].id)],
            )
            .await
            .expect("delete");
            format!("delete middle row {}", rows[i].id)
        }
        4 => {
            // Keep at least one row; everything after it goes.
            let keep = rng.below(n as u64 - 1) as usize;
            tx.exec(
                "DELETE FROM audit_log WHERE id > $1",
                vec![Arg::I(rows[keep].id)],
            )
            .await
            .expect("truncate");
            format!("truncate after row {}", rows[keep].id)
        }
        5 => {
            tx.exec("DELETE FROM audit_log", vec![])
                .await
                .expect("delete all");
            "delete every row".into()
        }
        6 => {
            let i = pick(rng);
            let mut j = pick(rng);
            if j == i {
                j = (i + 1) % n;
            }
            let (a, b) = (rows[i].id, rows[j].id);
            for (from, to) in [(a, -1), (b, a), (-1, b)] {
                tx.exec(
                    "UPDATE audit_log SET id = $1 WHERE id = $2",
                    vec![Arg::I(to), Arg::I(from)],
                )
                .await
                .expect("swap ids");
            }
            format!("swap ids {a} and {b}")
        }
        7 => {
            // One or more forged rows appended after the head.
            let mut prev = rows[n - 1].hash.clone();
            let mut id = rows[n - 1].id;
            let mut labels = Vec::new();
            for _ in 0..=rng.below(3) {
                id += 1;
                let (r, label) = forged_row(rng, id, &prev, wrong);
                insert_row(tx, &r).await;
                prev = r.hash.clone();
                labels.push(label);
            }
            labels.join(", ")
        }
        8 => {
            // An edit, then every later row re-chained without the key.
            let i = pick(rng);
            let column = COLUMNS[1 + rng.below(7) as usize];
            let mut edited: Vec<AuditRow> = rows.to_vec();
            let label = edit(rng, &mut edited[i], column, rows);
            let unkeyed = rng.below(2) == 0;
            let mut prev = if i == 0 {
                audit::GENESIS.to_string()
            } else {
                edited[i - 1].hash.clone()
            };
            for r in edited.iter_mut().skip(i) {
                r.prev_hash = prev.clone();
                if unkeyed {
                    r.scheme = audit::SCHEME_LEGACY;
                }
                r.hash = r.expected_hash(wrong, &prev).expect("scheme");
                prev = r.hash.clone();
                overwrite(tx, r).await;
            }
            format!(
                "{label} of row {} re-chained {}",
                edited[i].id,
                if unkeyed {
                    "unkeyed"
                } else {
                    "under a wrong key"
                }
            )
        }
        _ => {
            // A checkpoint edited to match a truncated record, or re-signed with a wrong key.
            let c = rng.below(checkpoints.len() as u64) as usize;
            let cp = &mut checkpoints[c];
            let keep = rng.below(cp.count) as usize;
            tx.exec(
                "DELETE FROM audit_log WHERE id > $1",
                vec![Arg::I(rows[keep].id)],
            )
            .await
            .expect("truncate");
            if rng.below(2) == 0 {
                cp.count = keep as u64 + 1;
                cp.last_id = rows[keep].id;
                cp.head = rows[keep].hash.clone();
                format!("truncate after row {} and edit checkpoint {c}", cp.last_id)
            } else {
                *cp = Checkpoint::signed(
                    wrong,
                    keep as u64 + 1,
                    rows[keep].id,
                    &rows[keep].hash,
                    cp.at,
                );
                format!(
                    "truncate after row {} and re-sign checkpoint {c} with a wrong key",
                    rows[keep].id
                )
            }
        }
    }
}

/// The kind of a tampering, for the tally.
fn kind_of(what: &str) -> String {
    let kind = if what.starts_with("edit ") && what.contains("re-chained") {
        if what.ends_with("unkeyed") {
            "re-chain after an edit, unkeyed"
        } else {
            "re-chain after an edit, wrong key"
        }
    } else if what.starts_with("edit ") {
        return what.split(" of row").next().unwrap_or(what).to_string();
    } else if what.contains("append") {
        "forged append(s)"
    } else if what.starts_with("truncate") && what.contains("checkpoint") {
        "truncate and forge a checkpoint"
    } else if what.starts_with("truncate") {
        "truncate the tail"
    } else if what.starts_with("swap ids") {
        "swap two ids"
    } else if what.starts_with("delete middle") {
        "delete a middle row"
    } else {
        what
    };
    kind.to_string()
}

async fn random_tampering_on(b: &Backend, seed: u64) -> std::collections::BTreeMap<String, u64> {
    let mut rng = Rng::new(seed);
    let pool = Pool::connect(&b.url).await.expect("connect");
    let checkpoints = build_record(&pool, &mut rng).await;
    let key = audit::key();
    let wrong = AuditKey::from_bytes([7u8; 32]);
    let clean = audit::verify(&pool, &key, &checkpoints)
        .await
        .expect("verify");
    assert!(clean.intact(), "{}: untouched record: {clean:?}", b.name());
    assert_eq!((clean.rows, clean.checkpoints), (ROWS as u64, 2));
    let mut kinds = std::collections::BTreeMap::new();
    for case in 0..CASES {
        let mut tx = pool.begin().await.expect("begin");
        lift_guards(&mut tx, b.kind).await;
        let rows = all_rows(&mut tx).await;
        assert_eq!(rows.len() as i64, ROWS);
        let mut cps = checkpoints.clone();
        let what = tamper(&mut tx, &mut rng, &rows, &mut cps, &wrong).await;
        let v = audit::verify_tx(&mut tx, &key, &cps).await.expect("verify");
        tx.rollback().await.expect("rollback");
        assert!(
            !v.intact(),
            "{}: case {case} (seed {seed}) went undetected: {what}; verdict {v:?}",
            b.name()
        );
        let kind = kind_of(&what);
        *kinds.entry(kind).or_insert(0) += 1;
    }
    let after = audit::verify(&pool, &key, &checkpoints)
        .await
        .expect("verify");
    assert!(after.intact(), "{}: rollbacks left {after:?}", b.name());
    pool.close().await;
    kinds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_random_tampering_is_detected() {
    let seed = std::env::var("CAREPATH_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_260_601);
    for b in support::backends() {
        let started = std::time::Instant::now();
        let kinds = random_tampering_on(&b, seed).await;
        println!(
            "{}: {CASES} tamperings (seed {seed}) all detected in {:.2}s",
            b.name(),
            started.elapsed().as_secs_f64()
        );
        for (k, n) in &kinds {
            println!("  {n:>4}  {k}");
        }
        for col in COLUMNS {
            assert!(
                kinds.keys().any(|k| k == &format!("edit {col}")),
                "{}: no edit of {col} was tried",
                b.name()
            );
        }
    }
}

/// A record written before the keyed scheme: verified as it was written, sealed by a keyed row;
/// then its rows cannot be edited, and no unkeyed row may follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unkeyed_rows_are_sealed_by_the_first_keyed_row() {
    for b in support::backends() {
        let pool = Pool::connect(&b.url).await.expect("connect");
        store::migrate(&pool).await.expect("migrate");
        let key = audit::key();
        let mut prev = audit::GENESIS.to_string();
        for i in 1..=4i64 {
            let hash = audit::legacy_hash(
                &prev,
                1_700_000_000 + i,
                "old",
                "lead",
                "patient.read",
                "p",
                "[]",
                "ok",
            );
            // Rows as the old code wrote them: the scheme column takes its default.
            pool.exec(
                "INSERT INTO audit_log (at, actor, institution_id, action, target, patients, outcome, remote, prev_hash, hash) VALUES ($1, 'old', 'lead', 'patient.read', 'p', '[]', 'ok', 'direct', $2, $3)",
                vec![Arg::I(1_700_000_000 + i), Arg::T(prev.clone()), Arg::T(hash.clone())],
            )
            .await
            .expect("legacy row");
            prev = hash;
        }
        let v = audit::verify(&pool, &key, &[]).await.expect("verify");
        assert!(v.intact(), "{v:?}");
        assert_eq!((v.rows, v.legacy_rows), (4, 4));
        assert!(
            audit::seal_legacy(&pool, Timestamp::now())
                .await
                .expect("seal")
        );
        assert!(
            !audit::seal_legacy(&pool, Timestamp::now())
                .await
                .expect("seal")
        );
        let v = audit::verify(&pool, &key, &[]).await.expect("verify");
        assert!(v.intact(), "{v:?}");
        assert_eq!((v.rows, v.legacy_rows), (5, 4));

        // A legacy row edited and the legacy prefix re-chained: the keyed seal no longer follows.
        let mut tx = pool.begin().await.expect("begin");
        lift_guards(&mut tx, b.kind).await;
        let mut rows = all_rows(&mut tx).await;
        rows[1].action = "nothing".into();
        let mut prev = rows[0].hash.clone();
        for r in rows.iter_mut().take(4).skip(1) {
            r.prev_hash = prev.clone();
            r.hash = r.expected_hash(&key, &prev).expect("scheme");
            prev = r.hash.clone();
            overwrite(&mut tx, r).await;
        }
        let v = audit::verify_tx(&mut tx, &key, &[]).await.expect("verify");
        tx.rollback().await.expect("rollback");
        assert_eq!(
            v.broken.as_ref().and_then(|b| b.id),
            Some(rows[4].id),
            "{v:?}"
        );

        // An unkeyed row appended after the keyed seal.
        let mut tx = pool.begin().await.expect("begin");
        let head = rows[4].hash.clone();
        let hash = audit::legacy_hash(
            &head,
            1_700_000_100,
            "forger",
            "lead",
            "patient.read",
            "p",
            "[]",
            "ok",
        );
        tx.exec(
            "INSERT INTO audit_log (at, actor, institution_id, action, target, patients, outcome, remote, prev_hash, hash, scheme) VALUES (1700000100, 'forger', 'lead', 'patient.read', 'p', '[]', 'ok', 'x', $1, $2, 1)",
            vec![Arg::T(head), Arg::T(hash)],
        )
        .await
        .expect("forged row");
        let v = audit::verify_tx(&mut tx, &key, &[]).await.expect("verify");
        tx.rollback().await.expect("rollback");
        assert!(
            v.broken
                .as_ref()
                .is_some_and(|b| b.reason.contains("unkeyed row after keyed")),
            "{v:?}"
        );
        pool.close().await;
    }
}

/// `carepath audit checkpoint` and `carepath audit verify`: exit 0 on the intact record, 1 once
/// rows are removed from its end (a valid chain, but shorter than the checkpoint) or all of them,
/// and 1 under a wrong key.
#[test]
fn cli_verify_exits_one_on_tampering() {
    let rt = support::runtime();
    for b in support::backends() {
        let key_hex = audit::key().to_hex();
        let pool = rt.block_on(async {
            let pool = Pool::connect(&b.url).await.expect("connect");
            let mut rng = Rng::new(99);
            build_record(&pool, &mut rng).await;
            pool
        });
        let dir = support::tempdir();
        let checkpoints = dir.path().join("audit-checkpoints");
        let cp = checkpoints.to_str().expect("path").to_string();
        let run = |args: &[&str], key: &str| {
            support::carepath()
                .args(args)
                .args(["--db", &b.url, "--checkpoints", &cp])
                .env("CAREPATH_AUDIT_KEY", key)
                .output()
                .expect("run carepath")
        };
        let out = run(&["audit", "checkpoint"], &key_hex);
        assert!(out.status.success(), "{out:?}");
        let out = run(&["audit", "verify"], &key_hex);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(out.status.code(), Some(0), "{}: {text}", b.name());
        assert!(text.contains(&format!("rows checked: {ROWS}")), "{text}");
        assert!(text.contains("checkpoints checked: 1"), "{text}");

        let wrong = AuditKey::from_bytes([9u8; 32]).to_hex();
        let out = run(&["audit", "verify"], &wrong);
        assert_eq!(out.status.code(), Some(1), "{out:?}");

        // Remove the last rows as a superuser would, for good.
        rt.block_on(async {
            let mut tx = pool.begin().await.expect("begin");
            lift_guards(&mut tx, b.kind).await;
            tx.exec(
                "DELETE FROM audit_log WHERE id > (SELECT MAX(id) - 3 FROM audit_log)",
                vec![],
            )
            .await
            .expect("truncate");
            tx.commit().await.expect("commit");
        });
        let out = run(&["audit", "verify"], &key_hex);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(out.status.code(), Some(1), "{}: {text}", b.name());
        assert!(
            text.contains(&format!("rows checked: {}", ROWS - 3)),
            "{text}"
        );
        assert!(text.contains("rows were removed"), "{text}");

        rt.block_on(async {
            let mut tx = pool.begin().await.expect("begin");
            lift_guards(&mut tx, b.kind).await;
            tx.exec("DELETE FROM audit_log", vec![])
                .await
                .expect("delete all");
            tx.commit().await.expect("commit");
        });
        let out = run(&["audit", "verify", "--json"], &key_hex);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["rows"], 0);
        assert!(
            v["broken"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("holds 0 rows")),
            "{v}"
        );
        rt.block_on(pool.close());
    }
}

/// Served as `carepath serve` serves it (with the socket's address), the API audits the peer's
/// address and ignores `X-Forwarded-For`, unless the peer is a trusted proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audited_address_is_the_peer_unless_a_trusted_proxy_forwarded() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let b = support::sqlite();
    let pool = Pool::connect(&b.url).await.expect("connect");
    store::migrate(&pool).await.expect("migrate");
    let mut tx = pool.begin().await.expect("begin");
    store::insert_institution(&mut tx, "lead", "Lead", "hospital", None)
        .await
        .expect("institution");
    store::insert_staff(
        &mut tx,
        "lead.admin",
        "lead",
        "Admin",
        &["admin"],
        Some(queries::token_hash("tok-remote")),
    )
    .await
    .expect("staff");
    tx.commit().await.expect("commit");
    for trusted in [vec![], vec!["127.0.0.1".parse().expect("ip")]] {
        let state = carepath_admin_api::AppState::new(pool.clone(), Default::default())
            .with_trusted_proxies(trusted);
        let app = carepath_admin_api::router(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .await
        });
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        conn.write_all(
            b"GET /audit/verify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-remote\r\nX-Forwarded-For: 6.6.6.6, 198.51.100.9\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("write");
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        server.abort();
    }
    let remotes = support::rows(
        &pool,
        "SELECT remote FROM audit_log WHERE outcome = 'denied' ORDER BY id",
        1,
    )
    .await;
    assert_eq!(remotes, vec!["127.0.0.1", "198.51.100.9"]);
    let v = audit::verify(&pool, &audit::key(), &[])
        .await
        .expect("verify");
    assert!(v.intact(), "{v:?}");
    pool.close().await;
}
