//! Exact mode's walker: one copy of the live stack, the walk through it, and its replay.

use std::boxed::Box;

use tracer_common::{MAX_STACK_DEPTH, UserStack, stack_hash};

use super::{FakeStack, PC, STACK_BASE, expected_frames, frame_pointers, return_addresses};
use crate::{
    frames::STACK_PAGE_BYTES,
    window::{GOROUTINE_SLOTS, Goroutine, StackWindow, WINDOW_BYTES, replay_walk, walk_window},
};

/// An empty window, made on the heap: it is bigger than clippy likes a stack array.
fn window() -> Box<StackWindow> {
    // SAFETY: a `StackWindow` is integers only, so all zeros is one.
    let mut window = unsafe { Box::<StackWindow>::new_zeroed().assume_init() };
    window.base = u64::MAX;
    window
}

fn goroutine() -> Box<Goroutine> {
    Box::new(Goroutine {
        g: 0,
        lo: 0,
        hi: 0,
        hash: 0,
        fps: [0; MAX_STACK_DEPTH + 1],
        stack: UserStack {
            len: 0,
            generation: 0,
            frames: [0; MAX_STACK_DEPTH],
        },
    })
}

/// A goroutine stack of two pages with `n` frames 0x60 bytes apart from the stack pointer up,
/// copied whole into a window, as exact mode's first read does.
fn copied_stack(n: usize) -> (FakeStack, Box<StackWindow>, u64) {
    let mut stack = FakeStack::new(2);
    let sp = STACK_BASE + 0x100;
    let fps = frame_pointers(sp + 0x20, 0x60, n);
    stack.chain(&fps, &return_addresses(n));
    let mut window = window();
    assert!(window.copy(&stack, sp, stack.end() - sp));
    (stack, window, fps[0])
}

#[test]
fn a_walk_follows_the_chain_and_is_remembered() {
    let (stack, mut window, fp) = copied_stack(5);
    let mut slot = goroutine();
    let walk = walk_window(&mut window, &mut slot, &stack, (fp, PC), 0);
    let frames = expected_frames(&return_addresses(5));
    assert_eq!(slot.stack.frames(), frames);
    assert_eq!(walk.hash, stack_hash(&frames));
    assert_eq!(walk.generation, 1);
    assert_eq!(slot.stack.generation, 1);
    // Remembered, with where each record came from: record k at fps[k], and the null frame
    // pointer that ended the chain last.
    assert_eq!(slot.hash, walk.hash);
    let fps = frame_pointers(fp, 0x60, 5);
    assert_eq!(slot.fps[1..6], fps);
    assert_eq!(slot.fps[6], 0);
    // Every record came from the copy.
    assert_eq!(stack.reads(), 1);

    // The next allocation from the same place needs no walk.
    assert_eq!(replay_walk(&window, &slot, (fp, PC)), Some(walk));
}

#[test]
fn a_replay_needs_the_same_registers_and_every_record_unchanged() {
    let (mut stack, mut window, fp) = copied_stack(5);
    let mut slot = goroutine();
    let walk = walk_window(&mut window, &mut slot, &stack, (fp, PC), 0);
    assert_eq!(replay_walk(&window, &slot, (fp, PC)), Some(walk));
    assert_eq!(replay_walk(&window, &slot, (fp, PC + 4)), None);
    assert_eq!(replay_walk(&window, &slot, (fp + 0x60, PC)), None);

    // Another caller three frames up: the stack changed under the remembered walk.
    stack.set(fp + 2 * 0x60 + 8, 0x0040_9000);
    let sp = window.base;
    assert!(window.copy(&stack, sp, stack.end() - sp));
    assert_eq!(replay_walk(&window, &slot, (fp, PC)), None);
    // A walk that moved a frame pointer.
    stack.set(fp + 2 * 0x60 + 8, return_addresses(5)[2]);
    stack.set(fp + 0x60, fp + 3 * 0x60);
    assert!(window.copy(&stack, sp, stack.end() - sp));
    assert_eq!(replay_walk(&window, &slot, (fp, PC)), None);
}

#[test]
fn a_walk_stops_at_the_configured_depth() {
    let (stack, mut window, fp) = copied_stack(10);
    let mut slot = goroutine();
    let walk = walk_window(&mut window, &mut slot, &stack, (fp, PC), 4);
    let frames = expected_frames(&return_addresses(3));
    assert_eq!(slot.stack.frames(), frames);
    assert_eq!(walk.hash, stack_hash(&frames));
    // A walk cut at the depth ends the same way every time: it can be replayed.
    assert_eq!(slot.hash, walk.hash);
    assert_eq!(replay_walk(&window, &slot, (fp, PC)), Some(walk));
}

#[test]
fn a_walk_stops_at_the_scratch_slots_depth() {
    let mut stack = FakeStack::new(4);
    let sp = STACK_BASE + 0x100;
    let n = MAX_STACK_DEPTH + 20;
    let fps = frame_pointers(sp + 0x10, 0x40, n);
    stack.chain(&fps, &return_addresses(n));
    let mut window = window();
    assert!(window.copy(&stack, sp, stack.end() - sp));
    let mut slot = goroutine();
    let walk = walk_window(&mut window, &mut slot, &stack, (fps[0], PC), 0);
    let frames = expected_frames(&return_addresses(MAX_STACK_DEPTH - 1));
    assert_eq!(slot.stack.frames(), frames);
    assert_eq!(walk.hash, stack_hash(&frames));
}

#[test]
fn a_walk_ends_at_a_zero_return_address_and_is_not_remembered() {
    let (mut stack, mut window, fp) = copied_stack(6);
    stack.set(fp + 3 * 0x60 + 8, 0);
    let sp = window.base;
    assert!(window.copy(&stack, sp, stack.end() - sp));
    let mut slot = goroutine();
    let walk = walk_window(&mut window, &mut slot, &stack, (fp, PC), 0);
    let frames = expected_frames(&return_addresses(3));
    assert_eq!(slot.stack.frames(), frames);
    assert_eq!(walk.hash, stack_hash(&frames));
    assert_eq!(slot.hash, 0);
    assert_eq!(replay_walk(&window, &slot, (fp, PC)), None);
}

#[test]
fn a_walk_ends_at_a_frame_pointer_that_does_not_go_up() {
    let (mut stack, mut window, fp) = copied_stack(6);
    // The third record points back at the first.
    stack.set(fp + 2 * 0x60, fp);
    let sp = window.base;
    assert!(window.copy(&stack, sp, stack.end() - sp));
    let mut slot = goroutine();
    let walk = walk_window(&mut window, &mut slot, &stack, (fp, PC), 0);
    let frames = expected_frames(&return_addresses(3));
    assert_eq!(slot.stack.frames(), frames);
    // It ended where the stack says it ends: remembered.
    assert_eq!(slot.hash, walk.hash);
}

#[test]
fn a_record_beyond_the_window_is_copied_with_the_rest_of_its_page() {
    let mut stack = FakeStack::new(3);
    let sp = STACK_BASE + 0x100;
    // Two records in the first page, two in the second, one in the third.
    let fps = [
        sp + 0x20,
        sp + 0x80,
        STACK_BASE + STACK_PAGE_BYTES + 0x40,
        STACK_BASE + STACK_PAGE_BYTES + 0x400,
        STACK_BASE + 2 * STACK_PAGE_BYTES + 0x8,
    ];
    let rets = return_addresses(fps.len());
    stack.chain(&fps, &rets);
    let mut window = window();
    // A first copy of the stack pointer's page only, as when the stack top is unknown.
    assert!(window.copy(&stack, sp, STACK_PAGE_BYTES - sp % STACK_PAGE_BYTES));
    let mut slot = goroutine();
    let walk = walk_window(&mut window, &mut slot, &stack, (fps[0], PC), 0);
    assert_eq!(slot.stack.frames(), expected_frames(&rets));
    assert_eq!(walk.hash, stack_hash(&expected_frames(&rets)));
    // The first copy, then one for each further page.
    assert_eq!(stack.reads(), 3);
    assert_eq!(window.base, fps[4]);
    assert_eq!(window.valid, STACK_PAGE_BYTES - 8);
    assert_eq!(slot.hash, walk.hash);
}

#[test]
fn a_walk_ends_at_a_record_it_cannot_read_and_is_not_remembered() {
    let (mut stack, mut window, fp) = copied_stack(4);
    // The last record's caller is outside the stack, beyond anything mapped.
    stack.set(fp + 3 * 0x60, STACK_BASE + 16 * STACK_PAGE_BYTES);
    let sp = window.base;
    assert!(window.copy(&stack, sp, stack.end() - sp));
    let mut slot = goroutine();
    let walk = walk_window(&mut window, &mut slot, &stack, (fp, PC), 0);
    let frames = expected_frames(&return_addresses(4));
    assert_eq!(slot.stack.frames(), frames);
    assert_eq!(walk.hash, stack_hash(&frames));
    assert_eq!(slot.hash, 0);
    // The failed read leaves nothing in the window.
    assert_eq!((window.base, window.valid), (u64::MAX, 0));
    assert_eq!(window.copied_record(fp), None);
}

#[test]
fn a_copy_is_at_least_a_record_and_at_most_the_window() {
    let stack = FakeStack::new(8);
    let mut window = window();
    assert!(window.copy(&stack, STACK_BASE, 0));
    assert_eq!(window.valid, 16);
    assert!(window.copy(&stack, STACK_BASE, u64::MAX));
    assert_eq!(window.valid, WINDOW_BYTES);
    // Beyond the stack: nothing copied, nothing found.
    assert!(!window.copy(&stack, stack.end() - 8, 16));
    assert_eq!((window.base, window.valid), (u64::MAX, 0));
    assert_eq!(window.copied_record(stack.end() - 8), None);
}

#[test]
fn copied_records_are_those_wholly_inside_the_copy() {
    let mut stack = FakeStack::new(1);
    let at = STACK_BASE + 0x100;
    stack.set(at + 0x30, 0x1111);
    stack.set(at + 0x38, 0x2222);
    let mut window = window();
    assert!(window.copy(&stack, at, 0x40));
    assert_eq!(window.copied_record(at + 0x30), Some((0x1111, 0x2222)));
    assert_eq!(window.copied_record(at + 0x38), None, "half outside");
    assert_eq!(window.copied_record(at + 0x40), None);
    assert_eq!(window.copied_record(at - 8), None, "below the copy");
    assert_eq!(window.copied_record(at), Some((0, 0)));
}

#[test]
fn goroutines_next_to_each_other_get_different_slots() {
    for g in [0x00c0_0000_0380_u64, 0x00c0_0010_2a80, 0x00c0_0123_4e40] {
        let slot = Goroutine::slot_index(g);
        assert!(slot < GOROUTINE_SLOTS);
        assert_ne!(slot, Goroutine::slot_index(g + 64));
    }
}
