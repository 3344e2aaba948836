//! `Sec-WebSocket-Extensions` parsing (RFC 6455 §9.1), hand-written and linear.
//!
//! Grammar (RFC 6455 §9.1, list rules of RFC 9110 §5.6.1):
//!
//! ```text
//! extension-list = 1#extension
//! extension      = token *( ";" param )
//! param          = token [ "=" ( token / quoted-string ) ]
//! ```
//!
//! A quoted value must itself be a token once unquoted. Optional whitespace
//! (SP / HTAB) is allowed around every separator; empty list elements
//! (`a, , b`) are ignored as RFC 9110 requires. The header may be split over
//! several lines, which form one list.
//!
//! Every byte is looked at a bounded number of times, and the output is capped
//! at [`MAX_EXTENSIONS`] extensions of [`MAX_PARAMS`] parameters each, so hostile
//! input costs at most linear time and memory.

/// Most extensions accepted in one header (all lines together).
pub const MAX_EXTENSIONS: usize = 64;
/// Most parameters accepted on one extension.
pub const MAX_PARAMS: usize = 64;

/// One extension in an offer or response: `name; p1; p2=v`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionOffer {
    /// The extension token, e.g. `permessage-deflate`.
    pub name: String,
    /// Parameters in order; a quoted value is unquoted.
    pub params: Vec<(String, Option<String>)>,
}

/// A `Sec-WebSocket-Extensions` header that does not follow the grammar of
/// RFC 6455 §9.1 (or exceeds [`MAX_EXTENSIONS`] / [`MAX_PARAMS`]): what is
/// wrong and where.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed Sec-WebSocket-Extensions header: {0}")]
pub struct ExtensionParseError(pub String);

/// `tchar` of RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// Whether `s` is a non-empty RFC 9110 token.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// A cursor over one header line.
struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
    line: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn err(&self, what: &str) -> ExtensionParseError {
        let found = match self.peek() {
            Some(b) if b.is_ascii_graphic() => format!("{:?}", b as char),
            Some(b) => format!("byte 0x{b:02x}"),
            None => "end of line".to_string(),
        };
        ExtensionParseError(format!(
            "{what}, found {found} at byte {} of line {}; expected the RFC 6455 §9.1 form \
             `name; param; param=value, other`",
            self.i,
            self.line + 1
        ))
    }

    /// A token; `what` names it in the error when it is empty.
    fn token(&mut self, what: &str) -> Result<String, ExtensionParseError> {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        if start == self.i {
            return Err(self.err(&format!("expected {what}")));
        }
        // tchars are ASCII, so this cannot fail; map instead of unwrap anyway.
        std::str::from_utf8(&self.s[start..self.i])
            .map(str::to_owned)
            .map_err(|_| self.err("non-ASCII token"))
    }

    /// A quoted-string (opening quote at the cursor), unquoted; the result
    /// must be a token.
    fn quoted_token(&mut self) -> Result<String, ExtensionParseError> {
        let open = self.i;
        self.i += 1; // the opening quote
        let mut value = String::new();
        loop {
            match self.peek() {
                None => {
                    self.i = open;
                    return Err(self.err("unterminated quoted-string"));
                }
                Some(b'"') => {
                    self.i += 1;
                    break;
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(b) if is_tchar(b) => {
                            value.push(b as char);
                            self.i += 1;
                        }
                        _ => {
                            return Err(self.err(
                                "quoted-pair in a parameter value must escape a token character",
                            ))
                        }
                    }
                }
                Some(b) if is_tchar(b) => {
                    value.push(b as char);
                    self.i += 1;
                }
                Some(_) => {
                    return Err(self.err(
                        "quoted parameter value must be a token once unquoted (RFC 6455 §9.1)",
                    ))
                }
            }
        }
        if value.is_empty() {
            self.i = open;
            return Err(self.err("empty quoted parameter value"));
        }
        Ok(value)
    }
}

/// Parse every value of the header (values may be split over several lines;
/// pass them in order). Linear in the input length.
pub fn parse_extensions<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<ExtensionOffer>, ExtensionParseError> {
    let mut out: Vec<ExtensionOffer> = Vec::new();
    for (line, s) in values.into_iter().enumerate() {
        let mut c = Cursor { s, i: 0, line };
        loop {
            c.skip_ows();
            match c.peek() {
                None => break,
                Some(b',') => {
                    // Empty list element: ignored (RFC 9110 §5.6.1.2).
                    c.i += 1;
                    continue;
                }
                Some(_) => {}
            }
            if out.len() >= MAX_EXTENSIONS {
                return Err(ExtensionParseError(format!(
                    "more than {MAX_EXTENSIONS} extensions; a real client offers a handful"
                )));
            }
            let name = c.token("an extension name")?;
            let mut params = Vec::new();
            loop {
                c.skip_ows();
                match c.peek() {
                    None => break,
                    Some(b',') => {
                        c.i += 1;
                        break;
                    }
                    Some(b';') => c.i += 1,
                    Some(_) => {
                        return Err(c.err(
                            "expected `;`, `,` or end of line after an extension or parameter",
                        ))
                    }
                }
                if params.len() >= MAX_PARAMS {
                    return Err(ExtensionParseError(format!(
                        "extension {name:?} has more than {MAX_PARAMS} parameters"
                    )));
                }
                c.skip_ows();
                let pname = c.token("a parameter name after `;`")?;
                c.skip_ows();
                let value = if c.peek() == Some(b'=') {
                    c.i += 1;
                    c.skip_ows();
                    if c.peek() == Some(b'"') {
                        Some(c.quoted_token()?)
                    } else {
                        Some(c.token("a parameter value after `=`")?)
                    }
                } else {
                    None
                };
                params.push((pname, value));
            }
            out.push(ExtensionOffer { name, params });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&str]) -> Result<Vec<ExtensionOffer>, ExtensionParseError> {
        parse_extensions(lines.iter().map(|l| l.as_bytes()))
    }

    fn ext(name: &str, params: &[(&str, Option<&str>)]) -> ExtensionOffer {
        ExtensionOffer {
            name: name.to_string(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                .collect(),
        }
    }

    #[test]
    fn single_extension_without_params() {
        assert_eq!(
            parse(&["permessage-deflate"]).unwrap(),
            vec![ext("permessage-deflate", &[])]
        );
    }

    #[test]
    fn browser_offer() {
        let got = parse(&["permessage-deflate; client_max_window_bits"]).unwrap();
        assert_eq!(
            got,
            vec![ext(
                "permessage-deflate",
                &[("client_max_window_bits", None)]
            )]
        );
    }

    #[test]
    fn several_offers_several_lines_quoted_values_and_ows() {
        let got = parse(&[
            "permessage-deflate ;\tclient_max_window_bits ; server_max_window_bits = 10 , permessage-deflate",
            " x-foo; a=\"12\";b=\"tok\\en\" ,",
            "",
            "bar",
        ])
        .unwrap();
        assert_eq!(
            got,
            vec![
                ext(
                    "permessage-deflate",
                    &[
                        ("client_max_window_bits", None),
                        ("server_max_window_bits", Some("10"))
                    ]
                ),
                ext("permessage-deflate", &[]),
                ext("x-foo", &[("a", Some("12")), ("b", Some("token"))]),
                ext("bar", &[]),
            ]
        );
    }

    #[test]
    fn empty_elements_are_ignored() {
        assert_eq!(
            parse(&[", a ,, b ,"]).unwrap(),
            vec![ext("a", &[]), ext("b", &[])]
        );
        assert_eq!(parse(&["", " "]).unwrap(), vec![]);
    }

    #[test]
    fn malformed_shapes_are_errors() {
        for bad in [
            ";a",            // no extension name
            "a;",            // no parameter name
            "a; ;b",         // empty parameter
            "a;b=",          // missing value
            "a;b= ,",        // missing value before comma
            "a;b=\"\"",      // empty quoted value
            "a;b=\"1",       // unterminated quote
            "a;b=\"1 2\"",   // quoted value not a token
            "a;b=\"x,y\"",   // quoted value with separator
            "a;b=\"x\\\"",   // escaped quote then end
            "a;b=\"x\\ y\"", // escaped space is not a token char
            "a b",           // two tokens
            "a;b c",         // junk after param
            "a;b=c d",       // junk after value
            "a;b=c=d",       // double equals
            "a=b",           // value on the extension name
            "a;b=(c)",       // separator as value
            "a;b=\"c\"d",    // junk after quoted value
            "a\u{e9}",       // non-ASCII
            "a;b=c\0",       // control char
            "\"a\"",         // quoted extension name
        ] {
            let err = parse(&[bad]).expect_err(bad);
            assert!(
                err.to_string()
                    .starts_with("malformed Sec-WebSocket-Extensions header"),
                "{err}"
            );
        }
    }

    #[test]
    fn error_names_the_position() {
        let err = parse(&["ok", "a b"]).unwrap_err();
        assert!(err.0.contains("byte 2 of line 2"), "{}", err.0);
    }

    #[test]
    fn output_is_bounded() {
        let many = vec!["x"; MAX_EXTENSIONS];
        assert_eq!(parse(&many).unwrap().len(), MAX_EXTENSIONS);
        let too_many = vec!["x"; MAX_EXTENSIONS + 1];
        assert!(parse(&too_many)
            .unwrap_err()
            .0
            .contains("more than 64 extensions"));

        let params = format!("x{}", ";p".repeat(MAX_PARAMS));
        assert_eq!(parse(&[&params]).unwrap()[0].params.len(), MAX_PARAMS);
        let params = format!("x{}", ";p".repeat(MAX_PARAMS + 1));
        assert!(parse(&[&params])
            .unwrap_err()
            .0
            .contains("more than 64 parameters"));
    }

    #[test]
    fn huge_input_is_rejected_quickly() {
        // One million commas and spaces: empty elements only, linear scan.
        let s = ", ".repeat(500_000);
        assert_eq!(parse(&[&s]).unwrap(), vec![]);
        let s = format!("x;a={}", "b".repeat(1_000_000));
        assert_eq!(
            parse(&[&s]).unwrap()[0].params[0]
                .1
                .as_ref()
                .map(String::len),
            Some(1_000_000)
        );
    }

    #[test]
    fn is_token_rules() {
        assert!(is_token("permessage-deflate"));
        assert!(!is_token(""));
        assert!(!is_token("a b"));
        assert!(!is_token("a;b"));
    }
}
