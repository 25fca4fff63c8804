//! `resnet train` never replaces a run by accident, and `--resume` continues a run with
//! the settings its checkpoint records.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn resnet_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resnet"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the resnet binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output, what: &str) -> String {
    let t = stderr(&o);
    assert!(
        o.status.success() && !t.contains("panicked"),
        "{what}:\n{t}"
    );
    t
}

fn fails(o: Output, needle: &str, what: &str) {
    let t = stderr(&o);
    assert!(
        !o.status.success() && !t.contains("panicked"),
        "{what}:\n{t}"
    );
    assert!(t.contains(needle), "{what}: {t}");
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("resnet-cli-runs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn epochs_done(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .count()
        - 1
}

#[test]
fn a_second_run_gets_its_own_folder_and_an_explicit_one_is_never_replaced() {
    let dir = temp("folders");
    let one = ["train", "--epochs", "1", "--batch", "256"];
    ok(resnet_in(&dir, &one), "first");
    ok(resnet_in(&dir, &one), "second");
    assert!(dir.join("runs/train/best.safetensors").is_file());
    assert!(dir.join("runs/train-2/best.safetensors").is_file());
    let before = std::fs::read(dir.join("runs/train/checkpoint.safetensors")).unwrap();
    let mut args = one.to_vec();
    args.extend(["--out", "runs/train"]);
    fails(
        resnet_in(&dir, &args),
        "already holds a run",
        "explicit --out",
    );
    assert_eq!(
        std::fs::read(dir.join("runs/train/checkpoint.safetensors")).unwrap(),
        before,
        "nothing replaced"
    );
    args.push("--overwrite");
    ok(resnet_in(&dir, &args), "--overwrite");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resume_takes_the_runs_own_settings_and_refuses_other_ones() {
    let dir = temp("resume");
    let data = temp("resume-data");
    // A small image folder (the data set must come back from the checkpoint too).
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resnet/tests/images/jpeg");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let class = name.split('_').next().unwrap();
        let split = if name.contains("prog") {
            "test"
        } else {
            "train"
        };
        let to = data.join(split).join(class);
        std::fs::create_dir_all(&to).unwrap();
        std::fs::copy(&path, to.join(&name)).unwrap();
    }
    let spec = format!("folder:{}", data.display());
    ok(
        resnet_in(
            &dir,
            &[
                "train", "--data", &spec, "--size", "20", "--lr", "0.05", "--batch", "8",
                "--epochs", "1", "--out", "run",
            ],
        ),
        "first epoch",
    );
    // No flag but --epochs: data set, size, rate and batch come from the checkpoint.
    let t = ok(
        resnet_in(
            &dir,
            &[
                "train",
                "--resume",
                "run/checkpoint.safetensors",
                "--epochs",
                "2",
            ],
        ),
        "resume",
    );
    assert!(t.contains("resumed from") && t.contains("lr 0.05, "), "{t}");
    assert!(t.contains("[3, 20, 20]"), "{t}");
    assert_eq!(epochs_done(&dir.join("run")), 2);
    // A flag that repeats the run's value is fine; one that differs is refused.
    fails(
        resnet_in(
            &dir,
            &[
                "train",
                "--resume",
                "run/checkpoint.safetensors",
                "--epochs",
                "3",
                "--lr",
                "0.1",
                "--batch",
                "8",
            ],
        ),
        "--lr 0.1 (the run: 0.05)",
        "another rate",
    );
    fails(
        resnet_in(
            &dir,
            &[
                "train",
                "--resume",
                "run/checkpoint.safetensors",
                "--epochs",
                "3",
                "--size",
                "32",
            ],
        ),
        "--size 32 (the run: 20)",
        "another size",
    );
    assert_eq!(
        epochs_done(&dir.join("run")),
        2,
        "nothing trained by a refused resume"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn export_folder_writes_the_digits_as_an_image_folder_once() {
    let dir = temp("export");
    ok(
        resnet_in(&dir, &["export-folder", "--out", "digits"]),
        "export",
    );
    let count = |split: &str| -> usize {
        std::fs::read_dir(dir.join("digits").join(split))
            .unwrap()
            .map(|c| std::fs::read_dir(c.unwrap().path()).unwrap().count())
            .sum()
    };
    assert_eq!((count("train"), count("test")), (1437, 360));
    fails(
        resnet_in(&dir, &["export-folder", "--out", "digits"]),
        "already exists",
        "second export",
    );
    // The folder trains and evaluates as an image folder.
    ok(
        resnet_in(
            &dir,
            &[
                "train",
                "--data",
                "folder:digits",
                "--size",
                "8",
                "--epochs",
                "1",
                "--batch",
                "256",
                "--out",
                "run",
            ],
        ),
        "train on the folder",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
