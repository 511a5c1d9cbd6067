//! How allocations are observed: every one (`exact`), or a sample scaled into estimates.
//!
//! Every uprobe hit is a trap into the kernel (about a microsecond here), so exact mode slows a
//! program that allocates millions of times a second many times over. The sampled modes probe
//! functions the runtime calls far less often and weight each hit by what it stands for.

use gobin::sizeclasses;
use serde::{Deserialize, Serialize};
use tracer_common::{AllocKey, SIZE_IS_SPAN_CLASS};

/// How allocations are observed (`--mode`; its help in `cli.rs` says what each costs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Every heap allocation, at the runtime's malloc entry points.
    Exact,
    /// Go's own heap-profile samples (`runtime.profilealloc`), scaled as pprof scales them.
    GoSampler,
    /// Span refills (`runtime.(*mcache).refill`) and large objects (`allocLarge`), weighted by
    /// the objects each stands for.
    Span,
    /// go-sampler when the target's memory profiling is on, else span; resolved per target.
    Auto,
}

impl Mode {
    /// The name in reports.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::GoSampler => "go-sampler",
            Self::Span => "span",
            Self::Auto => "auto",
        }
    }

    /// Whether counts are estimates.
    #[must_use]
    pub fn is_sampled(self) -> bool {
        self != Self::Exact
    }

    /// One sentence on how the numbers were obtained, for every output.
    #[must_use]
    pub fn method(self) -> &'static str {
        match self {
            Self::Exact => "exact: every heap allocation counted at the runtime's malloc entry points",
            Self::GoSampler => {
                "go-sampler: Go's own heap-profile samples (runtime.profilealloc), each scaled by \
                 1/(1-exp(-size/MemProfileRate)) as pprof does; estimates, sizes in size-class bytes, \
                 types unknown"
            }
            Self::Span => {
                "span: each used-up span's objects (runtime.(*mcache).refill) attributed to the \
                 allocation that used it up, objects over 32 KiB counted one by one \
                 (runtime.(*mcache).allocLarge); probes attached for part of each --span-period when the \
                 target refills spans faster than --span-budget, counts scaled by the inverse; \
                 estimates, sizes in size-class bytes, types unknown"
            }
            Self::Auto => "auto",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Turns what a probe counted into estimated objects of a real size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Weighing {
    /// One count is one allocation of `key.size` bytes.
    Exact,
    /// One count is one of Go's heap-profile samples of `key.size` bytes, taken at this
    /// sampling rate (bytes, `runtime.MemProfileRate`).
    GoSampler {
        /// The rate the samples were taken at.
        rate: u64,
    },
    /// One count is one object: of the size class in `key.size`, or a large object.
    Span,
}

impl Weighing {
    /// The key with its size in bytes, and the estimated number of objects `count` stands for.
    /// `None` for a key that cannot be weighed (a span class outside the table).
    #[must_use]
    pub fn weigh(self, key: AllocKey, count: u64) -> Option<(AllocKey, f64)> {
        #[expect(clippy::cast_precision_loss, reason = "estimates; exact up to 2^53")]
        let n = count as f64;
        match self {
            Self::GoSampler { rate } => Some((key, n * go_sampler_scale(key.size, rate))),
            Self::Span if key.size & SIZE_IS_SPAN_CLASS != 0 => {
                let class = sizeclasses::span_class(u8::try_from(key.size & 0xff).ok()?).0;
                let size = u64::from(sizeclasses::elem_size(class)?);
                Some((AllocKey { size, ..key }, n))
            }
            Self::Exact | Self::Span => Some((key, n)),
        }
    }
}

/// How many allocations one heap-profile sample of `size` bytes stands for at `rate`.
///
/// The runtime samples a byte stream at exponentially distributed intervals with mean `rate`
/// (`runtime.nextSample`), so an allocation of `size` bytes is sampled with probability
/// `1 - exp(-size/rate)`; pprof divides by that (`scaleHeapSample` in
/// `src/runtime/pprof/protomem.go`). A rate of 1 samples everything.
#[must_use]
pub fn go_sampler_scale(size: u64, rate: u64) -> f64 {
    if rate <= 1 || size == 0 {
        return 1.0;
    }
    #[expect(clippy::cast_precision_loss, reason = "a ratio of two sizes")]
    let ratio = size as f64 / rate as f64;
    1.0 / (1.0 - (-ratio).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pprof_scaling() {
        // A sample as big as the rate stands for 1/(1-1/e) allocations.
        assert!((go_sampler_scale(512 * 1024, 512 * 1024) - 1.581_976_7).abs() < 1e-6);
        // Tiny samples stand for about rate/size allocations.
        let s = go_sampler_scale(16, 512 * 1024);
        assert!((s - 32768.5).abs() < 1.0, "{s}");
        assert!((go_sampler_scale(100, 1) - 1.0).abs() < f64::EPSILON);
    }

    #[test]
    fn span_classes_become_sizes() {
        let key = AllocKey {
            stack: 1,
            return_address: 2,
            type_address: 0,
            // Class 3 (24 bytes), scan.
            size: SIZE_IS_SPAN_CLASS | (3 << 1),
        };
        let (weighed, n) = Weighing::Span.weigh(key, 341).unwrap();
        assert_eq!(weighed.size, 24);
        assert!((n - 341.0).abs() < f64::EPSILON);
        let large = AllocKey { size: 40_000, ..key };
        assert_eq!(Weighing::Span.weigh(large, 2).unwrap().0.size, 40_000);
        assert!(
            Weighing::Span
                .weigh(
                    AllocKey {
                        size: SIZE_IS_SPAN_CLASS | 0xff,
                        ..key
                    },
                    1
                )
                .is_none()
        );
    }
}
