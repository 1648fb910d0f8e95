//! What the tool tells its user: plain lines by default (CI logs),
//! `--message-format json` for machines (one typed [`Message`] per line, like
//! cargo's). Human lines go to stderr, as cargo's status lines do; JSON goes to
//! stdout. A progress bar ([`Progress`]) only on a terminal.

pub mod message;
pub mod progress;

pub use message::Message;
pub use progress::Progress;

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
                let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                eprintln!("{verb:>12} {message}");
            }
            MessageFormat::Json => self.message(&Message::Status { verb: verb.trim(), message }),
        }
    }

    pub fn warning(&self, diagnostic: &Diagnostic) {
        match self.format {
            MessageFormat::Human => {
                let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                eprintln!("warning: {diagnostic}");
            }
            MessageFormat::Json => self.message(&Message::Warning { diagnostic, rendered: diagnostic.to_string() }),
        }
    }

    pub fn error(&self, error: &anyhow::Error) {
        match self.format {
            MessageFormat::Human => eprintln!("error: {error:#}"),
            MessageFormat::Json => self.message(&Message::Error { rendered: format!("{error:#}") }),
        }
    }

    /// One JSON object per line on stdout (JSON mode only).
    pub fn message(&self, message: &Message<'_>) {
        if !self.is_json() {
            return;
        }
        let Ok(line) = serde_json::to_string(message) else { return };
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
    }

    /// A progress bar over `total` steps: drawn only on a terminal in human
    /// mode, a no-op otherwise.
    pub fn progress(&self, total: usize) -> Progress {
        Progress::new(self.terminal && !self.is_json(), total)
    }

    pub fn is_json(&self) -> bool {
        self.format == MessageFormat::Json
    }
}
