//! `ApiError`: the one error type of the HTTP API, rendered as `application/problem+json` (RFC 9457) with a
//! stable machine `code`.

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
    pub detail: String,
    pub retry_after_secs: Option<u64>,
    pub extensions: Map<String, Value>,
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after_secs: None,
            extensions: Map::new(),
            headers: Vec::new(),
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn too_large(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, code, detail)
    }

    pub fn unavailable(code: &'static str, detail: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail).retry_after(retry_after_secs)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method")
    }

    pub fn overloaded() -> Self {
        Self::unavailable("overloaded", "too many requests in progress (MAX_CONCURRENT_REQUESTS); retry shortly", 1)
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

    /// The problem document as JSON.
    pub fn body(&self) -> Value {
        let mut doc = Map::new();
        doc.insert("type".into(), Value::from(format!("urn:event-ingestor:problem:{}", self.code)));
        doc.insert("title".into(), Value::from(self.status.canonical_reason().unwrap_or("Error")));
        doc.insert("status".into(), Value::from(self.status.as_u16()));
        doc.insert("code".into(), Value::from(self.code));
        doc.insert("detail".into(), Value::from(self.detail.clone()));
        for (k, v) in &self.extensions {
            doc.insert(k.clone(), v.clone());
        }
        Value::Object(doc)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut response = (self.status, body).into_response();
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
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.detail)
    }
}
