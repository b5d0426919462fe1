//! The admin page in a real browser: headless Chromium driven through WebDriver
//! (chromedriver, started by the test on a free loopback port).
//!
//! Where Chromium or chromedriver is missing the tests say so on stderr and pass; with
//! `CLUSTER_REQUIRE_BROWSER=1` (CI sets it) a missing browser fails them instead.
//! `scripts/test.sh` installs both (`apt-get install chromium chromium-driver`).

mod common;

use common::gate::{dead_job, gated_worker, Gate};
use common::http::get;
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use network_cluster::prelude::*;
use network_cluster::rpc::AdminOptions;
use network_cluster::ConsumerEvent;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const ADMIN: &str = "browser-admin-token";
const VIEW: &str = "browser-view-token";

/// Chromium must be started with these here: the machine has no network, and without
/// them it stalls on background requests.
const CHROMIUM_ARGS: [&str; 10] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1500",
];

/// A headless Chromium session and the chromedriver behind it (killed on drop).
struct Browser {
    client: Client,
    _driver: Child,
    _profile: TempDir,
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn find(env: &str, candidates: &[&str]) -> Option<PathBuf> {
    std::env::var_os(env)
        .map(PathBuf::from)
        .into_iter()
        .chain(candidates.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

/// Starts chromedriver and a browser session, or explains loudly why it cannot (and
/// fails when `CLUSTER_REQUIRE_BROWSER=1`).
async fn browser(test: &str) -> Option<Browser> {
    let chromium = find(
        "CLUSTER_CHROMIUM",
        &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
    );
    let driver = find("CLUSTER_CHROMEDRIVER", &["/usr/bin/chromedriver"]);
    let (Some(chromium), Some(driver)) = (chromium, driver) else {
        let message = format!(
            "admin browser test `{test}` SKIPPED: no Chromium or chromedriver found \
             (apt-get install chromium chromium-driver, or set CLUSTER_CHROMIUM / \
             CLUSTER_CHROMEDRIVER)"
        );
        if std::env::var("CLUSTER_REQUIRE_BROWSER").as_deref() == Ok("1") {
            panic!("{message}; CLUSTER_REQUIRE_BROWSER=1 makes this a failure");
        }
        eprintln!("\n!!!!!!!! {message} !!!!!!!!\n");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut child = Command::new(&driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver starts");
    let stdout = child.stdout.take().expect("chromedriver's stdout");
    let mut lines = BufReader::new(stdout).lines();
    within("chromedriver to listen", async {
        while let Some(line) = lines.next_line().await.expect("chromedriver output") {
            if line.contains("started successfully") {
                return;
            }
        }
        panic!("chromedriver exited before it listened");
    })
    .await;
    // Keep reading its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let profile = TempDir(std::env::temp_dir().join(format!(
        "cluster-admin-browser-{}-{test}",
        std::process::id()
    )));
    let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
    args.push(format!("--user-data-dir={}", profile.0.display()));
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "binary": chromium, "args": args }),
    );
    let client = within(
        "a browser session",
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}")),
    )
    .await
    .expect("a WebDriver session");
    Some(Browser {
        client,
        _driver: child,
        _profile: profile,
    })
}

impl Browser {
    /// Waits (at most `limit`) for an element matching `css`. Every error before then is
    /// "not yet": besides "no such element", a page that is navigating (a form just
    /// submitted) answers "aborted by navigation", which fantoccini's own wait took as
    /// final.
    async fn element(&self, css: &str, limit: Duration) -> fantoccini::elements::Element {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self.client.find(Locator::Css(css)).await {
                Ok(found) => return found,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => panic!("no `{css}` within {limit:?}: {error}"),
            }
        }
    }

    async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// A service for the page to list.
#[cluster_service]
trait Inventory {
    async fn count(&self, sku: String) -> u32;
}

struct Shelf;

impl Inventory for Shelf {
    async fn count(&self, _sku: String) -> u32 {
        7
    }
}

/// A hub with the admin page and a worker of gated jobs.
async fn hub_and_worker() -> (Hub, Member, Arc<AtomicBool>, mpsc::UnboundedReceiver<u32>) {
    let hub = Hub::builder(local())
        .serve(InventoryServer::new(Shelf))
        .admin(AdminOptions::new(ADMIN).read_only_token(VIEW))
        .start()
        .await
        .expect("hub");
    let (worker, open, ran) = gated_worker(&hub, consumer(&hub, "worker-1")).await;
    (hub, worker, open, ran)
}

fn consumer(hub: &Hub, name: &str) -> network_cluster::transport::ConsumerBuilder {
    Consumer::builder()
        .host("127.0.0.1")
        .port(hub.provider().port())
        .parameter("name", name)
        .parameter("token", "consumer-secret")
        .max_attempts(0)
}

fn admin_url(hub: &Hub, token: &str) -> String {
    format!(
        "http://127.0.0.1:{}/admin?token={token}",
        hub.provider().port()
    )
}

fn screenshot_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("admin-screenshot.png")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_consumer_disconnects_it_and_requeues_a_dead_job() {
    let Some(browser) = browser("admin").await else {
        return;
    };
    let (hub, worker, open, mut ran) = hub_and_worker().await;
    browser
        .client
        .goto(&admin_url(&hub, ADMIN))
        .await
        .expect("load the page");
    browser.element("#role.admin", WAIT).await;
    let url = browser.client.current_url().await.expect("url");
    assert!(
        !url.as_str().contains("token"),
        "the token stays in the address: {url}"
    );

    // A consumer that connects appears within 2 s.
    let target = consumer(&hub, "browser-visible").build();
    let mut events = target.events();
    target.connect().await.expect("connect");
    let connected = Instant::now();
    let id = connection_named(hub.provider(), "browser-visible")
        .await
        .id();
    let row = format!("#connections tr[data-id=\"{id}\"]");
    browser.element(&row, Duration::from_secs(2)).await;
    assert!(connected.elapsed() <= Duration::from_secs(2));
    let text = browser
        .element(&row, WAIT)
        .await
        .text()
        .await
        .expect("row text");
    assert!(text.contains("name=browser-visible"), "{text}");
    assert!(text.contains("token=<redacted>"), "{text}");
    assert!(!text.contains("consumer-secret"), "{text}");

    // Pressing disconnect closes it, and the consumer sees the close.
    browser
        .element(&format!("{row} button.disconnect"), WAIT)
        .await
        .click()
        .await
        .expect("click disconnect");
    let close = within("the consumer's close", async {
        loop {
            if let Some(ConsumerEvent::Disconnect(info)) = events.recv().await {
                return info;
            }
        }
    })
    .await;
    assert_eq!(close.code, 1008);
    // Its text, not its rendering: the toast fades in, and a faded element has no text.
    let toast = browser.element("#toast.show", WAIT).await;
    let toast = toast.prop("textContent").await.unwrap().unwrap_or_default();
    assert!(toast.starts_with("done: disconnect"), "{toast}");

    // A dead job requeued from the page runs.
    let dead = dead_job(&hub, 7).await;
    let dead_row = format!("#dead tr[data-id=\"{dead}\"]");
    browser.element(&dead_row, WAIT).await;
    open.store(true, Ordering::SeqCst);
    browser
        .element(&format!("{dead_row} button.requeue"), WAIT)
        .await
        .click()
        .await
        .expect("click requeue");
    assert_eq!(within("the requeued job runs", ran.recv()).await, Some(7));

    // Some traffic for the screenshot: a member serving a service and subscribed, calls,
    // publications, more jobs, a dead letter, a few consumers.
    let shelf = Member::builder(consumer(&hub, "inventory-1"))
        .serve(InventoryServer::new(Shelf))
        .connect()
        .await
        .expect("member");
    let _orders = shelf
        .subscribe::<String>("orders.>")
        .await
        .expect("subscribe");
    let _eu = hub.subscribe::<String>("orders.eu.*").expect("subscribe");
    let inventory = shelf.client::<InventoryClient>().expect("client");
    for i in 0..50 {
        assert_eq!(inventory.count(format!("sku-{i}")).await, Ok(7));
        hub.publish("orders.eu.created", &format!("order {i}"))
            .expect("publish");
    }
    let mut handles = Vec::new();
    for n in 0..40 {
        handles.push(hub.jobs().submit(&Gate { n }).await.expect("submit"));
    }
    for handle in handles {
        within("a job", handle).await.expect("job");
    }
    open.store(false, Ordering::SeqCst);
    let _still_dead = dead_job(&hub, 99).await;
    let mut others = Vec::new();
    for i in 0..3 {
        others.push(
            consumer(&hub, &format!("node-{i}"))
                .connect()
                .await
                .expect("connect"),
        );
    }
    browser.element("#dead tr[data-id]", WAIT).await;
    browser
        .element("#connections tr[data-id]:nth-child(4)", WAIT)
        .await;
    let png = browser.client.screenshot().await.expect("screenshot");
    let path = screenshot_path();
    std::fs::create_dir_all(path.parent().expect("target dir")).expect("target dir");
    std::fs::write(&path, png).expect("write the screenshot");
    eprintln!("admin page screenshot: {}", path.display());

    browser.close().await;
    for c in others {
        c.shutdown().await;
    }
    worker.shutdown().await;
    target.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_token_sees_but_cannot_press() {
    let Some(browser) = browser("read-only").await else {
        return;
    };
    let (hub, worker, _open, _ran) = hub_and_worker().await;
    let bystander = consumer(&hub, "stays").connect().await.expect("connect");
    let dead = dead_job(&hub, 3).await;
    browser
        .client
        .goto(&admin_url(&hub, VIEW))
        .await
        .expect("load the page");
    browser.element("#role.read-only", WAIT).await;
    let id = connection_named(hub.provider(), "stays").await.id();
    let disconnect = browser
        .element(
            &format!("#connections tr[data-id=\"{id}\"] button.disconnect"),
            WAIT,
        )
        .await;
    let requeue = browser
        .element(
            &format!("#dead tr[data-id=\"{dead}\"] button.requeue"),
            WAIT,
        )
        .await;
    let delete = browser
        .element(&format!("#dead tr[data-id=\"{dead}\"] button.delete"), WAIT)
        .await;
    for button in [&disconnect, &requeue, &delete] {
        assert!(
            !button.is_enabled().await.expect("enabled?"),
            "a read-only button is enabled"
        );
        let _ = button.click().await;
    }
    // Even a request made by hand from the page is refused.
    let status = browser
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(arguments[0], { method: 'POST', headers: { Authorization: 'Bearer ' + arguments[1] } })
               .then((r) => done(r.status));",
            vec![
                serde_json::json!(format!("/admin/api/connections/{id}/disconnect")),
                serde_json::json!(VIEW),
            ],
        )
        .await
        .expect("a fetch from the page");
    assert_eq!(status, serde_json::json!(403));
    // Round trip the feed once more: nothing changed.
    browser.element("#live", WAIT).await;
    assert!(bystander.is_connected());
    assert_eq!(hub.jobs().dead_letters().len(), 1);
    browser.close().await;
    bystander.shutdown().await;
    worker.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_page_is_refused() {
    let Some(browser) = browser("no-token").await else {
        return;
    };
    let hub = Hub::builder(local())
        .admin(AdminOptions::new(ADMIN))
        .start()
        .await
        .expect("hub");
    let addr = hub.provider().local_addr();
    assert_eq!(get(addr, "/admin", None).await.status, 401);
    browser
        .client
        .goto(&format!("http://{addr}/admin"))
        .await
        .expect("load");
    let note = browser.element("#login #note", WAIT).await;
    assert_eq!(note.text().await.unwrap(), "This page needs a token.");
    assert!(browser
        .client
        .find(Locator::Css("#connections"))
        .await
        .is_err());
    // A wrong token gets the form again; the right one typed in opens the page.
    browser
        .client
        .goto(&format!("http://{addr}/admin?token=wrong"))
        .await
        .expect("load");
    let note = browser.element("#login #note", WAIT).await;
    assert_eq!(note.text().await.unwrap(), "That token is not valid.");
    let field = browser.element("#login input[name=token]", WAIT).await;
    field.send_keys(ADMIN).await.expect("type");
    browser
        .element("#login button", WAIT)
        .await
        .click()
        .await
        .expect("submit");
    browser.element("#role.admin", WAIT).await;
    browser.close().await;
    hub.shutdown().await;
}
