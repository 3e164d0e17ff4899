//! Fault-under-load report: for each fault, a steady load of fetches from 64 tasks over 300
//! keys (loader: a 1 ms sleep; response_timeout 100 ms; retry_interval 500 ms), the fault
//! injected mid-way, and what callers saw: requests served, errors, loader calls, worst and
//! p99 latency, when hits resumed, and whether an `invalidate` issued during the fault ever
//! reported success without having happened.
//!
//! Faults: (a) SIGKILL one master of a 3-master + 3-replica Redis Cluster, (b) stop and
//! restart a standalone Redis, (c) SIGSTOP it for 1.5 s (longer than the response timeout),
//! then SIGCONT, (d) `CLIENT KILL TYPE normal`. Starts its own servers (never the machine's
//! Redis); needs `redis-server` and `redis-cli` on PATH (or `CACHEOBJ_REDIS_SERVER`).
//!
//! ```text
//! cargo run --release --example fault_report            # all four
//! cargo run --release --example fault_report -- pause   # cluster | restart | pause | client-kill
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "../tests/fault_load/mod.rs"]
mod fault_load;

use fault_load::{FaultKind, Plan};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    let all = [
        ("cluster", FaultKind::KillClusterMaster),
        ("restart", FaultKind::StopRestart),
        ("pause", FaultKind::Pause),
        ("client-kill", FaultKind::ClientKill),
    ];
    let mut failed = false;
    for (name, kind) in all {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == name) {
            continue;
        }
        let report = fault_load::run(Plan::report(kind)).await;
        print!("{}", report.render());
        let lied = report.invalidations.iter().filter(|i| i.lied()).count();
        if report.errors + report.wrong_values + report.hung + report.panics > 0 || lied > 0 {
            println!("   !! contract violated: fetch failed or an invalidate lied");
            failed = true;
        }
        if report.hits_resumed_after.is_none() {
            println!("   !! caching did not resume by itself");
            failed = true;
        }
        println!();
    }
    if failed {
        std::process::exit(1);
    }
}
