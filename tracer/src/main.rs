//! `gotrace`: see where a running Go program allocates heap memory.
//!
//! The binary is thin: argument parsing lives here ([`cli`]), resolved into the `tracer`
//! library's configurations before any work starts; everything else is the library.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    tracer::messages::set_quiet(cli.quiet);
    let command = match (cli.version, cli.command) {
        (true, _) => {
            print!("{}", tracer::doctor::version_report());
            return ExitCode::SUCCESS;
        }
        (false, Some(command)) => command,
        (false, None) => {
            eprintln!("gotrace: error: no command given; see gotrace --help");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        cli::Command::Doctor => {
            let (report, can_trace) = tracer::doctor::doctor_report();
            print!("{report}");
            Ok(if can_trace {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        cli::Command::Generate(args) => args.run().map(|written| {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }),
        cli::Command::Inspect(args) => args
            .resolve()
            .and_then(|config| tracer::inspect::run(&config))
            .map(|()| ExitCode::SUCCESS),
        cli::Command::Attach(args) => args
            .trace
            .resolve(false)
            .and_then(|config| tracer::session::run(tracer::session::Target::Attach(args.pid), &config)),
        cli::Command::Run(args) => {
            let mut command = args.command.into_iter();
            match (args.trace.resolve(true), command.next()) {
                (Ok(config), Some(program)) => tracer::session::run(
                    tracer::session::Target::Run {
                        command: program,
                        args: command.collect(),
                    },
                    &config,
                ),
                (Err(e), _) => Err(e),
                (Ok(_), None) => Err(anyhow::anyhow!("no program given after --")),
            }
        }
        cli::Command::Explain(args) => args
            .resolve()
            .and_then(|config| tracer::explain::run(&config))
            .map(|()| ExitCode::SUCCESS),
        cli::Command::Serve(args) => args
            .resolve()
            .and_then(|config| tracer::serve::run(&config))
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
