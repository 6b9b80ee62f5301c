//! The tiny DARTS supernet and the six-image batches that the gradient and precision tests
//! share: small enough for finite differences in f64, large enough for every op to matter.

use rl_darts::nas::{DartsSearchConfig, OpSet};
use tch::{Device, Kind, Tensor};

/// 2 channels, 2 cells, 2 nodes, 3 classes, one 6x6 input channel, the DARTS ops.
pub fn tiny_search_net_config() -> DartsSearchConfig {
    DartsSearchConfig {
        c: 2,
        layers: 2,
        num_classes: 3,
        num_nodes: 2,
        stem_multiplier: 1,
        in_channels: 1,
        op_set: OpSet::Darts,
        partial_channels: Default::default(),
    }
}

/// A train and a search batch for [`tiny_search_net_config`]: 6 random `[1, 6, 6]` images
/// each (drawn from libtorch's generator, train first), every class twice.
pub fn six_image_batches(kind: Kind, device: Device) -> ((Tensor, Tensor), (Tensor, Tensor)) {
    let train = (
        Tensor::randn([6, 1, 6, 6], (kind, device)),
        Tensor::from_slice(&[0i64, 1, 2, 0, 1, 2]).to(device),
    );
    let search = (
        Tensor::randn([6, 1, 6, 6], (kind, device)),
        Tensor::from_slice(&[2i64, 1, 0, 2, 1, 0]).to(device),
    );
    (train, search)
}
