"""Drives carepath's FHIR interface with a real client (fhirpy) and validates every resource it
returns with the fhir.resources R4B models. Prints one JSON summary line; exits non-zero on any
failure."""
import datetime
import importlib
import json
import sys
import time
import urllib.error
import urllib.request

from fhirpy import SyncFHIRClient

base, token, patient, other, stroke_patient, admitted = sys.argv[1:7]
client = SyncFHIRClient(base, authorization=f"Bearer {token}")
validated = {}


def validate(resource):
    """Parses a resource with its R4B model (raises on anything invalid) and counts it."""
    name = resource["resourceType"]
    module = importlib.import_module(f"fhir.resources.R4B.{name.lower()}")
    cls = getattr(module, name)
    parse = getattr(cls, "model_validate", None) or cls.parse_obj
    parse(resource)
    validated[name] = validated.get(name, 0) + 1
    for entry in resource.get("entry", []) if name == "Bundle" else []:
        if "resource" in entry:
            validate(entry["resource"])
    return resource


def raw(method, path, body=None, headers=None):
    """A plain HTTP call: (status, parsed JSON)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/fhir+json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


subject = {"reference": f"Patient/{patient}"}
summary = {}

cap = validate(client.execute("metadata", method="get"))
assert cap["fhirVersion"] == "4.0.1", cap
summary["capability_resources"] = sorted(r["type"] for r in cap["rest"][0]["resource"])

# A blood-pressure panel in crisis: one reading of two values.
bp = client.resource(
    "Observation",
    status="final",
    code={"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
    subject=subject,
    effectiveDateTime="2026-03-01T08:00:00+08:00",
    identifier=[{"system": "urn:device:cuff-7", "value": "r-1001"}],
    component=[
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
         "valueQuantity": {"value": 192, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
         "valueQuantity": {"value": 118, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
    ],
)
bp.save()
validate(bp.serialize())
summary["bp_id"] = bp.id

# Glucose in mg/dL is stored in mmol/L.
glucose = client.resource(
    "Observation",
    status="final",
    code={"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
    subject=subject,
    effectiveDateTime="2026-03-02T07:00:00+08:00",
    valueQuantity={"value": 126, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"},
)
glucose.save()
g = validate(glucose.serialize())
summary["glucose"] = [g["code"]["coding"][0]["code"], g["valueQuantity"]["value"], g["valueQuantity"]["code"]]

read = validate(client.reference("Observation", bp.id).to_resource().serialize())
assert read["code"]["coding"][0]["code"] == "85354-9", read
assert [c["valueQuantity"]["value"] for c in read["component"]] == [192, 118], read

found = client.resources("Observation").search(patient=patient, date="ge2026-01-01").fetch_all()
for r in found:
    validate(r.serialize())
summary["observations_found"] = len(found)
none = client.resources("Observation").search(patient=patient, date="le2025-12-31").fetch_all()
summary["observations_before_2026"] = len(none)

# A transaction: two readings and the answer to the pending NRS push, all or nothing.
tx = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [
        {"fullUrl": "urn:uuid:8f0a2c4e-1b7d-4a8e-9c3f-000000000001",
         "resource": {"resourceType": "Observation", "status": "final",
                      "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                      "subject": subject, "effectiveDateTime": "2026-03-03T09:00:00+08:00",
                      "valueQuantity": {"value": 88, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}},
         "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": "urn:uuid:8f0a2c4e-1b7d-4a8e-9c3f-000000000002",
         "resource": {"resourceType": "Observation", "status": "final",
                      "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
                      "subject": subject, "effectiveDateTime": "2026-03-03T09:00:00+08:00",
                      "valueQuantity": {"value": 7.9, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}},
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": {"resourceType": "QuestionnaireResponse", "status": "completed",
                      "questionnaire": "urn:carepath:questionnaire:nrs", "subject": subject,
                      "item": [{"linkId": "pain", "answer": [{"valueInteger": 3}]}]},
         "request": {"method": "POST", "url": "QuestionnaireResponse"}},
    ],
}
resp = validate(client.execute("", method="post", data=tx))
summary["transaction"] = [e["response"]["status"] for e in resp["entry"]]

# A transaction whose third entry is wrong writes nothing and names the entry.
bad = json.loads(json.dumps(tx))
bad["entry"] = bad["entry"][:2]
bad["entry"][0]["resource"]["effectiveDateTime"] = "2026-03-04T09:00:00+08:00"
bad["entry"].append({"resource": {"resourceType": "Observation", "status": "final",
                                  "code": {"coding": [{"system": "http://loinc.org", "code": "9999-9"}]},
                                  "subject": subject, "effectiveDateTime": "2026-03-04T09:00:00+08:00",
                                  "valueQuantity": {"value": 1, "code": "1"}},
                     "request": {"method": "POST", "url": "Observation"}})
status, outcome = raw("POST", "", bad)
validate(outcome)
summary["bad_transaction"] = [status, outcome["issue"][0]["expression"][0]]

# A batch: each entry alone.
batch = {"resourceType": "Bundle", "type": "batch", "entry": [
    bad["entry"][0],
    {"resource": {"resourceType": "Observation", "status": "final",
                  "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                  "subject": {"reference": f"Patient/{other}"}, "effectiveDateTime": "2026-03-04T09:00:00+08:00",
                  "valueQuantity": {"value": 70, "code": "/min", "system": "http://unitsofmeasure.org"}},
     "request": {"method": "POST", "url": "Observation"}},
]}
resp = validate(client.execute("", method="post", data=batch))
summary["batch"] = [e["response"]["status"] for e in resp["entry"]]

# Tasks of the caller's queue; one accepted (claimed) through an update.
tasks = client.resources("Task").search(patient=patient, status="ready").fetch_all()
for t in tasks:
    validate(t.serialize())
summary["ready_tasks"] = len(tasks)
task = tasks[0]
task["status"] = "accepted"
task.save()
claimed = validate(client.reference("Task", task.id).to_resource().serialize())
summary["claimed"] = [claimed["id"], claimed["status"]]

plans = client.resources("CarePlan").search(patient=patient).fetch_all()
for p in plans:
    validate(p.serialize())
summary["care_plans"] = len(plans)
summary["care_plan_activities"] = len(plans[0].serialize().get("activity", []))

questionnaires = client.resources("Questionnaire").search(_count=200).fetch_all()
for q in questionnaires:
    validate(q.serialize())
summary["questionnaires"] = len(questionnaires)
validate(client.reference("Questionnaire", "phq9").to_resource().serialize())

status, outcome = raw("GET", f"/Observation?patient={other}")
summary["other_patient_search"] = [status, outcome.get("total")]

# A patient with contact details, created conditionally twice: one patient, read back masked.
new_patient = "fhir-pt-new"
mrn = "urn:oid:2.16.840.1.113883.2.4.6.3|MRN-778"
patient_resource = {
    "resourceType": "Patient",
    "identifier": [{"system": "urn:carepath:patient", "value": new_patient},
                   {"system": "urn:oid:2.16.840.1.113883.2.4.6.3", "value": "MRN-778"}],
    "gender": "female",
    "birthDate": "1948-05-12",
    "telecom": [
        {"system": "phone", "value": "+8613800138000", "use": "mobile", "rank": 1},
        {"system": "email", "value": "li.hua@example.org"},
        {"system": "other", "value": "oWx123abc",
         "extension": [{"url": "urn:carepath:wechat", "valueBoolean": True}]},
    ],
    "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "zh-CN"}]},
                       "preferred": True}],
}
first_status, first = raw("POST", "/Patient", patient_resource, {"If-None-Exist": f"identifier={mrn}"})
validate(first)
again_status, again = raw("POST", "/Patient", patient_resource, {"If-None-Exist": f"identifier={mrn}"})
validate(again)
summary["patient_conditional"] = [first_status, again_status, first["id"], again["id"]]
dup_status, dup = raw("POST", "/Patient", patient_resource)
validate(dup)
summary["patient_duplicate"] = dup_status
read_back = validate(client.reference("Patient", new_patient).to_resource().serialize())
summary["patient_read"] = {
    "telecom": sorted(t["value"] for t in read_back.get("telecom", [])),
    "gender": read_back.get("gender"),
    "birthDate": read_back.get("birthDate"),
    "lang": read_back["communication"][0]["language"]["coding"][0]["code"],
}
by_mrn = client.resources("Patient").search(identifier=mrn).fetch_all()
for r in by_mrn:
    validate(r.serialize())
summary["patients_by_identifier"] = [r.id for r in by_mrn]
updated = dict(patient_resource, id=new_patient, gender="female",
               telecom=[{"system": "phone", "value": "+8613900139111", "use": "mobile"}])
upd_status, upd = raw("PUT", f"/Patient/{new_patient}", updated)
validate(upd)
summary["patient_update"] = [upd_status, sorted(t["value"] for t in upd.get("telecom", []))]

# A transaction from the hospital at admission: the stroke patient's record, the acute admission
# with three diagnoses (the stroke principal) and five earlier emergency visits; five days later
# the discharge, as an update of the encounter.
start = datetime.datetime.fromisoformat(admitted.replace("Z", "+00:00"))
iso = lambda t: t.strftime("%Y-%m-%dT%H:%M:%S+00:00")
stroke_subject = {"reference": "urn:uuid:5d1c0a6e-0000-4000-8000-000000000001"}
visit = "urn:uuid:5d1c0a6e-0000-4000-8000-000000000002"
entries = [
    {"fullUrl": stroke_subject["reference"],
     "resource": {"resourceType": "Patient", "id": stroke_patient,
                  "identifier": [{"system": "urn:carepath:patient", "value": stroke_patient}],
                  "gender": "male", "birthDate": "1950-01-01",
                  "telecom": [{"system": "sms", "value": "+86 139 0013 9000", "rank": 1}]},
     "request": {"method": "PUT", "url": f"Patient/{stroke_patient}"}},
    {"fullUrl": visit,
     "resource": {"resourceType": "Encounter", "status": "in-progress",
                  "identifier": [{"system": "urn:oid:1.2.156.112604.1.2", "value": "ZY-2026-0001"}],
                  "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                  "priority": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActPriority", "code": "EM"}]},
                  "serviceType": {"text": "neurology"},
                  "subject": stroke_subject,
                  "period": {"start": iso(start)}},
     "request": {"method": "POST", "url": "Encounter",
                 "ifNoneExist": "identifier=urn:oid:1.2.156.112604.1.2|ZY-2026-0001"}},
]
for code, system, principal in [("I63.9", "http://hl7.org/fhir/sid/icd-10", True),
                                ("I50.9", "http://hl7.org/fhir/sid/icd-10-cm", False),
                                ("E11.2", "urn:oid:2.16.840.1.113883.6.3", False)]:
    entries.append({"resource": {
        "resourceType": "Condition",
        "extension": [{"url": "urn:carepath:principal-diagnosis", "valueBoolean": principal}],
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                  "code": "encounter-diagnosis"}]}],
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": stroke_subject, "encounter": {"reference": visit}},
        "request": {"method": "POST", "url": "Condition"}})
for i, days in enumerate([200, 150, 100, 60, 20]):
    entries.append({"resource": {
        "resourceType": "Encounter", "status": "finished",
        "identifier": [{"system": "urn:oid:1.2.156.112604.1.3", "value": f"JZ-{i}"}],
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
        "subject": stroke_subject,
        "period": {"start": iso(start - datetime.timedelta(days=days))}},
        "request": {"method": "POST", "url": "Encounter"}})
resp = validate(client.execute("", method="post", data={"resourceType": "Bundle", "type": "transaction",
                                                         "entry": entries}))
summary["hospital_transaction"] = [e["response"]["status"] for e in resp["entry"]]
admission_id = resp["entry"][1]["response"]["location"].split("/")[1]
# The discharge comes after the diagnoses were recorded (times are kept to the second).
time.sleep(1.2)
discharge = json.loads(json.dumps(entries[1]["resource"]))
discharge.update(status="finished", id=admission_id,
                 subject={"reference": f"Patient/{stroke_patient}"},
                 period={"start": iso(start), "end": iso(datetime.datetime.now(datetime.timezone.utc))})
status, discharged = raw("PUT", f"/Encounter/{admission_id}", discharge)
validate(discharged)
summary["discharge"] = [status, discharged["status"], len(discharged.get("diagnosis", []))]
encounters = client.resources("Encounter").search(patient=stroke_patient).fetch_all()
for r in encounters:
    validate(r.serialize())
inpatient = [r.serialize() for r in encounters if r.serialize()["class"]["code"] == "IMP"]
summary["encounters"] = [len(encounters), inpatient[0]["status"], len(inpatient[0].get("diagnosis", []))]
conditions = client.resources("Condition").search(patient=stroke_patient).fetch_all()
for r in conditions:
    validate(r.serialize())
summary["conditions"] = sorted(c.serialize()["code"]["coding"][0]["code"] for c in conditions)
validate(client.reference("Encounter", inpatient[0]["id"]).to_resource().serialize())
# The same admission again: nothing new.
status, again = raw("POST", "/Encounter", entries[1]["resource"] | {"subject": {"reference": f"Patient/{stroke_patient}"}},
                    {"If-None-Exist": "identifier=urn:oid:1.2.156.112604.1.2|ZY-2026-0001"})
summary["encounter_conditional"] = [status, again["id"] == inpatient[0]["id"]]
status, outcome = raw("POST", "/Condition", {"resourceType": "Condition",
                                             "code": {"coding": [{"system": "http://snomed.info/sct", "code": "230690007"}]},
                                             "subject": {"reference": f"Patient/{stroke_patient}"}})
validate(outcome)
summary["snomed_condition"] = [status, outcome["issue"][0]["expression"][0]]

# An admission the hospital then cancels (HL7 A11's FHIR form): the encounter is cancelled.
admission = {"resourceType": "Encounter", "status": "in-progress",
             "identifier": [{"system": "urn:oid:1.2.156.112604.1.2", "value": "ZY-2026-0099"}],
             "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "ACUTE"},
             "hospitalization": {"admitSource": {"coding": [{"code": "emd"}]}},
             "location": [{"location": {"display": "cardiology"}}],
             "subject": subject,
             "period": {"start": iso(datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=3))}}
status, made = raw("POST", "/Encounter", admission)
validate(made)
status2, cancelled = raw("PUT", f"/Encounter/{made['id']}", admission | {"status": "cancelled", "id": made["id"]})
validate(cancelled)
status3, again = raw("PUT", f"/Encounter/{made['id']}", admission | {"status": "cancelled", "id": made["id"]})
summary["cancelled_admission"] = [status, status2, cancelled["status"], status3]

summary["validated"] = validated
print(json.dumps(summary, sort_keys=True))
