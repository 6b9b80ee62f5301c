//! TensorBoard sink: TFRecord event files written through tensorboard-rs, with the summaries
//! it lacks (text, histograms from raw values, correctly sized PNG images) built here from
//! its protobuf types.
//!
//! We use tensorboard-rs's record framing (`RecordWriter`, masked CRC32C) and its scalar and
//! raw-histogram summary builders, but open the events file ourselves instead of using its
//! `EventFileWriter`, because that writer:
//! - names the file with one-second resolution, so two writers opened in the same second on
//!   one folder truncate each other's file;
//! - writes on a background thread that panics on any I/O error, after which every later
//!   call, including its `Drop`, panics too (a panic in `Drop` while the trainer is already
//!   unwinding aborts the process);
//! - reports nothing back, so a full disk could not become a warning.
//!
//! Every call into tensorboard-rs still runs under `catch_unwind`: a panic there becomes a
//! one-time warning, and a failed write disables the sink for the rest of the run.

use std::any::Any;
use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{BufWriter, ErrorKind, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use protobuf::{Message, RepeatedField};
use tensorboard_proto::event::Event;
use tensorboard_proto::plugin_text::TextPluginData;
use tensorboard_proto::summary::{
    Summary, SummaryMetadata, SummaryMetadata_PluginData, Summary_Image, Summary_Value,
};
use tensorboard_proto::tensor::TensorProto;
use tensorboard_proto::tensor_shape::{TensorShapeProto, TensorShapeProto_Dim};
use tensorboard_proto::types::DataType;
use tensorboard_rs::record_writer::RecordWriter;

use super::{check_image, HParam, LoggingError, MetricsSink};
use tensorboard_proto::api::{
    DataType as ApiDataType, Experiment, HParamInfo, MetricInfo, MetricName, Status,
};
use tensorboard_proto::plugin_hparams::{HParamsPluginData, SessionEndInfo, SessionStartInfo};

/// Writes one TensorBoard events file. Open one per run directory: TensorBoard treats every
/// events file in a folder as one run and reads them in name order.
pub struct TensorBoardSink {
    path: PathBuf,
    /// None once a write failed: the sink is then disabled for the rest of the run.
    writer: Option<RecordWriter<Box<dyn Write + Send>>>,
    /// Tags already warned about bad input, so a bad call in a loop warns once.
    warned_tags: HashSet<String>,
}

impl TensorBoardSink {
    /// Creates `logdir` if needed and a new events file in it. The file name follows
    /// TensorFlow's `events.out.tfevents.{secs}.{host}.{pid}.{n}`; `n` is bumped until the
    /// name is free (the file is created with `create_new`), so sinks opened in the same
    /// second never share a file.
    pub fn create(logdir: impl AsRef<Path>) -> Result<Self, LoggingError> {
        let logdir = logdir.as_ref();
        fs::create_dir_all(logdir).map_err(|source| LoggingError::CreateDir {
            path: logdir.to_path_buf(),
            source,
        })?;
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let host = hostname();
        let pid = std::process::id();
        let mut n = 0u32;
        let (file, path) = loop {
            let path = logdir.join(format!("events.out.tfevents.{secs:010}.{host}.{pid}.{n}"));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => break (file, path),
                Err(err) if err.kind() == ErrorKind::AlreadyExists && n < 10_000 => n += 1,
                Err(source) => return Err(LoggingError::CreateFile { path, source }),
            }
        };
        let writer: Box<dyn Write + Send> = Box::new(BufWriter::new(file));
        let mut sink = Self::with_writer(writer, path.clone());
        // TensorBoard identifies the format from this first record; without it a reader may
        // skip the file, so failing here is an error rather than a warning.
        let mut version = Event::new();
        version.set_wall_time(wall_time());
        version.set_file_version("brain.Event:2".to_owned());
        let written = sink
            .write_event(&version)
            .and_then(|()| sink.flush_writer());
        if let Err(message) = written {
            // Drop the writer first so that dropping the sink does not warn a second time.
            sink.writer = None;
            return Err(LoggingError::Write { path, message });
        }
        Ok(sink)
    }

    /// A sink over any writer; `path` only names it in warnings. Tests use it to inject
    /// failing writers.
    pub(crate) fn with_writer(writer: Box<dyn Write + Send>, path: PathBuf) -> Self {
        Self {
            path,
            writer: Some(RecordWriter::new(writer)),
            warned_tags: HashSet::new(),
        }
    }

    /// The events file this sink writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// False once a write failed and the sink stopped writing.
    pub fn is_enabled(&self) -> bool {
        self.writer.is_some()
    }

    /// Serialises one event and appends it as a TFRecord; errors and panics become `Err`.
    fn write_event(&mut self, event: &Event) -> Result<(), String> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        let result = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
            let bytes = event.write_to_bytes().map_err(|e| e.to_string())?;
            writer.write(&bytes).map_err(|e| e.to_string())
        }));
        result.unwrap_or_else(|panic| Err(panic_message(&panic)))
    }

    fn flush_writer(&mut self) -> Result<(), String> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        catch_unwind(AssertUnwindSafe(|| {
            writer.flush().map_err(|e| e.to_string())
        }))
        .unwrap_or_else(|panic| Err(panic_message(&panic)))
    }

    /// Turns a write failure into the one warning this sink prints about its file.
    fn disable(&mut self, message: &str) {
        if self.writer.take().is_some() {
            eprintln!(
                "warning: TensorBoard logging stopped: writing {} failed: {message}; \
                 the run continues without it",
                self.path.display()
            );
        }
    }

    fn warn_tag(&mut self, tag: &str, message: &str) {
        if self.warned_tags.insert(tag.to_owned()) {
            eprintln!("warning: TensorBoard tag {tag:?} skipped: {message} (warned once)");
        }
    }

    /// Builds a summary (catching panics from tensorboard-rs) and writes it at `step`.
    fn add_summary(
        &mut self,
        tag: &str,
        step: i64,
        build: impl FnOnce() -> Result<Summary, String>,
    ) {
        if self.writer.is_none() {
            return;
        }
        let summary = match catch_unwind(AssertUnwindSafe(build)) {
            Ok(Ok(summary)) => summary,
            Ok(Err(message)) => return self.warn_tag(tag, &message),
            Err(panic) => {
                let message = format!("tensorboard-rs panicked: {}", panic_message(&panic));
                return self.warn_tag(tag, &message);
            }
        };
        let mut event = Event::new();
        event.set_wall_time(wall_time());
        event.set_step(step);
        event.set_summary(summary);
        if let Err(message) = self.write_event(&event) {
            self.disable(&message);
        }
    }
}

impl MetricsSink for TensorBoardSink {
    fn scalar(&mut self, tag: &str, value: f64, step: i64) {
        // TensorBoard's scalar plugin reads `simple_value`, a float32.
        self.add_summary(tag, step, || {
            Ok(tensorboard_rs::summary::scalar(tag, value as f32))
        });
    }

    fn histogram(&mut self, tag: &str, values: &[f64], step: i64) {
        self.add_summary(tag, step, || {
            let h = HistogramSummary::from_values(values)
                .ok_or_else(|| "histogram has no finite values".to_owned())?;
            Ok(tensorboard_rs::summary::histogram_raw(
                tag,
                h.min,
                h.max,
                h.num,
                h.sum,
                h.sum_squares,
                &h.bucket_limit,
                &h.bucket,
            ))
        });
    }

    fn image(&mut self, tag: &str, rgb: &[u8], height: usize, width: usize, step: i64) {
        self.add_summary(tag, step, || image_summary(tag, rgb, height, width));
    }

    fn text(&mut self, tag: &str, markdown: &str, step: i64) {
        self.add_summary(tag, step, || text_summary(tag, markdown));
    }

    fn flush(&mut self) {
        if let Err(message) = self.flush_writer() {
            self.disable(&message);
        }
    }

    /// What `torch.utils.tensorboard`'s `add_hparams` writes: three summaries of the
    /// "hparams" plugin (the experiment: which hyperparameters and metric tags exist; the
    /// session's start with the values; its end), each carrying its HParamsPluginData in the
    /// summary metadata and no value.
    fn hparams(&mut self, hparams: &[(String, HParam)], metric_tags: &[String]) {
        let parts = hparams_plugin_data(hparams, metric_tags);
        for (tag, data) in parts {
            self.add_summary(tag, 0, || {
                let content = data.write_to_bytes().map_err(|e| e.to_string())?;
                let mut plugin_data = SummaryMetadata_PluginData::new();
                plugin_data.set_plugin_name("hparams".to_owned());
                plugin_data.set_content(content);
                let mut metadata = SummaryMetadata::new();
                metadata.set_plugin_data(plugin_data);
                let mut value = Summary_Value::new();
                value.set_tag(tag.to_owned());
                value.set_metadata(metadata);
                Ok(single_value(value))
            });
        }
        self.flush();
    }
}

/// The experiment, session-start and session-end records of the hparams plugin, by tag.
fn hparams_plugin_data(
    hparams: &[(String, HParam)],
    metric_tags: &[String],
) -> Vec<(&'static str, HParamsPluginData)> {
    let mut experiment = Experiment::new();
    for (name, value) in hparams {
        let mut info = HParamInfo::new();
        info.set_name(name.clone());
        info.set_field_type(match value {
            HParam::Text(_) => ApiDataType::DATA_TYPE_STRING,
            HParam::Number(_) => ApiDataType::DATA_TYPE_FLOAT64,
            HParam::Bool(_) => ApiDataType::DATA_TYPE_BOOL,
        });
        experiment.mut_hparam_infos().push(info);
    }
    for tag in metric_tags {
        let mut name = MetricName::new();
        name.set_tag(tag.clone());
        let mut info = MetricInfo::new();
        info.set_name(name);
        experiment.mut_metric_infos().push(info);
    }
    let mut start = SessionStartInfo::new();
    for (name, value) in hparams {
        let mut v = protobuf::well_known_types::Value::new();
        match value {
            HParam::Text(s) => v.set_string_value(s.clone()),
            HParam::Number(x) => v.set_number_value(*x),
            HParam::Bool(b) => v.set_bool_value(*b),
        }
        start.mut_hparams().insert(name.clone(), v);
    }
    start.set_start_time_secs(wall_time());
    let mut end = SessionEndInfo::new();
    end.set_status(Status::STATUS_SUCCESS);
    end.set_end_time_secs(wall_time());
    let wrap = |f: &dyn Fn(&mut HParamsPluginData)| {
        let mut data = HParamsPluginData::new();
        data.set_version(0);
        f(&mut data);
        data
    };
    vec![
        (
            "_hparams_/experiment",
            wrap(&|d| d.set_experiment(experiment.clone())),
        ),
        (
            "_hparams_/session_start_info",
            wrap(&|d| d.set_session_start_info(start.clone())),
        ),
        (
            "_hparams_/session_end_info",
            wrap(&|d| d.set_session_end_info(end.clone())),
        ),
    ]
}

impl Drop for TensorBoardSink {
    fn drop(&mut self) {
        // Dropping the BufWriter would flush too, but silently; flush here so a lost tail of
        // the log is reported. `flush_writer` cannot panic (it catches), so this is safe even
        // while unwinding.
        MetricsSink::flush(self);
    }
}

/// The text plugin's format: a one-element DT_STRING tensor tagged with plugin "text"
/// (what `torch.utils.tensorboard.SummaryWriter.add_text` writes, without its
/// "/text_summary" tag suffix).
fn text_summary(tag: &str, markdown: &str) -> Result<Summary, String> {
    let content = TextPluginData::new()
        .write_to_bytes()
        .map_err(|e| e.to_string())?;
    let mut plugin_data = SummaryMetadata_PluginData::new();
    plugin_data.set_plugin_name("text".to_owned());
    plugin_data.set_content(content);
    let mut metadata = SummaryMetadata::new();
    metadata.set_plugin_data(plugin_data);

    let mut dim = TensorShapeProto_Dim::new();
    dim.set_size(1);
    let mut shape = TensorShapeProto::new();
    shape.set_dim(RepeatedField::from_vec(vec![dim]));
    let mut tensor = TensorProto::new();
    tensor.set_dtype(DataType::DT_STRING);
    tensor.set_tensor_shape(shape);
    tensor.set_string_val(RepeatedField::from_vec(vec![markdown.as_bytes().to_vec()]));

    let mut value = Summary_Value::new();
    value.set_tag(tag.to_owned());
    value.set_metadata(metadata);
    value.set_tensor(tensor);
    Ok(single_value(value))
}

/// A PNG-encoded image summary. Built here because tensorboard-rs's `image` takes CHW dims
/// but packed HWC data and writes width and height swapped in the header.
fn image_summary(tag: &str, rgb: &[u8], height: usize, width: usize) -> Result<Summary, String> {
    check_image(rgb, height, width)?;
    // check_image bounds both sizes by i32::MAX, so these conversions are lossless.
    let png = encode_png(rgb, height as u32, width as u32).map_err(|e| e.to_string())?;
    let mut image = Summary_Image::new();
    image.set_height(height as i32);
    image.set_width(width as i32);
    image.set_colorspace(3); // RGB
    image.set_encoded_image_string(png);
    let mut value = Summary_Value::new();
    value.set_tag(tag.to_owned());
    value.set_image(image);
    Ok(single_value(value))
}

fn single_value(value: Summary_Value) -> Summary {
    let mut summary = Summary::new();
    summary.set_value(RepeatedField::from_vec(vec![value]));
    summary
}

/// 8-bit RGB PNG of packed HWC pixels.
fn encode_png(rgb: &[u8], height: u32, width: u32) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(out)
}

/// TensorFlow's default histogram bucket limits (`histogram.cc`): right edges growing by
/// 10% from 1e-12 to 1e20, mirrored for negatives, with 0 and +-f64::MAX at the ends.
pub fn default_bucket_limits() -> &'static [f64] {
    static LIMITS: OnceLock<Vec<f64>> = OnceLock::new();
    LIMITS.get_or_init(|| {
        let mut positive = Vec::new();
        let mut v = 1e-12;
        while v < 1e20 {
            positive.push(v);
            v *= 1.1;
        }
        positive.push(f64::MAX);
        let mut limits: Vec<f64> = positive.iter().rev().map(|v| -v).collect();
        limits.push(0.0);
        limits.extend(positive);
        limits
    })
}

/// The fields of TensorBoard's `HistogramProto`, computed the way TensorFlow's
/// `Histogram::Add` + `EncodeToProto` do: value `v` goes to the first bucket whose right
/// edge is greater than `v`, and runs of empty buckets are merged into one.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSummary {
    pub min: f64,
    pub max: f64,
    pub num: f64,
    pub sum: f64,
    pub sum_squares: f64,
    /// Right edge of each emitted bucket.
    pub bucket_limit: Vec<f64>,
    /// Count in each emitted bucket.
    pub bucket: Vec<f64>,
}

impl HistogramSummary {
    /// Summarises the finite values (NaN and infinities are dropped, as they would poison
    /// min/max/sum); None when none are left.
    pub fn from_values(values: &[f64]) -> Option<Self> {
        let limits = default_bucket_limits();
        let mut counts = vec![0.0f64; limits.len()];
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        let (mut num, mut sum, mut sum_squares) = (0.0, 0.0, 0.0);
        for &v in values.iter().filter(|v| v.is_finite()) {
            // upper_bound: the first limit strictly greater than v. Only v == f64::MAX runs
            // past the end; TensorFlow clamps that into the last bucket too.
            let b = limits.partition_point(|&limit| limit <= v);
            counts[b.min(limits.len() - 1)] += 1.0;
            min = min.min(v);
            max = max.max(v);
            num += 1.0;
            sum += v;
            sum_squares += v * v;
        }
        if num == 0.0 {
            return None;
        }
        let mut bucket_limit = Vec::new();
        let mut bucket = Vec::new();
        let mut i = 0;
        while i < counts.len() {
            let mut end = limits[i];
            let mut count = counts[i];
            i += 1;
            if count <= 0.0 {
                while i < counts.len() && counts[i] <= 0.0 {
                    end = limits[i];
                    count = counts[i];
                    i += 1;
                }
            }
            bucket_limit.push(end);
            bucket.push(count);
        }
        Some(Self {
            min,
            max,
            num,
            sum,
            sum_squares,
            bucket_limit,
            bucket,
        })
    }
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The host name for the events file name (TensorFlow's convention); any character that is
/// awkward in a file name becomes '_'.
fn hostname() -> String {
    let raw = fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "localhost".to_owned()
    } else {
        clean
    }
}

fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

#[cfg(test)]
#[path = "tensorboard_tests.rs"]
mod tests;
