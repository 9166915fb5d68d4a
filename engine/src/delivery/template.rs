//! Message templates: text with `{hospital}`, `{name}` and `{date}` (and `{{`/`}}` for braces).
//!
//! The variable set is deliberately small: a message says who it is from, whom it greets and when,
//! never why. No variable carries a diagnosis or a pathway name.

use std::fmt::Write as _;

/// The variables a template may use.
pub const VARIABLES: [&str; 3] = ["hospital", "name", "date"];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(usize),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// The values of a template's variables.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    pub hospital: String,
    pub name: String,
    pub date: String,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(format!(
                            "`{{{name}` is not closed; write `{{{{` for a literal brace"
                        ));
                    }
                    let name = name.trim();
                    let Some(i) = VARIABLES.iter().position(|v| *v == name) else {
                        return Err(format!(
                            "unknown variable {{{name}}}; templates may use {}",
                            VARIABLES
                                .iter()
                                .map(|v| format!("{{{v}}}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    };
                    if !lit.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Var(i));
                }
                '}' => return Err("a lone `}`; write `}}` for a literal brace".into()),
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Text(lit));
        }
        Ok(Template { parts })
    }

    pub fn render(&self, vars: &Vars) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(i) => {
                    let v = match VARIABLES[*i] {
                        "hospital" => &vars.hospital,
                        "name" => &vars.name,
                        _ => &vars.date,
                    };
                    let _ = write!(out, "{v}");
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_variables_and_braces() {
        let t = Template::parse("{name}您好，{ hospital }提醒您{date}复诊 {{ok}}").unwrap();
        let v = Vars {
            hospital: "市一院".into(),
            name: "李华".into(),
            date: "2026-03-05".into(),
        };
        assert_eq!(t.render(&v), "李华您好，市一院提醒您2026-03-05复诊 {ok}");
    }

    #[test]
    fn refuses_unknown_and_unclosed() {
        let e = Template::parse("Your {diagnosis} follow-up").unwrap_err();
        assert!(e.contains("unknown variable {diagnosis}"), "{e}");
        assert!(e.contains("{hospital}, {name}, {date}"), "{e}");
        assert!(
            Template::parse("Hello {name")
                .unwrap_err()
                .contains("not closed")
        );
        assert!(Template::parse("a } b").unwrap_err().contains("lone"));
    }
}
