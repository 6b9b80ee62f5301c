//! Real TensorBoard reads what `TensorBoardSink` writes: scalars, a histogram, an image and
//! a text summary, read back with TensorBoard's own `EventAccumulator` from the project's
//! Python environment (`make setup` creates it).

use std::path::PathBuf;
use std::process::Command;

use rl_darts::logging::{tags, MetricsSink, TensorBoardSink};
use serde_json::Value;

const READER: &str = r#"
import json, struct, sys
from tensorboard.backend.event_processing import event_accumulator as ea

# size_guidance 0 = keep every event (the default samples down).
acc = ea.EventAccumulator(sys.argv[1], size_guidance={
    ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.IMAGES: 0, ea.TENSORS: 0,
    ea.COMPRESSED_HISTOGRAMS: 0})
acc.Reload()
tags = acc.Tags()
out = {"scalars": {}, "histograms": {}, "images": {}, "texts": {}}
for t in tags["scalars"]:
    out["scalars"][t] = [[e.step, e.value] for e in acc.Scalars(t)]
for t in tags["histograms"]:
    out["histograms"][t] = [
        {"step": e.step, "num": e.histogram_value.num, "sum": e.histogram_value.sum,
         "min": e.histogram_value.min, "max": e.histogram_value.max,
         "bucket_total": sum(e.histogram_value.bucket)}
        for e in acc.Histograms(t)]
for t in tags["images"]:
    rows = []
    for e in acc.Images(t):
        png = e.encoded_image_string
        assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
        png_width, png_height = struct.unpack(">II", png[16:24])  # IHDR
        rows.append({"step": e.step, "width": e.width, "height": e.height,
                     "png_width": png_width, "png_height": png_height})
    out["images"][t] = rows
for t in tags["tensors"]:
    plugin = acc.SummaryMetadata(t).plugin_data.plugin_name
    out["texts"][t] = [
        {"step": e.step, "plugin": plugin,
         "text": [s.decode("utf-8") for s in e.tensor_proto.string_val]}
        for e in acc.Tensors(t)]
print(json.dumps(out))
"#;

fn python() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make setup` to create the Python environment with tensorboard",
        python.display()
    );
    python
}

fn read_back(logdir: &std::path::Path) -> Value {
    let output = Command::new(python())
        .arg("-c")
        .arg(READER)
        .arg(logdir)
        .output()
        .expect("failed to start the venv's python");
    assert!(
        output.status.success(),
        "TensorBoard reader failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(json).unwrap_or_else(|e| panic!("bad reader output ({e}): {stdout}"))
}

#[test]
fn tensorboard_reads_back_every_summary_kind() {
    let dir = tempfile::tempdir().unwrap();
    let logdir = dir.path().join("run");

    let returns = [1.5, -0.1, 1e6 + 0.25];
    let alphas = [-2.0, -0.5, 0.0, 0.25, 0.25, 3.0, 1e-13];
    // 4 rows x 6 columns: not square, so a width/height swap would show.
    let (height, width) = (4, 6);
    let rgb: Vec<u8> = (0..height * width * 3)
        .map(|i| (i * 7 % 256) as u8)
        .collect();
    let markdown = "# Resolved config\n\n```toml\nlearning_rate = 5e-4 # 学習率\n```";

    let mut sink = TensorBoardSink::create(&logdir).unwrap();
    for (step, &value) in returns.iter().enumerate() {
        sink.scalar(tags::EPISODIC_RETURN, value, 100 * step as i64);
    }
    sink.scalar(tags::SPS, 0.1, 200);
    sink.histogram("alphas/normal", &alphas, 300);
    sink.image("frames/obs", &rgb, height, width, 400);
    sink.text("config", markdown, 0);
    sink.flush();
    // A second writer opened in the same second on the same folder must not clobber the
    // first one's file.
    let mut second = TensorBoardSink::create(&logdir).unwrap();
    assert_ne!(second.path(), sink.path());
    second.scalar("second/value", 42.0, 500);
    drop(second);
    drop(sink);

    let read = read_back(&logdir);

    let episodic = read["scalars"][tags::EPISODIC_RETURN].as_array().unwrap();
    assert_eq!(episodic.len(), returns.len());
    for (i, (point, &expected)) in episodic.iter().zip(&returns).enumerate() {
        assert_eq!(point[0].as_i64(), Some(100 * i as i64));
        let got = point[1].as_f64().unwrap();
        // simple_value is a float32.
        assert!(
            (got - expected).abs() <= expected.abs() * f64::from(f32::EPSILON),
            "{got} vs {expected}"
        );
    }
    let sps = read["scalars"][tags::SPS][0][1].as_f64().unwrap();
    assert!((sps - 0.1).abs() < 1e-7, "{sps}");
    assert_eq!(read["scalars"]["second/value"][0][1].as_f64(), Some(42.0));

    let histogram = &read["histograms"]["alphas/normal"][0];
    assert_eq!(histogram["step"].as_i64(), Some(300));
    assert_eq!(histogram["num"].as_f64(), Some(alphas.len() as f64));
    assert_eq!(
        histogram["bucket_total"].as_f64(),
        Some(alphas.len() as f64)
    );
    assert_eq!(histogram["min"].as_f64(), Some(-2.0));
    assert_eq!(histogram["max"].as_f64(), Some(3.0));
    let sum = histogram["sum"].as_f64().unwrap();
    assert!((sum - alphas.iter().sum::<f64>()).abs() < 1e-12, "{sum}");

    let image = &read["images"]["frames/obs"][0];
    assert_eq!(image["step"].as_i64(), Some(400));
    assert_eq!(image["width"].as_u64(), Some(width as u64));
    assert_eq!(image["height"].as_u64(), Some(height as u64));
    assert_eq!(image["png_width"].as_u64(), Some(width as u64));
    assert_eq!(image["png_height"].as_u64(), Some(height as u64));

    let text = &read["texts"]["config"][0];
    assert_eq!(text["plugin"].as_str(), Some("text"));
    assert_eq!(text["step"].as_i64(), Some(0));
    assert_eq!(text["text"][0].as_str(), Some(markdown));
}

const HPARAMS_READER: &str = r#"
import json, sys
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.hparams import metadata

acc = ea.EventAccumulator(sys.argv[1], size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
acc.Reload()
content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
values = {}
for name, v in start.hparams.items():
    kind = v.WhichOneof("kind")
    values[name] = [kind, getattr(v, kind)]
print(json.dumps({
    "hparams": [h.name for h in experiment.hparam_infos],
    "metrics": [m.name.tag for m in experiment.metric_infos],
    "values": values,
    "status": end.status,
    "scalars": sorted(acc.Tags()["scalars"]),
}))
"#;

/// TensorBoard's own hparams plugin parses what a run writes for its HParams dashboard: the
/// experiment (hyperparameter names, metric tags), the session's values, its end; and the
/// metric tags are scalars of the run.
#[test]
fn tensorboard_reads_back_the_hparams_of_a_run() {
    use rl_darts::train::rl::run::{hparams_of, HPARAM_METRICS};
    let dir = tempfile::tempdir().unwrap();
    let logdir = dir.path().join("run");
    let config = rl_darts::train::pipeline::pipeline_defaults("coinrun").train;
    let hparams = hparams_of(&config);
    let metrics: Vec<String> = HPARAM_METRICS.iter().map(|t| t.to_string()).collect();
    {
        let mut sink = TensorBoardSink::create(&logdir).unwrap();
        for (i, tag) in HPARAM_METRICS.iter().enumerate() {
            sink.scalar(tag, i as f64 + 0.5, 1000);
        }
        sink.hparams(&hparams, &metrics);
    }
    let output = Command::new(python())
        .arg("-c")
        .arg(HPARAMS_READER)
        .arg(&logdir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "hparams reader failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let read: Value = serde_json::from_slice(output.stdout.trim_ascii()).unwrap();
    let names: Vec<&str> = hparams.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(read["hparams"], serde_json::json!(names));
    assert_eq!(read["metrics"], serde_json::json!(metrics));
    assert_eq!(
        read["values"]["env"],
        serde_json::json!(["string_value", "coinrun"])
    );
    assert_eq!(
        read["values"]["strategy"],
        serde_json::json!(["string_value", "joint"])
    );
    assert_eq!(
        read["values"]["encoder"],
        serde_json::json!(["string_value", "rl_darts"])
    );
    assert_eq!(
        read["values"]["seed"],
        serde_json::json!(["number_value", 1.0])
    );
    assert_eq!(read["status"], serde_json::json!(1)); // STATUS_SUCCESS
    for tag in HPARAM_METRICS {
        assert!(
            read["scalars"].as_array().unwrap().iter().any(|t| t == tag),
            "{read}"
        );
    }
}
