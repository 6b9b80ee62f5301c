//! Metrics sinks (being written).
