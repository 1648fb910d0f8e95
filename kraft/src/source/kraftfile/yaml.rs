//! YAML events to a small tree that keeps each scalar's raw text, whether it
//! was quoted, and its position, so every later message can say
//! `file:line:column`.
//!
//! The parser is driven one event at a time (never `yaml-rust2`'s recursive
//! loader), and the tree is bounded before it is built: the text's size, one
//! scalar's size, the nesting depth, the number of aliases and the total size
//! that aliases expand to (a "billion laughs" document is refused at the
//! alias that crosses the line, in microseconds, instead of filling memory).

use std::collections::HashMap;

use camino::Utf8Path;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::scalar::{resolve_plain, Kind};
use crate::diag::{Diagnostic, Location};

/// The largest Kraftfile read (real ones are a few hundred bytes).
pub const MAX_TEXT_BYTES: usize = 1 << 20;
/// The longest single scalar.
pub const MAX_SCALAR_BYTES: usize = 16 << 10;
/// The deepest nesting of lists and maps (a real Kraftfile needs 5).
pub const MAX_DEPTH: usize = 32;
/// How many aliases (`*name`) a document may use.
pub const MAX_ALIASES: usize = 256;
/// How much aliases may add in all, in nodes plus scalar bytes.
pub const MAX_ALIAS_EXPANSION: usize = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Plain (unquoted) scalar: typed by YAML 1.1 rules.
    Plain,
    /// Quoted, block, or tagged `!!str`: always a string.
    Quoted,
}

#[derive(Debug, Clone)]
pub enum Value {
    Scalar { text: String, style: Style },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone)]
pub struct Node {
    pub value: Value,
    pub line: usize,
    pub column: usize,
}

impl Node {
    pub fn scalar(&self) -> Option<(&str, Kind)> {
        match &self.value {
            Value::Scalar { text, style: Style::Quoted } => Some((text, Kind::Str)),
            Value::Scalar { text, style: Style::Plain } => Some((text, resolve_plain(text))),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.scalar(), Some((_, Kind::Null)))
    }

    /// "a string", "a list", ... for messages.
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Seq(_) => "a list".into(),
            Value::Map(_) => "a map".into(),
            Value::Scalar { text, .. } => match self.scalar().map(|s| s.1) {
                Some(Kind::Null) => "empty".into(),
                Some(Kind::Bool(_)) => format!("the boolean `{text}`"),
                Some(Kind::Number) => format!("the number `{text}`"),
                _ => format!("the string `{text}`"),
            },
        }
    }
}

/// A node under construction, with its weight (nodes + scalar bytes) so far.
enum Frame {
    Seq { line: usize, column: usize, anchor: usize, weight: usize, items: Vec<Node> },
    Map { line: usize, column: usize, anchor: usize, weight: usize, entries: Vec<(Node, Node)>, key: Option<Node> },
}

/// First structural problem: line, column, message, help.
type Problem = (usize, usize, String, String);

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Node, usize)>,
    root: Option<Node>,
    aliases: usize,
    expanded: usize,
    error: Option<Problem>,
}

impl Builder {
    fn fail(&mut self, line: usize, column: usize, message: String, help: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some((line, column, message, help.into()));
        }
    }

    fn finish(&mut self, node: Node, anchor: usize, weight: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, (node.clone(), weight));
        }
        self.push(node, weight);
    }

    fn push(&mut self, node: Node, weight: usize) {
        let mut problem = None;
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Frame::Seq { items, weight: w, .. }) => {
                *w += weight;
                items.push(node)
            }
            Some(Frame::Map { entries, key, weight: w, .. }) => {
                *w += weight;
                match key.take() {
                    None => {
                        problem = key_problem(entries, &node);
                        *key = Some(node);
                    }
                    Some(k) => {
                        let mut node = node;
                        // An empty value (`key:`) is marked where the next
                        // token starts; point at its key instead.
                        if matches!(&node.value, Value::Scalar { text, style: Style::Plain } if text.is_empty()) {
                            (node.line, node.column) = (k.line, k.column);
                        }
                        entries.push((k, node))
                    }
                }
            }
        }
        if let Some((l, c, m, h)) = problem {
            self.fail(l, c, m, h);
        }
    }

    fn open(&mut self, frame: Frame, line: usize, column: usize) {
        if self.stack.len() >= MAX_DEPTH {
            self.fail(
                line,
                column,
                format!("lists and maps are nested more than {MAX_DEPTH} deep"),
                "a Kraftfile needs a handful of levels; flatten this value",
            );
            return;
        }
        self.stack.push(frame);
    }

    fn alias(&mut self, id: usize, line: usize, column: usize) {
        let Some((node, weight)) = self.anchors.get(&id).cloned() else {
            self.fail(line, column, "unknown YAML alias".into(), "define the anchor (`&name`) before using it");
            return;
        };
        self.aliases += 1;
        self.expanded = self.expanded.saturating_add(weight);
        if self.aliases > MAX_ALIASES || self.expanded > MAX_ALIAS_EXPANSION {
            self.fail(
                line,
                column,
                format!(
                    "YAML aliases expand too far (more than {MAX_ALIASES} aliases or {MAX_ALIAS_EXPANSION} nodes and bytes): \
                     this looks like an alias bomb"
                ),
                "write the values out instead of repeating anchors (`&name`) and aliases (`*name`)",
            );
            return;
        }
        let mut node = node;
        node.line = line;
        node.column = column;
        self.push(node, weight);
    }

    fn on_event(&mut self, ev: Event, mark: Marker) {
        let (line, column) = (mark.line(), mark.col() + 1);
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                if text.len() > MAX_SCALAR_BYTES {
                    self.fail(
                        line,
                        column,
                        format!("a value of {} bytes is longer than the {MAX_SCALAR_BYTES} bytes a Kraftfile value may have", text.len()),
                        "shorten it; large data belongs in files next to the Kraftfile",
                    );
                    return;
                }
                let is_str_tag = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let style = if style == TScalarStyle::Plain && !is_str_tag { Style::Plain } else { Style::Quoted };
                let weight = 1 + text.len();
                self.finish(Node { value: Value::Scalar { text, style }, line, column }, anchor, weight);
            }
            Event::Alias(id) => self.alias(id, line, column),
            Event::SequenceStart(anchor, _) => {
                self.open(Frame::Seq { line, column, anchor, weight: 1, items: Vec::new() }, line, column)
            }
            Event::MappingStart(anchor, _) => {
                self.open(Frame::Map { line, column, anchor, weight: 1, entries: Vec::new(), key: None }, line, column)
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq { line, column, anchor, weight, items }) = self.stack.pop() {
                    self.finish(Node { value: Value::Seq(items), line, column }, anchor, weight);
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map { mut line, mut column, anchor, weight, entries, .. }) = self.stack.pop() {
                    // A block mapping's start mark lies after its first
                    // key; point at that key instead.
                    if let Some((first, _)) = entries.first() {
                        if (first.line, first.column) < (line, column) {
                            (line, column) = (first.line, first.column);
                        }
                    }
                    self.finish(Node { value: Value::Map(entries), line, column }, anchor, weight);
                }
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentStart | Event::DocumentEnd => {}
        }
    }
}

/// What is wrong with `node` as the next key of a map holding `entries`.
fn key_problem(entries: &[(Node, Node)], node: &Node) -> Option<Problem> {
    match &node.value {
        Value::Scalar { text, style } => {
            let kind = if *style == Style::Plain { resolve_plain(text) } else { Kind::Str };
            if *style == Style::Plain && text == "<<" {
                Some((
                    node.line,
                    node.column,
                    "YAML merge keys (`<<`) are not supported".to_string(),
                    "write the merged keys out".to_string(),
                ))
            } else if kind != Kind::Str {
                Some((
                    node.line,
                    node.column,
                    format!(
                        "map keys must be strings, but YAML reads `{text}` as {}",
                        match kind {
                            Kind::Null => "null",
                            Kind::Bool(_) => "a boolean",
                            _ => "a number",
                        }
                    ),
                    format!("quote the key: `\"{text}\":`"),
                ))
            } else {
                entries
                    .iter()
                    .find(|(k, _)| matches!(&k.value, Value::Scalar { text: t, .. } if t == text))
                    .map(|(first, _)| {
                        (
                            node.line,
                            node.column,
                            format!("duplicate key `{text}` (first set on line {})", first.line),
                            "remove one of the two entries".to_string(),
                        )
                    })
            }
        }
        _ => Some((node.line, node.column, "map keys must be strings".to_string(), "use a plain word as the key".to_string())),
    }
}

fn yaml_help(info: &str) -> &'static str {
    if info.contains("tab") {
        "indent with spaces; YAML does not allow tabs for indentation"
    } else if info.contains("flow sequence") {
        "close the list with `]` (and separate items with `,`)"
    } else if info.contains("flow mapping") {
        "close the map with `}` (and separate entries with `,`)"
    } else if info.contains("quoted scalar") {
        "close the quoted string"
    } else if info.contains("recursion limit") {
        "a Kraftfile needs a handful of levels; flatten this value"
    } else {
        "check the indentation and quoting here; a value holding `: ` or starting with `{`, `[`, `*`, `&` or `%` must be quoted"
    }
}

/// Parse the first YAML document of `text`. Nothing is `Null` at 1:1.
pub fn parse(path: &Utf8Path, text: &str) -> anyhow::Result<Node> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(Diagnostic::at(
            Location::new(path, 1, 1),
            format!("the Kraftfile is {} bytes, more than the {MAX_TEXT_BYTES} this tool reads", text.len()),
        )
        .help("a Kraftfile describes an app in a few lines; move data into files beside it")
        .into());
    }
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    let mut documents = 0;
    loop {
        let (ev, mark) = match parser.next_token() {
            Ok(next) => next,
            Err(e) => {
                let m = e.marker();
                let info = e.info();
                return Err(Diagnostic::at(
                    Location::new(path, m.line().max(1), m.col() + 1),
                    format!("invalid YAML: {info}"),
                )
                .help(yaml_help(info))
                .into());
            }
        };
        let end = matches!(ev, Event::StreamEnd) || (matches!(ev, Event::DocumentEnd) && builder.stack.is_empty());
        if matches!(ev, Event::DocumentStart) {
            documents += 1;
        }
        builder.on_event(ev, mark);
        if end || builder.error.is_some() || documents > 1 {
            break;
        }
    }
    if let Some((line, column, message, help)) = builder.error {
        return Err(Diagnostic::at(Location::new(path, line, column), message).help(help).into());
    }
    Ok(builder.root.unwrap_or(Node { value: Value::Scalar { text: String::new(), style: Style::Plain }, line: 1, column: 1 }))
}
