//! Bearer-JWT authentication (HS256): one interceptor verifies the token in
//! the `authorization` metadata and attaches the [`Caller`] to the request;
//! handlers then check the role and ownership.

use std::{sync::Arc, time::Duration};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::{Request, Status, service::Interceptor};

use crate::ApiError;

/// The signing key that `ssak3 up` and `ssak3 token` share when none is
/// configured. Never accepted by `ssak3 serve`, which requires a configured key.
pub const DEVELOPMENT_SECRET: &str = "ssak3-development-signing-key--not-for-production";

/// Lifetime of the tokens services mint for their calls to each other.
pub const SERVICE_ROLE_TTL: Duration = Duration::from_secs(300);

/// Who a token speaks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Books, views and cancels their own reservations.
    Customer,
    /// A cleaning company: sees and completes the jobs booked with it.
    Cleaner,
    /// Another Ssak3 service (reservation calling payment).
    Service,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Customer => "customer",
            Role::Cleaner => "cleaner",
            Role::Service => "service",
        })
    }
}

/// The claims Ssak3 issues and reads.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    role: Role,
    exp: u64,
    iat: u64,
}

/// The `iss` of every Ssak3 token (Istio's RequestAuthentication matches on it).
pub const ISSUER: &str = "ssak3";

/// The authenticated caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Customer id, company id or service name (the token's `sub`).
    pub subject: String,
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
}

/// Signs and verifies tokens with one shared HS256 secret.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(..)")
    }
}

/// A token could not be issued (the clock is before 1970, or the key is unusable).
#[derive(Debug, thiserror::Error)]
#[error("cannot issue token: {0}")]
pub struct IssueError(String);

impl JwtKeys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        validation.set_issuer(&[ISSUER]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Issues a token for `subject` in `role`, valid for `ttl`.
    pub fn issue(&self, subject: &str, role: Role, ttl: Duration) -> Result<String, IssueError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| IssueError(e.to_string()))?
            .as_secs();
        self.issue_at(subject, role, now, now + ttl.as_secs())
    }

    /// Issues a token with explicit issue and expiry times (seconds since the epoch).
    pub fn issue_at(
        &self,
        subject: &str,
        role: Role,
        iat: u64,
        exp: u64,
    ) -> Result<String, IssueError> {
        let claims = Claims {
            iss: ISSUER.to_owned(),
            sub: subject.to_owned(),
            role,
            exp,
            iat,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| IssueError(e.to_string()))
    }

    /// Verifies a token and returns who it speaks for.
    pub fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                let reason = match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => "token expired",
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => "bad token signature",
                    _ => "malformed token",
                };
                ApiError::Unauthenticated(reason.into())
            })?;
        if data.claims.sub.is_empty() {
            return Err(ApiError::Unauthenticated(
                "token has an empty subject".into(),
            ));
        }
        Ok(Caller {
            subject: data.claims.sub,
            role: data.claims.role,
        })
    }
}

/// The interceptor in front of every Ssak3 gRPC service.
#[derive(Clone, Debug)]
pub struct Authenticator {
    keys: Arc<JwtKeys>,
}

impl Authenticator {
    pub fn new(keys: JwtKeys) -> Self {
        Self {
            keys: Arc::new(keys),
        }
    }
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing authorization metadata"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))?;
        let caller = self.keys.verify(token.trim())?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The caller attached by [`Authenticator`].
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
mod tests {
    use super::*;

    fn request_with(value: &str) -> Request<()> {
        let mut request = Request::new(());
        request.metadata_mut().insert(
            "authorization",
            value.parse().unwrap_or_else(|_| unreachable!()),
        );
        request
    }

    #[test]
    fn valid_token_attaches_the_caller() -> Result<(), Box<dyn std::error::Error>> {
        let keys = JwtKeys::new(b"k");
        let token = keys.issue("alice", Role::Customer, Duration::from_secs(60))?;
        let request = Authenticator::new(keys).call(request_with(&format!("Bearer {token}")))?;
        let caller = caller(&request)?;
        assert_eq!(caller.subject, "alice");
        assert_eq!(caller.role, Role::Customer);
        Ok(())
    }

    #[test]
    fn missing_bad_and_expired_tokens_are_unauthenticated() -> Result<(), IssueError> {
        let keys = JwtKeys::new(b"k");
        let mut auth = Authenticator::new(keys.clone());
        let forged =
            JwtKeys::new(b"other").issue("alice", Role::Customer, Duration::from_secs(60))?;
        let expired = keys.issue_at("alice", Role::Customer, 1_000, 2_000)?;
        for request in [
            Request::new(()),
            request_with("Basic abc"),
            request_with(&format!("Bearer {forged}")),
            request_with(&format!("Bearer {expired}")),
            request_with("Bearer not.a.jwt"),
        ] {
            let status = auth.call(request).err().map(|s| s.code());
            assert_eq!(status, Some(tonic::Code::Unauthenticated));
        }
        Ok(())
    }

    #[test]
    fn wrong_role_is_permission_denied() {
        let caller = Caller {
            subject: "acme".into(),
            role: Role::Cleaner,
        };
        assert!(matches!(
            caller.require(Role::Customer),
            Err(ApiError::PermissionDenied(_))
        ));
        assert!(caller.require(Role::Cleaner).is_ok());
    }
}
