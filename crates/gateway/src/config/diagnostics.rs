//! How a rejected configuration is reported: [`ConfigError`], and the key
//! paths and line numbers it names (from a byte offset of the parsed TOML
//! document to `route[1].policy.idle_timeout`, and back).

use std::ops::Range;
use std::path::PathBuf;

use toml::de::{DeTable, DeValue};

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}; check the path given to --config", path.display())]
    Read {
        /// The path given.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The text is not valid TOML.
    #[error("{origin}:{line}: TOML syntax error: {message}")]
    Syntax {
        /// File name (or another label) the text came from.
        origin: String,
        /// 1-based line of the error.
        line: usize,
        /// What the TOML parser expected.
        message: String,
    },
    /// A command-line flag sets a key to a value the configuration cannot
    /// take (with the rest of the configuration).
    #[error("the command line: {key}: {message}")]
    Flags {
        /// The key path the flag sets, like `listener[0].protocols[2]`.
        key: String,
        /// Why the value cannot be used.
        message: String,
    },
    /// The TOML is valid but a key is unknown, of the wrong type or has a
    /// value the gateway cannot use.
    #[error("{origin}:{line}: {key}: {message}")]
    Invalid {
        /// File name (or another label) the text came from.
        origin: String,
        /// 1-based line of the offending key.
        line: usize,
        /// The key path, like `route[1].policy.idle_timeout`.
        key: String,
        /// What was expected and what was found.
        message: String,
    },
}

impl ConfigError {
    /// The 1-based line of the error, when it comes from the text.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Read { .. } | ConfigError::Flags { .. } => None,
            ConfigError::Syntax { line, .. } | ConfigError::Invalid { line, .. } => Some(*line),
        }
    }

    /// The key path of the error, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } | ConfigError::Flags { key, .. } => Some(key),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Spans: from a byte offset to a key path and back
// ---------------------------------------------------------------------------

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

pub(crate) fn path_string(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn contains(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && (offset < span.end || span.start == span.end)
}

/// The path of the deepest key whose key or value covers `offset`.
pub(crate) fn path_at(table: &DeTable<'_>, offset: usize, path: &mut Vec<Seg>) -> bool {
    for (key, value) in table.iter() {
        path.push(Seg::Key(key.get_ref().to_string()));
        if value_path_at(value.get_ref(), offset, path)
            || contains(&key.span(), offset)
            || contains(&value.span(), offset)
        {
            return true;
        }
        path.pop();
    }
    false
}

fn value_path_at(value: &DeValue<'_>, offset: usize, path: &mut Vec<Seg>) -> bool {
    match value {
        DeValue::Table(t) => path_at(t, offset, path),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                if value_path_at(item.get_ref(), offset, path) || contains(&item.span(), offset) {
                    return true;
                }
                path.pop();
            }
            false
        }
        _ => false,
    }
}

/// The span of the deepest existing prefix of `path`: the key's own span for
/// a table entry, the item's span for an array element.
fn span_of(root: &DeTable<'_>, path: &[Seg]) -> Option<Range<usize>> {
    let mut current: Option<&DeValue<'_>> = None;
    let mut best = None;
    for seg in path {
        let step = match (seg, current) {
            (Seg::Key(k), None) => root.get(k.as_str()).map(|v| (root_key_span(root, k), v)),
            (Seg::Key(k), Some(DeValue::Table(t))) => {
                t.get(k.as_str()).map(|v| (root_key_span(t, k), v))
            }
            (Seg::Index(i), Some(DeValue::Array(a))) => a.get(*i).map(|v| (Some(v.span()), v)),
            _ => None,
        };
        match step {
            Some((span, value)) => {
                if let Some(span) = span {
                    best = Some(span);
                }
                current = Some(value.get_ref());
            }
            None => break,
        }
    }
    best
}

fn root_key_span(table: &DeTable<'_>, key: &str) -> Option<Range<usize>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref() == key)
        .map(|(k, _)| k.span())
}

/// Builds semantic errors against the parsed document.
pub(crate) struct Reporter<'a> {
    pub(crate) text: &'a str,
    pub(crate) origin: &'a str,
    pub(crate) doc: &'a DeTable<'a>,
}

impl Reporter<'_> {
    pub(crate) fn err(&self, path: &[Seg], message: impl Into<String>) -> ConfigError {
        let line = span_of(self.doc, path)
            .map(|s| line_of(self.text, s.start))
            .unwrap_or(1);
        ConfigError::Invalid {
            origin: self.origin.to_string(),
            line,
            key: path_string(path),
            message: message.into(),
        }
    }

    pub(crate) fn has(&self, path: &[Seg]) -> bool {
        self.get(path).is_some()
    }

    /// The value written at `path`, if any.
    pub(crate) fn get(&self, path: &[Seg]) -> Option<&DeValue<'_>> {
        let mut current: Option<&DeValue<'_>> = None;
        for seg in path {
            let next = match (seg, current) {
                (Seg::Key(k), None) => self.doc.get(k.as_str()),
                (Seg::Key(k), Some(DeValue::Table(t))) => t.get(k.as_str()),
                (Seg::Index(i), Some(DeValue::Array(a))) => a.get(*i),
                _ => None,
            };
            current = Some(next?.get_ref());
        }
        current
    }
}

pub(crate) fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

pub(crate) fn at(base: &[Seg], rest: &[Seg]) -> Vec<Seg> {
    let mut v = base.to_vec();
    v.extend_from_slice(rest);
    v
}
