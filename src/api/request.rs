//! What the API reads from a request, each with a bound: the body (64 KiB, and a deadline), the
//! bearer token (compared in constant time), the query string and percent-encoded path parts.

use subtle::ConstantTimeEq;

use super::reply::ApiError;
use crate::ops::http1::{BodyError, Request};

pub use crate::ops::http1::MAX_BODY;

/// The body, read by the connection thread before the request got here, or the error that
/// says why not: 413 above [`MAX_BODY`] (from Content-Length before reading anything, or while
/// decoding chunks), 408 when it took longer than [`crate::ops::http1::BODY_DEADLINE`] or the
/// client went quiet, 400 when its framing is broken.
pub fn read_body(request: &Request) -> Result<&[u8], ApiError> {
    request.body().map_err(|e| match e {
        BodyError::TooLarge => too_large(),
        BodyError::TooSlow => too_slow(),
        BodyError::Malformed(why) => ApiError::bad_request(format!("cannot read the body: {why}")),
    })
}

fn too_large() -> ApiError {
    ApiError::status(413, format!("body over {} KiB", MAX_BODY / 1024))
}

fn too_slow() -> ApiError {
    ApiError::status(408, "the body did not arrive in time")
}

/// Whether `header` (an `Authorization` value) carries `token` as a bearer token. The scheme
/// is case-insensitive (`bearer`, `BEARER`: RFC 7235 section 2.1); the token is not, and the
/// comparison takes the same time wherever the first difference is (`subtle`: only the length
/// can be told apart).
pub fn bearer_matches(header: Option<&str>, token: &str) -> bool {
    let given = header
        .map(str::trim)
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, credentials)| credentials.trim())
        .unwrap_or("");
    given.as_bytes().ct_eq(token.as_bytes()).into()
}

/// The value of `name` in a query string (`a=1&b=2`), percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k).as_deref() == Some(name)).then(|| percent_decode(v))?
    })
}

/// Decodes `%XX` escapes (and `+` as a space in none: paths keep it). `None` when an escape is
/// broken or the result is not UTF-8. Not the `percent-encoding` crate: it keeps a broken escape
/// as it is, where the API refuses it (400), so the check would stay ours, and it measured 1.5 to
/// 3 times slower than this loop on order ids.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Two hex digits exactly: `from_str_radix` alone would also take a sign (`%+f`).
            let hex = s.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_match_exactly() {
        let t = "0123456789abcdef";
        assert!(bearer_matches(Some("Bearer 0123456789abcdef"), t));
        assert!(!bearer_matches(Some("Bearer 0123456789abcdeF"), t));
        assert!(!bearer_matches(Some("Bearer 0123456789abcde"), t));
        assert!(!bearer_matches(Some("Bearer 0123456789abcdef0"), t));
        assert!(!bearer_matches(Some("0123456789abcdef"), t));
        assert!(!bearer_matches(None, t));
        assert!(!bearer_matches(Some("Bearer "), t));
        assert!(!bearer_matches(Some("Bearer"), t));
        assert!(!bearer_matches(Some("Basic 0123456789abcdef"), t));
        assert!(!bearer_matches(Some("Bearer0123456789abcdef"), t));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_token_is_not() {
        let t = "s3cret-Token";
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            assert!(bearer_matches(Some(&format!("{scheme} s3cret-Token")), t));
            assert!(!bearer_matches(Some(&format!("{scheme} s3cret-token")), t));
            assert!(!bearer_matches(Some(&format!("{scheme} S3CRET-TOKEN")), t));
        }
        // Whitespace around the header and between scheme and token is not part of either.
        assert!(bearer_matches(Some("  bearer   s3cret-Token  "), t));
        assert!(!bearer_matches(Some("bearers s3cret-Token"), t));
    }

    #[test]
    fn queries_and_escapes_decode() {
        assert_eq!(query_param("limit=5&x=1", "limit").as_deref(), Some("5"));
        assert_eq!(query_param("x=1", "limit"), None);
        assert_eq!(percent_decode("a%2Fb%20c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%+f"), None);
        assert_eq!(percent_decode("%-0"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("é").as_deref(), Some("é"));
    }
}
