//! Case intake (收案) at run time: the rules of `pathways/intake/`, checked against the published
//! pathways, applied to each encounter as it is recorded.
//!
//! What matches is decided by the language's one matcher (`carepath_dsl::intake::decide`); this
//! module only gathers what it needs from the store and carries out the decisions in the
//! encounter's transaction: an automatic rule enrols (the path `POST /enrolments` takes, dated at
//! the admission, discharge or visit and caught up to now), a review rule leaves a pending
//! candidate in the institution's intake queue. The candidate's stored key (rule, patient,
//! encounter) makes a resent message do nothing twice.

use std::path::Path;

use carepath_dsl::intake::{
    self, Class, IntakeDiagnosis, IntakeFile, IntakeInput, IntakeRule, Mode, Sex,
};
use carepath_dsl::{Compiled, DocKind};
use carepath_store::clinical::{self, EncounterChange, EncounterClass, EncounterIn};
use carepath_store::intake::{self as queue, NewCandidate};
use carepath_store::queries::Caller;
use carepath_store::{NewEvent, Result, Tx};
use jiff::Timestamp;

use crate::hospital::Hospital;
use crate::program::Programs;

/// Validated intake rules, in file then rule order.
#[derive(Debug, Clone, Default)]
pub struct IntakeRules {
    rules: Vec<IntakeRule>,
}

/// Rules that cannot be loaded: every diagnostic, located.
#[derive(Debug, thiserror::Error)]
#[error("the intake rules have errors:\n{0}")]
pub struct IntakeLoadError(pub String);

impl IntakeRules {
    /// No rules: nothing is enrolled from hospital facts.
    pub fn none() -> IntakeRules {
        IntakeRules::default()
    }

    pub fn rules(&self) -> &[IntakeRule] {
        &self.rules
    }

    /// Reads every rule file under `dir` and checks it against the newest version of each
    /// published pathway; any error fails the load.
    pub fn load_dir(
        dir: &Path,
        programs: &Programs,
    ) -> std::result::Result<IntakeRules, IntakeLoadError> {
        let files = carepath_dsl::pathway_files(&[dir.to_path_buf()])
            .map_err(|e| IntakeLoadError(format!("{}: {e}", dir.display())))?;
        let compiled: Vec<Compiled> = files
            .iter()
            .map(|f| carepath_dsl::compile_file(f))
            .filter(|c| c.kind == DocKind::Intake || !c.is_ok())
            .collect();
        let parsed: Vec<IntakeFile> = compiled.iter().filter_map(|c| c.intake.clone()).collect();
        Self::from_files(
            parsed,
            compiled.into_iter().flat_map(|c| c.diagnostics),
            programs,
        )
    }

    /// Checks rule files already read (e.g. from text) against the published pathways.
    pub fn from_files(
        files: Vec<IntakeFile>,
        earlier: impl IntoIterator<Item = carepath_dsl::Diagnostic>,
        programs: &Programs,
    ) -> std::result::Result<IntakeRules, IntakeLoadError> {
        let latest = programs.latest();
        let known = intake::known_pathways(latest.iter().map(|p| &p.pathway));
        let errors: Vec<String> = earlier
            .into_iter()
            .chain(intake::check_set(&files, &known))
            .filter(|d| d.is_error())
            .map(|d| d.to_string())
            .collect();
        if !errors.is_empty() {
            return Err(IntakeLoadError(errors.join("\n")));
        }
        Ok(IntakeRules {
            rules: files.into_iter().flat_map(|f| f.rules).collect(),
        })
    }

    /// Reads one rule file's text (tests, tools) and checks it against the published pathways.
    pub fn from_yaml(
        file: &str,
        text: &str,
        programs: &Programs,
    ) -> std::result::Result<IntakeRules, IntakeLoadError> {
        let parsed = intake::parse(file, text.as_bytes());
        let diags = parsed.diagnostics.clone();
        Self::from_files(vec![parsed], diags, programs)
    }
}

/// Completed years from an ISO birth date to an instant, counted in the patient's zone.
fn age_at(birth: Option<&str>, tz: &str, at: Timestamp) -> Option<u32> {
    let birth: jiff::civil::Date = birth?.parse().ok()?;
    let zone = jiff::tz::TimeZone::get(tz).unwrap_or(jiff::tz::TimeZone::UTC);
    let today = at.to_zoned(zone).date();
    let mut years = i32::from(today.year()) - i32::from(birth.year());
    if (today.month(), today.day()) < (birth.month(), birth.day()) {
        years -= 1;
    }
    u32::try_from(years).ok()
}

fn class_of(c: EncounterClass) -> Class {
    match c {
        EncounterClass::Inpatient => Class::Inpatient,
        EncounterClass::Outpatient => Class::Outpatient,
        EncounterClass::Emergency => Class::Emergency,
    }
}

/// The encounter as stored after this message: its times and department may have come with an
/// earlier one.
struct Stored {
    department: Option<String>,
    admitted_at: Option<Timestamp>,
    discharged_at: Option<Timestamp>,
}

impl Stored {
    /// The instant a trigger happened: the admission, the discharge, or the visit (its admission
    /// time, else when it was recorded).
    fn instant_of(&self, trigger: &str, now: Timestamp) -> Timestamp {
        match trigger {
            "discharged" => self.discharged_at.unwrap_or(now),
            _ => self.admitted_at.unwrap_or(now),
        }
    }

    /// The encounter's own hospital events at or after `from`, which an enrolment made from it
    /// at `from` has not yet been told of.
    fn events_since(&self, from: Timestamp) -> Vec<(&'static str, Timestamp)> {
        [
            ("admitted", self.admitted_at),
            ("discharged", self.discharged_at),
        ]
        .into_iter()
        .filter_map(|(name, at)| at.filter(|t| *t >= from).map(|t| (name, t)))
        .collect()
    }
}

/// Applies the intake rules to what an encounter just changed, in its transaction. Returns the
/// enrolments made (automatic rules) and the candidates queued for review.
#[allow(clippy::too_many_arguments)]
pub async fn on_encounter(
    tx: &mut Tx,
    hospital: &Hospital<'_>,
    caller: &Caller,
    encounter: &EncounterIn,
    change: &EncounterChange,
    remote: &str,
    now: Timestamp,
) -> Result<(Vec<i64>, Vec<i64>)> {
    let rules = hospital.intake.rules();
    let (mut enrolled, mut queued) = (Vec::new(), Vec::new());
    if rules.is_empty() || !(change.admitted || change.discharged || change.registered) {
        return Ok((enrolled, queued));
    }
    let diagnoses: Vec<IntakeDiagnosis> = clinical::diagnoses_of(tx, &encounter.patient_id)
        .await?
        .into_iter()
        .filter(|d| d.encounter_id == Some(change.encounter_id))
        .map(|d| IntakeDiagnosis {
            code: d.code,
            principal: d.principal,
        })
        .collect();
    let triggers = intake::encounter_triggers(
        change.admitted,
        change.discharged,
        change.registered,
        &diagnoses,
    );
    let Some(profile) = queue::patient_profile(tx, &encounter.patient_id).await? else {
        return Ok((enrolled, queued));
    };
    let stored =
        match clinical::encounter(tx, &caller.institution_id, &encounter.identifier).await? {
            Some(v) => Stored {
                department: v.department,
                admitted_at: v.admitted_at,
                discharged_at: v.discharged_at,
            },
            None => Stored {
                department: encounter.department.clone(),
                admitted_at: encounter.admitted_at,
                discharged_at: encounter.discharged_at,
            },
        };
    for trigger in triggers {
        let at = stored.instant_of(trigger, now);
        let input = IntakeInput {
            trigger: trigger.to_string(),
            department: stored.department.clone(),
            class: Some(class_of(encounter.class)),
            diagnoses: diagnoses.clone(),
            age: age_at(profile.birth_date.as_deref(), &profile.tz, at),
            sex: Sex::parse(&profile.sex),
            active_pathways: queue::active_pathways(tx, &encounter.patient_id).await?,
        };
        for d in intake::decide(rules, &input) {
            let candidate = NewCandidate {
                institution_id: &caller.institution_id,
                patient_id: &encounter.patient_id,
                encounter_id: Some(change.encounter_id),
                rule: &d.rule,
                pathway_id: &d.pathway,
                entry: &d.entry,
                at,
            };
            let Some(id) = queue::record_candidate(tx, &candidate).await? else {
                continue;
            };
            match d.mode {
                Mode::Review => {
                    caller
                        .audit_ok(
                            tx,
                            "intake.queue",
                            &format!("intake/{id}"),
                            std::slice::from_ref(&encounter.patient_id),
                            remote,
                            now,
                        )
                        .await?;
                    queued.push(id);
                }
                Mode::Auto => {
                    let enrolment = queue::enrol_candidate(
                        tx,
                        hospital.programs,
                        caller,
                        id,
                        &encounter.patient_id,
                        &d.pathway,
                        &d.entry,
                        at,
                        &format!("rule:{}", d.rule),
                        remote,
                        now,
                    )
                    .await?;
                    tell(tx, hospital, change.encounter_id, enrolment, &stored, now).await?;
                    tracing::info!(rule = %d.rule, pathway = %d.pathway, enrolment, "enrolled by an intake rule");
                    enrolled.push(enrolment);
                }
            }
        }
    }
    Ok((enrolled, queued))
}

/// Tells an enrolment just made from an encounter of the encounter's own events from its start
/// on (a stroke enrolled at its discharge hears `discharged`), as the store tells enrolments
/// that were active, then steps it to now.
async fn tell(
    tx: &mut Tx,
    hospital: &Hospital<'_>,
    encounter: i64,
    enrolment: i64,
    stored: &Stored,
    now: Timestamp,
) -> Result<()> {
    let Some(from) = carepath_store::intake::enrolled_at(tx, enrolment).await? else {
        return Ok(());
    };
    let events: Vec<NewEvent> = stored
        .events_since(from)
        .into_iter()
        .map(|(name, at)| NewEvent {
            enrolment,
            name: name.to_string(),
            at,
            payload: None,
            source_key: Some(format!(
                "encounter:{encounter}:{name}:{}:{enrolment}",
                at.as_second()
            )),
            created_at: now,
        })
        .collect();
    if events.is_empty() {
        return Ok(());
    }
    carepath_store::add_events(tx, &events).await?;
    crate::scheduler::advance_in(tx, hospital.programs, enrolment, now).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../pathways")
    }

    #[test]
    fn the_repository_rules_load_against_the_repository_pathways() {
        let programs = Programs::load_dir(&repo()).expect("pathways");
        let rules = IntakeRules::load_dir(&repo().join("intake"), &programs).expect("rules");
        let targets: std::collections::BTreeSet<&str> =
            rules.rules().iter().map(|r| r.pathway.as_str()).collect();
        for p in [
            "stroke",
            "pregnancy",
            "heart_failure",
            "diabetes",
            "hypertension",
            "breast_cancer_surgery",
        ] {
            assert!(targets.contains(p), "no rule enrols in {p}");
        }
        // Without the pathways the same rules do not load, and say why, located.
        let err = IntakeRules::load_dir(&repo().join("intake"), &Programs::default())
            .expect_err("no pathways");
        assert!(
            err.0.contains("stroke.yaml:") && err.0.contains("I006"),
            "{err}"
        );
    }

    #[test]
    fn a_rule_naming_a_missing_entry_point_is_refused() {
        let programs = Programs::load_dir(&repo()).expect("pathways");
        let text = "intake:\n  - { id: hf, when: discharged, enrol: { pathway: heart_failure, entry: admission }, mode: auto }\n";
        let err = IntakeRules::from_yaml("hf.yaml", text, &programs).expect_err("no such entry");
        assert!(
            err.0.contains("hf.yaml:2:") && err.0.contains("I007") && err.0.contains("discharge"),
            "{err}"
        );
        let ok = text.replace("entry: admission", "entry: discharge");
        assert_eq!(
            IntakeRules::from_yaml("hf.yaml", &ok, &programs)
                .expect("valid")
                .rules()
                .len(),
            1
        );
    }

    #[test]
    fn ages_are_completed_years_in_the_patients_zone() {
        let at: Timestamp = "2026-03-01T16:30:00Z".parse().unwrap();
        // 00:30 on 2 March in Shanghai: the birthday has come there, not yet in UTC.
        assert_eq!(age_at(Some("1950-03-02"), "Asia/Shanghai", at), Some(76));
        assert_eq!(age_at(Some("1950-03-02"), "UTC", at), Some(75));
        assert_eq!(age_at(None, "UTC", at), None);
        assert_eq!(age_at(Some("not a date"), "UTC", at), None);
        assert_eq!(age_at(Some("2030-01-01"), "UTC", at), None, "born later");
    }
}
