//! Command-line interface: raw arguments, and their resolution into validated configurations
//! before any work starts.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// See where a running Go program allocates heap memory: each callsite, the type it
/// allocates, how often and how big. No recompiling, no pprof import, no restart.
#[derive(Debug, Parser)]
#[command(name = "gotrace", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what gotrace knows about a Go binary: build facts, the allocation entry points it
    /// would probe and how, symbols and type names. Needs no root and does not stop the
    /// process.
    #[command(after_help = "Examples:\n  \
        gotrace inspect ./server                   build facts and probe points\n  \
        gotrace inspect 4242                       the executable of process 4242\n  \
        gotrace inspect ./server --format json     the same, as JSON\n  \
        gotrace inspect 4242 --pc 0x55d0c0a1b2c3   symbolize a runtime address of the process\n  \
        gotrace inspect ./server --type 0x4a1b20   name the type whose descriptor is at 0x4a1b20\n  \
        gotrace inspect ./server --functions main. list functions whose name contains \"main.\"")]
    Inspect(InspectArgs),
}

/// Output formats of `inspect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned, human-readable text.
    Text,
    /// One JSON document.
    Json,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A Go binary, or the PID of a running Go process (a number; write ./123 for a file
    /// named 123). A process's executable is read through /proc/PID/root, so processes in
    /// containers work.
    pub target: String,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Symbolize a program counter (hex, e.g. 0x49a01d), with inlined frames. With a PID it
    /// is an address in the process, translated through /proc/PID/maps. Repeatable.
    #[arg(long = "pc", value_name = "ADDR", value_parser = parse_address)]
    pub pcs: Vec<u64>,

    /// Name the Go type whose runtime type descriptor is at this address (hex). With a PID it
    /// is an address in the process. Repeatable.
    #[arg(long = "type", value_name = "ADDR", value_parser = parse_address)]
    pub types: Vec<u64>,

    /// Also list functions with their address ranges; with a value, only names containing it.
    #[arg(long, value_name = "SUBSTRING", num_args = 0..=1, default_missing_value = "")]
    pub functions: Option<String>,
}

/// What to inspect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A binary on disk.
    File(PathBuf),
    /// A running process.
    Pid(u32),
}

/// `inspect`, validated.
#[derive(Debug)]
pub struct InspectConfig {
    pub target: Target,
    pub format: Format,
    pub pcs: Vec<u64>,
    pub types: Vec<u64>,
    pub functions: Option<String>,
}

impl InspectArgs {
    /// Checks the arguments and turns them into a configuration.
    pub fn resolve(self) -> anyhow::Result<InspectConfig> {
        let target = if !self.target.is_empty() && self.target.bytes().all(|b| b.is_ascii_digit()) {
            let pid: u32 = self
                .target
                .parse()
                .with_context(|| format!("{:?} is not a valid process id", self.target))?;
            if pid == 0 {
                bail!("0 is not a valid process id");
            }
            Target::Pid(pid)
        } else if self.target.is_empty() {
            bail!("the target is empty: give a Go binary or a process id");
        } else {
            Target::File(PathBuf::from(self.target))
        };
        Ok(InspectConfig {
            target,
            format: self.format,
            pcs: self.pcs,
            types: self.types,
            functions: self.functions,
        })
    }
}

/// Parses `0x1234` or `1234` (hex either way, as addresses are always written).
fn parse_address(text: &str) -> Result<u64, String> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    u64::from_str_radix(digits, 16).map_err(|e| format!("{text:?} is not a hex address: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn numbers_are_pids_and_paths_are_files() {
        let resolve = |t: &str| {
            InspectArgs {
                target: t.to_owned(),
                format: Format::Text,
                pcs: vec![],
                types: vec![],
                functions: None,
            }
            .resolve()
        };
        assert_eq!(resolve("4242").unwrap().target, Target::Pid(4242));
        assert_eq!(resolve("./4242").unwrap().target, Target::File("./4242".into()));
        assert!(resolve("0").is_err());
        assert!(resolve("99999999999").is_err());
        assert!(resolve("").is_err());
    }

    #[test]
    fn addresses_are_hex() {
        assert_eq!(parse_address("0x49a01d"), Ok(0x0049_a01d));
        assert_eq!(parse_address("49a01d"), Ok(0x0049_a01d));
        assert!(parse_address("0xzz").is_err());
    }
}
