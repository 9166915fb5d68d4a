//! The run's counts. Every count is a whole number kept per chunk of patients and summed at the
//! end, so the totals do not depend on how patients were split between threads.

use carepath_engine::store::replay::Cohort;

use crate::setup::Setup;

// ---- tallies -----------------------------------------------------------------------------------

#[derive(Debug, Default, Clone)]
pub struct PathTally {
    pub enrolled: u64,
    pub completed: u64,
    pub errors: u64,
    pub died: u64,
    pub steps: u64,
    pub follow_ups_sent: u64,
    pub follow_ups_responded: u64,
    pub follow_ups_cancelled: u64,
    /// Patients with a follow-up call due, and those a call reached (`follow_up_rate`).
    pub follow_up_due: u64,
    pub followed_up: u64,
    pub tasks_created: u64,
    pub tasks_done: u64,
    pub tasks_due: u64,
    pub tasks_on_time: u64,
    pub tasks_overdue: u64,
    pub tasks_cancelled: u64,
    pub scales_pushed: u64,
    pub scales_answered: u64,
    pub referrals_up: u64,
    pub referrals_down: u64,
    pub alarms: u64,
    pub readings: u64,
    pub stays: u64,
    pub stay_seconds: i64,
    pub indicator_met: Vec<u64>,
    pub indicator_of: Vec<u64>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct RoleTally {
    pub created: u64,
    pub done: u64,
    pub due: u64,
    pub on_time: u64,
    pub cancelled: u64,
    pub open_at_end: u64,
    pub overdue_at_end: u64,
    pub escalated: u64,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct FlowTally {
    pub count: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub arrived: u64,
}

/// Additive counts: each chunk of patients keeps its own, and they are summed at the end, so the
/// totals do not depend on how patients were split between threads.
#[derive(Debug, Clone)]
pub struct Tally {
    pub path: Vec<PathTally>,
    pub roles: Vec<RoleTally>,
    pub visits: Vec<u64>,
    pub ended_in: Vec<u64>,
    pub taken: Vec<u64>,
    /// `[day × roles + role]`
    pub created_by_day: Vec<u32>,
    pub done_by_day: Vec<u32>,
    /// `[day × total states + state]`: active enrolments in each state at the end of the day.
    pub occupancy: Vec<u32>,
    pub flows: Vec<FlowTally>,
    /// (patient index, message), sorted at the end.
    pub errors: Vec<(u32, String)>,
    /// What the cohort did, as store rows would record it; filled only when `Setup::export`.
    pub cohort: Cohort,
}

impl Tally {
    pub(crate) fn new(s: &Setup) -> Tally {
        let days = s.days as usize;
        Tally {
            path: s
                .infos
                .iter()
                .map(|i| PathTally {
                    indicator_met: vec![0; i.indicators.len()],
                    indicator_of: vec![0; i.indicators.len()],
                    ..Default::default()
                })
                .collect(),
            roles: vec![RoleTally::default(); s.roles.len()],
            visits: vec![0; s.total_states],
            ended_in: vec![0; s.total_states],
            taken: vec![0; s.total_transitions],
            created_by_day: vec![0; days * s.roles.len()],
            done_by_day: vec![0; days * s.roles.len()],
            occupancy: vec![0; days * s.total_states],
            flows: vec![FlowTally::default(); s.n_flows()],
            errors: Vec::new(),
            cohort: Cohort::default(),
        }
    }

    pub(crate) fn add(&mut self, o: &Tally) {
        for (a, b) in self.path.iter_mut().zip(&o.path) {
            a.enrolled += b.enrolled;
            a.completed += b.completed;
            a.errors += b.errors;
            a.died += b.died;
            a.steps += b.steps;
            a.follow_ups_sent += b.follow_ups_sent;
            a.follow_ups_responded += b.follow_ups_responded;
            a.follow_ups_cancelled += b.follow_ups_cancelled;
            a.follow_up_due += b.follow_up_due;
            a.followed_up += b.followed_up;
            a.tasks_created += b.tasks_created;
            a.tasks_done += b.tasks_done;
            a.tasks_due += b.tasks_due;
            a.tasks_on_time += b.tasks_on_time;
            a.tasks_overdue += b.tasks_overdue;
            a.tasks_cancelled += b.tasks_cancelled;
            a.scales_pushed += b.scales_pushed;
            a.scales_answered += b.scales_answered;
            a.referrals_up += b.referrals_up;
            a.referrals_down += b.referrals_down;
            a.alarms += b.alarms;
            a.readings += b.readings;
            a.stays += b.stays;
            a.stay_seconds += b.stay_seconds;
            for (x, y) in a.indicator_met.iter_mut().zip(&b.indicator_met) {
                *x += y;
            }
            for (x, y) in a.indicator_of.iter_mut().zip(&b.indicator_of) {
                *x += y;
            }
        }
        for (a, b) in self.roles.iter_mut().zip(&o.roles) {
            a.created += b.created;
            a.done += b.done;
            a.due += b.due;
            a.on_time += b.on_time;
            a.cancelled += b.cancelled;
            a.open_at_end += b.open_at_end;
            a.overdue_at_end += b.overdue_at_end;
            a.escalated += b.escalated;
        }
        let sum = |a: &mut Vec<u64>, b: &Vec<u64>| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        sum(&mut self.visits, &o.visits);
        sum(&mut self.ended_in, &o.ended_in);
        sum(&mut self.taken, &o.taken);
        let sum32 = |a: &mut Vec<u32>, b: &Vec<u32>| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        sum32(&mut self.created_by_day, &o.created_by_day);
        sum32(&mut self.done_by_day, &o.done_by_day);
        sum32(&mut self.occupancy, &o.occupancy);
        for (a, b) in self.flows.iter_mut().zip(&o.flows) {
            a.count += b.count;
            a.accepted += b.accepted;
            a.rejected += b.rejected;
            a.arrived += b.arrived;
        }
        self.errors.extend(o.errors.iter().cloned());
        self.cohort.extend(&o.cohort);
    }
}
