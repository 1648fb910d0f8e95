//! Planning (in progress).
