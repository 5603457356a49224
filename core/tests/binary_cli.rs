//! The `herald` binary's argument checks, as an operator meets them: a value the server would
//! refuse or mishandle later (a user id it rejects with 4001, a token expiry that overflows, a
//! timer so long that the shutdown drain never ends) is refused up front, with a message that
//! names the flag and the limit, and a non-zero exit.

use herald_core::auth::TokenVerifier;
use herald_core::clock::CONFIG_DURATION_MAX_MS;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const JWT_SECRET: &str = "binary-cli-jwt-secret-0123456789abcdef";
/// Bound on every run: a refused flag exits at once, an accepted one would serve forever.
const WAIT: Duration = Duration::from_secs(10);
/// `TOKEN_TTL_SECS_MAX` in the binary: 365 days.
const TOKEN_TTL_SECS_MAX: u64 = 365 * 86_400;

/// Runs `herald args` with the secrets in its environment (and `env` on top); kills it and
/// fails if it is still running after `WAIT`.
fn herald(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env("HERALD_JWT_SECRET", JWT_SECRET)
        .env("HERALD_API_KEY", "binary-cli-api-key")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald");
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("herald {args:?} still running after {WAIT:?}: the value was accepted");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("herald output")
}

/// `herald args` must fail with a usage error whose message holds every one of `expected`.
fn assert_refused(args: &[&str], env: &[(&str, &str)], expected: &[&str]) {
    let output = herald(args, env);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "herald {args:?} {env:?}: {stderr}");
    assert!(output.stdout.is_empty(), "herald {args:?} printed {output:?}");
    for text in expected {
        assert!(stderr.contains(text), "herald {args:?}: {text:?} not in {stderr}");
    }
}

fn unix_secs_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Mints with `herald token` and checks the token as the server would (signature, `sub`).
/// Returns its `exp`.
fn mint_and_verify(user: &str, ttl: &str) -> u64 {
    let output = herald(&["token", "--user", user, "--ttl", ttl], &[]);
    assert!(
        output.status.success(),
        "herald token --user {user} --ttl {ttl}: {output:?}"
    );
    let token = String::from_utf8(output.stdout).unwrap();
    let claims = TokenVerifier::new(JWT_SECRET.as_bytes())
        .verify(token.trim(), unix_secs_now())
        .expect("the server accepts the token");
    assert_eq!(claims.sub, user);
    claims.exp
}

#[test]
fn token_refuses_a_user_id_the_server_would_refuse() {
    let too_long = "a".repeat(129);
    for user in ["bad user!", "", "ünïcode", &too_long] {
        assert_refused(&["token", "--user", user], &[], &["--user", "invalid user", "4001"]);
    }
    mint_and_verify("alice-1_a.b:c@example.com", "1h");
    mint_and_verify(&"a".repeat(128), "1h");
}

#[test]
fn token_ttl_is_bounded_and_never_wraps() {
    for ttl in ["18446744073709551615", "366d", "31536001", "213503982334602d", "0s"] {
        let expected: &[&str] = if ttl == "0s" {
            &["--ttl", "positive"]
        } else {
            &["--ttl", "365d", "TOKEN_TTL_SECS_MAX"]
        };
        assert_refused(&["token", "--user", "alice", "--ttl", ttl], &[], expected);
    }
    for ttl in ["365d", "31536000"] {
        let before = unix_secs_now();
        let exp = mint_and_verify("alice", ttl);
        assert!(
            (before + TOKEN_TTL_SECS_MAX..=unix_secs_now() + TOKEN_TTL_SECS_MAX).contains(&exp),
            "exp {exp} is not a year from now"
        );
    }
}

/// Every serve timer, by flag and by environment variable: 0, one past the bound, and the
/// largest u64 are refused before anything is bound or served.
#[test]
fn serve_refuses_timers_beyond_config_duration_max_ms() {
    let timers = [
        "hello-timeout-ms",
        "heartbeat-interval-ms",
        "idle-timeout-ms",
        "write-timeout-ms",
        "http-request-timeout-ms",
        "tick-interval-ms",
    ];
    let too_long = (CONFIG_DURATION_MAX_MS + 1).to_string();
    let expected = |flag: &str| [format!("--{flag}"), "CONFIG_DURATION_MAX_MS".to_string()];
    for flag in timers {
        let expected = expected(flag);
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        for value in ["0", too_long.as_str(), "18446744073709551615"] {
            let arg = format!("--{flag}={value}");
            assert_refused(&["serve", "--listen", "127.0.0.1:0", &arg], &[], &expected);
            let variable = format!("HERALD_{}", flag.replace('-', "_").to_uppercase());
            assert_refused(&["serve", "--listen", "127.0.0.1:0"], &[(&variable, value)], &expected);
        }
    }
}

/// A guessable JWT secret lets any user who holds a token search for it offline and then mint
/// tokens for every other user: `serve` refuses one under 32 bytes (RFC 7518 §3.2), a short
/// API key, and one value for both, before it listens.
#[test]
fn serve_refuses_weak_or_shared_secrets() {
    let serve = ["serve", "--listen", "127.0.0.1:0"];
    assert_refused(
        &serve,
        &[("HERALD_JWT_SECRET", "change-me-jwt-secret")],
        &["HERALD_JWT_SECRET (--jwt-secret) has 20 bytes", "openssl rand -hex 32"],
    );
    assert_refused(
        &serve,
        &[("HERALD_API_KEY", "change-me")],
        &["HERALD_API_KEY (--api-key) has 9 bytes"],
    );
    assert_refused(&serve, &[("HERALD_API_KEY", JWT_SECRET)], &["must differ"]);
}
