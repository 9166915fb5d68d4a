-- Care-plan goals are evaluated from the record on a schedule of their own (`next_eval_at`, a
-- partial index like the scheduler's), and every change of status is kept as history.
ALTER TABLE goals ADD COLUMN next_eval_at INTEGER;
ALTER TABLE goals ADD COLUMN value REAL;
CREATE INDEX goals_due ON goals (next_eval_at) WHERE next_eval_at IS NOT NULL;
UPDATE goals SET next_eval_at = created_at;
CREATE TABLE goal_status (
    id INTEGER PRIMARY KEY,
    dedupe_key TEXT NOT NULL UNIQUE,
    goal_row_id INTEGER NOT NULL REFERENCES goals(id),
    enrolment_id INTEGER NOT NULL REFERENCES enrolments(id),
    goal_id TEXT NOT NULL,
    met INTEGER NOT NULL,
    value REAL,
    readings INTEGER NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX goal_status_enrolment ON goal_status (enrolment_id, at);
CREATE INDEX goal_status_at ON goal_status (at);
CREATE INDEX goals_enrolment ON goals (enrolment_id);
CREATE TRIGGER goal_status_no_update BEFORE UPDATE ON goal_status BEGIN SELECT RAISE(ABORT, 'goal status history is append-only'); END;
CREATE TRIGGER goal_status_no_delete BEFORE DELETE ON goal_status BEGIN SELECT RAISE(ABORT, 'goal status history is append-only'); END;
