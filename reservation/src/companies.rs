//! The registry of cleaning companies: operators register them, and a
//! booking may name only a registered one. Registration is permanent, so a
//! company once seen registered is remembered without asking the database
//! again.

use std::{
    collections::HashSet,
    sync::{Arc, PoisonError, RwLock},
};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use ssak3_common::{
    db::{Database, DbConnection, StorageError},
    ids::{CompanyId, Invalid},
    text, time,
};

/// The longest display name.
pub const MAX_DISPLAY_NAME_CHARS: usize = 100;

diesel::table! {
    companies (company_id) {
        company_id -> Text,
        display_name -> Text,
        create_time -> Timestamp,
    }
}

/// A registered company.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Company {
    pub company_id: CompanyId,
    pub display_name: String,
    pub create_time: DateTime<Utc>,
}

/// A company's name as customers see it: one line, 1–100 characters.
pub fn parse_display_name(value: &str) -> Result<String, Invalid> {
    let value = value.trim();
    if value.is_empty() {
        return Err(Invalid::new("display_name", "is required"));
    }
    text::one_line("display_name", value, MAX_DISPLAY_NAME_CHARS)?;
    Ok(value.to_owned())
}

/// Why a registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("company {0} is registered with another display name")]
    Conflict(CompanyId),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = companies)]
struct CompanyRow {
    company_id: String,
    display_name: String,
    create_time: chrono::NaiveDateTime,
}

fn find(conn: &mut DbConnection, id: &CompanyId) -> QueryResult<Option<Company>> {
    companies::table
        .find(id.as_str())
        .select(CompanyRow::as_select())
        .first(conn)
        .optional()?
        .map(|row| {
            Ok(Company {
                company_id: CompanyId::parse(&row.company_id).map_err(|_| {
                    diesel::result::Error::DeserializationError("invalid stored company id".into())
                })?,
                display_name: row.display_name,
                create_time: time::from_db(row.create_time),
            })
        })
        .transpose()
}

fn insert(conn: &mut DbConnection, company: &Company) -> QueryResult<()> {
    diesel::insert_into(companies::table)
        .values(CompanyRow {
            company_id: company.company_id.as_str().to_owned(),
            display_name: company.display_name.clone(),
            create_time: company.create_time.naive_utc(),
        })
        .execute(conn)
        .map(drop)
}

/// The registry over the reservation database.
#[derive(Clone, Debug)]
pub struct Companies {
    db: Database,
    known: Arc<RwLock<HashSet<CompanyId>>>,
}

impl Companies {
    pub fn new(db: Database) -> Self {
        Self {
            db,
            known: Arc::default(),
        }
    }

    /// Registers a company; the same registration again returns it as it is.
    pub async fn register(
        &self,
        company_id: CompanyId,
        display_name: String,
    ) -> Result<Company, RegistryError> {
        let wanted = Company {
            company_id: company_id.clone(),
            display_name,
            create_time: time::now(),
        };
        let key = company_id.clone();
        let stored = self
            .db
            .insert_or_find(wanted.clone(), insert, move |c| find(c, &key))
            .await?;
        if stored.display_name != wanted.display_name {
            return Err(RegistryError::Conflict(company_id));
        }
        self.remember(&company_id);
        Ok(stored)
    }

    /// True when `company_id` may be booked.
    pub async fn is_registered(&self, company_id: &CompanyId) -> Result<bool, StorageError> {
        if self
            .known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(company_id)
        {
            return Ok(true);
        }
        let key = company_id.clone();
        let found = self.db.read(move |c| find(c, &key)).await?.is_some();
        if found {
            self.remember(company_id);
        }
        Ok(found)
    }

    fn remember(&self, company_id: &CompanyId) {
        self.known
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(company_id.clone());
    }
}
