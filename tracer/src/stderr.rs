//! The tracer's own lines on stderr (warnings, notes, errors), which share the terminal with
//! the live status line. Imports only [`crate::tools::status`]'s line, which imports nothing
//! of the crate, so every layer may use it.

/// A line on stderr, on a clean line below the status line. A closed stderr (the launching
/// terminal went away) must not cost the trace its files, so write errors are ignored.
pub fn say(message: &str) {
    use std::io::Write as _;
    crate::tools::status::Status::clear();
    let _ = writeln!(std::io::stderr(), "{message}");
}
