//! Reads scalar series back from TensorBoard event files (`events.out.tfevents.*`), for the
//! learning curves of `sweep collect`.
//!
//! TFRecord framing, as TensorFlow's `record_writer.cc` writes it: u64 length (little
//! endian), u32 masked CRC32C of the length bytes, the data, u32 masked CRC32C of the data.
//! The data is an `Event` protobuf; scalars are `summary.value[].simple_value` (what our
//! TensorBoard sink and TF1 write) or a one-element float tensor (TF2's scalar plugin).
//! A record cut short at the end of a file (a run still writing, or killed mid-write) ends
//! the file quietly; a checksum mismatch anywhere is an error naming the file and offset.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use protobuf::Message;
use tensorboard_proto::event::Event;
use tensorboard_proto::summary::Summary_Value;

use super::{io_err, SweepError};

const fn crc32c_table() -> [u32; 256] {
    // Castagnoli polynomial, reflected.
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

static CRC32C: [u32; 256] = crc32c_table();

/// CRC-32C (Castagnoli) of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC32C[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TFRecord's masked CRC: rotate right by 15 and add a constant (so that CRCs of data that
/// itself holds CRCs stay well distributed).
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// The scalar a summary value holds, if it is one.
fn scalar_of(value: &Summary_Value) -> Option<f64> {
    if value.has_simple_value() {
        return Some(f64::from(value.get_simple_value()));
    }
    if value.has_tensor() {
        let t = value.get_tensor();
        if let Some(v) = t.get_float_val().first() {
            return Some(f64::from(*v));
        }
        if let Some(v) = t.get_double_val().first() {
            return Some(*v);
        }
        let bytes = t.get_tensor_content();
        if bytes.len() == 4 {
            return Some(f64::from(f32::from_le_bytes(bytes.try_into().ok()?)));
        }
    }
    None
}

/// Every record's payload in one events file.
fn records(path: &Path) -> Result<Vec<Vec<u8>>, SweepError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    let bad = |offset: usize, what: &str| SweepError::Events {
        path: path.to_path_buf(),
        reason: format!("{what} at byte {offset}"),
    };
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + 12 <= bytes.len() {
        let len_bytes = &bytes[pos..pos + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
        let len_crc = u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into().expect("4 bytes"));
        if masked_crc32c(len_bytes) != len_crc {
            return Err(bad(pos, "length checksum mismatch"));
        }
        let Ok(len) = usize::try_from(len) else {
            return Err(bad(pos, "record length too large"));
        };
        let start = pos + 12;
        let Some(end) = start.checked_add(len).filter(|e| e + 4 <= bytes.len()) else {
            break; // truncated tail: the writer had not finished this record
        };
        let data = &bytes[start..end];
        let data_crc = u32::from_le_bytes(bytes[end..end + 4].try_into().expect("4 bytes"));
        if masked_crc32c(data) != data_crc {
            return Err(bad(pos, "data checksum mismatch"));
        }
        out.push(data.to_vec());
        pos = end + 4;
    }
    Ok(out)
}

/// The events files directly in `dir`, in name order (their names start with the time).
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>, SweepError> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.contains("tfevents"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Every scalar series in the events files of `dir`: tag -> (step, value) in step order.
/// Several values may share a step (the PPO loop logs every episode that ended during an
/// iteration at that iteration's step), and all are kept, in the order they were written.
pub fn read_scalars(dir: &Path) -> Result<BTreeMap<String, Vec<(i64, f64)>>, SweepError> {
    let mut series: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for file in event_files(dir)? {
        for data in records(&file)? {
            let event = Event::parse_from_bytes(&data).map_err(|e| SweepError::Events {
                path: file.clone(),
                reason: format!("not an Event protobuf: {e}"),
            })?;
            if !event.has_summary() {
                continue;
            }
            for value in event.get_summary().get_value() {
                if let Some(v) = scalar_of(value) {
                    series
                        .entry(value.get_tag().to_string())
                        .or_default()
                        .push((event.get_step(), v));
                }
            }
        }
    }
    for points in series.values_mut() {
        // Stable: values of one step keep their written order.
        points.sort_by_key(|p| p.0);
    }
    Ok(series)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_values() {
        // RFC 3720 appendix B.4: 32 bytes of zeros -> 0x8A9136AA; "123456789" -> 0xE3069283.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }
}
