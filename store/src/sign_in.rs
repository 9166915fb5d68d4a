//! Staff signing in to the workstation: credentials (a password hash and a TOTP secret, both made
//! by the caller — the store neither hashes nor checks them), the count of failed attempts behind
//! the lock-out, and sessions. A session is stored as the SHA-256 of its token, so a copy of the
//! database opens no session; it resolves to the same [`Caller`] a bearer token does, narrowed to
//! the one role chosen at sign-in. Every sign-in, failure, lock-out and sign-out is audited in the
//! transaction that records it.

use jiff::Timestamp;

use super::{Pool, Result};
use crate::args;
use crate::queries::{AuditEntry, Caller, audit, token_hash};

/// A staff member as sign-in needs them.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub staff_id: String,
    pub institution_id: String,
    pub display_name: String,
    pub roles: Vec<String>,
    /// An argon2id PHC string; none: the staff member cannot sign in.
    pub password_hash: Option<String>,
    /// A base32 TOTP secret; none: not enrolled.
    pub totp_secret: Option<String>,
    pub failed_attempts: i64,
    pub locked_until: Option<i64>,
}

/// A staff member's credentials; `None` when there is no such staff member.
pub async fn credentials(pool: &Pool, staff: &str) -> Result<Option<Credentials>> {
    let rows = pool
        .fetch(
            "SELECT s.id, s.institution_id, s.display_name, s.roles, c.password_hash, c.totp_secret, COALESCE(c.failed_attempts, 0), c.locked_until \
             FROM staff s LEFT JOIN staff_credentials c ON c.staff_id = s.id WHERE s.id = $1",
            args![staff],
        )
        .await?;
    Ok(rows.first().map(|r| Credentials {
        staff_id: r.text(0),
        institution_id: r.text(1),
        display_name: r.text(2),
        roles: r.text(3).split(',').map(str::to_string).collect(),
        password_hash: r.opt_text(4),
        totp_secret: r.opt_text(5),
        failed_attempts: r.i64(6),
        locked_until: r.opt_i64(7),
    }))
}

/// Which credential to replace.
pub enum Credential<'a> {
    /// A password hash; replacing it clears failed attempts and any lock-out.
    Password(&'a str),
    /// A TOTP secret.
    Totp(&'a str),
}

/// Stores a credential of a staff member; `false` when there is no such staff member. Audited
/// (actor `cli`) with the staff member as target.
pub async fn set_credential(
    pool: &Pool,
    staff: &str,
    credential: Credential<'_>,
    now: Timestamp,
) -> Result<bool> {
    let mut tx = pool.begin().await?;
    if tx
        .fetch_one("SELECT 1 FROM staff WHERE id = $1", args![staff])
        .await?
        .is_none()
    {
        return Ok(false);
    }
    tx.exec(
        "INSERT INTO staff_credentials (staff_id, updated_at) VALUES ($1, $2) ON CONFLICT (staff_id) DO NOTHING",
        args![staff, now.as_second()],
    )
    .await?;
    let action = match credential {
        Credential::Password(hash) => {
            tx.exec(
                "UPDATE staff_credentials SET password_hash = $1, failed_attempts = 0, locked_until = NULL, updated_at = $2 WHERE staff_id = $3",
                args![hash, now.as_second(), staff],
            )
            .await?;
            "staff.set_password"
        }
        Credential::Totp(secret) => {
            tx.exec(
                "UPDATE staff_credentials SET totp_secret = $1, updated_at = $2 WHERE staff_id = $3",
                args![secret, now.as_second(), staff],
            )
            .await?;
            "staff.enrol_totp"
        }
    };
    audit(
        &mut tx,
        &AuditEntry::new(
            "cli",
            None,
            action,
            &format!("staff/{staff}"),
            &[],
            "ok",
            "local",
            now,
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// The limits of failed attempts.
#[derive(Debug, Clone, Copy)]
pub struct LockOut {
    /// Failed attempts in a row that lock the account.
    pub after: i64,
    /// For how long.
    pub seconds: i64,
}

/// Why a sign-in was refused, as audited (`target` names the staff id typed, cut short).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No such staff member (not counted: there is no account to lock).
    UnknownStaff,
    /// A wrong password, second factor or role; counted toward the lock-out.
    Wrong,
    /// The account is locked; not counted again.
    Locked,
}

/// Records a refused sign-in, counting it toward the lock-out when it names an account; returns
/// the instant the account is locked until, when this failure (or an earlier one) locked it.
pub async fn record_failure(
    pool: &Pool,
    staff: &str,
    failure: Failure,
    limits: LockOut,
    remote: &str,
    now: Timestamp,
) -> Result<Option<i64>> {
    let mut tx = pool.begin().await?;
    let target = format!("staff/{}", staff.chars().take(64).collect::<String>());
    let mut locked = None;
    let mut action = match failure {
        Failure::UnknownStaff => "signin.unknown_staff",
        Failure::Wrong => "signin.failed",
        Failure::Locked => "signin.locked_out",
    };
    if failure == Failure::Wrong {
        tx.exec(
            "INSERT INTO staff_credentials (staff_id, updated_at) VALUES ($1, $2) ON CONFLICT (staff_id) DO NOTHING",
            args![staff, now.as_second()],
        )
        .await?;
        // A lock-out that has run out starts the count again.
        tx.exec(
            "UPDATE staff_credentials SET failed_attempts = CASE WHEN locked_until IS NOT NULL AND locked_until <= $2 THEN 1 ELSE failed_attempts + 1 END, \
             locked_until = CASE WHEN locked_until IS NOT NULL AND locked_until <= $2 THEN NULL ELSE locked_until END, updated_at = $2 WHERE staff_id = $1",
            args![staff, now.as_second()],
        )
        .await?;
        let until = now.as_second() + limits.seconds;
        let n = tx
            .exec(
                "UPDATE staff_credentials SET locked_until = $1 WHERE staff_id = $2 AND failed_attempts >= $3 AND locked_until IS NULL",
                args![until, staff, limits.after],
            )
            .await?;
        if n == 1 {
            locked = Some(until);
            action = "signin.locked";
        }
    }
    let (institution, actor) = match tx
        .fetch_one(
            "SELECT institution_id FROM staff WHERE id = $1",
            args![staff],
        )
        .await?
    {
        Some(r) => (Some(r.text(0)), staff.to_string()),
        None => (None, "unknown".to_string()),
    };
    audit(
        &mut tx,
        &AuditEntry::new(
            &actor,
            institution.as_deref(),
            action,
            &target,
            &[],
            "denied",
            remote,
            now,
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(locked)
}

/// A session as stored, with the caller it resolves to.
#[derive(Debug, Clone)]
pub struct Session {
    pub caller: Caller,
    pub display_name: String,
    pub csrf_token: String,
    pub created_at: i64,
    pub last_seen_at: i64,
}

/// What a sign-in proved: the staff member, the role chosen, and the time step of the one-time
/// code given, if one was needed.
pub struct Proof<'a> {
    pub staff: &'a Credentials,
    pub role: &'a str,
    pub totp_step: Option<i64>,
}

/// Opens a session for a staff member who has proved who they are: clears their failed attempts,
/// stores the token's hash with its CSRF token and chosen role, and audits the sign-in. `false`,
/// with nothing written, when the one-time code's step is not later than the last one accepted
/// (a code replayed).
pub async fn open_session(
    pool: &Pool,
    proof: &Proof<'_>,
    token: &str,
    csrf_token: &str,
    remote: &str,
    now: Timestamp,
) -> Result<bool> {
    let (staff, role) = (proof.staff, proof.role);
    let mut tx = pool.begin().await?;
    if let Some(step) = proof.totp_step {
        let n = tx
            .exec(
                "UPDATE staff_credentials SET totp_last_step = $1 WHERE staff_id = $2 AND (totp_last_step IS NULL OR totp_last_step < $1)",
                args![step, &staff.staff_id],
            )
            .await?;
        if n != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
    }
    tx.exec(
        "UPDATE staff_credentials SET failed_attempts = 0, locked_until = NULL WHERE staff_id = $1",
        args![&staff.staff_id],
    )
    .await?;
    tx.exec(
        "INSERT INTO staff_sessions (token_hash, staff_id, institution_id, role, csrf_token, created_at, last_seen_at) VALUES ($1, $2, $3, $4, $5, $6, $6)",
        args![
            token_hash(token),
            &staff.staff_id,
            &staff.institution_id,
            role,
            csrf_token,
            now.as_second()
        ],
    )
    .await?;
    audit(
        &mut tx,
        &AuditEntry::new(
            &staff.staff_id,
            Some(&staff.institution_id),
            "signin.ok",
            &format!("role/{role}"),
            &[],
            "ok",
            remote,
            now,
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// The session of a token, if it exists and its staff member still holds its role at its
/// institution. Time limits are the caller's to judge ([`Session::created_at`],
/// [`Session::last_seen_at`]).
pub async fn session(pool: &Pool, token: &str) -> Result<Option<Session>> {
    let rows = pool
        .fetch(
            "SELECT s.staff_id, s.institution_id, s.role, s.csrf_token, s.created_at, s.last_seen_at, st.roles, st.display_name \
             FROM staff_sessions s JOIN staff st ON st.id = s.staff_id AND st.institution_id = s.institution_id WHERE s.token_hash = $1",
            args![token_hash(token)],
        )
        .await?;
    Ok(rows.first().and_then(|r| {
        let role = r.text(2);
        let held = r.text(6);
        held.split(',').any(|h| h == role).then(|| Session {
            caller: Caller {
                staff_id: r.text(0),
                institution_id: r.text(1),
                roles: vec![role.clone()],
            },
            display_name: r.text(7),
            csrf_token: r.text(3),
            created_at: r.i64(4),
            last_seen_at: r.i64(5),
        })
    }))
}

/// Marks a session as seen at `now` (written at most once a minute per session).
pub async fn touch_session(pool: &Pool, token: &str, now: Timestamp) -> Result<()> {
    pool.exec(
        "UPDATE staff_sessions SET last_seen_at = $1 WHERE token_hash = $2 AND last_seen_at < $1 - 60",
        args![now.as_second(), token_hash(token)],
    )
    .await?;
    Ok(())
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The staff member signed out.
    SignedOut,
    /// Idle for longer than allowed, or past its absolute lifetime.
    Expired,
}

/// Ends a session and audits how; nothing when it is already gone.
pub async fn end_session(
    pool: &Pool,
    token: &str,
    how: Ended,
    remote: &str,
    now: Timestamp,
) -> Result<()> {
    let mut tx = pool.begin().await?;
    let Some(row) = tx
        .fetch_one(
            "SELECT staff_id, institution_id, role FROM staff_sessions WHERE token_hash = $1",
            args![token_hash(token)],
        )
        .await?
    else {
        return Ok(());
    };
    tx.exec(
        "DELETE FROM staff_sessions WHERE token_hash = $1",
        args![token_hash(token)],
    )
    .await?;
    let action = match how {
        Ended::SignedOut => "signout",
        Ended::Expired => "session.expired",
    };
    audit(
        &mut tx,
        &AuditEntry::new(
            &row.text(0),
            Some(&row.text(1)),
            action,
            &format!("role/{}", row.text(2)),
            &[],
            "ok",
            remote,
            now,
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
