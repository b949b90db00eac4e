//! Text the target chose (command lines, process titles, mapped paths, request ids), made
//! safe to print: a process can set its title to terminal escape sequences that would
//! otherwise reach the operator's terminal through the tracer's output.

use std::borrow::Cow;

/// `s` with control characters (C0, DEL, C1 such as the 8-bit CSI `\u{9b}`) and bidi
/// overrides escaped as Rust writes them (`\u{1b}`, `\n`, `\u{202e}`); other text,
/// backslashes included, unchanged. Borrowed when nothing needs escaping.
pub fn printable(s: &str) -> Cow<'_, str> {
    escape(s, false)
}

/// [`printable`], but newlines kept: for messages the tracer composed on several lines
/// around target text.
pub fn printable_lines(s: &str) -> Cow<'_, str> {
    escape(s, true)
}

fn unsafe_char(c: char, keep_newlines: bool) -> bool {
    (c.is_control() && !(keep_newlines && c == '\n'))
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn escape(s: &str, keep_newlines: bool) -> Cow<'_, str> {
    if !s.chars().any(|c| unsafe_char(c, keep_newlines)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c, keep_newlines) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_are_shown_not_sent() {
        let title = "VLLM::EngineCore\u{1b}]0;owned\u{7}\u{1b}[2J\u{9b}31m\r";
        let shown = printable(title);
        assert_eq!(
            shown,
            "VLLM::EngineCore\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\u{9b}31m\\r"
        );
        assert!(!shown.chars().any(char::is_control));
        assert!(matches!(
            printable("VLLM::EngineCore_DP1"),
            Cow::Borrowed(_)
        ));
        assert_eq!(printable("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(printable("C:\\x é"), "C:\\x é");
        assert_eq!(printable_lines("one\ntwo\u{1b}"), "one\ntwo\\u{1b}");
        assert_eq!(printable("one\ntwo"), "one\\ntwo");
    }
}
