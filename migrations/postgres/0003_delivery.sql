-- Delivery: a claimed outbox row is 'sending' until `lease_until`; a dispatcher that dies mid-send
-- leaves it there and the next dispatcher reclaims it after the lease (and resends it with the same
-- idempotency key). `channel_attempts` counts attempts on the current channel, for falling back.
ALTER TABLE outbox ADD COLUMN lease_until BIGINT;
ALTER TABLE outbox ADD COLUMN channel_attempts BIGINT NOT NULL DEFAULT 0;
CREATE INDEX outbox_sending ON outbox (lease_until) WHERE status = 'sending';
-- The per-patient daily cap counts what was sent to the patient today.
CREATE INDEX outbox_patient ON outbox (patient_id, sent_at);
CREATE INDEX outbox_parked ON outbox (id) WHERE status = 'parked';
