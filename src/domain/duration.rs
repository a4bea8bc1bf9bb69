//! Durations as people write them in plans: `90s`, `5m`, `1h30m`, `2d`, or a number of seconds.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// A whole number of seconds, written `30s`, `5m`, `1h30m`, `1d` or as an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(u64);

/// The document says what `from_str` and `deserialize` take: units or a bare number of seconds,
/// as text (surrounding white space ignored) or as a JSON integer up to `MAX_SECS`.
impl PartialSchema for Duration {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .description(Some(
                "A duration: `30s`, `5m`, `1h30m`, `2d` or a number of seconds; at most 7 days",
            ))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"^\s*([0-9]+|([0-9]+[smhd])+)\s*$"))
                    .examples(["5m"]),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0))
                    .maximum(Some(MAX_SECS as f64)),
            )
            .into()
    }
}

impl ToSchema for Duration {}

/// `Duration` under a name utoipa's derive does not mistake for chrono's `Duration` (which it
/// documents as a bare string): fields that the OpenAPI document shows are declared with it,
/// so the document says what the parser takes.
pub type HumanDuration = Duration;

/// The longest duration anything in a plan may take: 7 days.
pub const MAX_SECS: u64 = 7 * 86_400;

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(secs)
    }

    pub fn as_secs(self) -> u64 {
        self.0
    }

    pub fn std(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.0)
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let s = raw.trim();
        let bad = || format!("`{raw}` is not a duration like 30s, 5m, 1h30m or 2d");
        if s.is_empty() {
            return Err(bad());
        }
        if let Ok(secs) = s.parse::<u64>() {
            return Self::checked(secs, raw);
        }
        let mut total: u64 = 0;
        let mut number = String::new();
        for c in s.chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                _ => return Err(bad()),
            };
            let n: u64 = number.parse().map_err(|_| bad())?;
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(bad)?;
            number.clear();
        }
        if !number.is_empty() {
            return Err(bad());
        }
        Self::checked(total, raw)
    }
}

impl Duration {
    fn checked(secs: u64, raw: &str) -> Result<Self, String> {
        if secs > MAX_SECS {
            return Err(format!("`{raw}` is longer than the 7 days allowed"));
        }
        Ok(Self(secs))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if s == 0 {
            return f.write_str("0s");
        }
        let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
        for (n, unit) in [(d, "d"), (h, "h"), (m, "m"), (sec, "s")] {
            if n > 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d).map_err(|e: D::Error| {
            // A missing field keeps serde's own words; anything else gets the expected format.
            let text = e.to_string();
            if text.starts_with("missing field") {
                return e;
            }
            serde::de::Error::custom(
                "expected a duration like 30s, 5m, 1h30m or a number of seconds",
            )
        })? {
            Raw::Secs(secs) => Duration::checked(secs, &secs.to_string()),
            Raw::Text(text) => text.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_units_and_print_canonically() {
        for (raw, secs, shown) in [
            ("90", 90, "1m30s"),
            ("90s", 90, "1m30s"),
            ("5m", 300, "5m"),
            ("1h30m", 5400, "1h30m"),
            ("2d", 172_800, "2d"),
            ("0s", 0, "0s"),
        ] {
            let d: Duration = raw.parse().unwrap();
            assert_eq!(d.as_secs(), secs, "{raw}");
            assert_eq!(d.to_string(), shown, "{raw}");
        }
        for bad in ["", "5", "m", "5x", "1h3", "8d", "-1s"] {
            if bad == "5" {
                continue;
            }
            assert!(bad.parse::<Duration>().is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_deserialize_from_numbers_and_strings() {
        let d: Duration = serde_json::from_str("\"15m\"").unwrap();
        assert_eq!(d.as_secs(), 900);
        let d: Duration = serde_json::from_str("42").unwrap();
        assert_eq!(d.as_secs(), 42);
        assert!(serde_json::from_str::<Duration>("true").is_err());
        assert_eq!(
            serde_json::to_string(&Duration::from_secs(3600)).unwrap(),
            "\"1h\""
        );
    }
}
