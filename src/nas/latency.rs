//! Measured latency of candidate ops, for latency-constrained search (UNAS, Vahdat et al. CVPR
//! 2020, ../shared/REFERENCE.md section 7): every candidate op of every edge of every cell is
//! timed at its real input shape on the search device (warm-up runs, then the median of
//! repeats), the times are summed per `(cell type, edge, op)` into a [`LatencyTable`], and an
//! architecture's latency is the table sum over its chosen ops. Tables are cached per device as
//! JSON. [`LinearLatencyModel`] is the alternative UNAS describes: a linear model over op
//! choices fitted on measured whole-network latencies.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::error::NasError;
use super::network::Supernet;
use super::ops::{to_channels_last, Op};
use super::weights::{CellWeights, OpWeights};

/// Milliseconds per forward of one batch, summed over all cells of each type,
/// `[num_edges][num_ops]` (the shape of [`super::OpCostTable`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyTable {
    pub normal: Vec<Vec<f64>>,
    pub reduce: Option<Vec<Vec<f64>>>,
}

fn table_tensor(rows: &[Vec<f64>], like: &Tensor) -> Result<Tensor, NasError> {
    let cols = rows.first().map_or(0, Vec::len);
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    if like.size() != [rows.len() as i64, cols as i64] || flat.len() != rows.len() * cols {
        return Err(NasError::Shape(format!(
            "latency table is {}x{cols}, op weights are {:?}",
            rows.len(),
            like.size()
        )));
    }
    Ok(Tensor::from_slice(&flat)
        .view([rows.len() as i64, cols as i64])
        .to_kind(like.kind())
        .to_device(like.device()))
}

impl LatencyTable {
    /// `sum_cells sum(w * table)`, with graph to the weights: the table latency of a one-hot
    /// architecture, the expected latency under a relaxed sample or `softmax(alpha)`. A scalar
    /// `[]`, or `[B]` (one latency per example) for per-example weights.
    pub fn expected(&self, weights: &CellWeights) -> Result<Tensor, NasError> {
        // Sum over edges and ops, keeping the batch dimension of per-example weights.
        let total_of = |w: &Tensor, table: &[Vec<f64>]| -> Result<Tensor, NasError> {
            let like = match w.dim() {
                3 => w.get(0),
                _ => w.shallow_clone(),
            };
            let weighted = w * table_tensor(table, &like)?;
            Ok(match w.dim() {
                3 => weighted.sum_dim_intlist([-2i64, -1].as_slice(), false, w.kind()),
                _ => weighted.sum(w.kind()),
            })
        };
        let w = weights.normal.weights();
        let mut total = total_of(w, &self.normal)?;
        match (&self.reduce, &weights.reduce) {
            (Some(t), Some(r)) => {
                total += total_of(r.weights(), t)?;
            }
            (None, None) => {}
            _ => {
                return Err(NasError::Shape(
                    "latency table and op weights disagree on reduction cells".into(),
                ))
            }
        }
        Ok(total)
    }

    /// Table latency of the architecture choosing op `normal[e]` on edge `e` (and `reduce`).
    pub fn hard(&self, normal: &[usize], reduce: Option<&[usize]>) -> f64 {
        let sum = |t: &[Vec<f64>], idx: &[usize]| -> f64 {
            t.iter().zip(idx).map(|(row, &o)| row[o]).sum()
        };
        sum(&self.normal, normal)
            + match (&self.reduce, reduce) {
                (Some(t), Some(r)) => sum(t, r),
                _ => 0.0,
            }
    }
}

/// How a table is measured. `[search.strategy.params.latency]` of UNAS carries these.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyOptions {
    /// Batch size of the timed forwards.
    pub batch: i64,
    /// Untimed runs before timing (allocator and kernel-selection warm-up).
    pub warmup: usize,
    /// Timed runs; the median is kept.
    pub repeats: usize,
    /// Folder of the JSON cache; `None` measures every time.
    pub cache_dir: Option<PathBuf>,
}

impl LatencyOptions {
    fn validate(&self) -> Result<(), NasError> {
        if self.batch <= 0 || self.repeats == 0 {
            return Err(NasError::Config(format!(
                "latency: batch and repeats must be positive, got {} and {}",
                self.batch, self.repeats
            )));
        }
        Ok(())
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Median wall time of `run` in milliseconds after `warmup` untimed calls (CUDA synchronised
/// around each timed call, so the time covers the kernels and not just their launch).
pub fn median_ms(device: Device, warmup: usize, repeats: usize, mut run: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        run();
    }
    let mut times: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            sync(device);
            let t = Instant::now();
            run();
            sync(device);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let n = times.len();
    if n % 2 == 1 {
        times[n / 2]
    } else {
        0.5 * (times[n / 2 - 1] + times[n / 2])
    }
}

/// One candidate op of one edge of one cell, at its input shape.
struct TimedOp<'a> {
    op: &'a Op,
    reduction: bool,
    edge: usize,
    index: usize,
    chw: [i64; 3],
    /// `kind|spec|input shape`: identical entries are timed once, and the list of them is the
    /// cache key's description of the network.
    key: String,
}

fn timed_ops(net: &dyn Supernet, input_chw: [i64; 3]) -> Result<Vec<TimedOp<'_>>, NasError> {
    let cells = net.search_cells(input_chw);
    if cells.is_empty() {
        return Err(NasError::Config(
            "latency: this network does not expose its search cells for timing".into(),
        ));
    }
    let mut out = Vec::new();
    for (cell, reduction, inputs) in cells {
        for (edge, chw) in cell.edge_input_shapes(&inputs).into_iter().enumerate() {
            for (index, op) in cell.edges()[edge].ops().iter().enumerate() {
                let key = format!("{}|{:?}|{chw:?}", op.kind().name(), op.spec());
                out.push(TimedOp {
                    op,
                    reduction,
                    edge,
                    index,
                    chw,
                    key,
                });
            }
        }
    }
    Ok(out)
}

/// Times every candidate op of `net` at its input shape for a network input `[C, H, W]`, on
/// `device` (where `net` lives), eval mode, no grad.
pub fn measure_table(
    net: &dyn Supernet,
    input_chw: [i64; 3],
    device: Device,
    options: &LatencyOptions,
) -> Result<LatencyTable, NasError> {
    options.validate()?;
    let ops = timed_ops(net, input_chw)?;
    let space = net.space();
    let zeros = vec![vec![0.0; space.num_ops()]; space.num_edges()];
    let mut table = LatencyTable {
        normal: zeros.clone(),
        reduce: net.has_reduction_cells().then_some(zeros),
    };
    let mut timed: HashMap<&str, f64> = HashMap::new();
    tch::no_grad(|| {
        for t in &ops {
            let ms = *timed.entry(t.key.as_str()).or_insert_with(|| {
                let [c, h, w] = t.chw;
                let mut x = Tensor::randn([options.batch, c, h, w], (Kind::Float, device));
                if net.channels_last() {
                    x = to_channels_last(&x);
                }
                median_ms(device, options.warmup, options.repeats, || {
                    let _ = t.op.forward_t(&x, false);
                })
            });
            let rows = match (&mut table.reduce, t.reduction) {
                (Some(r), true) => r,
                _ => &mut table.normal,
            };
            rows[t.edge][t.index] += ms;
        }
    });
    Ok(table)
}

/// What a cached table was measured for; a cache file whose key differs is re-measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyKey {
    pub device: String,
    /// libtorch's intra-op thread count (CPU latency depends on it).
    pub threads: i64,
    pub op_set: String,
    pub batch: i64,
    /// Activation layout the ops were timed in: `nchw`, or `nhwc` for networks that run
    /// channels-last. Cache files from before this field was written read as `nchw`.
    #[serde(default = "nchw")]
    pub layout: String,
    /// Every timed op as `kind|spec|input shape`, in (cell, edge, op) order.
    pub ops: Vec<String>,
}

fn nchw() -> String {
    "nchw".into()
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    key: LatencyKey,
    table: LatencyTable,
}

/// The cache key of `net` at `input_chw` measured with `options` on `device`.
pub fn latency_key(
    net: &dyn Supernet,
    input_chw: [i64; 3],
    device: Device,
    options: &LatencyOptions,
) -> Result<LatencyKey, NasError> {
    Ok(LatencyKey {
        device: format!("{device:?}"),
        threads: i64::from(tch::get_num_threads()),
        op_set: net.space().op_set.name().to_string(),
        batch: options.batch,
        layout: if net.channels_last() && device == Device::Cpu {
            "nhwc"
        } else {
            "nchw"
        }
        .into(),
        ops: timed_ops(net, input_chw)?
            .into_iter()
            .map(|t| t.key)
            .collect(),
    })
}

/// `latency-{fnv1a64(key json)}.json`: one file per key, so devices and shapes do not collide.
pub fn cache_path(dir: &Path, key: &LatencyKey) -> Result<PathBuf, NasError> {
    let json = serde_json::to_vec(key)?;
    let hash = json.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    Ok(dir.join(format!("latency-{hash:016x}.json")))
}

/// Whether a table came from the cache or was measured now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableSource {
    Cache,
    Measured,
}

/// The cached table for this network, device and options, or a fresh measurement (written to
/// the cache atomically: temp file then rename, so a concurrent reader never sees half a file).
pub fn load_or_measure(
    net: &dyn Supernet,
    input_chw: [i64; 3],
    device: Device,
    options: &LatencyOptions,
) -> Result<(LatencyTable, TableSource), NasError> {
    let Some(dir) = &options.cache_dir else {
        return Ok((
            measure_table(net, input_chw, device, options)?,
            TableSource::Measured,
        ));
    };
    let key = latency_key(net, input_chw, device, options)?;
    let path = cache_path(dir, &key)?;
    if let Ok(bytes) = std::fs::read(&path) {
        // An unreadable or foreign file is re-measured and overwritten.
        if let Ok(file) = serde_json::from_slice::<CacheFile>(&bytes) {
            if file.key == key {
                return Ok((file.table, TableSource::Cache));
            }
        }
    }
    let table = measure_table(net, input_chw, device, options)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NasError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
    let json = serde_json::to_vec_pretty(&CacheFile {
        key,
        table: table.clone(),
    })?;
    std::fs::write(&tmp, json).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok((table, TableSource::Measured))
}

/// One-hot op weights choosing `normal[e]` (and `reduce[e]`) on each edge, only the chosen ops
/// computed.
pub fn one_hot_weights(
    num_ops: usize,
    normal: &[usize],
    reduce: Option<&[usize]>,
    device: Device,
) -> Result<CellWeights, NasError> {
    let one = |idx: &[usize]| -> Result<OpWeights, NasError> {
        let mut w = vec![0f32; idx.len() * num_ops];
        for (e, &o) in idx.iter().enumerate() {
            w[e * num_ops + o] = 1.0;
        }
        let t = Tensor::from_slice(&w)
            .view([idx.len() as i64, num_ops as i64])
            .to_device(device);
        OpWeights::one_hot(t, idx)
    };
    Ok(CellWeights {
        normal: one(normal)?,
        reduce: reduce.map(one).transpose()?,
    })
}

/// Median wall time (ms) of an eval-mode, no-grad forward of `net` on `x` with `weights`.
pub fn measure_network_latency(
    net: &dyn Supernet,
    weights: &CellWeights,
    x: &Tensor,
    warmup: usize,
    repeats: usize,
) -> f64 {
    tch::no_grad(|| {
        median_ms(x.device(), warmup, repeats, || {
            let _ = net.forward_with(x, weights, false);
        })
    })
}

/// Pearson correlation of two equally long samples (NaN when either is constant).
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len()) as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma).powi(2);
        sbb += (y - mb).powi(2);
    }
    sab / (saa * sbb).sqrt()
}

/// Measured network latency as `intercept + sum coef * x`, `x` the one-hot op choice per
/// `(cell type, edge, op)`: fitted by ridge least squares (intercept unpenalised), since the
/// one-hot columns of each edge sum to 1 and are collinear with the intercept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearLatencyModel {
    pub intercept: f64,
    pub coef: Vec<f64>,
}

impl LinearLatencyModel {
    /// The features of one architecture: normal edges' one-hots, then reduce edges'.
    pub fn features(num_ops: usize, normal: &[usize], reduce: Option<&[usize]>) -> Vec<f64> {
        let mut x = Vec::new();
        for idx in std::iter::once(normal).chain(reduce) {
            for &o in idx {
                let mut row = vec![0.0; num_ops];
                row[o] = 1.0;
                x.extend(row);
            }
        }
        x
    }

    /// Solves `(Xc^T Xc + ridge I) b = Xc^T yc` on centred data.
    pub fn fit(x: &[Vec<f64>], y: &[f64], ridge: f64) -> Result<Self, NasError> {
        let n = x.len();
        let d = x.first().map_or(0, Vec::len);
        if n == 0 || n != y.len() || x.iter().any(|r| r.len() != d) || ridge <= 0.0 {
            return Err(NasError::Config(format!(
                "linear latency model: {n} feature rows, {} targets, ridge {ridge}",
                y.len()
            )));
        }
        let mx: Vec<f64> = (0..d)
            .map(|j| x.iter().map(|r| r[j]).sum::<f64>() / n as f64)
            .collect();
        let my = y.iter().sum::<f64>() / n as f64;
        // Augmented system [A | b], d x (d + 1).
        let mut a = vec![vec![0.0; d + 1]; d];
        for (r, &t) in x.iter().zip(y) {
            for i in 0..d {
                let xi = r[i] - mx[i];
                for j in 0..d {
                    a[i][j] += xi * (r[j] - mx[j]);
                }
                a[i][d] += xi * (t - my);
            }
        }
        for (i, row) in a.iter_mut().enumerate() {
            row[i] += ridge;
        }
        // Gaussian elimination with partial pivoting; SPD, so it cannot break down.
        for col in 0..d {
            let piv = (col..d)
                .max_by(|&p, &q| a[p][col].abs().total_cmp(&a[q][col].abs()))
                .expect("non-empty range");
            a.swap(col, piv);
            let (top, rest) = a.split_at_mut(col + 1);
            let pivot = &top[col];
            for row in rest {
                let f = row[col] / pivot[col];
                if f != 0.0 {
                    for (x, &p) in row[col..].iter_mut().zip(&pivot[col..]) {
                        *x -= f * p;
                    }
                }
            }
        }
        let mut coef = vec![0.0; d];
        for i in (0..d).rev() {
            let s: f64 = (i + 1..d).map(|j| a[i][j] * coef[j]).sum();
            coef[i] = (a[i][d] - s) / a[i][i];
        }
        let intercept = my - mx.iter().zip(&coef).map(|(m, c)| m * c).sum::<f64>();
        Ok(Self { intercept, coef })
    }

    pub fn predict(&self, x: &[f64]) -> f64 {
        self.intercept + self.coef.iter().zip(x).map(|(c, v)| c * v).sum::<f64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_linear_model_recovers_an_exact_linear_law() {
        // Two edges of three ops; latency = 1 + per-op cost, no noise.
        let cost = [[0.0, 1.0, 3.0], [0.5, 2.0, 4.0]];
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..3 {
            for j in 0..3 {
                x.push(LinearLatencyModel::features(3, &[i, j], None));
                y.push(1.0 + cost[0][i] + cost[1][j]);
            }
        }
        let m = LinearLatencyModel::fit(&x, &y, 1e-6).unwrap();
        for (r, t) in x.iter().zip(&y) {
            assert!((m.predict(r) - t).abs() < 1e-4, "{} vs {t}", m.predict(r));
        }
    }

    #[test]
    fn latency_table_sums_match_expected_for_one_hot_weights() {
        let table = LatencyTable {
            normal: vec![vec![1.0, 2.0], vec![3.0, 4.0]],
            reduce: None,
        };
        let w = one_hot_weights(2, &[1, 0], None, Device::Cpu).unwrap();
        let e = table.expected(&w).unwrap().double_value(&[]);
        assert!((e - 5.0).abs() < 1e-6);
        assert_eq!(table.hard(&[1, 0], None), 5.0);
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.5]) - 1.0).abs() < 1e-2);
    }
}
