//! The `resnet` tool on careless and hostile input: every case here once panicked,
//! hung, lost data or claimed a success it did not have. Each must now end with a clear
//! error (or the right output), never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use resnet::{Arch, ResNet};

fn resnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(args)
        .output()
        .expect("the resnet binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Fails on a panic, and on success when `ok` is false (or failure when it is true).
fn expect(o: &Output, ok: bool, what: &str) -> String {
    let t = text(o);
    assert!(!t.contains("panicked"), "{what}: panicked:\n{t}");
    assert_eq!(o.status.success(), ok, "{what}: exit {:?}:\n{t}", o.status);
    t
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("resnet-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn photo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../resnet/tests/images/chelsea.png")
}

/// A CIFAR ResNet-20 of `classes` classes saved in `dir`.
fn weights(dir: &Path, classes: usize) -> PathBuf {
    let path = dir.join("w.safetensors");
    ResNet::new(Arch::Cifar { depth: 20 }, classes, 1)
        .unwrap()
        .save_safetensors(&path)
        .unwrap();
    path
}

#[test]
fn bench_refuses_an_absurd_time_budget() {
    for s in ["1e300", "inf", "-1", "0"] {
        let arg = format!("--seconds={s}");
        let t = expect(&resnet(&["bench", &arg, "gemm"]), false, s);
        assert!(t.contains("--seconds"), "{s}: {t}");
    }
}

#[test]
fn eval_prints_non_ascii_class_names() {
    let dir = temp("eval");
    for split in ["train", "test"] {
        for class in ["chat_noir_é", "日本の猫"] {
            let d = dir.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::copy(photo(), d.join("a.png")).unwrap();
        }
    }
    let w = weights(&dir, 2);
    let data = format!("folder:{}", dir.display());
    let o = resnet(&[
        "eval",
        "--weights",
        w.to_str().unwrap(),
        "--arch",
        "cifar-resnet20",
        "--data",
        &data,
        "--size",
        "32",
    ]);
    let t = expect(&o, true, "eval");
    assert!(t.contains("日本の猫") && t.contains("confusion"), "{t}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn classify_and_features_stream_their_images_in_batches() {
    let dir = temp("stream");
    let w = weights(&dir, 10);
    let w = w.to_str().unwrap();
    let p = photo();
    let p = p.to_str().unwrap();
    let o = resnet(&[
        "classify",
        "--weights",
        w,
        "--arch",
        "cifar-resnet20",
        "--batch",
        "2",
        "--top",
        "1",
        p,
        p,
        p,
    ]);
    let t = expect(&o, true, "classify");
    assert_eq!(t.matches("chelsea.png").count(), 3, "{t}");
    // A CIFAR net on photos preprocessed for ImageNet says so.
    assert!(
        t.contains("warning: cifar-resnet20 is a CIFAR network"),
        "{t}"
    );
    let out = dir.join("f.safetensors");
    let o = resnet(&[
        "features",
        "--weights",
        w,
        "--arch",
        "cifar-resnet20",
        "--batch",
        "2",
        "--out",
        out.to_str().unwrap(),
        p,
        p,
        p,
    ]);
    expect(&o, true, "features");
    let bytes = std::fs::read(&out).unwrap();
    let f = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = f.tensor("features").unwrap();
    assert_eq!(t.shape(), &[3, 64]);
    // The same image gives the same embedding whichever batch it was in.
    let v: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(v[..64], v[128..]);
    // A dilated backbone of a network without bottlenecks is refused by name, as is an
    // output stride that is not 8, 16 or 32.
    for (stride, says) in [("8", "bottleneck"), ("12", "8, 16 or 32")] {
        let o = resnet(&[
            "features",
            "--weights",
            w,
            "--arch",
            "cifar-resnet20",
            "--output-stride",
            stride,
            "--out",
            out.to_str().unwrap(),
            p,
        ]);
        let t = expect(&o, false, "features --output-stride");
        assert!(t.contains(says), "{t}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn outputs_that_are_not_regular_files_are_never_replaced() {
    let dir = temp("out");
    let w = weights(&dir, 10);
    let w = w.to_str().unwrap();
    let p = photo();
    let p = p.to_str().unwrap();
    // A folder as --out.
    let args = |out: &str| -> Vec<String> {
        [
            "features",
            "--weights",
            w,
            "--arch",
            "cifar-resnet20",
            "--out",
            out,
            p,
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |out: &str| {
        let a = args(out);
        resnet(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let t = expect(&run(dir.to_str().unwrap()), false, "features --out DIR");
    assert!(t.contains("folder"), "{t}");
    assert!(dir.is_dir());
    #[cfg(target_os = "linux")]
    {
        let t = expect(&run("/dev/null"), false, "features --out /dev/null");
        assert!(t.contains("not a regular file"), "{t}");
        assert!(!std::fs::metadata("/dev/null").unwrap().is_file());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn inputs_that_are_fifos_are_refused_without_hanging() {
    #[cfg(target_os = "linux")]
    {
        let dir = temp("fifo");
        let w = weights(&dir, 10);
        let fifo = dir.join("pipe.png");
        assert!(Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let f = fifo.to_str().unwrap();
        let p = photo();
        let p = p.to_str().unwrap();
        // As an image, and as the weights file.
        let w = w.to_str().unwrap();
        let o = resnet(&["classify", "--weights", w, "--arch", "cifar-resnet20", f]);
        let t = expect(&o, false, "classify FIFO");
        assert!(t.contains("not a regular file"), "{t}");
        let o = resnet(&["classify", "--weights", f, "--arch", "cifar-resnet20", p]);
        let t = expect(&o, false, "weights FIFO");
        assert!(t.contains("not a regular file"), "{t}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_zero_class_head_is_refused_not_run() {
    // A file with fc.weight [0, 64]: refused at loading (classify used to panic).
    let dir = temp("zero");
    let header = r#"{"fc.weight":{"dtype":"F32","shape":[0,64],"data_offsets":[0,0]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    let w = dir.join("zero.safetensors");
    std::fs::write(&w, bytes).unwrap();
    let p = photo();
    let o = resnet(&[
        "classify",
        "--weights",
        w.to_str().unwrap(),
        "--arch",
        "cifar-resnet20",
        p.to_str().unwrap(),
    ]);
    let t = expect(&o, false, "zero classes");
    assert!(t.contains("zero classes"), "{t}");
    let _ = std::fs::remove_dir_all(&dir);
}
