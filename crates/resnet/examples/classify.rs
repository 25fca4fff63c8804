//! Classify photos with a pretrained ImageNet network, in one call per image.
//!
//! ```sh
//! cargo run --release -p resnet --features images --example classify -- \
//!     resnet50 resnet50.safetensors cat.jpg dog.png
//! ```
//!
//! The weights are a torchvision- or timm-named `.safetensors` file (see the README for
//! converting torchvision's); `python3 scripts/make_fixtures.py --weights DIR` writes
//! random ones, enough to run this (their classes mean nothing).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [arch, weights, images @ ..] = &args[..] else {
        return Err("usage: classify ARCH WEIGHTS.safetensors IMAGE...".into());
    };
    run(arch, weights, images)
}

fn run(arch: &str, weights: &str, images: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let classifier = resnet::Classifier::from_file(arch.parse()?, weights)?;
    for image in images {
        println!("{image}:");
        for p in classifier.classify_file(image, 5)? {
            let name = p.name.as_deref().unwrap_or("(no name)");
            println!(
                "  {:5.1}%  {name} (class {})",
                100.0 * p.probability,
                p.class
            );
        }
    }
    Ok(())
}
