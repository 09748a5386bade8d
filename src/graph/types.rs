//! The Graph objects idledger reads.

use crate::json_fields::present;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// A peer's text as we keep it (in errors, and so in events): at most `max` characters,
/// control characters and bidirectional overrides dropped (what an admin may not type
/// either). Graph's own texts are far shorter; anything longer must not make a failure
/// unrecordable.
pub(crate) fn clipped(text: &str, max: usize) -> String {
    text.chars()
        .filter(|c| idledger_domain::decide::plain_char(*c))
        .take(max)
        .collect()
}

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

/// Entra ID's longest attribute is 256 characters (`displayName`); a little room above.
/// Longer texts are cut, and control characters dropped, as they are read.
pub const MAX_ATTRIBUTE_CHARS: usize = 512;

/// The longest object id taken from Graph: Entra's are GUIDs (36 characters).
const MAX_OBJECT_ID: usize = 64;

/// An object id as Graph gives one: a GUID in Entra ID. Anything else (empty, absurdly
/// long, with characters a URL path or a log line would misread) is not taken, and the
/// entry that carries it is skipped: one broken object must not stop a domain's sync, nor
/// make a user's record too large to write. In lower case: a GUID is one id however it
/// is spelled, and a member named in capitals must not read as another user (or the one
/// known as missing, and removed).
pub fn object_id(v: &Value) -> Option<String> {
    v.as_str()
        .filter(|id| {
            !id.is_empty()
                && id.len() <= MAX_OBJECT_ID
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .map(str::to_ascii_lowercase)
}

impl GraphUser {
    /// A user entry of a collection, read leniently: a property of the wrong type counts
    /// as left out (an entry of a delta round names only what changed anyway), so one odd
    /// value costs that value, not the round. `None` when the id is not an object id.
    pub fn from_entry(v: &Value) -> Option<GraphUser> {
        let id = object_id(&v["id"])?;
        // Clipped as read: a round keeps millions of entries, and what a page of 32 MB
        // of one user's name would cost must not be multiplied by them.
        let clip = |s: &str| clipped(s, MAX_ATTRIBUTE_CHARS);
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(clip);
        let optional = |k: &str| match v.get(k) {
            Some(Value::Null) => Some(None),
            Some(Value::String(s)) => Some(Some(clip(s))),
            _ => None,
        };
        Some(GraphUser {
            id,
            user_principal_name: text("userPrincipalName"),
            display_name: text("displayName"),
            mail: optional("mail"),
            given_name: optional("givenName"),
            surname: optional("surname"),
            account_enabled: v.get("accountEnabled").and_then(Value::as_bool),
        })
    }
}

fn group_object_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = Value::deserialize(d)?;
    object_id(&v).ok_or_else(|| serde::de::Error::custom("a group id that is not an object id"))
}

/// A group found by name.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GraphGroup {
    /// Object id, lower case: it goes into filters, the log and comparisons with ids
    /// saved before, so an odd one is refused with the answer rather than carried along.
    #[serde(deserialize_with = "group_object_id")]
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A display name from Graph with a right-to-left override would read as another
    /// name in the console and the timeline: the override goes, the letters stay.
    #[test]
    fn a_peer_text_keeps_its_letters_and_loses_controls_and_overrides() {
        let hostile = "Adm\u{202e}nimda\u{2066} Eve\u{0007}\n";
        assert_eq!(clipped(hostile, 100), "Admnimda Eve");
        assert_eq!(clipped("Zoë Ödegaard", 3), "Zoë");
    }

    #[test]
    fn an_object_id_is_taken_in_lower_case() {
        assert_eq!(
            object_id(&json!("C0A80000-0000-4000-8000-00000000000A")).as_deref(),
            Some("c0a80000-0000-4000-8000-00000000000a")
        );
        let user = GraphUser::from_entry(&json!({"id": "ABC-1"})).unwrap();
        assert_eq!(user.id, "abc-1");
    }

    /// A round keeps every entry until it ends: none holds more than Entra's texts can be.
    #[test]
    fn an_entrys_texts_are_clipped_as_they_are_read() {
        let u = GraphUser::from_entry(&json!({
            "id": "c0a80000-0000-4000-8000-000000000001",
            "displayName": "é".repeat(1 << 20),
            "userPrincipalName": format!("a\u{0}{}", "b".repeat(1 << 20)),
            "mail": "m".repeat(1 << 20),
        }))
        .unwrap();
        assert_eq!(u.display_name.unwrap().chars().count(), MAX_ATTRIBUTE_CHARS);
        let upn = u.user_principal_name.unwrap();
        assert_eq!(upn.len(), MAX_ATTRIBUTE_CHARS);
        assert!(upn.starts_with("ab"), "control characters dropped");
        assert_eq!(u.mail.unwrap().unwrap().len(), MAX_ATTRIBUTE_CHARS);
    }

    #[test]
    fn an_entry_with_odd_values_loses_those_values_and_one_without_an_object_id_is_none() {
        let id = "c0a80000-0000-4000-8000-000000000001";
        let u = GraphUser::from_entry(&json!({
            "id": id, "displayName": 5, "accountEnabled": "A".repeat(1000),
            "mail": null, "givenName": "Adele", "surname": ["x"],
        }))
        .unwrap();
        assert_eq!(u.id, id);
        assert_eq!(u.display_name, None);
        assert_eq!(u.account_enabled, None);
        assert_eq!(u.mail, Some(None), "null: Graph says it is empty");
        assert_eq!(u.given_name, Some(Some("Adele".into())));
        assert_eq!(u.surname, None);
        for bad in [
            json!(""),
            json!(".."),
            json!("a".repeat(65)),
            json!("x\u{7}"),
            json!(7),
        ] {
            assert_eq!(GraphUser::from_entry(&json!({"id": bad})), None, "{bad}");
            assert!(serde_json::from_value::<GraphGroup>(json!({"id": bad})).is_err());
        }
        let group: GraphGroup = serde_json::from_value(json!({"id": "ABC-2"})).unwrap();
        assert_eq!(group.id, "abc-2");
    }
}
