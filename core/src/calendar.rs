//! Working days: which local dates are working days, and when "n working days" after an instant is.
//!
//! In China a working day cannot be told from the weekday: each year the State Council General
//! Office publishes which days are off and which Saturdays and Sundays are worked instead (调休).
//! So the national calendar is data, one file per year under `calendars/cn/` with its source
//! cited, embedded in the binary; a year with no file is an error naming the year, never a guess
//! from weekdays. An institution adds its own closures, extra working days and working hours on
//! top ([`Overrides`], stored per institution by the store). Everything here is pure: the only
//! input read is the embedded text, parsed once.
//!
//! **n working days after an instant** is the same local clock time on the n-th working day after
//! the instant's local date (Friday 15:00 + 1 = Monday 15:00; Saturday 10:00 + 1 = Monday 10:00).
//! When the institution has working hours, a clock time before opening becomes the opening time
//! and one after closing the closing time, so the deadline falls within its hours. With a time of
//! day written (`at: "09:00"`), it is that time on the n-th working day after the start's date.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, LazyLock};

use carepath_dsl::LocalTime;
use jiff::Timestamp;
use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use serde::Deserialize;

/// The national calendar's files, one per year, each citing its source.
const NATIONAL_FILES: &[(&str, &str)] = &[
    (
        "calendars/cn/2025.yaml",
        include_str!("../../calendars/cn/2025.yaml"),
    ),
    (
        "calendars/cn/2026.yaml",
        include_str!("../../calendars/cn/2026.yaml"),
    ),
    (
        "calendars/cn/2027.yaml",
        include_str!("../../calendars/cn/2027.yaml"),
    ),
];

static NATIONAL: LazyLock<Result<Calendar, CalendarError>> =
    LazyLock::new(|| Calendar::from_files(NATIONAL_FILES));

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    #[error(
        "no working-day calendar for {year} (the national calendar holds {held}); add calendars/cn/{year}.yaml from the State Council General Office's notice for {year}"
    )]
    MissingYear { year: i16, held: String },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("{date} {time} cannot be placed in the time zone: {message}")]
    Time {
        date: Date,
        time: Time,
        message: String,
    },
}

fn invalid(file: &str, message: impl Into<String>) -> CalendarError {
    CalendarError::Invalid {
        file: file.to_string(),
        message: message.into(),
    }
}

/// Whether a year's dates are the published notice's or only the statutory holidays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Copied from the State Council General Office's notice for the year.
    Official,
    /// No notice yet: the statutory holidays alone, without the days given in lieu, bridging days
    /// off or make-up working days only the notice sets.
    Provisional,
}

/// Where one year of the national calendar comes from, as its file cites it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YearSource {
    pub file: String,
    pub year: i16,
    pub status: Status,
    /// The notice's title (official years).
    pub title: Option<String>,
    /// The notice's document number, when recorded.
    pub number: Option<String>,
    /// The date the notice was issued (official years).
    pub issued: Option<Date>,
    /// The rule the dates follow (provisional years).
    pub basis: Option<String>,
    pub note: Option<String>,
}

impl fmt::Display for YearSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Status::Official => {
                write!(
                    f,
                    "{}: official, {}",
                    self.year,
                    self.title.as_deref().unwrap_or("")
                )?;
                match (&self.number, self.issued) {
                    (Some(n), Some(d)) => write!(f, " ({n}, {d})"),
                    (None, Some(d)) => write!(f, " ({d}; document number not recorded)"),
                    (Some(n), None) => write!(f, " ({n})"),
                    (None, None) => Ok(()),
                }
            }
            Status::Provisional => write!(
                f,
                "{}: PROVISIONAL, statutory holidays only ({}); replace {} with the State Council General Office's notice for {} when it is published",
                self.year,
                self.basis.as_deref().unwrap_or(""),
                self.file,
                self.year
            ),
        }
    }
}

#[derive(Debug, Clone)]
struct NationalYear {
    off: BTreeSet<Date>,
    working: BTreeSet<Date>,
    source: YearSource,
}

/// An institution's own calendar over the national one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Dates the institution is closed (`working: false`) or works although the national calendar
    /// has a day off (`working: true`).
    pub days: BTreeMap<Date, Day>,
    pub hours: Option<WorkingHours>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Day {
    pub working: bool,
    pub reason: Option<String>,
}

/// Local opening and closing times, the same on every working day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkingHours {
    pub opens: LocalTime,
    pub closes: LocalTime,
}

impl WorkingHours {
    /// Reads `"08:00-17:30"`; opening must come before closing.
    pub fn parse(s: &str) -> Result<WorkingHours, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("`{s}` is not working hours; write them as \"08:00-17:30\""))?;
        let opens = LocalTime::parse(a)?;
        let closes = LocalTime::parse(b)?;
        if opens >= closes {
            return Err(format!(
                "working hours `{s}` close before they open; write them as \"08:00-17:30\""
            ));
        }
        Ok(WorkingHours { opens, closes })
    }
}

impl fmt::Display for WorkingHours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.opens, self.closes)
    }
}

/// The national calendar, with an institution's overrides when it has any.
#[derive(Debug, Clone)]
pub struct Calendar {
    national: Arc<BTreeMap<i16, NationalYear>>,
    institution: Overrides,
}

// The raw forms of the files, before checking.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YearFile {
    calendar: String,
    year: i16,
    status: Status,
    source: SourceFile,
    days_off: Vec<OffRange>,
    #[serde(default)]
    working_days: Vec<MakeUpDay>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceFile {
    title: Option<String>,
    number: Option<String>,
    issued: Option<Date>,
    basis: Option<String>,
    note: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OffRange {
    holiday: String,
    from: Date,
    to: Date,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MakeUpDay {
    date: Date,
    holiday: String,
}

fn yaml_value(file: &str, text: &str) -> Result<serde_json::Value, CalendarError> {
    let root =
        carepath_dsl::yaml::parse(file, text.as_bytes(), carepath_dsl::yaml::Budget::default())
            .map_err(|diags| {
                let d = diags.first();
                invalid(
                    file,
                    d.map(|d| format!("line {}, column {}: {}", d.pos.line, d.pos.col, d.message))
                        .unwrap_or_else(|| "not YAML".into()),
                )
            })?;
    Ok(carepath_dsl::yaml::to_json(&root))
}

fn is_weekend(d: Date) -> bool {
    matches!(d.weekday(), Weekday::Saturday | Weekday::Sunday)
}

fn read_year(file: &str, text: &str) -> Result<NationalYear, CalendarError> {
    let raw: YearFile = serde_json::from_value(yaml_value(file, text)?)
        .map_err(|e| invalid(file, e.to_string()))?;
    if raw.calendar != "cn" {
        return Err(invalid(
            file,
            format!("`calendar: {}`: only `cn` is known", raw.calendar),
        ));
    }
    let stem = file
        .rsplit('/')
        .next()
        .and_then(|n| n.strip_suffix(".yaml"))
        .unwrap_or("");
    if stem != raw.year.to_string() {
        return Err(invalid(
            file,
            format!("the file is for {} but is named `{stem}`", raw.year),
        ));
    }
    let s = raw.source;
    match raw.status {
        Status::Official if s.title.is_none() || s.issued.is_none() => {
            return Err(invalid(
                file,
                "an official year cites its notice: `source.title` and `source.issued`",
            ));
        }
        Status::Provisional if s.basis.is_none() => {
            return Err(invalid(
                file,
                "a provisional year says which rule its dates follow: `source.basis`",
            ));
        }
        _ => {}
    }
    let in_year = |d: Date, what: &str| {
        if d.year() == raw.year {
            Ok(d)
        } else {
            Err(invalid(file, format!("{what} {d} is not in {}", raw.year)))
        }
    };
    let mut off = BTreeSet::new();
    for r in &raw.days_off {
        let (from, to) = (in_year(r.from, "day off")?, in_year(r.to, "day off")?);
        if from > to {
            return Err(invalid(
                file,
                format!("{}: {from} comes after {to}", r.holiday),
            ));
        }
        let mut d = from;
        while d <= to {
            off.insert(d);
            d = d.tomorrow().map_err(|e| invalid(file, e.to_string()))?;
        }
    }
    let mut working = BTreeSet::new();
    for m in &raw.working_days {
        let d = in_year(m.date, "make-up working day")?;
        if !is_weekend(d) {
            return Err(invalid(
                file,
                format!(
                    "{d} ({}) is a {:?}, a working day already; make-up working days are Saturdays or Sundays",
                    m.holiday,
                    d.weekday()
                ),
            ));
        }
        if off.contains(&d) {
            return Err(invalid(
                file,
                format!("{d} is listed both as a day off and as a working day"),
            ));
        }
        working.insert(d);
    }
    Ok(NationalYear {
        off,
        working,
        source: YearSource {
            file: file.to_string(),
            year: raw.year,
            status: raw.status,
            title: s.title,
            number: s.number,
            issued: s.issued,
            basis: s.basis,
            note: s.note,
        },
    })
}

impl Calendar {
    /// The national calendar shipped in the binary.
    pub fn national() -> Result<&'static Calendar, CalendarError> {
        NATIONAL.as_ref().map_err(Clone::clone)
    }

    /// A national calendar from `(file name, text)` pairs, one file per year.
    pub fn from_files(files: &[(&str, &str)]) -> Result<Calendar, CalendarError> {
        let mut years = BTreeMap::new();
        for (file, text) in files {
            let y = read_year(file, text)?;
            if let Some(earlier) = years.insert(y.source.year, y) {
                return Err(invalid(
                    file,
                    format!(
                        "{} is also given by {}",
                        earlier.source.year, earlier.source.file
                    ),
                ));
            }
        }
        Ok(Calendar {
            national: Arc::new(years),
            institution: Overrides::default(),
        })
    }

    /// This calendar with an institution's closures, extra working days and hours.
    pub fn with_overrides(&self, overrides: Overrides) -> Calendar {
        Calendar {
            national: Arc::clone(&self.national),
            institution: overrides,
        }
    }

    pub fn overrides(&self) -> &Overrides {
        &self.institution
    }

    /// Where each year of the national calendar comes from, in year order.
    pub fn sources(&self) -> impl Iterator<Item = &YearSource> {
        self.national.values().map(|y| &y.source)
    }

    fn year(&self, year: i16) -> Result<&NationalYear, CalendarError> {
        self.national
            .get(&year)
            .ok_or_else(|| CalendarError::MissingYear {
                year,
                held: self.held(),
            })
    }

    fn held(&self) -> String {
        let years: Vec<i16> = self.national.keys().copied().collect();
        match (years.first(), years.last()) {
            (None, _) | (_, None) => "no year".into(),
            (Some(a), Some(b)) if a == b => a.to_string(),
            (Some(a), Some(b)) if i32::from(*b - *a) + 1 == years.len() as i32 => {
                format!("{a}–{b}")
            }
            _ => years
                .iter()
                .map(i16::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// Whether `date` is a working day: the institution's own word first, then the national
    /// notice, then the weekday. A date in a year the national calendar lacks is an error.
    pub fn is_working_day(&self, date: Date) -> Result<bool, CalendarError> {
        let year = self.year(date.year())?;
        if let Some(day) = self.institution.days.get(&date) {
            return Ok(day.working);
        }
        if year.off.contains(&date) {
            return Ok(false);
        }
        Ok(year.working.contains(&date) || !is_weekend(date))
    }

    /// The n-th working day after `date` (`date` itself is not counted); `date` for n = 0.
    pub fn nth_working_day_after(&self, date: Date, n: u32) -> Result<Date, CalendarError> {
        let mut d = date;
        let mut counted = 0;
        while counted < n {
            d = d.tomorrow().map_err(|e| CalendarError::Time {
                date: d,
                time: Time::midnight(),
                message: e.to_string(),
            })?;
            if self.is_working_day(d)? {
                counted += 1;
            }
        }
        Ok(d)
    }

    /// `n` working days after `from`: the same local clock time, brought within the institution's
    /// hours, on the n-th working day after `from`'s local date. `from` itself for n = 0.
    pub fn add_working_days(
        &self,
        from: Timestamp,
        n: u32,
        tz: &TimeZone,
    ) -> Result<Timestamp, CalendarError> {
        if n == 0 {
            return Ok(from);
        }
        let start = from.to_zoned(tz.clone());
        let day = self.nth_working_day_after(start.date(), n)?;
        place(day, self.within_hours(start.time()), tz)
    }

    /// `at` (local) on the n-th working day after `from`'s local date.
    pub fn working_day_at(
        &self,
        from: Timestamp,
        n: u32,
        at: LocalTime,
        tz: &TimeZone,
    ) -> Result<Timestamp, CalendarError> {
        let day = self.nth_working_day_after(from.to_zoned(tz.clone()).date(), n)?;
        place(day, civil(at), tz)
    }

    fn within_hours(&self, t: Time) -> Time {
        match self.institution.hours {
            Some(h) if t < civil(h.opens) => civil(h.opens),
            Some(h) if t > civil(h.closes) => civil(h.closes),
            _ => t,
        }
    }
}

fn civil(t: LocalTime) -> Time {
    Time::new(t.hour as i8, t.minute as i8, 0, 0).unwrap_or(Time::midnight())
}

/// `date` at `time` in `tz`; a time a DST gap skips moves forward by the gap, a repeated one is
/// its first occurrence (as everywhere in pathway time).
fn place(date: Date, time: Time, tz: &TimeZone) -> Result<Timestamp, CalendarError> {
    date.to_datetime(time)
        .to_zoned(tz.clone())
        .map(|z| z.timestamp())
        .map_err(|e| CalendarError::Time {
            date,
            time,
            message: e.to_string(),
        })
}

// An institution calendar file: `institutions: { <id>: { hours, closed, working } }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstitutionsFile {
    institutions: BTreeMap<String, InstitutionFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstitutionFile {
    hours: Option<String>,
    #[serde(default)]
    closed: Vec<DayEntry>,
    #[serde(default)]
    working: Vec<DayEntry>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DayEntry {
    Date(Date),
    WithReason { date: Date, reason: Option<String> },
}

impl DayEntry {
    fn split(self) -> (Date, Option<String>) {
        match self {
            DayEntry::Date(d) => (d, None),
            DayEntry::WithReason { date, reason } => (date, reason),
        }
    }
}

impl Overrides {
    /// Reads an institution calendar file (see `config/calendar.example.yaml`): each
    /// institution's working hours, closures and extra working days.
    pub fn from_yaml(file: &str, text: &str) -> Result<BTreeMap<String, Overrides>, CalendarError> {
        let raw: InstitutionsFile = serde_json::from_value(yaml_value(file, text)?)
            .map_err(|e| invalid(file, e.to_string()))?;
        let mut out = BTreeMap::new();
        for (id, inst) in raw.institutions {
            let hours = inst
                .hours
                .as_deref()
                .map(WorkingHours::parse)
                .transpose()
                .map_err(|e| invalid(file, format!("{id}: {e}")))?;
            let mut days = BTreeMap::new();
            let entries = inst
                .closed
                .into_iter()
                .map(|e| (false, e))
                .chain(inst.working.into_iter().map(|e| (true, e)));
            for (working, entry) in entries {
                let (date, reason) = entry.split();
                if days.insert(date, Day { working, reason }).is_some() {
                    return Err(invalid(
                        file,
                        format!(
                            "{id}: {date} is listed twice; list each date once, as closed or as working"
                        ),
                    ));
                }
            }
            out.insert(id, Overrides { days, hours });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;
    use proptest::prelude::*;

    fn cn() -> &'static Calendar {
        Calendar::national().expect("the shipped calendar loads")
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn shanghai() -> TimeZone {
        TimeZone::get("Asia/Shanghai").unwrap()
    }

    /// Every date from `from` to `to` (inclusive) with its working-day answer.
    fn days(cal: &Calendar, from: Date, to: Date) -> Vec<(Date, bool)> {
        let mut out = Vec::new();
        let mut d = from;
        while d <= to {
            out.push((d, cal.is_working_day(d).unwrap()));
            d = d.tomorrow().unwrap();
        }
        out
    }

    /// The days off from `from` to `to`, as the notice lists them, are off; the weekdays just
    /// before and after the block (in the same year) are working days.
    fn assert_block_off(from: Date, to: Date) {
        for (d, working) in days(cn(), from, to) {
            assert!(!working, "{d} should be a day off");
        }
        let before = from.yesterday().unwrap();
        let after = to.tomorrow().unwrap();
        for d in [before, after] {
            if d.year() == from.year() && !is_weekend(d) {
                assert!(
                    cn().is_working_day(d).unwrap(),
                    "{d} should be a working day"
                );
            }
        }
    }

    #[test]
    fn weekdays_work_and_weekends_rest_outside_the_notices() {
        // 2025-03-10 is a Monday; no holiday that week.
        let week = days(cn(), date(2025, 3, 10), date(2025, 3, 16));
        let working: Vec<bool> = week.iter().map(|(_, w)| *w).collect();
        assert_eq!(working, [true, true, true, true, true, false, false]);
    }

    #[test]
    fn every_2025_holiday_block_is_off() {
        assert_block_off(date(2025, 1, 1), date(2025, 1, 1));
        assert_block_off(date(2025, 1, 28), date(2025, 2, 4));
        assert_block_off(date(2025, 4, 4), date(2025, 4, 6));
        assert_block_off(date(2025, 5, 1), date(2025, 5, 5));
        assert_block_off(date(2025, 5, 31), date(2025, 6, 2));
        assert_block_off(date(2025, 10, 1), date(2025, 10, 8));
    }

    #[test]
    fn every_2026_holiday_block_is_off() {
        assert_block_off(date(2026, 1, 1), date(2026, 1, 3));
        assert_block_off(date(2026, 2, 15), date(2026, 2, 23));
        assert_block_off(date(2026, 4, 4), date(2026, 4, 6));
        assert_block_off(date(2026, 5, 1), date(2026, 5, 5));
        assert_block_off(date(2026, 6, 19), date(2026, 6, 21));
        assert_block_off(date(2026, 9, 25), date(2026, 9, 27));
        assert_block_off(date(2026, 10, 1), date(2026, 10, 7));
    }

    #[test]
    fn make_up_saturdays_and_sundays_are_working_days() {
        let make_up = [
            date(2025, 1, 26),
            date(2025, 2, 8),
            date(2025, 4, 27),
            date(2025, 9, 28),
            date(2025, 10, 11),
            date(2026, 1, 4),
            date(2026, 2, 14),
            date(2026, 2, 28),
            date(2026, 5, 9),
            date(2026, 9, 20),
            date(2026, 10, 10),
        ];
        for d in make_up {
            assert!(is_weekend(d), "{d} is a weekend day");
            assert!(cn().is_working_day(d).unwrap(), "{d} is worked (调休)");
        }
        // The weekend days next to them rest as usual.
        assert!(!cn().is_working_day(date(2025, 1, 25)).unwrap());
        assert!(!cn().is_working_day(date(2026, 2, 15)).unwrap());
    }

    #[test]
    fn each_official_year_has_the_days_its_notice_gives() {
        // With every day off on a weekday made up, a year keeps its 104 weekend days plus the 13
        // statutory holidays off: 365 − 117 = 248 working days.
        let count = |y: i16| {
            days(cn(), date(y, 1, 1), date(y, 12, 31))
                .iter()
                .filter(|(_, w)| *w)
                .count()
        };
        assert_eq!(count(2025), 248);
        assert_eq!(count(2026), 248);
    }

    #[test]
    fn working_days_skip_weekends_and_keep_the_clock_time() {
        let tz = shanghai();
        // Friday 2025-03-14 15:00 local + 1 → Monday 15:00.
        let fri = ts("2025-03-14T07:00:00Z");
        assert_eq!(
            cn().add_working_days(fri, 1, &tz).unwrap(),
            ts("2025-03-17T07:00:00Z")
        );
        // Saturday 10:00 + 1 → Monday 10:00; + 2 → Tuesday.
        let sat = ts("2025-03-15T02:00:00Z");
        assert_eq!(
            cn().add_working_days(sat, 1, &tz).unwrap(),
            ts("2025-03-17T02:00:00Z")
        );
        assert_eq!(
            cn().add_working_days(sat, 2, &tz).unwrap(),
            ts("2025-03-18T02:00:00Z")
        );
        assert_eq!(cn().add_working_days(sat, 0, &tz).unwrap(), sat);
    }

    #[test]
    fn spring_festival_2025_is_crossed_on_the_make_up_days() {
        let tz = shanghai();
        // Friday 24 January 2025 09:00: Sunday 26th is worked, then 27th, then nine days off
        // (28 Jan – 4 Feb … the 5th is the first working day back).
        let fri = ts("2025-01-24T01:00:00Z");
        let day = |n| {
            cn().add_working_days(fri, n, &tz)
                .unwrap()
                .to_zoned(tz.clone())
                .date()
        };
        assert_eq!(day(1), date(2025, 1, 26));
        assert_eq!(day(2), date(2025, 1, 27));
        assert_eq!(day(3), date(2025, 2, 5));
        assert_eq!(day(5), date(2025, 2, 7));
        assert_eq!(day(6), date(2025, 2, 8)); // make-up Saturday
        assert_eq!(day(7), date(2025, 2, 10));
    }

    #[test]
    fn national_day_2025_and_2026() {
        let tz = shanghai();
        let at = |s: &str, n| {
            cn().add_working_days(ts(s), n, &tz)
                .unwrap()
                .to_zoned(tz.clone())
                .date()
        };
        // Friday 26 Sep 2025 → Sunday 28th (worked), Monday 29th, Tuesday 30th, then 9 October.
        assert_eq!(at("2025-09-26T02:00:00Z", 1), date(2025, 9, 28));
        assert_eq!(at("2025-09-26T02:00:00Z", 4), date(2025, 10, 9));
        assert_eq!(at("2025-09-26T02:00:00Z", 6), date(2025, 10, 11)); // make-up Saturday
        // Wednesday 30 Sep 2026 → 8 October; 2 → Friday 9th; 3 → Saturday 10th (worked).
        assert_eq!(at("2026-09-30T02:00:00Z", 1), date(2026, 10, 8));
        assert_eq!(at("2026-09-30T02:00:00Z", 3), date(2026, 10, 10));
    }

    #[test]
    fn counting_crosses_the_year_boundary() {
        let tz = shanghai();
        // Wednesday 31 Dec 2025 10:00 → 1–3 Jan 2026 off, Sunday the 4th worked.
        let t = ts("2025-12-31T02:00:00Z");
        assert_eq!(
            cn().add_working_days(t, 1, &tz).unwrap(),
            ts("2026-01-04T02:00:00Z")
        );
        assert_eq!(
            cn().add_working_days(t, 2, &tz).unwrap(),
            ts("2026-01-05T02:00:00Z")
        );
    }

    #[test]
    fn a_year_without_a_file_is_an_error_naming_it() {
        let tz = shanghai();
        // Thursday 30 Dec 2027: the 31st is in 2027, the next working day is in 2028.
        let t = ts("2027-12-30T02:00:00Z");
        assert_eq!(
            cn().add_working_days(t, 1, &tz).unwrap(),
            ts("2027-12-31T02:00:00Z")
        );
        let err = cn().add_working_days(t, 2, &tz).unwrap_err();
        assert!(matches!(err, CalendarError::MissingYear { year: 2028, .. }));
        let text = err.to_string();
        assert!(
            text.contains("2028") && text.contains("2025–2027"),
            "{text}"
        );
        assert!(matches!(
            cn().is_working_day(date(2024, 12, 31)),
            Err(CalendarError::MissingYear { year: 2024, .. })
        ));
    }

    #[test]
    fn an_institution_closure_and_extra_working_day_override_the_nation() {
        let tz = shanghai();
        let mut days = BTreeMap::new();
        // Closed on Monday 17 March 2025; open on Saturday 22 March.
        days.insert(
            date(2025, 3, 17),
            Day {
                working: false,
                reason: Some("院庆".into()),
            },
        );
        days.insert(
            date(2025, 3, 22),
            Day {
                working: true,
                reason: None,
            },
        );
        let inst = cn().with_overrides(Overrides { days, hours: None });
        assert!(!inst.is_working_day(date(2025, 3, 17)).unwrap());
        assert!(inst.is_working_day(date(2025, 3, 22)).unwrap());
        assert!(cn().is_working_day(date(2025, 3, 17)).unwrap());
        let fri = ts("2025-03-14T07:00:00Z");
        assert_eq!(
            inst.add_working_days(fri, 1, &tz).unwrap(),
            ts("2025-03-18T07:00:00Z")
        );
        // Thursday 20th + 2: Friday 21st, then the extra Saturday.
        assert_eq!(
            inst.add_working_days(ts("2025-03-20T07:00:00Z"), 2, &tz)
                .unwrap(),
            ts("2025-03-22T07:00:00Z")
        );
    }

    #[test]
    fn working_hours_bring_the_deadline_within_them() {
        let tz = shanghai();
        let inst = cn().with_overrides(Overrides {
            days: BTreeMap::new(),
            hours: Some(WorkingHours::parse("08:00-17:30").unwrap()),
        });
        // Friday 20:00 → Monday 17:30; Friday 06:00 → Monday 08:00; Friday 11:00 → Monday 11:00.
        for (from, due) in [
            ("2025-03-14T12:00:00Z", "2025-03-17T09:30:00Z"),
            ("2025-03-13T22:00:00Z", "2025-03-17T00:00:00Z"),
            ("2025-03-14T03:00:00Z", "2025-03-17T03:00:00Z"),
        ] {
            assert_eq!(inst.add_working_days(ts(from), 1, &tz).unwrap(), ts(due));
        }
        // An explicit time of day is kept as written.
        let t = inst
            .working_day_at(
                ts("2025-03-14T12:00:00Z"),
                1,
                LocalTime {
                    hour: 19,
                    minute: 0,
                },
                &tz,
            )
            .unwrap();
        assert_eq!(t, ts("2025-03-17T11:00:00Z"));
    }

    #[test]
    fn the_shipped_years_report_their_sources() {
        let sources: Vec<&YearSource> = cn().sources().collect();
        let years: Vec<i16> = sources.iter().map(|s| s.year).collect();
        assert_eq!(years, [2025, 2026, 2027]);
        assert_eq!(sources[0].status, Status::Official);
        assert_eq!(sources[0].number.as_deref(), Some("国办发明电〔2024〕12号"));
        assert_eq!(sources[0].issued, Some(date(2024, 11, 12)));
        assert_eq!(sources[1].status, Status::Official);
        assert_eq!(sources[1].issued, Some(date(2025, 11, 4)));
        assert_eq!(sources[2].status, Status::Provisional);
        assert!(sources[2].to_string().contains("PROVISIONAL"));
    }

    #[test]
    fn a_provisional_year_has_the_statutory_days_off() {
        for d in [
            date(2027, 1, 1),
            date(2027, 2, 5),
            date(2027, 2, 8),
            date(2027, 4, 5),
            date(2027, 6, 9),
            date(2027, 9, 15),
            date(2027, 10, 1),
        ] {
            assert!(!cn().is_working_day(d).unwrap(), "{d}");
        }
    }

    #[test]
    fn broken_year_files_are_refused_with_the_reason() {
        let good_head = "calendar: cn\nyear: 2030\nstatus: official\nsource: { title: T, issued: 2029-11-01 }\n";
        let cases = [
            (
                "calendars/cn/2030.yaml",
                format!("{good_head}days_off: []\nworking_days: [{{ date: 2030-01-07, holiday: X }}]\n"),
                "a working day already",
            ),
            (
                "calendars/cn/2030.yaml",
                format!("{good_head}days_off: [{{ holiday: X, from: 2031-01-01, to: 2031-01-01 }}]\n"),
                "not in 2030",
            ),
            (
                "calendars/cn/2031.yaml",
                format!("{good_head}days_off: []\n"),
                "named `2031`",
            ),
            (
                "calendars/cn/2030.yaml",
                "calendar: cn\nyear: 2030\nstatus: official\nsource: { title: T }\ndays_off: []\n"
                    .to_string(),
                "source.issued",
            ),
            (
                "calendars/cn/2030.yaml",
                "calendar: cn\nyear: 2030\nstatus: provisional\nsource: { note: N }\ndays_off: []\n"
                    .to_string(),
                "source.basis",
            ),
        ];
        for (file, text, expected) in cases {
            let err = Calendar::from_files(&[(file, &text)])
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
    }

    #[test]
    fn institution_files_read_hours_closures_and_working_days() {
        let text = "institutions:\n  lead:\n    hours: \"08:00-17:30\"\n    closed:\n      - { date: 2026-03-12, reason: 院庆 }\n      - 2026-03-13\n    working: [2026-03-14]\n  clinic: {}\n";
        let all = Overrides::from_yaml("cal.yaml", text).unwrap();
        let lead = &all["lead"];
        assert_eq!(lead.hours.unwrap().to_string(), "08:00-17:30");
        assert_eq!(lead.days.len(), 3);
        assert_eq!(
            lead.days[&date(2026, 3, 12)].reason.as_deref(),
            Some("院庆")
        );
        assert!(lead.days[&date(2026, 3, 14)].working);
        assert!(all["clinic"].days.is_empty());
        let twice = "institutions:\n  lead:\n    closed: [2026-03-12]\n    working: [2026-03-12]\n";
        assert!(
            Overrides::from_yaml("cal.yaml", twice)
                .unwrap_err()
                .to_string()
                .contains("listed twice")
        );
        let bad_hours = "institutions:\n  lead: { hours: \"17:30-08:00\" }\n";
        assert!(Overrides::from_yaml("cal.yaml", bad_hours).is_err());
    }

    proptest! {
        #[test]
        fn working_days_land_on_working_days_and_grow_with_n(
            start in 0i64..(1_000 * 86_400),
            n in 1u32..25,
        ) {
            let tz = shanghai();
            let from = ts("2025-01-01T00:00:00Z").checked_add(jiff::Span::new().seconds(start)).unwrap();
            let a = cn().add_working_days(from, n, &tz).unwrap();
            let b = cn().add_working_days(from, n + 1, &tz).unwrap();
            let day = a.to_zoned(tz.clone()).date();
            prop_assert!(cn().is_working_day(day).unwrap());
            prop_assert!(a > from);
            prop_assert!(b > a);
            // Exactly n working days lie after the start's date up to and including the result's.
            let start_day = from.to_zoned(tz.clone()).date();
            let counted = days(cn(), start_day.tomorrow().unwrap(), day)
                .iter()
                .filter(|(_, w)| *w)
                .count();
            prop_assert_eq!(counted, n as usize);
        }
    }
}
