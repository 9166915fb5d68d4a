//! Tidy checks that hold the code map's invariants: only the store crate (`store/src/`) holds SQL.
//!
//! The check reads every `.rs` file of the workspace as tokens (comments dropped, string literals
//! kept whole, `#[cfg(test)]` modules skipped) and names the file and line of anything that talks
//! to the database: the `sqlx` crate, `query_as`/`query_scalar`, a statement method called on a
//! pool or transaction (`.fetch(`, `.exec(`, `.execute(` …), or a string literal that begins
//! with an SQL statement. Test folders and migrations are not product code and are not read.

use std::path::{Path, PathBuf};

/// Where SQL may live, relative to the workspace root.
const STORE: &str = "store/src";

/// Folders never read: build output, version control, tests, migrations.
const SKIPPED_DIRS: &[&str] = &["target", ".git", "tests", "benches", "migrations"];

/// Methods that run a statement on a pool or a transaction (ours and sqlx's).
const STATEMENT_METHODS: &[&str] = &[
    "fetch",
    "fetch_one",
    "fetch_all",
    "fetch_optional",
    "execute",
    "exec",
    "exec_each",
    "exec_columns",
    "exec_script",
];

/// sqlx's query builders, whatever path they are reached by.
const QUERY_BUILDERS: &[&str] = &[
    "query_as",
    "query_scalar",
    "query_as_with",
    "query_scalar_with",
];

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Punct(char),
    Str(String),
}

/// Tokens of Rust source with their 1-based lines: identifiers, punctuation and the contents of
/// string literals (raw and byte strings too); comments, char literals, lifetimes and numbers are
/// dropped.
fn tokens(src: &str) -> Vec<(usize, Tok)> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    let count_lines = |from: usize, to: usize| c[from..to].iter().filter(|&&ch| ch == '\n').count();
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            let start = i;
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            line += count_lines(start, i);
        } else if let Some((content, end)) = string_at(&c, i) {
            out.push((line, Tok::Str(content)));
            line += count_lines(i, end);
            i = end;
        } else if ch == '\'' {
            // A char literal ('a', '\n', '\u{1F600}') or a lifetime ('a).
            if next == Some('\\') {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push((line, Tok::Ident(c[start..i].iter().collect())));
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_' || c[i] == '.') {
                if c[i] == '.' && !c.get(i + 1).is_some_and(char::is_ascii_digit) {
                    break;
                }
                i += 1;
            }
        } else {
            out.push((line, Tok::Punct(ch)));
            i += 1;
        }
    }
    out
}

/// The string literal starting at `i` ("…", r"…", r#"…"#, b"…", br"…"), as its contents and the
/// index just past it.
fn string_at(c: &[char], i: usize) -> Option<(String, usize)> {
    let mut j = i;
    // A prefix must not be the tail of an identifier (`attr"` is not a byte string).
    if i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_') {
        return None;
    }
    if c.get(j) == Some(&'b') || c.get(j) == Some(&'c') {
        j += 1;
    }
    if c.get(j) == Some(&'r') {
        j += 1;
        let mut hashes = 0;
        while c.get(j) == Some(&'#') {
            hashes += 1;
            j += 1;
        }
        if c.get(j) != Some(&'"') {
            return None;
        }
        let start = j + 1;
        let mut k = start;
        while k < c.len() {
            if c[k] == '"' && (0..hashes).all(|h| c.get(k + 1 + h) == Some(&'#')) {
                return Some((c[start..k].iter().collect(), k + 1 + hashes));
            }
            k += 1;
        }
        return Some((c[start..].iter().collect(), c.len()));
    }
    if c.get(j) != Some(&'"') {
        return None;
    }
    let start = j + 1;
    let mut k = start;
    while k < c.len() {
        match c[k] {
            '\\' => k += 2,
            '"' => return Some((c[start..k].iter().collect(), k + 1)),
            _ => k += 1,
        }
    }
    Some((c[start..].iter().collect(), c.len()))
}

/// Whether a string literal's text is an SQL statement: it opens with a statement keyword (in
/// capitals, as every statement here is written) followed by what that statement needs.
fn is_sql(text: &str) -> bool {
    let words: Vec<&str> = text
        .split(|ch: char| ch.is_whitespace() || ch == '(' || ch == ';')
        .filter(|w| !w.is_empty())
        .take(4)
        .collect();
    let Some(first) = words.first() else {
        return false;
    };
    let second = words.get(1).map(|w| w.to_ascii_uppercase());
    let second = second.as_deref();
    let is_name = |w: Option<&&str>| {
        w.is_some_and(|w| {
            w.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '{' || ch == '}')
        })
    };
    match *first {
        "SELECT" => second.is_some(),
        "INSERT" => matches!(second, Some("INTO" | "OR")),
        "UPDATE" => is_name(words.get(1)) && words.get(2).is_some_and(|w| *w == "SET"),
        "DELETE" => second == Some("FROM"),
        "CREATE" => matches!(
            second,
            Some(
                "TABLE"
                    | "INDEX"
                    | "UNIQUE"
                    | "DATABASE"
                    | "VIEW"
                    | "TRIGGER"
                    | "SCHEMA"
                    | "TEMP"
                    | "TEMPORARY"
                    | "SEQUENCE"
                    | "EXTENSION"
                    | "OR"
            )
        ),
        "ALTER" | "DROP" => matches!(
            second,
            Some("TABLE" | "INDEX" | "DATABASE" | "VIEW" | "TRIGGER" | "SCHEMA" | "SEQUENCE")
        ),
        "PRAGMA" => is_name(words.get(1)),
        "BEGIN" => matches!(
            second,
            None | Some("IMMEDIATE" | "DEFERRED" | "EXCLUSIVE" | "TRANSACTION" | "WORK")
        ),
        "ANALYZE" | "VACUUM" => second.is_none(),
        _ => false,
    }
}

/// Every place in `src` that talks to the database, as (line, what).
fn sql_in(src: &str) -> Vec<(usize, String)> {
    let toks = tokens(src);
    let mut found = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let (line, tok) = &toks[i];
        let at = |k: usize| toks.get(k).map(|(_, t)| t);
        // `#[cfg(test)] mod name { … }`: tests, not product code.
        if *tok == Tok::Punct('#')
            && at(i + 1) == Some(&Tok::Punct('['))
            && at(i + 2) == Some(&Tok::Ident("cfg".into()))
            && at(i + 3) == Some(&Tok::Punct('('))
            && at(i + 4) == Some(&Tok::Ident("test".into()))
            && at(i + 5) == Some(&Tok::Punct(')'))
            && at(i + 6) == Some(&Tok::Punct(']'))
            && at(i + 7) == Some(&Tok::Ident("mod".into()))
            && at(i + 9) == Some(&Tok::Punct('{'))
        {
            let mut depth = 0;
            i += 9;
            while i < toks.len() {
                match toks[i].1 {
                    Tok::Punct('{') => depth += 1,
                    Tok::Punct('}') => depth -= 1,
                    _ => {}
                }
                i += 1;
                if depth == 0 {
                    break;
                }
            }
            continue;
        }
        match tok {
            Tok::Ident(name) if name == "sqlx" && at(i + 1) == Some(&Tok::Punct(':')) => {
                found.push((*line, "uses sqlx".to_string()));
            }
            Tok::Ident(name) if QUERY_BUILDERS.contains(&name.as_str()) => {
                found.push((*line, format!("calls `{name}`")));
            }
            Tok::Punct('.') => {
                if let (Some(Tok::Ident(m)), Some(Tok::Punct('('))) = (at(i + 1), at(i + 2))
                    && STATEMENT_METHODS.contains(&m.as_str())
                {
                    found.push((*line, format!("runs a statement with `.{m}(`")));
                }
            }
            Tok::Str(text) if is_sql(text.trim_start()) => {
                let first: String = text.trim().chars().take(60).collect();
                found.push((*line, format!("holds SQL \"{first}\"")));
            }
            _ => {}
        }
        i += 1;
    }
    found
}

fn rust_files(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap_or(&path);
        if path.is_dir() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if SKIPPED_DIRS.contains(&name.as_ref()) || rel == Path::new(STORE) {
                continue;
            }
            rust_files(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn only_the_store_holds_sql() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(root, root, &mut files);
    files.sort();
    assert!(
        files.iter().any(|f| f.ends_with("admin-api/src/lib.rs")),
        "the scan did not reach the admin API"
    );
    let mut problems = Vec::new();
    for file in &files {
        let src = std::fs::read_to_string(file).expect("a readable source file");
        for (line, what) in sql_in(&src) {
            let rel = file.strip_prefix(root).unwrap_or(file);
            problems.push(format!("{}:{line}: {what}", rel.display()));
        }
    }
    assert!(
        problems.is_empty(),
        "SQL outside {STORE}/ (move it into a store function):\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_sql_check_sees_what_it_must_and_nothing_else() {
    let caught = |src: &str| sql_in(src).into_iter().map(|(l, _)| l).collect::<Vec<_>>();
    // Each of these talks to the database.
    assert_eq!(
        caught("async fn h() {\n    sqlx::query(\"SELECT 1\").execute(&pool).await;\n}"),
        vec![2, 2, 2]
    );
    assert_eq!(caught("let r = query_as::<_, Row>(q);"), vec![1]);
    assert_eq!(caught("pool.fetch(&sql, vec![]).await?;"), vec![1]);
    assert_eq!(caught("tx.exec(q, a)"), vec![1]);
    assert_eq!(caught("let q = r#\"\n  DELETE FROM staff\"#;"), vec![1]);
    for sql in [
        "SELECT id FROM tasks",
        "INSERT INTO t VALUES (1)",
        "UPDATE tasks SET status = 'done'",
        "UPDATE {copy} SET x = 1",
        "CREATE TABLE t (id INTEGER)",
        "CREATE UNIQUE INDEX i ON t (id)",
        "ALTER TABLE t ADD COLUMN c TEXT",
        "DROP TABLE IF EXISTS t",
        "PRAGMA journal_mode = WAL",
        "BEGIN IMMEDIATE",
        "BEGIN",
        "ANALYZE",
    ] {
        assert!(is_sql(sql), "{sql} is SQL");
        assert_eq!(caught(&format!("let s = \"{sql}\";")), vec![1], "{sql}");
    }
    // None of these does.
    for text in [
        "Select a pathway",
        "SELECT",
        "UPDATE the record",
        "DELETE the draft",
        "BEGIN here",
        "CREATE a patient",
        "the SELECT statement",
    ] {
        assert!(!is_sql(text), "{text} is not SQL");
    }
    let quiet = [
        "// pool.fetch(\"SELECT 1\")",
        "/* sqlx::query(\"SELECT 1\") */",
        "/// `tx.exec(\"DELETE FROM t\")`",
        "let n = counter.fetch_add(1, Ordering::Relaxed);",
        "let c = '\"'; let s = \"text\";",
        "fn f<'a>(x: &'a str) -> &'a str { x }",
        "#[cfg(test)]\nmod tests {\n    fn t() { pool.fetch(\"SELECT 1\", vec![]); }\n}",
    ];
    for src in quiet {
        assert!(sql_in(src).is_empty(), "{src}: {:?}", sql_in(src));
    }
    // Code after a test module is read again.
    assert_eq!(
        caught(
            "#[cfg(test)]\nmod tests {\n    fn t() {}\n}\nfn g() { pool.exec(\"ANALYZE\", vec![]) }"
        ),
        vec![5, 5]
    );
}
