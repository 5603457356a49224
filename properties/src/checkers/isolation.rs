//! Isolation: no connection ever receives anything of another user.
//!
//! Ground truth is the publisher's side (`PublishCalled.user` for an `event_id`) and the payload
//! itself (`payload_user`), never what the server claims. Rules, per frame and per delivered
//! item of every client (normal or hostile) of user U:
//! - an event whose payload names another user, or whose `event_id` was published for another
//!   user;
//! - a welcome naming another user (the connection was bound to someone else's stream);
//! - a welcome or gap carrying an epoch that belongs to another user's stream (an epoch is
//!   per-user, so seeing it means the connection reads the wrong stream). Epoch gaps echo the
//!   epoch the *client* sent in its resume, so for hostile clients (who resume with a victim's
//!   epoch on purpose) only welcomes count;
//! - a hostile client whose token is invalid (forged, expired, garbage) receiving any welcome
//!   or event at all — it has no user, so anything it gets belongs to someone;
//! - another user's data in what a client cannot read field by field: an unparsed or binary
//!   frame (the [`Markers`] the client scanned from its whole text, which the history keeps
//!   only the start of), an error frame's message or a close reason (kept whole, scanned here).
//!   A marker is a user's secret or name, or the id of an event published for that user, as the
//!   publisher writes them; for an invalid token any user's marker counts. A shared buffer that
//!   glues or corrupts frames leaks in frames that no longer parse.

use super::index::{Client, Index};
use super::{t, violation, Category, Invariant, Severity, Violation};
use crate::history::{DeliveredItem, FrameSeen, Markers, Observation};

pub(super) fn check(index: &Index<'_>) -> Result<(), Violation> {
    let mut found: Option<Violation> = None;
    let mut record = |v: Violation| {
        // Keep the earliest violation (smallest first evidence index) for determinism.
        if found.as_ref().is_none_or(|f| v.evidence[0] < f.evidence[0]) {
            found = Some(v);
        }
    };
    for client in index.clients.values() {
        let invalid_token = client.attack.is_some_and(|(_, attack)| attack.is_invalid_token());
        for conn in &client.conns {
            let label = Index::conn_label(conn);
            for &idx in &conn.frames {
                if let Some(v) = check_frame(index, client, &label, idx, invalid_token) {
                    record(v);
                    break;
                }
            }
            if let Some(idx) = conn.closed {
                if let Observation::Closed { reason, .. } = &index.entries[idx].what {
                    let markers = Markers::scan(reason);
                    if let Some(v) =
                        foreign_markers(index, client, &label, idx, &markers, "the close reason", invalid_token)
                    {
                        record(v);
                    }
                }
            }
        }
        for &idx in &client.delivered {
            if let Some(v) = check_delivered(index, client, idx) {
                record(v);
                break;
            }
        }
    }
    found.map_or(Ok(()), Err)
}

fn leak(explanation: String, evidence: Vec<usize>) -> Violation {
    violation(
        Invariant::Isolation,
        Severity::Critical,
        Category::CrossUserSecurity,
        explanation,
        evidence,
    )
}

fn check_frame(
    index: &Index<'_>,
    client: &Client<'_>,
    label: &str,
    idx: usize,
    invalid_token: bool,
) -> Option<Violation> {
    let at = index.at(idx);
    let who = client.describe();
    match index.frame(idx)? {
        FrameSeen::Event {
            seq,
            event_id,
            payload_user,
            ..
        } => {
            if invalid_token {
                return Some(leak(
                    format!(
                        "{who} presented an invalid token yet received event seq {seq} ({}) on connection {label} at {}",
                        event_id.as_deref().unwrap_or("no event id"),
                        t(at)
                    ),
                    vec![idx],
                ));
            }
            if let Some(owner) = payload_user.as_deref().filter(|owner| *owner != client.user) {
                return Some(leak(
                    format!(
                        "event {} for user {owner} (payload) was received on connection {label} of {who} at {}",
                        event_id.as_deref().unwrap_or("(no id)"),
                        t(at)
                    ),
                    vec![idx],
                ));
            }
            let id = event_id.as_deref()?;
            let event = index.event(id)?;
            if event.user != client.user {
                return Some(leak(
                    format!(
                        "event {id} for user {} was received on connection {label} of {who} at {} (published at {})",
                        event.user,
                        t(at),
                        t(event.first_call_at)
                    ),
                    vec![idx, event.first_call_idx],
                ));
            }
            None
        }
        FrameSeen::Welcome { user, epoch, .. } => {
            if invalid_token {
                return Some(leak(
                    format!("{who} presented an invalid token yet was welcomed as user {user} (epoch {epoch}) on connection {label} at {}", t(at)),
                    vec![idx],
                ));
            }
            if *user != client.user {
                return Some(leak(
                    format!("{who} was welcomed as user {user} on connection {label} at {}", t(at)),
                    vec![idx],
                ));
            }
            foreign_epoch(index, client, epoch, idx, "welcome")
        }
        FrameSeen::Gap { epoch, reason, .. } => {
            // Epoch gaps echo the resume the client sent; a hostile client chose that epoch.
            if client.hostile && reason == "epoch" {
                return None;
            }
            foreign_epoch(index, client, epoch, idx, "gap")
        }
        FrameSeen::Unparsed { markers, .. } => {
            foreign_markers(index, client, label, idx, markers, "an unparsed frame", invalid_token)
        }
        FrameSeen::Error { message, .. } => {
            let markers = Markers::scan(message);
            foreign_markers(index, client, label, idx, &markers, "an error frame", invalid_token)
        }
        FrameSeen::Pong { .. } => None,
    }
}

/// Another user's marker in `what` (an unparsed frame, an error frame, a close reason) that
/// reached connection `label` of `client`; with an invalid token, any user's.
fn foreign_markers(
    index: &Index<'_>,
    client: &Client<'_>,
    label: &str,
    idx: usize,
    markers: &Markers,
    what: &str,
    invalid_token: bool,
) -> Option<Violation> {
    let foreign = |user: &str| invalid_token || user != client.user;
    let (who, at) = (client.describe(), t(index.at(idx)));
    if let Some(owner) = markers.users.iter().find(|user| foreign(user)) {
        return Some(leak(
            format!("{what} received on connection {label} of {who} at {at} carries user {owner}'s data (their secret or name)"),
            vec![idx],
        ));
    }
    markers.event_ids.iter().find_map(|id| {
        let event = index.event(id).filter(|event| foreign(event.user))?;
        Some(leak(
            format!(
                "{what} received on connection {label} of {who} at {at} carries event {id} for user {} (published at {})",
                event.user,
                t(event.first_call_at)
            ),
            vec![idx, event.first_call_idx],
        ))
    })
}

fn foreign_epoch(index: &Index<'_>, client: &Client<'_>, epoch: &str, idx: usize, what: &str) -> Option<Violation> {
    let owner = index.epoch_owner.get(epoch)?;
    if *owner == client.user {
        return None;
    }
    Some(leak(
        format!(
            "{} received a {what} for epoch {epoch}, which is user {owner}'s stream, at {}",
            client.describe(),
            t(index.at(idx))
        ),
        vec![idx],
    ))
}

fn check_delivered(index: &Index<'_>, client: &Client<'_>, idx: usize) -> Option<Violation> {
    let at = index.at(idx);
    match index.delivered_item(idx)? {
        DeliveredItem::Event {
            epoch, seq, event_id, ..
        } => {
            if let Some(id) = event_id.as_deref() {
                if let Some(event) = index.event(id).filter(|e| e.user != client.user) {
                    return Some(leak(
                        format!(
                            "event {id} for user {} (epoch {epoch}, seq {seq}) was handed to the application of {} at {}",
                            event.user,
                            client.describe(),
                            t(at)
                        ),
                        vec![idx, event.first_call_idx],
                    ));
                }
            }
            foreign_epoch(index, client, epoch, idx, "delivered event")
        }
        DeliveredItem::Gap { epoch, reason, .. } => {
            if client.hostile && reason == "epoch" {
                return None;
            }
            foreign_epoch(index, client, epoch, idx, "delivered gap")
        }
    }
}
