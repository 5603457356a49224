//! The naive baseline of the load benchmarks (issue 9, BENCHMARKS.md): the notification server a
//! team would write in an afternoon instead of using Herald. Bench-only; never part of `herald`.
//!
//! What a typical user writes: axum's `WebSocketUpgrade` (tokio-tungstenite underneath), a
//! `Mutex<HashMap<user, Vec<sender>>>`, and per connection a task pair — a reader and a writer —
//! joined by an unbounded channel. No auth (the `hello` token is ignored; the user comes from
//! `?user=`), no retention, no resume, no limits: a slow client grows its channel without bound.
//! It speaks just enough of Herald's protocol for the same load generator: `hello` → a
//! `welcome`-like frame, then `event` frames with a per-user `seq`, fed by
//! `POST /v1/users/{user}/events` (the `Authorization` header is ignored).
//!
//! ```text
//! cargo run --release -p herald-core --example baseline_server -- --listen 127.0.0.1:9000 --buffers default
//! cargo run --release -p herald-core --example baseline_server -- --listen 127.0.0.1:9000 --buffers small
//! ```
//! `--buffers default` keeps tungstenite's 128 KiB read and write buffers; `--buffers small` sets
//! a 1 KiB read buffer and no write buffer (the tuning Centrifugo and REFERENCE.md describe).
//!
//! The load generator also embeds this file (`#[path]` module) to run the baseline in its own
//! process and publish through [`App::publish_raw`], the in-process counterpart of herald's
//! `Notifier`, so that the two bridges are compared like for like.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// WebSocket buffer sizes of the baseline variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Buffers {
    /// tungstenite's defaults: 128 KiB read buffer, 128 KiB write buffer.
    Default,
    /// 1 KiB read buffer, write buffer 0 (every frame is written through).
    Small,
}

#[derive(Parser)]
#[command(about = "Naive tokio-tungstenite notification server (benchmark baseline)")]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// WebSocket buffer sizes.
    #[arg(long, value_enum, default_value = "default")]
    buffers: Buffers,
}

/// One user: a seq counter and the senders of its open connections.
#[derive(Default)]
struct UserEntry {
    seq: u64,
    connections: Vec<(u64, mpsc::UnboundedSender<Message>)>,
}

pub struct App {
    users: Mutex<HashMap<String, UserEntry>>,
    next_connection: AtomicU64,
    buffers: Buffers,
}

impl App {
    pub fn new(buffers: Buffers) -> Arc<App> {
        Arc::new(App {
            users: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(1),
            buffers,
        })
    }

    /// The in-process publish: what a team would call from the agent runner instead of going
    /// through HTTP. `data` is already-validated JSON, as with herald's `Notifier::publish_raw`,
    /// and the frame is serialized from borrowed fields (the cheapest encoding, so the
    /// comparison is conservative for herald). Returns the event's seq.
    pub fn publish_raw(&self, user: &str, run: &str, kind: &str, data: &RawValue) -> u64 {
        self.deliver(user, |seq| encode_event_frame(seq, run, kind, data))
    }

    /// Bumps `user`'s seq and sends `frame(seq)` to every open connection of the user.
    fn deliver(&self, user: &str, frame: impl FnOnce(u64) -> String) -> u64 {
        let mut users = self.users.lock().unwrap();
        if !users.contains_key(user) {
            users.insert(user.to_string(), UserEntry::default());
        }
        let entry = users.get_mut(user).expect("inserted above");
        entry.seq += 1;
        let message = Message::Text(frame(entry.seq).into());
        entry.connections.retain(|(_, tx)| tx.send(message.clone()).is_ok());
        entry.seq
    }
}

/// `{"type":"event","seq":..,"run":..,"kind":..,"data":..}`, serialized without a `Value` tree:
/// the frame of the in-process publish (here and in the load generator's floor).
pub fn encode_event_frame(seq: u64, run: &str, kind: &str, data: &RawValue) -> String {
    serde_json::to_string(&EventFrame {
        kind_tag: "event",
        seq,
        run,
        kind,
        data,
    })
    .expect("an event frame serializes")
}

/// A `welcome`-like frame (never `recovered`: there is no resume), here and in the load
/// generator's floor.
pub fn encode_welcome_frame(user: &str, connection: &str, epoch: &str, head: u64) -> String {
    serde_json::json!({
        "type": "welcome",
        "user": user,
        "connection": connection,
        "epoch": epoch,
        "head": head,
        "recovered": false,
    })
    .to_string()
}

#[derive(Serialize)]
struct EventFrame<'a> {
    #[serde(rename = "type")]
    kind_tag: &'static str,
    seq: u64,
    run: &'a str,
    kind: &'a str,
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct UserQuery {
    user: String,
}

#[derive(Deserialize)]
struct PublishBody {
    run: String,
    kind: String,
    data: serde_json::Value,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    let router = router(App::new(cli.buffers));
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    eprintln!(
        "baseline_server listening on {} (buffers {:?})",
        cli.listen, cli.buffers
    );
    axum::serve(listener, router).await
}

/// `GET /v1/ws?user=..`, `POST /v1/users/{user}/events`, `GET /healthz`.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/ws", get(websocket))
        .route("/v1/users/{user}/events", post(publish))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(app)
}

async fn websocket(State(app): State<Arc<App>>, Query(query): Query<UserQuery>, upgrade: WebSocketUpgrade) -> Response {
    let upgrade = match app.buffers {
        Buffers::Default => upgrade,
        Buffers::Small => upgrade.read_buffer_size(1024).write_buffer_size(0),
    };
    upgrade.on_upgrade(move |socket| connection(app, query.user, socket))
}

async fn connection(app: Arc<App>, user: String, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    // Wait for hello; the token is not checked.
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) if text.contains("\"hello\"") => break,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
            Some(Ok(_)) => continue,
        }
    }
    let id = app.next_connection.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    {
        let mut users = app.users.lock().unwrap();
        let entry = users.entry(user.clone()).or_default();
        let welcome = encode_welcome_frame(&user, &format!("b-{id}"), "baseline", entry.seq);
        // Queued before registering, so no event can overtake it.
        let _ = tx.send(Message::Text(welcome.into()));
        entry.connections.push((id, tx));
    }
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if sink.send(message).await.is_err() {
                break;
            }
        }
    });
    while let Some(Ok(message)) = stream.next().await {
        if matches!(message, Message::Close(_)) {
            break;
        }
    }
    {
        let mut users = app.users.lock().unwrap();
        if let Some(entry) = users.get_mut(&user) {
            entry.connections.retain(|(other, _)| *other != id);
        }
    }
    writer.abort();
}

async fn publish(State(app): State<Arc<App>>, Path(user): Path<String>, Json(body): Json<PublishBody>) -> Response {
    let seq = app.deliver(&user, |seq| {
        serde_json::json!({
            "type": "event",
            "seq": seq,
            "run": body.run,
            "kind": body.kind,
            "data": body.data,
        })
        .to_string()
    });
    (
        StatusCode::CREATED,
        Json(serde_json::json!({ "seq": seq, "epoch": "baseline" })),
    )
        .into_response()
}
