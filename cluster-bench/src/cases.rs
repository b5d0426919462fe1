//! What `cluster bench` runs: the plan the user asked for, and the cases (one row per
//! system each) it makes, workload by workload.

use crate::measure::STEADY_CYCLES;
use crate::report::Compare;
use crate::spec::{ClientKind, Setup, System, Workload};
use cluster_transport::Compressor;
use std::time::Duration;

/// What the metrics cases call the row they are compared with.
const METRICS_OFF: &str = "metrics off";
/// The sender counts of W1.
const W1_CONNS: [usize; 3] = [1, 16, 256];
/// Consumers of W3.
const W3_CONNS: usize = 100;
/// W4 calls in flight in the throughput case.
const W4_IN_FLIGHT: usize = 64;
/// W5 workers.
const W5_WORKERS: usize = 8;
/// W5 credits of each worker.
const W5_CREDITS: usize = 16;
/// W7 subscribers.
const W7_SUBSCRIBERS: usize = 100;
/// W8's hubs.
const W8_HUBS: usize = 3;
/// What the cluster-cost cases call the row they are compared with.
const STANDALONE: &str = "standalone";
/// Senders of the W1 TLS and compression cases (and of W1 with our consumer).
const W1_VARIANT_CONNS: usize = 16;
/// The preset of the compressed cases: no per-connection compression state.
const SHARED: Compressor = Compressor::Shared;
/// The preset of the W6 case that shows what per-connection compression state costs.
const DEDICATED: Compressor = Compressor::Dedicated4Kb;

/// What the user asked for.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Workloads, in order.
    pub(crate) workloads: Vec<Workload>,
    /// Systems each case runs against.
    pub(crate) systems: Vec<System>,
    /// Runs per case and system.
    pub(crate) runs: u32,
    /// Small counts for a smoke test.
    pub(crate) quick: bool,
    /// W6s: the heartbeat interval of both servers.
    pub(crate) heartbeat: Duration,
    /// The setups the typed workloads run in.
    pub(crate) setups: Vec<Setup>,
}

/// One case: a row per system in the report.
#[derive(Debug, Clone)]
pub(crate) struct Case {
    pub(crate) workload: Workload,
    pub(crate) name: String,
    pub(crate) unit: &'static str,
    pub(crate) conns: usize,
    /// W4: calls in flight; W5: credits of each worker.
    pub(crate) in_flight: usize,
    pub(crate) client: ClientKind,
    pub(crate) systems: Vec<System>,
    /// Serve and connect over TLS (our provider only).
    pub(crate) tls: bool,
    /// Our provider's permessage-deflate preset.
    pub(crate) compressor: Compressor,
    /// Our provider (or hub) with the Prometheus recorder installed and `/metrics` served.
    pub(crate) metrics: bool,
    /// W5d: the hub's jobs in a data directory (group commit).
    pub(crate) durable: bool,
    /// Our own row this case's ratio is taken against (the TLS, compression and metrics
    /// cases).
    pub(crate) compare: Option<Compare>,
    /// W6s: the servers' heartbeat interval.
    pub(crate) heartbeat: Option<Duration>,
    /// How the processes run (the typed workloads have a case per setup).
    pub(crate) setup: Setup,
    /// What the processes run: the workload itself, or for W8 the W4, W5 or W7 it runs
    /// across hubs (or on one, clustered or not, for the cluster-cost cases).
    pub(crate) part: Workload,
    /// How many hubs our system runs (W8 across hubs: 3).
    pub(crate) hubs: usize,
    /// Each run starts a NATS server, and our hubs join a cluster on it.
    pub(crate) nats: bool,
}

impl Case {
    /// The client code that generates the load against `system`: the case's against
    /// ours, the lean client (W5: the dispatcher's workers) against the baseline.
    pub(crate) fn client_for(&self, system: System) -> ClientKind {
        match system {
            System::Ours => self.client,
            System::Baseline if self.workload == Workload::W8 => ClientKind::Nats,
            System::Baseline => ClientKind::Lean,
        }
    }

    /// Whether the case is one of the typed workloads, which have a case per setup.
    pub(crate) fn is_typed(&self) -> bool {
        matches!(
            self.workload,
            Workload::W4 | Workload::W5 | Workload::W7 | Workload::W8
        )
    }
}

/// The cases of the plan.
pub(crate) fn cases(plan: &Plan) -> Vec<Case> {
    let case = |workload, name: String, unit, conns, client, systems: &[System]| Case {
        workload,
        name,
        unit,
        conns,
        in_flight: 0,
        client,
        systems: systems.to_vec(),
        tls: false,
        compressor: Compressor::Disabled,
        metrics: false,
        durable: false,
        compare: None,
        heartbeat: None,
        setup: Setup::Tuned,
        part: workload,
        hubs: 1,
        nats: false,
    };
    let versus = |case: &str, label| {
        Some(Compare {
            case: case.to_owned(),
            label,
        })
    };
    let all = &plan.systems[..];
    let ours: &[System] = if plan.systems.contains(&System::Ours) {
        &[System::Ours]
    } else {
        &[]
    };
    let mut out = Vec::new();
    for &workload in &plan.workloads {
        match workload {
            Workload::W1 => {
                for conns in W1_CONNS {
                    out.push(case(
                        workload,
                        format!("W1 ingest C={conns}"),
                        "messages/s",
                        conns,
                        ClientKind::Lean,
                        all,
                    ));
                }
                // Ours only: over TLS, and compressed. The lean client cannot compress, so
                // the compressed cases send with our consumer and compare with a plain
                // case sending with it too.
                if !ours.is_empty() {
                    let c = W1_VARIANT_CONNS;
                    let lean = format!("W1 ingest C={c}");
                    let consumer = format!("W1 ingest C={c} (our consumer)");
                    let w1 = |name: &str, client| {
                        case(workload, name.to_owned(), "messages/s", c, client, ours)
                    };
                    out.push(Case {
                        compare: versus(&lean, "lean client"),
                        ..w1(&consumer, ClientKind::Consumer)
                    });
                    out.push(Case {
                        tls: true,
                        compare: versus(&lean, "plain"),
                        ..w1(&format!("{lean} tls"), ClientKind::Lean)
                    });
                    out.push(Case {
                        compressor: SHARED,
                        compare: versus(&consumer, "plain"),
                        ..w1(&format!("{lean} deflate"), ClientKind::Consumer)
                    });
                    out.push(Case {
                        tls: true,
                        compressor: SHARED,
                        compare: versus(&consumer, "plain"),
                        ..w1(&format!("{lean} tls+deflate"), ClientKind::Consumer)
                    });
                    out.push(Case {
                        metrics: true,
                        compare: versus(&lean, METRICS_OFF),
                        ..w1(&format!("{lean} metrics"), ClientKind::Lean)
                    });
                }
            }
            Workload::W2 => {
                out.push(case(
                    workload,
                    "W2 echo".into(),
                    "round trips/s",
                    1,
                    ClientKind::Lean,
                    all,
                ));
                if !ours.is_empty() {
                    out.push(case(
                        workload,
                        "W2 echo (our consumer)".into(),
                        "round trips/s",
                        1,
                        ClientKind::Consumer,
                        ours,
                    ));
                }
            }
            Workload::W3 => {
                out.push(case(
                    workload,
                    "W3 broadcast".into(),
                    "deliveries/s",
                    W3_CONNS,
                    ClientKind::Lean,
                    all,
                ));
            }
            // The typed layer, once per setup. W4 and W7 have no baseline; W5's is the
            // bare credit dispatcher; W8's are bare async-nats clients.
            Workload::W4 | Workload::W5 | Workload::W7 | Workload::W8 => {
                for &setup in &plan.setups {
                    let named = |name: String| match setup {
                        Setup::Tuned => name,
                        Setup::Default => format!("{name} (default setup)"),
                    };
                    let typed = |name: String, unit, conns, systems: &[System]| Case {
                        setup,
                        ..case(
                            workload,
                            named(name),
                            unit,
                            conns,
                            ClientKind::Member,
                            systems,
                        )
                    };
                    match workload {
                        Workload::W4 if !ours.is_empty() => {
                            for (name, in_flight) in [
                                ("W4 rpc in-flight 1".to_owned(), 1),
                                (format!("W4 rpc {W4_IN_FLIGHT} in flight"), W4_IN_FLIGHT),
                            ] {
                                let w4 = |name| Case {
                                    in_flight,
                                    ..typed(name, "calls/s", 1, ours)
                                };
                                out.push(w4(name.clone()));
                                if setup == Setup::Tuned {
                                    out.push(Case {
                                        metrics: true,
                                        compare: versus(&name, METRICS_OFF),
                                        ..w4(format!("{name} metrics"))
                                    });
                                }
                            }
                        }
                        Workload::W7 if !ours.is_empty() => {
                            let name = "W7 pub/sub".to_owned();
                            out.push(typed(name, "deliveries/s", W7_SUBSCRIBERS, ours));
                        }
                        Workload::W5 => {
                            let name = format!("W5 jobs {W5_WORKERS}x{W5_CREDITS} credits");
                            let w5 = |name, systems| Case {
                                in_flight: W5_CREDITS,
                                ..typed(name, "jobs/s", W5_WORKERS, systems)
                            };
                            out.push(w5(name.clone(), all));
                            if setup == Setup::Tuned && !ours.is_empty() {
                                out.push(Case {
                                    metrics: true,
                                    compare: versus(&name, METRICS_OFF),
                                    ..w5(format!("{name} metrics"), ours)
                                });
                                out.push(Case {
                                    durable: true,
                                    compare: versus(&name, "in memory"),
                                    ..w5(
                                        format!(
                                            "W5d jobs {W5_WORKERS}x{W5_CREDITS} credits durable"
                                        ),
                                        ours,
                                    )
                                });
                            }
                        }
                        Workload::W8 => {
                            let w8 =
                                |name: &str, part, unit, conns, in_flight, systems: &[System]| {
                                    Case {
                                        part,
                                        in_flight,
                                        hubs: W8_HUBS,
                                        nats: true,
                                        ..typed(name.to_owned(), unit, conns, systems)
                                    }
                                };
                            out.push(w8(
                                "W8 pub/sub across 3 hubs",
                                Workload::W7,
                                "deliveries/s",
                                W7_SUBSCRIBERS,
                                0,
                                all,
                            ));
                            if !ours.is_empty() {
                                for (name, in_flight) in [
                                    ("W8 rpc in-flight 1 to another hub", 1),
                                    ("W8 rpc 64 in flight to another hub", W4_IN_FLIGHT),
                                ] {
                                    out.push(w8(name, Workload::W4, "calls/s", 1, in_flight, ours));
                                }
                            }
                            out.push(w8(
                                "W8 jobs 8x16 credits on JetStream",
                                Workload::W5,
                                "jobs/s",
                                W5_WORKERS,
                                W5_CREDITS,
                                all,
                            ));
                            // What cluster mode costs one hub when all traffic is local:
                            // the same hub with and without a cluster on NATS, tuned.
                            if setup != Setup::Tuned || ours.is_empty() {
                                continue;
                            }
                            for (part, name, unit, conns, in_flight) in [
                                (Workload::W4, "W4 rpc in-flight 1", "calls/s", 1, 1),
                                (
                                    Workload::W4,
                                    "W4 rpc 64 in flight",
                                    "calls/s",
                                    1,
                                    W4_IN_FLIGHT,
                                ),
                                (
                                    Workload::W7,
                                    "W7 pub/sub",
                                    "deliveries/s",
                                    W7_SUBSCRIBERS,
                                    0,
                                ),
                            ] {
                                let standalone = format!("W8 cost: {name}, 1 hub {STANDALONE}");
                                let one_hub = |name: String| Case {
                                    part,
                                    in_flight,
                                    ..typed(name, unit, conns, ours)
                                };
                                out.push(one_hub(standalone.clone()));
                                out.push(Case {
                                    nats: true,
                                    compare: versus(&standalone, STANDALONE),
                                    ..one_hub(format!("W8 cost: {name}, 1 hub clustered"))
                                });
                            }
                        }
                        _ => {}
                    }
                }
            }
            Workload::W6s => {
                let conns = if plan.quick { 500 } else { 5000 };
                out.push(Case {
                    heartbeat: Some(plan.heartbeat),
                    ..case(
                        workload,
                        format!("W6s idle x{conns} after {STEADY_CYCLES} heartbeats"),
                        "KB/conn",
                        conns,
                        ClientKind::Lean,
                        all,
                    )
                });
            }
            Workload::W6 => {
                let conns = if plan.quick { 500 } else { 5000 };
                let plain = format!("W6 idle x{conns}");
                out.push(case(
                    workload,
                    plain.clone(),
                    "connects/s",
                    conns,
                    ClientKind::Lean,
                    all,
                ));
                // Ours only: the same idle connections over TLS (the lean client), and
                // with permessage-deflate negotiated (our consumer: the lean client would
                // reject the provider's compressed frames).
                if !ours.is_empty() {
                    let w6 = |name: String, client| {
                        case(workload, name, "connects/s", conns, client, ours)
                    };
                    out.push(Case {
                        tls: true,
                        compare: versus(&plain, "plain"),
                        ..w6(format!("{plain} tls"), ClientKind::Lean)
                    });
                    for compressor in [SHARED, DEDICATED] {
                        let name = match compressor {
                            SHARED => format!("{plain} deflate"),
                            other => format!("{plain} deflate {}", other.name()),
                        };
                        out.push(Case {
                            compressor,
                            compare: versus(&plain, "plain"),
                            ..w6(name, ClientKind::Consumer)
                        });
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_cover_the_plan() {
        let plan = Plan {
            workloads: vec![
                Workload::W1,
                Workload::W2,
                Workload::W3,
                Workload::W4,
                Workload::W5,
                Workload::W6,
                Workload::W6s,
                Workload::W7,
            ],
            systems: vec![System::Ours, System::Baseline],
            runs: 3,
            quick: false,
            heartbeat: Duration::from_secs(4),
            setups: vec![Setup::Tuned],
        };
        let names: Vec<String> = cases(&plan).into_iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "W1 ingest C=1",
                "W1 ingest C=16",
                "W1 ingest C=256",
                "W1 ingest C=16 (our consumer)",
                "W1 ingest C=16 tls",
                "W1 ingest C=16 deflate",
                "W1 ingest C=16 tls+deflate",
                "W1 ingest C=16 metrics",
                "W2 echo",
                "W2 echo (our consumer)",
                "W3 broadcast",
                "W4 rpc in-flight 1",
                "W4 rpc in-flight 1 metrics",
                "W4 rpc 64 in flight",
                "W4 rpc 64 in flight metrics",
                "W5 jobs 8x16 credits",
                "W5 jobs 8x16 credits metrics",
                "W5d jobs 8x16 credits durable",
                "W6 idle x5000",
                "W6 idle x5000 tls",
                "W6 idle x5000 deflate",
                "W6 idle x5000 deflate dedicated-4kb",
                "W6s idle x5000 after 3 heartbeats",
                "W7 pub/sub"
            ]
        );
        // The TLS, compression and metrics cases run on ours only, each against a plain
        // row of ours.
        for case in cases(&plan) {
            let variant = case.tls || case.compressor.is_enabled() || case.metrics || case.durable;
            if variant {
                assert_eq!(case.systems, [System::Ours], "{}", case.name);
            }
            assert_eq!(
                variant || case.client == ClientKind::Consumer && case.workload == Workload::W1,
                case.compare.is_some(),
                "{}",
                case.name
            );
        }
        let both_setups = Plan {
            setups: vec![Setup::Tuned, Setup::Default],
            ..plan.clone()
        };
        let typed: Vec<(String, Setup, Vec<System>)> = cases(&both_setups)
            .into_iter()
            .filter(|c| c.is_typed() && !c.metrics && !c.durable)
            .map(|c| (c.name, c.setup, c.systems))
            .collect();
        let ours = vec![System::Ours];
        let all = vec![System::Ours, System::Baseline];
        assert_eq!(
            typed,
            [
                ("W4 rpc in-flight 1".into(), Setup::Tuned, ours.clone()),
                ("W4 rpc 64 in flight".into(), Setup::Tuned, ours.clone()),
                (
                    "W4 rpc in-flight 1 (default setup)".into(),
                    Setup::Default,
                    ours.clone()
                ),
                (
                    "W4 rpc 64 in flight (default setup)".into(),
                    Setup::Default,
                    ours.clone()
                ),
                ("W5 jobs 8x16 credits".into(), Setup::Tuned, all.clone()),
                (
                    "W5 jobs 8x16 credits (default setup)".into(),
                    Setup::Default,
                    all
                ),
                ("W7 pub/sub".into(), Setup::Tuned, ours.clone()),
                ("W7 pub/sub (default setup)".into(), Setup::Default, ours),
            ]
        );
        // Only the typed workloads have a default-setup case.
        assert!(cases(&both_setups)
            .iter()
            .all(|c| c.setup == Setup::Tuned || c.is_typed()));
        let baseline_only = Plan {
            systems: vec![System::Baseline],
            ..plan
        };
        assert!(cases(&baseline_only).iter().all(|c| {
            c.name != "W2 echo (our consumer)"
                && !c.tls
                && !c.compressor.is_enabled()
                && c.client_for(System::Baseline) == ClientKind::Lean
                && !matches!(c.workload, Workload::W4 | Workload::W7)
        }));
    }

    #[test]
    fn w8_runs_across_three_hubs_beside_bare_nats_and_prices_cluster_mode() {
        let plan = Plan {
            workloads: vec![Workload::W8],
            systems: vec![System::Ours, System::Baseline],
            runs: 1,
            quick: true,
            heartbeat: Duration::from_secs(1),
            setups: vec![Setup::Tuned, Setup::Default],
        };
        let all = cases(&plan);
        let rows: Vec<(&str, Workload, usize, usize, bool)> = all
            .iter()
            .map(|c| (c.name.as_str(), c.part, c.hubs, c.systems.len(), c.nats))
            .collect();
        assert_eq!(
            rows,
            [
                ("W8 pub/sub across 3 hubs", Workload::W7, 3, 2, true),
                (
                    "W8 rpc in-flight 1 to another hub",
                    Workload::W4,
                    3,
                    1,
                    true
                ),
                (
                    "W8 rpc 64 in flight to another hub",
                    Workload::W4,
                    3,
                    1,
                    true
                ),
                (
                    "W8 jobs 8x16 credits on JetStream",
                    Workload::W5,
                    3,
                    2,
                    true
                ),
                (
                    "W8 cost: W4 rpc in-flight 1, 1 hub standalone",
                    Workload::W4,
                    1,
                    1,
                    false
                ),
                (
                    "W8 cost: W4 rpc in-flight 1, 1 hub clustered",
                    Workload::W4,
                    1,
                    1,
                    true
                ),
                (
                    "W8 cost: W4 rpc 64 in flight, 1 hub standalone",
                    Workload::W4,
                    1,
                    1,
                    false
                ),
                (
                    "W8 cost: W4 rpc 64 in flight, 1 hub clustered",
                    Workload::W4,
                    1,
                    1,
                    true
                ),
                (
                    "W8 cost: W7 pub/sub, 1 hub standalone",
                    Workload::W7,
                    1,
                    1,
                    false
                ),
                (
                    "W8 cost: W7 pub/sub, 1 hub clustered",
                    Workload::W7,
                    1,
                    1,
                    true
                ),
                (
                    "W8 pub/sub across 3 hubs (default setup)",
                    Workload::W7,
                    3,
                    2,
                    true
                ),
                (
                    "W8 rpc in-flight 1 to another hub (default setup)",
                    Workload::W4,
                    3,
                    1,
                    true
                ),
                (
                    "W8 rpc 64 in flight to another hub (default setup)",
                    Workload::W4,
                    3,
                    1,
                    true
                ),
                (
                    "W8 jobs 8x16 credits on JetStream (default setup)",
                    Workload::W5,
                    3,
                    2,
                    true
                ),
            ]
        );
        for case in &all {
            assert!(case.is_typed(), "{}", case.name);
            // The baselines are bare NATS clients; a clustered row is held against the
            // same hub standalone.
            if case.systems.contains(&System::Baseline) {
                assert_eq!(case.client_for(System::Baseline), ClientKind::Nats);
            }
            let clustered_one_hub = case.nats && case.hubs == 1;
            assert_eq!(clustered_one_hub, case.compare.is_some(), "{}", case.name);
            if let Some(compare) = &case.compare {
                assert_eq!(compare.case, case.name.replace("clustered", STANDALONE));
            }
        }
    }
}
