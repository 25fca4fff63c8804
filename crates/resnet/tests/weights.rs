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

fn views(entries: &[(String, Vec<usize>, Vec<u8>, Dtype)]) -> Vec<(String, TensorView<'_>)> {
    entries
        .iter()
        .map(|(n, shape, data, dtype)| {
            (
                n.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_file_that_says_it_is_another_architecture_is_refused() {
    let model = cifar(1);
    let entries = entries_of(&model);
    let arch = Arch::Cifar { depth: 20 };
    // Keys and shapes fit; the metadata names another network.
    let meta = std::collections::HashMap::from([("arch".to_string(), "resnetaa50".to_string())]);
    let bytes = safetensors::serialize(views(&entries), Some(meta)).unwrap();
    let e = ResNet::from_safetensors_reader(arch, "aa.safetensors", std::io::Cursor::new(&bytes))
        .unwrap_err();
    assert!(matches!(e, WeightsError::Refused { .. }), "{e}");
    assert!(e.to_string().contains("resnetaa50"), "{e}");
    let mut target = cifar(2);
    assert!(target
        .load_safetensors_bytes("aa.safetensors", &bytes)
        .is_err());
    assert_eq!(target, cifar(2));
    // Metadata naming this architecture (its own name, or timm's `<arch>.<tag>`) is fine.
    for name in ["cifar-resnet20", "cifar-resnet20.my_run"] {
        let meta =
            std::collections::HashMap::from([("architecture".to_string(), name.to_string())]);
        let bytes = safetensors::serialize(views(&entries), Some(meta)).unwrap();
        ResNet::from_safetensors_reader(arch, "ok.safetensors", std::io::Cursor::new(&bytes))
            .unwrap();
    }
    // A timm `config.json` beside the file.
    let dir = temp_dir("config-beside");
    let path = dir.join("model.safetensors");
    model.save_safetensors(&path).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"architecture": "resnetblur50.bt_in1k", "num_classes": 10}"#,
    )
    .unwrap();
    let e = ResNet::from_safetensors(arch, &path)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("config.json") && e.contains("resnetblur50"),
        "{e}"
    );
    assert!(cifar(3).load_safetensors(&path).is_err());
    std::fs::write(
        dir.join("config.json"),
        r#"{"architecture": "cifar-resnet20"}"#,
    )
    .unwrap();
    assert_eq!(ResNet::from_safetensors(arch, &path).unwrap(), model);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn saving_refuses_what_is_not_a_regular_file_and_writes_through_links() {
    let dir = temp_dir("targets");
    let model = cifar(1);
    // A folder, and (on Linux) a device, are never replaced by a file.
    let e = model.save_safetensors(&dir).unwrap_err().to_string();
    assert!(e.contains("folder"), "{e}");
    assert!(dir.is_dir());
    #[cfg(target_os = "linux")]
    {
        let e = resnet::weights::write_atomic(std::path::Path::new("/dev/null"), b"x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        assert!(!std::fs::metadata("/dev/null").unwrap().is_file());
    }
    // A symbolic link is written through: the link stays, its target gets the file.
    #[cfg(unix)]
    {
        let real = dir.join("real.safetensors");
        std::fs::write(&real, b"old").unwrap();
        let link = dir.join("link.safetensors");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        model.save_safetensors(&link).unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            ResNet::from_safetensors(Arch::Cifar { depth: 20 }, &real).unwrap(),
            model
        );
        // A dangling link is refused.
        let dangling = dir.join("dangling.safetensors");
        std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).unwrap();
        assert!(model.save_safetensors(&dangling).is_err());
    }
    // One temporary name: a stale `<file>.tmp` (a killed save) is replaced, never
    // joined by randomly named ones.
    let out = dir.join("w.safetensors");
    std::fs::write(dir.join("w.safetensors.tmp"), b"stale").unwrap();
    model.save_safetensors(&out).unwrap();
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(names.is_empty(), "temporary files left: {names:?}");
    // The file we write is one the safetensors crate reads.
    let bytes = std::fs::read(&out).unwrap();
    safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn inputs_that_are_not_regular_files_are_refused_without_blocking() {
    #[cfg(target_os = "linux")]
    {
        let dir = temp_dir("fifo");
        let fifo = dir.join("w.safetensors");
        let status = std::process::Command::new("mkfifo").arg(&fifo).status();
        if status.is_ok_and(|s| s.success()) {
            let e = ResNet::from_safetensors(Arch::Cifar { depth: 20 }, &fifo).unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{e}");
            assert!(cifar(1).load_safetensors(&fifo).is_err());
        } else {
            panic!("mkfifo is needed for this test");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_file_of_another_depth_says_which_architecture_it_looks_like() {
    for arch in [
        Arch::ResNet18,
        Arch::ResNet34,
        Arch::ResNet50,
        Arch::Cifar { depth: 20 },
        Arch::Cifar { depth: 56 },
        Arch::ResNet26D,
        Arch::ResNet50D,
        Arch::ResNet101D,
    ] {
        let names: Vec<String> = ResNet::new(arch, 10, 0)
            .unwrap()
            .named_tensors()
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(resnet::weights::guess_arch(&names), Some(arch), "{arch}");
    }
    assert_eq!(resnet::weights::guess_arch(&["fc.weight"]), None);
    // A ResNet-18 file given as a ResNet-50, and a CIFAR ResNet-20 as a ResNet-32.
    let dir = temp_dir("looks-like");
    for (saved, asked) in [
        (Arch::ResNet18, Arch::ResNet50),
        (Arch::Cifar { depth: 20 }, Arch::Cifar { depth: 32 }),
        (Arch::WideResNet50_2, Arch::ResNet50),
        (Arch::ResNet50, Arch::WideResNet50_2),
        (Arch::ResNet50D, Arch::ResNet50),
        (Arch::ResNet50, Arch::ResNet50D),
        (Arch::ResNet26D, Arch::ResNet18),
        (Arch::ResNeXt50_32x4d, Arch::ResNet50),
        (Arch::ResNeXt50_32x4d, Arch::WideResNet50_2),
        (Arch::WideResNet50_2, Arch::ResNeXt50_32x4d),
        (Arch::ResNeXt101_64x4d, Arch::ResNeXt101_32x8d),
    ] {
        let path = dir.join(format!("{saved}.safetensors"));
        ResNet::new(saved, 10, 0)
            .unwrap()
            .save_safetensors(&path)
            .unwrap();
        match ResNet::from_safetensors(asked, &path) {
            Err(e @ WeightsError::Mismatch(_)) => {
                let text = e.to_string();
                assert!(text.contains(&format!("looks like {saved}")), "{text}");
            }
            other => panic!("{saved} as {asked}: {other:?}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
