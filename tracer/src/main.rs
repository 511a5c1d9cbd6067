//! `gotrace`: see where a running Go program allocates heap memory.
//!
//! The binary is thin: argument parsing and output live here, the Go binary analysis lives in
//! the `gobin` crate.

mod cli;
mod ebpf;
mod inspect;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Inspect(args) => args.resolve().and_then(|config| inspect::run(&config)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole context chain on one line: "cannot read x: No such file".
            eprintln!("gotrace: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
