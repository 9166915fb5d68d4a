//! The test file as authors write it (see `docs/pathway-tests.md`), and the one reading of its
//! instants: `at` and `due` take a duration after the case's start (`26h`, `7d`), a day offset
//! with a local clock time in the patient's zone (`15d 23:10`), or an RFC 3339 instant.

use std::collections::BTreeMap;

use carepath_dsl::{Duration, LocalTime};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    pub tests: String,
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub entry: String,
    #[serde(default)]
    pub patient: PatientSpec,
    pub start: Option<String>,
    #[serde(default)]
    pub vars: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub given: Vec<Given>,
    #[serde(default)]
    pub expect: Vec<Expect>,
    /// The dispatcher's quiet hours that `sent:` assertions apply (`21:00-08:00`, or `off`); the
    /// dispatcher's default when not given.
    pub quiet_hours: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatientSpec {
    #[serde(default = "default_age")]
    pub age: i16,
    #[serde(default = "default_sex")]
    pub sex: String,
    #[serde(default = "default_tz")]
    pub tz: String,
}

fn default_age() -> i16 {
    60
}
fn default_sex() -> String {
    "unknown".into()
}
fn default_tz() -> String {
    "Asia/Shanghai".into()
}

impl Default for PatientSpec {
    fn default() -> Self {
        PatientSpec {
            age: default_age(),
            sex: default_sex(),
            tz: default_tz(),
        }
    }
}

/// Something that happens to the patient at `at`: exactly one of the other keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Given {
    pub at: String,
    pub event: Option<String>,
    pub observation: Option<BTreeMap<String, f64>>,
    pub scale: Option<ScaleGiven>,
    pub task_done: Option<TaskDone>,
    pub referral: Option<Decision>,
    pub withdraw: Option<String>,
    pub risk: Option<RiskGiven>,
}

/// Answers to the scale's pending push: `answers` by item id, or the scored value of each item in
/// order (`items`), or only a `score` (answers that give it are chosen); `band` and `score`,
/// when given with answers, are checked against the scale's own scoring.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleGiven {
    pub scale: String,
    pub score: Option<f64>,
    pub band: Option<String>,
    #[serde(default)]
    pub items: Vec<i64>,
    #[serde(default)]
    pub answers: BTreeMap<String, i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskDone {
    pub task: String,
    #[serde(default = "default_outcome")]
    pub outcome: String,
}

fn default_outcome() -> String {
    "done".into()
}

/// A decision on the patient's referral, as the receiving institution records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The oldest requested referral is accepted (`referral_accepted`).
    Accept,
    /// The oldest requested referral is rejected (`referral_rejected`).
    Reject,
    /// The patient arrives on the oldest accepted referral (`referral_arrived`).
    Arrive,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Accept => "accept",
            Decision::Reject => "reject",
            Decision::Arrive => "arrive",
        }
    }

    /// The event the decision raises.
    pub fn event(self) -> &'static str {
        match self {
            Decision::Accept => "referral_accepted",
            Decision::Reject => "referral_rejected",
            Decision::Arrive => "referral_arrived",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskGiven {
    pub model: String,
    pub score: f64,
    #[serde(default)]
    pub band: String,
}

/// What must hold at `at`; each key is its own assertion.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub at: String,
    pub state: Option<String>,
    pub status: Option<String>,
    pub task: Option<TaskExpect>,
    pub no_task: Option<String>,
    pub follow_up: Option<FollowUpExpect>,
    pub no_follow_up: Option<String>,
    pub scale_push: Option<PushExpect>,
    pub no_scale_push: Option<String>,
    pub referral: Option<ReferralExpect>,
    pub no_referral: Option<String>,
    pub risk: Option<String>,
    pub var: Option<BTreeMap<String, serde_json::Value>>,
    pub occurrence: Option<OccurrenceExpect>,
    pub alarm: Option<AlarmExpect>,
    pub no_alarm: Option<String>,
}

/// The work occurrence `n` of schedule `schedule` made: it exists (and was made at `made`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OccurrenceExpect {
    pub schedule: String,
    pub n: u32,
    pub made: Option<String>,
}

/// An alarm's episodes: `open` (one is open now) or `closed` (episodes were opened, none is
/// open now), and how many were opened so far.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmExpect {
    pub id: String,
    pub status: Option<String>,
    pub episodes: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskExpect {
    pub id: Option<String>,
    pub role: Option<String>,
    pub priority: Option<String>,
    pub due: Option<String>,
    pub status: Option<String>,
    /// `enrolling` (the institution the patient was enrolled at) or `receiving` (the institution
    /// an accepted referral moved the task's role, or the whole enrolment, to).
    pub held_by: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowUpExpect {
    pub template: String,
    pub channel: Option<String>,
    pub due: Option<String>,
    pub status: Option<String>,
    /// When the dispatcher may first send it: its send time, moved past quiet hours in the
    /// patient's zone.
    pub sent: Option<String>,
}

/// `scale_push: epds`, or with its due time and status.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PushExpect {
    Scale(String),
    Push(PushSpec),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushSpec {
    pub scale: String,
    pub due: Option<String>,
    pub status: Option<String>,
}

/// `referral: up`, or with its receiving kind, accept-by time and status.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ReferralExpect {
    Direction(String),
    Referral(ReferralSpec),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferralSpec {
    pub direction: Option<String>,
    pub to: Option<String>,
    pub due: Option<String>,
    pub status: Option<String>,
}

/// The instant `text` names for a case that starts at `start` in `tz`: a duration after the start
/// (minutes and hours elapsed, days and weeks as calendar days: `26h`, `7d`), a day offset and a
/// local clock time (`15d 23:10`: 23:10 on the fifteenth calendar day after the start's date, as
/// the patient's clock shows it), or an RFC 3339 instant (`2026-03-17T23:10:00+08:00`). An instant
/// before the start is refused.
pub fn instant(start: Timestamp, text: &str, tz: &TimeZone) -> Result<Timestamp, String> {
    let s = text.trim();
    let t = if let Some((day, clock)) = s.split_once(char::is_whitespace) {
        let days = day
            .strip_suffix('d')
            .and_then(|n| n.parse::<u32>().ok())
            .ok_or_else(|| {
                format!(
                    "`{text}`: a day offset with a clock time is written `15d 23:10` (whole days, then HH:MM)"
                )
            })?;
        let clock = LocalTime::parse(clock.trim()).map_err(|e| format!("`{text}`: {e}"))?;
        crate::time::schedule(start, Duration::days(days), Some(clock), tz)
    } else if s.contains('T') && s.contains('-') {
        s.parse::<Timestamp>().map_err(|e| {
            format!("`{text}` is not an RFC 3339 instant with an offset (e.g. 2026-03-02T09:00:00+08:00): {e}")
        })?
    } else {
        let d = Duration::parse(s).map_err(|e| {
            format!("`{text}`: {e}; write a duration (`26h`, `7d`), a day and a clock time (`15d 23:10`) or an RFC 3339 instant")
        })?;
        crate::time::add(start, d, tz)
    };
    if t < start {
        return Err(format!(
            "`{text}` is {}, before the case starts ({})",
            local(t, tz),
            local(start, tz)
        ));
    }
    Ok(t)
}

/// An instant as the patient's clock shows it, with its offset (`2026-03-04T09:00:00+08:00`).
pub fn local(t: Timestamp, tz: &TimeZone) -> String {
    t.to_zoned(tz.clone())
        .strftime("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("an instant")
    }

    fn at(text: &str) -> Result<Timestamp, String> {
        let tz = crate::time::zone("Asia/Shanghai");
        instant(ts("2026-03-02T09:00:00+08:00"), text, &tz)
    }

    #[test]
    fn durations_count_from_the_start() {
        assert_eq!(at("0m"), Ok(ts("2026-03-02T09:00:00+08:00")));
        assert_eq!(at("26h"), Ok(ts("2026-03-03T11:00:00+08:00")));
        assert_eq!(at("7d"), Ok(ts("2026-03-09T09:00:00+08:00")));
        assert_eq!(at("2w"), Ok(ts("2026-03-16T09:00:00+08:00")));
    }

    #[test]
    fn a_day_and_a_clock_time_are_read_on_the_patients_clock() {
        assert_eq!(at("15d 23:10"), Ok(ts("2026-03-17T23:10:00+08:00")));
        assert_eq!(at("0d 18:00"), Ok(ts("2026-03-02T18:00:00+08:00")));
        assert_eq!(at("2d  07:30"), Ok(ts("2026-03-04T07:30:00+08:00")));
        // Berlin springs forward on 29 March 2026: day 1 at 09:00 is 23 hours after day 0 at 09:00.
        let berlin = crate::time::zone("Europe/Berlin");
        let start = ts("2026-03-28T09:00:00+01:00");
        assert_eq!(
            instant(start, "1d 09:00", &berlin),
            Ok(ts("2026-03-29T09:00:00+02:00"))
        );
    }

    #[test]
    fn an_rfc_3339_instant_is_taken_as_written() {
        assert_eq!(
            at("2026-03-17T15:10:00Z"),
            Ok(ts("2026-03-17T23:10:00+08:00"))
        );
        assert_eq!(
            at("2026-03-17T23:10:00+08:00"),
            Ok(ts("2026-03-17T15:10:00Z"))
        );
    }

    #[test]
    fn malformed_and_early_instants_are_refused_with_the_text() {
        for (text, says) in [
            ("15 23:10", "day offset"),
            ("15d 25:10", "not a time of day"),
            ("15d 9", "not a time of day"),
            ("2026-03-17T23:10:00", "RFC 3339"),
            ("soon", "write a duration"),
            ("-1d", "negative"),
            ("2026-03-01T09:00:00+08:00", "before the case starts"),
            ("0d 08:00", "before the case starts"),
        ] {
            let err = at(text).expect_err(text);
            assert!(err.contains(text), "{text}: {err}");
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}
