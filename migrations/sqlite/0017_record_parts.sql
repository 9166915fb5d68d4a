-- Parts of the record that steps repeat (a task's bilingual title, an alarm rule's spec, a goal's
-- spec), stored once under the SHA-256 of their text and referred to from record rows as
-- `{"$part": "<hash>"}`. Content-addressed and append-only, so a part never changes under the
-- rows that name it.
CREATE TABLE record_parts (
    dedupe_key TEXT PRIMARY KEY,
    body TEXT NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER record_parts_no_update BEFORE UPDATE ON record_parts BEGIN SELECT RAISE(ABORT, 'the record is append-only'); END;
CREATE TRIGGER record_parts_no_delete BEFORE DELETE ON record_parts BEGIN SELECT RAISE(ABORT, 'the record is append-only'); END;
