//! Arbitrary bytes as a PyTorch checkpoint must give a state dict or an error, never a
//! panic, a hang or an unbounded allocation; every tensor read has as many bytes as its
//! shape and element type say.
//!
//! `cargo +nightly fuzz run pth` (from this folder's parent); seed the corpus with
//! `crates/resnet/tests/fixtures/pth/*.pth`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(tensors) = resnet::pth::parse_state_dict(bytes) {
        for t in tensors {
            let elements: usize = t.shape.iter().product();
            assert_eq!(t.data.len() * 8, elements * t.dtype.bitsize());
        }
    }
});
