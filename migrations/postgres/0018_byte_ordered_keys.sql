-- Dedupe keys (and events' source keys) compare as bytes (`COLLATE "C"`) rather than by the
-- database's locale: they are identifiers, never shown in order, and each insert of a produced row
-- looks its key up in a unique index, where a locale comparison (strcoll) costs several times a
-- byte comparison. Nothing orders by these keys; `LIKE 'prefix%'` on them matches the same rows
-- and can now use their indexes. The tables are not rewritten, but their key indexes are rebuilt,
-- under a lock that holds writes to each table while its index is built.
ALTER TABLE tasks ALTER COLUMN dedupe_key TYPE TEXT COLLATE "C";
ALTER TABLE follow_ups ALTER COLUMN dedupe_key TYPE TEXT COLLATE "C";
ALTER TABLE scale_pushes ALTER COLUMN dedupe_key TYPE TEXT COLLATE "C";
ALTER TABLE risk_predictions ALTER COLUMN dedupe_key TYPE TEXT COLLATE "C";
ALTER TABLE referrals ALTER COLUMN dedupe_key TYPE TEXT COLLATE "C";
ALTER TABLE alarm_rules ALTER COLUMN dedupe_key TYPE TEXT COLLATE "C";
ALTER TABLE alarm_episodes ALTER COLUMN dedupe_key TYPE TEXT COLLATE "C";
ALTER TABLE goals ALTER COLUMN dedupe_key TYPE TEXT COLLATE "C";
ALTER TABLE goal_status ALTER COLUMN dedupe_key TYPE TEXT COLLATE "C";
ALTER TABLE outbox ALTER COLUMN dedupe_key TYPE TEXT COLLATE "C";
ALTER TABLE record ALTER COLUMN dedupe_key TYPE TEXT COLLATE "C";
ALTER TABLE record_parts ALTER COLUMN dedupe_key TYPE TEXT COLLATE "C";
ALTER TABLE events ALTER COLUMN source_key TYPE TEXT COLLATE "C";
