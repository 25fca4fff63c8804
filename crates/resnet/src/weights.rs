//! Loading and saving weights as `.safetensors`, with torchvision's key names.
//!
//! Loading is strict, like PyTorch's `load_state_dict(strict=True)`: every key the model
//! has must be in the file with the model's shape and a floating-point dtype (`F32`, or
//! `F16`/`BF16`, converted to `f32` exactly on load), and the file may hold
//! nothing else (except `*.num_batches_tracked`, PyTorch's batch-norm counters, which are
//! accepted and ignored). Every problem is collected and reported by name in one error,
//! and the model is left untouched unless everything checks out. The file format itself
//! (header, offsets, bounds) is parsed and validated by the `safetensors` crate; a
//! truncated or hostile file is an error, never a panic. [`ResNet::from_safetensors`]
//! reads the header on its own and then each tensor straight into the model, so a
//! file is never held whole in memory beside the weights it fills.
//!
//! Saving writes a temporary file beside the target and renames it over the target, so a
//! crash never leaves a half-written weights file. The saved file includes
//! `num_batches_tracked` (as 0) for every batch norm, so PyTorch's strict loading of a
//! torchvision model accepts it.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, Metadata, SafeTensors, TensorView, View};
use tensor::TensorError;

use crate::arch::Arch;
use crate::model::ResNet;

/// What went wrong reading or writing weights.
#[derive(Debug)]
#[non_exhaustive]
pub enum WeightsError {
    /// The file could not be read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a valid safetensors file (truncated, a header that does not
    /// parse, offsets outside the data, ...), or `fc.weight` is a head of zero classes.
    Format {
        /// The file (the name given, for a reader or bytes).
        path: PathBuf,
        /// What is wrong, as the parser or the header check found it.
        message: String,
    },
    /// The file is valid but does not fit the model; every problem is listed.
    Mismatch(Box<Mismatch>),
    /// A PyTorch checkpoint (`.pth`) that is not a state dict this reader accepts
    /// (see [`crate::pth`]): what is wrong, with where in the pickle.
    PyTorch {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Building the model failed (a head, from `fc.weight`'s shape, too large to
    /// address; a head of zero classes is a [`WeightsError::Format`]).
    Tensor(TensorError),
    /// The file is valid and may even fit, but says it is something else (its metadata
    /// or a `config.json` beside it names another architecture), or holds values that
    /// cannot be right (NaN, an infinity, a negative running variance).
    Refused {
        /// The file.
        path: PathBuf,
        /// What the file says it is, or the first unusable value.
        reason: String,
    },
}

/// Every way a valid weights file failed to fit a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The file.
    pub path: PathBuf,
    /// The architecture the model was built as.
    pub arch: Arch,
    /// The model's keys that the file lacks, in torchvision order.
    pub missing: Vec<String>,
    /// The file's keys that the model does not have, sorted (`*.num_batches_tracked`
    /// is never one).
    pub unexpected: Vec<String>,
    /// `(key, model's shape, file's shape)`.
    pub wrong_shape: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// `(key, file's dtype)`.
    pub wrong_dtype: Vec<(String, String)>,
    /// The architecture whose layout the file's keys have, when it is another one
    /// (a ResNet-18 file given as a ResNet-50 says so instead of listing only keys).
    pub looks_like: Option<Arch>,
}

impl fmt::Display for WeightsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightsError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            WeightsError::Format { path, message } => {
                write!(
                    f,
                    "{}: not a valid safetensors file: {message}",
                    path.display()
                )
            }
            WeightsError::Refused { path, reason } => write!(f, "{}: {reason}", path.display()),
            WeightsError::PyTorch { path, message } => write!(
                f,
                "{}: not a readable PyTorch state dict: {message}",
                path.display()
            ),
            WeightsError::Mismatch(m) => {
                let Mismatch {
                    path,
                    arch,
                    missing,
                    unexpected,
                    wrong_shape,
                    wrong_dtype,
                    looks_like,
                } = &**m;
                write!(f, "{}: the weights do not fit {arch}", path.display())?;
                if let Some(other) = looks_like {
                    write!(f, " (this looks like {other}: its blocks are {other}'s)")?;
                }
                f.write_str(":")?;
                let list = |v: &[String]| {
                    let shown: Vec<_> = v.iter().take(8).cloned().collect();
                    let more = v.len().saturating_sub(8);
                    if more > 0 {
                        format!("{} (and {more} more)", shown.join(", "))
                    } else {
                        shown.join(", ")
                    }
                };
                if !missing.is_empty() {
                    write!(f, " {} missing key(s): {};", missing.len(), list(missing))?;
                }
                if !unexpected.is_empty() {
                    write!(
                        f,
                        " {} unexpected key(s): {};",
                        unexpected.len(),
                        list(unexpected)
                    )?;
                }
                for (k, want, got) in wrong_shape.iter().take(8) {
                    write!(f, " {k} has shape {got:?}, the model needs {want:?};")?;
                }
                for (k, dtype) in wrong_dtype.iter().take(8) {
                    write!(f, " {k} is {dtype}, only F32, F16 and BF16 are supported;")?;
                }
                Ok(())
            }
            WeightsError::Tensor(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for WeightsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WeightsError::Io { source, .. } => Some(source),
            WeightsError::Tensor(e) => Some(e),
            _ => None,
        }
    }
}

/// The architecture whose blocks the keys name: the block type (`layer1.0.conv3` is a
/// bottleneck's) and the blocks per stage (`layer{s}.{i}.`); `None` if none fits.
pub fn guess_arch<S: AsRef<str>>(keys: &[S]) -> Option<Arch> {
    let mut blocks = [0usize; 4];
    let (mut bottleneck, mut deep_stem) = (false, false);
    for key in keys {
        let key = key.as_ref();
        bottleneck |= key.starts_with("layer1.0.conv3.");
        deep_stem |= key.starts_with("conv1.0.");
        let Some(rest) = key.strip_prefix("layer") else {
            continue;
        };
        let mut parts = rest.split('.');
        let (Some(Ok(s)), Some(Ok(i))) = (
            parts.next().map(str::parse::<usize>),
            parts.next().map(str::parse::<usize>),
        ) else {
            continue;
        };
        if (1..=4).contains(&s) {
            blocks[s - 1] = blocks[s - 1].max(i.saturating_add(1));
        }
    }
    let kind = if bottleneck {
        crate::arch::BlockKind::Bottleneck
    } else {
        crate::arch::BlockKind::Basic
    };
    let found: Vec<usize> = blocks.iter().copied().filter(|&b| b > 0).collect();
    let cifar = (found.len() == 3 && blocks[3] == 0).then(|| Arch::Cifar {
        depth: 6 * found[0] + 2,
    });
    // ResNet-D has timm's deep stem (`conv1.0`, ...); the others a single `conv1`. The
    // wide variants share ResNet-50/101's keys (the caller tells them apart by shape).
    Arch::ALL
        .into_iter()
        .chain(Arch::RESNET_D)
        .chain(cifar)
        .find(|a| a.block() == kind && a.stage_blocks() == found && a.is_resnet_d() == deep_stem)
}

fn is_ignored(key: &str) -> bool {
    key.ends_with(".num_batches_tracked")
}

impl ResNet {
    /// Reads a `.safetensors` file and builds `arch` from it; the number of classes is
    /// taken from `fc.weight`. The file is read once, tensor by tensor, straight into
    /// the model's parameters: it is never held whole in memory beside them (for
    /// ResNet-50, 100 MB less at the peak).
    ///
    /// A PyTorch checkpoint (`torch.save` of a state dict, `.pth`/`.pt`) is read too,
    /// recognised by its content ([`ResNet::from_pth`]).
    pub fn from_safetensors(arch: Arch, path: impl AsRef<Path>) -> Result<Self, WeightsError> {
        let path = path.as_ref();
        check_config_beside(arch, path)?;
        let mut file = crate::files::open_regular(path).map_err(io_error(path))?;
        let mut head = [0u8; 4];
        let n = file.read(&mut head).map_err(io_error(path))?;
        if crate::pth::is_torch_file(&head[..n]) {
            return Self::from_pth(arch, path);
        }
        file.seek(std::io::SeekFrom::Start(0))
            .map_err(io_error(path))?;
        Self::from_safetensors_reader(arch, path, file)
    }

    /// Loads a PyTorch checkpoint: the state dict `torch.save(model.state_dict(), path)`
    /// writes (torchvision's published `.pth` format), in f32, f16 or bf16, checked as
    /// strictly as a `.safetensors` file. The file is read by a small reader that runs
    /// no code from it ([`crate::pth`]).
    pub fn from_pth(arch: Arch, path: impl AsRef<Path>) -> Result<Self, WeightsError> {
        let path = path.as_ref();
        let tensors = crate::pth::read_state_dict(path)?;
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|t| {
                safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data)
                    .map(|v| (t.name.clone(), v))
            })
            .collect::<Result<_, _>>()
            .map_err(|e| WeightsError::Format {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let bytes = safetensors::serialize(views, None).map_err(|e| WeightsError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        drop(tensors);
        Self::from_safetensors_reader(arch, path, std::io::Cursor::new(bytes))
    }

    /// [`ResNet::from_safetensors`] from any seekable source (`name` is used in
    /// messages): the header is read and validated first (by the `safetensors`
    /// crate's own metadata type, which checks that the offsets are contiguous and fit
    /// each tensor's dtype and shape), its total length is checked against the
    /// source's, then each tensor is read where the header puts it.
    pub fn from_safetensors_reader(
        arch: Arch,
        name: impl AsRef<Path>,
        mut reader: impl Read + Seek,
    ) -> Result<Self, WeightsError> {
        let path = name.as_ref();
        let header = Header::read(path, &mut reader)?;
        check_declared_arch(arch, path, header.meta.metadata().as_ref())?;
        // The head's size comes from `fc.weight` when its shape fits the architecture
        // (`[classes, feature_dim]`, whose bytes the header check has found in the file);
        // otherwise a 1000-class model is built only to list what does not fit.
        let classes = match header.meta.info("fc.weight").map(|t| t.shape.as_slice()) {
            Some(&[0, d]) if d == arch.feature_dim() => {
                return Err(WeightsError::Format {
                    path: path.to_path_buf(),
                    message: format!("fc.weight has shape [0, {d}]: a head of zero classes"),
                })
            }
            Some(&[n, d]) if d == arch.feature_dim() => n,
            _ => 1000,
        };
        let mut model = ResNet::zeroed(arch, classes).map_err(WeightsError::Tensor)?;
        model.check_fit(
            path,
            |key| header.meta.info(key).map(|t| (t.dtype, t.shape.clone())),
            header.meta.tensors().into_keys(),
        )?;
        let mut targets = model.named_tensors_mut();
        // In file order, so that the reads run forwards.
        let start = |key: &str| header.meta.info(key).map_or(0, |t| t.data_offsets.0);
        targets.sort_by_key(|(key, _)| start(key));
        let io = io_error(path);
        let mut buf = vec![0u8; 1 << 18];
        for (key, t) in targets.iter_mut() {
            reader
                .seek(SeekFrom::Start(header.data_start + start(key) as u64))
                .map_err(io)?;
            // `check_fit` accepted the dtype: F32, F16 or BF16, little-endian.
            let dtype = header.meta.info(key).map_or(Dtype::F32, |t| t.dtype);
            let size = element_size(dtype).unwrap_or(4);
            // A chunk of the file at a time.
            for dst in t.data_mut().chunks_mut(buf.len() / 4) {
                let bytes = &mut buf[..dst.len() * size];
                reader.read_exact(bytes).map_err(io)?;
                for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(size)) {
                    *d = to_f32(dtype, b);
                }
            }
        }
        drop(targets);
        refuse_invalid_values(path, &model)?;
        Ok(model)
    }

    /// Replaces every parameter and buffer with the file's (strictly: see the module
    /// docs). On error the model is unchanged.
    pub fn load_safetensors(&mut self, path: impl AsRef<Path>) -> Result<(), WeightsError> {
        let path = path.as_ref();
        check_config_beside(self.arch, path)?;
        let bytes = read(path)?;
        self.load_safetensors_bytes(path, &bytes)
    }

    /// [`ResNet::load_safetensors`] from bytes in memory (`name` is used in messages).
    pub fn load_safetensors_bytes(
        &mut self,
        name: impl AsRef<Path>,
        bytes: &[u8],
    ) -> Result<(), WeightsError> {
        let path = name.as_ref();
        let file = parse(path, bytes)?;
        if let Ok((_, meta)) = SafeTensors::read_metadata(bytes) {
            check_declared_arch(self.arch, path, meta.metadata().as_ref())?;
        }
        self.load_from(path, &file)
    }

    fn load_from(&mut self, path: &Path, file: &SafeTensors) -> Result<(), WeightsError> {
        let in_file: HashMap<&str, TensorView> = file.iter().collect();
        self.check_fit(
            path,
            |key| in_file.get(key).map(|v| (v.dtype(), v.shape().to_vec())),
            in_file.keys().map(|k| k.to_string()),
        )?;
        // Little-endian F32, F16 or BF16 (what `check_fit` accepted), read without
        // assuming the bytes are aligned.
        let values = |name: &str| {
            let view = &in_file[name];
            let dtype = view.dtype();
            let size = element_size(dtype).unwrap_or(4);
            view.data()
                .chunks_exact(size)
                .map(move |b| to_f32(dtype, b))
        };
        // The values are checked in the file, before any is copied: a file with unusable
        // values leaves `self` unchanged (without a second copy of the model).
        for name in self.named_tensors().into_iter().map(|n| n.name) {
            let var = name.ends_with(".running_var");
            if let Some((i, v)) = values(&name)
                .enumerate()
                .find(|(_, v)| !v.is_finite() || (var && *v < 0.0))
            {
                return Err(invalid_value(path, &name, i, v));
            }
        }
        for (name, t) in self.named_tensors_mut().iter_mut() {
            for (dst, v) in t.data_mut().iter_mut().zip(values(name)) {
                *dst = v;
            }
        }
        Ok(())
    }

    /// Checks that a file whose keys are `keys` and whose `lookup(key)` gives a key's
    /// dtype and shape fits this model exactly (see the module docs); every problem
    /// is collected into one error.
    fn check_fit(
        &mut self,
        path: &Path,
        lookup: impl Fn(&str) -> Option<(Dtype, Vec<usize>)>,
        keys: impl Iterator<Item = String>,
    ) -> Result<(), WeightsError> {
        let arch = self.arch;
        let targets = self.named_tensors_mut();
        let (mut missing, mut wrong_shape, mut wrong_dtype) = (Vec::new(), Vec::new(), Vec::new());
        for (name, t) in &targets {
            match lookup(name) {
                None => missing.push(name.clone()),
                Some((dtype, _)) if element_size(dtype).is_none() => {
                    wrong_dtype.push((name.clone(), format!("{dtype:?}")))
                }
                Some((_, shape)) if shape != t.shape() => {
                    wrong_shape.push((name.clone(), t.shape().to_vec(), shape))
                }
                Some(_) => {}
            }
        }
        let known: std::collections::HashSet<&str> =
            targets.iter().map(|(n, _)| n.as_str()).collect();
        let keys: Vec<String> = keys.collect();
        let mut unexpected: Vec<String> = keys
            .iter()
            .filter(|k| !known.contains(k.as_str()) && !is_ignored(k))
            .cloned()
            .collect();
        unexpected.sort();
        if missing.is_empty()
            && unexpected.is_empty()
            && wrong_shape.is_empty()
            && wrong_dtype.is_empty()
        {
            return Ok(());
        }
        Err(WeightsError::Mismatch(Box::new(Mismatch {
            path: path.to_path_buf(),
            arch,
            missing,
            unexpected,
            wrong_shape,
            wrong_dtype,
            looks_like: guess_arch(&keys)
                .map(|g| {
                    // The wide and ResNeXt variants have ResNet-50/101's keys; the first
                    // bottleneck's 3x3 convolution tells them apart: `[w, w / groups, 3,
                    // 3]`, w = 64 (plain), 128 (wide, or ResNeXt-50 in 32 groups), 256
                    // (ResNeXt-101 in 32 or 64 groups).
                    let Some((_, shape)) = lookup("layer1.0.conv2.weight") else {
                        return g;
                    };
                    let (mid, per_group) = match shape[..] {
                        [m, p, 3, 3] if p > 0 => (m, p),
                        _ => return g,
                    };
                    Arch::every()
                        .find(|a| {
                            a.block() == g.block()
                                && a.stage_blocks() == g.stage_blocks()
                                && a.is_resnet_d() == g.is_resnet_d()
                                && a.bottleneck_width(64) == mid
                                && a.groups() * per_group == mid
                        })
                        .unwrap_or(g)
                })
                .filter(|&g| g != arch),
        })))
    }

    /// Writes every parameter and buffer (plus `num_batches_tracked`) to `path`,
    /// atomically: a temporary file in the same folder, flushed, then renamed. Each
    /// tensor's bytes are made as the writer reaches it, so at most one tensor is
    /// copied at a time.
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<(), WeightsError> {
        self.save_safetensors_with(path, None)
    }

    /// [`ResNet::save_safetensors`], with `info` (how to use the model) in the file's
    /// metadata.
    pub fn save_safetensors_with(
        &self,
        path: impl AsRef<Path>,
        info: Option<&crate::ModelInfo>,
    ) -> Result<(), WeightsError> {
        let path = path.as_ref();
        let named = self.named_tensors();
        let mut views: BTreeMap<String, SaveView> = BTreeMap::new();
        for n in &named {
            if let Some(bn) = n.name.strip_suffix(".running_var") {
                views.insert(format!("{bn}.num_batches_tracked"), SaveView::Counter);
            }
            views.insert(
                n.name.clone(),
                SaveView::F32 {
                    shape: n.tensor.shape(),
                    data: n.tensor.data(),
                },
            );
        }
        let meta = info.map(|i| i.to_metadata());
        write_safetensors(path, views, meta).map_err(io_error(path))
    }
}

/// The metadata of a `.safetensors` file (its header only is read; empty if it has
/// none, or for a PyTorch checkpoint).
pub fn read_metadata(path: impl AsRef<Path>) -> Result<HashMap<String, String>, WeightsError> {
    let path = path.as_ref();
    let mut file = crate::files::open_regular(path).map_err(io_error(path))?;
    let mut head = [0u8; 4];
    let n = file.read(&mut head).map_err(io_error(path))?;
    if crate::pth::is_torch_file(&head[..n]) {
        return Ok(HashMap::new()); // a PyTorch checkpoint: no metadata
    }
    file.seek(std::io::SeekFrom::Start(0))
        .map_err(io_error(path))?;
    let header = Header::read(path, &mut file)?;
    Ok(header.meta.metadata().clone().unwrap_or_default())
}

/// A tensor as the safetensors writer takes it: its little-endian bytes are made when
/// the writer reaches it.
pub enum SaveView<'a> {
    /// An `f32` tensor.
    F32 {
        /// Its dimensions.
        shape: &'a [usize],
        /// Its values, row-major: as many as the product of `shape`.
        data: &'a [f32],
    },
    /// A batch norm's `num_batches_tracked` (an `i64` zero, for PyTorch).
    Counter,
}

impl View for SaveView<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            SaveView::F32 { .. } => Dtype::F32,
            SaveView::Counter => Dtype::I64,
        }
    }
    fn shape(&self) -> &[usize] {
        match self {
            SaveView::F32 { shape, .. } => shape,
            SaveView::Counter => &[],
        }
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match self {
            SaveView::F32 { data, .. } => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            SaveView::Counter => Cow::Owned(0i64.to_le_bytes().to_vec()),
        }
    }
    fn data_len(&self) -> usize {
        match self {
            SaveView::F32 { data, .. } => data.len() * 4,
            SaveView::Counter => 8,
        }
    }
}

/// Writes `views` (and the header's `metadata`) to `path` as a `.safetensors` file, as
/// [`write_atomic`] does: streamed to the one temporary file beside it, synced, renamed.
///
/// The header is made here rather than by the `safetensors` crate's `serialize_to_file`,
/// which writes through a randomly named temporary file of its own that a killed
/// process leaves behind (200 MB per kill for a ResNet-50 checkpoint) and nothing
/// cleans up. Tensors are laid out 8-byte types first, each group by name, so every
/// tensor is aligned to its element size, and the header is padded with spaces to a
/// multiple of 8 bytes, as the format recommends.
pub fn write_safetensors(
    path: &Path,
    views: BTreeMap<String, SaveView>,
    metadata: Option<HashMap<String, String>>,
) -> std::io::Result<()> {
    let mut order: Vec<(&String, &SaveView)> = views.iter().collect();
    order.sort_by_key(|(_, v)| std::cmp::Reverse(v.dtype().bitsize()));
    let mut header = serde_json::Map::new();
    if let Some(m) = metadata {
        header.insert("__metadata__".into(), serde_json::json!(m));
    }
    let mut offset = 0usize;
    for (name, v) in &order {
        let end = offset + v.data_len();
        header.insert(
            name.to_string(),
            serde_json::json!({
                "dtype": v.dtype(),
                "shape": v.shape(),
                "data_offsets": [offset, end],
            }),
        );
        offset = end;
    }
    let mut text = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
    text.resize(text.len().next_multiple_of(8), b' ');
    write_atomic_with(path, |tmp| {
        let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(tmp)?);
        f.write_all(&(text.len() as u64).to_le_bytes())?;
        f.write_all(&text)?;
        for (_, v) in &order {
            f.write_all(&v.data())?;
        }
        f.flush()
    })
}

/// Writes `bytes` to `path` so that `path` is either its old self or the whole new file,
/// never half-written (a crash, a full disk, Ctrl-C): a temporary file beside it,
/// flushed to disk, then renamed over it. On error the temporary file is removed.
///
/// The temporary file is always `<path>.tmp`: a process killed while writing leaves at
/// most that one file, which the next write of `path` replaces ([`temporary_path`]).
/// A `path` that is a symbolic link is written through (the link's target is replaced,
/// the link kept); a `path` that exists but is not a regular file (a device such as
/// `/dev/full`, a FIFO, a folder) is refused, never replaced by a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |tmp| {
        let mut f = std::fs::File::create(tmp)?;
        f.write_all(bytes)
    })
}

/// The temporary file [`write_atomic`] writes `path` through: `<path>.tmp`.
pub fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Where a write to `path` must go: `path` itself when it is absent or a regular file,
/// the file a symbolic link leads to, or an error for anything else.
fn write_target(path: &Path) -> std::io::Result<PathBuf> {
    let refuse = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{what}: refusing to replace it with a file"),
        )
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(path.to_path_buf()),
        Err(e) => Err(e),
        Ok(m) if m.file_type().is_symlink() => {
            let target = std::fs::canonicalize(path)
                .map_err(|_| refuse("a symbolic link to nothing (dangling)"))?;
            match std::fs::metadata(&target) {
                Ok(m) if m.is_file() => Ok(target),
                _ => Err(refuse(
                    "a symbolic link to something that is not a regular file",
                )),
            }
        }
        Ok(m) if m.is_file() => Ok(path.to_path_buf()),
        Ok(m) if m.is_dir() => Err(refuse("a folder")),
        Ok(_) => Err(refuse("not a regular file (a device, FIFO or socket)")),
    }
}

/// [`write_atomic`] with the temporary file written by `write`.
fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let path = write_target(path)?;
    let tmp = temporary_path(&path);
    let all = || -> std::io::Result<()> {
        write(&tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    all().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Refuses a model whose values cannot be right (NaN, infinities, a negative running
/// variance): run, it would give a confident-looking answer out of NaN.
fn refuse_invalid_values(path: &Path, model: &ResNet) -> Result<(), WeightsError> {
    match model.first_invalid_value() {
        None => Ok(()),
        Some((key, i, v)) => Err(invalid_value(path, &key, i, v)),
    }
}

fn invalid_value(path: &Path, key: &str, i: usize, v: f32) -> WeightsError {
    WeightsError::Refused {
        path: path.to_path_buf(),
        reason: format!(
            "{key}[{i}] is {v}: the weights hold non-finite values or a negative running \
             variance (a diverged run?), refused rather than run"
        ),
    }
}

/// Refuses a file whose own metadata (`arch` or `architecture` in the safetensors
/// header) names an architecture other than `arch`.
///
/// Some networks have exactly the keys and shapes of another and compute a different
/// function (timm's `resnetaa50` and `resnetblur50` look like torchvision's ResNet-50;
/// see docs/resnet.md): where the file says what it is, that is believed over its keys.
fn check_declared_arch(
    arch: Arch,
    path: &Path,
    meta: Option<&HashMap<String, String>>,
) -> Result<(), WeightsError> {
    let Some(meta) = meta else { return Ok(()) };
    for key in ["arch", "architecture"] {
        if let Some(declared) = meta.get(key) {
            refuse_other_arch(
                arch,
                path,
                declared,
                &format!("its metadata says `{key}: {declared}`"),
            )?;
        }
    }
    Ok(())
}

/// Refuses a file with a timm/Hugging Face `config.json` beside it whose
/// `architecture` (or `arch`) is not `arch` (`resnet50.a1_in1k` is `resnet50`, a
/// pretrained tag after the dot; `resnetaa50.a1h_in1k` is not).
fn check_config_beside(arch: Arch, path: &Path) -> Result<(), WeightsError> {
    let config = path.with_file_name("config.json");
    let Ok(len) = crate::files::regular_len(&config) else {
        return Ok(());
    };
    if len > 1 << 20 {
        return Ok(());
    }
    let Ok(text) = std::fs::read(&config) else {
        return Ok(());
    };
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return Ok(());
    };
    for key in ["architecture", "arch"] {
        if let Some(declared) = json.get(key).and_then(|v| v.as_str()) {
            let what = format!("{} says `{key}: {declared}`", config.display());
            refuse_other_arch(arch, path, declared, &what)?;
        }
    }
    Ok(())
}

fn refuse_other_arch(
    arch: Arch,
    path: &Path,
    declared: &str,
    what: &str,
) -> Result<(), WeightsError> {
    // timm names a pretrained variant `<arch>.<tag>`.
    let base = declared.split('.').next().unwrap_or(declared);
    let same = base.parse::<Arch>().is_ok_and(|a| a == arch)
        || base.eq_ignore_ascii_case(&arch.to_string());
    if same {
        return Ok(());
    }
    Err(WeightsError::Refused {
        path: path.to_path_buf(),
        reason: format!(
            "{what}, not {arch}: the file is refused even if its keys fit, because some \
             architectures share {arch}'s keys and shapes but compute another function \
             (see docs/resnet.md)"
        ),
    })
}

/// Turns an I/O error on `path` into a [`WeightsError::Io`] naming it.
fn io_error(path: &Path) -> impl Fn(std::io::Error) -> WeightsError + Copy + '_ {
    move |source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, WeightsError> {
    crate::files::read_regular(path, u64::MAX).map_err(io_error(path))
}

fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>, WeightsError> {
    SafeTensors::deserialize(bytes).map_err(|e| WeightsError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// A safetensors file's header, read and validated on its own.
struct Header {
    meta: Metadata,
    /// Where the tensors' bytes start: after the 8-byte length and the header.
    data_start: u64,
}

impl Header {
    /// The safetensors crate's limit on a header's size.
    const MAX_LEN: u64 = 100_000_000;

    fn read(path: &Path, reader: &mut (impl Read + Seek)) -> Result<Header, WeightsError> {
        let format = |message: String| WeightsError::Format {
            path: path.to_path_buf(),
            message,
        };
        let io = io_error(path);
        let len = reader.seek(SeekFrom::End(0)).map_err(io)?;
        reader.seek(SeekFrom::Start(0)).map_err(io)?;
        if len < 8 {
            return Err(format(format!(
                "{len} bytes, too short for the header's 8-byte length"
            )));
        }
        let mut n = [0u8; 8];
        reader.read_exact(&mut n).map_err(io)?;
        let n = u64::from_le_bytes(n);
        if n > Self::MAX_LEN {
            return Err(format(format!(
                "a header of {n} bytes, over the format's limit of {}",
                Self::MAX_LEN
            )));
        }
        if n > len - 8 {
            return Err(format(format!(
                "a header of {n} bytes, but only {} follow its length",
                len - 8
            )));
        }
        let mut text = vec![0u8; n as usize];
        reader.read_exact(&mut text).map_err(io)?;
        let meta: Metadata = serde_json::from_slice(&text)
            .map_err(|e| format(format!("the header does not parse: {e}")))?;
        let data_start = 8 + n;
        let data = meta.data_len() as u64;
        if data != len - data_start {
            return Err(format(format!(
                "the header's tensors take {data} bytes, but {} follow the header",
                len - data_start
            )));
        }
        Ok(Header { meta, data_start })
    }
}

/// The bytes per element of the dtypes a model loads from (converted to `f32`), or `None`.
fn element_size(dtype: Dtype) -> Option<usize> {
    match dtype {
        Dtype::F32 => Some(4),
        Dtype::F16 | Dtype::BF16 => Some(2),
        _ => None,
    }
}

/// One little-endian element of an accepted dtype, as `f32` (exact: both half formats
/// are subsets of `f32`).
fn to_f32(dtype: Dtype, b: &[u8]) -> f32 {
    match dtype {
        Dtype::F16 => f16_to_f32(u16::from_le_bytes([b[0], b[1]])),
        // bfloat16 is the upper half of an f32.
        Dtype::BF16 => f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16),
        _ => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
    }
}

/// IEEE binary16 to binary32: sign, 5-bit exponent (bias 15), 10-bit fraction;
/// subnormals, infinities and NaN (its payload kept) included.
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match exp {
        // Zero, or a subnormal: frac * 2^-24, exact in f32.
        0 => {
            let v = frac as f32 * 2f32.powi(-24);
            return if sign != 0 { -v } else { v };
        }
        // Infinity or NaN.
        0x1f => sign | 0x7f80_0000 | (frac << 13),
        // Normal: rebias the exponent (127 - 15).
        _ => sign | ((exp + 112) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_values_convert_exactly() {
        let cases: [(u16, f32); 8] = [
            (0x3c00, 1.0),
            (0xc000, -2.0),
            (0x7bff, 65504.0),
            (0x0001, 2f32.powi(-24)),
            (0x03ff, 1023.0 * 2f32.powi(-24)),
            (0x0400, 2f32.powi(-14)),
            (0x7c00, f32::INFINITY),
            (0x3555, 0.333_251_95),
        ];
        for (h, want) in cases {
            assert_eq!(f16_to_f32(h), want, "{h:#06x}");
        }
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert_eq!(to_f32(Dtype::BF16, &0x3f80u16.to_le_bytes()), 1.0);
        assert_eq!(to_f32(Dtype::BF16, &0xc0a0u16.to_le_bytes()), -5.0);
    }

    /// A model whose every value is `k / 256` for `|k| < 256` (exact in f16 and bf16),
    /// saved in `dtype` by the safetensors crate.
    fn half_file(model: &ResNet, dtype: Dtype) -> Vec<u8> {
        let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = model
            .named_tensors()
            .into_iter()
            .map(|n| {
                let bytes = n
                    .tensor
                    .data()
                    .iter()
                    .flat_map(|&v| {
                        let bits = v.to_bits();
                        match dtype {
                            Dtype::BF16 => ((bits >> 16) as u16).to_le_bytes(),
                            // f16 of a value k/256: exponent rebias, 10-bit fraction.
                            _ => {
                                if v == 0.0 {
                                    0u16.to_le_bytes()
                                } else {
                                    let sign = ((bits >> 31) as u16) << 15;
                                    let exp = (((bits >> 23) & 0xff) as u16) - 112;
                                    let frac = ((bits >> 13) & 0x3ff) as u16;
                                    (sign | exp << 10 | frac).to_le_bytes()
                                }
                            }
                        }
                    })
                    .collect();
                (n.name, n.tensor.shape().to_vec(), bytes)
            })
            .collect();
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|(name, shape, bytes)| {
                (
                    name.clone(),
                    TensorView::new(dtype, shape.clone(), bytes).unwrap(),
                )
            })
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    #[test]
    fn f16_and_bf16_files_load_as_their_exact_values() {
        let arch = Arch::Cifar { depth: 20 };
        let mut want = ResNet::new(arch, 10, 1).unwrap();
        let mut k = 0i32;
        for (name, t) in want.named_tensors_mut() {
            let var = name.ends_with(".running_var");
            for v in t.data_mut() {
                k = (k * 37 + 11) % 511;
                *v = if var {
                    (k % 255 + 1) as f32 / 256.0
                } else {
                    (k - 255) as f32 / 256.0
                };
            }
        }
        for dtype in [Dtype::F16, Dtype::BF16] {
            let bytes = half_file(&want, dtype);
            let mut got = ResNet::new(arch, 10, 2).unwrap();
            got.load_safetensors_bytes("half.safetensors", &bytes)
                .unwrap();
            let from_reader = ResNet::from_safetensors_reader(
                arch,
                "half.safetensors",
                std::io::Cursor::new(&bytes),
            )
            .unwrap();
            for model in [&got, &from_reader] {
                for (a, b) in model.named_tensors().iter().zip(want.named_tensors()) {
                    assert_eq!(a.tensor.data(), b.tensor.data(), "{dtype:?} {}", a.name);
                }
            }
        }
    }
}
