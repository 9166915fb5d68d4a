-- Signing in to the workstation: a password (argon2id, PHC string) and a TOTP secret per staff
-- member, failed attempts counted toward a lock-out, and sessions. A session row keeps only the
-- SHA-256 of its cookie's token, the CSRF token its forms carry, and the role the staff member
-- signed in as (one of theirs) at their institution. Sessions name their staff member without a
-- foreign key, so re-seeding staff leaves them orphaned (and refused) instead of failing.
CREATE TABLE staff_credentials (
    staff_id TEXT PRIMARY KEY,
    password_hash TEXT,
    totp_secret TEXT,
    -- The time step of the last one-time code accepted: a code is never accepted twice.
    totp_last_step BIGINT,
    failed_attempts BIGINT NOT NULL DEFAULT 0,
    locked_until BIGINT,
    updated_at BIGINT NOT NULL
);
CREATE TABLE staff_sessions (
    token_hash TEXT PRIMARY KEY,
    staff_id TEXT NOT NULL,
    institution_id TEXT NOT NULL,
    role TEXT NOT NULL,
    csrf_token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL
);
CREATE INDEX staff_sessions_staff ON staff_sessions (staff_id);
