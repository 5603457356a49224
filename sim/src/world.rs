//! The world: one turmoil simulation that runs a [`Scenario`] against the real core and records
//! a [`History`].
//!
//! Hosts: `publisher` (publishes through the in-process notifier and the HTTP API), `server`
//! (one server life per start), and `client0..N` (each carrying many clients — turmoil's cost
//! per step grows with the square of the host count). The stepping loop below owns the `Sim`: it
//! applies each step when its time comes (network and server faults directly on the `Sim`,
//! everything else as commands to the hosts), samples the hub's gauges, then heals the network
//! and runs a quiet period so that loss and liveness are decidable — ended early once the world
//! has settled, when the scenario allows it (`settle_ms`, see `herald_properties::settling`).

use crate::clients::{self, ClientCommand};
use crate::clock::{SimClock, SIM_UNIX_EPOCH_MS};
use crate::net::{ServerConnections, TurmoilListener, SERVER_HOST, SERVER_PORT};
use crate::publisher::{self, PublishCommand};
use crate::recorder::{PanicSinkGuard, Recorder};
use crate::server_under_test::{LiveServer, RealServer, ServerLife, ServerUnderTest};
use herald_core::hub::HubConfig;
use herald_core::rng::SeededRng;
use herald_core::server::ServerConfig;
use herald_properties::history::{GaugeSample, History, Observation};
use herald_properties::scenario::{Scenario, Step};
use herald_properties::settling::Settling;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::mpsc;

/// The HS256 secret of every simulated server; hostile clients forge with another one.
pub const JWT_SECRET: &[u8] = b"herald-sim-jwt-secret";
/// The `aud` every simulated server demands (`ServerConfig::token_audience`) and every
/// simulated token names, so a token minted for another service (`Attack::WrongAudience`)
/// is refused as production would refuse it.
pub const TOKEN_AUDIENCE: &str = "herald-sim";

/// A token for `user`, signed with `secret`, expiring at `exp_secs` (Unix seconds), for the
/// simulated servers' audience: what every simulated client and test hello carries.
pub fn mint_sim_token(secret: &[u8], user: &str, exp_secs: u64) -> String {
    herald_core::auth::mint_token_for_audience(secret, user, exp_secs, Some(TOKEN_AUDIENCE))
}
/// The API key the publisher host sends.
pub const API_KEY: &str = "herald-sim-api-key";
/// Largest frame a simulated server accepts from a client.
pub const FRAME_BYTES_MAX: usize = 16 * 1024;
/// Commands queued per host before the stepping loop records a failure (scenarios are finite,
/// so this is never reached by a sane scenario).
pub const HOST_COMMANDS_MAX: usize = 4096;
/// Hard cap on simulated time, whatever the scenario says: a runaway scenario is a failure.
pub const SIMULATED_MS_MAX: u64 = 15 * 60 * 1000;

/// How one run is set up besides the scenario and seed.
pub struct WorldOptions {
    /// The server under test; [`RealServer`] unless a test proves a checker with a broken one.
    pub server: Rc<dyn ServerUnderTest>,
    /// Capture `tracing` output of all hosts, tagged with host and simulated time.
    pub trace: bool,
}

impl Default for WorldOptions {
    fn default() -> WorldOptions {
        WorldOptions {
            server: Rc::new(RealServer),
            trace: false,
        }
    }
}

/// What a run produced.
pub struct RunOutput {
    pub history: History,
    /// Captured tracing lines (empty unless `trace`).
    pub trace: String,
}

/// Runs `scenario` with `seed` against the real core.
pub fn run(scenario: &Scenario, seed: u64) -> History {
    run_with(scenario, seed, WorldOptions::default()).history
}

/// Runs `scenario` with `seed` and explicit options.
pub fn run_with(scenario: &Scenario, seed: u64, options: WorldOptions) -> RunOutput {
    if !options.trace {
        return RunOutput {
            history: run_world(scenario, seed, options.server),
            trace: String::new(),
        };
    }
    let buffer = crate::trace::TraceBuffer::default();
    let subscriber = crate::trace::subscriber(buffer.clone());
    let history = tracing::subscriber::with_default(subscriber, || run_world(scenario, seed, options.server));
    RunOutput {
        history,
        trace: buffer.take(),
    }
}

/// The server host's view of the world, shared with the stepping loop.
#[derive(Default)]
struct ServerSlot {
    life: u32,
    /// A `ShutdownServer` step that came before the life it targets had started (same instant
    /// as its `StartServer`): the life shuts down as soon as it starts.
    shutdown_pending: bool,
    live: Option<LiveHandles>,
}

/// What the stepping loop holds of the running server life.
struct LiveHandles {
    publisher: Arc<dyn crate::server_under_test::Publish>,
    control: Arc<dyn crate::server_under_test::ServerControl>,
    /// Wakes the life's reset task (see [`ServerConnections`]).
    reset: Arc<tokio::sync::Notify>,
    /// The life's accepted sockets, counted for the gauge samples.
    connections: ServerConnections,
}

/// Operations that drop the server host's runtime (and with it every task of the life).
/// While a runtime is alive they take two ticks: first the world resets the life's accepted
/// streams in accept order (so clients notice in a deterministic order, see
/// [`ServerConnections`]), then it crashes or restarts the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerOp {
    /// `RestartServer`: stop the running life (if any) and start a new one.
    Restart,
    /// `CrashServer`: drop the running life; the host stays down.
    Crash,
    /// `StartServer` (or the heal) on a host that is down: start a new life.
    Start,
}

fn run_world(scenario: &Scenario, seed: u64, server: Rc<dyn ServerUnderTest>) -> History {
    let recorder = Recorder::new(seed);
    let _panic_sink = PanicSinkGuard::install(&recorder);
    let config = &scenario.config;
    let mut seeds = SeededRng::new(seed);
    let turmoil_seed = seeds.next_u64();
    let server_seed = seeds.next_u64();
    let client_seed = seeds.next_u64();

    let tick_ms = config.tick_ms.clamp(1, 100);
    let mut sim = turmoil::Builder::new()
        .rng_seed(turmoil_seed)
        .epoch(UNIX_EPOCH + Duration::from_millis(SIM_UNIX_EPOCH_MS))
        .tick_duration(Duration::from_millis(tick_ms))
        .simulation_duration(Duration::from_millis(SIMULATED_MS_MAX))
        .min_message_latency(Duration::from_millis(config.latency_min_ms))
        .max_message_latency(Duration::from_millis(config.latency_max_ms.max(config.latency_min_ms)))
        .tcp_capacity(4096)
        .build();

    // Publisher host.
    let (publish_tx, publish_rx) = mpsc::channel::<PublishCommand>(HOST_COMMANDS_MAX);
    let slot = Arc::new(Mutex::new(ServerSlot::default()));
    let publisher_ctx = publisher::PublisherContext {
        recorder: recorder.clone(),
        timeouts: config.timeouts.clone(),
        api_key: API_KEY.to_string(),
        current: {
            let slot = slot.clone();
            Arc::new(move || slot.lock().unwrap().live.as_ref().map(|live| live.publisher.clone()))
        },
    };
    let publish_rx = Rc::new(RefCell::new(Some(publish_rx)));
    sim.host("publisher", move || {
        let ctx = publisher_ctx.clone();
        let rx = publish_rx.borrow_mut().take();
        async move {
            if let Some(rx) = rx {
                publisher::run(ctx, rx).await;
            }
            std::future::pending::<()>().await;
            Ok(())
        }
    });

    // Server host: one life per start.
    let server_config = server_config(scenario);
    {
        let slot = slot.clone();
        let recorder = recorder.clone();
        sim.host(SERVER_HOST, move || {
            let slot = slot.clone();
            let recorder = recorder.clone();
            let server = server.clone();
            let config = server_config.clone();
            async move {
                let life = slot.lock().unwrap().life;
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", SERVER_PORT)).await?;
                let connections = ServerConnections::default();
                let reset = Arc::new(tokio::sync::Notify::new());
                {
                    let (connections, reset) = (connections.clone(), reset.clone());
                    tokio::task::spawn_local(async move {
                        reset.notified().await;
                        connections.reset_all();
                    });
                }
                let mut rng = SeededRng::new(server_seed ^ (u64::from(life) + 1).wrapping_mul(0x9E37_79B9));
                let life_ctx = ServerLife {
                    life,
                    config,
                    clock: Arc::new(SimClock::starting_now()),
                    rng: rng.fork(),
                    listener: TurmoilListener {
                        listener,
                        connections: connections.clone(),
                    },
                };
                let LiveServer {
                    publisher,
                    control,
                    serve,
                } = match server.start(life_ctx) {
                    Ok(live) => live,
                    Err(message) => {
                        recorder.record(Observation::Failure {
                            host: SERVER_HOST.into(),
                            message,
                        });
                        return Ok(());
                    }
                };
                let shutdown_now = {
                    let mut slot = slot.lock().unwrap();
                    slot.live = Some(LiveHandles {
                        publisher,
                        control: control.clone(),
                        reset,
                        connections: connections.clone(),
                    });
                    std::mem::take(&mut slot.shutdown_pending)
                };
                if shutdown_now {
                    recorder.record(Observation::ServerStopped {
                        life,
                        how: "shutdown".into(),
                    });
                    control.shutdown();
                }
                if let Err(error) = serve.await {
                    recorder.record(Observation::Failure {
                        host: SERVER_HOST.into(),
                        message: format!("serve returned an error: {error}"),
                    });
                }
                // The process exits after a graceful shutdown: its sockets close now, in accept
                // order. (turmoil stops ticking a host whose software returned, so tasks left
                // behind would otherwise be dropped at the next start in tokio's task order.)
                connections.reset_all();
                Ok(())
            }
        });
    }

    // Client hosts.
    let hosts = config.client_hosts.max(1);
    let mut host_tx = Vec::new();
    for host in 0..hosts {
        let (tx, rx) = mpsc::channel::<ClientCommand>(HOST_COMMANDS_MAX);
        host_tx.push(tx);
        let ctx = clients::HostContext {
            recorder: recorder.clone(),
            config: config.clone(),
            seed: client_seed ^ u64::from(host).wrapping_mul(0xA24B_AED4_963E_E407),
        };
        let rx = Rc::new(RefCell::new(Some(rx)));
        sim.host(client_host_name(host).as_str(), move || {
            let ctx = ctx.clone();
            let rx = rx.borrow_mut().take();
            async move {
                if let Some(rx) = rx {
                    clients::run_host(ctx, rx).await;
                }
                std::future::pending::<()>().await;
                Ok(())
            }
        });
    }

    recorder.record_at(0, Observation::ServerStarted { life: 0 });
    let mut driver = Driver {
        scenario,
        recorder: recorder.clone(),
        slot,
        publish_tx,
        host_tx,
        clients: BTreeMap::new(),
        next_event: 0,
        next_publish: 0,
        server_running: true,
        lives_started: 1,
        pending_op: None,
        runtime_alive: true,
        links: vec![LinkFaults::default(); scenario.config.client_hosts.max(1) as usize],
        loss_rate: 0.0,
    };
    driver.run(&mut sim, tick_ms);
    recorder.into_history()
}

/// The stepping loop's state.
struct Driver<'s> {
    scenario: &'s Scenario,
    recorder: Recorder,
    slot: Arc<Mutex<ServerSlot>>,
    publish_tx: mpsc::Sender<PublishCommand>,
    host_tx: Vec<mpsc::Sender<ClientCommand>>,
    /// Normal clients opened so far: client id → (host, stopped).
    clients: BTreeMap<u32, (u32, bool)>,
    next_event: u64,
    next_publish: u64,
    /// Whether the server host should be running (not crashed or shut down).
    server_running: bool,
    /// Server lives started so far (the host starts once when the world is built).
    lives_started: u32,
    /// An operation whose stream reset has been requested; performed after one tick.
    pending_op: Option<ServerOp>,
    /// Whether the server host's runtime exists (false after a crash): a graceful shutdown
    /// leaves it alive, with tasks that a later start must drop.
    runtime_alive: bool,
    /// The network faults each client host's link to the server is under, as the scenario's
    /// steps opened them (see [`LinkFaults`]).
    links: Vec<LinkFaults>,
    /// turmoil's loss rate (probability per message) the last `SetLossRate` asked for.
    loss_rate: f64,
}

/// The faults one client host's link is under, each open from its step until the step that ends
/// it: a partition (either direction) until `Repair`, a hold until `Release`, as the checkers'
/// index reads them. turmoil keeps one state per link direction, and its calls overwrite each
/// other (`release` ends a partition, `hold` turns one into a hold, `repair` ends a hold, and a
/// random loss partition of a link with one healthy direction is later released whole, one-way
/// partition and all), so after every network step the world applies the combination anew
/// ([`Driver::apply_link`]) instead of passing the step's one call through: a fault a scenario
/// says is open is open, and the checkers excuse only what really happened.
#[derive(Clone, Copy, Debug, Default)]
struct LinkFaults {
    /// Messages from the client host to the server are dropped.
    to_server_cut: bool,
    /// Messages from the server to the client host are dropped.
    from_server_cut: bool,
    /// Messages are held (delayed, not lost) until released.
    held: bool,
}

impl Driver<'_> {
    fn run(&mut self, sim: &mut turmoil::Sim<'_>, tick_ms: u64) {
        let config = &self.scenario.config;
        let steps = self.scenario.sorted_steps();
        let last_step_ms = self.scenario.last_step_ms();
        let heal_at_ms = last_step_ms + tick_ms;
        let end_at_ms = heal_at_ms + config.quiet_period_ms;
        let gauge_interval_ms = config.gauge_interval_ms.max(tick_ms);
        let mut next_step = 0;
        let mut next_gauge_ms = 0;
        let mut healed = false;
        let mut settling = Settling::new();
        let mut observed = 0;
        // The gauge sample the world settled on, if it did.
        let mut settled_on: Option<GaugeSample> = None;
        loop {
            let now_ms = sim.elapsed().as_millis() as u64;
            if let Some(op) = self.pending_op.take() {
                self.finish_server_op(sim, now_ms, op);
            }
            while next_step < steps.len() && steps[next_step].1.at_ms <= now_ms {
                let (index, step) = steps[next_step];
                self.apply(sim, now_ms, index, &step.step);
                next_step += 1;
                if self.pending_op.is_some() {
                    // Let the reset run for one tick before anything else happens.
                    break;
                }
            }
            if !healed && self.pending_op.is_none() && next_step == steps.len() && now_ms >= heal_at_ms {
                self.heal(sim, now_ms);
                healed = true;
            }
            if now_ms >= next_gauge_ms {
                self.sample_gauges(sim, now_ms);
                next_gauge_ms = now_ms + gauge_interval_ms;
            }
            if healed && config.settle_ms.is_some() {
                self.recorder.feed(&mut settling, &mut observed);
                if settling.is_quiet(config, now_ms) {
                    settled_on = self
                        .read_gauges(sim)
                        .filter(|sample| settling.is_settled(config, now_ms, sample));
                    if settled_on.is_some() {
                        break;
                    }
                }
            }
            if healed && now_ms >= end_at_ms {
                break;
            }
            if now_ms >= SIMULATED_MS_MAX - tick_ms {
                self.recorder.record_at(
                    now_ms,
                    Observation::Failure {
                        host: "world".into(),
                        message: "simulated time limit reached".into(),
                    },
                );
                break;
            }
            let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.step()));
            match stepped {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    self.recorder.record_at(
                        now_ms,
                        Observation::Failure {
                            host: "world".into(),
                            message: format!("host failed: {error}"),
                        },
                    );
                    break;
                }
                Err(_) => {
                    // The panic hook has recorded the message.
                    break;
                }
            }
        }
        let now_ms = sim.elapsed().as_millis() as u64;
        match settled_on {
            Some(sample) => {
                self.recorder.record_at(now_ms, Observation::Gauges(sample));
                self.recorder.record_at(now_ms, Observation::Settled);
            }
            None => self.sample_gauges(sim, now_ms),
        }
        self.recorder.record_at(now_ms, Observation::End);
    }

    fn apply(&mut self, sim: &mut turmoil::Sim<'_>, now_ms: u64, index: usize, step: &Step) {
        let config = &self.scenario.config;
        if let Err(reason) = self.validate(step) {
            self.recorder
                .record_at(now_ms, Observation::StepSkipped { index, reason });
            return;
        }
        self.recorder.record_at(
            now_ms,
            Observation::StepApplied {
                index,
                step: step.clone(),
            },
        );
        match step {
            Step::Connect {
                client,
                user,
                host,
                token_ttl_ms,
            } => {
                self.clients.insert(*client, (*host, false));
                self.send_client(
                    now_ms,
                    *host,
                    ClientCommand::Connect {
                        client: *client,
                        user: *user,
                        token_ttl_ms: token_ttl_ms.unwrap_or(config.token_ttl_ms),
                    },
                );
            }
            Step::Close { client } => {
                let host = self.clients[client].0;
                self.clients.insert(*client, (host, true));
                self.send_client(now_ms, host, ClientCommand::Close { client: *client });
            }
            Step::Kill { client } => {
                let host = self.clients[client].0;
                self.send_client(now_ms, host, ClientCommand::Kill { client: *client });
            }
            Step::Pause { client, duration_ms } => {
                let host = self.clients[client].0;
                self.send_client(
                    now_ms,
                    host,
                    ClientCommand::Pause {
                        client: *client,
                        duration_ms: *duration_ms,
                    },
                );
            }
            Step::Publish {
                user,
                run,
                kind,
                payload_bytes,
                via,
            } => {
                let event = self.next_event_id();
                let publish = self.next_publish_id();
                self.send_publish(
                    now_ms,
                    PublishCommand {
                        publishes: vec![(publish, event, *kind)],
                        user: *user,
                        run: *run,
                        payload_bytes: *payload_bytes,
                        via: *via,
                    },
                );
            }
            Step::Burst {
                user,
                run,
                count,
                payload_bytes,
                via,
            } => {
                let kinds = herald_properties::scenario::Kind::ALL;
                let publishes = (0..*count)
                    .map(|i| {
                        (
                            self.next_publish_id(),
                            self.next_event_id(),
                            kinds[i as usize % kinds.len()],
                        )
                    })
                    .collect();
                self.send_publish(
                    now_ms,
                    PublishCommand {
                        publishes,
                        user: *user,
                        run: *run,
                        payload_bytes: *payload_bytes,
                        via: *via,
                    },
                );
            }
            Step::Partition { host } => {
                let link = &mut self.links[*host as usize];
                link.to_server_cut = true;
                link.from_server_cut = true;
                self.apply_link(sim, *host);
            }
            Step::PartitionOneWay { host, direction } => {
                let link = &mut self.links[*host as usize];
                match direction {
                    herald_properties::scenario::Direction::ToServer => link.to_server_cut = true,
                    herald_properties::scenario::Direction::FromServer => link.from_server_cut = true,
                }
                self.apply_link(sim, *host);
            }
            Step::Repair { host } => {
                let link = &mut self.links[*host as usize];
                link.to_server_cut = false;
                link.from_server_cut = false;
                self.apply_link(sim, *host);
            }
            Step::Hold { host } => {
                self.links[*host as usize].held = true;
                self.apply_link(sim, *host);
            }
            Step::Release { host } => {
                self.links[*host as usize].held = false;
                self.apply_link(sim, *host);
            }
            Step::SetLatency { min_ms, max_ms } => set_latency(sim, config.client_hosts, *min_ms, *max_ms),
            Step::SetLossRate { per_mille } => {
                self.loss_rate = f64::from((*per_mille).min(1000)) / 1000.0;
                for host in 0..config.client_hosts.max(1) {
                    self.apply_link(sim, host);
                }
            }
            Step::RestartServer => self.server_op(sim, now_ms, ServerOp::Restart),
            Step::CrashServer => self.server_op(sim, now_ms, ServerOp::Crash),
            Step::StartServer => {
                if !self.server_running {
                    self.server_op(sim, now_ms, ServerOp::Start);
                }
            }
            Step::ShutdownServer => {
                let control = {
                    let mut slot = self.slot.lock().unwrap();
                    let control = slot.live.as_ref().map(|live| live.control.clone());
                    slot.shutdown_pending = control.is_none() && self.server_running;
                    control
                };
                if let Some(control) = control {
                    // A life that has not started yet records its own stop when it does.
                    self.record_server_stop(now_ms, "shutdown");
                    control.shutdown();
                }
                self.server_running = false;
            }
            Step::Hostile { host, attack } => {
                let victim_position = match attack {
                    herald_properties::scenario::Attack::ResumeAsOther { victim, .. } => {
                        self.recorder.last_position_of(&user_name(*victim))
                    }
                    _ => None,
                };
                self.send_client(
                    now_ms,
                    *host,
                    ClientCommand::Hostile {
                        step_index: index,
                        attack: attack.clone(),
                        victim_position,
                    },
                );
            }
        }
    }

    /// Puts one client host's link into the state its open faults combine to (see
    /// [`LinkFaults`]). A partition in both directions drops everything (held messages too, as a
    /// partition after a hold always did); a one-way partition drops one direction and holds or
    /// delivers the other; a hold alone holds both; no fault releases whatever was held. A link
    /// cut one way gets no random loss: turmoil's loss would partition its healthy direction and
    /// later release the link whole, ending the one-way partition with it.
    fn apply_link(&self, sim: &mut turmoil::Sim<'_>, host: u32) {
        let link = self.links[host as usize];
        let client = client_host_name(host);
        let client = client.as_str();
        let cut_one_way = link.to_server_cut != link.from_server_cut;
        if link.to_server_cut && link.from_server_cut {
            sim.partition(client, SERVER_HOST);
        } else {
            // From a known base: both directions held, or both healthy with what was held
            // delivered; then the one cut direction, if any.
            if link.held {
                sim.hold(client, SERVER_HOST);
            } else {
                sim.release(client, SERVER_HOST);
            }
            if link.to_server_cut {
                sim.partition_oneway(client, SERVER_HOST);
            } else if link.from_server_cut {
                sim.partition_oneway(SERVER_HOST, client);
            }
        }
        let loss_rate = if cut_one_way { 0.0 } else { self.loss_rate };
        sim.set_link_fail_rate(client, SERVER_HOST, loss_rate);
    }

    /// Why a step cannot apply (names something that does not exist or is gone).
    fn validate(&self, step: &Step) -> Result<(), String> {
        let config = &self.scenario.config;
        let user_ok = |user: &u32| {
            if *user < config.users {
                Ok(())
            } else {
                Err(format!("user {user} is beyond config.users {}", config.users))
            }
        };
        let host_ok = |host: &u32| {
            if *host < config.client_hosts.max(1) {
                Ok(())
            } else {
                Err(format!(
                    "host {host} is beyond config.client_hosts {}",
                    config.client_hosts
                ))
            }
        };
        let client_ok = |client: &u32| match self.clients.get(client) {
            Some((_, false)) => Ok(()),
            Some((_, true)) => Err(format!("client {client} was closed")),
            None => Err(format!("client {client} was never opened")),
        };
        match step {
            Step::Connect { client, user, host, .. } => {
                if self.clients.contains_key(client) {
                    return Err(format!("client {client} was already opened"));
                }
                if *client >= clients::HOSTILE_CLIENT_BASE {
                    return Err(format!(
                        "client ids from {} are reserved for hostile clients",
                        clients::HOSTILE_CLIENT_BASE
                    ));
                }
                user_ok(user)?;
                host_ok(host)
            }
            Step::Close { client } | Step::Kill { client } | Step::Pause { client, .. } => client_ok(client),
            Step::Publish { user, .. } | Step::Burst { user, .. } => user_ok(user),
            Step::Partition { host }
            | Step::PartitionOneWay { host, .. }
            | Step::Repair { host }
            | Step::Hold { host }
            | Step::Release { host } => host_ok(host),
            Step::Hostile { host, attack } => {
                host_ok(host)?;
                for user in attack.users() {
                    user_ok(&user)?;
                }
                match attack {
                    // Each hostile step owns 100 client ids; a flood is one to 99 sockets.
                    herald_properties::scenario::Attack::Flood { connections, .. }
                        if !(1..100).contains(connections) =>
                    {
                        Err(format!("a flood opens 1 to 99 connections, not {connections}"))
                    }
                    _ => Ok(()),
                }
            }
            Step::SetLatency { .. }
            | Step::SetLossRate { .. }
            | Step::RestartServer
            | Step::CrashServer
            | Step::StartServer
            | Step::ShutdownServer => Ok(()),
        }
    }

    /// Repairs every link, releases every hold, stops message loss, restores latency and starts
    /// a server that is down: from here on the world is quiet.
    fn heal(&mut self, sim: &mut turmoil::Sim<'_>, now_ms: u64) {
        let config = &self.scenario.config;
        self.loss_rate = 0.0;
        for host in 0..config.client_hosts.max(1) {
            self.links[host as usize] = LinkFaults::default();
            self.apply_link(sim, host);
        }
        sim.repair("publisher", SERVER_HOST);
        sim.release("publisher", SERVER_HOST);
        set_latency(sim, config.client_hosts, config.latency_min_ms, config.latency_max_ms);
        if !self.server_running {
            self.server_op(sim, now_ms, ServerOp::Start);
        }
        self.recorder.record_at(now_ms, Observation::HealStarted);
    }

    fn sample_gauges(&self, sim: &mut turmoil::Sim<'_>, now_ms: u64) {
        if let Some(sample) = self.read_gauges(sim) {
            self.recorder.record_at(now_ms, Observation::Gauges(sample));
        }
    }

    /// The live server's hub gauges, if a server life is running.
    fn read_gauges(&self, sim: &mut turmoil::Sim<'_>) -> Option<GaugeSample> {
        if !self.server_running || !sim.is_host_running(SERVER_HOST) {
            return None;
        }
        let (control, connections) = self
            .slot
            .lock()
            .unwrap()
            .live
            .as_ref()
            .map(|live| (live.control.clone(), live.connections.clone()))?;
        let g = control.gauges();
        Some(GaugeSample {
            users: g.users,
            connections: g.connections,
            retained_events: g.retained_events,
            retained_bytes: g.retained_bytes,
            send_queue_depth_max: g.send_queue_depth_max,
            connections_per_user_max: g.connections_per_user_max,
            server_sockets: connections.open_sockets(),
            sockets_refused: control.sockets_refused(),
        })
    }

    /// First phase of a server operation: if a runtime is alive, ask the life to reset its
    /// streams in accept order and finish one tick later ([`Driver::finish_server_op`]);
    /// otherwise finish now.
    fn server_op(&mut self, sim: &mut turmoil::Sim<'_>, now_ms: u64, op: ServerOp) {
        if op == ServerOp::Crash && !self.runtime_alive {
            return;
        }
        let reset = self.slot.lock().unwrap().live.as_ref().map(|live| live.reset.clone());
        match reset {
            Some(reset) if self.runtime_alive => {
                reset.notify_one();
                self.pending_op = Some(op);
            }
            _ => self.finish_server_op(sim, now_ms, op),
        }
    }

    fn finish_server_op(&mut self, sim: &mut turmoil::Sim<'_>, now_ms: u64, op: ServerOp) {
        match op {
            ServerOp::Restart => {
                self.record_server_stop(now_ms, "restart");
                self.start_server(sim, now_ms);
            }
            ServerOp::Crash => {
                self.record_server_stop(now_ms, "crash");
                sim.crash(SERVER_HOST);
                self.server_running = false;
                self.runtime_alive = false;
            }
            ServerOp::Start => self.start_server(sim, now_ms),
        }
    }

    /// Starts a new server life (bouncing the host). Until the new life's software has run,
    /// there is no live server: publishes through the notifier find none.
    fn start_server(&mut self, sim: &mut turmoil::Sim<'_>, now_ms: u64) {
        let life = self.lives_started;
        self.lives_started += 1;
        {
            let mut slot = self.slot.lock().unwrap();
            slot.life = life;
            slot.live = None;
            slot.shutdown_pending = false;
        }
        sim.bounce(SERVER_HOST);
        self.server_running = true;
        self.runtime_alive = true;
        // The life counts from its bounce: its software runs within the next tick.
        self.recorder.record_at(now_ms, Observation::ServerStarted { life });
    }

    fn record_server_stop(&self, now_ms: u64, how: &str) {
        if self.server_running {
            let life = self.lives_started - 1;
            self.recorder
                .record_at(now_ms, Observation::ServerStopped { life, how: how.into() });
        }
    }

    // Called from the stepping loop, outside every host: records at the step's time.
    fn send_client(&self, now_ms: u64, host: u32, command: ClientCommand) {
        if self.host_tx[host as usize].try_send(command).is_err() {
            self.recorder.record_at(
                now_ms,
                Observation::Failure {
                    host: client_host_name(host),
                    message: format!("more than {HOST_COMMANDS_MAX} commands queued"),
                },
            );
        }
    }

    fn send_publish(&self, now_ms: u64, command: PublishCommand) {
        if self.publish_tx.try_send(command).is_err() {
            self.recorder.record_at(
                now_ms,
                Observation::Failure {
                    host: "publisher".into(),
                    message: format!("more than {HOST_COMMANDS_MAX} publish commands queued"),
                },
            );
        }
    }

    fn next_event_id(&mut self) -> String {
        self.next_event += 1;
        format!("e-{}", self.next_event)
    }

    fn next_publish_id(&mut self) -> u64 {
        self.next_publish += 1;
        self.next_publish
    }
}

/// The server configuration a scenario asks for.
pub fn server_config(scenario: &Scenario) -> ServerConfig {
    let limits = &scenario.config.limits;
    let timeouts = &scenario.config.timeouts;
    let mut config = ServerConfig::new(JWT_SECRET.to_vec(), API_KEY.to_string());
    config.hub = HubConfig {
        retention_events_max: limits.retention_events_max,
        retention_age_ms: limits.retention_age_ms,
        retention_bytes_max: limits.retention_bytes_max,
        connections_per_user_max: limits.connections_per_user_max,
        connections_max: limits.connections_max,
        users_max: limits.users_max,
        send_queue_max: limits.send_queue_max,
        control_queue_max: limits.control_queue_max,
        event_bytes_max: limits.event_bytes_max,
        // Every quiet user of a scenario stays known, as on a production server far from its
        // limit: an epoch changes only with a server life.
        dormant_streams_max: limits.users_max,
    };
    config.hello_timeout_ms = timeouts.hello_timeout_ms;
    config.heartbeat_interval_ms = timeouts.heartbeat_interval_ms;
    config.idle_timeout_ms = timeouts.idle_timeout_ms;
    config.write_timeout_ms = timeouts.write_timeout_ms;
    config.http_request_timeout_ms = timeouts.http_request_timeout_ms;
    config.frame_bytes_max = FRAME_BYTES_MAX;
    config.token_audience = Some(TOKEN_AUDIENCE.to_string());
    config.sockets_max = limits.sockets_max;
    config.tick_interval_ms = 250;
    config
}

/// Sets the latency range `[min_ms, max_ms]` of every link that carries traffic: each client
/// host's and the publisher's, to the server. turmoil sets a minimum only per link (its global
/// setter moves the maximum alone), and a link's own range then overrides the global one, so
/// every latency change, the heal's included, goes through here.
fn set_latency(sim: &mut turmoil::Sim<'_>, client_hosts: u32, min_ms: u64, max_ms: u64) {
    let min = Duration::from_millis(min_ms);
    let max = Duration::from_millis(max_ms.max(min_ms));
    let hosts = (0..client_hosts.max(1))
        .map(client_host_name)
        .chain(["publisher".to_string()]);
    for host in hosts {
        sim.set_link_latency(host.as_str(), SERVER_HOST, min);
        sim.set_link_max_message_latency(host.as_str(), SERVER_HOST, max);
    }
}

pub fn client_host_name(host: u32) -> String {
    format!("client{host}")
}

pub use herald_properties::scenario::user_name;
