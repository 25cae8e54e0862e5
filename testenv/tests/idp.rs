//! The test identity provider over HTTP: the grant types, rotation, the device code and
//! authorize flows, introspection, injected failures and Microsoft's error shape.

use std::time::Duration;

use mailsync_testenv::{Idp, TokenFailure};
use serde_json::Value;

async fn post(url: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(url)
        .form(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

fn payload(jwt: &str) -> Value {
    use base64::Engine as _;
    let part = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn client_credentials_errors_and_introspection() {
    let idp = Idp::start().await;
    idp.add_app("app", Some("right"), Some("jane@example.com"));
    let url = idp.token_url("contoso");
    let form = |secret, scope| {
        vec![
            ("grant_type", "client_credentials"),
            ("client_id", "app"),
            ("client_secret", secret),
            ("scope", scope),
        ]
    };
    let (s, v) = post(
        &url,
        &form("wrong", "https://outlook.office365.com/.default"),
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (401, Some("invalid_client")));
    assert_eq!(v["error_codes"][0], 7000215);
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS7000215: ")
    );
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("\r\nTrace ID: ")
    );
    let (s, v) = post(
        &url,
        &form("right", "https://outlook.office365.com/IMAP.AccessAsApp"),
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_scope")));
    let (_, v) = post(
        &url,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "nope"),
            ("client_secret", "x"),
            ("scope", "a/.default"),
        ],
    )
    .await;
    assert_eq!(v["error_codes"][0], 700016);
    let (s, v) = post(
        &url,
        &form("right", "https://outlook.office365.com/.default"),
    )
    .await;
    assert_eq!(s, 200);
    let token = v["access_token"].as_str().unwrap().to_string();
    assert_eq!(v["token_type"], "Bearer");
    let (_, i) = post(&idp.introspection_url(), &[("token", &token)]).await;
    assert_eq!(
        (i["active"].as_bool(), i["email"].as_str()),
        (Some(true), Some("jane@example.com"))
    );
    idp.expire_access_tokens();
    let (_, i) = post(&idp.introspection_url(), &[("token", &token)]).await;
    assert_eq!(i, serde_json::json!({"active": false}));
    idp.fail_next_token_calls(1, TokenFailure::Unavailable(503));
    idp.fail_next_token_calls(1, TokenFailure::Aadsts(53003));
    let (s, v) = post(
        &url,
        &form("right", "https://outlook.office365.com/.default"),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (503, Some("temporarily_unavailable"))
    );
    let (s, v) = post(
        &url,
        &form("right", "https://outlook.office365.com/.default"),
    )
    .await;
    assert_eq!((s, v["error_codes"][0].as_u64()), (400, Some(53003)));
    let raw = r#"{"access_token":"x","expires_in":"3599"}"#;
    idp.fail_next_token_calls(
        1,
        TokenFailure::Raw {
            status: 200,
            body: raw.into(),
        },
    );
    let (s, v) = post(
        &url,
        &form("right", "https://outlook.office365.com/.default"),
    )
    .await;
    assert_eq!((s, v), (200, serde_json::from_str::<Value>(raw).unwrap()));
    assert_eq!(idp.token_calls(), 7);
    assert!(idp.issued_secrets().contains(&token));
}

#[tokio::test]
async fn refresh_tokens_rotate() {
    let idp = Idp::start().await;
    let (_, r1) = idp.issue_tokens("public", "jane@example.com");
    let url = idp.token_url("common");
    let (s, v) = post(
        &url,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "public"),
            ("refresh_token", &r1),
        ],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let r2 = v["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(r1, r2);
    let id = payload(v["id_token"].as_str().unwrap());
    assert_eq!(id["preferred_username"], "jane@example.com");
    assert!(id["oid"].is_string() && id["tid"].is_string());
    let (_, v) = post(
        &url,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "public"),
            ("refresh_token", &r1),
        ],
    )
    .await;
    assert_eq!(
        (v["error"].as_str(), v["error_codes"][0].as_u64()),
        (Some("invalid_grant"), Some(70008))
    );
    idp.revoke_refresh_tokens("jane@example.com");
    let (_, v) = post(
        &url,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "public"),
            ("refresh_token", &r2),
        ],
    )
    .await;
    assert_eq!(v["error_codes"][0], 50173);
}

#[tokio::test]
async fn device_code_flow() {
    let idp = Idp::start().await;
    idp.add_app("public", None, None);
    idp.set_device_code_interval(Duration::from_secs(1));
    let (_, d) = post(
        &idp.device_url("common"),
        &[("client_id", "public"), ("scope", "offline_access")],
    )
    .await;
    let code = d["device_code"].as_str().unwrap().to_string();
    assert_eq!(d["interval"], 1);
    let poll = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
        ("client_id", "public"),
        ("device_code", code.as_str()),
    ];
    let (_, v) = post(&idp.token_url("common"), &poll).await;
    assert_eq!(v["error"], "authorization_pending");
    let (_, v) = post(&idp.token_url("common"), &poll).await;
    assert_eq!(v["error"], "slow_down");
    assert!(idp.approve_device_code(None, "jane@example.com"));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (s, v) = post(&idp.token_url("common"), &poll).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["refresh_token"].is_string());
}

#[tokio::test]
async fn authorize_with_pkce() {
    let idp = Idp::start().await;
    idp.add_app("public", None, None);
    let verifier = "verifier-0123456789-0123456789-0123456789-abcdef";
    let challenge = mailsync_testenv::idp::s256(verifier);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let authorize_for = |hint: &'static str, scope: &'static str| {
        client
            .get(idp.authorize_url("common"))
            .query(&[
                ("client_id", "public"),
                ("response_type", "code"),
                ("redirect_uri", "http://127.0.0.1:9/cb"),
                ("scope", scope),
                ("state", "st8"),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
                ("login_hint", hint),
            ])
            .send()
    };
    let authorize = |hint: &'static str| authorize_for(hint, "openid email offline_access");
    idp.set_signed_in_user(Some("bob@example.com"));
    let resp = authorize("jane@example.com").await.unwrap();
    assert_eq!(resp.status().as_u16(), 302);
    let location = reqwest::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    let q: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert_eq!(q["state"], "st8");
    let form = [
        ("grant_type", "authorization_code"),
        ("client_id", "public"),
        ("code", q["code"].as_str()),
        ("redirect_uri", "http://127.0.0.1:9/cb"),
        ("code_verifier", "wrong"),
    ];
    let (_, v) = post(&idp.token_url("common"), &form).await;
    assert_eq!(v["error"], "invalid_grant");
    let mut form = form;
    form[4].1 = verifier;
    let (s, v) = post(&idp.token_url("common"), &form).await;
    assert_eq!(s, 200, "{v}");
    let id = payload(v["id_token"].as_str().unwrap());
    assert_eq!(id["email"], "bob@example.com");
    assert_eq!(id["preferred_username"], Value::Null, "no profile scope");

    // Like Microsoft: no `openid`, no id_token.
    let resp = authorize_for("jane@example.com", "offline_access")
        .await
        .unwrap();
    let location = reqwest::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    let q: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    form[2].1 = q["code"].as_str();
    let (s, v) = post(&idp.token_url("common"), &form).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["access_token"].is_string() && v.get("id_token").is_none(),
        "{v}"
    );
    idp.set_consent_required(true);
    let resp = authorize("jane@example.com").await.unwrap();
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.contains("error=consent_required") && location.contains("AADSTS65001"),
        "{location}"
    );
}
