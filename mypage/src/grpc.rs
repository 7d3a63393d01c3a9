//! `ssak3.mypage.v1`: customers read their reservations, cleaners their
//! jobs; and the service's one error boundary: [`MyPageError`] → [`ApiError`].

use std::pin::Pin;

use ssak3_common::{
    ApiError,
    auth::{self, Role},
    db::{Database, StorageError},
    ids::{CompanyId, CustomerId, ReservationId},
    live::Feed,
    paging::Page,
    time, watch,
};
use ssak3_proto::mypage::v1::{self as pb, ReservationView, my_page_service_server};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::storage::{self, Owner};

/// Why a my page call failed.
#[derive(Debug, thiserror::Error)]
pub enum MyPageError {
    #[error("my page belongs to customers and cleaners")]
    NotAnOwner,
    #[error("no reservation {0} on your page (yet)")]
    NotFound(ReservationId),
    /// A live stream fell behind what it should carry.
    #[error(transparent)]
    Lagged(#[from] ssak3_common::live::Lagged),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<MyPageError> for ApiError {
    fn from(error: MyPageError) -> Self {
        match error {
            MyPageError::NotAnOwner => ApiError::PermissionDenied(error.to_string()),
            MyPageError::NotFound(_) => ApiError::NotFound(error.to_string()),
            MyPageError::Lagged(_) => ApiError::ResourceExhausted {
                message: error.to_string(),
                retry_after: None,
            },
            MyPageError::Storage(cause) => cause.into(),
        }
    }
}

/// MyPageService over the read model and the watchers' wake-ups (by owner
/// watch key).
#[derive(Debug)]
pub struct MyPageApi {
    db: Database,
    feed: Feed<String>,
}

impl MyPageApi {
    pub fn new(db: Database, feed: Feed<String>) -> Self {
        Self { db, feed }
    }
}

fn owner(caller: &auth::Caller) -> Result<Owner, ApiError> {
    match caller.role {
        Role::Customer => Ok(Owner::Customer(CustomerId::from(caller.subject.clone()))),
        Role::Cleaner => Ok(Owner::Company(CompanyId::from(caller.subject.clone()))),
        Role::Operator | Role::Service => Err(MyPageError::NotAnOwner.into()),
    }
}

fn storage(error: StorageError) -> ApiError {
    MyPageError::from(error).into()
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
            .map_err(storage)?;
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
        let id = ReservationId::parse(&request.into_inner().reservation_id)?;
        let key = id.clone();
        let view = self
            .db
            .read(move |c| storage::find(c, &key))
            .await
            .map_err(storage)?
            .filter(|view| owner.sees(view))
            .ok_or_else(|| ApiError::from(MyPageError::NotFound(id)))?;
        Ok(Response::new(view))
    }

    type WatchMyReservationsStream = ViewStream;

    async fn watch_my_reservations(
        &self,
        request: Request<pb::WatchMyReservationsRequest>,
    ) -> Result<Response<Self::WatchMyReservationsStream>, Status> {
        let owner = owner(&auth::caller(&request)?)?;
        let after = request.into_inner().after_update_time;
        // Subscribe before reading the store (see ssak3_common::watch).
        let live = watch::live_from(
            self.feed
                .subscribe(owner.watch_key())
                .map_err(ApiError::from)?,
            |lagged| Status::from(ApiError::from(MyPageError::from(lagged))),
        );
        let start = match after {
            Some(at) => time::from_timestamp(&at)
                .ok_or_else(|| ApiError::invalid("after_update_time", "is out of range"))?
                .naive_utc(),
            None => {
                let key = owner.watch_key();
                self.db
                    .read(move |c| watch::last_position(c, &key))
                    .await
                    .map_err(storage)?
            }
        };
        let db = self.db.clone();
        let source = watch::Source {
            position: |view: &ReservationView| {
                view.update_time
                    .as_ref()
                    .and_then(time::from_timestamp)
                    .map_or_else(watch::origin, |at| at.naive_utc())
            },
            replay: move |after, limit| {
                let db = db.clone();
                let owner = owner.clone();
                async move {
                    db.read(move |c| storage::changed_after(c, &owner, after, limit))
                        .await
                        .map_err(|e| Status::from(storage(e)))
                }
            },
        };
        Ok(Response::new(Box::pin(watch::resume(live, start, source))))
    }
}
