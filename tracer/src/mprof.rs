//! The runtime's own heap-profile records (`runtime.mbuckets`), read from the live process:
//! what in-use heap includes of the objects sampled before gotrace attached.
//!
//! Go keeps one `bucket` per (stack, size) its heap profiler sampled, on a list whose head is
//! `runtime.mbuckets` (an `atomic.UnsafePointer`, its pointer the first word), linked through
//! `allnext`, never freed (`src/runtime/mprof.go`). A bucket is a 48-byte header
//! (`next, allnext, typ, hash, size, nstk`), `nstk` stack words, then a `memRecord`: an
//! `active` cycle and three `future` ones, each `{allocs, frees, alloc_bytes, free_bytes}`
//! (Go 1.21–1.26) or `{allocs, frees}` (Go 1.27). Mallocs are counted in a future cycle at
//! once and frees when the sweep frees the object, so the sum of `allocs - frees` over the
//! four cycles is the bucket's sampled objects alive now, the same "now" as gotrace's own
//! tracking. Subtracting the objects gotrace tracks (each knows its bucket) leaves those it
//! cannot: sampled before it attached.
//!
//! The stack is `runtime.callers`'s: one *logical* frame per word (inlined calls expanded, each
//! as its call pc + 1, `tracebackPCs` in `src/runtime/traceback.go`), so each word is
//! symbolized to its innermost frame only.

use gobin::GoBinary;
use gobin::procmaps::AddressMap;

use crate::remote::RemoteMemory;

/// The symbol of the list head.
const MBUCKETS_SYMBOL: &str = "runtime.mbuckets";
/// `bucket`'s header: six words.
const HEADER_BYTES: usize = 48;
/// `memProfile`, the `typ` of a heap-profile bucket (`bucketType`, `src/runtime/mprof.go`).
const MEM_PROFILE: u64 = 1;
/// The most buckets read per walk: a program with more distinct allocation stacks than this
/// gets the rest left out (said in the note), and a corrupt list cannot loop for ever.
pub const MAX_BUCKETS: usize = 200_000;
/// Go's own limit on the stack words of a bucket (`maxProfStackDepth`, 1.23+; 32 before).
const MAX_STACK_WORDS: u64 = 1024;

/// Whether the runtime's records of objects sampled before attach can be read.
#[derive(Debug)]
pub enum RecordsAccess {
    /// They can.
    Readable(RuntimeRecords),
    /// They cannot, or there are none; why, as a clause for the in-use note.
    Unknown(String),
}

/// Where the records are in one process.
#[derive(Debug, Clone, Copy)]
pub struct RuntimeRecords {
    pid: u32,
    /// Address of `runtime.mbuckets` in the process.
    head: u64,
    /// Bytes of one `memRecordCycle`.
    cycle_bytes: usize,
}

/// One bucket's sampled objects alive now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRecord {
    /// The bucket's address (what gotrace's tracked objects name as theirs).
    pub address: u64,
    /// Bytes per object (the block size).
    pub size: u64,
    /// Return pcs, innermost first, one per logical frame.
    pub stack: Vec<u64>,
    /// Sampled objects alive now (allocs minus frees over all cycles, at least 0).
    pub live: u64,
}

impl RuntimeRecords {
    /// Finds the records of process `pid`: `None` without a symbol table (stripped) or for a
    /// Go release whose layout gotrace does not know (before 1.21, after 1.27).
    #[must_use]
    pub fn locate(binary: &GoBinary<'_>, pid: u32, addresses: &AddressMap) -> Option<Self> {
        let version = binary.go_version();
        let cycle_bytes = match (version.major, version.minor) {
            (1, 21..=26) => 32,
            (1, 27) => 16,
            _ => return None,
        };
        let head = addresses.to_runtime(binary.variable(MBUCKETS_SYMBOL)?.address)?;
        Some(Self { pid, head, cycle_bytes })
    }

    /// Walks the list. The runtime prepends buckets while it runs; one added during the walk
    /// is missed (it is newer than gotrace's attach, so its objects are tracked anyway).
    pub fn read(&self) -> std::io::Result<Vec<BucketRecord>> {
        let memory = RemoteMemory::new(self.pid);
        let word = |address: u64| -> std::io::Result<u64> {
            let mut buf = [0u8; 8];
            memory.read_at(address, &mut buf)?;
            Ok(u64::from_ne_bytes(buf))
        };
        let mut out = Vec::new();
        let mut bucket = word(self.head)?;
        let record_bytes = 4 * self.cycle_bytes;
        while bucket != 0 && out.len() < MAX_BUCKETS {
            let mut header = [0u8; HEADER_BYTES];
            memory.read_at(bucket, &mut header)?;
            let field = |i: usize| u64::from_ne_bytes(header[i * 8..i * 8 + 8].try_into().unwrap_or_default());
            let (allnext, typ, size, nstk) = (field(1), field(2), field(4), field(5));
            if typ != MEM_PROFILE || nstk > MAX_STACK_WORDS {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("runtime.mbuckets: a bucket at {bucket:#x} is not a heap-profile bucket"),
                ));
            }
            let words = usize::try_from(nstk).unwrap_or(0);
            let mut rest = vec![0u8; words * 8 + record_bytes];
            memory.read_at(bucket + HEADER_BYTES as u64, &mut rest)?;
            let word_at = |offset: usize| u64::from_ne_bytes(rest[offset..offset + 8].try_into().unwrap_or_default());
            let stack = (0..words).map(|i| word_at(i * 8)).collect();
            let (mut allocs, mut frees) = (0u64, 0u64);
            for cycle in 0..4 {
                let at = words * 8 + cycle * self.cycle_bytes;
                allocs = allocs.wrapping_add(word_at(at));
                frees = frees.wrapping_add(word_at(at + 8));
            }
            out.push(BucketRecord {
                address: bucket,
                size,
                stack,
                live: allocs.saturating_sub(frees),
            });
            bucket = allnext;
        }
        Ok(out)
    }
}
