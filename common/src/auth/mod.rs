//! Bearer-JWT authentication with public keys only.
//!
//! - **Customers, companies and operators** hold tokens from an identity
//!   provider (the issuer): ES256, EdDSA or RS256, verified against the
//!   issuer's JWKS ([`keys`]: inline, a file, or its `jwks_uri`, with `kid`
//!   rotation). No service holds a key that could make such a token.
//! - **Services** calling services sign their own short-lived tokens with a
//!   key of their own ([`ServiceIdentity`]): `iss` is `ssak3-service/<name>`,
//!   `sub` the service's name, `aud` the service called, and the `kid`
//!   starts with `<name>:`. A service that accepts calls from others (only
//!   payment, from reservation) verifies them against its callers' public
//!   keys, never the issuer's, so the identity provider cannot speak for a
//!   service and a service cannot speak for a person.
//!
//! Every claim is checked: the signature, `iss`, `exp`, `nbf`, `iat` (not in
//! the future beyond the leeway), the lifetime (`exp - iat`, bounded), `aud`
//! when one is configured, and the subject, which obeys the id grammar. A
//! refused token gets UNAUTHENTICATED naming the reason, never echoing the
//! token. [`Authenticated`] does this in front of each service's gRPC
//! server and hands the [`Caller`] to the handlers, which check role and
//! ownership.

pub mod keys;
pub mod signing;

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use jsonwebtoken::{Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use tonic::{Request, Status, server::NamedService};

use self::{
    keys::{DEVELOPMENT_KID_PREFIX, KeySet, KeySource},
    signing::{IssueError, Signer},
};
use crate::{
    ApiError,
    ids::{CompanyId, CustomerId, Subject},
};

/// How long the tokens a service makes for its calls to another live.
pub const SERVICE_TOKEN_TTL: Duration = Duration::from_secs(300);
/// The `iss` of a service's own tokens, followed by the service's name.
pub const SERVICE_ISSUER_PREFIX: &str = "ssak3-service/";

/// Who a token speaks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Books, views and cancels their own reservations.
    Customer,
    /// A cleaning company: sees and completes the jobs booked with it.
    Cleaner,
    /// Runs the system: registers companies.
    Operator,
    /// Another Ssak3 service (reservation calling payment).
    Service,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Customer => "customer",
            Role::Cleaner => "cleaner",
            Role::Operator => "operator",
            Role::Service => "service",
        })
    }
}

/// The authenticated caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Customer id, company id, operator or service name (the token's `sub`).
    pub subject: Subject,
    pub role: Role,
}

impl Caller {
    /// The caller if it has `role`, else PERMISSION_DENIED.
    pub fn require(&self, role: Role) -> Result<&Self, ApiError> {
        if self.role == role {
            Ok(self)
        } else {
            Err(ApiError::PermissionDenied(format!(
                "this call needs the {role} role; the token has {}",
                self.role
            )))
        }
    }

    /// The customer calling, or PERMISSION_DENIED for any other role.
    pub fn customer(&self) -> Result<CustomerId, ApiError> {
        self.require(Role::Customer)?;
        Ok(CustomerId::from(self.subject.clone()))
    }

    /// The cleaning company calling, or PERMISSION_DENIED for any other role.
    pub fn company(&self) -> Result<CompanyId, ApiError> {
        self.require(Role::Cleaner)?;
        Ok(CompanyId::from(self.subject.clone()))
    }

    /// Succeeds only for the service named `name`.
    pub fn require_service(&self, name: &str) -> Result<(), ApiError> {
        self.require(Role::Service)?;
        if self.subject.as_str() == name {
            Ok(())
        } else {
            Err(ApiError::PermissionDenied(format!(
                "this call is for the {name} service only"
            )))
        }
    }
}

/// How tokens are verified, and this service's own key.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The `iss` of customer, company and operator tokens.
    pub issuer: String,
    /// When set, those tokens must name this audience in `aud`.
    pub audience: Option<String>,
    /// The issuer's public keys: an inline JWKS document, a JWKS file, or
    /// the issuer's `jwks_uri` (exactly one of the three).
    pub jwks: Option<String>,
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    /// How often the keys are reloaded (a key the issuer dropped is refused
    /// within this time; a new `kid` is fetched at once).
    pub jwks_refresh_ms: u64,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway_secs: u64,
    /// The longest a token may live (`exp - iat`).
    pub max_token_lifetime_secs: u64,
    /// This service's own private key (PKCS#8 PEM, inline or a file), for
    /// its calls to other services (reservation → payment).
    pub service_key: Option<String>,
    pub service_key_file: Option<PathBuf>,
    /// The public keys of the services allowed to call this one (payment
    /// accepts reservation's), inline or a file.
    pub service_keys: Option<String>,
    pub service_keys_file: Option<PathBuf>,
    /// An issuer's private key (PEM) that `ssak3 token` signs with when it
    /// is given no key of its own: the evaluation issuer a chart makes when
    /// no identity provider is configured. No service reads it.
    pub issuer_key_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: "ssak3".into(),
            audience: None,
            jwks: None,
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_ms: 60_000,
            leeway_secs: 30,
            max_token_lifetime_secs: 86_400,
            service_key: None,
            service_key_file: None,
            service_keys: None,
            service_keys_file: None,
            issuer_key_file: None,
        }
    }
}

impl AuthConfig {
    fn issuer_keys(&self) -> anyhow::Result<KeySource> {
        match (&self.jwks, &self.jwks_file, &self.jwks_url) {
            (Some(jwks), None, None) => Ok(KeySource::Inline(jwks.clone())),
            (None, Some(path), None) => Ok(KeySource::File(path.clone())),
            (None, None, Some(url)) => Ok(KeySource::Url(url.clone())),
            (None, None, None) => anyhow::bail!(
                "no token keys configured: set SSAK3_AUTH__JWKS_URL (the issuer's jwks_uri), \
                 SSAK3_AUTH__JWKS_FILE or SSAK3_AUTH__JWKS"
            ),
            _ => anyhow::bail!(
                "set only one of SSAK3_AUTH__JWKS, SSAK3_AUTH__JWKS_FILE and SSAK3_AUTH__JWKS_URL"
            ),
        }
    }

    fn caller_keys(&self) -> anyhow::Result<KeySource> {
        match (&self.service_keys, &self.service_keys_file) {
            (Some(jwks), None) => Ok(KeySource::Inline(jwks.clone())),
            (None, Some(path)) => Ok(KeySource::File(path.clone())),
            (None, None) => anyhow::bail!(
                "no keys of calling services configured: set SSAK3_AUTH__SERVICE_KEYS_FILE \
                 (the public keys of the services allowed to call this one)"
            ),
            _ => anyhow::bail!(
                "set only one of SSAK3_AUTH__SERVICE_KEYS and SSAK3_AUTH__SERVICE_KEYS_FILE"
            ),
        }
    }

    /// This service's own signing key, named `service`.
    pub fn service_identity(&self, service: &'static str) -> anyhow::Result<ServiceIdentity> {
        let pem = match (&self.service_key, &self.service_key_file) {
            (Some(pem), None) => pem.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the service key {}", path.display()))?,
            (None, None) => anyhow::bail!(
                "no service key configured: set SSAK3_AUTH__SERVICE_KEY_FILE \
                 (the {service} service's private key, PKCS#8 PEM)"
            ),
            _ => anyhow::bail!(
                "set only one of SSAK3_AUTH__SERVICE_KEY and SSAK3_AUTH__SERVICE_KEY_FILE"
            ),
        };
        let signer = Signer::from_pem(&pem, &format!("{service}:"))
            .with_context(|| format!("the {service} service key"))?;
        Ok(ServiceIdentity::new(service, signer))
    }
}

/// Why a token was refused, for the caller (it never repeats the token).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(String);

impl From<Refused> for ApiError {
    fn from(refused: Refused) -> Self {
        ApiError::Unauthenticated(refused.0)
    }
}

fn refused(reason: impl Into<String>) -> Refused {
    Refused(reason.into())
}

/// The claims read from a token.
#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    role: Role,
    exp: u64,
    iat: u64,
}

/// Verifies the tokens one service accepts.
#[derive(Clone, Debug)]
pub struct Verifier {
    inner: Arc<VerifierInner>,
}

#[derive(Debug)]
struct VerifierInner {
    /// The service verifying, as the `aud` of service tokens.
    service: &'static str,
    issuer: String,
    audience: Option<String>,
    issuer_keys: KeySet,
    /// The keys of the services allowed to call this one.
    caller_keys: Option<KeySet>,
    leeway: u64,
    max_lifetime: u64,
    /// Tokens whose signature and claims were checked, for a while.
    verified: Mutex<HashMap<String, Verified>>,
    /// How long a check is trusted: the key sets' refresh time.
    trusted_for: Duration,
    /// Signatures checked (the costly part); tests read it.
    signatures_checked: AtomicU64,
}

/// A token that passed every check.
#[derive(Clone, Debug)]
struct Verified {
    caller: Caller,
    kid: String,
    from_service: bool,
    /// The token's `exp`.
    expires_at: u64,
    /// Until when this check stands in for a new one.
    until: Instant,
}

/// Tokens remembered as verified at most; a client keeps using one token
/// until it nears its end, so this many callers at once are served from
/// memory (an ES256 signature check is most of a call's CPU otherwise).
const VERIFIED_TOKENS: usize = 4_096;
/// Longer tokens are checked every time: the memory stays under about
/// 9 MiB whatever size of header the server admits.
const REMEMBERED_TOKEN_BYTES: usize = 2_048;

impl Verifier {
    /// The verifier of `service`; with `accepts_services`, it also verifies
    /// the tokens of the services configured as its callers.
    pub async fn from_config(
        config: &AuthConfig,
        service: &'static str,
        accepts_services: bool,
    ) -> anyhow::Result<Self> {
        let refresh = Duration::from_millis(config.jwks_refresh_ms.max(100));
        let issuer_keys = KeySet::load(config.issuer_keys()?, refresh).await?;
        let caller_keys = if accepts_services {
            Some(KeySet::load(config.caller_keys()?, refresh).await?)
        } else {
            None
        };
        Ok(Self {
            inner: Arc::new(VerifierInner {
                service,
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
                issuer_keys,
                caller_keys,
                leeway: config.leeway_secs,
                max_lifetime: config.max_token_lifetime_secs,
                verified: Mutex::new(HashMap::new()),
                trusted_for: refresh,
                signatures_checked: AtomicU64::new(0),
            }),
        })
    }

    /// Fails when a configured key is one of the development keys `ssak3 up`
    /// makes: a production service must not trust them.
    pub async fn refuse_development_keys(&self) -> anyhow::Result<()> {
        let mut kids = self.inner.issuer_keys.kids().await;
        if let Some(callers) = &self.inner.caller_keys {
            kids.extend(callers.kids().await);
        }
        if let Some(kid) = kids.iter().find(|kid| kid.contains(DEVELOPMENT_KID_PREFIX)) {
            anyhow::bail!(
                "the token keys include the development key {kid:?} of `ssak3 up`; \
                 configure the identity provider's keys"
            );
        }
        Ok(())
    }

    /// Who `token` speaks for, or why it is refused. A token that passed
    /// is remembered (by its exact text) until it expires or for the key
    /// sets' refresh time, whichever comes first, and while its key is
    /// still listed: the same token then costs no signature check.
    pub async fn verify(&self, token: &str) -> Result<Caller, Refused> {
        if let Some(caller) = self.remembered(token).await {
            return Ok(caller);
        }
        let (caller, verified) = self.check(token).await?;
        self.remember(token, verified);
        Ok(caller)
    }

    /// The caller of a token verified a moment ago, if it still stands;
    /// `None` sends the token through every check again.
    async fn remembered(&self, token: &str) -> Option<Caller> {
        let inner = &self.inner;
        let hit = inner
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned()?;
        let now = signing::now_secs().ok()?;
        if hit.until <= Instant::now() || now > hit.expires_at + inner.leeway {
            return None;
        }
        let keys = if hit.from_service {
            inner.caller_keys.as_ref()?
        } else {
            &inner.issuer_keys
        };
        keys.find(&hit.kid).await?;
        Some(hit.caller)
    }

    fn remember(&self, token: &str, verified: Verified) {
        if token.len() > REMEMBERED_TOKEN_BYTES {
            return;
        }
        let mut remembered = self
            .inner
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if remembered.len() >= VERIFIED_TOKENS {
            let now = Instant::now();
            remembered.retain(|_, v| v.until > now);
            if remembered.len() >= VERIFIED_TOKENS {
                remembered.clear();
            }
        }
        remembered.insert(token.to_owned(), verified);
    }

    /// Every check of `token`: its key, signature and claims.
    async fn check(&self, token: &str) -> Result<(Caller, Verified), Refused> {
        let inner = &self.inner;
        let header = jsonwebtoken::decode_header(token).map_err(|_| refused("malformed token"))?;
        let kid = header
            .kid
            .ok_or_else(|| refused("the token names no key (kid)"))?;
        let (key, from_service) = match inner.issuer_keys.find(&kid).await {
            Some(key) => (key, false),
            None => match &inner.caller_keys {
                Some(callers) => (
                    callers
                        .find(&kid)
                        .await
                        .ok_or_else(|| refused("unknown signing key"))?,
                    true,
                ),
                None => return Err(refused("unknown signing key")),
            },
        };
        if header.alg != key.algorithm {
            return Err(refused("the token's algorithm does not match its key"));
        }
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = inner.leeway;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss"]);
        let audience = if from_service {
            Some(inner.service)
        } else {
            inner.audience.as_deref()
        };
        match audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
            }
            None => validation.validate_aud = false,
        }
        inner.signatures_checked.fetch_add(1, Ordering::Relaxed);
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|e| {
                refused(match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired".to_owned(),
                    ErrorKind::ImmatureSignature => "token not valid yet (nbf)".to_owned(),
                    ErrorKind::InvalidSignature => "bad token signature".to_owned(),
                    ErrorKind::InvalidAudience => "token is for another audience".to_owned(),
                    ErrorKind::MissingRequiredClaim(claim) => {
                        format!("token has no {claim} claim")
                    }
                    _ => "malformed token".to_owned(),
                })
            })?
            .claims;
        let now = signing::now_secs().map_err(|_| refused("the server's clock is broken"))?;
        if claims.iat > now + inner.leeway {
            return Err(refused("token issued in the future (iat)"));
        }
        if claims.exp.saturating_sub(claims.iat) > inner.max_lifetime {
            return Err(refused(format!(
                "token lives longer than {} s",
                inner.max_lifetime
            )));
        }
        let subject = Subject::parse(&claims.sub)
            .map_err(|invalid| refused(format!("token subject {}", invalid.reason)))?;
        if from_service {
            if claims.role != Role::Service
                || claims.iss != format!("{SERVICE_ISSUER_PREFIX}{subject}")
                || !kid.starts_with(&format!("{subject}:"))
            {
                return Err(refused("the key does not speak for this service"));
            }
        } else {
            if claims.iss != inner.issuer {
                return Err(refused("token from an unknown issuer"));
            }
            if claims.role == Role::Service {
                return Err(refused("the issuer does not speak for services"));
            }
        }
        let caller = Caller {
            subject,
            role: claims.role,
        };
        let verified = Verified {
            caller: caller.clone(),
            kid,
            from_service,
            expires_at: claims.exp,
            until: Instant::now() + inner.trusted_for,
        };
        Ok((caller, verified))
    }

    /// The caller a request's `authorization` metadata names.
    pub async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Caller, Refused> {
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or_else(|| refused("missing authorization metadata"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| refused("authorization must be `Bearer <token>`"))?;
        self.verify(token.trim()).await
    }
}

/// A service's own key, making the tokens of its calls to other services.
#[derive(Clone, Debug)]
pub struct ServiceIdentity {
    name: &'static str,
    signer: Signer,
    /// The last token made per audience, reused for half its life.
    cached: Arc<Mutex<Vec<CachedToken>>>,
}

/// A token made for an audience, and when to make a new one.
#[derive(Debug)]
struct CachedToken {
    audience: &'static str,
    token: String,
    renew_at: u64,
}

impl ServiceIdentity {
    pub fn new(name: &'static str, signer: Signer) -> Self {
        Self {
            name,
            signer,
            cached: Arc::default(),
        }
    }

    /// The public key that verifies this service's tokens.
    pub fn jwks(&self) -> jsonwebtoken::jwk::JwkSet {
        self.signer.jwks()
    }

    /// A token for a call to `audience`.
    pub fn token_for(&self, audience: &'static str) -> Result<String, IssueError> {
        let now = signing::now_secs()?;
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(fresh) = cached
            .iter()
            .find(|c| c.audience == audience && now < c.renew_at)
        {
            return Ok(fresh.token.clone());
        }
        let token = self.signer.issue(
            &format!("{SERVICE_ISSUER_PREFIX}{}", self.name),
            Some(audience),
            self.name,
            Role::Service,
            SERVICE_TOKEN_TTL,
        )?;
        cached.retain(|c| c.audience != audience);
        cached.push(CachedToken {
            audience,
            token: token.clone(),
            renew_at: now + SERVICE_TOKEN_TTL.as_secs() / 2,
        });
        Ok(token)
    }
}

/// A gRPC server behind token verification: calls without a valid token
/// are answered UNAUTHENTICATED; the others reach it with their [`Caller`].
#[derive(Clone, Debug)]
pub struct Authenticated<S> {
    inner: S,
    verifier: Verifier,
}

impl<S> Authenticated<S> {
    pub fn new(inner: S, verifier: Verifier) -> Self {
        Self { inner, verifier }
    }
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for Authenticated<S>
where
    S: tower::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone waits for readiness next time; this one was made ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        Box::pin(async move {
            match verifier.authenticate(request.headers()).await {
                Ok(caller) => {
                    request.extensions_mut().insert(caller);
                    inner.call(request).await
                }
                Err(refusal) => Ok(Status::from(ApiError::from(refusal)).into_http()),
            }
        })
    }
}

/// The caller attached by [`Authenticated`].
pub fn caller<T>(request: &Request<T>) -> Result<Caller, ApiError> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| ApiError::Unauthenticated("no authenticated caller".into()))
}

/// Adds `authorization: Bearer <token>` to an outgoing request.
pub fn with_bearer<T>(mut request: Request<T>, token: &str) -> Result<Request<T>, ApiError> {
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| ApiError::Internal(anyhow::anyhow!("token is not valid metadata")))?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

#[cfg(test)]
mod tests;
