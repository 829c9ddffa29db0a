//! Path and query extractors whose refusals speak the API's error format.
//!
//! Axum's `Path` and `Query` answer a bad parameter in plain text. These have the same
//! shape (`Path(id): Path<String>`, `Query(q): Query<EventQuery>`) and answer
//! `400 invalid_path` or `400 invalid_query` naming the parameter in `field`:
//! `GET /v1/jobs/%FF` → `invalid_path`, field `id`; `?after=abc` → `invalid_query`,
//! field `after`.

use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// Parameters captured from the path (`/v1/jobs/{id}`).
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(rej) => Err(path_refusal(rej)),
        }
    }
}

fn path_refusal(rej: PathRejection) -> ApiError {
    // A route whose parameters do not fit its handler is our bug, not the client's.
    if rej.status().is_server_error() {
        return ApiError::internal(StatusCode::INTERNAL_SERVER_ERROR, "internal", &rej.body_text());
    }
    let PathRejection::FailedToDeserializePathParams(e) = rej else {
        return ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", rej.body_text());
    };
    let key = match e.kind() {
        ErrorKind::ParseErrorAtKey { key, .. }
        | ErrorKind::InvalidUtf8InPathParam { key }
        | ErrorKind::DeserializeError { key, .. } => Some(key.clone()),
        _ => None,
    };
    let message = match e.kind() {
        ErrorKind::InvalidUtf8InPathParam { key } => {
            format!("path parameter `{key}` is not UTF-8 once percent-decoded")
        }
        kind => format!("invalid path parameter: {kind}"),
    };
    let err = ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", message);
    match key {
        Some(key) => err.field(key),
        None => err,
    }
}

/// The query string, deserialized into `T` (`?after=5`).
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parse_query(parts.uri.query().unwrap_or_default()).map(Query)
    }
}

/// Deserializes a query string, naming the parameter at fault.
pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // Unknown and missing parameters are reported at the top; name them.
        let named = ["unknown field `", "missing field `"]
            .iter()
            .find_map(|p| inner.strip_prefix(p))
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string);
        let field = match named {
            Some(name) => Some(name),
            None if path == "." => None,
            None => Some(path),
        };
        let message = match &field {
            Some(f) => format!("query parameter `{f}`: {inner}"),
            None => format!("invalid query string: {inner}"),
        };
        let err = ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message);
        match field {
            Some(f) => err.field(f),
            None => err,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Q {
        #[allow(dead_code)]
        after: Option<i64>,
    }

    fn field_of(query: &str) -> (String, Option<String>) {
        let e = parse_query::<Q>(query).unwrap_err();
        (e.code.to_string(), e.field)
    }

    #[test]
    fn names_the_parameter_at_fault() {
        assert!(parse_query::<Q>("after=5").is_ok());
        assert!(parse_query::<Q>("").is_ok());
        let after = ("invalid_query".to_string(), Some("after".to_string()));
        assert_eq!(field_of("after=abc"), after);
        assert_eq!(field_of("after=99999999999999999999"), after);
        assert_eq!(field_of("bogus=1"), ("invalid_query".to_string(), Some("bogus".to_string())));
    }
}
