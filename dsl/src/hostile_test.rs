//! Hostile input: each of these must end in a located diagnostic, never a panic, a stack overflow or
//! a hang. The time bound is a sanity bound (a hang, not a slow machine), not a performance target.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::{Code, Compiled, FsLoader, compile_rhai, compile_yaml};

const SANITY: Duration = Duration::from_secs(10);

fn yaml(name: &str, bytes: &[u8]) -> Compiled {
    run(name, || {
        compile_yaml("hostile.yaml", bytes, Path::new(""), &FsLoader)
    })
}

fn rhai(name: &str, bytes: &[u8]) -> Compiled {
    run(name, || {
        compile_rhai("hostile.rhai", bytes, Path::new(""), &FsLoader)
    })
}

fn run(name: &str, f: impl FnOnce() -> Compiled) -> Compiled {
    let started = Instant::now();
    let compiled = f();
    let elapsed = started.elapsed();
    assert!(elapsed < SANITY, "{name}: took {elapsed:?}");
    assert!(!compiled.diagnostics.is_empty(), "{name}: no diagnostic");
    assert!(!compiled.is_ok(), "{name}: accepted");
    for d in &compiled.diagnostics {
        assert!(
            d.pos.line >= 1 && d.pos.col >= 1,
            "{name}: diagnostic at {:?}: {d}",
            d.pos
        );
    }
    compiled
}

fn only(name: &str, c: &Compiled, code: Code, needle: &str) {
    assert_eq!(c.diagnostics.len(), 1, "{name}: {:#?}", c.diagnostics);
    let d = &c.diagnostics[0];
    assert_eq!(d.code, code, "{name}: {d}");
    assert!(
        d.message.contains(needle),
        "{name}: `{}` does not mention `{needle}`",
        d.message
    );
}

/// Nine levels of ten aliases each: a billion nodes if expanded.
fn billion_laughs() -> String {
    let mut s =
        String::from("pathway: lol\nl0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..=9 {
        let p = format!("*l{}", i - 1);
        let items = [p.as_str(); 10].join(", ");
        s.push_str(&format!("l{i}: &l{i} [{items}]\n"));
    }
    s
}

#[test]
fn yaml_alias_bomb() {
    let c = yaml("alias bomb", billion_laughs().as_bytes());
    only("alias bomb", &c, Code::Syntax, "aliases expand");
}

#[test]
fn yaml_alias_bomb_in_mapping_values() {
    // The same explosion through mappings instead of sequences.
    let mut s = String::from(
        "a0: &a0 {k0: x, k1: x, k2: x, k3: x, k4: x, k5: x, k6: x, k7: x, k8: x, k9: x}\n",
    );
    for i in 1..=9 {
        let p = i - 1;
        let entries: Vec<String> = (0..10).map(|k| format!("k{k}: *a{p}")).collect();
        s.push_str(&format!("a{i}: &a{i} {{{}}}\n", entries.join(", ")));
    }
    let c = yaml("mapping alias bomb", s.as_bytes());
    only("mapping alias bomb", &c, Code::Syntax, "aliases expand");
}

#[test]
fn yaml_deep_flow_sequence() {
    let c = yaml("[[[[", "[".repeat(100_000).as_bytes());
    only("[[[[", &c, Code::Syntax, "nesting");
    let closed = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let c = yaml("[[[[…]]]]", closed.as_bytes());
    only("[[[[…]]]]", &c, Code::Syntax, "nesting");
}

#[test]
fn yaml_deep_flow_mapping() {
    let c = yaml("{a: {a: …", "{a: ".repeat(100_000).as_bytes());
    only("{a: {a: …", &c, Code::Syntax, "nesting");
    let closed = format!("{}1{}", "{a: ".repeat(100_000), "}".repeat(100_000));
    let c = yaml("{a: {a: 1}}", closed.as_bytes());
    only("{a: {a: 1}}", &c, Code::Syntax, "nesting");
}

#[test]
fn yaml_deep_block_nesting() {
    let c = yaml("- - - -", "- ".repeat(100_000).as_bytes());
    only("- - - -", &c, Code::Syntax, "nesting");
    // Indented block mappings: the file grows with the square of the depth, so 2,000 levels.
    let s: String = (0..2_000)
        .map(|i| format!("{}a:\n", " ".repeat(i)))
        .collect();
    let c = yaml("a:\\n a:", s.as_bytes());
    only("a:\\n a:", &c, Code::Syntax, "nesting");
}

#[test]
fn yaml_fifty_megabytes_is_refused_by_size() {
    let mut big = b"pathway: big\nstates:\n".to_vec();
    big.resize(50 * 1024 * 1024, b'a');
    // Refused by its size alone: the message names the size, not a syntax or content problem.
    let c = yaml("50 MB", &big);
    only("50 MB", &c, Code::Syntax, "bytes");
    let c = rhai("50 MB rhai", &big);
    only("50 MB rhai", &c, Code::Script, "bytes");
}

#[test]
fn non_utf8() {
    let c = yaml("latin-1", b"pathway: caf\xe9\nversion: 1\n");
    only("latin-1", &c, Code::Syntax, "UTF-8");
    assert_eq!(
        (c.diagnostics[0].pos.line, c.diagnostics[0].pos.col),
        (1, 13)
    );
    let c = yaml("UTF-16", b"\xff\xfep\x00a\x00");
    only("UTF-16", &c, Code::Syntax, "UTF-8");
    let c = rhai("latin-1 rhai", b"let p = \"caf\xe9\";\np");
    only("latin-1 rhai", &c, Code::Script, "UTF-8");
}

#[test]
fn empty_and_blank() {
    for src in ["", " ", "\n\n\t\n", "# only a comment\n", "---\n", "...\n"] {
        let c = yaml(src, src.as_bytes());
        assert_eq!(c.diagnostics.len(), 1, "{src:?}: {:#?}", c.diagnostics);
        assert_eq!(c.diagnostics[0].code, Code::Syntax, "{src:?}");
    }
    for src in ["", "  \n", "// nothing\n"] {
        let c = rhai(src, src.as_bytes());
        only(src, &c, Code::Script, "last value");
    }
}

#[test]
fn not_a_pathway_document() {
    for src in [
        "- pathway: x\n- version: 1\n",
        "[1, 2, 3]",
        "just a sentence",
        "42",
        "\"quoted\"",
    ] {
        let c = yaml(src, src.as_bytes());
        only(src, &c, Code::Syntax, "mapping");
    }
    let c = rhai("rhai list", b"[1, 2, 3]");
    only("rhai list", &c, Code::Script, "last value");
}

#[test]
fn two_documents() {
    let c = yaml("two documents", b"pathway: a\n---\npathway: b\n");
    only("two documents", &c, Code::Syntax, "more than one");
}

#[test]
fn duplicate_keys() {
    let src = "pathway: a\npathway: b\nversion: 1\ntitle: t\nowner_role: admin\nroles: [admin]\nentry_points: []\nstates: []\n";
    let c = yaml("duplicate keys", src.as_bytes());
    assert!(
        c.diagnostics
            .iter()
            .any(|d| d.code == Code::DuplicateKey && d.pos.line == 2),
        "{:#?}",
        c.diagnostics
    );
    // Ten thousand copies of the same key.
    let many: String = std::iter::once("pathway: a\n")
        .chain(std::iter::repeat_n("version: 1\n", 10_000))
        .collect();
    let c = yaml("10,000 duplicate keys", many.as_bytes());
    assert!(
        c.diagnostics
            .iter()
            .filter(|d| d.code == Code::DuplicateKey)
            .count()
            >= 9_999
    );
}

#[test]
fn hostile_guards() {
    let guard = |g: &str| {
        format!(
            "pathway: g\nversion: 1\ntitle: t\nowner_role: admin\nroles: [admin]\nentry_points: [{{ id: e, state: a }}]\nstates:\n  - id: a\n    phase: follow_up\n    transitions:\n      - when: '{g}'\n        to: b\n  - {{ id: b, phase: closed, terminal: true }}\n"
        )
    };
    for g in [
        "(".repeat(100_000),
        format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000)),
        "loop { }".into(),
        "fn f(x) { f(x) } f(1)".into(),
        "let s = \"x\"; s".into(),
        "\"".repeat(3),
        format!("\"{}\".len() > 1", "x".repeat(100_000)),
        "[".repeat(100_000),
        "score(\"epds\") ".repeat(10_000),
    ] {
        let src = guard(&g);
        let c = yaml(&g[..g.len().min(40)], src.as_bytes());
        assert!(
            c.diagnostics.iter().any(|d| d.code == Code::ExprSyntax),
            "{}: {:#?}",
            &g[..g.len().min(40)],
            c.diagnostics
        );
    }
}

#[test]
fn runaway_rhai_scripts() {
    for src in [
        "loop {}",
        "while true { }",
        "let i = 0; while i >= 0 { i += 1; }",
        "fn f(x) { f(x + 1) } f(0)",
        "fn f(x) { f(x) + f(x) } f(0)",
        "let s = \"x\"; loop { s += s; }",
        "let s = \"x\"; for i in 0..100 { s = s + s; } s",
        "\"x\".pad(100000000, \"y\")",
        "let a = []; loop { a.push(1); }",
        "let a = [1]; loop { a += a; }",
        "let m = #{}; let i = 0; loop { m[`k${i}`] = i; i += 1; }",
        "let f = |x| x; loop { f = |x| f.call(x); }",
        "let p = pathway(\"x\", 1, \"a\", \"b\"); loop { p.add(state(\"s\", \"follow_up\")); }",
    ] {
        let c = rhai(src, src.as_bytes());
        assert!(
            c.diagnostics.iter().all(|d| d.code == Code::Script),
            "{src}: {:#?}",
            c.diagnostics
        );
    }
}

#[test]
fn deep_rhai_input() {
    for src in [
        "[".repeat(100_000),
        "(".repeat(100_000),
        "#{a: ".repeat(100_000),
        "{".repeat(100_000),
        "-".repeat(100_000) + "1",
    ] {
        let c = rhai(&src[..8], src.as_bytes());
        assert!(
            c.diagnostics.iter().all(|d| d.code == Code::Script),
            "{}: {:#?}",
            &src[..8],
            c.diagnostics
        );
    }
    // A deeply nested value built at run time rather than written out.
    let src = "let v = 1; for i in 0..1000 { v = [v]; } v";
    rhai("deep value", src.as_bytes());
    let src = "let p = pathway(\"x\", 1, \"a\", \"b\"); let v = p; for i in 0..1000 { v = #{ states: [v] }; } v";
    rhai("deep map", src.as_bytes());
}
