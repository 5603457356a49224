//! Token checks for `hello`: a JWT signed with HS256, `sub` = user id, `exp` required.
//!
//! Expiry is judged against the injected [`crate::clock::Clock`] rather than the system clock
//! (which `jsonwebtoken` would read), so that the simulation decides what "now" is and the same
//! token expires at the same simulated instant in every run.
//!
//! Herald needs only HMAC, so it builds `jsonwebtoken` without a crypto backend and installs
//! [`HMAC_PROVIDER`] (HS256/384/512 over RustCrypto's `hmac` and `sha2`) as the process-wide
//! `jsonwebtoken` provider. The crate's `rust_crypto` backend would also compile in `rsa`, which
//! has an open advisory with no fixed release (RUSTSEC-2023-0071, the Marvin timing attack), and
//! a dozen curve crates Herald never calls. An application that embeds Herald and uses
//! `jsonwebtoken` for other algorithms installs its own provider (for example
//! `jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default()`) before it builds a
//! server: Herald installs [`HMAC_PROVIDER`] only when no provider is installed yet, and every
//! provider `jsonwebtoken` ships verifies HMAC too.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::signature::{Error as SignatureError, Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Sha256, Sha384, Sha512};
use std::fmt;

/// `jsonwebtoken`'s crypto provider reduced to the HMAC family: every other algorithm is
/// refused with `InvalidAlgorithm`, and JWK key utilities are not supported.
pub static HMAC_PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: hmac_signer,
    verifier_factory: hmac_verifier,
    key_utils: KeyUtils::new_unimplemented(),
};

/// Installs [`HMAC_PROVIDER`] unless a provider is installed already (then that one, which
/// also speaks HMAC, is used). Called before every `jsonwebtoken` call in this module.
fn install_hmac_provider() {
    let _already_installed = HMAC_PROVIDER.install_default();
}

/// One HMAC key, ready to sign or verify: `Mac` clones are cheap and carry the keyed state.
struct HmacKey<M> {
    algorithm: Algorithm,
    mac: M,
}

impl<M: Mac + KeyInit + Clone> HmacKey<M> {
    fn new(algorithm: Algorithm, secret: &[u8]) -> jsonwebtoken::errors::Result<Self> {
        // HMAC accepts keys of any length; an error here would be a bug in `hmac`.
        let mac = <M as Mac>::new_from_slice(secret).map_err(|_| ErrorKind::InvalidKeyFormat)?;
        Ok(HmacKey { algorithm, mac })
    }
}

impl<M: Mac + Clone> Signer<Vec<u8>> for HmacKey<M> {
    fn try_sign(&self, message: &[u8]) -> Result<Vec<u8>, SignatureError> {
        let mut mac = self.mac.clone();
        mac.update(message);
        Ok(mac.finalize().into_bytes().to_vec())
    }
}

impl<M: Mac + Clone> Verifier<Vec<u8>> for HmacKey<M> {
    /// Constant-time comparison (`verify_slice`), so the check leaks no timing about the tag.
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), SignatureError> {
        let mut mac = self.mac.clone();
        mac.update(message);
        mac.verify_slice(signature).map_err(|_| SignatureError::new())
    }
}

impl<M: Mac + Clone> JwtSigner for HmacKey<M> {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

impl<M: Mac + Clone> JwtVerifier for HmacKey<M> {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

fn hmac_signer(algorithm: &Algorithm, key: &EncodingKey) -> jsonwebtoken::errors::Result<Box<dyn JwtSigner>> {
    if key.family() != AlgorithmFamily::Hmac {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    let secret = key.as_bytes();
    Ok(match algorithm {
        Algorithm::HS256 => Box::new(HmacKey::<Hmac<Sha256>>::new(*algorithm, secret)?),
        Algorithm::HS384 => Box::new(HmacKey::<Hmac<Sha384>>::new(*algorithm, secret)?),
        Algorithm::HS512 => Box::new(HmacKey::<Hmac<Sha512>>::new(*algorithm, secret)?),
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    })
}

fn hmac_verifier(algorithm: &Algorithm, key: &DecodingKey) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    if key.family() != AlgorithmFamily::Hmac {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    let secret = key.try_get_as_bytes()?;
    Ok(match algorithm {
        Algorithm::HS256 => Box::new(HmacKey::<Hmac<Sha256>>::new(*algorithm, secret)?),
        Algorithm::HS384 => Box::new(HmacKey::<Hmac<Sha384>>::new(*algorithm, secret)?),
        Algorithm::HS512 => Box::new(HmacKey::<Hmac<Sha512>>::new(*algorithm, secret)?),
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    })
}

/// The claims Herald reads. Other claims in a token are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id: the only stream this connection may read.
    pub sub: String,
    /// Expiry, Unix seconds. The token is valid while `now < exp`.
    #[serde(deserialize_with = "numeric_date")]
    pub exp: u64,
    /// Not before, Unix seconds (RFC 7519 §4.1.5), if the token has one: a token is refused
    /// while `now + NBF_LEEWAY_SECS < nbf` (an identity provider may issue tokens ahead of
    /// their validity).
    #[serde(
        default,
        deserialize_with = "optional_numeric_date",
        skip_serializing_if = "Option::is_none"
    )]
    pub nbf: Option<u64>,
}

/// How early a token is accepted before its `nbf`: an identity provider sets `nbf` to the
/// moment it signs, and a server clock a little behind the provider's would otherwise refuse
/// every fresh token (the usual allowance for clock skew; RFC 7519 §4.1.5 permits "some small
/// leeway"). `exp` has none: a token never lives longer than it says.
pub const NBF_LEEWAY_SECS: u64 = 60;

/// [`numeric_date`] for a claim a token may leave out.
fn optional_numeric_date<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    numeric_date(deserializer).map(Some)
}

/// An RFC 7519 NumericDate: a JSON number of seconds, which may have a fraction (Python's
/// `time.time() + 3600`). Floored, so a token never lives longer than its `exp` says (an
/// `nbf` floored is early by less than a second, well within [`NBF_LEEWAY_SECS`]); negative
/// or beyond `u64` is refused.
fn numeric_date<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    struct NumericDate;
    impl serde::de::Visitor<'_> for NumericDate {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a non-negative number of seconds")
        }

        fn visit_u64<E>(self, value: u64) -> Result<u64, E> {
            Ok(value)
        }

        fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<u64, E> {
            u64::try_from(value).map_err(|_| E::custom("a NumericDate must not be negative"))
        }

        fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<u64, E> {
            // `u64::MAX as f64` is 2^64, itself out of range.
            if value.is_finite() && value >= 0.0 && value < u64::MAX as f64 {
                Ok(value.floor() as u64)
            } else {
                Err(E::custom(
                    "a NumericDate must be a finite, non-negative number within u64",
                ))
            }
        }
    }
    deserializer.deserialize_any(NumericDate)
}

/// Why a token was refused. `Invalid` closes with 4001 `auth_failed`, `Expired` with 4002
/// `token_expired`, so a client knows whether fetching a fresh token can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Malformed, wrongly signed, wrong algorithm, missing `sub`/`exp`, or not valid yet
    /// (`now < nbf`).
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
    /// A verifier for HS256 tokens signed with `secret`, whatever their `aud`.
    pub fn new(secret: &[u8]) -> Self {
        Self::with_audience(secret, None)
    }

    /// A verifier for HS256 tokens signed with `secret`. With `audience`, a token must also
    /// name it in `aud` (a string or a list): for a secret shared with other services, whose
    /// tokens must not open a Herald connection. Without, `aud` is not read.
    pub fn with_audience(secret: &[u8], audience: Option<&str>) -> Self {
        install_hmac_provider();
        let mut validation = Validation::new(Algorithm::HS256);
        // `exp` is compared with the injected clock in `verify`, never the system clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        match audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.set_required_spec_claims(&["sub", "exp", "aud"]);
            }
            None => {
                // Tokens from an identity provider often carry `aud`; with a secret that is
                // Herald's alone the signature already says who the token is for (jsonwebtoken
                // refuses any `aud` unless told which to expect).
                validation.validate_aud = false;
                validation.set_required_spec_claims(&["sub", "exp"]);
            }
        }
        TokenVerifier {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Checks signature, algorithm and required claims, then `nbf` and `exp` against
    /// `now_unix_secs` (second resolution; a fractional NumericDate is floored).
    pub fn verify(&self, token: &str, now_unix_secs: u64) -> Result<Claims, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let claims = data.claims;
        if let Some(nbf) = claims
            .nbf
            .filter(|nbf| now_unix_secs.saturating_add(NBF_LEEWAY_SECS) < *nbf)
        {
            return Err(AuthError::Invalid(format!(
                "token not valid before {nbf} (now {now_unix_secs})"
            )));
        }
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
    mint_token_for_audience(secret, user, exp_unix_secs, None)
}

/// [`mint_token`] with an `aud` claim, for a server run with a token audience.
pub fn mint_token_for_audience(secret: &[u8], user: &str, exp_unix_secs: u64, audience: Option<&str>) -> String {
    #[derive(Serialize)]
    struct Minted<'a> {
        sub: &'a str,
        exp: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        aud: Option<&'a str>,
    }
    install_hmac_provider();
    let claims = Minted {
        sub: user,
        exp: exp_unix_secs,
        aud: audience,
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
                exp: 1_000,
                nbf: None
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
    fn a_decimal_exp_is_floored_and_a_negative_one_is_invalid() {
        install_hmac_provider(); // before the direct `jsonwebtoken::encode` calls below
        let token = |exp: serde_json::Value| {
            let claims = serde_json::json!({ "sub": "alice", "exp": exp, "iat": 1.5, "nbf": 0.25 });
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"s")).unwrap()
        };
        let verifier = TokenVerifier::new(b"s");
        // Python's `time.time() + 3600`.
        let decimal = token(serde_json::json!(1_000.75));
        let claims = Claims {
            sub: "alice".into(),
            exp: 1_000,
            nbf: Some(0),
        };
        assert_eq!(verifier.verify(&decimal, 999), Ok(claims));
        assert_eq!(
            verifier.verify(&decimal, 1_000),
            Err(AuthError::Expired { exp: 1_000, now: 1_000 })
        );
        assert!(verifier.verify(&token(serde_json::json!(1.0e3)), 999).is_ok());
        for refused in [
            serde_json::json!(-1),
            serde_json::json!(-0.5),
            serde_json::json!(1.9e19),
            serde_json::json!("1000"),
        ] {
            let verified = verifier.verify(&token(refused.clone()), 0);
            assert!(
                matches!(verified, Err(AuthError::Invalid(_))),
                "{refused}: {verified:?}"
            );
        }
    }

    /// A token issued ahead of its validity is refused until `nbf` (less the leeway), then
    /// accepted.
    #[test]
    fn a_token_is_refused_before_its_nbf() {
        install_hmac_provider(); // before the direct `jsonwebtoken::encode` call below
        let claims = serde_json::json!({ "sub": "alice", "exp": 5_000, "nbf": 2_000 });
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"s")).unwrap();
        let verifier = TokenVerifier::new(b"s");
        let early = verifier.verify(&token, 2_000 - NBF_LEEWAY_SECS - 1);
        assert!(
            matches!(&early, Err(AuthError::Invalid(reason)) if reason.contains("not valid before 2000")),
            "{early:?}"
        );
        assert_eq!(
            verifier
                .verify(&token, 2_000 - NBF_LEEWAY_SECS)
                .map(|claims| claims.nbf),
            Ok(Some(2_000)),
            "within the leeway"
        );
        let bad_nbf = serde_json::json!({ "sub": "alice", "exp": 5_000, "nbf": "soon" });
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &bad_nbf,
            &EncodingKey::from_secret(b"s"),
        )
        .unwrap();
        assert!(matches!(verifier.verify(&token, 3_000), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn missing_claims_are_invalid() {
        install_hmac_provider(); // before the direct `jsonwebtoken::encode` calls below
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
    fn claims_herald_does_not_read_are_ignored_audience_included() {
        install_hmac_provider(); // before the direct `jsonwebtoken::encode` call below
        #[derive(Serialize)]
        struct IdentityProviderClaims<'a> {
            sub: &'a str,
            exp: u64,
            aud: &'a str,
            iss: &'a str,
            iat: u64,
        }
        let claims = IdentityProviderClaims {
            sub: "alice",
            exp: 10,
            aud: "chat-frontend",
            iss: "https://id.example",
            iat: 1,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"s")).unwrap();
        assert_eq!(
            TokenVerifier::new(b"s").verify(&token, 0),
            Ok(Claims {
                sub: "alice".into(),
                exp: 10,
                nbf: None
            })
        );
    }

    #[test]
    fn a_configured_audience_must_be_named_in_aud() {
        install_hmac_provider(); // before the direct `jsonwebtoken::encode` calls below
        #[derive(Serialize)]
        struct WithAud<'a, A: Serialize> {
            sub: &'a str,
            exp: u64,
            aud: A,
        }
        let key = EncodingKey::from_secret(b"s");
        let header = Header::new(Algorithm::HS256);
        let herald = TokenVerifier::with_audience(b"s", Some("herald"));
        let token = |aud: serde_json::Value| {
            jsonwebtoken::encode(
                &header,
                &WithAud {
                    sub: "alice",
                    exp: 10,
                    aud,
                },
                &key,
            )
            .unwrap()
        };
        assert!(herald.verify(&token(serde_json::json!("herald")), 0).is_ok());
        assert!(herald.verify(&token(serde_json::json!(["chat", "herald"])), 0).is_ok());
        let other = herald.verify(&token(serde_json::json!("billing")), 0);
        assert!(matches!(other, Err(AuthError::Invalid(_))), "{other:?}");
        let minted = mint_token_for_audience(b"s", "alice", 10, Some("herald"));
        assert!(herald.verify(&minted, 0).is_ok());
        let none = herald.verify(&mint_token(b"s", "alice", 10), 0);
        assert!(matches!(none, Err(AuthError::Invalid(_))), "{none:?}");
        // Without a configured audience any `aud` (or none) is fine.
        assert!(TokenVerifier::new(b"s")
            .verify(&token(serde_json::json!("billing")), 0)
            .is_ok());
    }

    #[test]
    fn the_hmac_provider_matches_a_published_test_vector() {
        install_hmac_provider();
        // jwt.io's HS256 example token, signed with the secret `your-256-bit-secret`.
        let message = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
                       eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ";
        let signature = "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        let key = DecodingKey::from_secret(b"your-256-bit-secret");
        let verify = |signature: &str, message: &str, key: &DecodingKey| {
            jsonwebtoken::crypto::verify(signature, message.as_bytes(), key, Algorithm::HS256).unwrap()
        };
        assert!(verify(signature, message, &key));
        let tampered = format!("{}R", &message[..message.len() - 1]);
        assert!(!verify(signature, &tampered, &key));
        assert!(!verify(
            signature,
            message,
            &DecodingKey::from_secret(b"your-256-bit-secreT")
        ));
        assert!(!verify("TflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c", message, &key));
        let sign = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(b"your-256-bit-secret"),
            Algorithm::HS256,
        );
        assert_eq!(sign.unwrap(), signature);
    }

    #[test]
    fn the_hmac_provider_refuses_every_other_algorithm() {
        install_hmac_provider();
        let key = DecodingKey::from_secret(b"s");
        for algorithm in [Algorithm::RS256, Algorithm::PS256, Algorithm::ES256, Algorithm::EdDSA] {
            let error = jsonwebtoken::crypto::verify("AAAA", b"a.b", &key, algorithm).unwrap_err();
            assert_eq!(error.kind(), &ErrorKind::InvalidAlgorithm, "{algorithm:?}");
        }
        // A token whose header claims RS256 never reaches a verifier: the validation allows HS256 only.
        // The header {"alg":"RS256","typ":"JWT"}, base64url, on a correctly signed HS256 token.
        let rs256_header = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9";
        let hs256 = mint_token(b"s", "alice", 10);
        let (_, rest) = hs256.split_once('.').unwrap();
        let token = format!("{rs256_header}.{rest}");
        assert!(matches!(
            TokenVerifier::new(b"s").verify(&token, 0),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn other_algorithms_are_refused() {
        install_hmac_provider(); // before the direct `jsonwebtoken::encode` calls below
        let claims = Claims {
            sub: "alice".into(),
            exp: 10,
            nbf: None,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims, &EncodingKey::from_secret(b"s")).unwrap();
        assert!(matches!(
            TokenVerifier::new(b"s").verify(&token, 0),
            Err(AuthError::Invalid(_))
        ));
    }
}
