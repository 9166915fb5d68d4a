use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::audit::AuditArgs;

use anyhow::Context;
use carepath_dsl as dsl;
use carepath_engine::{Programs, calendar, scheduler, seed, store};
use jiff::Timestamp;

/// Where the database is: `--db`, else `CAREPATH_DB`, else a SQLite file in the working folder.
#[derive(clap::Args, Clone)]
struct DbArgs {
    #[arg(long = "db", env = "CAREPATH_DB", default_value = "sqlite:carepath.db")]
    url: String,
}

impl DbArgs {
    async fn open(&self) -> anyhow::Result<store::Pool> {
        let pool = store::Pool::connect(&self.url)
            .await
            .with_context(|| format!("cannot open the database {}", redact(&self.url)))?;
        store::migrate(&pool)
            .await
            .context("cannot apply migrations")?;
        Ok(pool)
    }
}

/// A database URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(a)) if a > s => format!("{}://***{}", &url[..s], &url[a..]),
        _ => url.to_string(),
    }
}

fn parse_time(s: &str) -> anyhow::Result<Timestamp> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    let dt: jiff::civil::DateTime = s
        .parse()
        .with_context(|| format!("`{s}` is not a time; write e.g. 2026-11-23T02:00:00Z"))?;
    Ok(dt.to_zoned(jiff::tz::TimeZone::UTC)?.timestamp())
}

fn as_of(s: &Option<String>) -> anyhow::Result<Timestamp> {
    s.as_deref()
        .map(parse_time)
        .unwrap_or_else(|| Ok(Timestamp::now()))
}

/// Compiles the pathways folder and publishes any new versions.
async fn publish_dir(
    pool: &store::Pool,
    dir: &std::path::Path,
    now: Timestamp,
) -> anyhow::Result<Programs> {
    let programs = Programs::load_dir(dir)?;
    store::publish(pool, &programs, now).await?;
    Ok(store::load_programs(pool).await?)
}

#[derive(Parser)]
#[command(
    name = "carepath",
    version,
    about = "Rules-driven clinical pathway workflow engine"
)]
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
    /// What changed between two versions of a pathway (files, or `pathway@version` published in
    /// the database): exit 0 when nothing did, 1 when something did.
    Diff {
        from: String,
        to: String,
        #[arg(long, value_enum, default_value = "human")]
        format: OutputFormat,
        /// The database, for `pathway@version`.
        #[arg(long = "db", env = "CAREPATH_DB")]
        db: Option<String>,
    },
    /// Move the enrolments a migration plan selects to another version of their pathway:
    /// `--dry-run` says what would happen to each (exit 2 when it would cancel urgent work or send
    /// messages in quiet hours, unless `--accept-risks`), `--apply` does it, `--rollback RUN`
    /// undoes a run.
    MigrateEnrolments {
        /// The plan file (see docs/releasing.md); not needed with --rollback.
        plan: Option<PathBuf>,
        #[arg(long, conflicts_with_all = ["apply", "rollback"])]
        dry_run: bool,
        #[arg(long, conflicts_with = "rollback")]
        apply: bool,
        /// The run (the plan's `migration` id) to undo.
        #[arg(long)]
        rollback: Option<String>,
        #[arg(long)]
        accept_risks: bool,
        /// The patient-local hours no message should be scheduled in, START-END.
        #[arg(long, default_value = "21-8")]
        quiet_hours: String,
        #[arg(long, default_value_t = 500)]
        batch_size: usize,
        /// Who applies the plan, for the lease and the audit.
        #[arg(long, default_value = "cli")]
        by: String,
        #[arg(long)]
        as_of: Option<String>,
        #[arg(long, value_enum, default_value = "human")]
        format: OutputFormat,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        audit: AuditArgs,
    },
    /// Enrol patients from NDJSON, one patient a line (see docs/api.md, bulk onboarding): every
    /// line checked first, each written whole or not at all; rejected lines are listed with their
    /// number and reason (exit 1 when there are any). A rerun after a crash finishes the import.
    Import {
        file: PathBuf,
        #[arg(long, default_value_t = 2000)]
        batch_size: usize,
        #[arg(long)]
        as_of: Option<String>,
        #[arg(long, value_enum, default_value = "human")]
        format: OutputFormat,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        audit: AuditArgs,
    },
    /// Apply database migrations.
    Migrate {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Publish every pathway under a folder (new versions only; published versions are immutable).
    Publish {
        #[arg(default_value = "pathways")]
        dir: PathBuf,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Create synthetic patients enrolled across the real pathways at varied stages.
    Seed {
        #[arg(long, default_value_t = 1000)]
        patients: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value = "pathways")]
        pathways: PathBuf,
        #[arg(long)]
        as_of: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// One scheduler pass over every enrolment that is due.
    Run {
        #[arg(long)]
        as_of: Option<String>,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 500)]
        batch_size: i64,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        audit: AuditArgs,
    },
    /// A fresh demo database: the real pathways, an alliance with staff of every role (tokens
    /// printed), a synthetic cohort and a scheduler pass; then serves the admin API.
    Demo {
        #[arg(long, default_value_t = carepath_simulator::living::DEMO_PATIENTS)]
        patients: u64,
        /// Days of history lived before today: patients arriving, staff working their boards,
        /// questionnaires answered, readings and alarms, referrals decided, messages sent. With
        /// 0, the patients are seeded at varied stages with nothing done.
        #[arg(long, default_value_t = carepath_simulator::living::DEMO_DAYS)]
        history_days: u32,
        #[arg(long, default_value = "sqlite:carepath-demo.db")]
        db: String,
        #[arg(long, default_value = "pathways")]
        pathways: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        /// Set everything up, print it, and exit instead of serving.
        #[arg(long)]
        no_serve: bool,
        /// Accept HL7 v2 ADT over MLLP here too.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:2575")]
        mllp: String,
        #[command(flatten)]
        proxies: ProxyArgs,
        #[command(flatten)]
        web: WebArgs,
        #[command(flatten)]
        audit: AuditArgs,
    },
    /// Serve the admin API, run the scheduler pass by cron in the hospital's time zone, and sweep
    /// for enrolments made due by events every few seconds.
    Serve {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        /// When the full pass runs (5-field cron, in `--tz`).
        #[arg(long, default_value = "0 2 * * *")]
        cron: String,
        #[arg(long, default_value = "Asia/Shanghai")]
        tz: String,
        /// Seconds between sweeps for enrolments due now (events, timers).
        #[arg(long, default_value_t = 30)]
        sweep_seconds: u64,
        #[arg(long, default_value = "pathways")]
        pathways: PathBuf,
        /// Deliver due follow-ups on every sweep with this channel configuration.
        #[arg(long)]
        delivery_config: Option<PathBuf>,
        /// Also accept HL7 v2 ADT messages over MLLP on this address (e.g. 0.0.0.0:2575).
        #[arg(long, value_name = "ADDR")]
        mllp: Option<String>,
        #[command(flatten)]
        proxies: ProxyArgs,
        #[command(flatten)]
        web: WebArgs,
        #[command(flatten)]
        audit: AuditArgs,
    },
    /// Staff sign-in credentials for the workstation.
    Staff {
        #[command(subcommand)]
        command: StaffCommand,
    },
    /// Run pathway tests (`*.test.yaml`) on the real step; fails on any failure or uncovered state.
    Test {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Do not require the tests to visit every state and take every transition.
        #[arg(long)]
        no_coverage: bool,
    },
    /// Benchmark a nightly pass: seed an empty database, run one pass, print throughput and memory.
    Bench {
        #[arg(long, default_value_t = 100_000)]
        enrolments: u64,
        /// An empty database; a fresh SQLite file in a temporary folder by default.
        #[arg(long)]
        db: Option<String>,
        #[arg(long, default_value = "pathways")]
        pathways: PathBuf,
        #[arg(long, default_value_t = 500)]
        batch_size: i64,
        /// Scheduler passes run at once over the database, as that many `carepath run`
        /// processes would (each pass is measured as their sum; see bench/worker-curve.sh).
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
    /// Drive a served admin API's task queues at a fixed arrival rate (open loop) and print the
    /// latency percentiles, each measured from the instant its request was due
    /// (`bench/queue-pull.sh` with RATE set).
    BenchLoad {
        /// The served API, e.g. http://127.0.0.1:8088.
        #[arg(long)]
        url: String,
        /// Staff tokens as `carepath bench-api` prints them: institution:role:token,...
        #[arg(long, env = "CAREPATH_TOKENS", hide_env_values = true)]
        tokens: String,
        /// Requests started per second, whatever the server does.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        /// Seconds to run.
        #[arg(long, default_value_t = 30.0)]
        duration: f64,
    },
    /// Benchmark task-queue pulls through the admin API: build a database with this many open
    /// tasks across the demo alliance (in bulk), print staff tokens (`token INSTITUTION ROLE TOKEN`),
    /// then serve the API alone for a load generator (see bench/queue-pull.sh).
    BenchApi {
        #[arg(long, default_value_t = 1_000_000)]
        tasks: u64,
        /// An empty database, or one built earlier with --reuse.
        #[arg(long, default_value = "sqlite:carepath-bench-api.db")]
        db: String,
        #[arg(long, default_value = "pathways")]
        pathways: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        /// Serve a database an earlier run built, as it is (with fresh tokens).
        #[arg(long)]
        reuse: bool,
        /// Build the database, print the tokens, and exit instead of serving.
        #[arg(long)]
        no_serve: bool,
    },
    /// Deliver the follow-up messages due (WeChat, SMS, e-mail, phone tasks); retry, fall back or park
    /// failures. Exit 3 when a message was parked.
    Dispatch {
        #[arg(
            long,
            env = "CAREPATH_DELIVERY_CONFIG",
            default_value = "config/delivery.toml"
        )]
        config: PathBuf,
        #[arg(long)]
        as_of: Option<String>,
        /// Re-queue every parked message first (with the same idempotency keys).
        #[arg(long)]
        retry_parked: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Write the monthly operations report (JSON and a self-contained HTML page with charts):
    /// enrolments, follow-ups, tasks, scales, referrals, alarms, stays, pathway indicators against
    /// targets, per pathway, role and staff member. Counts only; no patient is named.
    Report {
        /// The month, `YYYY-MM`.
        #[arg(long)]
        month: String,
        #[command(flatten)]
        db: DbArgs,
        /// One institution (default: every institution, one section each).
        #[arg(long)]
        institution: Option<String>,
        /// Where to write `report-YYYY-MM.json` and `report-YYYY-MM.html`.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// The hospital's time zone, where the month's days begin.
        #[arg(long, default_value = "Asia/Shanghai")]
        tz: String,
        /// Count work as missed only if it fell due before this instant (default: now).
        #[arg(long)]
        as_of: Option<String>,
        #[command(flatten)]
        audit: AuditArgs,
    },
    /// Verify the audit record, or checkpoint it.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The calendars working days count in: the national years shipped and their sources, and
    /// institutions' own closures, working days and hours.
    Calendar {
        #[command(subcommand)]
        command: CalendarCommand,
    },
    /// Print a pathway's state graph as DOT or Mermaid.
    Graph {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "dot")]
        format: GraphFormat,
    },
    /// Run a synthetic cohort through pathways in virtual time (QA); exit 1 when an expectation
    /// of the scenario fails.
    Simulate {
        /// Pathway files or folders (default: those the scenario lists).
        #[arg(long = "pathway", num_args = 1..)]
        pathways: Vec<PathBuf>,
        /// Patients (default: the scenario's, else 1000).
        #[arg(long)]
        cohort: Option<u64>,
        /// Days of virtual time (default: the scenario's, else 365).
        #[arg(long)]
        days: Option<u32>,
        /// The same seed gives the same output (default: the scenario's, else 1).
        #[arg(long)]
        seed: Option<u64>,
        /// A scenario file (`*.scenario.yaml`): cohort, behaviour, staff and expectations.
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Write summary.json, CSV files and SVG charts into this folder.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Worker threads; the output is the same for any number (default: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Two versions of a pathway (files) run on the same cohort, scenario and seed, their
        /// indicators and workload side by side (compare.json and compare.svg under --out).
        #[arg(long, num_args = 2, value_names = ["V1", "V2"])]
        compare: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CalendarCommand {
    /// Print each year of the national calendar with its source; a provisional year (statutory
    /// holidays only, no notice yet) says so.
    Show,
    /// Load institutions' own calendars from a YAML file (see config/calendar.example.yaml); each
    /// institution named in the file has its days and hours replaced, the others are untouched.
    Load {
        file: PathBuf,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Subcommand)]
enum StaffCommand {
    /// Set a staff member's workstation password, read from standard input (one line); clears
    /// failed attempts and any lock-out.
    SetPassword {
        /// The staff member's id.
        staff: String,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        audit: AuditArgs,
    },
    /// Give a staff member a new TOTP secret (the second factor admin and auditor roles sign in
    /// with) and print its otpauth:// URI for an authenticator app.
    EnrolTotp {
        staff: String,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        audit: AuditArgs,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the keyed chain and that every checkpointed prefix is still there; print rows and
    /// checkpoints checked and the first broken row. Exit 0 when intact, 1 when tampered with.
    Verify {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        audit: AuditArgs,
        #[arg(long)]
        json: bool,
    },
    /// Append a signed checkpoint of the record as it stands to the checkpoint file.
    Checkpoint {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        audit: AuditArgs,
    },
}

pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAREPATH_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Migrate { db } => {
            let pool = store::Pool::connect(&db.url).await?;
            let applied = store::migrate(&pool).await?;
            println!(
                "{} migration(s) applied on {}",
                applied.len(),
                pool.backend()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Publish { dir, db } => {
            let pool = db.open().await?;
            let programs = publish_dir(&pool, &dir, Timestamp::now()).await?;
            for p in programs.latest() {
                println!(
                    "{} v{}  {}",
                    p.pathway.id, p.pathway.version, p.pathway.title.en
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Seed {
            patients,
            seed: s,
            pathways,
            as_of: at,
            db,
        } => {
            let pool = db.open().await?;
            let now = as_of(&at)?;
            let programs = publish_dir(&pool, &pathways, now).await?;
            let summary = seed::seed(&pool, &programs, patients, s, now).await?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            as_of: at,
            json,
            batch_size,
            db,
            audit,
        } => {
            report_calendar()?;
            let pool = db.open().await?;
            let audit = audit.install(&pool, &db.url).await?;
            let programs = store::load_programs(&pool).await?;
            let now = as_of(&at)?;
            let started = std::time::Instant::now();
            let summary = scheduler::run_pass(
                &pool,
                &programs,
                now,
                &scheduler::PassOptions {
                    batch_size,
                    max_batches: None,
                },
            )
            .await?;
            audit.checkpoint(&pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print_summary(&summary, started.elapsed());
            }
            Ok(if summary.errors > 0 {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Demo {
            patients,
            history_days,
            db,
            pathways,
            addr,
            no_serve,
            mllp,
            proxies,
            web,
            audit,
        } => {
            let (pool, audit) = demo(patients, history_days, &db, &pathways, &audit, &addr).await?;
            if no_serve {
                return Ok(ExitCode::SUCCESS);
            }
            let programs = store::load_programs(&pool).await?;
            let intake = load_intake(&pathways, &programs)?;
            serve(
                pool,
                programs,
                intake,
                &addr,
                "0 2 * * *",
                "Asia/Shanghai",
                30,
                None,
                Some(mllp.as_str()),
                Access {
                    audit,
                    trusted_proxies: proxies.trusted_proxy,
                    demo_contact_key: true,
                    web: web.config(),
                },
            )
            .await
        }
        Command::Serve {
            db,
            addr,
            cron,
            tz,
            sweep_seconds,
            pathways,
            delivery_config,
            mllp,
            proxies,
            web,
            audit,
        } => {
            let delivery = delivery_config
                .as_deref()
                .map(carepath_engine::delivery::DeliveryConfig::load)
                .transpose()?;
            report_calendar()?;
            let pool = db.open().await?;
            let audit = audit.install(&pool, &db.url).await?;
            let programs = if pathways.is_dir() {
                publish_dir(&pool, &pathways, Timestamp::now()).await?
            } else {
                store::load_programs(&pool).await?
            };
            let intake = load_intake(&pathways, &programs)?;
            serve(
                pool,
                programs,
                intake,
                &addr,
                &cron,
                &tz,
                sweep_seconds,
                delivery,
                mllp.as_deref(),
                Access {
                    audit,
                    trusted_proxies: proxies.trusted_proxy,
                    demo_contact_key: false,
                    web: web.config(),
                },
            )
            .await
        }
        Command::Bench {
            enrolments,
            db,
            pathways,
            batch_size,
            workers,
        } => {
            let dir = std::env::temp_dir().join(format!("carepath-bench-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let url = db.unwrap_or_else(|| format!("sqlite:{}", dir.join("bench.db").display()));
            let result = crate::bench::run(&url, enrolments, &pathways, batch_size, workers).await;
            let _ = std::fs::remove_dir_all(&dir);
            println!("{}", serde_json::to_string_pretty(&result?)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchLoad {
            url,
            tokens,
            rate,
            duration,
        } => {
            let result =
                crate::load::run(url.trim_end_matches('/'), &tokens, rate, duration).await?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchApi {
            tasks,
            db,
            pathways,
            addr,
            reuse,
            no_serve,
        } => {
            crate::bench::api(&db, tasks, &pathways, &addr, reuse, !no_serve).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dispatch {
            config,
            as_of: at,
            retry_parked,
            json,
            db,
        } => {
            use carepath_engine::delivery;
            let config = delivery::DeliveryConfig::load(&config)?;
            let pool = db.open().await?;
            let now = as_of(&at)?;
            if retry_parked {
                let n = delivery::retry_parked(&pool, None, now).await?;
                eprintln!("{n} parked message(s) re-queued");
            }
            let summary = delivery::dispatch_once(&pool, &config, now).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!("{summary}");
            }
            Ok(if summary.parked > 0 {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Report {
            month,
            db,
            institution,
            out,
            tz,
            as_of: at,
            audit,
        } => {
            let opts = carepath_engine::report::Options {
                month: carepath_engine::report::parse_month(&month).map_err(anyhow::Error::msg)?,
                tz: jiff::tz::TimeZone::get(&tz)
                    .with_context(|| format!("`{tz}` is not an IANA time zone"))?,
                institution,
                as_of: as_of(&at)?,
            };
            let pool = db.open().await?;
            let programs = store::load_programs(&pool).await?;
            let audit = audit.install(&pool, &db.url).await?;
            let mut report = carepath_engine::report::monthly(&pool, &programs, &opts).await?;
            // The report carries a fresh checkpoint: a signed count and head that leave the
            // building with it.
            report.audit_checkpoint = Some(audit.checkpoint(&pool).await?);
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            for (ext, text) in [
                ("json", serde_json::to_string_pretty(&report)?),
                ("html", carepath_engine::report::html(&report)),
            ] {
                let path = out.join(format!("report-{}.{ext}", report.month));
                std::fs::write(&path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                println!("wrote {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Staff { command } => match command {
            StaffCommand::SetPassword { staff, db, audit } => {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("cannot read the password from standard input")?;
                let password = line.trim_end_matches(['\n', '\r']);
                if password.chars().count() < 8 {
                    anyhow::bail!("a password needs at least 8 characters");
                }
                let hash = carepath_admin_api::web::hash_password(password)
                    .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?;
                let credential = store::sign_in::Credential::Password(&hash);
                set_staff_credential(&db, &audit, &staff, credential).await?;
                println!("password set for {staff}");
                Ok(ExitCode::SUCCESS)
            }
            StaffCommand::EnrolTotp { staff, db, audit } => {
                let (secret, uri) = carepath_admin_api::web::new_totp_secret(&staff)
                    .map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
                let credential = store::sign_in::Credential::Totp(&secret);
                set_staff_credential(&db, &audit, &staff, credential).await?;
                println!("{uri}");
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Audit { command } => match command {
            AuditCommand::Verify { db, audit, json } => {
                crate::audit::verify(&db.url, &audit, json).await
            }
            AuditCommand::Checkpoint { db, audit } => {
                let pool = db.open().await?;
                let audit = audit.install(&pool, &db.url).await?;
                let cp = audit.checkpoint(&pool).await?;
                println!(
                    "checkpoint: {} row(s), last row {}, head {} -> {}",
                    cp.count,
                    cp.last_id,
                    cp.head,
                    audit.checkpoints.display()
                );
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Calendar { command } => match command {
            CalendarCommand::Show => {
                for source in calendar::Calendar::national()?.sources() {
                    println!("{source}");
                }
                Ok(ExitCode::SUCCESS)
            }
            CalendarCommand::Load { file, db } => {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                let all = calendar::Overrides::from_yaml(&file.display().to_string(), &text)?;
                let pool = db.open().await?;
                let mut tx = pool.begin().await?;
                for (institution, overrides) in &all {
                    store::calendars::replace(&mut tx, institution, overrides).await?;
                }
                tx.commit().await?;
                for (institution, o) in &all {
                    let closed = o.days.values().filter(|d| !d.working).count();
                    let hours = o.hours.map_or("all day".to_string(), |h| h.to_string());
                    println!(
                        "{institution}: {closed} closure(s), {} extra working day(s), hours {hours}",
                        o.days.len() - closed
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Test { paths, no_coverage } => pathway_tests(&paths, !no_coverage),
        Command::Simulate {
            pathways,
            cohort,
            days,
            seed,
            scenario,
            out,
            threads,
            compare,
        } if compare.len() == 2 => {
            let opts = carepath_simulator::Options {
                pathways,
                scenario,
                cohort,
                days,
                seed,
                out,
                threads,
                progress: true,
            };
            let c = carepath_simulator::compare::compare(&compare[0], &compare[1], &opts)
                .map_err(anyhow::Error::msg)?;
            print!("{}", c.text());
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate {
            pathways,
            cohort,
            days,
            seed,
            scenario,
            out,
            threads,
            ..
        } => simulate(carepath_simulator::Options {
            pathways,
            scenario,
            cohort,
            days,
            seed,
            out,
            threads,
            progress: true,
        }),
        Command::Validate { paths, format } => validate(&paths, format),
        Command::Import {
            file,
            batch_size,
            as_of: at,
            format,
            db,
            audit,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let pool = db.open().await?;
            // Each batch's audit entry is chained under the database's audit key.
            let audit = audit.install(&pool, &db.url).await?;
            let programs = store::load_programs(&pool).await?;
            let key = match carepath_engine::crypto::ContactKey::from_env() {
                Ok(k) => Some(k),
                Err(carepath_engine::crypto::CryptoError::KeyMissing) => None,
                Err(e) => return Err(e).context("the contact key"),
            };
            let done = store::import::import(
                &pool,
                &programs,
                key.as_ref(),
                &text,
                "cli",
                batch_size,
                as_of(&at)?,
            )
            .await?;
            audit.checkpoint(&pool).await?;
            if format == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&done)?);
            } else {
                for r in &done.rejected {
                    eprintln!("{}:{}: {}", file.display(), r.line, r.reason);
                }
                println!(
                    "{} line(s): {} patient(s) and {} enrolment(s) imported in {} batch(es) ({} action(s)); {} already present; {} rejected; {:.1} s",
                    done.lines,
                    done.patients,
                    done.enrolments,
                    done.batches,
                    done.actions,
                    done.already_present,
                    done.rejected.len(),
                    done.seconds
                );
            }
            Ok(ExitCode::from(u8::from(!done.rejected.is_empty())))
        }
        Command::Diff {
            from,
            to,
            format,
            db,
        } => {
            let pool = match &db {
                Some(url) => Some(DbArgs { url: url.clone() }.open().await?),
                None => None,
            };
            let a = crate::release::version(&from, pool.as_ref()).await?;
            let b = crate::release::version(&to, pool.as_ref()).await?;
            crate::release::print_diff(&a, &b, format == OutputFormat::Json)
        }
        Command::MigrateEnrolments {
            plan,
            dry_run,
            apply,
            rollback,
            accept_risks,
            quiet_hours,
            batch_size,
            by,
            as_of: at,
            format,
            db,
            audit,
        } => {
            use crate::release::Mode;
            let mode = match (dry_run, apply, rollback) {
                (_, _, Some(run)) => Mode::Rollback { run, by },
                (_, true, None) => Mode::Apply { batch_size, by },
                (true, false, None) => Mode::DryRun { accept_risks },
                (false, false, None) => {
                    anyhow::bail!("say what to do: --dry-run, --apply or --rollback RUN")
                }
            };
            let pool = db.open().await?;
            // An applied run and a rollback are audited under the database's audit key.
            let audit = audit.install(&pool, &db.url).await?;
            let done = crate::release::migrate_enrolments(
                &pool,
                plan.as_deref(),
                mode,
                crate::release::quiet_hours(&quiet_hours)?,
                format == OutputFormat::Json,
                as_of(&at)?,
            )
            .await;
            let checkpoint = audit.checkpoint(&pool).await;
            let done = done?;
            checkpoint?;
            Ok(done)
        }
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
    let compiled: Vec<dsl::Compiled> = files.iter().map(|f| dsl::compile_file(f)).collect();
    let pathways = compiled.iter().filter(|c| c.pathway.is_some()).count();
    let rule_files = compiled
        .iter()
        .filter(|c| c.kind == dsl::DocKind::Intake)
        .count();
    // Intake rules are checked against the pathways validated with them.
    let intake = dsl::check_intake(&compiled);
    let (mut errors, mut warnings) = (0usize, 0usize);
    for d in compiled.iter().flat_map(|c| &c.diagnostics).chain(&intake) {
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
    if format == OutputFormat::Human {
        eprintln!(
            "{} file(s), {pathways} pathway(s), {rule_files} intake rule file(s): {errors} error(s), {warnings} warning(s)",
            files.len()
        );
    }
    Ok(if errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Loads the national calendar of working days before the scheduler runs, and warns about each
/// year whose dates are provisional (no State Council notice recorded).
fn report_calendar() -> anyhow::Result<()> {
    let national = calendar::Calendar::national().context("the national working-day calendar")?;
    for source in national.sources() {
        if source.status == calendar::Status::Provisional {
            tracing::warn!("working-day calendar {source}");
        }
    }
    Ok(())
}

fn print_summary(s: &scheduler::PassSummary, took: std::time::Duration) {
    println!(
        "pass as of {} on {}: {} enrolment(s) stepped in {} batch(es), {} advanced, {} transition(s)",
        s.as_of, s.backend, s.stepped, s.batches, s.advanced, s.transitions
    );
    println!("actions created: {}", s.actions);
    for (kind, n) in &s.actions_by_kind {
        println!("  {kind:<12} {n}");
    }
    println!("tasks cancelled as stale: {}", s.cancelled_tasks);
    println!(
        "scale reminders created: {}   scale pushes expired: {}",
        s.scale_reminders, s.scale_expired
    );
    println!(
        "errors: {}   stale skips: {}   took {:.2}s",
        s.errors,
        s.stale,
        took.as_secs_f64()
    );
}

async fn demo(
    patients: u64,
    history_days: u32,
    url: &str,
    pathways: &std::path::Path,
    audit: &AuditArgs,
    addr: &str,
) -> anyhow::Result<(store::Pool, crate::audit::Audit)> {
    let path = url.strip_prefix("sqlite:").unwrap_or(url);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
    // A fresh record starts a fresh checkpoint file (the key is kept).
    let _ = std::fs::remove_file(audit.checkpoints_path(url));
    let pool = DbArgs {
        url: url.to_string(),
    }
    .open()
    .await?;
    let audit = audit.install(&pool, url).await?;
    let now = Timestamp::now();
    let programs = publish_dir(&pool, pathways, now).await?;
    println!("published {} pathway(s):", programs.latest().len());
    for p in programs.latest() {
        println!(
            "  {:<24} v{}  {} / {}",
            p.pathway.id, p.pathway.version, p.pathway.title.zh, p.pathway.title.en
        );
    }
    demo_history(&pool, &programs, patients, history_days, now).await?;
    let started = std::time::Instant::now();
    let pass =
        scheduler::run_pass(&pool, &programs, now, &scheduler::PassOptions::default()).await?;
    print_summary(&pass, started.elapsed());
    println!("open task queues (institution, role: open / overdue):");
    for b in store::stats::open_boards(&pool, now).await? {
        println!(
            "  {:<10} {:<22} {:>5} / {}",
            b.institution_id, b.role, b.open, b.overdue
        );
    }
    let tokens = seed::demo_staff(&pool).await?;
    println!("staff tokens (demo only; each is bound to one institution and role):");
    for (staff, inst, role, token) in &tokens {
        println!("  {inst:<9} {role:<22} {staff:<28} {token}");
    }
    if let Some((_, _, _, token)) = tokens
        .iter()
        .find(|(_, i, r, _)| i == seed::LEAD && r == "case_manager")
    {
        println!(
            "try:  curl -H 'Authorization: Bearer {token}' 'http://127.0.0.1:8080/queues/tasks?limit=5'"
        );
        println!("      curl -H 'Authorization: Bearer {token}' http://127.0.0.1:8080/kpis");
    }
    demo_sign_ins(&pool, &tokens, addr).await?;
    audit.checkpoint(&pool).await?;
    Ok((pool, audit))
}

/// The demo staff's workstation password: published, like everything of the demo.
pub(crate) const DEMO_PASSWORD: &str = "carepath-demo";
/// The demo's TOTP secret for the roles that need a second factor (published: demo only).
pub(crate) const DEMO_TOTP_SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";

/// Gives every demo staff member (but device gateways) the demo password, and those of the roles
/// that need a second factor the demo TOTP secret; prints the workstation's address and a sign-in
/// per role of the lead hospital and the first clinic.
async fn demo_sign_ins(
    pool: &store::Pool,
    tokens: &[(String, String, String, String)],
    addr: &str,
) -> anyhow::Result<()> {
    use store::sign_in::{Credential, set_credential};
    // One hash for all: the demo's staff share its published password.
    let hash = carepath_admin_api::web::hash_password(DEMO_PASSWORD)
        .map_err(|e| anyhow::anyhow!("cannot hash the demo password: {e}"))?;
    let now = Timestamp::now();
    for (staff, _, role, _) in tokens {
        if role == "device_gateway" {
            continue;
        }
        set_credential(pool, staff, Credential::Password(&hash), now).await?;
        if carepath_admin_api::web::TOTP_ROLES.contains(&role.as_str()) {
            set_credential(pool, staff, Credential::Totp(DEMO_TOTP_SECRET), now).await?;
        }
    }
    println!(
        "workstation: http://{addr}/app/  (password for every staff member below: {DEMO_PASSWORD})"
    );
    for (staff, inst, role, _) in tokens {
        if role == "device_gateway" || !(inst == seed::LEAD || inst == seed::CLINICS[0]) {
            continue;
        }
        let second = if carepath_admin_api::web::TOTP_ROLES.contains(&role.as_str()) {
            format!(
                "  + one-time code from otpauth://totp/carepath:{staff}?secret={DEMO_TOTP_SECRET}&issuer=carepath"
            )
        } else {
            String::new()
        };
        println!("  sign in as {staff:<34} {role:<22} {inst}{second}");
    }
    Ok(())
}

/// The demo's patients: `days` of history lived up to today's midnight by the simulator's
/// patients and staff through the production store and scheduler (`carepath_simulator::living`),
/// or, with no days, patients seeded at varied stages with nothing done.
async fn demo_history(
    pool: &store::Pool,
    programs: &Programs,
    patients: u64,
    days: u32,
    now: Timestamp,
) -> anyhow::Result<()> {
    if days == 0 {
        let summary = seed::seed(pool, programs, patients, 1, now).await?;
        println!(
            "seeded {} patient(s) with {} past event(s)",
            summary.patients, summary.events
        );
        return Ok(());
    }
    seed::alliance(pool).await?;
    let tz = "Asia/Shanghai";
    let zone = jiff::tz::TimeZone::get(tz)?;
    let options =
        carepath_simulator::living::Options::demo(patients, days, now.to_zoned(zone).date());
    let started = std::time::Instant::now();
    println!("living {days} day(s) of history with {patients} patient(s) ...");
    let h = carepath_simulator::living::live(pool, programs, &options, seed::home_of)
        .await
        .map_err(|e| anyhow::anyhow!("the demo's history: {e}"))?;
    store::stats::analyze(pool).await?;
    println!(
        "history in {:.1}s: {} pass(es); {} task(s) done, {} escalated; {} answer(s); {} reading(s); \
         {} event(s); referrals {} accepted, {} rejected, {} arrived; alarms {} acknowledged, {} resolved; \
         {} message(s) sent",
        started.elapsed().as_secs_f64(),
        h.passes,
        h.tasks_done,
        h.escalations,
        h.answers,
        h.readings,
        h.events,
        h.referrals_accepted,
        h.referrals_rejected,
        h.referrals_arrived,
        h.alarms_acknowledged,
        h.alarms_resolved,
        h.messages_sent
    );
    Ok(())
}

/// Stores a sign-in credential of `staff` in the database `db`, audited under its key; an unknown
/// staff member is an error naming them.
async fn set_staff_credential(
    db: &DbArgs,
    audit: &AuditArgs,
    staff: &str,
    credential: store::sign_in::Credential<'_>,
) -> anyhow::Result<()> {
    let pool = db.open().await?;
    audit.install(&pool, &db.url).await?;
    if !store::sign_in::set_credential(&pool, staff, credential, Timestamp::now()).await? {
        anyhow::bail!("no staff member `{staff}`");
    }
    Ok(())
}

/// Who the server believes about client addresses, and where the audit's checkpoints go.
struct Access {
    audit: crate::audit::Audit,
    trusted_proxies: Vec<std::net::IpAddr>,
    /// Without `CAREPATH_CONTACT_KEY`, use the demo's published key instead of refusing contact
    /// details (the demo only: its key is no secret).
    demo_contact_key: bool,
    /// How the workstation's sessions behave.
    web: carepath_admin_api::web::WebConfig,
}

/// The demo's contact key: fixed, so a restarted demo reads what it stored, and published, so
/// it protects nothing. Never used by `serve`.
fn demo_contact_key() -> carepath_engine::crypto::ContactKey {
    use sha2::Digest as _;
    let bytes = sha2::Sha256::digest(b"carepath demo contact key - not for real patients");
    carepath_engine::crypto::ContactKey::from_bytes(&bytes).expect("32 bytes")
}

/// The case-intake rules of `<pathways>/intake/`, checked against the published pathways; none
/// when the folder is absent.
fn load_intake(
    pathways: &std::path::Path,
    programs: &Programs,
) -> anyhow::Result<carepath_engine::intake::IntakeRules> {
    let dir = pathways.join("intake");
    if !dir.is_dir() {
        println!("case intake: no {} folder; no intake rules", dir.display());
        return Ok(carepath_engine::intake::IntakeRules::none());
    }
    let rules = carepath_engine::intake::IntakeRules::load_dir(&dir, programs)
        .with_context(|| format!("the intake rules in {}", dir.display()))?;
    println!(
        "case intake: {} rule(s) from {}",
        rules.rules().len(),
        dir.display()
    );
    Ok(rules)
}

/// Runs the admin API, the scheduler and (when configured) the dispatcher until interrupted.
#[allow(clippy::too_many_arguments)]
async fn serve(
    pool: store::Pool,
    programs: Programs,
    intake: carepath_engine::intake::IntakeRules,
    addr: &str,
    cron: &str,
    tz: &str,
    sweep_seconds: u64,
    delivery: Option<carepath_engine::delivery::DeliveryConfig>,
    mllp: Option<&str>,
    access: Access,
) -> anyhow::Result<ExitCode> {
    let schedule: croner::Cron = cron
        .parse()
        .with_context(|| format!("`{cron}` is not a 5-field cron expression"))?;
    let zone =
        jiff::tz::TimeZone::get(tz).with_context(|| format!("`{tz}` is not an IANA time zone"))?;
    let audit = access.audit;
    let mut state = carepath_admin_api::AppState::new(pool.clone(), programs)
        .with_audit_checkpoints(audit.checkpoints.clone())
        .with_trusted_proxies(access.trusted_proxies.clone())
        .with_intake(intake)
        .with_web(access.web);
    // Contact details are accepted and shown (masked) only with the key they are encrypted with.
    match carepath_engine::crypto::ContactKey::from_env() {
        Ok(key) => state = state.with_contact_key(key),
        Err(carepath_engine::crypto::CryptoError::KeyMissing) if access.demo_contact_key => {
            println!(
                "{}: not set; the demo encrypts contact details with its own published key (not for real patients)",
                carepath_engine::crypto::CONTACT_KEY_ENV
            );
            state = state.with_contact_key(demo_contact_key());
        }
        Err(carepath_engine::crypto::CryptoError::KeyMissing) => println!(
            "{}: not set; patients' contact details are refused until it is",
            carepath_engine::crypto::CONTACT_KEY_ENV
        ),
        Err(e) => return Err(e).context("the contact key"),
    }
    let shared = state.programs.clone();
    let hl7 = match mllp {
        Some(mllp) => {
            let listener = tokio::net::TcpListener::bind(mllp)
                .await
                .with_context(|| format!("cannot listen for MLLP on {mllp}"))?;
            let service = carepath_engine::hl7::Service {
                pool: pool.clone(),
                programs: state.programs.clone(),
                intake: state.intake.clone(),
                contact_key: state.contact_key.clone(),
            };
            println!("accepting HL7 v2 ADT over MLLP on {mllp}");
            Some(tokio::spawn(async move {
                let limits = carepath_engine::hl7::Limits::default();
                if let Err(e) =
                    carepath_engine::hl7::listen(listener, service, limits, std::future::pending())
                        .await
                {
                    tracing::error!("the MLLP listener stopped: {e}");
                }
            }))
        }
        None => None,
    };
    let app = carepath_admin_api::router(state);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    // The address bound, so that port 0 says which port was chosen.
    let bound = listener.local_addr()?;
    println!(
        "serving the admin API on http://{bound} (OpenAPI at /openapi.json); full pass at `{cron}` {tz}; sweeping every {sweep_seconds}s"
    );
    println!(
        "audit checkpoints: {}; trusted proxies: {}",
        audit.checkpoints.display(),
        if access.trusted_proxies.is_empty() {
            "none".to_string()
        } else {
            access
                .trusted_proxies
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let scheduler = tokio::spawn(async move {
        let mut last_checkpoint = None;
        audit
            .checkpoint_if_changed(&pool, &mut last_checkpoint)
            .await;
        let mut next_full = schedule
            .find_next_occurrence(&Timestamp::now().to_zoned(zone.clone()), false)
            .ok();
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(sweep_seconds.max(1))).await;
            let now = Timestamp::now();
            let programs = shared.read().map(|p| p.clone()).unwrap_or_default();
            let full = next_full.as_ref().is_some_and(|n| n.timestamp() <= now);
            match scheduler::run_pass(&pool, &programs, now, &scheduler::PassOptions::default())
                .await
            {
                Ok(s) if s.stepped > 0 || s.scale_reminders > 0 || s.scale_expired > 0 || full => {
                    tracing::info!(
                        stepped = s.stepped,
                        actions = s.actions,
                        errors = s.errors,
                        scale_reminders = s.scale_reminders,
                        scale_expired = s.scale_expired,
                        full,
                        "scheduler pass"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::error!("scheduler pass failed: {e}"),
            }
            if let Some(config) = &delivery {
                match carepath_engine::delivery::dispatch_once(&pool, config, now).await {
                    Ok(d) => tracing::debug!("dispatch: {d}"),
                    Err(e) => tracing::error!("dispatch failed: {e}"),
                }
            }
            if full {
                if let Err(e) = carepath_engine::store::queries::escalate_overdue(&pool, now).await
                {
                    tracing::error!("escalation sweep failed: {e}");
                }
                next_full = schedule
                    .find_next_occurrence(&now.to_zoned(zone.clone()), false)
                    .ok();
            }
            // Every pass ends with a checkpoint when the record grew: truncation is then detected
            // back to the last pass.
            audit
                .checkpoint_if_changed(&pool, &mut last_checkpoint)
                .await;
        }
    });
    serve_until_interrupted(listener, app).await?;
    scheduler.abort();
    if let Some(hl7) = hl7 {
        hl7.abort();
    }
    Ok(ExitCode::SUCCESS)
}

fn pathway_tests(paths: &[PathBuf], require_coverage: bool) -> anyhow::Result<ExitCode> {
    use carepath_engine::pathway_test;
    let files = pathway_test::test_files(paths)?;
    if files.is_empty() {
        anyhow::bail!(
            "no pathway tests (*.test.yaml) under {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut reports = Vec::new();
    let mut failed = 0;
    for f in &files {
        let r = pathway_test::run_file(f);
        if r.passed() {
            println!("ok    {} ({} case(s))", r.file, r.cases);
        } else {
            failed += 1;
            println!("FAIL  {}", r.file);
            for line in &r.failures {
                println!("      {line}");
            }
        }
        reports.push(r);
    }
    let mut uncovered = 0;
    for (pathway, gaps) in pathway_test::merged_coverage(&reports) {
        if gaps.is_empty() {
            println!("coverage {pathway}: every state visited, every transition taken");
        } else {
            uncovered += gaps.len();
            println!("coverage {pathway}: {} gap(s)", gaps.len());
            for g in gaps {
                println!("      {g}");
            }
        }
    }
    let cases: usize = reports.iter().map(|r| r.cases).sum();
    println!(
        "{} file(s), {cases} case(s): {failed} failed, {uncovered} coverage gap(s)",
        files.len()
    );
    Ok(if failed > 0 || (require_coverage && uncovered > 0) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn simulate(opts: carepath_simulator::Options) -> anyhow::Result<ExitCode> {
    let sim = carepath_simulator::simulate(&opts).map_err(anyhow::Error::msg)?;
    print!("{}", sim.report.text());
    for f in &sim.written {
        eprintln!("wrote {f}");
    }
    if sim.failures.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("{} expectation(s) failed:", sim.failures.len());
    for f in &sim.failures {
        eprintln!("  {f}");
    }
    Ok(ExitCode::from(1))
}

/// Serves the admin API on `listener` until Ctrl-C, with each request's socket peer known (the
/// audit records it).
pub(crate) async fn serve_until_interrupted(
    listener: tokio::net::TcpListener,
    app: axum::Router,
) -> std::io::Result<()> {
    carepath_admin_api::serve(listener, app, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

/// How the workstation's sessions behave.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct WebArgs {
    /// Mark session cookies `Secure`: set it whenever the workstation is reached over HTTPS
    /// (directly or through a TLS-terminating proxy), so the browser never sends them in clear.
    #[arg(long, env = "CAREPATH_SECURE_COOKIES")]
    secure_cookies: bool,
    /// A workstation session unused for this many minutes ends.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=1440))]
    session_idle_minutes: u32,
    /// A workstation session ends this many hours after sign-in, however busy.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=168))]
    session_hours: u32,
}

impl WebArgs {
    fn config(&self) -> carepath_admin_api::web::WebConfig {
        carepath_admin_api::web::WebConfig {
            secure_cookies: self.secure_cookies,
            idle_seconds: i64::from(self.session_idle_minutes) * 60,
            lifetime_seconds: i64::from(self.session_hours) * 3600,
            ..Default::default()
        }
    }
}

/// Which peers' `X-Forwarded-For` the audit believes.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ProxyArgs {
    /// A reverse proxy whose `X-Forwarded-For` is believed (repeatable); requests from any other
    /// peer are audited with the peer's own address.
    #[arg(
        long = "trusted-proxy",
        env = "CAREPATH_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    trusted_proxy: Vec<std::net::IpAddr>,
}
