//! SNAS's resource constraint (Xie et al. ICLR 2019, section 2.3): per-op costs (parameters,
//! FLOPs, memory access), the sampled and expected cost of a child network, and the
//! score-function gradient of the expected cost with SNAS's locally decomposed reward.
//!
//! UNAS's latency penalty reads a measured table through [`crate::nas::LatencyTable`] in the
//! alphas' own precision, not these f64 estimates, so it keeps its own arithmetic.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::SearchError;
use crate::nas::{ArchParams, OpCost, OpCostTable};

/// Which resource an op's cost counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CostMetric {
    /// Mean of parameters, FLOPs and memory access cost (the official `separation = all`).
    All,
    Params,
    Flops,
    Mac,
}

/// The scalar cost of one op: the mean of the chosen metrics, each `ln` of its count
/// (`log_cost`, the official "log penalty") or in millions.
pub fn op_cost(metric: CostMetric, log_cost: bool, cost: &OpCost) -> f64 {
    let metrics: &[i64] = match metric {
        CostMetric::All => &[cost.params, cost.flops, cost.mac],
        CostMetric::Params => &[cost.params],
        CostMetric::Flops => &[cost.flops],
        CostMetric::Mac => &[cost.mac],
    };
    let f = |x: i64| {
        if log_cost {
            (x.max(1) as f64).ln()
        } else {
            x as f64 / 1e6
        }
    };
    metrics.iter().map(|&x| f(x)).sum::<f64>() / metrics.len() as f64
}

/// `sum_e cost[e, index[e]]`.
pub fn sampled_cost(cost: &Tensor, index: &[usize]) -> Result<f64, SearchError> {
    let rows = Vec::<Vec<f64>>::try_from(&cost.to_kind(Kind::Double).to_device(Device::Cpu))?;
    if rows.len() != index.len() {
        return Err(SearchError::Invalid(format!(
            "snas: {} sampled edges for a cost table of {} edges",
            index.len(),
            rows.len()
        )));
    }
    rows.iter()
        .zip(index)
        .map(|(row, &o)| {
            row.get(o).copied().ok_or_else(|| {
                SearchError::Invalid(format!("snas: op {o} outside a row of {} ops", row.len()))
            })
        })
        .sum()
}

/// `E_{H ~ softmax(alpha)}[sum_e cost[e, H_e]] = sum_e <softmax(alpha_e), cost_e>`.
pub fn expected_cost(alpha: &Tensor, cost: &Tensor) -> Result<f64, SearchError> {
    let p = tch::no_grad(|| alpha.softmax(-1, Kind::Double));
    Ok((p * cost.to_kind(Kind::Double).to_device(alpha.device()))
        .sum(Kind::Double)
        .f_double_value(&[])?)
}

/// The score-function (REINFORCE) estimate of `grad_alpha E_{H ~ softmax(alpha)}[C(H)]` from
/// one categorical sample `index`, with the locally decomposed reward of SNAS: edge `e`'s row
/// is `(cost[e, H_e] - b_e) (onehot(H_e) - softmax(alpha_e))`, `b_e = <softmax(alpha_e),
/// cost_e>` when `baseline`, else 0. `alpha` and `cost` are `[num_edges, num_ops]`; the result
/// is f64.
///
/// Unbiased: `E[onehot(H_e) - p_e] = 0` makes other edges' costs (independent of `H_e`) and any
/// baseline drop out, and `E[c_{e,H_e} (onehot(H_e) - p_e)]_o = p_eo (c_eo - <p_e, c_e>)`, the
/// exact gradient of `<softmax(alpha_e), c_e>` with respect to `alpha_eo`.
pub fn score_function_cost_gradient(
    alpha: &Tensor,
    cost: &Tensor,
    index: &[usize],
    baseline: bool,
) -> Result<Tensor, SearchError> {
    let (edges, ops) = match alpha.size()[..] {
        [e, o] => (e, o),
        _ => {
            return Err(SearchError::Invalid(format!(
                "snas: alphas must be [num_edges, num_ops], got {:?}",
                alpha.size()
            )))
        }
    };
    if cost.size() != [edges, ops] || index.len() != edges as usize {
        return Err(SearchError::Invalid(format!(
            "snas: cost table {:?} and {} sampled edges do not match alphas {:?}",
            cost.size(),
            index.len(),
            alpha.size()
        )));
    }
    if let Some(&o) = index.iter().find(|&&o| o as i64 >= ops) {
        return Err(SearchError::Invalid(format!(
            "snas: sampled op {o} outside {ops} ops"
        )));
    }
    let device = alpha.device();
    tch::no_grad(|| {
        let p = alpha.detach().softmax(-1, Kind::Double); // [E, O]
        let cost = cost.to_kind(Kind::Double).to_device(device); // [E, O]
        let idx: Vec<i64> = index.iter().map(|&o| o as i64).collect();
        let idx = Tensor::from_slice(&idx).to_device(device).unsqueeze(-1); // [E, 1]
        let one_hot = p.zeros_like().scatter_value(-1, &idx, 1.0); // [E, O]
        let mut reward = cost.gather(-1, &idx, false); // [E, 1]
        if baseline {
            reward -= (&p * &cost).sum_dim_intlist(-1, true, Kind::Double);
        }
        Ok((one_hot - p) * reward)
    })
}

/// `[num_edges, num_ops]` f64 matrix of [`op_cost`] over one cell type's table.
fn cost_matrix(
    (metric, log_cost): (CostMetric, bool),
    table: &[Vec<OpCost>],
    (edges, ops): (usize, usize),
    what: &str,
    device: Device,
) -> Result<Tensor, SearchError> {
    if table.len() != edges || table.iter().any(|row| row.len() != ops) {
        return Err(SearchError::Invalid(format!(
            "snas: the {what} cost table is {}x{}, the alphas are {edges}x{ops}",
            table.len(),
            table.first().map_or(0, Vec::len)
        )));
    }
    let flat: Vec<f64> = table
        .iter()
        .flat_map(|row| row.iter().map(|c| op_cost(metric, log_cost, c)))
        .collect();
    Ok(Tensor::from_slice(&flat)
        .view([edges as i64, ops as i64])
        .to_device(device))
}

/// Per-op costs of each cell type, `[num_edges, num_ops]` f64 on the alphas' device.
#[derive(Debug)]
pub(crate) struct CellCosts {
    pub(crate) normal: Tensor,
    pub(crate) reduce: Option<Tensor>,
}

impl CellCosts {
    /// The cost matrices of `table` under `metric` (the metric and whether it is logged), for
    /// alphas of `(num_edges, num_ops, with_reduce)`; a table of another shape is an error.
    pub(crate) fn new(
        table: &OpCostTable,
        metric: (CostMetric, bool),
        (edges, ops, with_reduce): (usize, usize, bool),
        device: Device,
    ) -> Result<Self, SearchError> {
        let normal = cost_matrix(metric, &table.normal, (edges, ops), "normal", device)?;
        let reduce = match (with_reduce, table.reduce.as_ref()) {
            (true, Some(t)) => Some(cost_matrix(metric, t, (edges, ops), "reduce", device)?),
            (false, _) => None,
            (true, None) => {
                return Err(SearchError::Invalid(
                    "snas: the alphas have a reduce cell but the cost table has none".into(),
                ))
            }
        };
        Ok(Self { normal, reduce })
    }

    /// `E_{H ~ softmax(alpha)}[C(H)] = sum_e sum_o p_eo c_eo` over both cell types, exact.
    pub(crate) fn expected(&self, arch: &ArchParams) -> Result<f64, SearchError> {
        let mut total = expected_cost(arch.alpha_normal(), &self.normal)?;
        if let (Some(a), Some(c)) = (arch.alpha_reduce(), self.reduce.as_ref()) {
            total += expected_cost(a, c)?;
        }
        Ok(total)
    }
}
