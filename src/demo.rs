//! `idledger demo`: what the engine does today, end to end on a real data dir.
//!
//! It registers a domain, records the discovery and import of a handful of users and one
//! departure through the event log, lets the projector fold them, verifies the chain and
//! prints a summary. The Graph-backed demo (sync from the simulator) replaces the
//! hand-made user events once sync lands.

use crate::cli::CliError;
use crate::projector::Projector;
use crate::store::{AppendRequest, EventLog, ExpectedVersion, SledEventLog};
use clap::Args;
use idledger_domain::events::*;
use idledger_domain::*;
use idledger_replay::Verifier;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use uuid::Uuid;

/// Options of `idledger demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Data directory to use (a fresh temporary one when omitted).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Exit after the summary (today the demo always does).
    #[arg(long)]
    pub once: bool,
}

const PEOPLE: [(&str, &str); 8] = [
    ("Adele", "Vance"),
    ("Alex", "Wilber"),
    ("Diego", "Siciliani"),
    ("Grady", "Archie"),
    ("Isaiah", "Langer"),
    ("Johanna", "Lorenz"),
    ("Lee", "Gu"),
    ("Megan", "Bowen"),
];

async fn put(log: &SledEventLog, stream: StreamId, events: Vec<Event>) -> Result<u64, CliError> {
    let actor = stream.domain_id().map_or(Actor::Operator, Actor::Sync);
    let proposed = events
        .into_iter()
        .map(|e| ProposedEvent::new(Uuid::now_v7(), actor.clone(), e))
        .collect();
    let done = log
        .append(AppendRequest::new(stream, ExpectedVersion::Any, proposed))
        .await?;
    Ok(done.last_position)
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<ExitCode, CliError> {
    let temp;
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            temp = std::env::temp_dir().join(format!("idledger-demo-{}", Uuid::new_v4().simple()));
            temp
        }
    };
    let log = SledEventLog::open(&dir)?;
    let projector = Projector::start(log.clone());
    let start = log.head().position;
    let domain_id = DomainId(Uuid::now_v7());
    let settings = DomainSettings {
        auto_password_change_days: Some(30),
        ..DomainSettings::default()
    };
    put(
        &log,
        StreamId::domain(domain_id),
        vec![
            DomainRegistered {
                domain_id,
                name: "contoso.onmicrosoft.com".into(),
                settings,
            }
            .into(),
            SsoDefaultsChanged {
                sso: SsoSettings {
                    enabled: true,
                    method: SsoMethod::Passwordless,
                },
            }
            .into(),
        ],
    )
    .await?;
    let sso = SsoSettings {
        enabled: true,
        method: SsoMethod::Passwordless,
    };
    let mut last = 0;
    for (i, (given, surname)) in PEOPLE.iter().enumerate() {
        let user_id = UserId(Uuid::now_v7());
        let upn = format!(
            "{}{}@contoso.onmicrosoft.com",
            given.to_lowercase(),
            &surname[..1].to_lowercase()
        );
        let mut events: Vec<Event> = vec![UserDiscovered {
            user_id,
            domain_id,
            external_id: Uuid::new_v4().to_string(),
            attributes: UserAttributes {
                user_principal_name: upn,
                display_name: format!("{given} {surname}"),
                mail: None,
                given_name: Some((*given).to_owned()),
                surname: Some((*surname).to_owned()),
                account_enabled: true,
            },
        }
        .into()];
        // Six are imported; one of them later leaves the sync group and is deactivated.
        if i < 6 {
            events.push(UserImported { sso }.into());
        }
        if i == 5 {
            events.push(
                MemberLeftSyncGroup {
                    reason: LeaveReason::LeftGroup,
                }
                .into(),
            );
            events.push(
                UserDeactivated {
                    reason: Some(LeaveReason::LeftGroup),
                }
                .into(),
            );
        }
        last = put(&log, StreamId::user(user_id), events).await?;
    }
    projector
        .wait_for(last, Duration::from_secs(10))
        .await
        .map_err(|e| CliError::Other(e.to_string()))?;
    let mut verifier = Verifier::new();
    for r in log.raw_records(1) {
        let (pos, bytes) = r?;
        verifier.push(pos, &bytes);
    }
    let report = verifier.finish();
    let p = projector.read();
    let mut by_status = std::collections::BTreeMap::new();
    for u in p.users.of_domain(domain_id) {
        *by_status.entry(u.status.as_str()).or_insert(0) += 1;
    }
    println!("idledger demo");
    println!("  data dir        {}", dir.display());
    println!("  domain          contoso.onmicrosoft.com ({domain_id})");
    for (status, n) in &by_status {
        println!("  users {status:<11} {n}");
    }
    println!("  events appended {}", log.head().position - start);
    println!(
        "  chain head      {} @ {}",
        report.head_hash, report.head_position
    );
    println!(
        "  verify          {}",
        if report.ok { "ok" } else { "FAILED" }
    );
    println!();
    println!("Try: idledger log --data-dir {} --limit 3", dir.display());
    println!("     idledger verify --data-dir {}", dir.display());
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
