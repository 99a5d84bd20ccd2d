//! The kit's listeners in process: what a client of any Quartet server sees, and how a server
//! drains when asked to stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use quartet_kit::app::{Bound, Context, Listeners};
use quartet_kit::{ErrorKind, Problem, RestApi};
use serde::Deserialize;
use tokio::sync::{Notify, oneshot};

/// A body the sample API accepts.
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
struct Greeting {
    name: String,
}

/// Greets someone, or refuses an empty name with a problem document.
#[utoipa::path(post, path = "/v1/greet", request_body = Greeting, responses((status = 200, description = "Greeted")))]
async fn greet(body: web::Json<Greeting>) -> Result<HttpResponse, Problem> {
    if body.name.is_empty() {
        return Err(Problem::new(
            ErrorKind::InvalidArgument,
            "empty-name",
            "name must not be empty",
        ));
    }
    Ok(HttpResponse::Ok().body(format!("hello {}", body.name)))
}

/// How many items to show.
#[derive(Deserialize, utoipa::IntoParams)]
struct Page {
    /// At most this many.
    limit: u32,
}

/// An item, by number: a path and a query that must parse.
#[utoipa::path(get, path = "/v1/items/{id}", params(("id" = u64, Path, description = "Item"), Page),
    responses((status = 200, description = "The item"),
              (status = 404, description = "No such item", body = Problem)),
    security(("bearer" = [])))]
async fn item(id: web::Path<u64>, page: web::Query<Page>) -> Result<HttpResponse, Problem> {
    if *id > 10 {
        return Err(Problem::new(
            ErrorKind::NotFound,
            "no-item",
            format!("no item {id}"),
        ));
    }
    Ok(HttpResponse::Ok().body(format!("item {id}, limit {}", page.limit)))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(greet, item))]
struct SampleDoc;

/// A REST API with a handler that takes `work` and tells `started` when it begins.
fn sample_api(work: Duration, started: Arc<Notify>) -> RestApi {
    use utoipa::OpenApi;
    RestApi::new(
        move |cfg| {
            let started = started.clone();
            cfg.route("/v1/greet", web::post().to(greet))
                .route("/v1/items/{id}", web::get().to(item))
                .route(
                    "/v1/slow",
                    web::get().to(move || {
                        let started = started.clone();
                        async move {
                            started.notify_one();
                            tokio::time::sleep(work).await;
                            HttpResponse::Ok().body("finished")
                        }
                    }),
                );
        },
        SampleDoc::openapi(),
    )
}

struct Running {
    ctx: Context,
    admin: SocketAddr,
    http: SocketAddr,
    served: Served,
}

type Served = tokio::task::JoinHandle<Result<(), quartet_kit::app::ServeError>>;

/// Serves `listeners` on `ctx` in a task; the bound addresses once every listener is open.
async fn serve(ctx: &Context, listeners: Listeners) -> (Bound, Served) {
    let (tx, rx) = oneshot::channel::<Bound>();
    let serving = ctx.clone();
    let served = tokio::spawn(async move {
        serving
            .serve(listeners, move |bound| {
                let _ = tx.send(bound.clone());
            })
            .await
    });
    (rx.await.expect("listeners bound"), served)
}

async fn start(grace: Duration, api: RestApi) -> Running {
    let ctx = Context::new("quartet-test", grace);
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let listeners = Listeners {
        admin: loopback,
        grpc: None,
        http: Some((loopback, api)),
        tls: Default::default(),
    };
    let (bound, served) = serve(&ctx, listeners).await;
    Running {
        ctx,
        admin: bound.admin.expect("admin"),
        http: bound.http.expect("http"),
        served,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

#[tokio::test]
async fn a_stop_lets_in_flight_requests_finish_and_refuses_new_ones() {
    let started = Arc::new(Notify::new());
    let server = start(
        Duration::from_secs(10),
        sample_api(Duration::from_millis(800), started.clone()),
    )
    .await;
    let http = client();
    let slow_url = format!("http://{}/v1/slow", server.http);
    let slow = tokio::spawn({
        let http = http.clone();
        async move { http.get(slow_url).send().await }
    });
    started.notified().await;

    server.ctx.shutdown.trigger();
    // While the slow request drains, readiness reports the drain.
    let readyz = http
        .get(format!("http://{}/readyz", server.admin))
        .send()
        .await
        .expect("admin answers during drain");
    assert_eq!(readyz.status(), 503);
    let report: serde_json::Value = readyz.json().await.expect("json");
    assert_eq!(report["checks"][0]["detail"], "draining before exit");

    let response = slow
        .await
        .expect("join")
        .expect("in-flight request completes");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), "finished");

    server.served.await.expect("join").expect("clean stop");
    let refused = http
        .get(format!("http://{}/v1/info", server.http))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a stopped server must not accept connections"
    );
}

#[tokio::test]
async fn a_drain_that_outlasts_the_deadline_is_cut_short() {
    let started = Arc::new(Notify::new());
    let server = start(
        Duration::from_secs(1),
        sample_api(Duration::from_secs(60), started.clone()),
    )
    .await;
    server
        .ctx
        .shutdown
        .spawn(async { tokio::time::sleep(Duration::from_secs(60)).await });
    let slow_url = format!("http://{}/v1/slow", server.http);
    let _slow = tokio::spawn(async move { client().get(slow_url).send().await });
    started.notified().await;

    let stopping = Instant::now();
    server.ctx.shutdown.trigger();
    server
        .served
        .await
        .expect("join")
        .expect("a cut-short drain is still a clean stop");
    // Bounded by the 1 s deadline, not by the 60 s of work; the margin absorbs a slow machine.
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "took {:?}",
        stopping.elapsed()
    );
}

#[tokio::test]
async fn errors_are_problem_documents_and_the_api_describes_itself() {
    let server = start(
        Duration::from_secs(5),
        sample_api(Duration::ZERO, Arc::new(Notify::new())),
    )
    .await;
    let http = client();
    let base = format!("http://{}", server.http);

    let missing = http
        .get(format!("{base}/v1/nothing-here"))
        .send()
        .await
        .expect("request");
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
    let body: serde_json::Value = missing.json().await.expect("json");
    assert_eq!(body["type"], "urn:quartet:problem:no-route");
    assert_eq!(body["detail"], "no route for GET /v1/nothing-here");

    let malformed = http
        .post(format!("{base}/v1/greet"))
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .expect("request");
    assert_eq!(malformed.status(), 400);
    let body: serde_json::Value = malformed.json().await.expect("json");
    assert_eq!(body["type"], "urn:quartet:problem:bad-json");

    let empty = http
        .post(format!("{base}/v1/greet"))
        .json(&serde_json::json!({"name": ""}))
        .send()
        .await
        .expect("request");
    assert_eq!(empty.status(), 400);
    let body: serde_json::Value = empty.json().await.expect("json");
    assert_eq!(body["detail"], "name must not be empty");

    // A path or query that does not parse is a 400 problem naming it, as documented.
    for (url, kind) in [
        (format!("{base}/v1/items/-1?limit=2"), "bad-path"),
        (format!("{base}/v1/items/x?limit=2"), "bad-path"),
        (format!("{base}/v1/items/1?limit=-2"), "bad-query"),
        (format!("{base}/v1/items/1"), "bad-query"),
    ] {
        let refused = http.get(&url).send().await.expect("request");
        assert_eq!(refused.status(), 400, "{url}");
        assert_eq!(
            refused.headers()["content-type"],
            "application/problem+json",
            "{url}"
        );
        let body: serde_json::Value = refused.json().await.expect("json");
        assert_eq!(body["type"], format!("urn:quartet:problem:{kind}"), "{url}");
    }
    let found = http
        .get(format!("{base}/v1/items/1?limit=2"))
        .send()
        .await
        .expect("request");
    assert_eq!(found.text().await.expect("body"), "item 1, limit 2");

    let ok = http
        .post(format!("{base}/v1/greet"))
        .json(&serde_json::json!({"name": "ada"}))
        .send()
        .await
        .expect("request");
    assert_eq!(ok.text().await.expect("body"), "hello ada");

    let doc: serde_json::Value = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(doc["info"]["title"], "quartet-test REST API");
    assert!(doc["paths"]["/v1/greet"]["post"].is_object(), "{doc}");
    assert!(doc["paths"]["/v1/info"]["get"].is_object(), "{doc}");
    assert!(doc["components"]["schemas"]["Problem"].is_object(), "{doc}");
    // Completed by the kit: problems as problem+json, the refusals a guard and parsing add.
    let responses = &doc["paths"]["/v1/items/{id}"]["get"]["responses"];
    for status in ["400", "401", "403", "404"] {
        assert!(
            responses[status]["content"]["application/problem+json"].is_object(),
            "{status}: {responses}"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    let info: serde_json::Value = http
        .get(format!("{base}/v1/info"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(info["service"], "quartet-test");
    assert_eq!(info["ready"], true);

    let metrics = http
        .get(format!("http://{}/metrics", server.admin))
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    assert!(
        metrics.contains(r#"quartet_http_requests_total{listener="http",method="POST",route="/v1/greet",status="400"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"route="unmatched",status="404"} 1"#),
        "{metrics}"
    );

    let admin_doc: serde_json::Value = http
        .get(format!("http://{}/openapi.json", server.admin))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert!(
        admin_doc["paths"]["/readyz"]["get"].is_object(),
        "{admin_doc}"
    );
    server.ctx.shutdown.trigger();
    server.served.await.expect("join").expect("clean stop");
}

#[tokio::test]
async fn a_taken_port_fails_the_start_naming_the_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let ctx = Context::new("quartet-test", Duration::from_secs(1));
    let err = ctx
        .serve(
            Listeners {
                admin: addr,
                grpc: None,
                http: None,
                tls: Default::default(),
            },
            |_| {},
        )
        .await
        .expect_err("port is taken");
    assert!(
        err.to_string()
            .starts_with(&format!("cannot listen on {addr} (admin)")),
        "{err}"
    );
}

#[tokio::test]
async fn tls_listeners_speak_only_tls_and_a_bad_certificate_fails_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = quartet_e2e::self_signed_certificate(dir.path());
    let ctx = Context::new("quartet-test", Duration::from_secs(5));
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let listeners = Listeners {
        admin: loopback,
        grpc: Some((loopback, tonic::service::Routes::builder().routes())),
        http: Some((
            loopback,
            sample_api(Duration::from_millis(1), Arc::new(Notify::new())),
        )),
        tls: quartet_kit::app::ListenerTls {
            grpc: Some((cert.clone(), key.clone())),
            http: Some((cert.clone(), key.clone())),
        },
    };
    let (bound, served) = serve(&ctx, listeners).await;
    let (grpc, http) = (bound.grpc.expect("grpc"), bound.http.expect("http"));

    // REST over HTTPS, verified against the certificate; plain HTTP gets nowhere.
    let curl = |url: String| {
        let cert = cert.clone();
        async move {
            tokio::process::Command::new("curl")
                .args(["-sS", "--max-time", "10", "--cacert"])
                .arg(&cert)
                .args([
                    "-H",
                    "content-type: application/json",
                    "-d",
                    r#"{"name":"tls"}"#,
                ])
                .arg(url)
                .output()
                .await
                .expect("curl runs")
        }
    };
    let over_tls = curl(format!("https://localhost:{}/v1/greet", http.port())).await;
    assert_eq!(
        String::from_utf8_lossy(&over_tls.stdout),
        "hello tls",
        "{}",
        String::from_utf8_lossy(&over_tls.stderr)
    );
    let plain = curl(format!("http://127.0.0.1:{}/v1/greet", http.port())).await;
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("hello"));

    // gRPC over TLS: the health service answers a client that trusts the certificate.
    let channel = quartet_e2e::grpc_tls_channel(grpc.port(), &cert).await;
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health over TLS")
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    ctx.shutdown.trigger();
    served.await.expect("joined").expect("served");

    // A key that is not the certificate's: the start fails, naming the files.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).expect("mkdir");
    let (_, other_key) = quartet_e2e::self_signed_certificate(&other);
    let listeners = Listeners {
        admin: loopback,
        grpc: None,
        http: Some((
            loopback,
            sample_api(Duration::from_millis(1), Arc::new(Notify::new())),
        )),
        tls: quartet_kit::app::ListenerTls {
            grpc: None,
            http: Some((cert.clone(), other_key)),
        },
    };
    let refused = Context::new("quartet-test", Duration::from_secs(5))
        .serve(listeners, |_| {})
        .await
        .expect_err("a mismatched key");
    assert!(
        refused.to_string().contains("TLS for the http listener"),
        "{refused}"
    );
    assert!(refused.to_string().contains("cert.pem"), "{refused}");
}
