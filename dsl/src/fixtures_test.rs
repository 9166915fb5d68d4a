//! The data-driven suite: every file under `tests/fixtures/broken/` is a deliberately broken pathway
//! whose first line lists the diagnostics it must produce, and every file under
//! `tests/fixtures/good/` must compile without a single diagnostic.
//!
//! The first line of a broken fixture is `# expect: E002@16:5 E007@10:12` (YAML) or
//! `// expect: E021@3:1` (Rhai). Each entry is `CODE@LINE:COL`, or `CODE@PATH:LINE:COL` for a
//! diagnostic located in another file (a fragment), with PATH relative to the fixture's folder.
//! The set of (code, file, line, col) of all diagnostics must equal the expected set exactly.
//! Inputs too large to keep in the repository (100,000-deep nesting) are generated here and
//! checked the same way.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::{
    Compiled, Diagnostic, FsLoader, compile_file, compile_rhai, compile_yaml, pathway_files,
};

/// Every code the validator can produce; each must be exercised by at least one broken fixture.
pub(crate) const ALL_CODES: &[&str] = &[
    "E001", "E002", "E003", "E004", "E005", "E006", "E007", "E008", "E009", "E010", "E011", "E012",
    "E013", "E014", "E015", "E016", "E017", "E018", "E019", "E020", "E021", "E022", "E023", "E024",
    "E025", "E026", "E027", "W001", "W002", "W003", "W004", "W005", "W006",
];

/// Every code of the case intake rules; each must be exercised by a fixture under
/// `tests/fixtures/intake/broken/`.
pub(crate) const INTAKE_CODES: &[&str] = &[
    "I001", "I002", "I003", "I004", "I005", "I006", "I007", "I008",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

/// (code, file relative to the fixture's folder or "" for the fixture itself, line, col)
type Key = (String, String, u32, u32);

fn parse_expect(first_line: &str) -> Result<BTreeSet<Key>, String> {
    let rest = first_line
        .strip_prefix("# expect:")
        .or_else(|| first_line.strip_prefix("// expect:"))
        .ok_or_else(|| {
            format!("first line must be `# expect: …` or `// expect: …`, found `{first_line}`")
        })?;
    let mut out = BTreeSet::new();
    for item in rest.split_whitespace() {
        let bad = || format!("bad expectation `{item}`; write CODE@LINE:COL or CODE@PATH:LINE:COL");
        let (code, place) = item.split_once('@').ok_or_else(bad)?;
        let mut parts: Vec<&str> = place.rsplitn(3, ':').collect();
        parts.reverse();
        let (file, line, col) = match parts.as_slice() {
            [line, col] => ("", *line, *col),
            [file, line, col] => (*file, *line, *col),
            _ => return Err(bad()),
        };
        let line: u32 = line.parse().map_err(|_| bad())?;
        let col: u32 = col.parse().map_err(|_| bad())?;
        if !ALL_CODES.contains(&code) && !INTAKE_CODES.contains(&code) {
            return Err(format!("unknown code `{code}` in `{item}`"));
        }
        out.insert((code.to_string(), file.to_string(), line, col));
    }
    Ok(out)
}

fn key_of(d: &Diagnostic, own_file: &str, dir: &Path) -> Key {
    let file = if d.file == own_file {
        String::new()
    } else {
        Path::new(&d.file)
            .strip_prefix(dir)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| d.file.clone())
    };
    (d.code.as_str().to_string(), file, d.pos.line, d.pos.col)
}

fn show(k: &Key) -> String {
    if k.1.is_empty() {
        format!("{}@{}:{}", k.0, k.2, k.3)
    } else {
        format!("{}@{}:{}:{}", k.0, k.1, k.2, k.3)
    }
}

/// Compares a compilation with its expectation; returns a readable report of any difference.
fn compare(
    name: &str,
    compiled: &Compiled,
    dir: &Path,
    expected: &BTreeSet<Key>,
) -> Option<String> {
    let actual: BTreeSet<Key> = compiled
        .diagnostics
        .iter()
        .map(|d| key_of(d, &compiled.file, dir))
        .collect();
    if &actual == expected {
        return None;
    }
    let mut report = format!(
        "\n== {name}\n   expected: {}\n   actual:   {}\n",
        join(expected),
        join(&actual)
    );
    for k in expected.difference(&actual) {
        report.push_str(&format!("   - missing    {}\n", show(k)));
    }
    for d in &compiled.diagnostics {
        let k = key_of(d, &compiled.file, dir);
        if !expected.contains(&k) {
            report.push_str(&format!(
                "   + unexpected {}  {}  (hint: {})\n",
                show(&k),
                d.message,
                d.hint
            ));
        }
    }
    Some(report)
}

fn join(set: &BTreeSet<Key>) -> String {
    if set.is_empty() {
        return "(none)".into();
    }
    set.iter().map(show).collect::<Vec<_>>().join(" ")
}

fn broken_files() -> Vec<PathBuf> {
    files_in(&fixtures().join("broken"))
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn broken_fixtures_produce_exactly_their_diagnostics() {
    let files = broken_files();
    assert!(!files.is_empty(), "no broken fixtures found");
    let mut failures = String::new();
    let mut covered: BTreeSet<String> = BTreeSet::new();
    for path in &files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string();
        let bytes = std::fs::read(path).expect("read fixture");
        let first = bytes.split(|b| *b == b'\n').next().unwrap_or(&[]);
        let expected = match parse_expect(String::from_utf8_lossy(first).trim_end()) {
            Ok(e) => e,
            Err(e) => {
                failures.push_str(&format!("\n== {name}\n   {e}\n"));
                continue;
            }
        };
        // The file name starts with the code it is about: `e002_unknown_key.yaml` must expect E002.
        let named = name.split('_').next().unwrap_or("").to_uppercase();
        if !expected.iter().any(|k| k.0 == named) {
            failures.push_str(&format!(
                "\n== {name}\n   the file is named for {named} but does not expect it\n"
            ));
        }
        covered.extend(expected.iter().map(|k| k.0.clone()));
        let started = std::time::Instant::now();
        let compiled = compile_file(path);
        let elapsed = started.elapsed();
        if elapsed.as_secs() >= 10 {
            failures.push_str(&format!("\n== {name}\n   took {elapsed:?}\n"));
        }
        if let Some(report) = compare(&name, &compiled, path.parent().expect("parent"), &expected) {
            failures.push_str(&report);
        }
    }
    let uncovered: Vec<&&str> = ALL_CODES
        .iter()
        .filter(|c| !covered.contains(**c))
        .collect();
    if !uncovered.is_empty() {
        failures.push_str(&format!(
            "\n== coverage\n   no broken fixture expects {uncovered:?}\n"
        ));
    }
    assert!(
        failures.is_empty(),
        "broken fixtures do not match their expectations:{failures}"
    );
}

/// Inputs too large to store, generated here and held to exact expectations like the stored ones.
#[test]
fn generated_broken_inputs_produce_exactly_their_diagnostics() {
    let dir = Path::new("");
    let cases: Vec<(&str, Vec<u8>, bool, &str)> = vec![
        (
            "100,000-deep flow sequence",
            "[".repeat(100_000).into_bytes(),
            false,
            "# expect: E001@1:256",
        ),
        (
            "100,000-deep flow mapping",
            "{a: ".repeat(100_000).into_bytes(),
            false,
            "# expect: E001@1:1021",
        ),
        (
            "100,000-deep block sequence",
            "- ".repeat(100_000).into_bytes(),
            false,
            "# expect: E001@1:97",
        ),
        (
            "100,000-deep Rhai array",
            "[".repeat(100_000).into_bytes(),
            true,
            "// expect: E021@1:22",
        ),
    ];
    let mut failures = String::new();
    for (name, bytes, rhai, expect) in cases {
        let expected = parse_expect(expect).expect("expectation");
        let started = std::time::Instant::now();
        let compiled = if rhai {
            compile_rhai("gen.rhai", &bytes, dir, &FsLoader)
        } else {
            compile_yaml("gen.yaml", &bytes, dir, &FsLoader)
        };
        assert!(
            started.elapsed().as_secs() < 10,
            "{name} took {:?}",
            started.elapsed()
        );
        if let Some(report) = compare(name, &compiled, dir, &expected) {
            failures.push_str(&report);
        }
    }
    assert!(
        failures.is_empty(),
        "generated inputs do not match their expectations:{failures}"
    );
}

#[test]
fn good_fixtures_have_no_diagnostics() {
    let dir = fixtures().join("good");
    let files = pathway_files(std::slice::from_ref(&dir)).expect("list good fixtures");
    assert!(
        files.len() >= 2,
        "expected good fixtures in {}",
        dir.display()
    );
    let mut failures = String::new();
    for path in &files {
        let compiled = compile_file(path);
        for d in &compiled.diagnostics {
            failures.push_str(&format!("\n{d}"));
        }
        if compiled.kind == crate::DocKind::Pathway && compiled.pathway.is_none() {
            failures.push_str(&format!("\n{}: no pathway was built", path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "good fixtures produced diagnostics:{failures}"
    );
}

#[test]
fn expectation_lines_parse() {
    let e = parse_expect("# expect: E002@16:5 W004@fragments/f.yaml:3:7").unwrap();
    assert!(e.contains(&("E002".into(), String::new(), 16, 5)));
    assert!(e.contains(&("W004".into(), "fragments/f.yaml".into(), 3, 7)));
    assert!(parse_expect("# expect:").unwrap().is_empty());
    assert!(parse_expect("# nothing").is_err());
    assert!(parse_expect("# expect: E999@1:1").is_err());
    assert!(parse_expect("# expect: E001@1").is_err());
}

/// The repository's pathways: what the intake fixtures enrol in.
fn repo_pathways() -> Vec<Compiled> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pathways");
    pathway_files(std::slice::from_ref(&dir))
        .expect("list pathways")
        .iter()
        .map(|p| compile_file(p))
        .filter(|c| c.kind == crate::DocKind::Pathway)
        .collect()
}

/// Intake rule files checked with the repository's pathways: each broken one produces exactly
/// the diagnostics of its first line, each good one none, and every intake code is exercised.
#[test]
fn intake_fixtures_produce_exactly_their_diagnostics() {
    let dir = fixtures().join("intake");
    let pathways = repo_pathways();
    assert!(pathways.len() >= 5, "the repository's pathways");
    let mut failures = String::new();
    let mut covered: BTreeSet<String> = BTreeSet::new();
    for (folder, broken) in [("broken", true), ("good", false)] {
        for path in files_in(&dir.join(folder)) {
            let name = format!(
                "{folder}/{}",
                path.file_name().and_then(|n| n.to_str()).unwrap_or("?")
            );
            let text = std::fs::read_to_string(&path).expect("read fixture");
            let expected = if broken {
                match parse_expect(text.lines().next().unwrap_or("").trim_end()) {
                    Ok(e) => e,
                    Err(e) => {
                        failures.push_str(&format!("\n== {name}\n   {e}\n"));
                        continue;
                    }
                }
            } else {
                BTreeSet::new()
            };
            covered.extend(expected.iter().map(|k| k.0.clone()));
            let mut compiled = compile_file(&path);
            assert_eq!(
                compiled.kind,
                crate::DocKind::Intake,
                "{name} is a rule file"
            );
            let mut all = pathways.clone();
            all.push(compiled.clone());
            compiled.diagnostics.extend(crate::check_intake(&all));
            if let Some(report) = compare(&name, &compiled, &dir.join(folder), &expected) {
                failures.push_str(&report);
            }
        }
    }
    let uncovered: Vec<&&str> = INTAKE_CODES
        .iter()
        .filter(|c| !covered.contains(**c))
        .collect();
    if !uncovered.is_empty() {
        failures.push_str(&format!(
            "\n== coverage\n   no intake fixture expects {uncovered:?}\n"
        ));
    }
    assert!(
        failures.is_empty(),
        "intake fixtures do not match their expectations:{failures}"
    );
}

/// The repository's own rules check cleanly against the repository's pathways.
#[test]
fn the_repository_intake_rules_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pathways");
    let compiled: Vec<Compiled> = pathway_files(std::slice::from_ref(&dir))
        .expect("list pathways")
        .iter()
        .map(|p| compile_file(p))
        .collect();
    let rules: Vec<&Compiled> = compiled
        .iter()
        .filter(|c| c.kind == crate::DocKind::Intake)
        .collect();
    assert!(rules.len() >= 5, "rule files under pathways/intake");
    let mut diags: Vec<String> = rules
        .iter()
        .flat_map(|c| c.diagnostics.iter())
        .map(|d| d.to_string())
        .collect();
    diags.extend(crate::check_intake(&compiled).iter().map(|d| d.to_string()));
    assert!(diags.is_empty(), "{}", diags.join("\n"));
}
