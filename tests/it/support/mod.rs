//! Helpers shared by the integration tests: the server in-process (`app`), a world with
//! graphsim (`world`), `serve` as a child (`serve`), and the small things below.

pub mod app;
pub mod authenticator;
pub mod browser;
pub mod serve;
pub mod world;

pub use app::{spawn_app, spawn_app_tuned, spawn_app_with, App};
pub use browser::Browser;
pub use serve::Serve;
pub use world::{
    client_trusting, contoso, domain_body, ext, sim, sim_of_tenant, tls_sim, tls_sim_with,
    tls_world, world, world_in, World, APP, SECRET, SYNC, TENANT,
};

use idledger::store::{AppendRequest, EventLog, ExpectedVersion};
use idledger_domain::events::{
    RotationGroupJoined, UserAttributesChanged, UserDiscovered, UserImported,
};
use idledger_domain::{
    Actor, DomainId, Event, ProposedEvent, SsoSettings, StreamId, UserAttributes, UserId,
};
use std::path::Path;
use std::process::Command;
use uuid::Uuid;

/// The `idledger` binary built for these tests (its data dirs are throwaway: the master
/// key may sit inside them).
pub fn idledger() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_idledger"));
    cmd.env("IDLEDGER_ALLOW_MASTER_KEY_IN_DATA_DIR", "true");
    cmd
}

pub fn user(n: u128) -> UserId {
    UserId(Uuid::from_u128(0x5eed_0000 + n))
}

pub fn domain() -> DomainId {
    DomainId(Uuid::from_u128(0xd0))
}

pub fn attributes(name: &str) -> UserAttributes {
    UserAttributes {
        user_principal_name: format!("{name}@contoso.onmicrosoft.com"),
        display_name: name.to_owned(),
        account_enabled: true,
        ..UserAttributes::default()
    }
}

pub fn discovered(u: UserId) -> Event {
    UserDiscovered {
        user_id: u,
        domain_id: domain(),
        external_id: u.to_string(),
        attributes: attributes(&format!("u{}", u.0.as_u128() & 0xffff)),
    }
    .into()
}

/// A user event chosen by `n`, for random workloads.
pub fn some_user_event(n: u64) -> Event {
    match n % 3 {
        0 => UserAttributesChanged {
            attributes: attributes(&format!("name{n}")),
        }
        .into(),
        1 => UserImported {
            sso: SsoSettings::default(),
        }
        .into(),
        _ => RotationGroupJoined {}.into(),
    }
}

pub fn proposed(event: Event) -> ProposedEvent {
    ProposedEvent::new(Uuid::now_v7(), Actor::System, event)
}

pub async fn append(
    log: &dyn EventLog,
    u: UserId,
    expected: ExpectedVersion,
    events: Vec<Event>,
) -> idledger::store::Appended {
    let req = AppendRequest::new(
        StreamId::user(u),
        expected,
        events.into_iter().map(proposed).collect(),
    );
    log.append(req).await.expect("append")
}

/// Appends 50,000 user events to `log`, 500 to each of the users numbered from `first`:
/// enough that a long response over them is far from done when a test acts.
pub async fn fill_log(log: &dyn EventLog, first: u128) {
    for u in first..first + 100 {
        let mut events = vec![discovered(user(u))];
        events.extend((0..499).map(|n| some_user_event(n * 3)));
        append(log, user(u), ExpectedVersion::NoStream, events).await;
    }
}

/// A data dir whose log holds `thousands` × 1,000 user events (a stream per thousand),
/// stored as `serve` stores them; its lock released when this returns.
pub async fn filled_data_dir(dir: &Path, thousands: u128) {
    {
        let log = idledger::store::SledEventLog::open(dir).unwrap();
        let mut n = 0u64;
        for batch in 0..thousands {
            let u = user(batch);
            let mut events = vec![discovered(u)];
            events.extend((1..1000).map(|_| {
                n += 1;
                some_user_event(n)
            }));
            append(&*log, u, ExpectedVersion::Any, events).await;
        }
        idledger::store::EventLog::flush(&*log).await.unwrap();
    }
    wait_released(dir).await;
}

/// Runs `idledger verify` and returns its JSON line and exit code.
pub fn verify(dir: &Path) -> (serde_json::Value, i32) {
    let out = idledger()
        .arg("verify")
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    (json, out.status.code().unwrap_or(-1))
}

/// Runs `idledger <cmd> --data-dir <dir> <args>`, asserts success, returns stdout.
pub fn run_ok(cmd: &str, dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = idledger()
        .arg(cmd)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Waits until this process no longer holds sled's lock on the store (the writer task
/// drops its handle shortly after the last `SledEventLog` is dropped).
pub async fn wait_released(dir: &Path) {
    for _ in 0..400 {
        if idledger::store::sled_log::open_raw(dir).is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the store at {} stayed locked", dir.display());
}

/// A free loopback port (bound, then released for a child process to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// sled holds a lock on its directory until its last handle (the writer task's) is gone.
pub async fn reopen(dir: &Path) -> std::sync::Arc<idledger::store::SledEventLog> {
    for _ in 0..200 {
        match idledger::store::SledEventLog::open(dir) {
            Ok(log) => return log,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(25)).await,
        }
    }
    panic!("could not reopen the log");
}
