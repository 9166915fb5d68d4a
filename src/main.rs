//! The `carepath` command line: parses arguments and hands each command to the library crates.
//! Only this binary installs a tracing subscriber and uses `anyhow`.

#![forbid(unsafe_code)]

mod audit;
mod bench;
mod cli;
mod load;
mod release;

fn main() -> std::process::ExitCode {
    cli::main()
}
