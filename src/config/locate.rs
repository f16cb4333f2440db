//! Turns a toml/serde error into a one-line message with line, column and the dotted
//! key, found by matching the error's byte span against a spanned parse of the file.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// Renders `err` as ``key `a.b[0].c` at line L, column C: message``, without the key
/// part when it is not known. `ConfigError::key` relies on that prefix.
pub(crate) fn describe(text: &str, err: &toml::de::Error) -> String {
    let mut message = plain_type_names(err.message().trim_end());
    if message.starts_with("unknown field") {
        message.push_str("; remove the key or correct its spelling");
    }
    let Some(span) = err.span() else {
        return message;
    };
    let (line, column) = line_column(text, span.start);
    match key_at(text, &span) {
        Some(key) => format!("key `{key}` at line {line}, column {column}: {message}"),
        None => format!("line {line}, column {column}: {message}"),
    }
}

/// Replaces Rust type names in serde's "expected …" with words an operator knows.
fn plain_type_names(message: &str) -> String {
    let whole = "a whole number, 0 or more";
    let mut out = message.to_owned();
    for (rust, plain) in [
        ("expected usize", whole),
        ("expected u64", whole),
        ("expected u32", whole),
        ("expected f64", "a number such as 0.01"),
        ("expected a sequence", "a list in square brackets, [ ... ]"),
    ] {
        if let Some(head) = out.strip_suffix(rust) {
            out = format!("{head}expected {plain}");
        }
    }
    out
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The dotted path of the key or value whose span holds `span`, deepest first.
fn key_at(text: &str, span: &Range<usize>) -> Option<String> {
    let root = DeTable::parse(text).ok()?;
    find_in_table(root.get_ref(), span, "")
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

// Table spans cover only their header, not their keys, so tables are always searched.
fn find_in_table(table: &DeTable<'_>, span: &Range<usize>, prefix: &str) -> Option<String> {
    table.iter().find_map(|(key, value)| {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        if contains(&key.span(), span) {
            return Some(path);
        }
        find_in_value(value.get_ref(), &value.span(), span, &path)
    })
}

fn find_in_value(
    value: &DeValue<'_>,
    value_span: &Range<usize>,
    span: &Range<usize>,
    path: &str,
) -> Option<String> {
    let deeper = match value {
        DeValue::Table(table) => find_in_table(table, span, path),
        DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            find_in_value(item.get_ref(), &item.span(), span, &format!("{path}[{i}]"))
        }),
        _ => None,
    };
    deeper.or_else(|| contains(value_span, span).then(|| path.to_owned()))
}
