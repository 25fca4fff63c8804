//! PyTorch checkpoints (`torch.save` of a state dict) load without Python, exactly as
//! the `.safetensors` route, and hostile or unusual files are refused by name without
//! anything in them being run. Fixtures: `scripts/make_fixtures.py --only pth`.

mod common;

use common::{fixture_model, fixture_path};
use resnet::{Arch, ResNet, WeightsError};

const ARCH: Arch = Arch::Cifar { depth: 8 };

fn pth(name: &str) -> std::path::PathBuf {
    fixture_path(&format!("pth/{name}"))
}

fn bits(model: &ResNet) -> Vec<(String, Vec<u32>)> {
    model
        .named_tensors()
        .into_iter()
        .map(|n| {
            (
                n.name,
                n.tensor.data().iter().map(|v| v.to_bits()).collect(),
            )
        })
        .collect()
}

fn refused(name: &str) -> String {
    match ResNet::from_safetensors(ARCH, pth(name)) {
        Err(e @ WeightsError::PyTorch { .. }) => e.to_string(),
        other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn a_torch_saved_state_dict_loads_bit_for_bit() {
    let want = bits(&fixture_model(ARCH, 10));
    // f32, through the same call as a .safetensors file (recognised by content) and
    // through from_pth; parameters and views into one shared storage too.
    for name in ["resnet8.pth", "resnet8_views.pth"] {
        let a = ResNet::from_safetensors(ARCH, pth(name)).unwrap();
        assert!(bits(&a) == want, "{name}");
        let b = ResNet::from_pth(ARCH, pth(name)).unwrap();
        assert!(bits(&b) == want, "{name}");
    }
    // f16: the same values as the safetensors file of the same half tensors.
    let half = ResNet::from_safetensors(ARCH, pth("resnet8_f16.pth")).unwrap();
    let half_st = ResNet::from_safetensors(ARCH, pth("resnet8_f16.safetensors")).unwrap();
    assert!(bits(&half) == bits(&half_st));
    assert!(bits(&half) != want, "f16 rounds");
    // bf16: each value is the f32 one rounded to nearest-even on its top 16 bits.
    let bf = ResNet::from_safetensors(ARCH, pth("resnet8_bf16.pth")).unwrap();
    for ((name, got), (_, f32s)) in bits(&bf).into_iter().zip(&want) {
        for (g, w) in got.iter().zip(f32s) {
            let r = w.wrapping_add(0x7fff + ((w >> 16) & 1)) & 0xffff_0000;
            assert_eq!(*g, r, "{name}");
        }
    }
    // A PyTorch file carries no model info.
    assert_eq!(resnet::ModelInfo::read(pth("resnet8.pth")).unwrap(), None);
}

#[test]
fn hostile_legacy_and_odd_files_are_refused_by_name() {
    let e = refused("hostile.pth");
    assert!(
        e.contains("system") && e.contains("nothing is executed"),
        "{e}"
    );
    let e = refused("legacy.pth");
    assert!(e.contains("legacy (before PyTorch 1.6)"), "{e}");
    let e = refused("transposed.pth");
    assert!(e.contains("`fc.weight` is not contiguous"), "{e}");
    let e = refused("not_a_state_dict.pth");
    assert!(e.contains("`epoch` is an int, not a tensor"), "{e}");
    // The wrong architecture: the usual mismatch, and what the file looks like.
    match ResNet::from_pth(Arch::Cifar { depth: 20 }, pth("resnet8.pth")) {
        Err(e @ WeightsError::Mismatch(_)) => {
            assert!(e.to_string().contains("looks like cifar-resnet8"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn truncated_and_mutated_checkpoints_never_panic() {
    let bytes = std::fs::read(pth("resnet8.pth")).unwrap();
    for cut in (0..bytes.len()).step_by(997).chain([bytes.len() - 1]) {
        assert!(
            resnet::pth::parse_state_dict(&bytes[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    // Seeded byte mutations, in the pickle, the ZIP directory and everywhere: each
    // either reads (a storage byte changed) or is an error, never a panic.
    let pkl = bytes
        .windows(8)
        .position(|w| w == b"data.pkl")
        .expect("the archive names data.pkl");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let len = bytes.len() as u64;
    for round in 0..3000 {
        let mut m = bytes.clone();
        for _ in 0..1 + next() % 4 {
            let at = match round % 3 {
                0 => (pkl as u64 + next() % 2000) % len,
                1 => len - 1 - next() % 600.min(len - 1),
                _ => next() % len,
            } as usize;
            m[at] = next() as u8;
        }
        let _ = resnet::pth::parse_state_dict(&m);
    }
}
