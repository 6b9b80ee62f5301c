//! An input read by several ops: the outputs of their leading parameter-free layers are
//! computed once and shared, and their leading convolutions can run fused into one.

use tch::nn;
use tch::Tensor;

use super::plans::{ConvGeom, LayerDesc};
use crate::agents::compute;

/// A tensor read by several ops. The outputs of the parameter-free layers that ops start with
/// (ReLU, tanh, pools: [`LayerDesc::is_stateless`]) are computed on first use and then shared,
/// keyed by the chain of such layers: every edge that leaves a cell state runs the same
/// candidate ops, so without sharing a state's ReLU, tanh or stride-2 average pool would be
/// computed (and kept for backward) once per op and edge.
///
/// It also holds the outputs of convolutions fused across ops ([`SharedInput::fuse_convs`]).
#[derive(Debug)]
pub struct SharedInput {
    x: Tensor,
    prefixes: std::cell::RefCell<Vec<(Vec<LayerDesc>, Tensor)>>,
    /// `(address of the op's nn::Conv2D, its output, whether the output is already scaled
    /// by the op's weight)`: the conv was run as part of a fused one, or alone with its op
    /// weight folded into the kernel.
    pub(super) fused: std::cell::RefCell<Vec<(usize, Tensor, bool)>>,
}

/// A leading conv for [`SharedInput::fuse_convs`]: the layer, its geometry, and, for an op
/// that is that conv alone ([`Op::is_single_conv`](super::Op::is_single_conv)), the op weight
/// to fold into its kernel and bias (a 0-dim tensor).
pub type LeadingConv<'a> = (&'a nn::Conv2D, ConvGeom, Option<Tensor>);

/// The identity of a built conv layer while its network lives (the key of fused outputs).
fn conv_key(conv: &nn::Conv2D) -> usize {
    std::ptr::from_ref(conv) as usize
}

impl SharedInput {
    pub fn new(x: Tensor) -> Self {
        Self {
            x,
            prefixes: std::cell::RefCell::new(Vec::new()),
            fused: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// Runs the ops' leading convolutions that read this input
    /// ([`Op::leading_conv`](super::Op::leading_conv)) as one convolution per geometry, weights
    /// concatenated on output channels, and keeps each op's slice for
    /// [`Op::forward_shared`](super::Op::forward_shared).
    ///
    /// Why: every edge leaving a cell state has its own conv of the state (RL-DARTS: a
    /// `conv_3x3` on each of them). At the narrow widths of RL encoders (4-32 channels) one
    /// conv with k times the output channels fills the vector units that k small ones leave
    /// mostly idle, and costs one kernel launch instead of k. Autograd splits the gradient
    /// back to each op's own weights, so results equal the unfused ones up to float rounding.
    ///
    /// A conv given with an op weight `w` runs with kernel `w W` and bias `w b`, and its output
    /// is then the op's weighted term itself ([`SharedInput::is_prescaled`]): the mixed op adds
    /// it to its sum without the product `w * y`. That saves the product's pass forward, its
    /// two passes backward (`w g` and `<g, y>`, which now come from the conv's own backward
    /// and a product the size of the kernel), and above all the conv output the product kept
    /// for backward, one activation per edge. Such a conv runs (and is kept here) even when
    /// no other conv shares its geometry.
    pub fn fuse_convs(&self, convs: &[LeadingConv<'_>]) {
        let scaled = |j: usize| -> (Tensor, Option<Tensor>) {
            let (conv, _, w) = &convs[j];
            match w {
                Some(w) => (&conv.ws * w, conv.bs.as_ref().map(|b| b * w)),
                None => (
                    conv.ws.shallow_clone(),
                    conv.bs.as_ref().map(Tensor::shallow_clone),
                ),
            }
        };
        let mut done = vec![false; convs.len()];
        for i in 0..convs.len() {
            if done[i] {
                continue;
            }
            let same_geometry = |g: &ConvGeom| {
                ConvGeom { c_out: 0, ..*g }
                    == ConvGeom {
                        c_out: 0,
                        ..convs[i].1
                    }
            };
            let group: Vec<usize> = (i..convs.len())
                .filter(|&j| !done[j] && same_geometry(&convs[j].1))
                .collect();
            for &j in &group {
                done[j] = true;
            }
            if group.len() < 2 && convs[i].2.is_none() {
                continue;
            }
            let g = convs[i].1;
            let (weights, biases): (Vec<Tensor>, Vec<Option<Tensor>>) =
                group.iter().map(|&j| scaled(j)).unzip();
            let biases: Option<Vec<Tensor>> = biases.into_iter().collect();
            let (weight, bias) = match group.len() {
                1 => (weights[0].shallow_clone(), biases.map(|mut b| b.remove(0))),
                _ => (Tensor::cat(&weights, 0), biases.map(|b| Tensor::cat(&b, 0))),
            };
            let y = compute::conv2d(&self.x, &weight, bias.as_ref(), g.shape());
            let sizes: Vec<i64> = group.iter().map(|&j| convs[j].1.c_out).collect();
            let mut fused = self.fused.borrow_mut();
            for (&j, part) in group.iter().zip(y.split_with_sizes(&sizes, 1)) {
                fused.push((conv_key(convs[j].0), part, convs[j].2.is_some()));
            }
        }
    }

    /// The output of `conv` on this input, if [`SharedInput::fuse_convs`] computed it.
    pub(super) fn fused_output(&self, conv: &nn::Conv2D) -> Option<Tensor> {
        let key = conv_key(conv);
        self.fused
            .borrow()
            .iter()
            .find(|(k, ..)| *k == key)
            .map(|(_, y, _)| y.shallow_clone())
    }

    /// True when [`SharedInput::fuse_convs`] ran `conv` with its op weight folded in, so the
    /// op's output here is already its weighted term.
    pub fn is_prescaled(&self, conv: &nn::Conv2D) -> bool {
        let key = conv_key(conv);
        self.fused
            .borrow()
            .iter()
            .any(|(k, _, prescaled)| *k == key && *prescaled)
    }

    pub fn tensor(&self) -> &Tensor {
        &self.x
    }

    /// The input after the stateless layers `chain`, computed once per distinct chain (each
    /// chain reuses its longest cached head, so `[avg_pool, relu]` and `[avg_pool, tanh]` pool
    /// once).
    pub fn after(&self, chain: &[LayerDesc]) -> Tensor {
        let Some((last, head)) = chain.split_last() else {
            return self.x.shallow_clone();
        };
        if let Some((_, y)) = self.prefixes.borrow().iter().find(|(c, _)| c == chain) {
            return y.shallow_clone();
        }
        let y = last.forward_stateless(&self.after(head));
        self.prefixes
            .borrow_mut()
            .push((chain.to_vec(), y.shallow_clone()));
        y
    }

    /// How many distinct layer chains have been computed (for tests).
    pub fn cached_chains(&self) -> usize {
        self.prefixes.borrow().len()
    }

    pub fn into_tensor(self) -> Tensor {
        self.x
    }
}
