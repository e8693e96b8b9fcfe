//! What a handler sees and returns: a [`Request`] whose head is parsed and whose body is already
//! read (or the reason it could not be), and a [`Response`] that the connection thread writes.

use std::fmt;

/// A request method. The ones the routes name have variants; any other token is kept as sent
/// (`BREW`), so a 405 can say which method it refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`: answered as `GET`, without the body.
    Head,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `DELETE`.
    Delete,
    /// Any other method token (methods are case-sensitive: `get` is not `GET`).
    Other(String),
}

impl Method {
    /// The method named by `token`, as it appears on the request line.
    pub fn from_token(token: &str) -> Self {
        match token {
            "GET" => Self::Get,
            "HEAD" => Self::Head,
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "DELETE" => Self::Delete,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The token as sent.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Other(token) => token,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request's body is not there. The connection closes after the answer: what is left of
/// the body on the wire is not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than [`super::MAX_BODY`] (announced by Content-Length, or found while decoding
    /// chunks).
    TooLarge,
    /// Not all there within [`super::BODY_DEADLINE`], or the client went quiet for
    /// [`super::CONNECTION_TIMEOUT`].
    TooSlow,
    /// Chunked framing that does not parse, or a connection that ended inside the body.
    Malformed(String),
}

/// One request, head and body, as the connection thread read it.
#[derive(Debug)]
pub struct Request {
    /// The method.
    pub(super) method: Method,
    /// The request target as sent: path and query string.
    pub(super) target: String,
    /// Header names and values in the order sent; values not in UTF-8 are read lossily.
    pub(super) headers: Vec<(String, String)>,
    /// The body (empty when there is none), or why it could not be read.
    pub(super) body: Result<Vec<u8>, BodyError>,
}

impl Request {
    /// A request built in memory (tests, and anything that answers without a socket).
    pub fn new(method: Method, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Self {
        Self {
            method,
            target: target.to_owned(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: Ok(body.to_vec()),
        }
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The request target: path and query string (`/couriers/1/deliveries?limit=5`).
    pub fn url(&self) -> &str {
        &self.target
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body, read in full before the handler got the request.
    pub fn body(&self) -> Result<&[u8], &BodyError> {
        self.body.as_deref()
    }
}

/// An answer before it is written. Content-Length, Date and Connection are the writer's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names and values (Content-Type among them); a value with CR or LF is not sent.
    pub headers: Vec<(&'static str, String)>,
    /// The body; not sent in answer to HEAD (its length is), nor with 1xx, 204 or 304.
    pub body: Vec<u8>,
}

impl Response {
    /// `status` with a body of `content_type`.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: vec![("Content-Type", content_type.to_owned())],
            body: body.into(),
        }
    }

    /// `{"error": message}` with `status`: how every refusal of ours reads.
    pub fn error(status: u16, message: &str) -> Self {
        let body = serde_json::json!({ "error": message }).to_string();
        Self::new(status, "application/json", body)
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_keep_their_token() {
        assert_eq!(Method::from_token("GET"), Method::Get);
        assert_eq!(Method::from_token("get"), Method::Other("get".into()));
        assert_eq!(Method::from_token("BREW").to_string(), "BREW");
        assert_eq!(Method::Delete.to_string(), "DELETE");
    }

    #[test]
    fn headers_are_found_in_any_case() {
        let r = Request::new(Method::Get, "/", &[("Authorization", "Bearer x")], b"");
        assert_eq!(r.header("authorization"), Some("Bearer x"));
        assert_eq!(r.header("Expect"), None);
    }

    #[test]
    fn an_error_is_json() {
        let r = Response::error(400, "bad \"head\"");
        assert_eq!(r.body, br#"{"error":"bad \"head\""}"#);
        assert_eq!(r.headers, vec![("Content-Type", "application/json".into())]);
    }
}
