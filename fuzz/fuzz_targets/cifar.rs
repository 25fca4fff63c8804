//! Arbitrary bytes as a CIFAR-10 binary batch file must parse or give a `DataError`,
//! never panic; every parsed image is 3072 pixels in [0, 1] with a label 0-9.
//!
//! `cargo +nightly fuzz run cifar` (from this folder's parent).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    let path = std::path::Path::new("fuzz.bin");
    if resnet::data::parse_cifar10_records(path, bytes, &mut images, &mut labels).is_ok() {
        assert_eq!(images.len(), labels.len() * 3072);
        assert!(labels.iter().all(|&l| l < 10));
        assert!(images.iter().all(|v| (0.0..=1.0).contains(v)));
    }
});
