//! Every service's settings, read once by the process that may run any of
//! them: the shared [`Config`] and each service's own section, from the same
//! sources. A key that no section knows is refused by name.

use ssak3_common::{
    config::{self, Config},
    events::Topology,
};

/// The shared settings and each service's own.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub common: Config,
    pub reservation: ssak3_reservation::Settings,
    pub payment: ssak3_payment::Settings,
    pub notify: ssak3_notify::Settings,
}

impl Settings {
    /// Reads defaults, the `SSAK3_CONFIG` file and `SSAK3_*` variables.
    pub fn load() -> anyhow::Result<Self> {
        let figment = config::figment();
        config::refuse_unknown_keys(
            &figment,
            &[
                config::keys_of::<Config>()?,
                config::keys_of::<ssak3_reservation::Settings>()?,
                config::keys_of::<ssak3_payment::Settings>()?,
                config::keys_of::<ssak3_notify::Settings>()?,
            ],
        )?;
        Ok(Self {
            common: config::extract(&figment)?,
            reservation: config::extract(&figment)?,
            payment: config::extract(&figment)?,
            notify: config::extract(&figment)?,
        })
    }
}

/// Every consuming service's queue: what each transport declares.
pub fn topology() -> Topology {
    Topology::new(vec![
        ssak3_payment::SUBSCRIPTION,
        ssak3_notify::SUBSCRIPTION,
        ssak3_mypage::SUBSCRIPTION,
    ])
}
