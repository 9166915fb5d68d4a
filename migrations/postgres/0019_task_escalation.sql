-- The instant an open task escalates to its SLA's supervisor role: its due time plus the SLA's
-- `escalate_after`, set when the task is written (and moved with it when it is snoozed), null
-- when its SLA names no escalation or once the escalation sweep has dealt with it. The sweep
-- reads only the rows whose instant has come, from a partial index, rather than every task.
ALTER TABLE tasks ADD COLUMN escalate_at BIGINT;

-- Tasks written before this version: an open or claimed one not yet escalated whose SLA (its
-- text, or the record part named by its hash) names both a role and a delay.
UPDATE tasks t SET escalate_at = t.due_at + (s.j -> 'escalate_after' ->> 'amount')::bigint *
        CASE s.j -> 'escalate_after' ->> 'unit'
            WHEN 'minutes' THEN 60
            WHEN 'hours' THEN 3600
            WHEN 'days' THEN 86400
            WHEN 'working_days' THEN 86400
            WHEN 'weeks' THEN 604800
        END
FROM (
    SELECT t2.id, CASE WHEN COALESCE(p.body, t2.sla) LIKE '{%' THEN COALESCE(p.body, t2.sla)::jsonb END AS j
    FROM tasks t2 LEFT JOIN record_parts p ON p.dedupe_key = t2.sla
    WHERE t2.sla IS NOT NULL AND t2.escalated_at IS NULL AND t2.status IN ('open', 'claimed')
) AS s
WHERE t.id = s.id
  AND s.j ->> 'escalate_to' IS NOT NULL
  AND s.j -> 'escalate_after' ->> 'amount' IS NOT NULL;

CREATE INDEX tasks_escalate ON tasks (escalate_at, id) WHERE escalate_at IS NOT NULL;
