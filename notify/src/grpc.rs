//! `ssak3.notify.v1`: a caller lists and watches their own notifications;
//! and the service's one error boundary: [`NotifyError`] → [`ApiError`].

use std::pin::Pin;

use ssak3_common::{
    ApiError,
    auth::{self, Caller, Role},
    db::{Database, StorageError},
    ids::{CompanyId, CustomerId},
    live::Feed,
    paging::Page,
    time,
    watch::{self, Position},
};
use ssak3_proto::notify::v1::{
    self as pb, notification_service_server, watch_notifications_request::ResumePoint,
};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use crate::{
    domain::{Notification, NotificationKind, Recipient},
    storage,
};

/// Why a notify call failed.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notifications belong to customers and cleaners")]
    NotARecipient,
    #[error("no notification {0} of yours")]
    UnknownResumePoint(String),
    /// A live stream fell behind what it should carry.
    #[error(transparent)]
    Lagged(#[from] ssak3_common::live::Lagged),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<NotifyError> for ApiError {
    fn from(error: NotifyError) -> Self {
        match error {
            NotifyError::NotARecipient => ApiError::PermissionDenied(error.to_string()),
            NotifyError::UnknownResumePoint(_) => ApiError::NotFound(error.to_string()),
            NotifyError::Lagged(_) => ApiError::ResourceExhausted {
                message: error.to_string(),
                retry_after: None,
            },
            NotifyError::Storage(cause) => cause.into(),
        }
    }
}

/// NotificationService over the notifications table and the watchers'
/// wake-ups (by recipient watch key).
#[derive(Debug)]
pub struct NotificationApi {
    db: Database,
    feed: Feed<String>,
}

impl NotificationApi {
    pub fn new(db: Database, feed: Feed<String>) -> Self {
        Self { db, feed }
    }
}

/// The recipient a caller reads as: its role and its id.
fn recipient(caller: &Caller) -> Result<Recipient, NotifyError> {
    match caller.role {
        Role::Customer => Ok(Recipient::Customer(CustomerId::from(
            caller.subject.clone(),
        ))),
        Role::Cleaner => Ok(Recipient::Company(CompanyId::from(caller.subject.clone()))),
        Role::Operator | Role::Service => Err(NotifyError::NotARecipient),
    }
}

type NotificationStream = Pin<Box<dyn Stream<Item = Result<pb::Notification, Status>> + Send>>;

#[tonic::async_trait]
impl notification_service_server::NotificationService for NotificationApi {
    async fn list_notifications(
        &self,
        request: Request<pb::ListNotificationsRequest>,
    ) -> Result<Response<pb::ListNotificationsResponse>, Status> {
        let recipient = recipient(&auth::caller(&request)?).map_err(ApiError::from)?;
        let request = request.into_inner();
        let page = Page::parse(request.page_size, &request.page_token)?;
        let query = page.clone();
        let mut items = self
            .db
            .read(move |c| storage::list(c, &recipient, query.after.as_ref(), query.fetch_limit()))
            .await
            .map_err(|e| ApiError::from(NotifyError::from(e)))?;
        let next_page_token =
            page.finish(&mut items, |n| (n.create_time, n.notification_id.clone()));
        Ok(Response::new(pb::ListNotificationsResponse {
            notifications: items.iter().map(to_proto).collect(),
            next_page_token,
        }))
    }

    type WatchNotificationsStream = NotificationStream;

    async fn watch_notifications(
        &self,
        request: Request<pb::WatchNotificationsRequest>,
    ) -> Result<Response<Self::WatchNotificationsStream>, Status> {
        let recipient = recipient(&auth::caller(&request)?).map_err(ApiError::from)?;
        let resume_point = request.into_inner().resume_point;
        // Subscribe before reading the store (see ssak3_common::watch).
        let live = watch::live_from(
            self.feed
                .subscribe(recipient.watch_key())
                .map_err(ApiError::from)?,
            |lagged| Status::from(ApiError::from(NotifyError::from(lagged))),
        );
        let start = self.start(&recipient, resume_point).await?;
        let db = self.db.clone();
        let source = watch::Source {
            position: |n: &Notification| n.create_time.naive_utc(),
            replay: move |after, limit| {
                let db = db.clone();
                let recipient = recipient.clone();
                async move {
                    db.read(move |c| storage::stored_after(c, &recipient, after, limit))
                        .await
                        .map_err(|e| Status::from(ApiError::from(NotifyError::from(e))))
                }
            },
        };
        let stream = watch::resume(live, start, source).map(|item| item.map(|n| to_proto(&n)));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The longest notification id accepted as a resume point.
const MAX_ID_LEN: usize = 64;

impl NotificationApi {
    /// The position a watch starts after.
    async fn start(
        &self,
        recipient: &Recipient,
        resume_point: Option<ResumePoint>,
    ) -> Result<Position, ApiError> {
        let recipient = recipient.clone();
        let storage_error = |e| ApiError::from(NotifyError::from(e));
        match resume_point {
            None => self
                .db
                .read(move |c| watch::last_position(c, &recipient.watch_key()))
                .await
                .map_err(storage_error),
            Some(ResumePoint::StartTime(at)) => {
                let at = time::from_timestamp(&at)
                    .ok_or_else(|| ApiError::invalid("start_time", "is out of range"))?;
                // Positions are whole microseconds: after the one before the
                // first at or after `at`.
                let micros =
                    at.timestamp_micros() + i64::from(at.timestamp_subsec_nanos() % 1_000 != 0);
                Ok(chrono::DateTime::from_timestamp_micros(micros - 1)
                    .ok_or_else(|| ApiError::invalid("start_time", "is out of range"))?
                    .naive_utc())
            }
            Some(ResumePoint::AfterNotificationId(id)) => {
                if id.is_empty() || id.len() > MAX_ID_LEN {
                    return Err(ApiError::invalid(
                        "after_notification_id",
                        format!("must be a notification id of 1 to {MAX_ID_LEN} characters"),
                    ));
                }
                let key = id.clone();
                self.db
                    .read(move |c| storage::find(c, &key))
                    .await
                    .map_err(storage_error)?
                    .filter(|n| n.recipient == recipient)
                    .map(|n| n.create_time.naive_utc())
                    .ok_or_else(|| NotifyError::UnknownResumePoint(id).into())
            }
        }
    }
}

pub fn to_proto(n: &Notification) -> pb::Notification {
    let kind = match n.kind {
        NotificationKind::PaymentApproved => pb::NotificationKind::PaymentApproved,
        NotificationKind::PaymentCancelled => pb::NotificationKind::PaymentCancelled,
        NotificationKind::CleaningCompleted => pb::NotificationKind::CleaningCompleted,
    };
    pb::Notification {
        notification_id: n.notification_id.clone(),
        recipient_id: n.recipient.id().to_owned(),
        kind: kind as i32,
        reservation_id: n.reservation_id.as_str().to_owned(),
        message: n.message.clone(),
        create_time: Some(time::to_timestamp(n.create_time)),
    }
}
