//! `resnet classify` and `resnet features`: images through a pretrained network.

use std::path::{Path, PathBuf};

use resnet::{Arch, Classifier, ModelInfo, ResNet};
use tensor::{Kernels, Tensor};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The architecture to build for `weights`, and what the file says about itself: a
/// file written by `resnet train` names its architecture (and `--arch` may only repeat
/// it); a torchvision/timm file does not, and then `--arch` is needed.
pub fn resolve(weights: &Path, arch: Option<&str>) -> Res<(Arch, Option<ModelInfo>)> {
    let info = ModelInfo::read(weights)?;
    let given: Option<Arch> = arch.map(str::parse).transpose()?;
    match (given, &info) {
        (Some(a), Some(i)) if a != i.arch => Err(format!(
            "--arch {a} contradicts {}, which says it is a {} (leave out --arch)",
            weights.display(),
            i.arch
        )
        .into()),
        (Some(a), _) => Ok((a, info)),
        (None, Some(i)) => Ok((i.arch, info)),
        (None, None) => Err(format!(
            "{} does not say its architecture (torchvision and timm files do not): give \
             --arch (resnet18, resnet34, resnet50, resnet101, resnet152, cifar-resnetN)",
            weights.display()
        )
        .into()),
    }
}

/// The network of `weights`, fed as its file says (ImageNet's transform when it says
/// nothing).
fn classifier(k: Kernels, weights: &Path, arch: Option<&str>) -> Res<Classifier> {
    let (arch, info) = resolve(weights, arch)?;
    if info.is_none() && arch.is_cifar() {
        eprintln!(
            "warning: {arch} is a CIFAR network (32x32 images, its own classes) and {} does \
             not say how its images were made; they are preprocessed here for ImageNet \
             networks (224x224, ImageNet statistics), so its answers may mean little",
            weights.display()
        );
    }
    let net = ResNet::from_safetensors(arch, weights)?;
    Ok(Classifier::with_info(net, info, k)?)
}

/// Decodes and preprocesses the images into one `[N, 3, S, S]` batch.
fn batch_of(info: &ModelInfo, images: &[PathBuf]) -> Res<Tensor> {
    let s = info.input_size;
    let mut data = Vec::with_capacity(images.len() * 3 * s * s);
    for path in images {
        let x = info.load_image(path)?;
        data.extend_from_slice(x.data());
    }
    Ok(Tensor::from_vec(&[images.len(), 3, s, s], data)?)
}

pub fn classify(
    k: Kernels,
    weights: PathBuf,
    arch: Option<String>,
    images: Vec<PathBuf>,
    top: usize,
    batch: usize,
) -> Res<()> {
    if images.is_empty() {
        return Err("no images given".into());
    }
    let c = classifier(k, &weights, arch.as_deref())?;
    // `batch` images at a time: decoded, run and printed before the next are read.
    for group in images.chunks(batch.max(1)) {
        let answers = c.top_k_batch(&batch_of(c.info(), group)?, top)?;
        for (path, answer) in group.iter().zip(answers) {
            crate::emit(&path.display().to_string())?;
            for (rank, p) in answer.into_iter().enumerate() {
                let name = p.name.unwrap_or_else(|| format!("class {}", p.class));
                crate::emit(&format!(
                    "  {}. {:>6.2}%  {name} ({})",
                    rank + 1,
                    100.0 * p.probability,
                    p.class
                ))?;
            }
        }
    }
    Ok(())
}

/// Writes the pooled embeddings as a `.safetensors` file: `features` `[N, D]` (f32),
/// with the image paths, in order, in the metadata (`images`, one per line).
pub fn features(
    k: Kernels,
    weights: PathBuf,
    arch: Option<String>,
    images: Vec<PathBuf>,
    out: PathBuf,
    batch: usize,
) -> Res<()> {
    if images.is_empty() {
        return Err("no images given".into());
    }
    let c = classifier(k, &weights, arch.as_deref())?;
    let fast = c.model();
    // `batch` images at a time; only the embeddings (a few KB each) are kept.
    let dim = c.arch().feature_dim();
    let mut bytes: Vec<u8> = Vec::with_capacity(images.len() * dim * 4);
    for group in images.chunks(batch.max(1)) {
        let f = fast.features(&batch_of(c.info(), group)?)?;
        bytes.extend(f.data().iter().flat_map(|v| v.to_le_bytes()));
    }
    let shape = vec![images.len(), dim];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), &bytes)?;
    let list: Vec<String> = images.iter().map(|p| p.display().to_string()).collect();
    let meta = std::collections::HashMap::from([("images".to_string(), list.join("\n"))]);
    let file = safetensors::serialize([("features", view)], Some(meta))?;
    resnet::weights::write_atomic(&out, &file).map_err(|e| format!("{}: {e}", out.display()))?;
    crate::emit(&format!(
        "wrote {} embeddings of {} floats to {}",
        shape[0],
        shape[1],
        out.display()
    ))?;
    Ok(())
}
