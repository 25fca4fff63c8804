//! Stochastic gradient descent, step for step as `torch.optim.SGD`.
//!
//! For each parameter `p` with gradient `g`, learning rate `lr`, momentum `mu`,
//! dampening `tau` and weight decay `wd`:
//!
//! ```text
//! g = g + wd * p
//! b = g                               (first step)
//! b = mu * b + (1 - tau) * g          (later steps)
//! g = g + mu * b   if nesterov,  else  g = b
//! p = p - lr * g
//! ```
//!
//! The momentum buffers `b` are the optimizer's state; [`Sgd::state`] and
//! [`Sgd::load_state`] carry them through a checkpoint.

use rayon::prelude::*;
use tensor::{Result, Tensor, TensorError};

/// Parameters of at least this many elements are updated in runs of [`RUN`] elements over
/// rayon's threads (the update reads three floats and writes two per element: bound by
/// memory bandwidth, which one thread of a 2-core host does not fill); smaller ones on the
/// calling thread.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;
/// Elements per run of a parallel update: 64 KiB of each operand.
const RUN: usize = 1 << 14;

/// SGD's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    /// Learning rate `lr` (default 0.1); finite and non-negative. A schedule changes it
    /// through [`Sgd::set_lr`].
    pub lr: f32,
    /// Momentum factor `mu` (default 0: plain SGD, no buffers kept); finite and
    /// non-negative.
    pub momentum: f32,
    /// Dampening `tau`: a buffer takes `(1 - tau)` of each later gradient (default 0; not
    /// applied on a buffer's first step). Must be 0 with Nesterov.
    pub dampening: f32,
    /// Weight decay `wd` (an L2 penalty): `wd * p` is added to each gradient before
    /// momentum (default 0); finite and non-negative.
    pub weight_decay: f32,
    /// Nesterov momentum: step along `g + mu * b` rather than `b` (default false). Needs
    /// momentum > 0 and zero dampening.
    pub nesterov: bool,
}

impl Default for SgdConfig {
    /// PyTorch's defaults except for the learning rate, which it has none of: 0.1.
    fn default() -> Self {
        SgdConfig {
            lr: 0.1,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }
}

/// SGD with momentum, Nesterov and weight decay, over a fixed list of parameters (the
/// i-th gradient given to [`Sgd::step`] belongs to the i-th parameter).
#[derive(Debug, Clone)]
pub struct Sgd {
    /// The settings, checked by [`Sgd::new`]. Only `lr` is meant to change afterwards
    /// ([`Sgd::set_lr`]); other values written here are not checked again.
    pub config: SgdConfig,
    /// One momentum buffer per parameter, empty until its first step (and always while
    /// momentum is 0).
    buffers: Vec<Vec<f32>>,
    /// Per-parameter factors on the learning rate (empty: 1 for every parameter).
    lr_scales: Vec<f32>,
}

impl Sgd {
    /// An optimizer for `params` parameters. Like `torch.optim.SGD`, it refuses a
    /// negative learning rate, momentum or weight decay (and a NaN or infinite one).
    pub fn new(config: SgdConfig, params: usize) -> Result<Self> {
        for (name, v) in [
            ("learning rate", config.lr),
            ("momentum", config.momentum),
            ("weight decay", config.weight_decay),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(TensorError::InvalidArgument {
                    op: "Sgd::new",
                    reason: format!("invalid {name}: {v}"),
                });
            }
        }
        if config.nesterov && (config.momentum <= 0.0 || config.dampening != 0.0) {
            return Err(TensorError::InvalidArgument {
                op: "Sgd::new",
                reason: "Nesterov momentum needs momentum > 0 and zero dampening".into(),
            });
        }
        Ok(Sgd {
            config,
            buffers: vec![Vec::new(); params],
            lr_scales: Vec::new(),
        })
    }

    /// Gives parameter `i` the learning rate `lr * scales[i]` (PyTorch's parameter groups
    /// with their own `lr`, as fine-tuning uses for a pretrained backbone): one finite,
    /// non-negative factor per parameter. A factor of 0 keeps a parameter where it is.
    pub fn set_lr_scales(&mut self, scales: Vec<f32>) -> Result<()> {
        if scales.len() != self.buffers.len() {
            return Err(TensorError::InvalidArgument {
                op: "Sgd::set_lr_scales",
                reason: format!(
                    "{} factors for an optimizer of {} parameters",
                    scales.len(),
                    self.buffers.len()
                ),
            });
        }
        if let Some(bad) = scales.iter().find(|s| !s.is_finite() || **s < 0.0) {
            return Err(TensorError::InvalidArgument {
                op: "Sgd::set_lr_scales",
                reason: format!("invalid learning-rate factor {bad}"),
            });
        }
        self.lr_scales = scales;
        Ok(())
    }

    /// Sets the learning rate (a schedule calls this each epoch or step).
    pub fn set_lr(&mut self, lr: f32) {
        self.config.lr = lr;
    }

    /// One update. `params[i]` moves along `grads[i]`; a `None` gradient (a parameter
    /// nothing reached, or a frozen one) leaves the parameter and its buffer untouched,
    /// as PyTorch skips parameters whose `.grad` is `None`.
    pub fn step(&mut self, params: &mut [&mut Tensor], grads: &[Option<&Tensor>]) -> Result<()> {
        if params.len() != self.buffers.len() || grads.len() != params.len() {
            return Err(TensorError::InvalidArgument {
                op: "Sgd::step",
                reason: format!(
                    "{} parameters and {} gradients for an optimizer of {}",
                    params.len(),
                    grads.len(),
                    self.buffers.len()
                ),
            });
        }
        for (i, ((p, g), buf)) in params.iter().zip(grads).zip(&self.buffers).enumerate() {
            if let Some(g) = g {
                if g.shape() != p.shape() {
                    return Err(TensorError::ShapeMismatch {
                        op: "Sgd::step",
                        arg: "gradient",
                        expected: p.shape().to_vec(),
                        got: g.shape().to_vec(),
                    });
                }
            }
            // A buffer restored by `load_state` must fit its parameter.
            if !buf.is_empty() && buf.len() != p.len() {
                return Err(TensorError::InvalidArgument {
                    op: "Sgd::step",
                    reason: format!(
                        "momentum buffer {i} has {} elements for a parameter of {}",
                        buf.len(),
                        p.len()
                    ),
                });
            }
        }
        let SgdConfig {
            lr,
            momentum,
            dampening,
            weight_decay,
            nesterov,
        } = self.config;
        for (i, ((p, g), buf)) in params
            .iter_mut()
            .zip(grads)
            .zip(&mut self.buffers)
            .enumerate()
        {
            let Some(g) = g else { continue };
            let lr = lr * self.lr_scales.get(i).copied().unwrap_or(1.0);
            let first = buf.is_empty();
            if momentum != 0.0 && first {
                buf.resize(p.len(), 0.0);
            }
            // One run of elements: `b` is the run's momentum buffer (empty without
            // momentum).
            let update = |p: &mut [f32], g: &[f32], b: &mut [f32]| {
                for (j, (pv, &gv)) in p.iter_mut().zip(g).enumerate() {
                    let mut d = gv;
                    if weight_decay != 0.0 {
                        d += weight_decay * *pv;
                    }
                    if momentum != 0.0 {
                        let b = &mut b[j];
                        *b = if first {
                            d
                        } else {
                            momentum * *b + (1.0 - dampening) * d
                        };
                        d = if nesterov { d + momentum * *b } else { *b };
                    }
                    *pv -= lr * d;
                }
            };
            let (pd, gd) = (p.data_mut(), g.data());
            if pd.len() >= PARALLEL_MIN_ELEMENTS && rayon::current_num_threads() > 1 {
                // Element by element the same arithmetic, in runs over the threads.
                let runs = pd.par_chunks_mut(RUN).zip(gd.par_chunks(RUN));
                if buf.is_empty() {
                    runs.for_each(|(p, g)| update(p, g, &mut []));
                } else {
                    runs.zip(buf.par_chunks_mut(RUN))
                        .for_each(|((p, g), b)| update(p, g, b));
                }
            } else {
                update(pd, gd, buf);
            }
        }
        Ok(())
    }

    /// The momentum buffers (empty for a parameter that has not stepped yet, and for
    /// every parameter while momentum is 0).
    pub fn state(&self) -> &[Vec<f32>] {
        &self.buffers
    }

    /// Restores momentum buffers saved by [`Sgd::state`]. Their lengths are checked
    /// against the parameters at the next [`Sgd::step`] (which refuses, changing
    /// nothing, a buffer that does not fit).
    pub fn load_state(&mut self, buffers: Vec<Vec<f32>>) -> Result<()> {
        if buffers.len() != self.buffers.len() {
            return Err(TensorError::InvalidArgument {
                op: "Sgd::load_state",
                reason: format!(
                    "{} momentum buffers for an optimizer of {} parameters",
                    buffers.len(),
                    self.buffers.len()
                ),
            });
        }
        self.buffers = buffers;
        Ok(())
    }
}

/// Gradient accumulation over several batches (a larger effective batch): adds
/// `grads` into `acc`, slot by slot (`None` adds nothing; a first gradient is moved
/// in). Start each accumulation with an empty `acc` (that is the zeroing), and divide by
/// the number of batches with [`scale_gradients`] if the loss was a per-batch mean.
pub fn accumulate_gradients(
    acc: &mut Vec<Option<Tensor>>,
    grads: Vec<Option<Tensor>>,
) -> Result<()> {
    if acc.is_empty() {
        acc.resize_with(grads.len(), || None);
    }
    if acc.len() != grads.len() {
        return Err(TensorError::InvalidArgument {
            op: "accumulate_gradients",
            reason: format!("{} gradients into {} slots", grads.len(), acc.len()),
        });
    }
    for (a, g) in acc.iter_mut().zip(grads) {
        match (a.as_mut(), g) {
            (_, None) => {}
            (None, Some(g)) => *a = Some(g),
            (Some(a), Some(g)) => {
                if a.shape() != g.shape() {
                    return Err(TensorError::ShapeMismatch {
                        op: "accumulate_gradients",
                        arg: "gradient",
                        expected: a.shape().to_vec(),
                        got: g.shape().to_vec(),
                    });
                }
                a.data_mut()
                    .iter_mut()
                    .zip(g.data())
                    .for_each(|(x, y)| *x += y);
            }
        }
    }
    Ok(())
}

/// Multiplies every gradient by `factor` (e.g. `1 / batches` after accumulating).
pub fn scale_gradients(grads: &mut [Option<Tensor>], factor: f32) {
    for g in grads.iter_mut().flatten() {
        g.data_mut().iter_mut().for_each(|v| *v *= factor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_vec(&[v.len()], v.to_vec()).unwrap()
    }

    #[test]
    fn accumulated_gradients_sum_and_scale() {
        let mut acc = Vec::new();
        accumulate_gradients(&mut acc, vec![Some(t(&[1.0, 2.0])), None]).unwrap();
        accumulate_gradients(&mut acc, vec![Some(t(&[3.0, 4.0])), Some(t(&[5.0]))]).unwrap();
        scale_gradients(&mut acc, 0.5);
        assert_eq!(acc[0].as_ref().unwrap().data(), &[2.0, 3.0]);
        assert_eq!(acc[1].as_ref().unwrap().data(), &[2.5]);
        assert!(accumulate_gradients(&mut acc, vec![None]).is_err());
        assert!(accumulate_gradients(&mut acc, vec![Some(t(&[1.0])), None]).is_err());
    }

    /// A parameter large enough to be updated in parallel runs (a ragged last run
    /// included) gets, element for element, the update of the formula, over three steps
    /// (the momentum buffer's first and later steps), with momentum, Nesterov, and none.
    #[test]
    fn large_parameters_update_in_parallel_runs_as_the_formula_says() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let n = PARALLEL_MIN_ELEMENTS + RUN / 2 + 7;
        for (momentum, nesterov) in [(0.9f32, false), (0.9, true), (0.0, false)] {
            let config = SgdConfig {
                lr: 0.05,
                momentum,
                dampening: if nesterov { 0.0 } else { 0.1 },
                weight_decay: 1e-3,
                nesterov,
            };
            let mut sgd = Sgd::new(config, 1).unwrap();
            let mut p = Tensor::randn(&[n], 0.0, 1.0, 1).unwrap();
            let (mut want, mut buf) = (p.data().to_vec(), vec![0.0f32; n]);
            for step in 0..3u64 {
                let g = Tensor::randn(&[n], 0.0, 1.0, 10 + step).unwrap();
                pool.install(|| sgd.step(&mut [&mut p], &[Some(&g)]))
                    .unwrap();
                for ((w, b), &gv) in want.iter_mut().zip(&mut buf).zip(g.data()) {
                    let mut d = gv + config.weight_decay * *w;
                    if momentum != 0.0 {
                        *b = if step == 0 {
                            d
                        } else {
                            momentum * *b + (1.0 - config.dampening) * d
                        };
                        d = if nesterov { d + momentum * *b } else { *b };
                    }
                    *w -= config.lr * d;
                }
                assert_eq!(p.data(), &want[..], "momentum {momentum}, step {step}");
            }
        }
    }

    #[test]
    fn per_parameter_learning_rates_scale_each_update() {
        let config = SgdConfig {
            lr: 0.5,
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut sgd = Sgd::new(config, 3).unwrap();
        sgd.set_lr_scales(vec![1.0, 0.1, 0.0]).unwrap();
        let (mut a, mut b, mut c) = (t(&[1.0]), t(&[1.0]), t(&[1.0]));
        let g = t(&[2.0]);
        sgd.step(
            &mut [&mut a, &mut b, &mut c],
            &[Some(&g), Some(&g), Some(&g)],
        )
        .unwrap();
        // p -= lr * scale * (g + wd * p): 1 - 0.5 * 2.1, 1 - 0.05 * 2.1, unchanged.
        assert_eq!(a.data(), &[1.0 - 0.5 * 2.1]);
        assert_eq!(b.data(), &[1.0 - 0.05f32 * 2.1]);
        assert_eq!(c.data(), &[1.0]);
        assert!(sgd.set_lr_scales(vec![1.0; 2]).is_err());
        assert!(sgd.set_lr_scales(vec![1.0, -1.0, f32::NAN]).is_err());
    }

    #[test]
    fn sgd_skips_missing_gradients_and_rejects_bad_shapes() {
        let mut sgd = Sgd::new(
            SgdConfig {
                lr: 0.5,
                momentum: 0.9,
                ..Default::default()
            },
            2,
        )
        .unwrap();
        let (mut a, mut b) = (t(&[1.0]), t(&[1.0, 1.0]));
        sgd.step(&mut [&mut a, &mut b], &[Some(&t(&[2.0])), None])
            .unwrap();
        assert_eq!(a.data(), &[0.0]);
        assert_eq!(b.data(), &[1.0, 1.0]);
        assert!(sgd
            .step(&mut [&mut a, &mut b], &[Some(&t(&[1.0, 2.0])), None])
            .is_err());
        assert!(Sgd::new(
            SgdConfig {
                nesterov: true,
                ..Default::default()
            },
            1
        )
        .is_err());
    }

    #[test]
    fn sgd_rejects_bad_settings_and_buffers() {
        for bad in [
            SgdConfig {
                lr: -0.1,
                ..Default::default()
            },
            SgdConfig {
                momentum: -0.9,
                ..Default::default()
            },
            SgdConfig {
                weight_decay: f32::NAN,
                ..Default::default()
            },
        ] {
            let err = Sgd::new(bad, 1).unwrap_err().to_string();
            assert!(err.contains("invalid"), "{err}");
        }
        // A restored buffer of the wrong length: refused at the step, nothing moved.
        let config = SgdConfig {
            momentum: 0.9,
            ..Default::default()
        };
        let mut sgd = Sgd::new(config, 1).unwrap();
        sgd.load_state(vec![vec![0.0; 3]]).unwrap();
        let mut p = t(&[1.0, 2.0]);
        let err = sgd
            .step(&mut [&mut p], &[Some(&t(&[1.0, 1.0]))])
            .unwrap_err()
            .to_string();
        assert!(err.contains("momentum buffer 0 has 3"), "{err}");
        assert_eq!(p.data(), &[1.0, 2.0]);
    }
}
