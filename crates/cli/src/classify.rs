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
fn classifier(
    k: Kernels,
    weights: &Path,
    arch: Option<&str>,
    output_stride: Option<usize>,
) -> Res<Classifier> {
    let (arch, info) = resolve(weights, arch)?;
    if info.is_none() && arch.is_cifar() {
        eprintln!(
            "warning: {arch} is a CIFAR network (32x32 images, its own classes) and {} does \
             not say how its images were made; they are preprocessed here for ImageNet \
             networks (224x224, ImageNet statistics), so its answers may mean little",
            weights.display()
        );
    }
    let mut net = ResNet::from_safetensors(arch, weights)?;
    if let Some(os) = output_stride {
        net.set_output_stride(os)?;
    }
    Ok(Classifier::with_info(net, info, k)?)
}

/// How `classify` and `eval` print their answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// For people.
    Text,
    /// One JSON object per line (per image for `classify`).
    Json,
    /// Comma-separated values with a header line.
    Csv,
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// True for the file names the image decoders read.
fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["jpg", "jpeg", "png"].contains(&e.to_ascii_lowercase().as_str()))
}

/// The images named: files as given, every JPEG and PNG under a folder (recursively,
/// in sorted order), and the paths of `list` (one per line; blank lines and lines
/// starting with `#` skipped). A folder without images is an error; a file that does
/// not exist is reported when it is read.
pub fn expand_inputs(inputs: Vec<PathBuf>, list: Option<&Path>) -> Res<Vec<PathBuf>> {
    let mut out = Vec::new();
    if let Some(list) = list {
        let bytes = resnet::files::read_regular(list, 64 << 20)
            .map_err(|e| format!("{}: {e}", list.display()))?;
        let text =
            String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8 text", list.display()))?;
        for line in text.lines().map(str::trim) {
            if !line.is_empty() && !line.starts_with('#') {
                out.push(PathBuf::from(line));
            }
        }
    }
    for input in inputs {
        if input.is_dir() {
            let mut found = Vec::new();
            let mut stack = vec![input.clone()];
            while let Some(dir) = stack.pop() {
                let entries =
                    std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                for entry in entries {
                    let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if is_image(&path) {
                        found.push(path);
                    }
                }
            }
            if found.is_empty() {
                return Err(
                    format!("{}: no JPEG or PNG files in this folder", input.display()).into(),
                );
            }
            found.sort();
            out.extend(found);
        } else {
            out.push(input);
        }
    }
    if out.is_empty() {
        return Err("no images given".into());
    }
    Ok(out)
}

/// Reads and preprocesses `images` into one `[N, 3, S, S]` batch of those that could be
/// read (`None` if none could), and per image, in order, its error if it could not.
fn batch_of(info: &ModelInfo, images: &[PathBuf]) -> Res<(Option<Tensor>, Vec<Option<String>>)> {
    let s = info.input_size;
    let mut data = Vec::with_capacity(images.len() * 3 * s * s);
    let mut errors = Vec::with_capacity(images.len());
    for path in images {
        match info.load_image(path) {
            Ok(x) => {
                data.extend_from_slice(x.data());
                errors.push(None);
            }
            Err(e) => errors.push(Some(e.to_string())),
        }
    }
    let n = errors.iter().filter(|e| e.is_none()).count();
    let batch = if n == 0 {
        None
    } else {
        Some(Tensor::from_vec(&[n, 3, s, s], data)?)
    };
    Ok((batch, errors))
}

/// The error that ends a command some of whose images could not be read (after the
/// others were done).
fn failed(failures: usize, total: usize) -> Res<()> {
    if failures == 0 {
        Ok(())
    } else {
        Err(format!("{failures} of {total} images could not be read (each is named above)").into())
    }
}

pub fn classify(
    k: Kernels,
    weights: PathBuf,
    arch: Option<String>,
    images: Vec<PathBuf>,
    top: usize,
    batch: usize,
    format: Format,
) -> Res<()> {
    let c = classifier(k, &weights, arch.as_deref(), None)?;
    if format == Format::Csv {
        crate::emit("image,rank,class,name,probability")?;
    }
    let mut failures = 0;
    // `batch` images at a time: decoded, run and printed before the next are read.
    for group in images.chunks(batch.max(1)) {
        let (x, errors) = batch_of(c.info(), group)?;
        let mut answers = match x {
            Some(x) => c.top_k_batch(&x, top)?.into_iter(),
            None => Vec::new().into_iter(),
        };
        // In the order given: an image that could not be read is reported in its place.
        for (path, error) in group.iter().zip(errors) {
            let image = path.display().to_string();
            if let Some(e) = error {
                failures += 1;
                if format == Format::Json {
                    let line = serde_json::json!({"image": image, "error": e});
                    crate::emit(&line.to_string())?;
                }
                eprintln!("error: {e}");
                continue;
            }
            let answer = answers.next().ok_or("fewer answers than images")?;
            match format {
                Format::Text => {
                    crate::emit(&image)?;
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
                Format::Json => {
                    let predictions: Vec<_> = answer
                        .into_iter()
                        .enumerate()
                        .map(|(rank, p)| {
                            serde_json::json!({
                                "rank": rank + 1,
                                "class": p.class,
                                "name": p.name,
                                "probability": p.probability,
                            })
                        })
                        .collect();
                    let line = serde_json::json!({"image": image, "predictions": predictions});
                    crate::emit(&line.to_string())?;
                }
                Format::Csv => {
                    for (rank, p) in answer.into_iter().enumerate() {
                        crate::emit(&format!(
                            "{},{},{},{},{}",
                            csv_field(&image),
                            rank + 1,
                            p.class,
                            csv_field(p.name.as_deref().unwrap_or("")),
                            p.probability
                        ))?;
                    }
                }
            }
        }
    }
    failed(failures, images.len())
}

/// Writes the pooled embeddings as a `.safetensors` file: `features` `[N, D]` (f32),
/// with the image paths, in order, in the metadata (`images`, one per line). Images
/// that cannot be read are named and left out; the command then fails at the end.
pub fn features(
    k: Kernels,
    weights: PathBuf,
    arch: Option<String>,
    images: Vec<PathBuf>,
    out: PathBuf,
    batch: usize,
    output_stride: Option<usize>,
) -> Res<()> {
    let c = classifier(k, &weights, arch.as_deref(), output_stride)?;
    let fast = c.model();
    // `batch` images at a time; only the embeddings (a few KB each) are kept.
    let dim = c.arch().feature_dim();
    // Under MPI each rank embeds a contiguous part of the list, and rank 0 writes them
    // all, in the list's order.
    let comm = crate::dist::comm();
    let (rank, ranks) = comm.map_or((0, 1), |c| (c.rank(), c.size()));
    let part = resnet::distributed::Shards::evaluation_part(images.len(), rank, ranks);
    let mine = &images[part];
    let mut bytes: Vec<u8> = Vec::with_capacity(mine.len() * dim * 4);
    let mut done: Vec<String> = Vec::with_capacity(mine.len());
    let mut failures = 0;
    for group in mine.chunks(batch.max(1)) {
        let (x, errors) = batch_of(c.info(), group)?;
        for (path, error) in group.iter().zip(errors) {
            match error {
                Some(e) => {
                    failures += 1;
                    eprintln!("error: {e}");
                }
                None => done.push(path.display().to_string()),
            }
        }
        let Some(x) = x else { continue };
        let f = fast.features(&x)?;
        bytes.extend(f.data().iter().flat_map(|v| v.to_le_bytes()));
    }
    if let Some(comm) = comm.filter(|c| c.size() > 1) {
        // Each rank's part as: failures, names (newline-separated), embeddings.
        let names = done.join("\n");
        let mut msg = Vec::with_capacity(16 + names.len() + bytes.len());
        msg.extend((failures as u64).to_le_bytes());
        msg.extend((names.len() as u64).to_le_bytes());
        msg.extend(names.as_bytes());
        msg.extend(&bytes);
        let parts = comm.gather_bytes(&msg)?;
        if rank != 0 {
            return Ok(()); // rank 0 writes the file and reports
        }
        (bytes, done, failures) = (Vec::new(), Vec::new(), 0);
        for p in parts {
            let word = |at: usize| u64::from_le_bytes(p[at..at + 8].try_into().unwrap_or_default());
            let (fails, len) = (word(0) as usize, word(8) as usize);
            failures += fails;
            let names = std::str::from_utf8(&p[16..16 + len])?;
            done.extend(names.lines().filter(|l| !l.is_empty()).map(str::to_string));
            bytes.extend(&p[16 + len..]);
        }
        eprintln!(
            "embedded on {ranks} ranks ({} images each at most)",
            images.len().div_ceil(ranks)
        );
    }
    if done.is_empty() {
        return Err(format!(
            "none of the {} images could be read: nothing written",
            images.len()
        )
        .into());
    }
    let shape = vec![done.len(), dim];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), &bytes)?;
    let meta = std::collections::HashMap::from([("images".to_string(), done.join("\n"))]);
    let file = safetensors::serialize([("features", view)], Some(meta))?;
    resnet::weights::write_atomic(&out, &file).map_err(|e| format!("{}: {e}", out.display()))?;
    crate::emit(&format!(
        "wrote {} embeddings of {} floats to {}",
        shape[0],
        shape[1],
        out.display()
    ))?;
    failed(failures, images.len())
}
