//! A real quartet-auth process with a bootstrap administrator, and tokens from it, for tests
//! of services that verify bearer tokens.

use std::time::Duration;

use anyhow::Context as _;

use crate::process::Server;

/// The issuer the test instance signs tokens as.
pub const ISSUER: &str = "http://quartet-auth.e2e";
/// The bootstrap administrator (role `admin`, permission `*`).
pub const ADMIN: &str = "admin";
/// Its password.
pub const ADMIN_PASSWORD: &str = "correct horse battery";
/// The public OAuth client that may use the password grant.
pub const CLI_CLIENT: &str = "quartet-cli";

/// Starts quartet-auth with the bootstrap administrator.
pub async fn start() -> anyhow::Result<Server> {
    start_with(&[]).await
}

/// Starts quartet-auth with the bootstrap administrator and the cipher service on (a fresh
/// master key in `master-key`): every REST operation it documents can answer.
pub async fn start_with_cipher() -> anyhow::Result<Server> {
    let key = std::process::Command::new("openssl")
        .args(["rand", "-base64", "32"])
        .output()
        .context("openssl runs")?;
    anyhow::ensure!(key.status.success(), "openssl made no key");
    start_with_files(
        &[("master-key", &String::from_utf8(key.stdout)?)],
        &[("QUARTET_AUTH_CIPHER_MASTER_KEY_FILE", "master-key")],
    )
    .await
}

/// Starts quartet-auth with the bootstrap administrator plus `extra_env` settings.
pub async fn start_with(extra_env: &[(&str, &str)]) -> anyhow::Result<Server> {
    start_with_files(&[], extra_env).await
}

/// Like [`start_with`], with `files` (name, content) written into its working directory first.
async fn start_with_files(
    files: &[(&str, &str)],
    extra_env: &[(&str, &str)],
) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("admin-password"),
        format!("{ADMIN_PASSWORD}\n"),
    )?;
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content)?;
    }
    let mut env = vec![
        ("QUARTET_AUTH_TOKENS_ISSUER", ISSUER),
        ("QUARTET_AUTH_BOOTSTRAP_ADMIN_USER", ADMIN),
        (
            "QUARTET_AUTH_BOOTSTRAP_ADMIN_PASSWORD_FILE",
            "admin-password",
        ),
        ("QUARTET_AUTH_BOOTSTRAP_CLI_CLIENT", CLI_CLIENT),
        ("QUARTET_AUTH_PASSWORDS_MEMORY_KIB", "4096"),
    ];
    env.extend_from_slice(extra_env);
    Server::start_in(dir, "quartet-auth", true, &env).await
}

/// An access token for `user` (password grant through the CLI client).
pub async fn token(auth: &Server, user: &str, password: &str) -> anyhow::Result<String> {
    let response: serde_json::Value = crate::http_client(Duration::from_secs(10))
        .post(format!("{}/oauth2/token", auth.url("http")))
        .form(&[
            ("grant_type", "password"),
            ("client_id", CLI_CLIENT),
            ("username", user),
            ("password", password),
        ])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    response["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("the token response has no access_token")
}

/// Starts quartet-auth and logs the administrator in: the server and an access token with
/// every permission.
pub async fn start_with_admin_token() -> anyhow::Result<(Server, String)> {
    let auth = start().await?;
    let token = token(&auth, ADMIN, ADMIN_PASSWORD).await?;
    Ok((auth, token))
}

/// The flags that point a Quartet service at this instance for token verification.
pub fn client_flags(auth: &Server) -> Vec<String> {
    vec![
        "--auth-jwks-url".to_owned(),
        format!("{}/.well-known/jwks.json", auth.url("http")),
        "--auth-issuer".to_owned(),
        ISSUER.to_owned(),
    ]
}
