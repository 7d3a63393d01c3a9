//! Tokens for development and evaluation: signed with the issuer key that
//! `ssak3 up` keeps in its data directory (which the system it runs
//! trusts), or with an issuer key given as a file (the evaluation issuer a
//! chart makes when no identity provider is configured).

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use ssak3_common::auth::{
    Role,
    signing::{DevelopmentKeys, Signer},
};

/// Makes customer, company and operator tokens with an issuer key.
#[derive(Clone, Debug)]
pub struct Tokens {
    signer: Signer,
    development: Option<DevelopmentKeys>,
    issuer: String,
}

impl Tokens {
    /// The development keys of `data_dir` (made on first use), issuing as `issuer`.
    pub fn of(data_dir: &Path, issuer: &str) -> anyhow::Result<Self> {
        let keys = DevelopmentKeys::load_or_create(data_dir)?;
        Ok(Self {
            signer: keys.issuer.clone(),
            development: Some(keys),
            issuer: issuer.to_owned(),
        })
    }

    /// The private key in `path` (PEM), named `name` (its certificate's
    /// common name, which starts its `kid`), issuing as `issuer`.
    pub fn from_key_file(path: &Path, name: &str, issuer: &str) -> anyhow::Result<Self> {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the issuer key {}", path.display()))?;
        Ok(Self {
            signer: Signer::from_pem(&pem, &format!("{name}:"))?,
            development: None,
            issuer: issuer.to_owned(),
        })
    }

    /// The development keys, when these tokens are made with them.
    pub fn development_keys(&self) -> Option<&DevelopmentKeys> {
        self.development.as_ref()
    }

    /// A token for `subject` in `role`, valid for `ttl`.
    pub fn issue(&self, subject: &str, role: Role, ttl: Duration) -> anyhow::Result<String> {
        Ok(self.signer.issue(&self.issuer, None, subject, role, ttl)?)
    }
}
