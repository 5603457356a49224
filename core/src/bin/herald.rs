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
use herald_core::clock::{system_unix_secs, WallClock, CONFIG_DURATION_MAX_MS};
use herald_core::hub::HubConfig;
use herald_core::protocol::validate_id;
use herald_core::rng::{os_seed, SeededRng};
use herald_core::server::{disable_nagle, Server, ServerConfig};
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

/// The signals that start a graceful shutdown: SIGINT (Ctrl-C) and, on Unix, SIGTERM, which is
/// what `docker stop`, Kubernetes and systemd send. Without the SIGTERM handler those would
/// kill the process at once, and clients would see a dropped socket instead of the 1001 close
/// that tells them to resume elsewhere. Installed before serving, so a signal that arrives
/// early is not lost to the default action. A second one during the drain ends the process at
/// once: the handlers replaced the default action, and an operator who asks twice (Ctrl-C
/// again) should not have to reach for SIGKILL while the drain runs (up to twice
/// `write_timeout_ms`).
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

    /// Waits for the next stop signal.
    #[cfg(unix)]
    async fn recv(&mut self) -> StopSignal {
        tokio::select! {
            _ = self.interrupt.recv() => StopSignal { name: "SIGINT", number: libc::SIGINT },
            _ = self.terminate.recv() => StopSignal { name: "SIGTERM", number: libc::SIGTERM },
        }
    }

    #[cfg(not(unix))]
    async fn recv(&mut self) -> StopSignal {
        let _ = tokio::signal::ctrl_c().await;
        StopSignal {
            name: "Ctrl-C",
            number: 2,
        }
    }
}

/// One stop signal received.
struct StopSignal {
    name: &'static str,
    number: i32,
}

impl StopSignal {
    /// The exit code of a process that a second signal stopped mid-drain: 128 + the signal's
    /// number, what a shell reports for a process the signal killed (130 for SIGINT, 143 for
    /// SIGTERM), so that a supervisor does not count a cut-short drain as a clean exit.
    fn forced_exit_code(&self) -> i32 {
        128 + self.number
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
    // Not bounded like the timers below: no deadline is computed from it (the hub saturates
    // `published_at + age`), and u64::MAX means "never by age".
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
    /// Quiet streams remembered by epoch and head, so a quiet user's resume loses nothing
    /// (0: forget at once; each forgotten one costs its user an epoch gap).
    #[arg(long, env = "HERALD_DORMANT_STREAMS_MAX", default_value_t = HubConfig::default().dormant_streams_max)]
    dormant_streams_max: u64,
    /// Time a client has to send hello.
    #[arg(long, env = "HERALD_HELLO_TIMEOUT_MS", default_value_t = defaults().hello_timeout_ms, value_parser = parse_duration_ms)]
    hello_timeout_ms: u64,
    /// Interval of server WebSocket pings.
    #[arg(long, env = "HERALD_HEARTBEAT_INTERVAL_MS", default_value_t = defaults().heartbeat_interval_ms, value_parser = parse_duration_ms)]
    heartbeat_interval_ms: u64,
    /// Silence after which a connection is closed with 4010.
    #[arg(long, env = "HERALD_IDLE_TIMEOUT_MS", default_value_t = defaults().idle_timeout_ms, value_parser = parse_duration_ms)]
    idle_timeout_ms: u64,
    /// Bound on every socket write and HTTP body read.
    #[arg(long, env = "HERALD_WRITE_TIMEOUT_MS", default_value_t = defaults().write_timeout_ms, value_parser = parse_duration_ms)]
    write_timeout_ms: u64,
    /// Time an HTTP socket has to begin its next request, and a begun request to be answered.
    #[arg(long, env = "HERALD_HTTP_REQUEST_TIMEOUT_MS", default_value_t = defaults().http_request_timeout_ms, value_parser = parse_duration_ms)]
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
    #[arg(long, env = "HERALD_TICK_INTERVAL_MS", default_value_t = defaults().tick_interval_ms, value_parser = parse_duration_ms)]
    tick_interval_ms: u64,
    /// Per-connection WebSocket read buffer.
    #[arg(long, env = "HERALD_WS_READ_BUFFER_BYTES", default_value_t = defaults().ws_read_buffer_bytes)]
    ws_read_buffer_bytes: usize,
}

#[derive(Args)]
struct TokenArgs {
    /// The user id (`sub`): ASCII letters, digits and -_.:@, at most 128 bytes.
    #[arg(long, value_parser = parse_user)]
    user: String,
    /// Lifetime: a number with unit s, m, h or d (e.g. 90s, 30m, 1h, 7d), at most 365d.
    #[arg(long, default_value = "1h", value_parser = parse_ttl_secs)]
    ttl: u64,
    /// HS256 secret (the server's HERALD_JWT_SECRET).
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true, value_parser = parse_token_secret)]
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
        Command::Token(args) => match expiry_after(args.ttl) {
            Ok(exp) => {
                let audience = args.audience.as_deref();
                println!(
                    "{}",
                    mint_token_for_audience(args.secret.as_bytes(), &args.user, exp, audience)
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("herald: {e}");
                ExitCode::from(2)
            }
        },
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
            secret.map_or_else(|| random_hex(32), Ok)?,
            key.map_or_else(|| random_hex(24), Ok)?,
        ),
        _ => {
            return Err(
                "HERALD_JWT_SECRET and HERALD_API_KEY (or --jwt-secret and --api-key) are required; \
                 use --dev to generate them"
                    .into(),
            )
        }
    };
    check_secrets(&jwt_secret, &api_key)?;
    let mut config = server_config(&args, jwt_secret.clone(), api_key.clone());
    config.validate()?;
    fit_sockets_to_file_limit(&mut config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let clock = WallClock::shared();
        let server = Server::new(config, clock, SeededRng::new(os_seed()))?;
        let listener = listen(args.listen).map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        // The bound address, not `--listen` as given: with port 0 only this says where to go.
        let bound = listener
            .local_addr()
            .map_err(|e| format!("cannot read the address bound for {}: {e}", args.listen))?;
        if args.dev {
            print_dev_banner(&bound, &jwt_secret, &api_key, args.token_audience.as_deref(), generated)?;
        }
        tracing::info!(listen = %bound, "herald serving");
        let on_signal = server.clone();
        let mut signals = StopSignals::install().map_err(|e| format!("cannot install signal handlers: {e}"))?;
        tokio::spawn(async move {
            let first = signals.recv().await;
            tracing::info!("{}: graceful shutdown (send it again to stop at once)", first.name);
            on_signal.shutdown();
            let second = signals.recv().await;
            let code = second.forced_exit_code();
            tracing::error!(
                exit_code = code,
                "{} during the graceful shutdown: exiting at once, clients not yet closed see their sockets end",
                second.name
            );
            std::process::exit(code);
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
        dormant_streams_max: args.dormant_streams_max,
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

/// Lifetime of the token the `--dev` banner mints, as `herald token --ttl` spells it.
const DEV_TOKEN_TTL: &str = "1h";

/// Prints the secrets `--dev` generated and commands to try the server with, each one that a
/// shell runs as printed (`core/tests/binary_signals.rs` runs them).
fn print_dev_banner(
    listen: &SocketAddr,
    jwt_secret: &str,
    api_key: &str,
    audience: Option<&str>,
    generated: DevSecrets,
) -> Result<(), String> {
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
        let exp = expiry_after(parse_ttl_secs(DEV_TOKEN_TTL)?)?;
        let token = mint_token_for_audience(jwt_secret.as_bytes(), "alice", exp, audience);
        println!("A token for user alice (1 hour):");
        println!("  {token}");
        token
    } else {
        // The secret is not printed: show the command that mints with it. The audience is
        // explicit, since the server may have it from `--token-audience` rather than the env.
        let audience = audience.map_or(String::new(), |a| format!(" --audience {}", shell_word(a)));
        println!("A token for user alice (1 hour), with HERALD_JWT_SECRET set:");
        println!("  herald token --user alice --ttl {DEV_TOKEN_TTL}{audience}");
        "<that token>".to_string()
    };
    println!();
    println!("Receive (any WebSocket client), e.g.:");
    println!("  websocat ws://{listen}/v1/ws   then send: {{\"type\":\"hello\",\"token\":\"{token}\"}}");
    println!();
    // Double quotes, so that the shell expands `$HERALD_API_KEY`.
    println!("Publish:");
    println!(
        "  curl -sS -X POST http://{listen}/v1/users/alice/events \\\n    -H \"Authorization: Bearer {api_key}\" \
         -H 'Content-Type: application/json' \\\n    -d '{{\"run\":\"run-1\",\"kind\":\"agent_started\",\"data\":{{\"text\":\"hello\"}}}}'"
    );
    println!();
    Ok(())
}

/// `text` as one shell word: bare when every byte is safe unquoted, else single-quoted.
fn shell_word(text: &str) -> String {
    let bare = |b: u8| b.is_ascii_alphanumeric() || b"-_.:@/+=,%".contains(&b);
    if !text.is_empty() && text.bytes().all(bare) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Longest `herald token --ttl`: 365 days. A token cannot be revoked short of rotating the
/// secret, and these are development tokens: a year covers any fixture or demo, and keeps the
/// expiry (`now + ttl`) far from overflow.
const TOKEN_TTL_SECS_MAX: u64 = 365 * 86_400;

/// `90s`, `30m`, `1h`, `7d` or plain seconds; 1 s to [`TOKEN_TTL_SECS_MAX`].
fn parse_ttl_secs(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("bad ttl unit {unit:?}: use s, m, h or d")),
    };
    if number.is_empty() {
        return Err(format!("bad ttl {text:?}: expected e.g. 30m or 1h"));
    }
    // `number` is all digits: a parse error is an overflow, as is a product beyond u64.
    match number.parse::<u64>().ok().and_then(|n| n.checked_mul(scale)) {
        Some(0) => Err(format!("ttl {text:?} must be positive")),
        Some(secs) if secs <= TOKEN_TTL_SECS_MAX => Ok(secs),
        _ => Err(format!(
            "ttl {text:?} is longer than 365d, the longest accepted (TOKEN_TTL_SECS_MAX)"
        )),
    }
}

/// `herald token --secret`: not empty, since the server refuses to start with an empty
/// `HERALD_JWT_SECRET`, and a token signed with one would be accepted by no server (and forged
/// by anyone).
fn parse_token_secret(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("the secret must not be empty (the server's HERALD_JWT_SECRET; it refuses an empty one)".into());
    }
    Ok(text.to_string())
}

/// The token subject: the server's own id rule, since it refuses (4001) any other `sub`.
fn parse_user(text: &str) -> Result<String, String> {
    validate_id("user", text)
        .map(|()| text.to_string())
        .map_err(|e| format!("{e} (the server would refuse the token with 4001 auth_failed)"))
}

/// Every serve timer (`*_timeout_ms`, `*_interval_ms`): 1 ms to [`CONFIG_DURATION_MAX_MS`], one
/// day. `ServerConfig::validate` enforces the same bound; checked here too so that the error
/// names the flag. Longer is a unit slip, overflows deadlines (`Instant + Duration`
/// panics) and makes the shutdown drain (`write_timeout_ms`) effectively unbounded.
fn parse_duration_ms(text: &str) -> Result<u64, String> {
    text.parse::<u64>()
        .ok()
        .filter(|ms| (1..=CONFIG_DURATION_MAX_MS).contains(ms))
        .ok_or_else(|| {
            format!("expected whole milliseconds from 1 to {CONFIG_DURATION_MAX_MS} (one day, CONFIG_DURATION_MAX_MS)")
        })
}

/// Unix seconds `ttl_secs` from now.
fn expiry_after(ttl_secs: u64) -> Result<u64, String> {
    system_unix_secs()
        .checked_add(ttl_secs)
        .ok_or_else(|| format!("a ttl of {ttl_secs} s overflows the token expiry"))
}

/// Shortest JWT secret `serve` accepts, in bytes of the secret as given (its HMAC key): RFC
/// 7518 §3.2 requires an HS256 key of at least 256 bits. Every user holds a signed token, so a short or guessable secret can be searched
/// offline, and whoever finds it can mint a token for any user and read their events.
const JWT_SECRET_BYTES_MIN: usize = 32;
/// Shortest API key `serve` accepts. Guesses are online, but a 401 is not rate limited, and
/// whoever has the key can publish forged events to any user.
const API_KEY_BYTES_MIN: usize = 16;

/// Refuses secrets too short to be safe, and one secret used for both: a publisher holding
/// the API key could then mint tokens for any user.
fn check_secrets(jwt_secret: &str, api_key: &str) -> Result<(), String> {
    if jwt_secret.len() < JWT_SECRET_BYTES_MIN {
        return Err(format!(
            "HERALD_JWT_SECRET (--jwt-secret) has {} bytes; at least {JWT_SECRET_BYTES_MIN} are required (RFC 7518 §3.2): \
             generate one with `openssl rand -hex 32`",
            jwt_secret.len()
        ));
    }
    if api_key.len() < API_KEY_BYTES_MIN {
        return Err(format!(
            "HERALD_API_KEY (--api-key) has {} bytes; at least {API_KEY_BYTES_MIN} are required: \
             generate one with `openssl rand -hex 16`",
            api_key.len()
        ));
    }
    if jwt_secret == api_key {
        return Err(
            "HERALD_JWT_SECRET and HERALD_API_KEY (--jwt-secret, --api-key) must differ: a publisher could mint tokens"
                .into(),
        );
    }
    Ok(())
}

/// A random hex secret of `bytes` bytes from /dev/urandom.
fn random_hex(bytes: usize) -> Result<String, String> {
    random_hex_from(Path::new("/dev/urandom"), bytes)
}

/// No fallback when `source` cannot be read: the 64-bit [`os_seed`] is no secret, and the
/// operator can pass the secrets instead (this is `--dev` only).
fn random_hex_from(source: &Path, bytes: usize) -> Result<String, String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open(source)
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| {
            format!(
                "--dev cannot read {} to generate secrets ({e}); pass HERALD_JWT_SECRET and \
                 HERALD_API_KEY (or --jwt-secret and --api-key)",
                source.display()
            )
        })?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_or_shared_secrets_are_refused() {
        let jwt = "j".repeat(super::JWT_SECRET_BYTES_MIN);
        let key = "k".repeat(super::API_KEY_BYTES_MIN);
        assert_eq!(super::check_secrets(&jwt, &key), Ok(()));
        let short_jwt = super::check_secrets("change-me-jwt-secret", &key).unwrap_err();
        assert!(
            short_jwt.contains("HERALD_JWT_SECRET (--jwt-secret) has 20 bytes"),
            "{short_jwt}"
        );
        let short_key = super::check_secrets(&jwt, "change-me").unwrap_err();
        assert!(
            short_key.contains("HERALD_API_KEY (--api-key) has 9 bytes"),
            "{short_key}"
        );
        let shared = super::check_secrets(&jwt, &jwt).unwrap_err();
        assert!(shared.contains("must differ"), "{shared}");
    }

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

    #[test]
    fn ttl_is_bounded_by_token_ttl_secs_max() {
        assert_eq!(parse_ttl_secs("365d"), Ok(TOKEN_TTL_SECS_MAX));
        assert_eq!(parse_ttl_secs(&TOKEN_TTL_SECS_MAX.to_string()), Ok(TOKEN_TTL_SECS_MAX));
        let too_long = [
            "366d".to_string(),
            (TOKEN_TTL_SECS_MAX + 1).to_string(),
            u64::MAX.to_string(),
            format!("{}d", u64::MAX / 86_400 + 1),  // the product overflows u64
            "99999999999999999999999s".to_string(), // the number overflows u64
        ];
        for ttl in too_long {
            let error = parse_ttl_secs(&ttl).unwrap_err();
            assert!(error.contains("TOKEN_TTL_SECS_MAX"), "{ttl}: {error}");
        }
        let exp = expiry_after(TOKEN_TTL_SECS_MAX).unwrap();
        assert!(exp > TOKEN_TTL_SECS_MAX, "now is after 1971");
        assert!(expiry_after(u64::MAX).is_err(), "checked, not wrapped");
    }

    #[test]
    fn token_user_follows_the_server_id_rule() {
        assert_eq!(parse_user("alice-1_a.b:c@d"), Ok("alice-1_a.b:c@d".to_string()));
        for user in ["", "bad user!", "é", &"a".repeat(129)] {
            let error = parse_user(user).unwrap_err();
            assert_eq!(
                error.split(" (").next(),
                Some(validate_id("user", user).unwrap_err().to_string().as_str())
            );
        }
        assert!(Cli::try_parse_from(["herald", "token", "--user", "bad user!", "--secret", "s"]).is_err());
    }

    #[test]
    fn a_token_is_never_signed_with_an_empty_secret() {
        let error = Cli::try_parse_from(["herald", "token", "--user", "alice", "--secret", ""])
            .err()
            .expect("an empty secret is refused")
            .to_string();
        assert!(
            error.contains("--secret") && error.contains("must not be empty"),
            "{error}"
        );
        assert!(Cli::try_parse_from(["herald", "token", "--user", "alice", "--secret", "s"]).is_ok());
    }

    #[test]
    fn serve_timers_are_bounded_by_config_duration_max_ms() {
        let timers = [
            "--hello-timeout-ms",
            "--heartbeat-interval-ms",
            "--idle-timeout-ms",
            "--write-timeout-ms",
            "--http-request-timeout-ms",
            "--tick-interval-ms",
        ];
        for flag in timers {
            let max = format!("{flag}={CONFIG_DURATION_MAX_MS}");
            assert!(Cli::try_parse_from(["herald", "serve", max.as_str()]).is_ok(), "{max}");
            for value in [
                "0".to_string(),
                (CONFIG_DURATION_MAX_MS + 1).to_string(),
                u64::MAX.to_string(),
            ] {
                let arg = format!("{flag}={value}");
                let error = Cli::try_parse_from(["herald", "serve", arg.as_str()])
                    .err()
                    .expect(&arg)
                    .to_string();
                assert!(
                    error.contains(flag) && error.contains("CONFIG_DURATION_MAX_MS"),
                    "{error}"
                );
            }
        }
        // Not a timer: u64::MAX is the hub's "never by age".
        let args = serve_args(&["--retention-age-ms=18446744073709551615"]);
        assert_eq!(args.retention_age_ms, u64::MAX);
    }

    #[test]
    fn shell_words_survive_the_shell() {
        assert_eq!(shell_word("herald-api"), "herald-api");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word("$HOME"), "'$HOME'");
    }

    #[cfg(unix)]
    #[test]
    fn dev_secrets_fail_without_os_randomness() {
        let secret = random_hex(32).unwrap();
        assert_eq!(secret.len(), 64);
        assert_ne!(secret, random_hex(32).unwrap());
        for source in ["/nonexistent/urandom", "/dev/null"] {
            let error = random_hex_from(Path::new(source), 32).unwrap_err();
            assert!(error.contains(source) && error.contains("HERALD_JWT_SECRET"), "{error}");
        }
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
