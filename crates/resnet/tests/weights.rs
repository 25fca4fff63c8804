//! `.safetensors` weights: round trips, strict loading that names every problem, and
//! clear errors (never panics) for truncated, malformed and hostile files.

use std::path::PathBuf;

use resnet::{Arch, ResNet, WeightsError};
use safetensors::tensor::{Dtype, TensorView};

fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("resnet-weights-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn cifar(seed: u64) -> ResNet {
    ResNet::new(Arch::Cifar { depth: 20 }, 10, seed).unwrap()
}

/// Serialises `(name, shape, f32 values)` triples, plus optional raw views.
fn write_file(entries: Vec<(String, Vec<usize>, Vec<u8>, Dtype)>) -> Vec<u8> {
    let views: Vec<(String, TensorView)> = entries
        .iter()
        .map(|(n, shape, data, dtype)| {
            (
                n.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn entries_of(model: &ResNet) -> Vec<(String, Vec<usize>, Vec<u8>, Dtype)> {
    model
        .named_tensors()
        .into_iter()
        .map(|n| {
            let bytes = n
                .tensor
                .data()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            (n.name, n.tensor.shape().to_vec(), bytes, Dtype::F32)
        })
        .collect()
}

#[test]
fn named_tensors_and_named_tensors_mut_agree() {
    let mut m = ResNet::new(Arch::ResNet50, 1000, 0).unwrap();
    let a: Vec<(String, Vec<usize>)> = m
        .named_tensors()
        .into_iter()
        .map(|n| (n.name, n.tensor.shape().to_vec()))
        .collect();
    let b: Vec<(String, Vec<usize>)> = m
        .named_tensors_mut()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec()))
        .collect();
    assert_eq!(a, b);
}

#[test]
fn save_then_load_round_trips_exactly() {
    let dir = temp_dir("roundtrip");
    let path = dir.join("model.safetensors");
    let a = cifar(1);
    a.save_safetensors(&path).unwrap();
    assert!(
        !dir.join("model.safetensors.tmp").exists(),
        "the temporary file is renamed away"
    );
    let mut b = cifar(2);
    assert_ne!(a, b);
    b.load_safetensors(&path).unwrap();
    assert_eq!(a, b);
    let c = ResNet::from_safetensors(Arch::Cifar { depth: 20 }, &path).unwrap();
    assert_eq!(a, c);
    // The saved file carries PyTorch's batch-norm counters, for strict loading there.
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(file.tensor("bn1.num_batches_tracked").is_ok());
    assert!(file.tensor("layer3.2.bn2.num_batches_tracked").is_ok());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn head_size_comes_from_the_file() {
    let dir = temp_dir("head");
    let path = dir.join("m.safetensors");
    ResNet::new(Arch::Cifar { depth: 20 }, 7, 3)
        .unwrap()
        .save_safetensors(&path)
        .unwrap();
    let m = ResNet::from_safetensors(Arch::Cifar { depth: 20 }, &path).unwrap();
    assert_eq!(m.num_classes(), 7);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn strict_loading_names_every_problem_and_changes_nothing() {
    let source = cifar(1);
    let mut entries = entries_of(&source);
    // Remove one key, add an unknown one, change a shape, change a dtype, and add a
    // num_batches_tracked (which must be accepted).
    entries.retain(|(n, ..)| n != "layer2.1.conv2.weight");
    entries.push((
        "layer9.0.conv1.weight".into(),
        vec![1],
        vec![0; 4],
        Dtype::F32,
    ));
    for e in entries.iter_mut() {
        if e.0 == "fc.bias" {
            *e = (e.0.clone(), vec![11], vec![0; 44], Dtype::F32);
        }
        if e.0 == "bn1.running_mean" {
            *e = (e.0.clone(), vec![16], vec![0; 128], Dtype::F64);
        }
    }
    entries.push((
        "bn1.num_batches_tracked".into(),
        vec![],
        vec![0; 8],
        Dtype::I64,
    ));
    let bytes = write_file(entries);
    let mut target = cifar(2);
    let before = target.clone();
    let err = target
        .load_safetensors_bytes("bad.safetensors", &bytes)
        .unwrap_err();
    match &err {
        WeightsError::Mismatch(m) => {
            let (missing, unexpected) = (&m.missing, &m.unexpected);
            let (wrong_shape, wrong_dtype) = (&m.wrong_shape, &m.wrong_dtype);
            assert_eq!(missing, &["layer2.1.conv2.weight".to_string()]);
            assert_eq!(unexpected, &["layer9.0.conv1.weight".to_string()]);
            assert_eq!(wrong_shape, &[("fc.bias".to_string(), vec![10], vec![11])]);
            assert_eq!(
                wrong_dtype,
                &[("bn1.running_mean".to_string(), "F64".to_string())]
            );
        }
        other => panic!("expected a mismatch, got {other}"),
    }
    let msg = err.to_string();
    for needle in [
        "bad.safetensors",
        "layer2.1.conv2.weight",
        "layer9.0.conv1.weight",
        "fc.bias",
        "[11]",
        "F64",
    ] {
        assert!(msg.contains(needle), "message lacks {needle}: {msg}");
    }
    assert_eq!(target, before, "a failed load must not change the model");
    // Streamed from a reader, the same file fails with the same list.
    let streamed = ResNet::from_safetensors_reader(
        Arch::Cifar { depth: 20 },
        "bad.safetensors",
        std::io::Cursor::new(&bytes),
    )
    .unwrap_err();
    match (&streamed, &err) {
        (WeightsError::Mismatch(a), WeightsError::Mismatch(b)) => assert_eq!(a, b),
        other => panic!("expected two mismatches, got {other:?}"),
    }
    // The same file for another architecture fails too, naming what is missing.
    let mut other = ResNet::new(Arch::Cifar { depth: 32 }, 10, 0).unwrap();
    let ok_bytes = write_file(entries_of(&source));
    let err = other
        .load_safetensors_bytes("r20.safetensors", &ok_bytes)
        .unwrap_err();
    assert!(err.to_string().contains("layer1.3.conv1.weight"), "{err}");
}

#[test]
fn truncated_malformed_and_hostile_files_are_errors() {
    let good = write_file(entries_of(&cifar(1)));
    let mut target = cifar(2);
    // Both ways in: the whole file in memory, and streamed from a reader.
    let streamed = |name: &str, bytes: &[u8]| {
        ResNet::from_safetensors_reader(
            Arch::Cifar { depth: 20 },
            name,
            std::io::Cursor::new(bytes),
        )
        .map(|_| ())
    };
    // Every truncation point in the header, and a few in the data.
    let cuts: Vec<usize> = (0..64).chain([good.len() / 2, good.len() - 1]).collect();
    for cut in cuts {
        let r = target.load_safetensors_bytes("cut.safetensors", &good[..cut]);
        assert!(
            matches!(r, Err(WeightsError::Format { .. })),
            "cut at {cut}: {r:?}"
        );
        let r = streamed("cut.safetensors", &good[..cut]);
        assert!(
            matches!(r, Err(WeightsError::Format { .. })),
            "streamed, cut at {cut}: {r:?}"
        );
    }
    assert!(streamed("good.safetensors", &good).is_ok());
    // A header that lies: offsets far past the end of the data.
    let header = br#"{"fc.bias":{"dtype":"F32","shape":[10],"data_offsets":[0,4000000]}}"#;
    let mut lying = (header.len() as u64).to_le_bytes().to_vec();
    lying.extend_from_slice(header);
    lying.extend_from_slice(&[0u8; 40]);
    assert!(matches!(
        target.load_safetensors_bytes("lie.safetensors", &lying),
        Err(WeightsError::Format { .. })
    ));
    assert!(matches!(
        streamed("lie.safetensors", &lying),
        Err(WeightsError::Format { .. })
    ));
    // A header length larger than the file, and plain garbage.
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    assert!(target
        .load_safetensors_bytes("huge.safetensors", &huge)
        .is_err());
    assert!(target
        .load_safetensors_bytes("junk.safetensors", b"not a weights file at all")
        .is_err());
    for (name, bytes) in [
        ("huge.safetensors", &huge[..]),
        ("junk.safetensors", b"not a weights file at all"),
    ] {
        let err = streamed(name, bytes).unwrap_err();
        assert!(matches!(err, WeightsError::Format { .. }), "{err}");
        assert!(err.to_string().contains(name), "{err}");
    }
    let err = ResNet::from_safetensors(Arch::Cifar { depth: 20 }, "/nonexistent/w.safetensors")
        .unwrap_err();
    assert!(matches!(err, WeightsError::Io { .. }));
    // A missing file names its path.
    let err = target
        .load_safetensors("/nonexistent/dir/w.safetensors")
        .unwrap_err();
    assert!(matches!(err, WeightsError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/dir/w.safetensors"));
    assert_eq!(target, cifar(2));
}

#[test]
fn saving_into_a_missing_folder_is_an_error_and_leaves_nothing_behind() {
    let err = cifar(1)
        .save_safetensors("/nonexistent/dir/out.safetensors")
        .unwrap_err();
    assert!(matches!(err, WeightsError::Io { .. }), "{err}");
}

/// A tiny file whose only tensor is `fc.weight` of `shape` (no data when a dimension is 0).
fn head_only(shape: &str) -> Vec<u8> {
    let header =
        format!(r#"{{"fc.weight":{{"dtype":"F32","shape":{shape},"data_offsets":[0,0]}}}}"#);
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes
}

#[test]
fn a_head_of_zero_or_absurd_size_is_refused_before_anything_is_allocated() {
    // An 80-byte file with `fc.weight` of shape `[N, 0]` used to make the loader allocate
    // `N * 512` floats (an abort for N = 4e8, an overflow for N = 2^62) before any check.
    for (arch, shape) in [
        (Arch::ResNet18, "[400000000,0]"),
        (Arch::ResNet18, "[4611686018427387904,0]"),
        (Arch::ResNet50, "[100000000000,0]"),
        (Arch::Cifar { depth: 20 }, "[0,64]"),
        (Arch::ResNet18, "[0,512]"),
    ] {
        let bytes = head_only(shape);
        let r =
            ResNet::from_safetensors_reader(arch, "head.safetensors", std::io::Cursor::new(&bytes));
        let e = r.expect_err(shape).to_string();
        assert!(
            e.contains("head.safetensors") && e.contains("fc.weight"),
            "{shape}: {e}"
        );
    }
    // A 0-class head is refused by the constructor too (it used to build, then
    // `classify` panicked on it).
    let e = ResNet::new(Arch::Cifar { depth: 20 }, 0, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("num_classes is 0"), "{e}");
    assert!(ResNet::new(Arch::ResNet50, usize::MAX / 2, 1).is_err());
}
