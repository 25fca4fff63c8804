//! [`Error`]: every way a `resnet` call can fail, in one type, for code that does not
//! need to tell the kinds apart (`?` converts each module's own error into it).
//!
//! Each module keeps its own precise error ([`TensorError`], [`WeightsError`],
//! [`DataError`], [`UnknownArch`] and, with the `train` feature, [`TrainError`]): match
//! on those where the kind matters. [`Error::source`](std::error::Error::source) returns
//! the module's error, so a report walks from the summary to the cause.

use std::fmt;

use crate::arch::UnknownArch;
use crate::data::DataError;
#[cfg(feature = "train")]
use crate::trainer::TrainError;
use crate::weights::WeightsError;
use tensor::TensorError;

/// Any error of the `resnet` crate (see the module docs).
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A tensor operation refused its arguments (shapes, lengths, kernels).
    Tensor(TensorError),
    /// A weights file could not be read, written or fitted to the model.
    Weights(WeightsError),
    /// An image or data set could not be read or decoded.
    Data(DataError),
    /// An architecture name that names none.
    Arch(UnknownArch),
    /// Training stopped (with the `train` feature).
    #[cfg(feature = "train")]
    Train(TrainError),
}

/// `Result` with [`Error`] as its default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Tensor(e) => e.fmt(f),
            Error::Weights(e) => e.fmt(f),
            Error::Data(e) => e.fmt(f),
            Error::Arch(e) => e.fmt(f),
            #[cfg(feature = "train")]
            Error::Train(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(match self {
            Error::Tensor(e) => e,
            Error::Weights(e) => e,
            Error::Data(e) => e,
            Error::Arch(e) => e,
            #[cfg(feature = "train")]
            Error::Train(e) => e,
        })
    }
}

macro_rules! from {
    ($($(#[$m:meta])* $variant:ident($t:ty)),* $(,)?) => {$(
        $(#[$m])*
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::$variant(e)
            }
        }
    )*};
}

from!(
    Tensor(TensorError),
    Weights(WeightsError),
    Data(DataError),
    Arch(UnknownArch),
    #[cfg(feature = "train")]
    Train(TrainError),
);

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn every_error_converts_and_keeps_its_cause() {
        fn arch() -> Result<crate::Arch> {
            Ok("resnet19".parse()?)
        }
        let e = arch().unwrap_err();
        assert!(matches!(e, Error::Arch(_)));
        assert!(e.to_string().contains("resnet19"), "{e}");
        assert!(e.source().unwrap().to_string().contains("resnet19"));

        fn shape() -> Result<tensor::Tensor> {
            Ok(tensor::Tensor::from_vec(&[2, 2], vec![0.0; 3])?)
        }
        let e = shape().unwrap_err();
        assert!(matches!(e, Error::Tensor(_)));
        assert!(e.source().is_some());

        fn weights() -> Result<crate::ResNet> {
            Ok(crate::ResNet::from_safetensors(
                crate::Arch::ResNet18,
                "no/such/file.safetensors",
            )?)
        }
        let e = weights().unwrap_err();
        assert!(matches!(e, Error::Weights(_)));
        assert!(e.to_string().contains("file.safetensors"), "{e}");
    }
}
