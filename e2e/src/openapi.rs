//! Schemathesis (from the test venv, `scripts/python.sh`) against a running REST API and the
//! OpenAPI document it serves (at `/openapi.json` on every kit server): requests generated
//! from the document, valid and invalid, sent with a bearer token to every operation, and
//! every answer checked for
//!
//! - no server error (5xx),
//! - a status the document lists for that operation,
//! - the content type the document gives for that status,
//! - a body that matches the document's schema.
//!
//! Any service's REST API can be run through it: [`schemathesis`] takes a [`Target`] (base
//! URL, document, token). The seed is fixed ([`DEFAULT_SEED`]) so that a run is the same for the
//! same code; `QUARTET_SCHEMATHESIS_SEED=random` explores and prints its seed, and
//! `QUARTET_SCHEMATHESIS_SEED=<n>` replays a run.

use std::path::PathBuf;

/// The seed of every run unless `QUARTET_SCHEMATHESIS_SEED` names another.
pub const DEFAULT_SEED: u64 = 20_261_204;
use std::time::Duration;

use anyhow::{Context as _, bail};

/// Every answer as documented: no 5xx, a listed status, the listed content type, a body that
/// matches the schema.
pub const CONFORMANCE: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";

/// Only: no 5xx.
pub const NO_SERVER_ERROR: &str = "not_a_server_error";

/// How one run is bounded.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Generated requests per operation and phase (schemathesis `--max-examples`).
    pub max_examples: u32,
    /// The whole run is stopped, and fails, after this long.
    pub timeout: Duration,
    /// The schemathesis checks every answer must pass: [`CONFORMANCE`] or [`NO_SERVER_ERROR`].
    pub checks: &'static str,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            max_examples: 10,
            timeout: Duration::from_secs(150),
            checks: CONFORMANCE,
        }
    }
}

/// The `st` command of the test venv.
async fn st() -> PathBuf {
    PathBuf::from(crate::python().await).with_file_name("st")
}

/// What a run is pointed at.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The REST API's base URL, e.g. `http://127.0.0.1:7121`.
    pub base_url: &'a str,
    /// The path of its OpenAPI document under `base_url`: [`KIT_DOCUMENT`] for every kit
    /// server; fetched with the token too.
    pub document: &'a str,
    /// The bearer token every request carries.
    pub token: &'a str,
    /// Operations whose path matches this are skipped (schemathesis `--exclude-path-regex`),
    /// e.g. ones that would end the token's own session; say why where it is set.
    pub exclude_path_regex: Option<&'a str>,
    /// Operations, as regular expressions over `METHOD /path`, whose 504 is not a server
    /// error: they wait for what the request names (an index applied, a learner caught up, a
    /// deadline the caller set) and a 504 says it did not happen within the wait. Each must
    /// document the 504; every other 5xx still fails the run.
    pub waits: &'a [&'a str],
}

/// Where every kit server serves its REST API's document.
pub const KIT_DOCUMENT: &str = "/openapi.json";

impl<'a> Target<'a> {
    /// The kit document of the REST API at `base_url`, every operation, with `token`.
    pub fn new(base_url: &'a str, token: &'a str) -> Self {
        Self {
            base_url,
            document: KIT_DOCUMENT,
            token,
            exclude_path_regex: None,
            waits: &[],
        }
    }
}

/// schemathesis.toml for `waits` (see [`Target::waits`]).
fn config(waits: &[&str]) -> String {
    waits
        .iter()
        .map(|name| {
            format!(
                "[[operations]]\ninclude-name-regex = {name:?}\nchecks.not_a_server_error.expected-statuses = [\"2xx\", \"3xx\", \"4xx\", \"504\"]\n\n"
            )
        })
        .collect()
}

/// Runs schemathesis against `target`, every request carrying `Authorization: Bearer
/// {token}`. Returns schemathesis' report when every check passed; fails with it otherwise.
pub async fn schemathesis(target: &Target<'_>, budget: &Budget) -> anyhow::Result<String> {
    let Target {
        base_url,
        document,
        token,
        exclude_path_regex,
        waits,
    } = *target;
    // A fixed seed unless asked: `make test` fails for the code, not for where a random walk
    // went that day. `QUARTET_SCHEMATHESIS_SEED=random` explores; a number replays.
    let seed = match std::env::var("QUARTET_SCHEMATHESIS_SEED").ok().as_deref() {
        Some("random") => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs()),
        Some(number) => number.parse::<u64>().unwrap_or(DEFAULT_SEED),
        None => DEFAULT_SEED,
    };
    let reports = tempfile::tempdir()?;
    let config_file = reports.path().join("schemathesis.toml");
    std::fs::write(&config_file, config(waits))?;
    let mut cmd = tokio::process::Command::new(st().await);
    cmd.arg("--config-file")
        .arg(&config_file)
        .args(["--no-color", "run"])
        .arg(format!("{base_url}{document}"))
        .args(["--url", base_url])
        .args(["--checks", budget.checks])
        .args(["--max-examples", &budget.max_examples.to_string()])
        .args(["--seed", &seed.to_string()])
        // One worker: with two threads hypothesis sometimes fails inside Python's `ast` module
        // ("AST constructor recursion depth mismatch"), an error of the tool, not a finding.
        .args(["--workers", "1", "--request-timeout", "10"])
        .args([
            "--suppress-health-check",
            "all",
            "--generation-database",
            "none",
        ])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .arg("--report-dir")
        .arg(reports.path());
    if let Some(regex) = exclude_path_regex {
        cmd.args(["--exclude-path-regex", regex]);
    }
    // Its own files (hypothesis database, reports) stay out of the repository.
    cmd.current_dir(reports.path())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let started = std::time::Instant::now();
    let out = tokio::time::timeout(budget.timeout, cmd.output())
        .await
        .with_context(|| {
            format!(
                "schemathesis did not finish within {:?} (seed {seed})",
                budget.timeout
            )
        })?
        .context("schemathesis runs (is it in e2e/requirements.txt?)")?;
    let report = format!(
        "schemathesis against {base_url}, seed {seed} (QUARTET_SCHEMATHESIS_SEED={seed} replays it), {:.0?}:\n{}{}",
        started.elapsed(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{report}");
    }
    Ok(report)
}
