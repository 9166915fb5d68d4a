//! The delivery rules as pure functions of the message, the clock and the configuration: the
//! channel route, retry back-off with deterministic jitter, quiet hours and the patient's day.
//! No I/O here, so every rule is tested directly. The dispatcher (`carepath_engine::delivery`)
//! applies them to the outbox, and `carepath test` to the follow-ups it plays.

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};
use sha2::{Digest, Sha256};

/// Quiet hours in the patient's local time: `[start, end)`, wrapping midnight when `start > end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub start: Time,
    pub end: Time,
}

/// The dispatcher's quiet hours unless configured otherwise: 21:00 to 08:00.
pub const DEFAULT_QUIET_HOURS: QuietHours = QuietHours {
    start: Time::constant(21, 0, 0, 0),
    end: Time::constant(8, 0, 0, 0),
};

impl QuietHours {
    /// `21:00-08:00`, or `None` for `off`.
    pub fn parse(s: &str) -> Result<Option<QuietHours>, String> {
        if s.trim() == "off" {
            return Ok(None);
        }
        let (a, b) = s.split_once('-').ok_or_else(|| {
            format!("`{s}` is not written as HH:MM-HH:MM (e.g. 21:00-08:00) or off")
        })?;
        let t = |x: &str| {
            let x = x.trim();
            let (h, m) = x
                .split_once(':')
                .ok_or_else(|| format!("`{x}` is not HH:MM"))?;
            let (h, m): (i8, i8) = (
                h.parse().map_err(|_| format!("`{x}` is not HH:MM"))?,
                m.parse().map_err(|_| format!("`{x}` is not HH:MM"))?,
            );
            Time::new(h, m, 0, 0).map_err(|_| format!("`{x}` is not a time of day"))
        };
        let q = QuietHours {
            start: t(a)?,
            end: t(b)?,
        };
        if q.start == q.end {
            return Err("start and end are the same; write off for no quiet hours".into());
        }
        Ok(Some(q))
    }

    pub fn contains(&self, t: Time) -> bool {
        if self.start <= self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }

    /// `None` when `at` is outside quiet hours in `tz`; otherwise the first instant after them (the
    /// next local `end`). A local `end` that a DST gap skips resolves forward (jiff `compatible`).
    pub fn next_allowed(&self, at: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let local = at.to_zoned(tz.clone());
        let t = local.time();
        if !self.contains(t) {
            return None;
        }
        let mut date = local.date();
        // Wrapping window, evening half: the window ends tomorrow morning.
        if self.start > self.end && t >= self.start {
            date = date.tomorrow().unwrap_or(date);
        }
        let end = local_instant(date, self.end, tz);
        // A DST fold can make the computed end not lie ahead; step a day further then.
        Some(if end > at {
            end
        } else {
            local_instant(date.tomorrow().unwrap_or(date), self.end, tz)
        })
    }
}

/// `time` on `date` in `tz`, resolving gaps forward and folds to the first occurrence.
pub fn local_instant(date: Date, time: Time, tz: &TimeZone) -> Timestamp {
    date.to_datetime(time)
        .to_zoned(tz.clone())
        .map(|z| z.timestamp())
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The patient's calendar day of `at`: `[start, next start)`.
pub fn local_day(at: Timestamp, tz: &TimeZone) -> (Timestamp, Timestamp) {
    let date = at.to_zoned(tz.clone()).date();
    let start = local_instant(date, Time::midnight(), tz);
    let next = local_instant(date.tomorrow().unwrap_or(date), Time::midnight(), tz);
    (start, next)
}

/// When a message deferred by the daily cap may go: the next local day, at the end of quiet hours
/// (or at midnight without quiet hours).
pub fn next_day_start(at: Timestamp, tz: &TimeZone, quiet: Option<QuietHours>) -> Timestamp {
    let date = at.to_zoned(tz.clone()).date();
    let tomorrow = date.tomorrow().unwrap_or(date);
    let first = match quiet {
        // The morning end of a window that wraps midnight; a daytime window does not delay the morning.
        Some(q) if q.start > q.end => q.end,
        Some(q) if q.start == Time::midnight() => q.end,
        _ => Time::midnight(),
    };
    local_instant(tomorrow, first, tz)
}

/// A number in `[0, 1)` from the message key and the attempt: the same on every dispatcher, so
/// retries spread out without a random number generator and tests see the same schedule.
pub fn jitter(key: &str, attempt: i64) -> f64 {
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    h.update(attempt.to_le_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Seconds to wait after the `attempt`-th attempt failed: `base · 2^(attempt−1)`, capped at `max`,
/// then jittered into `[½, 1)` of that ("equal jitter"), never less than one second.
pub fn backoff_seconds(key: &str, attempt: i64, base: i64, max: i64) -> i64 {
    let exp = (attempt.max(1) - 1).min(30) as u32;
    let raw = base.max(1).saturating_mul(1i64 << exp).min(max.max(1));
    let half = raw as f64 / 2.0;
    ((half + half * jitter(key, attempt)).round() as i64).max(1)
}

/// The order channels are tried in: the follow-up's list, with the patient's preferred channel
/// first when it is in the list. An empty list means SMS, as the outbox writer assumes.
pub fn route(channels: &[String], preferred: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(channels.len().max(1));
    if let Some(p) = preferred.filter(|p| channels.iter().any(|c| c == p)) {
        out.push(p.to_string());
    }
    for c in channels {
        if !out.contains(c) {
            out.push(c.clone());
        }
    }
    if out.is_empty() {
        out.push("sms".into());
    }
    out
}

/// The channel after `current` in `route`, if any.
pub fn next_channel<'a>(route: &'a [String], current: &str) -> Option<&'a str> {
    let pos = route.iter().position(|c| c == current)?;
    route.get(pos + 1).map(String::as_str)
}

/// `at` plus whole seconds.
pub fn plus(at: Timestamp, seconds: i64) -> Timestamp {
    at.checked_add(Span::new().seconds(seconds)).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn q(start: &str, end: &str) -> QuietHours {
        QuietHours {
            start: start.parse().unwrap(),
            end: end.parse().unwrap(),
        }
    }

    #[test]
    fn quiet_hours_wrapping_midnight() {
        let sh = TimeZone::get("Asia/Shanghai").unwrap();
        let quiet = q("21:00", "08:00");
        // 20:59 local: allowed.
        assert_eq!(quiet.next_allowed(ts("2026-03-02T12:59:00Z"), &sh), None);
        // 21:00 local: pushed to 08:00 next morning.
        assert_eq!(
            quiet.next_allowed(ts("2026-03-02T13:00:00Z"), &sh),
            Some(ts("2026-03-03T00:00:00Z"))
        );
        // 03:00 local: pushed to 08:00 the same morning.
        assert_eq!(
            quiet.next_allowed(ts("2026-03-02T19:00:00Z"), &sh),
            Some(ts("2026-03-03T00:00:00Z"))
        );
        // 08:00 local: allowed.
        assert_eq!(quiet.next_allowed(ts("2026-03-03T00:00:00Z"), &sh), None);
    }

    #[test]
    fn quiet_hours_within_one_day() {
        let utc = TimeZone::UTC;
        let lunch = q("12:00", "14:00");
        assert_eq!(lunch.next_allowed(ts("2026-03-02T11:59:59Z"), &utc), None);
        assert_eq!(
            lunch.next_allowed(ts("2026-03-02T13:30:00Z"), &utc),
            Some(ts("2026-03-02T14:00:00Z"))
        );
    }

    #[test]
    fn quiet_hours_across_dst_in_several_zones() {
        let quiet = q("21:00", "08:00");
        // Every 10 minutes over two years in zones with and without DST: the result is outside
        // quiet hours, strictly later, and within 11 hours plus a DST hour.
        for zone in [
            "Asia/Shanghai",
            "Europe/London",
            "America/New_York",
            "Australia/Lord_Howe",
        ] {
            let tz = TimeZone::get(zone).unwrap();
            let mut at = ts("2026-01-01T00:00:00Z");
            let end = ts("2028-01-01T00:00:00Z");
            while at < end {
                if let Some(next) = quiet.next_allowed(at, &tz) {
                    assert!(next > at, "{zone} {at}");
                    assert!(
                        next.as_second() - at.as_second() <= 12 * 3600,
                        "{zone} {at} → {next}"
                    );
                    let t = next.to_zoned(tz.clone()).time();
                    assert!(!quiet.contains(t), "{zone} {at} → {next} ({t})");
                } else {
                    assert!(!quiet.contains(at.to_zoned(tz.clone()).time()));
                }
                at = plus(at, 600);
            }
        }
    }

    #[test]
    fn days_and_next_day() {
        let sh = TimeZone::get("Asia/Shanghai").unwrap();
        let (start, next) = local_day(ts("2026-03-02T17:00:00Z"), &sh); // 01:00 on the 3rd local
        assert_eq!(start, ts("2026-03-02T16:00:00Z"));
        assert_eq!(next, ts("2026-03-03T16:00:00Z"));
        let quiet = Some(q("21:00", "08:00"));
        assert_eq!(
            next_day_start(ts("2026-03-02T10:00:00Z"), &sh, quiet),
            ts("2026-03-03T00:00:00Z")
        );
        assert_eq!(
            next_day_start(ts("2026-03-02T10:00:00Z"), &sh, None),
            ts("2026-03-02T16:00:00Z")
        );
        // A 25-hour day (London, end of October) is one day.
        let london = TimeZone::get("Europe/London").unwrap();
        let (s, n) = local_day(ts("2026-10-25T12:00:00Z"), &london);
        assert_eq!(n.as_second() - s.as_second(), 25 * 3600);
    }

    #[test]
    fn backoff_grows_is_capped_and_deterministic() {
        let key = "e1:2:0";
        let d: Vec<i64> = (1..=8).map(|a| backoff_seconds(key, a, 60, 3600)).collect();
        assert_eq!(
            d,
            (1..=8)
                .map(|a| backoff_seconds(key, a, 60, 3600))
                .collect::<Vec<_>>()
        );
        for (i, s) in d.iter().enumerate() {
            let raw = (60i64 << i).min(3600);
            assert!(*s >= raw / 2 && *s <= raw, "attempt {} → {s}", i + 1);
        }
        // Different keys spread out.
        let spread: std::collections::BTreeSet<i64> = (0..50)
            .map(|k| backoff_seconds(&format!("e{k}:1:0"), 3, 60, 3600))
            .collect();
        assert!(spread.len() > 20, "{spread:?}");
        assert!((0..1000).all(|a| (0.0..1.0).contains(&jitter("k", a))));
    }

    #[test]
    fn routes() {
        let ch = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            route(&ch(&["wechat", "sms", "phone"]), None),
            ch(&["wechat", "sms", "phone"])
        );
        assert_eq!(
            route(&ch(&["wechat", "sms"]), Some("sms")),
            ch(&["sms", "wechat"])
        );
        assert_eq!(
            route(&ch(&["wechat", "sms"]), Some("email")),
            ch(&["wechat", "sms"])
        );
        assert_eq!(route(&[], None), ch(&["sms"]));
        let r = ch(&["wechat", "sms", "phone"]);
        assert_eq!(next_channel(&r, "wechat"), Some("sms"));
        assert_eq!(next_channel(&r, "phone"), None);
        assert_eq!(next_channel(&r, "email"), None);
    }
}
