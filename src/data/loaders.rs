//! File formats: scikit-learn's `digits.csv` (64 pixel values 0..16, then the label), MNIST's
//! IDX files (big-endian magic 2051 / 2049, optionally gzipped) and the CIFAR-10 binary
//! batches (per record 1 label byte + 3072 pixel bytes, channel-major 32x32).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use tch::{Device, Kind, Tensor};

use super::{DataError, Dataset};

/// Default location of the digits export (`make setup` writes it).
pub const DIGITS_CSV: &str = ".deps/digits/digits.csv";

/// MNIST file stems (train images, train labels, test images, test labels); `.gz` accepted.
pub const MNIST_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// CIFAR-10 binary batches: five training files, then the test file.
pub const CIFAR10_FILES: [&str; 6] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
];

fn read_all(path: &Path, hint: &str) -> Result<Vec<u8>, DataError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|cause| DataError::Io {
            path: path.to_path_buf(),
            cause,
            hint: hint.to_string(),
        })?;
    Ok(bytes)
}

fn malformed(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Malformed {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn images_tensor(pixels: Vec<u8>, shape: [i64; 4], scale: f64) -> Tensor {
    Tensor::from_slice(&pixels).view(shape).to_kind(Kind::Float) / scale
}

const DIGITS_HINT: &str = "Run `make setup` (it exports scikit-learn's digits to .deps/digits/digits.csv), or write \
     the file yourself from `sklearn.datasets.load_digits()`: one image per line, 64 pixel values 0..16 then the label";

/// scikit-learn's digits (1797 images of 8x8, values 0..16), pixels scaled to [0, 1].
pub fn load_digits(path: &Path) -> Result<Dataset, DataError> {
    let bytes = read_all(path, DIGITS_HINT)?;
    let text = String::from_utf8(bytes).map_err(|_| malformed(path, "not UTF-8 text"))?;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let values: Vec<&str> = line.split(',').map(str::trim).collect();
        if values.len() != 65 {
            return Err(malformed(
                path,
                format!(
                    "line {}: {} values, expected 64 pixels and a label",
                    i + 1,
                    values.len()
                ),
            ));
        }
        for (j, v) in values.iter().enumerate() {
            // The export writes floats ("0.0") or integers; both parse as f64.
            let x: f64 = v
                .parse()
                .map_err(|_| malformed(path, format!("line {}: `{v}` is not a number", i + 1)))?;
            let ok = if j < 64 {
                (0.0..=16.0).contains(&x)
            } else {
                (0.0..=9.0).contains(&x)
            };
            if !ok || x.fract() != 0.0 {
                return Err(malformed(
                    path,
                    format!("line {}, value {}: {x} out of range", i + 1, j + 1),
                ));
            }
            if j < 64 {
                pixels.push(x as u8);
            } else {
                labels.push(x as i64);
            }
        }
    }
    if labels.is_empty() {
        return Err(malformed(path, "no rows"));
    }
    let n = labels.len() as i64;
    Ok(Dataset {
        images: images_tensor(pixels, [n, 1, 8, 8], 16.0),
        labels: Tensor::from_slice(&labels),
        num_classes: 10,
    })
}

fn mnist_hint(dir: &Path) -> String {
    format!(
        "Download the four MNIST files ({}; .gz is fine) into {}, e.g. from torchvision's mirror \
         https://ossci-datasets.s3.amazonaws.com/mnist/ or from https://yann.lecun.com/exdb/mnist/",
        MNIST_FILES.join(", "),
        dir.display()
    )
}

/// Fails with the loader's message unless all four MNIST files (plain or `.gz`) are in `dir`;
/// cheap, for checking before a run starts.
pub fn check_mnist(dir: &Path) -> Result<(), DataError> {
    for stem in MNIST_FILES {
        if !dir.join(stem).is_file() {
            check_readable(&dir.join(format!("{stem}.gz")), &mnist_hint(dir))?;
        }
    }
    Ok(())
}

/// Fails with the loader's message unless the digits CSV exists.
pub fn check_digits(path: &Path) -> Result<(), DataError> {
    check_readable(path, DIGITS_HINT)
}

fn check_readable(path: &Path, hint: &str) -> Result<(), DataError> {
    File::open(path).map(drop).map_err(|cause| DataError::Io {
        path: path.to_path_buf(),
        cause,
        hint: hint.to_string(),
    })
}

/// `dir/stem` or `dir/stem.gz`, decompressed.
fn read_maybe_gz(dir: &Path, stem: &str, hint: &str) -> Result<(PathBuf, Vec<u8>), DataError> {
    let plain = dir.join(stem);
    let gz = dir.join(format!("{stem}.gz"));
    if plain.is_file() {
        return Ok((plain.clone(), read_all(&plain, hint)?));
    }
    let compressed = read_all(&gz, hint)?;
    let mut bytes = Vec::new();
    GzDecoder::new(compressed.as_slice())
        .read_to_end(&mut bytes)
        .map_err(|e| malformed(&gz, format!("gzip: {e}")))?;
    Ok((gz, bytes))
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// MNIST from IDX files in `dir` (`train` or the t10k test set), pixels scaled to [0, 1].
pub fn load_mnist(dir: &Path, train: bool) -> Result<Dataset, DataError> {
    let hint = mnist_hint(dir);
    let (img_stem, lbl_stem) = if train {
        (MNIST_FILES[0], MNIST_FILES[1])
    } else {
        (MNIST_FILES[2], MNIST_FILES[3])
    };
    let (img_path, img) = read_maybe_gz(dir, img_stem, &hint)?;
    let (lbl_path, lbl) = read_maybe_gz(dir, lbl_stem, &hint)?;
    if img.len() < 16 || be_u32(&img, 0) != 2051 {
        return Err(malformed(
            &img_path,
            "not an IDX image file (magic 2051 expected)",
        ));
    }
    if lbl.len() < 8 || be_u32(&lbl, 0) != 2049 {
        return Err(malformed(
            &lbl_path,
            "not an IDX label file (magic 2049 expected)",
        ));
    }
    let (n, h, w) = (
        be_u32(&img, 4) as usize,
        be_u32(&img, 8) as usize,
        be_u32(&img, 12) as usize,
    );
    if img.len() != 16 + n * h * w {
        return Err(malformed(
            &img_path,
            format!(
                "header says {n} images of {h}x{w}, file has {} pixel bytes",
                img.len() - 16
            ),
        ));
    }
    let m = be_u32(&lbl, 4) as usize;
    if m != n || lbl.len() != 8 + m {
        return Err(malformed(
            &lbl_path,
            format!("{m} labels ({} bytes) for {n} images", lbl.len() - 8),
        ));
    }
    if let Some(bad) = lbl[8..].iter().find(|&&l| l > 9) {
        return Err(malformed(
            &lbl_path,
            format!("label {bad} out of range 0..9"),
        ));
    }
    let labels: Vec<i64> = lbl[8..].iter().map(|&l| l as i64).collect();
    Ok(Dataset {
        images: images_tensor(img[16..].to_vec(), [n as i64, 1, h as i64, w as i64], 255.0),
        labels: Tensor::from_slice(&labels),
        num_classes: 10,
    })
}

/// The tarball unpacks into `cifar-10-batches-bin/`: accept its parent too.
fn cifar10_dir(dir: &Path) -> PathBuf {
    let nested = dir.join(CIFAR10_FOLDER);
    if nested.is_dir() {
        nested
    } else {
        dir.to_path_buf()
    }
}

/// The folder the tarball creates.
const CIFAR10_FOLDER: &str = "cifar-10-batches-bin";

fn cifar10_hint(dir: &Path) -> String {
    // Where `tar -C` must point so that the files land in `dir`.
    let unpack_into = if dir.file_name().is_some_and(|n| n == CIFAR10_FOLDER) {
        match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    } else {
        dir.to_path_buf()
    };
    format!(
        "CIFAR-10's binary version is expected in {dir} (files {files}). Download cifar-10-binary.tar.gz \
         from https://www.cs.toronto.edu/~kriz/cifar.html and unpack it with `mkdir -p {into} && tar -xzf \
         cifar-10-binary.tar.gz -C {into}` (it creates {into}/{CIFAR10_FOLDER}/), or set data.path to the \
         folder that holds the files",
        dir = dir.display(),
        into = unpack_into.display(),
        files = CIFAR10_FILES.join(", ")
    )
}

/// Fails with the loader's message unless all six CIFAR-10 batch files are in `dir` (or
/// `dir/cifar-10-batches-bin`); cheap, for checking before a run starts.
pub fn check_cifar10(dir: &Path) -> Result<(), DataError> {
    let dir = cifar10_dir(dir);
    let hint = cifar10_hint(&dir);
    for name in CIFAR10_FILES {
        check_readable(&dir.join(name), &hint)?;
    }
    Ok(())
}

/// CIFAR-10 from the binary batches in `dir` (or `dir/cifar-10-batches-bin`), pixels scaled to
/// [0, 1]: the 50k training images or the 10k test images.
pub fn load_cifar10(dir: &Path, train: bool) -> Result<Dataset, DataError> {
    let dir = cifar10_dir(dir);
    let hint = cifar10_hint(&dir);
    let files: &[&str] = if train {
        &CIFAR10_FILES[..5]
    } else {
        &CIFAR10_FILES[5..]
    };
    const RECORD: usize = 1 + 3 * 32 * 32;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for name in files {
        let path = dir.join(name);
        let bytes = read_all(&path, &hint)?;
        if bytes.is_empty() || bytes.len() % RECORD != 0 {
            return Err(malformed(
                &path,
                format!(
                    "{} bytes is not a whole number of {RECORD}-byte records",
                    bytes.len()
                ),
            ));
        }
        for record in bytes.chunks_exact(RECORD) {
            if record[0] > 9 {
                return Err(malformed(
                    &path,
                    format!("label {} out of range 0..9", record[0]),
                ));
            }
            labels.push(record[0] as i64);
            pixels.extend_from_slice(&record[1..]);
        }
    }
    let n = labels.len() as i64;
    Ok(Dataset {
        images: images_tensor(pixels, [n, 3, 32, 32], 255.0).to_device(Device::Cpu),
        labels: Tensor::from_slice(&labels),
        num_classes: 10,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn digits_csv_loads_and_bad_rows_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("digits.csv");
        let row = |label: u8| {
            let mut v: Vec<String> = (0..64).map(|i| (i % 17).to_string()).collect();
            v.push(label.to_string());
            v.join(",")
        };
        std::fs::write(&path, format!("{}\n{}\n", row(3), row(7))).unwrap();
        let d = load_digits(&path).unwrap();
        assert_eq!(d.images.size(), [2, 1, 8, 8]);
        assert_eq!(Vec::<i64>::try_from(&d.labels).unwrap(), [3, 7]);
        assert_eq!(d.images.max().double_value(&[]), 1.0);

        std::fs::write(&path, "1,2,3\n").unwrap();
        let err = load_digits(&path).unwrap_err().to_string();
        assert!(err.contains("line 1: 3 values"), "{err}");
        let err = load_digits(&dir.path().join("missing.csv"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("make setup"), "{err}");
    }

    fn idx_images(n: u32, h: u32, w: u32) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [2051u32, n, h, w] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend((0..n * h * w).map(|i| (i % 256) as u8));
        b
    }

    fn idx_labels(labels: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&2049u32.to_be_bytes());
        b.extend_from_slice(&(labels.len() as u32).to_be_bytes());
        b.extend_from_slice(labels);
        b
    }

    #[test]
    fn mnist_idx_plain_and_gzipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MNIST_FILES[0]), idx_images(3, 28, 28)).unwrap();
        std::fs::write(dir.path().join(MNIST_FILES[1]), idx_labels(&[1, 2, 3])).unwrap();
        // The test set gzipped.
        for (stem, bytes) in [
            (MNIST_FILES[2], idx_images(2, 28, 28)),
            (MNIST_FILES[3], idx_labels(&[9, 0])),
        ] {
            let f = File::create(dir.path().join(format!("{stem}.gz"))).unwrap();
            let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            gz.write_all(&bytes).unwrap();
            gz.finish().unwrap();
        }
        let train = load_mnist(dir.path(), true).unwrap();
        assert_eq!(train.images.size(), [3, 1, 28, 28]);
        assert_eq!(Vec::<i64>::try_from(&train.labels).unwrap(), [1, 2, 3]);
        let test = load_mnist(dir.path(), false).unwrap();
        assert_eq!(Vec::<i64>::try_from(&test.labels).unwrap(), [9, 0]);
        assert!(
            (test.images.get(0).flatten(0, -1).get(1).double_value(&[]) - 1.0 / 255.0).abs() < 1e-7
        );

        // Label count mismatch and a wrong magic are named.
        std::fs::write(dir.path().join(MNIST_FILES[1]), idx_labels(&[1, 2])).unwrap();
        assert!(load_mnist(dir.path(), true)
            .unwrap_err()
            .to_string()
            .contains("2 labels"));
        std::fs::write(dir.path().join(MNIST_FILES[0]), [0u8; 20]).unwrap();
        assert!(load_mnist(dir.path(), true)
            .unwrap_err()
            .to_string()
            .contains("magic 2051"));
        let err = load_mnist(&dir.path().join("nowhere"), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("Download the four MNIST files"), "{err}");
    }

    #[test]
    fn cifar10_binary_records() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&sub).unwrap();
        let record = |label: u8, fill: u8| {
            let mut r = vec![label];
            r.extend(std::iter::repeat_n(fill, 3072));
            r
        };
        for (i, name) in CIFAR10_FILES.iter().enumerate() {
            let bytes = [record(i as u8, 255), record(9, 0)].concat();
            std::fs::write(sub.join(name), bytes).unwrap();
        }
        let train = load_cifar10(dir.path(), true).unwrap();
        assert_eq!(train.images.size(), [10, 3, 32, 32]);
        assert_eq!(
            Vec::<i64>::try_from(&train.labels).unwrap(),
            [0, 9, 1, 9, 2, 9, 3, 9, 4, 9]
        );
        assert_eq!(
            train.images.get(0).mean(Kind::Double).double_value(&[]),
            1.0
        );
        let test = load_cifar10(dir.path(), false).unwrap();
        assert_eq!(test.len(), 2);

        std::fs::write(sub.join("test_batch.bin"), vec![0u8; 100]).unwrap();
        assert!(load_cifar10(dir.path(), false)
            .unwrap_err()
            .to_string()
            .contains("3073-byte records"));
        std::fs::remove_file(sub.join("data_batch_3.bin")).unwrap();
        assert!(load_cifar10(dir.path(), true)
            .unwrap_err()
            .to_string()
            .contains("cifar-10-binary.tar.gz"));
    }
}
