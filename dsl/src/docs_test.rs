//! The pathway language's documentation says what the catalogue and the validator do: its table of
//! built-in events is the catalogue's, row for row, and its table of diagnostics lists exactly the
//! codes the validator can produce.

use crate::catalog::{BUILTIN_EVENTS, EventSource};

fn docs() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/pathway-language.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The rows of the first table after the line `heading`, as trimmed cells.
fn table_after(text: &str, heading: &str) -> Vec<Vec<String>> {
    let rest = text
        .split_once(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("the documentation has no `{heading}`"))
        .1;
    rest.lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

#[test]
fn the_built_in_events_table_is_the_catalogue() {
    let rows = table_after(&docs(), "#### Built-in events");
    let documented: Vec<[String; 3]> = rows
        .into_iter()
        .map(|r| {
            let cell = |i: usize| r.get(i).cloned().unwrap_or_default();
            [cell(0).trim_matches('`').to_string(), cell(1), cell(2)]
        })
        .collect();
    let catalogue: Vec<[String; 3]> = BUILTIN_EVENTS
        .iter()
        .map(|e| {
            let by = match e.source {
                EventSource::Hospital => "the hospital",
                EventSource::Engine => "the engine",
            };
            [e.pattern(), by.to_string(), e.meaning.to_string()]
        })
        .collect();
    assert_eq!(
        documented, catalogue,
        "docs/pathway-language.md's built-in events differ from catalog::BUILTIN_EVENTS"
    );
}

#[test]
fn every_diagnostic_code_is_documented_once() {
    let rows = table_after(&docs(), "## Diagnostics");
    let documented: Vec<String> = rows
        .iter()
        .map(|r| r[0].trim_matches('`').to_string())
        .collect();
    let known: Vec<String> = crate::fixtures_test::ALL_CODES
        .iter()
        .chain(crate::fixtures_test::INTAKE_CODES)
        .map(|c| c.to_string())
        .collect();
    assert_eq!(documented, known, "the documented codes, in order");
}

#[test]
fn every_guard_function_is_documented() {
    let rows = table_after(&docs(), "## The guard language");
    let documented: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    for (name, _) in crate::catalog::GUARD_FUNCTIONS {
        assert!(
            documented
                .iter()
                .any(|cell| cell.contains(&format!("`{name}("))),
            "guard function `{name}` is not in the guard language's table"
        );
    }
}
