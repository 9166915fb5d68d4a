-- Answering scale pushes. A push is `pending` until it is answered, expires or is cancelled (it was
-- stored as `pushed` before). One answer per push: the unique index backs the conditional status
-- update. `answers` keeps the scored item values that guards read through `item()`; `raw` keeps the
-- answers as given, by item id. Reminders are sent from the sweep in order: `reminders_sent` counts
-- those handled and `next_reminder_at` is the next one's instant, so "which reminders are due" is a
-- range scan like "who is due".
UPDATE scale_pushes SET status = 'pending' WHERE status = 'pushed';
ALTER TABLE scale_pushes ADD COLUMN answered_at BIGINT;
ALTER TABLE scale_pushes ADD COLUMN reminders_sent BIGINT NOT NULL DEFAULT 0;
ALTER TABLE scale_pushes ADD COLUMN next_reminder_at BIGINT;
UPDATE scale_pushes SET next_reminder_at = (reminders::jsonb ->> 0)::bigint WHERE status = 'pending';
CREATE INDEX scale_pushes_enrolment ON scale_pushes (enrolment_id);
CREATE INDEX scale_pushes_reminder ON scale_pushes (next_reminder_at) WHERE status = 'pending' AND next_reminder_at IS NOT NULL;
CREATE INDEX scale_pushes_expiry ON scale_pushes (expires_at) WHERE status = 'pending' AND expires_at IS NOT NULL;
ALTER TABLE scale_answers ADD COLUMN raw TEXT;
CREATE UNIQUE INDEX scale_answers_push ON scale_answers (push_id);
