//! Image-classification datasets as tensors for the supervised search and retraining loops:
//! scikit-learn's 8x8 digits (Alpaydin & Kaynak 1998, UCI), MNIST (LeCun et al. 1998, IDX
//! files) and CIFAR-10 (Krizhevsky 2009, binary version); DARTS's train/val split and CIFAR
//! augmentation (random crop with 4-pixel padding, horizontal flip, cutout of DeVries &
//! Taylor 2017).
//!
//! Randomness (shuffling, augmentation) comes from a [`ChaCha8Rng`] the caller owns and
//! checkpoints, so a resumed run sees the same batches as an uninterrupted one.

mod loaders;

pub use loaders::{
    check_cifar10, check_digits, check_mnist, load_cifar10, load_digits, load_mnist, CIFAR10_FILES,
    DIGITS_CSV, MNIST_FILES,
};

use std::path::PathBuf;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Failures reading a dataset; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The I/O error is part of the message, not a `source`: anyhow's `{:#}` would print it a
    /// second time after the hint.
    #[error("{path}: {cause}. {hint}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
        hint: String,
    },
    #[error("{path}: {message}")]
    Malformed { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("libtorch: {0}")]
    Tch(#[from] tch::TchError),
}

/// Images and labels in memory.
#[derive(Debug)]
pub struct Dataset {
    /// `[N, C, H, W]` f32 (raw pixel scale until [`Normalizer::apply`]).
    pub images: Tensor,
    /// `[N]` i64 class indices.
    pub labels: Tensor,
    pub num_classes: i64,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `[C, H, W]` of one image.
    pub fn image_shape(&self) -> [i64; 3] {
        let s = self.images.size();
        [s[1], s[2], s[3]]
    }

    /// The samples at `indices` (a copy).
    pub fn subset(&self, indices: &[i64]) -> Dataset {
        let index = Tensor::from_slice(indices).to_device(self.images.device());
        Dataset {
            images: self.images.index_select(0, &index),
            labels: self.labels.index_select(0, &index),
            num_classes: self.num_classes,
        }
    }

    /// Splits off a random `fraction` (rounded) as a second set, with a permutation drawn
    /// from `seed` (fixed, so a held-out test split is the same in every run).
    pub fn split(&self, fraction: f64, seed: u64) -> Result<(Dataset, Dataset), DataError> {
        if !(0.0..1.0).contains(&fraction) {
            return Err(DataError::Invalid(format!(
                "split fraction must be in [0, 1), got {fraction}"
            )));
        }
        let mut order: Vec<i64> = (0..self.len() as i64).collect();
        let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
        order.shuffle(&mut rng);
        let cut = self.len() - (self.len() as f64 * fraction).round() as usize;
        let (a, b) = order.split_at(cut);
        let (mut a, mut b) = (a.to_vec(), b.to_vec());
        a.sort_unstable();
        b.sort_unstable();
        Ok((self.subset(&a), self.subset(&b)))
    }

    /// DARTS's search split: the first `portion` of the (unshuffled) training set trains the
    /// weights, the rest is the search (validation) set (`train_search.py`, portion 0.5).
    pub fn split_head(&self, portion: f64) -> Result<(Dataset, Dataset), DataError> {
        if !(portion > 0.0 && portion < 1.0) {
            return Err(DataError::Invalid(format!(
                "train_portion must be in (0, 1), got {portion}"
            )));
        }
        let n = self.len() as i64;
        let cut = (n as f64 * portion).floor() as i64;
        Ok((
            self.subset(&(0..cut).collect::<Vec<_>>()),
            self.subset(&(cut..n).collect::<Vec<_>>()),
        ))
    }

    pub fn to_device(&self, device: Device) -> Dataset {
        Dataset {
            images: self.images.to_device(device),
            labels: self.labels.to_device(device),
            num_classes: self.num_classes,
        }
    }
}

/// Per-channel `(x - mean) / std`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalizer {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl Normalizer {
    /// CIFAR-10 constants of the DARTS code (`utils._data_transforms_cifar10`), for pixels
    /// scaled to [0, 1].
    pub fn cifar10() -> Self {
        Self {
            mean: vec![0.49139968, 0.48215827, 0.44653124],
            std: vec![0.24703233, 0.24348505, 0.26158768],
        }
    }

    /// Statistics of `images` `[N, C, H, W]` (compute them on the training split only).
    pub fn fit(images: &Tensor) -> Self {
        let per_channel = |t: Tensor| {
            Vec::<f64>::try_from(t.to_kind(Kind::Double).to_device(Device::Cpu)).unwrap_or_default()
        };
        let mean = per_channel(images.mean_dim([0i64, 2, 3].as_slice(), false, Kind::Float));
        let std = per_channel(images.std_dim([0i64, 2, 3].as_slice(), false, false));
        Self {
            mean,
            std: std.into_iter().map(|s| s.max(1e-6)).collect(),
        }
    }

    /// # Shapes
    /// `[N, C, H, W] -> [N, C, H, W]`
    pub fn apply(&self, images: &Tensor) -> Tensor {
        let c = self.mean.len() as i64;
        let mean = Tensor::from_slice(&self.mean)
            .to_kind(images.kind())
            .to_device(images.device())
            .view([1, c, 1, 1]);
        let std = Tensor::from_slice(&self.std)
            .to_kind(images.kind())
            .to_device(images.device())
            .view([1, c, 1, 1]);
        (images - mean) / std
    }
}

/// Training-time augmentation (DARTS CIFAR: crop padding 4, flip, cutout 16 in evaluation).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Augment {
    /// Zero-pad by this many pixels, then crop back at a random offset (0 = off). DARTS: 4.
    pub crop_padding: i64,
    /// Random horizontal flip with probability 0.5.
    pub flip: bool,
    /// Zero a random square of this side (clipped at the border) per image (0 = off). DARTS
    /// evaluation: 16. Applied after normalisation, as in the official code.
    pub cutout: i64,
}

impl Augment {
    pub fn is_identity(&self) -> bool {
        self.crop_padding == 0 && !self.flip && self.cutout == 0
    }

    /// Augments a normalised batch, drawing all randomness from `rng`.
    ///
    /// # Shapes
    /// `[N, C, H, W] -> [N, C, H, W]`
    pub fn apply(&self, x: &Tensor, rng: &mut ChaCha8Rng) -> Tensor {
        if self.is_identity() {
            return x.shallow_clone();
        }
        let [n, _, h, w] = x.size()[..] else {
            return x.shallow_clone();
        };
        let p = self.crop_padding;
        let padded = if p > 0 {
            x.constant_pad_nd([p, p, p, p])
        } else {
            x.shallow_clone()
        };
        let mut out = Vec::with_capacity(n as usize);
        let mut masks = Vec::new();
        for i in 0..n {
            let (dy, dx) = if p > 0 {
                (rng.gen_range(0..=2 * p), rng.gen_range(0..=2 * p))
            } else {
                (0, 0)
            };
            let mut img = padded.get(i).narrow(1, dy, h).narrow(2, dx, w);
            if self.flip && rng.gen_bool(0.5) {
                img = img.flip([2]);
            }
            out.push(img);
            if self.cutout > 0 {
                // The official Cutout: centre uniform over the image, square clipped at the border.
                let (cy, cx) = (rng.gen_range(0..h), rng.gen_range(0..w));
                let half = self.cutout / 2;
                masks.push([
                    (cy - half).max(0),
                    (cy + half).min(h),
                    (cx - half).max(0),
                    (cx + half).min(w),
                ]);
            }
        }
        let batch = Tensor::stack(&out, 0);
        if masks.is_empty() {
            return batch;
        }
        let mask = Tensor::ones([n, 1, h, w], (x.kind(), Device::Cpu));
        for (i, [y0, y1, x0, x1]) in masks.into_iter().enumerate() {
            let _ = mask
                .get(i as i64)
                .narrow(1, y0, y1 - y0)
                .narrow(2, x0, x1 - x0)
                .fill_(0.0);
        }
        batch * mask.to_device(x.device())
    }
}

/// Shuffled minibatch indices over one epoch (the last, smaller batch included, as PyTorch's
/// DataLoader with `drop_last=False`).
pub fn epoch_batches(
    len: usize,
    batch_size: usize,
    shuffle: bool,
    rng: &mut ChaCha8Rng,
) -> Vec<Vec<i64>> {
    let mut order: Vec<i64> = (0..len as i64).collect();
    if shuffle {
        order.shuffle(rng);
    }
    order
        .chunks(batch_size.max(1))
        .map(<[i64]>::to_vec)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn toy(n: i64) -> Dataset {
        Dataset {
            images: Tensor::arange(n * 4, (Kind::Float, Device::Cpu)).view([n, 1, 2, 2]),
            labels: Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(3),
            num_classes: 3,
        }
    }

    #[test]
    fn splits_partition_the_data_and_are_seeded() {
        let d = toy(10);
        let (a, b) = d.split(0.2, 7).unwrap();
        assert_eq!((a.len(), b.len()), (8, 2));
        let (a2, b2) = d.split(0.2, 7).unwrap();
        assert!(a.images.equal(&a2.images) && b.labels.equal(&b2.labels));
        let all: f64 = a.images.sum(Kind::Double).double_value(&[])
            + b.images.sum(Kind::Double).double_value(&[]);
        assert_eq!(all, d.images.sum(Kind::Double).double_value(&[]));
        let (t, v) = d.split_head(0.5).unwrap();
        assert_eq!((t.len(), v.len()), (5, 5));
        assert!(d.split_head(1.0).is_err());
    }

    #[test]
    fn normalizer_standardises_each_channel() {
        tch::manual_seed(0);
        let x = Tensor::rand([50, 3, 4, 4], (Kind::Float, Device::Cpu)) * 5.0 + 2.0;
        let n = Normalizer::fit(&x);
        let y = n.apply(&x);
        let m =
            Vec::<f64>::try_from(y.mean_dim([0i64, 2, 3].as_slice(), false, Kind::Double)).unwrap();
        assert!(m.iter().all(|v| v.abs() < 1e-4), "{m:?}");
    }

    #[test]
    fn augmentation_keeps_shapes_and_cutout_zeroes_a_square() {
        let x = Tensor::ones([4, 3, 8, 8], (Kind::Float, Device::Cpu));
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let aug = Augment {
            crop_padding: 2,
            flip: true,
            cutout: 4,
        };
        let y = aug.apply(&x, &mut rng);
        assert_eq!(y.size(), [4, 3, 8, 8]);
        let zeros = y.eq(0.0).sum(Kind::Int64).int64_value(&[]);
        assert!(zeros > 0, "padding or cutout should zero some pixels");
        let only_cutout = Augment {
            cutout: 4,
            ..Augment::default()
        }
        .apply(&x, &mut rng);
        // Each image loses at most a 4x4 square (fewer pixels where clipped), in every channel.
        let per_image =
            only_cutout
                .eq(0.0)
                .sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Int64);
        assert!(Vec::<i64>::try_from(per_image)
            .unwrap()
            .iter()
            .all(|&z| z > 0 && z <= 48));
        // Same seed, same augmentation.
        let a = aug.apply(&x, &mut ChaCha8Rng::seed_from_u64(5));
        let b = aug.apply(&x, &mut ChaCha8Rng::seed_from_u64(5));
        assert!(a.equal(&b));
    }

    #[test]
    fn epoch_batches_cover_every_index_once() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let batches = epoch_batches(10, 4, true, &mut rng);
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
        let mut all: Vec<i64> = batches.concat();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }
}
