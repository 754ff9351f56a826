//! Run-time selection of the SIMD code path.
//!
//! CPU features are detected once and cached. Every public entry point that has SIMD code also
//! has a portable scalar path; [`set_force_scalar`] switches the whole process to it (useful for
//! debugging a suspected SIMD bug), and the `*_with` entry points take an explicit [`Backend`]
//! so tests can compare paths side by side without touching global state.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// A family of kernels. Each SIMD variant needs AVX2+FMA+F16C plus what its doc says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Backend {
    /// Portable Rust, no intrinsics. Always available.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C (integer dot products via `maddubs`/`madd`, like ggml).
    Avx2,
    /// AVX2 plus AVX-VNNI (`vpdpbusd` on 256-bit registers, VEX encoded).
    AvxVnni,
    /// AVX2 plus AVX-512 F/BW/VL/VNNI (`vpdpbusd`; 512-bit registers where it pays).
    Avx512Vnni,
}

static FORCE_SCALAR: AtomicBool = AtomicBool::new(false);

/// Forces every entry point that takes no explicit backend onto the scalar path (process-wide).
pub fn set_force_scalar(force: bool) {
    FORCE_SCALAR.store(force, Ordering::Relaxed);
}

/// Whether [`set_force_scalar`] is in effect.
pub fn force_scalar() -> bool {
    FORCE_SCALAR.load(Ordering::Relaxed)
}

impl Backend {
    /// The fastest backend this CPU supports (detected once, ignores [`set_force_scalar`]).
    pub fn detect() -> Backend {
        static DETECTED: OnceLock<Backend> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            // Both VNNI flavours run the same 256-bit kernels; the VEX encoding is shorter, which
            // measured a few percent faster on Sapphire Rapids, so it wins when both exist.
            [Backend::AvxVnni, Backend::Avx512Vnni, Backend::Avx2]
                .into_iter()
                .find(|b| b.is_available())
                .unwrap_or(Backend::Scalar)
        })
    }

    /// The backend the no-argument entry points use: [`Backend::detect`] unless forced scalar.
    pub fn active() -> Backend {
        if force_scalar() {
            Backend::Scalar
        } else {
            Backend::detect()
        }
    }

    /// Every backend usable on this CPU, from `Scalar` up.
    pub fn available() -> Vec<Backend> {
        [
            Backend::Scalar,
            Backend::Avx2,
            Backend::AvxVnni,
            Backend::Avx512Vnni,
        ]
        .into_iter()
        .filter(|b| b.is_available())
        .collect()
    }

    /// Whether this CPU has the features the backend needs (probed once: the ops call this
    /// per row, and five feature probes a call showed up at 3 % of batched decoding).
    pub fn is_available(self) -> bool {
        static PROBED: OnceLock<[bool; 4]> = OnceLock::new();
        PROBED.get_or_init(|| {
            [
                Backend::Scalar,
                Backend::Avx2,
                Backend::AvxVnni,
                Backend::Avx512Vnni,
            ]
            .map(Backend::probe)
        })[self as usize]
    }

    fn probe(self) -> bool {
        match self {
            Backend::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => has_avx2(),
            #[cfg(target_arch = "x86_64")]
            Backend::AvxVnni => has_avx2() && std::arch::is_x86_feature_detected!("avxvnni"),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512Vnni => {
                has_avx2()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// `self` if this CPU supports it, else `Scalar`: the SIMD paths must never run on a CPU
    /// that lacks their features, whatever a caller asks for.
    pub fn or_scalar(self) -> Backend {
        if self.is_available() {
            self
        } else {
            Backend::Scalar
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}
