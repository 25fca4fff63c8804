//! Image preprocessing as torchvision's standard ImageNet evaluation transform:
//! `Resize(256)` (shorter side to 256, bilinear with antialiasing, as PIL does it),
//! `CenterCrop(224)`, `ToTensor()` (to `[0, 1]`), `Normalize(IMAGENET_MEAN, IMAGENET_STD)`.
//!
//! The resize is PIL's separable resampling: each output pixel is a normalised
//! triangle-filter average of the input pixels under it, the filter widened by the
//! scale when shrinking (that is the antialiasing). PIL rounds to 8 bits between the
//! horizontal and vertical passes; this keeps `f32`, so results differ from
//! torchvision's by at most about one grey level (see the tests).
//!
//! Decoding needs the `images` feature (the `image` crate); the rest does not.

use crate::data::DataError;
#[cfg(feature = "images")]
use std::path::Path;
use tensor::Tensor;

/// ImageNet's per-channel mean and standard deviation (RGB), as torchvision uses them.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
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

/// The most floats a resize may produce (64 M: 256 MB).
const MAX_RESIZED: usize = 1 << 26;

/// The largest image file read (256 MiB): a photo is a few MB.
#[cfg(feature = "images")]
const MAX_IMAGE_FILE: u64 = 1 << 28;

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

/// Decodes an image file's bytes (JPEG or PNG) into RGB `[3, H, W]` in `[0, 1]`.
#[cfg(feature = "images")]
pub fn decode(path: &Path, bytes: &[u8]) -> Result<Tensor, DataError> {
    let img = image::load_from_memory(bytes).map_err(|e| DataError::Format {
        path: path.to_path_buf(),
        reason: format!("not a decodable image: {e}"),
    })?;
    let rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    if w == 0 || h == 0 {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            reason: "empty image".into(),
        });
    }
    let mut out = vec![0.0f32; 3 * h * w];
    for (i, px) in rgb.pixels().enumerate() {
        for c in 0..3 {
            out[c * h * w + i] = px[c] as f32 / 255.0;
        }
    }
    Tensor::from_vec(&[3, h, w], out).map_err(|e| DataError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Reads and decodes an image file.
#[cfg(feature = "images")]
pub fn load(path: &Path) -> Result<Tensor, DataError> {
    let bytes =
        crate::files::read_regular(path, MAX_IMAGE_FILE).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    decode(path, &bytes)
}

/// Reads an image and makes it `[3, size, size]` in `[0, 1]`: shorter side resized to
/// `size`, then centre-cropped (for image-folder data sets).
#[cfg(feature = "images")]
pub fn load_resized(path: &Path, size: usize) -> Result<Tensor, DataError> {
    let img = load(path)?;
    let (h, w) = (img.shape()[1], img.shape()[2]);
    let (rh, rw) = resized_size(h, w, size);
    center_crop(&resize_bilinear(&img, rh, rw)?, size)
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
