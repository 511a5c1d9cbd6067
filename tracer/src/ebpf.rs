//! The compiled eBPF probes, embedded in the `gotrace` binary.
//!
//! `build.rs` compiles the `tracer-ebpf` crate for `bpfel-unknown-none` on every build of this
//! crate (a no-op when its sources did not change) and passes the object's path in
//! `GOTRACE_EBPF_OBJECT`. The object is an ELF file that [`aya::Ebpf::load`] parses; the names of
//! its program and maps are in [`tracer_common`].

/// The eBPF object file with gotrace's probes: ELF, little-endian BPF, with BTF.
///
/// The bytes are 16-byte aligned ([`aya::include_bytes_aligned`]): the ELF parser aya uses reads
/// headers in place and refuses misaligned input.
#[must_use]
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(env!("GOTRACE_EBPF_OBJECT"))
}

#[cfg(test)]
mod tests {
    use aya_obj::{Object, ProgramSection};
    use tracer_common::{ALLOC_COUNT_PROGRAM, CONFIG_MAP, COUNTS_MAP, STACK_SCRATCH_MAP, STACKS_MAP, STATS_MAP};

    /// Parses the object the way `aya::Ebpf::load` does before it talks to the kernel, so a
    /// renamed probe or map, or a broken build, shows up without root.
    #[test]
    fn object_has_the_probe_its_maps_and_btf() {
        let object = Object::parse(super::object()).expect("the embedded eBPF object parses");

        let program = object
            .programs
            .get(ALLOC_COUNT_PROGRAM)
            .unwrap_or_else(|| panic!("no program {ALLOC_COUNT_PROGRAM}"));
        assert!(
            matches!(program.section, ProgramSection::UProbe { sleepable: false }),
            "{ALLOC_COUNT_PROGRAM} is in section {:?}, not a plain uprobe",
            program.section
        );
        // bpf-linker only emits BTF when asked (tracer-ebpf/build.rs); the kernel wants it for
        // function and line info.
        assert!(
            object.btf.is_some() && object.btf_ext.is_some(),
            "the object has no BTF"
        );
        for map in [CONFIG_MAP, STATS_MAP, STACKS_MAP, STACK_SCRATCH_MAP, COUNTS_MAP] {
            assert!(
                object.maps.contains_key(map),
                "no map {map}; maps: {:?}",
                object.maps.keys().collect::<Vec<_>>()
            );
        }
    }
}
