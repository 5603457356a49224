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
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const JWT_SECRET: &str = "binary-test-jwt-secret";

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
    // Ready once it accepts connections (bounded like every other wait); then /healthz must say so.
    let ready = tokio::time::timeout(WAIT, async {
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(ready.is_ok(), "herald did not listen on {addr} within {WAIT:?}");
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

/// What `herald serve --dev` prints: the secrets it generated, never one it was given (a
/// deployment that kept `--dev` would otherwise write its real secrets to its logs).
#[tokio::test]
async fn dev_mode_prints_only_the_secrets_it_generated() {
    async fn banner(mut command: Command) -> String {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = command
            .args(["serve", "--dev", "--listen", &addr.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn herald serve --dev");
        let ready = tokio::time::timeout(WAIT, async {
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        send_signal(&child, "TERM");
        let output = child.wait_with_output().expect("herald exits");
        assert!(ready.is_ok(), "herald --dev never listened");
        String::from_utf8(output.stdout).unwrap()
    }
    let given = banner(herald()).await;
    assert!(!given.contains(JWT_SECRET) && !given.contains(API_KEY), "{given}");
    assert!(given.contains("HERALD_JWT_SECRET: given, not printed"), "{given}");
    assert!(given.contains("$HERALD_API_KEY"), "{given}");

    let mut command = herald();
    command.env_remove("HERALD_JWT_SECRET").env_remove("HERALD_API_KEY");
    let generated = banner(command).await;
    assert!(generated.contains("export HERALD_JWT_SECRET="), "{generated}");
    assert!(generated.contains("export HERALD_API_KEY="), "{generated}");
}
