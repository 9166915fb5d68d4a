use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use carepath_dsl as dsl;

#[derive(Parser)]
#[command(name = "carepath", version, about = "Rules-driven clinical pathway workflow engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum OutputFormat {
    Human,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Dot,
    Mermaid,
}

#[derive(Subcommand)]
enum Command {
    /// Validate pathway files and folders; exit 1 on any error.
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "human")]
        format: OutputFormat,
    },
    /// Print a pathway's state graph as DOT or Mermaid.
    Graph {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "dot")]
        format: GraphFormat,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { paths, format } => validate(&paths, format),
        Command::Graph { file, format } => {
            let compiled = dsl::compile_file(&file);
            let pathway = match compiled.into_pathway() {
                Ok(p) => p,
                Err(diags) => {
                    for d in diags.iter().filter(|d| d.is_error()) {
                        eprintln!("{d}");
                    }
                    return Ok(ExitCode::from(1));
                }
            };
            print!(
                "{}",
                match format {
                    GraphFormat::Dot => dsl::graph::to_dot(&pathway),
                    GraphFormat::Mermaid => dsl::graph::to_mermaid(&pathway),
                }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn validate(paths: &[PathBuf], format: OutputFormat) -> anyhow::Result<ExitCode> {
    for p in paths {
        if !p.exists() {
            anyhow::bail!("{} does not exist", p.display());
        }
    }
    let files = dsl::pathway_files(paths)?;
    let (mut errors, mut warnings, mut pathways) = (0usize, 0usize, 0usize);
    for file in &files {
        let compiled = dsl::compile_file(file);
        if compiled.pathway.is_some() {
            pathways += 1;
        }
        for d in &compiled.diagnostics {
            if d.is_error() {
                errors += 1;
            } else {
                warnings += 1;
            }
            match format {
                OutputFormat::Human => eprintln!("{d}"),
                OutputFormat::Json => println!("{}", serde_json::to_string(d)?),
            }
        }
    }
    if format == OutputFormat::Human {
        eprintln!("{} file(s), {pathways} pathway(s): {errors} error(s), {warnings} warning(s)", files.len());
    }
    Ok(if errors > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
