//! Decoding Go function prologues to place a uprobe after the stack-bound check.
//!
//! Every Go function that may grow its stack starts by comparing the stack pointer with
//! `g.stackguard0` and branching to a tail that calls `runtime.morestack*` and then jumps back
//! to the entry (`stacksplit` in `src/cmd/internal/obj/x86/obj6.go` and `arm64/obj7.go`):
//!
//! ```text
//! amd64, frame ≤ StackSmall:  CMPQ SP, 0x10(R14)         ; g is R14, stackguard0 is at +16
//!                             JBE  tail
//! amd64, larger frames:       LEAQ -n(SP), R12 ; CMPQ R12, 0x10(R14) ; JBE tail
//! amd64, huge frames:         MOVQ SP, R12 ; SUBQ $n, R12 ; JCS tail ; CMPQ R12, 0x10(R14) ; JBE tail
//! arm64:                      MOVD 16(R28), R16          ; g is R28
//!                             [SUB(S) $n, RSP, R17 [; BLO tail]]
//!                             CMP R16, RSP|R17
//!                             BLS tail
//! tail:                       … CALL/BL runtime.morestack_noctxt ; JMP/B entry
//! ```
//!
//! A uprobe on the first instruction costs two traps, because the kernel cannot emulate the
//! `CMP` with a memory operand and must single-step it out of line; the instruction after the
//! branch (`PUSHQ BP`, or arm64's frame set-up) is emulated. A probe at the entry would also
//! fire twice whenever the stack grows, since `morestack` re-runs the function from its entry.
//! Placing the probe right after the branch fixes both.

use iced_x86::{Code, ConditionCode, Decoder, DecoderOptions, FlowControl, Mnemonic, OpKind, Register};
use serde::Serialize;

use crate::arch::Arch;

/// How many instructions the stack check may span before we give up looking.
const MAX_CHECK_INSTRUCTIONS: usize = 6;
/// How many instructions the morestack tail may have (register spills, call, reloads, jump).
const MAX_TAIL_INSTRUCTIONS: usize = 48;

/// What the prologue of a function looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StackCheck {
    /// The function compares its stack pointer with `g.stackguard0` first.
    Checked {
        /// Address of the conditional branch to the `morestack` tail.
        branch: u64,
        /// Address of the tail that calls `morestack` and jumps back to the entry.
        morestack_tail: u64,
    },
    /// No stack check: a `//go:nosplit` function (or assembly). The probe goes on the entry.
    NoSplit,
}

/// Where to put a probe on a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The address of the instruction the probe traps on.
    pub probe_address: u64,
    /// The stack check that the probe skips, if any.
    pub stack_check: StackCheck,
}

/// Finds the probe placement for a function whose code is `code`, starting at `entry`.
#[must_use]
pub fn place(arch: Arch, code: &[u8], entry: u64) -> Placement {
    let found = match arch {
        Arch::X86_64 => amd64_check(code, entry),
        Arch::Aarch64 => arm64_check(code, entry),
    };
    match found {
        Some((branch, after, tail)) => Placement {
            probe_address: after,
            stack_check: StackCheck::Checked {
                branch,
                morestack_tail: tail,
            },
        },
        None => Placement {
            probe_address: entry,
            stack_check: StackCheck::NoSplit,
        },
    }
}

/// Returns (branch address, address after the branch, tail address).
fn amd64_check(code: &[u8], entry: u64) -> Option<(u64, u64, u64)> {
    let mut decoder = Decoder::with_ip(64, code, entry, DecoderOptions::NONE);
    let mut compared = false;
    for _ in 0..MAX_CHECK_INSTRUCTIONS {
        if !decoder.can_decode() {
            return None;
        }
        let insn = decoder.decode();
        if insn.is_invalid() {
            return None;
        }
        if compared {
            // The branch must directly follow the comparison with the guard.
            let is_jbe =
                insn.flow_control() == FlowControl::ConditionalBranch && insn.condition_code() == ConditionCode::be;
            if !is_jbe {
                return None;
            }
            let tail = insn.near_branch_target();
            let end = entry.checked_add(code.len() as u64)?;
            if tail <= insn.ip() || tail >= end {
                return None;
            }
            let tail_code = &code[usize::try_from(tail - entry).ok()?..];
            return amd64_tail_returns_to(tail_code, tail, entry).then_some((insn.ip(), insn.next_ip(), tail));
        }
        compared = insn.mnemonic() == Mnemonic::Cmp
            && insn.op_count() == 2
            && insn.op_kind(0) == OpKind::Register
            && insn.op_kind(1) == OpKind::Memory
            && insn.memory_base() == Register::R14
            && insn.memory_index() == Register::None
            && insn.memory_displacement64() == 0x10;
        // Anything other than the frame-size arithmetic before the CMP means this is not a
        // Go stack check.
        let preamble = compared
            || matches!(insn.mnemonic(), Mnemonic::Lea | Mnemonic::Mov | Mnemonic::Sub)
            || (insn.flow_control() == FlowControl::ConditionalBranch && insn.condition_code() == ConditionCode::b);
        if !preamble {
            return None;
        }
    }
    None
}

fn amd64_tail_returns_to(code: &[u8], tail: u64, entry: u64) -> bool {
    let mut decoder = Decoder::with_ip(64, code, tail, DecoderOptions::NONE);
    let mut called = false;
    for _ in 0..MAX_TAIL_INSTRUCTIONS {
        if !decoder.can_decode() {
            return false;
        }
        let insn = decoder.decode();
        match insn.flow_control() {
            FlowControl::Call => called = true,
            FlowControl::UnconditionalBranch => {
                return called
                    && matches!(insn.code(), Code::Jmp_rel32_64 | Code::Jmp_rel8_64)
                    && insn.near_branch_target() == entry;
            }
            FlowControl::Next => {}
            _ => return false,
        }
    }
    false
}

fn arm64_words(code: &[u8]) -> impl Iterator<Item = u32> + '_ {
    code.chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
}

/// `B.cond`: returns (condition, target).
fn arm64_bcond(insn: u32, pc: u64) -> Option<(u32, u64)> {
    if insn & 0xff00_0010 != 0x5400_0000 {
        return None;
    }
    let imm19 = i64::from(((insn >> 5) & 0x7_ffff).cast_signed() << 13 >> 13);
    Some((insn & 0xf, pc.checked_add_signed(imm19 * 4)?))
}

/// Returns (branch address, address after the branch, tail address).
fn arm64_check(code: &[u8], entry: u64) -> Option<(u64, u64, u64)> {
    const COND_LO: u32 = 0b0011;
    const COND_LS: u32 = 0b1001;
    let mut words = arm64_words(code);
    // LDR X<t>, [X28, #16] (unsigned offset, 64-bit): load g.stackguard0.
    let first = words.next()?;
    let loads_guard =
        first & 0xffc0_0000 == 0xf940_0000 && (first >> 5) & 0x1f == 28 && ((first >> 10) & 0xfff) * 8 == 16;
    if !loads_guard {
        return None;
    }
    let mut compared = false;
    for (i, insn) in words.enumerate().take(MAX_CHECK_INSTRUCTIONS) {
        let pc = entry.checked_add(4 * (i as u64 + 1))?;
        if let Some((cond, target)) = arm64_bcond(insn, pc) {
            if cond == COND_LS && compared {
                let end = entry.checked_add(code.len() as u64)?;
                if target <= pc || target >= end {
                    return None;
                }
                let tail_code = &code[usize::try_from(target - entry).ok()?..];
                return arm64_tail_returns_to(tail_code, target, entry).then_some((pc, pc + 4, target));
            }
            if cond != COND_LO {
                return None;
            }
            continue;
        }
        // CMP is SUBS with the zero register as destination (shifted or extended register).
        let is_cmp = insn & 0xff00_0000 == 0xeb00_0000 && insn & 0x1f == 31;
        // SUB/SUBS (immediate), and MOVZ/MOVK/ORR used to materialise large frame sizes.
        let is_frame_arith = insn & 0x1f00_0000 == 0x1100_0000
            || insn & 0x1f80_0000 == 0x1280_0000
            || insn & 0xff00_0000 == 0xcb00_0000
            || insn & 0xff00_0000 == 0xeb00_0000;
        if is_cmp {
            compared = true;
        } else if !is_frame_arith {
            return None;
        }
    }
    None
}

fn arm64_tail_returns_to(code: &[u8], tail: u64, entry: u64) -> bool {
    let mut called = false;
    for (i, insn) in arm64_words(code).enumerate().take(MAX_TAIL_INSTRUCTIONS) {
        let pc = tail.wrapping_add(4 * i as u64);
        let imm26 = i64::from((insn & 0x03ff_ffff).cast_signed() << 6 >> 6);
        match insn & 0xfc00_0000 {
            // BL
            0x9400_0000 => called = true,
            // B
            0x1400_0000 => return called && pc.checked_add_signed(imm26 * 4) == Some(entry),
            _ => {
                if arm64_bcond(insn, pc).is_some() {
                    return false;
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amd64_small_frame() {
        // runtime.mallocgc, go1.27.3: CMPQ SP, 0x10(R14); JBE tail; PUSHQ BP; ...
        let mut code = vec![
            0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x06, 0x00, 0x00, 0x00, 0x55, 0x48, 0x89, 0xe5, 0xc3, 0x90,
        ];
        // tail at +16: CALL rel32; JMP entry (rel32 from +26 to 0 = -26).
        code.extend([0xe8, 0, 0, 0, 0, 0xe9]);
        code.extend((-26i32).to_le_bytes());
        // Fix the JBE to jump to +16: rel32 = 16 - 10 = 6 (already).
        let p = place(Arch::X86_64, &code, 0x1000);
        assert_eq!(p.probe_address, 0x100a);
        assert_eq!(
            p.stack_check,
            StackCheck::Checked {
                branch: 0x1004,
                morestack_tail: 0x1010
            }
        );
    }

    #[test]
    fn amd64_without_check_is_nosplit() {
        // PUSHQ BP; MOVQ SP, BP; RET
        let code = [0x55, 0x48, 0x89, 0xe5, 0xc3];
        let p = place(Arch::X86_64, &code, 0x2000);
        assert_eq!(p.probe_address, 0x2000);
        assert_eq!(p.stack_check, StackCheck::NoSplit);
    }

    #[test]
    fn amd64_check_without_tail_back_to_entry_is_rejected() {
        // Same check, but the tail jumps elsewhere.
        let mut code = vec![
            0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x06, 0x00, 0x00, 0x00, 0x55, 0x48, 0x89, 0xe5, 0xc3, 0x90,
        ];
        code.extend([0xe8, 0, 0, 0, 0, 0xe9, 0x10, 0, 0, 0]);
        assert_eq!(place(Arch::X86_64, &code, 0x1000).stack_check, StackCheck::NoSplit);
    }

    #[test]
    fn arm64_small_frame() {
        // runtime.mallocgc, go1.27.3 arm64: MOVD 16(R28), R16; CMP R16, RSP; BLS +3 insns;
        // MOVD.W R30, -48(RSP); tail: BL x; B entry.
        let words: [u32; 6] = [
            0xf940_0b90,
            0xeb30_63ff,
            0x5400_0069, // BLS +3 -> 0x08 + 12 = 0x14
            0xf81d_0ffe,
            0xd503_201f, // NOP
            0x9400_0000, // BL
        ];
        let mut code: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        // B entry from 0x18: imm26 = -6.
        code.extend((0x1400_0000u32 | (0x03ff_ffff & (-6i32).cast_unsigned())).to_le_bytes());
        let p = place(Arch::Aarch64, &code, 0x4000);
        assert_eq!(p.probe_address, 0x400c);
        assert_eq!(
            p.stack_check,
            StackCheck::Checked {
                branch: 0x4008,
                morestack_tail: 0x4014
            }
        );
    }

    #[test]
    fn truncated_code_is_nosplit_not_a_panic() {
        for len in 0..8 {
            let code = [0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x06, 0x00][..len].to_vec();
            assert_eq!(place(Arch::X86_64, &code, 0).stack_check, StackCheck::NoSplit);
            assert_eq!(place(Arch::Aarch64, &code, 0).stack_check, StackCheck::NoSplit);
        }
    }
}
