//! gotrace's library: see where a running Go program allocates heap memory, with eBPF
//! uprobes. The `gotrace` binary is a thin command line over it (`src/main.rs`, `src/cli.rs`);
//! `cargo xtask bench` builds its helpers on it (`examples/bench-probes.rs`).
//!
//! Dependencies point one way, from the commands down to the crates below:
//!
//! - **Commands** — one module each, configured by [`config`]: [`session`] (`attach`,
//!   `run`), [`serve`], [`explain`], [`inspect`], [`doctor`] (and `--version`); [`live`] is
//!   the interactive view.
//! - **Tracing** — [`tracee`] opens a process (its executable, parsed, and address map),
//!   [`probes`] loads and attaches the eBPF programs ([`ebpf`]) in a [`mode`], with span
//!   mode's [`duty`] cycle and go-sampler's [`memprofile`] rate; [`collector`] drains them
//!   into a [`store`] and builds a [`profile`], with in-use heap from the probes and the
//!   runtime's own records ([`mprof`]); [`report`] is the document every output shares,
//!   and [`export`] writes it in each format.
//! - **Support** — [`process`] (processes, `/proc`), [`remote`] (the target's memory),
//!   [`privileges`], [`host`] (the kernel's features), [`messages`] (stderr).
//! - **Below** — `gobin` (Go binary analysis, no root) and `tracer-common` (the types shared
//!   with the probes).
//!
//! No module of the tracing or support layers uses a command module; `tests/layers.rs`
//! checks it.

// Errors are `anyhow` chains whose messages say what failed and why, for the binary to print;
// an `# Errors` section on each public function would repeat them.
#![expect(
    clippy::missing_errors_doc,
    reason = "errors are anyhow chains that explain themselves"
)]

pub mod collector;
pub mod config;
pub mod doctor;
pub mod duty;
pub mod ebpf;
pub mod explain;
pub mod export;
pub mod host;
pub mod inspect;
pub mod live;
pub mod mapped;
pub mod memprofile;
pub mod messages;
pub mod mode;
pub mod mprof;
pub mod privileges;
pub mod probes;
pub mod process;
pub mod profile;
pub mod remote;
pub mod report;
pub mod serve;
pub mod session;
pub mod store;
pub mod tracee;
pub mod uprobe_multi;
