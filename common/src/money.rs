//! Amounts of money: integer minor units of an ISO 4217 currency (KRW has no
//! minor unit), the one representation every service uses.

use crate::ids::Invalid;

/// The most a single booking may cost, in minor units.
pub const MAX_UNITS: i64 = 100_000_000;

/// An amount in integer minor units of an ISO 4217 currency.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Money {
    currency_code: String,
    units: i64,
}

impl Money {
    /// An amount in Korean won.
    pub fn krw(units: i64) -> Self {
        Self {
            currency_code: "KRW".into(),
            units,
        }
    }

    /// Parses an amount received from a caller (`field` names it in errors):
    /// a three-letter upper-case currency code and 1..=[`MAX_UNITS`] units.
    pub fn parse(field: &'static str, currency_code: &str, units: i64) -> Result<Self, Invalid> {
        if currency_code.len() != 3 || !currency_code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Invalid::new(
                field,
                "currency_code must be an ISO 4217 code such as KRW",
            ));
        }
        if !(1..=MAX_UNITS).contains(&units) {
            return Err(Invalid::new(
                field,
                format!("units must be between 1 and {MAX_UNITS}"),
            ));
        }
        Ok(Self {
            currency_code: currency_code.to_owned(),
            units,
        })
    }

    /// An amount read back from a service's own database (it was parsed on the way in).
    pub fn stored(currency_code: String, units: i64) -> Self {
        Self {
            currency_code,
            units,
        }
    }

    pub fn currency_code(&self) -> &str {
        &self.currency_code
    }

    pub fn units(&self) -> i64 {
        self.units
    }
}

/// The wire form, `ssak3.type.v1.Money`, shared by every API and event.
impl From<&Money> for ssak3_proto::r#type::v1::Money {
    fn from(money: &Money) -> Self {
        Self {
            currency_code: money.currency_code.clone(),
            units: money.units,
        }
    }
}

impl std::fmt::Display for Money {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.units, self.currency_code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_from_callers_are_bounded_and_in_a_currency() {
        assert_eq!(
            Money::parse("amount", "KRW", 50_000),
            Ok(Money::krw(50_000))
        );
        for (code, units) in [("krw", 1), ("KR", 1), ("KRWX", 1), ("KRW", 0), ("KRW", -5)] {
            assert!(
                Money::parse("amount", code, units).is_err(),
                "{code} {units}"
            );
        }
        assert!(Money::parse("amount", "KRW", MAX_UNITS + 1).is_err());
        assert_eq!(Money::krw(90_000).to_string(), "90000 KRW");
    }
}
