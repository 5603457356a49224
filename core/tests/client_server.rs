//! The client library against the real server on loopback: live delivery, resume after a
//! dropped connection, epoch gap after a restart, slow-consumer cut and recovery, clean close,
//! terminal auth failure, a retry after 4001 with a different token, token refresh after 4002,
//! connect retries, and task shutdown on drop.
//! Partitions (a peer that goes silent) are in `client_partition.rs`.

use herald_core::auth::mint_token;
use herald_core::client::{
    Client, ClientConfig, ClientObserver, ClientState, CloseCause, FrameReceived, Item, ItemGapReason, TcpConnector,
};
use herald_core::clock::TokioClock;
use herald_core::protocol::{EventKind, Resume, ServerFrame};
use herald_core::rng::SeededRng;
use herald_core::server::{Server, ServerConfig};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const SECRET: &[u8] = b"client-test-secret";
const API_KEY: &str = "client-test-api-key";
/// The wall time the servers' clocks start at; tokens expire relative to it.
const UNIX_BASE_SECS: u64 = 1_700_000_000;
/// Bound on every wait in these tests: a hang is a failure, not a stuck CI job.
const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Fixtures

/// Everything the client reported, in order.
#[derive(Debug, Clone, PartialEq)]
enum Observed {
    Connecting {
        attempt: u32,
        resume: Option<Resume>,
    },
    Frame {
        connection: Option<String>,
        frame: Result<ServerFrame, String>,
    },
    Closed {
        code: Option<u16>,
        cause: CloseCause,
        reason: String,
    },
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Observed>>>);

impl Recorder {
    fn all(&self) -> Vec<Observed> {
        self.0.lock().unwrap().clone()
    }

    fn closes(&self) -> Vec<(Option<u16>, CloseCause, String)> {
        self.all()
            .into_iter()
            .filter_map(|o| match o {
                Observed::Closed { code, cause, reason } => Some((code, cause, reason)),
                _ => None,
            })
            .collect()
    }

    fn welcomes(&self) -> Vec<(String, u64, bool)> {
        self.all()
            .into_iter()
            .filter_map(|o| match o {
                Observed::Frame {
                    frame:
                        Ok(ServerFrame::Welcome {
                            epoch, head, recovered, ..
                        }),
                    ..
                } => Some((epoch, head, recovered)),
                _ => None,
            })
            .collect()
    }

    fn resumes(&self) -> Vec<Option<Resume>> {
        self.all()
            .into_iter()
            .filter_map(|o| match o {
                Observed::Connecting { resume, .. } => Some(resume),
                _ => None,
            })
            .collect()
    }

    async fn wait_until(&self, what: &str, condition: impl Fn(&Recorder) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !condition(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; observed: {:#?}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl ClientObserver for Recorder {
    fn connecting(&self, attempt: u32, resume: Option<&Resume>) {
        self.0.lock().unwrap().push(Observed::Connecting {
            attempt,
            resume: resume.cloned(),
        });
    }

    fn frame(&self, connection: Option<&str>, frame: &FrameReceived<'_>) {
        let frame = match frame {
            FrameReceived::Parsed(frame) => Ok((*frame).clone()),
            FrameReceived::Unparsed(text) => Err(text.to_string()),
        };
        self.0.lock().unwrap().push(Observed::Frame {
            connection: connection.map(str::to_string),
            frame,
        });
    }

    fn closed(&self, code: Option<u16>, cause: CloseCause, reason: &str) {
        self.0.lock().unwrap().push(Observed::Closed {
            code,
            cause,
            reason: reason.to_string(),
        });
    }
}

struct Running {
    server: Server,
    addr: SocketAddr,
    serve: JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn stop(self) {
        self.server.shutdown();
        tokio::time::timeout(WAIT, self.serve)
            .await
            .expect("serve returns after shutdown")
            .expect("serve task")
            .expect("serve result");
    }

    fn slow_consumer_closes(&self) -> u64 {
        let text = self.server.metrics_text();
        let line = text
            .lines()
            .find(|l| l.starts_with("herald_slow_consumer_closes_total "))
            .expect("metric present");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }
}

fn server_config() -> ServerConfig {
    ServerConfig::new(SECRET.to_vec(), API_KEY.to_string())
}

async fn start_on(listener: TcpListener, config: ServerConfig, seed: u64) -> Running {
    let addr = listener.local_addr().unwrap();
    let server = Server::new(config, TokioClock::shared(UNIX_BASE_SECS * 1000), SeededRng::new(seed))
        .expect("valid server config");
    let serve = tokio::spawn(server.clone().serve(listener));
    Running { server, addr, serve }
}

async fn start(config: ServerConfig, seed: u64) -> Running {
    start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), config, seed).await
}

/// Short timeouts so that failures and reconnects happen within a test's patience.
fn client_config(addr: SocketAddr, seed: u64) -> ClientConfig {
    let mut config = ClientConfig::new(format!("ws://{addr}/v1/ws"), seed);
    config.connect_timeout_ms = 2_000;
    config.heartbeat_interval_ms = 200;
    config.idle_timeout_ms = 1_000;
    config.write_timeout_ms = 1_000;
    config.backoff_initial_ms = 10;
    config.backoff_max_ms = 200;
    config.items_max = 64;
    config.frame_bytes_max = 64 * 1024;
    config
}

fn token_for(user: &'static str) -> impl Fn() -> String + Send + Sync + 'static {
    move || mint_token(SECRET, user, UNIX_BASE_SECS + 3_600)
}

fn spawn_client(config: ClientConfig, user: &'static str, recorder: &Recorder) -> Client {
    let connector = TcpConnector {
        addr: config
            .url
            .trim_start_matches("ws://")
            .trim_end_matches("/v1/ws")
            .to_string(),
    };
    Client::spawn(config, connector, token_for(user), recorder.clone())
}

async fn wait_connected(client: &Client) -> (String, u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let ClientState::Connected { epoch, last_seq } = client.state() {
            return (epoch, last_seq);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "client never connected: {:?}",
            client.state()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn next_item(client: &mut Client) -> Item {
    tokio::time::timeout(WAIT, client.recv())
        .await
        .expect("an item within the wait bound")
        .expect("the client is still running")
}

/// Receives items until `count` events arrived; returns every item in order.
async fn recv_events(client: &mut Client, count: usize) -> Vec<Item> {
    let mut items = Vec::new();
    let mut events = 0;
    while events < count {
        let item = next_item(client).await;
        if matches!(item, Item::Event { .. }) {
            events += 1;
        }
        items.push(item);
    }
    items
}

fn event_seqs(items: &[Item]) -> Vec<u64> {
    items
        .iter()
        .map(|item| match item {
            Item::Event { seq, .. } => *seq,
            Item::Gap { .. } => panic!("unexpected gap in {items:?}"),
        })
        .collect()
}

fn publish(server: &Running, user: &str, n: u64) -> u64 {
    server
        .server
        .notifier()
        .publish(user, "run-1", EventKind::AgentThinking, &json!({ "n": n }))
        .expect("publish succeeds")
        .seq
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn live_events_arrive_in_order_exactly_once_with_their_payload() {
    let server = start(server_config(), 1).await;
    let recorder = Recorder::default();
    let mut client = spawn_client(client_config(server.addr, 1), "alice", &recorder);
    let (epoch, last_seq) = wait_connected(&client).await;
    assert_eq!(last_seq, 0, "a new user starts at head 0");
    // Another user's events are never delivered to alice.
    publish(&server, "bob", 99);
    for n in 1..=5 {
        assert_eq!(publish(&server, "alice", n), n);
    }
    let items = recv_events(&mut client, 5).await;
    assert_eq!(items.len(), 5);
    for (i, item) in items.iter().enumerate() {
        let n = i as u64 + 1;
        assert_eq!(
            item,
            &Item::Event {
                epoch: epoch.clone(),
                seq: n,
                run: "run-1".into(),
                kind: EventKind::AgentThinking,
                data: json!({ "n": n }),
            }
        );
    }
    assert_eq!(
        client.state(),
        ClientState::Connected {
            epoch: epoch.clone(),
            last_seq: 5
        }
    );
    assert_eq!(recorder.resumes(), vec![None], "first hello carries no resume");
    assert_eq!(client.try_recv(), None, "nothing else was queued");
    server.stop().await;
}

#[tokio::test]
async fn drop_connection_mid_stream_resumes_with_no_loss_and_no_duplicate() {
    let server = start(server_config(), 2).await;
    let recorder = Recorder::default();
    let mut client = spawn_client(client_config(server.addr, 2), "alice", &recorder);
    let (epoch, _) = wait_connected(&client).await;
    let mut items = Vec::new();
    let rounds = 4;
    for round in 0..rounds {
        // drop_connection() is a no-op while backing off: wait for the (re)connection.
        let welcomed = round as usize + 1;
        recorder
            .wait_until("the welcome", |r| r.welcomes().len() == welcomed)
            .await;
        for n in 1..=10 {
            publish(&server, "alice", round * 10 + n);
        }
        // Read half, then kill the connection with the rest in flight (socket, queue, or not
        // yet written); then publish while the client is away.
        items.extend(recv_events(&mut client, 5).await);
        client.drop_connection();
        let dropped = round as usize + 1;
        recorder
            .wait_until("the drop", |r| {
                r.closes().iter().filter(|c| c.1 == CloseCause::Dropped).count() == dropped
            })
            .await;
    }
    let remaining = (rounds * 10) as usize - items.len();
    items.extend(recv_events(&mut client, remaining).await);
    assert_eq!(event_seqs(&items), (1..=rounds * 10).collect::<Vec<_>>());
    for item in &items {
        let Item::Event {
            epoch: e, seq, data, ..
        } = item
        else {
            unreachable!()
        };
        assert_eq!(e, &epoch);
        assert_eq!(data, &json!({ "n": seq }));
    }
    recorder
        .wait_until("the last welcome", |r| r.welcomes().len() == 5)
        .await;
    // Every reconnect resumed in the same epoch and was served without a gap.
    let resumes = recorder.resumes();
    assert_eq!(resumes[0], None);
    assert!(resumes[1..]
        .iter()
        .all(|r| r.as_ref().is_some_and(|r| r.epoch == epoch)));
    assert!(recorder.welcomes()[1..]
        .iter()
        .all(|(e, _, recovered)| *recovered && *e == epoch));
    for (code, _, _) in recorder.closes() {
        assert_eq!(code, None, "a dropped connection sends no close frame");
    }
    assert_eq!(client.try_recv(), None);
    server.stop().await;
}

#[tokio::test]
async fn server_restart_yields_an_epoch_gap_then_the_new_epoch_from_seq_1() {
    let first = start(server_config(), 3).await;
    let addr = first.addr;
    let recorder = Recorder::default();
    let mut client = spawn_client(client_config(addr, 3), "alice", &recorder);
    let (old_epoch, _) = wait_connected(&client).await;
    for n in 1..=3 {
        publish(&first, "alice", n);
    }
    assert_eq!(event_seqs(&recv_events(&mut client, 3).await), vec![1, 2, 3]);
    first.stop().await;
    recorder
        .wait_until("the 1001 close", |r| {
            r.closes()
                .iter()
                .any(|c| c.0 == Some(1001) && c.1 == CloseCause::Server)
        })
        .await;

    // Same address, new process state: a new epoch, history lost.
    let listener = TcpListener::bind(addr).await.expect("rebind the same port");
    let second = start_on(listener, server_config(), 33).await;
    publish(&second, "alice", 1);
    let items = recv_events(&mut client, 1).await;
    let (new_epoch, _) = wait_connected(&client).await;
    assert_ne!(new_epoch, old_epoch);
    assert_eq!(
        items,
        vec![
            Item::Gap {
                epoch: old_epoch.clone(),
                from: 4,
                to: None,
                reason: ItemGapReason::Epoch
            },
            Item::Event {
                epoch: new_epoch.clone(),
                seq: 1,
                run: "run-1".into(),
                kind: EventKind::AgentThinking,
                data: json!({ "n": 1 }),
            },
        ]
    );
    let resumes = recorder.resumes();
    assert_eq!(
        resumes.last().unwrap(),
        &Some(Resume {
            epoch: old_epoch,
            after: 3
        })
    );
    let last_welcome = recorder.welcomes().pop().unwrap();
    assert_eq!((last_welcome.0.as_str(), last_welcome.2), (new_epoch.as_str(), false));
    // Live events continue in the new epoch.
    publish(&second, "alice", 2);
    assert_eq!(event_seqs(&recv_events(&mut client, 1).await), vec![2]);
    second.stop().await;
}

#[tokio::test]
async fn slow_application_is_cut_with_4003_and_then_recovers_every_event() {
    let mut config = server_config();
    config.hub.send_queue_max = 32;
    config.hub.retention_events_max = 20_000;
    config.write_timeout_ms = 30_000; // the server must cut by lag, not by a blocked write
    let server = start(config, 4).await;
    let recorder = Recorder::default();
    let mut client_config = client_config(server.addr, 4);
    client_config.items_max = 4;
    client_config.idle_timeout_ms = 5_000;
    let mut client = spawn_client(client_config, "alice", &recorder);
    wait_connected(&client).await;

    // The application does not call recv(): the queue fills, the client stops reading, the
    // socket buffers fill, the server's cursor stalls and the hub cuts the connection.
    let blob = "x".repeat(16 * 1024);
    let mut published = 0u64;
    while server.slow_consumer_closes() == 0 {
        assert!(published < 10_000, "no slow-consumer close after {published} events");
        published += 1;
        server
            .server
            .notifier()
            .publish(
                "alice",
                "run-1",
                EventKind::ToolExecuting,
                &json!({ "n": published, "blob": blob }),
            )
            .expect("publish");
        tokio::task::yield_now().await;
    }
    // A few more while the client is cut off; they must be recovered from retention.
    for _ in 0..10 {
        published += 1;
        server
            .server
            .notifier()
            .publish(
                "alice",
                "run-1",
                EventKind::ToolExecuting,
                &json!({ "n": published, "blob": blob }),
            )
            .expect("publish");
    }
    assert_eq!(
        client.state(),
        ClientState::Connected {
            epoch: wait_connected(&client).await.0,
            last_seq: 4
        },
        "blocked on the full queue: 4 handed over, the fifth waits for room"
    );

    let items = recv_events(&mut client, published as usize).await;
    assert_eq!(event_seqs(&items), (1..=published).collect::<Vec<_>>());
    for item in &items {
        let Item::Event { seq, data, .. } = item else {
            unreachable!()
        };
        assert_eq!(data["n"], json!(seq));
    }
    let closes = recorder.closes();
    assert!(
        closes.iter().any(|c| c.0 == Some(4003) && c.1 == CloseCause::Server),
        "the cut was a 4003 close: {closes:?}"
    );
    let welcomes = recorder.welcomes();
    assert!(
        welcomes.len() >= 2 && welcomes[1..].iter().all(|w| w.2),
        "resumed and recovered: {welcomes:?}"
    );
    assert_eq!(client.try_recv(), None);
    server.stop().await;
}

#[tokio::test]
async fn close_sends_1000_stops_for_good_and_keeps_queued_items() {
    let server = start(server_config(), 5).await;
    let recorder = Recorder::default();
    let mut client = spawn_client(client_config(server.addr, 5), "alice", &recorder);
    wait_connected(&client).await;
    for n in 1..=3 {
        publish(&server, "alice", n);
    }
    recorder
        .wait_until("three events received", |r| {
            r.all()
                .iter()
                .filter(|o| {
                    matches!(
                        o,
                        Observed::Frame {
                            frame: Ok(ServerFrame::Event { .. }),
                            ..
                        }
                    )
                })
                .count()
                == 3
        })
        .await;
    client.close();
    // The three queued items are still handed over, then the stream ends.
    let mut seqs = Vec::new();
    while let Some(item) = tokio::time::timeout(WAIT, client.recv()).await.expect("recv ends") {
        seqs.push(event_seqs(&[item])[0]);
    }
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(
        client.state(),
        ClientState::Stopped {
            reason: "closed by the application".into()
        }
    );
    assert_eq!(
        recorder.closes(),
        vec![(Some(1000), CloseCause::Client, "closed by the application".to_string())]
    );
    // The server saw the close and forgot the connection; no reconnect follows.
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.server.gauges().connections != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "server still holds the connection"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(recorder.resumes().len(), 1, "no reconnect after close()");
    server.stop().await;
}

/// A token the server refuses is retried at the growing backoff (the server may be fixed, the
/// token service catch up), here until `attempts_max`; every refusal reaches the observer.
#[tokio::test]
async fn auth_failure_is_retried_until_attempts_max() {
    let server = start(server_config(), 6).await;
    let recorder = Recorder::default();
    let mut config = client_config(server.addr, 6);
    config.attempts_max = Some(3);
    let connector = TcpConnector {
        addr: server.addr.to_string(),
    };
    let forged = || mint_token(b"not-the-server-secret", "alice", UNIX_BASE_SECS + 3_600);
    let mut client = Client::spawn(config, connector, forged, recorder.clone());
    let end = tokio::time::timeout(WAIT, client.recv()).await.expect("recv ends");
    assert_eq!(end, None, "no item, and the stream ends");
    let ClientState::Stopped { reason } = client.state() else {
        panic!("expected Stopped, got {:?}", client.state());
    };
    assert_eq!(reason, "gave up: 3 attempts without a welcome (attempts_max 3)");
    let closes = recorder.closes();
    assert_eq!(closes.len(), 3, "retried after 4001: {closes:?}");
    for close in &closes {
        assert_eq!((close.0, close.1), (Some(4001), CloseCause::Server));
    }
    assert!(recorder.welcomes().is_empty());
    assert!(recorder.all().iter().any(|o| matches!(
        o,
        Observed::Frame {
            connection: None,
            frame: Ok(ServerFrame::Error { .. })
        }
    )));
    server.stop().await;
}

#[tokio::test]
async fn expired_token_4002_is_retried_with_a_fresh_token() {
    let server = start(server_config(), 7).await;
    let recorder = Recorder::default();
    let config = client_config(server.addr, 7);
    let connector = TcpConnector {
        addr: server.addr.to_string(),
    };
    // The first token expires one second after the server's clock starts; later ones are good.
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let tokens = move || {
        let exp = if counter.fetch_add(1, Ordering::SeqCst) == 0 {
            UNIX_BASE_SECS + 1
        } else {
            UNIX_BASE_SECS + 3_600
        };
        mint_token(SECRET, "alice", exp)
    };
    let mut client = Client::spawn(config, connector, tokens, recorder.clone());
    let (epoch, _) = wait_connected(&client).await;
    // An event keeps alice's stream (and its epoch) alive across the reconnect.
    publish(&server, "alice", 1);
    assert_eq!(event_seqs(&recv_events(&mut client, 1).await), vec![1]);
    recorder
        .wait_until("the 4002 close and a new welcome", |r| {
            r.closes()
                .iter()
                .any(|c| c.0 == Some(4002) && c.1 == CloseCause::Server)
                && r.welcomes().len() == 2
        })
        .await;
    assert!(calls.load(Ordering::SeqCst) >= 2, "a fresh token was fetched");
    assert_eq!(
        recorder.resumes()[1],
        Some(Resume {
            epoch: epoch.clone(),
            after: 1
        }),
        "the reconnect resumed"
    );
    assert_eq!(recorder.welcomes()[1], (epoch, 1, true));
    publish(&server, "alice", 2);
    assert_eq!(event_seqs(&recv_events(&mut client, 1).await), vec![2]);
    server.stop().await;
}

#[tokio::test]
async fn connects_are_retried_until_the_server_listens() {
    // Reserve a port, then release it: nothing listens there yet.
    let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let recorder = Recorder::default();
    let mut client = spawn_client(client_config(addr, 8), "alice", &recorder);
    recorder
        .wait_until("three refused attempts", |r| {
            r.closes().iter().filter(|c| c.1 == CloseCause::Network).count() >= 3
        })
        .await;
    assert_eq!(client.state(), ClientState::Connecting);
    let attempts: Vec<u32> = recorder
        .all()
        .iter()
        .filter_map(|o| match o {
            Observed::Connecting { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(attempts[..3], [1, 2, 3], "attempts count up while failing");

    let server = start_on(TcpListener::bind(addr).await.unwrap(), server_config(), 8).await;
    wait_connected(&client).await;
    publish(&server, "alice", 1);
    assert_eq!(event_seqs(&recv_events(&mut client, 1).await), vec![1]);
    assert!(
        recorder.resumes().iter().all(Option::is_none),
        "never welcomed before: no resume"
    );
    server.stop().await;
}

#[tokio::test]
async fn dropping_the_client_stops_its_task() {
    let server = start(server_config(), 9).await;
    let recorder = Recorder::default();
    let client = spawn_client(client_config(server.addr, 9), "alice", &recorder);
    wait_connected(&client).await;
    drop(client);
    recorder
        .wait_until("the clean close", |r| {
            r.closes() == vec![(Some(1000), CloseCause::Client, "client handle dropped".to_string())]
        })
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.server.gauges().connections != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "server still holds the connection"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Nothing reconnects afterwards (backoff_max_ms is 200 ms).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(recorder.resumes().len(), 1);
    assert_eq!(server.server.gauges().connections, 0);
    server.stop().await;
}

/// The server's secret was rotated before the token service switched: the first token is
/// refused (4001), and the provider's next one, signed with the new secret, is tried after the
/// backoff instead of the client stopping for good.
#[tokio::test]
async fn auth_failure_is_retried_once_the_token_provider_yields_a_different_token() {
    let server = start(server_config(), 10).await;
    let recorder = Recorder::default();
    let config = client_config(server.addr, 10);
    let connector = TcpConnector {
        addr: server.addr.to_string(),
    };
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let tokens = move || {
        let secret: &[u8] = if counter.fetch_add(1, Ordering::SeqCst) == 0 {
            b"the-secret-before-rotation"
        } else {
            SECRET
        };
        mint_token(secret, "alice", UNIX_BASE_SECS + 3_600)
    };
    let mut client = Client::spawn(config, connector, tokens, recorder.clone());
    wait_connected(&client).await;
    let closes = recorder.closes();
    assert_eq!(closes.len(), 1, "{closes:?}");
    assert_eq!((closes[0].0, closes[0].1), (Some(4001), CloseCause::Server));
    assert_eq!(recorder.resumes(), vec![None, None], "never welcomed before the retry");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    publish(&server, "alice", 1);
    assert_eq!(event_seqs(&recv_events(&mut client, 1).await), vec![1]);
    server.stop().await;
}

/// An application restarted with its saved position (`start_after`) gets what was published
/// while it was not running; one started without it starts live and does not.
#[tokio::test]
async fn a_client_started_after_a_saved_position_gets_what_was_published_meanwhile() {
    let server = start(server_config(), 21).await;
    let recorder = Recorder::default();
    let mut first = spawn_client(client_config(server.addr, 21), "alice", &recorder);
    let (epoch, _) = wait_connected(&first).await;
    publish(&server, "alice", 1);
    assert_eq!(event_seqs(&recv_events(&mut first, 1).await), vec![1]);
    // The application saves (epoch, 1) and exits; events 2 and 3 are published meanwhile.
    first.close();
    drop(first);
    publish(&server, "alice", 2);
    publish(&server, "alice", 3);
    let mut config = client_config(server.addr, 22);
    config.start_after = Some(Resume {
        epoch: epoch.clone(),
        after: 1,
    });
    let mut restarted = spawn_client(config, "alice", &recorder);
    assert_eq!(event_seqs(&recv_events(&mut restarted, 2).await), vec![2, 3]);
    // Without a saved position a client starts live, at the head.
    let mut live = spawn_client(client_config(server.addr, 23), "alice", &recorder);
    assert_eq!(wait_connected(&live).await, (epoch, 3));
    publish(&server, "alice", 4);
    assert_eq!(event_seqs(&recv_events(&mut live, 1).await), vec![4]);
    server.stop().await;
}

/// A TCP stream whose writes can be made to block for good, as they do into a partition.
struct StallableStream {
    stream: tokio::net::TcpStream,
    stalled: Arc<std::sync::atomic::AtomicBool>,
}

impl tokio::io::AsyncRead for StallableStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for StallableStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.stalled.load(Ordering::SeqCst) {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.stalled.load(Ordering::SeqCst) {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.stalled.load(Ordering::SeqCst) {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

struct StallableConnector {
    addr: SocketAddr,
    stalled: Arc<std::sync::atomic::AtomicBool>,
}

impl herald_core::client::Connector for StallableConnector {
    type Stream = StallableStream;

    async fn connect(&self) -> std::io::Result<StallableStream> {
        let stream = tokio::net::TcpStream::connect(self.addr).await?;
        Ok(StallableStream {
            stream,
            stalled: self.stalled.clone(),
        })
    }
}

/// `close()` while a heartbeat ping is stuck in a write that a partition blocks: the client
/// stops at once instead of waiting out `write_timeout_ms` (20 s here).
#[tokio::test]
async fn close_during_a_blocked_ping_write_stops_the_client_at_once() {
    let server = start(server_config(), 24).await;
    let mut config = client_config(server.addr, 24);
    config.heartbeat_interval_ms = 100;
    config.idle_timeout_ms = 30_000;
    config.write_timeout_ms = 20_000;
    let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let connector = StallableConnector {
        addr: server.addr,
        stalled: stalled.clone(),
    };
    let mut client = Client::spawn(config, connector, token_for("alice"), Recorder::default());
    wait_connected(&client).await;
    stalled.store(true, Ordering::SeqCst);
    // The server is quiet (it pings every 10 s): the client's ping falls due and blocks.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let asked = tokio::time::Instant::now();
    client.close();
    let end = tokio::time::timeout(Duration::from_secs(3), client.recv())
        .await
        .expect("stopped long before write_timeout_ms");
    assert_eq!(end, None);
    assert!(asked.elapsed() < Duration::from_secs(2), "{:?}", asked.elapsed());
    assert!(
        matches!(client.state(), ClientState::Stopped { .. }),
        "{:?}",
        client.state()
    );
    server.stop().await;
}
