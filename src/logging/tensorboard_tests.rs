//! Unit tests of the TensorBoard sink.
use super::*;
use std::fs::File;
use std::io::Read;
use tensorboard_rs::masked_crc32c::masked_crc32c;

/// Reads a TFRecord file back, checking both CRCs of every record.
fn read_events(path: &Path) -> Vec<Event> {
    let mut data = Vec::new();
    File::open(path).unwrap().read_to_end(&mut data).unwrap();
    let mut events = Vec::new();
    let mut rest = &data[..];
    while !rest.is_empty() {
        let len_bytes = &rest[..8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let len_crc = u32::from_le_bytes(rest[8..12].try_into().unwrap());
        assert_eq!(len_crc, masked_crc32c(len_bytes));
        let payload = &rest[12..12 + len];
        let crc = u32::from_le_bytes(rest[12 + len..16 + len].try_into().unwrap());
        assert_eq!(crc, masked_crc32c(payload));
        events.push(Event::parse_from_bytes(payload).unwrap());
        rest = &rest[16 + len..];
    }
    events
}

fn only_value(event: &Event) -> &Summary_Value {
    let values = event.get_summary().get_value();
    assert_eq!(values.len(), 1);
    &values[0]
}

#[test]
fn events_file_holds_every_summary_kind() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = TensorBoardSink::create(dir.path().join("run")).unwrap();
    sink.scalar("charts/SPS", 1234.5, 7);
    sink.histogram("alphas", &[-1.0, 0.0, 0.5, 0.5, 3.0], 8);
    // 2 rows x 3 columns, a distinct value in every byte to catch any transposition.
    let rgb: Vec<u8> = (0..18).map(|i| i * 10).collect();
    sink.image("frame", &rgb, 2, 3, 9);
    sink.text("config", "# Config\n`lr = 3e-4`", 10);
    let path = sink.path().to_path_buf();
    drop(sink);

    let events = read_events(&path);
    assert_eq!(events.len(), 5);
    assert_eq!(events[0].get_file_version(), "brain.Event:2");

    let scalar = only_value(&events[1]);
    assert_eq!(events[1].get_step(), 7);
    assert_eq!(scalar.get_tag(), "charts/SPS");
    assert_eq!(scalar.get_simple_value(), 1234.5);

    let histo = only_value(&events[2]).get_histo();
    assert_eq!(histo.get_num(), 5.0);
    assert_eq!(histo.get_sum(), 3.0);
    assert_eq!(histo.get_min(), -1.0);
    assert_eq!(histo.get_max(), 3.0);
    assert_eq!(histo.get_bucket().iter().sum::<f64>(), 5.0);

    let image = only_value(&events[3]).get_image();
    assert_eq!((image.get_height(), image.get_width()), (2, 3));
    let decoder = png::Decoder::new(image.get_encoded_image_string());
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((info.height, info.width), (2, 3));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(&pixels[..info.buffer_size()], &rgb[..]);

    let text = only_value(&events[4]);
    assert_eq!(
        text.get_metadata().get_plugin_data().get_plugin_name(),
        "text"
    );
    let tensor = text.get_tensor();
    assert_eq!(tensor.get_dtype(), DataType::DT_STRING);
    assert_eq!(tensor.get_tensor_shape().get_dim()[0].get_size(), 1);
    assert_eq!(tensor.get_string_val(), [b"# Config\n`lr = 3e-4`".to_vec()]);
}

#[test]
fn sinks_opened_together_get_their_own_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = TensorBoardSink::create(dir.path()).unwrap();
    let mut b = TensorBoardSink::create(dir.path()).unwrap();
    assert_ne!(a.path(), b.path());
    a.scalar("x", 1.0, 0);
    b.scalar("x", 2.0, 0);
    let (pa, pb) = (a.path().to_path_buf(), b.path().to_path_buf());
    drop((a, b));
    assert_eq!(only_value(&read_events(&pa)[1]).get_simple_value(), 1.0);
    assert_eq!(only_value(&read_events(&pb)[1]).get_simple_value(), 2.0);
}

#[test]
fn unusable_logdir_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    fs::write(&file, b"x").unwrap();
    let err = TensorBoardSink::create(file.join("run")).err().unwrap();
    assert!(matches!(err, LoggingError::CreateDir { .. }), "{err}");
}

/// Fails (or panics on) every write, counting the attempts.
struct Failing {
    attempts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    panics: bool,
}
impl Write for Failing {
    fn write(&mut self, _buf: &[u8]) -> std::io::Result<usize> {
        self.attempts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.panics {
            panic!("writer panicked on purpose");
        }
        Err(std::io::Error::new(ErrorKind::StorageFull, "disk full"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn write_failures_and_panics_disable_the_sink_once() {
    for panics in [false, true] {
        let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let writer = Failing {
            attempts: attempts.clone(),
            panics,
        };
        let mut sink = TensorBoardSink::with_writer(Box::new(writer), "test".into());
        sink.scalar("x", 1.0, 0);
        assert!(!sink.is_enabled());
        sink.scalar("x", 2.0, 1);
        sink.text("t", "still fine", 1);
        sink.flush();
        // Only the first call reached the writer; later ones were skipped quietly.
        assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}

#[test]
fn bad_inputs_skip_that_call_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = TensorBoardSink::create(dir.path()).unwrap();
    sink.image("frame", &[0; 5], 1, 2, 0);
    sink.histogram("empty", &[], 0);
    sink.histogram("nan", &[f64::NAN], 0);
    sink.scalar("ok", 1.0, 0);
    assert!(sink.is_enabled());
    assert_eq!(sink.warned_tags.len(), 3);
    let path = sink.path().to_path_buf();
    drop(sink);
    let events = read_events(&path);
    assert_eq!(events.len(), 2);
    assert_eq!(only_value(&events[1]).get_tag(), "ok");
}

#[test]
fn default_buckets_match_tensorflow() {
    let limits = default_bucket_limits();
    let n = limits.len();
    let zero = n / 2;
    assert_eq!(n % 2, 1);
    assert_eq!(limits[zero], 0.0);
    assert_eq!(limits[zero + 1], 1e-12);
    assert_eq!((limits[0], limits[n - 1]), (-f64::MAX, f64::MAX));
    // Mirrored, growing by 10%, and the last finite edge is the last one below 1e20.
    assert!((0..zero).all(|i| limits[i] == -limits[n - 1 - i]));
    assert!(limits[zero + 1..n - 1]
        .windows(2)
        .all(|w| (w[1] / w[0] - 1.1).abs() < 1e-12));
    let last = limits[n - 2];
    assert!(last < 1e20 && last * 1.1 >= 1e20);
    // TensorFlow's table has 774 positive edges below 1e20 (1e-12 * 1.1^773 < 1e20).
    assert_eq!(n, 2 * (774 + 1) + 1);
}

/// The straightforward version: scan every edge for every value, keep every bucket,
/// then merge empty runs.
fn naive_counts(values: &[f64]) -> Vec<(f64, f64)> {
    let limits = default_bucket_limits();
    let mut counts = vec![0.0; limits.len()];
    for &v in values.iter().filter(|v| v.is_finite()) {
        let mut b = limits.len() - 1;
        for (i, &limit) in limits.iter().enumerate() {
            if limit > v {
                b = i;
                break;
            }
        }
        counts[b] += 1.0;
    }
    let mut merged: Vec<(f64, f64)> = Vec::new();
    for (i, &count) in counts.iter().enumerate() {
        let previous_empty = merged.last().is_some_and(|&(_, c)| c == 0.0);
        if count == 0.0 && previous_empty {
            merged.last_mut().unwrap().0 = limits[i];
        } else {
            merged.push((limits[i], count));
        }
    }
    merged
}

#[test]
fn histogram_matches_naive_reference() {
    let mut values = vec![
        0.0,
        -0.0,
        1e-13,
        -1e-13,
        1.0,
        1.0,
        1.1,
        -2.5,
        1e25,
        f64::MAX,
    ];
    values.extend((0..200).map(|i| ((i as f64) * 0.37).sin() * 10f64.powi(i % 7 - 3)));
    values.push(f64::NAN);
    values.push(f64::NEG_INFINITY);
    let h = HistogramSummary::from_values(&values).unwrap();
    let expected = naive_counts(&values);
    let got: Vec<(f64, f64)> = h.bucket_limit.iter().copied().zip(h.bucket).collect();
    assert_eq!(got, expected);
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    assert_eq!(h.num, finite.len() as f64);
    assert_eq!(h.max, f64::MAX);
    assert_eq!(h.min, finite.iter().copied().fold(f64::INFINITY, f64::min));
    assert_eq!(h.sum, finite.iter().sum::<f64>());
}
