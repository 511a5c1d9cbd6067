//! `gotrace`: see where a running Go program allocates heap memory.
//!
//! The binary is thin: argument parsing and output live here, the Go binary analysis lives in
//! the `gobin` crate.

mod bench;
mod cli;
mod duty;
mod ebpf;
mod explain;
mod export;
mod inspect;
mod live;
mod memprofile;
mod mode;
mod privileges;
mod probes;
mod process;
mod profile;
mod remote;
mod report;
mod serve;
mod session;
mod store;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Inspect(args) => args
            .resolve()
            .and_then(|config| inspect::run(&config))
            .map(|()| ExitCode::SUCCESS),
        cli::Command::Attach(args) => args
            .trace
            .resolve(false)
            .and_then(|config| session::run(session::Target::Attach(args.pid), &config)),
        cli::Command::Run(args) => {
            let mut command = args.command.into_iter();
            match (args.trace.resolve(true), command.next()) {
                (Ok(config), Some(program)) => session::run(
                    session::Target::Run {
                        command: program,
                        args: command.collect(),
                    },
                    &config,
                ),
                (Err(e), _) => Err(e),
                (Ok(_), None) => Err(anyhow::anyhow!("no program given after --")),
            }
        }
        cli::Command::Bench(cli::BenchCommand::EmptyProbe { pid, at, duration }) => {
            bench::empty_probe(pid, at.into(), duration).map(|()| ExitCode::SUCCESS)
        }
        cli::Command::Bench(cli::BenchCommand::Symbolize { pid, stacks, timeout }) => {
            bench::symbolize(pid, stacks, timeout).map(|()| ExitCode::SUCCESS)
        }
        cli::Command::Explain(args) => args
            .resolve()
            .and_then(|config| explain::run(&config))
            .map(|()| ExitCode::SUCCESS),
        cli::Command::Serve(args) => args
            .resolve()
            .and_then(|config| serve::run(&config))
            .map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            // `{:#}` prints the whole context chain on one line: "cannot read x: No such file".
            eprintln!("gotrace: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
