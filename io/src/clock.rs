//! The wall clock.
//!
//! The storage and replication engines own no clock: their callers read this one and pass the
//! time in as an argument (`now_ms`), so a simulator can pass its own time instead.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, from the system's wall clock.
///
/// The wall clock can step backwards (NTP, an operator); callers that need order build it on
/// top (the hybrid logical clock keeps its own maximum). A clock set before 1970 reads as 0.
pub fn now_ms() -> u64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since_epoch) => u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_ms_agrees_with_system_time() {
        // 2020-01-01T00:00:00Z: any machine running this test is past it.
        const JANUARY_2020_MS: u64 = 1_577_836_800_000;
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let now = now_ms();
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(now > JANUARY_2020_MS);
        // The wall clock may step between the reads, so allow a generous window either side.
        assert!(now + 60_000 >= before && now <= after + 60_000, "{before} <= {now} <= {after}");
    }
}
