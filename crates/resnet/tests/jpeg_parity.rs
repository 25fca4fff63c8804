//! JPEG decoding against PIL's libjpeg-turbo on a stress set of small files (fixture
//! `jpeg.safetensors`, made by `scripts/make_fixtures.py --only jpeg` from the files in
//! `tests/images/jpeg/`): baseline, progressive and restart intervals at 4:2:0, 4:2:2,
//! 4:4:4, 4:4:0, 4:1:1 and grey, odd and tiny sizes, quality 3 to 100, CMYK and
//! RGB-coded, photo crops and a saturated synthetic image that clamps.
//!
//! - every file decodes to PIL's `Image.open(f).convert("RGB")` within [`JPEG_LEVELS`]
//!   grey levels (one line per file is printed, then the bound is checked on all);
//! - truncated files are refused with an error, and corrupted entropy-coded data never
//!   panics.

#[cfg(not(feature = "images"))]
#[test]
fn jpeg_parity_needs_the_images_feature() {
    println!("SKIP    JPEG parity: built without the `images` feature (cargo test --workspace or -p resnet --features images)");
}

#[cfg(feature = "images")]
mod common;

#[cfg(feature = "images")]
mod parity {
    use super::common::load_fixture;
    use resnet::data::DataError;
    use resnet::preprocess::{decode_rgb8, Rgb8};
    use safetensors::SafeTensors;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::path::{Path, PathBuf};

    /// The largest decoded-pixel difference from PIL's libjpeg-turbo allowed on any
    /// file of the fixture: the aim is bit for bit.
    const JPEG_LEVELS: u8 = 0;

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/images/jpeg")
    }

    /// The fixture's files, as (file name, PIL's pixels `[H, W, 3]`), by name.
    fn expected(fx: &SafeTensors) -> Vec<(String, Vec<usize>, Vec<u8>)> {
        let mut out: Vec<_> = fx
            .tensors()
            .into_iter()
            .filter_map(|(key, t)| {
                let name = key.strip_prefix("decoded.")?.to_string();
                assert_eq!(t.dtype(), safetensors::Dtype::U8, "{key}");
                assert_eq!(t.shape().len(), 3, "{key}: {:?}", t.shape());
                assert_eq!(t.shape()[2], 3, "{key}: {:?}", t.shape());
                Some((name, t.shape().to_vec(), t.data().to_vec()))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        assert!(!out.is_empty(), "jpeg.safetensors holds no decoded.* entry");
        out
    }

    fn read(name: &str) -> Vec<u8> {
        let path = dir().join(name);
        std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{} cannot be read ({e}); it is part of the repository: restore it from git, \
                 or make it again with `python3 scripts/make_fixtures.py --only jpeg`",
                path.display()
            )
        })
    }

    /// The decoder, a panic turned into a message.
    fn decode(path: &Path, bytes: &[u8]) -> Result<Result<Rgb8, DataError>, String> {
        catch_unwind(AssertUnwindSafe(|| decode_rgb8(path, bytes))).map_err(|p| {
            p.downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into())
        })
    }

    #[test]
    fn jpeg_files_decode_as_pils_libjpeg_turbo() {
        let bytes = load_fixture("jpeg.safetensors");
        let fx = SafeTensors::deserialize(&bytes).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone().unwrap_or_default();
        println!(
            "expected pixels: Pillow {}, libjpeg-turbo {}",
            meta.get("pillow").map_or("?", |s| s.as_str()),
            meta.get("libjpeg_turbo").map_or("?", |s| s.as_str())
        );
        let files = expected(&fx);
        let mut failures = Vec::new();
        // Every file of the folder is compared (none added without its expected pixels).
        for entry in std::fs::read_dir(dir()).expect("tests/images/jpeg") {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.ends_with(".jpg") && !files.iter().any(|(n, _, _)| *n == name) {
                failures.push(format!(
                    "{name}: not in jpeg.safetensors (python3 scripts/make_fixtures.py --only jpeg)"
                ));
            }
        }
        let mut worst = 0u8;
        for (name, shape, want) in &files {
            let (h, w) = (shape[0], shape[1]);
            let path = dir().join(name);
            let ours = match decode(&path, &read(name)) {
                Ok(Ok(img)) => img,
                Ok(Err(e)) => {
                    println!("{name:36} {w:>3}x{h:<3} ERROR {e}");
                    failures.push(format!("{name}: {e}"));
                    continue;
                }
                Err(p) => {
                    println!("{name:36} {w:>3}x{h:<3} PANIC {p}");
                    failures.push(format!("{name}: panicked: {p}"));
                    continue;
                }
            };
            if (ours.width(), ours.height()) != (w, h) {
                println!(
                    "{name:36} {w:>3}x{h:<3} decoded as {}x{}",
                    ours.width(),
                    ours.height()
                );
                failures.push(format!(
                    "{name}: {}x{}, PIL {w}x{h}",
                    ours.width(),
                    ours.height()
                ));
                continue;
            }
            let (diff, equal) = ours
                .data()
                .iter()
                .zip(want)
                .fold((0u8, 0usize), |(d, n), (a, b)| {
                    (d.max(a.abs_diff(*b)), n + usize::from(a == b))
                });
            worst = worst.max(diff);
            println!(
                "{name:36} {w:>3}x{h:<3} max difference {diff:>3}, {:6.2}% of bytes equal",
                100.0 * equal as f64 / want.len() as f64
            );
            if diff > JPEG_LEVELS {
                failures.push(format!(
                    "{name}: {diff} grey levels (allowed {JPEG_LEVELS})"
                ));
            }
        }
        println!(
            "{} files, largest difference {worst} (allowed {JPEG_LEVELS})",
            files.len()
        );
        assert!(
            failures.is_empty(),
            "{} of {} files:\n{}",
            failures.len(),
            files.len(),
            failures.join("\n")
        );
    }

    /// The entropy-coded segments (after each SOS header, up to the next marker that is
    /// neither a stuffed 0xFF nor a restart marker), as byte ranges.
    fn entropy_segments(b: &[u8]) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let mut i = 2;
        while i + 4 <= b.len() && b[i] == 0xFF {
            let marker = b[i + 1];
            if marker == 0xD9 {
                break;
            }
            let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
            i += 2 + len;
            if marker == 0xDA {
                let start = i;
                while i + 1 < b.len()
                    && !(b[i] == 0xFF && b[i + 1] != 0 && !(0xD0..=0xD7).contains(&b[i + 1]))
                {
                    i += 1;
                }
                out.push(start..i);
            }
        }
        out
    }

    #[test]
    fn truncated_or_corrupted_files_are_errors_not_panics() {
        let bytes = load_fixture("jpeg.safetensors");
        let fx = SafeTensors::deserialize(&bytes).unwrap();
        let files = expected(&fx);
        let mut failures = Vec::new();
        let (mut truncated, mut corrupted, mut corrupted_ok) = (0, 0, 0);
        for (name, _, _) in &files {
            let path = dir().join(name);
            let data = read(name);
            // Cut at 1/16 .. 15/16 of the file: an error, never a picture or a panic.
            for k in 1..16 {
                let cut = data.len() * k / 16;
                truncated += 1;
                match decode(&path, &data[..cut]) {
                    Ok(Err(DataError::Format { .. } | DataError::Io { .. })) => {}
                    Ok(Err(e)) => failures.push(format!(
                        "{name} cut at {cut}: a DataError::Spec, not a format error: {e}"
                    )),
                    Ok(Ok(img)) => failures.push(format!(
                        "{name} cut at {k}/16 ({cut} of {} bytes): decoded as {}x{}",
                        data.len(),
                        img.width(),
                        img.height()
                    )),
                    Err(p) => failures.push(format!("{name} cut at {cut}: panicked: {p}")),
                }
            }
            // Bytes in the middle of each scan's entropy-coded data flipped, and a stray
            // EOI, a restart marker out of turn and fill bytes in the largest scan: any
            // result but a panic.
            let segments = entropy_segments(&data);
            assert!(!segments.is_empty(), "{name}: no scan found");
            let mut variants: Vec<(String, Vec<u8>)> = Vec::new();
            for (s, seg) in segments.iter().enumerate() {
                if seg.len() < 4 {
                    continue;
                }
                let mid = seg.start + seg.len() / 2;
                let mut v = data.clone();
                for (j, mask) in [0xFFu8, 0x5A, 0x81].into_iter().enumerate() {
                    v[mid - 1 + j] ^= mask;
                }
                variants.push((format!("scan {s} flipped at {mid}"), v));
            }
            let big = segments.iter().max_by_key(|s| s.len()).unwrap().clone();
            if big.len() >= 4 {
                let mid = big.start + big.len() / 2;
                for patch in [[0xFF, 0xD9], [0xFF, 0xD3], [0xFF, 0xFF]] {
                    let mut v = data.clone();
                    v[mid..mid + 2].copy_from_slice(&patch);
                    variants.push((format!("{patch:02X?} at {mid}"), v));
                }
                let mut v = data.clone();
                v[big.start..mid].iter_mut().for_each(|b| *b = !*b & 0xFE);
                variants.push(("first half of the largest scan inverted".into(), v));
            }
            for (what, v) in variants {
                corrupted += 1;
                match decode(&path, &v) {
                    Ok(r) => corrupted_ok += usize::from(r.is_ok()),
                    Err(p) => failures.push(format!("{name}, {what}: panicked: {p}")),
                }
            }
        }
        println!(
            "{} files: {truncated} truncations, {corrupted} corruptions ({corrupted_ok} of them \
             still decoded)",
            files.len()
        );
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// A file without its DHT segments, as Motion-JPEG frames are written.
    fn without_huffman_tables(b: &[u8]) -> Vec<u8> {
        let mut out = b[..2].to_vec();
        let mut i = 2;
        while i + 4 <= b.len() && b[i] == 0xFF && b[i + 1] != 0xDA {
            let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
            if b[i + 1] != 0xC4 {
                out.extend_from_slice(&b[i..i + 2 + len]);
            }
            i += 2 + len;
        }
        out.extend_from_slice(&b[i..]);
        out
    }

    #[test]
    fn frames_without_huffman_tables_use_the_standard_ones() {
        // Baseline files Pillow wrote without `optimize`: their tables are the
        // standard's (T.81 Annex K), so the stripped file must still give PIL's pixels.
        let bytes = load_fixture("jpeg.safetensors");
        let fx = SafeTensors::deserialize(&bytes).unwrap();
        let files = expected(&fx);
        let names = [
            "rocket_420_q90_37x29.jpg",
            "chelsea_422_q85_35x21.jpg",
            "chelsea_grey_37x29.jpg",
        ];
        for name in names {
            let (_, _, want) = files
                .iter()
                .find(|(n, _, _)| n == name)
                .unwrap_or_else(|| panic!("{name} is not in the fixture"));
            let stripped = without_huffman_tables(&read(name));
            assert!(
                !stripped.windows(2).any(|w| w == [0xFF, 0xC4]),
                "{name}: DHT left"
            );
            let got = decode_rgb8(Path::new(name), &stripped)
                .unwrap_or_else(|e| panic!("{name} without its tables: {e}"));
            assert!(
                got.data() == &want[..],
                "{name}: pixels differ without the tables"
            );
        }
        // A table the standard does not supply (id 2) is still an error naming it.
        let mut renamed = without_huffman_tables(&read(names[0]));
        let sos = renamed.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        renamed[sos + 6] = 0x22; // first scan component: DC and AC table 2
        let e = decode_rgb8(Path::new("renamed.jpg"), &renamed)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Huffman table 2"), "{e}");
    }
}
