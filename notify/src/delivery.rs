//! Delivering stored notifications: through every configured [`Notifier`]
//! (the log always, a webhook when configured), retried with backoff until
//! delivered or out of attempts; each attempt is recorded on the row.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use ssak3_common::{config::NotifyConfig, db::Database, metrics::Metrics, time};
use tokio::sync::{Notify, watch};

use crate::storage::{self, Notification};

/// The future a notifier returns: Ok when the recipient's channel accepted it.
pub type DeliveryFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// A channel that notifications reach people through.
pub trait Notifier: Send + Sync + 'static {
    fn deliver<'a>(&'a self, notification: &'a Notification) -> DeliveryFuture<'a>;
}

/// Writes each notification to the service log.
#[derive(Debug, Default)]
pub struct LogNotifier;

impl Notifier for LogNotifier {
    fn deliver<'a>(&'a self, n: &'a Notification) -> DeliveryFuture<'a> {
        tracing::info!(
            notification_id = %n.notification_id,
            recipient = %n.recipient_id,
            kind = %n.kind,
            reservation_id = %n.reservation_id,
            message = %n.message,
            "notification"
        );
        Box::pin(async { Ok(()) })
    }
}

/// POSTs each notification as JSON to a URL; any 2xx answer is delivery.
pub struct WebhookNotifier {
    url: hyper::Uri,
    timeout: Duration,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookNotifier")
            .field("url", &self.url)
            .finish()
    }
}

impl WebhookNotifier {
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let url: hyper::Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("notify.webhook_url {url:?} is not a URL: {e}"))?;
        anyhow::ensure!(
            url.scheme_str() == Some("http"),
            "notify.webhook_url must be an http:// URL (TLS is terminated by the mesh)"
        );
        Ok(Self {
            url,
            timeout,
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    async fn post(&self, n: &Notification) -> Result<(), String> {
        let body = serde_json::json!({
            "notification_id": n.notification_id,
            "recipient_id": n.recipient_id,
            "kind": n.kind,
            "reservation_id": n.reservation_id,
            "message": n.message,
            "create_time": n.create_time.and_utc().to_rfc3339(),
        });
        let request = hyper::Request::post(self.url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", &n.notification_id)
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(self.timeout, self.client.request(request))
            .await
            .map_err(|_| format!("webhook timed out after {:?}", self.timeout))?
            .map_err(|e| format!("webhook unreachable: {e}"))?;
        let status = response.status();
        let _ = response.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("webhook answered {status}"))
        }
    }
}

impl Notifier for WebhookNotifier {
    fn deliver<'a>(&'a self, n: &'a Notification) -> DeliveryFuture<'a> {
        Box::pin(self.post(n))
    }
}

/// The notifiers the configuration asks for.
pub fn from_config(config: &NotifyConfig) -> anyhow::Result<Vec<Arc<dyn Notifier>>> {
    let mut notifiers: Vec<Arc<dyn Notifier>> = vec![Arc::new(LogNotifier)];
    if let Some(url) = &config.webhook_url {
        notifiers.push(Arc::new(WebhookNotifier::new(
            url,
            Duration::from_millis(config.webhook_timeout_ms),
        )?));
    }
    Ok(notifiers)
}

/// Delivers pending notifications until stopped.
pub struct Deliverer {
    db: Database,
    notifiers: Vec<Arc<dyn Notifier>>,
    config: NotifyConfig,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer").field("db", &self.db).finish()
    }
}

/// How often the deliverer looks for due retries when nothing wakes it.
const POLL: Duration = Duration::from_millis(250);

impl Deliverer {
    pub fn new(
        db: Database,
        notifiers: Vec<Arc<dyn Notifier>>,
        config: &NotifyConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            db,
            notifiers,
            config: config.clone(),
            wake: Arc::new(Notify::new()),
            metrics,
        }
    }

    /// Called when new notifications are stored.
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            match self.deliver_due().await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "notification delivery failed")
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn deliver_due(&self) -> anyhow::Result<usize> {
        let due = self.db.read(|c| storage::due(c, 32)).await?;
        let count = due.len();
        let mut delivered = Vec::with_capacity(count);
        for notification in due {
            let mut failure = None;
            for notifier in &self.notifiers {
                if let Err(error) = notifier.deliver(&notification).await {
                    failure = Some(error);
                    break;
                }
            }
            let Some(error) = failure else {
                self.metrics.notification("delivered");
                delivered.push(notification.notification_id);
                continue;
            };
            let attempt = u32::try_from(notification.attempts).unwrap_or(0) + 1;
            let (state, retry_at) = if attempt >= self.config.max_attempts {
                (storage::FAILED, time::now())
            } else {
                let delay = self.config.backoff(attempt);
                let delay = chrono::TimeDelta::from_std(delay).unwrap_or(chrono::TimeDelta::MAX);
                (storage::PENDING, time::now() + delay)
            };
            self.metrics.notification(if state == storage::FAILED {
                "failed"
            } else {
                "retry"
            });
            tracing::warn!(notification_id = %notification.notification_id, attempt, %error, state,
                "notification not delivered");
            let id = notification.notification_id.clone();
            self.db
                .write(move |c| {
                    storage::record_attempt(c, &id, state, retry_at.naive_utc(), Some(error))
                })
                .await?;
        }
        if !delivered.is_empty() {
            // One statement for the batch's successes.
            self.db
                .write(move |c| storage::record_delivered(c, &delivered))
                .await?;
        }
        Ok(count)
    }
}
