//! The hidden `gotrace generate` command: man pages and shell completions made from this very
//! command line, so that they cannot drift from `--help` (`cargo xtask dist` packages them).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, CommandFactory as _, ValueEnum};

/// What `gotrace generate` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Generated {
    /// Man pages in roff: gotrace.1 and one gotrace-COMMAND.1 per command
    Man,
    /// Bash completions (gotrace.bash)
    Bash,
    /// Zsh completions (_gotrace)
    Zsh,
    /// Fish completions (gotrace.fish)
    Fish,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// What to write
    #[arg(value_enum)]
    pub what: Generated,
    /// The directory to write into (created if missing)
    pub dir: PathBuf,
}

impl GenerateArgs {
    /// Writes the files and returns their paths.
    pub fn run(&self) -> anyhow::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
        let mut command = super::Cli::command();
        command.build();
        let written = match self.what {
            Generated::Man => man_pages(&command, &self.dir)?,
            Generated::Bash => vec![completions(clap_complete::Shell::Bash, &mut command, &self.dir)?],
            Generated::Zsh => vec![completions(clap_complete::Shell::Zsh, &mut command, &self.dir)?],
            Generated::Fish => vec![completions(clap_complete::Shell::Fish, &mut command, &self.dir)?],
        };
        Ok(written)
    }
}

/// One page for `gotrace` and one per visible command, named as `man gotrace-attach` expects.
fn man_pages(command: &clap::Command, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut pages = vec![(command.get_name().to_owned(), command.clone())];
    // Not `help`, which clap adds: `man gotrace` covers it.
    for sub in command
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("{}-{}", command.get_name(), sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut roff = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut roff)
            .with_context(|| format!("cannot render the man page {name}"))?;
        std::fs::write(&path, roff).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn completions(shell: clap_complete::Shell, command: &mut clap::Command, dir: &Path) -> anyhow::Result<PathBuf> {
    clap_complete::generate_to(shell, command, "gotrace", dir)
        .with_context(|| format!("cannot write {shell} completions into {}", dir.display()))
}
