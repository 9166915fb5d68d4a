//! The Charlson comorbidity index from ICD-10 codes.
//!
//! Coding: Quan H, Sundararajan V, Halfon P, et al. "Coding algorithms for defining comorbidities
//! in ICD-9-CM and ICD-10 administrative data." Medical Care 2005;43(11):1130–1139, Table 1
//! (the enhanced ICD-10 algorithm for the 17 Charlson conditions). Weights: the original Charlson
//! 1987 weights (Charlson ME et al., J Chronic Dis 1987;40:373–383), which the LACE index was
//! derived with. Where a condition has a mild and a severe form (liver disease, diabetes, cancer)
//! only the severe one counts, as is usual with these algorithms, so a patient is not scored twice
//! for one disease.
//!
//! The table is data: each condition with its weight and its codes, written as in the paper
//! (`I21` a category, `I25.2` a subcategory, `I60-I69` and `K70.0-K70.3` inclusive ranges).

use serde::Serialize;

/// One Charlson condition: its name, its 1987 weight and its ICD-10 codes (Quan 2005).
pub struct Condition {
    pub id: &'static str,
    pub name: &'static str,
    pub weight: u32,
    pub codes: &'static [&'static str],
}

/// The 17 conditions, in the paper's order.
pub const CONDITIONS: &[Condition] = &[
    Condition {
        id: "mi",
        name: "Myocardial infarction",
        weight: 1,
        codes: &["I21", "I22", "I25.2"],
    },
    Condition {
        id: "chf",
        name: "Congestive heart failure",
        weight: 1,
        codes: &[
            "I09.9",
            "I11.0",
            "I13.0",
            "I13.2",
            "I25.5",
            "I42.0",
            "I42.5-I42.9",
            "I43",
            "I50",
            "P29.0",
        ],
    },
    Condition {
        id: "pvd",
        name: "Peripheral vascular disease",
        weight: 1,
        codes: &[
            "I70", "I71", "I73.1", "I73.8", "I73.9", "I77.1", "I79.0", "I79.2", "K55.1", "K55.8",
            "K55.9", "Z95.8", "Z95.9",
        ],
    },
    Condition {
        id: "cevd",
        name: "Cerebrovascular disease",
        weight: 1,
        codes: &["G45", "G46", "H34.0", "I60-I69"],
    },
    Condition {
        id: "dementia",
        name: "Dementia",
        weight: 1,
        codes: &["F00-F03", "F05.1", "G30", "G31.1"],
    },
    Condition {
        id: "cpd",
        name: "Chronic pulmonary disease",
        weight: 1,
        codes: &[
            "I27.8", "I27.9", "J40-J47", "J60-J67", "J68.4", "J70.1", "J70.3",
        ],
    },
    Condition {
        id: "rheumatic",
        name: "Rheumatic disease",
        weight: 1,
        codes: &["M05", "M06", "M31.5", "M32-M34", "M35.1", "M35.3", "M36.0"],
    },
    Condition {
        id: "pud",
        name: "Peptic ulcer disease",
        weight: 1,
        codes: &["K25-K28"],
    },
    Condition {
        id: "mild_liver",
        name: "Mild liver disease",
        weight: 1,
        codes: &[
            "B18",
            "K70.0-K70.3",
            "K70.9",
            "K71.3-K71.5",
            "K71.7",
            "K73",
            "K74",
            "K76.0",
            "K76.2-K76.4",
            "K76.8",
            "K76.9",
            "Z94.4",
        ],
    },
    Condition {
        id: "diabetes",
        name: "Diabetes without chronic complication",
        weight: 1,
        codes: &[
            "E10.0", "E10.1", "E10.6", "E10.8", "E10.9", "E11.0", "E11.1", "E11.6", "E11.8",
            "E11.9", "E12.0", "E12.1", "E12.6", "E12.8", "E12.9", "E13.0", "E13.1", "E13.6",
            "E13.8", "E13.9", "E14.0", "E14.1", "E14.6", "E14.8", "E14.9",
        ],
    },
    Condition {
        id: "diabetes_complicated",
        name: "Diabetes with chronic complication",
        weight: 2,
        codes: &[
            "E10.2-E10.5",
            "E10.7",
            "E11.2-E11.5",
            "E11.7",
            "E12.2-E12.5",
            "E12.7",
            "E13.2-E13.5",
            "E13.7",
            "E14.2-E14.5",
            "E14.7",
        ],
    },
    Condition {
        id: "plegia",
        name: "Hemiplegia or paraplegia",
        weight: 2,
        codes: &[
            "G04.1",
            "G11.4",
            "G80.1",
            "G80.2",
            "G81",
            "G82",
            "G83.0-G83.4",
            "G83.9",
        ],
    },
    Condition {
        id: "renal",
        name: "Renal disease",
        weight: 2,
        codes: &[
            "I12.0",
            "I13.1",
            "N03.2-N03.7",
            "N05.2-N05.7",
            "N18",
            "N19",
            "N25.0",
            "Z49.0-Z49.2",
            "Z94.0",
            "Z99.2",
        ],
    },
    Condition {
        id: "cancer",
        name: "Any malignancy, including lymphoma and leukaemia, except malignant neoplasm of skin",
        weight: 2,
        codes: &[
            "C00-C26", "C30-C34", "C37-C41", "C43", "C45-C58", "C60-C76", "C81-C85", "C88",
            "C90-C97",
        ],
    },
    Condition {
        id: "severe_liver",
        name: "Moderate or severe liver disease",
        weight: 3,
        codes: &[
            "I85.0", "I85.9", "I86.4", "I98.2", "K70.4", "K71.1", "K72.1", "K72.9", "K76.5",
            "K76.6", "K76.7",
        ],
    },
    Condition {
        id: "metastatic",
        name: "Metastatic solid tumour",
        weight: 6,
        codes: &["C77-C80"],
    },
    Condition {
        id: "hiv",
        name: "AIDS/HIV",
        weight: 6,
        codes: &["B20-B22", "B24"],
    },
];

/// Mild forms that do not count when the severe form of the same disease is present.
const HIERARCHY: &[(&str, &str)] = &[
    ("mild_liver", "severe_liver"),
    ("diabetes", "diabetes_complicated"),
    ("cancer", "metastatic"),
];

/// An ICD-10 code as stored and compared: upper case, without the dot or spaces (`I63.9` →
/// `I639`). `None` when it is not an ICD-10 code (a letter, two digits, then up to five letters
/// or digits).
pub fn normalise(code: &str) -> Option<String> {
    let c: String = code
        .trim()
        .chars()
        .filter(|ch| *ch != '.')
        .map(|ch| ch.to_ascii_uppercase())
        .collect();
    let b = c.as_bytes();
    let ok = (3..=8).contains(&b.len())
        && b[0].is_ascii_uppercase()
        && b[1].is_ascii_digit()
        && b[2].is_ascii_alphanumeric()
        && b[3..].iter().all(u8::is_ascii_alphanumeric);
    ok.then_some(c)
}

/// Whether the normalised `code` falls under `pattern` as the table writes it.
fn covers(pattern: &str, code: &str) -> bool {
    let clean = |p: &str| p.replace('.', "");
    match pattern.split_once('-') {
        Some((lo, hi)) => {
            let (lo, hi) = (clean(lo), clean(hi));
            code.len() >= lo.len() && {
                let head = &code[..lo.len()];
                lo.as_str() <= head && head <= hi.as_str()
            }
        }
        None => code.starts_with(&clean(pattern)),
    }
}

/// The Charlson conditions the codes show and the index they add up to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Charlson {
    pub index: u32,
    /// The ids of the conditions counted (after the hierarchy), in table order.
    pub conditions: Vec<&'static str>,
}

/// The Charlson index of a list of ICD-10 codes (in any spelling [`normalise`] accepts; others are
/// ignored).
pub fn charlson<'a>(codes: impl IntoIterator<Item = &'a str>) -> Charlson {
    let codes: Vec<String> = codes.into_iter().filter_map(normalise).collect();
    let mut found: Vec<&'static str> = CONDITIONS
        .iter()
        .filter(|c| {
            codes
                .iter()
                .any(|code| c.codes.iter().any(|p| covers(p, code)))
        })
        .map(|c| c.id)
        .collect();
    let present = found.clone();
    found.retain(|id| {
        !HIERARCHY
            .iter()
            .any(|(mild, severe)| mild == id && present.contains(severe))
    });
    let index = found
        .iter()
        .filter_map(|id| CONDITIONS.iter().find(|c| c.id == *id))
        .map(|c| c.weight)
        .sum();
    Charlson {
        index,
        conditions: found,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn codes_are_normalised_and_checked() {
        assert_eq!(normalise(" i63.9 ").as_deref(), Some("I639"));
        assert_eq!(normalise("E11.65").as_deref(), Some("E1165"));
        assert_eq!(normalise("63.9"), None);
        assert_eq!(normalise("I6"), None);
        assert_eq!(normalise("I63.9; DROP"), None);
    }

    #[test]
    fn each_condition_is_found_by_a_code_of_its_own() {
        let one = |code: &str| charlson([code]);
        assert_eq!(one("I21.4").conditions, ["mi"]);
        assert_eq!(one("I25.2").conditions, ["mi"]);
        assert!(one("I25.1").conditions.is_empty());
        assert_eq!(one("I42.7").conditions, ["chf"]);
        assert!(one("I42.4").conditions.is_empty());
        assert_eq!(one("I63.9").conditions, ["cevd"]);
        assert_eq!(one("I69").conditions, ["cevd"]);
        assert_eq!(one("J44.1").conditions, ["cpd"]);
        assert_eq!(one("K70.3").conditions, ["mild_liver"]);
        assert_eq!(one("K70.4").conditions, ["severe_liver"]);
        assert_eq!(one("E11.9").conditions, ["diabetes"]);
        assert_eq!(one("E11.2").conditions, ["diabetes_complicated"]);
        assert_eq!(one("N18.5").conditions, ["renal"]);
        assert_eq!(one("C50.9").conditions, ["cancer"]);
        assert!(
            one("C44.9").conditions.is_empty(),
            "skin cancer is excluded"
        );
        assert_eq!(one("C78.7").conditions, ["metastatic"]);
        assert_eq!(one("B20").conditions, ["hiv"]);
        assert_eq!(one("G81.9").conditions, ["plegia"]);
    }

    #[test]
    fn weights_add_up_with_the_severe_form_replacing_the_mild() {
        // Stroke (1), heart failure (1), complicated diabetes (2, not also 1): 4.
        let c = charlson(["I63.9", "I50.9", "E11.9", "E11.2"]);
        assert_eq!(c.index, 4);
        assert_eq!(c.conditions, ["chf", "cevd", "diabetes_complicated"]);
        // Breast cancer with liver metastases: 6, not 8.
        assert_eq!(charlson(["C50.9", "C78.7"]).index, 6);
        // The same condition twice counts once.
        assert_eq!(charlson(["I63.9", "I61.0", "G45.9"]).index, 1);
        assert_eq!(charlson(Vec::<&str>::new()).index, 0);
    }

    proptest! {
        #[test]
        fn any_text_is_scored_without_panicking(codes in proptest::collection::vec(".{0,12}", 0..8)) {
            let c = charlson(codes.iter().map(String::as_str));
            prop_assert!(c.index <= CONDITIONS.iter().map(|c| c.weight).sum::<u32>());
        }
    }
}
