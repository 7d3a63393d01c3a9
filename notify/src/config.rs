//! The notify service's own settings (`SSAK3_NOTIFY__WEBHOOK_URL`, …).

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::domain::{Recipient, RetryPolicy};

/// What only the notify service reads.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// How notifications are delivered.
    pub notify: DeliveryConfig,
}

/// Notification delivery: each notification is logged (ids only) and POSTed
/// to the webhook endpoint that serves its recipient, if one does.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Shorthand for an endpoint named `default` serving every recipient.
    pub webhook_url: Option<String>,
    /// Its signing secret (`whsec_…`), or a file holding it.
    pub webhook_secret: Option<String>,
    pub webhook_secret_file: Option<PathBuf>,
    /// Named endpoints (`SSAK3_NOTIFY__WEBHOOKS__<NAME>__URL`, `…__SECRET`,
    /// `…__RECIPIENTS`), each serving the recipients it names.
    pub webhooks: BTreeMap<String, EndpointConfig>,
    /// Certificates (PEM) trusted for https:// endpoints besides the public
    /// roots built in, e.g. a company's own CA.
    pub webhook_ca_file: Option<PathBuf>,
    pub webhook_timeout_ms: u64,
    /// Deliveries in flight to one endpoint at once (per replica): a slow or
    /// failing endpoint holds up only its own.
    pub webhook_concurrency: usize,
    /// Delivery attempts before a notification is marked FAILED.
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// How long a replica's claim on a delivery lasts: a delivery claimed by
    /// a replica that died is taken by another after this. Longer than the
    /// timeout, so that a live replica's claim never runs out mid-request.
    pub claim_ms: u64,
    /// Also log each notification's text (it holds customers' addresses) at
    /// DEBUG; off unless an operator needs it.
    pub log_messages: bool,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            webhook_url: None,
            webhook_secret: None,
            webhook_secret_file: None,
            webhooks: BTreeMap::new(),
            webhook_ca_file: None,
            webhook_timeout_ms: 2_000,
            webhook_concurrency: 8,
            max_attempts: 8,
            retry_base_ms: 200,
            retry_max_ms: 30_000,
            claim_ms: 30_000,
            log_messages: false,
        }
    }
}

/// One webhook endpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointConfig {
    pub url: String,
    /// The signing secret (`whsec_` and base64, as Standard Webhooks has it).
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    /// Whom it serves: `customer`, `cleaner`, `customer:<id>`,
    /// `cleaner:<company id>`, or `*` (the default). A recipient goes to the
    /// endpoint naming it most precisely.
    pub recipients: Vec<String>,
}

/// An endpoint as delivery uses it: checked, its secret read.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub name: String,
    pub url: String,
    pub secret: String,
    pub recipients: Vec<Selector>,
}

/// Which recipients an endpoint serves.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Selector {
    Everyone,
    Role(&'static str),
    One(&'static str, String),
}

impl Selector {
    fn parse(text: &str) -> Result<Self, String> {
        let role = |name: &str| match name {
            "customer" => Ok("customer"),
            "cleaner" => Ok("cleaner"),
            other => Err(format!("`{other}` is not a role: use customer or cleaner")),
        };
        match text.trim().split_once(':') {
            None if text.trim() == "*" => Ok(Self::Everyone),
            None => role(text.trim()).map(Self::Role),
            Some((name, id)) if !id.is_empty() => Ok(Self::One(role(name)?, id.to_owned())),
            Some(_) => Err(format!("`{text}` names no one after the colon")),
        }
    }

    /// How precisely this selector names `recipient`; None if it does not.
    pub fn precision(&self, recipient: &Recipient) -> Option<u8> {
        let role = match recipient {
            Recipient::Customer(_) => "customer",
            Recipient::Company(_) => "cleaner",
        };
        match self {
            Self::Everyone => Some(0),
            Self::Role(r) => (*r == role).then_some(1),
            Self::One(r, id) => (*r == role && id == recipient.id()).then_some(2),
        }
    }
}

impl DeliveryConfig {
    /// How failed deliveries are retried.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            base: Duration::from_millis(self.retry_base_ms),
            max: Duration::from_millis(self.retry_max_ms),
        }
    }

    /// The configured endpoints, checked: each has a URL and a secret, and
    /// no two serve the same recipients.
    pub fn endpoints(&self) -> anyhow::Result<Vec<Endpoint>> {
        let mut configured: Vec<(String, EndpointConfig)> = self
            .webhooks
            .iter()
            .map(|(name, endpoint)| (name.clone(), endpoint.clone()))
            .collect();
        if let Some(url) = &self.webhook_url {
            anyhow::ensure!(
                !self.webhooks.contains_key("default"),
                "notify.webhook_url and notify.webhooks.default both name the default endpoint"
            );
            configured.push((
                "default".into(),
                EndpointConfig {
                    url: url.clone(),
                    secret: self.webhook_secret.clone(),
                    secret_file: self.webhook_secret_file.clone(),
                    recipients: Vec::new(),
                },
            ));
        }
        let mut endpoints = Vec::new();
        let mut served: BTreeMap<Selector, String> = BTreeMap::new();
        for (name, endpoint) in configured {
            let setting = if name == "default" && self.webhook_url.is_some() {
                "notify.webhook_url".to_owned()
            } else {
                format!("notify.webhooks.{name}")
            };
            anyhow::ensure!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                "{setting}: an endpoint's name is letters, digits, `_` and `-`"
            );
            let url: hyper::Uri = endpoint
                .url
                .parse()
                .map_err(|e| anyhow::anyhow!("{setting}: {:?} is not a URL: {e}", endpoint.url))?;
            anyhow::ensure!(
                matches!(url.scheme_str(), Some("http" | "https")) && url.host().is_some(),
                "{setting}: {:?} must be an http:// or https:// URL",
                endpoint.url
            );
            let secret = match (&endpoint.secret, &endpoint.secret_file) {
                (Some(secret), None) => secret.trim().to_owned(),
                (None, Some(file)) => std::fs::read_to_string(file)
                    .map_err(|e| {
                        anyhow::anyhow!("{setting}: cannot read the secret file {file:?}: {e}")
                    })?
                    .trim()
                    .to_owned(),
                (Some(_), Some(_)) => {
                    anyhow::bail!("{setting}: give the secret or a secret file, not both")
                }
                (None, None) => anyhow::bail!(
                    "{setting}: a signing secret is required (`whsec_` and base64 of 24 to 64 \
                     random bytes), so that the endpoint can tell deliveries are ours"
                ),
            };
            let key_len = {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(secret.strip_prefix("whsec_").unwrap_or(&secret))
                    .map_err(|_| {
                        anyhow::anyhow!("{setting}: the secret is not `whsec_` and base64")
                    })?
                    .len()
            };
            anyhow::ensure!(
                (24..=64).contains(&key_len),
                "{setting}: the secret must hold 24 to 64 random bytes, not {key_len}"
            );
            let recipients = if endpoint.recipients.is_empty() {
                vec![Selector::Everyone]
            } else {
                endpoint
                    .recipients
                    .iter()
                    .map(|text| {
                        Selector::parse(text).map_err(|e| anyhow::anyhow!("{setting}: {e}"))
                    })
                    .collect::<anyhow::Result<_>>()?
            };
            for selector in &recipients {
                if let Some(other) = served.insert(selector.clone(), name.clone()) {
                    anyhow::bail!(
                        "{setting}: endpoints {other} and {name} both serve {selector:?}; \
                         each recipient goes to one endpoint"
                    );
                }
            }
            endpoints.push(Endpoint {
                name,
                url: endpoint.url,
                secret,
                recipients,
            });
        }
        Ok(endpoints)
    }
}

/// The endpoint serving `recipient`: the one naming it most precisely.
pub fn route<'a>(endpoints: &'a [Endpoint], recipient: &Recipient) -> Option<&'a Endpoint> {
    endpoints
        .iter()
        .filter_map(|endpoint| {
            endpoint
                .recipients
                .iter()
                .filter_map(|selector| selector.precision(recipient))
                .max()
                .map(|precision| (precision, endpoint))
        })
        .max_by_key(|(precision, _)| *precision)
        .map(|(_, endpoint)| endpoint)
}

#[cfg(test)]
mod tests {
    use ssak3_common::ids::{CompanyId, CustomerId};

    use super::*;

    const SECRET: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    fn endpoint(url: &str, recipients: &[&str]) -> EndpointConfig {
        EndpointConfig {
            url: url.into(),
            secret: Some(SECRET.into()),
            secret_file: None,
            recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    fn company(id: &str) -> Recipient {
        Recipient::Company(CompanyId::parse(id).expect("an id"))
    }

    fn customer(id: &str) -> Recipient {
        Recipient::Customer(CustomerId::parse(id).expect("an id"))
    }

    #[test]
    fn a_recipient_goes_to_the_endpoint_naming_it_most_precisely() -> anyhow::Result<()> {
        let config = DeliveryConfig {
            webhooks: [
                (
                    "acme".into(),
                    endpoint("https://acme.example/hook", &["cleaner:acme-cleaning"]),
                ),
                (
                    "companies".into(),
                    endpoint("https://partners.example/hook", &["cleaner"]),
                ),
                ("app".into(), endpoint("http://app.internal/hook", &["*"])),
            ]
            .into(),
            ..DeliveryConfig::default()
        };
        let endpoints = config.endpoints()?;
        let name = |r: &Recipient| route(&endpoints, r).map(|e| e.name.clone());
        assert_eq!(name(&company("acme-cleaning")).as_deref(), Some("acme"));
        assert_eq!(name(&company("other-co")).as_deref(), Some("companies"));
        assert_eq!(name(&customer("alice")).as_deref(), Some("app"));
        Ok(())
    }

    #[test]
    fn without_endpoints_nothing_is_routed() -> anyhow::Result<()> {
        let endpoints = DeliveryConfig::default().endpoints()?;
        assert!(route(&endpoints, &customer("alice")).is_none());
        Ok(())
    }

    #[test]
    fn endpoints_that_cannot_work_are_refused_by_name() {
        let refused = |webhooks: Vec<(&str, EndpointConfig)>| {
            DeliveryConfig {
                webhooks: webhooks
                    .into_iter()
                    .map(|(name, e)| (name.to_owned(), e))
                    .collect(),
                ..DeliveryConfig::default()
            }
            .endpoints()
            .expect_err("refused")
            .to_string()
        };
        let unsigned = EndpointConfig {
            secret: None,
            ..endpoint("https://a.example/", &[])
        };
        assert!(refused(vec![("a", unsigned)]).contains("notify.webhooks.a: a signing secret"));
        let weak = EndpointConfig {
            secret: Some("whsec_c2hvcnQ=".into()),
            ..endpoint("https://a.example/", &[])
        };
        assert!(refused(vec![("a", weak)]).contains("24 to 64 random bytes"));
        assert!(refused(vec![("a", endpoint("ftp://a.example/", &[]))]).contains("http://"));
        assert!(
            refused(vec![("a", endpoint("https://a.example/", &["plumber"]))])
                .contains("not a role")
        );
        assert!(
            refused(vec![
                ("a", endpoint("https://a.example/", &["cleaner"])),
                ("b", endpoint("https://b.example/", &["cleaner"])),
            ])
            .contains("both serve")
        );
    }
}
