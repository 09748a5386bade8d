//! The Graph objects idledger reads.

use crate::json_fields::present;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The user properties idledger selects.
pub const USER_SELECT: &str =
    "id,userPrincipalName,displayName,mail,givenName,surname,accountEnabled";

/// A user as Graph returns it (only selected properties are present).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GraphUser {
    /// Object id.
    pub id: String,
    /// `userPrincipalName`.
    #[serde(default)]
    pub user_principal_name: Option<String>,
    /// `displayName`.
    #[serde(default)]
    pub display_name: Option<String>,
    /// `mail`: `None` when the answer leaves it out (an updated user in a delta round
    /// carries only what changed), `Some(None)` when Graph says it is empty.
    #[serde(default, deserialize_with = "present")]
    pub mail: Option<Option<String>>,
    /// `givenName`, absent or empty as for `mail`.
    #[serde(default, deserialize_with = "present")]
    pub given_name: Option<Option<String>>,
    /// `surname`, absent or empty as for `mail`.
    #[serde(default, deserialize_with = "present")]
    pub surname: Option<Option<String>>,
    /// `accountEnabled`.
    #[serde(default)]
    pub account_enabled: Option<bool>,
}

/// A group found by name.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GraphGroup {
    /// Object id.
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
}

/// A domain of the tenant.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GraphDomain {
    /// The domain name.
    pub id: String,
    /// `Managed` or `Federated` (passwords of federated users cannot be set).
    #[serde(default)]
    pub authentication_type: Option<String>,
    /// Default domain.
    #[serde(default)]
    pub is_default: bool,
}

/// One member change of a delta round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberChange {
    pub user_id: String,
    /// Left the group, or was deleted (Graph does not tell which).
    pub removed: bool,
}

/// A `groups/delta` round, merged per group across pages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupsDelta {
    /// Changes per group id, in the order Graph listed them (a change may repeat).
    pub changes: BTreeMap<String, Vec<MemberChange>>,
    /// Groups of the round that were deleted (Graph lists them with `@removed`).
    pub removed_groups: std::collections::BTreeSet<String>,
    /// The link the next round starts from.
    pub delta_link: String,
}

/// One entry of a `users/delta` round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserChange {
    /// Created or changed (selected properties).
    Upsert(GraphUser),
    /// Deleted: `changed` (soft, restorable) or `deleted` (permanent).
    Removed {
        /// The user.
        id: String,
        /// Graph's reason.
        reason: String,
    },
}

/// A `users/delta` round.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsersDelta {
    /// Entries in Graph's order.
    pub changes: Vec<UserChange>,
    /// The link the next round starts from.
    pub delta_link: String,
}
