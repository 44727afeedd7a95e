//! The wall clock, as every part of the node reads it.
//!
//! Times from here are shown to people and recorded in log entries; nothing is ever
//! decided on them (applying an entry is deterministic).

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall clock in milliseconds since the epoch (0 on a clock set before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
