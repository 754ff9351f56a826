//! `http_fetch`: one HTTP GET to a host on the task's allowlist ([`ToolContext::http_allow`]).
//!
//! The allowlist is the whole security story, so it is checked on every hop: redirects are
//! followed by hand (the client itself never follows one) and each `Location` must name an
//! allowed host too. Only `http`/`https`, no userinfo in URLs, no proxies (the client is built
//! without the system-proxy feature). Bodies are read chunk by chunk and reading stops at
//! [`FetchLimits::max_bytes`]; connect and read timeouts bound a stalled server, and the registry's
//! time limit bounds the whole call.
//!
//! Text, JSON and XML pass through; HTML is reduced to readable text by [`html_to_text`], built
//! on `html5gum` (a WHATWG-compliant tokenizer without dependencies): scripts, styles,
//! navigation and other chrome are dropped, headings, paragraphs, list items and table rows keep
//! their line breaks, character references are decoded and whitespace is collapsed.

use std::sync::OnceLock;
use std::time::Duration;

use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, LOCATION};
use serde_json::{Value, json};

use crate::{BoxFuture, Tool, ToolContext, ToolError, ToolOutput};

/// Where the CLI takes the allowlist from; named in refusals so the model can tell the user.
const ALLOW_SETTING: &str = "the http_fetch allowlist (autoglm run --allow-host HOST)";

/// One entry of the allowlist: `example.org`, `*.example.org` (any subdomain, not the domain
/// itself), either with `:port` to allow only that port; IPv6 literals in brackets
/// (`[::1]:8080`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// Lowercase host without brackets; for a wildcard, the suffix after `*.`.
    host: String,
    wildcard: bool,
    port: Option<u16>,
}

impl HostPattern {
    pub fn parse(entry: &str) -> Result<HostPattern, String> {
        let e = entry.trim().to_ascii_lowercase();
        let bad = |why: &str| Err(format!("allowed host {entry:?}: {why}"));
        if e.is_empty() {
            return bad("empty");
        }
        if e.contains("://") || e.contains('/') || e.contains('@') {
            return bad("give a host name (optionally host:port), not a URL");
        }
        let (host, port) = if let Some(rest) = e.strip_prefix('[') {
            let Some((h, after)) = rest.split_once(']') else {
                return bad("unclosed '['");
            };
            match after {
                "" => (h.to_string(), None),
                p => match p.strip_prefix(':').map(str::parse::<u16>) {
                    Some(Ok(p)) => (h.to_string(), Some(p)),
                    _ => return bad("expected [ipv6]:port"),
                },
            }
        } else if e.matches(':').count() > 1 {
            // A bare IPv6 literal.
            (e.clone(), None)
        } else if let Some((h, p)) = e.split_once(':') {
            match p.parse::<u16>() {
                Ok(p) => (h.to_string(), Some(p)),
                Err(_) => return bad("the port must be a number from 0 to 65535"),
            }
        } else {
            (e.clone(), None)
        };
        let (host, wildcard) = match host.strip_prefix("*.") {
            Some(s) => (s.to_string(), true),
            None => (host, false),
        };
        let host = host.trim_end_matches('.').to_string();
        if host.is_empty() || host.contains('*') {
            return bad("'*' is only allowed as a leading '*.'");
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'))
        {
            return bad("not a host name");
        }
        Ok(HostPattern {
            host,
            wildcard,
            port,
        })
    }

    /// `host` as the URL gives it (lowercase, IPv6 without brackets) and the effective port.
    fn matches(&self, host: &str, port: u16) -> bool {
        let host = host.trim_end_matches('.');
        let host_ok = if self.wildcard {
            host.len() > self.host.len()
                && host.ends_with(&self.host)
                && host[..host.len() - self.host.len()].ends_with('.')
        } else {
            host == self.host
        };
        host_ok && self.port.is_none_or(|p| p == port)
    }
}

/// Whether `url`'s host is on `allow`; entries that do not parse match nothing (the CLI
/// validates them with [`HostPattern::parse`] before a task starts).
pub fn host_allowed(allow: &[String], url: &Url) -> bool {
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    allow
        .iter()
        .filter_map(|e| HostPattern::parse(e).ok())
        .any(|p| p.matches(host, port))
}

/// Why `url` may not be fetched, if it may not.
fn check_url(allow: &[String], url: &Url) -> Result<(), ToolError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ToolError::Denied(format!(
            "{url}: only http and https URLs can be fetched"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ToolError::Denied(
            "URLs with a user name or password are not fetched".into(),
        ));
    }
    if allow.is_empty() {
        return Err(ToolError::Denied(format!(
            "no hosts are allowed: {ALLOW_SETTING} is empty"
        )));
    }
    if !host_allowed(allow, url) {
        let host = url.host_str().unwrap_or("");
        return Err(ToolError::Denied(format!(
            "{host} is not on {ALLOW_SETTING} (allowed: {})",
            allow.join(", ")
        )));
    }
    Ok(())
}

/// What one `http_fetch` call may take.
#[derive(Debug, Clone)]
pub struct FetchLimits {
    /// Body bytes read at most; the rest is left unread and the result says so.
    pub max_bytes: usize,
    /// Redirects followed at most.
    pub max_redirects: usize,
    pub connect_timeout: Duration,
    /// Longest wait for the next piece of a response (its head included).
    pub read_timeout: Duration,
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits {
            max_bytes: 1024 * 1024,
            max_redirects: 5,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(20),
        }
    }
}

#[derive(Default)]
pub struct HttpFetch {
    limits: FetchLimits,
    /// Built on first use (it needs the TLS provider installed); kept for connection reuse.
    client: OnceLock<Result<reqwest::Client, String>>,
}

impl HttpFetch {
    pub fn new(limits: FetchLimits) -> HttpFetch {
        HttpFetch {
            limits,
            client: OnceLock::new(),
        }
    }

    fn client(&self) -> Result<&reqwest::Client, ToolError> {
        self.client
            .get_or_init(|| {
                // ring, as in the llm crate; a second install attempt is harmless.
                let _ = rustls::crypto::ring::default_provider().install_default();
                reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .connect_timeout(self.limits.connect_timeout)
                    .read_timeout(self.limits.read_timeout)
                    .user_agent(concat!("autoglm/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| format!("cannot start the HTTP client: {e}"))
            })
            .as_ref()
            .map_err(|e| ToolError::Failed(e.clone()))
    }

    async fn fetch(&self, url: &str, allow: &[String]) -> Result<String, ToolError> {
        let mut url = Url::parse(url.trim())
            .map_err(|e| ToolError::InvalidArguments(format!("{url:?} is not a URL: {e}")))?;
        let client = self.client()?;
        let mut hops = 0;
        let mut resp = loop {
            check_url(allow, &url)?;
            let resp = client
                .get(url.clone())
                .send()
                .await
                .map_err(|e| ToolError::Failed(format!("GET {url}: {}", error_chain(&e))))?;
            if !resp.status().is_redirection() {
                break resp;
            }
            let Some(next) = resp
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.join(l).ok())
            else {
                break resp;
            };
            hops += 1;
            if hops > self.limits.max_redirects {
                return Err(ToolError::Failed(format!(
                    "more than {} redirects, last to {next}",
                    self.limits.max_redirects
                )));
            }
            check_url(allow, &next).map_err(|e| match e {
                ToolError::Denied(m) => ToolError::Denied(format!("redirect from {url}: {m}")),
                e => e,
            })?;
            url = next;
        };
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let kind = Kind::of(&ctype);
        if kind == Kind::Binary {
            return Err(ToolError::Failed(format!(
                "{url} is {ctype}, not text; http_fetch returns text, JSON, XML and HTML only"
            )));
        }
        let mut body = Vec::new();
        let mut cut = false;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| ToolError::Failed(format!("reading {url}: {}", error_chain(&e))))?
        {
            let room = self.limits.max_bytes.saturating_sub(body.len());
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                cut = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        let (title, text) = match kind {
            Kind::Html => {
                let d = html_to_text(&body);
                (d.title, d.text)
            }
            Kind::Unknown if body.contains(&0) => {
                return Err(ToolError::Failed(format!(
                    "{url} has no content type and looks binary; http_fetch returns text only"
                )));
            }
            _ => (None, decode(&body, &ctype)),
        };
        let mut out = format!("URL: {url}\nStatus: {status}\n");
        if !ctype.is_empty() {
            out.push_str(&format!("Content-Type: {ctype}\n"));
        }
        if let Some(t) = title {
            out.push_str(&format!("Title: {t}\n"));
        }
        out.push('\n');
        out.push_str(&text);
        if cut {
            out.push_str(&format!(
                "\n[stopped reading after {} bytes; the rest was not fetched]",
                self.limits.max_bytes
            ));
        }
        if !status.is_success() {
            return Err(ToolError::Failed(format!("HTTP {status}\n{out}")));
        }
        Ok(out)
    }
}

/// reqwest's own message is often just "error sending request"; the cause says why.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Html,
    Text,
    Unknown,
    Binary,
}

impl Kind {
    fn of(content_type: &str) -> Kind {
        let mime = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match mime.as_str() {
            "" => Kind::Unknown,
            "text/html" | "application/xhtml+xml" => Kind::Html,
            m if m.starts_with("text/") => Kind::Text,
            "application/json"
            | "application/xml"
            | "application/javascript"
            | "application/x-ndjson"
            | "application/yaml"
            | "application/toml" => Kind::Text,
            m if m.ends_with("+json") || m.ends_with("+xml") => Kind::Text,
            _ => Kind::Binary,
        }
    }
}

/// The body as text: UTF-8 unless the content type names Latin-1; invalid bytes become U+FFFD.
fn decode(body: &[u8], content_type: &str) -> String {
    let ct = content_type.to_ascii_lowercase();
    let latin1 = ["iso-8859-1", "latin1", "latin-1", "us-ascii"]
        .iter()
        .any(|c| ct.contains(&format!("charset={c}")) || ct.contains(&format!("charset=\"{c}\"")));
    if latin1 {
        body.iter().map(|&b| b as char).collect()
    } else {
        String::from_utf8_lossy(body).into_owned()
    }
}

impl Tool for HttpFetch {
    fn name(&self) -> &str {
        "http_fetch"
    }
    fn description(&self) -> &str {
        "Fetch a web page or API response with HTTP GET (only hosts the operator allowed). \
         HTML comes back as readable text, JSON and other text as is. Example: \
         {\"url\": \"https://example.org/docs/intro.html\"}"
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {"url": {"type": "string", "maxLength": 2000}},
               "required": ["url"], "additionalProperties": false})
    }
    fn call<'a>(
        &'a self,
        args: Value,
        ctx: &'a ToolContext,
    ) -> BoxFuture<'a, Result<ToolOutput, ToolError>> {
        Box::pin(async move {
            let url = args.get("url").and_then(Value::as_str).ok_or_else(|| {
                ToolError::InvalidArguments("\"url\" (a string) is required".into())
            })?;
            Ok(ToolOutput::text(self.fetch(url, &ctx.http_allow).await?))
        })
    }
}

/// A page reduced to text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageText {
    /// The first `<title>`, whitespace collapsed.
    pub title: Option<String>,
    pub text: String,
}

/// Elements whose whole content is left out: code, styling, page chrome, forms' widgets.
const SKIP: &[&str] = &[
    "script", "style", "noscript", "template", "svg", "math", "iframe", "object", "canvas", "nav",
    "footer", "select", "button", "textarea",
];
/// Elements that never have content or an end tag.
const VOID: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr", "keygen", "frame",
];
/// Elements that start on a new line, with a blank line around them.
const PARAGRAPH: &[&str] = &[
    "p",
    "div",
    "section",
    "article",
    "main",
    "header",
    "aside",
    "blockquote",
    "pre",
    "table",
    "ul",
    "ol",
    "dl",
    "figure",
    "form",
    "fieldset",
    "address",
    "details",
    "body",
    "hr",
];
/// Elements that start on a new line.
const LINE: &[&str] = &[
    "li",
    "tr",
    "dt",
    "dd",
    "br",
    "figcaption",
    "summary",
    "caption",
    "legend",
    "option",
];
/// Nesting deeper than this is not tracked (stops pathological documents from growing the
/// stack); such elements are treated as if they had no end tag.
const MAX_DEPTH: usize = 256;

/// Reduces HTML to readable text (see the module docs). Never fails: whatever the bytes, the
/// tokenizer recovers as browsers do, and unmatched end tags are ignored.
pub fn html_to_text(html: &[u8]) -> PageText {
    use html5gum::{DefaultEmitter, Token, Tokenizer};

    let mut emitter = DefaultEmitter::default();
    // Script, style, title and textarea content is raw text, as a browser reads it.
    emitter.naively_switch_states(true);
    let mut out = TextOut::default();
    // Open elements by name, a simplified tree: an end tag closes up to its latest match, so
    // an unclosed <nav> or <p> ends with its parent.
    let mut open: Vec<String> = Vec::new();
    let mut skipping = 0usize; // open elements in SKIP (or hidden)
    let mut pre = 0usize;
    // <head> is not skipped as a whole (its end tag is often left out, and then the body would
    // vanish with it); what it holds is void, raw text that is skipped anyway, or the title.
    let mut title = String::new();
    let mut in_title = false;
    let mut title_done = false;
    let mut cells_in_row = 0usize;
    // A newline right after <pre> is not content (HTML's tree construction drops it).
    let mut pre_start = false;
    for token in Tokenizer::new_with_emitter(html, emitter) {
        let Ok(token) = token; // reading a byte slice cannot fail
        match token {
            Token::StartTag(tag) => {
                let name = String::from_utf8_lossy(&tag.name).into_owned();
                let attr = |k: &str| {
                    tag.attributes
                        .get(k.as_bytes())
                        .map(|v| String::from_utf8_lossy(&v.value).to_ascii_lowercase())
                };
                // Only the document's title: an <svg> may have its own.
                if name == "title" && !open.iter().any(|o| o == "!svg" || o == "!math") {
                    in_title = true;
                }
                let void = VOID.contains(&name.as_str()) || tag.self_closing;
                if !void && open.len() < MAX_DEPTH {
                    let hidden = attr("hidden").is_some()
                        || attr("aria-hidden").as_deref() == Some("true")
                        || attr("role").as_deref() == Some("navigation");
                    let skip = SKIP.contains(&name.as_str()) || hidden;
                    skipping += usize::from(skip);
                    pre += usize::from(name == "pre");
                    // Marks whether this element started a skip, so its end undoes it.
                    open.push(if skip {
                        format!("!{name}")
                    } else {
                        name.clone()
                    });
                }
                pre_start = name == "pre";
                if skipping > 0 {
                    continue;
                }
                let n = name.as_str();
                if let Some(level) = heading_level(n) {
                    out.open_block(2);
                    out.marker(HEADING_MARKS[level - 1]);
                } else if PARAGRAPH.contains(&n) {
                    paragraph(&mut out, &open, true);
                } else if LINE.contains(&n) {
                    out.open_block(1);
                    if n == "li" {
                        out.marker("- ");
                    }
                    if n == "tr" {
                        cells_in_row = 0;
                    }
                } else if n == "td" || n == "th" {
                    if cells_in_row > 0 {
                        out.text(" ");
                        out.marker("| ");
                    }
                    cells_in_row += 1;
                }
            }
            Token::EndTag(tag) => {
                pre_start = false;
                let name = String::from_utf8_lossy(&tag.name).into_owned();
                if name == "title" && in_title {
                    in_title = false;
                    title_done |= !title.trim().is_empty();
                }
                let Some(at) = open
                    .iter()
                    .rposition(|o| o == &name || o.strip_prefix('!') == Some(name.as_str()))
                else {
                    // A stray end tag (or one past MAX_DEPTH): nothing to close.
                    if name == "br" && skipping == 0 {
                        out.open_block(1); // browsers read </br> as <br>
                    }
                    continue;
                };
                for o in open.drain(at..) {
                    if o.starts_with('!') {
                        skipping -= 1;
                    }
                    if o == "pre" {
                        pre -= 1;
                    }
                }
                if skipping > 0 {
                    continue;
                }
                if heading_level(&name).is_some() {
                    out.close_block(2);
                } else if PARAGRAPH.contains(&name.as_str()) {
                    paragraph(&mut out, &open, false);
                } else if LINE.contains(&name.as_str()) {
                    out.close_block(1);
                }
            }
            Token::String(s) => {
                let s = String::from_utf8_lossy(&s.value);
                if in_title {
                    if !title_done && title.len() < 1000 {
                        title.push_str(&s);
                    }
                    continue;
                }
                if skipping > 0 {
                    continue;
                }
                if pre > 0 {
                    let s = if std::mem::take(&mut pre_start) {
                        s.strip_prefix('\n').unwrap_or(&s)
                    } else {
                        &s
                    };
                    out.verbatim(s);
                } else {
                    out.text(&s);
                }
            }
            Token::Comment(_) | Token::Doctype(_) | Token::Error(_) => {}
        }
    }
    let title = collapse(&title);
    PageText {
        title: (!title.is_empty()).then_some(title),
        text: out.finish(),
    }
}

/// The break a paragraph-like element makes where it is: a blank line, but only a line break
/// inside a list item (items stay together) and a space inside a table cell (rows stay lines).
fn paragraph(out: &mut TextOut, open: &[String], start: bool) {
    let n = if open.iter().any(|o| o == "td" || o == "th") {
        out.text(" ");
        return;
    } else if open.iter().any(|o| o == "li") {
        1
    } else {
        2
    };
    if start {
        out.open_block(n);
    } else {
        out.close_block(n);
    }
}

const HEADING_MARKS: [&str; 6] = ["# ", "## ", "### ", "#### ", "##### ", "###### "];

fn heading_level(name: &str) -> Option<usize> {
    match name.as_bytes() {
        [b'h', d @ b'1'..=b'6'] => Some(usize::from(d - b'0')),
        _ => None,
    }
}

/// Whitespace runs (including no-break spaces) as one space, trimmed.
fn collapse(s: &str) -> String {
    s.split(|c: char| c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Text being assembled: spaces and line breaks are held back until the next visible character,
/// so runs collapse and nothing trails at line ends. Markers (bullets, heading marks, cell
/// separators) are held back too, so an empty list item or cell leaves nothing behind.
#[derive(Default)]
struct TextOut {
    s: String,
    space: bool,
    breaks: usize,
    /// Written before the next visible character.
    marker: Option<&'static str>,
}

impl TextOut {
    fn flush(&mut self) {
        if self.s.is_empty() {
            // Nothing before: leading breaks and spaces are dropped.
        } else if self.breaks > 0 {
            // <pre> text may end in whitespace; a block boundary ends the line anyway.
            self.s.truncate(self.s.trim_end().len());
            self.s.push_str(if self.breaks > 1 { "\n\n" } else { "\n" });
        } else if self.space {
            self.s.push(' ');
        }
        if let Some(m) = self.marker.take() {
            self.s.push_str(m);
        }
        self.breaks = 0;
        self.space = false;
    }

    fn text(&mut self, t: &str) {
        for c in t.chars() {
            if c.is_whitespace() {
                self.space = true;
            } else {
                self.flush();
                self.s.push(c);
            }
        }
    }

    /// Inside <pre>: kept as written, line ends normalised.
    fn verbatim(&mut self, t: &str) {
        let t = t.replace("\r\n", "\n").replace('\r', "\n");
        if t.is_empty() {
            return;
        }
        self.flush();
        self.s.push_str(&t);
    }

    /// A line break (1) or blank line (2) where an element starts; none between a marker and
    /// its text (`<li><p>` stays on the bullet's line).
    fn open_block(&mut self, n: usize) {
        if self.marker.is_none() {
            self.breaks = self.breaks.max(n);
            self.space = false;
        }
    }

    /// The same where an element ends; a marker still waiting had no text and is dropped.
    fn close_block(&mut self, n: usize) {
        self.marker = None;
        self.breaks = self.breaks.max(n);
        self.space = false;
    }

    /// A bullet, heading mark or cell separator for the text that follows (an outer one wins).
    fn marker(&mut self, m: &'static str) {
        if self.marker.is_none() {
            self.marker = Some(m);
        }
    }

    fn finish(self) -> String {
        let mut s = self.s;
        s.truncate(s.trim_end().len());
        s
    }
}
