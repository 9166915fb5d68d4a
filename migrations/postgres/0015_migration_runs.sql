-- Runs of a migration plan (`carepath migrate-enrolments`): one row per plan id, leased by the
-- process applying it so a second one refuses, and one row per enrolment moved, with what it was
-- before, so a run interrupted and run again moves each enrolment once and a rollback restores it.
CREATE TABLE migration_runs (
    id TEXT PRIMARY KEY,
    pathway_id TEXT NOT NULL,
    from_version BIGINT NOT NULL,
    to_version BIGINT NOT NULL,
    plan TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'rolled_back')),
    owner TEXT,
    lease_until BIGINT,
    started_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE TABLE migration_moves (
    run_id TEXT NOT NULL REFERENCES migration_runs(id),
    enrolment_id BIGINT NOT NULL REFERENCES enrolments(id),
    from_version BIGINT NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    vars_before TEXT NOT NULL,
    cancelled BIGINT NOT NULL,
    moved_at BIGINT NOT NULL,
    rolled_back_at BIGINT,
    PRIMARY KEY (run_id, enrolment_id)
);
