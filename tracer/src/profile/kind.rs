//! The kind of an allocation: which runtime front door the callsite went through.

use serde::{Deserialize, Serialize};

use super::package_of;

/// How an allocation was asked for, judged by the runtime function the callsite called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `new(T)`, `&T{}`, a variable moved to the heap (`runtime.newobject`, Go 1.27's
    /// `runtime.mallocgc*SC<n>` called directly).
    New,
    /// `make([]T, n)` (`runtime.makeslice`, `makeslicecopy`).
    Makeslice,
    /// `make(map…)` and map growth (`runtime.makemap*`, `mapassign*`, `internal/runtime/maps`).
    Makemap,
    /// `append` beyond capacity (`runtime.growslice`).
    Growslice,
    /// String building and conversions (`runtime.concatstrings`, `slicebytetostring`, …).
    String,
    /// Boxing a value in an interface (`runtime.convT*`).
    #[serde(rename = "convT")]
    ConvT,
    /// Anything else (`reflect.New`, channels, closures the runtime allocates, …).
    Other,
}

impl Kind {
    /// The name in reports.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Makeslice => "makeslice",
            Self::Makemap => "makemap",
            Self::Growslice => "growslice",
            Self::String => "string",
            Self::ConvT => "convT",
            Self::Other => "other",
        }
    }

    /// The kind a runtime function stands for, if it is one of the allocation front doors.
    ///
    /// By the name after the package: some runtime functions are linked into other packages
    /// under their names there (`//go:linkname`: `reflect.unsafe_New`,
    /// `internal/bytealg.MakeNoZero`, `reflect.growslice`, …).
    pub(super) fn of_runtime_function(function: &str) -> Option<Self> {
        let package = package_of(function);
        if package.starts_with("internal/runtime/maps") {
            return Some(Self::Makemap);
        }
        let name = function.get(package.len() + 1..)?;
        let kind = match name {
            "newobject" | "newarray" | "unsafe_New" => Self::New,
            n if n.starts_with("mallocgc") && n.contains("SC") => Self::New,
            "makeslice" | "makeslicecopy" | "makeslice64" | "unsafe_NewArray" | "MakeNoZero" => Self::Makeslice,
            "growslice" => Self::Growslice,
            n if n.starts_with("makemap") || n.starts_with("mapassign") || n == "hashGrow" || n == "growWork" => {
                Self::Makemap
            }
            n if n.starts_with("convT") => Self::ConvT,
            n if n.starts_with("concatstring")
                || n.starts_with("rawstring")
                || n.starts_with("rawbyteslice")
                || n.starts_with("rawruneslice")
                || n.starts_with("slicebytetostring")
                || n.starts_with("slicerunetostring")
                || n.starts_with("stringtoslice")
                || n == "intstring"
                || n == "concatbytes" =>
            {
                Self::String
            }
            _ => return None,
        };
        Some(kind)
    }
}
