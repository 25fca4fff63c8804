//! Preprocessing against torchvision's PIL path, step by step (fixture
//! `preprocess.safetensors`, made by `scripts/make_fixtures.py` from the images in
//! `tests/images/` and `tests/images/generated/`):
//!
//! - the 8-bit resize and crop of the same decoded pixels: bit for bit, every image;
//! - every file (PNG: RGB, grey, palette, RGBA, upsampled; JPEG: baseline and
//!   progressive, 4:2:0 and 4:4:4, grey) through the whole transform: the normalised
//!   tensor bit for bit;
//! - JPEG decoding against PIL's libjpeg-turbo: the decoded pixels bit for bit (the
//!   stress cases, odd sizes, restarts, CMYK and tiny images, are in `jpeg_parity.rs`).

#[cfg(not(feature = "images"))]
#[test]
fn preprocess_parity_needs_the_images_feature() {
    println!("SKIP    preprocessing parity: built without the `images` feature (cargo test --workspace or -p resnet --features images)");
}

#[cfg(feature = "images")]
mod common;

#[cfg(feature = "images")]
mod parity {
    use super::common::load_fixture;
    use resnet::preprocess::{
        load_imagenet, load_rgb8, resize_and_crop_rgb8, Rgb8, IMAGENET_MEAN, IMAGENET_STD,
    };
    use safetensors::SafeTensors;
    use std::path::PathBuf;

    /// Every image of the fixture, as (fixture key, file).
    const IMAGES: [(&str, &str); 12] = [
        ("chelsea.png", "chelsea.png"),
        ("rocket.jpg", "rocket.jpg"),
        ("rgb.png", "generated/rgb.png"),
        ("grey.png", "generated/grey.png"),
        ("palette.png", "generated/palette.png"),
        ("rgba.png", "generated/rgba.png"),
        ("small.png", "generated/small.png"),
        ("baseline420.jpg", "generated/baseline420.jpg"),
        ("baseline444.jpg", "generated/baseline444.jpg"),
        ("progressive420.jpg", "generated/progressive420.jpg"),
        ("progressive444.jpg", "generated/progressive444.jpg"),
        ("grey.jpg", "generated/grey.jpg"),
    ];

    fn file(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/images")
            .join(name)
    }

    fn u8s(fx: &SafeTensors, key: &str) -> (Vec<usize>, Vec<u8>) {
        let t = fx.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(t.dtype(), safetensors::Dtype::U8, "{key}");
        (t.shape().to_vec(), t.data().to_vec())
    }

    fn f32s(fx: &SafeTensors, key: &str) -> Vec<f32> {
        let t = fx.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    fn rgb8(shape: &[usize], data: Vec<u8>) -> Rgb8 {
        Rgb8::new(shape[1], shape[0], data).unwrap()
    }

    fn max_diff(a: &[u8], b: &[u8]) -> u8 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| x.abs_diff(*y))
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn the_resize_and_crop_equal_pils_bit_for_bit() {
        let bytes = load_fixture("preprocess.safetensors");
        let fx = SafeTensors::deserialize(&bytes).unwrap();
        for (key, name) in IMAGES {
            // PIL's own decoded pixels for a JPEG (so that only the resize is compared);
            // ours for a PNG, whose decoding is exact.
            let img = if key.ends_with(".jpg") {
                let (shape, data) = u8s(&fx, &format!("decoded.{key}"));
                rgb8(&shape, data)
            } else {
                load_rgb8(file(name)).unwrap()
            };
            let ours = resize_and_crop_rgb8(&img, 256, 224).unwrap();
            let (shape, want) = u8s(&fx, &format!("crop.{key}"));
            assert_eq!(shape, [224, 224, 3], "{key}");
            let diff = max_diff(ours.data(), &want);
            println!("{key}: resize and crop of the same pixels, largest difference {diff}");
            assert_eq!(diff, 0, "{key}: the 8-bit resize differs from PIL's");
            // ToTensor and Normalize, bit for bit.
            let x = ours.normalized(IMAGENET_MEAN, IMAGENET_STD);
            let want = f32s(&fx, &format!("eval.{key}"));
            for c in 0..3 {
                for (r, y) in [0, 56, 112, 168, 223].into_iter().enumerate() {
                    for col in 0..224 {
                        let got = x.data()[(c * 224 + y) * 224 + col];
                        let w = want[(c * 5 + r) * 224 + col];
                        assert_eq!(got.to_bits(), w.to_bits(), "{key}: [{c}, {y}, {col}]");
                    }
                }
            }
        }
    }

    #[test]
    fn every_file_preprocesses_exactly_as_torchvision() {
        let bytes = load_fixture("preprocess.safetensors");
        let fx = SafeTensors::deserialize(&bytes).unwrap();
        for (key, name) in IMAGES {
            let x = load_imagenet(file(name)).unwrap();
            let want = f32s(&fx, &format!("eval.{key}"));
            let mut worst = 0.0f32;
            for c in 0..3 {
                for (r, y) in [0, 56, 112, 168, 223].into_iter().enumerate() {
                    for col in 0..224 {
                        let got = x.data()[(c * 224 + y) * 224 + col];
                        worst = worst.max((got - want[(c * 5 + r) * 224 + col]).abs());
                    }
                }
            }
            println!("{key}: whole transform, largest difference {worst:e}");
            assert_eq!(worst, 0.0, "{key}");
        }
    }

    #[test]
    fn jpeg_files_decode_exactly_as_pil() {
        let bytes = load_fixture("preprocess.safetensors");
        let fx = SafeTensors::deserialize(&bytes).unwrap();
        for (key, name) in IMAGES.into_iter().filter(|(k, _)| k.ends_with(".jpg")) {
            let ours = load_rgb8(file(name)).unwrap();
            let (shape, want) = u8s(&fx, &format!("decoded.{key}"));
            assert_eq!([ours.height(), ours.width(), 3], shape[..], "{key}");
            let decoded = max_diff(ours.data(), &want);
            let exact = ours
                .data()
                .iter()
                .zip(&want)
                .filter(|(a, b)| a == b)
                .count();
            let cropped = resize_and_crop_rgb8(&ours, 256, 224).unwrap();
            let (_, crop) = u8s(&fx, &format!("crop.{key}"));
            let after = max_diff(cropped.data(), &crop);
            println!(
                "{key}: decoded pixels within {decoded} grey levels of PIL's ({:.2}% equal), \
                 {after} after the resize and crop",
                100.0 * exact as f64 / want.len() as f64
            );
            assert_eq!(decoded, 0, "{key}: {decoded} grey levels from PIL's pixels");
            assert_eq!(after, 0, "{key}: {after} grey levels after resizing");
        }
    }
}
