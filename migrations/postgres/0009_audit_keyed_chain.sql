-- The audit chain becomes keyed (HMAC-SHA256 under a key held outside the database; see
-- engine/src/audit.rs and docs/security.md). Each row says which scheme chains it: rows written
-- before this migration keep scheme 1 (plain SHA-256 over the row without `remote`) and are
-- verified as they were written; every new row is written with scheme 2. No scheme 1 row may
-- follow a scheme 2 row, and the first keyed row covers the last unkeyed row's hash.
-- Adding a column with a constant default rewrites no row, so the append-only triggers are not
-- involved.
ALTER TABLE audit_log ADD COLUMN scheme BIGINT NOT NULL DEFAULT 1;
