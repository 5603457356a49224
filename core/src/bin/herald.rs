//! `herald`: run a notification server, or mint a development token.
//!
//! ```text
//! herald serve --listen 127.0.0.1:8080            # HERALD_JWT_SECRET and HERALD_API_KEY required
//! herald serve --dev                              # generates and prints secrets and a sample curl
//! herald token --user alice --ttl 1h              # HERALD_JWT_SECRET or --secret
//! ```
//!
//! This is the only place in Herald that reads the wall clock and OS randomness: the server's
//! `WallClock` (token expiry, judged by the system clock at each check), the id generator's
//! seed (once, at start-up), and the tokens and secrets `herald token` and `--dev` print.

use axum::serve::ListenerExt;
use clap::{Args, Parser, Subcommand};
use herald_core::auth::mint_token_for_audience;
use herald_core::clock::WallClock;
use herald_core::hub::HubConfig;
use herald_core::rng::{os_seed, SeededRng};
use herald_core::server::{disable_nagle, Server, ServerConfig};
use std::io::Read;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

/// The signals that start a graceful shutdown: SIGINT (Ctrl-C) and, on Unix, SIGTERM, which is
/// what `docker stop`, Kubernetes and systemd send. Without the SIGTERM handler those would
/// kill the process at once, and clients would see a dropped socket instead of the 1001 close
/// that tells them to resume elsewhere. Installed before serving, so a signal that arrives
/// early is not lost to the default action.
struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    #[cfg(unix)]
    fn install() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    #[cfg(not(unix))]
    fn install() -> std::io::Result<StopSignals> {
        Ok(StopSignals {})
    }

    /// Waits for the first stop signal and returns its name.
    #[cfg(unix)]
    async fn recv(mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }

    #[cfg(not(unix))]
    async fn recv(self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

#[derive(Parser)]
#[command(name = "herald", version, about = "Real-time notifications for AI agent runs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: WebSocket at /v1/ws, publish API at POST /v1/users/{user}/events.
    Serve(Box<ServeArgs>),
    /// Print a JWT for a user (development and testing).
    Token(TokenArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// HS256 secret that signs client tokens.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Bearer key for the HTTP publish API.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Audience a client token must name in `aud` (unset: `aud` is not checked). For a JWT
    /// secret shared with other services.
    #[arg(long, env = "HERALD_TOKEN_AUDIENCE")]
    token_audience: Option<String>,
    /// Generate the JWT secret and API key (unless given) and print them with a sample curl.
    #[arg(long)]
    dev: bool,
    /// Events kept per user for replay.
    #[arg(long, env = "HERALD_RETENTION_EVENTS_MAX", default_value_t = HubConfig::default().retention_events_max)]
    retention_events_max: u64,
    /// Age after which retained events are evicted.
    #[arg(long, env = "HERALD_RETENTION_AGE_MS", default_value_t = HubConfig::default().retention_age_ms)]
    retention_age_ms: u64,
    /// Encoded bytes retained across all users.
    #[arg(long, env = "HERALD_RETENTION_BYTES_MAX", default_value_t = HubConfig::default().retention_bytes_max)]
    retention_bytes_max: u64,
    /// Connections (tabs) per user.
    #[arg(long, env = "HERALD_CONNECTIONS_PER_USER_MAX", default_value_t = HubConfig::default().connections_per_user_max)]
    connections_per_user_max: u64,
    /// Connections in total.
    #[arg(long, env = "HERALD_CONNECTIONS_MAX", default_value_t = HubConfig::default().connections_max)]
    connections_max: u64,
    /// Users with a live stream.
    #[arg(long, env = "HERALD_USERS_MAX", default_value_t = HubConfig::default().users_max)]
    users_max: u64,
    /// Events a connection may lag behind before it is closed with 4003.
    #[arg(long, env = "HERALD_SEND_QUEUE_MAX", default_value_t = HubConfig::default().send_queue_max)]
    send_queue_max: u64,
    /// Control frames queued per connection.
    #[arg(long, env = "HERALD_CONTROL_QUEUE_MAX", default_value_t = HubConfig::default().control_queue_max)]
    control_queue_max: u64,
    /// Largest encoded event frame.
    #[arg(long, env = "HERALD_EVENT_BYTES_MAX", default_value_t = HubConfig::default().event_bytes_max)]
    event_bytes_max: u64,
    /// Time a client has to send hello.
    #[arg(long, env = "HERALD_HELLO_TIMEOUT_MS", default_value_t = defaults().hello_timeout_ms)]
    hello_timeout_ms: u64,
    /// Interval of server WebSocket pings.
    #[arg(long, env = "HERALD_HEARTBEAT_INTERVAL_MS", default_value_t = defaults().heartbeat_interval_ms)]
    heartbeat_interval_ms: u64,
    /// Silence after which a connection is closed with 4010.
    #[arg(long, env = "HERALD_IDLE_TIMEOUT_MS", default_value_t = defaults().idle_timeout_ms)]
    idle_timeout_ms: u64,
    /// Bound on every socket write and HTTP body read.
    #[arg(long, env = "HERALD_WRITE_TIMEOUT_MS", default_value_t = defaults().write_timeout_ms)]
    write_timeout_ms: u64,
    /// Time an HTTP socket has to begin its next request, and a begun request to be answered.
    #[arg(long, env = "HERALD_HTTP_REQUEST_TIMEOUT_MS", default_value_t = defaults().http_request_timeout_ms)]
    http_request_timeout_ms: u64,
    /// Send each write at once (TCP_NODELAY), the default: event frames are small, and Nagle's
    /// algorithm would hold one back until the previous is acknowledged. `false` lets the
    /// kernel merge small writes instead: a little less CPU per event at saturation, a higher
    /// tail latency (BENCHMARKS.md).
    #[arg(long, env = "HERALD_TCP_NODELAY", default_value_t = true, action = clap::ArgAction::Set)]
    tcp_nodelay: bool,
    /// Sockets open at once (HTTP and WebSocket); one more is closed when accepted.
    #[arg(long, env = "HERALD_SOCKETS_MAX", default_value_t = defaults().sockets_max)]
    sockets_max: u64,
    /// Largest incoming WebSocket frame.
    #[arg(long, env = "HERALD_FRAME_BYTES_MAX", default_value_t = defaults().frame_bytes_max)]
    frame_bytes_max: usize,
    /// Interval of the retention-age eviction tick.
    #[arg(long, env = "HERALD_TICK_INTERVAL_MS", default_value_t = defaults().tick_interval_ms)]
    tick_interval_ms: u64,
    /// Per-connection WebSocket read buffer.
    #[arg(long, env = "HERALD_WS_READ_BUFFER_BYTES", default_value_t = defaults().ws_read_buffer_bytes)]
    ws_read_buffer_bytes: usize,
}

#[derive(Args)]
struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    user: String,
    /// Lifetime: a number with unit s, m, h or d (e.g. 90s, 30m, 1h, 7d).
    #[arg(long, default_value = "1h", value_parser = parse_ttl_secs)]
    ttl: u64,
    /// HS256 secret (the server's HERALD_JWT_SECRET).
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    secret: String,
    /// `aud` claim (the server's HERALD_TOKEN_AUDIENCE, if it has one).
    #[arg(long, env = "HERALD_TOKEN_AUDIENCE")]
    audience: Option<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Token(args) => {
            let exp = unix_ms_now() / 1000 + args.ttl;
            let audience = args.audience.as_deref();
            println!(
                "{}",
                mint_token_for_audience(args.secret.as_bytes(), &args.user, exp, audience)
            );
            ExitCode::SUCCESS
        }
        Command::Serve(args) => match serve(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("herald: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn serve(args: ServeArgs) -> Result<(), String> {
    // `--dev` prints the secrets it generates; one that was given is never printed.
    let generated = DevSecrets {
        jwt_secret: args.jwt_secret.is_none(),
        api_key: args.api_key.is_none(),
    };
    let (jwt_secret, api_key) = match (args.jwt_secret.clone(), args.api_key.clone(), args.dev) {
        (Some(secret), Some(key), _) => (secret, key),
        (secret, key, true) => (
            secret.unwrap_or_else(|| random_hex(32)),
            key.unwrap_or_else(|| random_hex(24)),
        ),
        _ => {
            return Err(
                "HERALD_JWT_SECRET and HERALD_API_KEY (or --jwt-secret and --api-key) are required; \
                 use --dev to generate them"
                    .into(),
            )
        }
    };
    let mut config = server_config(&args, jwt_secret.clone(), api_key.clone());
    config.validate()?;
    fit_sockets_to_file_limit(&mut config);
    if args.dev {
        print_dev_banner(
            &args.listen,
            &jwt_secret,
            &api_key,
            args.token_audience.as_deref(),
            generated,
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let clock = WallClock::shared();
        let server = Server::new(config, clock, SeededRng::new(os_seed()))?;
        let listener = listen(args.listen).map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        tracing::info!(listen = %args.listen, "herald serving");
        let on_signal = server.clone();
        let signals = StopSignals::install().map_err(|e| format!("cannot install signal handlers: {e}"))?;
        tokio::spawn(async move {
            let name = signals.recv().await;
            tracing::info!("{name}: graceful shutdown");
            on_signal.shutdown();
        });
        let tcp_nodelay = args.tcp_nodelay;
        server
            .serve(listener.tap_io(move |stream| {
                if tcp_nodelay {
                    disable_nagle(stream);
                }
            }))
            .await
            .map_err(|e| format!("server error: {e}"))?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Connections the kernel completes and queues before the server accepts them. tokio's
/// `TcpListener::bind` queues 1,024; a reconnect storm (every client of a restarted server at
/// once) overflows that, and the kernel then drops handshakes that clients believe complete.
/// The kernel caps it at `net.core.somaxconn` (4,096 by default on current Linux).
const LISTEN_BACKLOG: u32 = 4_096;

/// Binds `addr` the way `TcpListener::bind` does (address reuse on Unix), with `LISTEN_BACKLOG`.
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn server_config(args: &ServeArgs, jwt_secret: String, api_key: String) -> ServerConfig {
    let mut config = ServerConfig::new(jwt_secret.into_bytes(), api_key);
    config.hub = HubConfig {
        retention_events_max: args.retention_events_max,
        retention_age_ms: args.retention_age_ms,
        retention_bytes_max: args.retention_bytes_max,
        connections_per_user_max: args.connections_per_user_max,
        connections_max: args.connections_max,
        users_max: args.users_max,
        send_queue_max: args.send_queue_max,
        control_queue_max: args.control_queue_max,
        event_bytes_max: args.event_bytes_max,
    };
    config.hello_timeout_ms = args.hello_timeout_ms;
    config.heartbeat_interval_ms = args.heartbeat_interval_ms;
    config.idle_timeout_ms = args.idle_timeout_ms;
    config.write_timeout_ms = args.write_timeout_ms;
    config.http_request_timeout_ms = args.http_request_timeout_ms;
    config.sockets_max = args.sockets_max;
    config.frame_bytes_max = args.frame_bytes_max;
    config.tick_interval_ms = args.tick_interval_ms;
    config.ws_read_buffer_bytes = args.ws_read_buffer_bytes;
    config.token_audience = args.token_audience.clone();
    config
}

/// File descriptors kept for everything that is not an accepted socket: the listener, the
/// runtime's epoll and wake-up descriptors, stdio, and room to spare.
const FILES_RESERVED: u64 = 64;

/// Raises the open-file limit to its hard limit (the usual soft limit, 1024, would stop a
/// server at about a thousand sockets), then keeps `sockets_max` under it. Beyond the file
/// limit, `accept` fails and the listener pauses before it tries again, so every new client
/// waits with no error and no count. Under `sockets_max` a socket that does not fit is
/// refused at once and counted in `herald_sockets_refused_total`.
fn fit_sockets_to_file_limit(config: &mut ServerConfig) {
    let Some(files_max) = raise_file_limit() else {
        return;
    };
    let sockets_max = files_max.saturating_sub(FILES_RESERVED).max(1);
    if config.sockets_max > sockets_max {
        tracing::warn!(
            "sockets_max {} is above what the open-file limit {files_max} allows; using {sockets_max} \
             (raise `ulimit -n` to serve more)",
            config.sockets_max
        );
        config.sockets_max = sockets_max;
    }
}

/// Sets the soft open-file limit to the hard one and returns it; `None` if it cannot be read
/// or is unlimited.
#[cfg(unix)]
fn raise_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a valid, exclusive pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one `rlimit` through a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    #[allow(clippy::unnecessary_cast)] // `rlim_t` is `u64` here, narrower on some 32-bit targets
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur as u64)
}

#[cfg(not(unix))]
fn raise_file_limit() -> Option<u64> {
    None
}

/// The library's defaults, which `--help` shows: the binary has no defaults of its own.
fn defaults() -> ServerConfig {
    ServerConfig::new(Vec::new(), String::new())
}

/// Which of the secrets `--dev` generated (and may print).
#[derive(Clone, Copy)]
struct DevSecrets {
    jwt_secret: bool,
    api_key: bool,
}

fn print_dev_banner(
    listen: &SocketAddr,
    jwt_secret: &str,
    api_key: &str,
    audience: Option<&str>,
    generated: DevSecrets,
) {
    println!("herald dev mode — do not use these secrets in production");
    println!();
    if generated.jwt_secret {
        println!("  export HERALD_JWT_SECRET={jwt_secret}");
    } else {
        println!("  HERALD_JWT_SECRET: given, not printed");
    }
    let api_key = if generated.api_key {
        println!("  export HERALD_API_KEY={api_key}");
        api_key.to_string()
    } else {
        println!("  HERALD_API_KEY: given, not printed");
        "$HERALD_API_KEY".to_string()
    };
    println!();
    let token = if generated.jwt_secret {
        mint_token_for_audience(jwt_secret.as_bytes(), "alice", unix_ms_now() / 1000 + 3600, audience)
    } else {
        "$(herald token alice)".to_string()
    };
    println!("A token for user alice (1 hour):");
    println!("  {token}");
    println!();
    println!("Receive (any WebSocket client), e.g.:");
    println!("  websocat ws://{listen}/v1/ws   then send: {{\"type\":\"hello\",\"token\":\"{token}\"}}");
    println!();
    println!("Publish:");
    println!(
        "  curl -sS -X POST http://{listen}/v1/users/alice/events \\\n    -H 'Authorization: Bearer {api_key}' \
         -H 'Content-Type: application/json' \\\n    -d '{{\"run\":\"run-1\",\"kind\":\"agent_started\",\"data\":{{\"text\":\"hello\"}}}}'"
    );
    println!();
}

/// `90s`, `30m`, `1h`, `7d` or plain seconds.
fn parse_ttl_secs(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("bad ttl {text:?}: expected e.g. 30m or 1h"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("bad ttl unit {unit:?}: use s, m, h or d")),
    };
    number
        .checked_mul(scale)
        .filter(|secs| *secs > 0)
        .ok_or_else(|| format!("ttl {text:?} must be positive and fit in u64 seconds"))
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A random hex secret of `bytes` bytes from the OS.
fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if !read_urandom(&mut buf) {
        // No /dev/urandom: std's RandomState keys, which come from the OS.
        for chunk in buf.chunks_mut(8) {
            let word = os_seed().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_urandom(buf: &mut [u8]) -> bool {
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_parses_units() {
        assert_eq!(parse_ttl_secs("90s"), Ok(90));
        assert_eq!(parse_ttl_secs("30m"), Ok(1_800));
        assert_eq!(parse_ttl_secs("1h"), Ok(3_600));
        assert_eq!(parse_ttl_secs("7d"), Ok(604_800));
        assert_eq!(parse_ttl_secs("45"), Ok(45));
        assert!(parse_ttl_secs("0s").is_err());
        assert!(parse_ttl_secs("1y").is_err());
        assert!(parse_ttl_secs("h").is_err());
    }

    fn serve_args(flags: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from([&["herald", "serve"], flags].concat()).expect("valid flags");
        match cli.command {
            Command::Serve(args) => *args,
            Command::Token(_) => unreachable!("parsed serve"),
        }
    }

    #[test]
    fn no_flags_give_the_library_defaults() {
        let config = server_config(&serve_args(&[]), "s".into(), "k".into());
        let library = ServerConfig::new(b"s".to_vec(), "k".into());
        assert_eq!(config.hub, library.hub);
        let timings = |c: &ServerConfig| {
            (
                c.hello_timeout_ms,
                c.heartbeat_interval_ms,
                c.idle_timeout_ms,
                c.write_timeout_ms,
                c.http_request_timeout_ms,
                c.sockets_max,
                c.frame_bytes_max,
                c.tick_interval_ms,
                c.ws_read_buffer_bytes,
            )
        };
        assert_eq!(timings(&config), timings(&library));
    }

    #[test]
    fn every_limit_flag_reaches_the_config() {
        let args = serve_args(&[
            "--retention-events-max=11",
            "--retention-age-ms=12",
            "--retention-bytes-max=13",
            "--connections-per-user-max=14",
            "--connections-max=15",
            "--users-max=16",
            "--send-queue-max=17",
            "--control-queue-max=18",
            "--event-bytes-max=19",
            "--hello-timeout-ms=20",
            "--heartbeat-interval-ms=21",
            "--idle-timeout-ms=22",
            "--write-timeout-ms=23",
            "--http-request-timeout-ms=24",
            "--sockets-max=25",
            "--frame-bytes-max=26",
            "--tick-interval-ms=27",
            "--ws-read-buffer-bytes=28",
        ]);
        let config = server_config(&args, "s".into(), "k".into());
        let hub = &config.hub;
        assert_eq!(
            [
                hub.retention_events_max,
                hub.retention_age_ms,
                hub.retention_bytes_max,
                hub.connections_per_user_max,
                hub.connections_max,
                hub.users_max,
                hub.send_queue_max,
                hub.control_queue_max,
                hub.event_bytes_max,
                config.hello_timeout_ms,
                config.heartbeat_interval_ms,
                config.idle_timeout_ms,
                config.write_timeout_ms,
                config.http_request_timeout_ms,
                config.sockets_max,
                config.frame_bytes_max as u64,
                config.tick_interval_ms,
                config.ws_read_buffer_bytes as u64,
            ],
            std::array::from_fn(|i| 11 + i as u64)
        );
    }

    #[test]
    fn sockets_max_is_kept_under_the_open_file_limit() {
        let mut config = ServerConfig::new(b"s".to_vec(), "k".into());
        config.sockets_max = u64::MAX;
        fit_sockets_to_file_limit(&mut config);
        match raise_file_limit() {
            Some(files_max) => {
                assert_eq!(config.sockets_max, files_max.saturating_sub(FILES_RESERVED).max(1));
                // A limit that fits is left alone.
                config.sockets_max = 10;
                fit_sockets_to_file_limit(&mut config);
                assert_eq!(config.sockets_max, 10);
            }
            None => assert_eq!(config.sockets_max, u64::MAX, "no file limit to fit under"),
        }
    }
}
