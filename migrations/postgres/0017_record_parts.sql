-- Parts of the record that steps repeat (a task's bilingual title, an alarm rule's spec, a goal's
-- spec), stored once under the SHA-256 of their text and referred to from record rows as
-- `{"$part": "<hash>"}`. Content-addressed and append-only, so a part never changes under the
-- rows that name it.
CREATE TABLE record_parts (
    dedupe_key TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TRIGGER record_parts_append_only BEFORE UPDATE OR DELETE ON record_parts FOR EACH ROW EXECUTE FUNCTION carepath_append_only();
CREATE TRIGGER record_parts_no_truncate BEFORE TRUNCATE ON record_parts FOR EACH STATEMENT EXECUTE FUNCTION carepath_append_only();
