//! Microsoft-shaped OAuth errors: the AADSTS code table and the JSON error body
//! (`error`, `error_description` with trace/correlation IDs and timestamp,
//! `error_codes`, `timestamp`, `trace_id`, `correlation_id`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::random;

/// One OAuth error as the token endpoint returns it.
#[derive(Clone, Debug)]
pub struct OAuthError {
    /// HTTP status (400, or 401 for `invalid_client`, 5xx for outages).
    pub status: u16,
    /// The OAuth `error` string, e.g. `invalid_grant`.
    pub error: String,
    /// The AADSTS number, e.g. 70008.
    pub code: u32,
    /// The description without the `AADSTSnnn: ` prefix and the trace lines.
    pub message: String,
    /// Microsoft's `suberror` (`consent_required`, `basic_action`, …), if any.
    pub suberror: Option<String>,
}

/// Context filled into the descriptions of the code table.
#[derive(Clone, Debug, Default)]
pub struct ErrorContext {
    /// The client (application) ID of the request.
    pub client_id: String,
    /// The tenant path segment of the request.
    pub tenant: String,
    /// The redirect URI of the request, if any.
    pub redirect_uri: String,
}

/// The AADSTS codes the test IdP knows, for [`crate::Idp::fail_next_token_calls`].
pub const KNOWN_CODES: &[u32] = &[
    65001, 50011, 700016, 7000215, 7000222, 7000112, 70008, 700082, 50173, 70043, 50076, 50079,
    53003, 50057, 7000218, 1002012, 9002313, 70000, 54005, 50148, 70016, 70019, 90033,
];

impl OAuthError {
    /// A custom error.
    pub fn new(status: u16, error: &str, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            error: error.to_string(),
            code,
            message: message.into(),
            suberror: None,
        }
    }

    fn with_suberror(mut self, s: &str) -> Self {
        self.suberror = Some(s.to_string());
        self
    }

    /// The error Microsoft returns for AADSTS `code`, with descriptions close to the
    /// real ones. Unknown codes give a generic `invalid_request`.
    pub fn aadsts(code: u32, ctx: &ErrorContext) -> Self {
        let app = &ctx.client_id;
        let now = chrono::Utc::now().format("%m/%d/%Y %H:%M:%S");
        match code {
            65001 => Self::new(400, "invalid_grant", code, format!(
                "The user or administrator has not consented to use the application with ID '{app}' named 'mailsync'. Send an interactive authorization request for this user and resource."))
                .with_suberror("consent_required"),
            50011 => Self::new(400, "invalid_request", code, format!(
                "The redirect URI '{}' specified in the request does not match the redirect URIs configured for the application '{app}'. Make sure the redirect URI sent in the request matches one added to your application in the Azure portal. Navigate to https://aka.ms/redirectUriMismatchError to learn more about how to fix this.", ctx.redirect_uri)),
            700016 => Self::new(400, "unauthorized_client", code, format!(
                "Application with identifier '{app}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.", ctx.tenant)),
            7000215 => Self::new(401, "invalid_client", code, format!(
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{app}'.")),
            7000222 => Self::new(401, "invalid_client", code, format!(
                "The provided client secret keys for app '{app}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.")),
            7000112 => Self::new(400, "unauthorized_client", code, format!(
                "Application '{app}'(mailsync) is disabled.")),
            7000218 => Self::new(401, "invalid_client", code,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'."),
            70008 => Self::new(400, "invalid_grant", code,
                "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource."),
            700082 => Self::new(400, "invalid_grant", code, format!(
                "The refresh token has expired due to inactivity. The token was issued on {now} and was inactive for 90.00:00:00.")),
            50173 => Self::new(400, "invalid_grant", code, format!(
                "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password. The grant was issued on '{now}' and the TokensValidFrom date (before which tokens are not valid) for this user is '{now}'.")),
            70043 => Self::new(400, "invalid_grant", code, format!(
                "The refresh token has expired or is invalid due to sign-in frequency checks by conditional access. The token was issued on {now} and the maximum allowed lifetime for this request is 43200.")),
            50076 => Self::new(400, "invalid_grant", code,
                "Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication to access '00000002-0000-0ff1-ce00-000000000000'.")
                .with_suberror("basic_action"),
            50079 => Self::new(400, "invalid_grant", code,
                "Due to a configuration change made by your administrator, or because you moved to a new location, you must enroll in multi-factor authentication to access '00000002-0000-0ff1-ce00-000000000000'.")
                .with_suberror("basic_action"),
            53003 => Self::new(400, "invalid_grant", code,
                "Access has been blocked by Conditional Access policies. The access policy does not allow token issuance."),
            50057 => Self::new(400, "invalid_grant", code,
                "The user account is disabled."),
            1002012 => Self::new(400, "invalid_scope", code,
                "The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."),
            9002313 => Self::new(400, "invalid_grant", code,
                "Invalid request. Request is malformed or invalid."),
            70000 => Self::new(400, "invalid_grant", code,
                "Provided grant is invalid or malformed."),
            54005 => Self::new(400, "invalid_grant", code,
                "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token."),
            50148 => Self::new(400, "invalid_grant", code,
                "The code_verifier does not match the code_challenge supplied in the authorization request for PKCE."),
            70016 => Self::new(400, "authorization_pending", code,
                "OAuth 2.0 device flow error. Authorization is pending. Continue polling."),
            70019 => Self::new(400, "expired_token", code,
                "Verification code expired."),
            90033 => Self::new(503, "temporarily_unavailable", code,
                "A transient error has occurred. Please try again."),
            _ => Self::new(400, "invalid_request", code, "The request is invalid."),
        }
    }

    /// `invalid_request` for a missing form parameter (AADSTS900144).
    pub fn missing(param: &str) -> Self {
        Self::new(
            400,
            "invalid_request",
            900144,
            format!("The request body must contain the following parameter: '{param}'."),
        )
    }

    /// The full `error_description`: `AADSTSnnn: message` plus trace lines.
    pub fn description(&self, trace_id: &str, correlation_id: &str, timestamp: &str) -> String {
        format!(
            "AADSTS{}: {}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}",
            self.code, self.message
        )
    }

    /// The JSON body Microsoft sends.
    pub fn body(&self) -> serde_json::Value {
        let trace_id = random::guid();
        let correlation_id = random::guid();
        let timestamp = chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string();
        let mut v = json!({
            "error": self.error,
            "error_description": self.description(&trace_id, &correlation_id, &timestamp),
            "error_codes": [self.code],
            "timestamp": chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string(),
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": "https://login.microsoftonline.com/error?code=".to_string() + &self.code.to_string(),
        });
        if let Some(s) = &self.suberror {
            v["suberror"] = json!(s);
        }
        v
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut resp = (status, axum::Json(self.body())).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        resp
    }
}
