//! Arbitrary bytes given to the weight loaders (in memory and streamed) must produce `Ok` or a `WeightsError`,
//! never a panic, an out-of-bounds read or an unbounded allocation.
//!
//! `cargo +nightly fuzz run weights` (from this folder's parent).

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use resnet::{Arch, ResNet};

fuzz_target!(|bytes: &[u8]| {
    static MODEL: OnceLock<ResNet> = OnceLock::new();
    let mut model = MODEL
        .get_or_init(|| ResNet::new(Arch::Cifar { depth: 20 }, 10, 0).expect("model"))
        .clone();
    let _ = model.load_safetensors_bytes("fuzz.safetensors", bytes);
    // The streaming loader (`ResNet::from_safetensors`) on the same bytes.
    let _ = ResNet::from_safetensors_reader(
        Arch::Cifar { depth: 20 },
        "fuzz.safetensors",
        std::io::Cursor::new(bytes),
    );
});
