-- Queue pulls (GET /queues/tasks) read one institution's tasks of one status, with or without a
-- role, in queue order (priority DESC, due_at, id). Each keyed like that, a page is a range scan
-- that stops after the page's rows, with no sort. PostgreSQL's index keys do not end in id, so
-- tasks_queue gains it.
DROP INDEX tasks_queue;
CREATE INDEX tasks_queue ON tasks (institution_id, role, status, priority DESC, due_at, id);
CREATE INDEX tasks_queue_status ON tasks (institution_id, status, priority DESC, due_at, id);
