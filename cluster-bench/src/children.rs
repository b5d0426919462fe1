//! The parent's side of the child processes: spawning this binary again with a
//! [`ChildSpec`], the line protocol over stdin/stdout, and cleanup. Children are killed
//! when their handle is dropped (a timed-out run), and die by themselves when the parent
//! does (stdin ends, and the parent-death signal).

use crate::spec::{ChildSpec, ClientSpec, ServerSpec};
use anyhow::Context;
use std::collections::VecDeque;
use std::fmt;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// How long a child may take to exit once its stdin is closed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Which child a line is from or for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Who {
    /// The server child (W8: the first hub).
    Server,
    /// W8: another hub, by its index among them (1, 2).
    Hub(usize),
    /// The clients child.
    Clients,
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Who::Server => f.write_str("server"),
            Who::Hub(i) => write!(f, "hub {i}"),
            Who::Clients => f.write_str("clients"),
        }
    }
}

/// A line from a child, or `None` when its stdout ended.
type Line = (Who, Option<String>);

/// One child process.
#[derive(Debug)]
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
}

/// The server child (none for W8's baselines, whose server is NATS), W8's other hubs,
/// and, once started, the clients child of one run.
#[derive(Debug)]
pub(crate) struct Children {
    server: Option<Proc>,
    hubs: Vec<Proc>,
    clients: Option<Proc>,
    tx: mpsc::UnboundedSender<Line>,
    rx: mpsc::UnboundedReceiver<Line>,
    /// Lines read while waiting for another one.
    pending: VecDeque<(Who, String)>,
}

/// Starts `cluster-bench child <spec>` (the executable of the spec's setup, next to this
/// one) and forwards its stdout lines to `tx`.
fn spawn(spec: &ChildSpec, who: Who, tx: mpsc::UnboundedSender<Line>) -> anyhow::Result<Proc> {
    let name = format!("{}{}", spec.setup().exe(), std::env::consts::EXE_SUFFIX);
    let exe = std::env::current_exe()
        .context("finding this executable")?
        .with_file_name(&name);
    anyhow::ensure!(
        exe.is_file(),
        "{} is missing: the {} setup runs it; build both executables with `cargo build \
         --release -p cluster-bench`",
        exe.display(),
        spec.setup().name()
    );
    let mut child = Command::new(exe)
        .arg("child")
        .arg(serde_json::to_string(spec)?)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting the {who} child"))?;
    let stdout = child.stdout.take().context("child stdout")?;
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send((who, Some(line))).is_err() {
                return;
            }
        }
        let _ = tx.send((who, None));
    });
    let stdin = child.stdin.take();
    Ok(Proc { child, stdin })
}

impl Children {
    /// Starts a server child; returns it with the port it listens on.
    pub(crate) async fn start_server(spec: ServerSpec) -> anyhow::Result<(Self, u16)> {
        let mut children = Self::without_server();
        children.server = Some(spawn(
            &ChildSpec::Server(spec),
            Who::Server,
            children.tx.clone(),
        )?);
        let port = children.port_of(Who::Server).await?;
        Ok((children, port))
    }

    /// No child yet: the clients child alone will talk to a server the bench did not
    /// start (W8's baselines, to NATS).
    pub(crate) fn without_server() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            server: None,
            hubs: Vec::new(),
            clients: None,
            tx,
            rx,
            pending: VecDeque::new(),
        }
    }

    /// W8: starts another hub child ([`Who::Hub`]); returns its port.
    pub(crate) async fn start_hub(&mut self, spec: ServerSpec) -> anyhow::Result<u16> {
        let who = Who::Hub(self.hubs.len() + 1);
        self.hubs
            .push(spawn(&ChildSpec::Server(spec), who, self.tx.clone())?);
        self.port_of(who).await
    }

    /// The port of a server child's `PORT` line.
    async fn port_of(&mut self, who: Who) -> anyhow::Result<u16> {
        let port = self.expect(who, "PORT").await?;
        port.first()
            .and_then(|p| u16::try_from(*p).ok())
            .context("PORT line without a port")
    }

    /// The server children running: the server and W8's other hubs.
    pub(crate) fn servers(&self) -> Vec<Who> {
        let first = self.server.as_ref().map(|_| Who::Server);
        first
            .into_iter()
            .chain((1..=self.hubs.len()).map(Who::Hub))
            .collect()
    }

    /// Starts the clients child.
    pub(crate) fn start_clients(&mut self, spec: ClientSpec) -> anyhow::Result<()> {
        anyhow::ensure!(self.clients.is_none(), "clients already started");
        self.clients = Some(spawn(
            &ChildSpec::Clients(spec),
            Who::Clients,
            self.tx.clone(),
        )?);
        Ok(())
    }

    /// Writes one line to a child's stdin.
    pub(crate) async fn send(&mut self, who: Who, line: &str) -> anyhow::Result<()> {
        let proc = match who {
            Who::Server => self.server.as_mut(),
            Who::Hub(i) => i.checked_sub(1).and_then(|i| self.hubs.get_mut(i)),
            Who::Clients => self.clients.as_mut(),
        };
        let stdin = proc
            .and_then(|p| p.stdin.as_mut())
            .with_context(|| format!("{who} not running"))?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Waits for the line `tag …` from `who` and returns its numbers. An `ERROR` line or
    /// the end of either child fails the run. The caller bounds the wait.
    pub(crate) async fn expect(&mut self, who: Who, tag: &str) -> anyhow::Result<Vec<u128>> {
        let found = self
            .pending
            .iter()
            .position(|(w, line)| *w == who && line.split_whitespace().next() == Some(tag));
        let line = match found.and_then(|i| self.pending.remove(i)) {
            Some((_, line)) => line,
            None => loop {
                let (from, line) = self.rx.recv().await.context("children gone")?;
                let line = line.with_context(|| format!("the {from} child exited"))?;
                if line.starts_with("ERROR") {
                    anyhow::bail!("{from}: {line}");
                }
                if from == who && line.split_whitespace().next() == Some(tag) {
                    break line;
                }
                self.pending.push_back((from, line));
            },
        };
        line.split_whitespace()
            .skip(1)
            .map(|field| {
                field
                    .parse()
                    .with_context(|| format!("bad number in {line:?}"))
            })
            .collect()
    }

    /// Closes the children's stdin (they exit), waits briefly, kills what is left.
    pub(crate) async fn finish(mut self) {
        if let Some(clients) = self.clients.take() {
            stop(clients).await;
        }
        for proc in self.server.into_iter().chain(self.hubs) {
            stop(proc).await;
        }
    }
}

async fn stop(mut proc: Proc) {
    drop(proc.stdin.take());
    if tokio::time::timeout(EXIT_GRACE, proc.child.wait())
        .await
        .is_err()
    {
        let _ = proc.child.kill().await;
    }
}
