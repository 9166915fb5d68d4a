//! Releasing a pathway version to the patients already on it: `carepath diff` and
//! `carepath migrate-enrolments` (dry run, apply, rollback). The work is the library's
//! (`carepath_dsl::diff`, `carepath_dsl::migration`, `carepath_store::release`); this module reads
//! arguments and prints.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use carepath_dsl as dsl;
use carepath_dsl::diff::{self, Change, ChangeKind};
use carepath_dsl::yaml::{self, Node};
use carepath_engine::store::{self, Pool, release};
use jiff::Timestamp;

/// A pathway version to compare: its model, its source tree and where it came from.
pub(crate) struct Version {
    pub pathway: dsl::Pathway,
    pub tree: Option<Node>,
    pub label: String,
}

fn tree_of(file: &str, format: &str, text: &[u8]) -> Option<Node> {
    if format == "rhai" {
        dsl::rhai_front::run(file, text).ok()
    } else {
        yaml::parse(file, text, yaml::Budget::default()).ok()
    }
}

/// A file, or `pathway@version` published in the database.
pub(crate) async fn version(spec: &str, pool: Option<&Pool>) -> anyhow::Result<Version> {
    let path = Path::new(spec);
    if path.exists() {
        let compiled = dsl::compile_file(path);
        let pathway = compiled.into_pathway().map_err(|diags| {
            let text: Vec<String> = diags
                .iter()
                .filter(|d| d.is_error())
                .map(|d| d.to_string())
                .collect();
            anyhow::anyhow!("{spec} does not compile:\n{}", text.join("\n"))
        })?;
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {spec}"))?;
        let format = if spec.ends_with(".rhai") {
            "rhai"
        } else {
            "yaml"
        };
        return Ok(Version {
            tree: tree_of(spec, format, &bytes),
            label: format!("{spec} (v{})", pathway.version),
            pathway,
        });
    }
    let Some((id, v)) = spec.split_once('@') else {
        bail!("`{spec}` is neither a file nor `pathway@version`");
    };
    let v: i64 = v
        .parse()
        .with_context(|| format!("`{v}` in `{spec}` is not a version number"))?;
    let Some(pool) = pool else {
        bail!("`{spec}` names a published version: give the database with --db");
    };
    let rows = pool
        .fetch(
            "SELECT format, source, model FROM pathway_versions WHERE pathway_id = $1 AND version = $2",
            store::args![id, v],
        )
        .await?;
    let Some(r) = rows.first() else {
        bail!("pathway {id} has no published version {v}");
    };
    let pathway: dsl::Pathway = serde_json::from_str(&r.text(2))
        .with_context(|| format!("the stored model of {spec} cannot be read"))?;
    Ok(Version {
        tree: tree_of(spec, &r.text(0), r.text(1).as_bytes()),
        label: spec.to_string(),
        pathway,
    })
}

fn at(p: Option<dsl::Pos>) -> String {
    p.map_or("-".into(), |p| format!("{}:{}", p.line, p.col))
}

/// Prints the differences; exit 0 when there are none, 1 when there are (as `diff` does).
pub(crate) fn print_diff(a: &Version, b: &Version, json: bool) -> anyhow::Result<ExitCode> {
    let changes = diff::diff(
        &diff::Side {
            pathway: &a.pathway,
            tree: a.tree.as_ref(),
        },
        &diff::Side {
            pathway: &b.pathway,
            tree: b.tree.as_ref(),
        },
    );
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "from": a.label, "to": b.label, "changes": changes
            }))?
        );
    } else {
        println!("--- {}\n+++ {}", a.label, b.label);
        for c in &changes {
            println!("{}", line(c));
        }
        let count = |k| changes.iter().filter(|c| c.kind == k).count();
        println!(
            "{} added, {} removed, {} changed",
            count(ChangeKind::Added),
            count(ChangeKind::Removed),
            count(ChangeKind::Changed)
        );
    }
    Ok(ExitCode::from(u8::from(!changes.is_empty())))
}

fn line(c: &Change) -> String {
    let sign = match c.kind {
        ChangeKind::Added => "+",
        ChangeKind::Removed => "-",
        ChangeKind::Changed => "~",
    };
    let fields = if c.fields.is_empty() {
        String::new()
    } else {
        format!(" [{}]", c.fields.join(", "))
    };
    format!(
        "{sign} {:<11} {}{fields}  (before {}, after {})",
        c.what,
        c.id,
        at(c.before),
        at(c.after)
    )
}

/// What `migrate-enrolments` is asked to do.
pub(crate) enum Mode {
    DryRun { accept_risks: bool },
    Apply { batch_size: usize, by: String },
    Rollback { run: String, by: String },
}

/// Runs a plan file against the database.
pub(crate) async fn migrate_enrolments(
    pool: &Pool,
    plan_file: Option<&Path>,
    mode: Mode,
    quiet: release::QuietHours,
    json: bool,
    now: Timestamp,
) -> anyhow::Result<ExitCode> {
    if let Mode::Rollback { run, by } = &mode {
        let r = release::rollback(pool, run, by, now).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            println!(
                "rolled back {}: {} enrolment(s) restored; {} moved on since and left as they are; {} piece(s) of work the run ended stay ended",
                r.run,
                r.restored,
                r.left.len(),
                r.work_not_reopened
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(plan_file) = plan_file else {
        bail!("give the migration plan file");
    };
    let programs = store::load_programs(pool).await?;
    let bytes =
        std::fs::read(plan_file).with_context(|| format!("cannot read {}", plan_file.display()))?;
    let file = plan_file.display().to_string();
    let plan = match dsl::migration::read_plan(&file, &bytes, |p, v| {
        programs.get(p, v).map(|prog| &prog.pathway)
    }) {
        Ok(plan) => plan,
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    match mode {
        Mode::DryRun { accept_risks } => {
            let report = release::dry_run(pool, &programs, &plan, quiet, now).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_dry_run(&report);
            }
            let risky = report.total.urgent_cancels > 0 || report.total.quiet_hour_messages > 0;
            if risky && !accept_risks {
                eprintln!(
                    "the plan would cancel {} urgent piece(s) of work and schedule {} message(s) in quiet hours; rerun with --accept-risks to accept that",
                    report.total.urgent_cancels, report.total.quiet_hour_messages
                );
                return Ok(ExitCode::from(2));
            }
            Ok(ExitCode::SUCCESS)
        }
        Mode::Apply { batch_size, by } => {
            let applied = release::apply(
                pool,
                &programs,
                &plan,
                &release::ApplyOptions {
                    owner: &by,
                    batch_size,
                    max_batches: None,
                    progress: Some(&|a: &release::Applied| {
                        eprintln!("batch {}: {} enrolment(s) moved", a.batches, a.moved)
                    }),
                },
                now,
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&applied)?);
            } else {
                println!(
                    "run {}: {} enrolment(s) moved in {} batch(es); {} moved before; {} skipped (changed since selected); {} task(s) ended",
                    applied.run,
                    applied.moved,
                    applied.batches,
                    applied.already_moved,
                    applied.skipped,
                    applied.work_ended
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Mode::Rollback { .. } => Ok(ExitCode::SUCCESS),
    }
}

fn print_dry_run(r: &release::DryRun) {
    println!(
        "dry run of {} ({} v{} → v{}) at {}: {} enrolment(s), {} would change; {} piece(s) of open work ended ({} urgent); {} message(s) in quiet hours",
        r.plan.id,
        r.plan.pathway,
        r.plan.from,
        r.plan.to,
        r.at,
        r.total.enrolments,
        r.total.differ,
        r.total.cancels,
        r.total.urgent_cancels,
        r.total.quiet_hour_messages
    );
    println!("by state:");
    for (k, t) in &r.by_state {
        println!(
            "  {k:<40} {:>7} enrolment(s), {:>7} differ, {:>5} cancels ({} urgent)",
            t.enrolments, t.differ, t.cancels, t.urgent_cancels
        );
    }
    println!("by institution:");
    for (k, t) in &r.by_institution {
        println!(
            "  {k:<40} {:>7} enrolment(s), {:>7} differ, {:>5} cancels ({} urgent)",
            t.enrolments, t.differ, t.cancels, t.urgent_cancels
        );
    }
    for p in r.enrolments.iter().filter(|p| p.differs).take(20) {
        println!(
            "  enrolment {}: {} → {}; ends [{}]; next pass staying: {} | moved: {}",
            p.enrolment,
            p.from_state,
            p.to_state,
            p.cancels.join(", "),
            summary(&p.stay),
            summary(&p.moved)
        );
    }
}

fn summary(p: &release::NextPass) -> String {
    if let Some(e) = &p.error {
        return format!("error: {e}");
    }
    let mut parts: Vec<String> = p.transitions.clone();
    parts.extend(
        p.work
            .iter()
            .map(|w| w.split(' ').next().unwrap_or("").to_string()),
    );
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(", ")
    }
}

/// `21-8`: quiet from 21:00 to 08:00.
pub(crate) fn quiet_hours(s: &str) -> anyhow::Result<release::QuietHours> {
    let (a, b) = s
        .split_once('-')
        .with_context(|| format!("`{s}` is not START-END hours, e.g. 21-8"))?;
    let hour = |x: &str| -> anyhow::Result<i8> {
        let h: i8 = x
            .trim()
            .parse()
            .with_context(|| format!("`{x}` is not an hour"))?;
        if !(0..24).contains(&h) {
            bail!("`{x}` is not an hour (0–23)");
        }
        Ok(h)
    };
    Ok(release::QuietHours {
        start: hour(a)?,
        end: hour(b)?,
    })
}
