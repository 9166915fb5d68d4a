//! A positioned YAML tree built from saphyr-parser's event stream.
//!
//! Serde deserialisation stops at the first problem and forgets where values were; authors need every
//! problem at once, each with a line and column. So the file is first read into this small tree of
//! nodes that remember their position, then lowered to the model by `lower`, which can report all
//! problems it finds. The builder is iterative (no recursion on input depth) and enforces a budget on
//! input size, nesting depth and node count, so alias bombs and 100,000-deep nesting end in one
//! diagnostic instead of a stack overflow or exhausted memory.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle};

use crate::diag::{Code, Diagnostic, Pos};

/// Limits on what one pathway file may contain.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub max_bytes: usize,
    pub max_depth: usize,
    pub max_nodes: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_bytes: 4 * 1024 * 1024,
            max_depth: 48,
            max_nodes: 200_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// A scalar with its text; `quoted` scalars are always strings.
    Scalar {
        text: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

impl Node {
    pub fn scalar(pos: Pos, text: impl Into<String>, quoted: bool) -> Node {
        Node {
            pos,
            value: Value::Scalar {
                text: text.into(),
                quoted,
            },
        }
    }

    /// The scalar text, if this node is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match &self.value {
            Value::Null => "nothing",
            Value::Scalar { .. } => "a single value",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    fn count(&self) -> usize {
        match &self.value {
            Value::Null | Value::Scalar { .. } => 1,
            Value::Seq(items) => 1 + items.iter().map(Node::count).sum::<usize>(),
            Value::Map(entries) => {
                1 + entries
                    .iter()
                    .map(|(k, v)| k.count() + v.count())
                    .sum::<usize>()
            }
        }
    }
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        pending_key: Option<Node>,
    },
}

/// Parses `text` into a node tree. Problems become diagnostics; the tree is returned only when the
/// document could be read completely.
pub fn parse(file: &str, bytes: &[u8], budget: Budget) -> Result<Node, Vec<Diagnostic>> {
    let fail = |pos: Pos, msg: String, hint: &str| {
        Err(vec![Diagnostic::error(Code::Syntax, file, pos, msg, hint)])
    };
    if bytes.len() > budget.max_bytes {
        return fail(
            Pos::START,
            format!(
                "file is {} bytes; a pathway file may be at most {} bytes",
                bytes.len(),
                budget.max_bytes
            ),
            "split the pathway into fragments, or check that this is the file you meant",
        );
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let (line, col) = line_col(bytes, e.valid_up_to());
            return fail(
                Pos { line, col },
                format!(
                    "file is not valid UTF-8 (invalid byte at offset {})",
                    e.valid_up_to()
                ),
                "save the file as UTF-8",
            );
        }
    };
    if text.trim().is_empty() {
        return fail(
            Pos::START,
            "file is empty".into(),
            "a pathway starts with `pathway: <id>`",
        );
    }

    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut nodes = 0usize;
    let mut root: Option<Node> = None;
    let mut documents = 0;

    while let Some(event) = parser.next_event() {
        let (event, span) = match event {
            Ok(ev) => ev,
            Err(e) => {
                let m = e.marker();
                if e.info() == "recursion limit exceeded" {
                    // The scanner reads a run of `[`/`{` ahead of the events and gives up at 256 levels.
                    return fail(
                        Pos {
                            line: m.line() as u32,
                            col: m.col() as u32 + 1,
                        },
                        "nesting of `[` or `{` is deeper than the YAML reader allows (255 levels)"
                            .into(),
                        "a pathway never needs this much nesting; check for a runaway list or mapping",
                    );
                }
                return fail(
                    Pos {
                        line: m.line() as u32,
                        col: m.col() as u32 + 1,
                    },
                    format!("YAML syntax error: {}", e.info()),
                    "check the indentation and the `key: value` layout around this position",
                );
            }
        };
        let pos = Pos {
            line: span.start.line() as u32,
            col: span.start.col() as u32 + 1,
        };
        let finished: Option<(Node, usize)> = match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing | Event::DocumentEnd => None,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return fail(
                        pos,
                        "file holds more than one YAML document".into(),
                        "keep one pathway per file",
                    );
                }
                None
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some(node) => {
                    nodes += node.count();
                    if nodes > budget.max_nodes {
                        return fail(
                            pos,
                            format!("aliases expand to more than {} nodes", budget.max_nodes),
                            "an alias that repeats another alias grows exponentially; write the values out or use fragments",
                        );
                    }
                    Some((node.clone(), 0))
                }
                None => {
                    return fail(
                        pos,
                        "alias to an unknown anchor".into(),
                        "define the anchor (&name) before using it (*name)",
                    );
                }
            },
            Event::Scalar(text, style, anchor, _tag) => {
                nodes += 1;
                let quoted = !matches!(style, ScalarStyle::Plain);
                let value =
                    if !quoted && matches!(text.as_ref(), "" | "~" | "null" | "Null" | "NULL") {
                        Value::Null
                    } else {
                        Value::Scalar {
                            text: text.into_owned(),
                            quoted,
                        }
                    };
                Some((Node { pos, value }, anchor))
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                nodes += 1;
                if stack.len() >= budget.max_depth {
                    return fail(
                        pos,
                        format!("nesting is deeper than {} levels", budget.max_depth),
                        "a pathway never needs this much nesting; check for a runaway list or mapping",
                    );
                }
                stack.push(if matches!(event, Event::SequenceStart(..)) {
                    Frame::Seq {
                        pos,
                        anchor,
                        items: Vec::new(),
                    }
                } else {
                    Frame::Map {
                        pos,
                        anchor,
                        entries: Vec::new(),
                        pending_key: None,
                    }
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq { pos, anchor, items }) => Some((
                    Node {
                        pos,
                        value: Value::Seq(items),
                    },
                    anchor,
                )),
                Some(Frame::Map {
                    pos,
                    anchor,
                    entries,
                    ..
                }) => Some((
                    Node {
                        pos,
                        value: Value::Map(entries),
                    },
                    anchor,
                )),
                None => None,
            },
        };
        if nodes > budget.max_nodes {
            return fail(
                pos,
                format!("file has more than {} values", budget.max_nodes),
                "split the pathway into fragments",
            );
        }
        let Some((node, anchor)) = finished else {
            continue;
        };
        if anchor != 0 {
            anchors.insert(anchor, node.clone());
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => entries.push((key, node)),
            },
        }
    }
    match root {
        Some(root) => Ok(root),
        None => fail(
            Pos::START,
            "file holds no YAML document".into(),
            "a pathway starts with `pathway: <id>`",
        ),
    }
}

fn line_col(bytes: &[u8], offset: usize) -> (u32, u32) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let col = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
    (line as u32, col as u32)
}

/// The tree as JSON, for documents read with serde (pathway tests, scenarios, scales): plain
/// scalars that look like numbers or booleans become numbers or booleans.
pub fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value as J;
    match &node.value {
        Value::Null => J::Null,
        Value::Scalar { text, quoted: true } => J::String(text.clone()),
        Value::Scalar {
            text,
            quoted: false,
        } => match text.as_str() {
            "true" => J::Bool(true),
            "false" => J::Bool(false),
            t => {
                if let Ok(i) = t.parse::<i64>() {
                    J::from(i)
                } else if let Some(f) = t.parse::<f64>().ok().filter(|f| f.is_finite()) {
                    J::from(f)
                } else {
                    J::String(t.to_string())
                }
            }
        },
        Value::Seq(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => J::Object(
            entries
                .iter()
                .map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), to_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Node, Vec<Diagnostic>> {
        parse("t.yaml", s.as_bytes(), Budget::default())
    }

    #[test]
    fn positions_are_one_based() {
        let root = parse_str("a: 1\nb:\n  - x\n").unwrap();
        let Value::Map(entries) = root.value else {
            panic!("not a map")
        };
        assert_eq!(entries[0].0.pos, Pos { line: 1, col: 1 });
        assert_eq!(entries[1].1.pos.line, 3);
        let Value::Seq(items) = &entries[1].1.value else {
            panic!("not a seq")
        };
        assert_eq!(items[0].pos, Pos { line: 3, col: 5 });
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let deep = "[".repeat(100_000);
        let err = parse_str(&deep).unwrap_err();
        assert!(err[0].message.contains("nesting"), "{:?}", err);
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut s = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = i - 1;
            s.push_str(&format!("a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"));
        }
        let err = parse_str(&s).unwrap_err();
        assert!(err[0].message.contains("aliases"), "{:?}", err);
    }

    #[test]
    fn non_utf8_is_located() {
        let err = parse("t.yaml", b"a: 1\nb: \xff\n", Budget::default()).unwrap_err();
        assert_eq!(err[0].pos, Pos { line: 2, col: 4 });
    }

    #[test]
    fn empty_and_oversized_files_are_refused() {
        assert!(parse_str("  \n").is_err());
        let big = vec![b'a'; Budget::default().max_bytes + 1];
        assert!(parse("t.yaml", &big, Budget::default()).is_err());
    }
}
