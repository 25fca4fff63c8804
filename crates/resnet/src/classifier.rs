//! [`Classifier`]: a pretrained network behind one call, for the common case of "which
//! ImageNet classes are in this picture".
//!
//! ```no_run
//! # #[cfg(feature = "images")]
//! # fn main() -> resnet::Result<()> {
//! let classifier = resnet::Classifier::from_file(resnet::Arch::ResNet50, "resnet50.safetensors")?;
//! for p in classifier.classify_file("cat.jpg", 5)? {
//!     println!("{:5.1}%  {}", 100.0 * p.probability, p.name.unwrap_or("?"));
//! }
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "images"))]
//! # fn main() {}
//! ```
//!
//! It is [`InferenceModel`] (the fast form of the network), [`top_k`] (softmax
//! probabilities, best first) and, for a 1000-class network, the ImageNet class names,
//! put together; use those directly for anything else (batches of your own tensors,
//! features instead of classes, other kernels).

use std::path::Path;

use tensor::{Kernels, Tensor, TensorError};

use crate::arch::Arch;
use crate::error::Result;
use crate::inference::{top_k, InferenceModel};
use crate::model::ResNet;

/// One class of a [`Classifier`]'s answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The class index (the row of the network's `fc.weight`).
    pub class: usize,
    /// The softmax probability of the class, in `[0, 1]`.
    pub probability: f32,
    /// The ImageNet class name (torchvision's order), for a network with 1000 classes;
    /// `None` for any other head.
    pub name: Option<&'static str>,
}

/// A network ready to classify images (see the module docs).
pub struct Classifier {
    model: InferenceModel,
    arch: Arch,
    num_classes: usize,
    names: Option<Vec<&'static str>>,
}

impl Classifier {
    /// Loads a torchvision- or timm-named `.safetensors` file of `arch` (the number of
    /// classes is read from its `fc.weight`) and prepares it for the widest kernels this
    /// CPU has.
    pub fn from_file(arch: Arch, weights: impl AsRef<Path>) -> Result<Self> {
        let net = ResNet::from_safetensors(arch, weights)?;
        Self::from_model(net, Kernels::active()?)
    }

    /// A classifier from a network already built or loaded, on the given kernels.
    pub fn from_model(net: ResNet, kernels: Kernels) -> Result<Self> {
        let (arch, num_classes) = (net.arch, net.num_classes());
        let names = (num_classes == 1000).then(crate::preprocess::imagenet_classes);
        Ok(Classifier {
            model: InferenceModel::from_model(net, kernels)?,
            arch,
            num_classes,
            names,
        })
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
                        name: self.names.as_ref().and_then(|n| n.get(class).copied()),
                    })
                    .collect()
            })
            .collect())
    }

    /// Reads an image file (JPEG or PNG), applies torchvision's ImageNet evaluation
    /// transform exactly as PIL does ([`crate::preprocess::load_imagenet`]) and returns
    /// its `k` most probable classes. Meant for the ImageNet networks: a CIFAR network
    /// expects 32x32 images with its own statistics (preprocess those yourself and call
    /// [`Classifier::top_k`]).
    #[cfg(feature = "images")]
    pub fn classify_file(&self, path: impl AsRef<Path>, k: usize) -> Result<Vec<Prediction>> {
        let x = crate::preprocess::load_imagenet(path)?;
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
        assert!(top.iter().all(|p| p.name == Some(names[p.class])));
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
}
