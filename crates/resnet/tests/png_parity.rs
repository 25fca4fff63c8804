//! PNG decoding against PIL's `Image.open(f).convert("RGB")` on every colour type and
//! bit depth: 1, 2 and 4-bit grey, 16-bit grey (clipped at 255, PIL's `I;16`), 16-bit
//! grey with alpha and 16-bit RGB/RGBA (high byte), a 4-bit palette with transparency,
//! grey with a tRNS colour, and Adam7 interlacing (fixture `png.safetensors` and the
//! files in `tests/images/png/`, made by `scripts/make_fixtures.py --only png`). Each
//! file also goes through the streaming resize-and-crop, which must equal the whole
//! image resized.

#[cfg(not(feature = "images"))]
#[test]
fn png_parity_needs_the_images_feature() {
    println!("SKIP    PNG parity: built without the `images` feature (cargo test --workspace or -p resnet --features images)");
}

#[cfg(feature = "images")]
mod common;

#[cfg(feature = "images")]
#[test]
fn png_files_decode_exactly_as_pil() {
    use resnet::preprocess::{decode_resized_rgb8, decode_rgb8, resize_and_crop_rgb8};
    use safetensors::SafeTensors;
    let bytes = common::load_fixture("png.safetensors");
    let fx = SafeTensors::deserialize(&bytes).unwrap();
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/images/png");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("tests/images/png")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".png"))
        .collect();
    names.sort();
    assert!(names.len() >= 11, "{names:?}");
    for name in &names {
        let want = fx.tensor(&format!("decoded.{name}")).unwrap_or_else(|_| {
            panic!("{name}: not in png.safetensors (make_fixtures.py --only png)")
        });
        let path = dir.join(name);
        let file = std::fs::read(&path).unwrap();
        let img = decode_rgb8(&path, &file).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&[img.height(), img.width(), 3][..], want.shape(), "{name}");
        assert!(
            img.data() == want.data(),
            "{name}: pixels differ from PIL's"
        );
        // Streamed: the same as resizing the whole image, here upsampled and cropped.
        let whole = resize_and_crop_rgb8(&img, 20, 17).unwrap();
        let streamed = decode_resized_rgb8(&path, &file, 20, 17).unwrap();
        assert!(whole == streamed, "{name}: streamed resize differs");
        println!("{name:24} equal to PIL");
    }
}
