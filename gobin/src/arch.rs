//! Architectures and registers, as the Go internal ABI and DWARF name them.

use std::fmt;

/// A CPU architecture gotrace traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// amd64 in Go's terms.
    X86_64,
    /// arm64 in Go's terms.
    Aarch64,
}

impl Arch {
    /// The name the kernel (`uname -m`) uses.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
        }
    }

    /// The name Go uses (`GOARCH`).
    #[must_use]
    pub fn goarch(self) -> &'static str {
        match self {
            Self::X86_64 => "amd64",
            Self::Aarch64 => "arm64",
        }
    }

    /// Integer argument registers of Go's internal ABI, in assignment order.
    ///
    /// Source: `src/cmd/compile/abi-internal.md` ("amd64 architecture": RAX, RBX, RCX, RDI,
    /// RSI, R8, R9, R10, R11; "arm64 architecture": R0 through R15).
    #[must_use]
    pub fn int_arg_registers(self) -> &'static [Register] {
        use Register as R;
        match self {
            Self::X86_64 => &[R::Rax, R::Rbx, R::Rcx, R::Rdi, R::Rsi, R::R8, R::R9, R::R10, R::R11],
            Self::Aarch64 => &[
                R::X(0),
                R::X(1),
                R::X(2),
                R::X(3),
                R::X(4),
                R::X(5),
                R::X(6),
                R::X(7),
                R::X(8),
                R::X(9),
                R::X(10),
                R::X(11),
                R::X(12),
                R::X(13),
                R::X(14),
                R::X(15),
            ],
        }
    }

    /// The register holding the current goroutine (`g`) in Go's internal ABI.
    #[must_use]
    pub fn g_register(self) -> Register {
        match self {
            Self::X86_64 => Register::R14,
            Self::Aarch64 => Register::X(28),
        }
    }

    /// The smallest instruction size, the unit of pc deltas in `.gopclntab`.
    #[must_use]
    pub fn pc_quantum(self) -> u64 {
        match self {
            Self::X86_64 => 1,
            Self::Aarch64 => 4,
        }
    }

    /// Maps a DWARF register number to a register, per the psABI of each architecture.
    #[must_use]
    pub fn dwarf_register(self, number: u16) -> Option<Register> {
        use Register as R;
        match self {
            // System V AMD64 psABI, figure 3.36 "DWARF Register Number Mapping".
            Self::X86_64 => Some(match number {
                0 => R::Rax,
                1 => R::Rdx,
                2 => R::Rcx,
                3 => R::Rbx,
                4 => R::Rsi,
                5 => R::Rdi,
                6 => R::Rbp,
                7 => R::Rsp,
                8 => R::R8,
                9 => R::R9,
                10 => R::R10,
                11 => R::R11,
                12 => R::R12,
                13 => R::R13,
                14 => R::R14,
                15 => R::R15,
                _ => return None,
            }),
            // "DWARF for the Arm 64-bit Architecture": X0–X30 are 0–30, SP is 31.
            Self::Aarch64 => match number {
                0..=30 => u8::try_from(number).ok().map(R::X),
                31 => Some(R::Sp),
                _ => None,
            },
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A general-purpose register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Register {
    /// x86-64 RAX.
    Rax,
    /// x86-64 RBX.
    Rbx,
    /// x86-64 RCX.
    Rcx,
    /// x86-64 RDX.
    Rdx,
    /// x86-64 RSI.
    Rsi,
    /// x86-64 RDI.
    Rdi,
    /// x86-64 RBP.
    Rbp,
    /// x86-64 RSP.
    Rsp,
    /// x86-64 R8.
    R8,
    /// x86-64 R9.
    R9,
    /// x86-64 R10.
    R10,
    /// x86-64 R11.
    R11,
    /// x86-64 R12.
    R12,
    /// x86-64 R13.
    R13,
    /// x86-64 R14.
    R14,
    /// x86-64 R15.
    R15,
    /// arm64 X0–X30 (X29 is the frame pointer, X30 the link register).
    X(u8),
    /// arm64 stack pointer.
    Sp,
}

impl Register {
    /// Lower-case name as in Linux `pt_regs` and disassemblers: `rax`, `x0`, `sp`.
    #[must_use]
    pub fn name(self) -> String {
        match self {
            Self::X(n) => format!("x{n}"),
            Self::Sp => "sp".to_owned(),
            other => format!("{other:?}").to_ascii_lowercase(),
        }
    }
}

impl fmt::Display for Register {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl serde::Serialize for Register {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name())
    }
}
