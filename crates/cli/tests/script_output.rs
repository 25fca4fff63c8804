//! Output for scripts (`--json`, `--csv`) and inputs by folder or list: every line
//! parses, an unreadable image is reported in its place and the rest go on.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use resnet::{Arch, ModelInfo, ResNet};

fn resnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(args)
        .output()
        .expect("the resnet binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("resnet-cli-out-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn images() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../resnet/tests/images")
}

/// A 3-class CIFAR ResNet-20 that names its classes (one with a comma and a quote).
fn model(dir: &Path) -> PathBuf {
    let path = dir.join("m.safetensors");
    let arch = Arch::Cifar { depth: 20 };
    let classes = vec!["cat".into(), "dog, \"big\"".into(), "bird".into()];
    let info = ModelInfo::new(arch, classes, 32, [0.5; 3], [0.25; 3]);
    ResNet::new(arch, 3, 1)
        .unwrap()
        .save_safetensors_with(&path, Some(&info))
        .unwrap();
    path
}

#[test]
fn classify_json_reports_a_bad_image_in_its_place_and_goes_on() {
    let dir = temp("json");
    let w = model(&dir);
    let broken = dir.join("broken.jpg");
    std::fs::write(&broken, b"\xff\xd8\xff\xe0 not really").unwrap();
    let good = images().join("rocket.jpg");
    let o = resnet(&[
        "classify",
        "--weights",
        w.to_str().unwrap(),
        "--json",
        "--top",
        "3",
        "--batch",
        "2",
        good.to_str().unwrap(),
        broken.to_str().unwrap(),
        good.to_str().unwrap(),
    ]);
    assert!(
        !o.status.success(),
        "a failed image fails the command at the end"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("1 of 3 images") && !err.contains("panicked"),
        "{err}"
    );
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[1]["error"].as_str().unwrap().contains("broken.jpg"));
    for i in [0, 2] {
        let p = lines[i]["predictions"].as_array().unwrap();
        assert_eq!(p.len(), 3);
        let sum: f64 = p.iter().map(|x| x["probability"].as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-5);
        assert!(p.iter().all(|x| x["name"].is_string()));
    }
    assert_eq!(lines[0]["predictions"], lines[2]["predictions"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn folders_and_list_files_expand_and_csv_quotes_its_fields() {
    let dir = temp("csv");
    let w = model(&dir);
    let folder = images().join("jpeg");
    let count = std::fs::read_dir(&folder).unwrap().count();
    let list = dir.join("list.txt");
    let one = images().join("chelsea.png");
    std::fs::write(&list, format!("# a comment\n\n{}\n", one.display())).unwrap();
    let o = resnet(&[
        "classify",
        "--weights",
        w.to_str().unwrap(),
        "--csv",
        "--top",
        "3",
        "--list",
        list.to_str().unwrap(),
        folder.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "image,rank,class,name,probability");
    assert_eq!(
        lines.len(),
        1 + 3 * (count + 1),
        "every image of the folder and the list"
    );
    assert!(lines[1].starts_with(&one.display().to_string()));
    assert!(text.contains(",\"dog, \"\"big\"\"\","), "{text}");
    // A folder without images is an error naming it.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = resnet(&[
        "features",
        "--weights",
        w.to_str().unwrap(),
        empty.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no JPEG or PNG files"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn features_leave_out_unreadable_images_and_say_so() {
    let dir = temp("features");
    let w = model(&dir);
    let out = dir.join("f.safetensors");
    let good = images().join("rocket.jpg");
    let o = resnet(&[
        "features",
        "--weights",
        w.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        good.to_str().unwrap(),
        "/no/such/image.png",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/no/such/image.png"));
    let bytes = std::fs::read(&out).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let f = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(f.tensor("features").unwrap().shape(), &[1, 64]);
    let listed = meta.metadata().as_ref().unwrap()["images"].clone();
    assert_eq!(listed, good.display().to_string());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn eval_and_info_speak_json() {
    let dir = temp("eval");
    for split in ["train", "test"] {
        for class in ["a", "b"] {
            let d = dir.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::copy(images().join("chelsea.png"), d.join("x.png")).unwrap();
        }
    }
    let w = dir.join("w.safetensors");
    ResNet::new(Arch::Cifar { depth: 20 }, 2, 1)
        .unwrap()
        .save_safetensors(&w)
        .unwrap();
    let data = format!("folder:{}", dir.display());
    let args = [
        "eval",
        "--weights",
        w.to_str().unwrap(),
        "--arch",
        "cifar-resnet20",
        "--data",
        &data,
        "--size",
        "16",
    ];
    let mut json = args.to_vec();
    json.push("--json");
    let o = resnet(&json);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["images"], 2);
    let total: u64 = v["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|c| c.as_u64().unwrap()))
        .sum();
    assert_eq!(total, 2);
    let mut csv = args.to_vec();
    csv.push("--csv");
    let o = resnet(&csv);
    assert_eq!(stdout(&o).lines().next(), Some("true\\predicted,a,b"));
    let o = resnet(&["info", "--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert!(v["active_tier"].is_string() && v["kernels"]["gemm_microkernel"].is_string());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_train_profile_speaks_json_op_by_op() {
    let o = resnet(&[
        "--threads",
        "1",
        "bench",
        "--json",
        "--seconds",
        "0.01",
        "train",
        "--batch",
        "2",
        "--profile",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |kind: &'static str| lines.iter().filter(move |v| v["bench"] == kind);
    assert_eq!(of("train").count(), 1);
    // ResNet-20: 19 convolutions, each with its layer, routes and multiply-adds.
    let convs: Vec<&serde_json::Value> = of("train_profile")
        .filter(|v| v["op"].as_str().unwrap().starts_with("conv2d"))
        .collect();
    assert_eq!(convs.len(), 19);
    assert_eq!(convs[0]["layer"], "conv1");
    assert_eq!(convs[0]["shape"], serde_json::json!([2, 16, 32, 32]));
    assert_eq!(convs[0]["macs"], 2 * 16 * 32 * 32 * 3 * 9);
    assert!(convs
        .iter()
        .all(|v| v["forward_ms"].as_f64().unwrap() > 0.0));
    let total = of("train_profile_total").next().expect("a total line");
    assert!(total["step_ms"].as_f64().unwrap() > 0.0);
    assert!(of("train_profile_kind").count() >= 5);
}
