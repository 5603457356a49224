//! proptest strategies that produce [`Scenario`]s the real core must pass.
//!
//! A scenario is generated as raw numbers (a step count, a time and a few parameters per step)
//! and then *built* by one deterministic pass that keeps it realistic and valid: clients
//! connect early, steps only name clients that are open, every loss burst and most partitions
//! are repaired soon, a crashed server is started again, HTTP retries always carry an
//! idempotency key, hostile floods target users with no normal tabs. Because validity is
//! restored by the build pass, proptest's own shrinking (dropping raw steps, moving numbers
//! toward zero) always yields valid scenarios too; [`crate::shrink`] shrinks further.
//!
//! Swarm testing: with `swarm: true` each scenario enables a random subset of the optional
//! step families (publish and lifecycle are always on) with random weights and fault rates, so
//! rare combinations (e.g. loss + slow consumers, no publishes during partitions) get reached.

use crate::checkers::liveness_bound_ms;
use crate::scenario::{Attack, Direction, Kind, Limits, Scenario, ScenarioConfig, Step, StepFamily, TimedStep, Via};
use crate::settling::settle_ms_for;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::collections::{BTreeMap, BTreeSet};

/// Named scenario sizes (the same names as the benchmarks issue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Size {
    /// 2 users, 1-2 hosts, ~10 steps.
    Tiny,
    /// 3 users, 2 hosts, ~50 steps.
    Small,
    /// 20 users, 4 hosts, ~300 steps with faults.
    Medium,
    /// 100 users, 8 hosts, ~2000 steps (client hosts stay <= 8: turmoil's cost grows with the
    /// square of the host count).
    Large,
}

impl Size {
    pub const ALL: [Size; 4] = [Size::Tiny, Size::Small, Size::Medium, Size::Large];

    pub fn as_str(self) -> &'static str {
        match self {
            Size::Tiny => "tiny",
            Size::Small => "small",
            Size::Medium => "medium",
            Size::Large => "large",
        }
    }

    pub fn parse(name: &str) -> Option<Size> {
        Size::ALL.into_iter().find(|s| s.as_str() == name)
    }

    fn shape(self) -> Shape {
        match self {
            Size::Tiny => Shape {
                users: 2,
                hosts: (1, 2),
                clients: (2, 3),
                steps: (8, 12),
                duration_ms: (2_000, 5_000),
                burst_max: 8,
            },
            Size::Small => Shape {
                users: 3,
                hosts: (2, 2),
                clients: (3, 5),
                steps: (40, 60),
                duration_ms: (3_000, 10_000),
                burst_max: 20,
            },
            Size::Medium => Shape {
                users: 20,
                hosts: (4, 4),
                clients: (20, 30),
                steps: (250, 350),
                duration_ms: (8_000, 20_000),
                burst_max: 30,
            },
            Size::Large => Shape {
                users: 100,
                hosts: (8, 8),
                clients: (100, 120),
                steps: (1_800, 2_200),
                duration_ms: (15_000, 20_000),
                burst_max: 30,
            },
        }
    }
}

struct Shape {
    users: u32,
    hosts: (u32, u32),
    clients: (usize, usize),
    steps: (usize, usize),
    duration_ms: (u64, u64),
    burst_max: u32,
}

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratorSettings {
    pub size: Size,
    pub swarm: bool,
}

/// Per-scenario mix: family weights and fault knobs (random under swarm, moderate otherwise).
#[derive(Debug, Clone)]
struct Mix {
    /// Weight per family, indexed like [`StepFamily::ALL`].
    weights: [u32; 8],
    loss_per_mille_max: u32,
    repair_per_cent: u32,
    small_queues: bool,
    small_retention: bool,
    small_bytes: bool,
    short_age: bool,
    short_tokens: bool,
    /// One server-wide limit below what the scenario asks of it: `connections_max` or
    /// `sockets_max` below the initial tabs, or `users_max` below the users. Normal clients
    /// meet 4009 `too_many_connections` from a server-wide limit (not only from a flood's
    /// per-user one), or a socket closed as soon as it is accepted, and must get in once others
    /// leave; publishes to a user beyond `users_max` fail with `users_full`.
    tight_connections: bool,
}

fn mix_strategy(swarm: bool) -> impl Strategy<Value = Mix> {
    (
        prop::array::uniform8(0u32..=4),
        prop::array::uniform8(any::<bool>()),
        1u32..=50,
        70u32..=100,
        prop::array::uniform6(0u32..8),
    )
        .prop_map(move |(weights, enabled, loss_max, repair, dice)| {
            let mut mix = Mix {
                weights: [0; 8],
                loss_per_mille_max: 30,
                repair_per_cent: 90,
                small_queues: dice[0] < 2,
                small_retention: dice[1] < 2,
                small_bytes: dice[2] == 0,
                short_age: dice[3] == 0,
                short_tokens: dice[4] < 2,
                tight_connections: dice[5] == 0,
            };
            for (slot, family) in StepFamily::ALL.into_iter().enumerate() {
                mix.weights[slot] = match family {
                    StepFamily::Publish => 12,
                    StepFamily::Lifecycle => 3,
                    _ if !swarm => 1,
                    _ if enabled[slot] => 1 + weights[slot],
                    _ => 0,
                };
            }
            if swarm {
                mix.loss_per_mille_max = loss_max;
                mix.repair_per_cent = repair;
            }
            mix
        })
}

/// Raw material of one step: a time (per mille of the run) and five numbers the build pass
/// turns into a family choice and parameters.
type RawStep = (u16, u32, u32, u32, u32, u32);
/// Raw material of one initial client: user, host, time (per mille of the first 20%), ttl dice.
type RawClient = (u32, u32, u16, u8);

/// The strategy. Same `GeneratorSettings` + same RNG state → same scenario.
pub fn scenario_strategy(settings: GeneratorSettings) -> impl Strategy<Value = Scenario> {
    let shape = settings.size.shape();
    let users = shape.users;
    (
        shape.hosts.0..=shape.hosts.1,
        shape.duration_ms.0..=shape.duration_ms.1,
        mix_strategy(settings.swarm),
        prop::collection::vec(
            (0..users, 0u32..8, 0u16..1000, any::<u8>()),
            shape.clients.0..=shape.clients.1,
        ),
        prop::collection::vec(
            (
                0u16..1000,
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
            ),
            shape.steps.0.saturating_sub(shape.clients.1)..=shape.steps.1.saturating_sub(shape.clients.0),
        ),
        (
            5u64..=50,
            5u64..=50,
            64u64..=256,
            5_000u64..=15_000,
            1u64..=5,
            10u64..=50,
        ),
    )
        .prop_map(move |(hosts, duration_ms, mix, clients, raw, knobs)| {
            build(settings, hosts, duration_ms, &mix, &clients, &raw, knobs)
        })
}

/// One scenario from a `u64` seed, deterministically (the campaign's entry point).
pub fn generate(settings: GeneratorSettings, seed: u64) -> Scenario {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&0x6865_7261_6c64_u64.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    scenario_strategy(settings)
        .new_tree(&mut runner)
        .expect("scenario strategies never reject")
        .current()
}

/// Mutable state of the build pass.
struct Builder {
    steps: Vec<TimedStep>,
    open_clients: BTreeSet<u32>,
    next_client: u32,
    server_down_until: u64,
    host_busy_until: BTreeMap<u32, u64>,
    hold_until: BTreeMap<u32, u64>,
    loss_until: u64,
}

impl Builder {
    fn push(&mut self, at_ms: u64, step: Step) {
        self.steps.push(TimedStep { at_ms, step });
    }

    fn pick_open(&self, n: u32) -> Option<u32> {
        if self.open_clients.is_empty() {
            return None;
        }
        self.open_clients
            .iter()
            .nth(n as usize % self.open_clients.len())
            .copied()
    }
}

fn pick<T: Copy>(items: &[T], n: u32) -> T {
    items[n as usize % items.len()]
}

/// The simulated time step of generated scenarios. Turmoil polls every host once per tick, so
/// the tick sets much of a world's cost: a medium scenario takes ~30 % fewer instructions at
/// 40 ms than at 20 ms and ~45 % fewer than at 10 ms (bench/HISTORY.md). 40 ms is still far below
/// every timeout the scenarios exercise (the shortest, `hello_timeout_ms`, is 2 s; a heartbeat
/// is 25 ticks) and around the generated link latencies (1-50 ms), which therefore still
/// reorder messages across ticks. Checkers allow two ticks of slack wherever hosts' clocks are
/// compared.
pub const GENERATED_TICK_MS: u64 = 40;

fn range(n: u32, lo: u64, hi: u64) -> u64 {
    lo + u64::from(n) % (hi - lo + 1)
}

fn build(
    settings: GeneratorSettings,
    hosts: u32,
    duration_ms: u64,
    mix: &Mix,
    clients: &[RawClient],
    raw: &[RawStep],
    knobs: (u64, u64, u64, u64, u64, u64),
) -> Scenario {
    let shape = settings.size.shape();
    let (queue_max, retention_max, bytes_kib, age_ms, latency_min, latency_max) = knobs;
    // 50-100 % of what the scenario asks (the age knob doubles as the dice: it is drawn either
    // way, so the scenarios without a tight limit stay exactly what they were).
    let share = |of: u64| (of * (50 + age_ms % 51) / 100).max(1);
    let tight = |which: u64| mix.tight_connections && (age_ms / 51) % 3 == which;
    let mut config = ScenarioConfig {
        users: shape.users,
        client_hosts: hosts,
        tick_ms: GENERATED_TICK_MS,
        latency_min_ms: latency_min,
        latency_max_ms: latency_max.max(latency_min),
        limits: Limits {
            send_queue_max: if mix.small_queues { queue_max } else { 100 },
            retention_events_max: if mix.small_retention { retention_max } else { 200 },
            retention_bytes_max: if mix.small_bytes {
                bytes_kib * 1024
            } else {
                4 * 1024 * 1024
            },
            retention_age_ms: if mix.short_age { age_ms } else { 120_000 },
            connections_max: if tight(0) {
                share(clients.len() as u64)
            } else {
                Limits::default().connections_max
            },
            // Sockets: the same share of the tabs, and one for the publisher's connection.
            sockets_max: if tight(1) {
                share(clients.len() as u64) + 1
            } else {
                Limits::default().sockets_max
            },
            users_max: if tight(2) {
                share(u64::from(shape.users))
            } else {
                Limits::default().users_max
            },
            ..Limits::default()
        },
        ..ScenarioConfig::default()
    };
    config.quiet_period_ms = config.quiet_period_ms.max(liveness_bound_ms(&config.timeouts) + 5_000);
    config.settle_ms = Some(settle_ms_for(&config));

    let mut b = Builder {
        steps: Vec::new(),
        open_clients: BTreeSet::new(),
        next_client: 0,
        server_down_until: 0,
        host_busy_until: BTreeMap::new(),
        hold_until: BTreeMap::new(),
        loss_until: 0,
    };
    // Initial clients: in the first 20% of the run.
    let mut connects: Vec<(u64, Step)> = clients
        .iter()
        .map(|&(user, host, at, ttl_dice)| {
            let at_ms = u64::from(at) * duration_ms / 5_000;
            let token_ttl_ms = (mix.short_tokens && ttl_dice < 40).then(|| 3_000 + u64::from(ttl_dice) * 150);
            (
                at_ms,
                Step::Connect {
                    client: 0,
                    user,
                    host: host % hosts,
                    token_ttl_ms,
                },
            )
        })
        .collect();
    connects.sort_by_key(|(at, _)| *at);
    let mut timeline: Vec<(u64, Option<Step>, Option<&RawStep>)> =
        connects.into_iter().map(|(at, step)| (at, Some(step), None)).collect();
    for step in raw {
        timeline.push((u64::from(step.0) * duration_ms / 1000, None, Some(step)));
    }
    timeline.sort_by_key(|(at, step, _)| (*at, step.is_none()));

    let total_weight: u32 = mix.weights.iter().sum();
    for (at, connect, raw_step) in timeline {
        if let Some(Step::Connect {
            user,
            host,
            token_ttl_ms,
            ..
        }) = connect
        {
            let client = b.next_client;
            b.next_client += 1;
            b.open_clients.insert(client);
            b.push(
                at,
                Step::Connect {
                    client,
                    user,
                    host,
                    token_ttl_ms,
                },
            );
            continue;
        }
        let Some(&(_, choice, p1, p2, p3, p4)) = raw_step else {
            continue;
        };
        let mut roll = choice % total_weight.max(1);
        let mut family = StepFamily::Publish;
        for (slot, weight) in mix.weights.iter().enumerate() {
            if roll < *weight {
                family = StepFamily::ALL[slot];
                break;
            }
            roll -= weight;
        }
        build_step(&mut b, &config, mix, &shape, family, at, [p1, p2, p3, p4]);
    }

    let mut scenario = Scenario { config, steps: b.steps };
    scenario.steps.sort_by_key(|s| s.at_ms);
    fix_hostile_targets(&mut scenario);
    debug_assert_eq!(validate(&scenario), Ok(()));
    scenario
}

#[allow(clippy::too_many_arguments)]
fn build_step(
    b: &mut Builder,
    config: &ScenarioConfig,
    mix: &Mix,
    shape: &Shape,
    family: StepFamily,
    at: u64,
    p: [u32; 4],
) {
    let users = config.users;
    let hosts = config.client_hosts;
    match family {
        StepFamily::Lifecycle => match p[0] % 10 {
            0..=5 => {
                if let Some(client) = b.pick_open(p[1]) {
                    b.push(at, Step::Kill { client });
                }
            }
            6..=7 => {
                if b.open_clients.len() > 1 {
                    if let Some(client) = b.pick_open(p[1]) {
                        b.open_clients.remove(&client);
                        b.push(at, Step::Close { client });
                    }
                }
            }
            _ => {
                let client = b.next_client;
                b.next_client += 1;
                b.open_clients.insert(client);
                b.push(
                    at,
                    Step::Connect {
                        client,
                        user: p[1] % users,
                        host: p[2] % hosts,
                        token_ttl_ms: None,
                    },
                );
            }
        },
        StepFamily::SlowConsumer => {
            if let Some(client) = b.pick_open(p[0]) {
                b.push(
                    at,
                    Step::Pause {
                        client,
                        duration_ms: range(p[1], 100, 3_000),
                    },
                );
            }
        }
        StepFamily::Publish => {
            let payload_bytes = match p[2] % 4 {
                0 => 0,
                1 | 2 => (p[3] >> 8) % 200,
                _ => (p[3] >> 8) % 2_000,
            };
            let via = match p[3] % 4 {
                0 | 1 => Via::Notifier,
                2 => Via::Http {
                    idempotency_key: false,
                    retries: 0,
                },
                _ => Via::Http {
                    idempotency_key: true,
                    retries: (p[1] % 4) as u8,
                },
            };
            let user = p[0] % users;
            let run = (p[1] >> 8) % 4;
            if p[2].is_multiple_of(3) {
                b.push(
                    at,
                    Step::Burst {
                        user,
                        run,
                        count: 2 + (p[2] >> 8) % (shape.burst_max - 1),
                        payload_bytes,
                        via,
                    },
                );
            } else {
                b.push(
                    at,
                    Step::Publish {
                        user,
                        run,
                        kind: pick(&Kind::ALL, p[2] >> 4),
                        payload_bytes,
                        via,
                    },
                );
            }
        }
        StepFamily::Partition => {
            let host = p[0] % hosts;
            if b.host_busy_until.get(&host).is_some_and(|&until| until > at) {
                return;
            }
            let step = match p[1] % 3 {
                0 => Step::PartitionOneWay {
                    host,
                    direction: Direction::ToServer,
                },
                1 => Step::PartitionOneWay {
                    host,
                    direction: Direction::FromServer,
                },
                _ => Step::Partition { host },
            };
            b.push(at, step);
            if p[2] % 100 < mix.repair_per_cent {
                let until = at + range(p[3], 500, 5_000);
                b.push(until, Step::Repair { host });
                b.host_busy_until.insert(host, until);
            } else {
                b.host_busy_until.insert(host, u64::MAX);
            }
        }
        StepFamily::Delay => {
            if p[0].is_multiple_of(2) {
                let host = p[1] % hosts;
                if b.hold_until.get(&host).is_some_and(|&until| until > at) {
                    return;
                }
                let until = at + range(p[2], 100, 2_000);
                b.push(at, Step::Hold { host });
                b.push(until, Step::Release { host });
                b.hold_until.insert(host, until);
            } else if p[3].is_multiple_of(8) {
                // A rare latency spike above `publish_timeout_ms`: HTTP publishes time out after
                // the server applied them, so the idempotent retry path is exercised (an agent
                // platform retrying over a congested link), then the latency comes back down.
                let min_ms = range(p[1], 1_000, 1_500);
                let until = at + range(p[2], 1_000, 3_000);
                b.push(
                    at,
                    Step::SetLatency {
                        min_ms,
                        max_ms: min_ms + range(p[2], 1_000, 2_000),
                    },
                );
                b.push(
                    at + 50,
                    Step::Publish {
                        user: p[0] % users,
                        run: 0,
                        kind: pick(&Kind::ALL, p[3] >> 4),
                        payload_bytes: 16,
                        via: Via::Http {
                            idempotency_key: true,
                            retries: 3,
                        },
                    },
                );
                b.push(until, Step::SetLatency { min_ms: 1, max_ms: 20 });
            } else {
                let min_ms = range(p[1], 1, 10);
                b.push(
                    at,
                    Step::SetLatency {
                        min_ms,
                        max_ms: min_ms + range(p[2], 5, 150),
                    },
                );
            }
        }
        StepFamily::Loss => {
            if b.loss_until > at {
                return;
            }
            let until = at + range(p[1], 200, 2_000);
            b.push(
                at,
                Step::SetLossRate {
                    per_mille: 1 + p[0] % mix.loss_per_mille_max,
                },
            );
            b.push(until, Step::SetLossRate { per_mille: 0 });
            b.loss_until = until;
        }
        StepFamily::Server => {
            if b.server_down_until > at {
                return;
            }
            match p[0] % 3 {
                0 => {
                    b.push(at, Step::RestartServer);
                    b.server_down_until = at + 100;
                }
                kind => {
                    let until = at + range(p[1], 200, 3_000);
                    b.push(
                        at,
                        if kind == 1 {
                            Step::CrashServer
                        } else {
                            Step::ShutdownServer
                        },
                    );
                    b.push(until, Step::StartServer);
                    b.server_down_until = until + 1;
                }
            }
        }
        StepFamily::Hostile => {
            let host = p[0] % hosts;
            let user = p[2] % users;
            let attack = match p[1] % 9 {
                0 => Attack::ForgedToken { user },
                1 => Attack::ExpiredToken { user },
                // Half the garbage tokens are well signed: a quarter with a `sub` that is no
                // user id, a quarter for another service's audience.
                2 => match p[3] % 4 {
                    1 => Attack::InvalidSubject,
                    3 => Attack::WrongAudience { user },
                    _ => Attack::GarbageToken,
                },
                3 if users > 1 && !p[3].is_multiple_of(4) => Attack::ResumeAsOther {
                    user,
                    victim: (user + 1 + p[3] % (users - 1)) % users,
                },
                3 => Attack::ResumeAfterLastSeq { user },
                4 => Attack::FrameBeforeHello,
                5 => Attack::MalformedFrame,
                6 => Attack::OversizedFrame {
                    bytes: 70_000 + p[3] % 230_000,
                },
                7 => Attack::Flood {
                    user,
                    connections: 1 + p[3] % (config.limits.connections_per_user_max as u32 + 3),
                },
                // Half the silent attacks say nothing over WebSocket, half never finish HTTP.
                _ => match p[3] % 4 {
                    0 => Attack::SilentSocket,
                    1 => Attack::SlowRequest,
                    _ => Attack::SilentHello,
                },
            };
            b.push(at, Step::Hostile { host, attack });
        }
    }
}

/// Keeps hostile steps from starving normal clients: a flood targets a user with no normal
/// tabs (or becomes a silent hello if every user has tabs), at most one resume-as-other per
/// attacking user, and `connections_per_user_max` leaves room for every tab plus the hostile
/// connections that legitimately hold a slot.
fn fix_hostile_targets(scenario: &mut Scenario) {
    let mut tabs: BTreeMap<u32, u64> = BTreeMap::new();
    for step in &scenario.steps {
        if let Step::Connect { user, .. } = step.step {
            *tabs.entry(user).or_default() += 1;
        }
    }
    let free_users: Vec<u32> = (0..scenario.config.users).filter(|u| !tabs.contains_key(u)).collect();
    let mut resumers: BTreeSet<u32> = BTreeSet::new();
    let mut flooded: BTreeSet<u32> = BTreeSet::new();
    for step in &mut scenario.steps {
        let Step::Hostile { attack, .. } = &mut step.step else {
            continue;
        };
        match attack {
            Attack::Flood { user, .. } => {
                if tabs.contains_key(user) || resumers.contains(user) {
                    match free_users.iter().find(|u| !resumers.contains(u)) {
                        Some(free) => *user = *free,
                        None => *attack = Attack::SilentHello,
                    }
                }
                if let Attack::Flood { user, .. } = attack {
                    flooded.insert(*user);
                }
            }
            Attack::ResumeAsOther { user, .. } if flooded.contains(user) || !resumers.insert(*user) => {
                *attack = Attack::GarbageToken;
            }
            _ => {}
        }
    }
    let most_tabs = tabs.values().copied().max().unwrap_or(0);
    let limits = &mut scenario.config.limits;
    limits.connections_per_user_max = limits.connections_per_user_max.max(most_tabs + 2);
}

/// What the hub counts against `retention_bytes_max` beside the largest frame: its bookkeeping
/// (`RETAINED_EVENT_OVERHEAD_BYTES`, 160) and a 128-byte idempotency key twice. Mirrored, as
/// this crate does not depend on the core; a sim test starts a hub on generated limits.
const LARGEST_EVENT_EXTRA_BYTES: u64 = 160 + 2 * 128;

/// Checks that a scenario is well formed: every index in range, every client step names a
/// client opened earlier (and not yet closed), client ids unique, limits usable. Generators
/// and the shrinker only ever produce valid scenarios.
pub fn validate(scenario: &Scenario) -> Result<(), String> {
    let config = &scenario.config;
    if config.users == 0 || config.client_hosts == 0 {
        return Err("users and client_hosts must be at least 1".into());
    }
    let limits = &config.limits;
    // The hub's rule (`HubConfig::validate`): one largest event, with the bookkeeping and the
    // longest idempotency key it counts beside the frame, fits in retention_bytes_max.
    if limits.event_bytes_max + LARGEST_EVENT_EXTRA_BYTES > limits.retention_bytes_max {
        return Err(format!(
            "retention_bytes_max must hold event_bytes_max + {LARGEST_EVENT_EXTRA_BYTES} bytes"
        ));
    }
    if [
        limits.retention_events_max,
        limits.retention_age_ms,
        limits.connections_per_user_max,
        limits.connections_max,
        limits.users_max,
        limits.send_queue_max,
        limits.event_bytes_max,
        limits.sockets_max,
    ]
    .contains(&0)
        || limits.control_queue_max < 4
    {
        return Err("limits must be positive (control_queue_max at least 4)".into());
    }
    if config.latency_min_ms > config.latency_max_ms {
        return Err("latency_min_ms > latency_max_ms".into());
    }
    let user_ok = |u: u32| u < config.users;
    let host_ok = |h: u32| h < config.client_hosts;
    let mut open: BTreeSet<u32> = BTreeSet::new();
    let mut seen: BTreeSet<u32> = BTreeSet::new();
    for (index, step) in scenario.sorted_steps() {
        let bad = |what: &str| Err(format!("step {index} ({:?}): {what}", step.step));
        match &step.step {
            Step::Connect { client, user, host, .. } => {
                if !user_ok(*user) || !host_ok(*host) {
                    return bad("user or host out of range");
                }
                if *client >= 1_000_000 || !seen.insert(*client) {
                    return bad("client id reused or in the hostile range");
                }
                open.insert(*client);
            }
            Step::Close { client } => {
                if !open.remove(client) {
                    return bad("names a client that is not open");
                }
            }
            Step::Kill { client } | Step::Pause { client, .. } => {
                if !open.contains(client) {
                    return bad("names a client that is not open");
                }
            }
            Step::Publish { user, via, .. } | Step::Burst { user, via, .. } => {
                if !user_ok(*user) {
                    return bad("user out of range");
                }
                if let Via::Http {
                    idempotency_key: false,
                    retries,
                } = via
                {
                    if *retries > 0 {
                        return bad("HTTP retries need an idempotency key");
                    }
                }
                if let Step::Burst { count: 0, .. } = step.step {
                    return bad("empty burst");
                }
            }
            Step::Partition { host }
            | Step::PartitionOneWay { host, .. }
            | Step::Repair { host }
            | Step::Hold { host }
            | Step::Release { host } => {
                if !host_ok(*host) {
                    return bad("host out of range");
                }
            }
            Step::SetLatency { min_ms, max_ms } => {
                if min_ms > max_ms {
                    return bad("min_ms > max_ms");
                }
            }
            Step::SetLossRate { per_mille } => {
                if *per_mille > 1000 {
                    return bad("loss rate above 1000 per mille");
                }
            }
            Step::RestartServer | Step::CrashServer | Step::StartServer | Step::ShutdownServer => {}
            Step::Hostile { host, attack } => {
                if !host_ok(*host) {
                    return bad("host out of range");
                }
                let ok = attack.users().into_iter().all(user_ok)
                    && match attack {
                        Attack::ResumeAsOther { user, victim } => user != victim,
                        Attack::Flood { connections, .. } => (1..100).contains(connections),
                        _ => true,
                    };
                if !ok {
                    return bad("attack parameters out of range");
                }
            }
        }
    }
    Ok(())
}
