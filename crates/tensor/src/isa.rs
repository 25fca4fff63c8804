//! Instruction-set tiers, and which one this process uses.
//!
//! A tier is a set of CPU features that a family of kernels is compiled for:
//!
//! | tier      | needs                | vector        |
//! |-----------|----------------------|---------------|
//! | `generic` | nothing (portable Rust) | 4 x f32, left to the compiler |
//! | `avx2`    | AVX2 and FMA         | 8 x f32 (`__m256`) |
//! | `avx512`  | AVX-512F             | 16 x f32 (`__m512`) |
//! | `neon`    | AArch64 NEON         | 4 x f32 (`float32x4_t`) |
//!
//! The best tier the CPU supports is chosen once per process (see [`active`]). Setting
//! `RESNET_ISA=<tier>` forces one, for tests and comparisons; an unknown name, or a tier
//! this CPU cannot run, is an error that every operation reports, never a silent
//! fallback to another tier.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// An instruction-set tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust; always available.
    Generic,
    /// x86-64 with AVX2 and FMA.
    Avx2,
    /// x86-64 with AVX-512F (and AVX2 + FMA, which every AVX-512 CPU has).
    Avx512,
    /// AArch64 with NEON (Advanced SIMD).
    Neon,
}

/// The environment variable that forces a tier.
pub const ISA_ENV: &str = "RESNET_ISA";

impl Isa {
    /// Every tier, from the most portable to the widest.
    pub const ALL: [Isa; 4] = [Isa::Generic, Isa::Avx2, Isa::Avx512, Isa::Neon];

    /// The tier's name as `RESNET_ISA` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Generic => "generic",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// The CPU features the tier needs, as `is_x86_feature_detected!` names them.
    pub fn required_features(self) -> &'static [&'static str] {
        match self {
            Isa::Generic => &[],
            Isa::Avx2 => &["avx2", "fma"],
            Isa::Avx512 => &["avx512f", "avx2", "fma"],
            Isa::Neon => &["neon"],
        }
    }

    /// Whether this CPU can run the tier's kernels.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Generic => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The widest tier this CPU supports.
    pub fn best_supported() -> Isa {
        [Isa::Avx512, Isa::Avx2, Isa::Neon]
            .into_iter()
            .find(|isa| isa.is_supported())
            .unwrap_or(Isa::Generic)
    }

    /// `Ok(self)` if the CPU supports the tier, otherwise the error that says why not.
    pub fn check_supported(self) -> Result<Isa, IsaError> {
        if self.is_supported() {
            Ok(self)
        } else {
            Err(IsaError::Unsupported {
                isa: self,
                cpu_features: cpu_features(),
            })
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Isa {
    type Err = IsaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Isa::ALL
            .into_iter()
            .find(|isa| isa.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| IsaError::Unknown(s.to_string()))
    }
}

/// Why a tier cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IsaError {
    /// The name is not one of the tiers.
    Unknown(String),
    /// The CPU lacks a feature the tier needs.
    Unsupported {
        /// The tier asked for.
        isa: Isa,
        /// The features this CPU has, for the message.
        cpu_features: Vec<&'static str>,
    },
}

impl fmt::Display for IsaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IsaError::Unknown(name) => {
                let tiers: Vec<_> = Isa::ALL.iter().map(|i| i.name()).collect();
                write!(
                    f,
                    "unknown ISA tier {name:?} (from {ISA_ENV}); the tiers are {}",
                    tiers.join(", ")
                )
            }
            IsaError::Unsupported { isa, cpu_features } => write!(
                f,
                "ISA tier {isa} needs CPU features {:?}, but this CPU has only {:?}",
                isa.required_features(),
                cpu_features
            ),
        }
    }
}

impl std::error::Error for IsaError {}

/// The SIMD features of this CPU that matter to the kernels, by name.
pub fn cpu_features() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut found = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => {
                $( if is_x86_feature_detected!($f) { found.push($f); } )*
            };
        }
        probe!(
            "sse2",
            "sse4.1",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512dq",
            "avx512vl",
            "avx512vnni",
            "avx512bf16"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => {
                $( if std::arch::is_aarch64_feature_detected!($f) { found.push($f); } )*
            };
        }
        probe!("neon", "fp16", "dotprod", "bf16", "sve", "sve2");
    }
    found
}

/// Where the active tier came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsaChoice {
    /// The widest tier the CPU supports.
    Detected(Isa),
    /// Forced by `RESNET_ISA`.
    Forced(Isa),
}

impl IsaChoice {
    /// The chosen tier.
    pub fn isa(self) -> Isa {
        match self {
            IsaChoice::Detected(i) | IsaChoice::Forced(i) => i,
        }
    }
}

/// Chooses a tier from the value of `RESNET_ISA` (if set) and the CPU.
pub fn choose(forced: Option<&str>) -> Result<IsaChoice, IsaError> {
    match forced {
        None => Ok(IsaChoice::Detected(Isa::best_supported())),
        Some(name) if name.trim().is_empty() => Ok(IsaChoice::Detected(Isa::best_supported())),
        Some(name) => Ok(IsaChoice::Forced(name.parse::<Isa>()?.check_supported()?)),
    }
}

/// The tier this process uses: detected (or read from `RESNET_ISA`) on the first call,
/// then the same answer for the life of the process.
pub fn active() -> Result<IsaChoice, IsaError> {
    static CHOICE: OnceLock<Result<IsaChoice, IsaError>> = OnceLock::new();
    CHOICE
        .get_or_init(|| choose(std::env::var(ISA_ENV).ok().as_deref()))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for isa in Isa::ALL {
            assert_eq!(isa.name().parse::<Isa>().unwrap(), isa);
        }
        assert_eq!("AVX2".parse::<Isa>().unwrap(), Isa::Avx2);
    }

    #[test]
    fn unknown_tier_is_an_error_naming_the_tiers() {
        let e = choose(Some("sse9")).unwrap_err();
        assert_eq!(e, IsaError::Unknown("sse9".into()));
        assert!(e.to_string().contains("generic, avx2, avx512, neon"));
    }

    #[test]
    fn a_tier_the_cpu_lacks_is_an_error_not_a_fallback() {
        for isa in Isa::ALL {
            let r = choose(Some(isa.name()));
            if isa.is_supported() {
                assert_eq!(r, Ok(IsaChoice::Forced(isa)));
            } else {
                assert!(matches!(r, Err(IsaError::Unsupported { isa: i, .. }) if i == isa));
            }
        }
    }

    #[test]
    fn unset_means_the_best_supported_tier() {
        let best = Isa::best_supported();
        assert!(best.is_supported());
        assert_eq!(choose(None), Ok(IsaChoice::Detected(best)));
        assert!(Isa::Generic.is_supported());
    }
}
