//! Built-in risk models.

use std::collections::BTreeMap;

use carepath_dsl::VarValue;

fn num(vars: &BTreeMap<String, VarValue>, name: &str) -> f64 {
    match vars.get(name) {
        Some(VarValue::Number(n)) => *n,
        Some(VarValue::Integer(i)) => *i as f64,
        Some(VarValue::Bool(b)) => f64::from(u8::from(*b)),
        _ => 0.0,
    }
}

/// The LACE index (van Walraven et al., CMAJ 2010): Length of stay, Acuity of admission,
/// Charlson comorbidity index, Emergency visits in the previous six months. Reads the enrolment
/// variables `los_days`, `acute_admission`, `charlson` and `ed_visits`. Score 0–19; ≥ 10 is high risk.
pub fn lace(vars: &BTreeMap<String, VarValue>) -> (f64, Vec<(String, f64)>) {
    let los = num(vars, "los_days");
    let l = match los {
        d if d < 1.0 => 0.0,
        d if d < 2.0 => 1.0,
        d if d < 3.0 => 2.0,
        d if d < 4.0 => 3.0,
        d if d < 7.0 => 4.0,
        d if d < 14.0 => 5.0,
        _ => 7.0,
    };
    let a = if num(vars, "acute_admission") > 0.0 {
        3.0
    } else {
        0.0
    };
    let c = match num(vars, "charlson") {
        x if x >= 4.0 => 5.0,
        x => x.max(0.0).floor(),
    };
    let e = num(vars, "ed_visits").clamp(0.0, 4.0).floor();
    let parts = vec![
        ("length_of_stay".to_string(), l),
        ("acuity".to_string(), a),
        ("comorbidity".to_string(), c),
        ("emergency_visits".to_string(), e),
    ];
    (l + a + c + e, parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lace_matches_the_published_points() {
        let vars = |los: f64, acute: bool, charlson: i64, ed: i64| {
            BTreeMap::from([
                ("los_days".to_string(), VarValue::Number(los)),
                ("acute_admission".to_string(), VarValue::Bool(acute)),
                ("charlson".to_string(), VarValue::Integer(charlson)),
                ("ed_visits".to_string(), VarValue::Integer(ed)),
            ])
        };
        assert_eq!(lace(&vars(0.5, false, 0, 0)).0, 0.0);
        assert_eq!(lace(&vars(5.0, true, 2, 1)).0, 4.0 + 3.0 + 2.0 + 1.0);
        assert_eq!(lace(&vars(20.0, true, 6, 9)).0, 7.0 + 3.0 + 5.0 + 4.0);
    }
}
