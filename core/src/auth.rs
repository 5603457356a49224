//! Token checks for `hello`: a JWT signed with HS256, `sub` = user id, `exp` required.
//!
//! Expiry is judged against the injected [`crate::clock::Clock`] rather than the system clock
//! (which `jsonwebtoken` would read), so that the simulation decides what "now" is and the same
//! token expires at the same simulated instant in every run.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The claims Herald reads. Other claims in a token are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id: the only stream this connection may read.
    pub sub: String,
    /// Expiry, Unix seconds. The token is valid while `now < exp`.
    pub exp: u64,
}

/// Why a token was refused. `Invalid` closes with 4001 `auth_failed`, `Expired` with 4002
/// `token_expired`, so a client knows whether fetching a fresh token can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Malformed, wrongly signed, wrong algorithm, or missing `sub`/`exp`.
    Invalid(String),
    /// Correctly signed but `now >= exp`.
    Expired { exp: u64, now: u64 },
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Invalid(reason) => write!(f, "invalid token: {reason}"),
            AuthError::Expired { exp, now } => write!(f, "token expired at {exp} (now {now})"),
        }
    }
}

impl std::error::Error for AuthError {}

/// Verifies hello tokens with one shared secret. Built once per server; cheap to call.
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenVerifier { .. }")
    }
}

impl TokenVerifier {
    /// A verifier for HS256 tokens signed with `secret`.
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // `exp` is compared with the injected clock in `verify`, never the system clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["sub", "exp"]);
        TokenVerifier {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Checks signature, algorithm and required claims, then `exp` against `now_unix_secs`.
    pub fn verify(&self, token: &str, now_unix_secs: u64) -> Result<Claims, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let claims = data.claims;
        if now_unix_secs >= claims.exp {
            return Err(AuthError::Expired {
                exp: claims.exp,
                now: now_unix_secs,
            });
        }
        Ok(claims)
    }
}

/// Mints an HS256 token for `user` expiring at `exp_unix_secs`. Used by `herald token`, tests
/// and the simulation; production deployments usually mint tokens in their own auth service.
pub fn mint_token(secret: &[u8], user: &str, exp_unix_secs: u64) -> String {
    let claims = Claims {
        sub: user.to_string(),
        exp: exp_unix_secs,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("HS256 signing with an in-memory secret cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_expired_forged_and_malformed_tokens() {
        let verifier = TokenVerifier::new(b"secret");
        let token = mint_token(b"secret", "alice", 1_000);
        assert_eq!(
            verifier.verify(&token, 999),
            Ok(Claims {
                sub: "alice".into(),
                exp: 1_000
            })
        );
        assert_eq!(
            verifier.verify(&token, 1_000),
            Err(AuthError::Expired { exp: 1_000, now: 1_000 })
        );
        let forged = mint_token(b"other", "alice", 1_000);
        assert!(matches!(verifier.verify(&forged, 0), Err(AuthError::Invalid(_))));
        assert!(matches!(verifier.verify("garbage", 0), Err(AuthError::Invalid(_))));
        assert!(matches!(verifier.verify("", 0), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn missing_claims_are_invalid() {
        #[derive(Serialize)]
        struct NoExp<'a> {
            sub: &'a str,
        }
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &NoExp { sub: "alice" },
            &EncodingKey::from_secret(b"s"),
        )
        .unwrap();
        assert!(matches!(
            TokenVerifier::new(b"s").verify(&token, 0),
            Err(AuthError::Invalid(_))
        ));
        #[derive(Serialize)]
        struct NoSub {
            exp: u64,
        }
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &NoSub { exp: 10 },
            &EncodingKey::from_secret(b"s"),
        )
        .unwrap();
        assert!(matches!(
            TokenVerifier::new(b"s").verify(&token, 0),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn other_algorithms_are_refused() {
        let claims = Claims {
            sub: "alice".into(),
            exp: 10,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims, &EncodingKey::from_secret(b"s")).unwrap();
        assert!(matches!(
            TokenVerifier::new(b"s").verify(&token, 0),
            Err(AuthError::Invalid(_))
        ));
    }
}
