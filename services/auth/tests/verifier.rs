//! The verifier every other service uses, against the real JWKS endpoint: keys are fetched on
//! first use, a token signed by a freshly rotated key triggers one refetch, refetches are
//! rate-limited, and an unreachable auth service is reported as such.

mod common;

use std::sync::Arc;
use std::time::Duration;

use quartet_auth::rest::{State, api};
use quartet_auth::service::{
    Auth, ClientAuth, GrantKind, LockoutSettings, TokenRequest, TokenSettings,
};
use quartet_auth::store::{ClientRecord, Store};
use quartet_kit::token::{TokenError, Verifier};

async fn token(auth: &Auth) -> String {
    let grant = GrantKind::Password {
        username: "ada".into(),
        password: "ada-password".into(),
    };
    let client = ClientAuth {
        client_id: "cli".into(),
        secret: None,
        basic: false,
    };
    auth.token(TokenRequest {
        grant,
        client,
        scope: None,
        source: String::new(),
    })
    .await
    .expect("token")
    .access_token
}

#[tokio::test]
async fn keys_are_fetched_on_first_use_and_refetched_for_a_rotated_key() {
    let (_dir, url) = common::sqlite_database();
    let store = Store::connect(&url, 2).await.expect("store");
    let settings = TokenSettings {
        key_rotation: Duration::from_secs(1),
        ..TokenSettings::default()
    };
    let auth = Arc::new(
        Auth::open(
            store,
            common::cheap_hasher(),
            settings,
            LockoutSettings::default(),
        )
        .await
        .expect("open"),
    );
    let client = ClientRecord {
        client_id: "cli".into(),
        secret_hash: None,
        grant_types: vec!["password".into()],
        scopes: vec![],
        permissions: vec![],
    };
    auth.store()
        .create_client(&client, 0)
        .await
        .expect("client");
    auth.store()
        .create_user("ada", &auth.hasher().hash("ada-password"), 0)
        .await
        .expect("user");
    let (ctx, bound) = common::serve(None, api(State { auth: auth.clone() })).await;
    let jwks = format!("http://{}/.well-known/jwks.json", bound.http.expect("http"));
    let issuer = &auth.token_settings().issuer;

    let verifier =
        Verifier::from_url(&jwks, issuer, "quartet").with_min_refresh_interval(Duration::ZERO);
    let first = token(&auth).await;
    assert_eq!(
        verifier
            .verify(&first)
            .await
            .expect("fetched and verified")
            .sub,
        "ada"
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    auth.maintain_keys().await.expect("rotate");
    let second = token(&auth).await;
    assert_ne!(
        jsonwebtoken::decode_header(&first).expect("header").kid,
        jsonwebtoken::decode_header(&second).expect("header").kid
    );
    assert!(
        verifier.verify(&second).await.is_ok(),
        "an unknown key id triggers a refetch"
    );
    assert!(
        verifier.verify(&first).await.is_ok(),
        "the previous key stays published through the overlap"
    );

    // Rate limiting: with the default interval, a second unknown key id soon after a fetch is
    // refused without fetching again.
    let limited = Verifier::from_url(&jwks, issuer, "quartet");
    assert!(limited.verify(&second).await.is_ok());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    auth.maintain_keys().await.expect("rotate");
    let third = token(&auth).await;
    assert!(matches!(
        limited.verify(&third).await,
        Err(TokenError::UnknownKey(_))
    ));

    ctx.shutdown.trigger();
    let unreachable = Verifier::from_url(
        "http://127.0.0.1:1/.well-known/jwks.json",
        issuer,
        "quartet",
    );
    assert!(matches!(
        unreachable.verify(&third).await,
        Err(TokenError::KeysUnavailable { .. })
    ));
}
