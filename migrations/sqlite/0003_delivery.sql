-- Delivery: a claimed outbox row is 'sending' until `lease_until`; a dispatcher that dies mid-send
-- leaves it there and the next dispatcher reclaims it after the lease (and resends it with the same
-- idempotency key). `channel_attempts` counts attempts on the current channel, for falling back.
ALTER TABLE outbox ADD COLUMN lease_until INTEGER;
ALTER TABLE outbox ADD COLUMN channel_attempts INTEGER NOT NULL DEFAULT 0;
CREATE INDEX outbox_sending ON outbox (lease_until, id) WHERE status = 'sending';
-- Due rows are claimed in (next_attempt_at, id) order; with the id in the index a backlog of rows
-- due at the same second is read in index order instead of sorted whole for every batch
-- (PostgreSQL does not add the row id to an index as SQLite does).
DROP INDEX outbox_pending;
CREATE INDEX outbox_pending ON outbox (next_attempt_at, id) WHERE status = 'pending';
-- The per-patient daily cap counts what was sent to the patient today.
CREATE INDEX outbox_patient ON outbox (patient_id, sent_at);
CREATE INDEX outbox_parked ON outbox (id) WHERE status = 'parked';
