//! Load generator: Herald against the naive baseline, on loopback, with real sockets (issue 9).
//!
//! Servers under test and their publish paths:
//! - `herald`: the `herald` binary as its own process, published over the HTTP API;
//! - `herald-notifier`: a herald `Server` inside this process (its own tokio runtime, threads
//!   named `herald-srv`), published through `Server::notifier()` — the production "bridge"
//!   path — from one dedicated thread (`herald-pub`); its clients still connect over real
//!   loopback sockets. Its CPU is read per thread from `/proc/self/task`; RSS is not isolated,
//!   so the idle scenario skips it;
//! - `baseline-small` / `baseline-default`: the `baseline_server` example as its own process,
//!   published over HTTP;
//! - `baseline-notifier`: the same example's code (tuned buffers) inside this process (threads
//!   named `baseline-srv`), published through its `App::publish_raw` from the same kind of
//!   dedicated thread — the like-for-like counterpart of `herald-notifier`;
//! - `floor-notifier`: no server at all, the floor under any in-process one: the publishing
//!   thread writes each frame into its user's sockets itself (see [`floor`]). It measures how
//!   much of a latency belongs to the generator, the kernel and the clients.
//!
//! Process servers' RSS and CPU are read from `/proc/<pid>` and hold nothing of the generator.
//! The generator opens WebSocket connections with real tokens, publishes (pipelined keep-alive
//! HTTP connections, or the notifier), embeds the intended send time, the target user and a
//! per-user counter in every payload, and checks every frame at the client: no loss, no
//! duplicate, no reordering, no misrouting. Latency is measured from the *intended* send time
//! (no coordinated omission), and also from the moment the publish was issued (the same
//! deliveries without the generator's own pacing delay).
//!
//! ```text
//! cargo build --release -p herald-core --bin herald --example baseline_server
//! cargo bench -p herald-core --bench loadgen -- --scenario idle --connections 10000
//! cargo bench -p herald-core --bench loadgen -- --scenario rate --rates 20000,50000,100000
//! cargo bench -p herald-core --bench loadgen -- --scenario all --quick
//! ```
//! Without `--scenario` it prints its usage and exits, so `cargo bench` and `cargo test
//! --all-targets` never start a long load by accident; CI runs only `cargo bench --no-run`.

use axum::serve::ListenerExt;
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use herald_core::auth::mint_token;
use herald_core::clock::TokioClock;
use herald_core::notifier::Notifier;
use herald_core::protocol::EventKind;
use herald_core::rng::SeededRng;
use herald_core::server::{disable_nagle, Server, ServerConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// The naive baseline, embedded for the in-process comparison (its `main` is unused here).
#[allow(dead_code)]
#[path = "../examples/baseline_server.rs"]
mod baseline;

/// The floor under any in-process server (`floor-notifier`): the publishing thread writes each
/// event frame into its user's sockets itself — blocking std sockets with `TCP_NODELAY` (as
/// herald sets), no task, channel, lock hand-off or wake between the publish and the kernel.
/// Nobody should run this as a server (one slow client blocks every publish, a dead one is
/// found only when a write fails); it answers one question: how low can an in-process server's
/// latency be under this generator on this machine, when the server does nothing at all?
mod floor {
    use serde_json::value::RawValue;
    use std::collections::HashMap;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

    /// Bound on a client's handshake and `hello`, so one silent client cannot stop the accepts.
    const HELLO_TIMEOUT_MS: u64 = 20_000;

    #[derive(Default)]
    struct UserEntry {
        seq: u64,
        sockets: Vec<WebSocket<TcpStream>>,
    }

    pub struct Floor {
        users: Mutex<HashMap<String, UserEntry>>,
        stopped: AtomicBool,
        addr: SocketAddr,
    }

    impl Floor {
        /// Listens on an ephemeral loopback port; one thread (`thread_name`) accepts, shakes
        /// hands, reads `hello` and registers the socket, one client at a time.
        pub fn start(thread_name: &str) -> (Arc<Floor>, SocketAddr) {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("local addr");
            let floor = Arc::new(Floor {
                users: Mutex::new(HashMap::new()),
                stopped: AtomicBool::new(false),
                addr,
            });
            let accepting = floor.clone();
            std::thread::Builder::new()
                .name(thread_name.to_string())
                .spawn(move || {
                    for stream in listener.incoming() {
                        if accepting.stopped.load(Ordering::Acquire) {
                            return;
                        }
                        // A client whose handshake fails sees its connection end and reports it.
                        if let Ok(stream) = stream {
                            let _ = accepting.accept(stream);
                        }
                    }
                })
                .expect("spawn the floor's accept thread");
            (floor, addr)
        }

        // The handshake callback's error type is tungstenite's (an HTTP response), not ours.
        #[allow(clippy::result_large_err)]
        fn accept(&self, stream: TcpStream) -> Result<(), String> {
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            stream
                .set_read_timeout(Some(Duration::from_millis(HELLO_TIMEOUT_MS)))
                .map_err(|e| e.to_string())?;
            let mut user = None;
            let mut ws = tungstenite::accept_hdr(stream, |request: &Request, response: Response| {
                user = request
                    .uri()
                    .query()
                    .and_then(|query| query.split('&').find_map(|pair| pair.strip_prefix("user=")))
                    .map(str::to_string);
                Ok(response)
            })
            .map_err(|e| e.to_string())?;
            let user = user.ok_or("no ?user=")?;
            loop {
                match ws.read().map_err(|e| e.to_string())? {
                    Message::Text(text) if text.contains("\"hello\"") => break,
                    _ => continue,
                }
            }
            let mut users = self.users.lock().unwrap();
            let entry = users.entry(user.clone()).or_default();
            let connection = format!("f-{}", entry.sockets.len());
            let welcome = super::baseline::encode_welcome_frame(&user, &connection, "floor", entry.seq);
            ws.send(Message::text(welcome)).map_err(|e| e.to_string())?;
            entry.sockets.push(ws);
            Ok(())
        }

        /// Bumps `user`'s seq and writes the frame into each of its sockets, on this thread.
        pub fn publish_raw(&self, user: &str, run: &str, kind: &str, data: &RawValue) {
            let mut users = self.users.lock().unwrap();
            if !users.contains_key(user) {
                users.insert(user.to_string(), UserEntry::default());
            }
            let entry = users.get_mut(user).expect("inserted above");
            entry.seq += 1;
            // The baseline's frame, encoded the same way.
            let message = Message::text(super::baseline::encode_event_frame(entry.seq, run, kind, data));
            entry.sockets.retain_mut(|ws| ws.send(message.clone()).is_ok());
        }

        /// Closes every socket and ends the accept thread.
        pub fn stop(&self) {
            self.stopped.store(true, Ordering::Release);
            self.users.lock().unwrap().clear();
            // Wakes the accept thread, which then sees `stopped`.
            let _ = TcpStream::connect(self.addr);
        }
    }
}

const JWT_SECRET: &str = "loadgen-jwt-secret-0123456789abcdef";
const API_KEY: &str = "loadgen-api-key-0123456789";
/// Pipelined requests in flight per HTTP publishing connection; the writer waits beyond it.
const HTTP_IN_FLIGHT_MAX: u64 = 512;
/// How long to wait for the last deliveries after the last publish before counting losses.
const DRAIN_TIMEOUT_MS: u64 = 15_000;
/// Bound on connecting, on `hello` → `welcome` and on every HTTP response.
const NETWORK_TIMEOUT_MS: u64 = 20_000;
/// Connections opened concurrently while building a population.
const CONNECT_CONCURRENCY_MAX: usize = 256;
/// Client read buffer: small, so 10,000 client sockets do not cost the machine 1.3 GB.
const CLIENT_READ_BUFFER_BYTES: usize = 16 * 1024;
/// The stalled scenario's request deadline for the herald binary, unless given.
const STALLED_REQUEST_TIMEOUT_MS: u64 = 2_000;
/// How long a stalled socket waits for the server to end it beyond the deadline before it
/// counts as kept open.
const STALLED_PATIENCE_MS: u64 = 10_000;
/// Users who connect while the stalled sockets are open.
const STALLED_USERS: u32 = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Scenario {
    /// (1) N idle connections: server RSS per connection.
    Idle,
    /// (2) 1,000 connections at fixed delivered rates: latency percentiles.
    Rate,
    /// (3) Raise the rate until latency or loss gives way: peak sustained delivered events/s.
    Peak,
    /// (4) A burst of 100,000 events to 100 users.
    Burst,
    /// (5) 1,000 clients reconnecting at once with resume (herald only).
    Resume,
    /// (extra) Sockets that never finish an HTTP request (half silent, half a request sent a
    /// byte at a time), against the process servers: does the server end them, how soon, and
    /// do users still connect meanwhile.
    Stalled,
    /// All of the above, in this order (with stalled among them, the herald binary gets the
    /// stalled scenario's request deadline in every scenario: see --http-request-timeout-ms).
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum ServerKind {
    /// The `herald` binary (own process), published over HTTP.
    Herald,
    /// A herald `Server` in this process, published through `Server::notifier()` from a thread.
    HeraldNotifier,
    /// `baseline_server --buffers default` (128 KiB tungstenite buffers).
    BaselineDefault,
    /// `baseline_server --buffers small` (1 KiB read buffer, no write buffer).
    BaselineSmall,
    /// The baseline's code with small buffers in this process, published through
    /// `App::publish_raw` from a thread: like for like with `HeraldNotifier`.
    BaselineNotifier,
    /// The floor under any in-process server: the publishing thread writes every frame into
    /// its user's sockets itself (no task, channel or wake in between). Not a server: it
    /// measures what is left of a latency when the server does nothing.
    FloorNotifier,
}

impl ServerKind {
    fn name(self) -> &'static str {
        match self {
            ServerKind::Herald => "herald",
            ServerKind::HeraldNotifier => "herald-notifier",
            ServerKind::BaselineDefault => "baseline-default",
            ServerKind::BaselineSmall => "baseline-small",
            ServerKind::BaselineNotifier => "baseline-notifier",
            ServerKind::FloorNotifier => "floor-notifier",
        }
    }

    /// Runs inside the generator's process (RSS not separable; published from a thread).
    fn in_process(self) -> bool {
        matches!(
            self,
            ServerKind::HeraldNotifier | ServerKind::BaselineNotifier | ServerKind::FloorNotifier
        )
    }

    /// Prefix of the in-process server's runtime thread names (`/proc/self/task/*/comm`).
    fn thread_name(self) -> &'static str {
        match self {
            ServerKind::BaselineNotifier => "baseline-srv",
            ServerKind::FloorNotifier => "floor-srv",
            _ => "herald-srv",
        }
    }
}

#[derive(Parser, Clone, Debug)]
#[command(about = "Herald vs naive baseline load generator (see BENCHMARKS.md)")]
struct Cli {
    /// Scenarios to run (comma-separated). Without it: print usage and exit.
    #[arg(long, value_enum, value_delimiter = ',')]
    scenario: Vec<Scenario>,
    /// Servers to compare, in the same run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "herald,herald-notifier,baseline-small,baseline-default,baseline-notifier"
    )]
    servers: Vec<ServerKind>,
    /// Connections for idle (default 10000), rate/peak/resume (default 1000).
    #[arg(long)]
    connections: Option<usize>,
    /// Connections (tabs) per user in rate/peak/resume; users = connections / tabs.
    #[arg(long, default_value_t = 2)]
    tabs: usize,
    /// Delivered events/s for the rate scenario (publishes/s = rate / tabs).
    #[arg(long, value_delimiter = ',', default_value = "20000,50000,100000")]
    rates: Vec<u64>,
    /// Delivered events/s steps tried by the peak scenario.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "20000,30000,40000,50000,60000,70000,80000,90000,100000,150000,200000,250000,300000,350000,400000,500000,600000,700000,800000,900000,1000000"
    )]
    peak_rates: Vec<u64>,
    /// A peak step passes if p99 stays at or below this (and nothing is lost).
    #[arg(long, default_value_t = 100.0)]
    peak_p99_ms_max: f64,
    /// Seconds of publishing per rate step.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Rate and peak scenarios: the first this many seconds of each run's events are verified but left
    /// out of the latency percentiles, e.g. to measure once herald's retention has filled (at
    /// 1,000 events per user) rather than while it grows. Part of `--duration-secs`.
    #[arg(long, default_value_t = 0.0)]
    warmup_secs: f64,
    /// Repeat every measurement this many times (interleaving servers) and report medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Short runs: duration 3 s, 1 run, 2,000 idle connections, fewer peak steps.
    #[arg(long)]
    quick: bool,
    /// Pipelined keep-alive HTTP connections used to publish.
    #[arg(long, default_value_t = 8)]
    http_connections: usize,
    /// Padding bytes in every event's data (an agent_thinking text).
    #[arg(long, default_value_t = 64)]
    payload_pad_bytes: usize,
    /// The `herald` binary (default: next to this bench, target/release/herald).
    #[arg(long)]
    herald_bin: Option<PathBuf>,
    /// The baseline binary (default: target/release/examples/baseline_server).
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
    /// The in-process publishing thread's pacing tick, µs: when nothing is due it sleeps this
    /// long, then publishes everything that fell due meanwhile. The default, 1 ms, is the
    /// resolution of tokio's timer, which paces the HTTP publisher, so both paths publish in
    /// the same bursts (and latency from the intended send time includes the wait either way).
    #[arg(long, default_value_t = 1_000)]
    notifier_tick_us: u64,
    /// The HTTP publishers' pacing tick, µs. 0 (the default): each publishing connection sleeps
    /// on tokio's timer (1 ms resolution) until its next event is due. Otherwise a dedicated
    /// thread wakes every publishing connection each tick, which lowers the generator's own
    /// pacing delay (the `pacing:` floor) at the cost of more, smaller HTTP writes.
    #[arg(long, default_value_t = 0)]
    http_tick_us: u64,
    /// Worker threads of the generator's runtime.
    #[arg(long, default_value_t = 2)]
    worker_threads: usize,
    /// The herald binary's `--http-request-timeout-ms` (its default when not given; the stalled
    /// scenario sets 2000 unless given, for every scenario of the invocation).
    #[arg(long)]
    http_request_timeout_ms: Option<u64>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let mut cli = Cli::parse();
    if cli.scenario.is_empty() {
        println!("loadgen: no --scenario given; nothing to do. Example:");
        println!("  cargo build --release -p herald-core --bin herald --example baseline_server");
        println!("  cargo bench -p herald-core --bench loadgen -- --scenario idle,rate,peak,burst,resume --quick");
        return;
    }
    if cli.scenario.contains(&Scenario::All) {
        cli.scenario = vec![
            Scenario::Idle,
            Scenario::Rate,
            Scenario::Peak,
            Scenario::Burst,
            Scenario::Resume,
            Scenario::Stalled,
        ];
    }
    if cli.scenario.contains(&Scenario::Stalled) && cli.http_request_timeout_ms.is_none() {
        cli.http_request_timeout_ms = Some(STALLED_REQUEST_TIMEOUT_MS);
    }
    if cli.quick {
        cli.duration_secs = cli.duration_secs.min(3.0);
        cli.runs = 1;
    }
    assert!(cli.tabs >= 1, "--tabs must be at least 1");
    assert!(cli.runs >= 1, "--runs must be at least 1");
    print_machine();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.worker_threads)
        .enable_all()
        .build()
        .expect("runtime");
    let cli = Arc::new(cli);
    for scenario in cli.scenario.clone() {
        let cli = cli.clone();
        runtime.block_on(async move {
            match scenario {
                Scenario::Idle => scenario_idle(&cli).await,
                Scenario::Rate => scenario_rate(&cli).await,
                Scenario::Peak => scenario_peak(&cli).await,
                Scenario::Burst => scenario_burst(&cli).await,
                Scenario::Resume => scenario_resume(&cli).await,
                Scenario::Stalled => scenario_stalled(&cli).await,
                Scenario::All => unreachable!(),
            }
        });
    }
}

fn print_machine() {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("# machine: {cpus} CPUs ({model}); loadavg at start: {}", load.trim());
}

// ---------------------------------------------------------------------------------------------
// Servers under test: child processes.

struct ServerProcess {
    kind: ServerKind,
    host: Host,
    addr: SocketAddr,
}

/// Where a server under test runs.
enum Host {
    /// Its own process.
    Child(Child),
    /// In this process, on its own runtime; published through `bridge`.
    InProcess {
        bridge: Bridge,
        runtime: Option<tokio::runtime::Runtime>,
    },
}

/// The in-process publishing entry of a server under test.
#[derive(Clone)]
enum Bridge {
    Herald { server: Server, notifier: Notifier },
    Baseline(Arc<baseline::App>),
    Floor(Arc<floor::Floor>),
}

impl Bridge {
    fn publish(&self, user: &str, run: &str, data: &serde_json::value::RawValue) -> Result<(), String> {
        match self {
            Bridge::Herald { notifier, .. } => notifier
                .publish_raw(user, run, EventKind::AgentThinking, data, None)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Bridge::Baseline(app) => {
                app.publish_raw(user, run, EventKind::AgentThinking.as_str(), data);
                Ok(())
            }
            Bridge::Floor(floor) => {
                floor.publish_raw(user, run, EventKind::AgentThinking.as_str(), data);
                Ok(())
            }
        }
    }
}

impl ServerProcess {
    fn pid(&self) -> u32 {
        match &self.host {
            Host::Child(child) => child.id(),
            Host::InProcess { .. } => std::process::id(),
        }
    }

    fn bridge(&self) -> Option<&Bridge> {
        match &self.host {
            Host::Child(_) => None,
            Host::InProcess { bridge, .. } => Some(bridge),
        }
    }

    /// RSS of the server's process; for an in-process server that includes the generator.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// CPU seconds of the server: its process, or the in-process server's runtime threads
    /// (the publishing thread is added by the caller, see `PublishReport::thread_cpu_secs`).
    fn cpu_secs(&self) -> f64 {
        match &self.host {
            Host::Child(child) => proc_cpu_secs(&format!("/proc/{}/stat", child.id())),
            Host::InProcess { .. } => threads_sum(self.kind.thread_name(), "stat", proc_cpu_secs),
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        match &mut self.host {
            Host::Child(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Host::InProcess { bridge, runtime } => {
                match bridge {
                    Bridge::Herald { server, .. } => server.shutdown(),
                    Bridge::Floor(floor) => floor.stop(),
                    Bridge::Baseline(_) => {}
                }
                if let Some(runtime) = runtime.take() {
                    if std::env::var_os("LOADGEN_RUNTIME_METRICS").is_some() {
                        print_runtime_metrics(self.kind, &runtime);
                    }
                    // Dropped from async code: shut down without blocking.
                    runtime.shutdown_background();
                }
            }
        }
    }
}

/// Diagnostic (`LOADGEN_RUNTIME_METRICS=1`): how often the in-process server's workers parked,
/// stole and polled over its life. Parks are the wake-ups a publish costs beyond the write
/// itself: each is a futex or epoll round trip and usually a context switch.
fn print_runtime_metrics(kind: ServerKind, runtime: &tokio::runtime::Runtime) {
    let metrics = runtime.metrics();
    for worker in 0..metrics.num_workers() {
        eprintln!(
            "  {} runtime worker {worker}: parks {} (woken for nothing {}) steals {} polls {} busy {:.2} s",
            kind.name(),
            metrics.worker_park_count(worker),
            metrics.worker_noop_count(worker),
            metrics.worker_steal_count(worker),
            metrics.worker_poll_count(worker),
            metrics.worker_total_busy_duration(worker).as_secs_f64()
        );
    }
}

/// Sum of `read(/proc/self/task/<tid>/<file>)` over this process's live threads whose name
/// starts with `prefix`.
fn threads_sum<T: std::iter::Sum + Default>(prefix: &str, file: &str, read: impl Fn(&str) -> T) -> T {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return T::default();
    };
    tasks
        .flatten()
        .map(|task| task.path())
        .filter(|path| {
            std::fs::read_to_string(path.join("comm"))
                .unwrap_or_default()
                .starts_with(prefix)
        })
        .map(|path| read(&path.join(file).to_string_lossy()))
        .sum()
}

/// utime + stime of a process, in seconds (CLK_TCK is 100 on Linux).
fn proc_cpu_secs(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Busy CPU seconds of the whole machine (all processes), from /proc/stat.
fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or("");
    let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = fields
        .iter()
        .enumerate()
        .filter(|(i, _)| !matches!(i, 3 | 4) && *i < 8)
        .map(|(_, v)| v)
        .sum();
    busy as f64 / 100.0
}

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_herald"))
        .parent()
        .expect("bin dir")
        .to_path_buf()
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Starts a herald `Server` (the binary's default configuration) or the baseline (small
/// buffers) in this process on its own runtime with tokio's default worker count, like the
/// binaries.
fn start_in_process_server(kind: ServerKind) -> ServerProcess {
    if kind == ServerKind::FloorNotifier {
        let (floor, addr) = floor::Floor::start(kind.thread_name());
        return ServerProcess {
            kind,
            host: Host::InProcess {
                bridge: Bridge::Floor(floor),
                runtime: None,
            },
            addr,
        };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name(kind.thread_name())
        .enable_all()
        .build()
        .expect("server runtime");
    if kind == ServerKind::BaselineNotifier {
        let app = baseline::App::new(baseline::Buffers::Small);
        let addr = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("local addr");
            let router = baseline::router(app.clone());
            // Decomposition (`LOADGEN_BASELINE_NODELAY=1`): the baseline with the one socket
            // option herald's binary sets, to show how much of a difference is that option.
            let nodelay = std::env::var_os("LOADGEN_BASELINE_NODELAY").is_some();
            let listener = listener.tap_io(move |stream| {
                if nodelay {
                    disable_nagle(stream);
                }
            });
            tokio::spawn(async move { axum::serve(listener, router).await });
            addr
        });
        return ServerProcess {
            kind,
            host: Host::InProcess {
                bridge: Bridge::Baseline(app),
                runtime: Some(runtime),
            },
            addr,
        };
    }
    let config = ServerConfig::new(JWT_SECRET.as_bytes().to_vec(), API_KEY.to_string());
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let (server, addr) = runtime.block_on(async {
        let clock = TokioClock::shared(unix_ms);
        let server = Server::new(config, clock, SeededRng::new(unix_ms)).expect("server config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        // As the `herald` binary serves.
        tokio::spawn(server.clone().serve(listener.tap_io(disable_nagle)));
        (server, addr)
    });
    let notifier = server.notifier();
    ServerProcess {
        kind,
        host: Host::InProcess {
            bridge: Bridge::Herald { server, notifier },
            runtime: Some(runtime),
        },
        addr,
    }
}

async fn start_server(cli: &Cli, kind: ServerKind) -> ServerProcess {
    if kind.in_process() {
        // Built outside the generator's runtime (a runtime cannot be built from inside one).
        let server = tokio::task::block_in_place(|| start_in_process_server(kind));
        tokio::time::sleep(Duration::from_millis(300)).await;
        return server;
    }
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut command = match kind {
        ServerKind::HeraldNotifier | ServerKind::BaselineNotifier | ServerKind::FloorNotifier => {
            unreachable!("handled above")
        }
        ServerKind::Herald => {
            let bin = cli
                .herald_bin
                .clone()
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_herald")));
            let mut command = Command::new(bin);
            command
                .arg("serve")
                .arg("--listen")
                .arg(addr.to_string())
                .env("HERALD_JWT_SECRET", JWT_SECRET)
                .env("HERALD_API_KEY", API_KEY)
                .env("RUST_LOG", "warn");
            if let Some(ms) = cli.http_request_timeout_ms {
                command.env("HERALD_HTTP_REQUEST_TIMEOUT_MS", ms.to_string());
            }
            command
        }
        ServerKind::BaselineDefault | ServerKind::BaselineSmall => {
            let bin = cli
                .baseline_bin
                .clone()
                .unwrap_or_else(|| bin_dir().join("examples").join("baseline_server"));
            assert!(
                bin.exists(),
                "{} not found: run `cargo build --release -p herald-core --example baseline_server` first",
                bin.display()
            );
            let mut command = Command::new(bin);
            command.arg("--listen").arg(addr.to_string()).arg("--buffers").arg(
                if kind == ServerKind::BaselineDefault {
                    "default"
                } else {
                    "small"
                },
            );
            command
        }
    };
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let child = command.spawn().expect("spawn the server under test");
    let server = ServerProcess {
        kind,
        host: Host::Child(child),
        addr,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut stream) = TcpStream::connect(addr).await {
            let request = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
            if stream.write_all(request.as_bytes()).await.is_ok() {
                let mut response = String::new();
                let _ = stream.read_to_string(&mut response).await;
                if response.starts_with("HTTP/1.1 200") {
                    break;
                }
            }
        }
        assert!(Instant::now() < deadline, "{} did not become healthy", kind.name());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let start-up allocations settle before any "before" sample.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server
}

// ---------------------------------------------------------------------------------------------
// Clients.

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    base().elapsed().as_nanos() as u64
}

/// How many of `total` events are due at `now` for a publisher pacing one event every
/// `interval_ns` from `start_ns` (all of them at once when unpaced).
fn events_due(interval_ns: Option<f64>, start_ns: u64, now: u64, total: u64) -> u64 {
    match interval_ns {
        Some(_) if now < start_ns => 0,
        Some(interval) => (((now - start_ns) as f64 / interval) as u64 + 1).min(total),
        None => total,
    }
}

/// When event `j` of a paced publisher is scheduled: latency is measured from there, so a
/// publisher that falls behind does not hide its own delay. `None` when unpaced.
fn scheduled_ns(interval_ns: Option<f64>, start_ns: u64, j: u64) -> Option<u64> {
    interval_ns.map(|interval| start_ns + (j as f64 * interval) as u64)
}

fn user_name(user: u32) -> String {
    format!("u{user}")
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    frame_type: &'a str,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    epoch: Option<String>,
    #[serde(default)]
    head: u64,
    #[serde(default)]
    recovered: bool,
    #[serde(default)]
    data: Option<Payload>,
}

#[derive(Deserialize)]
struct Payload {
    /// Intended user.
    u: u32,
    /// Per-user counter, from 1.
    k: u64,
    /// Intended send time, ns since the generator's base instant.
    t: u64,
    /// When the publish was actually issued (the bridge call, or the HTTP request's write), ns
    /// since the base instant: `p - t` is the generator's own pacing delay.
    p: u64,
}

/// What one client saw; checked against what was published.
#[derive(Default, Clone)]
struct ClientStats {
    user: u32,
    /// Next expected per-user counter.
    next_k: u64,
    /// Last seq seen (welcome head, then event seqs).
    last_seq: u64,
    epoch: String,
    received: u64,
    duplicates: u64,
    skipped: u64,
    misrouted: u64,
    seq_errors: u64,
    other_frames: u64,
    /// Latency samples from the intended send time, µs.
    latency_us: Vec<u32>,
    /// Latency samples from the moment the publish was issued, µs.
    publish_latency_us: Vec<u32>,
    /// When this client had everything it was expecting (ns since base), set by the reader.
    caught_up_ns: u64,
    recovered: bool,
    closed_early: bool,
}

async fn open_client(addr: SocketAddr, user: u32, resume: Option<(&str, u64)>) -> Result<(Ws, Frame<'static>), String> {
    let url = format!("ws://{addr}/v1/ws?user={}", user_name(user));
    let config = WebSocketConfig::default()
        .read_buffer_size(CLIENT_READ_BUFFER_BYTES)
        .write_buffer_size(0);
    let timeout = Duration::from_millis(NETWORK_TIMEOUT_MS);
    let (mut ws, _) = tokio::time::timeout(
        timeout,
        tokio_tungstenite::connect_async_with_config(url, Some(config), false),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| format!("connect: {e}"))?;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 86_400;
    let token = mint_token(JWT_SECRET.as_bytes(), &user_name(user), exp);
    let hello = match resume {
        None => serde_json::json!({"type": "hello", "token": token}),
        Some((epoch, after)) => {
            serde_json::json!({"type": "hello", "token": token, "resume": {"epoch": epoch, "after": after}})
        }
    };
    ws.send(Message::Text(hello.to_string().into()))
        .await
        .map_err(|e| format!("hello: {e}"))?;
    loop {
        let message = tokio::time::timeout(timeout, ws.next())
            .await
            .map_err(|_| "no welcome".to_string())?;
        match message {
            Some(Ok(Message::Text(text))) => {
                let frame: Frame<'_> = serde_json::from_str(text.as_str()).map_err(|e| format!("welcome: {e}"))?;
                if frame.frame_type != "welcome" {
                    return Err(format!("expected welcome, got {}", text.as_str()));
                }
                let welcome = Frame {
                    frame_type: "welcome",
                    seq: 0,
                    epoch: frame.epoch,
                    head: frame.head,
                    recovered: frame.recovered,
                    data: None,
                };
                return Ok((ws, welcome));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("welcome: {e}")),
            None => return Err("closed before welcome".into()),
        }
    }
}

/// Shared progress of all readers: deliveries so far, and targets per user for "caught up".
struct Progress {
    delivered: AtomicU64,
    /// Per user, the counter `k` a client must reach to be caught up (0 = not tracked).
    target_k: Vec<AtomicU64>,
    caught_up: AtomicU64,
    /// Latency is sampled only from this per-user counter `k` on (`--warmup-secs`; 1 = all).
    measure_from_k: AtomicU64,
}

/// Reads frames until told to stop; checks every event.
async fn read_loop(
    mut ws: Ws,
    mut stats: ClientStats,
    mut stop: watch::Receiver<bool>,
    progress: Arc<Progress>,
) -> (Ws, ClientStats) {
    loop {
        let message = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            message = ws.next() => message,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                stats.closed_early = true;
                let _ = stop.wait_for(|s| *s).await;
                break;
            }
            Some(Ok(_)) => continue,
        };
        let now = now_ns();
        let frame: Frame<'_> = match serde_json::from_str(text.as_str()) {
            Ok(frame) => frame,
            Err(_) => {
                stats.other_frames += 1;
                continue;
            }
        };
        let Some(payload) = frame.data.filter(|_| frame.frame_type == "event") else {
            stats.other_frames += 1;
            continue;
        };
        stats.received += 1;
        if payload.u != stats.user {
            stats.misrouted += 1;
            continue;
        }
        if frame.seq != stats.last_seq + 1 {
            stats.seq_errors += 1;
        }
        stats.last_seq = frame.seq;
        if payload.k < stats.next_k {
            stats.duplicates += 1;
            continue;
        }
        if payload.k > stats.next_k {
            stats.skipped += payload.k - stats.next_k;
        }
        stats.next_k = payload.k + 1;
        if payload.k >= progress.measure_from_k.load(Ordering::Relaxed) {
            stats.latency_us.push(elapsed_us(payload.t, now));
            stats.publish_latency_us.push(elapsed_us(payload.p, now));
        }
        progress.delivered.fetch_add(1, Ordering::Relaxed);
        let target = progress.target_k[stats.user as usize].load(Ordering::Relaxed);
        if target != 0 && payload.k == target {
            stats.caught_up_ns = now;
            progress.caught_up.fetch_add(1, Ordering::Relaxed);
        }
    }
    (ws, stats)
}

/// A population of connected clients with their reader tasks.
struct Population {
    stop: watch::Sender<bool>,
    readers: Vec<tokio::task::JoinHandle<(Ws, ClientStats)>>,
    progress: Arc<Progress>,
}

/// Opens `users * tabs` connections (connection i belongs to user i / tabs).
async fn connect_population(
    addr: SocketAddr,
    users: u32,
    tabs: usize,
    progress: Option<Arc<Progress>>,
) -> Result<Population, String> {
    let progress = progress.unwrap_or_else(|| {
        Arc::new(Progress {
            delivered: AtomicU64::new(0),
            target_k: (0..users).map(|_| AtomicU64::new(0)).collect(),
            caught_up: AtomicU64::new(0),
            measure_from_k: AtomicU64::new(1),
        })
    });
    let (stop, stop_rx) = watch::channel(false);
    let semaphore = Arc::new(Semaphore::new(CONNECT_CONCURRENCY_MAX));
    let mut opening = Vec::new();
    for i in 0..users as usize * tabs {
        let user = (i / tabs) as u32;
        let semaphore = semaphore.clone();
        opening.push(tokio::spawn(async move {
            let _permit = semaphore.acquire().await.unwrap();
            open_client(addr, user, None)
                .await
                .map(|(ws, welcome)| (user, ws, welcome))
        }));
    }
    let mut readers = Vec::new();
    for handle in opening {
        let (user, ws, welcome) = handle.await.map_err(|e| e.to_string())??;
        let stats = ClientStats {
            user,
            next_k: 1,
            last_seq: welcome.head,
            epoch: welcome.epoch.unwrap_or_default(),
            ..ClientStats::default()
        };
        readers.push(tokio::spawn(read_loop(ws, stats, stop_rx.clone(), progress.clone())));
    }
    Ok(Population {
        stop,
        readers,
        progress,
    })
}

impl Population {
    /// Stops the readers and returns the sockets and what each client saw.
    async fn stop(self) -> (Vec<(Ws, ClientStats)>, Arc<Progress>) {
        self.stop.send_replace(true);
        let mut out = Vec::new();
        for reader in self.readers {
            out.push(reader.await.expect("reader task"));
        }
        (out, self.progress)
    }
}

// ---------------------------------------------------------------------------------------------
// Publishing over HTTP: pipelined keep-alive connections, open loop at a target rate.

struct PublishPlan {
    users: u32,
    /// Publishes per second over all HTTP connections; `None` = as fast as the window allows.
    rate: Option<f64>,
    /// Publishes per user (exact); total = users * per_user.
    per_user: u64,
    /// First counter value per user (k), so a second batch continues the sequence.
    first_k: u64,
    pad: String,
    /// The publishing thread's pacing tick (`--notifier-tick-us`).
    notifier_tick_us: u64,
    /// The HTTP publishers' pacing tick (`--http-tick-us`; 0 = tokio's timer).
    http_tick_us: u64,
}

impl PublishPlan {
    /// A plan with the payload padding and pacing tick the command line asked for.
    fn new(cli: &Cli, users: u32, rate: Option<f64>, per_user: u64, first_k: u64) -> Arc<PublishPlan> {
        Arc::new(PublishPlan {
            users,
            rate,
            per_user,
            first_k,
            pad: "x".repeat(cli.payload_pad_bytes),
            notifier_tick_us: cli.notifier_tick_us,
            http_tick_us: cli.http_tick_us,
        })
    }
}

#[derive(Default, Debug, Clone)]
struct PublishReport {
    accepted: u64,
    errors: u64,
    first_error: Option<String>,
    /// Wall time from the first to the last request written.
    write_secs: f64,
    /// CPU seconds of the in-process publishing thread (notifier path only; 0 over HTTP).
    thread_cpu_secs: f64,
}

/// Publishes `plan` through the server's publish path: the notifier for an in-process server,
/// else HTTP.
async fn publish_to(server: &ServerProcess, http_connections: usize, plan: Arc<PublishPlan>) -> PublishReport {
    match server.bridge() {
        Some(bridge) => publish_notifier(bridge.clone(), plan).await,
        None => publish(server.addr, http_connections, plan).await,
    }
}

/// The in-process path: one dedicated thread calls the bridge (herald: `Notifier::publish_raw`,
/// what the HTTP API calls after parsing the request; baseline: `App::publish_raw`) open loop
/// at the plan's rate, in the same per-user order and with the same payload as the HTTP
/// publisher.
async fn publish_notifier(bridge: Bridge, plan: Arc<PublishPlan>) -> PublishReport {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("loadgen-pub".into())
        .spawn(move || {
            let _ = done.send(publish_notifier_thread(&bridge, &plan));
        })
        .expect("spawn the publishing thread");
    result.await.expect("publishing thread")
}

fn publish_notifier_thread(bridge: &Bridge, plan: &PublishPlan) -> PublishReport {
    let cpu_before = proc_cpu_secs("/proc/thread-self/stat");
    let users = plan.users as u64;
    let total = users * plan.per_user;
    let interval_ns = plan.rate.map(|rate| 1e9 / rate);
    let start_ns = now_ns() + 5_000_000;
    let runs: Vec<String> = (0..plan.users).map(|u| format!("run-{u}")).collect();
    let names: Vec<String> = (0..plan.users).map(user_name).collect();
    let mut report = PublishReport::default();
    let mut first_ns = 0;
    let mut j = 0u64;
    while j < total {
        let now = now_ns();
        let due = events_due(interval_ns, start_ns, now, total);
        if due <= j {
            std::thread::sleep(Duration::from_micros(plan.notifier_tick_us));
            continue;
        }
        if first_ns == 0 {
            first_ns = now;
        }
        while j < due {
            let user = (j % users) as u32;
            let k = plan.first_k + j / users;
            let p = now_ns();
            let t = scheduled_ns(interval_ns, start_ns, j).unwrap_or(p);
            let text = format!(r#"{{"u":{user},"k":{k},"t":{t},"p":{p},"text":"{}"}}"#, plan.pad);
            let raw = serde_json::value::RawValue::from_string(text).expect("valid JSON");
            match bridge.publish(&names[user as usize], &runs[user as usize], &raw) {
                Ok(()) => report.accepted += 1,
                Err(e) => {
                    report.errors += 1;
                    report.first_error.get_or_insert(e);
                }
            }
            j += 1;
        }
    }
    report.write_secs = (now_ns() - first_ns) as f64 / 1e9;
    report.thread_cpu_secs = proc_cpu_secs("/proc/thread-self/stat") - cpu_before;
    report
}

async fn publish(addr: SocketAddr, http_connections: usize, plan: Arc<PublishPlan>) -> PublishReport {
    let connections = http_connections.max(1).min(plan.users as usize);
    let start_ns = now_ns() + 5_000_000;
    let ticker = (plan.http_tick_us > 0 && plan.rate.is_some()).then(|| HttpTicker::start(plan.http_tick_us));
    let tick = ticker.as_ref().map(|t| t.tick.clone());
    let mut tasks = Vec::new();
    for h in 0..connections {
        let plan = plan.clone();
        tasks.push(tokio::spawn(publish_connection(
            addr,
            h,
            connections,
            plan,
            start_ns,
            tick.clone(),
        )));
    }
    let mut report = PublishReport::default();
    for task in tasks {
        let part = task.await.expect("publisher task");
        report.accepted += part.accepted;
        report.errors += part.errors;
        report.write_secs = report.write_secs.max(part.write_secs);
        if report.first_error.is_none() {
            report.first_error = part.first_error;
        }
    }
    drop(ticker);
    report
}

/// `--http-tick-us`: a thread that wakes the HTTP publishing connections every tick, finer
/// than tokio's 1 ms timer. Stopped and joined on drop.
struct HttpTicker {
    tick: Arc<Notify>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpTicker {
    fn start(tick_us: u64) -> HttpTicker {
        let tick = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (tick, stop) = (tick.clone(), stop.clone());
            std::thread::Builder::new()
                .name("loadgen-tick".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_micros(tick_us));
                        tick.notify_waiters();
                    }
                })
                .expect("spawn the HTTP pacing thread")
        };
        HttpTicker {
            tick,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HttpTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn publish_connection(
    addr: SocketAddr,
    h: usize,
    connections: usize,
    plan: Arc<PublishPlan>,
    start_ns: u64,
    tick: Option<Arc<Notify>>,
) -> PublishReport {
    let my_users: Vec<u32> = (0..plan.users).filter(|u| *u as usize % connections == h).collect();
    let total = my_users.len() as u64 * plan.per_user;
    let interval_ns = plan.rate.map(|rate| 1e9 * connections as f64 / rate);
    let stream = TcpStream::connect(addr).await.expect("connect for publishing");
    stream.set_nodelay(true).expect("nodelay");
    let (read_half, mut write_half) = stream.into_split();
    let in_flight = Arc::new(AtomicU64::new(0));
    let window = Arc::new(Notify::new());
    let reader = {
        let in_flight = in_flight.clone();
        let window = window.clone();
        tokio::spawn(read_responses(read_half, total, in_flight, window))
    };
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut body: Vec<u8> = Vec::with_capacity(256);
    let mut i = 0u64;
    let mut first_write_ns = 0;
    while i < total {
        let now = now_ns();
        let due = events_due(interval_ns, start_ns, now, total);
        let room = HTTP_IN_FLIGHT_MAX.saturating_sub(in_flight.load(Ordering::Acquire));
        let until = due.min(i + room);
        if until > i {
            buf.clear();
            for j in i..until {
                let user = my_users[(j % my_users.len() as u64) as usize];
                let k = plan.first_k + j / my_users.len() as u64;
                let t = scheduled_ns(interval_ns, start_ns, j).unwrap_or(now);
                body.clear();
                write!(
                    body,
                    // `p` is `now`: the whole batch leaves in the one write below, a few µs later.
                    r#"{{"run":"run-{user}","kind":"agent_thinking","data":{{"u":{user},"k":{k},"t":{t},"p":{now},"text":"{}"}}}}"#,
                    plan.pad
                )
                .unwrap();
                write!(
                    buf,
                    // The path names `user_name(user)`, written in place.
                    "POST /v1/users/u{user}/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .unwrap();
                buf.extend_from_slice(&body);
            }
            in_flight.fetch_add(until - i, Ordering::AcqRel);
            if first_write_ns == 0 {
                first_write_ns = now;
            }
            if write_half.write_all(&buf).await.is_err() {
                break;
            }
            i = until;
            continue;
        }
        if due > i {
            // Window full: wait for responses.
            let notified = window.notified();
            if HTTP_IN_FLIGHT_MAX.saturating_sub(in_flight.load(Ordering::Acquire)) == 0 {
                let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
            }
        } else if let Some(tick) = &tick {
            // A tick that fires before this wait registers is missed: the next one follows
            // within `--http-tick-us`. The ticker runs until every publishing task is done.
            tick.notified().await;
        } else if let Some(interval) = interval_ns {
            let next_ns = start_ns + (i as f64 * interval) as u64;
            let wait = next_ns.saturating_sub(now_ns());
            tokio::time::sleep(Duration::from_nanos(wait)).await;
        }
    }
    let write_secs = (now_ns() - first_write_ns) as f64 / 1e9;
    let mut report = reader.await.expect("response reader");
    report.write_secs = write_secs;
    drop(write_half);
    report
}

/// Reads the pipelined responses of one publishing connection. Parses bytes in place (status,
/// `content-length`) without per-line allocations: the generator shares the 2 cores with the
/// server under test, so its own cost per publish matters.
async fn read_responses(
    mut read_half: tokio::net::tcp::OwnedReadHalf,
    total: u64,
    in_flight: Arc<AtomicU64>,
    window: Arc<Notify>,
) -> PublishReport {
    let mut report = PublishReport::default();
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut start = 0usize;
    let timeout = Duration::from_millis(NETWORK_TIMEOUT_MS);
    let mut done = 0u64;
    'responses: while done < total {
        // Parse every complete response in the buffer.
        let mut parsed = 0u64;
        while let Some((status, body, length)) = parse_response(&buf[start..]) {
            if (200..300).contains(&status) {
                report.accepted += 1;
            } else {
                report.errors += 1;
                report
                    .first_error
                    .get_or_insert_with(|| format!("{status}: {}", String::from_utf8_lossy(body)));
            }
            start += length;
            parsed += 1;
            done += 1;
            if done == total {
                break;
            }
        }
        if parsed > 0 {
            in_flight.fetch_sub(parsed, Ordering::AcqRel);
            window.notify_one();
        }
        if done == total {
            break;
        }
        buf.drain(..start);
        start = 0;
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match tokio::time::timeout(timeout, read_half.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => {
                report.errors += 1;
                report
                    .first_error
                    .get_or_insert_with(|| "publish connection lost".into());
                break 'responses;
            }
        }
    }
    report
}

/// One complete HTTP/1.1 response at the start of `bytes`: (status, body, total length).
fn parse_response(bytes: &[u8]) -> Option<(u16, &[u8], usize)> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = &bytes[..head_end];
    let status = head
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut content_length = 0usize;
    for line in head.split(|b| *b == b'\n') {
        const NAME: &[u8] = b"content-length:";
        if line.len() > NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME) {
            content_length = std::str::from_utf8(&line[NAME.len()..])
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
        }
    }
    let end = head_end + content_length;
    (bytes.len() >= end).then(|| (status, &bytes[head_end..end], end))
}

// ---------------------------------------------------------------------------------------------
// One measured load run.

#[derive(Default, Debug, Clone)]
struct LoadResult {
    published: u64,
    publish_errors: u64,
    expected: u64,
    delivered: u64,
    duplicates: u64,
    missing: u64,
    misrouted: u64,
    seq_errors: u64,
    closed_early: u64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    /// The same percentiles measured from the moment each publish was issued: what the server
    /// (and the clients' side of the machine) added, without the generator's pacing delay.
    publish_p50_ms: f64,
    publish_p99_ms: f64,
    publish_p999_ms: f64,
    /// Percentiles of the generator's own pacing delay (`p - t`: publish issued minus intended
    /// send time) over the same deliveries. Every delivery's latency is at least its pacing
    /// delay, so each percentile here is a floor that no server can go below in this run.
    pacing_p50_ms: f64,
    pacing_p99_ms: f64,
    /// Deliveries per second from the first publish to the last delivery.
    delivered_per_sec: f64,
    /// Achieved publish rate (publishes/s while writing).
    published_per_sec: f64,
    server_cpu: f64,
    loadgen_cpu: f64,
    /// CPU used by everything else on the machine during the run (other helpers): noise.
    other_cpu: f64,
    /// Server CPU time per delivered event, µs: steadier than wall latency on a shared machine.
    server_cpu_us_per_delivery: f64,
    /// Server and generator CPU time together per delivered event, µs: a cost that does not
    /// depend on which thread the kernel charges. On loopback the receiving socket's kernel work
    /// runs in the softirq of the sending thread, and a send held back by Nagle's algorithm
    /// (which the naive baseline leaves on) leaves later, released by an ACK, in the thread that
    /// received the ACK: a generator's client thread. So part of a server's network cost can be
    /// counted as the generator's. Meaningful below the knee only: once the two cores are
    /// saturated, this is two cores divided by the rate, for any server.
    total_cpu_us_per_delivery: f64,
    elapsed_secs: f64,
}

impl LoadResult {
    fn verified(&self) -> bool {
        self.publish_errors == 0
            && self.missing == 0
            && self.duplicates == 0
            && self.misrouted == 0
            && self.seq_errors == 0
            && self.delivered == self.expected
    }

    fn verdict(&self) -> String {
        if self.verified() {
            "ok".into()
        } else {
            format!(
                "FAIL(pub_err {} missing {} dup {} misroute {} seq {} closed {})",
                self.publish_errors, self.missing, self.duplicates, self.misrouted, self.seq_errors, self.closed_early
            )
        }
    }
}

/// `LOADGEN_DETAIL=1`: a delivery later than this (µs from the intended send time) is late.
const DETAIL_LATE_US: u32 = 20_000;

/// One latency sample: µs from `since_ns` to `now_ns`, saturated to fit a `u32`.
fn elapsed_us(since_ns: u64, now_ns: u64) -> u32 {
    (now_ns.saturating_sub(since_ns) / 1_000).min(u64::from(u32::MAX)) as u32
}

/// Sorts `samples` (µs) and returns their p50, p99 and p99.9 in ms.
fn percentiles_ms(samples: &mut [u32]) -> [f64; 3] {
    samples.sort_unstable();
    [0.50, 0.99, 0.999].map(|q| percentile_ms(samples, q))
}

fn percentile_ms(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    f64::from(sorted[index]) / 1_000.0
}

/// Connects `users * tabs` clients, publishes `per_user` events to each user at `rate`
/// publishes/s (or as fast as possible), waits for delivery and checks everything.
async fn load_run(
    cli: &Cli,
    server: &ServerProcess,
    users: u32,
    tabs: usize,
    rate: Option<f64>,
    per_user: u64,
) -> LoadResult {
    let population = connect_population(server.addr, users, tabs, None)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{}: connecting {} clients: {e}",
                server.kind.name(),
                users as usize * tabs
            )
        });
    if let Some(rate) = rate {
        let warmup_per_user = (rate * cli.warmup_secs / f64::from(users)) as u64;
        assert!(
            warmup_per_user < per_user,
            "--warmup-secs must be shorter than --duration-secs"
        );
        population
            .progress
            .measure_from_k
            .store(1 + warmup_per_user, Ordering::Relaxed);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu_before = server.cpu_secs();
    let self_before = proc_cpu_secs("/proc/self/stat");
    let machine_before = machine_busy_secs();
    let started = Instant::now();
    let plan = PublishPlan::new(cli, users, rate, per_user, 1);
    let report = publish_to(server, cli.http_connections, plan).await;
    let expected = report.accepted * tabs as u64;
    let deadline = Instant::now() + Duration::from_millis(DRAIN_TIMEOUT_MS);
    let mut last_delivery = Instant::now();
    let mut last_seen = population.progress.delivered.load(Ordering::Relaxed);
    while Instant::now() < deadline {
        let delivered = population.progress.delivered.load(Ordering::Relaxed);
        if delivered != last_seen {
            last_seen = delivered;
            last_delivery = Instant::now();
        }
        if delivered >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = last_delivery.duration_since(started).as_secs_f64();
    // In process, the server's threads and the publishing thread are part of /proc/self.
    let in_process = server.bridge().is_some();
    let server_cpu_secs = server.cpu_secs() - cpu_before + report.thread_cpu_secs;
    let self_cpu_secs = proc_cpu_secs("/proc/self/stat") - self_before;
    let loadgen_cpu_secs = if in_process {
        (self_cpu_secs - server_cpu_secs).max(0.0)
    } else {
        self_cpu_secs
    };
    let other_cpu_secs = (machine_busy_secs() - machine_before - server_cpu_secs - loadgen_cpu_secs).max(0.0);
    let server_cpu = server_cpu_secs / elapsed;
    let loadgen_cpu = loadgen_cpu_secs / elapsed;
    let (clients, _) = population.stop().await;
    let mut result = LoadResult {
        published: report.accepted,
        publish_errors: report.errors,
        expected,
        published_per_sec: report.accepted as f64 / report.write_secs.max(1e-9),
        server_cpu,
        loadgen_cpu,
        other_cpu: other_cpu_secs / elapsed,
        elapsed_secs: elapsed,
        ..LoadResult::default()
    };
    if let Some(error) = &report.first_error {
        eprintln!("  {}: first publish error: {error}", server.kind.name());
    }
    let per_user_accepted = report.accepted / u64::from(users);
    let mut latencies = Vec::with_capacity(expected as usize);
    let mut publish_latencies = Vec::with_capacity(expected as usize);
    let mut pacing_delays = Vec::with_capacity(expected as usize);
    // Diagnostic (`LOADGEN_DETAIL=1`): where in each connection's sequence the late deliveries
    // fall, e.g. at the start of a burst (tasks waking) or at its end (a backlog draining).
    let detail = std::env::var_os("LOADGEN_DETAIL").is_some();
    let mut late_by_decile = [0u64; 10];
    let mut late_connections = 0u64;
    for (ws, stats) in clients {
        if detail {
            let n = stats.latency_us.len().max(1);
            let mut late = false;
            for (i, &l) in stats.latency_us.iter().enumerate() {
                if l > DETAIL_LATE_US {
                    late = true;
                    late_by_decile[i * 10 / n] += 1;
                }
            }
            late_connections += u64::from(late);
        }
        drop(ws);
        result.delivered += stats.received - stats.duplicates - stats.misrouted;
        result.duplicates += stats.duplicates;
        result.misrouted += stats.misrouted;
        result.seq_errors += stats.seq_errors;
        result.closed_early += u64::from(stats.closed_early);
        let last_k = stats.next_k - 1;
        result.missing += stats.skipped + per_user_accepted.saturating_sub(last_k);
        latencies.extend_from_slice(&stats.latency_us);
        publish_latencies.extend_from_slice(&stats.publish_latency_us);
        // Both samples of a delivery end at the same arrival, so their difference is `p - t`.
        let pacing = stats.latency_us.iter().zip(&stats.publish_latency_us);
        pacing_delays.extend(pacing.map(|(from_intended, from_publish)| from_intended.saturating_sub(*from_publish)));
    }
    if detail {
        eprintln!(
            "  detail: {late_connections} connections had a delivery > {} ms; such deliveries by decile of each connection's sequence: {late_by_decile:?}",
            DETAIL_LATE_US / 1_000
        );
    }
    [result.p50_ms, result.p99_ms, result.p999_ms] = percentiles_ms(&mut latencies);
    result.max_ms = latencies.last().map_or(f64::NAN, |v| f64::from(*v) / 1_000.0);
    [result.publish_p50_ms, result.publish_p99_ms, result.publish_p999_ms] = percentiles_ms(&mut publish_latencies);
    [result.pacing_p50_ms, result.pacing_p99_ms, _] = percentiles_ms(&mut pacing_delays);
    result.delivered_per_sec = result.delivered as f64 / elapsed.max(1e-9);
    result.server_cpu_us_per_delivery = server_cpu_secs * 1e6 / result.delivered.max(1) as f64;
    result.total_cpu_us_per_delivery = (server_cpu_secs + loadgen_cpu_secs) * 1e6 / result.delivered.max(1) as f64;
    // Let the server reap the closed connections before the next run.
    tokio::time::sleep(Duration::from_millis(300)).await;
    result
}

// ---------------------------------------------------------------------------------------------
// Reporting helpers.

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b != 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

/// Prints a table: one row per metric, one column per server, then ratios herald/each baseline.
fn print_table(title: &str, servers: &[ServerKind], rows: &[(&str, Vec<f64>, &str)]) {
    println!();
    println!("### {title}");
    let mut header = "| metric |".to_string();
    let mut rule = "|---|".to_string();
    for server in servers {
        header.push_str(&format!(" {} |", server.name()));
        rule.push_str("---:|");
    }
    let is_herald = |k: ServerKind| matches!(k, ServerKind::Herald | ServerKind::HeraldNotifier);
    // Columns compare like with like only: a ratio of an in-process bridge to an HTTP
    // publisher would compare publish paths, not servers.
    let heralds: Vec<usize> = (0..servers.len()).filter(|i| is_herald(servers[*i])).collect();
    let baselines: Vec<usize> = (0..servers.len()).filter(|i| !is_herald(servers[*i])).collect();
    let like = |h: usize, b: usize| servers[h].in_process() == servers[b].in_process();
    for h in &heralds {
        for b in baselines.iter().filter(|b| like(*h, **b)) {
            header.push_str(&format!(" {} / {} |", servers[*h].name(), servers[*b].name()));
            rule.push_str("---:|");
        }
    }
    println!("{header}");
    println!("{rule}");
    for (name, values, format) in rows {
        let mut line = format!("| {name} |");
        for value in values {
            let cell = match *format {
                "int" => format!("{value:.0}"),
                "f1" => format!("{value:.1}"),
                "f2" => format!("{value:.2}"),
                _ => format!("{value:.3}"),
            };
            line.push_str(&format!(" {cell} |"));
        }
        for h in &heralds {
            for b in baselines.iter().filter(|b| like(*h, **b)) {
                line.push_str(&format!(" {} |", ratio(values[*h], values[*b])));
            }
        }
        println!("{line}");
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios.

async fn scenario_idle(cli: &Cli) {
    let connections = cli.connections.unwrap_or(if cli.quick { 2_000 } else { 10_000 });
    println!();
    println!("## Scenario 1: {connections} idle connections (1 per user), server RSS per connection");
    let mut per_server: BTreeMap<ServerKind, Vec<(f64, f64, f64)>> = BTreeMap::new();
    // The in-process server shares this process's RSS: it cannot be measured apart.
    let servers: Vec<ServerKind> = cli.servers.iter().copied().filter(|k| !k.in_process()).collect();
    for run in 0..cli.runs {
        for &kind in &servers {
            let server = start_server(cli, kind).await;
            let before = server.rss_kib();
            let population = connect_population(server.addr, connections as u32, 1, None)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", kind.name()));
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = server.rss_kib();
            let per_connection = (after.saturating_sub(before)) as f64 / connections as f64;
            println!(
                "  run {run} {:<17} RSS before {before} KiB, after {after} KiB → {per_connection:.2} KiB/connection",
                kind.name()
            );
            per_server
                .entry(kind)
                .or_default()
                .push((before as f64 / 1024.0, after as f64 / 1024.0, per_connection));
            let (clients, _) = population.stop().await;
            drop(clients);
            drop(server);
        }
    }
    let column = |f: fn(&(f64, f64, f64)) -> f64| -> Vec<f64> {
        servers
            .iter()
            .map(|k| median(per_server[k].iter().map(f).collect()))
            .collect()
    };
    print_table(
        &format!("idle: {connections} connections, median of {} runs", cli.runs),
        &servers,
        &[
            ("RSS before (MiB)", column(|v| v.0), "f1"),
            ("RSS after (MiB)", column(|v| v.1), "f1"),
            ("RSS per connection (KiB)", column(|v| v.2), "f2"),
        ],
    );
}

fn load_rows(
    results: &BTreeMap<ServerKind, Vec<LoadResult>>,
    servers: &[ServerKind],
) -> Vec<(&'static str, Vec<f64>, &'static str)> {
    let column = |f: fn(&LoadResult) -> f64| -> Vec<f64> {
        servers
            .iter()
            .map(|k| median(results[k].iter().map(f).collect()))
            .collect()
    };
    vec![
        ("p50 latency (ms)", column(|r| r.p50_ms), "f2"),
        ("p99 latency (ms)", column(|r| r.p99_ms), "f2"),
        ("p99.9 latency (ms)", column(|r| r.p999_ms), "f2"),
        ("max latency (ms)", column(|r| r.max_ms), "f1"),
        ("p50 from publish (ms)", column(|r| r.publish_p50_ms), "f2"),
        ("p99 from publish (ms)", column(|r| r.publish_p99_ms), "f2"),
        ("p99.9 from publish (ms)", column(|r| r.publish_p999_ms), "f2"),
        ("p50 pacing delay (ms, generator)", column(|r| r.pacing_p50_ms), "f2"),
        (
            "p99 pacing delay (ms, generator: floor of p99)",
            column(|r| r.pacing_p99_ms),
            "f2",
        ),
        ("delivered events/s", column(|r| r.delivered_per_sec), "int"),
        ("published events/s (achieved)", column(|r| r.published_per_sec), "int"),
        (
            "delivered / expected",
            column(|r| r.delivered as f64 / r.expected.max(1) as f64),
            "f3",
        ),
        ("server CPU (cores)", column(|r| r.server_cpu), "f2"),
        (
            "server CPU per delivered event (µs)",
            column(|r| r.server_cpu_us_per_delivery),
            "f2",
        ),
        ("loadgen CPU (cores)", column(|r| r.loadgen_cpu), "f2"),
        (
            "server + loadgen CPU per delivered event (µs)",
            column(|r| r.total_cpu_us_per_delivery),
            "f2",
        ),
        ("other processes' CPU (cores, noise)", column(|r| r.other_cpu), "f2"),
        (
            "verified runs (no loss/dup/misroute)",
            column(|r| if r.verified() { 1.0 } else { 0.0 }),
            "f2",
        ),
    ]
}

fn print_run(kind: ServerKind, label: &str, r: &LoadResult) {
    println!(
        "  {label} {:<17} p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.1} ms (from publish: p50 {:.2} p99 {:.2} p99.9 {:.2}; pacing: p50 {:.2} p99 {:.2}) | delivered {}/{} ({:.0}/s) published {} ({:.0}/s) | cpu server {:.2} ({:.2} µs/event) loadgen {:.2} other {:.2} (server + loadgen {:.2} µs/event) | {}",
        kind.name(),
        r.p50_ms,
        r.p99_ms,
        r.p999_ms,
        r.max_ms,
        r.publish_p50_ms,
        r.publish_p99_ms,
        r.publish_p999_ms,
        r.pacing_p50_ms,
        r.pacing_p99_ms,
        r.delivered,
        r.expected,
        r.delivered_per_sec,
        r.published,
        r.published_per_sec,
        r.server_cpu,
        r.server_cpu_us_per_delivery,
        r.loadgen_cpu,
        r.other_cpu,
        r.total_cpu_us_per_delivery,
        r.verdict()
    );
}

async fn scenario_rate(cli: &Cli) {
    let connections = cli.connections.unwrap_or(1_000);
    let users = (connections / cli.tabs) as u32;
    println!();
    println!(
        "## Scenario 2: {connections} connections ({users} users x {} tabs), fixed delivered rates, {} s each",
        cli.tabs, cli.duration_secs
    );
    if cli.warmup_secs > 0.0 {
        println!(
            "   latency percentiles from second {} of each run on (--warmup-secs)",
            cli.warmup_secs
        );
    }
    for &rate in &cli.rates {
        let publishes_per_sec = rate as f64 / cli.tabs as f64;
        let per_user = ((publishes_per_sec * cli.duration_secs) / f64::from(users))
            .round()
            .max(1.0) as u64;
        let mut results: BTreeMap<ServerKind, Vec<LoadResult>> = BTreeMap::new();
        for run in 0..cli.runs {
            for &kind in &cli.servers {
                let server = start_server(cli, kind).await;
                let result = load_run(cli, &server, users, cli.tabs, Some(publishes_per_sec), per_user).await;
                print_run(kind, &format!("rate {rate}/s run {run}"), &result);
                results.entry(kind).or_default().push(result);
            }
        }
        print_table(
            &format!(
                "rate: {rate} delivered events/s over {connections} connections ({} publishes/s: *-notifier through their in-process bridge, the others over HTTP), median of {} runs",
                publishes_per_sec, cli.runs
            ),
            &cli.servers,
            &load_rows(&results, &cli.servers),
        );
    }
}

async fn scenario_peak(cli: &Cli) {
    let connections = cli.connections.unwrap_or(1_000);
    let users = (connections / cli.tabs) as u32;
    let steps: Vec<u64> = if cli.quick {
        cli.peak_rates.iter().copied().step_by(2).collect()
    } else {
        cli.peak_rates.clone()
    };
    println!();
    println!(
        "## Scenario 3: peak sustained delivered events/s over {connections} connections ({users} users x {} tabs); \
         a step passes with no loss and p99 <= {} ms; {} s per step",
        cli.tabs, cli.peak_p99_ms_max, cli.duration_secs
    );
    let mut peaks: BTreeMap<ServerKind, Vec<(f64, f64)>> = BTreeMap::new();
    for run in 0..cli.runs {
        for &kind in &cli.servers {
            let server = start_server(cli, kind).await;
            let mut best = (0.0, f64::NAN);
            for &rate in &steps {
                let publishes_per_sec = rate as f64 / cli.tabs as f64;
                let per_user = ((publishes_per_sec * cli.duration_secs) / f64::from(users))
                    .round()
                    .max(1.0) as u64;
                let result = load_run(cli, &server, users, cli.tabs, Some(publishes_per_sec), per_user).await;
                print_run(kind, &format!("peak step {rate}/s run {run}"), &result);
                let kept_up = result.published_per_sec >= 0.95 * publishes_per_sec
                    && result.delivered_per_sec >= 0.90 * rate as f64;
                if result.verified() && result.p99_ms <= cli.peak_p99_ms_max && kept_up {
                    best = (result.delivered_per_sec, result.p99_ms);
                } else {
                    break;
                }
            }
            println!(
                "  run {run} {:<17} peak sustained {:.0} delivered events/s (p99 {:.2} ms)",
                kind.name(),
                best.0,
                best.1
            );
            peaks.entry(kind).or_default().push(best);
        }
    }
    let column = |f: fn(&(f64, f64)) -> f64| -> Vec<f64> {
        cli.servers
            .iter()
            .map(|k| median(peaks[k].iter().map(f).collect()))
            .collect()
    };
    print_table(
        &format!("peak sustained delivered events/s, median of {} runs", cli.runs),
        &cli.servers,
        &[
            ("peak delivered events/s", column(|v| v.0), "int"),
            ("p99 at peak (ms)", column(|v| v.1), "f2"),
        ],
    );
}

async fn scenario_burst(cli: &Cli) {
    let users = 100u32;
    let events = 100_000u64;
    println!();
    println!(
        "## Scenario 4: burst of {events} events to {users} users (1 connection each), published as fast as possible"
    );
    let mut results: BTreeMap<ServerKind, Vec<LoadResult>> = BTreeMap::new();
    for run in 0..cli.runs {
        for &kind in &cli.servers {
            let server = start_server(cli, kind).await;
            let result = load_run(cli, &server, users, 1, None, events / u64::from(users)).await;
            print_run(kind, &format!("burst run {run}"), &result);
            results.entry(kind).or_default().push(result);
        }
    }
    let mut rows = load_rows(&results, &cli.servers);
    let column = |f: fn(&LoadResult) -> f64| -> Vec<f64> {
        cli.servers
            .iter()
            .map(|k| median(results[k].iter().map(f).collect()))
            .collect()
    };
    rows.insert(0, ("time to deliver all (s)", column(|r| r.elapsed_secs), "f3"));
    print_table(
        &format!("burst: {events} events to {users} users, median of {} runs", cli.runs),
        &cli.servers,
        &rows,
    );
}

async fn scenario_resume(cli: &Cli) {
    let connections = cli.connections.unwrap_or(1_000);
    let tabs = cli.tabs;
    let users = (connections / tabs) as u32;
    let before = 10u64;
    let missed = 100u64;
    println!();
    println!(
        "## Scenario 5: {connections} clients ({users} users x {tabs} tabs) drop, miss {missed} events per user, \
         then reconnect at once with resume"
    );
    println!("  baselines skipped: the naive baseline has no retention and no resume (missed events are lost)");
    let mut rows: Vec<(f64, f64, f64, f64, f64)> = Vec::new();
    for run in 0..cli.runs {
        let server = start_server(cli, ServerKind::Herald).await;
        let population = connect_population(server.addr, users, tabs, None)
            .await
            .expect("connect");
        let progress = population.progress.clone();
        let plan = PublishPlan::new(cli, users, None, before, 1);
        let first = publish(server.addr, cli.http_connections, plan).await;
        assert_eq!(first.errors, 0, "publish errors: {:?}", first.first_error);
        let expected_first = first.accepted * tabs as u64;
        let deadline = Instant::now() + Duration::from_millis(DRAIN_TIMEOUT_MS);
        while progress.delivered.load(Ordering::Relaxed) < expected_first && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Drop every connection abruptly (no close frame), as a network blip would.
        let (clients, progress) = population.stop().await;
        let mut saved: Vec<ClientStats> = Vec::new();
        for (ws, stats) in clients {
            drop(ws);
            saved.push(stats);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let plan = PublishPlan::new(cli, users, None, missed, before + 1);
        let second = publish(server.addr, cli.http_connections, plan).await;
        assert_eq!(second.errors, 0, "publish errors: {:?}", second.first_error);
        for user in 0..users {
            progress.target_k[user as usize].store(before + missed, Ordering::Relaxed);
        }
        let cpu_before = server.cpu_secs();
        // Reconnect everyone at once.
        let t0 = now_ns();
        let (stop, stop_rx) = watch::channel(false);
        let mut opening = Vec::new();
        for stats in saved {
            let addr = server.addr;
            let progress = progress.clone();
            let stop_rx = stop_rx.clone();
            opening.push(tokio::spawn(async move {
                let (ws, welcome) = open_client(addr, stats.user, Some((&stats.epoch, stats.last_seq)))
                    .await
                    .expect("reconnect");
                let welcomed_ns = now_ns();
                let mut stats = stats;
                stats.recovered = welcome.recovered;
                let result = read_loop(ws, stats, stop_rx, progress).await;
                (welcomed_ns, result)
            }));
        }
        let deadline = Instant::now() + Duration::from_millis(DRAIN_TIMEOUT_MS);
        while progress.caught_up.load(Ordering::Relaxed) < connections as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let all_caught_up_ms = (now_ns() - t0) as f64 / 1e6;
        let cpu = server.cpu_secs() - cpu_before;
        stop.send_replace(true);
        let mut welcomed_max_ms: f64 = 0.0;
        let mut caught_up: Vec<f64> = Vec::new();
        let mut recovered = 0u64;
        let mut bad = 0u64;
        for handle in opening {
            let (welcomed_ns, (_ws, stats)) = handle.await.expect("reader");
            welcomed_max_ms = welcomed_max_ms.max((welcomed_ns - t0) as f64 / 1e6);
            if stats.caught_up_ns > 0 {
                caught_up.push((stats.caught_up_ns - t0) as f64 / 1e6);
            }
            recovered += u64::from(stats.recovered);
            let complete = stats.next_k == before + missed + 1;
            if !complete || stats.duplicates > 0 || stats.skipped > 0 || stats.misrouted > 0 || stats.seq_errors > 0 {
                bad += 1;
            }
        }
        caught_up.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let p50 = caught_up.get(caught_up.len() / 2).copied().unwrap_or(f64::NAN);
        println!(
            "  run {run} herald: all {connections} welcomed after {welcomed_max_ms:.1} ms, all caught up after {all_caught_up_ms:.1} ms \
             (median client {p50:.1} ms); recovered {recovered}/{connections}; caught up {}/{connections}; \
             clients with loss/dup/misroute {bad}; server CPU {cpu:.2} s",
            caught_up.len()
        );
        rows.push((welcomed_max_ms, all_caught_up_ms, p50, recovered as f64, bad as f64));
    }
    println!();
    println!(
        "### resume: {connections} clients, {missed} missed events each, median of {} runs",
        cli.runs
    );
    println!("| metric | herald | baseline-small | baseline-default |");
    println!("|---|---:|---:|---:|");
    println!(
        "| all welcomed (ms) | {:.1} | n/a (no resume) | n/a (no resume) |",
        median(rows.iter().map(|r| r.0).collect())
    );
    println!(
        "| all caught up (ms) | {:.1} | n/a | n/a |",
        median(rows.iter().map(|r| r.1).collect())
    );
    println!(
        "| median client caught up (ms) | {:.1} | n/a | n/a |",
        median(rows.iter().map(|r| r.2).collect())
    );
    println!(
        "| clients recovered (welcome.recovered) | {:.0} | n/a | n/a |",
        median(rows.iter().map(|r| r.3).collect())
    );
    println!(
        "| clients with loss/dup/misroute | {:.0} | n/a | n/a |",
        median(rows.iter().map(|r| r.4).collect())
    );
}

/// (extra) `connections` sockets (default 5,000) that never finish an HTTP request: the even
/// ones send nothing, the odd ones a request one byte per quarter of the deadline. Each waits
/// for the server to end it (EOF or reset), for at most the deadline plus `STALLED_PATIENCE_MS`.
/// Meanwhile `STALLED_USERS` users connect over WebSocket. Reported per process server: server
/// RSS before, with the sockets open, and after; how many the server ended and when (from each
/// socket's connect); how many users were welcomed.
async fn scenario_stalled(cli: &Cli) {
    let sockets = cli.connections.unwrap_or(if cli.quick { 1_000 } else { 5_000 });
    let timeout_ms = cli.http_request_timeout_ms.unwrap_or(STALLED_REQUEST_TIMEOUT_MS);
    println!();
    println!(
        "## Scenario (extra): {sockets} sockets that never finish an HTTP request (herald: --http-request-timeout-ms {timeout_ms})"
    );
    let servers: Vec<ServerKind> = cli.servers.iter().copied().filter(|k| !k.in_process()).collect();
    for run in 0..cli.runs {
        for &kind in &servers {
            let server = start_server(cli, kind).await;
            let before = server.rss_kib();
            let addr = server.addr;
            let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY_MAX));
            let mut tasks = Vec::with_capacity(sockets);
            for i in 0..sockets {
                let gate = gate.clone();
                let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
                let task = tokio::spawn(async move {
                    let permit = gate.acquire_owned().await.expect("gate open");
                    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                    drop(permit);
                    let _ = opened_tx.send(());
                    let opened = Instant::now();
                    let give_up = opened + Duration::from_millis(timeout_ms + STALLED_PATIENCE_MS);
                    let request =
                        b"POST /v1/users/u0/events HTTP/1.1\r\nHost: herald\r\nContent-Type: application/json\r\n";
                    let mut unsent: &[u8] = if i % 2 == 1 { request } else { &[] };
                    let byte_every = Duration::from_millis((timeout_ms / 4).max(1));
                    let mut buf = [0u8; 256];
                    loop {
                        let next_byte = tokio::time::sleep(byte_every);
                        tokio::select! {
                            read = stream.read(&mut buf) => match read {
                                Ok(0) | Err(_) => return Ok::<Option<Duration>, String>(Some(opened.elapsed())),
                                Ok(_) => {}
                            },
                            () = tokio::time::sleep_until(give_up.into()) => return Ok(None),
                            () = next_byte, if !unsent.is_empty() => {
                                if stream.write_all(&unsent[..1]).await.is_err() {
                                    return Ok(Some(opened.elapsed()));
                                }
                                unsent = &unsent[1..];
                            }
                        }
                    }
                });
                tasks.push((task, opened_rx));
            }
            let mut opened = 0;
            for (_, opened_rx) in &mut tasks {
                if opened_rx.await.is_ok() {
                    opened += 1;
                }
            }
            let open_rss = server.rss_kib();
            let users = connect_population(addr, STALLED_USERS, 1, None).await;
            let users_seen = match &users {
                Ok(_) => format!("all {STALLED_USERS} welcomed"),
                Err(e) => format!("not all welcomed: {e}"),
            };
            let mut ended: Vec<f64> = Vec::with_capacity(sockets);
            let mut kept_open = 0;
            for (task, _) in tasks {
                match task.await.expect("socket task") {
                    Ok(Some(after)) => ended.push(after.as_secs_f64() * 1000.0),
                    Ok(None) => kept_open += 1,
                    Err(_) => {}
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let after = server.rss_kib();
            ended.sort_by(f64::total_cmp);
            let pick = |q: f64| {
                ended
                    .get(((ended.len() as f64 - 1.0) * q) as usize)
                    .copied()
                    .unwrap_or(f64::NAN)
            };
            println!(
                "  run {run} {:<17} opened {opened}/{sockets}; ended by the server {} (ms after connect: min {:.0} p50 {:.0} max {:.0}), still open after {} ms: {kept_open}; users connecting meanwhile: {users_seen}; RSS before {before} KiB, open {open_rss} KiB, after {after} KiB",
                kind.name(),
                ended.len(),
                pick(0.0),
                pick(0.5),
                pick(1.0),
                timeout_ms + STALLED_PATIENCE_MS,
            );
            if let Ok(population) = users {
                let (clients, _) = population.stop().await;
                drop(clients);
            }
            drop(server);
        }
    }
}
