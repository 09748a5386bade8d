//! Fault injection for the crash tests: with `IDLEDGER_TEST_CRASH_AT` set to a point's
//! name, the process aborts there, as a power cut would stop it. The points sit where a
//! protocol's next step must be recoverable from what is on record alone. With
//! `IDLEDGER_TEST_PANIC_AT` instead, the task passing there first panics (a bug in one
//! task, the process going on), and later passes go by.

/// Aborts the process if the crash tests asked to die at `name`; panics the first time
/// through if they asked for a panic there.
pub fn point(name: &str) {
    if std::env::var("IDLEDGER_TEST_CRASH_AT").is_ok_and(|v| v == name) {
        eprintln!("IDLEDGER_TEST_CRASH_AT={name}: aborting");
        std::process::abort();
    }
    static PANICKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if std::env::var("IDLEDGER_TEST_PANIC_AT").is_ok_and(|v| v == name)
        && !PANICKED.swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        panic!("IDLEDGER_TEST_PANIC_AT={name}");
    }
}
