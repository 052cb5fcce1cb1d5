//! The request head limits (`--limit-request-*`), checked on each parsed request: the request
//! line (414), the number of header fields, one field's size and all fields' size (431), each
//! answered with a body that says which limit and by how much. [`check_head`] is pure.
//!
//! hyper parses the head first; its own limits are set above these ([`hyper_max_headers`],
//! [`hyper_max_buf`]) so that a request just over one of ours reaches [`check_head`] and gets
//! the clear answer. A request far beyond them (more than twice the fields, a head larger than
//! the read buffer) gets hyper's bare 431.

use http::{HeaderMap, Method, Uri};
use wsgiscale_core::config::HeaderLimits;

/// hyper's read buffer floor: the largest head it will hold (and its write buffer).
const MIN_BUF: usize = 256 * 1024;

/// Which limit a request head broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TooLarge {
    /// The request line: 414.
    Line {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Too many header fields: 431.
    Fields {
        /// How many.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// One header field too large: 431.
    Field {
        /// Its name.
        name: String,
        /// `name: value` length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// All header fields too large: 431.
    Headers {
        /// Their size.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

impl TooLarge {
    /// The status: 414 for the request line, 431 for the headers.
    pub fn status(&self) -> u16 {
        match self {
            TooLarge::Line { .. } => 414,
            _ => 431,
        }
    }

    /// The response body (and the access log's error).
    pub fn message(&self) -> String {
        match self {
            TooLarge::Line { len, limit } => format!(
                "URI Too Long: the request line is {len} bytes, more than the {limit} this server accepts (--limit-request-line)\n"
            ),
            TooLarge::Fields { count, limit } => format!(
                "Request Header Fields Too Large: {count} header fields, more than the {limit} this server accepts (--limit-request-fields)\n"
            ),
            TooLarge::Field { name, len, limit } => format!(
                "Request Header Fields Too Large: the {name} header is {len} bytes, more than the {limit} this server accepts (--limit-request-field-size)\n"
            ),
            TooLarge::Headers { len, limit } => format!(
                "Request Header Fields Too Large: the headers are {len} bytes, more than the {limit} this server accepts (--limit-request-headers-size)\n"
            ),
        }
    }
}

/// Length of the request line as the client sent it: `METHOD SP target SP HTTP/1.1`.
pub fn request_line_len(method: &Method, uri: &Uri) -> usize {
    let target = match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => {
            scheme.len()
                + 3
                + authority.as_str().len()
                + uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        }
        (None, Some(authority)) => authority.as_str().len(),
        _ => uri.path_and_query().map_or(1, |pq| pq.as_str().len()),
    };
    method.as_str().len() + 1 + target + 1 + "HTTP/1.1".len()
}

/// Checks a parsed request head against `limits`.
pub fn check_head(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    limits: &HeaderLimits,
) -> Result<(), TooLarge> {
    let line = request_line_len(method, uri);
    if line > limits.request_line {
        return Err(TooLarge::Line {
            len: line,
            limit: limits.request_line,
        });
    }
    if headers.len() > limits.fields {
        return Err(TooLarge::Fields {
            count: headers.len(),
            limit: limits.fields,
        });
    }
    let mut total = 0;
    for (name, value) in headers {
        let field = name.as_str().len() + 2 + value.len();
        if field > limits.field_size {
            return Err(TooLarge::Field {
                name: name.as_str().to_string(),
                len: field,
                limit: limits.field_size,
            });
        }
        total += field + 2;
    }
    if total > limits.headers_size {
        return Err(TooLarge::Headers {
            len: total,
            limit: limits.headers_size,
        });
    }
    Ok(())
}

/// hyper's most header fields: room above ours, so one more than ours gets our answer.
pub fn hyper_max_headers(limits: &HeaderLimits) -> usize {
    limits.fields.saturating_mul(2).max(limits.fields + 1)
}

/// hyper's read buffer: room for a head just over our limits.
pub fn hyper_max_buf(limits: &HeaderLimits) -> usize {
    MIN_BUF.max(limits.request_line + limits.headers_size.saturating_mul(2) + 8192)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    const LIMITS: HeaderLimits = HeaderLimits {
        request_line: 100,
        fields: 3,
        field_size: 40,
        headers_size: 90,
    };

    fn headers(pairs: &[(&str, usize)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, len) in pairs {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(&"v".repeat(*len)).expect("value"),
            );
        }
        h
    }

    fn uri(target: &str) -> Uri {
        target.parse().expect("uri")
    }

    #[test]
    fn each_limit_holds_at_its_value_and_breaks_one_byte_over() {
        let get = Method::GET;
        // "GET " + target + " HTTP/1.1" = 13 + target.
        let at = format!("/{}", "a".repeat(86));
        assert_eq!(request_line_len(&get, &uri(&at)), 100);
        assert_eq!(
            check_head(&get, &uri(&at), &HeaderMap::new(), &LIMITS),
            Ok(())
        );
        let over = format!("/{}", "a".repeat(87));
        assert_eq!(
            check_head(&get, &uri(&over), &HeaderMap::new(), &LIMITS),
            Err(TooLarge::Line {
                len: 101,
                limit: 100
            })
        );
        let three = headers(&[("a", 1), ("b", 1), ("c", 1)]);
        assert_eq!(check_head(&get, &uri("/"), &three, &LIMITS), Ok(()));
        let four = headers(&[("a", 1), ("b", 1), ("c", 1), ("a", 1)]);
        assert_eq!(
            check_head(&get, &uri("/"), &four, &LIMITS),
            Err(TooLarge::Fields { count: 4, limit: 3 })
        );
        // "x-a: " + 35 = 40.
        assert_eq!(
            check_head(&get, &uri("/"), &headers(&[("x-a", 35)]), &LIMITS),
            Ok(())
        );
        assert_eq!(
            check_head(&get, &uri("/"), &headers(&[("x-a", 36)]), &LIMITS),
            Err(TooLarge::Field {
                name: "x-a".into(),
                len: 41,
                limit: 40
            })
        );
        // Two fields of 40 + CRLF = 84; a third of "c: v" + CRLF = 6: 90, at the limit.
        let full = headers(&[("x-a", 35), ("x-b", 35), ("c", 1)]);
        assert_eq!(check_head(&get, &uri("/"), &full, &LIMITS), Ok(()));
        let over = headers(&[("x-a", 35), ("x-b", 35), ("c", 2)]);
        assert_eq!(
            check_head(&get, &uri("/"), &over, &LIMITS),
            Err(TooLarge::Headers { len: 91, limit: 90 })
        );
    }

    #[test]
    fn absolute_form_counts_scheme_and_authority() {
        let u = uri("http://example.com/x?y");
        assert_eq!(
            request_line_len(&Method::GET, &u),
            "GET http://example.com/x?y HTTP/1.1".len()
        );
        let c = uri("example.com:443");
        assert_eq!(
            request_line_len(&Method::CONNECT, &c),
            "CONNECT example.com:443 HTTP/1.1".len()
        );
    }

    #[test]
    fn hyper_leaves_room_above_ours() {
        let d = HeaderLimits {
            request_line: 16 << 10,
            fields: 100,
            field_size: 32 << 10,
            headers_size: 64 << 10,
        };
        assert!(hyper_max_headers(&d) > d.fields);
        assert!(hyper_max_buf(&d) > d.request_line + d.headers_size);
        assert!(hyper_max_buf(&LIMITS) >= 8192, "hyper panics below 8192");
        for t in [
            TooLarge::Line { len: 2, limit: 1 },
            TooLarge::Headers { len: 2, limit: 1 },
        ] {
            assert!(t.message().ends_with('\n'));
        }
    }
}
