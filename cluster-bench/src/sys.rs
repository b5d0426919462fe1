//! Process plumbing every bench and soak process shares: file-descriptor limit, dying with
//! the parent, reading RSS and CPU time, runtimes, and the stdin command channel of a child.

use crate::spec::Setup;
use anyhow::Context;
use rustix::process::{Resource, Rlimit, Signal};
use tokio::sync::mpsc;

/// Used when the hard limit is "unlimited": the kernel's usual `nr_open`.
const UNLIMITED_FALLBACK: u64 = 1 << 20;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit in force.
pub(crate) fn raise_nofile() -> u64 {
    let limit = rustix::process::getrlimit(Resource::Nofile);
    let target = limit.maximum.unwrap_or(UNLIMITED_FALLBACK);
    let wanted = Rlimit {
        current: Some(target),
        maximum: limit.maximum,
    };
    match rustix::process::setrlimit(Resource::Nofile, wanted) {
        Ok(()) => target,
        Err(error) => {
            tracing::warn!(cause = %error, "could not raise RLIMIT_NOFILE");
            limit.current.unwrap_or(target)
        }
    }
}

/// Asks the kernel to kill this process when the parent dies (a child never outlives the
/// bench, even when the bench is killed with SIGKILL).
pub(crate) fn die_with_parent() {
    if let Err(error) = rustix::process::set_parent_process_death_signal(Some(Signal::KILL)) {
        tracing::warn!(cause = %error, "could not set the parent-death signal");
    }
}

/// This process's resident set size in KiB (`VmRSS` of `/proc/self/status`).
pub(crate) fn rss_kib() -> anyhow::Result<u64> {
    vm_rss("/proc/self/status")
}

/// The resident set size of process `pid` in KiB.
pub(crate) fn rss_kib_of(pid: u32) -> anyhow::Result<u64> {
    vm_rss(&format!("/proc/{pid}/status"))
}

/// How many file descriptors process `pid` has open (entries of `/proc/<pid>/fd`).
pub(crate) fn open_fds_of(pid: u32) -> anyhow::Result<usize> {
    let dir = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&dir)
        .with_context(|| format!("reading {dir}"))?
        .count())
}

/// `VmRSS` in KiB from a `/proc/*/status` file.
fn vm_rss(path: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

/// CPU time this process's live threads have run, in ns (the first field of each
/// `/proc/self/task/*/schedstat`).
pub(crate) fn cpu_ns() -> anyhow::Result<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").context("reading /proc/self/task")? {
        let path = task?.path().join("schedstat");
        // A thread may end between listing and reading.
        let Ok(stat) = std::fs::read_to_string(&path) else {
            continue;
        };
        let run: u64 = stat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse().ok())
            .with_context(|| format!("bad {}", path.display()))?;
        total += run;
    }
    Ok(total)
}

/// The lines the parent writes to this child's stdin. When stdin ends (the parent closed
/// it or died) the process exits at once, whatever it is doing.
pub(crate) fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            // Nobody listening is fine: keep reading so that EOF still ends the process.
            let _ = tx.send(line);
        }
        std::process::exit(0);
    });
    rx
}

/// A multi-threaded runtime with the default worker count (one per CPU this process may
/// run on, so `taskset` shrinks it).
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// The runtime of a child process. In the tuned setup: current-thread where `single`
/// (W4's client: its one call chain gains nothing from a second worker thread, only
/// cross-thread wake-ups; W5's hub and workers: two processes on two cores, one thread
/// each instead of four threads waking each other across cores, where futex wake-ups
/// were 13% of a multi-thread profile), else multi-thread. In the default setup (a
/// library user's): always tokio's multi-thread runtime.
pub(crate) fn child_runtime(single: bool, setup: Setup) -> anyhow::Result<tokio::runtime::Runtime> {
    if single && setup == Setup::Tuned {
        single_thread_runtime()
    } else {
        runtime()
    }
}

/// A single-threaded runtime.
fn single_thread_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_rss_and_fds() {
        assert!(rss_kib().unwrap() > 0);
        assert!(rss_kib_of(std::process::id()).unwrap() > 0);
        // stdin, stdout, stderr at least.
        assert!(open_fds_of(std::process::id()).unwrap() >= 3);
    }

    #[test]
    fn reads_own_cpu_time() {
        let before = cpu_ns().unwrap();
        let mut x = 0u64;
        for i in 0..10_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        assert!(cpu_ns().unwrap() > before);
    }

    #[test]
    fn nofile_is_at_least_what_it_was() {
        let before = rustix::process::getrlimit(Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        assert!(raise_nofile() >= before.min(UNLIMITED_FALLBACK));
    }
}
