//! Exact mode's stack walker: one copy of the goroutine's live stack ([`StackWindow`]), what
//! each CPU remembers about the goroutines that allocated there ([`Goroutine`]), the walk of
//! the frame-pointer chain through the copy ([`walk_window`]) and the check that a remembered
//! walk still holds ([`replay_walk`]).
//!
//! The probe (`count.rs`, `walker.rs`) copies the stack, finds the goroutine's slot and reads
//! the registers; everything from there on is here.

use tracer_common::{MAX_STACK_DEPTH, StackHasher, UserStack};

use crate::frames::{STACK_PAGE_BYTES, StackWalk, UserMemory, claim, walk_depth};

/// How much of the live stack exact mode copies in its one read, at most.
pub const WINDOW_BYTES: u64 = 16384;
/// The window in words, plus one so that a frame record at its last word can be indexed
/// with a mask the verifier understands.
pub const WINDOW_WORDS: usize = (WINDOW_BYTES / 8) as usize;

/// How many goroutines each CPU remembers ([`Goroutine`]), direct-mapped by `g`.
pub const GOROUTINE_SLOTS: u32 = 8;

/// What exact mode remembers about a goroutine that allocated on this CPU: where its stack
/// ends, and its latest walk, so that the next allocation from the same stack needs no walk.
#[repr(C)]
#[derive(Debug)]
pub struct Goroutine {
    /// The goroutine (its `g`), for `lo` and `hi`.
    pub g: u64,
    /// `g.stack` (`runtime.stack{lo, hi}`, the first field of `runtime.g` in every release,
    /// `src/runtime/runtime2.go`) as last read.
    pub lo: u64,
    pub hi: u64,
    /// The latest walk's hash; 0 when it cannot be replayed.
    pub hash: u64,
    /// Where the walk read its frame records: frame `k` of `stack` (from 1) came from the record
    /// at `fps[k]`, and `fps[len]` is the caller's frame pointer in the last record read.
    pub fps: [u64; MAX_STACK_DEPTH + 1],
    /// The walk itself; also the stack stored in the `STACKS` map when its key is new.
    pub stack: UserStack,
}

impl Goroutine {
    /// The slot of the goroutine `g` among a CPU's [`GOROUTINE_SLOTS`].
    #[inline(always)]
    #[must_use]
    pub fn slot_index(g: u64) -> u32 {
        #[expect(clippy::cast_possible_truncation, reason = "masked to a slot index")]
        let index = ((g >> 6) ^ (g >> 12)) as u32 & (GOROUTINE_SLOTS - 1);
        index
    }
}

/// Exact mode's copy of the traced thread's stack (per CPU: far too big for the BPF stack).
#[repr(C)]
#[derive(Debug)]
pub struct StackWindow {
    /// 1 while a run of the probe on this CPU uses the window and the goroutine slots (see
    /// `count`).
    pub busy: u64,
    /// The user address of `words[0]`; `u64::MAX` when nothing is copied.
    pub base: u64,
    /// Bytes copied.
    pub valid: u64,
    pub words: [u64; WINDOW_WORDS + 1],
}

impl StackWindow {
    /// Copies `len` bytes (at least 16, at most [`WINDOW_BYTES`]) from `at`; false, with
    /// nothing in the window, when the read fails.
    #[inline(always)]
    pub fn copy(&mut self, memory: &impl UserMemory, at: u64, len: u64) -> bool {
        let len = len.clamp(16, WINDOW_BYTES);
        // SAFETY: `len` bytes of the words, which are longer.
        let bytes = unsafe { core::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), len as usize) };
        let copied = memory.read(at, bytes).is_ok();
        self.base = if copied { at } else { u64::MAX };
        self.valid = if copied { len } else { 0 };
        copied
    }

    /// [`Self::valid`], read so that the compiler cannot tell its bound: it would then drop the
    /// mask on the index below as redundant after the comparison with `valid`, and older
    /// verifiers (Debian's 6.1 arm64 kernel, `cargo xtask arm64`) cannot bound an index by a
    /// comparison between two registers (`math between map_value pointer and register with
    /// unbounded min value`).
    #[inline(always)]
    fn valid_bytes(&self) -> u64 {
        // SAFETY: a plain read of this CPU's window, valid for the run of the program.
        unsafe { core::ptr::read_volatile(&raw const self.valid) }
    }

    /// The frame record at `fp` if the copy holds it.
    #[inline(always)]
    #[must_use]
    pub fn copied_record(&self, fp: u64) -> Option<(u64, u64)> {
        let offset = fp.wrapping_sub(self.base);
        let valid = self.valid_bytes();
        if valid < 16 || offset > valid - 16 {
            return None;
        }
        let index = (offset / 8) as usize & (WINDOW_WORDS - 1);
        Some((self.words[index], self.words[index + 1]))
    }

    /// The frame record at `fp`: from the copy when it holds the record, else copied with the
    /// rest of its page.
    #[inline(always)]
    pub fn frame_record(&mut self, memory: &impl UserMemory, fp: u64) -> Option<(u64, u64)> {
        // Below the window (or with no window) the difference wraps to a huge offset.
        let mut offset = fp.wrapping_sub(self.base);
        let valid = self.valid_bytes();
        if valid < 16 || offset > valid - 16 {
            if !self.copy(memory, fp, STACK_PAGE_BYTES - fp % STACK_PAGE_BYTES) {
                return None;
            }
            offset = 0;
        }
        // Masked rather than compared: one instruction, and a bound the verifier sees. A
        // misaligned (garbage) pointer reads the word it falls in, and the walk ends at the
        // next check.
        let index = (offset / 8) as usize & (WINDOW_WORDS - 1);
        Some((self.words[index], self.words[index + 1]))
    }
}

/// Exact mode's walk of Go's frame-pointer chain from the probe into `slot`: the probed `pc`,
/// then one return address per frame record from `fp` on, up to `depth` frames (the configured
/// depth, at most [`MAX_STACK_DEPTH`]). Returns the hash of the frames (the stack's key in the
/// `STACKS` map) and the generation of the slot's stack the walk claimed.
///
/// At the probe (after the stack check, before the probed function saved its frame pointer)
/// the frame-pointer register still holds the caller's frame, so the chain yields the probed
/// pc and then the caller's *caller*: the caller itself is the return address, which the count
/// key carries next to the stack.
///
/// The records come from `window`, the copy of the live stack the probe made in one read
/// (`load_window`); one beyond it is copied with the rest of its page. On this kernel every
/// read of user memory costs ~120 ns before it copies a byte (the helper,
/// `copy_from_user_nofault`, and the hardened-usercopy check of the destination), and a step
/// from a copy ~4 ns: reading records one by one made each frame cost ~80 ns. The kernel's own
/// walker (`bpf_get_stack` with `BPF_F_USER_STACK`) was slower still: ~60 ns a frame
/// (`__get_user` twice per record), and a page fault on the null frame pointer that ends every
/// goroutine's chain (~1.7 µs a walk at 8 frames). Measured with `perf record` on `workloads
/// loop --depth`.
///
/// The loop keeps its state in registers and touches map memory only to read a record and to
/// store a frame. The walk is remembered for [`replay_walk`] unless it ended at a record it
/// could not read or at a zero return address.
#[inline(always)]
pub fn walk_window(
    window: &mut StackWindow,
    slot: &mut Goroutine,
    memory: &impl UserMemory,
    (mut fp, pc): (u64, u64),
    depth: u32,
) -> StackWalk {
    slot.hash = 0;
    // SAFETY: the slot's stack, borrowed for the call.
    let generation = unsafe { claim(&raw mut slot.stack) };
    let depth = walk_depth(depth) as usize;
    slot.stack.frames[0] = pc;
    slot.fps[1] = fp;
    let mut hash = StackHasher::new().push(pc);
    let mut len = 1;
    let mut replayable = true;
    for _ in 1..MAX_STACK_DEPTH {
        if len >= depth {
            break;
        }
        let Some((next_fp, ret)) = window.frame_record(memory, fp) else {
            replayable = false;
            break;
        };
        if ret == 0 || len >= MAX_STACK_DEPTH {
            replayable = false;
            break;
        }
        hash = hash.push(ret);
        slot.stack.frames[len] = ret;
        len += 1;
        slot.fps[len] = next_fp;
        // Frames sit at increasing addresses; anything else is the end or garbage.
        if next_fp <= fp {
            break;
        }
        fp = next_fp;
    }
    slot.stack.len = len as u64;
    let hash = hash.finish();
    if replayable {
        slot.hash = hash;
    }
    StackWalk { hash, generation }
}

/// The walk remembered in `slot`, if the stack still holds it: the same probed `pc` and frame
/// pointer `fp`, and every frame record it read still the same (the same caller's frame pointer
/// and return address), so that walking again would read the same records and end the same
/// way. The checks do not depend on each other, unlike the steps of a walk, which each wait
/// for the record the one before found: about three times faster on the CPU.
#[inline(always)]
#[must_use]
pub fn replay_walk(window: &StackWindow, slot: &Goroutine, (fp, pc): (u64, u64)) -> Option<StackWalk> {
    let generation = slot.stack.generation;
    let hash = slot.hash;
    if hash == 0 || slot.stack.frames[0] != pc || slot.fps[1] != fp {
        return None;
    }
    let len = usize::try_from(slot.stack.len).unwrap_or(0);
    for k in 1..MAX_STACK_DEPTH {
        if k >= len {
            break;
        }
        let (next_fp, ret) = window.copied_record(slot.fps[k])?;
        if next_fp != slot.fps[k + 1] || ret != slot.stack.frames[k] {
            return None;
        }
    }
    // A run that preempted this one and walked into the slot meanwhile moved the generation on.
    (slot.stack.generation == generation).then_some(StackWalk { hash, generation })
}
