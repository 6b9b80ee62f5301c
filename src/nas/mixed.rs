//! The mixed op of DARTS (Liu et al., ICLR 2019, eq. 2): `sum_o w_o * o(x)` over an op set,
//! with the evaluation of zero-weight ops skipped for hard samples (GDAS, Dong & Yang 2019).

use tch::nn;
use tch::Tensor;

use super::error::NasError;
use super::ops::{
    is_channels_last, to_channels_last, zeros_in_layout_of, LeadingConv, Op, OpKind, OpSet, OpSpec,
    SharedInput,
};

/// All ops of one edge.
#[derive(Debug)]
pub struct MixedOp {
    ops: Vec<Op>,
    /// Ops the dense forward evaluates: all but `none`, whose output is zero in value and in
    /// gradient (d(w * 0)/dw = 0), so computing it would only cost time and memory.
    evaluated: Vec<usize>,
    spec: OpSpec,
}

impl MixedOp {
    /// One op per member of `op_set`, each under `p / op.name()`.
    pub fn new(p: nn::Path, op_set: OpSet, spec: OpSpec) -> Result<Self, NasError> {
        let ops = op_set
            .ops()
            .iter()
            .map(|&kind| Op::new(&p / kind.name(), kind, spec))
            .collect::<Result<Vec<_>, _>>()?;
        let evaluated: Vec<usize> = (0..ops.len())
            .filter(|&o| ops[o].kind() != OpKind::None)
            .collect();
        if evaluated.is_empty() {
            return Err(NasError::Config(format!(
                "op set {op_set} has no op besides none"
            )));
        }
        Ok(Self {
            ops,
            evaluated,
            spec,
        })
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// The leading convs of the ops a forward evaluates ([`Op::leading_conv`]): all but
    /// `none`, or with `active = Some(list)` (a hard sample) the listed ones, for
    /// [`SharedInput::fuse_convs`]. With the edge's op weights `weights: [num_ops]` (one
    /// architecture for the whole batch), an op that is one conv alone comes with its weight,
    /// to be folded into the kernel; per-example weights `[N, num_ops]` cannot be folded.
    pub fn leading_convs<'a>(
        &'a self,
        weights: Option<&'a Tensor>,
        active: Option<&'a [usize]>,
    ) -> impl Iterator<Item = LeadingConv<'a>> + 'a {
        let foldable = weights.filter(|w| w.dim() == 1);
        let evaluated = self
            .evaluated
            .iter()
            .filter(move |o| active.is_none_or(|active| active.contains(o)));
        evaluated.filter_map(move |&o| {
            let op = &self.ops[o];
            let (conv, geom) = op.leading_conv()?;
            let fold = foldable
                .filter(|_| op.is_single_conv())
                .map(|w| w.get(o as i64));
            Some((conv, geom, fold))
        })
    }

    pub fn num_ops(&self) -> usize {
        self.ops.len()
    }

    /// Output `[C, H, W]` for an input `[C, H, W]` (every op has the same).
    pub fn out_shape(&self, input_chw: [i64; 3]) -> [i64; 3] {
        self.ops[0].out_shape(input_chw)
    }

    /// `sum_o w_o * op_o(x)` over every op.
    ///
    /// The sum is accumulated in place, one fused multiply-add per op (`addcmul_`), instead of
    /// stacking the op outputs and contracting them with `w`: the stack copied every output into
    /// one `[O', N, C, H, W]` buffer that backward then kept alive next to the outputs the ops
    /// keep anyway. Autograd sees `acc = y_0 w_0; acc += y_1 w_1; ...`, whose gradients are the
    /// stacked sum's: `dL/dy_o = w_o g`, `dL/dw_o = <g, y_o>`.
    ///
    /// # Shapes
    /// `x: [N, c_in, H, W]`, `weights: [num_ops]` (or `[N, num_ops]`, one row per example)
    /// -> `[N, c_out, H', W']`
    pub fn forward_t(&self, x: &Tensor, weights: &Tensor, train: bool) -> Tensor {
        self.forward_shared(&SharedInput::new(x.shallow_clone()), weights, train)
    }

    /// [`MixedOp::forward_t`] on a [`SharedInput`]: the parameter-free layers the ops start with
    /// (ReLU, tanh, pools) are shared with each other and with the other edges reading the
    /// same state. Per-example weights `[N, num_ops]` weigh example `n`'s op outputs by row `n`.
    pub fn forward_shared(&self, input: &SharedInput, weights: &Tensor, train: bool) -> Tensor {
        self.accumulate_shared(None, input, weights, None, train).0
    }

    /// Like [`MixedOp::forward_t`], but with `active = Some(list)` only the listed ops are
    /// evaluated. Every op outside the list must have weight exactly 0 (a hard sample); its
    /// weight is still added as a broadcast scalar, exactly 0 in value, as GDAS does
    /// (`hardwts[i]` for unsampled ops), so straight-through weights `h - sg(p) + p` give every
    /// op's probability a gradient while only the sampled ops run.
    ///
    /// # Shapes
    /// `x: [N, c_in, H, W]`, `weights: [num_ops]` -> `[N, c_out, H', W']`
    pub fn forward_sampled(
        &self,
        x: &Tensor,
        weights: &Tensor,
        active: Option<&[usize]>,
        train: bool,
    ) -> Tensor {
        self.forward_sampled_shared(&SharedInput::new(x.shallow_clone()), weights, active, train)
    }

    /// [`MixedOp::forward_sampled`] on a [`SharedInput`] (see [`MixedOp::forward_shared`]).
    pub fn forward_sampled_shared(
        &self,
        input: &SharedInput,
        weights: &Tensor,
        active: Option<&[usize]>,
        train: bool,
    ) -> Tensor {
        match self.accumulate_shared(None, input, weights, active, train) {
            (out, None) => out,
            (out, Some(inactive)) => out + inactive,
        }
    }

    /// Adds this edge's weighted op outputs to `acc` in place (a cell node's running sum of
    /// its edges), or starts the sum when `acc` is `None`; returns the sum and, when `active`
    /// left ops out, the sum of their weights: GDAS's broadcast scalar, exactly 0 in value,
    /// which [`MixedOp::forward_sampled_shared`] adds to the output. A cell adds the scalars of
    /// all edges into a node once instead of once per edge: the node's sum, and every
    /// gradient, is the same (`d/dc_e` of `sum_e (y_e + c_e)` is `sum(g)` for every edge),
    /// with one pass over the node's output instead of one per edge.
    ///
    /// Every op term is one fused multiply-add into the accumulator (`addcmul_`), instead of
    /// stacking the op outputs and contracting them with `w` (the stack copied every output
    /// into one `[O', N, C, H, W]` buffer that backward kept alive next to the outputs the ops
    /// keep anyway), and instead of a separate sum per edge and then per node. Autograd sees
    /// `acc = y_0 w_0; acc += y_1 w_1; ...`, whose gradients are the stacked sum's:
    /// `dL/dy_o = w_o g`, `dL/dw_o = <g, y_o>`. `acc` must be a tensor no autograd node saved
    /// for backward (the running sum itself: products and in-place sums save their inputs, not
    /// their results).
    ///
    /// # Shapes
    /// `acc: [N, c_out, H', W']`, `weights: [num_ops]` (or `[N, num_ops]` per example)
    /// -> `[N, c_out, H', W']`, and a 0-dim scalar
    pub fn accumulate_shared(
        &self,
        acc: Option<Tensor>,
        input: &SharedInput,
        weights: &Tensor,
        active: Option<&[usize]>,
        train: bool,
    ) -> (Tensor, Option<Tensor>) {
        let per_example = weights.dim() == 2;
        if per_example {
            let n = input.tensor().size()[0];
            assert_eq!(
                weights.size()[0],
                n,
                "per-example op weights for {} examples, but the batch has {n}",
                weights.size()[0]
            );
        }
        // The weight of op `o`: a scalar, or a column `[N, 1, 1, 1]` per example.
        let weight = |o: usize| match per_example {
            true => weights.select(1, o as i64).reshape([-1, 1, 1, 1]),
            false => weights.get(o as i64),
        };
        let mut is_active = vec![active.is_none(); self.ops.len()];
        if let Some(active) = active {
            for &o in active {
                is_active[o] = true;
            }
        }
        let mut acc = acc;
        // An op whose weight `input` already folded into its conv (SharedInput::fuse_convs)
        // gives its weighted term; it is added after the others, so that a product, not a
        // slice of the fused conv's output, starts the running sum.
        let prescaled = |o: usize| {
            self.ops[o]
                .leading_conv()
                .is_some_and(|(conv, _)| input.is_prescaled(conv))
        };
        // `none` adds w * 0: nothing, with zero gradient (an active one too, as in GDAS).
        let evaluated =
            (0..self.ops.len()).filter(|&o| is_active[o] && self.evaluated.contains(&o));
        let (folded, weighted): (Vec<usize>, Vec<usize>) = evaluated.partition(|&o| prescaled(o));
        for o in weighted {
            let y = self.ops[o].forward_shared(input, train);
            match acc.as_mut() {
                None => acc = Some(first_term(&y, &weight(o), input.tensor())),
                Some(acc) => {
                    let _ = acc.addcmul_(&y, &weight(o));
                }
            }
        }
        for o in folded {
            let y = self.ops[o].forward_shared(input, train);
            match acc.as_mut() {
                // Only for an edge whose evaluated ops are all folded convs: the product by
                // one makes a sum of its own, not a view into the fused output.
                None => {
                    let one = Tensor::ones([], (y.kind(), y.device()));
                    acc = Some(first_term(&y, &one, input.tensor()));
                }
                Some(acc) => {
                    *acc += &y;
                }
            }
        }
        let acc = acc.unwrap_or_else(|| {
            let x = input.tensor();
            let size = x.size();
            let [c, h, w] = self.out_shape([size[1], size[2], size[3]]);
            zeros_in_layout_of([size[0], c, h, w], x)
        });
        let inactive: Vec<Tensor> = (0..self.ops.len())
            .filter(|&o| !is_active[o])
            .map(|o| weights.get(o as i64))
            .collect();
        let inactive =
            (!inactive.is_empty()).then(|| Tensor::stack(&inactive, 0).sum(weights.kind()));
        (acc, inactive)
    }

    pub fn spec(&self) -> &OpSpec {
        &self.spec
    }
}

/// `y * w`, the first term of an in-place weighted sum, in the input's layout: an op output
/// can be a channel slice of a fused conv (`SharedInput::fuse_convs`), neither NCHW- nor
/// NHWC-contiguous, and an NCHW accumulator would turn every later kernel NCHW.
fn first_term(y: &Tensor, w: &Tensor, input: &Tensor) -> Tensor {
    let term = y * w;
    if is_channels_last(input) && !is_channels_last(&term) {
        to_channels_last(&term)
    } else {
        term
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn mixed(vs: &nn::VarStore, op_set: OpSet) -> MixedOp {
        let spec = OpSpec {
            stride_style: op_set.stride_style(),
            ..OpSpec::darts_search(4, 1)
        };
        MixedOp::new(vs.root() / "edge0", op_set, spec).unwrap()
    }

    /// The DARTS formula written literally: every op (none included) weighted and summed.
    fn naive(m: &MixedOp, x: &Tensor, w: &Tensor, train: bool) -> Tensor {
        let mut acc = m.ops()[0].forward_t(x, train) * w.get(0);
        for (o, op) in m.ops().iter().enumerate().skip(1) {
            acc += op.forward_t(x, train) * w.get(o as i64);
        }
        acc
    }

    #[test]
    fn dense_forward_equals_the_naive_weighted_sum() {
        tch::manual_seed(0);
        for op_set in OpSet::ALL {
            let vs = nn::VarStore::new(Device::Cpu);
            let m = mixed(&vs, op_set);
            let x = Tensor::randn([3, 4, 6, 6], (Kind::Float, Device::Cpu));
            let w = Tensor::randn([op_set.len() as i64], (Kind::Float, Device::Cpu))
                .softmax(0, Kind::Float);
            // Eval mode: BN uses running stats, so both passes see identical ops.
            let fast = m.forward_t(&x, &w, false);
            let slow = naive(&m, &x, &w, false);
            assert!(fast.allclose(&slow, 1e-5, 1e-6, false), "{op_set}");
        }
    }

    /// The NHWC path (channels-last input, as the networks feed it on the CPU) gives the NCHW
    /// result, keeps the layout, and gives the same gradients to the op weights.
    #[test]
    fn channels_last_input_gives_the_nchw_result_and_gradients() {
        use crate::nas::ops::{is_channels_last, to_channels_last};
        tch::manual_seed(3);
        for op_set in [OpSet::Darts, OpSet::RlDarts] {
            let vs = nn::VarStore::new(Device::Cpu);
            let m = mixed(&vs, op_set);
            let x = Tensor::randn([4, 4, 7, 7], (Kind::Float, Device::Cpu));
            let x_nhwc = to_channels_last(&x);
            assert!(is_channels_last(&x_nhwc) && !is_channels_last(&x));
            let alpha = Tensor::randn([op_set.len() as i64], (Kind::Float, Device::Cpu))
                .set_requires_grad(true);
            let run = |input: &Tensor| {
                let y = m.forward_t(input, &alpha.softmax(0, Kind::Float), true);
                let g =
                    Tensor::run_backward(&[(&y * &y).sum(Kind::Float)], &[&alpha], false, false);
                (y, g[0].shallow_clone())
            };
            let (y, g) = run(&x);
            let (y_nhwc, g_nhwc) = run(&x_nhwc);
            assert!(is_channels_last(&y_nhwc), "{op_set}: layout lost");
            assert!(
                y.allclose(&y_nhwc, 1e-4, 1e-5, false),
                "{op_set}: outputs differ"
            );
            assert!(
                g.allclose(&g_nhwc, 1e-3, 1e-4, false),
                "{op_set}: alpha gradients differ"
            );
        }
    }

    /// Per-example weights `[N, num_ops]` give row `n` of the output the mixed op of example
    /// `n` alone under row `n` (eval mode, f64), in NCHW and channels-last layouts.
    #[test]
    fn per_example_weights_weigh_each_example_by_its_row() {
        use crate::nas::ops::to_channels_last;
        tch::manual_seed(4);
        for op_set in [OpSet::Darts, OpSet::RlDarts] {
            let mut vs = nn::VarStore::new(Device::Cpu);
            let m = mixed(&vs, op_set);
            vs.double();
            let x = Tensor::randn([3, 4, 6, 6], (Kind::Double, Device::Cpu));
            let w = Tensor::randn([3, op_set.len() as i64], (Kind::Double, Device::Cpu))
                .softmax(-1, Kind::Double);
            for input in [x.shallow_clone(), to_channels_last(&x)] {
                let y = m.forward_t(&input, &w, false);
                for n in 0..3 {
                    let alone = m.forward_t(&x.narrow(0, n, 1), &w.get(n), false);
                    assert!(
                        y.narrow(0, n, 1).allclose(&alone, 1e-10, 1e-12, false),
                        "{op_set}: example {n}"
                    );
                }
            }
        }
    }

    /// The in-place sum gives the stacked sum's output and gradients (input, op weights,
    /// every op parameter), f64, for one weight row and for per-example rows: the reference is
    /// the computation the in-place sum replaced, `tensordot(w, stack(outputs))`.
    #[test]
    fn in_place_sum_gives_the_stacked_sums_output_and_gradients() {
        tch::manual_seed(5);
        for op_set in [OpSet::Darts, OpSet::RlDarts] {
            let mut vs = nn::VarStore::new(Device::Cpu);
            let m = mixed(&vs, op_set);
            vs.double();
            let o = op_set.len() as i64;
            let x =
                Tensor::randn([3, 4, 6, 6], (Kind::Double, Device::Cpu)).set_requires_grad(true);
            for per_example in [false, true] {
                let shape: Vec<i64> = if per_example { vec![3, o] } else { vec![o] };
                let w = Tensor::randn(shape.as_slice(), (Kind::Double, Device::Cpu))
                    .softmax(-1, Kind::Double)
                    .set_requires_grad(true);
                let stacked = || {
                    let outputs: Vec<Tensor> =
                        m.ops().iter().map(|op| op.forward_t(&x, true)).collect();
                    let stack = Tensor::stack(&outputs, 0); // [O, N, C, H, W]
                    if per_example {
                        (w.transpose(0, 1).reshape([o, 3, 1, 1, 1]) * stack).sum_dim_intlist(
                            [0i64].as_slice(),
                            false,
                            Kind::Double,
                        )
                    } else {
                        w.tensordot(&stack, [0], [0])
                    }
                };
                let grads = |y: &Tensor| {
                    let mut inputs = vec![x.shallow_clone(), w.shallow_clone()];
                    inputs.extend(vs.trainable_variables());
                    Tensor::run_backward(&[(y * y).sum(Kind::Double)], &inputs, false, true)
                };
                let (y_ref, y) = (stacked(), m.forward_t(&x, &w, true));
                assert!(y.allclose(&y_ref, 1e-12, 1e-12, false), "{op_set}: outputs");
                for (i, (a, b)) in grads(&y).iter().zip(&grads(&y_ref)).enumerate() {
                    match (a.defined(), b.defined()) {
                        (true, true) => assert!(
                            a.allclose(b, 1e-12, 1e-12, false),
                            "{op_set}, per-example {per_example}: gradient {i}"
                        ),
                        (a, b) => assert_eq!(a, b, "{op_set}: gradient {i} defined"),
                    }
                }
            }
        }
    }

    /// With a straight-through one-hot weight `h - sg(p) + p`, evaluating only the sampled op
    /// gives the full weighted sum's output and the same gradients to the input, the sampled
    /// op's parameters and the sampled op's probability. The unsampled ops' probabilities get
    /// GDAS's broadcast-scalar gradient `sum(dL/dy)` instead of `<dL/dy, op_o(x)>` (official
    /// `hardwts[_ie]` for `_ie != argmax`), and their parameters none.
    #[test]
    fn sampled_forward_equals_the_full_sum_with_a_straight_through_one_hot() {
        tch::manual_seed(6);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let m = mixed(&vs, OpSet::Darts);
        vs.double();
        let x = Tensor::randn([2, 4, 6, 6], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let probe = Tensor::randn([2, 4, 6, 6], (Kind::Double, Device::Cpu));
        for sampled in [3usize, 4, 6] {
            let p = Tensor::randn([8], (Kind::Double, Device::Cpu))
                .softmax(0, Kind::Double)
                .set_requires_grad(true);
            let hard = Tensor::zeros([8], (Kind::Double, Device::Cpu));
            let _ = hard.get(sampled as i64).fill_(1.0);
            let w = &hard - p.detach() + &p;
            let sampled_params: Vec<Tensor> = vs
                .variables()
                .into_iter()
                .filter(|(n, t)| n.contains(m.ops()[sampled].kind().name()) && t.requires_grad())
                .map(|(_, t)| t)
                .collect();
            assert!(!sampled_params.is_empty() || sampled == 3);
            let run = |y: Tensor| {
                let mut inputs = vec![x.shallow_clone(), p.shallow_clone()];
                inputs.extend(sampled_params.iter().map(Tensor::shallow_clone));
                let g =
                    Tensor::run_backward(&[(&y * &probe).sum(Kind::Double)], &inputs, false, false);
                (y, g)
            };
            let (y_full, g_full) = run(m.forward_t(&x, &w, true));
            let (y_one, g_one) = run(m.forward_sampled(&x, &w, Some(&[sampled]), true));
            assert!(
                y_one.allclose(&y_full, 1e-12, 1e-12, false),
                "op {sampled}: output"
            );
            assert!(
                g_one[0].allclose(&g_full[0], 1e-12, 1e-12, false),
                "op {sampled}: input"
            );
            for (a, b) in g_one[2..].iter().zip(&g_full[2..]) {
                assert!(
                    a.allclose(b, 1e-12, 1e-12, false),
                    "op {sampled}: op parameters"
                );
            }
            // The op weights' gradients (what reaches p through the straight-through term):
            // equal for the sampled op, GDAS's broadcast scalar for the others.
            let w_leaf = w.detach().set_requires_grad(true);
            let gw = |sparse: bool| {
                let y = match sparse {
                    true => m.forward_sampled(&x, &w_leaf, Some(&[sampled]), true),
                    false => m.forward_t(&x, &w_leaf, true),
                };
                Tensor::run_backward(&[(&y * &probe).sum(Kind::Double)], &[&w_leaf], false, false)
                    [0]
                .copy()
            };
            let (gw_full, gw_one) = (gw(false), gw(true));
            let (a, b) = (gw_one.get(sampled as i64), gw_full.get(sampled as i64));
            assert!(
                a.allclose(&b, 1e-12, 1e-12, false),
                "op {sampled}: its weight"
            );
            let broadcast = probe.sum(Kind::Double);
            for o in (0..8).filter(|&o| o != sampled as i64) {
                assert!(
                    gw_one.get(o).allclose(&broadcast, 1e-12, 1e-12, false),
                    "op {o}: GDAS's broadcast gradient"
                );
            }
        }
    }

    #[test]
    fn one_hot_weights_give_the_single_op() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let m = mixed(&vs, OpSet::Darts);
        let x = Tensor::randn([2, 4, 5, 5], (Kind::Float, Device::Cpu));
        for (o, op) in m.ops().iter().enumerate() {
            let w = Tensor::zeros([8], (Kind::Float, Device::Cpu));
            let _ = w.get(o as i64).fill_(1.0);
            let single = op.forward_t(&x, false);
            assert!(
                m.forward_t(&x, &w, false)
                    .allclose(&single, 1e-6, 1e-7, false),
                "{}",
                op.kind()
            );
            let sampled = m.forward_sampled(&x, &w, Some(&[o]), false);
            assert!(
                sampled.allclose(&single, 1e-6, 1e-7, false),
                "{}",
                op.kind()
            );
        }
    }

    /// Ops outside `active` never run: their parameters get no gradient and their BatchNorm
    /// running statistics stay at the initial values, while the sampled op's do change. The
    /// straight-through weights still give every probability a gradient.
    #[test]
    fn inactive_ops_are_not_evaluated_and_straight_through_grads_flow() {
        tch::manual_seed(2);
        let vs = nn::VarStore::new(Device::Cpu);
        let m = mixed(&vs, OpSet::Darts);
        let x = Tensor::randn([4, 4, 6, 6], (Kind::Float, Device::Cpu));
        let alpha = Tensor::randn([8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let p = alpha.softmax(0, Kind::Float);
        let sampled = 4; // sep_conv_3x3
        let hard = Tensor::zeros([8], (Kind::Float, Device::Cpu));
        let _ = hard.get(sampled).fill_(1.0);
        let w = &hard - p.detach() + &p; // straight-through: value one-hot, gradient of p
        let y = m.forward_sampled(&x, &w, Some(&[sampled as usize]), true);
        y.sum(Kind::Float).backward();

        let vars = vs.variables();
        let grad_defined = |name: &str| vars[name].grad().defined();
        assert!(grad_defined("edge0.sep_conv_3x3.dw1.weight"));
        for name in [
            "edge0.sep_conv_5x5.dw1.weight",
            "edge0.dil_conv_3x3.dw.weight",
            "edge0.dil_conv_5x5.pw.weight",
        ] {
            assert!(!grad_defined(name), "{name} was evaluated");
        }
        let running_mean_moved =
            |name: &str| f64::try_from(vars[name].abs().sum(Kind::Float)).unwrap() > 0.0;
        assert!(running_mean_moved("edge0.sep_conv_3x3.bn1.running_mean"));
        for name in [
            "edge0.max_pool_3x3.bn.running_mean",
            "edge0.sep_conv_5x5.bn2.running_mean",
        ] {
            assert!(!running_mean_moved(name), "{name} was evaluated");
        }
        // d(sum y)/d(w_o): <1, op_o(x)> for the sampled op, the element count for the others
        // (GDAS's broadcast scalar), chained through softmax: every alpha gets a gradient.
        let g = alpha.grad();
        assert!(g.defined());
        assert!(Vec::<f32>::try_from(&g)
            .unwrap()
            .iter()
            .all(|v| v.abs() > 0.0));
    }

    #[test]
    fn a_sampled_none_gives_zeros_of_the_output_shape() {
        let vs = nn::VarStore::new(Device::Cpu);
        let spec = OpSpec::darts_search(4, 2);
        let m = MixedOp::new(vs.root() / "edge0", OpSet::Darts, spec).unwrap();
        let x = Tensor::randn([2, 4, 6, 6], (Kind::Float, Device::Cpu));
        let w = Tensor::zeros([8], (Kind::Float, Device::Cpu));
        let _ = w.get(0).fill_(1.0);
        let y = m.forward_sampled(&x, &w, Some(&[0]), true);
        assert_eq!(y.size(), [2, 4, 3, 3]);
        assert_eq!(f64::try_from(y.abs().sum(Kind::Float)).unwrap(), 0.0);
    }
}
