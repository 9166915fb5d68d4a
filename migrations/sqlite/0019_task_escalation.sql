-- The instant an open task escalates to its SLA's supervisor role: its due time plus the SLA's
-- `escalate_after`, set when the task is written (and moved with it when it is snoozed), null
-- when its SLA names no escalation or once the escalation sweep has dealt with it. The sweep
-- reads only the rows whose instant has come, from a partial index, rather than every task.
ALTER TABLE tasks ADD COLUMN escalate_at INTEGER;

-- Tasks written before this version: an open or claimed one not yet escalated whose SLA (its
-- text, or the record part named by its hash) names both a role and a delay.
UPDATE tasks SET escalate_at = (
    SELECT tasks.due_at + CAST(json_extract(s.body, '$.escalate_after.amount') AS INTEGER) *
        CASE json_extract(s.body, '$.escalate_after.unit')
            WHEN 'minutes' THEN 60
            WHEN 'hours' THEN 3600
            WHEN 'days' THEN 86400
            WHEN 'working_days' THEN 86400
            WHEN 'weeks' THEN 604800
        END
    FROM (SELECT COALESCE((SELECT body FROM record_parts WHERE dedupe_key = tasks.sla), tasks.sla) AS body) AS s
    WHERE json_valid(s.body)
      AND json_extract(s.body, '$.escalate_to') IS NOT NULL
      AND json_extract(s.body, '$.escalate_after.amount') IS NOT NULL
)
WHERE sla IS NOT NULL AND escalated_at IS NULL AND status IN ('open', 'claimed');

CREATE INDEX tasks_escalate ON tasks (escalate_at, id) WHERE escalate_at IS NOT NULL;
