-- Open work by institution (the open-task and overdue counts of /kpis and the monthly report):
-- a partial index over open and claimed tasks only, in place of one over every task by
-- (institution, status, priority, due time). Most tasks end cancelled or done and no longer sit
-- in it; a cancellation removes an entry instead of moving it. Period counts, which read every
-- task of an institution, range over `tasks_queue`, which leads with the institution too.
CREATE INDEX tasks_open ON tasks (institution_id, due_at) WHERE status IN ('open', 'claimed');
DROP INDEX tasks_queue_status;
