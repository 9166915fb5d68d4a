//! The Rhai front-end: a `.rhai` script builds a pathway through a small builder API.
//!
//! Builders return plain maps in the same shape as the YAML form, stamped with the position of the
//! builder call. The script's result is turned into the same positioned tree the YAML front-end
//! produces and lowered by the same code, so both front-ends give the same model and the same
//! diagnostics, and a diagnostic in a Rhai pathway points at the builder call that made the part.
//! The script runs in a sandbox: no modules, no I/O, and caps on operations, depth and sizes, so a
//! script that loops or recurses forever ends in an error quickly.

use std::time::Instant;

use rhai::packages::{Package, StandardPackage};
use rhai::{Array, Dynamic, Engine, EvalAltResult, Map, NativeCallContext, Position};

use crate::diag::{Code, Diagnostic, Pos};
use crate::yaml::{Node, Value};

const AT: &str = "__at";
/// The token a script stopped at its deadline ends with.
const TOO_LONG: &str = "__deadline";

fn at(ctx: &NativeCallContext) -> Dynamic {
    let p = ctx.call_position();
    Dynamic::from(format!(
        "{}:{}",
        p.line().unwrap_or(1),
        p.position().unwrap_or(1)
    ))
}

fn map(ctx: &NativeCallContext, entries: Vec<(&str, Dynamic)>) -> Map {
    let mut m = Map::new();
    for (k, v) in entries {
        m.insert(k.into(), v);
    }
    m.insert(AT.into(), at(ctx));
    m
}

fn text(zh: &str, en: &str) -> Dynamic {
    let mut m = Map::new();
    m.insert("zh".into(), zh.into());
    m.insert("en".into(), en.into());
    Dynamic::from_map(m)
}

fn push(target: &mut Map, key: &str, value: Dynamic) {
    let entry = target
        .entry(key.into())
        .or_insert_with(|| Dynamic::from_array(Array::new()));
    if let Some(mut arr) = entry.write_lock::<Array>() {
        arr.push(value);
        return;
    }
    *entry = Dynamic::from_array(vec![value]);
}

fn action(ctx: &NativeCallContext, kind: &str, body: Map) -> Map {
    map(ctx, vec![(kind, Dynamic::from_map(body))])
}

/// The task body of a `task()` action (the action itself if it is not one).
fn task_of(raise: Map) -> Dynamic {
    match raise.get("task") {
        Some(t) => t.clone(),
        None => Dynamic::from_map(raise),
    }
}

/// A sandboxed engine with the builder API registered.
pub fn builder_engine() -> Engine {
    let mut e = Engine::new_raw();
    e.register_global_module(StandardPackage::new().as_shared_module());
    e.set_max_operations(2_000_000);
    e.set_max_call_levels(32);
    e.set_max_expr_depths(64, 32);
    e.set_max_string_size(64 * 1024);
    e.set_max_array_size(10_000);
    e.set_max_map_size(10_000);
    e.set_max_variables(1_000);
    e.set_max_functions(256);
    e.disable_symbol("eval");

    e.register_fn(
        "pathway",
        |ctx: NativeCallContext, id: &str, version: i64, zh: &str, en: &str| -> Map {
            map(
                &ctx,
                vec![
                    ("pathway", id.into()),
                    ("version", version.into()),
                    ("title", text(zh, en)),
                    ("roles", Dynamic::from_array(Array::new())),
                    ("entry_points", Dynamic::from_array(Array::new())),
                    ("states", Dynamic::from_array(Array::new())),
                ],
            )
        },
    );
    e.register_fn(
        "state",
        |ctx: NativeCallContext, id: &str, phase: &str| -> Map {
            map(&ctx, vec![("id", id.into()), ("phase", phase.into())])
        },
    );
    e.register_fn("terminal", |ctx: NativeCallContext, id: &str| -> Map {
        map(
            &ctx,
            vec![
                ("id", id.into()),
                ("phase", "closed".into()),
                ("terminal", true.into()),
            ],
        )
    });
    e.register_fn(
        "entry",
        |ctx: NativeCallContext, p: &mut Map, id: &str, state: &str| {
            let ep = map(&ctx, vec![("id", id.into()), ("state", state.into())]);
            push(p, "entry_points", Dynamic::from_map(ep));
        },
    );
    e.register_fn(
        "variable",
        |ctx: NativeCallContext, p: &mut Map, name: &str, ty: &str, default: Dynamic| {
            let var = map(&ctx, vec![("type", ty.into()), ("default", default)]);
            let vars = p
                .entry("variables".into())
                .or_insert_with(|| Dynamic::from_map(Map::new()));
            if let Some(mut m) = vars.write_lock::<Map>() {
                m.insert(name.into(), Dynamic::from_map(var));
            }
        },
    );
    e.register_fn(
        "event",
        |ctx: NativeCallContext, p: &mut Map, name: &str| {
            let ev = map(&ctx, vec![("name", name.into())]);
            push(p, "events", Dynamic::from_map(ev));
        },
    );
    e.register_fn(
        "event",
        |ctx: NativeCallContext, p: &mut Map, name: &str, description: &str| {
            let ev = map(
                &ctx,
                vec![("name", name.into()), ("description", description.into())],
            );
            push(p, "events", Dynamic::from_map(ev));
        },
    );
    e.register_fn("add", |p: &mut Map, state: Map| {
        push(p, "states", Dynamic::from_map(state))
    });
    e.register_fn("enter", |s: &mut Map, a: Map| {
        push(s, "on_enter", Dynamic::from_map(a))
    });
    e.register_fn("transition", |s: &mut Map, t: Map| {
        push(s, "transitions", Dynamic::from_map(t))
    });
    // `s.schedule(#{ id: "monthly", first: #{ after: "7d", from: "enrolment" }, every: "30d",
    // actions: [scale("phq9", "3d")] })`: the same keys as a YAML schedule.
    e.register_fn("schedule", |s: &mut Map, sc: Map| {
        push(s, "schedules", Dynamic::from_map(sc))
    });

    e.register_fn(
        "task",
        |ctx: NativeCallContext,
         id: &str,
         role: &str,
         zh: &str,
         en: &str,
         due: &str,
         priority: &str|
         -> Map {
            let mut body = Map::new();
            body.insert("id".into(), id.into());
            body.insert("role".into(), role.into());
            body.insert("title".into(), text(zh, en));
            body.insert("due".into(), due.into());
            body.insert("priority".into(), priority.into());
            action(&ctx, "task", body)
        },
    );
    e.register_fn(
        "follow_up",
        |ctx: NativeCallContext, channels: Array, template: &str, after: &str, at_: &str| -> Map {
            let mut body = Map::new();
            body.insert("channels".into(), Dynamic::from_array(channels));
            body.insert("template".into(), template.into());
            body.insert("after".into(), after.into());
            if !at_.is_empty() {
                body.insert("at".into(), at_.into());
            }
            action(&ctx, "follow_up", body)
        },
    );
    e.register_fn(
        "scale_push",
        |ctx: NativeCallContext, scale: &str, due: &str| -> Map {
            let mut body = Map::new();
            body.insert("scale".into(), scale.into());
            body.insert("due".into(), due.into());
            action(&ctx, "scale", body)
        },
    );
    // An alarm's task is given as a task() action; its other keys (`count`, `consecutive`,
    // `clear`, `scope`, …) are set on the returned map: `a.alarm.clear = "…"`.
    e.register_fn(
        "alarm",
        |ctx: NativeCallContext, id: &str, when: &str, raise: Map| -> Map {
            let mut body = Map::new();
            body.insert("id".into(), id.into());
            body.insert("when".into(), when.into());
            body.insert("task".into(), task_of(raise));
            action(&ctx, "alarm", body)
        },
    );
    e.register_fn(
        "no_reading",
        |ctx: NativeCallContext, id: &str, kind: &str, silence: &str, raise: Map| -> Map {
            let mut silent = Map::new();
            silent.insert("kind".into(), kind.into());
            silent.insert("for".into(), silence.into());
            let mut body = Map::new();
            body.insert("id".into(), id.into());
            body.insert("no_reading".into(), Dynamic::from_map(silent));
            body.insert("task".into(), task_of(raise));
            action(&ctx, "alarm", body)
        },
    );
    e.register_fn(
        "note",
        |ctx: NativeCallContext, zh: &str, en: &str| -> Map {
            map(&ctx, vec![("note", text(zh, en))])
        },
    );
    e.register_fn("cancel", |ctx: NativeCallContext, id: &str| -> Map {
        map(&ctx, vec![("cancel", id.into())])
    });
    e.register_fn(
        "referral",
        |ctx: NativeCallContext, direction: &str, to: &str| -> Map {
            let mut body = Map::new();
            body.insert("direction".into(), direction.into());
            body.insert("to".into(), to.into());
            action(&ctx, "referral", body)
        },
    );
    e.register_fn(
        "on_event",
        |ctx: NativeCallContext, event: &str, to: &str| -> Map {
            map(&ctx, vec![("on", event.into()), ("to", to.into())])
        },
    );
    e.register_fn(
        "after",
        |ctx: NativeCallContext, d: &str, to: &str| -> Map {
            map(&ctx, vec![("after", d.into()), ("to", to.into())])
        },
    );
    e.register_fn(
        "at_time",
        |ctx: NativeCallContext, t: &str, to: &str| -> Map {
            map(&ctx, vec![("at", t.into()), ("to", to.into())])
        },
    );
    e.register_fn(
        "when",
        |ctx: NativeCallContext, guard: &str, to: &str| -> Map {
            map(&ctx, vec![("when", guard.into()), ("to", to.into())])
        },
    );
    e.register_fn("always", |ctx: NativeCallContext, to: &str| -> Map {
        map(&ctx, vec![("to", to.into())])
    });
    e
}

/// Runs a pathway script and returns the tree its result describes.
pub fn run(file: &str, bytes: &[u8]) -> Result<Node, Vec<Diagnostic>> {
    run_until(file, bytes, None)
}

/// Runs a pathway script that must be done by `deadline`: the engine checks the clock as it goes
/// and stops the script when the deadline has passed.
pub fn run_until(
    file: &str,
    bytes: &[u8],
    deadline: Option<Instant>,
) -> Result<Node, Vec<Diagnostic>> {
    let started = Instant::now();
    let fail = |pos: Pos, msg: String, hint: &str| {
        Err(vec![Diagnostic::error(Code::Script, file, pos, msg, hint)])
    };
    if bytes.len() > crate::yaml::Budget::default().max_bytes {
        return fail(
            Pos::START,
            format!(
                "file is {} bytes, larger than a pathway file may be",
                bytes.len()
            ),
            "",
        );
    }
    let Ok(src) = std::str::from_utf8(bytes) else {
        return fail(
            Pos::START,
            "file is not valid UTF-8".into(),
            "save the file as UTF-8",
        );
    };
    let mut engine = builder_engine();
    if let Some(deadline) = deadline {
        engine
            .on_progress(move |_ops| (Instant::now() >= deadline).then(|| Dynamic::from(TOO_LONG)));
    }
    let result = engine.eval::<Dynamic>(src);
    let value = match result {
        Ok(v) => v,
        Err(err) => {
            let pos = to_pos(err.position());
            if let EvalAltResult::ErrorTerminated(token, _) = &*err
                && token.clone().into_string().is_ok_and(|t| t == TOO_LONG)
            {
                return Err(vec![crate::too_long(file, pos, started.elapsed())]);
            }
            let hint = match *err {
                EvalAltResult::ErrorTooManyOperations(_) => {
                    "the script runs too long; a pathway script only builds the pathway, it should not loop"
                }
                EvalAltResult::ErrorStackOverflow(_) => "the script recurses too deeply",
                EvalAltResult::ErrorFunctionNotFound(..) => {
                    "see the builder functions in docs/pathway-language.md"
                }
                _ => "",
            };
            let msg = match &*err {
                EvalAltResult::ErrorParsing(p, _) => format!("script does not parse: {p}"),
                other => format!("script failed: {other}"),
            };
            return fail(pos, msg, hint);
        }
    };
    if !value.is_map() {
        return fail(
            Pos::START,
            format!(
                "the script's last value must be the pathway map, found {}",
                value.type_name()
            ),
            "end the script with the pathway variable, e.g. `p`",
        );
    }
    Ok(to_node(&value, Pos::START, 0))
}

fn to_pos(p: Position) -> Pos {
    Pos {
        line: p.line().unwrap_or(1) as u32,
        col: p.position().unwrap_or(1) as u32,
    }
}

fn parse_at(d: &Dynamic) -> Option<Pos> {
    let s = d.clone().into_string().ok()?;
    let (l, c) = s.split_once(':')?;
    Some(Pos {
        line: l.parse().ok()?,
        col: c.parse().ok()?,
    })
}

fn to_node(d: &Dynamic, inherited: Pos, depth: usize) -> Node {
    if depth > 48 {
        return Node {
            pos: inherited,
            value: Value::Null,
        };
    }
    if let Some(m) = d.read_lock::<Map>() {
        let pos = m.get(AT).and_then(parse_at).unwrap_or(inherited);
        let entries = m
            .iter()
            .filter(|(k, _)| k.as_str() != AT)
            .map(|(k, v)| {
                (
                    Node::scalar(pos, k.as_str(), false),
                    to_node(v, pos, depth + 1),
                )
            })
            .collect();
        return Node {
            pos,
            value: Value::Map(entries),
        };
    }
    if let Some(a) = d.read_lock::<Array>() {
        return Node {
            pos: inherited,
            value: Value::Seq(a.iter().map(|v| to_node(v, inherited, depth + 1)).collect()),
        };
    }
    if d.is_unit() {
        return Node {
            pos: inherited,
            value: Value::Null,
        };
    }
    if d.is_string() {
        return Node::scalar(inherited, d.clone().into_string().unwrap_or_default(), true);
    }
    Node::scalar(inherited, d.to_string(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runaway_scripts_end_in_errors() {
        for src in [
            "loop {}",
            "fn f(x) { f(x + 1) } f(0)",
            "let s = \"x\"; loop { s += s; }",
            "let a = []; loop { a.push(1); }",
        ] {
            let start = std::time::Instant::now();
            let err = run("p.rhai", src.as_bytes()).unwrap_err();
            assert_eq!(err[0].code, Code::Script, "{src}");
            assert!(
                start.elapsed().as_secs() < 5,
                "{src} took {:?}",
                start.elapsed()
            );
        }
    }

    /// A script that stays within the operation cap yet runs for about a minute: every loop round
    /// copies a value of nine thousand nested elements.
    pub(crate) const SLOW_NESTED: &str = "let a = [1,2,3,4,5,6,7,8,9,10];\nlet b = [a,a,a,a,a,a,a,a,a,a];\nlet c = [b,b,b,b,b,b,b,b,b,b];\nlet d = [c,c,c,c,c,c,c,c,c];\nfor i in 0..100000 {\n  let e = d;\n  e.len();\n}\n1\n";

    #[test]
    fn a_script_past_its_deadline_is_stopped_where_it_was() {
        let start = std::time::Instant::now();
        let deadline = start + std::time::Duration::from_millis(500);
        let err = run_until("slow.rhai", SLOW_NESTED.as_bytes(), Some(deadline)).unwrap_err();
        assert!(
            start.elapsed().as_secs() < 5,
            "the script ran on for {:?}",
            start.elapsed()
        );
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].code, Code::Script);
        assert!(
            err[0].message.contains("took too long"),
            "{}",
            err[0].message
        );
        assert!(
            err[0].pos.line >= 5,
            "located inside the loop: {:?}",
            err[0].pos
        );
        assert!(!err[0].hint.is_empty());
    }

    #[test]
    fn a_deadline_does_not_stop_a_quick_script() {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let src = b"let p = pathway(\"x\", 1, \"a\", \"b\");\np";
        assert!(run_until("p.rhai", src, Some(deadline)).is_ok());
    }

    #[test]
    fn builder_calls_carry_their_position() {
        let node = run("p.rhai", b"let p = pathway(\"x\", 1, \"a\", \"b\");\n\nlet s = state(\"s\", \"follow_up\");\np.add(s);\np").unwrap();
        let Value::Map(entries) = &node.value else {
            panic!()
        };
        let states = entries
            .iter()
            .find(|(k, _)| k.as_str() == Some("states"))
            .unwrap();
        let Value::Seq(items) = &states.1.value else {
            panic!()
        };
        assert_eq!(items[0].pos.line, 3);
    }
}
