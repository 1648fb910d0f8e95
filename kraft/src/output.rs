//! What the tool tells its user: plain lines by default (CI logs),
//! `--message-format json` for machines (one JSON object per line, like
//! cargo's). Human lines go to stderr, as cargo's status lines do; JSON goes to
//! stdout.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use crate::diag::Diagnostic;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MessageFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug)]
pub struct Output {
    pub format: MessageFormat,
    /// Progress lines may be redrawn only on a terminal.
    pub terminal: bool,
    lock: Mutex<()>,
}

impl Output {
    pub fn new(format: MessageFormat) -> Output {
        Output { format, terminal: std::io::stderr().is_terminal() && !crate::config::Config::get().ci, lock: Mutex::new(()) }
    }

    /// A cargo-style status line: `    Locking unikraft stable -> eaf6fda`.
    pub fn status(&self, verb: &str, message: &str) {
        match self.format {
            MessageFormat::Human => {
                let _guard = self.lock.lock().unwrap();
                eprintln!("{verb:>12} {message}");
            }
            MessageFormat::Json => self.event(serde_json::json!({"reason": "status", "verb": verb.trim(), "message": message})),
        }
    }

    pub fn warning(&self, diagnostic: &Diagnostic) {
        match self.format {
            MessageFormat::Human => {
                let _guard = self.lock.lock().unwrap();
                eprintln!("warning: {diagnostic}");
            }
            MessageFormat::Json => self.event(serde_json::json!({"reason": "warning", "diagnostic": diagnostic, "rendered": diagnostic.to_string()})),
        }
    }

    pub fn error(&self, error: &anyhow::Error) {
        match self.format {
            MessageFormat::Human => eprintln!("error: {error:#}"),
            MessageFormat::Json => self.event(serde_json::json!({"reason": "error", "rendered": format!("{error:#}")})),
        }
    }

    /// One JSON object per line on stdout.
    pub fn event(&self, value: serde_json::Value) {
        let _guard = self.lock.lock().unwrap();
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{value}");
    }

    pub fn is_json(&self) -> bool {
        self.format == MessageFormat::Json
    }
}
