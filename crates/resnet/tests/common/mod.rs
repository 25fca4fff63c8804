//! Shared by the PyTorch-equivalence tests: the fixtures' weight generator (the Rust
//! twin of `hash_uniform` in `scripts/make_fixtures.py`), fixture reading, and the
//! loop over ISA tiers.

#![allow(dead_code)]

use std::path::PathBuf;

use resnet::{Arch, ResNet};
use tensor::{Isa, Kernels, Tensor};

pub const BASE_SEED: u64 = 2026;

fn fnv1a(name: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// Element `i` is `lo + (hi - lo) u_i`, `u_i` the top 24 bits of
/// `splitmix64(seed + (i + 1) golden) / 2^24`, `seed = fnv1a(key) ^ BASE_SEED`.
pub fn hash_uniform(key: &str, n: usize, lo: f64, hi: f64) -> Vec<f32> {
    let seed = fnv1a(key) ^ BASE_SEED;
    (1..=n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 40) as f64 / (1u64 << 24) as f64;
            (lo + (hi - lo) * u) as f32
        })
        .collect()
}

/// The generator's range for a tensor (as `fixture_range` in the script).
fn fixture_range(key: &str, shape: &[usize], fc_in: usize) -> (f64, f64) {
    if key.ends_with("running_var") {
        (0.5, 2.0)
    } else if key.ends_with("running_mean") {
        (-0.2, 0.2)
    } else if shape.len() == 4 {
        let b = (6.0 / (shape[1] * shape[2] * shape[3]) as f64).sqrt();
        (-b, b)
    } else if key.starts_with("fc.") {
        let b = 1.0 / (fc_in as f64).sqrt();
        (-b, b)
    } else if key.ends_with(".weight") {
        (0.5, 1.0)
    } else {
        (-0.2, 0.2)
    }
}

/// A model holding exactly the fixture script's weights.
pub fn fixture_model(arch: Arch, classes: usize) -> ResNet {
    let mut model = ResNet::new(arch, classes, 0).expect("model");
    let fc_in = model.fc_weight.shape()[1];
    for (key, t) in model.named_tensors_mut() {
        let (lo, hi) = fixture_range(&key, t.shape(), fc_in);
        let values = hash_uniform(&key, t.len(), lo, hi);
        t.data_mut().copy_from_slice(&values);
    }
    model
}

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// The fixture's bytes. The fixtures are committed with the repository, so a missing one
/// is a failure (a test that compared nothing must not pass), with how to make it again.
pub fn load_fixture(name: &str) -> Vec<u8> {
    let path = fixture_path(name);
    match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => panic!(
            "fixture tests/fixtures/{name} cannot be read ({e}); it is part of the \
             repository: restore it from git, or make it again with \
             `pip install torch torchvision safetensors numpy && python3 scripts/make_fixtures.py`"
        ),
    }
}

/// Reads tensors out of a safetensors buffer.
pub struct Fixture<'a>(pub safetensors::SafeTensors<'a>);

impl<'a> Fixture<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Fixture(safetensors::SafeTensors::deserialize(bytes).expect("fixture parses"))
    }

    pub fn f32(&self, name: &str) -> Tensor {
        let v = self
            .0
            .tensor(name)
            .unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"));
        assert_eq!(v.dtype(), safetensors::Dtype::F32, "{name}");
        let data = v
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Tensor::from_vec(v.shape(), data).expect("shape")
    }

    /// Whether the fixture holds a tensor of that name.
    #[allow(dead_code)]
    pub fn has(&self, name: &str) -> bool {
        self.0.tensor(name).is_ok()
    }

    pub fn i64(&self, name: &str) -> Vec<i64> {
        let v = self
            .0
            .tensor(name)
            .unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"));
        assert_eq!(v.dtype(), safetensors::Dtype::I64, "{name}");
        v.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
}

/// Runs `f` in every tier this CPU has, printing a SKIP line for the others.
pub fn each_tier(mut f: impl FnMut(Kernels)) {
    for isa in Isa::ALL {
        match Kernels::for_isa(isa) {
            Ok(k) => {
                println!("tier {isa}");
                f(k)
            }
            Err(e) => println!("SKIP    {isa}: {e}"),
        }
    }
}

/// The largest `|got - want|` over the largest `|want|` (a relative error that does not
/// blow up on elements near zero). Infinite when either side has a NaN or an infinity
/// anywhere, so a non-finite result can never pass a tolerance (`f64::max` alone would
/// drop a NaN).
pub fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.shape(), want.shape());
    let (mut scale, mut diff) = (0.0f64, 0.0f64);
    for (&a, &b) in got.data().iter().zip(want.data()) {
        if !(a.is_finite() && b.is_finite()) {
            return f64::INFINITY;
        }
        scale = scale.max((b as f64).abs());
        diff = diff.max((a as f64 - b as f64).abs());
    }
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}
