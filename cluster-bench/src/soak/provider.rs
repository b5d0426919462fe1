//! The provider under soak: a real `cluster provider` process, its port, what it uses
//! (resident memory, open file descriptors, read from `/proc`) and what it logs.

use crate::sys;
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// Longest wait for the provider's `listening` line.
const START_WAIT: Duration = Duration::from_secs(20);
/// Longest wait for a graceful exit after SIGTERM.
const STOP_WAIT: Duration = Duration::from_secs(15);
/// Log lines kept for the report.
const LAST_LINES: usize = 3;

/// What the provider uses at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Usage {
    /// Resident memory, KiB.
    pub(crate) rss_kib: u64,
    /// Open file descriptors.
    pub(crate) fds: usize,
}

impl Usage {
    /// The larger of each figure.
    pub(crate) fn max(self, other: Usage) -> Usage {
        Usage {
            rss_kib: self.rss_kib.max(other.rss_kib),
            fds: self.fds.max(other.fds),
        }
    }
}

/// What the provider wrote on stderr (its log), counted.
#[derive(Debug, Default)]
pub(crate) struct LogTally {
    lines: AtomicU64,
    bytes: AtomicU64,
    last: Mutex<Vec<String>>,
}

impl LogTally {
    /// Lines and bytes so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.lines.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// The last few lines.
    pub(crate) fn last_lines(&self) -> Vec<String> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record(&self, line: String) {
        self.lines.fetch_add(1, Ordering::Relaxed);
        self.bytes
            .fetch_add(line.len() as u64 + 1, Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.len() == LAST_LINES {
            last.remove(0);
        }
        last.push(line);
    }
}

/// A running `cluster provider`.
#[derive(Debug)]
pub(crate) struct ProviderProcess {
    child: Child,
    pid: u32,
    port: u16,
    log: Arc<LogTally>,
}

/// The `cluster` executable: `given` (`--cluster`, or `CLUSTER_EXE` set by `cluster soak`),
/// else `cluster` next to this executable.
pub(crate) fn cluster_exe(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        anyhow::ensure!(path.is_file(), "{} is not a file", path.display());
        return Ok(path);
    }
    let beside = std::env::current_exe()
        .context("finding this executable")?
        .with_file_name(format!("cluster{}", std::env::consts::EXE_SUFFIX));
    anyhow::ensure!(
        beside.is_file(),
        "the `cluster` executable was not found next to this one ({}); pass --cluster PATH, \
         or build it: `cargo build --release -p cluster-cli`",
        beside.display()
    );
    Ok(beside)
}

impl ProviderProcess {
    /// Starts `exe provider ARGS` (which must include `--json`, for the `listening` line)
    /// and waits until it listens. The provider is killed if this process dies (it is
    /// started through `cluster-bench exec-child`, which sets the parent-death signal
    /// and then becomes it), and when this handle is dropped.
    pub(crate) async fn start(exe: &Path, args: &[String]) -> anyhow::Result<Self> {
        let me = std::env::current_exe().context("finding this executable")?;
        let mut child = Command::new(me)
            .arg("exec-child")
            .arg(exe)
            .arg("provider")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} provider", exe.display()))?;
        let pid = child.id().context("the provider has no pid")?;
        let log = Arc::new(LogTally::default());
        let stderr = child.stderr.take().context("provider stderr")?;
        tokio::spawn(count_lines(stderr, Arc::clone(&log)));
        let stdout = child.stdout.take().context("provider stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let port = tokio::time::timeout(START_WAIT, async {
            while let Some(line) = lines.next_line().await? {
                let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if event["event"] == "listening" {
                    return event["port"]
                        .as_u64()
                        .and_then(|p| u16::try_from(p).ok())
                        .context("listening line without a port");
                }
            }
            anyhow::bail!("the provider exited before listening")
        })
        .await
        .context("no listening line from the provider in time")??;
        // Whatever else it prints is read and dropped, so that it never blocks on stdout.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            pid,
            port,
            log,
        })
    }

    /// The port it listens on (127.0.0.1).
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Its log on stderr, counted.
    pub(crate) fn log(&self) -> &LogTally {
        &self.log
    }

    /// Its memory and file descriptors now.
    pub(crate) fn usage(&self) -> anyhow::Result<Usage> {
        usage_of(self.pid)
    }

    /// Whether it is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then a bounded wait for a graceful exit (SIGKILL after it).
    ///
    /// # Errors
    ///
    /// It did not exit in time, or exited with a failure.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        match tokio::time::timeout(STOP_WAIT, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                anyhow::ensure!(status.success(), "the provider exited with {status}");
                Ok(())
            }
            Err(_) => {
                let _ = self.child.kill().await;
                anyhow::bail!("the provider did not exit within {STOP_WAIT:?} of SIGTERM")
            }
        }
    }
}

/// Memory and file descriptors of process `pid`.
pub(crate) fn usage_of(pid: u32) -> anyhow::Result<Usage> {
    Ok(Usage {
        rss_kib: sys::rss_kib_of(pid)?,
        fds: sys::open_fds_of(pid)?,
    })
}

async fn count_lines(stream: impl AsyncRead + Unpin, log: Arc<LogTally>) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        log.record(line);
    }
}

/// Replaces this process with `program ARGS`, killed when the soak that started it dies
/// (the parent-death signal survives `exec`).
///
/// # Errors
///
/// `program` could not be run.
pub(crate) fn exec_child(program: &Path, args: &[std::ffi::OsString]) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    sys::die_with_parent();
    let error = std::process::Command::new(program).args(args).exec();
    Err(error).with_context(|| format!("running {}", program.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_of_this_process() {
        let usage = usage_of(std::process::id()).unwrap();
        assert!(usage.rss_kib > 0 && usage.fds >= 3);
        let bigger = usage.max(Usage {
            rss_kib: usage.rss_kib + 1,
            fds: 0,
        });
        assert_eq!((bigger.rss_kib, bigger.fds), (usage.rss_kib + 1, usage.fds));
    }

    #[test]
    fn the_log_keeps_counts_and_the_last_lines() {
        let log = LogTally::default();
        for i in 0..5 {
            log.record(format!("line {i}"));
        }
        assert_eq!(log.counts(), (5, 35));
        assert_eq!(log.last_lines(), ["line 2", "line 3", "line 4"]);
    }
}
