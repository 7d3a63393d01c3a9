//! Public keys that verify tokens: a JWKS given inline, read from a file, or
//! fetched from an identity provider's `jwks_uri`, cached and refreshed.
//!
//! Rotation: a token whose `kid` is not known yet makes the set reload at
//! once (at most every [`MIN_RELOAD`]), so a key the provider starts using
//! is accepted as soon as its JWKS lists it; the set is also reloaded every
//! `refresh` (a file when it changed), so a key the provider removed stops
//! verifying within that time. Only asymmetric keys are accepted (ES256,
//! EdDSA, RS256 with at least 2048 bits): whoever can verify a token must not
//! be able to make one.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use http_body_util::{BodyExt as _, Empty};
use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm},
};
use tokio::sync::Mutex;

/// The least time between two reloads caused by unknown key ids, so that a
/// flood of made-up `kid`s does not become a flood of fetches.
const MIN_RELOAD: Duration = Duration::from_secs(2);
/// How long a fetch of a remote JWKS may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS document read.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// The smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;

/// The `kid` prefix of the keys `ssak3 up` generates for development.
pub const DEVELOPMENT_KID_PREFIX: &str = "ssak3-dev-";

/// Where a key set comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    Inline(String),
    File(PathBuf),
    Url(String),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inline(_) => f.write_str("the inline JWKS"),
            Self::File(path) => write!(f, "the JWKS file {}", path.display()),
            Self::Url(url) => write!(f, "the JWKS at {url}"),
        }
    }
}

/// Why a key set cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {source_name}: {reason}")]
    Unreadable { source_name: String, reason: String },
    #[error("{source_name} is not a JWKS: {reason}")]
    Malformed { source_name: String, reason: String },
    #[error("{source_name}: key {kid:?} {reason}")]
    Refused {
        source_name: String,
        kid: String,
        reason: String,
    },
}

/// One verifying key.
#[derive(Clone)]
pub struct VerifyingKey {
    pub kid: String,
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

/// Parses public keys into verifying keys by `kid`: a JWKS document, or PEM
/// certificates (see [`certificate_keys`]). Every key must be asymmetric,
/// carry a `kid` and an algorithm, and be strong enough.
pub fn parse_jwks(
    source: &KeySource,
    text: &str,
) -> Result<HashMap<String, VerifyingKey>, KeyError> {
    let source_name = source.to_string();
    let malformed = |reason: String| KeyError::Malformed {
        source_name: source_name.clone(),
        reason,
    };
    let set: JwkSet = if text.contains("-----BEGIN CERTIFICATE-----") {
        certificate_keys(text).map_err(malformed)?
    } else {
        serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?
    };
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let key = verifying_key(jwk).map_err(|reason| KeyError::Refused {
            source_name: source_name.clone(),
            kid: jwk.common.key_id.clone().unwrap_or_default(),
            reason,
        })?;
        keys.insert(key.kid.clone(), key);
    }
    Ok(keys)
}

fn verifying_key(jwk: &Jwk) -> Result<VerifyingKey, String> {
    let kid = jwk
        .common
        .key_id
        .clone()
        .filter(|kid| !kid.is_empty())
        .ok_or("has no kid")?;
    let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::OctetKey(_), _) => {
            return Err("is a shared secret (oct); only public keys verify tokens".into());
        }
        (AlgorithmParameters::EllipticCurve(_), Some(KeyAlgorithm::ES256) | None) => {
            Algorithm::ES256
        }
        (AlgorithmParameters::OctetKeyPair(_), Some(KeyAlgorithm::EdDSA) | None) => {
            Algorithm::EdDSA
        }
        (AlgorithmParameters::RSA(rsa), Some(KeyAlgorithm::RS256) | None) => {
            let bits = modulus_bits(&rsa.n).ok_or("has an unreadable modulus")?;
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "has {bits} bits; at least {MIN_RSA_BITS} are needed"
                ));
            }
            Algorithm::RS256
        }
        (_, Some(other)) => {
            return Err(format!(
                "uses {other:?}; ES256, EdDSA or RS256 are accepted"
            ));
        }
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("is unusable: {e}"))?;
    Ok(VerifyingKey {
        kid,
        algorithm,
        key,
    })
}

/// The P-256 public keys of PEM certificates, as JWKs named like the keys
/// that sign with them: `<common name>:<RFC 7638 thumbprint>`. This is the
/// form a Helm chart can make (`genSelfSignedCertWithKey`); only the key in
/// a certificate is used, not its dates or issuer.
pub fn certificate_keys(pem: &str) -> Result<JwkSet, String> {
    use base64::Engine as _;
    use jsonwebtoken::jwk::{
        CommonParameters, EllipticCurve, EllipticCurveKeyParameters, EllipticCurveKeyType,
        PublicKeyUse, ThumbprintHash,
    };
    use x509_cert::der::Encode as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let certificates = x509_cert::Certificate::load_pem_chain(pem.as_bytes())
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let mut keys = Vec::new();
    for certificate in certificates {
        let tbs = &certificate.tbs_certificate;
        let name = tbs
            .subject
            .0
            .iter()
            .flat_map(|rdn| rdn.0.iter())
            .find(|attribute| {
                attribute.oid == x509_cert::der::asn1::ObjectIdentifier::new_unwrap("2.5.4.3")
            })
            .and_then(|attribute| directory_string(&attribute.value))
            .ok_or("a certificate has no common name")?;
        let spki = tbs
            .subject_public_key_info
            .to_der()
            .map_err(|e| format!("unreadable public key: {e}"))?;
        let key = <p256::PublicKey as p256::pkcs8::DecodePublicKey>::from_public_key_der(&spki)
            .map_err(|_| format!("the key of {name:?} is not a P-256 key"))?;
        let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&key, false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            return Err(format!("the key of {name:?} is the identity"));
        };
        let mut jwk = Jwk {
            common: CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(KeyAlgorithm::ES256),
                ..CommonParameters::default()
            },
            algorithm: AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
                key_type: EllipticCurveKeyType::EC,
                curve: EllipticCurve::P256,
                x: b64(x),
                y: b64(y),
            }),
        };
        jwk.common.key_id = Some(format!("{name}:{}", jwk.thumbprint(ThumbprintHash::SHA256)));
        keys.push(jwk);
    }
    Ok(JwkSet { keys })
}

/// A name attribute's text, in any of the string types certificates use:
/// Go (and so Helm's `genSelfSignedCert`) writes a PrintableString where
/// the text allows it, OpenSSL a UTF8String.
fn directory_string(value: &x509_cert::der::Any) -> Option<String> {
    use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
    value
        .decode_as::<Utf8StringRef<'_>>()
        .map(|s| s.as_str().to_owned())
        .or_else(|_| {
            value
                .decode_as::<PrintableStringRef<'_>>()
                .map(|s| s.as_str().to_owned())
        })
        .or_else(|_| {
            value
                .decode_as::<Ia5StringRef<'_>>()
                .map(|s| s.as_str().to_owned())
        })
        .ok()
}

/// The bit length of a base64url big-endian modulus.
fn modulus_bits(n: &str) -> Option<usize> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(n.trim_end_matches('='))
        .ok()?;
    let first = bytes.iter().position(|b| *b != 0)?;
    let leading = bytes[first].leading_zeros() as usize;
    Some((bytes.len() - first) * 8 - leading)
}

/// A cached key set that reloads itself (see the module docs).
#[derive(Clone, Debug)]
pub struct KeySet {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    source: KeySource,
    refresh: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    keys: HashMap<String, VerifyingKey>,
    loaded_at: Instant,
    /// A file's modification time when it was read.
    modified: Option<SystemTime>,
}

impl KeySet {
    /// Loads the set once; a source that cannot be read or parsed now is an error.
    pub async fn load(source: KeySource, refresh: Duration) -> Result<Self, KeyError> {
        let (keys, modified) = read(&source).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                source,
                refresh,
                state: Mutex::new(State {
                    keys,
                    loaded_at: Instant::now(),
                    modified,
                }),
            }),
        })
    }

    /// The key ids currently known.
    pub async fn kids(&self) -> Vec<String> {
        self.inner.state.lock().await.keys.keys().cloned().collect()
    }

    /// The key with `kid`, reloading the set when it is stale or when the
    /// key is unknown (see the module docs). A failed reload keeps the keys
    /// known before.
    pub async fn find(&self, kid: &str) -> Option<VerifyingKey> {
        let mut state = self.inner.state.lock().await;
        let age = state.loaded_at.elapsed();
        let stale = age >= self.inner.refresh;
        let unknown = !state.keys.contains_key(kid);
        if stale || (unknown && age >= MIN_RELOAD) {
            self.reload(&mut state).await;
        }
        state.keys.get(kid).cloned()
    }

    async fn reload(&self, state: &mut State) {
        state.loaded_at = Instant::now();
        if let KeySource::File(path) = &self.inner.source {
            let modified = tokio::fs::metadata(path)
                .await
                .and_then(|m| m.modified())
                .ok();
            if modified.is_some() && modified == state.modified {
                return;
            }
        }
        match read(&self.inner.source).await {
            Ok((keys, modified)) => {
                state.keys = keys;
                state.modified = modified;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot reload the token keys; keeping the ones known");
            }
        }
    }
}

async fn read(
    source: &KeySource,
) -> Result<(HashMap<String, VerifyingKey>, Option<SystemTime>), KeyError> {
    let unreadable = |reason: String| KeyError::Unreadable {
        source_name: source.to_string(),
        reason,
    };
    let (text, modified) = match source {
        KeySource::Inline(text) => (text.clone(), None),
        KeySource::File(path) => {
            let modified = tokio::fs::metadata(path)
                .await
                .and_then(|m| m.modified())
                .ok();
            let text = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| unreadable(e.to_string()))?;
            (text, modified)
        }
        KeySource::Url(url) => (fetch(url).await.map_err(unreadable)?, None),
    };
    Ok((parse_jwks(source, &text)?, modified))
}

/// GETs a JWKS over HTTPS (or HTTP on a trusted network).
async fn fetch(url: &str) -> Result<String, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let client = crate::http::client();
    let request = hyper::Request::get(uri)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(FETCH_TIMEOUT, client.request(request))
        .await
        .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let body = http_body_util::Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| "the body is not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_secrets_and_weak_keys_are_refused() {
        let source = KeySource::Inline(String::new());
        let oct = r#"{"keys":[{"kty":"oct","kid":"k","alg":"HS256","k":"c2VjcmV0"}]}"#;
        assert!(matches!(
            parse_jwks(&source, oct),
            Err(KeyError::Refused { reason, .. }) if reason.contains("shared secret")
        ));
        // A 512-bit RSA modulus.
        let n = "ALFFbkJRlX6ZKZ_zl-dm2p3HS_bDpxjrCeN8nBRx2ncnj2NfMmbE1ZY0tfmngczB7TvTrEvVW3m6LaSSJMgA8Ps";
        let weak =
            format!(r#"{{"keys":[{{"kty":"RSA","kid":"r","alg":"RS256","n":"{n}","e":"AQAB"}}]}}"#);
        assert!(matches!(
            parse_jwks(&source, &weak),
            Err(KeyError::Refused { reason, .. }) if reason.contains("2048")
        ));
        assert!(matches!(
            parse_jwks(&source, "not json"),
            Err(KeyError::Malformed { .. })
        ));
        let no_kid = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        assert!(matches!(
            parse_jwks(&source, no_kid),
            Err(KeyError::Refused { reason, .. }) if reason.contains("kid")
        ));
    }

    #[test]
    fn modulus_bits_counts_from_the_first_set_bit() {
        assert_eq!(modulus_bits("AQAB"), Some(17));
        assert_eq!(modulus_bits("AIA"), Some(8));
    }
}
