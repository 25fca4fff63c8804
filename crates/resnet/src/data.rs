//! Data sets: the shipped handwritten digits, CIFAR-10's binary format, and a folder of
//! images with one sub-folder per class.
//!
//! Every data set is held in memory as `f32` pixels in `[0, 1]`, NCHW with 3 channels
//! (grey images are repeated over the channels), with the per-channel mean and standard
//! deviation to normalise with after augmentation.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A labelled image set in memory.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// `len() * 3 * height * width` pixels in `[0, 1]`, image after image, NCHW.
    pub images: Vec<f32>,
    /// Class of each image (an index into `classes`), in image order: its length is the
    /// number of images.
    pub labels: Vec<usize>,
    /// `[channels, height, width]` of every image.
    pub shape: [usize; 3],
    /// Class names, indexed by label.
    pub classes: Vec<String>,
    /// Per-channel mean to normalise with, after augmentation: the training set's own
    /// for the digits, the usual CIFAR-10 figures, ImageNet's for an image folder.
    pub mean: [f32; 3],
    /// Per-channel standard deviation to normalise with (from the same source as `mean`).
    pub std: [f32; 3],
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the set holds no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image.
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[f32] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// The images at `indices` (in that order), with the same classes and statistics.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Dataset {
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            shape: self.shape,
            classes: self.classes.clone(),
            mean: self.mean,
            std: self.std,
        }
    }
}

/// A training set, an optional validation set and a test set.
///
/// The validation set picks the model (the trainer's `best.safetensors` is the epoch
/// with the best validation accuracy); the test set is only reported, so its figure is
/// an honest estimate. A data set that has no validation set of its own gets one from
/// [`Split::hold_out`].
#[derive(Debug, Clone)]
pub struct Split {
    /// The training set.
    pub train: Dataset,
    /// The validation set, normalised with the same statistics as `train`: an image
    /// folder's `val/` beside `test/`, or images held out of `train`.
    pub val: Option<Dataset>,
    /// The test set, normalised with the same statistics as `train`.
    pub test: Dataset,
}

impl Split {
    /// Moves `fraction` of the training images into a validation set, class by class
    /// (each class keeps its share in both, and at least one image in each when it has
    /// two or more), chosen by a shuffle seeded with `seed`: the same seed holds out the
    /// same images. A split that already has a validation set, or a `fraction` of 0, is
    /// returned as it is; a `fraction` outside `[0, 1)` is an error.
    pub fn hold_out(mut self, fraction: f32, seed: u64) -> Result<Split, DataError> {
        if !(0.0..1.0).contains(&fraction) {
            return Err(DataError::Spec(format!(
                "the validation fraction {fraction} is not in [0, 1)"
            )));
        }
        if self.val.is_some() || fraction == 0.0 {
            return Ok(self);
        }
        let classes = self.train.classes.len();
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
        for (i, &label) in self.train.labels.iter().enumerate() {
            if let Some(c) = by_class.get_mut(label) {
                c.push(i);
            }
        }
        let mut held = vec![false; self.train.len()];
        for (c, members) in by_class.iter_mut().enumerate() {
            let n = members.len();
            if n < 2 {
                continue;
            }
            let mut rng = tensor::rng::Rng::seed_from_u64(
                seed ^ 0x7661_6c5f_7370_6c74 ^ (c as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
            rng.shuffle(members);
            let take = ((n as f64 * fraction as f64).round() as usize).clamp(1, n - 1);
            for &i in &members[..take] {
                held[i] = true;
            }
        }
        let pick =
            |keep: bool| -> Vec<usize> { (0..held.len()).filter(|&i| held[i] != keep).collect() };
        let (train_idx, val_idx) = (pick(true), pick(false));
        let val = self.train.select(&val_idx);
        self.train = self.train.select(&train_idx);
        self.val = Some(val);
        Ok(self)
    }
}

/// Why a data set could not be loaded.
#[derive(Debug)]
#[non_exhaustive]
pub enum DataError {
    /// A file or folder could not be read.
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A file's contents, or a data-set folder's layout, are not what the format needs;
    /// also an image-folder set too large for memory, or one in a build without the
    /// `images` feature.
    Format {
        /// The file or folder at fault (`<image>` for an image in memory).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A data-set description (`--data`) that names no known kind.
    Spec(String),
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataError::Io { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            DataError::Format { path, reason } => write!(f, "{}: {reason}", path.display()),
            DataError::Spec(s) => write!(f, "{s}"),
        }
    }
}

impl std::error::Error for DataError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DataError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn format_error(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Which data set, as `--data` names it: `digits`, `cifar10:DIR` or `folder:DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSpec {
    /// `digits`: the handwritten digits shipped with the crate (see `digits()`; without
    /// the `train` feature, loading it is an error).
    Digits,
    /// `cifar10:DIR`: CIFAR-10's binary version in `DIR` (see `cifar10()`).
    Cifar10(PathBuf),
    /// `DIR/train/<class>/*` and `DIR/test/<class>/*` (or `val` for `test`), images
    /// resized to `size x size`.
    Folder {
        /// The folder holding `train` and `test` (or `val`).
        dir: PathBuf,
        /// Side of the square images, in pixels: 64 as parsed from `folder:DIR`, changed
        /// by [`DataSpec::with_size`].
        size: usize,
    },
}

impl FromStr for DataSpec {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        if s == "digits" {
            return Ok(DataSpec::Digits);
        }
        match s.split_once(':') {
            Some(("cifar10", dir)) if !dir.is_empty() => Ok(DataSpec::Cifar10(dir.into())),
            Some(("folder", dir)) if !dir.is_empty() => Ok(DataSpec::Folder {
                dir: dir.into(),
                size: 64,
            }),
            _ => Err(DataError::Spec(format!(
                "unknown data set {s:?}: expected `digits`, `cifar10:DIR` or `folder:DIR`"
            ))),
        }
    }
}

impl fmt::Display for DataSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSpec::Digits => write!(f, "digits"),
            DataSpec::Cifar10(d) => write!(f, "cifar10:{}", d.display()),
            DataSpec::Folder { dir, .. } => write!(f, "folder:{}", dir.display()),
        }
    }
}

impl DataSpec {
    /// For an image folder, the side images are resized and cropped to (default 64);
    /// the other data sets have a fixed size and ignore it.
    pub fn with_size(self, size: usize) -> Self {
        match self {
            DataSpec::Folder { dir, .. } => DataSpec::Folder { dir, size },
            other => other,
        }
    }

    /// Loads the training and test sets.
    pub fn load(&self) -> Result<Split, DataError> {
        match self {
            #[cfg(feature = "train")]
            DataSpec::Digits => digits(),
            #[cfg(not(feature = "train"))]
            DataSpec::Digits => Err(DataError::Spec(
                "the shipped digits come with the `train` feature".into(),
            )),
            DataSpec::Cifar10(dir) => cifar10(dir),
            DataSpec::Folder { dir, size } => folder(dir, *size),
        }
    }
}

// ---- Digits ----

/// The shipped digits, gzipped CSV as scikit-learn ships them (see `data/README.md`).
#[cfg(feature = "train")]
static DIGITS_CSV_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");

/// The UCI handwritten digits shipped with the crate: 1797 grey 8x8 images of the
/// digits 0-9 (pixel values 0..=16, scaled to `[0, 1]`). Fixed split: every fifth image
/// (index 0, 5, 10, ...) is a test image (360), the rest train (1437).
#[cfg(feature = "train")]
pub fn digits() -> Result<Split, DataError> {
    parse_digits(Path::new("<shipped digits.csv.gz>"), DIGITS_CSV_GZ)
}

#[cfg(feature = "train")]
fn parse_digits(path: &Path, gz: &[u8]) -> Result<Split, DataError> {
    use std::io::Read;
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut text)
        .map_err(io_error(path))?;
    let mut images = [Vec::new(), Vec::new()];
    let mut labels = [Vec::new(), Vec::new()];
    for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let values: Vec<u32> = line
            .split(',')
            .map(|v| v.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|e| format_error(path, format!("line {}: {e}", i + 1)))?;
        if values.len() != 65 || values[..64].iter().any(|&v| v > 16) || values[64] > 9 {
            return Err(format_error(
                path,
                format!(
                    "line {}: expected 64 pixels in 0..=16 and a label 0-9",
                    i + 1
                ),
            ));
        }
        let part = usize::from(i % 5 != 0); // 0: test, 1: train
        for _ in 0..3 {
            images[part].extend(values[..64].iter().map(|&v| v as f32 / 16.0));
        }
        labels[part].push(values[64] as usize);
    }
    let classes: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    let [test_images, train_images] = images;
    let [test_labels, train_labels] = labels;
    let make = |images: Vec<f32>, labels: Vec<usize>| Dataset {
        images,
        labels,
        shape: [3, 8, 8],
        classes: classes.clone(),
        mean: [0.0; 3],
        std: [1.0; 3],
    };
    let mut train = make(train_images, train_labels);
    let (mean, std) = channel_mean_std(&train);
    train.mean = mean;
    train.std = std;
    let mut test = make(test_images, test_labels);
    test.mean = mean;
    test.std = std;
    Ok(Split {
        train,
        val: None,
        test,
    })
}

/// Per-channel mean and standard deviation over a whole data set.
#[cfg(feature = "train")]
fn channel_mean_std(d: &Dataset) -> ([f32; 3], [f32; 3]) {
    let plane = d.shape[1] * d.shape[2];
    let (mut sum, mut sq) = ([0.0f64; 3], [0.0f64; 3]);
    for img in d.images.chunks_exact(d.image_len().max(1)) {
        for c in 0..3 {
            for &v in &img[c * plane..(c + 1) * plane] {
                sum[c] += v as f64;
                sq[c] += (v as f64) * (v as f64);
            }
        }
    }
    let n = (d.len() * plane).max(1) as f64;
    let mut mean = [0.0; 3];
    let mut std = [1.0; 3];
    for c in 0..3 {
        let m = sum[c] / n;
        mean[c] = m as f32;
        std[c] = ((sq[c] / n - m * m).max(1e-12)).sqrt() as f32;
    }
    (mean, std)
}

// ---- CIFAR-10 ----

/// CIFAR-10's class names, by label.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

const CIFAR_RECORD: usize = 1 + 3 * 32 * 32;

/// Parses CIFAR-10 binary records (1 label byte, then 1024 red, 1024 green and 1024
/// blue bytes) into images in `[0, 1]`, appending to `images` and `labels`.
pub fn parse_cifar10_records(
    path: &Path,
    bytes: &[u8],
    images: &mut Vec<f32>,
    labels: &mut Vec<usize>,
) -> Result<(), DataError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(CIFAR_RECORD) {
        return Err(format_error(
            path,
            format!(
                "{} bytes is not a whole number of {CIFAR_RECORD}-byte CIFAR-10 records (truncated or not CIFAR-10)",
                bytes.len()
            ),
        ));
    }
    for (i, rec) in bytes.chunks_exact(CIFAR_RECORD).enumerate() {
        if rec[0] > 9 {
            return Err(format_error(
                path,
                format!("record {i} has label {}, expected 0-9", rec[0]),
            ));
        }
        labels.push(rec[0] as usize);
        images.extend(rec[1..].iter().map(|&b| b as f32 / 255.0));
    }
    Ok(())
}

/// CIFAR-10 from its binary distribution: `DIR/data_batch_1.bin` .. `data_batch_5.bin`
/// (training) and `DIR/test_batch.bin`.
pub fn cifar10(dir: impl AsRef<Path>) -> Result<Split, DataError> {
    let dir = dir.as_ref();
    let read_set = |files: &[String]| -> Result<Dataset, DataError> {
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        for name in files {
            let path = dir.join(name);
            // A batch holds 10,000 records (30.7 MB); a file far larger is not one, and
            // is refused before it is read.
            let bytes = crate::files::read_regular(&path, (5 * 10_000 * CIFAR_RECORD) as u64)
                .map_err(io_error(&path))?;
            parse_cifar10_records(&path, &bytes, &mut images, &mut labels)?;
        }
        Ok(Dataset {
            images,
            labels,
            shape: [3, 32, 32],
            classes: CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
            // The usual CIFAR-10 training-set statistics.
            mean: [0.4914, 0.4822, 0.4465],
            std: [0.2470, 0.2435, 0.2616],
        })
    };
    let train_files: Vec<String> = (1..=5).map(|i| format!("data_batch_{i}.bin")).collect();
    Ok(Split {
        train: read_set(&train_files)?,
        val: None,
        test: read_set(&["test_batch.bin".to_string()])?,
    })
}

// ---- Image folders ----

/// An image-folder data set: `DIR/train/<class>/<image>` and `DIR/test/<class>/<image>`,
/// and `DIR/val/<class>/<image>` as the validation set when present. With no `test/`,
/// `val/` is the test set (ImageNet's layout) and the split has no validation set.
/// Classes are the sub-folder names of `train` in sorted order; the other sets must
/// have the same. Every image is decoded (JPEG or PNG), resized (shorter
/// side to `size`, bilinear) and centre-cropped to `size x size`. A file that does not
/// decode, or a class with no images, is an error naming it.
#[cfg(feature = "images")]
pub fn folder(dir: impl AsRef<Path>, size: usize) -> Result<Split, DataError> {
    let dir = dir.as_ref();
    let (test_dir, val_dir) = (dir.join("test"), dir.join("val"));
    let (test_dir, val_dir) = match (test_dir.is_dir(), val_dir.is_dir()) {
        (true, true) => (test_dir, Some(val_dir)),
        (true, false) => (test_dir, None),
        (false, true) => (val_dir, None),
        (false, false) => return Err(format_error(dir, "no `test` or `val` sub-folder")),
    };
    let train = folder_set(&dir.join("train"), size, None)?;
    let val = match val_dir {
        Some(v) => Some(folder_set(&v, size, Some(&train.classes))?),
        None => None,
    };
    let test = folder_set(&test_dir, size, Some(&train.classes))?;
    Ok(Split { train, val, test })
}

/// Without the `images` feature there is no image decoding: always a
/// [`DataError::Format`] saying so.
#[cfg(not(feature = "images"))]
pub fn folder(dir: impl AsRef<Path>, _size: usize) -> Result<Split, DataError> {
    let dir = dir.as_ref();
    Err(format_error(
        dir,
        "this build has no image decoding (enable the `images` feature of the resnet crate)",
    ))
}

#[cfg(feature = "images")]
fn folder_set(dir: &Path, size: usize, expect: Option<&[String]>) -> Result<Dataset, DataError> {
    use rayon::prelude::*;
    let mut classes: Vec<String> = std::fs::read_dir(dir)
        .map_err(io_error(dir))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    classes.sort();
    if classes.is_empty() {
        return Err(format_error(dir, "no class sub-folders"));
    }
    if let Some(expected) = expect {
        if classes != expected {
            return Err(format_error(
                dir,
                format!("classes {classes:?} differ from the training set's {expected:?}"),
            ));
        }
    }
    let mut files = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let class_dir = dir.join(class);
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&class_dir)
            .map_err(io_error(&class_dir))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        entries.sort();
        if entries.is_empty() {
            return Err(format_error(&class_dir, "class folder has no images"));
        }
        files.extend(entries.into_iter().map(|p| (p, label)));
    }
    // The decoded set is `files x 3 x size^2` floats: refused with the figure, before
    // anything is decoded, when it would not fit in memory.
    let need = (files.len() as u64)
        .saturating_mul(3 * 4)
        .saturating_mul((size as u64).saturating_mul(size as u64));
    let room = crate::files::memory_available().unwrap_or(16 << 30);
    if need > room / 2 {
        return Err(format_error(
            dir,
            format!(
                "{} images of {size}x{size} take {:.1} GB as f32, more than half the {:.1} GB \
                 of memory available: use a smaller --size or fewer images",
                files.len(),
                need as f64 / 1e9,
                room as f64 / 1e9
            ),
        ));
    }
    let decoded: Vec<Vec<f32>> = files
        .par_iter()
        .map(|(p, _)| crate::preprocess::load_resized(p, size).map(|t| t.into_vec()))
        .collect::<Result<_, _>>()?;
    let d = Dataset {
        images: decoded.concat(),
        labels: files.iter().map(|(_, l)| *l).collect(),
        shape: [3, size, size],
        classes,
        mean: crate::preprocess::IMAGENET_MEAN,
        std: crate::preprocess::IMAGENET_STD,
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(feature = "train")]
    fn digits_split_is_fixed_and_complete() {
        let s = digits().unwrap();
        assert_eq!((s.train.len(), s.test.len()), (1437, 360));
        assert_eq!(s.train.images.len(), 1437 * 3 * 64);
        let mut counts = [0; 10];
        s.test.labels.iter().for_each(|&l| counts[l] += 1);
        assert!(
            counts.iter().all(|&c| c >= 20),
            "every digit in the test set: {counts:?}"
        );
        assert!(s.train.images.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn cifar_records_parse_and_bad_files_are_errors() {
        let mut rec = vec![7u8];
        rec.extend((0..3072).map(|i| (i % 256) as u8));
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        parse_cifar10_records(Path::new("x"), &rec, &mut images, &mut labels).unwrap();
        assert_eq!(labels, [7]);
        assert_eq!(images[255], 1.0);
        let truncated = &rec[..3000];
        let e = parse_cifar10_records(Path::new("x"), truncated, &mut images, &mut labels);
        assert!(e.unwrap_err().to_string().contains("not a whole number"));
        rec[0] = 11;
        let e = parse_cifar10_records(Path::new("x"), &rec, &mut images, &mut labels);
        assert!(e.unwrap_err().to_string().contains("label 11"));
        let e = cifar10(Path::new("/nonexistent-cifar-dir")).unwrap_err();
        assert!(e.to_string().contains("data_batch_1.bin"), "{e}");
    }

    #[test]
    fn specs_parse() {
        assert_eq!("digits".parse::<DataSpec>().unwrap(), DataSpec::Digits);
        assert_eq!(
            "cifar10:/d".parse::<DataSpec>().unwrap(),
            DataSpec::Cifar10("/d".into())
        );
        assert!("mnist".parse::<DataSpec>().is_err());
        assert!("cifar10:".parse::<DataSpec>().is_err());
    }
}
