//! `resnet classify` and `resnet features`: images through a pretrained network.

use std::path::{Path, PathBuf};

use resnet::preprocess::{imagenet_classes, load_imagenet};
use resnet::{top_k, Arch, InferenceModel, ResNet};
use tensor::{Kernels, Tensor};

/// Decodes and preprocesses the images into one `[N, 3, 224, 224]` batch.
fn batch_of(images: &[PathBuf]) -> Result<Tensor, Box<dyn std::error::Error>> {
    let mut data = Vec::with_capacity(images.len() * 3 * 224 * 224);
    for path in images {
        let x = load_imagenet(path)?;
        data.extend_from_slice(x.data());
    }
    Ok(Tensor::from_vec(&[images.len(), 3, 224, 224], data)?)
}

fn model(
    k: Kernels,
    arch: Arch,
    weights: &Path,
) -> Result<InferenceModel, Box<dyn std::error::Error>> {
    let net = ResNet::from_safetensors(arch, weights)?;
    Ok(InferenceModel::from_model(net, k)?)
}

pub fn classify(
    k: Kernels,
    weights: PathBuf,
    arch: Arch,
    images: Vec<PathBuf>,
    top: usize,
    batch: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    if images.is_empty() {
        return Err("no images given".into());
    }
    let fast = model(k, arch, &weights)?;
    if arch.is_cifar() {
        eprintln!(
            "warning: {arch} is a CIFAR network (32x32 images, its own classes); `classify` \
             preprocesses photos for ImageNet networks (224x224, ImageNet statistics), so its \
             answers here may mean little"
        );
    }
    let names = imagenet_classes();
    // `batch` images at a time: decoded, run and printed before the next are read.
    for group in images.chunks(batch.max(1)) {
        let logits = fast.forward(&batch_of(group)?)?;
        print_top(group, &logits, top, &names)?;
    }
    Ok(())
}

fn print_top(
    images: &[PathBuf],
    logits: &Tensor,
    top: usize,
    names: &[&str],
) -> Result<(), Box<dyn std::error::Error>> {
    let classes = logits.shape()[1].max(1);
    for (path, row) in images.iter().zip(logits.data().chunks(classes)) {
        crate::emit(&path.display().to_string())?;
        for (rank, (c, p)) in top_k(row, top).into_iter().enumerate() {
            let name = if classes == names.len() {
                names[c].to_string()
            } else {
                format!("class {c}")
            };
            crate::emit(&format!(
                "  {}. {:>6.2}%  {name} ({c})",
                rank + 1,
                100.0 * p
            ))?;
        }
    }
    Ok(())
}

/// Writes the pooled embeddings as a `.safetensors` file: `features` `[N, D]` (f32),
/// with the image paths, in order, in the metadata (`images`, one per line).
pub fn features(
    k: Kernels,
    weights: PathBuf,
    arch: Arch,
    images: Vec<PathBuf>,
    out: PathBuf,
    batch: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    if images.is_empty() {
        return Err("no images given".into());
    }
    let fast = model(k, arch, &weights)?;
    // `batch` images at a time; only the embeddings (a few KB each) are kept.
    let dim = arch.feature_dim();
    let mut bytes: Vec<u8> = Vec::with_capacity(images.len() * dim * 4);
    for group in images.chunks(batch.max(1)) {
        let f = fast.features(&batch_of(group)?)?;
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
