//! Client host software: the core's reconnecting client library for normal users, and raw
//! WebSocket (or, for sockets that never finish HTTP, raw TCP) attackers for hostile steps.
//! Everything a client sees is recorded.

use crate::clock::{sim_now_ms, SIM_UNIX_EPOCH_MS};
use crate::net::{server_ws_url, TurmoilConnector};
use crate::recorder::Recorder;
use crate::world::{mint_sim_token, user_name, FRAME_BYTES_MAX, JWT_SECRET};
use futures_util::{SinkExt, StreamExt};
use herald_core::auth::mint_token_for_audience;
use herald_core::client::{
    ClientConfig, ClientObserver, CloseCause, Connector, FrameReceived as ClientFrameReceived, Item,
};
use herald_core::protocol::{ClientFrame, Resume, ServerFrame};
use herald_properties::history::{
    ClosedBy, DeliveredItem, FrameSeen, Observation, ResumeSent, HANDSHAKE_FAILED, SOCKET_ENDED_BY_SERVER,
};
use herald_properties::scenario::{hostile_connect_timeout_ms, Attack, ScenarioConfig, Timeouts, HOSTILE_PATIENCE_MS};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// Hostile connections get client ids from here: `HOSTILE_CLIENT_BASE + step_index * 100 + k`.
pub const HOSTILE_CLIENT_BASE: u32 = 1_000_000;
/// Commands queued per client.
const CLIENT_COMMANDS_MAX: usize = 64;
/// Items the client library buffers for the application; small, so a paused application pushes
/// back on the socket quickly (and the server's slow-consumer path is reachable).
const CLIENT_ITEMS_MAX: usize = 64;

/// What the stepping loop tells a client host.
#[derive(Debug)]
pub enum ClientCommand {
    Connect {
        client: u32,
        user: u32,
        token_ttl_ms: u64,
    },
    Close {
        client: u32,
    },
    Kill {
        client: u32,
    },
    Pause {
        client: u32,
        duration_ms: u64,
    },
    Hostile {
        step_index: usize,
        attack: Attack,
        victim_position: Option<(String, u64)>,
    },
}

#[derive(Clone)]
pub struct HostContext {
    pub recorder: Recorder,
    pub config: ScenarioConfig,
    pub seed: u64,
}

enum PerClient {
    Close,
    Kill,
    Pause(u64),
}

/// Runs one client host: dispatches commands to per-client tasks until the world ends.
pub async fn run_host(ctx: HostContext, mut commands: mpsc::Receiver<ClientCommand>) {
    let mut clients: BTreeMap<u32, mpsc::Sender<PerClient>> = BTreeMap::new();
    while let Some(command) = commands.recv().await {
        match command {
            ClientCommand::Connect {
                client,
                user,
                token_ttl_ms,
            } => {
                let (tx, rx) = mpsc::channel(CLIENT_COMMANDS_MAX);
                clients.insert(client, tx);
                tokio::task::spawn_local(normal_client(ctx.clone(), client, user, token_ttl_ms, rx));
            }
            ClientCommand::Close { client } => forward(&ctx, &clients, client, PerClient::Close),
            ClientCommand::Kill { client } => forward(&ctx, &clients, client, PerClient::Kill),
            ClientCommand::Pause { client, duration_ms } => {
                forward(&ctx, &clients, client, PerClient::Pause(duration_ms))
            }
            ClientCommand::Hostile {
                step_index,
                attack,
                victim_position,
            } => {
                let base = HOSTILE_CLIENT_BASE + step_index as u32 * 100;
                if let Attack::Flood { user, connections } = attack {
                    for k in 0..connections.min(99) {
                        let attack = Attack::Flood { user, connections };
                        tokio::task::spawn_local(hostile_client(ctx.clone(), base + k, attack, None));
                    }
                } else {
                    tokio::task::spawn_local(hostile_client(ctx.clone(), base, attack, victim_position));
                }
            }
        }
    }
}

fn forward(ctx: &HostContext, clients: &BTreeMap<u32, mpsc::Sender<PerClient>>, client: u32, command: PerClient) {
    // A client that already stopped (terminal close) has dropped its receiver: nothing to do.
    if let Some(tx) = clients.get(&client) {
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(command) {
            ctx.recorder.record(Observation::Failure {
                host: "client".into(),
                message: format!("client {client}: more than {CLIENT_COMMANDS_MAX} commands queued"),
            });
        }
    }
}

/// The simulated clients' heartbeat: 1.5× the server's, the ratio of the production defaults
/// (client 15 s, server 10 s), kept below the idle timeout as the client requires. A client
/// pings only after that much silence, so against a live server it answers the server's pings
/// instead of sending its own, as in production; when the server is gone it probes the line,
/// and its idle timeout still ends the connection.
fn client_heartbeat_interval_ms(timeouts: &Timeouts) -> u64 {
    (timeouts.heartbeat_interval_ms * 3 / 2).min(timeouts.idle_timeout_ms.saturating_sub(1).max(1))
}

/// The `exp` claim (Unix seconds) of a token minted now with `ttl_ms` to live.
fn token_exp_secs(ttl_ms: u64) -> u64 {
    (SIM_UNIX_EPOCH_MS + sim_now_ms() + ttl_ms) / 1000
}

/// Mints a token for `user` valid for `ttl_ms` from now, for the simulated servers' audience.
fn token_for(user: &str, ttl_ms: u64, secret: &[u8]) -> String {
    mint_sim_token(secret, user, token_exp_secs(ttl_ms))
}

/// The token a normal client holds, renewed the way an application's token provider would:
/// when less than half of its lifetime is left (so every attempt after an expiry gets a fresh
/// one). Shared by the client library's provider and the observer, which records the `exp` of
/// the token each attempt sends; the first of the two to ask at an instant signs it, the other
/// gets the same bytes.
struct HeldToken {
    user: String,
    ttl_ms: u64,
    held: std::sync::Mutex<Option<(u64, String)>>,
}

impl HeldToken {
    /// The token to send now, and its `exp` in Unix seconds.
    fn current(&self) -> (u64, String) {
        let mut held = self.held.lock().expect("the held token is never poisoned");
        let now_ms = SIM_UNIX_EPOCH_MS + sim_now_ms();
        match &*held {
            Some((exp_secs, token)) if exp_secs * 1000 >= now_ms + self.ttl_ms / 2 => (*exp_secs, token.clone()),
            _ => {
                let exp_secs = token_exp_secs(self.ttl_ms);
                let token = mint_sim_token(JWT_SECRET, &self.user, exp_secs);
                *held = Some((exp_secs, token.clone()));
                (exp_secs, token)
            }
        }
    }
}

/// Records what the client library observes.
struct Observer {
    recorder: Recorder,
    client: u32,
    user: String,
    token: Arc<HeldToken>,
}

impl ClientObserver for Observer {
    fn connecting(&self, attempt: u32, resume: Option<&Resume>) {
        // The library asks for this attempt's token at the same simulated instant, and gets
        // this one (see `HeldToken`).
        let token_exp_ms = (self.token.current().0 * 1000).saturating_sub(SIM_UNIX_EPOCH_MS);
        self.recorder.record(Observation::Connecting {
            client: self.client,
            user: self.user.clone(),
            attempt,
            resume: resume.map(|r| ResumeSent {
                epoch: r.epoch.clone(),
                after: r.after,
            }),
            hostile: false,
            token_exp_ms: Some(token_exp_ms),
        });
    }

    fn frame(&self, connection: Option<&str>, frame: &ClientFrameReceived<'_>) {
        self.recorder.record(Observation::FrameReceived {
            client: self.client,
            user: self.user.clone(),
            connection: connection.map(str::to_string),
            frame: frame_seen(frame),
            hostile: false,
        });
    }

    fn closed(&self, code: Option<u16>, cause: CloseCause, reason: &str) {
        let by = match cause {
            CloseCause::Server => ClosedBy::Server,
            CloseCause::Client => ClosedBy::Client,
            CloseCause::Network => ClosedBy::Network,
            CloseCause::Dropped => ClosedBy::Killed,
        };
        self.recorder.record(Observation::Closed {
            client: self.client,
            user: self.user.clone(),
            code,
            by,
            reason: reason.to_string(),
            hostile: false,
        });
    }
}

/// Summarizes a frame for the history; event payloads name their id and intended user.
fn frame_seen(frame: &ClientFrameReceived<'_>) -> FrameSeen {
    match frame {
        ClientFrameReceived::Parsed(frame) => summarize(frame),
        // The library hands binary frames over as lossy UTF-8 too; the markers cover all of it.
        ClientFrameReceived::Unparsed(text) => FrameSeen::unparsed(text),
    }
}

fn summarize(frame: &ServerFrame) -> FrameSeen {
    match frame {
        ServerFrame::Welcome {
            user,
            connection,
            epoch,
            head,
            recovered,
        } => FrameSeen::Welcome {
            user: user.clone(),
            connection: connection.clone(),
            epoch: epoch.clone(),
            head: *head,
            recovered: *recovered,
        },
        ServerFrame::Event { seq, run, kind, data } => FrameSeen::Event {
            seq: *seq,
            run: run.clone(),
            kind: kind.as_str().to_string(),
            event_id: data.get("id").and_then(|v| v.as_str()).map(str::to_string),
            payload_user: data.get("user").and_then(|v| v.as_str()).map(str::to_string),
        },
        ServerFrame::Gap {
            epoch,
            from,
            to,
            reason,
        } => FrameSeen::Gap {
            epoch: epoch.clone(),
            from: *from,
            to: *to,
            reason: reason.as_str().to_string(),
        },
        ServerFrame::Pong { id } => FrameSeen::Pong { id: *id },
        ServerFrame::Error { code, message } => FrameSeen::Error {
            code: code.as_str().to_string(),
            message: message.clone(),
        },
    }
}

fn delivered(item: &Item) -> DeliveredItem {
    match item {
        Item::Event {
            epoch,
            seq,
            run,
            kind,
            data,
        } => DeliveredItem::Event {
            epoch: epoch.clone(),
            seq: *seq,
            run: run.clone(),
            kind: kind.as_str().to_string(),
            event_id: data.get("id").and_then(|v| v.as_str()).map(str::to_string),
        },
        Item::Gap {
            epoch,
            from,
            to,
            reason,
        } => DeliveredItem::Gap {
            epoch: epoch.clone(),
            from: *from,
            to: *to,
            reason: reason.as_str().to_string(),
        },
    }
}

/// A normal user's client: the core's client library plus an application that reads every
/// item (except while paused).
async fn normal_client(
    ctx: HostContext,
    client: u32,
    user: u32,
    token_ttl_ms: u64,
    mut commands: mpsc::Receiver<PerClient>,
) {
    let user = user_name(user);
    let timeouts = &ctx.config.timeouts;
    let mut config = ClientConfig::new(
        server_ws_url(),
        ctx.seed ^ u64::from(client).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    config.connect_timeout_ms = timeouts.hello_timeout_ms + 1_000;
    config.heartbeat_interval_ms = client_heartbeat_interval_ms(timeouts);
    config.idle_timeout_ms = timeouts.idle_timeout_ms;
    config.write_timeout_ms = timeouts.write_timeout_ms;
    config.backoff_initial_ms = timeouts.backoff_initial_ms;
    config.backoff_max_ms = timeouts.backoff_max_ms;
    config.backoff_reset_after_ms = timeouts.backoff_reset_after_ms;
    config.shutdown_reconnect_spread_ms = timeouts.shutdown_reconnect_spread_ms;
    config.items_max = CLIENT_ITEMS_MAX;
    config.frame_bytes_max = 4 * FRAME_BYTES_MAX + 64 * 1024;
    let token = Arc::new(HeldToken {
        user: user.clone(),
        ttl_ms: token_ttl_ms,
        held: std::sync::Mutex::new(None),
    });
    let provider = token.clone();
    let tokens = move || provider.current().1;
    let observer = Observer {
        recorder: ctx.recorder.clone(),
        client,
        user: user.clone(),
        token,
    };
    let mut library = herald_core::client::Client::spawn(config, TurmoilConnector, tokens, observer);
    let mut paused_until: Option<tokio::time::Instant> = None;
    loop {
        let paused = paused_until.is_some();
        let resume_at = paused_until.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            biased;
            command = commands.recv() => match command {
                Some(PerClient::Close) | None => {
                    library.close();
                    ctx.recorder.record(Observation::ClientStopped { client });
                    // Let the close frame go out before the task ends.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return;
                }
                Some(PerClient::Kill) => library.drop_connection(),
                Some(PerClient::Pause(duration_ms)) => {
                    ctx.recorder.record(Observation::Paused { client, duration_ms });
                    // A pause within a pause ends when the later of the two does, as the
                    // checkers' index reads each pause as its own window.
                    let until = tokio::time::Instant::now() + Duration::from_millis(duration_ms);
                    paused_until = Some(paused_until.map_or(until, |paused| paused.max(until)));
                }
            },
            _ = tokio::time::sleep_until(resume_at), if paused => paused_until = None,
            item = library.recv(), if !paused => match item {
                Some(item) => ctx.recorder.record(Observation::Delivered { client, user: user.clone(), item: delivered(&item) }),
                None => {
                    tracing::info!(client, state = ?library.state(), "client stopped for good");
                    ctx.recorder.record(Observation::ClientStopped { client });
                    return;
                }
            },
        }
    }
}

/// One hostile connection: does its attack, then records everything it receives until the
/// server closes it or `linger` passes.
async fn hostile_client(ctx: HostContext, client: u32, attack: Attack, victim_position: Option<(String, u64)>) {
    let timeouts = &ctx.config.timeouts;
    let ttl_ms = ctx.config.token_ttl_ms;
    let (user, hello) = match &attack {
        Attack::ForgedToken { user } => {
            let user = user_name(*user);
            let token = token_for(&user, ttl_ms, b"not-the-server-secret");
            (user, Some(ClientFrame::Hello { token, resume: None }))
        }
        Attack::ExpiredToken { user } => {
            let user = user_name(*user);
            let exp_secs = (SIM_UNIX_EPOCH_MS + sim_now_ms()) / 1000 - 60;
            (
                user.clone(),
                Some(ClientFrame::Hello {
                    token: mint_sim_token(JWT_SECRET, &user, exp_secs),
                    resume: None,
                }),
            )
        }
        Attack::InvalidSubject => (
            "?".to_string(),
            Some(ClientFrame::Hello {
                token: token_for(&format!("../{}", "u".repeat(140)), ttl_ms, JWT_SECRET),
                resume: None,
            }),
        ),
        Attack::WrongAudience { user } => {
            let user = user_name(*user);
            let token = mint_token_for_audience(JWT_SECRET, &user, token_exp_secs(ttl_ms), Some("chat-frontend"));
            (user, Some(ClientFrame::Hello { token, resume: None }))
        }
        Attack::GarbageToken => (
            "?".to_string(),
            Some(ClientFrame::Hello {
                token: "not.a.jwt".into(),
                resume: None,
            }),
        ),
        Attack::ResumeAsOther { user, .. } => {
            let user = user_name(*user);
            let token = token_for(&user, ttl_ms, JWT_SECRET);
            let resume = victim_position
                .map(|(epoch, seq)| Resume {
                    epoch,
                    after: seq.saturating_sub(1),
                })
                .unwrap_or(Resume {
                    epoch: "0000000000000000".into(),
                    after: 0,
                });
            (
                user,
                Some(ClientFrame::Hello {
                    token,
                    resume: Some(resume),
                }),
            )
        }
        Attack::ResumeAfterLastSeq { user } => {
            let user = user_name(*user);
            let token = token_for(&user, ttl_ms, JWT_SECRET);
            let resume = Resume {
                epoch: "not-an-epoch".into(),
                after: u64::MAX,
            };
            (
                user,
                Some(ClientFrame::Hello {
                    token,
                    resume: Some(resume),
                }),
            )
        }
        Attack::Flood { user, .. } => {
            let user = user_name(*user);
            let token = token_for(&user, ttl_ms, JWT_SECRET);
            (user, Some(ClientFrame::Hello { token, resume: None }))
        }
        Attack::FrameBeforeHello
        | Attack::MalformedFrame
        | Attack::OversizedFrame { .. }
        | Attack::SilentHello
        | Attack::SilentSocket
        | Attack::SlowRequest => ("?".to_string(), None),
    };
    let token_exp_ms = None;
    ctx.recorder.record(Observation::Connecting {
        client,
        user: user.clone(),
        attempt: 0,
        resume: match &hello {
            Some(ClientFrame::Hello { resume: Some(r), .. }) => Some(ResumeSent {
                epoch: r.epoch.clone(),
                after: r.after,
            }),
            _ => None,
        },
        hostile: true,
        token_exp_ms,
    });
    let closed = |code: Option<u16>, by: ClosedBy, reason: String| {
        ctx.recorder.record(Observation::Closed {
            client,
            user: user.clone(),
            code,
            by,
            reason,
            hostile: true,
        });
    };
    let connect_timeout = Duration::from_millis(hostile_connect_timeout_ms(timeouts));
    let stream = match tokio::time::timeout(connect_timeout, TurmoilConnector.connect()).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return closed(None, ClosedBy::Network, format!("connect failed: {error}")),
        Err(_) => return closed(None, ClosedBy::Network, "connect timed out".into()),
    };
    if matches!(attack, Attack::SilentSocket | Attack::SlowRequest) {
        let (by, reason) = stall_http(stream, &attack, timeouts).await;
        return closed(None, by, reason);
    }
    let handshake = tokio_tungstenite::client_async(server_ws_url(), stream);
    let mut socket = match tokio::time::timeout(connect_timeout, handshake).await {
        Ok(Ok((socket, _))) => socket,
        Ok(Err(error)) => return closed(None, ClosedBy::Network, format!("{HANDSHAKE_FAILED}: {error}")),
        Err(_) => return closed(None, ClosedBy::Network, "handshake timed out".into()),
    };
    let first: Option<String> = match &attack {
        Attack::FrameBeforeHello => Some(serde_json::to_string(&ClientFrame::Ping { id: 1 }).expect("serializes")),
        Attack::MalformedFrame => Some("this is not json {".into()),
        Attack::OversizedFrame { bytes } => Some(format!(
            "{{\"type\":\"ping\",\"id\":1,\"pad\":\"{}\"}}",
            "x".repeat(*bytes as usize)
        )),
        Attack::SilentHello => None,
        _ => hello.as_ref().map(|h| serde_json::to_string(h).expect("serializes")),
    };
    if let Some(text) = first {
        let send = socket.send(Message::text(text));
        match tokio::time::timeout(Duration::from_millis(timeouts.write_timeout_ms), send).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return closed(None, ClosedBy::Network, format!("send failed: {error}")),
            Err(_) => return closed(None, ClosedBy::Network, "send timed out".into()),
        }
    }
    // Flood connections that get in stay a while, so the others meet the per-user limit.
    let linger = Duration::from_millis(timeouts.hello_timeout_ms + HOSTILE_PATIENCE_MS);
    let deadline = tokio::time::Instant::now() + linger;
    loop {
        let next = tokio::time::timeout_at(deadline, socket.next()).await;
        match next {
            Err(_) => {
                let _ = tokio::time::timeout(Duration::from_millis(500), socket.close(None)).await;
                return closed(None, ClosedBy::Client, "hostile client finished".into());
            }
            Ok(None) => return closed(None, ClosedBy::Network, "stream ended".into()),
            Ok(Some(Err(error))) => return closed(None, ClosedBy::Network, format!("read failed: {error}")),
            Ok(Some(Ok(Message::Text(text)))) => {
                let frame = match serde_json::from_str::<ServerFrame>(&text) {
                    Ok(frame) => summarize(&frame),
                    Err(_) => FrameSeen::unparsed(&text),
                };
                let connection = match &frame {
                    FrameSeen::Welcome { connection, .. } => Some(connection.clone()),
                    _ => None,
                };
                ctx.recorder.record(Observation::FrameReceived {
                    client,
                    user: user.clone(),
                    connection,
                    frame,
                    hostile: true,
                });
            }
            // The real server sends no binary frames; a broken one might, with anyone's bytes.
            Ok(Some(Ok(Message::Binary(bytes)))) => {
                ctx.recorder.record(Observation::FrameReceived {
                    client,
                    user: user.clone(),
                    connection: None,
                    frame: FrameSeen::unparsed(&String::from_utf8_lossy(&bytes)),
                    hostile: true,
                });
            }
            Ok(Some(Ok(Message::Close(close)))) => {
                let code = close.as_ref().map(|c| u16::from(c.code));
                let reason = close.as_ref().map(|c| c.reason.to_string()).unwrap_or_default();
                let _ = code.map(CloseCode::from);
                return closed(code, ClosedBy::Server, reason);
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// The socket of a hostile client that never completes an HTTP request: it sends nothing
/// (`SilentSocket`) or a request one byte per quarter of `http_request_timeout_ms`
/// (`SlowRequest`). Returns how it ended: the server ended it, or the client gave up waiting.
async fn stall_http(mut stream: turmoil::net::TcpStream, attack: &Attack, timeouts: &Timeouts) -> (ClosedBy, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = b"POST /v1/users/u0/events HTTP/1.1\r\nHost: server\r\nContent-Type: application/json\r\n";
    let mut unsent: &[u8] = if *attack == Attack::SlowRequest { request } else { &[] };
    let byte_interval = Duration::from_millis((timeouts.http_request_timeout_ms / 4).max(1));
    let connected = tokio::time::Instant::now();
    let deadline = connected + Duration::from_millis(timeouts.http_request_timeout_ms + HOSTILE_PATIENCE_MS);
    let mut next_byte = connected;
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            biased;
            read = stream.read(&mut buf) => match read {
                // EOF or reset: either way the server ended the socket.
                Ok(0) | Err(_) => return (ClosedBy::Network, SOCKET_ENDED_BY_SERVER.into()),
                Ok(_) => {}
            },
            () = tokio::time::sleep_until(deadline) => {
                return (ClosedBy::Client, "hostile client finished".into());
            }
            () = tokio::time::sleep_until(next_byte), if !unsent.is_empty() => {
                let send = stream.write_all(&unsent[..1]);
                match tokio::time::timeout(Duration::from_millis(timeouts.write_timeout_ms), send).await {
                    Ok(Ok(())) => unsent = &unsent[1..],
                    // A write into a socket the server closed fails: it ended the socket.
                    Ok(Err(_)) => return (ClosedBy::Network, SOCKET_ENDED_BY_SERVER.into()),
                    Err(_) => return (ClosedBy::Network, "send timed out".into()),
                }
                next_byte += byte_interval;
            }
        }
    }
}
