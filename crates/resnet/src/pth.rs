//! PyTorch checkpoints (`.pth`, `.pt`): the state dicts `torch.save` writes, read
//! without Python and without executing anything.
//!
//! Since PyTorch 1.6, `torch.save(model.state_dict(), path)` writes a ZIP archive whose
//! entries are stored uncompressed: `NAME/data.pkl`, a pickle describing the dict, and
//! `NAME/data/0`, `NAME/data/1`, ..., the raw little-endian bytes of each storage. The
//! pickle is a small program for Python's pickle machine; a hostile one can name any
//! Python function to call. This reader runs only the handful of instructions a state
//! dict uses, on its own values, and accepts only the globals a state dict names:
//! `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` (a tensor: storage,
//! offset, shape, strides), `torch._utils._rebuild_parameter`, and the typed storages
//! (`torch.FloatStorage`, `HalfStorage`, `BFloat16Storage`, `DoubleStorage`,
//! `LongStorage`, `IntStorage`, ...). Any other global, any other instruction, a
//! compressed entry or a tensor that does not fit its storage is an error naming it.
//! Nothing is ever called: a "global" here is only a name compared with that list.
//!
//! The older (pre-1.6) format, a bare pickle stream, is refused with a message saying
//! how to re-save the file.

use std::collections::HashMap;
use std::path::Path;

use safetensors::Dtype;

use crate::weights::WeightsError;

/// One tensor of a state dict, contiguous, its bytes little-endian.
#[derive(Debug, Clone, PartialEq)]
pub struct PthTensor {
    /// The state-dict key (`layer1.0.conv1.weight`).
    pub name: String,
    /// The element type, as safetensors names it.
    pub dtype: Dtype,
    /// The shape.
    pub shape: Vec<usize>,
    /// `shape.iter().product() * element size` bytes.
    pub data: Vec<u8>,
}

/// The largest `.pth` file read (the whole file is held while it is read).
pub const MAX_FILE: u64 = 4 << 30;

/// True when `head` (a file's first 4 bytes) starts a ZIP archive, as `torch.save`'s
/// files do, or a legacy `torch.save` file (a pickle whose first value is PyTorch's
/// magic number, an 8-byte LONG1; as a safetensors header length those bytes would be
/// far beyond any file's).
pub fn is_torch_file(head: &[u8]) -> bool {
    head.starts_with(b"PK\x03\x04") || matches!(head, [0x80, 2..=5, 0x8a, ..])
}

/// Reads the state dict of the `torch.save` file at `path` (see the module docs).
pub fn read_state_dict(path: impl AsRef<Path>) -> Result<Vec<PthTensor>, WeightsError> {
    let path = path.as_ref();
    let bytes = crate::files::read_regular(path, MAX_FILE).map_err(|source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_state_dict(&bytes).map_err(|message| WeightsError::PyTorch {
        path: path.to_path_buf(),
        message,
    })
}

/// [`read_state_dict`] on the bytes of a file; the error says what is wrong.
pub fn parse_state_dict(bytes: &[u8]) -> Result<Vec<PthTensor>, String> {
    if !bytes.starts_with(b"PK\x03\x04") {
        if bytes.first() == Some(&0x80) {
            return Err(
                "this is the legacy (before PyTorch 1.6) torch.save format; load it \
                        in PyTorch and save it again (torch.save writes the ZIP format since \
                        1.6), or convert it to .safetensors"
                    .into(),
            );
        }
        return Err("not a ZIP archive (torch.save's format)".into());
    }
    let zip = Zip::parse(bytes)?;
    let pkl: Vec<&str> = zip
        .names()
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .collect();
    let [pkl] = pkl[..] else {
        return Err(format!(
            "expected one `NAME/data.pkl` entry, found {}",
            pkl.len()
        ));
    };
    let prefix = &pkl[..pkl.len() - "data.pkl".len()];
    if let Some(order) = zip.get(&format!("{prefix}byteorder"))? {
        if order != b"little" {
            return Err(format!(
                "byte order {:?}: only little-endian files are read",
                String::from_utf8_lossy(order)
            ));
        }
    }
    let root = Machine::run(zip.get(pkl)?.unwrap_or_default())?;
    let Value::Dict(items) = root else {
        return Err(format!(
            "the pickle holds {}, not a state dict (a dict of tensors); save \
             model.state_dict()",
            root.kind()
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    let mut storages: HashMap<String, &[u8]> = HashMap::new();
    for (key, value) in items {
        let Value::Str(name) = key else {
            return Err(format!("a state-dict key is {}, not a string", key.kind()));
        };
        let Value::Tensor(t) = value else {
            return Err(format!(
                "`{name}` is {}, not a tensor: a state dict holds tensors only (for a \
                 training checkpoint, save its model's state dict)",
                value.kind()
            ));
        };
        let storage = match storages.get(&t.key) {
            Some(s) => *s,
            None => {
                let entry = format!("{prefix}data/{}", t.key);
                let data = zip
                    .get(&entry)?
                    .ok_or_else(|| format!("`{name}`: storage entry {entry} is missing"))?;
                storages.insert(t.key.clone(), data);
                data
            }
        };
        out.push(t.materialize(name, storage)?);
    }
    Ok(out)
}

// ---- ZIP (stored entries, ZIP64 included) ----

struct Zip<'a> {
    bytes: &'a [u8],
    /// Name, then (offset of the local header, size).
    entries: Vec<(String, u64, u64)>,
}

fn le(bytes: &[u8], at: usize, n: usize) -> Result<u64, String> {
    let end = at.checked_add(n).ok_or("offset overflow")?;
    let b = bytes.get(at..end).ok_or("the archive is truncated")?;
    Ok(b.iter().rev().fold(0u64, |v, &x| (v << 8) | u64::from(x)))
}

impl<'a> Zip<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, String> {
        // The end-of-central-directory record: within the last 64 KiB + 22 bytes.
        let start = bytes.len().saturating_sub(65_557);
        let eocd = (start..bytes.len().saturating_sub(21))
            .rev()
            .find(|&i| bytes[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
            .ok_or("no ZIP end-of-directory record (truncated?)")?;
        let mut count = le(bytes, eocd + 10, 2)?;
        let mut dir_size = le(bytes, eocd + 12, 4)?;
        let mut dir_at = le(bytes, eocd + 16, 4)?;
        if count == 0xffff || dir_size == 0xffff_ffff || dir_at == 0xffff_ffff {
            // ZIP64: a locator just before, pointing at the ZIP64 record.
            let loc = eocd.checked_sub(20).ok_or("truncated ZIP64 locator")?;
            if le(bytes, loc, 4)? != 0x0706_4b50 {
                return Err("ZIP64 sizes without a ZIP64 locator".into());
            }
            let rec = usize::try_from(le(bytes, loc + 8, 8)?).map_err(|_| "bad ZIP64 offset")?;
            if le(bytes, rec, 4)? != 0x0606_4b50 {
                return Err("bad ZIP64 end-of-directory record".into());
            }
            count = le(bytes, rec + 32, 8)?;
            dir_size = le(bytes, rec + 40, 8)?;
            dir_at = le(bytes, rec + 48, 8)?;
        }
        let dir_end = dir_at
            .checked_add(dir_size)
            .filter(|&e| e <= bytes.len() as u64)
            .ok_or("the central directory lies outside the file")?;
        // Each entry takes at least 46 bytes: a count beyond that is a lie.
        if count > dir_size / 46 + 1 {
            return Err(format!(
                "{count} entries cannot fit a {dir_size}-byte directory"
            ));
        }
        let mut entries = Vec::with_capacity(count as usize);
        let mut at = dir_at as usize;
        for _ in 0..count {
            if le(bytes, at, 4)? != 0x0201_4b50 {
                return Err("bad central-directory entry".into());
            }
            let method = le(bytes, at + 10, 2)?;
            let mut packed = le(bytes, at + 20, 4)?;
            let mut size = le(bytes, at + 24, 4)?;
            let name_len = le(bytes, at + 28, 2)? as usize;
            let extra_len = le(bytes, at + 30, 2)? as usize;
            let comment_len = le(bytes, at + 32, 2)? as usize;
            let mut local = le(bytes, at + 42, 4)?;
            let name_at = at + 46;
            let name = bytes
                .get(name_at..name_at + name_len)
                .ok_or("the archive is truncated")?;
            let name = String::from_utf8_lossy(name).into_owned();
            // ZIP64 extra field: the 64-bit values of the fields set to 0xffffffff.
            let mut e = name_at + name_len;
            let extra_end = e + extra_len;
            while e + 4 <= extra_end {
                let (id, len) = (le(bytes, e, 2)?, le(bytes, e + 2, 2)? as usize);
                if id == 1 {
                    let mut f = e + 4;
                    for field in [&mut size, &mut packed, &mut local] {
                        if *field == 0xffff_ffff && f + 8 <= e + 4 + len {
                            *field = le(bytes, f, 8)?;
                            f += 8;
                        }
                    }
                }
                e += 4 + len;
            }
            if method != 0 || packed != size {
                return Err(format!(
                    "entry {name} is compressed (method {method}): torch.save stores entries \
                     uncompressed"
                ));
            }
            entries.push((name, local, size));
            at = extra_end + comment_len;
            if at as u64 > dir_end {
                return Err("the central directory overruns its size".into());
            }
        }
        Ok(Zip { bytes, entries })
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _, _)| n.as_str())
    }

    /// The bytes of entry `name`, `None` if there is none.
    fn get(&self, name: &str) -> Result<Option<&'a [u8]>, String> {
        let Some(&(_, local, size)) = self.entries.iter().find(|(n, _, _)| n == name) else {
            return Ok(None);
        };
        let local = usize::try_from(local).map_err(|_| "bad entry offset")?;
        if le(self.bytes, local, 4)? != 0x0403_4b50 {
            return Err(format!("entry {name}: bad local header"));
        }
        let start = local
            + 30
            + le(self.bytes, local + 26, 2)? as usize
            + le(self.bytes, local + 28, 2)? as usize;
        let end = usize::try_from(size)
            .ok()
            .and_then(|s| start.checked_add(s))
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("entry {name} lies outside the file"))?;
        Ok(Some(&self.bytes[start..end]))
    }
}

// ---- The pickle subset ----

/// The element types of PyTorch's typed storages.
fn storage_dtype(name: &str) -> Option<Dtype> {
    Some(match name {
        "FloatStorage" => Dtype::F32,
        "HalfStorage" => Dtype::F16,
        "BFloat16Storage" => Dtype::BF16,
        "DoubleStorage" => Dtype::F64,
        "LongStorage" => Dtype::I64,
        "IntStorage" => Dtype::I32,
        "ShortStorage" => Dtype::I16,
        "CharStorage" => Dtype::I8,
        "ByteStorage" => Dtype::U8,
        "BoolStorage" => Dtype::BOOL,
        _ => return None,
    })
}

fn dtype_size(d: Dtype) -> usize {
    match d {
        Dtype::F64 | Dtype::I64 => 8,
        Dtype::F32 | Dtype::I32 => 4,
        Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
        _ => 1,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    Storage(Dtype),
}

impl Global {
    fn named(module: &str, name: &str) -> Result<Global, String> {
        match (module, name) {
            ("collections", "OrderedDict") => Ok(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensor),
            ("torch._utils", "_rebuild_parameter") => Ok(Global::RebuildParameter),
            ("torch", s) if storage_dtype(s).is_some() => {
                Ok(Global::Storage(storage_dtype(s).unwrap_or(Dtype::U8)))
            }
            _ => Err(format!(
                "the pickle names {module}.{name}, which is not part of a state dict: \
                 refused (nothing is executed)"
            )),
        }
    }
}

/// A tensor as the pickle describes it: a view of a storage.
#[derive(Debug, Clone, PartialEq)]
struct TensorRef {
    dtype: Dtype,
    key: String,
    numel: u64,
    offset: u64,
    shape: Vec<u64>,
    stride: Vec<u64>,
}

impl TensorRef {
    /// The tensor's bytes from its storage's; only a contiguous view is accepted.
    fn materialize(self, name: String, storage: &[u8]) -> Result<PthTensor, String> {
        let size = dtype_size(self.dtype) as u64;
        if (storage.len() as u64) < self.numel.saturating_mul(size) {
            return Err(format!(
                "`{name}`: its storage has {} bytes, less than {} elements",
                storage.len(),
                self.numel
            ));
        }
        let mut expect = 1u64;
        let mut count = 1u64;
        for (&n, &s) in self.shape.iter().zip(&self.stride).rev() {
            if n != 1 && s != expect {
                return Err(format!(
                    "`{name}` is not contiguous (shape {:?}, strides {:?}): save \
                     tensor.contiguous()",
                    self.shape, self.stride
                ));
            }
            expect = expect.saturating_mul(n);
            count = count
                .checked_mul(n)
                .ok_or_else(|| format!("`{name}`: shape overflows"))?;
        }
        let end = self
            .offset
            .checked_add(count)
            .filter(|&e| e <= self.numel)
            .ok_or_else(|| {
                format!(
                    "`{name}`: {count} elements from offset {} overrun its storage of {}",
                    self.offset, self.numel
                )
            })?;
        let bytes = &storage[(self.offset * size) as usize..(end * size) as usize];
        Ok(PthTensor {
            name,
            dtype: self.dtype,
            shape: self.shape.iter().map(|&n| n as usize).collect(),
            data: bytes.to_vec(),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Mark,
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(Global),
    Storage {
        dtype: Dtype,
        key: String,
        numel: u64,
    },
    Tensor(TensorRef),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Mark => "a mark",
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an int",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Global(_) => "a class",
            Value::Storage { .. } => "a storage",
            Value::Tensor(_) => "a tensor",
        }
    }

    /// True when containers nest deeper than `limit` (a state dict nests 3 deep; a
    /// hostile chain of millions would overflow the stack when dropped).
    fn deeper_than(&self, limit: usize) -> bool {
        let children: &[Value] = match self {
            Value::Tuple(v) | Value::List(v) => v,
            Value::Dict(d) => {
                return limit == 0
                    || d.iter()
                        .any(|(k, v)| k.deeper_than(limit - 1) || v.deeper_than(limit - 1))
            }
            _ => return false,
        };
        limit == 0 || children.iter().any(|c| c.deeper_than(limit - 1))
    }

    /// How many values a clone copies (to bound what memo reads can cost).
    fn weight(&self) -> usize {
        match self {
            Value::Tuple(v) | Value::List(v) => 1 + v.iter().map(Value::weight).sum::<usize>(),
            Value::Dict(d) => {
                1 + d
                    .iter()
                    .map(|(k, v)| k.weight() + v.weight())
                    .sum::<usize>()
            }
            _ => 1,
        }
    }

    fn int(&self) -> Result<u64, String> {
        match self {
            Value::Int(i) if *i >= 0 => Ok(*i as u64),
            other => Err(format!("expected a count, found {}", other.kind())),
        }
    }

    fn ints(&self) -> Result<Vec<u64>, String> {
        match self {
            Value::Tuple(v) => v.iter().map(Value::int).collect(),
            other => Err(format!(
                "expected a tuple of counts, found {}",
                other.kind()
            )),
        }
    }
}

/// The pickle machine, restricted (see the module docs).
struct Machine<'a> {
    code: &'a [u8],
    at: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
    /// Values copied so far by memo reads.
    copied: usize,
}

/// The deepest nesting of containers accepted.
const MAX_DEPTH: usize = 32;

/// More values than any state dict needs: a bound against hostile input.
const MAX_STACK: usize = 1 << 20;

impl<'a> Machine<'a> {
    fn run(code: &'a [u8]) -> Result<Value, String> {
        let mut m = Machine {
            code,
            at: 0,
            stack: Vec::new(),
            memo: HashMap::new(),
            copied: 0,
        };
        m.exec()
            .map_err(|e| format!("pickle at byte {}: {e}", m.at))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).ok_or("length overflow")?;
        let b = self
            .code
            .get(self.at..end)
            .ok_or("the pickle is truncated")?;
        self.at = end;
        Ok(b)
    }

    fn uint(&mut self, n: usize) -> Result<u64, String> {
        let b = self.take(n)?;
        Ok(b.iter().rev().fold(0u64, |v, &x| (v << 8) | u64::from(x)))
    }

    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.code[self.at..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("unterminated line")?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| "a name that is not UTF-8")?;
        self.at += n + 1;
        Ok(s)
    }

    fn push(&mut self, v: Value) -> Result<(), String> {
        if self.stack.len() >= MAX_STACK {
            return Err("the stack grows past any state dict's".into());
        }
        if v.deeper_than(MAX_DEPTH) {
            return Err(format!("values nest deeper than {MAX_DEPTH}"));
        }
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value, String> {
        match self.stack.pop() {
            Some(Value::Mark) | None => Err("the stack is empty".into()),
            Some(v) => Ok(v),
        }
    }

    /// The values above the topmost mark, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self
            .stack
            .iter()
            .rposition(|v| *v == Value::Mark)
            .ok_or("no mark on the stack")?;
        let items = self.stack.split_off(mark + 1);
        self.stack.pop();
        Ok(items)
    }

    fn text(&mut self, n: usize) -> Result<Value, String> {
        let b = self.take(n)?;
        Ok(Value::Str(
            std::str::from_utf8(b)
                .map_err(|_| "a string that is not UTF-8")?
                .to_string(),
        ))
    }

    fn memo_put(&mut self, key: u32) -> Result<(), String> {
        let top = self.stack.last().ok_or("memo of an empty stack")?.clone();
        if top == Value::Mark {
            return Err("memo of a mark".into());
        }
        if self.memo.len() >= MAX_STACK {
            return Err("the memo grows past any state dict's".into());
        }
        self.memo.insert(key, top);
        Ok(())
    }

    fn exec(&mut self) -> Result<Value, String> {
        loop {
            let op = self.take(1)?[0];
            match op {
                0x80 => {
                    let p = self.uint(1)?;
                    if p > 5 {
                        return Err(format!("pickle protocol {p}"));
                    }
                }
                0x95 => {
                    self.take(8)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = Global::named(module, name)?;
                    self.push(Value::Global(g))?;
                }
                0x93 => {
                    let (Value::Str(name), Value::Str(module)) = (self.pop()?, self.pop()?) else {
                        return Err("STACK_GLOBAL without two strings".into());
                    };
                    let g = Global::named(&module, &name)?;
                    self.push(Value::Global(g))?;
                }
                b'(' => self.push(Value::Mark)?,
                b')' => self.push(Value::Tuple(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(items))?;
                }
                b'}' => self.push(Value::Dict(Vec::new()))?,
                b']' => self.push(Value::List(Vec::new()))?,
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = self.uint(4)? as u32 as i32;
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'K' => {
                    let v = self.uint(1)?;
                    self.push(Value::Int(v as i64))?;
                }
                b'M' => {
                    let v = self.uint(2)?;
                    self.push(Value::Int(v as i64))?;
                }
                0x8a => {
                    let n = self.uint(1)? as usize;
                    if n > 8 {
                        return Err(format!("a {n}-byte integer"));
                    }
                    let b = self.take(n)?;
                    let mut v = b.iter().rev().fold(0i64, |v, &x| (v << 8) | i64::from(x));
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.push(Value::Int(v))?;
                }
                b'G' => {
                    let b = self.take(8)?;
                    let v = f64::from_be_bytes(b.try_into().map_err(|_| "short float")?);
                    self.push(Value::Float(v))?;
                }
                b'X' => {
                    let n = self.uint(4)? as usize;
                    let v = self.text(n)?;
                    self.push(v)?;
                }
                0x8c => {
                    let n = self.uint(1)? as usize;
                    let v = self.text(n)?;
                    self.push(v)?;
                }
                0x8d => {
                    let n = usize::try_from(self.uint(8)?).map_err(|_| "string too long")?;
                    let v = self.text(n)?;
                    self.push(v)?;
                }
                b'T' | b'U' | b'B' | b'C' => {
                    let n = self.uint(if matches!(op, b'T' | b'B') { 4 } else { 1 })? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?;
                }
                b'q' => {
                    let k = self.uint(1)? as u32;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.uint(4)? as u32;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?;
                }
                b'h' | b'j' => {
                    let k = self.uint(if op == b'h' { 1 } else { 4 })? as u32;
                    let v = self.memo.get(&k).ok_or("a memo entry that was never set")?;
                    self.copied = self.copied.saturating_add(v.weight());
                    if self.copied > MAX_STACK * 16 {
                        return Err("memo reads copy more than any state dict needs".into());
                    }
                    let v = v.clone();
                    self.push(v)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = persistent(pid)?;
                    self.push(v)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = reduce(f, args)?;
                    self.push(v)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    nests(&[&k, &v])?;
                    match self.stack.last_mut() {
                        Some(Value::Dict(d)) => d.push((k, v)),
                        _ => return Err("SETITEM on something that is not a dict".into()),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err("SETITEMS with an odd number of values".into());
                    }
                    nests(&items.iter().collect::<Vec<_>>())?;
                    let Some(Value::Dict(d)) = self.stack.last_mut() else {
                        return Err("SETITEMS on something that is not a dict".into());
                    };
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        d.push((k, v));
                    }
                }
                b'a' => {
                    let v = self.pop()?;
                    nests(&[&v])?;
                    match self.stack.last_mut() {
                        Some(Value::List(l)) => l.push(v),
                        _ => return Err("APPEND on something that is not a list".into()),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    nests(&items.iter().collect::<Vec<_>>())?;
                    match self.stack.last_mut() {
                        Some(Value::List(l)) => l.extend(items),
                        _ => return Err("APPENDS on something that is not a list".into()),
                    }
                }
                b'b' => {
                    // A state dict's `_metadata` attribute (per-module versions): not needed.
                    let _state = self.pop()?;
                    if !matches!(self.stack.last(), Some(Value::Dict(_))) {
                        return Err("BUILD on something that is not the state dict".into());
                    }
                }
                b'.' => {
                    let v = self.pop()?;
                    return Ok(v);
                }
                other => {
                    return Err(format!(
                        "pickle instruction 0x{other:02x} is not used by a state dict: refused"
                    ))
                }
            }
        }
    }
}

/// Refuses values that would nest too deep once put into a container.
fn nests(values: &[&Value]) -> Result<(), String> {
    if values.iter().any(|v| v.deeper_than(MAX_DEPTH - 1)) {
        return Err(format!("values nest deeper than {MAX_DEPTH}"));
    }
    Ok(())
}

/// A persistent id: `('storage', torch.XStorage, key, location, numel)`.
fn persistent(pid: Value) -> Result<Value, String> {
    let Value::Tuple(t) = pid else {
        return Err(format!("a persistent id that is {}", pid.kind()));
    };
    match &t[..] {
        [Value::Str(tag), Value::Global(Global::Storage(dtype)), Value::Str(key), _, numel]
            if tag == "storage" =>
        {
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("storage key {key:?}"));
            }
            Ok(Value::Storage {
                dtype: *dtype,
                key: key.clone(),
                numel: numel.int()?,
            })
        }
        _ => Err("a persistent id that is not a typed storage".into()),
    }
}

/// `f(*args)` for the few callables allowed.
fn reduce(f: Value, args: Value) -> Result<Value, String> {
    let Value::Tuple(args) = args else {
        return Err(format!("call arguments that are {}", args.kind()));
    };
    match f {
        Value::Global(Global::OrderedDict) if args.is_empty() => Ok(Value::Dict(Vec::new())),
        Value::Global(Global::RebuildTensor) => match &args[..] {
            [Value::Storage { dtype, key, numel }, offset, shape, stride, ..] => {
                let (shape, stride) = (shape.ints()?, stride.ints()?);
                if shape.len() != stride.len() || shape.len() > 8 {
                    return Err(format!(
                        "a tensor of shape {shape:?} and strides {stride:?}"
                    ));
                }
                Ok(Value::Tensor(TensorRef {
                    dtype: *dtype,
                    key: key.clone(),
                    numel: *numel,
                    offset: offset.int()?,
                    shape,
                    stride,
                }))
            }
            _ => Err("_rebuild_tensor_v2 with arguments it does not take".into()),
        },
        Value::Global(Global::RebuildParameter) => match args.into_iter().next() {
            Some(t @ Value::Tensor(_)) => Ok(t),
            _ => Err("_rebuild_parameter without a tensor".into()),
        },
        other => Err(format!(
            "a call of {} with {} arguments",
            other.kind(),
            args.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_written_state_dict_parses_and_hostile_pickles_are_refused() {
        // {'w': tensor of 2 floats from storage '0'}, pickled by hand (protocol 2).
        let mut p = vec![0x80, 2];
        p.extend_from_slice(b"ccollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00w");
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.extend_from_slice(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x02tQ");
        p.extend_from_slice(b"K\x00K\x02\x85K\x01\x85\x89)tRu.");
        let v = Machine::run(&p).unwrap();
        let Value::Dict(items) = v else {
            panic!("{v:?}")
        };
        assert_eq!(items.len(), 1);
        let Value::Tensor(t) = &items[0].1 else {
            panic!()
        };
        let storage = [0u8, 0, 128, 63, 0, 0, 0, 64];
        let t = t.clone().materialize("w".into(), &storage).unwrap();
        assert_eq!((t.shape.clone(), t.data), (vec![2], storage.to_vec()));
        // A global outside the list is refused by name; so is an unknown instruction.
        let e = Machine::run(b"\x80\x02cposix\nsystem\n.").unwrap_err();
        assert!(e.contains("posix.system") && e.contains("refused"), "{e}");
        let e = Machine::run(b"\x80\x02I1\n.").unwrap_err();
        assert!(e.contains("0x49"), "{e}");
        // A view past its storage's end.
        let t = TensorRef {
            dtype: Dtype::F32,
            key: "0".into(),
            numel: 2,
            offset: 1,
            shape: vec![2],
            stride: vec![1],
        };
        assert!(t.materialize("w".into(), &storage).is_err());
        assert!(parse_state_dict(b"\x80\x02}.")
            .unwrap_err()
            .contains("legacy"));
        // A million nested tuples, or a chain built by SETITEM: refused, not a crash.
        let mut deep = vec![0x80, 2, b'N'];
        deep.extend(std::iter::repeat_n(0x85u8, 1_000_000));
        deep.push(b'.');
        assert!(Machine::run(&deep).unwrap_err().contains("nest"));
        let mut chain = vec![0x80, 2];
        for _ in 0..100 {
            chain.extend_from_slice(b"}K\x00");
        }
        chain.push(b'}');
        chain.extend(std::iter::repeat_n(b's', 100));
        chain.push(b'.');
        assert!(Machine::run(&chain).unwrap_err().contains("nest"));
        assert!(parse_state_dict(b"PK\x03\x04").is_err());
    }
}
