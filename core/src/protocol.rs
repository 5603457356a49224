//! Wire protocol v1: the JSON text frames that cross the WebSocket at [`WS_PATH`].
//!
//! One concept, one name: the names here (`hello`, `welcome`, `event`, `gap`, `seq`, `epoch`,
//! `head`, `recovered`) are the names used in PROTOCOL.md, in metrics and in the simulation's
//! history. Everything a client can send is a [`ClientFrame`]; everything a server sends is a
//! [`ServerFrame`]. Event frames are encoded once per event by [`encode_event_frame`] and shared
//! by every connection of the user, so that fan-out never re-serializes.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The WebSocket endpoint. Versioned in the path so a v2 can live beside v1.
pub const WS_PATH: &str = "/v1/ws";

/// Longest accepted user id, run id or idempotency key, in bytes: ids travel in every frame,
/// so an unbounded id would be an unbounded frame.
pub const ID_BYTES_MAX: usize = 128;

/// The six lifecycle events an agent run emits. A closed set: an unknown kind is a `400`, not
/// a silently forwarded string the UI cannot render.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    AgentStarted,
    AgentThinking,
    ToolExecuting,
    ToolCompleted,
    AgentCompleted,
    AgentError,
}

impl EventKind {
    /// Every kind, in lifecycle order; generators and docs iterate this.
    pub const ALL: [EventKind; 6] = [
        EventKind::AgentStarted,
        EventKind::AgentThinking,
        EventKind::ToolExecuting,
        EventKind::ToolCompleted,
        EventKind::AgentCompleted,
        EventKind::AgentError,
    ];

    /// The wire name, identical to the serde name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::AgentStarted => "agent_started",
            EventKind::AgentThinking => "agent_thinking",
            EventKind::ToolExecuting => "tool_executing",
            EventKind::ToolCompleted => "tool_completed",
            EventKind::AgentCompleted => "agent_completed",
            EventKind::AgentError => "agent_error",
        }
    }

    /// Parses a wire name; `None` for anything outside the closed set.
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a reconnecting client left off: the stream it was reading and the last seq it handed
/// to its application. The server replays everything after `after`. Strict like every client
/// frame: an unknown field here is a `bad_frame` too.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Resume {
    pub epoch: String,
    pub after: u64,
}

/// Frames a client sends. `hello` must be first and arrive within `hello_timeout_ms`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    Hello {
        token: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<Resume>,
    },
    Ping {
        id: u64,
    },
}

/// Why a range of events can never be delivered.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// Evicted by `retention_events_max`, `retention_age_ms` or `retention_bytes_max`.
    Retention,
    /// The stream the client resumed no longer exists (a server restart, or the user's quiet
    /// stream forgotten at `dormant_streams_max`); `to` is then unknown and sent as `null`.
    Epoch,
}

impl GapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::Retention => "retention",
            GapReason::Epoch => "epoch",
        }
    }
}

/// Every error a server reports before closing, with its WebSocket close code.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    AuthFailed,
    TokenExpired,
    SlowConsumer,
    BadFrame,
    HelloTimeout,
    TooManyConnections,
    /// Nothing (not even a WebSocket pong) arrived for `idle_timeout_ms`.
    IdleTimeout,
    ShuttingDown,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::AuthFailed,
        ErrorCode::TokenExpired,
        ErrorCode::SlowConsumer,
        ErrorCode::BadFrame,
        ErrorCode::HelloTimeout,
        ErrorCode::TooManyConnections,
        ErrorCode::IdleTimeout,
        ErrorCode::ShuttingDown,
    ];

    /// The WebSocket close code that follows the error frame (PROTOCOL.md, "Errors").
    pub fn close_code(self) -> u16 {
        match self {
            ErrorCode::AuthFailed => 4001,
            ErrorCode::TokenExpired => 4002,
            ErrorCode::SlowConsumer => 4003,
            ErrorCode::BadFrame => 4004,
            ErrorCode::HelloTimeout => 4008,
            ErrorCode::TooManyConnections => 4009,
            ErrorCode::IdleTimeout => 4010,
            ErrorCode::ShuttingDown => 1001,
        }
    }

    /// The inverse of [`ErrorCode::close_code`].
    pub fn from_close_code(code: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|e| e.close_code() == code)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::HelloTimeout => "hello_timeout",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::ShuttingDown => "shutting_down",
        }
    }

    /// Whether a client should reconnect with the same hello after this close. `bad_frame` is
    /// final. `auth_failed` is final for the token it refused as long as the server keeps its
    /// secret and audience: a different token, or a fixed server, can succeed (the reference
    /// client retries it at its growing backoff, asking its token provider each time).
    /// Everything else is transient.
    pub fn is_retryable(self) -> bool {
        !matches!(self, ErrorCode::AuthFailed | ErrorCode::BadFrame)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Frames a server sends, decoded. `data` is kept as a JSON value on the decoding side; the
/// server encodes event frames with [`encode_event_frame`], which produces the same JSON.
/// Decoding ignores fields it does not know, so a client keeps working against a newer server
/// that adds one (client frames, by contrast, are strict).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        user: String,
        connection: String,
        epoch: String,
        head: u64,
        recovered: bool,
    },
    Event {
        seq: u64,
        run: String,
        kind: EventKind,
        data: serde_json::Value,
    },
    Gap {
        epoch: String,
        from: u64,
        to: Option<u64>,
        reason: GapReason,
    },
    Pong {
        id: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl ServerFrame {
    /// Every `type` a server frame of protocol v1 has. A client ignores a frame of any other
    /// type (a newer server's addition); a frame of one of these it cannot decode is a frame
    /// it could not read.
    pub const TYPES: [&'static str; 5] = ["welcome", "event", "gap", "pong", "error"];

    /// Serializes to the wire text. Infallible: every field is plain JSON.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialize")
    }

    /// Decodes wire text; the same result as `serde_json::from_str::<ServerFrame>`, faster for
    /// the frame that dominates traffic. serde decodes an internally tagged enum by first
    /// buffering the whole object in an intermediate tree to find `type`; an event frame as
    /// [`encode_event_frame`] writes it starts with `{"type":"event",` and is decoded straight
    /// into its fields (a repeated `type` or a missing field are still errors; an unknown field
    /// is ignored, as in every server frame).
    pub fn from_text(text: &str) -> Result<ServerFrame, serde_json::Error> {
        #[derive(Deserialize)]
        struct EventFrame {
            #[serde(rename = "type")]
            _frame_type: EventTag,
            seq: u64,
            run: String,
            kind: EventKind,
            data: serde_json::Value,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "snake_case")]
        enum EventTag {
            Event,
        }
        if !text.starts_with(r#"{"type":"event","#) {
            return serde_json::from_str(text);
        }
        let EventFrame {
            seq, run, kind, data, ..
        } = serde_json::from_str(text)?;
        Ok(ServerFrame::Event { seq, run, kind, data })
    }
}

/// Encodes an event frame once, so that it can be stored in retention and written to every
/// connection of the user without re-serializing. `data` must already be valid JSON.
pub fn encode_event_frame(seq: u64, run: &str, kind: EventKind, data: &serde_json::value::RawValue) -> String {
    let mut frame = String::new();
    encode_event_frame_into(&mut frame, seq, run, kind, data);
    frame
}

/// [`encode_event_frame`] appended to `frame`, so that the hub can reuse one buffer for every
/// publish (no allocation and no regrowth per event). Writes the same bytes serde would: the
/// fields in declaration order, `run` escaped only if it needs it (a valid id never does).
pub fn encode_event_frame_into(
    frame: &mut String,
    seq: u64,
    run: &str,
    kind: EventKind,
    data: &serde_json::value::RawValue,
) {
    use std::fmt::Write as _;
    frame.reserve(EVENT_FRAME_ENVELOPE_BYTES + run.len() + data.get().len());
    let _ = write!(frame, r#"{{"type":"event","seq":{seq},"run":"#);
    if run.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        frame.push('"');
        frame.push_str(run);
        frame.push('"');
    } else {
        frame.push_str(&serde_json::to_string(run).expect("a string serializes"));
    }
    frame.push_str(r#","kind":""#);
    frame.push_str(kind.as_str());
    frame.push_str(r#"","data":"#);
    frame.push_str(data.get());
    frame.push('}');
}

/// Bytes of an event frame besides `run` and `data`: the field names, punctuation, the longest
/// kind and a 20-digit seq, rounded up.
const EVENT_FRAME_ENVELOPE_BYTES: usize = 96;

/// Deepest `data` (nested arrays and objects) a client can decode: serde_json refuses a 128th
/// level, and the event frame around `data` is one.
pub const DATA_DEPTH_MAX: usize = 126;

/// Checks that `data`, embedded verbatim in an event frame, decodes in a serde_json client.
/// `RawValue` decodes no escape, checks no number's range and no depth, so it accepts lone
/// UTF-16 surrogates (`"\ud800"`), numbers beyond `f64` (`1e400`) and nesting deeper than
/// [`DATA_DEPTH_MAX`], all of which such a client refuses. Text that may hold one of them (long
/// text, a `\u` escape, an exponent) is decoded in full, the way a client would; the rest, most
/// events, costs one fast search.
pub fn check_event_data(data: &serde_json::value::RawValue) -> Result<(), String> {
    let text = data.get();
    if !may_be_undecodable(text) {
        return Ok(());
    }
    use serde::de::DeserializeSeed as _;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    DecodableData { depth: 0 }
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end())
        .map_err(|e| e.to_string())
}

/// Shortest text that can nest deeper than [`DATA_DEPTH_MAX`] (one more bracket pair); a
/// number beyond `f64` written without an exponent is longer still (over 300 digits).
const DECODE_ALWAYS_BYTES_MIN: usize = 2 * (DATA_DEPTH_MAX + 1);

/// Whether JSON text may hold something a serde_json client refuses: it is long enough to nest
/// too deep or to spell a huge number in digits, or it has a `\u` escape (a surrogate), or an
/// exponent (a digit followed by `e` or `E`, possibly beyond `f64`). False means it certainly
/// decodes.
fn may_be_undecodable(text: &str) -> bool {
    let bytes = text.as_bytes();
    // One pass over the text for all three bytes (two searches cost 31 instructions more).
    bytes.len() >= DECODE_ALWAYS_BYTES_MIN
        || memchr::memchr3_iter(b'\\', b'e', b'E', bytes).any(|at| match bytes[at] {
            b'\\' => bytes.get(at + 1) == Some(&b'u'),
            _ => at > 0 && bytes[at - 1].is_ascii_digit(),
        })
}

/// Decodes a JSON value the way a client's `serde_json::Value` would (strings unescaped,
/// numbers converted), keeping nothing.
struct DecodableData {
    depth: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for DecodableData {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for DecodableData {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.nested::<A::Error>()?;
        while seq.next_element_seed(DecodableData { depth: inner })?.is_some() {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.nested::<A::Error>()?;
        while map.next_key_seed(DecodableData { depth: inner })?.is_some() {
            map.next_value_seed(DecodableData { depth: inner })?;
        }
        Ok(())
    }
}

impl DecodableData {
    fn nested<E: serde::de::Error>(&self) -> Result<usize, E> {
        if self.depth >= DATA_DEPTH_MAX {
            return Err(E::custom(format_args!("nested deeper than {DATA_DEPTH_MAX} levels")));
        }
        Ok(self.depth + 1)
    }
}

/// Why an id (user, run, idempotency key) was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidId {
    pub what: &'static str,
    pub reason: &'static str,
}

impl fmt::Display for InvalidId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.what, self.reason)
    }
}

impl std::error::Error for InvalidId {}

/// Which bytes an id may hold: ASCII letters, digits and `-_.:@`. A table, because every
/// publish checks two or three ids byte by byte.
const ID_BYTE_ALLOWED: [bool; 256] = {
    let mut allowed = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        allowed[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':' | b'@');
        b += 1;
    }
    allowed
};

/// Checks a user id, run id or idempotency key: 1..=[`ID_BYTES_MAX`] bytes of ASCII letters,
/// digits and `-_.:@`. Ids appear in URLs, logs and metrics, so they stay printable and short.
pub fn validate_id(what: &'static str, id: &str) -> Result<(), InvalidId> {
    if id.is_empty() {
        return Err(InvalidId { what, reason: "empty" });
    }
    if id.len() > ID_BYTES_MAX {
        return Err(InvalidId {
            what,
            reason: "longer than 128 bytes",
        });
    }
    if !id.bytes().all(|b| ID_BYTE_ALLOWED[usize::from(b)]) {
        return Err(InvalidId {
            what,
            reason: "only ASCII letters, digits and -_.:@ are allowed",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_frame_encoding_is_byte_identical_to_serde() {
        #[derive(Serialize)]
        struct EventFrameRef<'a> {
            #[serde(rename = "type")]
            frame_type: &'static str,
            seq: u64,
            run: &'a str,
            kind: EventKind,
            data: &'a serde_json::value::RawValue,
        }
        let data = serde_json::value::RawValue::from_string(r#"{"text":"h\"i","n":[1,2.5,null]}"#.into()).unwrap();
        // Valid ids, then runs that need escaping (the encoder must not rely on validation).
        let runs = ["run-1", "a.b:c@d_e", "q\"uote", "back\\slash", "ctl\u{1}\n", "ünï", ""];
        let mut reused = String::new();
        for (i, (kind, run)) in EventKind::ALL
            .into_iter()
            .flat_map(|kind| runs.map(|run| (kind, run)))
            .enumerate()
        {
            for seq in [0, 1, 42, u64::MAX] {
                let expected = serde_json::to_string(&EventFrameRef {
                    frame_type: "event",
                    seq,
                    run,
                    kind,
                    data: &data,
                })
                .unwrap();
                assert_eq!(encode_event_frame(seq, run, kind, &data), expected, "case {i}");
                reused.clear();
                encode_event_frame_into(&mut reused, seq, run, kind, &data);
                assert_eq!(reused, expected, "case {i}, reused buffer");
            }
        }
    }

    #[test]
    fn id_byte_table_allows_exactly_the_documented_bytes() {
        for b in 0..=255u8 {
            let documented = b.is_ascii_alphanumeric() || b"-_.:@".contains(&b);
            assert_eq!(ID_BYTE_ALLOWED[usize::from(b)], documented, "byte {b}");
        }
    }

    #[test]
    fn event_frame_encoding_matches_the_decoded_form() {
        let data = serde_json::value::RawValue::from_string(r#"{"text":"hi","n":[1,2]}"#.into()).unwrap();
        let text = encode_event_frame(7, "run-1", EventKind::ToolCompleted, &data);
        assert_eq!(
            text,
            r#"{"type":"event","seq":7,"run":"run-1","kind":"tool_completed","data":{"text":"hi","n":[1,2]}}"#
        );
        let frame: ServerFrame = serde_json::from_str(&text).unwrap();
        assert_eq!(
            frame,
            ServerFrame::Event {
                seq: 7,
                run: "run-1".into(),
                kind: EventKind::ToolCompleted,
                data: serde_json::json!({"text":"hi","n":[1,2]}),
            }
        );
    }

    #[test]
    fn server_frame_types_name_every_variant() {
        let frames = [
            ServerFrame::Welcome {
                user: "u".into(),
                connection: "c".into(),
                epoch: "e".into(),
                head: 0,
                recovered: false,
            },
            ServerFrame::Event {
                seq: 1,
                run: "r".into(),
                kind: EventKind::AgentStarted,
                data: serde_json::Value::Null,
            },
            ServerFrame::Gap {
                epoch: "e".into(),
                from: 1,
                to: None,
                reason: GapReason::Epoch,
            },
            ServerFrame::Pong { id: 1 },
            ServerFrame::Error {
                code: ErrorCode::BadFrame,
                message: "m".into(),
            },
        ];
        let types: Vec<String> = frames
            .iter()
            .map(|frame| {
                serde_json::to_value(frame).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(types, ServerFrame::TYPES);
    }

    #[test]
    fn from_text_decodes_exactly_what_serde_decodes() {
        let texts = [
            r#"{"type":"event","seq":7,"run":"run-1","kind":"tool_completed","data":{"text":"hi","n":[1,2]}}"#,
            r#"{"type":"event","data":null,"kind":"agent_error","run":"r","seq":0}"#,
            r#"{"type":"event","seq":7,"run":"run-1","kind":"tool_completed"}"#,
            r#"{"type":"event","seq":7,"run":"run-1","kind":"tool_completed","data":1,"extra":2}"#,
            r#"{"type":"event","seq":7,"run":"run-1","kind":"tool_completed","data":1,"type":"event"}"#,
            r#"{"type":"event","seq":-1,"run":"run-1","kind":"tool_completed","data":1}"#,
            r#"{"type":"event","seq":7,"run":"run-1","kind":"nope","data":1}"#,
            r#"{"type":"event", "seq":7}"#,
            r#"{"seq":7,"type":"event","run":"run-1","kind":"tool_completed","data":1}"#,
            r#"{"type":"welcome","user":"u","connection":"c","epoch":"e","head":3,"recovered":true}"#,
            r#"{"type":"gap","epoch":"e","from":1,"to":null,"reason":"retention"}"#,
            r#"{"type":"pong","id":4}"#,
            r#"{"type":"eventual","seq":7}"#,
            r#"{"type":"event","#,
            "",
        ];
        for text in texts {
            let generic = serde_json::from_str::<ServerFrame>(text);
            match (ServerFrame::from_text(text), generic) {
                (Ok(fast), Ok(generic)) => assert_eq!(fast, generic, "{text}"),
                (Err(_), Err(_)) => {}
                (fast, generic) => panic!("{text}: from_text {fast:?}, serde {generic:?}"),
            }
        }
        assert!(ServerFrame::from_text(texts[0]).is_ok());
        // A newer server's extra field does not break an older client.
        assert!(ServerFrame::from_text(texts[3]).is_ok());
        assert!(ServerFrame::from_text(
            r#"{"type":"welcome","user":"u","connection":"c","epoch":"e","head":3,"recovered":true,"region":"eu"}"#
        )
        .is_ok());
    }

    #[test]
    fn hello_parses_with_and_without_resume_and_rejects_unknown_fields() {
        let hello: ClientFrame = serde_json::from_str(r#"{"type":"hello","token":"t"}"#).unwrap();
        assert_eq!(
            hello,
            ClientFrame::Hello {
                token: "t".into(),
                resume: None
            }
        );
        let hello: ClientFrame =
            serde_json::from_str(r#"{"type":"hello","token":"t","resume":{"epoch":"e","after":3}}"#).unwrap();
        assert_eq!(
            hello,
            ClientFrame::Hello {
                token: "t".into(),
                resume: Some(Resume {
                    epoch: "e".into(),
                    after: 3
                })
            }
        );
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"hello","token":"t","x":1}"#).is_err());
        let typo = r#"{"type":"hello","token":"t","resume":{"epoch":"e","after":3,"afer":5}}"#;
        assert!(serde_json::from_str::<ClientFrame>(typo).is_err());
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"subscribe"}"#).is_err());
    }

    #[test]
    fn close_codes_round_trip_and_kinds_parse() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_close_code(code.close_code()), Some(code));
        }
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{kind}\""));
        }
        assert_eq!(EventKind::parse("agent_exploded"), None);
    }

    #[test]
    fn ids_are_validated() {
        assert!(validate_id("user", "alice").is_ok());
        assert!(validate_id("user", "").is_err());
        assert!(validate_id("user", "a b").is_err());
        assert!(validate_id("user", &"a".repeat(129)).is_err());
        assert!(validate_id("user", &"a".repeat(128)).is_ok());
    }

    /// Whether a serde_json client (the reference client's decoder) reads `data` in an event.
    fn client_decodes(data: &serde_json::value::RawValue) -> bool {
        ServerFrame::from_text(&encode_event_frame(1, "r", EventKind::AgentThinking, data)).is_ok()
    }

    #[test]
    fn event_data_with_a_lone_surrogate_escape_is_refused() {
        let nested = |depth: usize, leaf: &str| format!("{}{leaf}{}", "[".repeat(depth), "]".repeat(depth));
        let refused = [
            r#""\ud800""#.to_string(),
            r#""\udc00""#.to_string(),
            r#""\ud800x""#.to_string(),
            r#""\ud800\u0041""#.to_string(),
            r#"{"\ud800":1}"#.to_string(),
            r#"{"a":["ok","\udfff"]}"#.to_string(),
            r#""\\\ud800""#.to_string(),
            // Without a `\u` too: a number beyond f64, too deep a nesting.
            r#"["\u0041",1e400]"#.to_string(),
            "1e400".to_string(),
            r#"{"n":-2E+309}"#.to_string(),
            format!("1{}", "0".repeat(400)),
            nested(DATA_DEPTH_MAX + 1, r#""\u0041""#),
            nested(DATA_DEPTH_MAX + 1, "1"),
        ];
        for text in &refused {
            let data = serde_json::value::RawValue::from_string(text.clone()).expect("RawValue accepts it");
            assert!(!client_decodes(&data), "the client decodes {text}");
            assert!(check_event_data(&data).is_err(), "accepted {text}");
        }
        let accepted = [
            r#""\ud83d\ude00""#.to_string(),
            r#"{"\ud83d\ude00":"\u00e9\u0000"}"#.to_string(),
            r#""\\ud800""#.to_string(),
            r#""a\"\\u""#.to_string(),
            r#"["\u0041",1e308,1e-400]"#.to_string(),
            nested(DATA_DEPTH_MAX, r#""\u0041""#),
            nested(DATA_DEPTH_MAX, "1"),
            r#"{"text":"see 2e and 1E9 here","n":7}"#.to_string(),
            r#"{"tool":"web_search","id":"5f0c6d3e9a1b2c47","n":[1,2.5,-3e10],"ok":true,"x":null}"#.into(),
        ];
        for text in &accepted {
            let data = serde_json::value::RawValue::from_string(text.clone()).expect("RawValue accepts it");
            assert!(client_decodes(&data), "the client cannot decode {text}");
            assert_eq!(check_event_data(&data), Ok(()), "{text}");
        }
    }

    /// JSON text from pieces that `RawValue` accepts and a client may not: surrogate escapes
    /// alone and in pairs, escaped backslashes, nesting around the client's limit.
    fn tricky_json() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let piece = prop::sample::select(vec![
            "a",
            r"\ud800",
            r"\udbff",
            r"\udc00",
            r"\ud83d\ude00",
            r"\\",
            r"\\u",
            r"\u0041",
            r"\n",
            "1e",
            r"\u",
        ]);
        let string = prop::collection::vec(piece, 0..4).prop_map(|pieces| format!("\"{}\"", pieces.concat()));
        let number = prop::sample::select(vec!["1e308", "-2E+307", "0.5e-999", "12345", "1e400", "-9E+999"])
            .prop_map(String::from);
        let leaf = prop_oneof![string.clone(), number, Just("null".to_string())];
        let value = leaf.prop_recursive(3, 12, 3, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(|items| format!("[{}]", items.join(","))),
                prop::collection::vec((string.clone(), inner), 0..3).prop_map(|fields| {
                    let fields: Vec<String> = fields.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                    format!("{{{}}}", fields.join(","))
                }),
            ]
        });
        (value, 0..(DATA_DEPTH_MAX + 4))
            .prop_map(|(value, depth)| format!("{}{value}{}", "[".repeat(depth), "]".repeat(depth)))
    }

    proptest::proptest! {
        /// Every text is judged exactly as the client judges it, whether or not the fast
        /// screen let it through undecoded.
        #[test]
        fn check_event_data_agrees_with_the_client(text in tricky_json()) {
            // A bare `\u` piece makes some texts invalid JSON, which `RawValue` already refuses.
            let data = serde_json::value::RawValue::from_string(text.clone());
            proptest::prop_assume!(data.is_ok());
            let data = data.unwrap();
            proptest::prop_assert_eq!(check_event_data(&data).is_ok(), client_decodes(&data), "{}", text);
        }
    }
}
