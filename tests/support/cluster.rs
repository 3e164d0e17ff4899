//! A private, throwaway Redis Cluster per test (or example), on free loopback ports.
//!
//! [`RedisCluster::start`] runs `masters * (1 + replicas_per_master)` `redis-server`s with
//! `--cluster-enabled yes`, each with its own `--cluster-config-file` in a temp dir, joins them
//! with `redis-cli --cluster create ... --cluster-replicas N --cluster-yes` and waits until every
//! node reports `cluster_state:ok` and every replica is in sync. `cluster-node-timeout` is
//! 1000 ms (and `cluster-replica-validity-factor 0`), so after [`RedisCluster::kill_master`] a
//! replica is promoted within a few seconds; [`RedisCluster::wait_for_failover`] waits for that.
//! Without replicas a killed master's slots stay unserved (and, with the default
//! `cluster-require-full-coverage yes`, the whole cluster answers `CLUSTERDOWN`).
//!
//! Every node is SIGKILLed and the temp dir removed on drop. Talks to the nodes with the
//! `redis` crate's blocking API: call it from a plain thread, `spawn_blocking` or
//! `block_in_place`, not directly from an async task.

use std::fs::{self, File};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the whole cluster may take to start and report `cluster_state:ok`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// `cluster-node-timeout`, in milliseconds.
pub const NODE_TIMEOUT_MS: u64 = 1000;

static DIRS: AtomicU64 = AtomicU64::new(0);

fn server_binary() -> PathBuf {
    match std::env::var_os(super::REDIS_SERVER_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("redis-server"),
    }
}

/// `redis-cli` next to the configured `redis-server`, else on PATH.
fn cli_binary() -> PathBuf {
    let server = server_binary();
    if let Some(dir) = server.parent().filter(|d| !d.as_os_str().is_empty()) {
        let cli = dir.join("redis-cli");
        if cli.exists() {
            return cli;
        }
    }
    PathBuf::from("redis-cli")
}

/// Whether the server takes `--cluster-port` (Redis 7.0 and later, every Valkey). Redis 6.2
/// has no such option: its cluster bus is always on client port + 10000.
fn has_cluster_port_option() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        let out = Command::new(server_binary())
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {:?} --version: {e}", server_binary()));
        let version = String::from_utf8_lossy(&out.stdout).into_owned();
        // "Redis server v=6.2.14 sha=..." or "Valkey server v=8.1.8 sha=...".
        let major = version
            .split_whitespace()
            .find_map(|w| w.strip_prefix("v="))
            .and_then(|v| v.split('.').next()?.parse::<u32>().ok())
            .unwrap_or_else(|| {
                panic!(
                    "cannot read the version of {:?}: {version:?}",
                    server_binary()
                )
            });
        !version.starts_with("Redis ") || major >= 7
    })
}

/// `count` (client port, cluster bus port) pairs of free loopback ports, all distinct: with
/// `--cluster-port` any free ports; without it the bus is client port + 10000, so both are
/// checked free (and the client port is at most 55535).
fn free_node_ports(count: usize) -> Vec<(u16, u16)> {
    if has_cluster_port_option() {
        let ports = free_ports(count * 2);
        return ports.chunks(2).map(|p| (p[0], p[1])).collect();
    }
    let mut held: Vec<TcpListener> = Vec::new();
    let mut pairs = Vec::with_capacity(count);
    for _ in 0..10_000 {
        if pairs.len() == count {
            break;
        }
        let port = fastrand::u16(20_000..55_000);
        let (Ok(a), Ok(b)) = (
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)),
            TcpListener::bind((Ipv4Addr::LOCALHOST, port + 10_000)),
        ) else {
            continue;
        };
        held.extend([a, b]);
        pairs.push((port, port + 10_000));
    }
    assert_eq!(
        pairs.len(),
        count,
        "cannot find {count} free loopback ports P with P + 10000 free too"
    );
    pairs
}

/// `count` distinct free loopback ports, all bound at once so they differ.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0 to pick a free port: {e}"))
        })
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local_addr of a bound socket").port())
        .collect()
}

fn temp_dir() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = DIRS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "cacheobj-test-cluster-{}-{nanos}-{n}",
        std::process::id()
    ));
    fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create temp dir {}: {e}", dir.display()));
    dir
}

/// One `redis-server` of the cluster.
struct Node {
    port: u16,
    child: Child,
    killed: bool,
}

impl Node {
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

/// A line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: String,
    pub port: u16,
    pub master: bool,
    pub failed: bool,
    /// First slot of each slot range this node serves (masters only).
    pub slots: Vec<(u16, u16)>,
}

fn parse_nodes(text: &str) -> Vec<NodeInfo> {
    text.lines()
        .filter_map(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() < 8 {
                return None;
            }
            // 127.0.0.1:7000@17000[,hostname]
            let addr = parts[1].split('@').next()?;
            let port = addr.rsplit(':').next()?.parse().ok()?;
            let flags = parts[2];
            let slots = parts[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| {
                    let mut it = s.splitn(2, '-');
                    let start: u16 = it.next()?.parse().ok()?;
                    let end: u16 = it.next().map_or(Some(start), |e| e.parse().ok())?;
                    Some((start, end))
                })
                .collect();
            Some(NodeInfo {
                id: parts[0].to_owned(),
                port,
                master: flags.split(',').any(|f| f == "master"),
                failed: flags.split(',').any(|f| f == "fail" || f == "fail?"),
                slots,
            })
        })
        .collect()
}

/// A throwaway Redis Cluster on loopback: killed and removed on drop.
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
    pub masters: usize,
    pub replicas_per_master: usize,
}

impl RedisCluster {
    /// Three masters, no replicas: a killed master's slots stay down.
    pub fn start_masters_only() -> RedisCluster {
        RedisCluster::start(3, 0)
    }

    /// Three masters with one replica each (six nodes): a killed master's replica takes over.
    pub fn start_with_replicas() -> RedisCluster {
        RedisCluster::start(3, 1)
    }

    /// Starts `masters` masters with `replicas_per_master` replicas each and waits until the
    /// cluster is ready. Retries with new ports if a port was taken in between.
    pub fn start(masters: usize, replicas_per_master: usize) -> RedisCluster {
        assert!(masters >= 3, "redis-cli --cluster create needs 3 masters");
        RedisCluster::retry(|| RedisCluster::try_start(masters, replicas_per_master, true))
    }

    /// One node with `--cluster-enabled yes` that serves no slot (`CLUSTER SLOTS` is empty,
    /// every key command answers `CLUSTERDOWN`) until it is given some, e.g. with
    /// `CLUSTER ADDSLOTS 0 1 ... 16383` (a cluster of one master).
    pub fn start_without_slots() -> RedisCluster {
        RedisCluster::retry(|| RedisCluster::try_start(1, 0, false))
    }

    fn retry(mut start: impl FnMut() -> Result<RedisCluster, String>) -> RedisCluster {
        let mut last = String::new();
        for _ in 0..3 {
            match start() {
                Ok(cluster) => return cluster,
                Err(e) => last = e,
            }
        }
        panic!("could not start a throwaway redis cluster: {last}");
    }

    fn try_start(
        masters: usize,
        replicas_per_master: usize,
        create: bool,
    ) -> Result<RedisCluster, String> {
        let count = masters * (1 + replicas_per_master);
        let dir = temp_dir();
        let ports = free_node_ports(count);
        let mut cluster = RedisCluster {
            nodes: Vec::with_capacity(count),
            dir: dir.clone(),
            masters,
            replicas_per_master,
        };
        for &(port, bus) in &ports {
            let bus_args = if has_cluster_port_option() {
                vec!["--cluster-port".to_owned(), bus.to_string()]
            } else {
                Vec::new() // the bus is port + 10000, checked free
            };
            let log = File::create(dir.join(format!("stdout-{port}.log")))
                .map_err(|e| format!("cannot create a log file in {}: {e}", dir.display()))?;
            let err = log.try_clone().map_err(|e| e.to_string())?;
            let child = Command::new(server_binary())
                .args(["--port", &port.to_string()])
                .args(&bus_args)
                .args(["--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .arg("--cluster-config-file")
                .arg(dir.join(format!("nodes-{port}.conf")))
                .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                .args(["--cluster-replica-validity-factor", "0"])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .args(["--daemonize", "no"])
                .arg("--dir")
                .arg(&dir)
                .arg("--logfile")
                .arg(dir.join(format!("redis-{port}.log")))
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(err))
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run {:?}: {e}. Install redis-server (it provides redis-cli)",
                        server_binary()
                    )
                });
            cluster.nodes.push(Node {
                port,
                child,
                killed: false,
            });
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        for i in 0..cluster.nodes.len() {
            let port = cluster.nodes[i].port;
            loop {
                if let Ok(Some(status)) = cluster.nodes[i].child.try_wait() {
                    cluster.nodes[i].killed = true;
                    return Err(format!(
                        "node on port {port} exited early ({status}): {}",
                        cluster.logs()
                    ));
                }
                if query(port, &redis::cmd("PING")).is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("node on port {port} never answered PING"));
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        if !create {
            return Ok(cluster);
        }
        let mut create = Command::new(cli_binary());
        create.args(["--cluster", "create"]);
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let out = create
            .args(["--cluster-replicas", &replicas_per_master.to_string()])
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run redis-cli: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        cluster.wait_ready(deadline)?;
        Ok(cluster)
    }

    /// Waits until every live node says `cluster_state:ok`, knows every node, and every
    /// replica's link to its master is up.
    fn wait_ready(&self, deadline: Instant) -> Result<(), String> {
        let count = self.nodes.len();
        loop {
            let ready = self.nodes.iter().filter(|n| !n.killed).all(|n| {
                let Ok(info) = query_string(n.port, redis::cmd("CLUSTER").arg("INFO")) else {
                    return false;
                };
                let Ok(repl) = query_string(n.port, redis::cmd("INFO").arg("replication")) else {
                    return false;
                };
                info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{count}"))
                    && info.contains("cluster_slots_assigned:16384")
                    && (repl.contains("role:master") || repl.contains("master_link_status:up"))
            });
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "cluster not ready within {READY_TIMEOUT:?}: {}",
                    self.describe()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis://127.0.0.1:<port>/` of every node started, masters and replicas (a killed node
    /// included: a client must cope with a dead seed node).
    pub fn nodes(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// Ports of the nodes still running.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| !n.killed)
            .map(|n| n.port)
            .collect()
    }

    /// `CLUSTER NODES` as seen by the first live node.
    pub fn topology(&self) -> Vec<NodeInfo> {
        for port in self.live_ports() {
            if let Ok(text) = query_string(port, redis::cmd("CLUSTER").arg("NODES")) {
                return parse_nodes(&text);
            }
        }
        Vec::new()
    }

    /// The serving masters (not flagged failed), ordered by their first slot.
    pub fn masters(&self) -> Vec<NodeInfo> {
        let mut masters: Vec<NodeInfo> = self
            .topology()
            .into_iter()
            .filter(|n| n.master && !n.failed && !n.slots.is_empty())
            .collect();
        masters.sort_by_key(|n| n.slots.iter().map(|s| s.0).min().unwrap_or(u16::MAX));
        masters
    }

    /// SIGKILLs the `i`-th serving master (ordered by first slot; 0 serves slot 0). Returns its
    /// port.
    pub fn kill_master(&mut self, i: usize) -> u16 {
        let masters = self.masters();
        let target = masters
            .get(i)
            .unwrap_or_else(|| panic!("no master #{i}: {masters:?}"))
            .port;
        self.kill_port(target);
        target
    }

    /// SIGKILLs the node on `port` and reaps it.
    pub fn kill_port(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node of this cluster on port {port}"));
        if matches!(node.child.try_wait(), Ok(None)) {
            let _ = node.child.kill();
        }
        let _ = node.child.wait();
        node.killed = true;
    }

    /// Freezes the node on `port` (SIGSTOP): its connections stay open, nothing is answered.
    pub fn pause_port(&self, port: u16) {
        self.signal_port(port, "STOP");
    }

    /// Unfreezes the node on `port` (SIGCONT).
    pub fn resume_port(&self, port: u16) {
        self.signal_port(port, "CONT");
    }

    fn signal_port(&self, port: u16, signal: &str) {
        let node = self
            .nodes
            .iter()
            .find(|n| n.port == port && !n.killed)
            .unwrap_or_else(|| panic!("no live node of this cluster on port {port}"));
        let pid = node.child.id();
        assert!(
            super::send_signal(pid, signal),
            "`kill -{signal} {pid}` failed (is the redis-server on port {port} still running?)"
        );
    }

    /// Waits until every slot is served by a live master and every live node says
    /// `cluster_state:ok`; returns how long that took. Only possible with replicas.
    pub fn wait_for_failover(&self, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        let live = self.live_ports();
        loop {
            let topo = self.topology();
            let covered: u32 = topo
                .iter()
                .filter(|n| n.master && !n.failed && live.contains(&n.port))
                .flat_map(|n| n.slots.iter())
                .map(|&(a, b)| u32::from(b) - u32::from(a) + 1)
                .sum();
            let ok = covered == 16384
                && live.iter().all(|&p| {
                    query_string(p, redis::cmd("CLUSTER").arg("INFO"))
                        .is_ok_and(|i| i.contains("cluster_state:ok"))
                });
            if ok {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "no failover within {timeout:?}: {}",
                    self.describe()
                ));
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// Runs a command on the master serving `key`'s slot (follows one MOVED).
    pub fn query_key(&self, cmd: &redis::Cmd, key: &[u8]) -> redis::RedisResult<redis::Value> {
        let mut last = None;
        for port in self.live_ports() {
            let slot: redis::RedisResult<i64> =
                query(port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
                    .and_then(|v| redis::from_redis_value(v).map_err(Into::into));
            let Ok(slot) = slot else { continue };
            let owner = self.masters().into_iter().find(|m| {
                m.slots
                    .iter()
                    .any(|&(a, b)| (a as i64..=b as i64).contains(&slot))
            });
            match owner {
                Some(m) => return query(m.port, cmd),
                None => last = Some(query(port, cmd)),
            }
        }
        last.unwrap_or_else(|| {
            Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "no live node",
            )))
        })
    }

    /// The nodes' view of the cluster, for failure messages.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for port in self.live_ports() {
            let info = query_string(port, redis::cmd("CLUSTER").arg("INFO"))
                .map(|i| {
                    i.lines()
                        .filter(|l| {
                            l.starts_with("cluster_state") || l.starts_with("cluster_slots_ok")
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_else(|e| format!("error: {e}"));
            out.push_str(&format!("\n  :{port} {info}"));
        }
        out.push_str(&format!("\n  topology: {:?}", self.topology()));
        out
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".log") {
                    if let Ok(s) = fs::read_to_string(entry.path()) {
                        out.push_str(&format!("--- {name} ---\n{s}"));
                    }
                }
            }
        }
        out
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            // Only signal a child that has not been reaped (its pid could be reused).
            if matches!(node.child.try_wait(), Ok(None)) {
                let _ = Command::new("kill")
                    .args(["-CONT", &node.child.id().to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                let _ = node.child.kill();
            }
            let _ = node.child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// One command on one node, over a fresh blocking connection with short timeouts.
pub fn query(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut conn = client.get_connection_with_timeout(Duration::from_millis(500))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    cmd.query(&mut conn)
}

fn query_string(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<String> {
    let v = query(port, cmd)?;
    Ok(redis::from_redis_value(v)?)
}
