//! Extract the pooled embeddings of photos (the 512 or 2048 numbers before the
//! classifier head) and write them to a `.safetensors` file, for search, clustering or
//! a classifier of your own.
//!
//! ```sh
//! cargo run --release -p resnet --features images --example features -- \
//!     resnet18 resnet18.safetensors embeddings.safetensors *.jpg
//! ```

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [arch, weights, out, images @ ..] = &args[..] else {
        return Err("usage: features ARCH WEIGHTS.safetensors OUT.safetensors IMAGE...".into());
    };
    run(arch, weights, out, images)
}

fn run(
    arch: &str,
    weights: &str,
    out: &str,
    images: &[String],
) -> Result<(), Box<dyn std::error::Error>> {
    use resnet::weights::{write_safetensors, SaveView};

    let net = resnet::ResNet::from_safetensors(arch.parse()?, weights)?;
    let model = resnet::InferenceModel::from_model(net, resnet::Kernels::active()?)?;
    let mut features = Vec::new();
    // One image at a time keeps memory flat however many there are; batches of 16
    // would be faster (see `resnet features --batch`).
    for image in images {
        let x = resnet::preprocess::load_imagenet(image)?;
        let f = model.features(&x.reshape(&[1, 3, 224, 224])?)?;
        features.extend_from_slice(f.data());
    }
    let shape = [images.len(), features.len() / images.len().max(1)];
    let views = [(
        "features".to_string(),
        SaveView::F32 {
            shape: &shape,
            data: &features,
        },
    )];
    let meta = [("images".to_string(), images.join("\n"))];
    // Written atomically: a crash leaves the old file or none, never half of one.
    write_safetensors(
        out.as_ref(),
        views.into_iter().collect(),
        Some(meta.into_iter().collect()),
    )?;
    println!("{} embeddings of {} numbers in {out}", shape[0], shape[1]);
    Ok(())
}
