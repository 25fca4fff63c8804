//! Long-running inference keeps its memory flat: after a warm-up, thousands of forward
//! passes must not grow the resident set (a CIFAR net's channel-padding shortcut once
//! leaked 47 KB per forward: 5.7 MB to 242 MB after 5,000).
//!
//! Run in release by CI (`cargo test --release -p resnet --test flat_memory`); in a debug
//! build it does fewer passes.

use resnet::{Arch, InferenceModel, ResNet};
use tensor::{Kernels, Tensor};

/// Resident set size in bytes (Linux), from `/proc/self/statm`.
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[test]
fn inference_memory_stays_flat_for_every_architecture() {
    if rss().is_none() {
        println!("SKIP    flat memory: no /proc/self/statm on this system");
        return;
    }
    let k = Kernels::active().unwrap();
    for arch in Arch::ALL {
        // The small nets for long, the large ones less (ResNet-152 is the slowest); a
        // debug build (`cargo test --workspace`) leaves ResNet-34..152 to the release run
        // CI makes of this test.
        let passes = match (arch.is_cifar(), cfg!(debug_assertions)) {
            (true, false) => 2000,
            (false, false) => 100,
            (true, true) => 100,
            (false, true) if arch == Arch::ResNet18 => 10,
            (false, true) => {
                println!("SKIP    {arch}: in the release run only (cargo test --release -p resnet --test flat_memory)");
                continue;
            }
        };
        let size = if arch.is_cifar() { 32 } else { 64 };
        let model = InferenceModel::from_model(ResNet::new(arch, 10, 1).unwrap(), k).unwrap();
        let x = Tensor::randn(&[1, 3, size, size], 0.0, 1.0, 2).unwrap();
        let first = model.forward(&x).unwrap();
        for _ in 0..20 {
            model.forward(&x).unwrap();
        }
        let before = rss().unwrap();
        for _ in 0..passes {
            let y = model.forward(&x).unwrap();
            assert_eq!(y, first);
        }
        let after = rss().unwrap();
        let growth = after.saturating_sub(before);
        println!(
            "{arch}: {passes} forwards, resident set {:.1} MB -> {:.1} MB",
            before as f64 / 1e6,
            after as f64 / 1e6
        );
        // 47 KB per pass (the leak) would be 4.7 MB over 100 passes, 94 MB over 2000.
        assert!(
            passes < 100 || growth < 1_500_000,
            "{arch}: the resident set grew by {growth} bytes over {passes} forwards"
        );
    }
}
