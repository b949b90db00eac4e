//! A plain table, rendered as aligned text (terminal), Markdown and HTML.

use std::fmt::Write as _;

#[derive(Clone, Debug, Default)]
pub struct Table {
    pub title: String,
    /// Shown under the title, e.g. why a table is empty.
    pub note: Option<String>,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: &str, header: &[&str]) -> Self {
        Self {
            title: title.into(),
            note: None,
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    /// Columns padded to their widest cell; numbers (every column but the first)
    /// right-aligned.
    pub fn text(&self) -> String {
        let columns = self.header.len();
        let width = |c: usize| {
            std::iter::once(&self.header)
                .chain(&self.rows)
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..columns).map(width).collect();
        let line = |cells: &[String]| {
            let mut out = String::from(" ");
            for (c, w) in widths.iter().enumerate() {
                let cell = cells.get(c).map_or("", String::as_str);
                if c == 0 {
                    let _ = write!(out, " {cell:<w$}");
                } else {
                    let _ = write!(out, "  {cell:>w$}");
                }
            }
            out.trim_end().to_owned()
        };
        let mut out = format!("{}\n", self.title);
        if let Some(note) = &self.note {
            let _ = writeln!(out, "  ({note})");
        }
        if !self.rows.is_empty() {
            let _ = writeln!(out, "{}", line(&self.header));
            for row in &self.rows {
                let _ = writeln!(out, "{}", line(row));
            }
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = format!("### {}\n\n", self.title);
        if let Some(note) = &self.note {
            let _ = writeln!(out, "_{note}_\n");
        }
        if !self.rows.is_empty() {
            let _ = writeln!(out, "| {} |", self.header.join(" | "));
            let rule: Vec<&str> = self
                .header
                .iter()
                .enumerate()
                .map(|(i, _)| if i == 0 { "---" } else { "---:" })
                .collect();
            let _ = writeln!(out, "| {} |", rule.join(" | "));
            for row in &self.rows {
                let _ = writeln!(out, "| {} |", row.join(" | "));
            }
            out.push('\n');
        }
        out
    }

    pub fn html(&self) -> String {
        let mut out = format!("<h2>{}</h2>\n", escape(&self.title));
        if let Some(note) = &self.note {
            let _ = writeln!(out, "<p class=\"note\">{}</p>", escape(note));
        }
        if self.rows.is_empty() {
            return out;
        }
        out.push_str("<table>\n<tr>");
        for h in &self.header {
            let _ = write!(out, "<th>{}</th>", escape(h));
        }
        out.push_str("</tr>\n");
        for row in &self.rows {
            out.push_str("<tr>");
            for cell in row {
                let _ = write!(out, "<td>{}</td>", escape(cell));
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</table>\n");
        out
    }
}

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Nanoseconds as milliseconds with 3 decimals (µs resolution), or `-`.
pub fn ms(ns: Option<f64>) -> String {
    ns.map_or("-".into(), |ns| format!("{:.3}", ns / 1e6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_aligned_text_markdown_and_escaped_html() {
        let mut t = Table::new("Phases", &["phase", "mean ms"]);
        t.row(vec!["schedule".into(), "0.05".into()]);
        t.row(vec!["execute <gpu>".into(), "12.125".into()]);
        assert_eq!(
            t.text(),
            "Phases\n  phase          mean ms\n  schedule          0.05\n  execute <gpu>   12.125\n"
        );
        assert!(t
            .markdown()
            .contains("| phase | mean ms |\n| --- | ---: |\n| schedule | 0.05 |"));
        assert!(t.html().contains("<td>execute &lt;gpu&gt;</td>"));
        assert_eq!(ms(Some(1_234_567.0)), "1.235");
        assert_eq!(ms(None), "-");
    }
}
