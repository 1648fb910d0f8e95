//! Text helpers for messages.

/// The last `n` lines of `s`, newline-terminated (for error messages that
/// quote a tool's output).
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let mut out = lines[lines.len().saturating_sub(n)..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}
