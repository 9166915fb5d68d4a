-- Every "who is due" claim reads its rows in (instant, id) order with a LIMIT. With the index on
-- the instant alone, rows sharing one instant (a whole cohort woken at the same hour) had to be
-- fetched and sorted in full before the first batch could be returned; keyed by (instant, id) the
-- claim is an ordered range scan that stops at the batch size.
DROP INDEX enrolments_due;
CREATE INDEX enrolments_due ON enrolments (next_wake_at, id) WHERE status = 'active' AND next_wake_at IS NOT NULL;
DROP INDEX goals_due;
CREATE INDEX goals_due ON goals (next_eval_at, id) WHERE next_eval_at IS NOT NULL;
DROP INDEX scale_pushes_reminder;
CREATE INDEX scale_pushes_reminder ON scale_pushes (next_reminder_at, id) WHERE status = 'pending' AND next_reminder_at IS NOT NULL;
DROP INDEX scale_pushes_expiry;
CREATE INDEX scale_pushes_expiry ON scale_pushes (expires_at, id) WHERE status = 'pending' AND expires_at IS NOT NULL;
