//! `gotrace inspect`: print what the analysis library knows about a Go binary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use gobin::procmaps::{AddressMap, ProcessExe, process_exe};
use gobin::{
    BuildInfo, COUNTING_RULE, Frame, FunctionSource, GoBinary, Linkage, ProbePoint, ProbeRole, StackCheck, TypeSource,
};
use serde::Serialize;

use crate::config::{InspectConfig, InspectFormat, InspectTarget};

/// What to read: the binary's path and, for a PID, the process's view of it.
struct Subject {
    path: PathBuf,
    process: Option<(u32, ProcessExe)>,
}

#[derive(Debug, Serialize)]
struct ProcessInfo {
    pid: u32,
    /// The executable's path inside the process's mount namespace.
    exe: PathBuf,
    /// Address at which the binary's first byte is mapped.
    #[serde(serialize_with = "hex_opt")]
    load_base: Option<u64>,
    #[serde(skip)]
    addresses: AddressMap,
}

#[derive(Debug, Serialize)]
#[expect(clippy::struct_excessive_bools, reason = "the JSON keys of `inspect --format json`")]
struct Report<'a> {
    binary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    process: Option<&'a ProcessInfo>,
    go_version: &'a str,
    /// How the version was found: `buildinfo`, or `runtime.buildVersion` by symbol or by
    /// search when the binary has no `.go.buildinfo`.
    go_version_source: gobin::VersionSource,
    /// The import path taken as the program's own code (`--callsite user`, the YOUR CODE
    /// column): the main module, or without build info a guess from `main.main`'s file.
    #[serde(skip_serializing_if = "Option::is_none")]
    main_module: Option<String>,
    arch: &'static str,
    pie: bool,
    has_dwarf: bool,
    has_symtab: bool,
    has_pclntab: bool,
    linkage: Linkage,
    build_info: &'a BuildInfo,
    functions: FunctionSummary,
    counting_rule: &'static str,
    probes: Vec<ProbeReport>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    symbols: Vec<PcReport>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    types: Vec<TypeReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_list: Option<Vec<FunctionReport>>,
}

#[derive(Debug, Serialize)]
struct FunctionSummary {
    count: usize,
    source: FunctionSource,
}

#[derive(Debug, Serialize)]
struct ProbeReport {
    function: String,
    #[serde(serialize_with = "hex")]
    address: u64,
    #[serde(serialize_with = "hex")]
    end: u64,
    #[serde(serialize_with = "hex")]
    probe_address: u64,
    file_offset: u64,
    role: ProbeRole,
    kind: &'static str,
    stack_check: StackCheck,
    args: BTreeMap<&'static str, String>,
    /// The same, in parameter order, for text output.
    #[serde(skip)]
    args_in_order: Vec<(&'static str, String)>,
    arg_sources: BTreeMap<&'static str, gobin::ArgSource>,
    return_address: String,
    skip_if_caller_in: Vec<String>,
    skip_zero_size: bool,
}

impl From<&ProbePoint> for ProbeReport {
    fn from(p: &ProbePoint) -> Self {
        Self {
            function: p.function.clone(),
            address: p.address,
            end: p.end,
            probe_address: p.probe_address,
            file_offset: p.file_offset,
            role: p.role,
            kind: p.kind,
            stack_check: p.stack_check,
            args: p.args.iter().map(|a| (a.role.key(), a.register.name())).collect(),
            args_in_order: p.args.iter().map(|a| (a.role.key(), a.register.name())).collect(),
            arg_sources: p.args.iter().map(|a| (a.role.key(), a.source)).collect(),
            return_address: p.return_address.to_string(),
            skip_if_caller_in: p.skip_if_caller_in.iter().map(|f| f.name.clone()).collect(),
            skip_zero_size: p.skip_zero_size,
        }
    }
}

#[derive(Debug, Serialize)]
struct PcReport {
    #[serde(serialize_with = "hex")]
    pc: u64,
    /// The link-time address (differs from `pc` for a PIE process).
    #[serde(serialize_with = "hex_opt")]
    static_pc: Option<u64>,
    frames: Vec<Frame>,
}

#[derive(Debug, Serialize)]
struct TypeReport {
    #[serde(serialize_with = "hex")]
    address: u64,
    #[serde(serialize_with = "hex_opt")]
    static_address: Option<u64>,
    name: Option<String>,
    source: Option<TypeSource>,
}

#[derive(Debug, Serialize)]
struct FunctionReport {
    name: String,
    #[serde(serialize_with = "hex")]
    start: u64,
    #[serde(serialize_with = "hex")]
    end: u64,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's serialize_with passes a reference"
)]
fn hex<S: serde::Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{value:#x}"))
}

#[expect(clippy::ref_option, reason = "serde's serialize_with passes a reference")]
fn hex_opt<S: serde::Serializer>(value: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => s.serialize_str(&format!("{v:#x}")),
        None => s.serialize_none(),
    }
}

pub fn run(config: &InspectConfig) -> anyhow::Result<()> {
    let subject = resolve_subject(&config.target)?;
    let data = std::fs::read(&subject.path).with_context(|| format!("cannot read {}", subject.path.display()))?;
    let binary = GoBinary::parse(&data).with_context(|| format!("cannot inspect {}", subject.path.display()))?;
    let process = match &subject.process {
        Some((pid, exe)) => Some(process_info(*pid, exe, &binary)?),
        None => None,
    };
    let report = build_report(config, &subject.path, &binary, process.as_ref())?;
    let out = match config.format {
        InspectFormat::Json => serde_json::to_string_pretty(&report).context("cannot encode the report")? + "\n",
        InspectFormat::Text => render_text(&report),
    };
    print!("{out}");
    Ok(())
}

fn build_report<'a>(
    config: &InspectConfig,
    path: &std::path::Path,
    binary: &'a GoBinary<'_>,
    process: Option<&'a ProcessInfo>,
) -> anyhow::Result<Report<'a>> {
    let probes = binary
        .probe_points()
        .context("cannot resolve the allocation probe points")?;
    // Addresses given for a process are its own; the binary knows link-time addresses.
    let translate = |addr: u64| match process {
        Some(p) => p.addresses.to_static(addr),
        None => Some(addr),
    };
    let symbols = config
        .pcs
        .iter()
        .map(|&pc| {
            let static_pc = translate(pc);
            PcReport {
                pc,
                static_pc,
                frames: static_pc.map(|s| binary.symbolize(s)).unwrap_or_default(),
            }
        })
        .collect();
    let types = config
        .types
        .iter()
        .map(|&address| {
            let static_address = translate(address);
            let found = static_address.and_then(|a| binary.type_name(a));
            TypeReport {
                address,
                static_address,
                name: found.as_ref().map(|(n, _)| n.clone()),
                source: found.map(|(_, s)| s),
            }
        })
        .collect();
    let function_list = config.functions.as_ref().map(|filter| {
        binary
            .functions()
            .iter()
            .filter(|f| f.name.contains(filter.as_str()))
            .map(|f| FunctionReport {
                name: f.name.clone(),
                start: f.start,
                end: f.end,
            })
            .collect()
    });
    let sections = binary.debug_sections();
    let linkage = binary.linkage();
    Ok(Report {
        binary: path.display().to_string(),
        process,
        go_version: &binary.build_info().go_version,
        go_version_source: binary.version_source(),
        main_module: binary.main_module(),
        arch: binary.arch().name(),
        pie: linkage.pie,
        has_dwarf: sections.dwarf,
        has_symtab: sections.symtab,
        has_pclntab: sections.pclntab,
        linkage,
        build_info: binary.build_info(),
        functions: FunctionSummary {
            count: binary.functions().len(),
            source: binary.functions().source(),
        },
        counting_rule: COUNTING_RULE,
        probes: probes.iter().map(ProbeReport::from).collect(),
        symbols,
        types,
        function_list,
    })
}

fn resolve_subject(target: &InspectTarget) -> anyhow::Result<Subject> {
    match target {
        InspectTarget::File(path) => {
            if !path.exists() {
                anyhow::bail!("{}: no such file", path.display());
            }
            Ok(Subject {
                path: path.clone(),
                process: None,
            })
        }
        InspectTarget::Pid(pid) => {
            let exe = process_exe(*pid).with_context(|| format!("cannot find the executable of process {pid}"))?;
            Ok(Subject {
                path: exe.path.clone(),
                process: Some((*pid, exe)),
            })
        }
    }
}

/// How a running process maps the binary, for translating its addresses.
fn process_info(pid: u32, exe: &ProcessExe, binary: &GoBinary<'_>) -> anyhow::Result<ProcessInfo> {
    let addresses = AddressMap::for_process(pid, exe, binary.load_segments())
        .with_context(|| format!("cannot read the memory map of process {pid}"))?;
    Ok(ProcessInfo {
        pid,
        exe: exe.path_in_process.clone(),
        load_base: addresses.base(),
        addresses,
    })
}

fn render_text(r: &Report<'_>) -> String {
    let mut s = String::new();
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let _ = writeln!(s, "binary       {}", r.binary);
    if let Some(p) = r.process {
        let base = p.load_base.map_or_else(|| "?".to_owned(), |b| format!("{b:#x}"));
        let _ = writeln!(
            s,
            "process      pid {}, exe {}, loaded at {base}",
            p.pid,
            p.exe.display()
        );
    }
    let _ = match r.go_version_source {
        gobin::VersionSource::Buildinfo => writeln!(s, "go version   {}", r.go_version),
        other => writeln!(
            s,
            "go version   {} (from {}; no .go.buildinfo)",
            r.go_version,
            other.as_str()
        ),
    };
    if let Some(m) = &r.build_info.main_module {
        let _ = writeln!(s, "main module  {} {}", m.path, m.version);
    }
    if let Some(path) = &r.build_info.path {
        let _ = writeln!(s, "main package {path}");
    }
    if r.build_info.main_module.is_none()
        && let Some(m) = &r.main_module
    {
        let _ = writeln!(s, "your code    {m} (from main.main's file; no build info)");
    }
    let _ = writeln!(s, "arch         {}", r.arch);
    let _ = writeln!(s, "pie          {}", yes_no(r.pie));
    let linking = if r.linkage.dynamic {
        let libs = if r.linkage.needed.is_empty() {
            "no libraries".to_owned()
        } else {
            r.linkage.needed.join(", ")
        };
        format!(
            "dynamic ({}; {libs})",
            r.linkage.interpreter.as_deref().unwrap_or("no interpreter")
        )
    } else {
        "static".to_owned()
    };
    let _ = writeln!(s, "linking      {linking}");
    let _ = writeln!(s, "cgo          {}", yes_no(r.linkage.cgo));
    let _ = writeln!(
        s,
        "debug info   .symtab {}, DWARF {}, .gopclntab {}",
        yes_no(r.has_symtab),
        yes_no(r.has_dwarf),
        yes_no(r.has_pclntab)
    );
    let source = match r.functions.source {
        FunctionSource::Symtab => ".symtab",
        FunctionSource::Pclntab => ".gopclntab",
    };
    let _ = writeln!(s, "functions    {} (from {source})", r.functions.count);
    if !r.build_info.deps.is_empty() {
        let _ = writeln!(s, "dependencies {}", r.build_info.deps.len());
    }
    let _ = writeln!(s);
    render_probes(&mut s, &r.probes);
    let _ = writeln!(s);
    let _ = writeln!(s, "counting rule: {}", r.counting_rule);
    render_lookups(&mut s, r);
    s
}

fn render_probes(s: &mut String, probes: &[ProbeReport]) {
    let _ = writeln!(s, "allocation probes ({})", probes.len());
    let mut rows = vec![[
        "ROLE".to_owned(),
        "FUNCTION".to_owned(),
        "ENTRY".to_owned(),
        "PROBE".to_owned(),
        "FILE OFFSET".to_owned(),
        "ARGS".to_owned(),
        "RETURN ADDR".to_owned(),
    ]];
    for p in probes {
        let probe = match p.stack_check {
            StackCheck::Checked { .. } => format!("{:#x} (+{:#x})", p.probe_address, p.probe_address - p.address),
            StackCheck::NoSplit => format!("{:#x} (nosplit)", p.probe_address),
        };
        let role = p.role.key();
        let args = p
            .args_in_order
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        rows.push([
            role.to_owned(),
            p.function.clone(),
            format!("{:#x}", p.address),
            probe,
            format!("{:#x}", p.file_offset),
            args,
            p.return_address.clone(),
        ]);
    }
    write_table(s, &rows);
}

/// The answers to `--pc`, `--type` and `--functions`.
fn render_lookups(s: &mut String, r: &Report<'_>) {
    for pc in &r.symbols {
        let _ = writeln!(s);
        match pc.static_pc {
            Some(sp) if sp != pc.pc => {
                let _ = writeln!(s, "pc {:#x} (link-time {sp:#x})", pc.pc);
            }
            Some(_) => {
                let _ = writeln!(s, "pc {:#x}", pc.pc);
            }
            None => {
                let _ = writeln!(s, "pc {:#x}: not in the binary's mappings", pc.pc);
            }
        }
        if pc.static_pc.is_some() && pc.frames.is_empty() {
            let _ = writeln!(s, "  no function contains it");
        }
        for f in &pc.frames {
            let inl = if f.inlined { " (inlined)" } else { "" };
            let _ = writeln!(s, "  {} {}:{}{inl}", f.function, f.file, f.line);
        }
    }
    if !r.types.is_empty() {
        let _ = writeln!(s);
    }
    for t in &r.types {
        match (&t.name, t.source) {
            (Some(name), Some(source)) => {
                let from = match source {
                    TypeSource::Dwarf => "DWARF",
                    TypeSource::Descriptor => "type descriptor",
                };
                let _ = writeln!(s, "type {:#x}: {name} (from {from})", t.address);
            }
            _ => {
                let _ = writeln!(s, "type {:#x}: not a type descriptor of this binary", t.address);
            }
        }
    }
    if let Some(list) = &r.function_list {
        let _ = writeln!(s);
        let _ = writeln!(s, "functions ({})", list.len());
        for f in list {
            let _ = writeln!(s, "  {:#x}-{:#x} {}", f.start, f.end, f.name);
        }
    }
}

fn write_table<const N: usize>(s: &mut String, rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in rows {
        let mut line = String::from(" ");
        for (i, (w, cell)) in widths.iter().zip(row).enumerate() {
            if i + 1 == N {
                line.push(' ');
                line.push_str(cell);
            } else {
                let _ = write!(line, " {cell:<w$}");
            }
        }
        let _ = writeln!(s, "{}", line.trim_end());
    }
}
