//! Java's `.properties` syntax (`java.util.Properties.load`), the format of Kafka's
//! `server.properties`, so a Kafka broker's file can be handed to `sluice serve --config`.
//!
//! The rules, as `Properties.load` applies them: lines end at `\n`, `\r` or `\r\n`; a line
//! whose first non-blank character is `#` or `!` is a comment (and is never continued);
//! blank lines are skipped; a line ending in an odd number of backslashes continues on
//! the next line, whose leading blanks are dropped; the key runs to the first unescaped
//! `=`, `:` or blank, and one `=` or `:` (with blanks around it) separates it from the
//! value; in keys and values `\t`, `\n`, `\r`, `\f` and `\uXXXX` are escapes and a
//! backslash before any other character stands for that character (`\:`, `\=`, `\\`,
//! `\ `). Blanks are space, tab and form feed. A key given twice keeps its last value.
//!
//! Two departures, both Kafka's rather than Java's: values are trimmed (Kafka's
//! `ConfigDef` trims every value it parses, so `num.partitions=3 ` is 3), and a file that
//! is not UTF-8 is read as ISO-8859-1, which is what `Properties.load(InputStream)`,
//! Kafka's `Utils.loadProps`, always does.

/// A `\u` escape without four hex digits (Java's `Properties.load` refuses it too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PropertiesError {
    pub line: usize,
}

impl std::fmt::Display for PropertiesError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: malformed \\uXXXX escape", self.line)
    }
}

impl std::error::Error for PropertiesError {}

/// One `key=value` entry and the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub line: usize,
}

/// The file's text: UTF-8 when it is, else ISO-8859-1 (each byte one character).
pub fn decode(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
    }
}

fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\u{c}')
}

/// Parses properties text into its entries, in file order (a repeated key appears
/// twice; the caller keeps the last).
pub fn parse(text: &str) -> Result<Vec<Entry>, PropertiesError> {
    let mut entries = Vec::new();
    let mut lines = natural_lines(text).peekable();
    while let Some((number, line)) = lines.next() {
        let content = line.trim_start_matches(is_blank);
        if content.is_empty() || content.starts_with('#') || content.starts_with('!') {
            continue;
        }
        // Join continuation lines: an odd number of trailing backslashes continues.
        let mut logical = String::from(content);
        while ends_in_odd_backslashes(&logical) {
            logical.pop();
            match lines.next() {
                Some((_, next)) => logical.push_str(next.trim_start_matches(is_blank)),
                None => break,
            }
        }
        let (key, value) = split_key_value(&logical);
        entries.push(Entry {
            key: unescape(key, number)?,
            value: unescape(value, number)?.trim().to_string(),
            line: number,
        });
    }
    Ok(entries)
}

/// The natural lines of `text` with their 1-based numbers: `\r\n`, `\n` and `\r` each end
/// a line.
fn natural_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut rest = text;
    let mut number = 0;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        number += 1;
        let end = rest.find(['\n', '\r']).unwrap_or(rest.len());
        let line = &rest[..end];
        let after = &rest[end..];
        rest = if let Some(stripped) = after.strip_prefix("\r\n") {
            stripped
        } else if !after.is_empty() {
            &after[1..]
        } else {
            after
        };
        Some((number, line))
    })
}

fn ends_in_odd_backslashes(line: &str) -> bool {
    line.chars().rev().take_while(|&c| c == '\\').count() % 2 == 1
}

/// Splits a logical line into its raw (still escaped) key and value.
fn split_key_value(line: &str) -> (&str, &str) {
    let mut escaped = false;
    let mut key_end = line.len();
    let mut separator = None;
    for (at, c) in line.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '=' | ':' => {
                key_end = at;
                separator = Some(at + 1);
                break;
            }
            c if is_blank(c) => {
                key_end = at;
                break;
            }
            _ => {}
        }
    }
    let key = &line[..key_end];
    let mut value = match separator {
        Some(after) => &line[after..],
        None => &line[key_end..],
    };
    value = value.trim_start_matches(is_blank);
    if separator.is_none() {
        // `key  = value`: blanks, then one optional `=` or `:`, then blanks.
        if let Some(rest) = value.strip_prefix(['=', ':']) {
            value = rest.trim_start_matches(is_blank);
        }
    }
    (key, value)
}

fn unescape(raw: &str, line: usize) -> Result<String, PropertiesError> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(next) = chars.next() else {
            break; // A lone trailing backslash (end of file after a continuation).
        };
        match next {
            't' => out.push('\t'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            'f' => out.push('\u{c}'),
            'u' => {
                let digits: String = chars.by_ref().take(4).collect();
                let code = (digits.len() == 4)
                    .then(|| u32::from_str_radix(&digits, 16).ok())
                    .flatten()
                    .ok_or(PropertiesError { line })?;
                // Java strings are UTF-16: a surrogate pair arrives as two escapes.
                if (0xD800..0xDC00).contains(&code) {
                    let low = low_surrogate(&mut chars);
                    match low.and_then(|low| {
                        char::from_u32(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00))
                    }) {
                        Some(c) => out.push(c),
                        None => out.push(char::REPLACEMENT_CHARACTER),
                    }
                } else {
                    out.push(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER));
                }
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

/// Takes a `\uDC00`-`\uDFFF` escape if one follows.
fn low_surrogate(chars: &mut std::str::Chars<'_>) -> Option<u32> {
    let rest = chars.as_str();
    let digits = rest.strip_prefix("\\u")?.get(..4)?;
    let code = u32::from_str_radix(digits, 16).ok()?;
    if !(0xDC00..0xE000).contains(&code) {
        return None;
    }
    *chars = rest[6..].chars();
    Some(code)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Vec<(String, String)> {
        parse(text).unwrap().into_iter().map(|e| (e.key, e.value)).collect()
    }

    fn pair(key: &str, value: &str) -> (String, String) {
        (key.to_string(), value.to_string())
    }

    #[test]
    fn separators_comments_and_blanks() {
        let text = "# comment\n! also a comment\n\n   \na=1\nb: 2\nc 3\n  d = 4\ne\t:\t5\nf\n";
        assert_eq!(
            pairs(text),
            vec![
                pair("a", "1"),
                pair("b", "2"),
                pair("c", "3"),
                pair("d", "4"),
                pair("e", "5"),
                pair("f", ""),
            ]
        );
        // Only the first separator splits; the rest belongs to the value.
        assert_eq!(pairs("url=a=b:c\n"), vec![pair("url", "a=b:c")]);
        assert_eq!(pairs("key  =  = x"), vec![pair("key", "= x")]);
        // A comment marker inside a value is part of the value.
        assert_eq!(pairs("a=1 # not a comment"), vec![pair("a", "1 # not a comment")]);
    }

    #[test]
    fn continuation_lines() {
        let text = "listeners=PLAINTEXT://:9092,\\\n    CONTROLLER://:9093\nnext=1\n";
        assert_eq!(
            pairs(text),
            vec![pair("listeners", "PLAINTEXT://:9092,CONTROLLER://:9093"), pair("next", "1")]
        );
        // An even number of backslashes is an escaped backslash, not a continuation.
        assert_eq!(pairs("dir=C:\\\\\nx=1"), vec![pair("dir", "C:\\"), pair("x", "1")]);
        // A comment line is never continued.
        assert_eq!(pairs("# comment \\\nx=1"), vec![pair("x", "1")]);
        // A continuation at the end of the file ends the value.
        assert_eq!(pairs("x=1\\"), vec![pair("x", "1")]);
        // Windows and old Mac line ends.
        assert_eq!(
            pairs("a=1\r\nb=2\rc=\\\r\n  3"),
            vec![pair("a", "1"), pair("b", "2"), pair("c", "3")]
        );
    }

    #[test]
    fn escapes() {
        assert_eq!(pairs(r"a\:b\=c\ d=x"), vec![pair("a:b=c d", "x")]);
        assert_eq!(pairs(r"k=tab\there\nnew\\slash\q"), vec![pair("k", "tab\there\nnew\\slashq")]);
        assert_eq!(pairs(r"k=caf\u00e9 \u20AC"), vec![pair("k", "café €")]);
        assert_eq!(pairs(r"k=\uD83D\uDE00"), vec![pair("k", "😀")]);
        assert_eq!(parse(r"k=\u00zz"), Err(PropertiesError { line: 1 }));
        assert_eq!(parse("a=1\nk=\\u12"), Err(PropertiesError { line: 2 }));
    }

    #[test]
    fn values_are_trimmed_and_the_last_duplicate_is_last() {
        let entries = parse("a = 1   \n\na=2\t\n").unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            (entries[1].key.as_str(), entries[1].value.as_str(), entries[1].line),
            ("a", "2", 3)
        );
    }

    #[test]
    fn latin1_files_decode_like_java() {
        assert_eq!(decode(b"k=caf\xe9"), "k=café");
        assert_eq!(decode("k=café".as_bytes()), "k=café");
    }
}
