//! The sampling programs' walker: a short first copy, then a page at a time, one step per
//! frame as `bpf_loop` runs it.

use std::boxed::Box;

use tracer_common::{MAX_STACK_DEPTH, UserStack, stack_hash};

use super::{FakeStack, PC, STACK_BASE, empty_stack, expected_frames, frame_pointers, return_addresses};
use crate::{
    frames::{STACK_PAGE_BYTES, walk_depth},
    paged::{FIRST_READ_BYTES, PAGE_WORDS, PagedStack, StackCopy, WalkState},
};

fn page() -> Box<StackCopy> {
    Box::new(StackCopy { words: [0; PAGE_WORDS] })
}

/// The copy, as the probe's lookup of its `STACK_PAGE` slot finds it.
fn found<'p>(page: &'p mut StackCopy) -> impl FnOnce() -> Option<&'p mut StackCopy> {
    move || Some(page)
}

/// What the probe does: the first copy from the stack pointer, then the steps `bpf_loop` runs
/// (at most the depth less the probed pc), until one says the walk is over. Returns the hash.
fn walk(stack: &FakeStack, sp: u64, fp: u64, depth: u32, page: &mut StackCopy, out: &mut UserStack) -> u64 {
    let mut pages = PagedStack::EMPTY;
    let _ = pages.load_top(page, stack, sp);
    let mut walk = WalkState::start(fp, PC, pages, out);
    for _ in 0..walk_depth(depth) - 1 {
        if !walk.step(found(page), stack, out) {
            break;
        }
    }
    walk.hash()
}

#[test]
fn the_first_copy_is_short_and_holds_the_return_address() {
    let mut stack = FakeStack::new(1);
    let sp = STACK_BASE + 0x100;
    stack.set(sp, 0x0040_5000);
    let mut pages = PagedStack::EMPTY;
    let mut page = page();
    let words = pages.load_top(&mut page, &stack, sp).unwrap();
    assert_eq!(words[0], 0x0040_5000);
    // A record inside the first copy comes from it; one that ends past it is read.
    assert_eq!(pages.frame_record(found(&mut page), &stack, sp), Some((0x0040_5000, 0)));
    assert!(
        pages
            .frame_record(found(&mut page), &stack, sp + FIRST_READ_BYTES - 16)
            .is_some()
    );
    assert_eq!(stack.reads(), 1);
    assert!(
        pages
            .frame_record(found(&mut page), &stack, sp + FIRST_READ_BYTES - 8)
            .is_some()
    );
    assert_eq!(stack.reads(), 2);

    // Near the end of a page, the first copy stops there.
    let near_end = STACK_BASE + STACK_PAGE_BYTES - 0x40;
    stack.set(near_end + 0x38, 7);
    assert!(pages.load_top(&mut page, &stack, near_end).is_some());
    assert_eq!(page.words[7], 7);
    assert_eq!(
        pages.frame_record(found(&mut page), &stack, near_end + 0x30),
        Some((0, 7))
    );
    assert_eq!(stack.reads(), 3);
    // Beyond the end of the stack nothing is copied, and the next record is read again.
    assert!(
        pages
            .load_top(&mut page, &stack, STACK_BASE + STACK_PAGE_BYTES)
            .is_none()
    );
    assert_eq!(
        pages.frame_record(found(&mut page), &stack, near_end + 0x30),
        Some((0, 7))
    );
    assert_eq!(stack.reads(), 5);
    // Without its copy (a failed map lookup) the walk learns nothing, and reads nothing.
    assert_eq!(pages.frame_record(|| None, &stack, near_end + 0x30), None);
    assert_eq!(stack.reads(), 5);
}

#[test]
fn a_walk_reads_the_stack_a_page_at_a_time() {
    let mut stack = FakeStack::new(3);
    let sp = STACK_BASE + 0x100;
    // In the first copy (256 bytes from sp), further up the first page, in the second page
    // and in the third.
    let fps = [
        sp + 0x20,
        sp + 0x80,
        sp + 0x400,
        sp + 0x800,
        STACK_BASE + STACK_PAGE_BYTES + 0x10,
        STACK_BASE + STACK_PAGE_BYTES + 0xf00,
        STACK_BASE + 2 * STACK_PAGE_BYTES + 0x20,
    ];
    let rets = return_addresses(fps.len());
    stack.chain(&fps, &rets);
    let (mut page, mut out) = (page(), empty_stack());
    let hash = walk(&stack, sp, fps[0], 0, &mut page, &mut out);
    let frames = expected_frames(&rets);
    assert_eq!(out.frames(), frames);
    assert_eq!(hash, stack_hash(&frames));
    // The first copy, the rest of the first page from the third record, the second page from
    // the fifth and the third page from the seventh.
    assert_eq!(stack.reads(), 4);
}

#[test]
fn a_walk_stops_at_the_configured_depth() {
    let mut stack = FakeStack::new(2);
    let sp = STACK_BASE + 0x100;
    let fps = frame_pointers(sp + 0x10, 0x50, 12);
    stack.chain(&fps, &return_addresses(12));
    let (mut page, mut out) = (page(), empty_stack());
    let hash = walk(&stack, sp, fps[0], 5, &mut page, &mut out);
    let frames = expected_frames(&return_addresses(4));
    assert_eq!(out.frames(), frames);
    assert_eq!(hash, stack_hash(&frames));
}

#[test]
fn a_walk_never_writes_past_the_scratch_slot() {
    let mut stack = FakeStack::new(4);
    let sp = STACK_BASE + 0x100;
    let n = MAX_STACK_DEPTH + 20;
    let fps = frame_pointers(sp + 0x10, 0x40, n);
    stack.chain(&fps, &return_addresses(n));
    let (mut page, mut out) = (page(), empty_stack());
    let hash = walk(&stack, sp, fps[0], 0, &mut page, &mut out);
    let frames = expected_frames(&return_addresses(MAX_STACK_DEPTH - 1));
    assert_eq!(out.frames(), frames);
    assert_eq!(hash, stack_hash(&frames));

    // Even if the loop ran on, a full slot ends the walk.
    let mut pages = PagedStack::EMPTY;
    let _ = pages.load_top(&mut page, &stack, sp);
    let mut walk = WalkState::start(fps[0], PC, pages, &mut out);
    out.len = MAX_STACK_DEPTH as u64;
    assert!(!walk.step(found(&mut page), &stack, &mut out));
    assert_eq!(out.len, MAX_STACK_DEPTH as u64);
}

#[test]
fn a_walk_ends_at_a_zero_return_address_a_lower_frame_or_an_unreadable_record() {
    let sp = STACK_BASE + 0x100;
    let fps = frame_pointers(sp + 0x10, 0x100, 6);
    let rets = return_addresses(6);
    for (change, frames) in [
        // The fourth record returns to 0: not a frame.
        ((fps[3] + 8, 0), 3),
        // The third record's caller is below it: its return address is the last frame.
        ((fps[2], fps[0]), 3),
        // The third record's caller is beyond the stack.
        ((fps[2], STACK_BASE + 64 * STACK_PAGE_BYTES), 3),
    ] {
        let mut stack = FakeStack::new(2);
        stack.chain(&fps, &rets);
        stack.set(change.0, change.1);
        let (mut page, mut out) = (page(), empty_stack());
        let hash = walk(&stack, sp, fps[0], 0, &mut page, &mut out);
        let frames = expected_frames(&rets[..frames]);
        assert_eq!(out.frames(), frames, "{change:x?}");
        assert_eq!(hash, stack_hash(&frames));
    }
}

#[test]
fn a_record_across_a_page_boundary_is_copied_whole() {
    let mut stack = FakeStack::new(2);
    let sp = STACK_BASE + 0x100;
    let straddling = STACK_BASE + STACK_PAGE_BYTES - 8;
    stack.chain(&[sp + 0x10, straddling], &return_addresses(2));
    let (mut page, mut out) = (page(), empty_stack());
    let hash = walk(&stack, sp, sp + 0x10, 0, &mut page, &mut out);
    let frames = expected_frames(&return_addresses(2));
    assert_eq!(out.frames(), frames);
    assert_eq!(hash, stack_hash(&frames));
}
