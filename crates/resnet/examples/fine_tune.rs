//! Fine-tune a pretrained ImageNet network on a folder of your own images: a new head for
//! the folder's classes, the backbone frozen (its batch norms keep their running
//! statistics), the head trained by SGD with momentum, then evaluated on the test images.
//!
//! ```sh
//! cargo run --release -p resnet --features images --example fine_tune -- \
//!     resnet18 resnet18.safetensors DIR [EPOCHS]
//! ```
//!
//! `DIR/train/<class>/*.jpg` and `DIR/test/<class>/*.jpg` (or `val/`): one sub-folder per
//! class, JPEG or PNG. Images are resized to 224x224 and held in memory (600 KB each).
//! The loop below is what `Trainer` runs for training from scratch, written out: change
//! `Freeze::Backbone` to `Freeze::AllButLastStage` to train the last stage too.

use resnet::augment::Augment;
use resnet::autograd::{Sgd, SgdConfig};
use resnet::data::DataSpec;
use resnet::loader::Loader;
use resnet::{evaluate, train_step, Freeze, Kernels, ResNet};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [arch, weights, dir, rest @ ..] = &args[..] else {
        return Err("usage: fine_tune ARCH WEIGHTS.safetensors DIR [EPOCHS]".into());
    };
    let epochs: usize = rest.first().map(|e| e.parse()).transpose()?.unwrap_or(5);
    let k = Kernels::active()?;

    let data = DataSpec::Folder {
        dir: dir.into(),
        size: 224,
    }
    .load()?;
    let classes = data.train.classes.len();
    println!(
        "{} training and {} test images, {classes} classes",
        data.train.len(),
        data.test.len()
    );

    let mut net = ResNet::from_safetensors(arch.parse()?, weights)?;
    net.replace_head(classes, 0)?; // a fresh fc for the folder's classes
    let config = SgdConfig {
        lr: 0.01,
        momentum: 0.9,
        ..SgdConfig::default()
    };
    let mut sgd = Sgd::new(config, net.parameters_mut().len())?;
    let loader = Loader {
        data: &data.train,
        batch: 16,
        augment: Augment {
            hflip: true,
            ..Augment::NONE
        },
        shuffle: true,
        seed: 0,
    };
    for epoch in 0..epochs {
        let order = loader.order(epoch);
        let (mut loss, mut correct) = (0.0, 0);
        for b in 0..loader.num_batches() {
            let batch = loader.make_batch(epoch, &order, b)?;
            let step = train_step(
                &mut net,
                &mut sgd,
                k,
                batch.x,
                &batch.labels,
                Freeze::Backbone,
                0.0,
            )?;
            loss += step.loss * batch.labels.len() as f32;
            correct += step.correct;
        }
        let test = evaluate(&net, &data.test, k, 16)?;
        println!(
            "epoch {epoch}: train loss {:.3}, train accuracy {:.1}%, test accuracy {:.1}%",
            loss / data.train.len() as f32,
            100.0 * correct as f32 / data.train.len() as f32,
            100.0 * test.accuracy
        );
    }
    let out = std::path::Path::new(dir).join("fine-tuned.safetensors");
    net.save_safetensors(&out)?; // torchvision names, written atomically
    println!("wrote {}", out.display());
    Ok(())
}
