//! One pass over a history that every checker shares: publishes and their outcomes, the events
//! that certainly exist in some stream, each client's connections with their frames, server
//! lives and network faults. Checkers ask it questions ("was this event certainly still retained
//! at t?", "was the network around this host disturbed between a and b?") instead of each
//! re-deriving them with slightly different assumptions.

use crate::history::{
    is_ambiguous_failure, ClosedBy, DeliveredItem, Entry, FrameSeen, GaugeSample, History, Observation, PublishOutcome,
    ResumeSent, HANDSHAKE_FAILED, SOCKET_ENDED_BY_SERVER,
};
use crate::scenario::{
    hostile_connect_timeout_ms, Attack, Limits, Scenario, ScenarioConfig, Step, Timeouts, Via, HTTP_RETRY_PAUSE_MS,
};
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::BTreeMap;
use std::fmt;

/// Hostile connections are recorded with client ids `HOSTILE_CLIENT_BASE + step_index * 100 + k`.
pub(super) const HOSTILE_CLIENT_BASE: u32 = 1_000_000;

/// What one event is assumed to count against `retention_bytes_max` beside `payload_bytes`.
/// The hub counts its frame envelope (about 100 bytes:
/// `{"type":"event","seq":..,"run":..,"kind":..,"data":..}`), 160 bytes of bookkeeping and its
/// idempotency key twice (the simulation's keys are event ids, under 20 bytes): about 300 in
/// all. Certainly-retained estimates then only use half of the limit, which keeps them certain.
const FRAME_OVERHEAD_BYTES: u64 = 300;

/// The last seq a delivered gap accounts for in its epoch: its `to`, or the rest of the epoch
/// for an epoch gap (the stream is gone) and for a gap with no end.
pub(super) fn gap_end(reason: &str, to: Option<u64>) -> u64 {
    match (reason, to) {
        ("epoch", _) | (_, None) => u64::MAX,
        (_, Some(to)) => to,
    }
}

/// The liveness bound B, in simulated ms: how long after the network heals (or after a publish,
/// whichever is later) a live client may take to be connected and caught up.
///
/// B = 2·idle_timeout + 2·backoff_max + 2·hello_timeout + 1000, because in the worst case a
/// client first needs up to `idle_timeout` to notice its old connection is dead (a partition
/// gives no error), the server needs as long to drop its side, then a reconnect waits up to
/// `backoff_max` (plus jitter, bounded by another `backoff_max`), and a handshake racing a
/// restarting server can burn a `hello_timeout` twice; 1000 ms covers latency and ticks.
pub fn liveness_bound_ms(timeouts: &Timeouts) -> u64 {
    2 * timeouts.idle_timeout_ms + 2 * timeouts.backoff_max_ms + 2 * timeouts.hello_timeout_ms + 1000
}

/// How long after a publish call its answer (and so its event's creation) may come, in
/// simulated ms: `publish_timeout_ms`, plus 1000 ms for latency and ticks. One bound for every
/// rule that waits on a call, so that no invariant flags what another excuses.
pub fn publish_answer_bound_ms(timeouts: &Timeouts) -> u64 {
    timeouts.publish_timeout_ms + 1000
}

/// How long after the last publish call the hub must have let every retained event age out,
/// in simulated ms: `retention_age_ms`, plus two gauge intervals for the sample that shows it,
/// plus `publish_timeout_ms` for a call whose event was created late in its attempt.
pub fn retention_expiry_ms(config: &ScenarioConfig) -> u64 {
    config.limits.retention_age_ms + 2 * config.gauge_interval_ms + config.timeouts.publish_timeout_ms
}

/// Whether a call went over HTTP: the world names them `http`, or `http+key` with an
/// idempotency key, and each holds a socket either way.
pub(super) fn is_http(via: &str) -> bool {
    via == "http" || via.starts_with("http+")
}

/// A client's refusals for a limit, from [`Index::limit_refusals`]: (close entry, ms).
pub(super) struct LimitRefusals(Vec<(usize, u64)>);

impl LimitRefusals {
    /// The time of the latest refusal whose close comes before entry `before`.
    pub fn last_before(&self, before: usize) -> Option<u64> {
        self.0
            .iter()
            .filter(|&&(closed, _)| closed < before)
            .map(|&(_, at)| at)
            .max()
    }
}

/// One publish attempt (a `PublishCalled` and, if it came, its `PublishReturned`).
pub(super) struct Call<'a> {
    pub idx: usize,
    pub at: u64,
    pub event_id: &'a str,
    pub user: &'a str,
    pub via: &'a str,
    pub idempotency_key: Option<&'a str>,
    /// Entry index of the matching `PublishReturned`.
    pub returned: Option<usize>,
}

/// One logical event (one `event_id`), over all its attempts.
pub(super) struct Event<'a> {
    pub event_id: &'a str,
    pub user: &'a str,
    /// The run and kind its first call published (every attempt carries the same).
    pub run: &'a str,
    pub kind: &'a str,
    pub calls: Vec<usize>,
    /// Stream positions this event certainly occupies (one per epoch it was created in).
    pub instances: Vec<usize>,
    pub first_call_idx: usize,
    pub first_call_at: u64,
    /// How many attempts failed ambiguously ([`is_ambiguous_failure`]) or never returned: with
    /// any, the event may exist without our knowing, and each may have created it once more.
    pub ambiguous_attempts: u64,
    /// Every attempt returned a non-ambiguous failure: the event certainly does not exist.
    pub definitely_failed: bool,
}

/// An event that certainly exists at `(user, epoch, seq)`: a publish returned it.
pub(super) struct Instance<'a> {
    pub event: usize,
    pub user: &'a str,
    pub epoch: &'a str,
    pub seq: u64,
    /// The first successful `PublishReturned` naming this position.
    pub returned_idx: usize,
    pub returned_at: u64,
    /// The attempt (a `calls` index) that answer was to.
    pub returned_call: usize,
    /// That answer said `duplicate: true`: an earlier attempt created the event.
    pub duplicate: bool,
}

/// A welcome as a client saw it.
pub(super) struct Welcome<'a> {
    pub idx: usize,
    pub at: u64,
    pub user: &'a str,
    pub connection: &'a str,
    pub epoch: &'a str,
    pub head: u64,
    pub recovered: bool,
}

/// One connection attempt of a client, from `Connecting` to `Closed`.
pub(super) struct Conn<'a> {
    pub connecting_idx: usize,
    pub at: u64,
    pub resume: Option<&'a ResumeSent>,
    pub token_exp_ms: Option<u64>,
    pub welcome: Option<Welcome<'a>>,
    pub frames: Vec<usize>,
    pub closed: Option<usize>,
}

/// A normal or hostile client and everything it observed.
pub(super) struct Client<'a> {
    pub id: u32,
    pub user: String,
    pub hostile: bool,
    pub host: Option<u32>,
    /// For hostile clients: the attack and the scenario step index it came from.
    pub attack: Option<(usize, &'a Attack)>,
    /// Entry index of the `StepApplied` that opened a normal client.
    pub connect_applied: Option<usize>,
    pub token_ttl_ms: u64,
    /// Entry index of the client's first `ClientStopped` (it stopped for good).
    pub stopped: Option<usize>,
    /// Entry index of the first `StepApplied` of a `Close` step for this client: a stop after
    /// it is the one the scenario asked for ([`Client::stopped_on_its_own`]).
    pub close_step: Option<usize>,
    pub conns: Vec<Conn<'a>>,
    pub delivered: Vec<usize>,
    /// Intervals (ms) during which the application did not read.
    pub pauses: Vec<(u64, u64)>,
}

impl Client<'_> {
    /// A normal client that was opened and that the scenario never closed: it must catch up by
    /// `End`. A client that stopped for good on its own (see [`Client::stopped_on_its_own`]) is
    /// still live: everything it missed afterwards is missed, and judged so.
    pub fn is_live(&self) -> bool {
        !self.hostile
            && self.connect_applied.is_some()
            && self.stopped.is_none_or(|_| self.stopped_on_its_own().is_some())
    }

    /// The entry at which a normal client stopped for good although no `Close` step had been
    /// applied to it before: the client library gave up by itself (a 4004 refusal, a frame
    /// beyond its `frame_bytes_max`), which a correct server never makes a simulated client do.
    pub fn stopped_on_its_own(&self) -> Option<usize> {
        self.stopped
            .filter(|&stop| !self.hostile && self.close_step.is_none_or(|close| close > stop))
    }

    pub fn first_welcome(&self) -> Option<&Welcome<'_>> {
        self.conns.iter().find_map(|c| c.welcome.as_ref())
    }

    /// Whether the client held a welcomed, not yet closed connection at entry `idx`.
    pub fn connected_at(&self, idx: usize) -> bool {
        self.conns
            .iter()
            .any(|c| c.welcome.as_ref().is_some_and(|w| w.idx < idx) && c.closed.is_none_or(|closed| closed > idx))
    }

    /// Whether the application was paused at some point in `[from, to]`.
    pub fn paused_during(&self, from: u64, to: u64) -> bool {
        self.pauses.iter().any(|&(a, b)| a <= to && b >= from)
    }

    /// "client 3 (user u1)", formatted only when a violation is written (checkers hold it for
    /// every frame they look at).
    pub fn describe(&self) -> Describe<'_> {
        Describe {
            id: self.id,
            user: &self.user,
            hostile: self.hostile,
        }
    }
}

/// A client as named in explanations; see [`Client::describe`].
pub(super) struct Describe<'c> {
    id: u32,
    user: &'c str,
    hostile: bool,
}

impl fmt::Display for Describe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.hostile {
            write!(f, "hostile client {} (token user {})", self.id, self.user)
        } else {
            write!(f, "client {} (user {})", self.id, self.user)
        }
    }
}

/// A period during which messages to/from a host (or every host, `host: None`) may be lost or
/// held: partitions, holds, loss rate.
struct Fault {
    host: Option<u32>,
    from: u64,
    to: u64,
    kind: FaultKind,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum FaultKind {
    /// Two-way or one-way.
    Partition,
    Hold,
    Loss,
}

/// A fault begun and not yet ended: `(host or None for every host, kind)` → start.
type OpenFaults = BTreeMap<(Option<u32>, FaultKind), u64>;

impl Fault {
    fn new((host, kind): (Option<u32>, FaultKind), from: u64, to: u64) -> Fault {
        Fault { host, from, to, kind }
    }

    /// Partitions and loss drop bytes, and turmoil never retransmits them: a TCP stream that
    /// lost a segment stalls for good. A hold only delays.
    fn drops_bytes(&self) -> bool {
        self.kind != FaultKind::Hold
    }
}

/// One server life, from `ServerStarted` to `ServerStopped` (or the end of the history).
pub(super) struct Life {
    pub started_at: u64,
    pub stopped_at: Option<u64>,
}

/// The shared index. Built once per `check`/`check_all`.
pub(super) struct Index<'a> {
    pub scenario: &'a Scenario,
    pub entries: &'a [Entry],
    pub end: Option<(usize, u64)>,
    pub heal: Option<(usize, u64)>,
    /// The world settled (see [`crate::settling`]) and ended before its quiet period was over.
    pub settled: Option<(usize, u64)>,
    pub calls: Vec<Call<'a>>,
    pub events: Vec<Event<'a>>,
    pub event_by_id: FxHashMap<&'a str, usize>,
    pub instances: Vec<Instance<'a>>,
    pub instance_at: BTreeMap<(&'a str, &'a str, u64), usize>,
    /// Each user's instances, in the order they were created.
    pub instances_of_user: FxHashMap<&'a str, Vec<usize>>,
    /// Which user an epoch belongs to, from publish outcomes and normal welcomes.
    pub epoch_owner: FxHashMap<&'a str, &'a str>,
    pub clients: BTreeMap<u32, Client<'a>>,
    pub lives: Vec<Life>,
    pub gauges: Vec<usize>,
    /// Largest latency any link had (config or `SetLatency`).
    pub latency_max_ms: u64,
    /// Latency settings over time: `(from, max_ms)`, the config's first, in time order; each
    /// `SetLatency` step and the heal (which restores the config's) add one.
    latency_timeline: Vec<(u64, u64)>,
    /// Most retries any HTTP publish step asks for.
    pub http_retries_max: u8,
    faults: Vec<Fault>,
    /// Prefix sums of estimated frame bytes over `calls` (same order).
    call_bytes_prefix: Vec<u64>,
    /// Per user: ambiguous events as (first call time, event). Each of an event's ambiguous
    /// attempts may occupy a position in any epoch, even one where a position of it is known: a
    /// timed-out attempt may have been applied by one server life while a retry landed in the
    /// next, or applied late in the same life after the event its idempotency key named was
    /// evicted (keys live only as long as their event is retained), creating it again.
    unknown_positions: FxHashMap<&'a str, Vec<(u64, usize)>>,
}

impl<'a> Index<'a> {
    pub fn build(scenario: &'a Scenario, history: &'a History) -> Index<'a> {
        let entries = &history.entries[..];
        let mut index = Index {
            scenario,
            entries,
            end: None,
            heal: None,
            settled: None,
            calls: Vec::new(),
            events: Vec::new(),
            event_by_id: FxHashMap::default(),
            instances: Vec::new(),
            instance_at: BTreeMap::new(),
            instances_of_user: FxHashMap::default(),
            epoch_owner: FxHashMap::default(),
            clients: BTreeMap::new(),
            lives: Vec::new(),
            gauges: Vec::new(),
            latency_max_ms: scenario.config.latency_max_ms,
            latency_timeline: vec![(0, scenario.config.latency_max_ms)],
            http_retries_max: 0,
            faults: Vec::new(),
            call_bytes_prefix: vec![0],
            unknown_positions: FxHashMap::default(),
        };
        // Open publish attempts by (publish id, event id), matched FIFO with their returns.
        let mut open_calls: FxHashMap<(u64, &'a str), Vec<usize>> = FxHashMap::default();
        let mut open_faults = OpenFaults::new();
        let mut hostile_steps: BTreeMap<usize, &'a Step> = BTreeMap::new();

        for (idx, entry) in entries.iter().enumerate() {
            let at = entry.at_ms;
            match &entry.what {
                Observation::StepApplied {
                    index: step_index,
                    step,
                } => {
                    index.apply_step(idx, at, *step_index, step, &mut open_faults, &mut hostile_steps);
                }
                Observation::PublishCalled {
                    publish,
                    event_id,
                    user,
                    run,
                    kind,
                    via,
                    idempotency_key,
                    payload_bytes,
                    ..
                } => {
                    let call = index.calls.len();
                    index.calls.push(Call {
                        idx,
                        at,
                        event_id,
                        user,
                        via,
                        idempotency_key: idempotency_key.as_deref(),
                        returned: None,
                    });
                    let bytes =
                        index.call_bytes_prefix.last().copied().unwrap_or(0) + payload_bytes + FRAME_OVERHEAD_BYTES;
                    index.call_bytes_prefix.push(bytes);
                    open_calls.entry((*publish, event_id.as_str())).or_default().push(call);
                    let next = index.events.len();
                    let event = *index.event_by_id.entry(event_id.as_str()).or_insert(next);
                    if event == next {
                        index.events.push(Event {
                            event_id,
                            user,
                            run,
                            kind,
                            calls: Vec::new(),
                            instances: Vec::new(),
                            first_call_idx: idx,
                            first_call_at: at,
                            ambiguous_attempts: 0,
                            definitely_failed: true,
                        });
                    }
                    index.events[event].calls.push(call);
                }
                Observation::PublishReturned {
                    publish,
                    event_id,
                    outcome,
                } => {
                    let Some(queue) = open_calls.get_mut(&(*publish, event_id.as_str())) else {
                        continue;
                    };
                    if queue.is_empty() {
                        continue;
                    }
                    let call = queue.remove(0);
                    index.calls[call].returned = Some(idx);
                    let event = index.event_by_id[event_id.as_str()];
                    match outcome {
                        PublishOutcome::Published { seq, epoch, duplicate } => {
                            index.events[event].definitely_failed = false;
                            let user = index.events[event].user;
                            index.epoch_owner.entry(epoch.as_str()).or_insert(user);
                            let key = (user, epoch.as_str(), *seq);
                            if !index.instance_at.contains_key(&key) {
                                let instance = index.instances.len();
                                index.instances.push(Instance {
                                    event,
                                    user,
                                    epoch,
                                    seq: *seq,
                                    returned_idx: idx,
                                    returned_at: at,
                                    returned_call: call,
                                    duplicate: *duplicate,
                                });
                                index.instance_at.insert(key, instance);
                                index.instances_of_user.entry(user).or_default().push(instance);
                                index.events[event].instances.push(instance);
                            }
                        }
                        PublishOutcome::Failed { code, .. } => {
                            if is_ambiguous_failure(code) {
                                index.events[event].ambiguous_attempts += 1;
                                index.events[event].definitely_failed = false;
                            }
                        }
                    }
                }
                Observation::Connecting {
                    client,
                    user,
                    resume,
                    hostile,
                    token_exp_ms,
                    ..
                } => {
                    let c = index.client_mut(*client, user, *hostile);
                    c.conns.push(Conn {
                        connecting_idx: idx,
                        at,
                        resume: resume.as_ref(),
                        token_exp_ms: *token_exp_ms,
                        welcome: None,
                        frames: Vec::new(),
                        closed: None,
                    });
                }
                Observation::FrameReceived {
                    client,
                    user,
                    hostile,
                    frame,
                    ..
                } => {
                    let c = index.client_mut(*client, user, *hostile);
                    if c.conns.is_empty() {
                        c.conns.push(Conn {
                            connecting_idx: idx,
                            at,
                            resume: None,
                            token_exp_ms: None,
                            welcome: None,
                            frames: Vec::new(),
                            closed: None,
                        });
                    }
                    let conn = c.conns.last_mut().expect("pushed above");
                    conn.frames.push(idx);
                    if let FrameSeen::Welcome {
                        user: welcome_user,
                        connection,
                        epoch,
                        head,
                        recovered,
                    } = frame
                    {
                        if conn.welcome.is_none() {
                            conn.welcome = Some(Welcome {
                                idx,
                                at,
                                user: welcome_user,
                                connection,
                                epoch,
                                head: *head,
                                recovered: *recovered,
                            });
                        }
                        if !*hostile && welcome_user == user {
                            index.epoch_owner.entry(epoch.as_str()).or_insert(welcome_user.as_str());
                        }
                    }
                }
                Observation::Delivered { client, user, .. } => {
                    index.client_mut(*client, user, false).delivered.push(idx);
                }
                Observation::Closed {
                    client, user, hostile, ..
                } => {
                    let c = index.client_mut(*client, user, *hostile);
                    if let Some(conn) = c.conns.last_mut() {
                        if conn.closed.is_none() {
                            conn.closed = Some(idx);
                        }
                    }
                }
                Observation::ClientStopped { client } => {
                    if let Some(c) = index.clients.get_mut(client) {
                        c.stopped.get_or_insert(idx);
                    }
                }
                Observation::Paused { client, duration_ms } => {
                    if let Some(c) = index.clients.get_mut(client) {
                        c.pauses.push((at, at + duration_ms));
                    }
                }
                Observation::ServerStarted { .. } => index.lives.push(Life {
                    started_at: at,
                    stopped_at: None,
                }),
                Observation::ServerStopped { .. } => {
                    if let Some(life) = index.lives.last_mut() {
                        life.stopped_at.get_or_insert(at);
                    }
                }
                Observation::HealStarted => {
                    index.heal.get_or_insert((idx, at));
                    // The heal restores the configured latency on every link (`Driver::heal`),
                    // whatever the last `SetLatency` left. A message sent before it may still
                    // arrive at the old latency: windows reaching back before the heal (as
                    // `latency_around` and the prompt-delivery rule's do) still see that.
                    index.latency_timeline.push((at, scenario.config.latency_max_ms));
                    for (key, from) in std::mem::take(&mut open_faults) {
                        index.faults.push(Fault::new(key, from, at));
                    }
                }
                Observation::Gauges(_) => index.gauges.push(idx),
                Observation::Settled => {
                    index.settled.get_or_insert((idx, at));
                }
                Observation::End => {
                    index.end.get_or_insert((idx, at));
                }
                Observation::StepSkipped { .. } | Observation::Failure { .. } => {}
            }
        }
        let last_at = entries.last().map_or(0, |e| e.at_ms);
        for (key, from) in open_faults {
            index.faults.push(Fault::new(key, from, last_at));
        }
        // Calls that never returned are ambiguous too.
        for (event_index, event) in index.events.iter_mut().enumerate() {
            let unanswered = event
                .calls
                .iter()
                .filter(|&&c| index.calls[c].returned.is_none())
                .count() as u64;
            event.ambiguous_attempts += unanswered;
            if unanswered > 0 {
                event.definitely_failed = false;
            }
            if event.ambiguous_attempts > 0 {
                index
                    .unknown_positions
                    .entry(event.user)
                    .or_default()
                    .push((event.first_call_at, event_index));
            }
        }
        // Hostile clients: attach their attack.
        for client in index.clients.values_mut().filter(|c| c.hostile) {
            let step_index = (client.id.saturating_sub(HOSTILE_CLIENT_BASE) / 100) as usize;
            let step = hostile_steps
                .get(&step_index)
                .copied()
                .or_else(|| scenario.steps.get(step_index).map(|s| &s.step));
            if let Some(Step::Hostile { host, attack }) = step {
                client.attack = Some((step_index, attack));
                client.host = Some(*host);
            }
        }
        index
    }

    fn apply_step(
        &mut self,
        idx: usize,
        at: u64,
        step_index: usize,
        step: &'a Step,
        open_faults: &mut OpenFaults,
        hostile_steps: &mut BTreeMap<usize, &'a Step>,
    ) {
        let mut close = |faults: &mut Vec<Fault>, key: (Option<u32>, FaultKind)| {
            if let Some(from) = open_faults.remove(&key) {
                faults.push(Fault::new(key, from, at));
            }
        };
        match step {
            Step::Connect {
                client,
                user,
                host,
                token_ttl_ms,
            } => {
                let ttl = token_ttl_ms.unwrap_or(self.scenario.config.token_ttl_ms);
                let c = self.client_mut(*client, &crate::scenario::user_name(*user), false);
                c.host = Some(*host);
                c.connect_applied.get_or_insert(idx);
                c.token_ttl_ms = ttl;
            }
            Step::Close { client } => {
                if let Some(c) = self.clients.get_mut(client) {
                    c.close_step.get_or_insert(idx);
                }
            }
            Step::Partition { host } | Step::PartitionOneWay { host, .. } => {
                open_faults.entry((Some(*host), FaultKind::Partition)).or_insert(at);
            }
            Step::Repair { host } => close(&mut self.faults, (Some(*host), FaultKind::Partition)),
            Step::Hold { host } => {
                open_faults.entry((Some(*host), FaultKind::Hold)).or_insert(at);
            }
            Step::Release { host } => close(&mut self.faults, (Some(*host), FaultKind::Hold)),
            Step::SetLossRate { per_mille } => {
                if *per_mille > 0 {
                    open_faults.entry((None, FaultKind::Loss)).or_insert(at);
                } else {
                    close(&mut self.faults, (None, FaultKind::Loss));
                }
            }
            Step::SetLatency { max_ms, .. } => {
                self.latency_max_ms = self.latency_max_ms.max(*max_ms);
                self.latency_timeline.push((at, *max_ms));
            }
            Step::Publish {
                via: Via::Http { retries, .. },
                ..
            }
            | Step::Burst {
                via: Via::Http { retries, .. },
                ..
            } => self.http_retries_max = self.http_retries_max.max(*retries),
            Step::Hostile { .. } => {
                hostile_steps.insert(step_index, step);
            }
            // A life ends, for judging purposes, when the step that takes it down is applied:
            // a graceful shutdown drains for a while before `ServerStopped` is recorded, and
            // nothing that happens while draining may be held against the server.
            Step::RestartServer | Step::CrashServer | Step::ShutdownServer => {
                if let Some(life) = self.lives.last_mut() {
                    life.stopped_at.get_or_insert(at);
                }
            }
            _ => {}
        }
    }

    fn client_mut(&mut self, id: u32, user: &str, hostile: bool) -> &mut Client<'a> {
        let ttl = self.scenario.config.token_ttl_ms;
        self.clients.entry(id).or_insert_with(|| Client {
            id,
            user: user.to_string(),
            hostile: hostile || id >= HOSTILE_CLIENT_BASE,
            host: None,
            attack: None,
            connect_applied: None,
            token_ttl_ms: ttl,
            stopped: None,
            close_step: None,
            conns: Vec::new(),
            delivered: Vec::new(),
            pauses: Vec::new(),
        })
    }

    pub fn at(&self, idx: usize) -> u64 {
        self.entries[idx].at_ms
    }

    /// The largest latency setting in force at some point of `[from, to]`.
    pub fn latency_during(&self, from: u64, to: u64) -> u64 {
        let timeline = &self.latency_timeline;
        let mut max = 0;
        for (i, &(start, ms)) in timeline.iter().enumerate() {
            let end = timeline.get(i + 1).map_or(u64::MAX, |&(next, _)| next);
            if start <= to && end >= from {
                max = max.max(ms);
            }
        }
        max
    }

    /// The largest latency that may have delayed a message of a connection open in
    /// `[opened, closed]`: the settings in force then, reaching back the run's largest latency
    /// before `opened` to be generous about when a setting starts to apply (as the
    /// prompt-delivery rule does). A spike that ended long before the connection opened
    /// excuses nothing on it.
    pub fn latency_around(&self, opened: u64, closed: u64) -> u64 {
        self.latency_during(opened.saturating_sub(self.latency_max_ms), closed)
    }

    pub fn event(&self, event_id: &str) -> Option<&Event<'a>> {
        self.event_by_id.get(event_id).map(|&e| &self.events[e])
    }

    /// The latest moment the hub can have applied one of `event`'s attempts, or `None` if some
    /// attempt never returned. An attempt that was answered was applied before its answer. One
    /// that gave up ambiguously (`timeout`, `connection_lost`) may have left its request in the
    /// network, to arrive after the publisher stopped waiting and after every retry was
    /// answered: within a latency (plus two ticks) of giving up, or, through a held link, that
    /// long after the hold's release.
    pub fn latest_apply_ms(&self, event: &Event<'a>) -> Option<u64> {
        let slack = self.fault_slack_ms();
        let mut latest = 0;
        for &c in &event.calls {
            let call = &self.calls[c];
            let returned = call.returned?;
            let at = self.at(returned);
            let ambiguous = matches!(
                &self.entries[returned].what,
                Observation::PublishReturned { outcome: PublishOutcome::Failed { code, .. }, .. }
                    if is_ambiguous_failure(code)
            );
            let mut applied_by = at;
            if ambiguous {
                applied_by = at.saturating_add(slack);
                for hold in self.faults.iter().filter(|f| f.kind == FaultKind::Hold) {
                    if hold.from <= applied_by && hold.to.saturating_add(slack) >= call.at {
                        applied_by = applied_by.max(hold.to.saturating_add(slack));
                    }
                }
            }
            latest = latest.max(applied_by);
        }
        Some(latest)
    }

    /// Whether some server life covered all of `[from, to]`.
    pub fn server_up_throughout(&self, from: u64, to: u64) -> bool {
        self.lives
            .iter()
            .any(|life| life.started_at <= from && life.stopped_at.is_none_or(|stop| stop > to))
    }

    /// Whether the client's last connection attempt was refused by a configured limit (4009
    /// `too_many_connections`: `connections_per_user_max`, `connections_max`, `users_max`)
    /// without being welcomed, and that limit may really have been reached then (see
    /// [`Index::limit_plausible`]). Such a client is told explicitly why it cannot connect; it is
    /// not expected to catch up, so loss and liveness do not judge it (an explicit refusal is
    /// not a silent failure), except for events it should have got before (see
    /// `no_silent_loss`). A 4009 no limit can explain excuses nothing.
    ///
    /// An attempt still unanswered at the end, begun within a connect timeout of it, says
    /// nothing either way: the attempt before it is judged. (Found by shrinking: nine tabs under a
    /// limit of eight, the ninth refused every time and mid-attempt when the world ended.)
    pub fn refused_by_limit(&self, client: &Client<'_>) -> bool {
        let mut attempts = client.conns.iter().rev();
        let Some(mut conn) = attempts.next() else {
            return false;
        };
        let end_at = self.end.map_or(u64::MAX, |(_, at)| at);
        let connect_timeout_ms = hostile_connect_timeout_ms(&self.scenario.config.timeouts);
        if conn.welcome.is_none() && conn.closed.is_none() && conn.at + connect_timeout_ms >= end_at {
            match attempts.next() {
                Some(previous) => conn = previous,
                None => return false,
            }
        }
        conn.closed
            .is_some_and(|closed| self.refused_for_a_limit(client, conn, closed))
    }

    /// Whether the attempt `conn` of `client`, closed at entry `closed` without a welcome, was
    /// refused by a limit that may really have been reached: a 4009 (see
    /// [`Index::limit_plausible`]), or a socket ended before its WebSocket handshake completed
    /// while the server may have held `sockets_max` sockets (see [`Index::socket_refused`]).
    pub fn refused_for_a_limit(&self, client: &Client<'_>, conn: &Conn<'_>, closed: usize) -> bool {
        conn.welcome.is_none()
            && ((self.close_code(closed) == Some(4009) && self.limit_plausible(client, conn, closed))
                || self.socket_refused(conn, closed))
    }

    /// Whether the server may have closed the socket of attempt `conn` (ended at entry
    /// `closed`) as soon as it accepted it, because it held `sockets_max` sockets: the socket
    /// ended without a close code, before a WebSocket handshake completed (or, for a hostile
    /// socket that never speaks HTTP, sooner than the server's request deadline), and the
    /// server may have held that many then. Over-approximates what it held at some instant
    /// between the attempt and its end: every other attempt of any client begun by then and not
    /// ended, or ended less than [`Index::linger_ms`] before; every HTTP publish call begun by
    /// then and not answered, or answered that recently (the publisher keeps its connection
    /// between calls); or a gauge sample near it counting `sockets_max` sockets.
    pub fn socket_refused(&self, conn: &Conn<'_>, closed: usize) -> bool {
        let limits = &self.scenario.config.limits;
        let ended_early = matches!(
            &self.entries[closed].what,
            Observation::Closed { code: None, by: ClosedBy::Network, reason, .. }
                if reason.starts_with("websocket handshake")
                    || reason.starts_with(HANDSHAKE_FAILED)
                    || reason == SOCKET_ENDED_BY_SERVER
        );
        if conn.welcome.is_some() || !ended_early || limits.sockets_max >= Limits::default().sockets_max {
            return false;
        }
        let from = conn.at;
        let to = self.at(closed);
        let conns = self.other_attempts(conn, from, to).filter(|&(_, _, held)| held).count() as u64;
        let linger = self.linger_ms();
        let pause_ms = HTTP_RETRY_PAUSE_MS * u64::from(self.http_retries_max);
        let publishes = self
            .calls
            .iter()
            .filter(|call| is_http(call.via) && call.at <= to)
            .filter(|call| call.returned.is_none_or(|i| self.at(i) + pause_ms + linger >= from))
            .count() as u64;
        if conns + publishes >= limits.sockets_max {
            return true;
        }
        self.gauge_near(from, to, |sample| sample.server_sockets >= limits.sockets_max)
    }

    /// Whether a gauge sample within two gauge intervals (plus [`Index::linger_ms`]) of
    /// `[from, to]` satisfies `at_limit`.
    fn gauge_near(&self, from: u64, to: u64, at_limit: impl Fn(&GaugeSample) -> bool) -> bool {
        let window = 2 * self.scenario.config.gauge_interval_ms + self.linger_ms();
        self.gauges.iter().any(|&g| {
            let at = self.at(g);
            at + window >= from
                && at <= to + window
                && matches!(&self.entries[g].what, Observation::Gauges(sample) if at_limit(sample))
        })
    }

    /// The closes (entry, ms) of the attempts of `client` that the server refused for a limit
    /// that may really have been reached (see [`Index::refused_for_a_limit`]). A full server
    /// keeps a client out legitimately; the liveness bound runs again from its last such
    /// refusal. Computed once per client: each refusal's plausibility scans the whole history.
    pub fn limit_refusals(&self, client: &Client<'_>) -> LimitRefusals {
        LimitRefusals(
            client
                .conns
                .iter()
                .filter_map(|conn| conn.closed.map(|closed| (conn, closed)))
                .filter(|&(conn, closed)| self.refused_for_a_limit(client, conn, closed))
                .map(|(_, closed)| (closed, self.at(closed)))
                .collect(),
        )
    }

    /// How long after a client saw a connection end (or began one) the server may still hold
    /// it: a dead client is noticed by `idle_timeout_ms`, a stuck write by `write_timeout_ms`, a
    /// silent hello by `hello_timeout_ms`; plus latency both ways, ticks and a second.
    fn linger_ms(&self) -> u64 {
        let timeouts = &self.scenario.config.timeouts;
        timeouts.idle_timeout_ms
            + timeouts.write_timeout_ms
            + timeouts.hello_timeout_ms
            + 2 * self.latency_max_ms
            + 4 * self.scenario.config.tick_ms
            + 1000
    }

    /// The connection attempts of every client (hostile ones included) other than `attempt`,
    /// begun by `to`, each with its client and whether the server may still have held it at
    /// `from`: not ended, or ended less than [`Index::linger_ms`] before (the server notices a
    /// vanished peer only by its timeouts). [`Index::socket_refused`] and
    /// [`Index::limit_plausible`] count what the server held from these.
    fn other_attempts<'s>(
        &'s self,
        attempt: &Conn<'_>,
        from: u64,
        to: u64,
    ) -> impl Iterator<Item = (&'s Client<'a>, &'s Conn<'a>, bool)> + 's {
        let attempt = attempt.connecting_idx;
        let linger = self.linger_ms();
        self.clients
            .values()
            .flat_map(|c| c.conns.iter().map(move |conn| (c, conn)))
            .filter(move |(_, conn)| conn.connecting_idx != attempt && conn.at <= to)
            .map(move |(c, conn)| (c, conn, conn.closed.is_none_or(|i| self.at(i) + linger >= from)))
    }

    /// Whether a limit may have been reached when the hub refused `refused` (closed at entry
    /// `closed_idx`): over-approximates what the hub held at some instant between the attempt
    /// and its close.
    /// - connections: every attempt (any client, hostile ones included) begun by then and not
    ///   closed, or closed less than [`Index::linger_ms`] before, except attempts the server
    ///   itself refused before welcoming them (never registered); the user's own against
    ///   `connections_per_user_max`, all against `connections_max`;
    /// - users: every user any attempt or publish named by then, against `users_max`;
    /// - a gauge sample within two gauge intervals (plus the linger) showing a gauge at its limit.
    fn limit_plausible(&self, client: &Client<'_>, refused: &Conn<'_>, closed_idx: usize) -> bool {
        let limits = &self.scenario.config.limits;
        let from = refused.at;
        let to = self.at(closed_idx);
        let mut user_conns = 0u64;
        let mut all_conns = 0u64;
        let mut users: FxHashSet<&str> = FxHashSet::default();
        for (c, conn, held) in self.other_attempts(refused, from, to) {
            users.insert(c.user.as_str());
            let refused_by_server = conn.welcome.is_none()
                && conn.closed.is_some_and(|cl| {
                    self.close_code(cl).is_some()
                        && matches!(
                            &self.entries[cl].what,
                            Observation::Closed {
                                by: ClosedBy::Server,
                                ..
                            }
                        )
                });
            if held && !refused_by_server {
                all_conns += 1;
                if c.user == client.user {
                    user_conns += 1;
                }
            }
        }
        for call in self.calls.iter().take_while(|c| c.at <= to) {
            users.insert(call.user);
        }
        if user_conns >= limits.connections_per_user_max
            || all_conns >= limits.connections_max
            || users.len() as u64 >= limits.users_max
        {
            return true;
        }
        self.gauge_near(from, to, |sample| {
            sample.connections_per_user_max >= limits.connections_per_user_max
                || sample.connections >= limits.connections_max
                || sample.users >= limits.users_max
        })
    }

    /// Whether a server life started or stopped in `[from, to]`.
    pub fn server_changed_during(&self, from: u64, to: u64) -> bool {
        self.lives.iter().any(|life| {
            (from <= life.started_at && life.started_at <= to)
                || life.stopped_at.is_some_and(|stop| from <= stop && stop <= to)
        })
    }

    /// Whether messages of `host` (or of every host) may have been lost or held at some point
    /// in `[from, to]` (with a latency's worth of slack for messages in flight), or the server
    /// was not up for the whole interval.
    pub fn disturbed(&self, host: Option<u32>, from: u64, to: u64) -> bool {
        let slack = self.fault_slack_ms();
        self.fault_during(host, from, to, |_| true)
            || !self.server_up_throughout(from.saturating_sub(slack), to.saturating_add(slack))
    }

    /// Whether a partition or message loss may have dropped bytes of `host` (or of every host)
    /// in `[from, to]`. A TCP stream open then may have stalled for good (turmoil does not
    /// retransmit), and stays so until one side's idle timeout ends it.
    pub fn bytes_dropped_during(&self, host: Option<u32>, from: u64, to: u64) -> bool {
        self.fault_during(host, from, to, Fault::drops_bytes)
    }

    /// A latency's worth of slack for messages in flight, and two ticks for host polling.
    fn fault_slack_ms(&self) -> u64 {
        self.latency_max_ms + 2 * self.scenario.config.tick_ms
    }

    fn fault_during(&self, host: Option<u32>, from: u64, to: u64, kind: impl Fn(&Fault) -> bool) -> bool {
        let slack = self.fault_slack_ms();
        self.faults.iter().any(|f| {
            kind(f)
                && (f.host.is_none() || host.is_none() || f.host == host)
                && f.from <= to.saturating_add(slack)
                && f.to.saturating_add(slack) >= from
        })
    }

    /// Whether the event at `(user, epoch, seq)` was *certainly* still retained by the hub at
    /// `at_ms`, i.e. no retention limit can have evicted it yet:
    /// - age: it was created no earlier than its first call, so it is retained while
    ///   `at < first_call + retention_age_ms` (two ticks of margin);
    /// - count: fewer than `retention_events_max` later events of that stream can exist by
    ///   `at` (known later positions, plus one for every ambiguous attempt of the user's events);
    /// - bytes: eviction is globally oldest-first, so only events created after it matter; all
    ///   publishes (any user) called from `publish_timeout + 1 s` before it up to `at` must fit
    ///   in half of `retention_bytes_max`;
    /// - the server life did not change in between.
    ///
    /// Unknown positions are never certainly retained.
    pub fn certainly_retained(&self, user: &str, epoch: &str, seq: u64, at_ms: u64) -> bool {
        let Some(&instance) = self.instance_at.get(&(user, epoch, seq)) else {
            return false;
        };
        let created_from = self.events[self.instances[instance].event].first_call_at;
        self.retained_since(user, epoch, seq, created_from, at_ms)
    }

    /// [`Index::certainly_retained`] for an event known (e.g. from a delivery) to sit at
    /// `(user, epoch, seq)` and created no earlier than `created_from`.
    pub fn retained_since(&self, user: &str, epoch: &str, seq: u64, created_from: u64, at_ms: u64) -> bool {
        let limits = &self.scenario.config.limits;
        let timeouts = &self.scenario.config.timeouts;
        if at_ms + 2 * self.scenario.config.tick_ms >= created_from + limits.retention_age_ms {
            return false;
        }
        if self.server_changed_during(created_from, at_ms) {
            return false;
        }
        let known_head = self
            .instance_at
            .range((user, epoch, seq)..=(user, epoch, u64::MAX))
            .filter(|(_, &i)| self.events[self.instances[i].event].first_call_at <= at_ms)
            .map(|((_, _, s), _)| *s)
            .max()
            .unwrap_or(seq);
        let unknown: u64 = self.unknown_positions.get(user).map_or(0, |events| {
            events
                .iter()
                .filter(|&&(first_call_at, _)| first_call_at <= at_ms)
                .map(|&(_, event)| self.events[event].ambiguous_attempts)
                .sum()
        });
        if (known_head - seq) + unknown >= limits.retention_events_max {
            return false;
        }
        let window_from = created_from.saturating_sub(publish_answer_bound_ms(timeouts));
        let first = self.calls.partition_point(|c| c.at < window_from);
        let last = self.calls.partition_point(|c| c.at <= at_ms);
        let bytes = self.call_bytes_prefix[last.max(first)] - self.call_bytes_prefix[first];
        bytes < limits.retention_bytes_max / 2
    }

    /// Describes an entry's connection for explanations.
    pub fn conn_label(conn: &Conn<'_>) -> String {
        conn.welcome
            .as_ref()
            .map_or_else(|| "(not welcomed)".to_string(), |w| w.connection.to_string())
    }

    /// The delivered item at entry `idx`, if it is one.
    pub fn delivered_item(&self, idx: usize) -> Option<&'a DeliveredItem> {
        match &self.entries[idx].what {
            Observation::Delivered { item, .. } => Some(item),
            _ => None,
        }
    }

    /// What `client`'s application was handed, in order: each `Delivered` entry with its item
    /// (`Client::delivered` holds only `Delivered` entries, so every one yields its item).
    /// Order, no-silent-loss and its seq-hole rule walk this per client, each keeping its own
    /// per-epoch position (they differ on where a position starts and what may move it).
    pub fn delivered<'s>(&'s self, client: &'s Client<'_>) -> impl Iterator<Item = (usize, &'a DeliveredItem)> + 's {
        client
            .delivered
            .iter()
            .filter_map(|&idx| self.delivered_item(idx).map(|item| (idx, item)))
    }

    /// The frame at entry `idx`, if it is one.
    pub fn frame(&self, idx: usize) -> Option<&'a FrameSeen> {
        match &self.entries[idx].what {
            Observation::FrameReceived { frame, .. } => Some(frame),
            _ => None,
        }
    }

    /// Close code of a `Closed` entry.
    pub fn close_code(&self, idx: usize) -> Option<u16> {
        match &self.entries[idx].what {
            Observation::Closed { code, .. } => *code,
            _ => None,
        }
    }
}
