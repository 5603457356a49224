//! The `herald` binary as operators run it: a real process, stopped by the signals that
//! process managers send. SIGTERM (`docker stop`, Kubernetes, systemd) and SIGINT (Ctrl-C) must
//! both start the graceful shutdown: every client gets `shutting_down` and the 1001 close that
//! tells it to resume elsewhere, and the process exits with success. Without a handler,
//! SIGTERM's default action kills the process and clients see only a dropped socket.
#![cfg(unix)]

mod common;

use common::*;
use herald_core::protocol::ErrorCode;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const JWT_SECRET: &str = "binary-test-jwt-secret-0123456789abcdef";

/// A `herald serve` process on a free loopback port; killed on drop if still running.
struct HeraldProcess {
    child: Child,
    addr: SocketAddr,
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn herald() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .env("HERALD_JWT_SECRET", JWT_SECRET)
        .env("HERALD_API_KEY", API_KEY)
        .env("RUST_LOG", "warn");
    command
}

async fn spawn_herald() -> HeraldProcess {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = herald()
        .args(["serve", "--listen", &addr.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn herald serve");
    let process = HeraldProcess { child, addr };
    // Ready once it accepts connections; then /healthz must say so.
    wait_listening(addr).await;
    assert_eq!(http(addr, "GET", "/healthz", None, None).await.0, 200);
    process
}

/// A token from the binary's own `token` subcommand (wall-clock expiry, like production).
fn mint(user: &str) -> String {
    let output = herald()
        .args(["token", "--user", user, "--ttl", "1h"])
        .output()
        .expect("run herald token");
    assert!(output.status.success(), "herald token failed: {output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// Through the shell's built-in `kill`: `/bin/sh` exists everywhere, a `kill` binary may not.
fn send_signal(child: &Child, signal: &str) {
    let status = Command::new("/bin/sh")
        .args(["-c", &format!("kill -s {signal} {}", child.id())])
        .status()
        .expect("run /bin/sh");
    assert!(status.success(), "kill -s {signal} failed");
}

/// Connect, subscribe, receive one published event, send `signal`, then expect the graceful
/// close and a successful exit.
async fn signal_stops_gracefully(signal: &str) {
    let mut herald = spawn_herald().await;
    let url = format!("ws://{}/v1/ws", herald.addr);
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("websocket handshake");
    send_hello(&mut ws, &mint("alice"), None).await;
    assert_eq!(expect_welcome(&mut ws).await.user, "alice");
    let body = json!({"run": "run-1", "kind": "agent_started", "data": {"n": 1}});
    let (status, reply) = http_publish(herald.addr, "alice", &body).await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(expect_event(&mut ws).await, (1, json!({"n": 1})));

    send_signal(&herald.child, signal);
    expect_error_close(&mut ws, ErrorCode::ShuttingDown).await;
    drop(ws);
    let exit = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(status) = herald.child.try_wait().expect("try_wait") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("herald still running {WAIT:?} after {signal}"));
    assert!(exit.success(), "herald exited with {exit} after {signal}");
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_cleanly() {
    signal_stops_gracefully("TERM").await;
}

#[tokio::test]
async fn sigint_closes_clients_with_1001_and_exits_cleanly() {
    signal_stops_gracefully("INT").await;
}

/// Waits (bounded) until `addr` accepts connections.
async fn wait_listening(addr: SocketAddr) {
    let ready = tokio::time::timeout(WAIT, async {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(ready.is_ok(), "herald did not listen on {addr} within {WAIT:?}");
}

/// A `herald serve --dev` process, listening, and the banner it printed. The banner ends with
/// the blank line after the curl command; stdout is drained after it, so no write can fail.
async fn spawn_dev(mut command: Command, flags: &[&str]) -> (HeraldProcess, String) {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = command
        .args(["serve", "--dev", "--listen", &addr.to_string()])
        .args(flags)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn herald serve --dev");
    let stdout = child.stdout.take().expect("piped stdout");
    let process = HeraldProcess { child, addr };
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        let mut banner = String::new();
        let mut publish = false;
        for line in lines.by_ref() {
            let end = publish && line.is_empty();
            publish |= line == "Publish:";
            banner.push_str(&line);
            banner.push('\n');
            if end {
                break;
            }
        }
        let _ = sender.send(banner);
        lines.for_each(drop);
    });
    let banner = receiver.recv_timeout(WAIT).expect("the --dev banner within WAIT");
    wait_listening(addr).await;
    (process, banner)
}

/// The line after the one that starts with `heading`, trimmed.
fn line_after<'a>(banner: &'a str, heading: &str) -> &'a str {
    let mut lines = banner.lines().skip_while(|line| !line.starts_with(heading));
    assert!(lines.next().is_some(), "no {heading:?} in {banner}");
    lines
        .next()
        .unwrap_or_else(|| panic!("nothing after {heading:?} in {banner}"))
        .trim()
}

/// The curl command under "Publish:", its continuation lines included.
fn publish_command(banner: &str) -> String {
    let lines: Vec<&str> = banner
        .lines()
        .skip_while(|line| *line != "Publish:")
        .skip(1)
        .take_while(|line| !line.is_empty())
        .collect();
    assert!(!lines.is_empty(), "no publish command in {banner}");
    lines.join("\n")
}

/// Runs banner `lines` the way an operator would, with `sh`, and returns its stdout. `herald`
/// is this binary, and `curl` prints the arguments it was given (NUL-terminated): the test sees
/// exactly what the shell made of the quoting and of `$VARIABLES`, with no curl installed. The
/// environment holds only what `env` gives.
fn run_in_shell(lines: &str, env: &[(&str, &str)]) -> String {
    let script = format!(
        "herald() {{ \"$HERALD_BIN\" \"$@\"; }}\ncurl() {{ for arg in \"$@\"; do printf '%s\\0' \"$arg\"; done; }}\n{lines}\n"
    );
    let output = Command::new("/bin/sh")
        .args(["-c", &script])
        .env_clear()
        .env("HERALD_BIN", env!("CARGO_BIN_EXE_herald"))
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .expect("run /bin/sh");
    assert!(output.status.success(), "{script} failed: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// Sends what the banner's curl command sends (method, URL, headers, body as the shell passed
/// them) and returns the status.
async fn publish_as_curl(addr: SocketAddr, curl_args: &str) -> u16 {
    let mut args = curl_args.split_terminator('\0');
    let (mut method, mut url, mut headers, mut body) = ("GET", None, Vec::new(), None);
    while let Some(arg) = args.next() {
        match arg {
            "-sS" => {}
            "-X" => method = args.next().expect("-X takes a method"),
            "-H" => headers.push(args.next().expect("-H takes a header")),
            "-d" => body = args.next(),
            _ if arg.starts_with('-') => panic!("unexpected curl option {arg:?}"),
            _ => url = Some(arg),
        }
    }
    let path = url
        .and_then(|url| url.strip_prefix(&format!("http://{addr}")))
        .unwrap_or_else(|| panic!("no URL to {addr} in {curl_args:?}"));
    assert!(headers.contains(&"Content-Type: application/json"), "{headers:?}");
    let bearer = headers
        .iter()
        .find_map(|header| header.strip_prefix("Authorization: Bearer "))
        .unwrap_or_else(|| panic!("no bearer in {headers:?}"));
    http(addr, method, path, Some(bearer), body).await.0
}

/// Connects to `addr`, says hello with `token`, and expects to be welcomed as alice.
async fn connect_as_alice(addr: SocketAddr, token: &str) -> Ws {
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws")))
        .await
        .expect("connect in time")
        .expect("websocket handshake");
    send_hello(&mut ws, token, None).await;
    assert_eq!(expect_welcome(&mut ws).await.user, "alice");
    ws
}

/// The banner's publish command, run by the shell, delivers its event to `ws`.
async fn banner_publish_reaches(addr: SocketAddr, banner: &str, env: &[(&str, &str)], ws: &mut Ws) {
    let curl_args = run_in_shell(&publish_command(banner), env);
    assert_eq!(publish_as_curl(addr, &curl_args).await, 201, "{curl_args:?}");
    assert_eq!(expect_event(ws).await, (1, json!({"text": "hello"})));
}

/// `herald serve --dev` with both secrets given prints neither (a deployment that kept `--dev`
/// would otherwise write its real secrets to its logs), and its commands work as printed: the
/// `herald token` command (with the audience, quoted) mints a token the server accepts, and
/// the curl command's `$HERALD_API_KEY` is expanded by the shell.
#[tokio::test]
async fn dev_banner_with_given_secrets_prints_working_commands_and_no_secret() {
    const AUDIENCE: &str = "a dev's audience";
    let (herald, banner) = spawn_dev(herald(), &["--token-audience", AUDIENCE]).await;
    assert!(!banner.contains(JWT_SECRET) && !banner.contains(API_KEY), "{banner}");
    assert!(banner.contains("HERALD_JWT_SECRET: given, not printed"), "{banner}");
    assert!(banner.contains("HERALD_API_KEY: given, not printed"), "{banner}");

    let mint = line_after(&banner, "A token for user alice");
    assert_eq!(
        mint,
        r"herald token --user alice --ttl 1h --audience 'a dev'\''s audience'"
    );
    let env = [("HERALD_JWT_SECRET", JWT_SECRET), ("HERALD_API_KEY", API_KEY)];
    let token = run_in_shell(mint, &env);
    let mut ws = connect_as_alice(herald.addr, token.trim()).await;

    assert!(
        publish_command(&banner).contains(r#"-H "Authorization: Bearer $HERALD_API_KEY""#),
        "{banner}"
    );
    banner_publish_reaches(herald.addr, &banner, &env, &mut ws).await;
}

/// `herald serve --dev` with no secrets prints the ones it generated, a token that works, and
/// a curl command with the generated key; the exported secret mints working tokens too.
#[tokio::test]
async fn dev_banner_with_generated_secrets_prints_them_and_working_commands() {
    let mut command = herald();
    command.env_remove("HERALD_JWT_SECRET").env_remove("HERALD_API_KEY");
    let (herald, banner) = spawn_dev(command, &[]).await;
    let exports: Vec<&str> = banner
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("export "))
        .collect();
    assert_eq!(exports.len(), 2, "{banner}");
    assert!(exports[0].starts_with("export HERALD_JWT_SECRET="), "{banner}");
    assert!(exports[1].starts_with("export HERALD_API_KEY="), "{banner}");

    let token = line_after(&banner, "A token for user alice");
    let mut ws = connect_as_alice(herald.addr, token).await;
    // The printed key itself, not a variable: nothing in the shell's environment.
    banner_publish_reaches(herald.addr, &banner, &[], &mut ws).await;

    let minted = run_in_shell(&format!("{}\nherald token --user alice", exports.join("\n")), &[]);
    connect_as_alice(herald.addr, minted.trim()).await;
}

/// A `herald serve --listen 127.0.0.1:0` process with `flags`, logging at info, and the address
/// its start-up log says it serves on. Stderr is drained after that line, so no write blocks.
async fn spawn_on_any_port(flags: &[&str]) -> HeraldProcess {
    let mut child = herald()
        .env("RUST_LOG", "info")
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald serve");
    let stderr = child.stderr.take().expect("piped stderr");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
        for line in lines.by_ref() {
            if line.contains("herald serving") {
                let _ = sender.send(line);
                break;
            }
        }
        lines.for_each(drop);
    });
    let line = receiver.recv_timeout(WAIT).expect("the start-up log line within WAIT");
    let addr = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("listen="))
        .unwrap_or_else(|| panic!("no listen= in {line:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("no address in {line:?}: {e}"));
    HeraldProcess { child, addr }
}

/// With `--listen 127.0.0.1:0` the start-up log names the port actually bound, not port 0: it
/// is the only way to find the server.
#[tokio::test]
async fn the_start_up_log_names_the_bound_address() {
    let herald = spawn_on_any_port(&[]).await;
    assert_ne!(herald.addr.port(), 0, "the log shows the bound port");
    assert_eq!(http(herald.addr, "GET", "/healthz", None, None).await.0, 200);
}

/// Waits (bounded) for the process to exit.
async fn wait_exit(herald: &mut HeraldProcess, within: Duration) -> Option<std::process::ExitStatus> {
    tokio::time::timeout(within, async {
        loop {
            if let Some(status) = herald.child.try_wait().expect("try_wait") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .ok()
}

/// During the drain (here held open for 20 s by a publish whose body never arrives), a second
/// stop signal ends the process at once, with the exit code of a process that signal killed:
/// the operator who presses Ctrl-C twice is not left with SIGKILL as the only way out.
#[tokio::test]
async fn a_second_signal_during_the_drain_exits_at_once_with_failure() {
    let mut herald = spawn_on_any_port(&["--write-timeout-ms", "20000", "--http-request-timeout-ms", "60000"]).await;
    let mut held = tokio::net::TcpStream::connect(herald.addr).await.unwrap();
    let half_a_publish = format!(
        "POST /v1/users/alice/events HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"run\":"
    );
    tokio::io::AsyncWriteExt::write_all(&mut held, half_a_publish.as_bytes())
        .await
        .unwrap();
    // Let the handler start waiting for the rest of the body.
    tokio::time::sleep(Duration::from_millis(200)).await;

    send_signal(&herald.child, "TERM");
    // The first signal was handled once the listener is closed.
    let closed = tokio::time::timeout(WAIT, async {
        while tokio::net::TcpStream::connect(herald.addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "the listener did not close after SIGTERM");
    assert!(
        wait_exit(&mut herald, Duration::from_millis(500)).await.is_none(),
        "the held publish keeps the drain going"
    );

    send_signal(&herald.child, "INT");
    let exit = wait_exit(&mut herald, WAIT)
        .await
        .unwrap_or_else(|| panic!("herald still running {WAIT:?} after the second signal"));
    assert_eq!(exit.code(), Some(128 + 2), "exited as if killed by SIGINT: {exit}");
    drop(held);
}
