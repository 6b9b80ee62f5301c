//! Configuration files (being written).
