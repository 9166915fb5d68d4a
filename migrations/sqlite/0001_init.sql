-- carepath schema, SQLite. Instants are Unix seconds (UTC); JSON is TEXT.
CREATE TABLE institutions (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    parent_id TEXT REFERENCES institutions(id)
);
CREATE TABLE staff (
    id TEXT PRIMARY KEY,
    institution_id TEXT NOT NULL REFERENCES institutions(id),
    display_name TEXT NOT NULL,
    roles TEXT NOT NULL,
    token_hash TEXT UNIQUE,
    supervisor_role TEXT
);
CREATE TABLE patients (
    id TEXT PRIMARY KEY,
    institution_id TEXT NOT NULL REFERENCES institutions(id),
    birth_date TEXT,
    sex TEXT NOT NULL DEFAULT 'unknown',
    tz TEXT NOT NULL,
    contact_enc TEXT,
    preferred_channel TEXT,
    created_at INTEGER NOT NULL
);
CREATE TABLE pathway_versions (
    pathway_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    format TEXT NOT NULL,
    source TEXT NOT NULL,
    model TEXT NOT NULL,
    hash TEXT NOT NULL,
    title TEXT NOT NULL,
    published_at INTEGER NOT NULL,
    PRIMARY KEY (pathway_id, version)
);
CREATE TABLE enrolments (
    id INTEGER PRIMARY KEY,
    patient_id TEXT NOT NULL REFERENCES patients(id),
    institution_id TEXT NOT NULL REFERENCES institutions(id),
    pathway_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    entry_point TEXT NOT NULL,
    state TEXT NOT NULL,
    state_seq INTEGER NOT NULL,
    entered_at INTEGER NOT NULL,
    vars TEXT NOT NULL,
    last_event_seq INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    next_wake_at INTEGER,
    error TEXT,
    row_version INTEGER NOT NULL DEFAULT 0,
    enrolled_at INTEGER NOT NULL,
    ended_at INTEGER,
    FOREIGN KEY (pathway_id, version) REFERENCES pathway_versions(pathway_id, version)
);
CREATE INDEX enrolments_due ON enrolments (next_wake_at) WHERE status = 'active' AND next_wake_at IS NOT NULL;
CREATE INDEX enrolments_patient ON enrolments (patient_id);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    enrolment_id INTEGER NOT NULL REFERENCES enrolments(id),
    name TEXT NOT NULL,
    at INTEGER NOT NULL,
    payload TEXT,
    source_key TEXT UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE INDEX events_enrolment ON events (enrolment_id, seq);
CREATE TABLE observations (
    id INTEGER PRIMARY KEY,
    patient_id TEXT NOT NULL REFERENCES patients(id),
    kind TEXT NOT NULL,
    value REAL NOT NULL,
    at INTEGER NOT NULL,
    reading_id TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (patient_id, reading_id, kind)
);
CREATE INDEX observations_patient ON observations (patient_id, kind, at);
CREATE TABLE tasks (
    id INTEGER PRIMARY KEY,
    dedupe_key TEXT NOT NULL UNIQUE,
    enrolment_id INTEGER NOT NULL REFERENCES enrolments(id),
    patient_id TEXT NOT NULL,
    institution_id TEXT NOT NULL,
    state_seq INTEGER NOT NULL,
    task_ref TEXT,
    role TEXT NOT NULL,
    title_zh TEXT NOT NULL,
    title_en TEXT NOT NULL,
    priority INTEGER NOT NULL,
    keep INTEGER NOT NULL DEFAULT 0,
    sla TEXT,
    status TEXT NOT NULL,
    due_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    assignee TEXT,
    lease_until INTEGER,
    outcome TEXT,
    completed_at INTEGER,
    cancel_reason TEXT,
    escalated_at INTEGER
);
CREATE INDEX tasks_queue ON tasks (institution_id, role, status, priority DESC, due_at);
CREATE INDEX tasks_enrolment ON tasks (enrolment_id, state_seq);
CREATE TABLE follow_ups (
    id INTEGER PRIMARY KEY,
    dedupe_key TEXT NOT NULL UNIQUE,
    enrolment_id INTEGER NOT NULL REFERENCES enrolments(id),
    patient_id TEXT NOT NULL,
    institution_id TEXT NOT NULL,
    state_seq INTEGER NOT NULL,
    follow_up_ref TEXT,
    template TEXT NOT NULL,
    channels TEXT NOT NULL,
    send_at INTEGER NOT NULL,
    urgent INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX follow_ups_enrolment ON follow_ups (enrolment_id);
CREATE TABLE scale_pushes (
    id INTEGER PRIMARY KEY,
    dedupe_key TEXT NOT NULL UNIQUE,
    enrolment_id INTEGER NOT NULL REFERENCES enrolments(id),
    patient_id TEXT NOT NULL,
    institution_id TEXT NOT NULL,
    state_seq INTEGER NOT NULL,
    scale TEXT NOT NULL,
    due_at INTEGER NOT NULL,
    expires_at INTEGER,
    reminders TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE scale_answers (
    id INTEGER PRIMARY KEY,
    push_id INTEGER REFERENCES scale_pushes(id),
    patient_id TEXT NOT NULL,
    scale TEXT NOT NULL,
    answers TEXT NOT NULL,
    score REAL NOT NULL,
    band TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX scale_answers_patient ON scale_answers (patient_id, scale, at);
CREATE TABLE risk_predictions (
    id INTEGER PRIMARY KEY,
    dedupe_key TEXT NOT NULL UNIQUE,
    enrolment_id INTEGER NOT NULL REFERENCES enrolments(id),
    patient_id TEXT NOT NULL,
    model TEXT NOT NULL,
    score REAL NOT NULL,
    band TEXT NOT NULL,
    contributions TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX risk_enrolment ON risk_predictions (enrolment_id, at);
CREATE TABLE referrals (
    id INTEGER PRIMARY KEY,
    dedupe_key TEXT NOT NULL UNIQUE,
    enrolment_id INTEGER NOT NULL REFERENCES enrolments(id),
    patient_id TEXT NOT NULL,
    direction TEXT NOT NULL,
    to_kind TEXT NOT NULL,
    from_institution TEXT NOT NULL,
    to_institution TEXT,
    reason TEXT,
    status TEXT NOT NULL,
    requested_at INTEGER NOT NULL,
    accept_by INTEGER NOT NULL,
    decided_at INTEGER,
    decision_reason TEXT,
    arrived_at INTEGER
);
CREATE TABLE alarm_rules (
    id INTEGER PRIMARY KEY,
    dedupe_key TEXT NOT NULL UNIQUE,
    enrolment_id INTEGER NOT NULL REFERENCES enrolments(id),
    state_seq INTEGER NOT NULL,
    alarm_id TEXT NOT NULL,
    spec TEXT NOT NULL,
    scope TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 1,
    firing INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE INDEX alarm_rules_enrolment ON alarm_rules (enrolment_id) WHERE active = 1;
CREATE TABLE goals (
    id INTEGER PRIMARY KEY,
    dedupe_key TEXT NOT NULL UNIQUE,
    enrolment_id INTEGER NOT NULL REFERENCES enrolments(id),
    goal_id TEXT NOT NULL,
    spec TEXT NOT NULL,
    met INTEGER,
    evaluated_at INTEGER,
    created_at INTEGER NOT NULL
);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    dedupe_key TEXT NOT NULL UNIQUE,
    follow_up_id INTEGER REFERENCES follow_ups(id),
    patient_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    template TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error TEXT,
    sent_at INTEGER,
    created_at INTEGER NOT NULL
);
CREATE INDEX outbox_pending ON outbox (next_attempt_at) WHERE status = 'pending';
-- The record of everything that happened to each patient: append-only.
CREATE TABLE record (
    id INTEGER PRIMARY KEY,
    dedupe_key TEXT UNIQUE,
    patient_id TEXT NOT NULL,
    enrolment_id INTEGER,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX record_patient ON record (patient_id, at);
CREATE TRIGGER record_no_update BEFORE UPDATE ON record BEGIN SELECT RAISE(ABORT, 'the record is append-only'); END;
CREATE TRIGGER record_no_delete BEFORE DELETE ON record BEGIN SELECT RAISE(ABORT, 'the record is append-only'); END;
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    institution_id TEXT,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    patients TEXT NOT NULL,
    outcome TEXT NOT NULL,
    remote TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit_log BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TABLE scheduler_leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    until INTEGER NOT NULL
);
