//! Reading and writing a live target's memory, and what gotrace reads there: the runtime's
//! own count of heap allocations ([`HeapCounter`]).

use gobin::procmaps::AddressMap;
use gobin::{GoBinary, HeapStatsLayout};

/// Another process's memory, through `process_vm_readv` and `process_vm_writev`.
///
/// They need only ptrace access to the target (`CAP_SYS_PTRACE` for another user's process);
/// `/proc/PID/mem` would also need the file's permissions (mode 0600, owned by the target's
/// user), that is `CAP_DAC_OVERRIDE` as well.
#[derive(Debug, Clone, Copy)]
pub struct RemoteMemory {
    pid: u32,
}

impl RemoteMemory {
    #[must_use]
    pub fn new(pid: u32) -> Self {
        Self { pid }
    }

    /// Reads `buf.len()` bytes at `address` in the target; a partial read is an error.
    pub fn read_at(self, address: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: `local` describes `buf`, writable for its length.
        unsafe { self.transfer(libc::process_vm_readv, local, address) }
    }

    /// Writes `buf` at `address` in the target; a partial write is an error.
    pub fn write_at(self, address: u64, buf: &[u8]) -> std::io::Result<()> {
        let local = libc::iovec {
            iov_base: buf.as_ptr().cast_mut().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: `local` describes `buf`, which process_vm_writev only reads.
        unsafe { self.transfer(libc::process_vm_writev, local, address) }
    }

    /// Copies `local.iov_len` bytes between `local` and `address` in the target with
    /// `process_vm_readv` or `process_vm_writev`; a partial copy is an error.
    ///
    /// # Safety
    /// `local` must describe memory valid for the direction of `copy` (writable for a read).
    unsafe fn transfer(
        self,
        copy: unsafe extern "C" fn(
            libc::pid_t,
            *const libc::iovec,
            libc::c_ulong,
            *const libc::iovec,
            libc::c_ulong,
            libc::c_ulong,
        ) -> libc::ssize_t,
        local: libc::iovec,
        address: u64,
    ) -> std::io::Result<()> {
        let remote = libc::iovec {
            iov_base: address as *mut libc::c_void,
            iov_len: local.iov_len,
        };
        // SAFETY: the caller vouches for `local`; the kernel checks `remote`.
        let n = unsafe {
            copy(
                libc::pid_t::try_from(self.pid).unwrap_or(-1),
                &raw const local,
                1,
                &raw const remote,
                1,
                0,
            )
        };
        match usize::try_from(n) {
            Ok(n) if n == local.iov_len => Ok(()),
            Ok(_) => Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "partial copy")),
            Err(_) => Err(std::io::Error::last_os_error()),
        }
    }
}

/// The bytes a live target's runtime has counted as allocated on its heap: the same total as
/// Go's `runtime.MemStats.TotalAlloc` and `/gc/heap/allocs:bytes`, read from
/// `runtime.memstats.heapStats` without stopping the target (see [`HeapStatsLayout`]).
///
/// The runtime adds to it at exactly the events span mode's probes count (a span given back
/// by `refill` or `releaseAll`, a large object), so over any stretch of time it says how much
/// the probes would have counted had they been attached: what span mode's duty cycle scales by.
#[derive(Debug, Clone)]
pub struct HeapCounter {
    memory: RemoteMemory,
    address: u64,
    layout: HeapStatsLayout,
}

impl HeapCounter {
    /// Finds the counter in process `pid`; `None` when the binary has no symbol table
    /// (stripped) or its runtime's layout is unknown.
    pub fn locate(binary: &GoBinary<'_>, pid: u32, addresses: &AddressMap) -> Option<Self> {
        let (address, layout) = binary.heap_stats().ok()??;
        Some(Self {
            memory: RemoteMemory::new(pid),
            address: addresses.to_runtime(address)?,
            layout,
        })
    }

    /// Bytes allocated so far; `None` when the target cannot be read (it exited).
    ///
    /// The three generations are copied one after the other while the target runs. Only
    /// `consistentHeapStats.read` (behind `runtime/metrics.Read`, which a Prometheus client in
    /// the target calls at every scrape) moves counts between them, adding the previous
    /// generation into the current one and then zeroing it (`src/runtime/mstats.go`), so a
    /// copy taken meanwhile can count a generation twice, or not at all. That takes well
    /// under a microsecond; of three copies in a row, the median is right unless two of them
    /// fell into it.
    #[must_use]
    pub fn allocated_bytes(&self) -> Option<u64> {
        let mut buf = vec![0_u8; self.layout.read_size()];
        let mut read = || {
            self.memory.read_at(self.address, &mut buf).ok()?;
            self.layout.allocated_bytes(&buf)
        };
        let mut readings = [read()?, read()?, read()?];
        readings.sort_unstable();
        Some(readings[1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::{LiveOracle, fixture};

    /// What the counter reads in a live process is what the program's own
    /// `runtime.ReadMemStats` said just before it printed its oracle document (a `TotalAlloc` of
    /// ~200 KB), plus what encoding the document allocated after that, which stays in the
    /// cached spans (the two were equal to the byte when written): on both sides of Go 1.25's
    /// layout change, from DWARF and from the table (`nodwarf`), PIE and cgo (external
    /// linking, a data segment sharing a file page with rodata) included; none without
    /// `.symtab`.
    #[test]
    fn reads_what_the_program_says_it_allocated() {
        for (minor, variant) in [
            ("1.21", "default"),
            ("1.24", "pie"),
            ("1.25", "nodwarf"),
            ("1.27", "default"),
            ("1.27", "cgo"),
            ("1.27", "stripped"),
        ] {
            let f = fixture(minor, variant);
            let live = LiveOracle::start(&f);
            // Opened with gobin directly: `tracee` sits above this module (tests/layers.rs).
            let exe = gobin::procmaps::process_exe(live.pid()).unwrap();
            let data = std::fs::read(&exe.path).unwrap();
            let binary = GoBinary::parse(&data).unwrap();
            let addresses = AddressMap::for_process(live.pid(), &exe, binary.load_segments()).unwrap();
            let counter = HeapCounter::locate(&binary, live.pid(), &addresses);
            if variant == "stripped" {
                assert!(counter.is_none(), "{}", f.name());
                continue;
            }
            let counter = counter.unwrap_or_else(|| panic!("{}: no counter", f.name()));
            let read = counter.allocated_bytes().unwrap();
            let said = live.oracle.total_alloc;
            assert!(
                read >= said && read - said < 32 * 1024,
                "{}: read {read}, the program said {said}",
                f.name()
            );
        }
    }
}
