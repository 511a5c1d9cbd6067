//! gotrace's one channel to the operator besides its reports: stderr, every line prefixed
//! `gotrace: `. Reports go to stdout or files, so a pipe such as
//! `gotrace attach 42 -f json | jq` sees only the document.
//!
//! Two kinds of line:
//! - [`progress!`](crate::progress): what gotrace is doing (reading the binary, attached,
//!   a status line every interval, where a file went). `--quiet` turns them off.
//! - [`warning!`](crate::warning): something the operator should know even with `--quiet`,
//!   because a result is partial or a choice was made for them (a process that could not be
//!   traced, probes that could not be attached again, a compiler release other than the
//!   target's).
//!
//! Errors that end the command are printed once, by the binary's `main`.

use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Turns progress lines off (`--quiet`) or on.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether progress lines are off.
#[must_use]
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Prints a progress line on stderr, unless `--quiet`.
#[macro_export]
macro_rules! progress {
    ($($arg:tt)*) => {
        if !$crate::messages::quiet() {
            ::std::eprintln!("gotrace: {}", ::std::format_args!($($arg)*));
        }
    };
}

/// Prints a warning on stderr, `--quiet` or not.
#[macro_export]
macro_rules! warning {
    ($($arg:tt)*) => {
        ::std::eprintln!("gotrace: {}", ::std::format_args!($($arg)*))
    };
}
