//! The ResNet family: which blocks, how many, how wide.
//!
//! - ImageNet ResNets (He et al. 2015, as torchvision builds them, "v1.5": in a
//!   bottleneck the stride is on the 3x3 convolution): a 7x7/2 stem and 3x3/2 max pool,
//!   four stages of 64/128/256/512 base channels, projection shortcuts (1x1 conv + BN)
//!   where the shape changes, global average pooling and one linear layer.
//! - ResNeXt (Xie et al. 2017, torchvision's): the ResNet-50/101 bottleneck with a
//!   wider 3x3 convolution split into 32 or 64 channel groups (see [`Arch::groups`]).
//! - timm's ResNet-D (He et al. 2018, "Bag of Tricks"): the same stages, with a deep
//!   stem (three 3x3 convolutions) and average-pooling shortcuts (see
//!   [`Arch::is_resnet_d`]).
//! - CIFAR ResNets (the paper's section 4.2): a 3x3 stem with 16 channels, three stages of
//!   16/32/64 channels with `n` basic blocks each (depth `6n + 2`), and "option A"
//!   identity shortcuts: a stride-2 subsample zero-padded to the new channel count, with
//!   no parameters.

use std::fmt;
use std::str::FromStr;

/// The residual block type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3x3 convolutions (ResNet-18/34 and the CIFAR nets); expansion 1.
    Basic,
    /// 1x1 reduce, 3x3, 1x1 expand by 4 (ResNet-50/101/152).
    Bottleneck,
}

impl BlockKind {
    /// Output channels of a block per base channel.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// A ResNet architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// torchvision's ResNet-18: basic blocks, 2-2-2-2 per stage.
    ResNet18,
    /// torchvision's ResNet-34: basic blocks, 3-4-6-3 per stage.
    ResNet34,
    /// torchvision's ResNet-50: bottleneck blocks, 3-4-6-3 per stage.
    ResNet50,
    /// torchvision's ResNet-101: bottleneck blocks, 3-4-23-3 per stage.
    ResNet101,
    /// torchvision's ResNet-152: bottleneck blocks, 3-8-36-3 per stage.
    ResNet152,
    /// torchvision's Wide ResNet-50-2: ResNet-50 with bottlenecks twice as wide inside
    /// (the 3x3 convolutions have 128..1024 channels; the blocks' outputs are ResNet-50's).
    WideResNet50_2,
    /// torchvision's Wide ResNet-101-2: ResNet-101 with bottlenecks twice as wide inside.
    WideResNet101_2,
    /// torchvision's ResNeXt-50 32x4d: ResNet-50 whose bottlenecks' 3x3 convolutions
    /// have 32 groups of 4 channels at the first stage (128..1024 channels, see
    /// [`Arch::groups`]).
    ResNeXt50_32x4d,
    /// torchvision's ResNeXt-101 32x8d: ResNet-101's blocks, 32 groups of 8 channels.
    ResNeXt101_32x8d,
    /// torchvision's ResNeXt-101 64x4d: ResNet-101's blocks, 64 groups of 4 channels.
    ResNeXt101_64x4d,
    /// timm's ResNet-26-D: bottleneck blocks, 2-2-2-2 per stage, the ResNet-D changes
    /// (see [`Arch::is_resnet_d`]).
    ResNet26D,
    /// timm's ResNet-50-D: ResNet-50's blocks with the ResNet-D changes.
    ResNet50D,
    /// timm's ResNet-101-D: ResNet-101's blocks with the ResNet-D changes.
    ResNet101D,
    /// A CIFAR ResNet of depth `6n + 2` (20, 32, 44, 56, 110, ...).
    Cifar {
        /// Weighted layers, `6n + 2` for `n >= 1` basic blocks per stage. Parsing
        /// (`cifar-resnetN`) checks it; a value set directly is not checked, and
        /// `(depth - 2) / 6` blocks per stage are built.
        depth: usize,
    },
}

impl Arch {
    /// The five ImageNet depths and the CIFAR depths of the paper.
    pub const ALL: [Arch; 10] = [
        Arch::ResNet18,
        Arch::ResNet34,
        Arch::ResNet50,
        Arch::ResNet101,
        Arch::ResNet152,
        Arch::Cifar { depth: 20 },
        Arch::Cifar { depth: 32 },
        Arch::Cifar { depth: 44 },
        Arch::Cifar { depth: 56 },
        Arch::Cifar { depth: 110 },
    ];

    /// torchvision's wide variants (not in [`Arch::ALL`]: 69 M and 127 M parameters).
    pub const WIDE: [Arch; 2] = [Arch::WideResNet50_2, Arch::WideResNet101_2];

    /// timm's ResNet-D variants (not in [`Arch::ALL`]).
    pub const RESNET_D: [Arch; 3] = [Arch::ResNet26D, Arch::ResNet50D, Arch::ResNet101D];

    /// torchvision's ResNeXt variants (not in [`Arch::ALL`]).
    pub const RESNEXT: [Arch; 3] = [
        Arch::ResNeXt50_32x4d,
        Arch::ResNeXt101_32x8d,
        Arch::ResNeXt101_64x4d,
    ];

    /// Every ImageNet and CIFAR architecture this crate builds: [`Arch::ALL`], the wide
    /// ones and the ResNet-D ones.
    pub fn every() -> impl Iterator<Item = Arch> {
        Arch::ALL
            .into_iter()
            .chain(Arch::WIDE)
            .chain(Arch::RESNET_D)
            .chain(Arch::RESNEXT)
    }

    /// Channel groups of a bottleneck's 3x3 convolution (torchvision's `groups`): 32 or
    /// 64 for ResNeXt, 1 otherwise.
    pub fn groups(self) -> usize {
        match self {
            Arch::ResNeXt50_32x4d | Arch::ResNeXt101_32x8d => 32,
            Arch::ResNeXt101_64x4d => 64,
            _ => 1,
        }
    }

    /// The channels inside a bottleneck of `base` base channels (64..512): torchvision's
    /// `width = base * (width_per_group / 64) * groups`, so `base` for ResNet-50,
    /// `2 base` for the wide nets and ResNeXt-50 32x4d (`32 x 4 = 128` at 64 base
    /// channels), `4 base` for ResNeXt-101 32x8d and 64x4d.
    pub fn bottleneck_width(self, base: usize) -> usize {
        let width_per_group = match self {
            Arch::WideResNet50_2 | Arch::WideResNet101_2 => 128,
            Arch::ResNeXt50_32x4d | Arch::ResNeXt101_64x4d => 4,
            Arch::ResNeXt101_32x8d => 8,
            _ => 64,
        };
        base * width_per_group / 64 * self.groups()
    }

    /// True for timm's ResNet-D variants ("Bag of Tricks", He et al. 2018): a deep stem
    /// of three 3x3 convolutions (32, 32, 64 channels; the first with stride 2) in place
    /// of the 7x7, and shortcuts that average-pool 2x2 (`ceil_mode`, padding not counted)
    /// before a stride-1 1x1 projection, instead of projecting with stride 2. timm's
    /// names: `conv1.0`, `conv1.1` (batch norm), `conv1.3`, `conv1.4`, `conv1.6`, `bn1`;
    /// `downsample.1` (the convolution) and `downsample.2` (its batch norm).
    pub fn is_resnet_d(self) -> bool {
        matches!(self, Arch::ResNet26D | Arch::ResNet50D | Arch::ResNet101D)
    }
    /// The block type.
    pub fn block(self) -> BlockKind {
        match self {
            Arch::ResNet18 | Arch::ResNet34 | Arch::Cifar { .. } => BlockKind::Basic,
            _ => BlockKind::Bottleneck,
        }
    }

    /// Blocks per stage.
    pub fn stage_blocks(self) -> Vec<usize> {
        match self {
            Arch::ResNet18 | Arch::ResNet26D => vec![2, 2, 2, 2],
            Arch::ResNet34
            | Arch::ResNet50
            | Arch::WideResNet50_2
            | Arch::ResNet50D
            | Arch::ResNeXt50_32x4d => vec![3, 4, 6, 3],
            Arch::ResNet101
            | Arch::WideResNet101_2
            | Arch::ResNet101D
            | Arch::ResNeXt101_32x8d
            | Arch::ResNeXt101_64x4d => vec![3, 4, 23, 3],
            Arch::ResNet152 => vec![3, 8, 36, 3],
            Arch::Cifar { depth } => vec![(depth - 2) / 6; 3],
        }
    }

    /// Base channels per stage.
    pub fn stage_channels(self) -> Vec<usize> {
        match self {
            Arch::Cifar { .. } => vec![16, 32, 64],
            _ => vec![64, 128, 256, 512],
        }
    }

    /// True for the CIFAR family (3x3 stem, no max pool, option-A shortcuts).
    pub fn is_cifar(self) -> bool {
        matches!(self, Arch::Cifar { .. })
    }

    /// Channels of the pooled feature vector (the input of `fc`).
    pub fn feature_dim(self) -> usize {
        self.stage_channels().last().copied().unwrap_or(0) * self.block().expansion()
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arch::ResNet18 => f.write_str("resnet18"),
            Arch::ResNet34 => f.write_str("resnet34"),
            Arch::ResNet50 => f.write_str("resnet50"),
            Arch::ResNet101 => f.write_str("resnet101"),
            Arch::ResNet152 => f.write_str("resnet152"),
            Arch::WideResNet50_2 => f.write_str("wide_resnet50_2"),
            Arch::WideResNet101_2 => f.write_str("wide_resnet101_2"),
            Arch::ResNeXt50_32x4d => f.write_str("resnext50_32x4d"),
            Arch::ResNeXt101_32x8d => f.write_str("resnext101_32x8d"),
            Arch::ResNeXt101_64x4d => f.write_str("resnext101_64x4d"),
            Arch::ResNet26D => f.write_str("resnet26d"),
            Arch::ResNet50D => f.write_str("resnet50d"),
            Arch::ResNet101D => f.write_str("resnet101d"),
            Arch::Cifar { depth } => write!(f, "cifar-resnet{depth}"),
        }
    }
}

/// An architecture name that is not a ResNet this crate builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownArch(pub String);

impl fmt::Display for UnknownArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown architecture {:?}: expected resnet18/34/50/101/152 or \
             wide_resnet50_2/wide_resnet101_2, resnext50_32x4d/resnext101_32x8d/resnext101_64x4d \
             (ImageNet, torchvision's), resnet26d/50d/101d \
             (timm's ResNet-D) or cifar-resnetN, a CIFAR ResNet of depth N = 6n+2 \
             (cifar-resnet20, cifar-resnet32, cifar-resnet44, cifar-resnet56, cifar-resnet110, ...)",
            self.0
        )?;
        // A CIFAR depth under the ImageNet prefix: timm and torchvision use such names
        // (timm's resnet26 is an ImageNet bottleneck net), so it is never guessed.
        if let Some(d) = self
            .0
            .trim()
            .to_ascii_lowercase()
            .strip_prefix("resnet")
            .and_then(|d| d.parse::<usize>().ok())
            .filter(|&d| d >= 8 && (d - 2) % 6 == 0)
        {
            write!(
                f,
                "; the CIFAR net of depth {d} is cifar-resnet{d} (a plain resnet{d} is not \
                 taken for it: timm's resnet26, for one, is an ImageNet network)"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownArch {}

impl FromStr for Arch {
    type Err = UnknownArch;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let unknown = || UnknownArch(s.to_string());
        match lower.replace('-', "_").as_str() {
            "wide_resnet50_2" => return Ok(Arch::WideResNet50_2),
            "wide_resnet101_2" => return Ok(Arch::WideResNet101_2),
            "resnext50_32x4d" => return Ok(Arch::ResNeXt50_32x4d),
            "resnext101_32x8d" => return Ok(Arch::ResNeXt101_32x8d),
            "resnext101_64x4d" => return Ok(Arch::ResNeXt101_64x4d),
            "resnet26d" | "resnet_26d" | "resnet26_d" => return Ok(Arch::ResNet26D),
            "resnet50d" | "resnet_50d" | "resnet50_d" => return Ok(Arch::ResNet50D),
            "resnet101d" | "resnet_101d" | "resnet101_d" => return Ok(Arch::ResNet101D),
            _ => {}
        }
        // `cifar-resnetN` (or `cifar_resnetN`): the CIFAR family, under its own prefix.
        let (cifar, rest) = match lower
            .strip_prefix("cifar-")
            .or_else(|| lower.strip_prefix("cifar_"))
        {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let depth: usize = rest
            .strip_prefix("resnet")
            .and_then(|d| d.strip_prefix('-').or(Some(d)))
            .and_then(|d| d.parse().ok())
            .ok_or_else(unknown)?;
        Ok(match (cifar, depth) {
            (false, 18) => Arch::ResNet18,
            (false, 34) => Arch::ResNet34,
            (false, 50) => Arch::ResNet50,
            (false, 101) => Arch::ResNet101,
            (false, 152) => Arch::ResNet152,
            (true, d) if d >= 8 && (d - 2) % 6 == 0 => Arch::Cifar { depth: d },
            _ => return Err(unknown()),
        })
    }
}
