//! The sampling programs' stack walker: the stack is copied a page at a time ([`PagedStack`],
//! into a per-CPU [`StackCopy`]), and the walk advances one frame per step ([`WalkState`]),
//! which the probe runs as a `bpf_loop` callback (`walker.rs`).

use tracer_common::{MAX_STACK_DEPTH, StackHasher, UserStack};

use crate::frames::{STACK_PAGE_BYTES, UserMemory};

/// How many 8-byte words [`StackCopy`] holds: a page.
pub const PAGE_WORDS: usize = (STACK_PAGE_BYTES / 8) as usize;
/// How much of the stack [`PagedStack`]'s first read copies from the stack pointer, at most, so
/// that a shallow stack costs one short copy; a deeper record is copied with the rest of its
/// page.
pub const FIRST_READ_BYTES: u64 = 256;

/// A copy of part of the traced thread's stack. The thread is stopped in the probe, so its
/// stack cannot change while the probe reads the copy.
#[repr(C)]
#[derive(Debug)]
pub struct StackCopy {
    pub words: [u64; PAGE_WORDS],
}

/// Which part of the traced thread's stack the [`StackCopy`] (the `STACK_PAGE` map) holds for
/// the current walk.
///
/// Deep stacks (a refill under `encoding/json`'s recursion, a handler under `net/http`) have
/// their frame records kilobytes above the stack pointer. Read one by one, each record cost a
/// `bpf_probe_read_user` (~150 ns), so that a 25-frame walk took microseconds; instead, a
/// record beyond the copy is read together with everything from it to the end of its page,
/// and the records above it come from that copy.
#[derive(Debug)]
pub struct PagedStack {
    /// The user address of the first word; `u64::MAX` when nothing was copied (then nothing
    /// falls inside it).
    base: u64,
    /// Bytes copied.
    valid: u64,
}

impl PagedStack {
    /// Nothing copied yet.
    pub const EMPTY: Self = Self {
        base: u64::MAX,
        valid: 0,
    };

    /// Copies the top of the stack, from the stack pointer `sp`, into `page`; returns its
    /// words.
    #[inline(always)]
    pub fn load_top<'p>(
        &mut self,
        page: &'p mut StackCopy,
        memory: &impl UserMemory,
        sp: u64,
    ) -> Option<&'p [u64; PAGE_WORDS]> {
        self.copy(page, memory, sp, FIRST_READ_BYTES)
    }

    /// Copies up to `at_most` bytes from `at` (an 8-aligned stack address) into the window,
    /// never past the end of `at`'s page, but always 16 bytes: one frame record. (A record that
    /// straddles two pages has both mapped.) Returns the window's words.
    ///
    /// `at_most` is at least 16 and at most a page (the callers' constants).
    #[inline(always)]
    #[expect(clippy::cast_possible_truncation, reason = "at most a page")]
    fn copy<'p>(
        &mut self,
        page: &'p mut StackCopy,
        memory: &impl UserMemory,
        at: u64,
        at_most: u64,
    ) -> Option<&'p [u64; PAGE_WORDS]> {
        let valid = (STACK_PAGE_BYTES - at % STACK_PAGE_BYTES).clamp(16, at_most);
        // SAFETY: `valid` bytes (at most a page) of the copy's words.
        let bytes = unsafe { core::slice::from_raw_parts_mut(page.words.as_mut_ptr().cast::<u8>(), valid as usize) };
        if memory.read(at, bytes).is_err() {
            self.base = u64::MAX;
            self.valid = 0;
            return None;
        }
        self.base = at;
        self.valid = valid;
        Some(&page.words)
    }

    /// The frame record at `fp`: the caller's frame pointer, then the return address into the
    /// caller (Go's layout on amd64 and arm64). From the copy when it holds the record, else
    /// copied with the rest of its page.
    ///
    /// `page` finds the copy (this CPU's `STACK_PAGE` slot); it is called where the copy is used,
    /// in either branch, as the probes always looked it up.
    #[inline(always)]
    pub fn frame_record<'p>(
        &mut self,
        page: impl FnOnce() -> Option<&'p mut StackCopy>,
        memory: &impl UserMemory,
        fp: u64,
    ) -> Option<(u64, u64)> {
        // Below the window (or with no window) the difference wraps to a huge offset.
        let offset = fp.wrapping_sub(self.base);
        // No alignment check: Go's frame pointers are 8-aligned, and with one the compiler
        // would index the stack at an offset the verifier cannot prove aligned. A misaligned
        // (garbage) pointer reads the word it falls in, and the walk ends at the next check.
        let (words, index) = if offset <= STACK_PAGE_BYTES - 16 && offset + 16 <= self.valid {
            (&page()?.words, (offset / 8) as usize)
        } else {
            (self.copy(page()?, memory, fp, STACK_PAGE_BYTES)?, 0)
        };
        let index = index.min(PAGE_WORDS - 2);
        Some((words[index], words[index + 1]))
    }
}

/// A walk's state between its steps.
#[derive(Debug)]
pub struct WalkState {
    /// The frame record to read next.
    fp: u64,
    hash: StackHasher,
    records: PagedStack,
}

impl WalkState {
    /// Puts the probed `pc` in the scratch slot `out` as the first frame; the walk goes on from
    /// the frame record at `fp`, read through `records`.
    #[inline(always)]
    pub fn start(fp: u64, pc: u64, records: PagedStack, out: &mut UserStack) -> Self {
        out.frames[0] = pc;
        out.len = 1;
        Self {
            fp,
            hash: StackHasher::new().push(pc),
            records,
        }
    }

    /// The hash of the frames walked so far: the stack's key in the `STACKS` map.
    #[inline(always)]
    #[must_use]
    pub fn hash(&self) -> u64 {
        self.hash.finish()
    }

    /// Reads the frame record at `fp` into the next frame of `out`; false when the walk is
    /// over. `page` finds the copy of the stack ([`PagedStack::frame_record`]).
    #[inline(always)]
    pub fn step<'p>(
        &mut self,
        page: impl FnOnce() -> Option<&'p mut StackCopy>,
        memory: &impl UserMemory,
        out: &mut UserStack,
    ) -> bool {
        let fp = self.fp;
        let Some((next_fp, ret)) = self.records.frame_record(page, memory, fp) else {
            return false;
        };
        if ret == 0 {
            return false;
        }
        // Checked after the read, next to the store: a bound checked before the helper call
        // survives it only in a stack slot, where older verifiers (Debian's 6.1) lose it.
        let len = usize::try_from(out.len).unwrap_or(MAX_STACK_DEPTH);
        if len >= MAX_STACK_DEPTH {
            return false;
        }
        self.hash = self.hash.push(ret);
        out.frames[len] = ret;
        out.len = len as u64 + 1;
        self.fp = next_fp;
        // Frames sit at increasing addresses; anything else is the end or garbage.
        next_fp > fp
    }
}
