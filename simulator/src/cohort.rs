//! Synthetic patients: randomness, distributions and the profile each patient is born with.
//!
//! Every patient draws from its own generator seeded with `hash(seed, patient index)`, so what a
//! patient does never depends on how many threads run or in which order patients are visited.

use std::collections::BTreeMap;

use carepath_engine::scales::{Item as ScaleItem, ScaleDef, Scales, Scored};
pub use carepath_engine::seed::SplitMix;
use serde_json::Value;

/// SplitMix64's finaliser: a good 64-bit mix.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of patient `index` in a run seeded with `seed`.
pub fn patient_seed(seed: u64, index: u64) -> u64 {
    mix64(
        mix64(seed ^ 0x5851_F42D_4C95_7F2D).wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
    )
}

/// Distributions drawn from a `SplitMix`.
pub trait Draw {
    fn unit_f(&mut self) -> f64;
    fn chance(&mut self, p: f64) -> bool {
        self.unit_f() < p
    }
    fn uniform(&mut self, a: f64, b: f64) -> f64 {
        a + (b - a) * self.unit_f()
    }
    /// A standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u1 = self.unit_f().max(1e-12);
        let u2 = self.unit_f();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
    /// Two independent standard normals from one Box–Muller draw.
    fn normal_pair(&mut self) -> (f64, f64) {
        let u1 = self.unit_f().max(1e-12);
        let u2 = self.unit_f();
        let r = (-2.0 * u1.ln()).sqrt();
        let (sin, cos) = (std::f64::consts::TAU * u2).sin_cos();
        (r * cos, r * sin)
    }
    fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit_f()).max(1e-12).ln()
    }
    fn poisson(&mut self, lambda: f64) -> u64 {
        if lambda <= 0.0 {
            return 0;
        }
        let limit = (-lambda.min(500.0)).exp();
        let (mut k, mut p) = (0u64, 1.0);
        loop {
            p *= self.unit_f();
            if p <= limit {
                return k;
            }
            k += 1;
        }
    }
    /// An index drawn with the given (non-negative) weights; 0 when they are all zero.
    fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().filter(|w| **w > 0.0).sum();
        if total <= 0.0 {
            return 0;
        }
        let mut x = self.unit_f() * total;
        for (i, w) in weights.iter().enumerate() {
            if *w <= 0.0 {
                continue;
            }
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.iter().rposition(|w| *w > 0.0).unwrap_or(0)
    }
}

impl Draw for SplitMix {
    fn unit_f(&mut self) -> f64 {
        self.unit()
    }
}

/// Seconds in a duration written as people write them, fractions allowed: `90m`, `36h`, `1.5d`, `2w`.
pub fn parse_seconds(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; write e.g. `30m`, `24h`, `1.5d`, `6w`"))?;
    let unit = match unit.trim() {
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3_600.0,
        "d" => 86_400.0,
        "w" => 604_800.0,
        _ => {
            return Err(format!(
                "`{s}` has no unit; write e.g. `30m`, `24h`, `1.5d`, `6w`"
            ));
        }
    };
    Ok(n * unit)
}

/// A distribution of numbers: of seconds when read with `Unit::Seconds`, else of plain values.
#[derive(Debug, Clone, PartialEq)]
pub enum Dist {
    Fixed(f64),
    Uniform(f64, f64),
    Normal {
        mean: f64,
        sd: f64,
        min: f64,
        max: f64,
    },
    Exponential {
        mean: f64,
        max: f64,
    },
    Poisson(f64),
    Choice(Vec<(f64, f64)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Plain,
}

fn number(v: &Value, unit: Unit, what: &str) -> Result<f64, String> {
    match (v, unit) {
        (Value::Number(n), Unit::Plain) => n.as_f64().ok_or_else(|| format!("{what}: bad number")),
        (Value::Number(n), Unit::Seconds) if n.as_f64() == Some(0.0) => Ok(0.0),
        (Value::String(s), Unit::Seconds) => parse_seconds(s).map_err(|e| format!("{what}: {e}")),
        (Value::String(s), Unit::Plain) => s
            .parse::<f64>()
            .map_err(|_| format!("{what}: `{s}` is not a number")),
        (other, Unit::Seconds) => Err(format!(
            "{what}: expected a duration such as `2d`, found {other}"
        )),
        (other, Unit::Plain) => Err(format!("{what}: expected a number, found {other}")),
    }
}

impl Dist {
    /// Reads `3d`, `{ uniform: [1d, 3d] }`, `{ normal: [6d, 2d], min: 1d }`,
    /// `{ exponential: 12h, max: 7d }`, `{ poisson: 0.5 }` or `{ choice: { "1": 0.6, "2": 0.4 } }`.
    pub fn from_json(v: &Value, unit: Unit, what: &str) -> Result<Dist, String> {
        let Value::Object(m) = v else {
            return Ok(Dist::Fixed(number(v, unit, what)?));
        };
        let pair = |key: &str| -> Result<(f64, f64), String> {
            match m.get(key) {
                Some(Value::Array(a)) if a.len() == 2 => {
                    Ok((number(&a[0], unit, what)?, number(&a[1], unit, what)?))
                }
                _ => Err(format!("{what}: `{key}` takes two values, e.g. [1d, 3d]")),
            }
        };
        let bound = |key: &str, default: f64| -> Result<f64, String> {
            m.get(key)
                .map(|b| number(b, unit, what))
                .transpose()
                .map(|b| b.unwrap_or(default))
        };
        for key in m.keys() {
            if ![
                "uniform",
                "normal",
                "min",
                "max",
                "exponential",
                "poisson",
                "choice",
            ]
            .contains(&key.as_str())
            {
                return Err(format!(
                    "{what}: unknown key `{key}`; use fixed value, uniform, normal, exponential, poisson or choice"
                ));
            }
        }
        if m.contains_key("uniform") {
            let (a, b) = pair("uniform")?;
            return Ok(Dist::Uniform(a.min(b), a.max(b)));
        }
        if m.contains_key("normal") {
            let (mean, sd) = pair("normal")?;
            return Ok(Dist::Normal {
                mean,
                sd: sd.abs(),
                min: bound("min", f64::NEG_INFINITY)?,
                max: bound("max", f64::INFINITY)?,
            });
        }
        if let Some(mean) = m.get("exponential") {
            return Ok(Dist::Exponential {
                mean: number(mean, unit, what)?,
                max: bound("max", f64::INFINITY)?,
            });
        }
        if let Some(l) = m.get("poisson") {
            return Ok(Dist::Poisson(number(l, Unit::Plain, what)?));
        }
        if let Some(Value::Object(c)) = m.get("choice") {
            let mut out = Vec::new();
            for (k, w) in c {
                let value = number(&Value::String(k.clone()), unit, what)?;
                out.push((value, number(w, Unit::Plain, what)?));
            }
            if out.is_empty() {
                return Err(format!("{what}: `choice` needs at least one value"));
            }
            return Ok(Dist::Choice(out));
        }
        Err(format!(
            "{what}: write a value or one of uniform, normal, exponential, poisson, choice"
        ))
    }

    pub fn sample(&self, rng: &mut SplitMix) -> f64 {
        match self {
            Dist::Fixed(x) => *x,
            Dist::Uniform(a, b) => rng.uniform(*a, *b),
            Dist::Normal { mean, sd, min, max } => (mean + sd * rng.normal()).clamp(*min, *max),
            Dist::Exponential { mean, max } => rng.exponential(*mean).min(*max),
            Dist::Poisson(l) => rng.poisson(*l) as f64,
            Dist::Choice(options) => {
                let w: Vec<f64> = options.iter().map(|(_, w)| *w).collect();
                options[rng.weighted(&w)].0
            }
        }
    }

    pub fn mean(&self) -> f64 {
        match self {
            Dist::Fixed(x) => *x,
            Dist::Uniform(a, b) => (a + b) / 2.0,
            Dist::Normal { mean, .. } => *mean,
            Dist::Exponential { mean, .. } => *mean,
            Dist::Poisson(l) => *l,
            Dist::Choice(o) => {
                let total: f64 = o.iter().map(|(_, w)| w).sum();
                o.iter().map(|(v, w)| v * w).sum::<f64>() / total.max(f64::MIN_POSITIVE)
            }
        }
    }
}

/// A comorbidity as the cohort sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Comorbidity {
    pub name: String,
    pub prevalence: f64,
    /// Points towards the Charlson index.
    pub charlson: i64,
    /// Shifts of device-reading baselines, by observation kind.
    pub shift: BTreeMap<String, f64>,
}

/// The default comorbidities: prevalences for an older hospital population, Charlson weights.
pub fn default_comorbidities() -> Vec<Comorbidity> {
    let c = |name: &str, prevalence: f64, charlson: i64, shift: &[(&str, f64)]| Comorbidity {
        name: name.into(),
        prevalence,
        charlson,
        shift: shift.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
    };
    vec![
        c(
            "hypertension",
            0.35,
            0,
            &[("bp_systolic", 8.0), ("bp_diastolic", 4.0)],
        ),
        c(
            "diabetes",
            0.18,
            1,
            &[("glucose_fasting", 1.5), ("glucose_postprandial", 2.5)],
        ),
        c("heart_failure", 0.06, 1, &[]),
        c("copd", 0.07, 1, &[("spo2", -2.0)]),
        c("chronic_kidney_disease", 0.08, 2, &[]),
        c("prior_stroke", 0.06, 1, &[]),
        c("cancer", 0.05, 2, &[]),
    ]
}

/// Who a patient is: drawn once, before enrolment.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub age: u32,
    pub sex: &'static str,
    pub institution: usize,
    pub entry: usize,
    /// Indices into the run's comorbidity list.
    pub comorbidities: Vec<u8>,
    pub charlson: i64,
    /// Share of scheduled device readings the patient takes.
    pub adherence: f64,
}

/// What the cohort draws from.
#[derive(Debug, Clone)]
pub struct CohortSpec {
    pub institution_shares: Vec<f64>,
    pub comorbidities: Vec<Comorbidity>,
    pub adherence_mean: f64,
    pub adherence_sd: f64,
}

impl CohortSpec {
    /// Draws a patient's profile; age, sex and entry weights are those of the patient's pathway.
    pub fn profile(
        &self,
        rng: &mut SplitMix,
        age: &Dist,
        female: f64,
        entry_weights: &[f64],
    ) -> Profile {
        let age = age.sample(rng).round().clamp(0.0, 120.0) as u32;
        let sex = if rng.chance(female) { "female" } else { "male" };
        let institution = rng.weighted(&self.institution_shares);
        let entry = rng.weighted(entry_weights);
        // Comorbidities grow more common with age: the prevalence is for a 65-year-old.
        let age_factor = (f64::from(age) / 65.0).clamp(0.3, 1.6);
        let mut comorbidities = Vec::new();
        let mut charlson = 0;
        for (i, c) in self.comorbidities.iter().enumerate() {
            if rng.chance((c.prevalence * age_factor).min(1.0)) {
                comorbidities.push(i as u8);
                charlson += c.charlson;
            }
        }
        let adherence = (self.adherence_mean + self.adherence_sd * rng.normal()).clamp(0.0, 1.0);
        Profile {
            age,
            sex,
            institution,
            entry,
            comorbidities,
            charlson,
            adherence,
        }
    }
}

/// How one kind of device reading behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct ObsModel {
    pub kind: &'static str,
    pub mean: f64,
    pub sd: f64,
    pub noise: f64,
    /// Drift of the level per 30 days.
    pub trend_per_month: f64,
    pub min: f64,
    pub max: f64,
    pub round: bool,
    pub per_day: f64,
    /// Seconds after local midnight of the first reading of the day.
    pub at: i64,
    /// For 0/1 observations: the probability of a 1.
    pub probability: Option<f64>,
}

/// Defaults for every observation kind of the catalogue: an adult chronic-disease population.
pub fn observation_default(kind: &'static str) -> ObsModel {
    #[allow(clippy::type_complexity)]
    let (mean, sd, noise, trend, min, max, round, at): (
        f64,
        f64,
        f64,
        f64,
        f64,
        f64,
        bool,
        i64,
    ) = match kind {
        "bp_systolic" => (142.0, 14.0, 8.0, -1.0, 70.0, 250.0, true, 7),
        "bp_diastolic" => (86.0, 9.0, 6.0, -0.5, 40.0, 150.0, true, 7),
        "glucose_fasting" => (7.4, 1.6, 0.9, -0.05, 2.0, 30.0, false, 7),
        "glucose_postprandial" => (10.2, 2.2, 1.5, -0.05, 3.0, 33.0, false, 9),
        "heart_rate" => (74.0, 8.0, 6.0, 0.0, 35.0, 190.0, true, 7),
        "spo2" => (96.5, 1.2, 1.0, 0.0, 70.0, 100.0, true, 7),
        "weight" => (66.0, 11.0, 0.5, 0.0, 30.0, 200.0, false, 7),
        "body_fat" => (28.0, 6.0, 0.8, 0.0, 5.0, 60.0, false, 7),
        "steps" => (5_000.0, 2_000.0, 1_500.0, 0.0, 0.0, 40_000.0, true, 21),
        "temperature" => (36.6, 0.2, 0.25, 0.0, 34.0, 42.0, false, 7),
        "fetal_heart_rate" => (140.0, 7.0, 6.0, 0.0, 60.0, 220.0, true, 20),
        "exercise_minutes" => (25.0, 10.0, 10.0, 0.0, 0.0, 180.0, true, 19),
        "muscle_strength" => (3.5, 1.0, 0.3, 0.1, 0.0, 5.0, true, 10),
        "respiratory_rate" => (16.0, 2.0, 1.5, 0.0, 8.0, 40.0, true, 7),
        "hba1c" => (7.2, 1.1, 0.2, -0.02, 4.0, 15.0, false, 30),
        _ => (
            0.0,
            0.0,
            0.0,
            0.0,
            f64::NEG_INFINITY,
            f64::INFINITY,
            false,
            7,
        ),
    };
    ObsModel {
        kind,
        mean,
        sd,
        noise,
        trend_per_month: trend,
        min,
        max,
        round,
        per_day: 1.0,
        at: at * 3_600,
        probability: (kind == "medication_taken").then_some(0.85),
    }
}

/// How patients answer one assessment scale. What the scale is — its items, their answers, its
/// scoring, bands and critical items — is the engine's definition; only how this population
/// answers (how often, how late, around which score) is the simulator's.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleModel {
    pub name: &'static str,
    pub def: &'static ScaleDef,
    pub answer: f64,
    pub delay: Dist,
    pub mean: f64,
    pub sd: f64,
    /// The range totals are drawn in: the scale's own, unless the scenario narrows it.
    pub min: f64,
    pub max: f64,
    /// (1-based item, probability of a positive answer), drawn independently of the total.
    pub forced_items: Vec<(usize, f64)>,
}

/// Defaults for every scale of the catalogue: a typical score for an adult chronic-disease
/// population; `None` when the engine has no definition of the scale.
pub fn scale_default(name: &'static str) -> Option<ScaleModel> {
    let def = Scales::builtin().get(name)?;
    let (lo, hi) = def
        .score_range()
        .unwrap_or((def.scoring.min, def.scoring.max));
    let (mean, sd) = match name {
        "phq9" => (6.0, 5.0),
        "gad7" => (5.0, 4.0),
        "epds" => (7.0, 5.0),
        "barthel" => (60.0, 25.0),
        "mrs" => (2.0, 1.3),
        "nrs" => (3.0, 2.0),
        "who5" => (15.0, 5.0),
        "cat" => (15.0, 8.0),
        "qol_breast" => (78.0, 12.0),
        "satisfaction" => (90.0, 8.0),
        "mrc_strength" => (3.5, 1.0),
        "morisky8" => (6.3, 1.4),
        _ => ((lo + hi) / 2.0, (hi - lo) / 5.0),
    };
    Some(ScaleModel {
        name,
        def,
        answer: 0.8,
        delay: Dist::Exponential {
            mean: 14.0 * 3_600.0,
            max: f64::INFINITY,
        },
        mean,
        sd,
        min: lo,
        max: hi,
        // Critical items (thoughts of self-harm) are rare and independent of the total.
        forced_items: def
            .critical
            .iter()
            .filter_map(|c| Some((def.item_number(&c.item)?, 0.03)))
            .collect(),
    })
}

/// The answers an item allows, lowest first.
fn allowed(item: &ScaleItem) -> Vec<i64> {
    if item.options.is_empty() {
        (item.min.unwrap_or(0)..=item.max.unwrap_or(0)).collect()
    } else {
        let mut v: Vec<i64> = item.options.iter().map(|o| o.value).collect();
        v.sort_unstable();
        v
    }
}

impl ScaleModel {
    /// A completed questionnaire, scored by the scale's definition: the total is drawn around the
    /// population's mean and spread over the items, forced items answered on their own.
    /// `None` only if the scale's definition refuses answers within its own items.
    pub fn answer(&self, rng: &mut SplitMix) -> Option<Scored> {
        self.def.score(&self.answers(rng)).ok()
    }

    /// The answers of a completed questionnaire, item by item, as a patient gives them (what
    /// [`ScaleModel::answer`] scores).
    pub fn answers(&self, rng: &mut SplitMix) -> BTreeMap<String, i64> {
        let def = self.def;
        let (lo, hi) = def.score_range().unwrap_or((self.min, self.max));
        let target = (self.mean + self.sd * rng.normal()).clamp(self.min, self.max);
        // Each item's answers from its lowest score to its highest (reverse-scored items score
        // highest at their lowest answer); an answer is a number of steps up that ladder.
        let ladders: Vec<Vec<i64>> = def
            .items
            .iter()
            .map(|item| {
                let mut values = allowed(item);
                if def.scoring.reverse.contains(&item.id) {
                    values.reverse();
                }
                values
            })
            .collect();
        let mut steps = vec![0usize; ladders.len()];
        let mut free = Vec::new();
        for (k, ladder) in ladders.iter().enumerate() {
            let top = ladder.len().saturating_sub(1);
            match self.forced_items.iter().find(|(n, _)| *n == k + 1) {
                Some((_, p)) if top > 0 && rng.chance(*p) => {
                    steps[k] = 1 + rng.below(top as u64) as usize;
                }
                Some(_) => {}
                None if top > 0 => free.push(k),
                None => {}
            }
        }
        // The total's share of the range, in steps, spread at random over the other items.
        let total: usize = ladders.iter().map(|l| l.len().saturating_sub(1)).sum();
        let share = if hi > lo {
            ((target - lo) / (hi - lo)).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let mut left = (share * total as f64).round() as i64 - steps.iter().sum::<usize>() as i64;
        while left > 0 && !free.is_empty() {
            let j = rng.below(free.len() as u64) as usize;
            let k = free[j];
            steps[k] += 1;
            if steps[k] + 1 >= ladders[k].len() {
                free.swap_remove(j);
            }
            left -= 1;
        }
        def.items
            .iter()
            .zip(&ladders)
            .zip(&steps)
            .filter_map(|((item, ladder), s)| Some((item.id.clone(), *ladder.get(*s)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_seeds_differ_and_repeat() {
        assert_eq!(patient_seed(1, 5), patient_seed(1, 5));
        assert_ne!(patient_seed(1, 5), patient_seed(1, 6));
        assert_ne!(patient_seed(1, 5), patient_seed(2, 5));
    }

    #[test]
    fn distributions_have_their_means() {
        let mut rng = SplitMix::new(7);
        let n = 20_000;
        let mean =
            |d: &Dist, rng: &mut SplitMix| (0..n).map(|_| d.sample(rng)).sum::<f64>() / n as f64;
        let normal = Dist::Normal {
            mean: 10.0,
            sd: 2.0,
            min: f64::NEG_INFINITY,
            max: f64::INFINITY,
        };
        assert!((mean(&normal, &mut rng) - 10.0).abs() < 0.1);
        let exp = Dist::Exponential {
            mean: 5.0,
            max: f64::INFINITY,
        };
        assert!((mean(&exp, &mut rng) - 5.0).abs() < 0.2);
        assert!((mean(&Dist::Poisson(0.7), &mut rng) - 0.7).abs() < 0.05);
        assert!((mean(&Dist::Uniform(2.0, 4.0), &mut rng) - 3.0).abs() < 0.05);
        let picks: Vec<usize> = (0..1000).map(|_| rng.weighted(&[0.0, 1.0, 0.0])).collect();
        assert!(picks.iter().all(|i| *i == 1));
    }

    #[test]
    fn reads_distributions_and_durations() {
        let v = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert_eq!(parse_seconds("1.5d").unwrap(), 129_600.0);
        assert_eq!(
            Dist::from_json(&v(r#"{"uniform": ["1d", "3d"]}"#), Unit::Seconds, "x").unwrap(),
            Dist::Uniform(86_400.0, 259_200.0)
        );
        assert_eq!(
            Dist::from_json(&v(r#""36h""#), Unit::Seconds, "x").unwrap(),
            Dist::Fixed(129_600.0)
        );
        let n = Dist::from_json(
            &v(r#"{"normal": ["6d", "2d"], "min": "1d"}"#),
            Unit::Seconds,
            "x",
        )
        .unwrap();
        assert_eq!(n.mean(), 518_400.0);
        assert!(Dist::from_json(&v(r#"{"gauss": [1, 2]}"#), Unit::Plain, "x").is_err());
        assert!(Dist::from_json(&v(r#""3""#), Unit::Seconds, "x").is_err());
        let c = Dist::from_json(&v(r#"{"choice": {"1": 1, "3": 1}}"#), Unit::Plain, "x").unwrap();
        assert_eq!(c.mean(), 2.0);
    }

    #[test]
    fn scale_answers_are_scored_by_the_scale_and_force_items() {
        let mut rng = SplitMix::new(11);
        let mut m = scale_default("epds").expect("epds is defined");
        m.forced_items = vec![(10, 1.0)];
        for _ in 0..500 {
            let s = m.answer(&mut rng).expect("scored");
            assert!((0.0..=30.0).contains(&s.score));
            assert_eq!(s.items.len(), 10);
            assert!(s.items[9] > 0);
            assert!(!s.band.is_empty());
            // Item 10 above zero is the scale's critical rule.
            assert!(s.critical.iter().any(|c| c.number == 10), "{s:?}");
        }
        let b = scale_default("barthel").expect("barthel is defined");
        for _ in 0..100 {
            let s = b.answer(&mut rng).expect("scored");
            assert_eq!(s.score % 5.0, 0.0);
        }
        let mut mean = scale_default("phq9").expect("phq9 is defined");
        mean.sd = 0.0;
        let n = 2_000;
        let avg = (0..n)
            .map(|_| mean.answer(&mut rng).expect("scored").score)
            .sum::<f64>()
            / f64::from(n);
        assert!((avg - 6.0).abs() < 0.5, "{avg}");
    }

    #[test]
    fn profiles_follow_the_spec() {
        let age = Dist::Normal {
            mean: 30.0,
            sd: 4.0,
            min: 18.0,
            max: 45.0,
        };
        let spec = CohortSpec {
            institution_shares: vec![0.0, 1.0],
            comorbidities: default_comorbidities(),
            adherence_mean: 0.8,
            adherence_sd: 0.1,
        };
        let mut rng = SplitMix::new(3);
        for _ in 0..200 {
            let p = spec.profile(&mut rng, &age, 1.0, &[1.0, 0.0, 2.0]);
            assert_eq!(p.sex, "female");
            assert_eq!(p.institution, 1);
            assert!((18..=45).contains(&p.age));
            assert_ne!(p.entry, 1);
        }
    }
}
