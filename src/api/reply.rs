//! What a handler answers: a status, a body and its type. Errors are `{"error": "..."}` with the
//! status code that tells the client what to do (as in the course's service).

use serde::Serialize;

use crate::repository::RepoError;

/// The challenge of a 401: the scheme and the realm the token belongs to.
pub const BEARER_CHALLENGE: &str = r#"Bearer realm="service-courier""#;

/// A response before it is written.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
    /// Its Content-Type.
    pub content_type: &'static str,
    /// Extra headers (name, value).
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    /// A JSON body with `status`.
    pub fn json(status: u16, value: &impl Serialize) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self {
                status,
                body,
                content_type: "application/json",
                headers: Vec::new(),
            },
            Err(e) => ApiError::internal(format!("cannot encode the response: {e}")).into(),
        }
    }

    /// No body.
    pub fn empty(status: u16) -> Self {
        Self {
            status,
            body: Vec::new(),
            content_type: "text/plain",
            headers: Vec::new(),
        }
    }
}

/// A request that failed, with the status that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// 400, 401, 404, 405, 408, 409, 413, 500 or 503.
    pub status: u16,
    /// Said to the client as `{"error": message}`.
    pub message: String,
    /// Headers the status calls for: `Allow` on 405, `WWW-Authenticate` on 401.
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    /// 400: the request is malformed (bad JSON, a bad field, an unknown field).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, message)
    }

    /// 409: the request contradicts the state (a phone taken, a courier carrying an order).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, message)
    }

    /// 401, with the challenge RFC 7235 asks for.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, message).with_header("WWW-Authenticate", BEARER_CHALLENGE.into())
    }

    /// 405, with the `Allow` header RFC 9110 asks for (`allowed`: "GET, HEAD").
    pub fn method_not_allowed(method: impl std::fmt::Display, allowed: &'static str) -> Self {
        Self::new(
            405,
            format!("method {method} not allowed here; allowed: {allowed}"),
        )
        .with_header("Allow", allowed.into())
    }

    /// Any other status with a message (408, 413).
    pub fn status(status: u16, message: impl Into<String>) -> Self {
        Self::new(status, message)
    }

    /// 500. The detail goes to the log, not to the client.
    pub fn internal(detail: String) -> Self {
        log::error!("api: {detail}");
        Self::new(500, "internal error")
    }

    fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
}

impl From<RepoError> for ApiError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::Conflict(m) => Self::conflict(m),
            RepoError::Transient(m) => {
                log::warn!("api: {m}");
                Self::new(503, "storage unavailable, try again")
            }
            RepoError::Rejected(m) => Self::bad_request(m),
            RepoError::Unexpected(m) => Self::internal(m),
        }
    }
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Self {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
        }
        let mut reply = Reply::json(e.status, &Body { error: &e.message });
        reply.headers.extend(e.headers);
        reply
    }
}
