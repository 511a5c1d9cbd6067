//! Host tests of the probes' pure logic, against a fake goroutine stack.

use core::cell::Cell;
use std::{boxed::Box, vec, vec::Vec};

use tracer_common::{AddressRange, MAX_NESTED_RANGES, MAX_STACK_DEPTH, ProbeConfig, UserStack};

use crate::{
    UserMemory,
    frames::{STACK_PAGE_BYTES, walk_depth},
    is_nested,
};

mod mspan;
mod paged;
mod window;

/// A fake goroutine stack: `words` at the user address `base`, and nothing mapped around it.
/// Counts the reads, the probes' expensive operation.
struct FakeStack {
    base: u64,
    words: Vec<u64>,
    reads: Cell<usize>,
}

/// Where the fake stacks start: page-aligned, like a goroutine stack in Go's heap arena.
const STACK_BASE: u64 = 0x00c0_0010_0000;

impl FakeStack {
    /// `pages` pages of zeros at [`STACK_BASE`].
    fn new(pages: u64) -> Self {
        Self {
            base: STACK_BASE,
            words: vec![0; usize::try_from(pages * STACK_PAGE_BYTES / 8).unwrap()],
            reads: Cell::new(0),
        }
    }

    /// One past the last address.
    fn end(&self) -> u64 {
        self.base + 8 * self.words.len() as u64
    }

    fn set(&mut self, at: u64, value: u64) {
        let index = usize::try_from((at - self.base) / 8).unwrap();
        self.words[index] = value;
    }

    /// Lays out a frame-pointer chain: a record at each of `fps` (the caller's frame pointer,
    /// the next of `fps` or 0 for the last, then the return address of `rets`).
    fn chain(&mut self, fps: &[u64], rets: &[u64]) {
        assert_eq!(fps.len(), rets.len());
        for (i, (&fp, &ret)) in fps.iter().zip(rets).enumerate() {
            self.set(fp, fps.get(i + 1).copied().unwrap_or(0));
            self.set(fp + 8, ret);
        }
    }

    fn reads(&self) -> usize {
        self.reads.get()
    }
}

impl UserMemory for FakeStack {
    fn read(&self, at: u64, into: &mut [u8]) -> Result<(), i32> {
        self.reads.set(self.reads.get() + 1);
        let len = into.len() as u64;
        if at < self.base || at.checked_add(len).is_none_or(|end| end > self.end()) {
            // -EFAULT, as the helper says.
            return Err(-14);
        }
        for (i, byte) in into.iter_mut().enumerate() {
            let offset = usize::try_from(at - self.base).unwrap() + i;
            *byte = self.words[offset / 8].to_le_bytes()[offset % 8];
        }
        Ok(())
    }
}

/// `n` frame pointers, `gap` bytes apart from `first` up.
fn frame_pointers(first: u64, gap: u64, n: usize) -> Vec<u64> {
    (0..n as u64).map(|i| first + i * gap).collect()
}

/// `n` distinct return addresses in a fake text segment.
fn return_addresses(n: usize) -> Vec<u64> {
    (0..n as u64).map(|i| 0x0040_2000 + 0x10 * i).collect()
}

/// The probed pc the walks start from.
const PC: u64 = 0x0040_1000;

fn empty_stack() -> Box<UserStack> {
    Box::new(UserStack {
        len: 0,
        generation: 0,
        frames: [0; MAX_STACK_DEPTH],
    })
}

/// The frames a walk from [`PC`] through records returning to `rets` yields.
fn expected_frames(rets: &[u64]) -> Vec<u64> {
    core::iter::once(PC).chain(rets.iter().copied()).collect()
}

#[test]
fn walk_depth_is_the_configured_depth_within_the_scratch_slot() {
    let max = u32::try_from(MAX_STACK_DEPTH).unwrap();
    assert_eq!(walk_depth(0), max);
    assert_eq!(walk_depth(1), 1);
    assert_eq!(walk_depth(30), 30);
    assert_eq!(walk_depth(max), max);
    assert_eq!(walk_depth(max + 1), max);
    assert_eq!(walk_depth(u32::MAX), max);
}

#[test]
fn nested_calls_are_those_returning_into_a_configured_range() {
    let mut config = ProbeConfig {
        nested_len: 2,
        ..ProbeConfig::default()
    };
    config.nested[0] = AddressRange {
        start: 0x1000,
        end: 0x2000,
    };
    config.nested[1] = AddressRange {
        start: 0x5000,
        end: 0x5001,
    };
    config.nested[2] = AddressRange {
        start: 0x9000,
        end: 0xa000,
    };
    assert!(is_nested(&config, 0x1000));
    assert!(is_nested(&config, 0x1fff));
    assert!(!is_nested(&config, 0x2000), "ranges are half-open");
    assert!(is_nested(&config, 0x5000));
    assert!(!is_nested(&config, 0x4fff));
    // Ranges beyond `nested_len` are not in use.
    assert!(!is_nested(&config, 0x9000));
    config.nested_len = 3;
    assert!(is_nested(&config, 0x9000));
    // A length beyond the table reads the whole table and no further.
    config.nested_len = u32::MAX;
    assert!(is_nested(&config, 0x9000));
    config.nested_len = 0;
    assert!(!is_nested(&config, 0x1000));
    assert_eq!(config.nested.len(), MAX_NESTED_RANGES);
}
