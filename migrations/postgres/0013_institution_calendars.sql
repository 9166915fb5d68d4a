-- An institution's own calendar over the national calendar of working days (calendars/cn/): the
-- dates it closes or works although the nation rests, and its working hours. Written by
-- `carepath calendar load`; read by the scheduler to count a pathway's working days.
CREATE TABLE institution_days (
    institution_id TEXT NOT NULL REFERENCES institutions(id),
    day TEXT NOT NULL,
    working BIGINT NOT NULL CHECK (working IN (0, 1)),
    reason TEXT,
    PRIMARY KEY (institution_id, day)
);
CREATE TABLE institution_hours (
    institution_id TEXT PRIMARY KEY REFERENCES institutions(id),
    opens TEXT NOT NULL,
    closes TEXT NOT NULL
);
