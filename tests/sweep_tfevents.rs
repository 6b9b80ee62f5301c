//! The sweep's TensorBoard reader reads back what the project's TensorBoard sink writes
//! (tests/tensorboard_readback.rs checks that TensorBoard itself reads those files), stops
//! quietly at a record cut short, and rejects a corrupted one.

use std::fs;

use rl_darts::logging::{MetricsSink, TensorBoardSink};
use rl_darts::sweep::tfevents::read_scalars;

#[test]
fn reads_back_scalars_and_checks_records() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut sink = TensorBoardSink::create(tmp.path()).unwrap();
        sink.text("note", "not a scalar", 0);
        for step in 0..50i64 {
            sink.scalar("charts/episodic_return", step as f64 * 0.5, step * 100);
            sink.scalar("losses/value_loss", 1.0 / (step + 1) as f64, step * 100);
        }
        // Several episodes end in one PPO iteration and are logged at its step: all kept.
        for r in [3.0, 1.0, 2.0] {
            sink.scalar("charts/multi", r, 7);
        }
        sink.flush();
    }
    let s = read_scalars(tmp.path()).unwrap();
    let ret = &s["charts/episodic_return"];
    assert_eq!(ret.len(), 50);
    assert_eq!(ret[10], (1000, 5.0));
    // Stored as f32 by TensorBoard's simple_value.
    assert!((s["losses/value_loss"][2].1 - 1.0 / 3.0).abs() < 1e-6);
    assert!(!s.contains_key("note"));
    assert_eq!(s["charts/multi"], [(7, 3.0), (7, 1.0), (7, 2.0)]);

    let file = fs::read_dir(tmp.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bytes = fs::read(&file).unwrap();
    // A writer killed mid-record: the complete records before it still read.
    fs::write(&file, &bytes[..bytes.len() - 7]).unwrap();
    let cut = read_scalars(tmp.path()).unwrap();
    assert_eq!(cut["charts/multi"], [(7, 3.0), (7, 1.0)]);
    assert_eq!(
        cut["charts/episodic_return"].len() + cut["losses/value_loss"].len(),
        100
    );
    // One flipped byte in the middle: a checksum error naming the file.
    let mut bad = bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    fs::write(&file, &bad).unwrap();
    let err = read_scalars(tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("checksum") && err.contains("tfevents"),
        "{err}"
    );
}
