//! The client against a scripted WebSocket peer that misbehaves on purpose — things the real
//! server never does, but the client must handle without hiding them: duplicates at the replay
//! seam, seq jumps, unparsable and binary frames, events before the welcome, an epoch change
//! without a gap, a terminal `bad_frame` close, an `auth_failed` followed by a different token
//! (or the same one), and seqs of 2^64−1. Also `attempts_max`, against a peer that welcomes once
//! and then is gone.

use futures_util::{SinkExt, StreamExt};
use herald_core::client::{
    Backoff, Client, ClientConfig, ClientObserver, ClientState, CloseCause, FrameReceived, Item, ItemGapReason,
    NoObserver, TcpConnector,
};
use herald_core::protocol::{ClientFrame, ErrorCode, EventKind, GapReason, Resume, ServerFrame};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(10);

type Peer = WebSocketStream<TcpStream>;

async fn accept(listener: &TcpListener) -> Peer {
    let (stream, _) = tokio::time::timeout(WAIT, listener.accept()).await.unwrap().unwrap();
    tokio_tungstenite::accept_async(stream).await.unwrap()
}

/// Reads the hello and returns its resume.
async fn hello(peer: &mut Peer) -> Option<Resume> {
    let message = tokio::time::timeout(WAIT, peer.next()).await.unwrap().unwrap().unwrap();
    match serde_json::from_str::<ClientFrame>(message.to_text().unwrap()).unwrap() {
        ClientFrame::Hello { token, resume } => {
            assert_eq!(token, "token");
            resume
        }
        other => panic!("expected hello, got {other:?}"),
    }
}

async fn send(peer: &mut Peer, frame: ServerFrame) {
    peer.send(Message::text(frame.to_text())).await.unwrap();
}

fn welcome(epoch: &str, head: u64, recovered: bool) -> ServerFrame {
    ServerFrame::Welcome {
        user: "alice".into(),
        connection: "c-1".into(),
        epoch: epoch.into(),
        head,
        recovered,
    }
}

fn event(seq: u64) -> ServerFrame {
    ServerFrame::Event {
        seq,
        run: "run-1".into(),
        kind: EventKind::AgentThinking,
        data: json!({ "n": seq }),
    }
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl ClientObserver for Log {
    fn connecting(&self, attempt: u32, resume: Option<&Resume>) {
        self.0.lock().unwrap().push(format!("connecting {attempt} {resume:?}"));
    }

    fn frame(&self, connection: Option<&str>, frame: &FrameReceived<'_>) {
        let line = match frame {
            FrameReceived::Parsed(frame) => format!("frame {connection:?} {}", frame.to_text()),
            FrameReceived::Unparsed(text) => format!("unparsed {connection:?} {text}"),
        };
        self.0.lock().unwrap().push(line);
    }

    fn closed(&self, code: Option<u16>, cause: CloseCause, _reason: &str) {
        self.0.lock().unwrap().push(format!("closed {code:?} {cause:?}"));
    }
}

async fn setup() -> (TcpListener, Client, Log) {
    setup_with(None).await
}

async fn setup_with(attempts_max: Option<u32>) -> (TcpListener, Client, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = ClientConfig::new(format!("ws://{addr}/v1/ws"), 1);
    config.backoff_initial_ms = 10;
    config.backoff_max_ms = 50;
    config.attempts_max = attempts_max;
    let log = Log::default();
    let client = Client::spawn(
        config,
        TcpConnector { addr: addr.to_string() },
        || "token".to_string(),
        log.clone(),
    );
    (listener, client, log)
}

async fn next(client: &mut Client) -> Option<Item> {
    tokio::time::timeout(WAIT, client.recv()).await.expect("recv in time")
}

fn seq_of(item: Option<Item>) -> u64 {
    match item {
        Some(Item::Event { seq, .. }) => seq,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test]
async fn misbehaviour_is_shown_not_hidden_and_bad_frame_is_terminal() {
    let (listener, mut client, log) = setup().await;
    let mut peer = accept(&listener).await;
    assert_eq!(hello(&mut peer).await, None);
    send(&mut peer, event(9)).await; // before the welcome: no epoch to place it in
    send(&mut peer, welcome("e1", 0, false)).await;
    for seq in [1, 2, 2] {
        send(&mut peer, event(seq)).await;
    }
    peer.send(Message::text("{not json")).await.unwrap();
    peer.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    send(&mut peer, event(5)).await; // a jump after unreadable frames: the client's own loss
    send(&mut peer, event(7)).await; // a jump with nothing unreadable: delivered, the checkers must see it
    send(&mut peer, event(6)).await; // now behind: a duplicate by seq
    send(
        &mut peer,
        ServerFrame::Error {
            code: ErrorCode::BadFrame,
            message: "scripted".into(),
        },
    )
    .await;
    peer.send(Message::Close(Some(CloseFrame {
        code: CloseCode::from(4004),
        reason: "bad_frame".into(),
    })))
    .await
    .unwrap();

    assert_eq!(seq_of(next(&mut client).await), 1);
    assert_eq!(seq_of(next(&mut client).await), 2);
    assert_eq!(
        next(&mut client).await,
        Some(Item::Gap {
            epoch: "e1".into(),
            from: 3,
            to: Some(4),
            reason: ItemGapReason::Unreadable
        }),
        "what the unreadable frames skipped is handed over as a gap, never lost silently"
    );
    assert_eq!(seq_of(next(&mut client).await), 5);
    assert_eq!(seq_of(next(&mut client).await), 7);
    assert_eq!(next(&mut client).await, None, "4004 is terminal");
    assert_eq!(
        client.state(),
        ClientState::Stopped {
            reason: "bad_frame: scripted".into()
        }
    );
    let log = log.0.lock().unwrap().clone();
    assert_eq!(log.iter().filter(|l| l.starts_with("unparsed")).count(), 2, "{log:#?}");
    assert!(log.contains(&"unparsed Some(\"c-1\") {not json".to_string()));
    assert!(
        log[1].starts_with("frame None {\"type\":\"event\",\"seq\":9"),
        "{log:#?}"
    );
    assert_eq!(log.last().unwrap(), "closed Some(4004) Server");
    assert_eq!(
        log.iter().filter(|l| l.starts_with("connecting")).count(),
        1,
        "no retry"
    );
}

#[tokio::test]
async fn duplicates_at_the_replay_seam_are_dropped() {
    let (listener, mut client, _log) = setup().await;
    let mut peer = accept(&listener).await;
    assert_eq!(hello(&mut peer).await, None);
    send(&mut peer, welcome("e1", 0, false)).await;
    for seq in 1..=3 {
        send(&mut peer, event(seq)).await;
    }
    for expected in 1..=3 {
        assert_eq!(seq_of(next(&mut client).await), expected);
    }
    drop(peer); // abrupt: no close frame

    let mut peer = accept(&listener).await;
    assert_eq!(
        hello(&mut peer).await,
        Some(Resume {
            epoch: "e1".into(),
            after: 3
        })
    );
    send(&mut peer, welcome("e1", 4, true)).await;
    for seq in [2, 3, 4] {
        send(&mut peer, event(seq)).await; // a server replaying from `after` instead of `after + 1`
    }
    assert_eq!(seq_of(next(&mut client).await), 4);
    assert_eq!(
        client.state(),
        ClientState::Connected {
            epoch: "e1".into(),
            last_seq: 4
        }
    );
    assert_eq!(client.try_recv(), None, "2 and 3 were dropped as duplicates");
}

#[tokio::test]
async fn an_epoch_change_without_a_gap_frame_gets_no_invented_gap() {
    let (listener, mut client, _log) = setup().await;
    let mut peer = accept(&listener).await;
    hello(&mut peer).await;
    send(&mut peer, welcome("e1", 7, false)).await;
    send(&mut peer, event(8)).await;
    assert_eq!(seq_of(next(&mut client).await), 8);
    peer.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "shutting_down".into(),
    })))
    .await
    .unwrap();

    let mut peer = accept(&listener).await;
    assert_eq!(
        hello(&mut peer).await,
        Some(Resume {
            epoch: "e1".into(),
            after: 8
        })
    );
    send(&mut peer, welcome("e2", 1, false)).await;
    send(&mut peer, event(1)).await;
    match next(&mut client).await {
        Some(Item::Event { epoch, seq: 1, .. }) => assert_eq!(epoch, "e2"),
        other => panic!("expected e2/1 and no gap, got {other:?}"),
    }
    assert_eq!(client.try_recv(), None);
}

/// The client pings only after `heartbeat_interval_ms` of silence: a peer that keeps talking
/// (here: WebSocket pings every 50 ms, as a busy or heartbeating server would) gets no client
/// pings; once it falls silent, the client probes the line.
#[tokio::test]
async fn the_client_pings_only_a_silent_line() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = ClientConfig::new(format!("ws://{addr}/v1/ws"), 1);
    config.heartbeat_interval_ms = 1_000;
    config.idle_timeout_ms = 10_000;
    let _client = Client::spawn(
        config,
        TcpConnector { addr: addr.to_string() },
        || "token".to_string(),
        Log::default(),
    );
    let mut peer = accept(&listener).await;
    hello(&mut peer).await;
    send(&mut peer, welcome("e1", 0, false)).await;

    let talking = tokio::time::sleep(Duration::from_millis(2_000));
    tokio::pin!(talking);
    let mut every = tokio::time::interval(Duration::from_millis(50));
    let (mut pongs, mut pings) = (0, 0);
    loop {
        tokio::select! {
            _ = &mut talking => break,
            _ = every.tick() => peer.send(Message::Ping(Vec::new().into())).await.unwrap(),
            message = peer.next() => match message.unwrap().unwrap() {
                Message::Pong(_) => pongs += 1,
                Message::Text(text) => match serde_json::from_str::<ClientFrame>(text.as_str()).unwrap() {
                    ClientFrame::Ping { .. } => pings += 1,
                    other => panic!("unexpected {other:?}"),
                },
                other => panic!("unexpected {other:?}"),
            },
        }
    }
    assert_eq!(pings, 0, "a line that keeps receiving needs no probe");
    assert!(pongs > 10, "the client answered the peer's pings ({pongs})");

    let silent_since = std::time::Instant::now();
    let text = loop {
        match tokio::time::timeout(WAIT, peer.next()).await.unwrap().unwrap().unwrap() {
            // The answer to the peer's last ping may still be on its way.
            Message::Pong(_) => continue,
            Message::Text(text) => break text,
            other => panic!("unexpected {other:?}"),
        }
    };
    let silent_for = silent_since.elapsed();
    match serde_json::from_str::<ClientFrame>(text.as_str()).unwrap() {
        ClientFrame::Ping { .. } => {}
        other => panic!("expected a ping, got {other:?}"),
    }
    assert!(
        silent_for >= Duration::from_millis(700),
        "the ping came after the silence, not on a fixed beat ({silent_for:?})"
    );
}

#[tokio::test]
async fn attempts_max_stops_the_client_after_that_many_failures_in_a_row() {
    let (listener, mut client, log) = setup_with(Some(2)).await;
    // One welcomed connection, then the peer and its port are gone for good.
    let mut peer = accept(&listener).await;
    assert_eq!(hello(&mut peer).await, None);
    send(&mut peer, welcome("e1", 0, true)).await;
    send(&mut peer, event(1)).await;
    assert_eq!(seq_of(next(&mut client).await), 1);
    drop(peer);
    drop(listener);

    // The welcome reset the count: two more attempts (refused), then the client gives up.
    assert_eq!(next(&mut client).await, None, "gave up: the items stream ends");
    match client.state() {
        ClientState::Stopped { reason } => {
            assert_eq!(reason, "gave up: 2 attempts without a welcome (attempts_max 2)")
        }
        other => panic!("expected Stopped, got {other:?}"),
    }
    let log = log.0.lock().unwrap().clone();
    let connecting: Vec<&String> = log.iter().filter(|l| l.starts_with("connecting")).collect();
    assert_eq!(connecting.len(), 3, "{log:#?}");
    assert!(connecting[0].starts_with("connecting 1 None"), "{log:#?}");
    assert!(
        connecting[1].starts_with("connecting 1 Some"),
        "a resume after the welcome: {log:#?}"
    );
    assert!(connecting[2].starts_with("connecting 2 Some"), "{log:#?}");
}

#[test]
fn attempts_max_of_zero_is_refused() {
    let mut config = ClientConfig::new("ws://127.0.0.1:1/v1/ws", 1);
    config.attempts_max = Some(0);
    assert_eq!(config.validate(), Err("attempts_max must be at least 1".into()));
    config.attempts_max = Some(1);
    assert_eq!(config.validate(), Ok(()));
}

/// A frame of a type this client does not know (a newer server's addition) is shown to the
/// observer and ignored: no gap, no broken connection. An event this client cannot decode (a
/// kind a newer server added) is a loss, handed over as an `unreadable` gap before the next
/// event, never dropped silently.
#[tokio::test]
async fn unknown_frame_types_are_ignored_and_undecodable_events_become_an_unreadable_gap() {
    let (listener, mut client, log) = setup().await;
    let mut peer = accept(&listener).await;
    assert_eq!(hello(&mut peer).await, None);
    send(&mut peer, welcome("e1", 0, false)).await;
    send(&mut peer, event(1)).await;
    peer.send(Message::text(r#"{"type":"notice","text":"maintenance at noon"}"#))
        .await
        .unwrap();
    // A jump right after it: the server's doing (the notice was no lost event), shown as is.
    send(&mut peer, event(3)).await;
    peer.send(Message::text(
        r#"{"type":"event","seq":4,"run":"run-1","kind":"agent_paused","data":null}"#,
    ))
    .await
    .unwrap();
    send(&mut peer, event(5)).await;

    assert_eq!(seq_of(next(&mut client).await), 1);
    assert_eq!(
        seq_of(next(&mut client).await),
        3,
        "the unknown frame type broke nothing and is not mistaken for a lost event"
    );
    assert_eq!(
        next(&mut client).await,
        Some(Item::Gap {
            epoch: "e1".into(),
            from: 4,
            to: Some(4),
            reason: ItemGapReason::Unreadable
        })
    );
    assert_eq!(seq_of(next(&mut client).await), 5);
    assert_eq!(
        client.state(),
        ClientState::Connected {
            epoch: "e1".into(),
            last_seq: 5
        }
    );
    let log = log.0.lock().unwrap().clone();
    assert!(
        log.contains(&r#"unparsed Some("c-1") {"type":"notice","text":"maintenance at noon"}"#.to_string()),
        "{log:#?}"
    );
    assert_eq!(
        log.iter().filter(|l| l.starts_with("connecting")).count(),
        1,
        "{log:#?}"
    );
    assert!(!log.iter().any(|l| l.starts_with("closed")), "{log:#?}");
}

/// A refusal whose close frame never arrives (the connection just ends after the error frame)
/// is judged by its error frame: a 4001 is retried at the backoff, as with its close frame.
#[tokio::test]
async fn auth_failed_followed_by_eof_without_a_close_frame_is_retried() {
    let (listener, mut client, log) = setup().await;
    let mut peer = accept(&listener).await;
    assert_eq!(hello(&mut peer).await, None);
    send(
        &mut peer,
        ServerFrame::Error {
            code: ErrorCode::AuthFailed,
            message: "bad signature".into(),
        },
    )
    .await;
    drop(peer); // EOF, no close frame

    let mut peer = accept(&listener).await;
    assert_eq!(hello(&mut peer).await, None, "retried, with the provider's token");
    send(&mut peer, welcome("e1", 0, false)).await;
    send(&mut peer, event(1)).await;
    assert_eq!(seq_of(next(&mut client).await), 1);
    let log = log.0.lock().unwrap().clone();
    assert!(log.contains(&"closed None Network".to_string()), "{log:#?}");
    assert!(log.contains(&"connecting 2 None".to_string()), "{log:#?}");
}

/// A retryable error followed by EOF is still retried (here: `too_many_connections`).
#[tokio::test]
async fn a_retryable_error_followed_by_eof_is_retried() {
    let (listener, _client, _log) = setup().await;
    let mut peer = accept(&listener).await;
    hello(&mut peer).await;
    send(
        &mut peer,
        ServerFrame::Error {
            code: ErrorCode::TooManyConnections,
            message: "full".into(),
        },
    )
    .await;
    drop(peer);
    let mut peer = accept(&listener).await;
    assert_eq!(hello(&mut peer).await, None, "retried");
}

/// `drop_connection()` during an attempt is the application's doing, not a failure of the
/// server: it does not count toward `attempts_max`.
#[tokio::test]
async fn an_attempt_dropped_by_the_application_does_not_count_toward_attempts_max() {
    let (listener, client, log) = setup_with(Some(1)).await;
    // An attempt that is never welcomed, aborted by the application.
    let mut peer = accept(&listener).await;
    assert_eq!(hello(&mut peer).await, None);
    client.drop_connection();
    // The client tries again instead of giving up after "1 attempt".
    let mut peer2 = accept(&listener).await;
    assert_eq!(hello(&mut peer2).await, None);
    assert_eq!(client.state(), ClientState::Connecting);
    drop(peer);
    send(&mut peer2, welcome("e1", 0, false)).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !matches!(client.state(), ClientState::Connected { .. }) {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", client.state());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = log.0.lock().unwrap().clone();
    let connecting: Vec<&String> = log.iter().filter(|l| l.starts_with("connecting")).collect();
    // The observer still numbers every attempt since the last welcome.
    assert!(connecting[0].starts_with("connecting 1 None"), "{log:#?}");
    assert!(connecting[1].starts_with("connecting 2 None"), "{log:#?}");
    assert!(log.contains(&"closed None Dropped".to_string()), "{log:#?}");
}

// ---------------------------------------------------------------------------------------------
// Token changes after `auth_failed`, and seqs no stream reaches

/// One connection end as the client reported it: close code, cause, reason.
type End = (Option<u16>, CloseCause, String);

/// Every connection end the client reported.
#[derive(Clone, Default)]
struct Closes(Arc<Mutex<Vec<End>>>);

impl Closes {
    fn all(&self) -> Vec<End> {
        self.0.lock().unwrap().clone()
    }
}

impl ClientObserver for Closes {
    fn closed(&self, code: Option<u16>, cause: CloseCause, reason: &str) {
        self.0.lock().unwrap().push((code, cause, reason.to_string()));
    }
}

/// A client of `listener` whose n-th call (from 0) to its token provider returns `token(n)`;
/// also returns the number of calls so far.
fn spawn_with_tokens(
    listener: &TcpListener,
    attempts_max: Option<u32>,
    token: impl Fn(usize) -> String + Send + Sync + 'static,
) -> (Client, Arc<AtomicUsize>, Closes) {
    let addr = listener.local_addr().unwrap();
    let mut config = ClientConfig::new(format!("ws://{addr}/v1/ws"), 1);
    config.backoff_initial_ms = 10;
    config.backoff_max_ms = 50;
    config.attempts_max = attempts_max;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let tokens = move || token(counter.fetch_add(1, Ordering::SeqCst));
    let closes = Closes::default();
    let client = Client::spawn(config, TcpConnector { addr: addr.to_string() }, tokens, closes.clone());
    (client, calls, closes)
}

/// Reads the hello and returns its token and resume.
async fn hello_with_token(peer: &mut Peer) -> (String, Option<Resume>) {
    let message = tokio::time::timeout(WAIT, peer.next()).await.unwrap().unwrap().unwrap();
    match serde_json::from_str::<ClientFrame>(message.to_text().unwrap()).unwrap() {
        ClientFrame::Hello { token, resume } => (token, resume),
        other => panic!("expected hello, got {other:?}"),
    }
}

/// Refuses the hello as the server does: the `error` frame, then the close frame.
async fn refuse(peer: &mut Peer, code: ErrorCode, message: &str) {
    send(
        peer,
        ServerFrame::Error {
            code,
            message: message.into(),
        },
    )
    .await;
    peer.send(Message::Close(Some(CloseFrame {
        code: CloseCode::from(code.close_code()),
        reason: code.as_str().into(),
    })))
    .await
    .unwrap();
}

/// Waits until the client has dropped the connection (no close frame expected, none needed).
async fn dropped_by_client(peer: &mut Peer) {
    loop {
        match tokio::time::timeout(WAIT, peer.next())
            .await
            .expect("the client dropped the connection")
        {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
            Some(Ok(_)) => {}
        }
    }
}

/// The server's secret was rotated before the token service switched: the old token is refused
/// with 4001, and the provider's next token (the new secret's) is tried after the backoff.
#[tokio::test]
async fn auth_failed_is_retried_when_the_token_provider_yields_a_different_token() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (mut client, calls, closes) = spawn_with_tokens(&listener, None, |n| {
        if n == 0 { "old-secret" } else { "new-secret" }.to_string()
    });
    let mut peer = accept(&listener).await;
    assert_eq!(hello_with_token(&mut peer).await, ("old-secret".to_string(), None));
    refuse(&mut peer, ErrorCode::AuthFailed, "bad signature").await;

    let mut peer = accept(&listener).await;
    assert_eq!(hello_with_token(&mut peer).await, ("new-secret".to_string(), None));
    send(&mut peer, welcome("e1", 0, false)).await;
    send(&mut peer, event(1)).await;
    assert_eq!(seq_of(next(&mut client).await), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "asked once per hello");
    assert_eq!(
        closes.all(),
        vec![(Some(4001), CloseCause::Server, "auth_failed: bad signature".to_string())]
    );
}

/// A server that refuses a token for a while (its secret rolled back, an audience set before
/// the token service followed) and then accepts it again: a client whose provider kept the
/// same token gets through once the server is fixed. It used to stop for good on the second
/// refusal, and a whole fleet stayed down until every application restarted.
#[tokio::test]
async fn auth_failed_with_the_same_token_is_retried_until_the_server_accepts_it() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (mut client, calls, closes) = spawn_with_tokens(&listener, None, |_| "token".to_string());
    for _ in 0..2 {
        let mut peer = accept(&listener).await;
        assert_eq!(hello_with_token(&mut peer).await.0, "token");
        refuse(&mut peer, ErrorCode::AuthFailed, "bad signature").await;
    }
    let mut peer = accept(&listener).await;
    assert_eq!(hello_with_token(&mut peer).await, ("token".to_string(), None));
    send(&mut peer, welcome("e1", 0, false)).await;
    send(&mut peer, event(1)).await;
    assert_eq!(seq_of(next(&mut client).await), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 3, "asked once per hello");
    let refusals = vec![(Some(4001), CloseCause::Server, "auth_failed: bad signature".to_string()); 2];
    assert_eq!(closes.all(), refusals, "each refusal reported");
}

/// A provider with a new (and still refused) token on every call is retried like any other
/// failure: at the backoff's rate, and `attempts_max` times at most.
#[tokio::test]
async fn auth_failed_with_a_new_bad_token_every_time_is_bounded_by_attempts_max() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (mut client, calls, _closes) = spawn_with_tokens(&listener, Some(3), |n| format!("bad-{n}"));
    for n in 0..3 {
        let mut peer = accept(&listener).await;
        assert_eq!(hello_with_token(&mut peer).await, (format!("bad-{n}"), None));
        refuse(&mut peer, ErrorCode::AuthFailed, "bad signature").await;
    }
    assert_eq!(next(&mut client).await, None);
    assert_eq!(
        client.state(),
        ClientState::Stopped {
            reason: "gave up: 3 attempts without a welcome (attempts_max 3)".into()
        }
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3, "not asked after giving up");
}

/// No stream reaches seq 2^64-1 (the server refuses `resume.after` = 2^64-1 with 4004): a
/// welcome head, event seq or gap end there is a server bug. The client drops that connection
/// before the frame moves its position (which it could never resume from), and resumes from
/// its last good seq; a debug build used to panic on the overflow.
#[tokio::test]
async fn a_seq_of_2_pow_64_minus_1_drops_the_connection_and_the_client_resumes_from_its_last_good_seq() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (mut client, _calls, closes) = spawn_with_tokens(&listener, None, |_| "token".to_string());

    let mut peer = accept(&listener).await;
    assert_eq!(hello_with_token(&mut peer).await.1, None);
    send(&mut peer, welcome("e1", u64::MAX, false)).await;
    dropped_by_client(&mut peer).await;

    let mut peer = accept(&listener).await;
    assert_eq!(hello_with_token(&mut peer).await.1, None, "the bad head is no position");
    send(&mut peer, welcome("e1", 0, false)).await;
    send(&mut peer, event(1)).await;
    send(&mut peer, event(u64::MAX)).await;
    dropped_by_client(&mut peer).await;
    assert_eq!(seq_of(next(&mut client).await), 1);

    let resume = Some(Resume {
        epoch: "e1".into(),
        after: 1,
    });
    let mut peer = accept(&listener).await;
    assert_eq!(hello_with_token(&mut peer).await.1, resume);
    send(&mut peer, welcome("e1", 1, true)).await;
    peer.send(Message::binary(vec![1u8])).await.unwrap(); // unreadable: the overflowing path
    send(
        &mut peer,
        ServerFrame::Gap {
            epoch: "e1".into(),
            from: 2,
            to: Some(u64::MAX),
            reason: GapReason::Retention,
        },
    )
    .await;
    dropped_by_client(&mut peer).await;

    let mut peer = accept(&listener).await;
    assert_eq!(hello_with_token(&mut peer).await.1, resume, "still the last good seq");
    send(&mut peer, welcome("e1", 2, true)).await;
    send(&mut peer, event(2)).await;
    assert_eq!(seq_of(next(&mut client).await), 2, "nothing invented in between");
    assert_eq!(
        client.state(),
        ClientState::Connected {
            epoch: "e1".into(),
            last_seq: 2
        }
    );
    let ends: Vec<End> = closes.all();
    let max = u64::MAX;
    let expected = [
        format!("welcome head {max}"),
        format!("event seq {max}"),
        format!("gap to {max}"),
    ];
    assert_eq!(ends.len(), expected.len(), "{ends:#?}");
    for ((code, cause, reason), what) in ends.iter().zip(expected) {
        assert_eq!((*code, *cause), (None, CloseCause::Network), "{ends:#?}");
        assert!(
            reason.starts_with(&format!(
                "protocol violation by the server: {what} is beyond every stream"
            )),
            "{ends:#?}"
        );
    }
}

/// A connection that ended in a protocol violation does not reset the backoff, even though it
/// was welcomed: a server that welcomes and then repeats the bad frame on every resume is
/// retried at the growing (capped) backoff, not every `backoff_initial_ms`. The jitter is
/// seeded, so the least time the retries can take is known exactly.
#[tokio::test]
async fn a_server_that_repeats_a_violation_after_each_welcome_is_retried_with_growing_backoff() {
    const VIOLATIONS: usize = 7;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = ClientConfig::new(format!("ws://{addr}/v1/ws"), 5);
    config.backoff_initial_ms = 10;
    config.backoff_max_ms = 1_000;
    let mut backoff = Backoff::from_config(&config);
    let least_ms: u64 = (0..VIOLATIONS).map(|_| backoff.next_delay_ms()).sum();
    assert!(
        least_ms > 10 * VIOLATIONS as u64 + 200,
        "the seed draws a distinguishable wait ({least_ms} ms)"
    );
    let _client = Client::spawn(
        config,
        TcpConnector { addr: addr.to_string() },
        || "token".to_string(),
        NoObserver,
    );
    let mut peer = accept(&listener).await;
    hello_with_token(&mut peer).await;
    let started = tokio::time::Instant::now();
    for _ in 0..VIOLATIONS {
        send(&mut peer, welcome("e1", 0, false)).await;
        send(&mut peer, event(u64::MAX)).await;
        dropped_by_client(&mut peer).await;
        peer = accept(&listener).await;
        hello_with_token(&mut peer).await;
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(least_ms),
        "{VIOLATIONS} retries took {took:?}, less than the backoff's {least_ms} ms: it was reset"
    );
}

// ---------------------------------------------------------------------------------------------
// When the backoff resets, and the spread after a server's shutdown

/// A client of `listener` with the given backoff bounds, reset period and shutdown spread.
fn spawn_with_backoff(
    listener: &TcpListener,
    seed: u64,
    initial_ms: u64,
    max_ms: u64,
    reset_after_ms: u64,
    spread_ms: u64,
) -> Client {
    let addr = listener.local_addr().unwrap();
    let mut config = ClientConfig::new(format!("ws://{addr}/v1/ws"), seed);
    config.backoff_initial_ms = initial_ms;
    config.backoff_max_ms = max_ms;
    config.backoff_reset_after_ms = reset_after_ms;
    config.shutdown_reconnect_spread_ms = spread_ms;
    Client::spawn(
        config,
        TcpConnector { addr: addr.to_string() },
        || "token".to_string(),
        NoObserver,
    )
}

/// Backoff bounds of the two tests below: small enough to be quick, far enough apart that
/// growing delays and reset ones differ by hundreds of milliseconds.
const BACKOFF_INITIAL_MS: u64 = 40;
const BACKOFF_MAX_MS: u64 = 320;

/// The sum of the first `delays` delays a client seeded `seed` draws with the bounds above:
/// growing, or with a reset before each (a reset at every welcome).
fn backoff_delays_sum_ms(seed: u64, delays: usize, reset: bool) -> u64 {
    let mut backoff = Backoff::new(
        BACKOFF_INITIAL_MS,
        BACKOFF_MAX_MS,
        herald_core::rng::SeededRng::new(seed),
    );
    (0..delays)
        .map(|_| {
            if reset {
                backoff.reset();
            }
            backoff.next_delay_ms()
        })
        .sum()
}

/// A peer that welcomes every connection and drops it at once (a server failing while it
/// replays, a proxy cutting after the upgrade): those welcomes do not reset the backoff, so the
/// retries slow down to the cap instead of coming every `backoff_initial_ms` forever. The
/// delays are the seeded jitter's, so the wait without any reset is known exactly; with a reset
/// at every welcome it would be far shorter.
#[tokio::test]
async fn welcomes_of_connections_that_end_at_once_do_not_reset_the_backoff() {
    const CONNECTIONS: usize = 6;
    let (initial_ms, max_ms) = (BACKOFF_INITIAL_MS, BACKOFF_MAX_MS);
    let delays = |seed, reset| backoff_delays_sum_ms(seed, CONNECTIONS - 1, reset);
    // A seed whose draws tell the two apart by a wide margin.
    let seed = (1..)
        .find(|seed| delays(*seed, false) > delays(*seed, true) + 400)
        .unwrap();
    let (growing_ms, reset_ms) = (delays(seed, false), delays(seed, true));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _client = spawn_with_backoff(&listener, seed, initial_ms, max_ms, 60_000, 0);
    let mut first_welcome = None;
    for _ in 0..CONNECTIONS {
        let mut peer = accept(&listener).await;
        hello(&mut peer).await;
        send(&mut peer, welcome("e1", 0, false)).await;
        first_welcome.get_or_insert_with(tokio::time::Instant::now);
        drop(peer);
    }
    let waited = first_welcome.unwrap().elapsed();
    assert!(
        waited >= Duration::from_millis(growing_ms),
        "{CONNECTIONS} connections within {waited:?}: the backoff was reset (growing delays sum to {growing_ms} ms, reset ones to {reset_ms} ms)"
    );
}

/// Every client of a server that shuts down hears its 1001 at the same moment; the next
/// attempt waits a seeded draw within `shutdown_reconnect_spread_ms`, not the (reset) backoff's
/// first few milliseconds, so that a fleet's resumes are spread over the window.
#[tokio::test]
async fn a_server_shutdown_spreads_the_reconnect_over_the_spread_window() {
    let (initial_ms, max_ms, spread_ms) = (5, 5_000, 2_000);
    // The delay is the larger of the (reset) backoff's draw and the spread's, in that order.
    let first_draw = |seed| {
        let mut backoff = Backoff::new(initial_ms, max_ms, herald_core::rng::SeededRng::new(seed));
        let backoff_ms = backoff.next_delay_ms();
        backoff_ms.max(backoff.spread_ms(spread_ms))
    };
    let seed = (1..)
        .find(|seed| (600..=spread_ms).contains(&first_draw(*seed)))
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _client = spawn_with_backoff(&listener, seed, initial_ms, max_ms, 0, spread_ms);
    let mut peer = accept(&listener).await;
    hello(&mut peer).await;
    send(&mut peer, welcome("e1", 0, false)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = tokio::time::Instant::now();
    refuse(&mut peer, ErrorCode::ShuttingDown, "shutting down").await;
    let mut peer = accept(&listener).await;
    let waited = refused.elapsed();
    assert!(
        waited >= Duration::from_millis(first_draw(seed)),
        "back after {waited:?}, before the drawn {} ms",
        first_draw(seed)
    );
    assert_eq!(hello(&mut peer).await.map(|resume| resume.after), Some(0), "a resume");
}

/// Hellos refused with 1001 (a draining server still reachable through a proxy) are failed
/// attempts: the backoff grows, whatever the spread (here 0, which used to mean no delay at
/// all: connect, hello, 1001, again).
#[tokio::test]
async fn hellos_refused_with_1001_back_off() {
    const ATTEMPTS: usize = 6;
    let (initial_ms, max_ms) = (BACKOFF_INITIAL_MS, BACKOFF_MAX_MS);
    let growing = |seed| backoff_delays_sum_ms(seed, ATTEMPTS - 1, false);
    let seed = (1..).find(|seed| growing(*seed) > 400).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _client = spawn_with_backoff(&listener, seed, initial_ms, max_ms, 0, 0);
    let mut first_refusal = None;
    for _ in 0..ATTEMPTS {
        let mut peer = accept(&listener).await;
        hello(&mut peer).await;
        first_refusal.get_or_insert_with(tokio::time::Instant::now);
        refuse(&mut peer, ErrorCode::ShuttingDown, "shutting down").await;
    }
    let waited = first_refusal.unwrap().elapsed();
    assert!(
        waited >= Duration::from_millis(growing(seed)),
        "{ATTEMPTS} refused hellos within {waited:?}: no backoff (it sums to {} ms)",
        growing(seed)
    );
}
