//! Console sink: one compact line of scalars per flush (per PPO update).

use std::collections::BTreeMap;
use std::io::Write;

use super::{tags, MetricsSink};

/// Which scalars the console line shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verbosity {
    /// Only the headline curves: return, normalized return and SPS.
    Quiet,
    /// Every scalar tag.
    #[default]
    All,
}

/// Tags shown in `Verbosity::Quiet`.
const QUIET_TAGS: [&str; 3] = [tags::EPISODIC_RETURN, tags::NORMALIZED_RETURN, tags::SPS];

/// Prints `step 40960 | SPS 1234 | episodic_return 5.2 | ...` on each flush. A tag logged
/// several times between flushes (an episode return per finished episode) shows the mean of
/// those values. Histograms, images and text are not printed.
pub struct StdoutSink {
    out: Box<dyn Write + Send>,
    verbosity: Verbosity,
    /// tag -> (sum, count) since the last flush.
    pending: BTreeMap<String, (f64, usize)>,
    step: Option<i64>,
    /// Set after the first write error (e.g. a closed pipe): the sink then stays silent.
    broken: bool,
}

impl StdoutSink {
    /// A sink writing to the process's stdout.
    pub fn new(verbosity: Verbosity) -> Self {
        Self::with_writer(std::io::stdout(), verbosity)
    }

    /// A sink writing to any writer (a file, a buffer in tests).
    pub fn with_writer(out: impl Write + Send + 'static, verbosity: Verbosity) -> Self {
        Self {
            out: Box::new(out),
            verbosity,
            pending: BTreeMap::new(),
            step: None,
            broken: false,
        }
    }

    fn shows(&self, tag: &str) -> bool {
        match self.verbosity {
            Verbosity::All => true,
            Verbosity::Quiet => QUIET_TAGS.contains(&tag),
        }
    }

    /// The line for the pending scalars, or None when there is nothing to print.
    fn line(&self) -> Option<String> {
        let step = self.step?;
        if self.pending.is_empty() {
            return None;
        }
        let mut line = format!("step {step}");
        for (tag, &(sum, count)) in &self.pending {
            let leaf = tag.rsplit('/').next().unwrap_or(tag);
            // Drop the "charts/" / "losses/" prefix to keep the line short, unless two
            // pending tags share a leaf name and the prefix is needed to tell them apart.
            let ambiguous = self
                .pending
                .keys()
                .filter(|other| other.rsplit('/').next() == Some(leaf))
                .count()
                > 1;
            let name = if ambiguous { tag.as_str() } else { leaf };
            line.push_str(&format!(" | {name} {}", compact(sum / count as f64)));
        }
        Some(line)
    }
}

/// About four significant digits; scientific notation only for very large or small values.
fn compact(value: f64) -> String {
    if !value.is_finite() {
        return format!("{value}");
    }
    let magnitude = value.abs();
    if value == value.trunc() && magnitude < 1e9 {
        return format!("{value:.0}");
    }
    if !(1e-3..1e5).contains(&magnitude) {
        return format!("{value:.3e}");
    }
    let decimals = (3 - magnitude.log10().floor() as i32).max(0) as usize;
    format!("{value:.decimals$}")
}

impl MetricsSink for StdoutSink {
    fn scalar(&mut self, tag: &str, value: f64, step: i64) {
        if !self.shows(tag) {
            return;
        }
        let entry = self.pending.entry(tag.to_owned()).or_insert((0.0, 0));
        entry.0 += value;
        entry.1 += 1;
        self.step = Some(self.step.map_or(step, |s| s.max(step)));
    }

    fn histogram(&mut self, _tag: &str, _values: &[f64], _step: i64) {}

    fn image(&mut self, _tag: &str, _rgb: &[u8], _height: usize, _width: usize, _step: i64) {}

    fn text(&mut self, _tag: &str, _markdown: &str, _step: i64) {}

    fn flush(&mut self) {
        let line = self.line();
        self.pending.clear();
        self.step = None;
        let Some(line) = line else { return };
        if self.broken {
            return;
        }
        if let Err(err) = writeln!(self.out, "{line}").and_then(|()| self.out.flush()) {
            self.broken = true;
            eprintln!("warning: console metrics disabled: writing them failed: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer tests can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn one_line_per_flush_with_means() {
        let out = Shared::default();
        let mut sink = StdoutSink::with_writer(out.clone(), Verbosity::All);
        sink.scalar(tags::EPISODIC_RETURN, 4.0, 100);
        sink.scalar(tags::EPISODIC_RETURN, 6.0, 120);
        sink.scalar(tags::SPS, 1234.0, 128);
        sink.scalar(tags::VALUE_LOSS, 0.01234, 128);
        sink.flush();
        sink.flush(); // nothing pending: no empty line
        sink.scalar(tags::SPS, 1500.0, 256);
        sink.flush();
        assert_eq!(
            out.text(),
            "step 128 | SPS 1234 | episodic_return 5 | value_loss 0.01234\nstep 256 | SPS 1500\n"
        );
    }

    #[test]
    fn quiet_shows_only_headline_tags() {
        let out = Shared::default();
        let mut sink = StdoutSink::with_writer(out.clone(), Verbosity::Quiet);
        sink.scalar(tags::ENTROPY, 1.0, 8);
        sink.flush();
        sink.scalar(tags::SPS, 10.0, 8);
        sink.scalar(tags::ENTROPY, 1.0, 8);
        sink.flush();
        assert_eq!(out.text(), "step 8 | SPS 10\n");
    }

    #[test]
    fn shared_leaf_names_keep_their_prefix() {
        let out = Shared::default();
        let mut sink = StdoutSink::with_writer(out.clone(), Verbosity::All);
        sink.scalar("train/loss", 1.0, 1);
        sink.scalar("valid/loss", 2.0, 1);
        sink.flush();
        assert_eq!(out.text(), "step 1 | train/loss 1 | valid/loss 2\n");
    }

    #[test]
    fn compact_numbers() {
        assert_eq!(compact(0.0), "0");
        assert_eq!(compact(-3.0), "-3");
        assert_eq!(compact(2.5), "2.500");
        assert_eq!(compact(123.456), "123.5");
        assert_eq!(compact(0.00012), "1.200e-4");
        assert_eq!(compact(2.5e7 + 0.5), "2.500e7");
        assert_eq!(compact(f64::NAN), "NaN");
    }

    struct Failing;
    impl Write for Failing {
        fn write(&mut self, _buf: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "closed",
            ))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_broken_writer_is_reported_once_and_ignored() {
        let mut sink = StdoutSink::with_writer(Failing, Verbosity::All);
        for step in 0..3 {
            sink.scalar(tags::SPS, 1.0, step);
            sink.flush();
        }
        assert!(sink.broken);
    }
}
