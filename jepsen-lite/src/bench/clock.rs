//! Wall-clock times: now, the machine line's date, and the times raftshare's events carry.

use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub(super) fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Unix seconds as `2025-11-25T16:24:39Z` (empty for a time RFC 3339 cannot write,
/// before year 0 or after 9999).
pub(super) fn utc_rfc3339(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs).ok().and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_default()
}

/// Milliseconds since the epoch of an RFC 3339 time as raftshare prints them
/// (`2025-11-25T16:24:39.123Z`, or with a `+hh:mm` offset); None if it is not one.
pub(super) fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(utc_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_rfc3339(1_764_087_879), "2025-11-25T16:24:39Z");
        assert_eq!(utc_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(parse_rfc3339_ms("2025-11-25T16:24:39Z"), Some(1_764_087_879_000));
        assert_eq!(parse_rfc3339_ms("2025-11-25T16:24:39.123Z"), Some(1_764_087_879_123));
        assert_eq!(parse_rfc3339_ms("2025-11-25T16:24:39.1Z"), Some(1_764_087_879_100));
        assert_eq!(parse_rfc3339_ms("2025-11-25T16:24:39.123456789Z"), Some(1_764_087_879_123));
        assert_eq!(parse_rfc3339_ms("2025-11-25T17:24:39.5+01:00"), Some(1_764_087_879_500));
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
        for secs in [0, 86_399, 86_400, 1_000_000_000, 4_102_444_800] {
            assert_eq!(parse_rfc3339_ms(&utc_rfc3339(secs)), Some(secs * 1000));
        }
    }
}
