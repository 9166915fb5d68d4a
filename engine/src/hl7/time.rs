//! HL7 date and time values (DTM, DT): `YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]`. A time
//! without an offset is local time in China (Asia/Shanghai), where the senders are.

use jiff::Timestamp;
use jiff::civil::{Date, DateTime};
use jiff::tz::{Offset, TimeZone};

/// The zone of a time written without an offset.
pub const LOCAL_ZONE: &str = "Asia/Shanghai";

/// The instant `text` names, or why it names none.
pub fn timestamp(text: &str) -> Result<Timestamp, String> {
    let bad = |why: &str| {
        format!(
            "`{}` is not an HL7 time ({why})",
            super::message::printable(text)
        )
    };
    let (main, offset) = match text
        .char_indices()
        .skip(4)
        .find(|(_, c)| *c == '+' || *c == '-')
    {
        Some((i, _)) => (&text[..i], Some(&text[i..])),
        None => (text, None),
    };
    let (digits, fraction) = match main.split_once('.') {
        Some((d, f)) => (d, Some(f)),
        None => (main, None),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![4, 6, 8, 10, 12, 14].contains(&digits.len())
    {
        return Err(bad("YYYY[MM[DD[HH[MM[SS]]]]] digits expected"));
    }
    let num = |from: usize, len: usize, default: i32| -> i32 {
        digits
            .get(from..from + len)
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let mut nanos = 0i32;
    if let Some(f) = fraction {
        if digits.len() != 14
            || f.is_empty()
            || f.len() > 4
            || !f.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad(
                "a fraction of a second needs whole seconds and 1–4 digits",
            ));
        }
        let value: i32 = f.parse().map_err(|_| bad("fraction"))?;
        nanos = value * 10i32.pow(9 - f.len() as u32);
    }
    let dt = DateTime::new(
        num(0, 4, 0) as i16,
        num(4, 2, 1) as i8,
        num(6, 2, 1) as i8,
        num(8, 2, 0) as i8,
        num(10, 2, 0) as i8,
        num(12, 2, 0) as i8,
        nanos,
    )
    .map_err(|_| bad("no such date or time"))?;
    match offset {
        Some(o) => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let o = &o[1..];
            if o.len() != 4 || !o.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("an offset is +HHMM or -HHMM"));
            }
            let hours: i32 = o[..2].parse().map_err(|_| bad("offset"))?;
            let minutes: i32 = o[2..].parse().map_err(|_| bad("offset"))?;
            if hours > 14 || minutes > 59 {
                return Err(bad("the offset is out of range"));
            }
            let offset = Offset::from_seconds(sign * (hours * 3600 + minutes * 60))
                .map_err(|_| bad("the offset is out of range"))?;
            offset.to_timestamp(dt).map_err(|_| bad("out of range"))
        }
        None => {
            let zone = TimeZone::get(LOCAL_ZONE).map_err(|_| bad("no time zone database"))?;
            zone.to_timestamp(dt).map_err(|_| bad("out of range"))
        }
    }
}

/// The calendar date `text` begins with (at least `YYYYMMDD`; a time after it is ignored).
pub fn date(text: &str) -> Result<Date, String> {
    let bad = |why: &str| {
        format!(
            "`{}` is not an HL7 date ({why})",
            super::message::printable(text)
        )
    };
    let digits = text.get(..8).ok_or_else(|| bad("YYYYMMDD expected"))?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("YYYYMMDD expected"));
    }
    timestamp(text).map_err(|_| bad("not a valid time"))?;
    let n = |r: std::ops::Range<usize>| digits[r].parse::<i32>().unwrap_or(0);
    Date::new(n(0..4) as i16, n(4..6) as i8, n(6..8) as i8).map_err(|_| bad("no such date"))
}

/// `at` as an HL7 time in China's local time, with its offset (`YYYYMMDDHHMMSS+0800`).
pub fn format(at: Timestamp) -> String {
    let zone = TimeZone::get(LOCAL_ZONE).unwrap_or(TimeZone::UTC);
    at.to_zoned(zone).strftime("%Y%m%d%H%M%S%z").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_times_are_shanghai_and_offsets_are_honoured() {
        let t = |s: &str| timestamp(s).map(|t| t.to_string());
        assert_eq!(t("20240301083000").unwrap(), "2024-03-01T00:30:00Z");
        assert_eq!(t("20240301083000+0000").unwrap(), "2024-03-01T08:30:00Z");
        assert_eq!(t("20240301083000-0130").unwrap(), "2024-03-01T10:00:00Z");
        assert_eq!(
            t("20240301083000.25+0800").unwrap(),
            "2024-03-01T00:30:00.25Z"
        );
        assert_eq!(t("2024").unwrap(), "2023-12-31T16:00:00Z");
        assert_eq!(t("202403").unwrap(), "2024-02-29T16:00:00Z");
        assert_eq!(t("2024030108").unwrap(), "2024-03-01T00:00:00Z");
        for bad in [
            "",
            "20",
            "2024030",
            "20240230",
            "20240301250000",
            "2024030108300",
            "2024x301",
            "20240301083000+08",
            "20240301083000+2500",
            "20240301.5",
            "20240301083000.12345",
            "２０２４",
        ] {
            assert!(timestamp(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn dates_need_a_day() {
        assert_eq!(date("19500412").unwrap().to_string(), "1950-04-12");
        assert_eq!(date("195004120000").unwrap().to_string(), "1950-04-12");
        assert!(date("1950").is_err());
        assert!(date("19501312").is_err());
        assert!(date("1950041").is_err());
    }

    #[test]
    fn formats_with_offset() {
        let at: Timestamp = "2024-03-01T00:30:00Z".parse().unwrap();
        assert_eq!(format(at), "20240301083000+0800");
    }
}
