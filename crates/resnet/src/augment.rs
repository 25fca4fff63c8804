//! Data augmentation on single `[C, H, W]` images, seeded and reproducible: random crop
//! with zero padding (CIFAR's), random resized crop (ImageNet's), horizontal flip,
//! rotation by a random angle (bilinear), and normalisation.

use tensor::rng::Rng;

/// What to apply to each training image, in this order: rotation, padded crop or
/// resized crop, flip. (Normalisation comes after, from the data set's statistics.)
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augment {
    /// Zero padding for the random crop back to the original size (0: no crop).
    pub crop_pad: usize,
    /// Random resized crop to the original size: scale range of the area.
    pub resized_crop: Option<(f32, f32)>,
    /// Mirror left-right with probability 1/2.
    pub hflip: bool,
    /// Rotate by a uniform random angle in `[-max, max]` degrees (0: never).
    pub rotate_degrees: f32,
}

impl Augment {
    /// No augmentation.
    pub const NONE: Augment = Augment {
        crop_pad: 0,
        resized_crop: None,
        hflip: false,
        rotate_degrees: 0.0,
    };

    /// CIFAR's standard: 4-pixel padded crop and flips.
    pub const CIFAR: Augment = Augment {
        crop_pad: 4,
        resized_crop: None,
        hflip: true,
        rotate_degrees: 0.0,
    };

    /// For the 8x8 digits: a 1-pixel padded crop and small rotations (no flips: a
    /// mirrored digit is another shape).
    pub const DIGITS: Augment = Augment {
        crop_pad: 1,
        resized_crop: None,
        hflip: false,
        rotate_degrees: 10.0,
    };

    /// Applies the augmentation to one image.
    pub fn apply(&self, img: &[f32], shape: [usize; 3], rng: &mut Rng) -> Vec<f32> {
        let mut out = img.to_vec();
        if self.rotate_degrees > 0.0 {
            let a = rng.uniform(-self.rotate_degrees, self.rotate_degrees);
            out = rotate(&out, shape, a);
        }
        if let Some((lo, hi)) = self.resized_crop {
            out = random_resized_crop(&out, shape, (lo, hi), rng);
        } else if self.crop_pad > 0 {
            out = random_crop(&out, shape, self.crop_pad, rng);
        }
        if self.hflip && rng.below(2) == 1 {
            hflip(&mut out, shape);
        }
        out
    }
}

/// Pads with `pad` zeros on every side and crops back to `H x W` at a random offset
/// (each of `0..=2 pad`, uniformly).
pub fn random_crop(img: &[f32], shape: [usize; 3], pad: usize, rng: &mut Rng) -> Vec<f32> {
    let dy = rng.below(2 * pad + 1) as isize - pad as isize;
    let dx = rng.below(2 * pad + 1) as isize - pad as isize;
    shift(img, shape, dy, dx)
}

/// The image moved by `(dy, dx)` pixels (output `(y, x)` reads input `(y + dy, x + dx)`),
/// zero where that falls outside: a padded crop at offset `pad + dy, pad + dx`.
pub fn shift(img: &[f32], [c, h, w]: [usize; 3], dy: isize, dx: isize) -> Vec<f32> {
    let mut out = vec![0.0; c * h * w];
    for ch in 0..c {
        for y in 0..h {
            let sy = y as isize + dy;
            if sy < 0 || sy >= h as isize {
                continue;
            }
            for x in 0..w {
                let sx = x as isize + dx;
                if sx >= 0 && sx < w as isize {
                    out[(ch * h + y) * w + x] = img[(ch * h + sy as usize) * w + sx as usize];
                }
            }
        }
    }
    out
}

/// Mirrors left-right in place.
pub fn hflip(img: &mut [f32], [_, _, w]: [usize; 3]) {
    for row in img.chunks_exact_mut(w.max(1)) {
        row.reverse();
    }
}

/// Samples the image at `(y, x)` (continuous, pixel centres at integers) bilinearly;
/// zero outside.
fn sample(plane: &[f32], h: usize, w: usize, y: f32, x: f32) -> f32 {
    let (y0, x0) = (y.floor(), x.floor());
    let (fy, fx) = (y - y0, x - x0);
    let at = |yy: f32, xx: f32| {
        if yy < 0.0 || xx < 0.0 || yy >= h as f32 || xx >= w as f32 {
            0.0
        } else {
            plane[yy as usize * w + xx as usize]
        }
    };
    (1.0 - fy) * ((1.0 - fx) * at(y0, x0) + fx * at(y0, x0 + 1.0))
        + fy * ((1.0 - fx) * at(y0 + 1.0, x0) + fx * at(y0 + 1.0, x0 + 1.0))
}

/// Rotates by `degrees` (counter-clockwise) about the centre, bilinear, zero outside.
pub fn rotate(img: &[f32], [c, h, w]: [usize; 3], degrees: f32) -> Vec<f32> {
    if degrees == 0.0 {
        return img.to_vec();
    }
    let (s, co) = degrees.to_radians().sin_cos();
    let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
    let mut out = vec![0.0; c * h * w];
    for ch in 0..c {
        let plane = &img[ch * h * w..(ch + 1) * h * w];
        for y in 0..h {
            for x in 0..w {
                // Inverse map: where in the input does output (y, x) come from.
                let (ry, rx) = (y as f32 - cy, x as f32 - cx);
                let sx = co * rx - s * ry + cx;
                let sy = s * rx + co * ry + cy;
                out[(ch * h + y) * w + x] = sample(plane, h, w, sy, sx);
            }
        }
    }
    out
}

/// ImageNet's random resized crop, back to the image's own size: a region of a random
/// area fraction in `scale` and aspect ratio in `[3/4, 4/3]` (log-uniform), at a random
/// place, resized bilinearly. Falls back to the whole image after 10 failed draws, as
/// torchvision does (simplified: no central-crop fallback).
pub fn random_resized_crop(
    img: &[f32],
    [c, h, w]: [usize; 3],
    scale: (f32, f32),
    rng: &mut Rng,
) -> Vec<f32> {
    let area = (h * w) as f32;
    let (mut ch_, mut cw, mut top, mut left) = (h, w, 0usize, 0usize);
    for _ in 0..10 {
        let target = area * rng.uniform(scale.0, scale.1);
        let ratio = rng.uniform((3.0f32 / 4.0).ln(), (4.0f32 / 3.0).ln()).exp();
        let tw = (target * ratio).sqrt().round() as usize;
        let th = (target / ratio).sqrt().round() as usize;
        if tw >= 1 && th >= 1 && tw <= w && th <= h {
            (ch_, cw) = (th, tw);
            top = rng.below(h - th + 1);
            left = rng.below(w - tw + 1);
            break;
        }
    }
    let mut out = vec![0.0; c * h * w];
    let (sy, sx) = (ch_ as f32 / h as f32, cw as f32 / w as f32);
    for chn in 0..c {
        let plane = &img[chn * h * w..(chn + 1) * h * w];
        for y in 0..h {
            for x in 0..w {
                let py = top as f32 + ((y as f32 + 0.5) * sy - 0.5).clamp(0.0, ch_ as f32 - 1.0);
                let px = left as f32 + ((x as f32 + 0.5) * sx - 0.5).clamp(0.0, cw as f32 - 1.0);
                out[(chn * h + y) * w + x] = sample(plane, h, w, py, px);
            }
        }
    }
    out
}

/// `(x - mean[c]) / std[c]` in place.
pub fn normalize(img: &mut [f32], [c, h, w]: [usize; 3], mean: [f32; 3], std: [f32; 3]) {
    for ch in 0..c.min(3) {
        for v in &mut img[ch * h * w..(ch + 1) * h * w] {
            *v = (*v - mean[ch]) / std[ch];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(seed: u64) -> (Vec<f32>, [usize; 3]) {
        let shape = [3, 9, 7];
        let mut rng = Rng::seed_from_u64(seed);
        ((0..3 * 63).map(|_| rng.uniform(0.0, 1.0)).collect(), shape)
    }

    #[test]
    fn flipping_twice_is_the_identity() {
        let (img, shape) = image(1);
        let mut f = img.clone();
        hflip(&mut f, shape);
        assert_ne!(f, img);
        hflip(&mut f, shape);
        assert_eq!(f, img);
    }

    #[test]
    fn rotating_by_zero_is_the_identity_and_by_90_moves_corners() {
        let (img, shape) = image(2);
        assert_eq!(rotate(&img, shape, 0.0), img);
        let sq = [1, 5, 5];
        let mut one = vec![0.0; 25];
        one[0] = 1.0; // top-left corner
        let r = rotate(&one, sq, 90.0);
        let peak = r.iter().cloned().fold(0.0, f32::max);
        assert!(
            (peak - 1.0).abs() < 1e-5,
            "an exact quarter turn moves the pixel whole"
        );
        assert!(r[0] < 1e-5, "the corner moved");
        let back = rotate(&r, sq, -90.0);
        for (a, b) in back.iter().zip(&one) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn crops_stay_in_bounds_and_keep_the_content() {
        let (img, shape) = image(3);
        let mut rng = Rng::seed_from_u64(4);
        for _ in 0..50 {
            let out = random_crop(&img, shape, 2, &mut rng);
            assert_eq!(out.len(), img.len());
            // Every nonzero output value is an input value (a shift, never a blend).
            assert!(out.iter().all(|v| *v == 0.0 || img.contains(v)));
            let out = random_resized_crop(&img, shape, (0.3, 1.0), &mut rng);
            assert_eq!(out.len(), img.len());
            assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
        }
        assert_eq!(shift(&img, shape, 0, 0), img);
    }

    #[test]
    fn augmentation_is_reproducible_from_the_seed() {
        let (img, shape) = image(5);
        let a = Augment::CIFAR.apply(&img, shape, &mut Rng::seed_from_u64(9));
        let b = Augment::CIFAR.apply(&img, shape, &mut Rng::seed_from_u64(9));
        assert_eq!(a, b);
        assert_eq!(
            Augment::NONE.apply(&img, shape, &mut Rng::seed_from_u64(9)),
            img
        );
    }
}
