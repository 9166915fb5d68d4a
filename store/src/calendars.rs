//! Institution calendars: each institution's closures, extra working days and working hours over
//! the national calendar of working days, and the calendar each enrolment's working days count in.
//!
//! The national calendar is embedded in the binary ([`Calendar::national`]); only what an
//! institution adds is stored (`institution_days`, `institution_hours`, migration 0013). The
//! scheduler reads the calendars of a batch's institutions once and steps each enrolment inside
//! its institution's ([`carepath_core::time::with_calendar`]).

use std::collections::{BTreeMap, HashMap};

use carepath_core::calendar::{Calendar, CalendarError, Day, Overrides, WorkingHours};
use carepath_dsl::LocalTime;

use super::db::{self, Arg, Tx};
use super::{Result, StoreError};
use crate::args;

impl From<CalendarError> for StoreError {
    fn from(e: CalendarError) -> StoreError {
        StoreError::Invalid(e.to_string())
    }
}

/// Replaces an institution's own calendar (its closures, extra working days and hours).
pub async fn replace(tx: &mut Tx, institution: &str, overrides: &Overrides) -> Result<()> {
    let known = tx
        .fetch_one(
            "SELECT id FROM institutions WHERE id = $1",
            args![institution],
        )
        .await?;
    if known.is_none() {
        return Err(StoreError::NotFound(format!("institution `{institution}`")));
    }
    tx.exec(
        "DELETE FROM institution_days WHERE institution_id = $1",
        args![institution],
    )
    .await?;
    tx.exec(
        "DELETE FROM institution_hours WHERE institution_id = $1",
        args![institution],
    )
    .await?;
    let rows: Vec<Vec<Arg>> = overrides
        .days
        .iter()
        .map(|(date, day)| {
            args![
                institution,
                date.to_string(),
                i64::from(day.working),
                day.reason.clone()
            ]
        })
        .collect();
    tx.exec_each(
        "INSERT INTO institution_days (institution_id, day, working, reason) VALUES ($1, $2, $3, $4)",
        &rows,
    )
    .await?;
    if let Some(h) = overrides.hours {
        tx.exec(
            "INSERT INTO institution_hours (institution_id, opens, closes) VALUES ($1, $2, $3)",
            args![institution, h.opens.to_string(), h.closes.to_string()],
        )
        .await?;
    }
    Ok(())
}

/// The calendars working days count in, for a set of institutions.
#[derive(Debug, Clone)]
pub struct Calendars {
    national: Calendar,
    own: HashMap<String, Calendar>,
}

impl Calendars {
    /// The institution's calendar: the national one with its own days and hours, if it has any.
    pub fn of(&self, institution: &str) -> &Calendar {
        self.own.get(institution).unwrap_or(&self.national)
    }
}

/// Reads the own calendars of `institutions` (each once, whatever the repeats).
pub async fn for_institutions<'a>(
    tx: &mut Tx,
    institutions: impl IntoIterator<Item = &'a str>,
) -> Result<Calendars> {
    let national = Calendar::national()?.clone();
    let mut ids: Vec<&str> = institutions.into_iter().collect();
    ids.sort_unstable();
    ids.dedup();
    let mut own: BTreeMap<String, Overrides> = BTreeMap::new();
    if !ids.is_empty() {
        let in_ids = db::placeholders(1, ids.len());
        let arg_ids: Vec<Arg> = ids.iter().map(|i| Arg::from(*i)).collect();
        let bad = |inst: &str, what: String| {
            StoreError::Invalid(format!("institution `{inst}`'s calendar: {what}"))
        };
        let rows = tx
            .fetch(
                &format!("SELECT institution_id, day, working, reason FROM institution_days WHERE institution_id IN ({in_ids})"),
                arg_ids.clone(),
            )
            .await?;
        for r in rows {
            let inst = r.text(0);
            let date = r
                .text(1)
                .parse()
                .map_err(|e| bad(&inst, format!("day `{}`: {e}", r.text(1))))?;
            let day = Day {
                working: r.i64(2) == 1,
                reason: r.opt_text(3),
            };
            own.entry(inst).or_default().days.insert(date, day);
        }
        let rows = tx
            .fetch(
                &format!("SELECT institution_id, opens, closes FROM institution_hours WHERE institution_id IN ({in_ids})"),
                arg_ids,
            )
            .await?;
        for r in rows {
            let inst = r.text(0);
            let time = |i: usize| LocalTime::parse(&r.text(i)).map_err(|e| bad(&inst, e));
            let hours = WorkingHours {
                opens: time(1)?,
                closes: time(2)?,
            };
            own.entry(inst).or_default().hours = Some(hours);
        }
    }
    let own = own
        .into_iter()
        .map(|(inst, o)| {
            let cal = national.with_overrides(o);
            (inst, cal)
        })
        .collect();
    Ok(Calendars { national, own })
}
