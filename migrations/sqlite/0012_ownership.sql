-- Ownership of a patient's work across the alliance. A patient may name their home community
-- institution, where a referral `to: own_community` goes. A referral keeps the roles it moves;
-- when it is accepted, each moved role of the enrolment is owned by the receiving institution:
-- that role's open tasks move there, and its tasks made later are created there
-- (`role_owners`, one row per enrolment and role, the latest acceptance winning). A scale push
-- keeps its action id, so a `cancel` action can name it as it names tasks and follow-ups.
ALTER TABLE patients ADD COLUMN home_institution TEXT REFERENCES institutions(id);
ALTER TABLE referrals ADD COLUMN moves TEXT;
ALTER TABLE scale_pushes ADD COLUMN push_ref TEXT;
CREATE TABLE role_owners (
    enrolment_id INTEGER NOT NULL REFERENCES enrolments(id),
    role TEXT NOT NULL,
    institution_id TEXT NOT NULL REFERENCES institutions(id),
    referral_id INTEGER NOT NULL REFERENCES referrals(id),
    moved_at INTEGER NOT NULL,
    PRIMARY KEY (enrolment_id, role)
);
