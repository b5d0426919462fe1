//! Subcommands that another executable implements, as cargo and git run theirs:
//! `cluster bench ARGS` runs `cluster-bench bench ARGS`, `cluster soak ARGS` runs
//! `cluster-bench soak ARGS`. The executable is looked for next
//! to `cluster` itself first (a cargo build or install puts both there), then on `PATH`.
//! This keeps the benchmark's dependencies (tokio-tungstenite, rcgen, jemalloc) out of the
//! CLI.

use anyhow::Context;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The executable behind `cluster bench` and `cluster soak`.
pub(crate) const BENCH_EXE: &str = "cluster-bench";
/// The environment variable that tells an external tool where this `cluster` is.
const CLUSTER_EXE_ENV: &str = "CLUSTER_EXE";

/// Everything after the subcommand's name, passed on untouched (`--help` included).
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub(crate) struct Args {
    /// Arguments for the external command.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

/// Runs `tool subcommand ARGS` in place of this process (on Unix: `exec`, so signals and
/// the exit status are the tool's own; elsewhere: as a child whose exit code is ours).
///
/// # Errors
///
/// The tool is not found (the message says how to build or install it), or it could not
/// be started.
pub(crate) fn run(tool: &str, subcommand: &str, args: Args) -> anyhow::Result<()> {
    let exe = find(tool)?;
    let mut command = Command::new(&exe);
    command.arg(subcommand).args(args.args);
    // The tool may run `cluster` itself (`cluster soak` starts `cluster provider`): this one.
    if let Ok(me) = std::env::current_exe() {
        command.env(CLUSTER_EXE_ENV, me);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let error = command.exec();
        Err(error).with_context(|| format!("running {}", exe.display()))
    }
    #[cfg(not(unix))]
    {
        let status = command
            .status()
            .with_context(|| format!("running {}", exe.display()))?;
        std::process::exit(status.code().unwrap_or(1))
    }
}

/// `tool` next to this executable, else the first on `PATH`.
fn find(tool: &str) -> anyhow::Result<PathBuf> {
    let file = format!("{tool}{}", std::env::consts::EXE_SUFFIX);
    let here = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(&file)));
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(&file));
    here.into_iter()
        .chain(on_path)
        .find(|candidate| is_executable(candidate))
        .with_context(|| {
            format!(
                "`{tool}` was not found next to this executable or on PATH; it is a separate \
                 executable: build it with `cargo build --release -p {tool}` in the \
                 network-cluster workspace (it lands next to `cluster` in target/release), \
                 or install it with `cargo install --path {tool}`"
            )
        })
}

/// Whether `path` is a file this process may run.
fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_says_how_to_get_it() {
        let error = find("cluster-no-such-tool").unwrap_err().to_string();
        assert!(
            error.contains("cargo build --release -p cluster-no-such-tool"),
            "{error}"
        );
        assert!(error.contains("cargo install"), "{error}");
    }

    #[test]
    fn finds_a_tool_on_path() {
        // `sh` is on PATH on every Unix this runs on.
        #[cfg(unix)]
        assert!(find("sh").is_ok());
    }
}
