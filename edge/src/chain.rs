//! An error's causes, for log lines and config reasons.

/// `: cause: cause's cause ...` for a log line.
pub fn error_chain(mut e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    while let Some(next) = e.source() {
        out.push_str(": ");
        out.push_str(&next.to_string());
        e = next;
    }
    out
}
