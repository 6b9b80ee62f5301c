//! Frames to files: PNG stills and animated GIFs (for `envs record` and `eval --video`).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode PNG {path}: {message}")]
    Png { path: PathBuf, message: String },
    #[error("cannot encode GIF {path}: {message}")]
    Gif { path: PathBuf, message: String },
    #[error("frame of {got} bytes does not match {height}x{width} RGB")]
    FrameSize {
        got: usize,
        height: usize,
        width: usize,
    },
}

fn create(path: &Path) -> Result<BufWriter<File>, MediaError> {
    File::create(path)
        .map(BufWriter::new)
        .map_err(|source| MediaError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn check_len(rgb: &[u8], height: usize, width: usize) -> Result<(), MediaError> {
    if rgb.len() != height * width * 3 {
        return Err(MediaError::FrameSize {
            got: rgb.len(),
            height,
            width,
        });
    }
    Ok(())
}

/// Encodes packed HWC RGB bytes as PNG (in memory; TensorBoard images use this too).
pub fn encode_png(rgb: &[u8], height: usize, width: usize) -> Result<Vec<u8>, MediaError> {
    check_len(rgb, height, width)?;
    let mut out = Vec::new();
    let err = |e: png::EncodingError| MediaError::Png {
        path: PathBuf::from("<memory>"),
        message: e.to_string(),
    };
    {
        let mut enc = png::Encoder::new(&mut out, width as u32, height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(err)?;
        writer.write_image_data(rgb).map_err(err)?;
    }
    Ok(out)
}

pub fn write_png(path: &Path, rgb: &[u8], height: usize, width: usize) -> Result<(), MediaError> {
    let bytes = encode_png(rgb, height, width)?;
    std::fs::write(path, bytes).map_err(|source| MediaError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// An animated GIF written frame by frame, looping forever.
pub struct GifWriter {
    path: PathBuf,
    encoder: gif::Encoder<BufWriter<File>>,
    height: usize,
    width: usize,
    /// Frame delay in hundredths of a second.
    delay: u16,
}

impl GifWriter {
    pub fn create(path: &Path, height: usize, width: usize, fps: u16) -> Result<Self, MediaError> {
        let gif_err = |e: gif::EncodingError| MediaError::Gif {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let mut encoder =
            gif::Encoder::new(create(path)?, width as u16, height as u16, &[]).map_err(gif_err)?;
        encoder.set_repeat(gif::Repeat::Infinite).map_err(gif_err)?;
        Ok(Self {
            path: path.to_path_buf(),
            encoder,
            height,
            width,
            delay: (100 / fps.max(1)).max(1),
        })
    }

    pub fn add_frame(&mut self, rgb: &[u8]) -> Result<(), MediaError> {
        check_len(rgb, self.height, self.width)?;
        // speed 10: NeuQuant palette quality is plenty for 64x64 game frames, and fast.
        let mut frame = gif::Frame::from_rgb_speed(self.width as u16, self.height as u16, rgb, 10);
        frame.delay = self.delay;
        self.encoder
            .write_frame(&frame)
            .map_err(|e| MediaError::Gif {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }
}
