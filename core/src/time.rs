//! Pathway time: instants are UTC, days are calendar days in the patient's time zone, working days
//! are counted in a calendar of working days ([`crate::calendar`]).
//!
//! DST policy (tested below): a local time that a spring-forward gap skips fires once, shifted
//! forward by the length of the gap (02:30 → 03:30); a local time repeated by a fall-back fold fires
//! once, at its first occurrence. Both come from jiff's `compatible` disambiguation.
//!
//! Working days count in the national calendar unless the caller runs the arithmetic inside
//! [`with_calendar`] with an institution's calendar. The calendar is scoped rather than passed so
//! that `add` and `schedule` keep the signatures the step and its callers share; the scope is set
//! by whoever knows the institution (the store's scheduler) and never outlives the call.

use std::cell::RefCell;

use carepath_dsl::{Action, Duration, LocalTime, State, Trigger};
use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, Zoned};

use crate::calendar::{Calendar, CalendarError};

thread_local! {
    static SCOPED: RefCell<Option<Calendar>> = const { RefCell::new(None) };
}

/// Runs `f` with working days counted in `calendar` (an institution's); the previous calendar is
/// back in force when it returns.
pub fn with_calendar<T>(calendar: &Calendar, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Calendar>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            SCOPED.with(|c| *c.borrow_mut() = previous);
        }
    }
    let previous = SCOPED.with(|c| c.replace(Some(calendar.clone())));
    let _restore = Restore(previous);
    f()
}

/// `f` on the calendar in scope: the one [`with_calendar`] set, else the national calendar.
fn in_calendar<R>(
    f: impl FnOnce(&Calendar) -> Result<R, CalendarError>,
) -> Result<R, CalendarError> {
    SCOPED.with(|c| match c.borrow().as_ref() {
        Some(cal) => f(cal),
        None => f(Calendar::national()?),
    })
}

/// Resolves an IANA zone name, falling back to UTC for an unknown name (reported by the caller).
pub fn zone(name: &str) -> TimeZone {
    TimeZone::get(name).unwrap_or(TimeZone::UTC)
}

/// `at` plus `d`: minutes and hours as elapsed time, days and weeks as calendar days in `tz`,
/// working days as [`Calendar::add_working_days`] counts them. A count of working days the
/// calendar cannot make (a year with no calendar) is an error naming the year.
pub fn try_add(at: Timestamp, d: Duration, tz: &TimeZone) -> Result<Timestamp, CalendarError> {
    if let Some(n) = d.in_working_days() {
        return in_calendar(|c| c.add_working_days(at, n, tz));
    }
    Ok(match d.calendar_days() {
        Some(days) => {
            let z = at.to_zoned(tz.clone());
            z.checked_add(Span::new().days(i64::from(days)))
                .map(|z| z.timestamp())
                .unwrap_or(at)
        }
        None => at
            .checked_add(Span::new().seconds(d.nominal_seconds()))
            .unwrap_or(at),
    })
}

/// [`try_add`] for callers that cannot fail: a count of working days the calendar cannot make
/// gives `at` itself. The step never meets that case, because it checks every working-day
/// deadline of a state as it enters it ([`check_state`]) and fails there, naming the year.
pub fn add(at: Timestamp, d: Duration, tz: &TimeZone) -> Timestamp {
    try_add(at, d, tz).unwrap_or(at)
}

/// `at`, or — when its local date is not a working day in the calendar in scope — the same local
/// time on the next working day. A year the calendar lacks leaves `at` as it is.
pub fn on_working_day(at: Timestamp, tz: &TimeZone) -> Timestamp {
    let z = at.to_zoned(tz.clone());
    let moved = in_calendar(|c| {
        if c.is_working_day(z.date())? {
            return Ok(None);
        }
        c.nth_working_day_after(z.date(), 1).map(Some)
    });
    match moved {
        Ok(Some(day)) => day
            .to_datetime(z.time())
            .to_zoned(tz.clone())
            .map(|z| z.timestamp())
            .unwrap_or(at),
        _ => at,
    }
}

fn local(date: jiff::civil::Date, t: LocalTime, tz: &TimeZone) -> Timestamp {
    let time = Time::new(t.hour as i8, t.minute as i8, 0, 0).unwrap_or(Time::midnight());
    date.to_datetime(time)
        .to_zoned(tz.clone())
        .map(|z| z.timestamp())
        .unwrap_or_else(|_| Timestamp::UNIX_EPOCH)
}

/// The first `t` (local) strictly after `after`.
pub fn next_local_time(after: Timestamp, t: LocalTime, tz: &TimeZone) -> Timestamp {
    let z: Zoned = after.to_zoned(tz.clone());
    let mut date = z.date();
    for _ in 0..3 {
        let candidate = local(date, t, tz);
        if candidate > after {
            return candidate;
        }
        date = date.tomorrow().unwrap_or(date);
    }
    local(date, t, tz)
}

/// When something written as `after` (+ optional `at`) from `start` happens.
/// With `at` and a day-based `after`, it is `at` on the n-th calendar day after `start`'s date;
/// with `at` and working days, `at` on the n-th working day after `start`'s date; otherwise it
/// is the first `at` at or after `start + after`.
pub fn try_schedule(
    start: Timestamp,
    after: Duration,
    at: Option<LocalTime>,
    tz: &TimeZone,
) -> Result<Timestamp, CalendarError> {
    match (at, after.in_working_days()) {
        (Some(t), Some(n)) => in_calendar(|c| c.working_day_at(start, n, t, tz)),
        (None, _) => try_add(start, after, tz),
        (Some(_), None) => Ok(schedule_in_days(start, after, at, tz)),
    }
}

/// [`try_schedule`] for callers that cannot fail; as with [`add`], a count of working days the
/// calendar cannot make gives `start`, which the step never meets ([`check_state`]).
pub fn schedule(
    start: Timestamp,
    after: Duration,
    at: Option<LocalTime>,
    tz: &TimeZone,
) -> Timestamp {
    try_schedule(start, after, at, tz).unwrap_or(start)
}

/// Counts every working-day deadline of `state` entered at `at` (its tasks' due times, its
/// follow-ups' and its timed transitions'). The step calls it as it enters a state, so a deadline
/// the calendar cannot count fails that step with the year named, before anything is made.
pub fn check_state(state: &State, at: Timestamp, tz: &TimeZone) -> Result<(), CalendarError> {
    for action in &state.on_enter {
        match action {
            Action::Task(t) => {
                try_add(at, t.due, tz)?;
            }
            Action::FollowUp(f) => {
                try_schedule(at, f.after, f.at, tz)?;
            }
            _ => {}
        }
    }
    for t in &state.transitions {
        if let Trigger::After { after, at: when } = &t.trigger {
            try_schedule(at, *after, *when, tz)?;
        }
    }
    Ok(())
}

/// `schedule` for minutes, hours, days and weeks, which cannot fail.
fn schedule_in_days(
    start: Timestamp,
    after: Duration,
    at: Option<LocalTime>,
    tz: &TimeZone,
) -> Timestamp {
    match (at, after.calendar_days()) {
        (None, _) => add(start, after, tz),
        (Some(t), Some(days)) => {
            let date = start.to_zoned(tz.clone()).date();
            let target = date
                .checked_add(Span::new().days(i64::from(days)))
                .unwrap_or(date);
            local(target, t, tz)
        }
        (Some(t), None) => {
            let base = add(start, after, tz);
            next_local_time(
                base.checked_sub(Span::new().seconds(1)).unwrap_or(base),
                t,
                tz,
            )
        }
    }
}

/// Whole years between a birth date and an instant, in `tz`.
pub fn age_years(birth: jiff::civil::Date, at: Timestamp, tz: &TimeZone) -> i64 {
    let today = at.to_zoned(tz.clone()).date();
    let mut years = i64::from(today.year() - birth.year());
    if (today.month(), today.day()) < (birth.month(), birth.day()) {
        years -= 1;
    }
    years.max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn day_seven_at_nine_is_calendar_based() {
        let tz = zone("Asia/Shanghai");
        let start = ts("2026-03-01T15:00:00Z"); // 23:00 local on 1 March
        let t = schedule(
            start,
            Duration::days(7),
            Some(LocalTime { hour: 9, minute: 0 }),
            &tz,
        );
        assert_eq!(t, ts("2026-03-08T01:00:00Z")); // 09:00 local on 8 March
    }

    #[test]
    fn calendar_days_keep_the_local_clock_across_dst() {
        let tz = zone("Europe/Berlin");
        let start = ts("2026-03-28T08:00:00Z"); // 09:00 CET, the day before spring-forward
        assert_eq!(
            add(start, Duration::days(1), &tz),
            ts("2026-03-29T07:00:00Z")
        ); // 09:00 CEST
        assert_eq!(
            add(start, Duration::hours(24), &tz),
            ts("2026-03-29T08:00:00Z")
        );
    }

    #[test]
    fn skipped_and_repeated_local_times_fire_once() {
        let tz = zone("America/New_York");
        let skipped = LocalTime {
            hour: 2,
            minute: 30,
        };
        // 2026-03-08 02:30 does not exist in New York: it fires at 03:30 EDT.
        let t = next_local_time(ts("2026-03-08T05:00:00Z"), skipped, &tz);
        assert_eq!(t, ts("2026-03-08T07:30:00Z"));
        // 2026-11-01 01:30 happens twice: it fires at the first (EDT).
        let t = next_local_time(
            ts("2026-11-01T04:00:00Z"),
            LocalTime {
                hour: 1,
                minute: 30,
            },
            &tz,
        );
        assert_eq!(t, ts("2026-11-01T05:30:00Z"));
    }

    #[test]
    fn a_daily_time_fires_once_a_day_for_two_years_in_many_zones() {
        for name in [
            "Asia/Shanghai",
            "Europe/London",
            "America/New_York",
            "Australia/Sydney",
            "Asia/Kolkata",
        ] {
            let tz = zone(name);
            let mut t = ts("2026-01-01T00:00:00Z");
            let mut last_date = None;
            for _ in 0..730 {
                let next = next_local_time(
                    t,
                    LocalTime {
                        hour: 2,
                        minute: 30,
                    },
                    &tz,
                );
                assert!(next > t);
                let date = next.to_zoned(tz.clone()).date();
                assert_ne!(Some(date), last_date, "{name}: fired twice on {date}");
                if let Some(prev) = last_date {
                    assert_eq!(
                        prev.tomorrow().unwrap(),
                        date,
                        "{name}: skipped a day after {prev}"
                    );
                }
                last_date = Some(date);
                t = next;
            }
        }
    }

    #[test]
    fn working_days_count_in_the_national_calendar_by_default() {
        let tz = zone("Asia/Shanghai");
        // Friday 30 January 2026, 16:00 local: 2 working days is Tuesday 3 February, 16:00.
        let start = ts("2026-01-30T08:00:00Z");
        let two = Duration::working_days(2);
        assert_eq!(add(start, two, &tz), ts("2026-02-03T08:00:00Z"));
        // With a time of day: 09:00 on the second working day.
        let nine = Some(LocalTime { hour: 9, minute: 0 });
        assert_eq!(schedule(start, two, nine, &tz), ts("2026-02-03T01:00:00Z"));
        // Before Spring Festival 2026: Friday 13 Feb → Saturday 14th (worked), then 24 February.
        let before = ts("2026-02-13T02:00:00Z");
        assert_eq!(add(before, two, &tz), ts("2026-02-24T02:00:00Z"));
    }

    #[test]
    fn an_institution_calendar_is_used_inside_its_scope_only() {
        use crate::calendar::{Day, Overrides};
        let tz = zone("Asia/Shanghai");
        let start = ts("2026-01-30T08:00:00Z"); // Friday
        let mut days = std::collections::BTreeMap::new();
        days.insert(
            jiff::civil::date(2026, 2, 2),
            Day {
                working: false,
                reason: None,
            },
        );
        let closed_monday = Calendar::national()
            .unwrap()
            .with_overrides(Overrides { days, hours: None });
        let one = Duration::working_days(1);
        let inside = with_calendar(&closed_monday, || add(start, one, &tz));
        assert_eq!(inside, ts("2026-02-03T08:00:00Z"));
        assert_eq!(add(start, one, &tz), ts("2026-02-02T08:00:00Z"));
    }

    #[test]
    fn a_deadline_in_a_year_without_calendar_fails_the_state_check() {
        let tz = zone("Asia/Shanghai");
        let start = ts("2027-12-30T02:00:00Z");
        let five = Duration::working_days(5);
        let err = try_add(start, five, &tz).unwrap_err();
        assert!(err.to_string().contains("2028"), "{err}");
        assert!(try_schedule(start, five, None, &tz).is_err());
        let state = |trigger| State {
            id: "s".into(),
            phase: carepath_dsl::Phase::FollowUp,
            title: None,
            terminal: false,
            keep_open_tasks: false,
            on_enter: vec![],
            schedules: vec![],
            transitions: vec![carepath_dsl::Transition {
                to: "t".into(),
                trigger,
                guard: None,
                label: None,
            }],
        };
        let timer = state(Trigger::After {
            after: five,
            at: None,
        });
        assert!(check_state(&timer, start, &tz).is_err());
        assert!(check_state(&timer, ts("2026-06-01T02:00:00Z"), &tz).is_ok());
        let calendar_days = state(Trigger::After {
            after: Duration::days(5),
            at: None,
        });
        assert!(check_state(&calendar_days, start, &tz).is_ok());
    }

    #[test]
    fn ages() {
        let tz = zone("Asia/Shanghai");
        let birth = jiff::civil::date(1960, 6, 15);
        assert_eq!(age_years(birth, ts("2026-06-14T00:00:00Z"), &tz), 65);
        assert_eq!(age_years(birth, ts("2026-06-15T00:00:00Z"), &tz), 66);
    }
}
