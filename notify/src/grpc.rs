//! `ssak3.notify.v1`: a caller lists and watches their own notifications.

use std::pin::Pin;

use ssak3_common::{ApiError, auth, db::Database, paging::Page, time};
use ssak3_proto::notify::v1::{self as pb, notification_service_server};
use tokio::sync::broadcast;
use tokio_stream::{Stream, StreamExt as _, wrappers::BroadcastStream};
use tonic::{Request, Response, Status};

use crate::storage::{self, Notification};

/// NotificationService over the notifications table and the live feed.
#[derive(Debug)]
pub struct NotificationApi {
    db: Database,
    feed: broadcast::Sender<Notification>,
}

impl NotificationApi {
    pub fn new(db: Database, feed: broadcast::Sender<Notification>) -> Self {
        Self { db, feed }
    }
}

fn recipient(caller: &auth::Caller) -> Result<String, ApiError> {
    match caller.role {
        auth::Role::Customer | auth::Role::Cleaner => Ok(caller.subject.clone()),
        auth::Role::Service => Err(ApiError::PermissionDenied(
            "notifications belong to customers and cleaners".into(),
        )),
    }
}

type NotificationStream = Pin<Box<dyn Stream<Item = Result<pb::Notification, Status>> + Send>>;

#[tonic::async_trait]
impl notification_service_server::NotificationService for NotificationApi {
    async fn list_notifications(
        &self,
        request: Request<pb::ListNotificationsRequest>,
    ) -> Result<Response<pb::ListNotificationsResponse>, Status> {
        let recipient = recipient(&auth::caller(&request)?)?;
        let request = request.into_inner();
        let page = Page::parse(request.page_size, &request.page_token)?;
        let query = page.clone();
        let mut items = self
            .db
            .read(move |c| storage::list(c, &recipient, query.after.as_ref(), query.fetch_limit()))
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        let next_page_token = page.finish(&mut items, |n| {
            (time::from_db(n.create_time), n.notification_id.clone())
        });
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
        let recipient = recipient(&auth::caller(&request)?)?;
        let stream =
            BroadcastStream::new(self.feed.subscribe()).filter_map(move |item| match item {
                Ok(n) if n.recipient_id == recipient => Some(Ok(to_proto(&n))),
                Ok(_) => None,
                Err(lagged) => Some(Err(Status::resource_exhausted(format!(
                    "{lagged}; list the notifications to catch up, then watch again"
                )))),
            });
        Ok(Response::new(Box::pin(stream)))
    }
}

pub fn to_proto(n: &Notification) -> pb::Notification {
    let kind = match n.kind.as_str() {
        "PAYMENT_APPROVED" => pb::NotificationKind::PaymentApproved,
        "PAYMENT_CANCELLED" => pb::NotificationKind::PaymentCancelled,
        "CLEANING_COMPLETED" => pb::NotificationKind::CleaningCompleted,
        _ => pb::NotificationKind::Unspecified,
    };
    pb::Notification {
        notification_id: n.notification_id.clone(),
        recipient_id: n.recipient_id.clone(),
        kind: kind as i32,
        reservation_id: n.reservation_id.clone(),
        message: n.message.clone(),
        create_time: Some(time::to_timestamp(time::from_db(n.create_time))),
    }
}
