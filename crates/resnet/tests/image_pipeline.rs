//! Real photos through decode, torchvision's evaluation transform and a ResNet-18, against
//! torchvision on the same photos and weights (`scripts/make_fixtures.py`).
//!
//! Both photos (PNG and JPEG) are preprocessed bit for bit as torchvision does, so the
//! logits differ only by the order of floating-point sums in the network: measured
//! 3e-7 relative to the largest logit, checked at 1e-5, with the same top-5 classes.

#[cfg(not(feature = "images"))]
#[test]
fn image_pipeline_needs_the_images_feature() {
    println!("SKIP    image pipeline: built without the `images` feature (cargo test --workspace or -p resnet --features images)");
}

#[cfg(feature = "images")]
mod common;

#[cfg(feature = "images")]
#[test]
fn photos_preprocess_and_classify_as_in_torchvision() {
    use common::{fixture_model, load_fixture, rel_err, Fixture};
    use resnet::preprocess::load_imagenet;
    use resnet::top_k;
    use resnet::{Arch, InferenceModel};
    use tensor::{Kernels, Tensor};

    let bytes = load_fixture("images.safetensors");
    let fx = Fixture::new(&bytes);
    let model = InferenceModel::from_model(
        fixture_model(Arch::ResNet18, 1000),
        Kernels::active().unwrap(),
    )
    .unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/images");
    for name in ["chelsea.png", "rocket.jpg"] {
        let x = load_imagenet(dir.join(name)).unwrap();
        assert_eq!(x.shape(), &[3, 224, 224]);
        let want = fx.f32(&format!("pre.{name}"));
        let rows = [0, 56, 112, 168, 223];
        let mut worst = 0.0f32;
        for c in 0..3 {
            for (r, &y) in rows.iter().enumerate() {
                for col in 0..224 {
                    let got = x.data()[(c * 224 + y) * 224 + col];
                    let w = want.data()[(c * 5 + r) * 224 + col];
                    worst = worst.max((got - w).abs());
                }
            }
        }
        println!("{name}: largest pixel difference after normalisation {worst:.4}");
        assert_eq!(worst, 0.0, "{name}: preprocessed exactly as torchvision");
        let logits = model
            .forward(&x.clone().reshape(&[1, 3, 224, 224]).unwrap())
            .unwrap();
        let want = fx.f32(&format!("logits.{name}"));
        let got = Tensor::from_vec(&[1000], logits.data().to_vec()).unwrap();
        let err = rel_err(&got, &want);
        println!("{name}: logits relative error {err:.2e}");
        assert!(err <= 1e-5, "{name}: logits error {err}");
        let top = |l: &[f32]| top_k(l, 5).into_iter().map(|(c, _)| c).collect::<Vec<_>>();
        assert_eq!(top(got.data()), top(want.data()), "{name}: top-5 classes");
    }
}

#[cfg(feature = "images")]
#[test]
fn files_that_are_not_images_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("resnet-image-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("notes.jpg");
    std::fs::write(&bad, b"this is not a jpeg").unwrap();
    let e = resnet::preprocess::load(&bad).unwrap_err().to_string();
    assert!(
        e.contains("notes.jpg") && e.contains("not a decodable image"),
        "{e}"
    );
    let png = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/images/chelsea.png"),
    )
    .unwrap();
    let cut = dir.join("cut.png");
    std::fs::write(&cut, &png[..png.len() / 3]).unwrap();
    assert!(resnet::preprocess::load(&cut).is_err());
    let e = resnet::preprocess::load(dir.join("missing.png"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.png"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "images")]
#[test]
fn image_folders_load_and_bad_ones_are_named() {
    use resnet::data::DataSpec;
    let root = std::env::temp_dir().join(format!("resnet-folder-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let photos = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/images");
    for (split, class, file) in [
        ("train", "cat", "chelsea.png"),
        ("train", "rocket", "rocket.jpg"),
        ("test", "cat", "chelsea.png"),
        ("test", "rocket", "rocket.jpg"),
    ] {
        let d = root.join(split).join(class);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(photos.join(file), d.join(file)).unwrap();
    }
    let spec = DataSpec::Folder {
        dir: root.clone(),
        size: 32,
    };
    let split = spec.load().unwrap();
    assert_eq!(split.train.classes, ["cat", "rocket"]);
    assert_eq!((split.train.len(), split.test.len()), (2, 2));
    assert_eq!(split.train.shape, [3, 32, 32]);
    assert!(split.train.images.iter().all(|v| (0.0..=1.0).contains(v)));
    // A file that is not an image is an error naming it.
    std::fs::write(root.join("train/cat/notes.txt"), b"not an image").unwrap();
    let e = spec.load().unwrap_err().to_string();
    assert!(e.contains("notes.txt"), "{e}");
    std::fs::remove_file(root.join("train/cat/notes.txt")).unwrap();
    // An empty class folder is an error naming it.
    std::fs::create_dir_all(root.join("train/zebra")).unwrap();
    let e = spec.load().unwrap_err().to_string();
    assert!(e.contains("zebra") && e.contains("no images"), "{e}");
    std::fs::remove_dir_all(root.join("train/zebra")).unwrap();
    // Test classes must match the training classes.
    std::fs::create_dir_all(root.join("test/dog")).unwrap();
    std::fs::copy(photos.join("chelsea.png"), root.join("test/dog/x.png")).unwrap();
    let e = spec.load().unwrap_err().to_string();
    assert!(e.contains("differ"), "{e}");
    let _ = std::fs::remove_dir_all(&root);
}

/// A PNG whose header claims `w x h` pixels, with a valid IHDR and a tiny (truncated)
/// image: what a memory bomb looks like to the decoder before it allocates.
#[cfg(feature = "images")]
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00]);
    chunk(b"IEND", &[]);
    out
}

#[cfg(feature = "images")]
#[test]
fn memory_bombs_are_refused_with_their_size_before_decoding() {
    // 20000x20000 in a few dozen bytes (a 389 KB file once cost 6.2 GB).
    let bomb = png_header_only(20_000, 20_000);
    let e = resnet::preprocess::decode_rgb8(std::path::Path::new("bomb.png"), &bomb)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bomb.png") && e.contains("20000x20000") && e.contains("400 M pixels"),
        "{e}"
    );
    // A data set whose decoded size cannot fit is refused with the figure, before
    // anything is decoded.
    use resnet::data::DataSpec;
    let root = std::env::temp_dir().join(format!("resnet-bomb-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let photo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/images/chelsea.png");
    for split in ["train", "test"] {
        let d = root.join(split).join("cat");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(&photo, d.join("a.png")).unwrap();
    }
    let e = DataSpec::Folder {
        dir: root.clone(),
        size: 1_000_000,
    }
    .load()
    .unwrap_err()
    .to_string();
    assert!(e.contains("GB") && e.contains("--size"), "{e}");
    let _ = std::fs::remove_dir_all(&root);
}
