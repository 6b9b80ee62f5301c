//! The report page: escaping, inline CSS, the page frame, and the small HTML pieces the
//! sections are made of. No script and no external resource: the file is the whole report.

use base64::Engine;

/// Text as HTML body text (`<`, `>`, `&`, quotes escaped).
pub fn text(s: &str) -> String {
    html_escape::encode_safe(s).into_owned()
}

/// A `<pre>` block of `s`.
pub fn pre(s: &str) -> String {
    format!("<pre>{}</pre>\n", text(s))
}

/// A paragraph saying what is missing and why.
pub fn missing(what: &str) -> String {
    format!("<p class=\"missing\">Not available: {}</p>\n", text(what))
}

/// A table with a header row; every cell is escaped text.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::from("<table>\n<thead><tr>");
    for h in header {
        out.push_str(&format!("<th>{}</th>", text(h)));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            out.push_str(&format!("<td>{}</td>", text(cell)));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
    out
}

/// An SVG document (plotters' or Graphviz's) as inline markup: the XML declaration and
/// doctype dropped, the rest kept from the `<svg` element on.
pub fn inline_svg(svg: &str, caption: &str) -> String {
    let start = svg.find("<svg").unwrap_or(0);
    format!(
        "<figure>{}<figcaption>{}</figcaption></figure>\n",
        &svg[start..],
        text(caption)
    )
}

/// A PNG file embedded as a data URI.
pub fn png_image(bytes: &[u8], caption: &str) -> String {
    let data = base64::engine::general_purpose::STANDARD.encode(bytes);
    format!(
        "<figure><img alt=\"{}\" src=\"data:image/png;base64,{data}\"><figcaption>{}</figcaption></figure>\n",
        text(caption),
        text(caption)
    )
}

/// One section of the page.
pub struct Section {
    pub id: &'static str,
    pub title: String,
    pub body: String,
}

const CSS: &str = "
body { font-family: 'DejaVu Sans', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1.5em; color: #222; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #3b6ea8; padding-bottom: 0.2em; margin-top: 2em; }
h3 { margin-top: 1.4em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.7em; text-align: left; font-size: 0.92em; }
th { background: #eef3f9; }
tbody tr:nth-child(even) { background: #f7f7f7; }
pre { background: #f5f5f5; border: 1px solid #ddd; padding: 0.7em; overflow-x: auto; font-size: 0.85em;
      max-height: 30em; }
figure { display: inline-block; margin: 0.6em 1em 0.6em 0; vertical-align: top; }
figure svg, figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
.missing { color: #8a4b00; background: #fff4e0; border-left: 4px solid #e69500; padding: 0.4em 0.8em; }
.status-ok { color: #1d6b2a; }
.status-partial { color: #8a4b00; }
";

/// The whole page: title, the status line, a table of contents and the sections.
pub fn page(title: &str, status: &str, complete: bool, sections: &[Section]) -> String {
    let mut out =
        String::from("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str(&format!(
        "<title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n",
        text(title)
    ));
    out.push_str(&format!("<h1>{}</h1>\n", text(title)));
    let class = if complete {
        "status-ok"
    } else {
        "status-partial"
    };
    out.push_str(&format!(
        "<p id=\"status\" class=\"{class}\">{}</p>\n<nav>",
        text(status)
    ));
    for s in sections {
        out.push_str(&format!("<a href=\"#{}\">{}</a>", s.id, text(&s.title)));
    }
    out.push_str("</nav>\n");
    for s in sections {
        out.push_str(&format!(
            "<section id=\"{}\">\n<h2>{}</h2>\n{}</section>\n",
            s.id,
            text(&s.title),
            s.body
        ));
    }
    out.push_str("</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_svg_headers_are_dropped() {
        assert_eq!(text("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
        let t = table(&["x"], &[vec!["<script>".into()]]);
        assert!(t.contains("&lt;script&gt;") && !t.contains("<script>"));
        let svg = "<?xml version=\"1.0\"?>\n<!DOCTYPE svg>\n<svg width=\"1\"></svg>";
        let fig = inline_svg(svg, "c");
        assert!(fig.starts_with("<figure><svg"), "{fig}");
    }
}
