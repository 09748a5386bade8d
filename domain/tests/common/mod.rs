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
