//! Structure-aware fuzzing of the weight loaders: the bytes are not the file but a recipe
//! for one, so that every input is a well-formed header (valid JSON, real key names) and
//! the fuzzer spends its time on shapes, dtypes and offsets, where the plain `weights`
//! target rarely gets past the JSON parser. It found nothing the plain target could not,
//! in principle; in practice the head-of-`[N, 0]` crash needed exactly such a header.
//!
//! Recipe: byte 0 is the number of tensors (mod 6); each tensor takes a key byte (an
//! index into the model's own keys, or a made-up key), a dtype byte, a rank byte (mod 5),
//! one dimension byte per axis (small values, 0, or huge ones) and an offset byte; the
//! rest of the input is the data section.
//!
//! `cargo +nightly fuzz run weights_header fuzz/seeds/weights_header` (from this folder's
//! parent).

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use resnet::{Arch, ResNet};

const ARCH: Arch = Arch::ResNet18;

fn keys() -> &'static [String] {
    static KEYS: OnceLock<Vec<String>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let model = ResNet::new(Arch::Cifar { depth: 20 }, 10, 0).expect("model");
        // The head first (index 0, 1), then the rest, then a key no model has.
        let mut keys: Vec<String> = vec!["fc.weight".into(), "fc.bias".into()];
        keys.extend(model.named_tensors().into_iter().map(|n| n.name));
        keys.push("layer9.0.conv1.weight".into());
        keys
    })
}

fn dim(b: u8) -> u64 {
    match b >> 5 {
        0 => 0,
        1 => 1,
        2 => 512,
        3 => 2048,
        4 => 1 << 31,
        5 => 1 << 62,
        6 => u64::MAX,
        _ => u64::from(b & 31),
    }
}

fuzz_target!(|bytes: &[u8]| {
    let mut it = bytes.iter().copied();
    let mut next = || it.next().unwrap_or(0);
    let count = next() % 6;
    let dtypes = ["F32", "F16", "I64", "U8", "BF16"];
    let mut entries = Vec::new();
    let mut offset = 0u64;
    for _ in 0..count {
        let key = &keys()[usize::from(next()) % keys().len()];
        let dtype = dtypes[usize::from(next()) % dtypes.len()];
        let rank = next() % 5;
        let shape: Vec<u64> = (0..rank).map(|_| dim(next())).collect();
        let len = u64::from(next()) * 4;
        entries.push(format!(
            r#""{key}":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{offset},{}]}}"#,
            offset.saturating_add(len)
        ));
        offset = offset.saturating_add(len);
    }
    let header = format!("{{{}}}", entries.join(","));
    let consumed = bytes.len().min(1 + 5 * usize::from(count) + 8);
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&bytes[consumed.min(bytes.len())..]);
    let _ = ResNet::from_safetensors_reader(ARCH, "fuzz.safetensors", std::io::Cursor::new(&file));
    let _ = ResNet::from_safetensors_reader(
        Arch::Cifar { depth: 20 },
        "fuzz.safetensors",
        std::io::Cursor::new(&file),
    );
});
