//! The README's Rust snippets, each compiled here as a doctest with the setup the README
//! leaves out (the hidden `# ` lines). `tests/readme.rs` checks that every snippet of
//! README.md appears here line for line, so the README cannot drift from code that
//! compiles. Snippets that need a weights file, or train for a minute, are `no_run`:
//! compiled, not run.

/// ```
/// # fn main() -> Result<(), tensor::TensorError> {
/// use tensor::{Epilogue, Kernels, Pool2d, Tensor};
///
/// let k = Kernels::active()?;                                  // widest tier, or RESNET_ISA's
/// let x = Tensor::randn(&[1, 64, 112, 112], 0.0, 1.0, 42)?;   // seeded: same on every machine
/// let relu = [Epilogue::Relu];                                 // what follows, in the same pass
/// let y = k.scale_shift(&x, &[0.5; 64], &[0.1; 64], &relu)?;   // folded batch norm + ReLU
/// let y = k.max_pool2d(&y, &Pool2d::RESNET_STEM)?;             // 3x3, stride 2, padding 1
/// assert_eq!(y.shape(), &[1, 64, 56, 56]);
/// # Ok(())
/// # }
/// ```
pub struct TasteOfTheApi;

/// ```
/// # fn main() -> Result<(), tensor::TensorError> {
/// # use tensor::{Kernels, Tensor};
/// # let k = Kernels::active()?;
/// # let x = Tensor::randn(&[1, 16, 14, 14], 0.0, 1.0, 1)?;
/// # let shortcut = Tensor::randn(&[1, 16, 14, 14], 0.0, 1.0, 2)?;
/// # let conv_w = Tensor::randn(&[16, 16, 3, 3], 0.0, 0.1, 3)?;
/// # let (gamma, beta, mean, var) = (vec![1.0f32; 16], vec![0.0f32; 16], vec![0.1f32; 16], vec![2.0f32; 16]);
/// use tensor::{fold_batch_norm, Conv2d, ConvPlan, Epilogue, Mode};
///
/// let (w, b) = fold_batch_norm(&conv_w, None, &gamma, &beta, &mean, &var, 1e-5)?;
/// let plan = ConvPlan::new(&k, w.dims4("conv")?, Conv2d::new(1, 1), Mode::Inference)?;
/// let w = k.pack_conv(&plan, &w)?;    // once, at load: the layout the plan's route reads
/// let y = k.conv2d(&x, &w, &[Epilogue::Bias(&b), Epilogue::residual(&shortcut), Epilogue::Relu])?;
/// # assert_eq!(y.shape(), &[1, 16, 14, 14]);
/// # Ok(())
/// # }
/// ```
pub struct Convolution;

/// ```no_run
/// # fn main() -> resnet::Result<()> {
/// use resnet::{Arch, InferenceModel, Kernels, ResNet, Tensor};
///
/// let net = ResNet::from_safetensors(Arch::ResNet50, "resnet50.safetensors")?;  // strict
/// // or: let net = ResNet::new(Arch::ResNet50, 1000, 42)?;    // torchvision names and init
/// let fast = InferenceModel::from_model(net, Kernels::active()?)?;  // BN folded, weights packed
/// let logits = fast.forward(&Tensor::randn(&[1, 3, 224, 224], 0.0, 1.0, 7)?)?;  // [1, 1000]
/// # let _ = logits;
/// # Ok(())
/// # }
/// ```
pub struct WholeNetwork;

/// ```no_run
/// # #[cfg(feature = "train")]
/// # fn main() -> resnet::Result<()> {
/// use resnet::{data::digits, Kernels, TrainConfig, Trainer};
///
/// let data = digits()?;                                        // shipped, no download
/// let mut trainer = Trainer::new(TrainConfig::digits(), &data, Kernels::active()?, "runs/x")?;
/// let history = trainer.run(&mut |_progress| {})?;             // epochs, checkpoints, best model
/// println!("test accuracy {:.2}%", 100.0 * history.last().unwrap().test_acc);
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "train"))]
/// # fn main() {}
/// ```
pub struct Training;

/// ```no_run
/// # #[cfg(feature = "images")]
/// # fn main() -> resnet::Result<()> {
/// let classifier = resnet::Classifier::from_file(resnet::Arch::ResNet50, "resnet50.safetensors")?;
/// for p in classifier.classify_file("cat.jpg", 5)? {      // torchvision's transform, exactly
///     println!("{:5.1}%  {}", 100.0 * p.probability, p.name.as_deref().unwrap_or("?"));
/// }
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "images"))]
/// # fn main() {}
/// ```
pub struct Embedding;
