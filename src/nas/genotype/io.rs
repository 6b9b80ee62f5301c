//! Genotypes as JSON and in files: either form (JSON or the DARTS text form) is read back.

use std::path::Path;

use super::Genotype;
use crate::nas::error::NasError;

impl Genotype {
    pub fn to_json(&self) -> Result<String, NasError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    pub fn from_json(text: &str) -> Result<Self, NasError> {
        Ok(serde_json::from_str(text)?)
    }

    /// Either form: JSON when the text starts with `{`, else the DARTS text form.
    pub fn parse_any(text: &str) -> Result<Self, NasError> {
        if text.trim_start().starts_with('{') {
            Self::from_json(text)
        } else {
            text.parse()
        }
    }

    /// Writes pretty JSON.
    pub fn save_json(&self, path: impl AsRef<Path>) -> Result<(), NasError> {
        let path = path.as_ref();
        std::fs::write(path, self.to_json()? + "\n").map_err(|source| NasError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads a file holding JSON or the DARTS text form.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, NasError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| NasError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_any(&text)
    }
}
