//! The in-process publishing API ("the bridge" between agent runs and their users' sockets).
//!
//! A [`Notifier`] is obtained from a running [`crate::server::Server`] and can only exist
//! attached to one: there is no `Option<Notifier>` to forget to set, and no notifier that does
//! nothing. Every call returns `Ok(Published { seq, epoch })` or a typed [`PublishError`];
//! after the server shuts down, or its `serve` future is dropped, every call fails with
//! `ShuttingDown`. Synchronous (a short critical section on the hub lock), so it can be called
//! from async code and plain threads alike.

pub use crate::hub::{PublishError, Published};

use crate::hub::PublishRequest;
use crate::protocol::{validate_id, EventKind};
use crate::server::Shared;
use serde_json::value::RawValue;
use std::fmt;
use std::sync::Arc;

/// Publishes events to any user's stream on one server. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    shared: Arc<Shared>,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier").field("closed", &self.is_closed()).finish()
    }
}

impl Notifier {
    pub(crate) fn new(shared: Arc<Shared>) -> Notifier {
        Notifier { shared }
    }

    /// Appends one event to `user`'s stream. The event reaches every connection of that user
    /// (and only that user) in seq order, or they are told of a gap.
    pub fn publish(
        &self,
        user: &str,
        run: &str,
        kind: EventKind,
        data: &serde_json::Value,
    ) -> Result<Published, PublishError> {
        self.publish_with_key(user, run, kind, data, None)
    }

    /// Like [`Notifier::publish`], deduplicated by `idempotency_key`: while the first event
    /// published with that key is retained, the same key returns its seq with
    /// `duplicate: true` and publishes nothing. Retrying a failed publish with a key is safe
    /// within that window; once the event is evicted its key is forgotten with it, and the same
    /// key publishes a new event.
    /// The same key with another run, kind or data is refused with `IdempotencyConflict`.
    pub fn publish_with_key(
        &self,
        user: &str,
        run: &str,
        kind: EventKind,
        data: &serde_json::Value,
        idempotency_key: Option<&str>,
    ) -> Result<Published, PublishError> {
        let raw = match serde_json::value::to_raw_value(data) {
            Ok(raw) => raw,
            Err(e) => {
                let error = PublishError::InvalidData(e.to_string());
                self.shared.metrics.record_publish_error(error.code());
                return Err(error);
            }
        };
        self.publish_raw(user, run, kind, &raw, idempotency_key)
    }

    /// Publishes already-encoded JSON `data` (the HTTP API's path: the body is embedded
    /// verbatim, never re-serialized). JSON a client cannot decode (a lone surrogate escape
    /// such as `"\ud800"`, which `RawValue` accepts) is refused with `InvalidData`.
    pub fn publish_raw(
        &self,
        user: &str,
        run: &str,
        kind: EventKind,
        data: &RawValue,
        idempotency_key: Option<&str>,
    ) -> Result<Published, PublishError> {
        let result = match self.shared.lock() {
            None => Err(PublishError::ShuttingDown),
            Some(mut state) => {
                // Read the clock under the lock, so the hub sees time in the order it is locked.
                let now_ms = self.shared.clock.now_ms();
                state.hub.publish(
                    now_ms,
                    user,
                    PublishRequest {
                        run,
                        kind,
                        data,
                        idempotency_key,
                    },
                )
            }
        };
        if let Err(error) = &result {
            self.shared.metrics.record_publish_error(error.code());
        }
        result
    }

    /// A handle scoped to one agent run of one user, with a typed method per lifecycle kind.
    /// Both ids are validated here, so a run handle is known-good before the run starts.
    pub fn run(&self, user: &str, run: &str) -> Result<RunNotifier, PublishError> {
        validate_id("user", user).map_err(PublishError::InvalidUser)?;
        validate_id("run", run).map_err(PublishError::InvalidRun)?;
        Ok(RunNotifier {
            notifier: self.clone(),
            user: user.to_string(),
            run: run.to_string(),
        })
    }

    /// True once the server is shutting down or gone: every publish will fail.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }
}

/// Publishes the lifecycle of one agent run to its user. Obtained from [`Notifier::run`].
#[derive(Clone, Debug)]
pub struct RunNotifier {
    notifier: Notifier,
    user: String,
    run: String,
}

impl RunNotifier {
    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn run_id(&self) -> &str {
        &self.run
    }

    /// Publishes an event of any kind for this run.
    pub fn publish(&self, kind: EventKind, data: &serde_json::Value) -> Result<Published, PublishError> {
        self.notifier.publish(&self.user, &self.run, kind, data)
    }

    /// Publishes with an idempotency key (see [`Notifier::publish_with_key`]).
    pub fn publish_with_key(
        &self,
        kind: EventKind,
        data: &serde_json::Value,
        idempotency_key: &str,
    ) -> Result<Published, PublishError> {
        self.notifier
            .publish_with_key(&self.user, &self.run, kind, data, Some(idempotency_key))
    }

    pub fn agent_started(&self, data: &serde_json::Value) -> Result<Published, PublishError> {
        self.publish(EventKind::AgentStarted, data)
    }

    pub fn agent_thinking(&self, data: &serde_json::Value) -> Result<Published, PublishError> {
        self.publish(EventKind::AgentThinking, data)
    }

    pub fn tool_executing(&self, data: &serde_json::Value) -> Result<Published, PublishError> {
        self.publish(EventKind::ToolExecuting, data)
    }

    pub fn tool_completed(&self, data: &serde_json::Value) -> Result<Published, PublishError> {
        self.publish(EventKind::ToolCompleted, data)
    }

    pub fn agent_completed(&self, data: &serde_json::Value) -> Result<Published, PublishError> {
        self.publish(EventKind::AgentCompleted, data)
    }

    pub fn agent_error(&self, data: &serde_json::Value) -> Result<Published, PublishError> {
        self.publish(EventKind::AgentError, data)
    }

    pub fn is_closed(&self) -> bool {
        self.notifier.is_closed()
    }
}
