//! DARTS search space (being written).
