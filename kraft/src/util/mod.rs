//! Helpers with one home each.
