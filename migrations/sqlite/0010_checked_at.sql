-- The instant up to which an enrolment's check instants have been evaluated: the next step resumes
-- after it, so a catch-up evaluates every timer, event, fact and daily re-check at its own instant,
-- whenever passes run. Rows stepped before it existed resume just before their next wake-up;
-- rows never stepped resume after their state's entry.
ALTER TABLE enrolments ADD COLUMN checked_at INTEGER;
UPDATE enrolments SET checked_at = next_wake_at - 1 WHERE next_wake_at IS NOT NULL;
