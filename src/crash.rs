//! Fault injection for the crash tests: with `IDLEDGER_TEST_CRASH_AT` set to a point's
//! name, the process aborts there, as a power cut would stop it. The points sit where a
//! protocol's next step must be recoverable from what is on record alone.

/// Aborts the process if the crash tests asked to die at `name`.
pub fn point(name: &str) {
    if std::env::var("IDLEDGER_TEST_CRASH_AT").is_ok_and(|v| v == name) {
        eprintln!("IDLEDGER_TEST_CRASH_AT={name}: aborting");
        std::process::abort();
    }
}
