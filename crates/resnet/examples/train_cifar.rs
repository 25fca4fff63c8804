//! Train a CIFAR-style ResNet-20 from scratch with the trainer (what `resnet train` runs):
//! epochs with a warm-up and cosine schedule, evaluation after each, the best model and a
//! checkpoint written to the output folder.
//!
//! ```sh
//! cargo run --release -p resnet --example train_cifar                  # the shipped digits, 3 epochs
//! cargo run --release -p resnet --example train_cifar -- cifar10:DIR 30   # CIFAR-10's binary batches
//! ```
//!
//! The shipped digits (1797 8x8 images) need no download; CIFAR-10 is read from the
//! folder of `data_batch_*.bin` files (<https://www.cs.toronto.edu/~kriz/cifar.html>).

use resnet::data::DataSpec;
use resnet::{Progress, TrainConfig, Trainer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let data: DataSpec = args.next().unwrap_or_else(|| "digits".into()).parse()?;
    let epochs: usize = args.next().map(|e| e.parse()).transpose()?.unwrap_or(3);

    let config = TrainConfig {
        epochs,
        warmup_epochs: 1.min(epochs - 1),
        ..TrainConfig::digits()
    };
    // 10% of each class held out: the validation set picks the best model, the test
    // set is only reported.
    let split = data.load()?.hold_out(0.1, config.seed)?;
    println!(
        "{data}: {} training, {} validation and {} test images",
        split.train.len(),
        split.val.as_ref().map_or(0, |v| v.len()),
        split.test.len()
    );
    let out = std::env::temp_dir().join("resnet-example-train");
    let mut trainer = Trainer::new(config, &split, resnet::Kernels::active()?, &out)?;
    let history = trainer.run(&mut |p| {
        if let Progress::Epoch(e) = p {
            println!(
                "epoch {:2}: train loss {:.3}, validation accuracy {:.1}%, test accuracy {:.1}%",
                e.epoch,
                e.train_loss,
                100.0 * e.val_acc.unwrap_or(0.0),
                100.0 * e.test_acc
            );
        }
    })?;
    let last = history.last().ok_or("no epoch ran")?.clone();
    let best = trainer.best_epoch().ok_or("no epoch ran")?;
    println!(
        "final test accuracy {:.1}%; best.safetensors is epoch {} (picked by validation), \
         test accuracy {:.1}%; files in {}",
        100.0 * last.test_acc,
        best.epoch,
        100.0 * best.test_acc,
        out.display()
    );
    Ok(())
}
