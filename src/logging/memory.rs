//! In-memory sink for tests: records every call; clones share one record.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{check_image, HParam, MetricsSink};

/// One scalar call.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalarPoint {
    pub tag: String,
    pub step: i64,
    pub value: f64,
}

/// One histogram call, with the values as given (non-finite ones included).
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramRecord {
    pub tag: String,
    pub step: i64,
    pub values: Vec<f64>,
}

/// One accepted image call (packed HWC RGB).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    pub tag: String,
    pub step: i64,
    pub height: usize,
    pub width: usize,
    pub rgb: Vec<u8>,
}

/// One hparams call: the hyperparameters and the metric tags.
pub type HParamsRecord = (Vec<(String, HParam)>, Vec<String>);

/// One text call.
#[derive(Debug, Clone, PartialEq)]
pub struct TextRecord {
    pub tag: String,
    pub step: i64,
    pub markdown: String,
}

/// Everything a `MemorySink` has seen, in call order per kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recorded {
    pub scalars: Vec<ScalarPoint>,
    pub histograms: Vec<HistogramRecord>,
    pub images: Vec<ImageRecord>,
    pub texts: Vec<TextRecord>,
    /// Calls the TensorBoard sink would reject (e.g. an image of the wrong size), as
    /// messages, so tests catch them instead of a warning scrolling by.
    pub rejected: Vec<String>,
    pub flushes: usize,
    /// Each hparams call.
    pub hparams: Vec<HParamsRecord>,
}

/// Records every call. Cloning gives another handle on the same record, so a test keeps one
/// handle and gives the trainer the other.
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    inner: Arc<Mutex<Recorded>>,
}

impl MemorySink {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Recorded> {
        // A panic elsewhere while holding the lock leaves the record intact (every update is
        // a single push), so a poisoned lock is still safe to read.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> Recorded {
        self.lock().clone()
    }

    /// The `(step, value)` points of one scalar tag, in call order.
    pub fn scalars(&self, tag: &str) -> Vec<(i64, f64)> {
        self.lock()
            .scalars
            .iter()
            .filter(|p| p.tag == tag)
            .map(|p| (p.step, p.value))
            .collect()
    }

    /// The most recent value of one scalar tag.
    pub fn last_scalar(&self, tag: &str) -> Option<f64> {
        self.lock()
            .scalars
            .iter()
            .rev()
            .find(|p| p.tag == tag)
            .map(|p| p.value)
    }

    /// Every scalar tag seen, sorted.
    pub fn scalar_tags(&self) -> BTreeSet<String> {
        self.lock().scalars.iter().map(|p| p.tag.clone()).collect()
    }

    /// The `(step, markdown)` entries of one text tag, in call order.
    pub fn texts(&self, tag: &str) -> Vec<(i64, String)> {
        self.lock()
            .texts
            .iter()
            .filter(|t| t.tag == tag)
            .map(|t| (t.step, t.markdown.clone()))
            .collect()
    }

    /// How many times `flush` was called.
    pub fn flushes(&self) -> usize {
        self.lock().flushes
    }

    /// Forgets everything recorded so far.
    pub fn clear(&self) {
        *self.lock() = Recorded::default();
    }
}

impl MetricsSink for MemorySink {
    fn scalar(&mut self, tag: &str, value: f64, step: i64) {
        self.lock().scalars.push(ScalarPoint {
            tag: tag.to_owned(),
            step,
            value,
        });
    }

    fn histogram(&mut self, tag: &str, values: &[f64], step: i64) {
        self.lock().histograms.push(HistogramRecord {
            tag: tag.to_owned(),
            step,
            values: values.to_vec(),
        });
    }

    fn image(&mut self, tag: &str, rgb: &[u8], height: usize, width: usize, step: i64) {
        let mut record = self.lock();
        match check_image(rgb, height, width) {
            Ok(()) => record.images.push(ImageRecord {
                tag: tag.to_owned(),
                step,
                height,
                width,
                rgb: rgb.to_vec(),
            }),
            Err(message) => record.rejected.push(format!("{tag}: {message}")),
        }
    }

    fn text(&mut self, tag: &str, markdown: &str, step: i64) {
        self.lock().texts.push(TextRecord {
            tag: tag.to_owned(),
            step,
            markdown: markdown.to_owned(),
        });
    }

    fn flush(&mut self) {
        self.lock().flushes += 1;
    }

    fn hparams(&mut self, hparams: &[(String, HParam)], metric_tags: &[String]) {
        self.lock()
            .hparams
            .push((hparams.to_vec(), metric_tags.to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_record() {
        let handle = MemorySink::new();
        let mut sink = handle.clone();
        sink.scalar("a", 1.0, 0);
        sink.scalar("b", 5.0, 0);
        sink.scalar("a", 2.0, 8);
        sink.text("cfg", "# config", 0);
        sink.flush();
        assert_eq!(handle.scalars("a"), vec![(0, 1.0), (8, 2.0)]);
        assert_eq!(handle.last_scalar("a"), Some(2.0));
        assert_eq!(handle.last_scalar("missing"), None);
        assert_eq!(
            handle.scalar_tags().into_iter().collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(handle.texts("cfg"), vec![(0, "# config".to_owned())]);
        assert_eq!(handle.flushes(), 1);
        handle.clear();
        assert_eq!(sink.snapshot(), Recorded::default());
    }

    #[test]
    fn bad_images_are_rejected_and_visible() {
        let handle = MemorySink::new();
        let mut sink = handle.clone();
        sink.image("frame", &[0; 5], 1, 2, 0);
        sink.image("frame", &[7; 6], 1, 2, 1);
        let recorded = handle.snapshot();
        assert_eq!(recorded.images.len(), 1);
        assert_eq!(recorded.images[0].step, 1);
        assert_eq!(recorded.rejected.len(), 1);
        assert!(recorded.rejected[0].starts_with("frame: "));
    }

    #[test]
    fn a_panic_while_locked_does_not_break_the_sink() {
        let handle = MemorySink::new();
        let poisoner = handle.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.lock();
            panic!("poison the lock on purpose");
        })
        .join();
        let mut sink = handle.clone();
        sink.scalar("after", 1.0, 0);
        assert_eq!(handle.last_scalar("after"), Some(1.0));
    }
}
