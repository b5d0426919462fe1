//! What the `cluster` binary's tests share: starting it, and reading its JSON event lines.

use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// How long a test waits for an event before it fails.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// The `cluster` binary with stdin, stdout and stderr piped, killed when dropped.
pub(crate) fn cluster() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cluster"));
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Starts `cmd`; the child and its stdout's lines.
pub(crate) fn spawn(cmd: &mut Command) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = cmd.spawn().unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

/// The next JSON line whose `event` is `event` (others are skipped).
pub(crate) async fn next_json(lines: &mut Lines<BufReader<ChildStdout>>, event: &str) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            let line = lines.next_line().await.unwrap().expect("process ended");
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if v["event"] == event {
                return v;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {event} event"))
}
