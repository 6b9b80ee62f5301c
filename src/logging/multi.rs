//! Fan-out sink: forwards every call to each of its sinks, in order.

use super::{HParam, MetricsSink};

/// Sends every call to all of its sinks (e.g. TensorBoard and stdout). An empty `MultiSink`
/// discards everything, which makes it the "no logging" sink as well.
#[derive(Default)]
pub struct MultiSink {
    sinks: Vec<Box<dyn MetricsSink>>,
}

impl MultiSink {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a sink (builder style).
    pub fn with(mut self, sink: impl MetricsSink + 'static) -> Self {
        self.push(sink);
        self
    }

    /// Adds a sink.
    pub fn push(&mut self, sink: impl MetricsSink + 'static) {
        self.sinks.push(Box::new(sink));
    }

    pub fn len(&self) -> usize {
        self.sinks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }
}

impl MetricsSink for MultiSink {
    fn scalar(&mut self, tag: &str, value: f64, step: i64) {
        for sink in &mut self.sinks {
            sink.scalar(tag, value, step);
        }
    }

    fn histogram(&mut self, tag: &str, values: &[f64], step: i64) {
        for sink in &mut self.sinks {
            sink.histogram(tag, values, step);
        }
    }

    fn image(&mut self, tag: &str, rgb: &[u8], height: usize, width: usize, step: i64) {
        for sink in &mut self.sinks {
            sink.image(tag, rgb, height, width, step);
        }
    }

    fn text(&mut self, tag: &str, markdown: &str, step: i64) {
        for sink in &mut self.sinks {
            sink.text(tag, markdown, step);
        }
    }

    fn flush(&mut self) {
        for sink in &mut self.sinks {
            sink.flush();
        }
    }

    fn hparams(&mut self, hparams: &[(String, HParam)], metric_tags: &[String]) {
        for sink in &mut self.sinks {
            sink.hparams(hparams, metric_tags);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::MemorySink;

    #[test]
    fn every_sink_sees_every_call() {
        let first = MemorySink::new();
        let second = MemorySink::new();
        let mut multi = MultiSink::new().with(first.clone()).with(second.clone());
        assert_eq!(multi.len(), 2);
        multi.scalar("x", 1.5, 4);
        multi.histogram("h", &[0.0, 1.0], 4);
        multi.image("img", &[1, 2, 3], 1, 1, 4);
        multi.text("t", "*hi*", 4);
        multi.flush();
        assert_eq!(first.snapshot(), second.snapshot());
        let recorded = first.snapshot();
        assert_eq!(recorded.scalars.len(), 1);
        assert_eq!(recorded.histograms.len(), 1);
        assert_eq!(recorded.images.len(), 1);
        assert_eq!(recorded.texts.len(), 1);
        assert_eq!(recorded.flushes, 1);
    }

    #[test]
    fn empty_multi_sink_discards() {
        let mut multi = MultiSink::new();
        assert!(multi.is_empty());
        multi.scalar("x", 1.0, 0);
        multi.flush();
    }
}
