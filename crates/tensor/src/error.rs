//! The one error type of the tensor crate.
//!
//! Every public operation that can be handed bad arguments returns
//! `Result<_, TensorError>`: a shape that does not fit, a data buffer of the wrong
//! length, an index out of range, or an ISA tier that cannot run here. The messages name
//! the operation and the offending values so that a user can fix the call without reading
//! this crate's source.

use std::fmt;

use crate::isa::IsaError;

/// What went wrong in a tensor operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TensorError {
    /// The number of elements does not match the shape (`from_vec`, `reshape`).
    ElementCount {
        /// The operation that found it.
        op: &'static str,
        /// The shape asked for.
        shape: Vec<usize>,
        /// Its number of elements.
        expected: usize,
        /// The number given.
        got: usize,
    },
    /// Two operands (or an operand and a parameter) disagree on a shape.
    ShapeMismatch {
        /// The operation that found it.
        op: &'static str,
        /// The argument whose shape is wrong.
        arg: &'static str,
        /// The shape the operation needs.
        expected: Vec<usize>,
        /// The shape given.
        got: Vec<usize>,
    },
    /// An operand has the wrong number of dimensions.
    Rank {
        /// The operation that found it.
        op: &'static str,
        /// The number of dimensions it needs.
        expected: usize,
        /// The shape given.
        got: Vec<usize>,
    },
    /// An index outside the tensor.
    Index {
        /// The index given.
        index: Vec<usize>,
        /// The tensor's shape.
        shape: Vec<usize>,
    },
    /// An argument that is out of its legal range (a zero stride, a kernel larger than
    /// the padded input, ...), with the reason in words.
    InvalidArgument {
        /// The operation that found it.
        op: &'static str,
        /// What is wrong, in words.
        reason: String,
    },
    /// The requested ISA tier cannot run on this machine, or `RESNET_ISA` is not a tier.
    Isa(IsaError),
}

impl fmt::Display for TensorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorError::ElementCount {
                op,
                shape,
                expected,
                got,
            } => write!(
                f,
                "{op}: shape {shape:?} holds {expected} elements but {got} were given"
            ),
            TensorError::ShapeMismatch {
                op,
                arg,
                expected,
                got,
            } => write!(f, "{op}: {arg} has shape {got:?}, expected {expected:?}"),
            TensorError::Rank { op, expected, got } => write!(
                f,
                "{op}: expected a tensor of rank {expected}, got shape {got:?} (rank {})",
                got.len()
            ),
            TensorError::Index { index, shape } => {
                write!(f, "index {index:?} is out of bounds for shape {shape:?}")
            }
            TensorError::InvalidArgument { op, reason } => write!(f, "{op}: {reason}"),
            TensorError::Isa(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for TensorError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TensorError::Isa(e) => Some(e),
            _ => None,
        }
    }
}

impl From<IsaError> for TensorError {
    fn from(e: IsaError) -> Self {
        TensorError::Isa(e)
    }
}

/// Shorthand for the crate's results.
pub type Result<T, E = TensorError> = std::result::Result<T, E>;
