//! A model trained by `resnet train` carries what it needs (architecture, class names,
//! input size, normalisation): `eval`, `classify` and `features` take it with no
//! `--arch` or `--size`, and `classify` agrees with `eval` on the same test images.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn resnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(args)
        .output()
        .expect("the resnet binary runs")
}

fn ok(o: Output, what: &str) -> String {
    let t = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success() && !t.contains("panicked"),
        "{what}:\n{t}"
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(o: Output, needle: &str, what: &str) {
    let t = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success() && !t.contains("panicked"),
        "{what}:\n{t}"
    );
    assert!(t.contains(needle), "{what}: {t}");
}

/// An image folder: three classes of the shipped JPEGs, progressive ones as the test
/// split. Returns the folder and the test images with their classes.
fn folder(dir: &Path) -> Vec<(PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resnet/tests/images/jpeg");
    let mut test = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let class = name.split('_').next().unwrap().to_string();
        let split = if name.contains("prog") {
            "test"
        } else {
            "train"
        };
        let to = dir.join(split).join(&class);
        std::fs::create_dir_all(&to).unwrap();
        std::fs::copy(&path, to.join(&name)).unwrap();
        if split == "test" {
            test.push((to.join(&name), class));
        }
    }
    test.sort();
    test
}

#[test]
fn classify_agrees_with_eval_on_a_fine_tuned_model_without_arch_or_size() {
    let dir = std::env::temp_dir().join(format!("resnet-cli-trained-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let test = folder(&dir.join("data"));
    let data = format!("folder:{}", dir.join("data").display());
    let out = dir.join("run");
    // Fine-tuned: from a "pretrained" 7-class file (its head replaced), the backbone at a
    // tenth of the rate.
    let pretrained = dir.join("pretrained.safetensors");
    resnet::ResNet::new(resnet::Arch::Cifar { depth: 20 }, 7, 3)
        .unwrap()
        .save_safetensors(&pretrained)
        .unwrap();
    ok(
        resnet(&[
            "--threads",
            "2",
            "train",
            "--data",
            &data,
            "--size",
            "24",
            "--epochs",
            "2",
            "--batch",
            "8",
            "--init",
            pretrained.to_str().unwrap(),
            "--backbone-lr-scale",
            "0.1",
            "--out",
            out.to_str().unwrap(),
        ]),
        "fine-tune",
    );
    let best = out.join("best.safetensors");
    let best = best.to_str().unwrap();

    // eval: no --arch, no --size (the default 64 would not be the model's 24).
    let text = ok(
        resnet(&["eval", "--weights", best, "--data", &data]),
        "eval",
    );
    let accuracy: f64 = text
        .split("accuracy ")
        .nth(1)
        .and_then(|r| r.split('%').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no accuracy in {text}"));
    assert!(
        text.contains(&format!("{} test images", test.len())),
        "{text}"
    );

    // classify: the same images, fed as in training, answered with the class names.
    let mut args = vec!["classify", "--weights", best, "--top", "1"];
    args.extend(test.iter().map(|(p, _)| p.to_str().unwrap()));
    let text = ok(resnet(&args), "classify");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2 * test.len(), "{text}");
    let mut correct = 0;
    for ((path, class), pair) in test.iter().zip(lines.chunks(2)) {
        assert_eq!(pair[0], path.display().to_string());
        let name = pair[1]
            .split("%  ")
            .nth(1)
            .unwrap()
            .split(" (")
            .next()
            .unwrap();
        assert!(["bars", "chelsea", "rocket"].contains(&name), "{}", pair[1]);
        correct += usize::from(name == class);
    }
    let agree = 100.0 * correct as f64 / test.len() as f64;
    assert!(
        (agree - accuracy).abs() < 0.01,
        "classify {agree}%, eval {accuracy}%"
    );

    // features: no --arch either.
    let f = dir.join("f.safetensors");
    let img = test[0].0.to_str().unwrap();
    ok(
        resnet(&[
            "features",
            "--weights",
            best,
            "--out",
            f.to_str().unwrap(),
            img,
        ]),
        "features",
    );

    // Settings that contradict the file are refused, naming it.
    fails(
        resnet(&["classify", "--weights", best, "--arch", "resnet18", img]),
        "says it is a cifar-resnet20",
        "contradicting --arch",
    );
    fails(
        resnet(&["eval", "--weights", best, "--data", &data, "--size", "32"]),
        "takes 24x24 images",
        "contradicting --size",
    );
    fails(
        resnet(&["eval", "--weights", best, "--data", "digits"]),
        "was trained on the classes",
        "other classes",
    );
    // A file that says nothing needs --arch.
    let bare = dir.join("bare.safetensors");
    resnet::ResNet::from_safetensors(resnet::Arch::Cifar { depth: 20 }, best)
        .unwrap()
        .save_safetensors(&bare)
        .unwrap();
    fails(
        resnet(&["classify", "--weights", bare.to_str().unwrap(), img]),
        "give --arch",
        "no arch",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
