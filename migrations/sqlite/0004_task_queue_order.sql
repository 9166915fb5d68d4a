-- Queue pulls (GET /queues/tasks) read one institution's tasks of one status, with or without a
-- role, in queue order (priority DESC, due_at, id). Each keyed like that, a page is a range scan
-- that stops after the page's rows, with no sort. With a role, tasks_queue serves (its keys end in
-- the rowid, which is id); without one, this:
CREATE INDEX tasks_queue_status ON tasks (institution_id, status, priority DESC, due_at, id);
