//! Tokens for development and evaluation: signed with the issuer key that
//! `ssak3 up` keeps in its data directory (which the system it runs
//! trusts), or with an issuer key given as a file (the evaluation issuer a
//! chart makes when no identity provider is configured).

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use ssak3_common::auth::{
    AuthConfig, Role,
    signing::{DevelopmentKeys, Signer},
};

/// Makes customer, company and operator tokens with an issuer key.
#[derive(Clone, Debug)]
pub struct Tokens {
    signer: Signer,
    development: Option<DevelopmentKeys>,
    /// The `iss` and `aud` the services expect, and the longest lifetime they accept.
    issuer: String,
    audience: Option<String>,
    max_lifetime: Duration,
}

impl Tokens {
    /// The development keys of `data_dir` (made on first use), issuing
    /// tokens the services configured by `auth` accept.
    pub fn of(data_dir: &Path, auth: &AuthConfig) -> anyhow::Result<Self> {
        let keys = DevelopmentKeys::load_or_create(data_dir)?;
        Ok(Self::signing_with(keys.issuer.clone(), Some(keys), auth))
    }

    fn signing_with(
        signer: Signer,
        development: Option<DevelopmentKeys>,
        auth: &AuthConfig,
    ) -> Self {
        Self {
            signer,
            development,
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            max_lifetime: Duration::from_secs(auth.max_token_lifetime_secs),
        }
    }

    /// The private key in `path` (PEM), named `name` (its certificate's
    /// common name, which starts its `kid`), issuing tokens the services
    /// configured by `auth` accept.
    pub fn from_key_file(path: &Path, name: &str, auth: &AuthConfig) -> anyhow::Result<Self> {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the issuer key {}", path.display()))?;
        let signer = Signer::from_pem(&pem, &format!("{name}:"))?;
        Ok(Self::signing_with(signer, None, auth))
    }

    /// The development keys, when these tokens are made with them.
    pub fn development_keys(&self) -> Option<&DevelopmentKeys> {
        self.development.as_ref()
    }

    /// A token for `subject` in `role`, valid for `ttl` (at most the
    /// longest lifetime the services accept), with their audience if any.
    pub fn issue(&self, subject: &str, role: Role, ttl: Duration) -> anyhow::Result<String> {
        Ok(self.signer.issue(
            &self.issuer,
            self.audience.as_deref(),
            subject,
            role,
            ttl.min(self.max_lifetime),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The claims of a token, unverified.
    fn claims(token: &str) -> serde_json::Value {
        use base64::Engine as _;
        let payload = token.split('.').nth(1).expect("a JWT has a payload");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url");
        serde_json::from_slice(&bytes).expect("JSON claims")
    }

    #[test]
    fn tokens_carry_the_audience_and_live_no_longer_than_the_services_accept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let auth = AuthConfig {
            audience: Some("ssak3-api".into()),
            max_token_lifetime_secs: 600,
            ..AuthConfig::default()
        };
        let tokens = Tokens::of(dir.path(), &auth).expect("keys");
        let token = tokens
            .issue("alice", Role::Customer, Duration::from_secs(86_400))
            .expect("token");
        let claims = claims(&token);
        assert_eq!(claims["aud"], "ssak3-api");
        assert_eq!(
            claims["exp"]
                .as_u64()
                .zip(claims["iat"].as_u64())
                .map(|(e, i)| e - i),
            Some(600)
        );
    }
}
