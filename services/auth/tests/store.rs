//! The SQL store behaves the same on SQLite and on a real PostgreSQL server.

mod common;

use quartet_auth::store::{ClientRecord, RefreshRecord, RefreshUse, Store, StoreError};

async fn exercise(store: &Store) {
    store.ping().await.expect("ping");
    store.create_user("ada", "h1", 1).await.expect("create");
    assert!(matches!(
        store.create_user("ada", "h2", 2).await,
        Err(StoreError::AlreadyExists(_))
    ));
    store.create_user("bob", "h3", 3).await.expect("create");
    assert_eq!(store.user_names().await.expect("list"), ["ada", "bob"]);

    store
        .create_role(
            "reader",
            "reads docs",
            &["doc:read".into(), "report:view".into()],
        )
        .await
        .expect("role");
    store
        .create_role("ops", "", &["task:*".into()])
        .await
        .expect("role");
    assert!(matches!(
        store.create_role("reader", "", &[]).await,
        Err(StoreError::AlreadyExists(_))
    ));
    // A failing role creation leaves nothing behind.
    assert!(
        store
            .create_role("dup", "", &["x".into(), "x".into()])
            .await
            .is_err()
    );
    assert_eq!(store.role_names().await.expect("roles"), ["ops", "reader"]);

    store.assign_role("ada", "reader").await.expect("assign");
    store.assign_role("ada", "ops").await.expect("assign");
    assert!(matches!(
        store.assign_role("ada", "nosuch").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.assign_role("nobody", "ops").await,
        Err(StoreError::NotFound(_))
    ));
    store
        .grant_user_permission("ada", "doc:read")
        .await
        .expect("direct");
    store
        .grant_user_permission("ada", "billing:view")
        .await
        .expect("direct");
    assert_eq!(
        store.roles_of("ada").await.expect("roles"),
        ["ops", "reader"]
    );
    assert_eq!(
        store.permissions_of("ada").await.expect("perms"),
        ["billing:view", "doc:read", "report:view", "task:*"]
    );

    store.set_password_hash("ada", "h9").await.expect("rehash");
    store.set_disabled("bob", true).await.expect("disable");
    let ada = store.user("ada").await.expect("read").expect("exists");
    assert_eq!((ada.password_hash.as_str(), ada.disabled), ("h9", false));
    assert!(
        store
            .user("bob")
            .await
            .expect("read")
            .expect("exists")
            .disabled
    );
    assert!(matches!(
        store.set_password_hash("nobody", "x").await,
        Err(StoreError::NotFound(_))
    ));

    store.delete_role("ops").await.expect("delete role");
    assert_eq!(store.roles_of("ada").await.expect("roles"), ["reader"]);
    store.delete_user("bob", 4).await.expect("delete");
    assert!(store.user("bob").await.expect("read").is_none());
    assert!(matches!(
        store.delete_user("bob", 4).await,
        Err(StoreError::NotFound(_))
    ));

    let client = ClientRecord {
        client_id: "cli".into(),
        secret_hash: Some("s".into()),
        grant_types: vec!["password".into(), "refresh_token".into()],
        scopes: vec!["openid".into()],
        permissions: vec![],
    };
    store.create_client(&client, 1).await.expect("client");
    assert_eq!(store.client("cli").await.expect("read"), Some(client));
    assert_eq!(store.client("nope").await.expect("read"), None);

    let record = RefreshRecord {
        family: "f1".into(),
        user_name: "ada".into(),
        client_id: "cli".into(),
        scope: "openid".into(),
        expires_at: 1000,
    };
    store
        .insert_refresh("r1", &record, "a1")
        .await
        .expect("insert");
    store
        .insert_refresh(
            "r2",
            &RefreshRecord {
                expires_at: 2000,
                ..record.clone()
            },
            "a2",
        )
        .await
        .expect("insert");
    assert!(!store.access_revoked("a1").await.expect("read"));
    assert_eq!(
        store.use_refresh("r1", 10).await.expect("use"),
        RefreshUse::Fresh(record.clone())
    );
    assert_eq!(
        store.use_refresh("r1", 11).await.expect("reuse"),
        RefreshUse::Reused {
            family: "f1".into(),
            user_name: "ada".into()
        }
    );
    assert_eq!(
        store.use_refresh("r2", 12).await.expect("family revoked"),
        RefreshUse::Invalid
    );
    assert!(
        store.access_revoked("a1").await.expect("read")
            && store.access_revoked("a2").await.expect("read"),
        "the access tokens issued beside a revoked family's refresh tokens are revoked with it"
    );
    // A token added to a revoked family afterwards (a refresh racing with the revocation) is
    // born revoked, and so is its access token.
    store
        .insert_refresh("r2b", &record, "a2b")
        .await
        .expect("insert");
    assert_eq!(
        store.use_refresh("r2b", 13).await.expect("use"),
        RefreshUse::Invalid
    );
    assert!(store.live_refresh("r2b", 13).await.expect("read").is_none());
    assert!(store.access_revoked("a2b").await.expect("read"));
    assert_eq!(
        store.use_refresh("unknown", 12).await.expect("unknown"),
        RefreshUse::Invalid
    );
    store
        .insert_refresh(
            "r3",
            &RefreshRecord {
                family: "f2".into(),
                expires_at: 5,
                ..record.clone()
            },
            "a3",
        )
        .await
        .expect("insert");
    assert_eq!(
        store.use_refresh("r3", 6).await.expect("expired"),
        RefreshUse::Invalid
    );

    store.revoke_access("jti-1", 100).await.expect("revoke");
    store
        .revoke_access("jti-1", 100)
        .await
        .expect("revoking twice is fine");
    assert!(store.access_revoked("jti-1").await.expect("read"));
    assert!(!store.access_revoked("jti-2").await.expect("read"));

    let keys = vec![
        ("k1".to_owned(), "AAAA".to_owned(), 1),
        ("k2".to_owned(), "BBBB".to_owned(), 2),
    ];
    store.replace_signing_keys(&keys).await.expect("keys");
    assert_eq!(store.signing_keys().await.expect("keys"), keys);
}

#[tokio::test]
async fn sqlite() {
    let (_dir, url) = common::sqlite_database();
    let store = Store::connect(&url, 4).await.expect("connect");
    exercise(&store).await;
    // Reconnecting finds the schema in place and the data kept.
    let again = Store::connect(&url, 4).await.expect("reconnect");
    assert_eq!(again.user_names().await.expect("list"), ["ada"]);
}

#[tokio::test]
async fn postgres() {
    let url = common::postgres_database().await;
    let store = Store::connect(&url, 4).await.expect("connect");
    exercise(&store).await;
}

#[tokio::test]
async fn an_unreachable_database_is_named() {
    let err = Store::connect("postgres://postgres@127.0.0.1:1/none", 1)
        .await
        .expect_err("nothing listens on port 1");
    assert!(err.to_string().starts_with("database error"), "{err}");
}

#[tokio::test]
async fn concurrent_uses_of_one_refresh_token_succeed_once() {
    let url = common::postgres_database().await;
    let store = Store::connect(&url, 8).await.expect("connect");
    store.create_user("ada", "h", 1).await.expect("user");
    let record = RefreshRecord {
        family: "f".into(),
        user_name: "ada".into(),
        client_id: "c".into(),
        scope: String::new(),
        expires_at: i64::MAX,
    };
    store
        .insert_refresh("tok", &record, "a")
        .await
        .expect("insert");
    let attempts = (0..8).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.use_refresh("tok", 10 + i).await.expect("use") })
    });
    let outcomes = futures::future::join_all(attempts).await;
    let fresh = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(RefreshUse::Fresh(_))))
        .count();
    assert_eq!(fresh, 1, "{outcomes:?}");
}

/// Every change that could take administration from its last holder is refused whole, on
/// either database; the same changes go through while another administrator remains.
async fn administration_keeps_a_holder(store: &Store) {
    // A store without administrators (INI-only, or before bootstrap) is not held hostage.
    store.create_role("temp", "", &[]).await.expect("role");
    store
        .delete_role("temp")
        .await
        .expect("no administrator to keep");

    store
        .create_role("admin", "", &["*".into()])
        .await
        .expect("role");
    store.create_user("root", "h", 1).await.expect("user");
    store.assign_role("root", "admin").await.expect("assign");
    store.create_user("carl", "h", 1).await.expect("user");
    store
        .grant_user_permission("carl", "auth:*")
        .await
        .expect("grant");
    store.set_disabled("carl", true).await.expect("disable");
    assert_eq!(
        store.administrators().await.expect("read"),
        ["root"],
        "a disabled holder does not count"
    );

    let refused = |result: Result<(), StoreError>, what: &str| match result {
        Err(StoreError::LastAdministrator {
            change,
            administrators,
        }) => {
            assert!(change.contains(what), "{change}");
            assert_eq!(administrators, ["root"]);
        }
        other => panic!("{what}: expected a refusal, got {other:?}"),
    };
    refused(store.delete_role("admin").await, "deleting role");
    refused(
        store.revoke_role_permission("admin", "*").await,
        "taking permission",
    );
    refused(store.unassign_role("root", "admin").await, "taking role");
    refused(store.set_disabled("root", true).await, "disabling");
    refused(store.delete_user("root", 2).await, "deleting user");
    assert_eq!(store.administrators().await.expect("read"), ["root"]);
    assert_eq!(
        store.role_permissions("admin").await.expect("read"),
        Some(vec!["*".to_owned()]),
        "nothing half-applied"
    );

    // Another holder, through a permission that implies auth:* in another spelling.
    store.set_disabled("carl", false).await.expect("enable");
    store
        .grant_user_permission("carl", "AUTH:user,role:*")
        .await
        .expect("grant");
    store
        .revoke_user_permission("carl", "auth:*")
        .await
        .expect("root remains");
    assert_eq!(store.administrators().await.expect("read"), ["root"]);
    store
        .grant_user_permission("carl", "auth")
        .await
        .expect("grant");
    assert_eq!(
        store.administrators().await.expect("read"),
        ["carl", "root"]
    );
    store.delete_user("root", 2).await.expect("carl remains");
    refused_for(store.revoke_user_permission("carl", "auth").await, "carl");
    store.delete_role("admin").await.expect("nobody holds it");
}

fn refused_for(result: Result<(), StoreError>, last: &str) {
    match result {
        Err(StoreError::LastAdministrator { administrators, .. }) => {
            assert_eq!(administrators, [last]);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Two administrators, each deleted by a different caller at the same moment: one deletion
/// wins, the other is refused, and an administrator is left — round after round.
async fn concurrent_removals_leave_an_administrator(store: &Store) {
    store
        .create_role("boss", "", &["auth:*".into()])
        .await
        .expect("role");
    for round in 0..10 {
        let (a, b) = (format!("a{round}"), format!("b{round}"));
        for user in [&a, &b] {
            store.create_user(user, "h", 1).await.expect("user");
            store.assign_role(user, "boss").await.expect("assign");
        }
        // Whoever was left from the round before goes first, in the same way.
        for user in store.administrators().await.expect("read") {
            if user != a && user != b {
                store
                    .delete_user(&user, 2)
                    .await
                    .expect("two others remain");
            }
        }
        let removals = [
            tokio::spawn({
                let (store, a) = (store.clone(), a.clone());
                async move { store.delete_user(&a, 2).await }
            }),
            tokio::spawn({
                let (store, b) = (store.clone(), b.clone());
                async move { store.unassign_role(&b, "boss").await }
            }),
        ];
        let outcomes: Vec<Result<(), StoreError>> = futures::future::join_all(removals)
            .await
            .into_iter()
            .map(|joined| joined.expect("task"))
            .collect();
        let done = outcomes.iter().filter(|o| o.is_ok()).count();
        let refused = outcomes
            .iter()
            .filter(|o| matches!(o, Err(StoreError::LastAdministrator { .. })))
            .count();
        assert_eq!((done, refused), (1, 1), "round {round}: {outcomes:?}");
        assert_eq!(
            store.administrators().await.expect("read").len(),
            1,
            "round {round}"
        );
    }
}

#[tokio::test]
async fn sqlite_keeps_an_administrator() {
    let (_dir, url) = common::sqlite_database();
    let store = Store::connect(&url, 4).await.expect("connect");
    administration_keeps_a_holder(&store).await;
    let (_dir, url) = common::sqlite_database();
    let store = Store::connect(&url, 4).await.expect("connect");
    concurrent_removals_leave_an_administrator(&store).await;
}

#[tokio::test]
async fn postgres_keeps_an_administrator() {
    let store = Store::connect(&common::postgres_database().await, 4)
        .await
        .expect("connect");
    administration_keeps_a_holder(&store).await;
    let store = Store::connect(&common::postgres_database().await, 8)
        .await
        .expect("connect");
    concurrent_removals_leave_an_administrator(&store).await;
}
