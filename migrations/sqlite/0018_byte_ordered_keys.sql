-- Dedupe keys compare as bytes on PostgreSQL from this version on (`COLLATE "C"`); SQLite
-- compares text as bytes (`BINARY`) already, so nothing changes here.
SELECT 1;
