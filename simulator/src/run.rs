//! The simulation: a synthetic cohort through the real pure step in virtual time, with staff
//! working their task queues.
//!
//! Time moves in ticks: one from midnight to the start of the working day, one per working hour,
//! one from the end of the working day to midnight. At the start of each working tick every
//! (institution, role) queue completes its share of the day's capacity, most urgent first; then
//! every patient with something to do lives up to the end of the tick — device readings, life
//! events, answers, completed tasks — and is stepped whenever something reaches the pathway.
//! Patients are split into contiguous chunks, one thread each; the queues' order is total (priority,
//! due time, creation, patient, task), so which task is done when never depends on the chunking.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::patient::{Cx, Key, Life, NewTasks, Patient};
use crate::setup::Setup;
use crate::tally::Tally;

// ---- the clock ---------------------------------------------------------------------------------

/// Everything the run produced, before it is turned into a report.
pub struct Raw {
    pub tally: Tally,
    /// `[day × queues + queue]`: open tasks at the end of each day, and those of them overdue.
    pub backlog: Vec<u32>,
    pub overdue: Vec<u32>,
}

pub(crate) struct Tick {
    pub(crate) end: i64,
    /// `Some((slot, slots))` for working ticks: staff complete their share of the day.
    pub(crate) staff: Option<(u32, u32)>,
    pub(crate) start: i64,
}

/// A day's ticks: midnight to the working day, each working hour, the evening.
pub(crate) fn ticks(s: &Setup, day: usize) -> Vec<Tick> {
    let d0 = s.day_starts[day];
    let d1 = s.day_starts[day + 1];
    let (w0, w1) = ((d0 + s.work_start).min(d1), (d0 + s.work_end).min(d1));
    let hours = ((w1 - w0) as f64 / 3_600.0).ceil().max(1.0) as u32;
    let mut out = vec![Tick {
        start: d0,
        end: w0,
        staff: None,
    }];
    for h in 0..hours {
        let start = w0 + i64::from(h) * 3_600;
        out.push(Tick {
            start,
            end: (start + 3_600).min(w1),
            staff: Some((h, hours)),
        });
    }
    out.push(Tick {
        start: w1,
        end: d1,
        staff: None,
    });
    out.retain(|t| t.end > t.start || t.staff.is_some());
    out
}

/// The tasks of a day's capacity `per_day` that staff complete in working slot `slot` of `slots`.
pub(crate) fn share(per_day: u64, slot: u32, slots: u32) -> u64 {
    per_day * u64::from(slot + 1) / u64::from(slots) - per_day * u64::from(slot) / u64::from(slots)
}

/// Tasks waiting in the staff queues: (patient, task number) → (queue, due time).
type Live = HashMap<(u32, u32), (u32, i64)>;

/// Staff at the start of a working tick: each queue completes its share of the day's capacity,
/// most urgent first. Returns, per chunk of patients, the completions: (patient, time, task).
fn staff(
    s: &Setup,
    queues: &mut [BinaryHeap<Reverse<Key>>],
    live: &mut Live,
    chunk: usize,
    chunks: usize,
    tick: &Tick,
) -> Vec<Vec<(u32, i64, u32)>> {
    let mut out = vec![Vec::new(); chunks];
    let Some((slot, slots)) = tick.staff else {
        return out;
    };
    let len = (tick.end - tick.start).max(1);
    for (q, heap) in queues.iter_mut().enumerate() {
        let cap = share(u64::from(s.capacity[q]), slot, slots) as i64;
        let mut done = 0i64;
        while done < cap {
            let Some(Reverse(key)) = heap.pop() else {
                break;
            };
            // Done or cancelled since it was queued.
            if live.remove(&(key.3, key.4)).is_none() {
                continue;
            }
            let at = tick.start + (2 * done + 1) * len / (2 * cap);
            out[key.3 as usize / chunk].push((key.3, at, key.4));
            done += 1;
        }
    }
    out
}

/// What the tick loop needs of each patient, kept apart from the patients so scanning 100,000 of
/// them every tick stays in the cache.
#[derive(Debug, Clone, Copy)]
struct Clock {
    /// When the patient must next be visited.
    next: i64,
    /// The patient's state in the run's flat list of states, while the enrolment is active.
    state: u32,
}

const NO_STATE: u32 = u32::MAX;

/// What a chunk hands back after a tick.
#[derive(Default)]
struct TickOut {
    new_tasks: NewTasks,
    closed: Vec<(u32, u32)>,
}

impl TickOut {
    /// The context patients act in during a run: what they make and close lands here.
    fn cx<'a>(&'a mut self, s: &'a Setup, tally: &'a mut Tally) -> Cx<'a> {
        Cx {
            s,
            tally,
            new_tasks: &mut self.new_tasks,
            closed: &mut self.closed,
            horizon: s.horizon(),
            journal: None,
        }
    }
}

fn live_chunk(
    s: &Setup,
    patients: &mut [Patient],
    clocks: &mut [Clock],
    tally: &mut Tally,
    to: i64,
    day_end: Option<usize>,
) -> TickOut {
    let mut out = TickOut::default();
    let mut cx = out.cx(s, tally);
    for (p, clock) in patients.iter_mut().zip(clocks.iter_mut()) {
        if clock.next <= to {
            p.advance(&mut cx, to);
            clock.next = p.next_at();
            clock.state = if p.life == Life::Active {
                (s.infos[p.prog].state_off + p.state) as u32
            } else {
                NO_STATE
            };
        }
    }
    if let Some(day) = day_end {
        let base = day * s.total_states;
        for c in clocks.iter() {
            if c.state != NO_STATE {
                cx.tally.occupancy[base + c.state as usize] += 1;
            }
        }
    }
    out
}

enum Cmd {
    /// Staff completions for this chunk, then live up to `to`.
    Tick {
        to: i64,
        day_end: Option<usize>,
        done: Vec<(u32, i64, u32)>,
    },
    /// The run is over: close what is open.
    Finish,
}

/// A worker owns one chunk of patients for the whole run (so their memory stays with one thread)
/// and lives them tick by tick as the main thread says.
fn worker(
    s: &Setup,
    base: usize,
    patients: &mut [Patient],
    clocks: &mut [Clock],
    tally: &mut Tally,
    commands: std::sync::mpsc::Receiver<Cmd>,
    results: std::sync::mpsc::Sender<TickOut>,
) {
    while let Ok(cmd) = commands.recv() {
        let out = match cmd {
            Cmd::Tick { to, day_end, done } => {
                for (i, at, no) in done {
                    let l = i as usize - base;
                    patients[l].inbox.push((at, no));
                    clocks[l].next = clocks[l].next.min(at);
                }
                live_chunk(s, patients, clocks, tally, to, day_end)
            }
            Cmd::Finish => {
                let mut out = TickOut::default();
                let mut cx = out.cx(s, tally);
                for p in patients.iter_mut() {
                    p.finish(&mut cx);
                }
                let _ = results.send(TickOut::default());
                return;
            }
        };
        if results.send(out).is_err() {
            return;
        }
    }
}

/// Runs the whole cohort; `progress` is told each finished day.
pub fn simulate(s: &Setup, threads: usize, progress: &mut dyn FnMut(u32, u32)) -> Raw {
    let n = s.n as usize;
    let threads = threads.max(1);
    let mut patients: Vec<Patient> = (0..n).map(|i| Patient::new(s, i as u32)).collect();
    let mut clocks: Vec<Clock> = patients
        .iter()
        .map(|p| Clock {
            next: p.next_at(),
            state: NO_STATE,
        })
        .collect();
    let chunk = n.div_ceil(threads).max(1);
    let chunks = n.div_ceil(chunk);
    let mut tallies: Vec<Tally> = (0..chunks.max(1)).map(|_| Tally::new(s)).collect();
    let queues_n = s.institutions.len() * s.roles.len();
    let mut queues: Vec<BinaryHeap<Reverse<Key>>> = vec![BinaryHeap::new(); queues_n];
    let mut live: Live = HashMap::new();
    let days = s.days as usize;
    let mut backlog = vec![0u32; days * queues_n];
    let mut overdue = vec![0u32; days * queues_n];

    std::thread::scope(|scope| {
        let mut commands = Vec::new();
        let mut results = Vec::new();
        for (c, ((ps, cs), t)) in patients
            .chunks_mut(chunk)
            .zip(clocks.chunks_mut(chunk))
            .zip(tallies.iter_mut())
            .enumerate()
        {
            let (cmd_tx, cmd_rx) = std::sync::mpsc::channel();
            let (res_tx, res_rx) = std::sync::mpsc::channel();
            commands.push(cmd_tx);
            results.push(res_rx);
            scope.spawn(move || worker(s, c * chunk, ps, cs, t, cmd_rx, res_tx));
        }
        'run: for day in 0..days {
            let day_ticks = ticks(s, day);
            let last = day_ticks.len() - 1;
            for (k, tick) in day_ticks.iter().enumerate() {
                let done = staff(s, &mut queues, &mut live, chunk, chunks, tick);
                let day_end = (k == last).then_some(day);
                for (c, done) in done.into_iter().enumerate() {
                    let cmd = Cmd::Tick {
                        to: tick.end,
                        day_end,
                        done,
                    };
                    if commands[c].send(cmd).is_err() {
                        break 'run;
                    }
                }
                // Results in chunk order; new tasks before closed ones (a task may be both).
                for rx in &results {
                    let Ok(out) = rx.recv() else { break 'run };
                    for (q, key) in out.new_tasks {
                        live.insert((key.3, key.4), (q, key.1));
                        queues[q as usize].push(Reverse(key));
                    }
                    for k in out.closed {
                        live.remove(&k);
                    }
                }
            }
            // The day's backlog: tasks waiting in each queue, and those past their due time.
            let day_end = s.day_starts[day + 1];
            let mut waiting = vec![0usize; queues_n];
            for (q, due) in live.values() {
                let i = day * queues_n + *q as usize;
                backlog[i] += 1;
                waiting[*q as usize] += 1;
                if *due < day_end {
                    overdue[i] += 1;
                }
            }
            // Entries of tasks done or cancelled meanwhile are dropped now and then.
            for (q, heap) in queues.iter_mut().enumerate() {
                if heap.len() > 2 * waiting[q] + 1_024 {
                    heap.retain(|Reverse(k)| live.contains_key(&(k.3, k.4)));
                }
            }
            progress(day as u32 + 1, s.days);
        }
        for (tx, rx) in commands.iter().zip(&results) {
            if tx.send(Cmd::Finish).is_ok() {
                let _ = rx.recv();
            }
        }
        drop(commands);
    });

    let mut total = Tally::new(s);
    for t in &tallies {
        total.add(t);
    }
    total.errors.sort();
    Raw {
        tally: total,
        backlog,
        overdue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    #[test]
    fn ticks_cover_the_day_with_hourly_working_ticks() {
        let sc = Scenario::default();
        let prog = crate::tests::program(crate::tests::TINY);
        let s = Setup::new(vec![prog], &sc, 10, 3, 1).unwrap();
        let t = ticks(&s, 1);
        assert_eq!(t.first().unwrap().start, s.day_starts[1]);
        assert_eq!(t.last().unwrap().end, s.day_starts[2]);
        assert_eq!(t.iter().filter(|t| t.staff.is_some()).count(), 10);
        for w in t.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        assert_eq!(s.day_of(s.day_starts[1]), 1);
        assert_eq!(s.day_of(s.day_starts[1] - 1), 0);
        assert_eq!(s.day_of(s.horizon() + 5), 2);
    }
}
