//! What vector units this CPU has, detected in one place: every CPU kernel picks its variant
//! from [`vectors`], and the backend's description names what it picked.

/// The widest vector level a kernel may use here, lowest first. Each level implies the ones
/// below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Vectors {
    /// The target's baseline (SSE2 on x86-64, NEON on aarch64).
    Baseline,
    /// 8-float AVX, without FMA or AVX2.
    Avx,
    /// 8-float AVX2 with FMA.
    Avx2Fma,
    /// 16-float AVX-512 F (with AVX2 and FMA).
    Avx512,
}

impl Vectors {
    /// Its name in the backend's description.
    pub fn name(self) -> &'static str {
        match self {
            Self::Baseline if cfg!(target_arch = "aarch64") => "neon",
            Self::Baseline if cfg!(target_arch = "x86_64") => "sse2",
            Self::Baseline => "scalar",
            Self::Avx => "avx",
            Self::Avx2Fma => "avx2+fma",
            Self::Avx512 => "avx512",
        }
    }
}

/// This CPU's level (the standard library caches the CPUID reads behind it).
pub fn vectors() -> Vectors {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let avx2_fma = has!("avx2") && has!("fma");
        if avx2_fma && has!("avx512f") {
            return Vectors::Avx512;
        }
        if avx2_fma {
            return Vectors::Avx2Fma;
        }
        if has!("avx") {
            return Vectors::Avx;
        }
    }
    Vectors::Baseline
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels behind each level enable these target features: the level must vouch for them.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn each_level_has_the_features_its_kernels_enable() {
        use std::arch::is_x86_feature_detected as has;
        let v = vectors();
        assert!(v < Vectors::Avx || has!("avx"), "{v:?}");
        assert!(
            v < Vectors::Avx2Fma || (has!("avx2") && has!("fma")),
            "{v:?}"
        );
        assert!(v < Vectors::Avx512 || has!("avx512f"), "{v:?}");
    }

    #[test]
    fn levels_have_distinct_names() {
        let all = [
            Vectors::Baseline,
            Vectors::Avx,
            Vectors::Avx2Fma,
            Vectors::Avx512,
        ];
        let names: std::collections::BTreeSet<_> = all.iter().map(|v| v.name()).collect();
        assert_eq!(names.len(), all.len());
    }
}
