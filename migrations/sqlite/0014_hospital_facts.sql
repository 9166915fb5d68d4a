-- What the hospital knows, as its systems send it (HL7 v2 ADT over MLLP, FHIR R4).
--
-- `encounters`: one hospital visit (inpatient, outpatient or emergency) under the identifier the
-- sending institution gives it (PV1-19, Encounter.identifier), so a resend updates the same row.
-- Length of stay and emergency visits are read from it, never from the events alone. A cancelled
-- admission or discharge leaves the row with its status and times as they now stand.
-- `diagnoses`: ICD-10 codes as recorded (normalised: upper case, no dot), per encounter when one
-- is named; the Charlson index is computed from them (carepath_core::charlson).
-- `interface_messages`: every HL7 message control id (MSH-10) per sender, with the acknowledgement
-- sent, so a resent message is acknowledged again and changes nothing.
-- `external_ids`: identifiers other systems give our resources (FHIR `If-None-Exist`).
-- `intake_candidates`: what case-intake rules found: enrolled at once (`accepted` by the rule) or
-- waiting on a case manager's decision; the row ties an enrolment to the encounter that caused it,
-- so a cancelled admission or discharge can undo it.
CREATE TABLE encounters (
    id INTEGER PRIMARY KEY,
    institution_id TEXT NOT NULL REFERENCES institutions(id),
    identifier TEXT NOT NULL,
    patient_id TEXT NOT NULL REFERENCES patients(id),
    class TEXT NOT NULL CHECK (class IN ('inpatient', 'outpatient', 'emergency')),
    department TEXT,
    acute INTEGER,
    admitted_at INTEGER,
    discharged_at INTEGER,
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'cancelled')),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (institution_id, identifier)
);
CREATE INDEX encounters_patient ON encounters (patient_id, admitted_at);
CREATE TABLE diagnoses (
    id INTEGER PRIMARY KEY,
    patient_id TEXT NOT NULL REFERENCES patients(id),
    encounter_key TEXT NOT NULL,
    encounter_id INTEGER REFERENCES encounters(id),
    code TEXT NOT NULL,
    principal INTEGER NOT NULL DEFAULT 0,
    recorded_at INTEGER NOT NULL,
    source TEXT NOT NULL,
    UNIQUE (patient_id, encounter_key, code)
);
CREATE TABLE interface_messages (
    source TEXT NOT NULL,
    control_id TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    response TEXT NOT NULL,
    PRIMARY KEY (source, control_id)
);
CREATE TABLE external_ids (
    kind TEXT NOT NULL,
    institution_id TEXT NOT NULL,
    system TEXT NOT NULL,
    value TEXT NOT NULL,
    local_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (kind, institution_id, system, value)
);
CREATE TABLE intake_candidates (
    id INTEGER PRIMARY KEY,
    institution_id TEXT NOT NULL REFERENCES institutions(id),
    patient_id TEXT NOT NULL REFERENCES patients(id),
    encounter_id INTEGER REFERENCES encounters(id),
    rule TEXT NOT NULL,
    pathway_id TEXT NOT NULL,
    entry TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'accepted', 'rejected', 'cancelled')),
    reason TEXT,
    enrolment_id INTEGER,
    decided_by TEXT,
    created_at INTEGER NOT NULL,
    decided_at INTEGER,
    UNIQUE (rule, patient_id, encounter_id)
);
CREATE INDEX intake_candidates_queue ON intake_candidates (institution_id, status, created_at);
-- The patient's language for messages, and when their contact details were erased (PIPL).
ALTER TABLE patients ADD COLUMN lang TEXT;
ALTER TABLE patients ADD COLUMN contact_erased_at INTEGER;
-- An event undone before its step read it (a cancelled admission or discharge) is kept, voided.
ALTER TABLE events ADD COLUMN void_at INTEGER;
