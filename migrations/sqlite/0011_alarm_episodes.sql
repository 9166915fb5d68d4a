-- Alarm episodes, and rules that keep where they stand.
--
-- `state` is the rule's debounce and hysteresis state as the core keeps it (carepath_core::alarms:
-- latched or not, the current run of matching readings, the episodes raised so far), so a batch
-- of readings is judged without rereading the patient's history; NULL is a rule just armed. A
-- rule firing before this migration is latched. `due_at` is when a no-reading rule's silence
-- will have lasted its `for`: the scheduler's sweep is a range scan of it, like "who is due".
--
-- An episode is opened when a rule is raised and closed when its clear condition holds
-- (`cleared`), when staff resolve it (`resolved`, with a reason) or when the enrolment ends
-- (`ended`). One open episode per alarm of an enrolment: the partial unique index makes a second
-- one impossible however the rule is re-armed, and an episode's dedupe key (the rule and its
-- episode number) makes a rerun insert nothing.
ALTER TABLE alarm_rules ADD COLUMN state TEXT;
ALTER TABLE alarm_rules ADD COLUMN due_at INTEGER;
UPDATE alarm_rules SET state = '{"latched":true,"raised":1}' WHERE firing = 1;
CREATE INDEX alarm_rules_due ON alarm_rules (due_at, id) WHERE active = 1 AND due_at IS NOT NULL;
CREATE TABLE alarm_episodes (
    id INTEGER PRIMARY KEY,
    dedupe_key TEXT NOT NULL UNIQUE,
    rule_id INTEGER NOT NULL REFERENCES alarm_rules(id),
    enrolment_id INTEGER NOT NULL REFERENCES enrolments(id),
    patient_id TEXT NOT NULL,
    institution_id TEXT NOT NULL,
    alarm_id TEXT NOT NULL,
    role TEXT NOT NULL,
    escalate_to TEXT,
    task_id INTEGER,
    status TEXT NOT NULL,
    opened_at INTEGER NOT NULL,
    detail TEXT NOT NULL,
    acknowledged_at INTEGER,
    acknowledged_by TEXT,
    closed_at INTEGER,
    closed_by TEXT,
    close_reason TEXT
);
CREATE UNIQUE INDEX alarm_episodes_open ON alarm_episodes (enrolment_id, alarm_id) WHERE closed_at IS NULL;
CREATE INDEX alarm_episodes_board ON alarm_episodes (institution_id, status, id);
