//! `ssak3.mypage.v1`: customers read their reservations, cleaners their jobs.

use std::pin::Pin;

use ssak3_common::{ApiError, auth, db::Database, paging::Page, time};
use ssak3_proto::mypage::v1::{self as pb, ReservationView, my_page_service_server};
use tokio::sync::broadcast;
use tokio_stream::{Stream, StreamExt as _, wrappers::BroadcastStream};
use tonic::{Request, Response, Status};

use crate::storage::{self, Owner};

/// MyPageService over the read model and its live feed.
#[derive(Debug)]
pub struct MyPageApi {
    db: Database,
    feed: broadcast::Sender<ReservationView>,
}

impl MyPageApi {
    pub fn new(db: Database, feed: broadcast::Sender<ReservationView>) -> Self {
        Self { db, feed }
    }
}

fn owner(caller: &auth::Caller) -> Result<Owner, ApiError> {
    match caller.role {
        auth::Role::Customer => Ok(Owner::Customer(caller.subject.clone())),
        auth::Role::Cleaner => Ok(Owner::Cleaner(caller.subject.clone())),
        auth::Role::Service => Err(ApiError::PermissionDenied(
            "my page belongs to customers and cleaners".into(),
        )),
    }
}

fn internal(error: impl Into<anyhow::Error>) -> ApiError {
    ApiError::Internal(error.into())
}

type ViewStream = Pin<Box<dyn Stream<Item = Result<ReservationView, Status>> + Send>>;

#[tonic::async_trait]
impl my_page_service_server::MyPageService for MyPageApi {
    async fn list_my_reservations(
        &self,
        request: Request<pb::ListMyReservationsRequest>,
    ) -> Result<Response<pb::ListMyReservationsResponse>, Status> {
        let owner = owner(&auth::caller(&request)?)?;
        let request = request.into_inner();
        let page = Page::parse(request.page_size, &request.page_token)?;
        let query = page.clone();
        let mut rows = self
            .db
            .read(move |c| storage::list(c, &owner, query.after.as_ref(), query.fetch_limit()))
            .await
            .map_err(internal)?;
        let next_page_token = page.finish(&mut rows, |(view, sort_time)| {
            (time::from_db(*sort_time), view.reservation_id.clone())
        });
        Ok(Response::new(pb::ListMyReservationsResponse {
            reservations: rows.into_iter().map(|(view, _)| view).collect(),
            next_page_token,
        }))
    }

    async fn get_my_reservation(
        &self,
        request: Request<pb::GetMyReservationRequest>,
    ) -> Result<Response<ReservationView>, Status> {
        let owner = owner(&auth::caller(&request)?)?;
        let id = request.into_inner().reservation_id;
        if id.trim().is_empty() {
            return Err(ApiError::invalid("reservation_id", "is required").into());
        }
        let key = id.clone();
        let view = self
            .db
            .read(move |c| storage::find(c, &key))
            .await
            .map_err(internal)?
            .filter(|view| owner.sees(view))
            .ok_or_else(|| ApiError::NotFound(format!("no reservation {id} on your page (yet)")))?;
        Ok(Response::new(view))
    }

    type WatchMyReservationsStream = ViewStream;

    async fn watch_my_reservations(
        &self,
        request: Request<pb::WatchMyReservationsRequest>,
    ) -> Result<Response<Self::WatchMyReservationsStream>, Status> {
        let owner = owner(&auth::caller(&request)?)?;
        let stream =
            BroadcastStream::new(self.feed.subscribe()).filter_map(move |item| match item {
                Ok(view) if owner.sees(&view) => Some(Ok(view)),
                Ok(_) => None,
                Err(lagged) => Some(Err(Status::resource_exhausted(format!(
                    "{lagged}; list your reservations to catch up, then watch again"
                )))),
            });
        Ok(Response::new(Box::pin(stream)))
    }
}
