//! [`ModelInfo`]: what a model file says about how to use it, in its safetensors
//! metadata (which PyTorch ignores): the architecture, the class names, and the
//! preprocessing its inputs need. The trainer writes it into `best.safetensors` and
//! checkpoints; `resnet classify`, `features` and `eval` read it, so a model trained
//! here needs no `--arch` or `--size` and is fed the images it was trained on.
//! torchvision and timm files carry none: for them the caller says the architecture,
//! and ImageNet preprocessing is assumed.

use std::collections::HashMap;
use std::path::Path;

use crate::arch::Arch;
use crate::weights::WeightsError;

/// How a model's input images are made (see the module docs).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ModelInfo {
    /// The network.
    pub arch: Arch,
    /// The class names, by class index (as many as the head's outputs).
    pub classes: Vec<String>,
    /// Side of the square input images: the centre square of this side is cropped
    /// after resizing (`resize`).
    pub input_size: usize,
    /// An image's shorter side is first resized to this (in 8 bits, as PIL): equal to
    /// `input_size` for the image-folder data set, 256 for ImageNet's 224 crop.
    pub resize: usize,
    /// Per-channel mean subtracted after scaling the pixels to `[0, 1]` (RGB).
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by, after the mean (RGB).
    pub std: [f32; 3],
}

/// The metadata key holding the format tag, and its value.
const FORMAT_KEY: &str = "resnet_model";
const FORMAT: &str = "v1";
/// The preprocessing named in the metadata (the only one written so far).
const PREPROCESS: &str = "resize-shorter-side-center-crop";

impl ModelInfo {
    /// An info record.
    pub fn new(
        arch: Arch,
        classes: Vec<String>,
        input_size: usize,
        mean: [f32; 3],
        std: [f32; 3],
    ) -> Self {
        ModelInfo {
            arch,
            classes,
            input_size,
            resize: input_size,
            mean,
            std,
        }
    }

    /// What torchvision's ImageNet networks take (for a file that says nothing): resize
    /// to 256, crop 224, ImageNet statistics, the 1000 ImageNet class names.
    pub fn imagenet(arch: Arch) -> Self {
        let classes = crate::preprocess::imagenet_classes()
            .into_iter()
            .map(String::from)
            .collect();
        ModelInfo {
            resize: 256,
            ..ModelInfo::new(
                arch,
                classes,
                224,
                crate::preprocess::IMAGENET_MEAN,
                crate::preprocess::IMAGENET_STD,
            )
        }
    }

    /// The same record with another shorter-side resize (at least `input_size`).
    pub fn with_resize(mut self, resize: usize) -> Self {
        self.resize = resize.max(self.input_size);
        self
    }

    /// The model's input made from an 8-bit image: resized, centre-cropped, scaled to
    /// `[0, 1]` and normalised, `[3, input_size, input_size]`.
    pub fn preprocess_rgb8(
        &self,
        img: &crate::preprocess::Rgb8,
    ) -> Result<tensor::Tensor, crate::DataError> {
        Ok(
            crate::preprocess::resize_and_crop_rgb8(img, self.resize, self.input_size)?
                .normalized(self.mean, self.std),
        )
    }

    /// Reads an image file (JPEG or PNG) and makes the model's input from it
    /// ([`ModelInfo::preprocess_rgb8`]), decoding and resizing row by row
    /// ([`crate::preprocess::load_resized_rgb8`]).
    #[cfg(feature = "images")]
    pub fn load_image(&self, path: impl AsRef<Path>) -> Result<tensor::Tensor, crate::DataError> {
        let img = crate::preprocess::load_resized_rgb8(path, self.resize, self.input_size)?;
        Ok(img.normalized(self.mean, self.std))
    }

    /// The metadata entries to write (the keys do not clash with a checkpoint's own).
    pub fn to_metadata(&self) -> HashMap<String, String> {
        let json = |v: serde_json::Value| v.to_string();
        [
            (FORMAT_KEY, FORMAT.to_string()),
            ("arch", self.arch.to_string()),
            ("class_names", json(serde_json::json!(self.classes))),
            ("input_size", self.input_size.to_string()),
            ("resize_size", self.resize.to_string()),
            ("mean", json(serde_json::json!(self.mean))),
            ("std", json(serde_json::json!(self.std))),
            ("preprocess", PREPROCESS.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Reads the record from metadata: `Ok(None)` when the file has none (a torchvision
    /// file, or one written before this format), an error naming the key when it has
    /// one that does not parse.
    pub fn from_metadata(meta: &HashMap<String, String>) -> Result<Option<Self>, String> {
        match meta.get(FORMAT_KEY).map(String::as_str) {
            None => return Ok(None),
            Some(FORMAT) => {}
            Some(other) => {
                return Err(format!("model metadata format {other:?} is not {FORMAT:?}"))
            }
        }
        let get = |k: &str| {
            meta.get(k)
                .ok_or_else(|| format!("model metadata lacks `{k}`"))
        };
        let bad = |k: &str, e: String| format!("model metadata `{k}`: {e}");
        let arch: Arch = get("arch")?
            .parse()
            .map_err(|e: crate::UnknownArch| bad("arch", e.to_string()))?;
        let classes: Vec<String> = serde_json::from_str(get("class_names")?)
            .map_err(|e| bad("class_names", e.to_string()))?;
        let input_size: usize = get("input_size")?
            .parse()
            .map_err(|e: std::num::ParseIntError| bad("input_size", e.to_string()))?;
        let triple = |k: &str| -> Result<[f32; 3], String> {
            serde_json::from_str(get(k)?).map_err(|e| bad(k, e.to_string()))
        };
        let (mean, std) = (triple("mean")?, triple("std")?);
        let resize: usize = match meta.get("resize_size") {
            None => input_size,
            Some(v) => v
                .parse()
                .map_err(|e: std::num::ParseIntError| bad("resize_size", e.to_string()))?,
        };
        if resize < input_size {
            return Err(bad(
                "resize_size",
                format!("{resize} is smaller than the input size {input_size}"),
            ));
        }
        if input_size == 0
            || classes.is_empty()
            || std.iter().any(|s| s.is_nan() || *s <= 0.0)
            || mean.iter().any(|m| !m.is_finite())
        {
            return Err(format!(
                "model metadata: input size {input_size}, {} classes, std {std:?}: not usable",
                classes.len()
            ));
        }
        match get("preprocess")?.as_str() {
            PREPROCESS => {}
            other => {
                return Err(bad(
                    "preprocess",
                    format!("unknown preprocessing {other:?}"),
                ))
            }
        }
        Ok(Some(
            ModelInfo::new(arch, classes, input_size, mean, std).with_resize(resize),
        ))
    }

    /// Reads the record of a `.safetensors` file (its header only).
    pub fn read(path: impl AsRef<Path>) -> Result<Option<Self>, WeightsError> {
        let path = path.as_ref();
        let meta = crate::weights::read_metadata(path)?;
        ModelInfo::from_metadata(&meta).map_err(|message| WeightsError::Format {
            path: path.to_path_buf(),
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_bad_entries_are_named() {
        let info = ModelInfo::new(
            Arch::Cifar { depth: 20 },
            vec!["cat".into(), "dog \"big\"".into()],
            32,
            [0.5, 0.25, 0.125],
            [0.2, 0.3, 0.4],
        )
        .with_resize(36);
        let meta = info.to_metadata();
        assert_eq!(ModelInfo::from_metadata(&meta).unwrap(), Some(info));
        assert_eq!(ModelInfo::from_metadata(&HashMap::new()).unwrap(), None);
        for (key, value, needle) in [
            ("input_size", "x", "input_size"),
            ("arch", "resnet19", "resnet19"),
            ("std", "[0.2, 0.0, 0.1]", "not usable"),
            ("class_names", "cat", "class_names"),
            ("preprocess", "warp", "warp"),
            ("resize_size", "31", "smaller"),
        ] {
            let mut m = meta.clone();
            m.insert(key.into(), value.into());
            let e = ModelInfo::from_metadata(&m).unwrap_err();
            assert!(e.contains(needle), "{key}: {e}");
        }
    }

    #[test]
    fn the_imagenet_record_is_torchvisions_evaluation_transform() {
        let pixels: Vec<u8> = (0..300 * 200 * 3).map(|i| (i * 7 % 251) as u8).collect();
        let img = crate::preprocess::Rgb8::new(300, 200, pixels).unwrap();
        let ours = ModelInfo::imagenet(Arch::ResNet50)
            .preprocess_rgb8(&img)
            .unwrap();
        let want = crate::preprocess::imagenet_eval_rgb8(&img).unwrap();
        assert_eq!(ours.shape(), &[3, 224, 224]);
        assert_eq!(ours.data(), want.data());
        assert_eq!(ModelInfo::imagenet(Arch::ResNet50).classes.len(), 1000);
    }
}
