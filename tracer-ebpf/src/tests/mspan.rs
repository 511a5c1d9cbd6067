//! `allocCount - allocCountBeforeCache` of a span, read in one word when it can be.

use core::cell::Cell;
use std::{vec, vec::Vec};

use crate::mspan::objects_taken_from;

/// A fake `mspan` with `allocCount` = `count` at `count_at` and `allocCountBeforeCache` =
/// `before` at `before_at`; other bytes are garbage, as the span's other fields are.
fn span(count_at: u32, count: u16, before_at: u32, before: u16) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..128_u8).map(|b| b.wrapping_mul(37) | 0x80).collect();
    bytes[count_at as usize..][..2].copy_from_slice(&count.to_le_bytes());
    bytes[before_at as usize..][..2].copy_from_slice(&before.to_le_bytes());
    bytes
}

/// [`objects_taken_from`] on `bytes`, and how many reads it took.
fn taken(bytes: &[u8], count_at: u32, before_at: u32) -> (Option<u64>, usize) {
    let reads = Cell::new(0);
    let taken = objects_taken_from(count_at, before_at, |offset| {
        reads.set(reads.get() + 1);
        let word = bytes.get(offset as usize..offset as usize + 8)?;
        Some(u64::from_le_bytes(word.try_into().unwrap()))
    });
    (taken, reads.get())
}

#[test]
fn fields_in_one_word_take_one_read() {
    // Go's layout: allocCount at 98, allocCountBeforeCache at 100 (go1.21 to go1.27, amd64).
    assert_eq!(taken(&span(98, 512, 100, 112), 98, 100), (Some(400), 1));
    // Either order, up to 6 bytes apart.
    assert_eq!(taken(&span(100, 512, 98, 112), 100, 98), (Some(400), 1));
    assert_eq!(taken(&span(8, 9, 14, 2), 8, 14), (Some(7), 1));
    assert_eq!(taken(&span(14, 9, 8, 2), 14, 8), (Some(7), 1));
}

#[test]
fn fields_further_apart_take_a_read_each() {
    assert_eq!(taken(&span(8, 9, 15, 2), 8, 15), (Some(7), 2));
    assert_eq!(taken(&span(100, 65535, 0, 1), 100, 0), (Some(65534), 2));
}

#[test]
fn nothing_taken_is_zero_and_never_negative() {
    assert_eq!(taken(&span(98, 40, 100, 40), 98, 100), (Some(0), 1));
    // A span caught mid-update reads as nothing taken rather than wrapping around.
    assert_eq!(taken(&span(98, 3, 100, 40), 98, 100), (Some(0), 1));
}

#[test]
fn an_unreadable_span_counts_nothing() {
    let none: Vec<u8> = vec![];
    assert_eq!(taken(&none, 98, 100), (None, 1));
    assert_eq!(taken(&span(8, 9, 120, 2), 8, 124).0, None);
}
