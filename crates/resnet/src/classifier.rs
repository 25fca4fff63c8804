//! [`Classifier`]: a pretrained network behind one call, for the common case of "which
//! ImageNet classes are in this picture".
//!
//! ```no_run
//! # #[cfg(feature = "images")]
//! # fn main() -> resnet::Result<()> {
//! let classifier = resnet::Classifier::from_file(resnet::Arch::ResNet50, "resnet50.safetensors")?;
//! for p in classifier.classify_file("cat.jpg", 5)? {
//!     println!("{:5.1}%  {}", 100.0 * p.probability, p.name.as_deref().unwrap_or("?"));
//! }
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "images"))]
//! # fn main() {}
//! ```
//!
//! A model trained here (`resnet train`, [`crate::trainer::Trainer`]) carries a
//! [`ModelInfo`] (architecture, class names, input size, normalisation):
//! [`Classifier::open`] needs no architecture, and [`Classifier::classify_file`] feeds it
//! the images it was trained on. A torchvision or timm file carries none: its caller
//! names the architecture and ImageNet's transform and class names are assumed (for a
//! 1000-class head).
//!
//! It is [`InferenceModel`] (the fast form of the network), [`top_k`] (softmax
//! probabilities, best first), the class names and the input transform put together;
//! use those directly for anything else (batches of your own tensors, features instead
//! of classes, other kernels).

use std::path::Path;

use tensor::{Kernels, Tensor, TensorError};

use crate::arch::Arch;
use crate::error::Result;
use crate::inference::{top_k, InferenceModel};
use crate::model::ResNet;
use crate::model_info::ModelInfo;

/// One class of a [`Classifier`]'s answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The class index (the row of the network's `fc.weight`).
    pub class: usize,
    /// The softmax probability of the class, in `[0, 1]`.
    pub probability: f32,
    /// The class name: from the file's [`ModelInfo`], or the ImageNet class name
    /// (torchvision's order) for a 1000-class network whose file names none; `None`
    /// otherwise.
    pub name: Option<String>,
}

/// A network ready to classify images (see the module docs).
pub struct Classifier {
    model: InferenceModel,
    arch: Arch,
    num_classes: usize,
    /// How inputs are made from images, and the class names (when known).
    info: ModelInfo,
    names_known: bool,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("arch", &self.arch)
            .field("num_classes", &self.num_classes)
            .field("input_size", &self.info.input_size)
            .finish_non_exhaustive()
    }
}

impl Classifier {
    /// Loads a torchvision- or timm-named `.safetensors` file of `arch` (the number of
    /// classes is read from its `fc.weight`) and prepares it for the widest kernels this
    /// CPU has.
    /// A file that carries a [`ModelInfo`] (one written by the trainer) must say the
    /// same architecture, and its preprocessing and class names are used.
    pub fn from_file(arch: Arch, weights: impl AsRef<Path>) -> Result<Self> {
        let weights = weights.as_ref();
        let info = ModelInfo::read(weights)?;
        let net = ResNet::from_safetensors(arch, weights)?;
        Self::with_info(net, info, Kernels::active()?)
    }

    /// Loads a model file that says what it is (a [`ModelInfo`] in its metadata, as
    /// the trainer writes): no architecture to name. A file without one (torchvision's,
    /// timm's) is an error that says to use [`Classifier::from_file`].
    pub fn open(weights: impl AsRef<Path>) -> Result<Self> {
        let weights = weights.as_ref();
        let Some(info) = ModelInfo::read(weights)? else {
            return Err(crate::WeightsError::Refused {
                path: weights.to_path_buf(),
                reason: "the file does not say its architecture (torchvision and timm files \
                         do not): use Classifier::from_file(arch, path)"
                    .into(),
            }
            .into());
        };
        let net = ResNet::from_safetensors(info.arch, weights)?;
        Self::with_info(net, Some(info), Kernels::active()?)
    }

    /// A classifier from a network already built or loaded, on the given kernels, fed
    /// as an ImageNet network (class names for a 1000-class head).
    pub fn from_model(net: ResNet, kernels: Kernels) -> Result<Self> {
        Self::with_info(net, None, kernels)
    }

    /// A classifier from a network and what its file says about it (`None`: ImageNet's
    /// transform, and ImageNet's class names for a 1000-class head). A record whose
    /// architecture or number of classes is not the network's is an error.
    pub fn with_info(net: ResNet, info: Option<ModelInfo>, kernels: Kernels) -> Result<Self> {
        let (arch, num_classes) = (net.arch, net.num_classes());
        let (info, names_known) = match info {
            Some(info) => {
                if info.arch != arch || info.classes.len() != num_classes {
                    return Err(TensorError::InvalidArgument {
                        op: "Classifier::with_info",
                        reason: format!(
                            "the model info is for {} with {} classes, the network is {arch} \
                             with {num_classes}",
                            info.arch,
                            info.classes.len()
                        ),
                    }
                    .into());
                }
                (info, true)
            }
            None => (ModelInfo::imagenet(arch), num_classes == 1000),
        };
        Ok(Classifier {
            model: InferenceModel::from_model(net, kernels)?,
            arch,
            num_classes,
            info,
            names_known,
        })
    }

    /// How this classifier makes its inputs from images (and its class names): the
    /// file's own record, or ImageNet's.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The network's architecture.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The number of classes of the network's head.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The fast network itself (for features, stages, or batches of logits).
    pub fn model(&self) -> &InferenceModel {
        &self.model
    }

    /// The `k` most probable classes of one preprocessed image, `[3, H, W]` (or `[1, 3,
    /// H, W]`), best first. For the ImageNet networks that is torchvision's evaluation
    /// transform ([`crate::preprocess::imagenet_eval_rgb8`]), `[3, 224, 224]`.
    pub fn top_k(&self, image: &Tensor, k: usize) -> Result<Vec<Prediction>> {
        let x = match image.shape() {
            [3, h, w] => image.clone().reshape(&[1, 3, *h, *w])?,
            [1, 3, _, _] => image.clone(),
            other => {
                return Err(TensorError::InvalidArgument {
                    op: "Classifier::top_k",
                    reason: format!(
                        "image has shape {other:?}; expected one image, [3, H, W] or \
                         [1, 3, H, W] (for a batch, use `top_k_batch`)"
                    ),
                }
                .into())
            }
        };
        Ok(self.top_k_batch(&x, k)?.remove(0))
    }

    /// The `k` most probable classes of each image of a batch `[N, 3, H, W]`.
    pub fn top_k_batch(&self, images: &Tensor, k: usize) -> Result<Vec<Vec<Prediction>>> {
        let logits = self.model.forward(images)?;
        let classes = self.num_classes.max(1);
        Ok(logits
            .data()
            .chunks(classes)
            .map(|row| {
                top_k(row, k)
                    .into_iter()
                    .map(|(class, probability)| Prediction {
                        class,
                        probability,
                        name: self
                            .names_known
                            .then(|| self.info.classes.get(class).cloned())
                            .flatten(),
                    })
                    .collect()
            })
            .collect())
    }

    /// Reads an image file (JPEG or PNG), makes the model's input from it as its
    /// [`ModelInfo`] says (for a file without one, torchvision's ImageNet evaluation
    /// transform, exactly as PIL does it) and returns its `k` most probable classes.
    #[cfg(feature = "images")]
    pub fn classify_file(&self, path: impl AsRef<Path>, k: usize) -> Result<Vec<Prediction>> {
        let x = self.info.load_image(path)?;
        self.top_k(&x, k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_classifier_answers_in_probability_order_with_names() {
        let net = ResNet::new(Arch::ResNet18, 1000, 3).unwrap();
        let c = Classifier::from_model(net, Kernels::active().unwrap()).unwrap();
        assert_eq!((c.arch(), c.num_classes()), (Arch::ResNet18, 1000));
        let x = Tensor::randn(&[3, 64, 64], 0.0, 1.0, 5).unwrap();
        let top = c.top_k(&x, 5).unwrap();
        assert_eq!(top.len(), 5);
        assert!(top.windows(2).all(|w| w[0].probability >= w[1].probability));
        let names = crate::preprocess::imagenet_classes();
        assert!(top
            .iter()
            .all(|p| p.name.as_deref() == Some(names[p.class])));
        // The same answer as the model's logits through `top_k`.
        let logits = c
            .model()
            .forward(&x.clone().reshape(&[1, 3, 64, 64]).unwrap())
            .unwrap();
        let want = top_k(logits.data(), 5);
        let got: Vec<_> = top.iter().map(|p| (p.class, p.probability)).collect();
        assert_eq!(got, want);
        // A batch gives one answer per image; a wrong rank is an error naming the call.
        let batch = Tensor::randn(&[2, 3, 64, 64], 0.0, 1.0, 6).unwrap();
        assert_eq!(c.top_k_batch(&batch, 3).unwrap().len(), 2);
        let e = c.top_k(&batch, 3).unwrap_err().to_string();
        assert!(
            e.contains("Classifier::top_k") && e.contains("[2, 3, 64, 64]"),
            "{e}"
        );
    }

    #[test]
    fn other_heads_have_no_names() {
        let net = ResNet::new(Arch::Cifar { depth: 20 }, 10, 3).unwrap();
        let c = Classifier::from_model(net, Kernels::active().unwrap()).unwrap();
        let top = c
            .top_k(&Tensor::randn(&[3, 32, 32], 0.0, 1.0, 5).unwrap(), 3)
            .unwrap();
        assert!(top.iter().all(|p| p.name.is_none() && p.class < 10));
    }

    #[test]
    fn a_file_with_model_info_names_its_classes_and_needs_no_arch() {
        let dir = std::env::temp_dir().join(format!("resnet-classifier-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (arch, path) = (Arch::Cifar { depth: 20 }, dir.join("m.safetensors"));
        let net = ResNet::new(arch, 3, 3).unwrap();
        let info = ModelInfo::new(
            arch,
            vec!["a".into(), "b".into(), "c".into()],
            32,
            [0.5; 3],
            [0.25; 3],
        );
        net.save_safetensors_with(&path, Some(&info)).unwrap();
        let c = Classifier::open(&path).unwrap();
        assert_eq!((c.arch(), c.info()), (arch, &info));
        let top = c
            .top_k(&Tensor::randn(&[3, 32, 32], 0.0, 1.0, 5).unwrap(), 3)
            .unwrap();
        let names: Vec<_> = top.iter().map(|p| p.name.clone().unwrap()).collect();
        assert_eq!(names.len(), 3);
        assert!(names.iter().all(|n| info.classes.contains(n)));
        // Another architecture named for it is refused; a file without info needs one.
        let e = Classifier::from_file(Arch::Cifar { depth: 32 }, &path).unwrap_err();
        assert!(e.to_string().contains("cifar-resnet20"), "{e}");
        net.save_safetensors(&path).unwrap();
        let e = Classifier::open(&path).unwrap_err().to_string();
        assert!(e.contains("does not say its architecture"), "{e}");
        // Info that does not fit the network is refused.
        let wrong = ModelInfo::new(arch, vec!["a".into()], 32, [0.5; 3], [0.25; 3]);
        assert!(Classifier::with_info(net, Some(wrong), Kernels::active().unwrap()).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
