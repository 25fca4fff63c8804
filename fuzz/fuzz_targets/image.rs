//! Arbitrary bytes as an image file go through decoding and the ImageNet evaluation
//! transform: a `DataError` (undecodable, or too elongated to resize) or a
//! `[3, 224, 224]` finite tensor, never a panic.
//! Images larger than 4 megapixels are skipped after decoding's header check to keep
//! runs fast (the decoder's own limits guard memory).
//!
//! `cargo +nightly fuzz run image fuzz/corpus/image crates/resnet/tests/images/jpeg`
//! (from this folder's parent): the JPEG stress files seed the run, and new inputs go to
//! the first folder, not among the test files.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let path = std::path::Path::new("fuzz.img");
    if let Ok(img) = resnet::preprocess::decode_rgb8(path, bytes) {
        if img.width() * img.height() > 4_000_000 {
            return;
        }
        if let Ok(x) = resnet::preprocess::imagenet_eval_rgb8(&img) {
            assert_eq!(x.shape(), &[3, 224, 224]);
            assert!(x.data().iter().all(|v| v.is_finite()));
        }
    }
});
