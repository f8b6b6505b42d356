//! `hark-rules(5)`: docs/rules.md, the reference of the rule language, rendered as a man
//! page, so that `man hark-rules` and the reference cannot say different things. The
//! Markdown is parsed by pulldown-cmark; this module only maps its blocks to roff
//! (headings, paragraphs, lists, code blocks, tables through tbl).

use std::fmt::Write as _;

use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};

use super::man::roff_text;

/// The reference, compiled in.
const RULES_MD: &str = include_str!("../../../docs/rules.md");

/// The whole page.
pub fn page(date: &str, version: &str) -> String {
    // The first line asks man(1) to run tbl, for the tables.
    let mut s = format!(
        "'\\\" t\n.TH HARK\\-RULES 5 \"{date}\" \"hark {version}\" \"hark manual\"\n\
.SH NAME\nhark\\-rules \\- rule files of the hark trigger daemon\n\
.SH SYNOPSIS\n\\fI/etc/hark/rules.d/*.yaml\\fR, \\fI/usr/share/hark/rules.d/*.yaml\\fR\n\
.SH DESCRIPTION\n"
    );
    s.push_str(&render(RULES_MD));
    s.push_str(
        ".SH SEE ALSO\n\\fBhark\\fR(1), \\fBhark\\-trigger\\fR(1), \\fBhark\\-rules\\-check\\fR(1), \
\\fBhark\\-rules\\-test\\fR(1), \\fBhark.yaml\\fR(5).\n",
    );
    s
}

/// Where inline text is being collected.
#[derive(Default)]
struct Renderer {
    out: String,
    /// Inline text of the block being read, emitted when the block ends.
    line: String,
    /// Before the first `##`: the title is dropped, and so is the list of contents.
    in_preamble: bool,
    /// Open lists: the next number of an ordered one, None for bullets.
    lists: Vec<Option<u64>>,
    /// The current list item already holds a paragraph.
    item_has_text: bool,
    in_code: bool,
    in_heading: bool,
    in_cell: bool,
    /// Cells of the table row being read.
    cells: Vec<String>,
    /// Links outside the document, shown after their text.
    link: Option<String>,
}

fn render(markdown: &str) -> String {
    let mut r = Renderer {
        in_preamble: true,
        ..Default::default()
    };
    for event in Parser::new_ext(markdown, Options::ENABLE_TABLES) {
        r.event(event);
    }
    r.out
}

/// `text` with the characters docs/rules.md uses beyond ASCII written as roff glyphs.
fn roff_inline(text: &str) -> String {
    roff_text(text)
        .replace('—', "\\(em")
        .replace('–', "\\(en")
        .replace('…', "...")
        .replace('→', "\\(->")
        .replace('×', "\\(mu")
}

/// A line that may start with a roff control character, made safe.
fn guarded(line: &str) -> String {
    if line.starts_with('.') || line.starts_with('\'') {
        format!("\\&{line}")
    } else {
        line.to_string()
    }
}

impl Renderer {
    fn event(&mut self, event: Event) {
        match event {
            Event::Start(tag) => self.start(tag),
            Event::End(tag) => self.end(tag),
            Event::Text(text) if self.in_code => {
                for line in text.lines() {
                    let _ = writeln!(self.out, "{}", guarded(&roff_inline(line)));
                }
            }
            // Headings are kept raw: .SH upper-cases them, which escapes would not survive.
            Event::Text(text) | Event::Code(text) if self.in_heading => self.line.push_str(&text),
            // A table column is narrow: `a`/`b`/`c` may break after each slash.
            Event::Text(text) if self.in_cell => {
                self.line.push_str(&roff_inline(&text).replace('/', "/\\:"))
            }
            Event::Text(text) => self.line.push_str(&roff_inline(&text)),
            Event::Code(code) => {
                let _ = write!(self.line, "\\fB{}\\fP", roff_inline(&code));
            }
            Event::SoftBreak | Event::HardBreak => self.line.push(' '),
            _ => {}
        }
    }

    fn start(&mut self, tag: Tag) {
        match tag {
            Tag::Heading { .. } => {
                self.in_heading = true;
                self.line.clear();
            }
            Tag::Paragraph if !self.lists.is_empty() && self.item_has_text => {
                self.out.push_str(".IP\n")
            }
            Tag::Paragraph if !self.lists.is_empty() => {}
            Tag::Paragraph => self.out.push_str(".PP\n"),
            Tag::List(first) => {
                if !self.lists.is_empty() {
                    self.flush();
                    self.out.push_str(".RS\n");
                }
                self.lists.push(first);
            }
            Tag::Item => {
                self.flush();
                self.item_has_text = false;
                let mark = match self.lists.last_mut() {
                    Some(Some(n)) => {
                        *n += 1;
                        format!("{}.", *n - 1)
                    }
                    _ => "\\(bu".to_string(),
                };
                if !self.in_preamble {
                    let _ = writeln!(self.out, ".IP {mark} 4");
                }
            }
            Tag::CodeBlock(_) => {
                self.flush();
                self.out.push_str(".PP\n.RS 4\n.nf\n");
                self.in_code = true;
            }
            Tag::BlockQuote(_) => self.out.push_str(".RS 4\n"),
            Tag::Table(alignments) => {
                let head = vec!["lb"; alignments.len()].join(" ");
                let mut body = vec!["l"; alignments.len()];
                if let Some(last) = body.last_mut() {
                    *last = "lx";
                }
                let _ = write!(
                    self.out,
                    ".PP\n.na\n.TS\nallbox;\n{head}\n{}.\n",
                    body.join(" ")
                );
            }
            Tag::TableCell => {
                self.line.clear();
                self.in_cell = true;
            }
            Tag::Emphasis => self.line.push_str("\\fI"),
            Tag::Strong => self.line.push_str("\\fB"),
            Tag::Link { dest_url, .. } => {
                self.link = dest_url.starts_with("http").then(|| dest_url.to_string());
            }
            _ => {}
        }
    }

    fn end(&mut self, tag: TagEnd) {
        match tag {
            TagEnd::Heading(level) => {
                let title = std::mem::take(&mut self.line);
                self.in_heading = false;
                match level {
                    HeadingLevel::H1 => {}
                    HeadingLevel::H2 => {
                        self.in_preamble = false;
                        let _ = writeln!(self.out, ".SH {}", roff_inline(&title.to_uppercase()));
                    }
                    _ => {
                        let _ = writeln!(self.out, ".SS {}", roff_inline(&title));
                    }
                }
            }
            TagEnd::Paragraph => {
                self.flush();
                self.item_has_text = true;
            }
            TagEnd::Item => self.flush(),
            TagEnd::List(_) => {
                self.flush();
                self.lists.pop();
                if !self.lists.is_empty() {
                    self.out.push_str(".RE\n");
                } else if !self.in_preamble {
                    self.out.push_str(".PP\n");
                }
            }
            TagEnd::CodeBlock => {
                self.in_code = false;
                self.out.push_str(".fi\n.RE\n");
            }
            TagEnd::BlockQuote(_) => {
                self.flush();
                self.out.push_str(".RE\n");
            }
            TagEnd::TableCell => {
                self.in_cell = false;
                let cell = std::mem::take(&mut self.line);
                self.cells.push(cell);
            }
            TagEnd::TableHead | TagEnd::TableRow => {
                let cells: Vec<String> = self
                    .cells
                    .drain(..)
                    .map(|c| format!("T{{\n{}\nT}}", guarded(c.trim())))
                    .collect();
                let _ = writeln!(self.out, "{}", cells.join("\t"));
            }
            TagEnd::Table => self.out.push_str(".TE\n.ad\n"),
            TagEnd::Emphasis | TagEnd::Strong => self.line.push_str("\\fP"),
            TagEnd::Link => {
                if let Some(url) = self.link.take() {
                    let _ = write!(self.line, " <{}>", roff_inline(&url));
                }
            }
            _ => {}
        }
    }

    /// Emit the collected inline text as one line (roff fills it).
    fn flush(&mut self) {
        let text = std::mem::take(&mut self.line);
        let text = text.trim();
        if text.is_empty() || self.in_preamble && !self.lists.is_empty() {
            return;
        }
        let _ = writeln!(self.out, "{}", guarded(text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_become_roff() {
        let md =
            "# Title\n\nIntro `x`.\n\n- [toc](#a)\n\n## `A` b\n\ntext *em* **strong**\nmore\n\n\
- one\n- two\n  - nested\n\n```yaml\n.dot: 1\n```\n\n| k | v |\n| --- | --- |\n| `a` | b - c |\n";
        let out = render(md);
        assert_eq!(
            out,
            ".PP\nIntro \\fBx\\fP\\&.\n.SH A B\n.PP\ntext \\fIem\\fP \\fBstrong\\fP more\n\
.IP \\(bu 4\none\n.IP \\(bu 4\ntwo\n.RS\n.IP \\(bu 4\nnested\n.RE\n.PP\n\
.PP\n.RS 4\n.nf\n\\&.dot: 1\n.fi\n.RE\n\
.PP\n.na\n.TS\nallbox;\nlb lb\nl lx.\nT{\nk\nT}\tT{\nv\nT}\nT{\n\\fBa\\fP\nT}\tT{\nb \\- c\nT}\n.TE\n.ad\n"
        );
    }

    #[test]
    fn the_page_has_every_section_of_the_reference() {
        let page = page("2026-01-01", "0.1.0");
        for heading in RULES_MD.lines().filter_map(|l| l.strip_prefix("## ")) {
            let title = roff_inline(&heading.replace('`', "").to_uppercase());
            assert!(page.contains(&format!(".SH {title}\n")), "{heading}");
        }
        assert!(page.contains(".SH INLINE TESTS\n"), "{page}");
        assert!(!page.contains("(#"), "in-document links are text only");
        assert!(
            page.is_ascii(),
            "non-ASCII characters left in hark-rules(5)"
        );
    }
}
