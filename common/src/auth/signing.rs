//! Making tokens: an ES256 private key in PKCS#8 PEM and the public JWK
//! that verifies what it signs (its `kid` is the key's RFC 7638 thumbprint,
//! prefixed by whose key it is). Services sign only their own service
//! tokens; customer, company and operator tokens come from an identity
//! provider, or in development from the key `ssak3 up` keeps in its data
//! directory ([`DevelopmentKeys`]).

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use jsonwebtoken::{
    Algorithm, EncodingKey, Header,
    jwk::{Jwk, JwkSet, ThumbprintHash},
};
use p256::pkcs8::{EncodePrivateKey as _, LineEnding};
use serde::Serialize;

use super::{Role, keys::DEVELOPMENT_KID_PREFIX};

/// A token could not be made (the clock is before 1970, or the key is unusable).
#[derive(Debug, thiserror::Error)]
#[error("cannot issue token: {0}")]
pub struct IssueError(String);

/// The claims Ssak3 tokens carry.
#[derive(Debug, Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    iat: u64,
    nbf: u64,
    exp: u64,
}

/// What a token says, for [`Signer::issue_claims`].
#[derive(Clone, Debug)]
pub struct TokenSpec<'a> {
    pub issuer: &'a str,
    pub subject: &'a str,
    pub role: Role,
    pub audience: Option<&'a str>,
    pub issued_at: u64,
    pub not_before: u64,
    pub expires_at: u64,
}

/// An ES256 private key and its public JWK.
#[derive(Clone)]
pub struct Signer {
    key: EncodingKey,
    jwk: Jwk,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid()).finish()
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> Result<u64, IssueError> {
    Ok(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| IssueError(e.to_string()))?
        .as_secs())
}

impl Signer {
    /// A signer from a P-256 private key in PEM (PKCS#8, or SEC1 as
    /// `openssl ecparam` and Helm's `genPrivateKey` write it); its `kid` is
    /// `kid_prefix` and the thumbprint.
    pub fn from_pem(pem: &str, kid_prefix: &str) -> anyhow::Result<Self> {
        let pkcs8 = if pem.contains("-----BEGIN EC PRIVATE KEY-----") {
            use p256::pkcs8::EncodePrivateKey as _;
            p256::SecretKey::from_sec1_pem(pem)
                .map_err(|_| anyhow::anyhow!("the key is not a P-256 private key"))?
                .to_pkcs8_pem(LineEnding::LF)
                .context("cannot re-encode the key")?
                .to_string()
        } else {
            pem.to_owned()
        };
        let key = EncodingKey::from_ec_pem(pkcs8.as_bytes())
            .context("the key is not a P-256 private key in PEM (PKCS#8 or SEC1)")?;
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256)
            .context("no public key can be derived from the private key")?;
        jwk.common.key_id = Some(format!(
            "{kid_prefix}{}",
            jwk.thumbprint(ThumbprintHash::SHA256)
        ));
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        Ok(Self { key, jwk })
    }

    /// A new random key, as PKCS#8 PEM.
    pub fn generate_pem() -> anyhow::Result<String> {
        let secret = p256::SecretKey::random(&mut rand_core::OsRng);
        Ok(secret
            .to_pkcs8_pem(LineEnding::LF)
            .context("cannot encode a new key")?
            .to_string())
    }

    pub fn kid(&self) -> &str {
        self.jwk.common.key_id.as_deref().unwrap_or_default()
    }

    /// The public key, as a JWKS of one.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.jwk.clone()],
        }
    }

    /// The public key, as a JWKS document.
    pub fn jwks_json(&self) -> String {
        serde_json::to_string(&self.jwks()).unwrap_or_default()
    }

    /// Signs a token with these claims.
    pub fn issue_claims(&self, spec: &TokenSpec<'_>) -> Result<String, IssueError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid().to_owned());
        let claims = Claims {
            iss: spec.issuer,
            sub: spec.subject,
            role: spec.role,
            aud: spec.audience,
            iat: spec.issued_at,
            nbf: spec.not_before,
            exp: spec.expires_at,
        };
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| IssueError(e.to_string()))
    }

    /// A token for `subject` in `role` from `issuer`, valid from now for `ttl`.
    pub fn issue(
        &self,
        issuer: &str,
        audience: Option<&str>,
        subject: &str,
        role: Role,
        ttl: Duration,
    ) -> Result<String, IssueError> {
        let now = now_secs()?;
        self.issue_claims(&TokenSpec {
            issuer,
            subject,
            role,
            audience,
            issued_at: now,
            not_before: now,
            expires_at: now + ttl.as_secs(),
        })
    }
}

/// The keys `ssak3 up` and `ssak3 token` share for development, kept in the
/// data directory (created on first use, private keys readable by the
/// owner only): the issuer of customer, company and operator tokens, and
/// the reservation service's own key for its calls to payment. The issuer's
/// `kid` is marked as a development key, which `ssak3 serve` refuses.
#[derive(Clone, Debug)]
pub struct DevelopmentKeys {
    pub issuer: Signer,
    pub reservation: Signer,
    /// Where the issuer's public JWKS was written, for other processes.
    pub jwks_file: PathBuf,
    /// Where the reservation service's private key is.
    pub reservation_key_file: PathBuf,
}

impl DevelopmentKeys {
    /// Loads the keys of `dir`, generating any that are missing.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        crate::db::ensure_writable_dir(dir)?;
        let issuer = Signer::from_pem(
            &load_or_create_pem(&dir.join("dev-issuer-key.pem"))?,
            DEVELOPMENT_KID_PREFIX,
        )?;
        let reservation_key_file = dir.join("dev-reservation-key.pem");
        let reservation = Signer::from_pem(
            &load_or_create_pem(&reservation_key_file)?,
            // Named as the reservation service names its own key, so that
            // the key it loads from the file has the same kid.
            "reservation:",
        )?;
        let jwks_file = dir.join("jwks.json");
        std::fs::write(&jwks_file, serde_json::to_string_pretty(&issuer.jwks())?)
            .with_context(|| format!("cannot write {}", jwks_file.display()))?;
        Ok(Self {
            issuer,
            reservation,
            jwks_file,
            reservation_key_file,
        })
    }
}

fn load_or_create_pem(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(pem) => Ok(pem),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let pem = Signer::generate_pem()?;
            write_private(path, &pem)?;
            Ok(pem)
        }
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, pem: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(pem.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_keys_are_made_once_and_kept_private() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let first = DevelopmentKeys::load_or_create(dir.path())?;
        let again = DevelopmentKeys::load_or_create(dir.path())?;
        assert_eq!(first.issuer.kid(), again.issuer.kid());
        assert!(first.issuer.kid().starts_with(DEVELOPMENT_KID_PREFIX));
        assert!(first.reservation.kid().starts_with("reservation:"));
        assert_ne!(first.issuer.kid(), first.reservation.kid());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("dev-issuer-key.pem"))?
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the private key is readable by others");
        }
        let published = std::fs::read_to_string(&first.jwks_file)?;
        assert!(
            !published.contains("\"d\""),
            "the JWKS holds a private part"
        );
        Ok(())
    }
}
