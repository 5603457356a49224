//! Partitions on loopback: a proxy between client and the real server that can go silent
//! without closing anything — exactly what a network partition looks like to TCP (reads hang,
//! no error). The client must notice by its own timeouts and recover by resuming.

use herald_core::auth::mint_token;
use herald_core::client::{
    Client, ClientConfig, ClientObserver, ClientState, CloseCause, FrameReceived, Item, TcpConnector,
};
use herald_core::clock::TokioClock;
use herald_core::protocol::{EventKind, ServerFrame};
use herald_core::rng::SeededRng;
use herald_core::server::{Server, ServerConfig};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

const SECRET: &[u8] = b"partition-test-secret";
const UNIX_BASE_SECS: u64 = 1_700_000_000;
const WAIT: Duration = Duration::from_secs(15);

/// A TCP proxy that can silence its current connections (`partition`) or hold new ones
/// without forwarding (`blackhole`). Silenced sockets stay open: no FIN, no RST, no error.
struct Proxy {
    addr: SocketAddr,
    generation: watch::Sender<u64>,
    blackhole: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (generation, rx) = watch::channel(0u64);
        let blackhole = Arc::new(AtomicBool::new(false));
        let hole = blackhole.clone();
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let rx = rx.clone();
                let hole = hole.load(Ordering::SeqCst);
                tokio::spawn(pipe(inbound, upstream, rx, hole));
            }
        });
        Proxy {
            addr,
            generation,
            blackhole,
        }
    }

    /// Every connection open now stops forwarding in both directions, forever.
    fn partition(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

async fn pipe(inbound: TcpStream, upstream: SocketAddr, mut rx: watch::Receiver<u64>, blackhole: bool) {
    if blackhole {
        // Accepted, then never a byte back: the WebSocket handshake hangs.
        let _held = inbound;
        return std::future::pending::<()>().await;
    }
    let generation = *rx.borrow_and_update();
    let Ok(outbound) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    let forward = async {
        let _ = tokio::join!(
            tokio::io::copy(&mut in_read, &mut out_write),
            tokio::io::copy(&mut out_read, &mut in_write)
        );
    };
    tokio::select! {
        biased;
        () = async { drop(rx.wait_for(|g| *g != generation).await) } => {
            // Partitioned: keep all four halves open and forward nothing.
            std::future::pending::<()>().await;
        }
        () = forward => {}
    }
}

/// One ended connection: when, close code, cause, reason.
type Close = (Instant, Option<u16>, CloseCause, String);

/// Closes and welcomes' `recovered` flags, as the client reported them.
#[derive(Clone, Default)]
struct Closes(Arc<Mutex<Vec<Close>>>, Arc<Mutex<Vec<bool>>>);

impl ClientObserver for Closes {
    fn frame(&self, _connection: Option<&str>, frame: &FrameReceived<'_>) {
        if let FrameReceived::Parsed(ServerFrame::Welcome { recovered, .. }) = frame {
            self.1.lock().unwrap().push(*recovered);
        }
    }

    fn closed(&self, code: Option<u16>, cause: CloseCause, reason: &str) {
        self.0
            .lock()
            .unwrap()
            .push((Instant::now(), code, cause, reason.to_string()));
    }
}

impl Closes {
    async fn wait_for(&self, count: usize) {
        let deadline = Instant::now() + WAIT;
        while self.0.lock().unwrap().len() < count {
            assert!(Instant::now() < deadline, "only {:?}", self.0.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn start_server() -> (Server, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(
        ServerConfig::new(SECRET.to_vec(), "key".into()),
        TokioClock::shared(UNIX_BASE_SECS * 1000),
        SeededRng::new(11),
    )
    .unwrap();
    tokio::spawn(server.clone().serve(listener));
    (server, addr)
}

fn spawn_client(proxy: &Proxy, observer: &Closes) -> Client {
    let mut config = ClientConfig::new(format!("ws://{}/v1/ws", proxy.addr), 5);
    config.connect_timeout_ms = 300;
    config.heartbeat_interval_ms = 100;
    config.idle_timeout_ms = 500;
    config.write_timeout_ms = 300;
    config.backoff_initial_ms = 10;
    config.backoff_max_ms = 100;
    let connector = TcpConnector {
        addr: proxy.addr.to_string(),
    };
    let tokens = || mint_token(SECRET, "alice", UNIX_BASE_SECS + 3_600);
    Client::spawn(config, connector, tokens, observer.clone())
}

async fn wait_connected(client: &Client) {
    let deadline = Instant::now() + WAIT;
    while !matches!(client.state(), ClientState::Connected { .. }) {
        assert!(Instant::now() < deadline, "not connected: {:?}", client.state());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn recv_seqs(client: &mut Client, count: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.len() < count {
        match tokio::time::timeout(WAIT, client.recv()).await.expect("item in time") {
            Some(Item::Event { seq, .. }) => seqs.push(seq),
            other => panic!("unexpected {other:?}"),
        }
    }
    seqs
}

#[tokio::test]
async fn a_silent_partition_is_detected_by_heartbeat_and_resumed_without_loss() {
    let (server, upstream) = start_server().await;
    let proxy = Proxy::start(upstream).await;
    let observer = Closes::default();
    let mut client = spawn_client(&proxy, &observer);
    wait_connected(&client).await;
    let notifier = server.notifier();
    for n in 1..=3 {
        notifier
            .publish("alice", "run-1", EventKind::AgentThinking, &json!({ "n": n }))
            .unwrap();
    }
    assert_eq!(recv_seqs(&mut client, 3).await, vec![1, 2, 3]);

    let partitioned_at = Instant::now();
    proxy.partition();
    for n in 4..=8 {
        notifier
            .publish("alice", "run-1", EventKind::ToolExecuting, &json!({ "n": n }))
            .unwrap();
    }
    observer.wait_for(1).await;
    let (closed_at, code, cause, reason) = observer.0.lock().unwrap()[0].clone();
    assert_eq!((code, cause), (None, CloseCause::Network));
    assert!(reason.contains("idle_timeout_ms 500"), "{reason}");
    let detected = closed_at - partitioned_at;
    assert!(
        detected >= Duration::from_millis(400) && detected < Duration::from_secs(3),
        "detected after {detected:?}"
    );

    // The new connection goes through (new connections are not partitioned) and resumes.
    assert_eq!(recv_seqs(&mut client, 5).await, vec![4, 5, 6, 7, 8]);
    assert_eq!(
        *observer.1.lock().unwrap(),
        vec![false, true],
        "second welcome recovered"
    );
    assert_eq!(client.try_recv(), None);
    server.shutdown();
}

#[tokio::test]
async fn a_blackholed_connect_is_bounded_by_connect_timeout_and_retried() {
    let (server, upstream) = start_server().await;
    let proxy = Proxy::start(upstream).await;
    proxy.blackhole.store(true, Ordering::SeqCst);
    let observer = Closes::default();
    let started = Instant::now();
    let mut client = spawn_client(&proxy, &observer);
    observer.wait_for(2).await;
    for (_, code, cause, reason) in observer.0.lock().unwrap().iter() {
        assert_eq!((*code, *cause), (None, CloseCause::Network));
        assert!(reason.contains("connect_timeout_ms 300"), "{reason}");
    }
    assert!(
        Instant::now() - started >= Duration::from_millis(600),
        "each attempt waited its timeout"
    );
    assert_eq!(client.state(), ClientState::Connecting);

    proxy.blackhole.store(false, Ordering::SeqCst);
    wait_connected(&client).await;
    server
        .notifier()
        .publish("alice", "run-1", EventKind::AgentStarted, &json!({}))
        .unwrap();
    assert_eq!(recv_seqs(&mut client, 1).await, vec![1]);
    server.shutdown();
}
