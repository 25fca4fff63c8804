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

use tensor::{Result, Tensor, TensorError};

/// SGD's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    pub lr: f32,
    pub momentum: f32,
    pub dampening: f32,
    pub weight_decay: f32,
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
    pub config: SgdConfig,
    /// One momentum buffer per parameter, empty until its first step.
    buffers: Vec<Vec<f32>>,
}

impl Sgd {
    /// An optimizer for `params` parameters.
    pub fn new(config: SgdConfig, params: usize) -> Result<Self> {
        if config.nesterov && (config.momentum <= 0.0 || config.dampening != 0.0) {
            return Err(TensorError::InvalidArgument {
                op: "Sgd::new",
                reason: "Nesterov momentum needs momentum > 0 and zero dampening".into(),
            });
        }
        Ok(Sgd {
            config,
            buffers: vec![Vec::new(); params],
        })
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
        for (p, g) in params.iter().zip(grads) {
            if let Some(g) = g {
                if g.shape() != p.shape() {
                    return Err(TensorError::ShapeMismatch {
                        op: "Sgd::step",
                        expected: p.shape().to_vec(),
                        got: g.shape().to_vec(),
                    });
                }
            }
        }
        let SgdConfig {
            lr,
            momentum,
            dampening,
            weight_decay,
            nesterov,
        } = self.config;
        for ((p, g), buf) in params.iter_mut().zip(grads).zip(&mut self.buffers) {
            let Some(g) = g else { continue };
            let first = buf.is_empty();
            if momentum != 0.0 && first {
                buf.resize(p.len(), 0.0);
            }
            for (j, (pv, &gv)) in p.data_mut().iter_mut().zip(g.data()).enumerate() {
                let mut d = gv;
                if weight_decay != 0.0 {
                    d += weight_decay * *pv;
                }
                if momentum != 0.0 {
                    let b = &mut buf[j];
                    *b = if first {
                        d
                    } else {
                        momentum * *b + (1.0 - dampening) * d
                    };
                    d = if nesterov { d + momentum * *b } else { *b };
                }
                *pv -= lr * d;
            }
        }
        Ok(())
    }

    /// The momentum buffers (empty for a parameter that has not stepped yet).
    pub fn state(&self) -> &[Vec<f32>] {
        &self.buffers
    }

    /// Restores momentum buffers saved by [`Sgd::state`].
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
