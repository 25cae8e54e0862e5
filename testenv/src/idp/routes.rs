//! The HTTP layer of the identity provider: axum routes that decode requests and call
//! the protocol logic in `grants`.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::grants::{self, AuthorizeOutcome, Params, TokenError};
use super::store::Store;

/// State shared by the handlers and the [`crate::Idp`] control API.
#[derive(Debug)]
pub struct Shared {
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// All IdP state.
    pub store: Mutex<Store>,
    /// Wakes the token replies held by `stall_next_token_replies`.
    pub release: tokio::sync::Notify,
}

/// The longest a token reply is held.
const MAX_STALL: std::time::Duration = std::time::Duration::from_secs(300);

/// The router for all endpoints.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/{tenant}/oauth2/v2.0/devicecode", post(devicecode))
        .route("/{tenant}/oauth2/v2.0/authorize", get(authorize))
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/introspect", post(introspect))
        .route("/devicelogin", get(devicelogin))
        .with_state(shared)
}

fn parse(body: &[u8]) -> Params {
    serde_urlencoded::from_bytes(body).unwrap_or_default()
}

async fn token(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let p = parse(&body);
    let (result, stall) = {
        let mut store = shared.store.lock().unwrap();
        let result = grants::token(&mut store, &shared.base_url, &tenant, &p);
        let stall = result.is_ok() && store.stall_next > 0;
        if stall {
            store.stall_next -= 1;
        }
        (result, stall)
    };
    if stall {
        // Registered before it is counted, so a release right after the count is seen
        // is not missed.
        let released = shared.release.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        shared.store.lock().unwrap().stalled += 1;
        let _ = tokio::time::timeout(MAX_STALL, released).await;
    }
    match result {
        Ok(v) => (
            [(header::CACHE_CONTROL, "no-store, no-cache")],
            axum::Json(v),
        )
            .into_response(),
        Err(TokenError::OAuth(e)) => e.into_response(),
        Err(TokenError::Raw { status, body }) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            [
                (header::CONTENT_TYPE, "application/json; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store, no-cache"),
            ],
            body,
        )
            .into_response(),
    }
}

async fn devicecode(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let p = parse(&body);
    let result = {
        let mut store = shared.store.lock().unwrap();
        grants::devicecode(&mut store, &shared.base_url, &tenant, &p)
    };
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn authorize(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let p = parse(query.unwrap_or_default().as_bytes());
    let outcome = {
        let mut store = shared.store.lock().unwrap();
        grants::authorize(&mut store, &tenant, &p)
    };
    match outcome {
        AuthorizeOutcome::Redirect(location) => {
            (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
        }
        AuthorizeOutcome::Page(status, text) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            Html(format!(
                "<html><body><h1>Sign in</h1><p>Sorry, but we're having trouble signing you in.</p><p>{text}</p></body></html>"
            )),
        )
            .into_response(),
    }
}

async fn introspect(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let p = parse(&body);
    let result = {
        let mut store = shared.store.lock().unwrap();
        grants::introspect(&mut store, &p)
    };
    match result {
        Some(v) => axum::Json(v).into_response(),
        None => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": "server_error"})),
        )
            .into_response(),
    }
}

async fn devicelogin() -> Html<&'static str> {
    Html(
        "<html><body><h1>Enter code</h1><p>This is the mailsync test identity provider; codes are approved by the test itself.</p></body></html>",
    )
}

async fn openid_configuration(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
) -> Response {
    let b = &shared.base_url;
    axum::Json(json!({
        "issuer": format!("{b}/{}/v2.0", super::jwt::tenant_id(&tenant)),
        "authorization_endpoint": format!("{b}/{tenant}/oauth2/v2.0/authorize"),
        "token_endpoint": format!("{b}/{tenant}/oauth2/v2.0/token"),
        "device_authorization_endpoint": format!("{b}/{tenant}/oauth2/v2.0/devicecode"),
        "introspection_endpoint": format!("{b}/introspect"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials", "urn:ietf:params:oauth:grant-type:device_code"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
    }))
    .into_response()
}
