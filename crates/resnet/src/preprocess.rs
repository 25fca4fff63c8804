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
    let mut sink = ResizeCrop::new(img.width, img.height, size, crop)?;
    for row in img.data.chunks_exact(img.width * 3) {
        sink.push_row(row);
    }
    sink.finish()
}

/// torchvision's `Resize(size)` then `CenterCrop(crop)` (PIL's 8-bit bilinear resize,
/// exactly), fed one RGB row at a time: it keeps only the horizontally resized columns
/// of the crop, for the rows the crop's vertical taps read, so a 12-megapixel photo
/// never needs a full-size copy (a few MB instead of 36).
///
/// The same sums and roundings as [`resize_rgb8`] then [`center_crop_rgb8`]: PIL's
/// horizontal pass first, rounded to 8 bits, then the vertical one; a pass whose size
/// does not change is skipped.
pub struct ResizeCrop {
    width: usize,
    height: usize,
    crop: usize,
    /// Per crop column: the horizontal taps (`None`: the width does not change, and
    /// column `left + x` is copied).
    h_taps: Option<Vec<(usize, Vec<i32>)>>,
    left: usize,
    /// Per crop row: the vertical taps, as rows of `kept` (`None`: copied).
    v_taps: Option<Vec<(usize, Vec<i32>)>>,
    /// The input rows kept: `first..first + kept_rows`.
    first: usize,
    kept_rows: usize,
    kept: Vec<u8>,
    next_row: usize,
}

impl ResizeCrop {
    /// For a `width x height` image: the shorter side resized to `size`, then the centre
    /// `crop x crop` square. Refuses an empty or too elongated image (aspect ratio above
    /// 64), and a crop larger than the resized image.
    pub fn new(width: usize, height: usize, size: usize, crop: usize) -> Result<Self, DataError> {
        let (h, w) = (height, width);
        if h == 0 || w == 0 || h.max(w) > 64 * h.min(w) {
            return Err(bad(format!(
                "a {w}x{h} image is empty or too elongated (aspect ratio above 64)"
            )));
        }
        let (rh, rw) = resized_size(h, w, size);
        if crop == 0 || rh < crop || rw < crop {
            return Err(bad(format!("cannot crop {crop}x{crop} out of {rh}x{rw}")));
        }
        if rw.saturating_mul(rh) > MAX_RESIZED {
            return Err(bad(format!(
                "resizing {w}x{h} to {rw}x{rh} would be too large"
            )));
        }
        let top = ((rh - crop) as f64 / 2.0).round_ties_even() as usize;
        let left = ((rw - crop) as f64 / 2.0).round_ties_even() as usize;
        let h_taps = (rw != w).then(|| pil_taps(w, rw)[left..left + crop].to_vec());
        let v_taps = (rh != h).then(|| pil_taps(h, rh)[top..top + crop].to_vec());
        let (first, end) = match &v_taps {
            Some(t) => (
                t.iter().map(|(lo, _)| *lo).min().unwrap_or(0),
                t.iter().map(|(lo, k)| lo + k.len()).max().unwrap_or(0),
            ),
            None => (top, top + crop),
        };
        let kept_rows = end.saturating_sub(first);
        Ok(ResizeCrop {
            width,
            height,
            crop,
            h_taps,
            left,
            v_taps,
            first,
            kept_rows,
            kept: vec![0; kept_rows * crop * 3],
            next_row: 0,
        })
    }

    /// The next input row, `width * 3` bytes of RGB (rows past the image's height, and
    /// rows of another length, are ignored).
    pub fn push_row(&mut self, row: &[u8]) {
        let y = self.next_row;
        self.next_row += 1;
        if row.len() != self.width * 3 || y < self.first || y >= self.first + self.kept_rows {
            return;
        }
        let out = &mut self.kept[(y - self.first) * self.crop * 3..][..self.crop * 3];
        match &self.h_taps {
            None => out.copy_from_slice(&row[self.left * 3..(self.left + self.crop) * 3]),
            Some(taps) => {
                for (x, (lo, k)) in taps.iter().enumerate() {
                    for c in 0..3 {
                        let sum: i64 = k
                            .iter()
                            .enumerate()
                            .map(|(j, &kj)| row[(lo + j) * 3 + c] as i64 * kj as i64)
                            .sum();
                        out[x * 3 + c] = clip8(sum);
                    }
                }
            }
        }
    }

    /// The `crop x crop` result, once every row was pushed (an error if the image
    /// ended early).
    pub fn finish(self) -> Result<Rgb8, DataError> {
        if self.next_row < self.height.min(self.first + self.kept_rows) {
            return Err(bad(format!(
                "the image ended after {} of its {} rows",
                self.next_row, self.height
            )));
        }
        let row = self.crop * 3;
        match &self.v_taps {
            None => Rgb8::new(self.crop, self.crop, self.kept),
            Some(taps) => {
                let mut out = vec![0u8; self.crop * row];
                for (y, (lo, k)) in taps.iter().enumerate() {
                    let base = lo - self.first;
                    for i in 0..row {
                        let sum: i64 = k
                            .iter()
                            .enumerate()
                            .map(|(j, &kj)| self.kept[(base + j) * row + i] as i64 * kj as i64)
                            .sum();
                        out[y * row + i] = clip8(sum);
                    }
                }
                Rgb8::new(self.crop, self.crop, out)
            }
        }
    }
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
/// composited), a palette looked up, 16-bit RGB and grey-with-alpha cut to their high
/// byte and 16-bit grey clipped at 255 (PIL's `I;16` to `RGB`). Images over [`MAX_PIXELS`] are refused from
/// their header, before any pixel is decoded.
#[cfg(feature = "images")]
pub fn decode_rgb8(path: &Path, bytes: &[u8]) -> Result<Rgb8, DataError> {
    let mut sink = RgbSink::new(path, None);
    decode_rows(path, std::io::Cursor::new(bytes), bytes, &mut sink)?;
    sink.into_image()
}

/// Decodes an image file's bytes and makes torchvision's `Resize(size)` then
/// `CenterCrop(crop)` of it ([`ResizeCrop`]), row by row: the full-size image is never
/// held (the result equals [`decode_rgb8`] then [`resize_and_crop_rgb8`]).
#[cfg(feature = "images")]
pub fn decode_resized_rgb8(
    path: &Path,
    bytes: &[u8],
    size: usize,
    crop: usize,
) -> Result<Rgb8, DataError> {
    let mut sink = RgbSink::new(path, Some((size, crop)));
    decode_rows(path, std::io::Cursor::new(bytes), bytes, &mut sink)?;
    sink.into_image()
}

/// Decodes a JPEG (from `head`, the whole file) or a PNG (from `png`, which may be a
/// file read as it goes; `head` then needs only its first bytes) into `sink`, RGB rows
/// top to bottom.
#[cfg(feature = "images")]
fn decode_rows(
    path: &Path,
    png: impl std::io::BufRead + std::io::Seek,
    head: &[u8],
    sink: &mut RgbSink,
) -> Result<(), DataError> {
    let undecodable = |e: String| format_error(path, format!("not a decodable image: {e}"));
    if head.starts_with(&[0xFF, 0xD8]) {
        let accept = |w: u64, h: u64| match check_pixels(path, w, h) {
            Err(DataError::Format { reason, .. }) => Err(reason),
            _ => Ok(()),
        };
        return match crate::jpeg::decode_into(head, accept, MAX_DECODER_ALLOC, sink) {
            Ok(()) => Ok(()),
            Err(e) => Err(sink
                .error
                .take()
                .unwrap_or_else(|| undecodable(e.to_string()))),
        };
    }
    if !head.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Err(undecodable("not a JPEG or PNG file".into()));
    }
    decode_png(path, png, sink)
}

/// A PNG through the `png` crate, row by row: palettes and low bit depths expanded to
/// 8 bits, then each row made RGB as PIL's `convert("RGB")` does.
#[cfg(feature = "images")]
fn decode_png(
    path: &Path,
    input: impl std::io::BufRead + std::io::Seek,
    sink: &mut RgbSink,
) -> Result<(), DataError> {
    use png::{BitDepth, ColorType};
    let undecodable = |e: String| format_error(path, format!("not a decodable image: {e}"));
    let limits = png::Limits {
        bytes: MAX_DECODER_ALLOC as usize,
    };
    let mut decoder = png::Decoder::new_with_limits(input, limits);
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder
        .read_info()
        .map_err(|e| undecodable(e.to_string()))?;
    let (w, h) = (reader.info().width as usize, reader.info().height as usize);
    check_pixels(path, w as u64, h as u64)?;
    let interlaced = reader.info().interlaced;
    let (colour, depth) = reader.output_color_type();
    let channels = colour.samples();
    let sixteen = depth == BitDepth::Sixteen;
    if depth != BitDepth::Eight && !sixteen {
        return Err(undecodable(format!(
            "{depth:?}-bit samples after expansion"
        )));
    }
    if let Err(e) = crate::jpeg::RowSink::start(sink, w, h, 3) {
        return Err(sink.error.take().unwrap_or_else(|| undecodable(e)));
    }
    // A sample as PIL's RGB conversion takes it: 16-bit colour keeps its high byte;
    // 16-bit grey is clipped at 255 (PIL opens it as `I;16`), but 16-bit grey with
    // alpha keeps its high byte (PIL opens that as RGBA).
    let grey = matches!(colour, ColorType::Grayscale | ColorType::GrayscaleAlpha);
    let clip = colour == ColorType::Grayscale;
    let step = channels * if sixteen { 2 } else { 1 };
    let mut rgb = vec![0u8; w * 3];
    let convert = |row: &[u8], rgb: &mut [u8]| {
        for (px, out) in row.chunks_exact(step).zip(rgb.chunks_exact_mut(3)) {
            let sample = |i: usize| -> u8 {
                if sixteen {
                    let v = u16::from_be_bytes([px[2 * i], px[2 * i + 1]]);
                    if clip {
                        v.min(255) as u8
                    } else {
                        (v >> 8) as u8
                    }
                } else {
                    px[i]
                }
            };
            if grey {
                out.fill(sample(0));
            } else {
                out.copy_from_slice(&[sample(0), sample(1), sample(2)]);
            }
        }
    };
    if interlaced {
        // Adam7 rows come pass by pass: the whole frame first.
        let size = reader
            .output_buffer_size()
            .ok_or_else(|| undecodable("the image is too large".into()))?;
        let mut frame = vec![0u8; size];
        let info = reader
            .next_frame(&mut frame)
            .map_err(|e| undecodable(e.to_string()))?;
        for row in frame.chunks_exact(info.line_size).take(h) {
            convert(row, &mut rgb);
            crate::jpeg::RowSink::row(sink, &rgb);
        }
    } else {
        for _ in 0..h {
            let row = reader
                .next_row()
                .map_err(|e| undecodable(e.to_string()))?
                .ok_or_else(|| undecodable("the image data ends early".into()))?;
            convert(row.data(), &mut rgb);
            crate::jpeg::RowSink::row(sink, &rgb);
        }
    }
    Ok(())
}

/// Decoded rows, made RGB, kept whole or resized and cropped as they come.
#[cfg(feature = "images")]
struct RgbSink<'p> {
    path: &'p Path,
    resize: Option<(usize, usize)>,
    width: usize,
    height: usize,
    channels: usize,
    data: Vec<u8>,
    resizer: Option<ResizeCrop>,
    rgb: Vec<u8>,
    /// An error of ours met in `start` (the decoder only carries a string).
    error: Option<DataError>,
}

#[cfg(feature = "images")]
impl<'p> RgbSink<'p> {
    fn new(path: &'p Path, resize: Option<(usize, usize)>) -> Self {
        RgbSink {
            path,
            resize,
            width: 0,
            height: 0,
            channels: 0,
            data: Vec::new(),
            resizer: None,
            rgb: Vec::new(),
            error: None,
        }
    }

    fn into_image(self) -> Result<Rgb8, DataError> {
        let path = self.path;
        let fix = |e: DataError| match e {
            DataError::Format { reason, .. } => format_error(path, reason),
            e => e,
        };
        match self.resizer {
            Some(r) => r.finish().map_err(fix),
            None if self.resize.is_some() => Err(format_error(path, "no image".into())),
            None => Rgb8::new(self.width, self.height, self.data).map_err(fix),
        }
    }
}

#[cfg(feature = "images")]
impl crate::jpeg::RowSink for RgbSink<'_> {
    fn start(&mut self, width: usize, height: usize, channels: usize) -> Result<(), String> {
        (self.width, self.height, self.channels) = (width, height, channels);
        self.rgb = vec![0; width * 3];
        match self.resize {
            Some((size, crop)) => match ResizeCrop::new(width, height, size, crop) {
                Ok(r) => self.resizer = Some(r),
                Err(e) => {
                    let message = e.to_string();
                    self.error = Some(match e {
                        DataError::Format { reason, .. } => format_error(self.path, reason),
                        e => e,
                    });
                    return Err(message);
                }
            },
            None => self.data = Vec::with_capacity(width * height * 3),
        }
        Ok(())
    }

    fn row(&mut self, row: &[u8]) {
        let rgb: &[u8] = if self.channels == 1 {
            for (out, &v) in self.rgb.chunks_exact_mut(3).zip(row) {
                out.fill(v);
            }
            &self.rgb
        } else {
            row
        };
        match &mut self.resizer {
            Some(r) => r.push_row(rgb),
            None => self.data.extend_from_slice(rgb),
        }
    }
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

/// Reads an image file and makes torchvision's `Resize(size)` then `CenterCrop(crop)`
/// of it in 8 bits, streaming: a PNG is read from the file as it decodes, a JPEG's rows
/// go to the resize as they are made, so neither the full-size image nor (for PNG) the
/// file is held (a 12-megapixel photo needs a few MB besides the JPEG's coefficients).
/// Equal to [`load_rgb8`] then [`resize_and_crop_rgb8`].
#[cfg(feature = "images")]
pub fn load_resized_rgb8(
    path: impl AsRef<Path>,
    size: usize,
    crop: usize,
) -> Result<Rgb8, DataError> {
    use std::io::Read;
    let path = path.as_ref();
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = crate::files::regular_len(path).map_err(io)?;
    if len > MAX_IMAGE_FILE {
        return Err(format_error(
            path,
            format!("{len} bytes, more than the {MAX_IMAGE_FILE} bytes an image file may have"),
        ));
    }
    let mut file = crate::files::open_regular(path).map_err(io)?;
    let mut head = [0u8; 8];
    let n = file.read(&mut head).map_err(io)?;
    if head[..n].starts_with(b"\x89PNG\r\n\x1a\n") {
        use std::io::Seek;
        file.rewind().map_err(io)?;
        let mut sink = RgbSink::new(path, Some((size, crop)));
        decode_rows(path, std::io::BufReader::new(file), &head[..n], &mut sink)?;
        return sink.into_image();
    }
    drop(file);
    let bytes = crate::files::read_regular(path, MAX_IMAGE_FILE).map_err(io)?;
    decode_resized_rgb8(path, &bytes, size, crop)
}

/// An image file through torchvision's ImageNet evaluation transform: `[3, 224, 224]`,
/// equal to torchvision's as the module docs state (decoded and resized row by row:
/// [`load_resized_rgb8`]).
#[cfg(feature = "images")]
pub fn load_imagenet(path: impl AsRef<Path>) -> Result<Tensor, DataError> {
    Ok(load_resized_rgb8(path, 256, 224)?.normalized(IMAGENET_MEAN, IMAGENET_STD))
}

/// Reads an image and makes it `[3, size, size]` in `[0, 1]`: shorter side resized to
/// `size` (in 8 bits, as PIL), then centre-cropped (for image-folder data sets).
#[cfg(feature = "images")]
pub fn load_resized(path: &Path, size: usize) -> Result<Tensor, DataError> {
    Ok(load_resized_rgb8(path, size, size)?.to_tensor())
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
