//! Sequence tasks the project generates itself (no download), deterministic from a seed, and
//! their metrics: an encoder-only task that needs attention (`sort`: label every position
//! with the token of that rank) and a sequence-to-sequence task that exercises the decoder and
//! cross-attention (`addition`: two zero-padded numbers in, their sum out, least significant
//! digit first). Exact match of the sequence-to-sequence task is measured on greedy
//! autoregressive decoding from BOS, never with teacher forcing.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::net::{SeqBatch, SeqNet};
use super::TransformerError;
use crate::nas::CellWeights;

/// Which task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Encoder-only: `length` tokens from `0..vocab`; label `i` is the `i`-th smallest token.
    #[default]
    Sort,
    /// Sequence to sequence: `a + b` with `digits` digits each -> `digits + 1` sum digits,
    /// least significant first.
    Addition,
}

/// `[task]`: what data the search and retraining see.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskConfig {
    pub kind: TaskKind,
    /// `sort`: sequence length.
    pub length: usize,
    /// `sort`: token values `0..vocab`.
    pub vocab: i64,
    /// `addition`: digits per operand.
    pub digits: usize,
    /// Examples in the training split (the weights' data).
    pub train_size: usize,
    /// Examples in the validation split (the alphas' data during search, model selection).
    pub val_size: usize,
    /// Examples in the test split (reported metrics only).
    pub test_size: usize,
    /// Seed of the generator; the same seed gives the same three splits.
    pub data_seed: u64,
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self {
            kind: TaskKind::Sort,
            length: 8,
            vocab: 10,
            digits: 3,
            train_size: 4096,
            val_size: 1024,
            test_size: 1024,
            data_seed: 1234,
        }
    }
}

/// Token ids of the addition task: digits 0..9, then `+` and BOS.
const PLUS: i64 = 10;
const BOS: i64 = 11;

/// One split: `[N, S]` sources and `[N, T]` labels.
#[derive(Debug)]
pub struct SeqData {
    pub src: Tensor,
    pub labels: Tensor,
    /// Decoder start token, for sequence-to-sequence tasks.
    pub bos: Option<i64>,
}

impl SeqData {
    pub fn len(&self) -> usize {
        self.src.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The examples at `index` (`[n]` int64) as a batch on `device`.
    pub fn batch(&self, index: &Tensor, device: Device) -> SeqBatch {
        let src = self.src.index_select(0, index).to_device(device);
        let labels = self.labels.index_select(0, index).to_device(device);
        let tgt_in = self.bos.map(|bos| {
            let n = labels.size()[0];
            let t = labels.size()[1];
            let start = Tensor::full([n, 1], bos, (Kind::Int64, device));
            Tensor::cat(&[start, labels.narrow(1, 0, t - 1)], 1)
        });
        SeqBatch {
            src,
            tgt_in,
            labels,
        }
    }

    /// A random batch of `size` drawn with `rng`.
    pub fn sample(&self, size: usize, rng: &mut ChaCha8Rng, device: Device) -> SeqBatch {
        let n = self.len();
        let index: Vec<i64> = (0..size).map(|_| rng.gen_range(0..n) as i64).collect();
        self.batch(&Tensor::from_slice(&index), device)
    }
}

/// The task's three splits and vocabularies.
#[derive(Debug)]
pub struct SeqTask {
    pub config: TaskConfig,
    pub train: SeqData,
    pub val: SeqData,
    pub test: SeqData,
    pub src_vocab: i64,
    pub tgt_vocab: i64,
}

impl TaskConfig {
    /// Short name for run directories.
    pub fn name(&self) -> &'static str {
        match self.kind {
            TaskKind::Sort => "seq-sort",
            TaskKind::Addition => "seq-addition",
        }
    }

    pub fn is_seq2seq(&self) -> bool {
        self.kind == TaskKind::Addition
    }

    /// Generates the splits.
    pub fn generate(&self) -> Result<SeqTask, TransformerError> {
        let sizes = [self.train_size, self.val_size, self.test_size];
        if sizes.contains(&0) {
            return Err(TransformerError::Config(format!(
                "task.train_size, val_size and test_size must be positive, got {sizes:?}"
            )));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.data_seed);
        let (src_vocab, tgt_vocab) = match self.kind {
            TaskKind::Sort => {
                if self.length < 2 || self.vocab < 2 {
                    return Err(TransformerError::Config(format!(
                        "sort needs task.length >= 2 and task.vocab >= 2, got {} and {}",
                        self.length, self.vocab
                    )));
                }
                (self.vocab, self.vocab)
            }
            TaskKind::Addition => {
                if !(1..=9).contains(&self.digits) {
                    return Err(TransformerError::Config(format!(
                        "addition needs 1 <= task.digits <= 9, got {}",
                        self.digits
                    )));
                }
                (PLUS + 1, BOS + 1)
            }
        };
        let mut split = |n: usize| self.examples(n, &mut rng);
        let (train, val, test) = (split(sizes[0]), split(sizes[1]), split(sizes[2]));
        Ok(SeqTask {
            config: self.clone(),
            train,
            val,
            test,
            src_vocab,
            tgt_vocab,
        })
    }

    fn examples(&self, n: usize, rng: &mut ChaCha8Rng) -> SeqData {
        let mut src: Vec<i64> = Vec::new();
        let mut labels: Vec<i64> = Vec::new();
        let (s, t) = match self.kind {
            TaskKind::Sort => {
                for _ in 0..n {
                    let mut x: Vec<i64> = (0..self.length)
                        .map(|_| rng.gen_range(0..self.vocab))
                        .collect();
                    src.extend(&x);
                    x.sort_unstable();
                    labels.extend(&x);
                }
                (self.length, self.length)
            }
            TaskKind::Addition => {
                let k = self.digits;
                let max = 10u64.pow(k as u32);
                let digits = |mut v: u64, len: usize| -> Vec<i64> {
                    let mut d: Vec<i64> = (0..len)
                        .map(|_| {
                            let r = (v % 10) as i64;
                            v /= 10;
                            r
                        })
                        .collect();
                    d.reverse();
                    d
                };
                for _ in 0..n {
                    let (a, b) = (rng.gen_range(0..max), rng.gen_range(0..max));
                    src.extend(digits(a, k));
                    src.push(PLUS);
                    src.extend(digits(b, k));
                    let mut sum = digits(a + b, k + 1);
                    sum.reverse(); // least significant first: carries flow left to right
                    labels.extend(sum);
                }
                (2 * k + 1, k + 1)
            }
        };
        SeqData {
            src: Tensor::from_slice(&src).view([n as i64, s as i64]),
            labels: Tensor::from_slice(&labels).view([n as i64, t as i64]),
            bos: self.is_seq2seq().then_some(BOS),
        }
    }
}

/// Token accuracy and exact match of a split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct SeqMetrics {
    /// Mean teacher-forced token cross-entropy.
    pub loss: f64,
    /// Share of output tokens predicted right (greedy autoregressive decoding for
    /// sequence-to-sequence tasks).
    pub token_accuracy: f64,
    /// Share of sequences with every token right (same decoding).
    pub exact_match: f64,
}

/// Greedy autoregressive decoding from BOS: `[B, T]` predicted tokens.
pub fn greedy_decode(
    net: &SeqNet,
    src: &Tensor,
    len: i64,
    bos: i64,
    weights: Option<&CellWeights>,
) -> Result<Tensor, TransformerError> {
    tch::no_grad(|| {
        let memory = net.encode(src, weights)?;
        let b = src.size()[0];
        let mut ys = Tensor::full([b, 1], bos, (Kind::Int64, src.device()));
        for _ in 0..len {
            let logits = net.decode(&memory, Some(&ys), weights)?; // [B, t, V]
            let next = logits.select(1, -1).argmax(-1, true); // [B, 1]
            ys = Tensor::cat(&[ys, next], 1);
        }
        Ok(ys.narrow(1, 1, len))
    })
}

/// Metrics of `net` on `data`, in batches of `batch_size`.
pub fn evaluate(
    net: &SeqNet,
    data: &SeqData,
    weights: Option<&CellWeights>,
    batch_size: usize,
    device: Device,
) -> Result<SeqMetrics, TransformerError> {
    let n = data.len();
    let (mut loss, mut tokens_right, mut exact, mut tokens) = (0.0, 0i64, 0i64, 0i64);
    let mut start = 0;
    while start < n {
        let end = (start + batch_size.max(1)).min(n);
        let index = Tensor::arange_start(start as i64, end as i64, (Kind::Int64, Device::Cpu));
        let batch = data.batch(&index, device);
        let logits = tch::no_grad(|| net.forward(&batch, weights))?;
        loss +=
            super::net::token_loss(&logits, &batch.labels).double_value(&[]) * (end - start) as f64;
        let pred = match data.bos {
            Some(bos) => greedy_decode(net, &batch.src, batch.labels.size()[1], bos, weights)?,
            None => logits.argmax(-1, false),
        };
        let right = pred.eq_tensor(&batch.labels); // [B, T]
        tokens_right += right.sum(Kind::Int64).int64_value(&[]);
        tokens += right.numel() as i64;
        exact += right.all_dim(1, false).sum(Kind::Int64).int64_value(&[]);
        start = end;
    }
    Ok(SeqMetrics {
        loss: loss / n.max(1) as f64,
        token_accuracy: tokens_right as f64 / tokens.max(1) as f64,
        exact_match: exact as f64 / n.max(1) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transformer_tasks_are_deterministic_and_correct() {
        let config = TaskConfig {
            kind: TaskKind::Addition,
            digits: 2,
            train_size: 50,
            val_size: 5,
            test_size: 5,
            ..TaskConfig::default()
        };
        let a = config.generate().unwrap();
        let b = config.generate().unwrap();
        assert!(a.train.src.equal(&b.train.src));
        assert_eq!(a.train.src.size(), [50, 5]);
        assert_eq!(a.train.labels.size(), [50, 3]);
        for i in 0..50 {
            let s: Vec<i64> = Vec::try_from(a.train.src.get(i)).unwrap();
            let l: Vec<i64> = Vec::try_from(a.train.labels.get(i)).unwrap();
            assert_eq!(s[2], PLUS);
            let (x, y) = (s[0] * 10 + s[1], s[3] * 10 + s[4]);
            assert_eq!(l[0] + 10 * l[1] + 100 * l[2], x + y, "{s:?} {l:?}");
        }
        let batch = a.train.batch(&Tensor::from_slice(&[0i64, 1]), Device::Cpu);
        let tgt_in = batch.tgt_in.unwrap();
        assert_eq!(tgt_in.int64_value(&[0, 0]), BOS);
        assert_eq!(
            tgt_in.int64_value(&[1, 2]),
            batch.labels.int64_value(&[1, 1])
        );

        let sort = TaskConfig::default().generate().unwrap();
        let l: Vec<i64> = Vec::try_from(sort.train.labels.get(3)).unwrap();
        assert!(l.windows(2).all(|w| w[0] <= w[1]));
        assert!(sort.train.bos.is_none());
    }
}
