//! What the model tests share.

use idledger_domain::events::*;
use idledger_domain::*;

/// The records that make a user of `domain` imported with SSO on and `method`: where
/// every model's user begins.
pub fn imported_user(domain: DomainId, method: SsoMethod) -> Vec<Event> {
    vec![
        UserDiscovered {
            user_id: UserId(uuid::Uuid::from_u128(1)),
            domain_id: domain,
            external_id: "e".into(),
            attributes: UserAttributes {
                user_principal_name: "u@contoso.com".into(),
                display_name: "U".into(),
                mail: None,
                given_name: None,
                surname: None,
                account_enabled: true,
            },
        }
        .into(),
        UserImported {
            sso: SsoSettings {
                enabled: true,
                method,
            },
        }
        .into(),
    ]
}

/// A runner of `cases` cases that keeps no failure files: a model's failure prints its
/// steps, and the broken rule sets each model runs to show its teeth would fill them.
pub fn runner(cases: u32) -> proptest::test_runner::TestRunner {
    proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    })
}

/// Runs every step through `run`, failing with the step that broke a rule.
pub fn each_step<S: std::fmt::Debug>(
    steps: &[S],
    mut run: impl FnMut(&S) -> Result<(), String>,
) -> Result<(), proptest::test_runner::TestCaseError> {
    for s in steps {
        run(s).map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{e} at {s:?}")))?;
    }
    Ok(())
}

/// A user's stream as a model keeps it: the records appended, and the state folded one
/// record at a time as a running server holds it.
#[derive(Default)]
pub struct UserLog {
    pub log: Vec<Event>,
    pub running: idledger_domain::decide::user::UserState,
}

impl UserLog {
    pub fn append(&mut self, events: Vec<Event>) {
        for e in events {
            self.running =
                idledger_domain::decide::user::evolve(std::mem::take(&mut self.running), &e);
            self.log.push(e);
        }
    }

    /// The state a restarted server folds from the log.
    pub fn folded(&self) -> idledger_domain::decide::user::UserState {
        (self.log.iter()).fold(Default::default(), idledger_domain::decide::user::evolve)
    }
}
