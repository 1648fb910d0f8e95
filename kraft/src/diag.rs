//! Diagnostics: every user-facing error says where (file:line:column), what
//! is wrong, and how to fix it.
//!
//! A [`Diagnostic`] is an ordinary `std::error::Error`, so it travels through
//! `anyhow` unchanged and the CLI prints it as
//!
//! ```text
//! error: apps/hello/Kraftfile:4:3: `targets` must be a list
//!   help: write `targets: [qemu/x86_64]`
//! ```

use std::fmt;

use camino::{Utf8Path, Utf8PathBuf};

/// A position in a text file. Lines and columns count from 1, as editors do.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Location {
    pub file: Utf8PathBuf,
    pub line: usize,
    pub column: usize,
}

impl Location {
    pub fn new(file: impl AsRef<Utf8Path>, line: usize, column: usize) -> Self {
        Location { file: file.as_ref().to_owned(), line, column }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// An error (or warning) about user input.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    /// Where the problem is, when it is in a file.
    pub location: Option<Location>,
    /// What is wrong, one sentence.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>) -> Self {
        Diagnostic { location: None, message: message.into(), help: None }
    }

    pub fn at(location: Location, message: impl Into<String>) -> Self {
        Diagnostic { location: Some(location), message: message.into(), help: None }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(location) = &self.location {
            write!(f, "{location}: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}

/// Shorthand for returning a located error.
pub fn bail_at<T>(location: Location, message: impl Into<String>, help: impl Into<String>) -> anyhow::Result<T> {
    Err(Diagnostic::at(location, message).help(help).into())
}
