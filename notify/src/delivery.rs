//! Delivering stored notifications to webhook endpoints: signed, retried
//! with backoff until delivered or out of attempts, each attempt recorded on
//! the row.
//!
//! Each notification goes to the endpoint serving its recipient (chosen
//! when it is stored). Every replica runs a [`Deliverer`]: per endpoint, it
//! claims as many due notifications as it has free slots for that endpoint
//! (`notify.webhook_concurrency`) and POSTs them side by side, so a slow or
//! failing endpoint fills only its own slots. A claim lasts
//! `notify.claim_ms`; the deliveries a replica claimed and never recorded
//! (it died) are taken by another when their claims run out.
//!
//! A POST carries the Standard Webhooks headers — `webhook-id` (the
//! notification id, which stays the same on every retry: the receiver's
//! idempotency key, also sent as `idempotency-key`), `webhook-timestamp` and
//! `webhook-signature` (HMAC-SHA256 with the endpoint's secret) — and the
//! notification as JSON. Any 2xx answer is delivery.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use prometheus_client::metrics::{counter::Counter, family::Family};
use ssak3_common::{
    aggregate::Outcome,
    db::Database,
    http::HttpClient,
    metrics::{Labels, Metrics, labels},
    time,
};
use tokio::{
    sync::{Notify, OwnedSemaphorePermit, Semaphore, watch},
    task::JoinSet,
};

use crate::{
    config::{DeliveryConfig, Endpoint},
    domain::{DeliveryState, Notification, RetryPolicy},
    storage,
};

/// How often the deliverer looks for due retries when nothing wakes it.
const POLL: Duration = Duration::from_millis(250);

/// One endpoint as the deliverer uses it.
struct Target {
    name: String,
    url: hyper::Uri,
    signer: standardwebhooks::Webhook,
    /// Free delivery slots for this endpoint in this replica.
    slots: Arc<Semaphore>,
}

/// Delivers pending notifications until stopped.
pub struct Deliverer {
    db: Database,
    targets: Vec<Arc<Target>>,
    client: HttpClient<Full<Bytes>>,
    policy: RetryPolicy,
    timeout: Duration,
    claim: chrono::TimeDelta,
    wake: Arc<Notify>,
    outcomes: Family<Labels, Counter>,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field(
                "endpoints",
                &self.targets.iter().map(|t| &t.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Deliverer {
    /// A deliverer to `endpoints` (checked by [`DeliveryConfig::endpoints`]).
    pub fn new(
        db: Database,
        endpoints: &[Endpoint],
        config: &DeliveryConfig,
        metrics: &Metrics,
    ) -> anyhow::Result<Self> {
        let targets = endpoints
            .iter()
            .map(|endpoint| {
                Ok(Arc::new(Target {
                    name: endpoint.name.clone(),
                    url: endpoint.url.parse()?,
                    signer: standardwebhooks::Webhook::new(&endpoint.secret)?,
                    slots: Arc::new(Semaphore::new(config.webhook_concurrency.max(1))),
                }))
            })
            .collect::<anyhow::Result<_>>()?;
        let client = match &config.webhook_ca_file {
            None => ssak3_common::http::new_client(),
            Some(file) => {
                let pem = std::fs::read(file).map_err(|e| {
                    anyhow::anyhow!("notify.webhook_ca_file: cannot read {file:?}: {e}")
                })?;
                ssak3_common::http::new_client_trusting(&pem)
                    .map_err(|e| anyhow::anyhow!("notify.webhook_ca_file {file:?}: {e}"))?
            }
        };
        Ok(Self {
            db,
            targets,
            client,
            policy: config.retry_policy(),
            timeout: Duration::from_millis(config.webhook_timeout_ms),
            claim: chrono::TimeDelta::milliseconds(config.claim_ms as i64),
            wake: Arc::new(Notify::new()),
            outcomes: metrics.register(
                "notification_deliveries",
                "Notification delivery attempts, by outcome",
                Family::default(),
            ),
        })
    }

    /// Called when new notifications are stored.
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// Claims and delivers until `stop`, then lets the deliveries in flight finish.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut in_flight = JoinSet::new();
        while !ssak3_common::server::stopping(&stop) {
            if let Err(error) = this.claim_and_start(&mut in_flight).await {
                tracing::warn!(error = %format!("{error:#}"), "notification delivery failed");
            }
            while in_flight.try_join_next().is_some() {}
            tokio::select! {
                _ = this.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.changed() => {}
            }
        }
        // A delivery ends within its timeout; what is not recorded by then
        // is taken by another replica when its claim runs out.
        let _ = tokio::time::timeout(this.timeout * 2, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
    }

    /// For each endpoint with free slots, claims that many due deliveries
    /// and starts them.
    async fn claim_and_start(self: &Arc<Self>, in_flight: &mut JoinSet<()>) -> anyhow::Result<()> {
        for target in &self.targets {
            let free = target.slots.available_permits();
            if free == 0 {
                continue;
            }
            let now = time::now();
            let until = now + self.claim;
            let endpoint = target.name.clone();
            let due = self
                .db
                .write(move |c| {
                    storage::claim_due(
                        c,
                        &endpoint,
                        free as i64,
                        now.naive_utc(),
                        until.naive_utc(),
                    )
                })
                .await?;
            for notification in due {
                let Ok(slot) = Arc::clone(&target.slots).try_acquire_owned() else {
                    break;
                };
                let this = Arc::clone(self);
                let target = Arc::clone(target);
                let claim = until.naive_utc();
                in_flight
                    .spawn(async move { this.deliver(&target, notification, claim, slot).await });
            }
        }
        Ok(())
    }

    /// One attempt under `claim`: POST, record the outcome, free the slot
    /// and look for more.
    async fn deliver(
        &self,
        target: &Target,
        notification: Notification,
        claim: chrono::NaiveDateTime,
        slot: OwnedSemaphorePermit,
    ) {
        let outcome = self.post(target, &notification).await;
        let failure = outcome.as_ref().err().cloned();
        if let Outcome::Move(transition) =
            notification.attempted(outcome, &self.policy, time::now())
        {
            let state = transition.notification.delivery_state;
            match &failure {
                None => self.outcome("delivered"),
                Some(error) => {
                    self.outcome(if state == DeliveryState::Failed {
                        "failed"
                    } else {
                        "retry"
                    });
                    tracing::warn!(notification_id = %notification.notification_id,
                        endpoint = %target.name, attempt = transition.notification.attempts,
                        %error, state = state.as_str(), "notification not delivered");
                }
            }
            match self
                .db
                .write(move |c| storage::apply(c, &transition, claim))
                .await
            {
                Ok(true) => {}
                Ok(false) => tracing::warn!(notification_id = %notification.notification_id,
                    "delivery attempt not recorded: its claim ran out and another replica took it"),
                Err(error) => tracing::warn!(notification_id = %notification.notification_id,
                    %error, "delivery attempt not recorded; it is retried when the claim runs out"),
            }
        }
        drop(slot);
        self.wake.notify_one();
    }

    async fn post(&self, target: &Target, n: &Notification) -> Result<(), String> {
        let body = serde_json::json!({
            "notification_id": n.notification_id,
            "recipient_id": n.recipient.id(),
            "recipient_role": n.recipient.role(),
            "kind": n.kind.as_str(),
            "reservation_id": n.reservation_id.as_str(),
            "message": n.message,
            "create_time": n.create_time.to_rfc3339(),
        })
        .to_string();
        let timestamp = time::now().timestamp();
        let signature = target
            .signer
            .sign(&n.notification_id, timestamp, body.as_bytes())
            .map_err(|e| e.to_string())?;
        let request = hyper::Request::post(target.url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(standardwebhooks::HEADER_WEBHOOK_ID, &n.notification_id)
            .header(standardwebhooks::HEADER_WEBHOOK_TIMESTAMP, timestamp)
            .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
            .header("idempotency-key", &n.notification_id)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("webhook unreachable: {e}"))?;
            let status = response.status();
            // The answer's body is not ours to keep; read it so the connection can be reused.
            let _ = response.into_body().collect().await;
            Ok::<_, String>(status)
        };
        let status = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("webhook timed out after {:?}", self.timeout))??;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("webhook answered {status}"))
        }
    }

    fn outcome(&self, outcome: &str) {
        self.outcomes
            .get_or_create(&labels(&[("outcome", outcome)]))
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use ssak3_common::db::DatabaseUrl;

    use super::*;

    /// A deliverer whose owner is gone without telling it to stop (its stop
    /// signal's sender dropped) ends, rather than claiming in a loop
    /// without pause.
    #[tokio::test]
    async fn a_deliverer_whose_stop_signal_is_gone_ends() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let db = Database::connect(&DatabaseUrl::Sqlite(dir.path().join("notify.db")), 2)?;
        db.migrate(storage::SCHEMA).await?;
        let deliverer = Deliverer::new(db, &[], &DeliveryConfig::default(), &Metrics::new())?;
        let (stop_tx, stop) = watch::channel(false);
        drop(stop_tx);
        tokio::time::timeout(Duration::from_secs(10), deliverer.run(stop))
            .await
            .map_err(|_| anyhow::anyhow!("the deliverer did not end"))?;
        Ok(())
    }
}
