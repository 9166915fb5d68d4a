"""Drives carepath's FHIR interface with a real client (fhirpy) and validates every resource it
returns with the fhir.resources R4B models. Prints one JSON summary line; exits non-zero on any
failure."""
import importlib
import json
import sys
import urllib.error
import urllib.request

from fhirpy import SyncFHIRClient

base, token, patient, other = sys.argv[1:5]
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

summary["validated"] = validated
print(json.dumps(summary, sort_keys=True))
