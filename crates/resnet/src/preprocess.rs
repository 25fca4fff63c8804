//! Image preprocessing as torchvision's standard ImageNet evaluation transform on a PIL
//! image: `Resize(256)` (shorter side to 256, bilinear with antialiasing),
//! `CenterCrop(224)`, `ToTensor()` (to `[0, 1]`), `Normalize(IMAGENET_MEAN,
//! IMAGENET_STD)`.
//!
//! Files go through `load_imagenet` (`images` feature): decoded to 8-bit RGB as PIL's
//! `Image.open(f).convert("RGB")` gives it ([`Rgb8`]), resized in 8 bits as PIL resizes
//! ([`resize_rgb8`]: a separable triangle filter widened by the scale when shrinking,
//! coefficients in 22-bit fixed point, each pass rounded to 8 bits), cropped, then
//! divided by 255 and normalised in `f32` exactly as `ToTensor` and `Normalize` do.
//! What this makes equal to torchvision, as the tests measure it
//! (`tests/preprocess_parity.rs`, fixtures by `scripts/make_fixtures.py`):
//!
//! - PNG (RGB, grey, palette, RGBA, up- and downsampled) and JPEG (baseline and
//!   progressive, 4:2:0 and 4:4:4, grey): bit for bit, every pixel of the normalised
//!   tensor;
//! - JPEG decoding: bit for bit with PIL's libjpeg-turbo, by this crate's own decoder,
//!   which follows libjpeg's integer IDCT, "fancy" chroma upsampling and fixed-point
//!   colour conversion (module `jpeg`; checked on odd sizes, 4:2:2, restart intervals,
//!   extreme qualities, CMYK and tiny images in `tests/jpeg_parity.rs`). Arithmetic-coded,
//!   lossless, hierarchical and 12-bit JPEGs are refused with an error naming the
//!   feature (libjpeg-turbo decodes the first and last; they are rare in image sets).
//!
//! [`imagenet_eval`] is the same transform on an `f32` tensor (a picture decoded by other
//! means): it resizes in `f32`, without PIL's 8-bit rounding, so it is within about one
//! grey level of torchvision, not equal.
//!
//! Decoding needs the `images` feature (`image` for PNG; JPEG is this crate's own
//! decoder); the rest does not.

use crate::data::DataError;
#[cfg(feature = "images")]
use std::path::Path;
use tensor::Tensor;

/// ImageNet's per-channel mean (RGB), as torchvision uses it.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel standard deviation (RGB), as torchvision uses it.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The 1000 ImageNet class names, by class index (torchvision's order).
pub fn imagenet_classes() -> Vec<&'static str> {
    include_str!("../data/imagenet_classes.txt")
        .lines()
        .collect()
}

/// A problem with an image in memory (no file to name).
fn bad(reason: String) -> DataError {
    DataError::Format {
        path: "<image>".into(),
        reason,
    }
}

/// The `[C, H, W]` of an image tensor.
fn chw(img: &Tensor) -> Result<[usize; 3], DataError> {
    match img.shape() {
        [c, h, w] => Ok([*c, *h, *w]),
        s => Err(bad(format!("expected a [C, H, W] image, got {s:?}"))),
    }
}

/// The largest image file read (256 MiB): a photo is a few MB.
#[cfg(feature = "images")]
const MAX_IMAGE_FILE: u64 = 1 << 28;

/// The most pixels a resize may produce per channel (64 M).
const MAX_RESIZED: usize = 1 << 26;

/// The triangle (bilinear) filter weights of one output coordinate: `(first input
/// index, normalised weights)`. PIL's `precompute_coeffs` for the bilinear filter.
fn filter_taps(out: usize, in_size: usize, out_size: usize) -> (usize, Vec<f64>) {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale; // the triangle's support is 1, widened when shrinking
    let center = (out as f64 + 0.5) * scale;
    let lo = ((center - support + 0.5).floor().max(0.0)) as usize;
    let hi = ((center + support + 0.5).floor() as usize).min(in_size);
    let mut w: Vec<f64> = (lo..hi)
        .map(|x| {
            let t = ((x as f64 - center + 0.5) / filter_scale).abs();
            (1.0 - t).max(0.0)
        })
        .collect();
    let total: f64 = w.iter().sum();
    if total > 0.0 {
        w.iter_mut().for_each(|v| *v /= total);
    }
    (lo, w)
}

/// Resizes a `[C, H, W]` image to `[C, oh, ow]`, PIL-style bilinear with antialiasing
/// (horizontal pass, then vertical).
pub fn resize_bilinear(img: &Tensor, oh: usize, ow: usize) -> Result<Tensor, DataError> {
    let [c, h, w] = chw(img)?;
    if h == 0 || w == 0 || oh == 0 || ow == 0 {
        return Err(bad(format!("cannot resize {h}x{w} to {oh}x{ow}")));
    }
    if c.saturating_mul(oh).saturating_mul(ow) > MAX_RESIZED {
        return Err(bad(format!(
            "resizing {h}x{w} to {oh}x{ow} would be too large"
        )));
    }
    let xt: Vec<_> = (0..ow).map(|x| filter_taps(x, w, ow)).collect();
    let yt: Vec<_> = (0..oh).map(|y| filter_taps(y, h, oh)).collect();
    let mut tmp = vec![0.0f64; c * h * ow];
    let src = img.data();
    for ch in 0..c {
        for y in 0..h {
            let row = &src[(ch * h + y) * w..][..w];
            for (x, (lo, ws)) in xt.iter().enumerate() {
                tmp[(ch * h + y) * ow + x] = ws
                    .iter()
                    .enumerate()
                    .map(|(i, k)| k * row[lo + i] as f64)
                    .sum();
            }
        }
    }
    let mut out = vec![0.0f32; c * oh * ow];
    for ch in 0..c {
        for (y, (lo, ws)) in yt.iter().enumerate() {
            for x in 0..ow {
                let v: f64 = ws
                    .iter()
                    .enumerate()
                    .map(|(i, k)| k * tmp[(ch * h + lo + i) * ow + x])
                    .sum();
                out[(ch * oh + y) * ow + x] = v as f32;
            }
        }
    }
    Tensor::from_vec(&[c, oh, ow], out).map_err(|e| bad(e.to_string()))
}

/// torchvision's `Resize(size)` output size: the shorter side becomes `size`, the
/// longer `floor(size * long / short)`.
pub fn resized_size(h: usize, w: usize, size: usize) -> (usize, usize) {
    if h <= w {
        (size, (size as f64 * w as f64 / h as f64) as usize)
    } else {
        ((size as f64 * h as f64 / w as f64) as usize, size)
    }
}

/// torchvision's `CenterCrop(size)` of a `[C, H, W]` image at least `size` on each side:
/// the offset is `round((H - size) / 2)` with ties to even, as Python's `round`.
pub fn center_crop(img: &Tensor, size: usize) -> Result<Tensor, DataError> {
    let [c, h, w] = chw(img)?;
    if h < size || w < size {
        return Err(bad(format!("cannot crop {size}x{size} out of {h}x{w}")));
    }
    let top = ((h - size) as f64 / 2.0).round_ties_even() as usize;
    let left = ((w - size) as f64 / 2.0).round_ties_even() as usize;
    let mut out = Vec::with_capacity(c * size * size);
    for ch in 0..c {
        for y in 0..size {
            let start = (ch * h + top + y) * w + left;
            out.extend_from_slice(&img.data()[start..start + size]);
        }
    }
    Tensor::from_vec(&[c, size, size], out).map_err(|e| bad(e.to_string()))
}

/// `(x - mean[c]) / std[c]` in place on a `[C, H, W]` image.
pub fn normalize(img: &mut Tensor, mean: [f32; 3], std: [f32; 3]) {
    let c = img.shape().first().copied().unwrap_or(0).min(3);
    let plane = img.len() / img.shape().first().copied().unwrap_or(1).max(1);
    for ch in 0..c {
        for v in &mut img.data_mut()[ch * plane..(ch + 1) * plane] {
            *v = (*v - mean[ch]) / std[ch];
        }
    }
}

/// The standard ImageNet evaluation transform of an RGB `[3, H, W]` image in `[0, 1]`:
/// resize the shorter side to 256, centre-crop 224, normalise.
pub fn imagenet_eval(img: &Tensor) -> Result<Tensor, DataError> {
    let [_, h, w] = chw(img)?;
    if h.max(w) > 64 * h.min(w) {
        return Err(bad(format!(
            "a {w}x{h} image is too elongated (aspect ratio above 64)"
        )));
    }
    let (rh, rw) = resized_size(h, w, 256);
    let mut x = center_crop(&resize_bilinear(img, rh, rw)?, 224)?;
    normalize(&mut x, IMAGENET_MEAN, IMAGENET_STD);
    Ok(x)
}

// ---- 8-bit images, as PIL holds them ----

/// An 8-bit RGB image, `height` rows of `width` pixels of 3 bytes (R, G, B), as PIL's
/// `RGB` mode holds it. Made by [`Rgb8::new`], which checks the length, so every function
/// taking one can trust it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rgb8 {
    width: usize,
    height: usize,
    /// `height * width * 3` bytes, row by row.
    data: Vec<u8>,
}

impl Rgb8 {
    /// An image from its bytes; the length must be `height * width * 3`.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self, DataError> {
        if width.checked_mul(height).and_then(|n| n.checked_mul(3)) != Some(data.len()) {
            return Err(bad(format!(
                "{} bytes for a {width}x{height} RGB image (expected {width} x {height} x 3)",
                data.len()
            )));
        }
        Ok(Rgb8 {
            width,
            height,
            data,
        })
    }

    /// Pixels per row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Rows.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The `height * width * 3` bytes, row by row, R, G, B.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The bytes, taken out.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// `ToTensor()`: `[3, H, W]`, each byte divided by 255 in `f32`.
    pub fn to_tensor(&self) -> Tensor {
        self.normalized([0.0; 3], [1.0; 3])
    }

    /// `ToTensor()` then `Normalize(mean, std)`, with torchvision's operations and
    /// roundings: `(v / 255 - mean) / std`, each step in `f32`.
    pub fn normalized(&self, mean: [f32; 3], std: [f32; 3]) -> Tensor {
        let plane = self.width * self.height;
        let mut out = vec![0.0f32; 3 * plane];
        for (i, px) in self.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + i] = (px[c] as f32 / 255.0 - mean[c]) / std[c];
            }
        }
        Tensor::from_vec(&[3, self.height, self.width], out).expect("3 planes of height x width")
    }
}

/// PIL's fixed-point precision for 8-bit resampling: coefficients are scaled by 2^22.
const PRECISION_BITS: u32 = 22;

/// The bilinear (triangle) filter's taps for every output coordinate of a resize from
/// `in_size` to `out_size`, as PIL computes them (`precompute_coeffs`, then rounded to
/// fixed point): for output `i`, `(first input index, integer weights)`.
///
/// In `f64`: `scale = in / out`, the filter widened to `support = max(scale, 1)`;
/// output `i`'s centre is `(i + 0.5) scale`; its inputs run from `trunc(centre -
/// support + 0.5)` (at least 0) to `trunc(centre + support + 0.5)` (at most `in`);
/// input `x` weighs `triangle((x - centre + 0.5) / max(scale, 1))`, where the division
/// is a multiplication by the reciprocal, as in PIL; the weights are divided by their
/// sum, then scaled by 2^22 and rounded half away from zero.
fn pil_taps(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale; // the triangle's support is 1
    let inv = 1.0 / filter_scale;
    let triangle = |x: f64| {
        let x = x.abs();
        if x < 1.0 {
            1.0 - x
        } else {
            0.0
        }
    };
    (0..out_size)
        .map(|i| {
            let centre = (i as f64 + 0.5) * scale;
            let lo = ((centre - support + 0.5) as i64).max(0) as usize;
            let hi = ((centre + support + 0.5) as i64).clamp(0, in_size as i64) as usize;
            let w: Vec<f64> = (lo..hi.max(lo))
                .map(|x| triangle((x as f64 - centre + 0.5) * inv))
                .collect();
            let total: f64 = w.iter().sum();
            let fixed = w
                .iter()
                .map(|&v| {
                    let v = if total != 0.0 { v / total } else { v };
                    let scaled = v * (1u32 << PRECISION_BITS) as f64;
                    (if scaled < 0.0 {
                        scaled - 0.5
                    } else {
                        scaled + 0.5
                    }) as i32
                })
                .collect();
            (lo, fixed)
        })
        .collect()
}

/// A weighted sum rounded back to 8 bits, as PIL's `clip8`: half of the last unit added
/// first, then shifted down and clamped to 0..=255.
#[inline]
fn clip8(sum: i64) -> u8 {
    ((sum + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes to `width x height` exactly as PIL's `Image.resize(size, BILINEAR)` does an
/// RGB image: a horizontal pass, rounded to 8 bits, then a vertical one, rounded again;
/// a pass whose size does not change is skipped (it would be the identity).
pub fn resize_rgb8(img: &Rgb8, width: usize, height: usize) -> Result<Rgb8, DataError> {
    let (w, h) = (img.width, img.height);
    if w == 0 || h == 0 || width == 0 || height == 0 {
        return Err(bad(format!("cannot resize {w}x{h} to {width}x{height}")));
    }
    if width.saturating_mul(height) > MAX_RESIZED {
        return Err(bad(format!(
            "resizing {w}x{h} to {width}x{height} would be too large"
        )));
    }
    let mut cur = std::borrow::Cow::Borrowed(img);
    if width != w {
        let taps = pil_taps(w, width);
        let mut out = vec![0u8; h * width * 3];
        for (src, dst) in cur
            .data
            .chunks_exact(w * 3)
            .zip(out.chunks_exact_mut(width * 3))
        {
            for (x, (lo, k)) in taps.iter().enumerate() {
                for c in 0..3 {
                    let sum: i64 = k
                        .iter()
                        .enumerate()
                        .map(|(j, &kj)| src[(lo + j) * 3 + c] as i64 * kj as i64)
                        .sum();
                    dst[x * 3 + c] = clip8(sum);
                }
            }
        }
        cur = std::borrow::Cow::Owned(Rgb8::new(width, h, out)?);
    }
    if height != h {
        let taps = pil_taps(h, height);
        let row = width * 3;
        let mut out = vec![0u8; height * row];
        for (y, (lo, k)) in taps.iter().enumerate() {
            for i in 0..row {
                let sum: i64 = k
                    .iter()
                    .enumerate()
                    .map(|(j, &kj)| cur.data[(lo + j) * row + i] as i64 * kj as i64)
                    .sum();
                out[y * row + i] = clip8(sum);
            }
        }
        cur = std::borrow::Cow::Owned(Rgb8::new(width, height, out)?);
    }
    Ok(cur.into_owned())
}

/// torchvision's `CenterCrop(size)` of an image at least `size` on each side (the offset
/// `round((H - size) / 2)`, ties to even, as [`center_crop`]).
pub fn center_crop_rgb8(img: &Rgb8, size: usize) -> Result<Rgb8, DataError> {
    let (w, h) = (img.width, img.height);
    if h < size || w < size {
        return Err(bad(format!("cannot crop {size}x{size} out of {h}x{w}")));
    }
    let top = ((h - size) as f64 / 2.0).round_ties_even() as usize;
    let left = ((w - size) as f64 / 2.0).round_ties_even() as usize;
    let mut out = Vec::with_capacity(size * size * 3);
    for y in top..top + size {
        out.extend_from_slice(&img.data[(y * w + left) * 3..][..size * 3]);
    }
    Rgb8::new(size, size, out)
}

/// torchvision's `Resize(size)` then `CenterCrop(crop)` on an 8-bit image.
pub fn resize_and_crop_rgb8(img: &Rgb8, size: usize, crop: usize) -> Result<Rgb8, DataError> {
    let (h, w) = (img.height, img.width);
    if h == 0 || w == 0 || h.max(w) > 64 * h.min(w) {
        return Err(bad(format!(
            "a {w}x{h} image is empty or too elongated (aspect ratio above 64)"
        )));
    }
    let (rh, rw) = resized_size(h, w, size);
    center_crop_rgb8(&resize_rgb8(img, rw, rh)?, crop)
}

/// The standard ImageNet evaluation transform of an 8-bit image, equal to torchvision's
/// on the same pixels: `[3, 224, 224]`.
pub fn imagenet_eval_rgb8(img: &Rgb8) -> Result<Tensor, DataError> {
    Ok(resize_and_crop_rgb8(img, 256, 224)?.normalized(IMAGENET_MEAN, IMAGENET_STD))
}

// ---- Decoding ----

/// The most pixels an image may have (100 M: 300 MB as 8-bit RGB). The pipeline needs
/// the decoded image plus one resized copy; a picture over this (a 20000x20000 PNG is
/// 400 M pixels in a few hundred KB) is refused before it is decoded.
pub const MAX_PIXELS: u64 = 100_000_000;

/// The most memory a decoder may allocate on its own (1 GiB: a 100 M pixel image with
/// 16 bits per channel and alpha, 800 MB, fits).
#[cfg(feature = "images")]
const MAX_DECODER_ALLOC: u64 = 1 << 30;

#[cfg(feature = "images")]
fn format_error(path: &Path, reason: String) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        reason,
    }
}

#[cfg(feature = "images")]
fn check_pixels(path: &Path, width: u64, height: u64) -> Result<(), DataError> {
    let pixels = width * height;
    if width == 0 || height == 0 {
        return Err(format_error(path, "empty image".into()));
    }
    if pixels > MAX_PIXELS {
        return Err(format_error(
            path,
            format!(
                "a {width}x{height} image ({} M pixels, {:.1} GB as 8-bit RGB) is over the \
                 {} M pixels this pipeline decodes",
                pixels / 1_000_000,
                pixels as f64 * 3.0 / 1e9,
                MAX_PIXELS / 1_000_000
            ),
        ));
    }
    Ok(())
}

/// Decodes an image file's bytes (JPEG or PNG) to 8-bit RGB as PIL's
/// `Image.open(f).convert("RGB")` gives it: grey replicated, alpha dropped (not
/// composited), a palette looked up, 16-bit RGB cut to its high byte and 16-bit grey
/// clipped at 255 (PIL's `I;16` to `RGB`). Images over [`MAX_PIXELS`] are refused from
/// their header, before any pixel is decoded.
#[cfg(feature = "images")]
pub fn decode_rgb8(path: &Path, bytes: &[u8]) -> Result<Rgb8, DataError> {
    let undecodable = |e: String| format_error(path, format!("not a decodable image: {e}"));
    if bytes.starts_with(&[0xFF, 0xD8]) {
        return decode_jpeg(path, bytes);
    }
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| undecodable(e.to_string()))?;
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| undecodable(e.to_string()))?;
    check_pixels(path, w as u64, h as u64)?;
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| undecodable(e.to_string()))?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODER_ALLOC);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| undecodable(e.to_string()))?;
    use image::DynamicImage as D;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let data: Vec<u8> = match &img {
        D::ImageRgb8(i) => i.as_raw().clone(),
        D::ImageRgba8(i) => i
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        D::ImageLuma8(i) => i.as_raw().iter().flat_map(|&v| [v, v, v]).collect(),
        D::ImageLumaA8(i) => i.as_raw().chunks_exact(2).flat_map(|p| [p[0]; 3]).collect(),
        D::ImageRgb16(i) => i.as_raw().iter().map(|&v| (v >> 8) as u8).collect(),
        D::ImageRgba16(i) => i
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
            .collect(),
        D::ImageLuma16(i) => i
            .as_raw()
            .iter()
            .flat_map(|&v| [v.min(255) as u8; 3])
            .collect(),
        D::ImageLumaA16(i) => i
            .as_raw()
            .chunks_exact(2)
            .flat_map(|p| [p[0].min(255) as u8; 3])
            .collect(),
        other => other.to_rgb8().into_raw(),
    };
    Rgb8::new(w, h, data).map_err(|e| format_error(path, e.to_string()))
}

/// JPEG by this crate's decoder, which reproduces libjpeg-turbo's default output
/// ([`crate::jpeg`]).
#[cfg(feature = "images")]
fn decode_jpeg(path: &Path, bytes: &[u8]) -> Result<Rgb8, DataError> {
    let accept = |w: u64, h: u64| match check_pixels(path, w, h) {
        Err(DataError::Format { reason, .. }) => Err(reason),
        _ => Ok(()),
    };
    let img = crate::jpeg::decode(bytes, accept, MAX_DECODER_ALLOC)
        .map_err(|e| format_error(path, format!("not a decodable image: {e}")))?;
    let data = match img.channels {
        1 => img.data.iter().flat_map(|&v| [v; 3]).collect(),
        _ => img.data,
    };
    Rgb8::new(img.width, img.height, data).map_err(|e| format_error(path, e.to_string()))
}

/// Reads and decodes an image file to 8-bit RGB (see [`decode_rgb8`]). Only a regular
/// file of at most 256 MiB is read.
#[cfg(feature = "images")]
pub fn load_rgb8(path: impl AsRef<Path>) -> Result<Rgb8, DataError> {
    let path = path.as_ref();
    let bytes =
        crate::files::read_regular(path, MAX_IMAGE_FILE).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    decode_rgb8(path, &bytes)
}

/// Decodes an image file's bytes (JPEG or PNG) into RGB `[3, H, W]` in `[0, 1]`.
#[cfg(feature = "images")]
pub fn decode(path: &Path, bytes: &[u8]) -> Result<Tensor, DataError> {
    Ok(decode_rgb8(path, bytes)?.to_tensor())
}

/// Reads and decodes an image file into RGB `[3, H, W]` in `[0, 1]`.
#[cfg(feature = "images")]
pub fn load(path: impl AsRef<Path>) -> Result<Tensor, DataError> {
    Ok(load_rgb8(path)?.to_tensor())
}

/// An image file through torchvision's ImageNet evaluation transform: `[3, 224, 224]`,
/// equal to torchvision's as the module docs state.
#[cfg(feature = "images")]
pub fn load_imagenet(path: impl AsRef<Path>) -> Result<Tensor, DataError> {
    let path = path.as_ref();
    imagenet_eval_rgb8(&load_rgb8(path)?).map_err(|e| match e {
        DataError::Format { reason, .. } => format_error(path, reason),
        e => e,
    })
}

/// Reads an image and makes it `[3, size, size]` in `[0, 1]`: shorter side resized to
/// `size` (in 8 bits, as PIL), then centre-cropped (for image-folder data sets).
#[cfg(feature = "images")]
pub fn load_resized(path: &Path, size: usize) -> Result<Tensor, DataError> {
    let img = load_rgb8(path)?;
    Ok(resize_and_crop_rgb8(&img, size, size)
        .map_err(|e| match e {
            DataError::Format { reason, .. } => format_error(path, reason),
            e => e,
        })?
        .to_tensor())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resizing_to_the_same_size_is_the_identity() {
        let img = Tensor::rand_uniform(&[3, 5, 7], 0.0, 1.0, 1).unwrap();
        let out = resize_bilinear(&img, 5, 7).unwrap();
        for (a, b) in out.data().iter().zip(img.data()) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn a_constant_image_stays_constant_at_any_size() {
        let img = Tensor::full(&[3, 37, 53], 0.25).unwrap();
        for (h, w) in [(256, 366), (10, 3), (37, 53), (5, 100)] {
            let out = resize_bilinear(&img, h, w).unwrap();
            assert!(
                out.data().iter().all(|v| (v - 0.25).abs() < 1e-6),
                "{h}x{w}"
            );
        }
    }

    #[test]
    fn sizes_and_crops_follow_torchvision() {
        assert_eq!(resized_size(480, 640, 256), (256, 341));
        assert_eq!(resized_size(640, 480, 256), (341, 256));
        // Offsets round half to even, as Python: a 6-wide row cropped to 1 starts at
        // round(2.5) = 2, a 4-wide one at round(1.5) = 2.
        for (w, want) in [(6, 2.0), (4, 2.0)] {
            let row = Tensor::from_vec(&[1, 1, w], (0..w).map(|v| v as f32).collect()).unwrap();
            assert_eq!(center_crop(&row, 1).unwrap().data(), &[want]);
        }
        assert!(center_crop(&Tensor::zeros(&[1, 1, 6]).unwrap(), 2).is_err());
        let tall = Tensor::from_vec(&[1, 225, 257], vec![0.0; 225 * 257]).unwrap();
        assert_eq!(center_crop(&tall, 224).unwrap().shape(), &[1, 224, 224]);
        let eval = imagenet_eval(&Tensor::full(&[3, 300, 400], 0.5).unwrap()).unwrap();
        assert_eq!(eval.shape(), &[3, 224, 224]);
        assert!((eval.data()[0] - (0.5 - 0.485) / 0.229).abs() < 1e-5);
    }
}
