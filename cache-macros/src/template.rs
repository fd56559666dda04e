//! The key template language, parsed without any knowledge of the function.
//!
//! `<name>` or `<name.field.field>` inserts a parameter (or a field of one);
//! everything else is literal, so `{tenant:<tenant_id>}` keeps Redis Cluster
//! hash tags writable; `<<` and `>>` stand for a literal `<` and `>`.
//!
//! The parser is a pure function over the literal's value so that it can be
//! tested without a compiler; it reports byte offsets into that value, which
//! the expansion turns into spans where the compiler allows it.

use std::fmt;
use std::ops::Range;

/// A parsed template: literal text and placeholders, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Literal text, with `<<` and `>>` already unescaped.
    Literal(String),
    Placeholder(Placeholder),
}

/// `<root.field.field>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    /// The parameter name (`self` included).
    pub root: String,
    /// Field accesses after the root: identifiers or tuple indices.
    pub fields: Vec<String>,
    /// Byte range of the whole placeholder, `<` and `>` included.
    pub range: Range<usize>,
}

impl Placeholder {
    /// The placeholder as written, without the angle brackets.
    pub fn path(&self) -> String {
        let mut path = self.root.clone();
        for field in &self.fields {
            path.push('.');
            path.push_str(field);
        }
        path
    }
}

impl Template {
    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Placeholder(placeholder) => Some(placeholder),
            Segment::Literal(_) => None,
        })
    }
}

/// Why a template was rejected, with the byte range it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub kind: ErrorKind,
    pub range: Range<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// The whole template is empty.
    Empty,
    /// A `<` with no closing `>`.
    Unclosed,
    /// A `>` that closes nothing.
    UnmatchedClose,
    /// `<>`.
    EmptyPlaceholder,
    /// `<a-b>`, `<1>`, `<a..b>`: not a name followed by fields.
    InvalidPlaceholder(String),
    /// `<a><b>`: the boundary between the two values would be lost.
    Adjacent { first: String, second: String },
    /// A leading `~`: the runtime keeps its own keys (tag versions, hashed keys) there.
    ReservedStart,
    /// Whitespace or a control character in the literal text.
    Whitespace(char),
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Empty => f.write_str("template is empty"),
            ErrorKind::Unclosed => {
                f.write_str("unclosed `<` in template; write `<<` for a literal `<`")
            }
            ErrorKind::UnmatchedClose => {
                f.write_str("unmatched `>` in template; write `>>` for a literal `>`")
            }
            ErrorKind::EmptyPlaceholder => f.write_str(
                "empty placeholder `<>` in template; expected a parameter name such as `<user_id>`, or `<<>>` for a literal `<>`",
            ),
            ErrorKind::InvalidPlaceholder(text) => write!(
                f,
                "invalid placeholder `<{text}>` in template; expected a parameter name or a field path such as `<user_id>` or `<user.id>`"
            ),
            ErrorKind::Adjacent { first, second } => write!(
                f,
                "placeholders `{first}` and `{second}` must be separated by literal text, otherwise different arguments can give the same key"
            ),
            ErrorKind::ReservedStart => f.write_str(
                "template cannot start with `~`; keys starting with `~` are reserved for the cache's own bookkeeping",
            ),
            ErrorKind::Whitespace(c) => write!(
                f,
                "template cannot contain whitespace or control characters (found {c:?}); values inserted with `<name>` are escaped, literal text is not"
            ),
        }
    }
}

/// Parses a template, reporting every problem found rather than the first.
pub fn parse(input: &str) -> Result<Template, Vec<TemplateError>> {
    let mut segments = Vec::new();
    let mut errors = Vec::new();
    let mut literal = String::new();
    let bytes = input.as_bytes();
    let mut i = 0;

    if input.is_empty() {
        return Err(vec![TemplateError {
            kind: ErrorKind::Empty,
            range: 0..0,
        }]);
    }

    while i < bytes.len() {
        match bytes[i] {
            b'<' if bytes.get(i + 1) == Some(&b'<') => {
                literal.push('<');
                i += 2;
            }
            b'>' if bytes.get(i + 1) == Some(&b'>') => {
                literal.push('>');
                i += 2;
            }
            b'>' => {
                errors.push(TemplateError {
                    kind: ErrorKind::UnmatchedClose,
                    range: i..i + 1,
                });
                i += 1;
            }
            b'<' => {
                let start = i;
                let Some(len) = input[start + 1..].find('>') else {
                    errors.push(TemplateError {
                        kind: ErrorKind::Unclosed,
                        range: start..start + 1,
                    });
                    // Nothing after an unclosed `<` can be read reliably.
                    break;
                };
                let end = start + 1 + len + 1;
                let inner = &input[start + 1..end - 1];
                i = end;
                match parse_placeholder(inner) {
                    Ok((root, fields)) => {
                        if !literal.is_empty() {
                            segments.push(Segment::Literal(std::mem::take(&mut literal)));
                        }
                        if let Some(Segment::Placeholder(previous)) = segments.last() {
                            errors.push(TemplateError {
                                kind: ErrorKind::Adjacent {
                                    first: previous.path(),
                                    second: join(&root, &fields),
                                },
                                range: previous.range.start..end,
                            });
                        }
                        segments.push(Segment::Placeholder(Placeholder {
                            root,
                            fields,
                            range: start..end,
                        }));
                    }
                    Err(kind) => errors.push(TemplateError {
                        kind,
                        range: start..end,
                    }),
                }
            }
            _ => {
                // Copy the whole UTF-8 character; `<` and `>` are ASCII so they
                // never occur inside a multi-byte sequence.
                let ch = input[i..].chars().next().unwrap_or('\0');
                let ch_len = ch.len_utf8();
                if ch.is_whitespace() || ch.is_control() {
                    errors.push(TemplateError {
                        kind: ErrorKind::Whitespace(ch),
                        range: i..i + ch_len,
                    });
                }
                literal.push_str(&input[i..i + ch_len]);
                i += ch_len;
            }
        }
    }
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    if input.starts_with('~') {
        errors.insert(
            0,
            TemplateError {
                kind: ErrorKind::ReservedStart,
                range: 0..1,
            },
        );
    }

    if errors.is_empty() {
        Ok(Template { segments })
    } else {
        Err(errors)
    }
}

fn join(root: &str, fields: &[String]) -> String {
    let mut path = root.to_owned();
    for field in fields {
        path.push('.');
        path.push_str(field);
    }
    path
}

fn parse_placeholder(inner: &str) -> Result<(String, Vec<String>), ErrorKind> {
    let trimmed = inner.trim();
    if trimmed.is_empty() {
        return Err(ErrorKind::EmptyPlaceholder);
    }
    let invalid = || ErrorKind::InvalidPlaceholder(inner.to_owned());
    let mut parts = trimmed.split('.').map(str::trim);
    let root = parts.next().ok_or_else(invalid)?;
    if !is_identifier(root) {
        return Err(invalid());
    }
    let mut fields = Vec::new();
    for field in parts {
        if is_identifier(field) || is_tuple_index(field) {
            fields.push(field.to_owned());
        } else {
            return Err(invalid());
        }
    }
    Ok((root.to_owned(), fields))
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c == '_' || c.is_ascii_alphabetic() => {}
        _ => return false,
    }
    s != "_" && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn is_tuple_index(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Segment {
        Segment::Literal(s.to_owned())
    }

    fn ph(root: &str, fields: &[&str], range: Range<usize>) -> Segment {
        Segment::Placeholder(Placeholder {
            root: root.to_owned(),
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            range,
        })
    }

    fn kinds(input: &str) -> Vec<(ErrorKind, Range<usize>)> {
        parse(input)
            .expect_err("template should be rejected")
            .into_iter()
            .map(|e| (e.kind, e.range))
            .collect()
    }

    #[test]
    fn literal_only() {
        let t = parse("users").expect("valid");
        assert_eq!(t.segments, vec![lit("users")]);
    }

    #[test]
    fn placeholder_offsets() {
        let t = parse("user:<user_id>").expect("valid");
        assert_eq!(t.segments, vec![lit("user:"), ph("user_id", &[], 5..14)]);
    }

    #[test]
    fn several_placeholders() {
        let t = parse("org:<org_id>:user:<user_id>").expect("valid");
        assert_eq!(
            t.segments,
            vec![
                lit("org:"),
                ph("org_id", &[], 4..12),
                lit(":user:"),
                ph("user_id", &[], 18..27),
            ]
        );
    }

    #[test]
    fn fields_and_tuple_indices() {
        let t = parse("<user.profile.id>/<pair.0>").expect("valid");
        assert_eq!(
            t.segments,
            vec![
                ph("user", &["profile", "id"], 0..17),
                lit("/"),
                ph("pair", &["0"], 18..26),
            ]
        );
    }

    #[test]
    fn self_is_a_name() {
        let t = parse("tenant:<self.tenant>").expect("valid");
        assert_eq!(
            t.segments,
            vec![lit("tenant:"), ph("self", &["tenant"], 7..20)]
        );
    }

    #[test]
    fn hash_tags_stay_literal() {
        let t = parse("{tenant:<tenant_id>}:user:<user_id>").expect("valid");
        assert_eq!(
            t.segments,
            vec![
                lit("{tenant:"),
                ph("tenant_id", &[], 8..19),
                lit("}:user:"),
                ph("user_id", &[], 26..35),
            ]
        );
    }

    #[test]
    fn escapes() {
        let t = parse("a<<b>>c:<id>>>").expect("valid");
        assert_eq!(
            t.segments,
            vec![lit("a<b>c:"), ph("id", &[], 8..12), lit(">")]
        );
        assert_eq!(parse("<<>>").expect("valid").segments, vec![lit("<>")]);
    }

    #[test]
    fn whitespace_inside_placeholder_is_ignored() {
        let t = parse("u:< user_id >").expect("valid");
        assert_eq!(t.segments, vec![lit("u:"), ph("user_id", &[], 2..13)]);
    }

    #[test]
    fn non_ascii_literals() {
        let t = parse("é:<id>:ü").expect("valid");
        assert_eq!(t.segments, vec![lit("é:"), ph("id", &[], 3..7), lit(":ü")]);
    }

    #[test]
    fn empty_template() {
        assert_eq!(kinds(""), vec![(ErrorKind::Empty, 0..0)]);
    }

    #[test]
    fn unclosed() {
        assert_eq!(kinds("user:<user_id"), vec![(ErrorKind::Unclosed, 5..6)]);
    }

    #[test]
    fn unmatched_close() {
        assert_eq!(kinds("a>b"), vec![(ErrorKind::UnmatchedClose, 1..2)]);
    }

    #[test]
    fn empty_placeholder() {
        assert_eq!(kinds("user:<>"), vec![(ErrorKind::EmptyPlaceholder, 5..7)]);
        assert_eq!(kinds("user:< >"), vec![(ErrorKind::EmptyPlaceholder, 5..8)]);
    }

    #[test]
    fn invalid_placeholders() {
        for bad in [
            "<a-b>", "<1>", "<a..b>", "<a.>", "<.a>", "<_>", "<a.01>", "<a b>",
        ] {
            let errors = kinds(bad);
            assert_eq!(errors.len(), 1, "{bad}");
            assert!(
                matches!(errors[0].0, ErrorKind::InvalidPlaceholder(_)),
                "{bad}: {errors:?}"
            );
            assert_eq!(errors[0].1, 0..bad.len());
        }
    }

    #[test]
    fn adjacent_placeholders() {
        assert_eq!(
            kinds("x:<a><b.c>"),
            vec![(
                ErrorKind::Adjacent {
                    first: "a".into(),
                    second: "b.c".into()
                },
                2..10
            )]
        );
        // Escaped brackets are literal text and do separate placeholders.
        assert!(parse("<a>>><b>").is_ok());
    }

    #[test]
    fn every_error_is_reported() {
        let errors = kinds("<>:<a-b>:x>");
        assert_eq!(errors.len(), 3, "{errors:?}");
    }

    #[test]
    fn messages_are_lowercase_without_full_stop() {
        let all = [
            ErrorKind::Empty,
            ErrorKind::Unclosed,
            ErrorKind::UnmatchedClose,
            ErrorKind::EmptyPlaceholder,
            ErrorKind::InvalidPlaceholder("a-b".into()),
            ErrorKind::Adjacent {
                first: "a".into(),
                second: "b".into(),
            },
        ];
        for kind in all {
            let message = kind.to_string();
            assert!(message.starts_with(|c: char| c.is_lowercase()), "{message}");
            assert!(!message.ends_with('.'), "{message}");
        }
    }

    #[test]
    fn reserved_start_and_whitespace_are_rejected() {
        let errs = parse("~x:<a>").expect_err("reserved");
        assert_eq!(errs[0].kind, ErrorKind::ReservedStart);
        let errs = parse("user <a>\n").expect_err("whitespace");
        let kinds: Vec<_> = errs
            .iter()
            .map(|e| (e.kind.clone(), e.range.clone()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (ErrorKind::Whitespace(' '), 4..5),
                (ErrorKind::Whitespace('\n'), 8..9)
            ]
        );
        assert!(parse("a~b:<a>").is_ok());
    }
}
