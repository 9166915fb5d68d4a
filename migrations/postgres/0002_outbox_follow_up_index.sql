-- Cancelling a state's follow-ups cancels their pending outbox rows by `follow_up_id`; without this
-- index every cancellation scanned all pending outbox rows (a 10,000-enrolment pass took minutes).
CREATE INDEX outbox_follow_up ON outbox (follow_up_id);
