//! Pathway time: instants are UTC, days are calendar days in the patient's time zone.
//!
//! DST policy (tested below): a local time that a spring-forward gap skips fires once, shifted
//! forward by the length of the gap (02:30 → 03:30); a local time repeated by a fall-back fold fires
//! once, at its first occurrence. Both come from jiff's `compatible` disambiguation.

use carepath_dsl::{Duration, LocalTime};
use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, Zoned};

/// Resolves an IANA zone name, falling back to UTC for an unknown name (reported by the caller).
pub fn zone(name: &str) -> TimeZone {
    TimeZone::get(name).unwrap_or(TimeZone::UTC)
}

/// `at` plus `d`: minutes and hours as elapsed time, days and weeks as calendar days in `tz`.
pub fn add(at: Timestamp, d: Duration, tz: &TimeZone) -> Timestamp {
    match d.calendar_days() {
        Some(days) => {
            let z = at.to_zoned(tz.clone());
            z.checked_add(Span::new().days(i64::from(days)))
                .map(|z| z.timestamp())
                .unwrap_or(at)
        }
        None => at
            .checked_add(Span::new().seconds(d.nominal_seconds()))
            .unwrap_or(at),
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
/// otherwise it is the first `at` at or after `start + after`.
pub fn schedule(
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
    fn ages() {
        let tz = zone("Asia/Shanghai");
        let birth = jiff::civil::date(1960, 6, 15);
        assert_eq!(age_years(birth, ts("2026-06-14T00:00:00Z"), &tz), 65);
        assert_eq!(age_years(birth, ts("2026-06-15T00:00:00Z"), &tz), 66);
    }
}
