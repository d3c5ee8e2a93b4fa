//! `ApiError`: the one error type of the HTTP API, rendered as `application/problem+json` (RFC 9457) with a
//! stable machine `code`.

use std::borrow::Cow;
use std::sync::OnceLock;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use crate::ingest::EventError;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error answer: status, stable code, human detail, and optional extension members.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: Cow<'static, str>,
    pub retry_after_secs: Option<u64>,
    pub extensions: Map<String, Value>,
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after_secs: None,
            extensions: Map::new(),
            headers: Vec::new(),
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn too_large(code: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, code, detail)
    }

    pub fn unavailable(code: &'static str, detail: impl Into<Cow<'static, str>>, retry_after_secs: u64) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail).retry_after(retry_after_secs)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method")
    }

    pub fn overloaded(retry_after_secs: u64) -> Self {
        let detail = "too many requests in progress (MAX_CONCURRENT_REQUESTS); retry later";
        Self::unavailable("overloaded", detail, retry_after_secs)
    }

    pub fn request_timeout() -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", "the request took longer than REQUEST_TIMEOUT")
    }

    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "an internal error occurred; it has been logged")
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// Adds a response header.
    pub fn header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Adds an extension member (`field`, `line`, `results`, ...).
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(name.to_string(), value.into());
        self
    }

    /// An invalid event: 400 naming the field where there is one; 413 when it breaks a size limit.
    pub fn from_event(err: &EventError) -> Self {
        let status = match err.code {
            "event_too_large" | "headers_too_large" | "too_many_headers" => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        let e = Self::new(status, err.code, err.message.clone());
        match err.field {
            Some(field) => e.with("field", field),
            None => e,
        }
    }

    /// The problem document as JSON: `code`, `detail`, `status`, `title`, `type`, then the extension
    /// members. Serialized straight from the fields: no map of values is built for an answer that is
    /// often a routine refusal (a full queue, a shed request).
    pub fn body(&self) -> Vec<u8> {
        let doc = Problem {
            code: self.code,
            detail: &self.detail,
            status: self.status.as_u16(),
            title: self.status.canonical_reason().unwrap_or("Error"),
            type_: ProblemType(self.code),
            extensions: &self.extensions,
        };
        let mut body = Vec::with_capacity(192 + self.detail.len());
        // Strings, numbers and already-built values: serializing them cannot fail.
        let _ = serde_json::to_writer(&mut body, &doc);
        body
    }

    /// The answer carrying `body`: the status, the problem+json type, `Retry-After` and the error's headers.
    fn respond(self, body: Body) -> Response {
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
        response
    }

    /// [`ApiError::overloaded`] as an answer. Its document never changes (only `Retry-After` does), and it
    /// is the answer a service over its limit gives most: rendered once per process (and kept for the
    /// process's life).
    pub fn overloaded_response(retry_after_secs: u64) -> Response {
        static BODY: OnceLock<&'static [u8]> = OnceLock::new();
        let body = BODY.get_or_init(|| Box::leak(Self::overloaded(1).body().into_boxed_slice()));
        Self::overloaded(retry_after_secs).respond(Body::from(Bytes::from_static(body)))
    }
}

#[derive(serde::Serialize)]
struct Problem<'a> {
    code: &'static str,
    detail: &'a str,
    status: u16,
    title: &'static str,
    #[serde(rename = "type")]
    type_: ProblemType,
    #[serde(flatten)]
    extensions: &'a Map<String, Value>,
}

/// `urn:event-ingestor:problem:<code>`, written without building the string first.
struct ProblemType(&'static str);

impl serde::Serialize for ProblemType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("urn:event-ingestor:problem:{}", self.0))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body::from(self.body());
        self.respond(body)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parts(response: Response) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("a body in memory");
        (parts.status, parts.headers, serde_json::from_slice(&bytes).expect("JSON"))
    }

    #[tokio::test]
    async fn the_prerendered_overloaded_answer_is_the_overloaded_error() {
        for secs in [1, 7, 1] {
            let expected = parts(ApiError::overloaded(secs).into_response()).await;
            assert_eq!(parts(ApiError::overloaded_response(secs)).await, expected);
            assert_eq!(expected.0, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(expected.1[header::RETRY_AFTER], secs.to_string());
            assert_eq!(expected.2["code"], "overloaded");
        }
    }

    #[test]
    fn problem_documents_carry_type_title_status_and_extensions() {
        let body = ApiError::bad_request("malformed_json", format!("malformed JSON: {}", "eof")).with("line", 3).body();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({
                "type": "urn:event-ingestor:problem:malformed_json",
                "title": "Bad Request",
                "status": 400,
                "code": "malformed_json",
                "detail": "malformed JSON: eof",
                "line": 3
            })
        );
    }
}
