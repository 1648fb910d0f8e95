//! Every environment variable the tool reads, read once at start.
