//! Metrics sinks: one small trait (`MetricsSink`) with TensorBoard, in-memory, stdout and
//! fan-out implementations, and the stable tag names the trainers log under (CleanRL's).
//!
//! Logging must never end a run. Sink methods return nothing: each sink handles its own
//! failures by printing one warning and then carrying on (or disabling itself). Only opening a
//! sink returns a `Result`, so the command line can decide what a missing log directory means.

pub mod arch;
mod memory;
mod multi;
mod stdout;
mod tensorboard;

pub use memory::{
    HParamsRecord, HistogramRecord, ImageRecord, MemorySink, Recorded, ScalarPoint, TextRecord,
};
pub use multi::MultiSink;
pub use stdout::{StdoutSink, Verbosity};
pub use tensorboard::{default_bucket_limits, HistogramSummary, TensorBoardSink};

use std::path::PathBuf;

/// Tag names shared by every trainer, as in CleanRL, so TensorBoard curves from different
/// runs and from CleanRL itself line up under the same names.
pub mod tags {
    /// Undiscounted return of each finished episode.
    pub const EPISODIC_RETURN: &str = "charts/episodic_return";
    /// Length in environment steps of each finished episode.
    pub const EPISODIC_LENGTH: &str = "charts/episodic_length";
    /// Environment steps per second, over the whole run so far.
    pub const SPS: &str = "charts/SPS";
    /// Learning rate of the weight optimizer after annealing.
    pub const LEARNING_RATE: &str = "charts/learning_rate";
    /// Return rescaled by the Procgen paper's per-game (R - R_min) / (R_max - R_min).
    pub const NORMALIZED_RETURN: &str = "charts/normalized_return";
    /// PPO value-function loss.
    pub const VALUE_LOSS: &str = "losses/value_loss";
    /// PPO clipped surrogate policy loss.
    pub const POLICY_LOSS: &str = "losses/policy_loss";
    /// Mean policy entropy.
    pub const ENTROPY: &str = "losses/entropy";
    /// KL estimate -log(ratio), averaged (CleanRL's `old_approx_kl`).
    pub const OLD_APPROX_KL: &str = "losses/old_approx_kl";
    /// KL estimate (ratio - 1) - log(ratio), averaged (Schulman's k3 estimator).
    pub const APPROX_KL: &str = "losses/approx_kl";
    /// Fraction of samples whose ratio was clipped.
    pub const CLIPFRAC: &str = "losses/clipfrac";
    /// 1 - Var(returns - values) / Var(returns).
    pub const EXPLAINED_VARIANCE: &str = "losses/explained_variance";

    /// Every tag above, for tests and for listing in `--help`.
    pub const ALL: [&str; 12] = [
        EPISODIC_RETURN,
        EPISODIC_LENGTH,
        SPS,
        LEARNING_RATE,
        NORMALIZED_RETURN,
        VALUE_LOSS,
        POLICY_LOSS,
        ENTROPY,
        OLD_APPROX_KL,
        APPROX_KL,
        CLIPFRAC,
        EXPLAINED_VARIANCE,
    ];
}

/// Where training metrics go. Implementations must not panic or return errors to the
/// trainer: a failure is reported once on stderr and the sink carries on or disables itself.
pub trait MetricsSink: Send {
    /// One scalar point of a curve.
    fn scalar(&mut self, tag: &str, value: f64, step: i64);

    /// A distribution (weights, alphas, returns). Non-finite values are dropped.
    fn histogram(&mut self, tag: &str, values: &[f64], step: i64);

    /// An RGB image packed row by row: `rgb.len() == height * width * 3` (HWC, u8).
    fn image(&mut self, tag: &str, rgb: &[u8], height: usize, width: usize, step: i64);

    /// Markdown text (a resolved config, a genotype).
    fn text(&mut self, tag: &str, markdown: &str, step: i64);

    /// Push buffered data out; trainers call it once per update.
    fn flush(&mut self);

    /// The run's hyperparameters and the scalar tags of its final metrics, for TensorBoard's
    /// HParams dashboard (which compares the runs of a sweep side by side). The metrics are
    /// ordinary scalars the run logs under those tags. Default: ignored.
    fn hparams(&mut self, _hparams: &[(String, HParam)], _metric_tags: &[String]) {}

    /// Several scalars at one step, in order.
    fn scalars(&mut self, points: &[(&str, f64)], step: i64) {
        for &(tag, value) in points {
            self.scalar(tag, value, step);
        }
    }
}

impl<S: MetricsSink + ?Sized> MetricsSink for Box<S> {
    fn scalar(&mut self, tag: &str, value: f64, step: i64) {
        (**self).scalar(tag, value, step)
    }
    fn histogram(&mut self, tag: &str, values: &[f64], step: i64) {
        (**self).histogram(tag, values, step)
    }
    fn image(&mut self, tag: &str, rgb: &[u8], height: usize, width: usize, step: i64) {
        (**self).image(tag, rgb, height, width, step)
    }
    fn text(&mut self, tag: &str, markdown: &str, step: i64) {
        (**self).text(tag, markdown, step)
    }
    fn flush(&mut self) {
        (**self).flush()
    }
    fn scalars(&mut self, points: &[(&str, f64)], step: i64) {
        (**self).scalars(points, step)
    }
    fn hparams(&mut self, hparams: &[(String, HParam)], metric_tags: &[String]) {
        (**self).hparams(hparams, metric_tags)
    }
}

/// One hyperparameter's value, as the HParams dashboard types it.
#[derive(Debug, Clone, PartialEq)]
pub enum HParam {
    Text(String),
    Number(f64),
    Bool(bool),
}

/// Failures opening a sink. Writing never returns errors (see `MetricsSink`).
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("cannot create log directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create TensorBoard events file {path}: {source}")]
    CreateFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write TensorBoard events file {path}: {message}")]
    Write { path: PathBuf, message: String },
}

/// Checks an image before any sink stores or encodes it, so every sink rejects the same
/// inputs with the same message.
pub(crate) fn check_image(rgb: &[u8], height: usize, width: usize) -> Result<(), String> {
    if height == 0 || width == 0 {
        return Err(format!("image is empty ({height}x{width})"));
    }
    // PNG and the Summary.Image proto store sizes as 31-bit integers.
    if height > i32::MAX as usize || width > i32::MAX as usize {
        return Err(format!("image is too large ({height}x{width})"));
    }
    let expected = height.checked_mul(width).and_then(|n| n.checked_mul(3));
    if expected != Some(rgb.len()) {
        return Err(format!(
            "image buffer has {} bytes, expected height {height} * width {width} * 3 RGB",
            rgb.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_unique_and_prefixed() {
        let mut seen = std::collections::HashSet::new();
        for tag in tags::ALL {
            assert!(seen.insert(tag), "duplicate tag {tag}");
            assert!(
                tag.starts_with("charts/") || tag.starts_with("losses/"),
                "{tag}"
            );
        }
    }

    #[test]
    fn check_image_rejects_wrong_sizes() {
        assert!(check_image(&[0; 2 * 3 * 3], 2, 3).is_ok());
        assert!(check_image(&[0; 2 * 3 * 3], 3, 3).is_err());
        assert!(check_image(&[], 0, 3).is_err());
        assert!(check_image(&[0; 4], usize::MAX, 3).is_err());
    }

    #[test]
    fn boxed_sink_forwards_everything() {
        let memory = MemorySink::new();
        let mut boxed: Box<dyn MetricsSink> = Box::new(memory.clone());
        boxed.scalars(&[(tags::SPS, 10.0), (tags::ENTROPY, 0.5)], 3);
        boxed.histogram("h", &[1.0, 2.0], 3);
        boxed.image("i", &[0; 3], 1, 1, 3);
        boxed.text("t", "hello", 3);
        boxed.flush();
        let recorded = memory.snapshot();
        assert_eq!(recorded.scalars.len(), 2);
        assert_eq!(recorded.histograms.len(), 1);
        assert_eq!(recorded.images.len(), 1);
        assert_eq!(recorded.texts.len(), 1);
        assert_eq!(recorded.flushes, 1);
    }
}
