//! Sync from Entra ID: the real server and a real graphsim on loopback, driven over HTTP.

use crate::support::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The enabled members of the contoso sync group: users 1 to 30 but the disabled 29.
fn contoso_candidates() -> BTreeSet<String> {
    (1..=30).filter(|n| *n != 29).map(ext).collect()
}

fn externals(users: &[Value]) -> BTreeSet<String> {
    users
        .iter()
        .map(|u| u["external_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_first_run_finds_the_group_as_candidates_and_an_unchanged_second_run_appends_no_user_events(
) {
    let w = world(json!({})).await;
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["counters"]["added"], 29, "{run}");
    // The disabled member is on record, out of scope: no candidate, but known, so that
    // Entra enabling them later (a change to the user, not to the group) brings them in.
    let users = run["users"].as_array().unwrap();
    assert_eq!(users.len(), 30);
    for u in users {
        let disabled = u["external_id"] == ext(29).as_str();
        let outcome = if disabled {
            json!(null)
        } else {
            json!("added")
        };
        assert_eq!(u["outcome"], outcome, "{u}");
    }
    let disabled = w.user(29).await.unwrap();
    assert_eq!(disabled["in_sync_group"], false, "{disabled}");
    assert_eq!(disabled["account_enabled"], false, "{disabled}");

    let (s, c) = w
        .admin(
            Method::GET,
            &format!("/v1/domains/{}/candidates", w.domain),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let candidates = c["items"].as_array().unwrap();
    assert_eq!(externals(candidates), contoso_candidates());
    let mut on_record = contoso_candidates();
    on_record.insert(ext(29));
    assert_eq!(externals(&w.users("&status=candidate").await), on_record);
    // Rotation-group membership is tracked: users 1 to 10 are in it, user 36 is no member.
    for u in candidates {
        let n: u32 = u["external_id"].as_str().unwrap()[24..].parse().unwrap();
        assert_eq!(u["in_rotation_group"], n <= 10, "{u}");
        assert!(!u["display_name"].as_str().unwrap().is_empty());
    }

    // Import two (one named twice), then the rest; what is imported already counts none.
    let two: Vec<&Value> = candidates.iter().take(2).map(|u| &u["id"]).collect();
    let path = format!("/v1/domains/{}/import", w.domain);
    let import = |ids: Value| w.admin(Method::POST, &path, Some(json!({ "user_ids": ids })));
    let (s, body) = import(json!([two[0], two[1], two[0]])).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["imported"], 2, "{body}");
    assert_eq!(w.users("&status=active").await.len(), 2);
    let (s, body) = import(json!(two)).await;
    assert_eq!(
        (s, &body["imported"]),
        (StatusCode::OK, &json!(0)),
        "{body}"
    );
    w.import_all().await;
    let active = w.users("&status=active").await;
    assert_eq!(externals(&active), contoso_candidates());
    assert!(active.iter().all(|u| u["pc_unlock"] == true));

    let head = w.head().await;
    let again = w.sync().await;
    assert_eq!(again["counters"]["added"], 0, "{again}");
    assert_eq!(again["counters"]["changed"], 0, "{again}");
    assert!(again["users"].as_array().unwrap().is_empty());
    assert_eq!(w.user_events_after(head).await, Vec::<String>::new());

    // Enabled in Entra: only the user changes, not the group, and they come in.
    w.sim(
        Method::PATCH,
        &format!("/_sim/users/{}", ext(29)),
        Some(json!({"accountEnabled": true})),
    )
    .await;
    let run = w.sync().await;
    assert_eq!(run["full"], false, "{run}");
    assert_eq!(run["counters"]["changed"], 1, "{run}");
    let enabled = w.user(29).await.unwrap();
    assert_eq!(
        (&enabled["in_sync_group"], &enabled["status"]),
        (&json!(true), &json!("candidate")),
        "{enabled}"
    );
    assert_eq!(enabled["display_name"], disabled["display_name"]);
}

#[tokio::test]
async fn import_applies_the_domains_sso_defaults_and_an_override_wins() {
    let w = world(json!({})).await;
    let sso = json!({"enabled": true, "method": "password_and_second_factor"});
    let (s, _) = w
        .admin(
            Method::PUT,
            &format!("/v1/domains/{}/sso-defaults", w.domain),
            Some(sso.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    w.sync().await;
    w.import_all().await;
    let u = w.user(3).await.unwrap();
    assert_eq!(u["sso"], sso);
    let id = u["id"].as_str().unwrap();
    let mine = json!({"enabled": true, "method": "passwordless"});
    let (s, body) = w
        .admin(
            Method::PATCH,
            &format!("/v1/users/{id}"),
            Some(json!({"sso_override": mine})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(w.user(3).await.unwrap()["sso"], mine);
}

#[tokio::test]
async fn each_removal_behaviour_and_what_rejoining_does() {
    for behavior in ["keep", "deactivate", "delete"] {
        let w = world(json!({"removal_behavior": behavior, "auto_import": true})).await;
        w.sync().await;
        let before = w.user(5).await.unwrap();
        assert_eq!(before["status"], "active");
        w.leave(5).await;
        let run = w.sync().await;
        assert_eq!(run["counters"]["left"], 1, "{behavior}: {run}");
        match behavior {
            "keep" => {
                let u = w.user(5).await.unwrap();
                assert_eq!(u["status"], "active");
                assert_eq!(u["in_sync_group"], false);
            }
            "deactivate" => {
                let u = w.user(5).await.unwrap();
                assert_eq!(u["status"], "deactivated");
                assert_eq!(u["sso"]["enabled"], false);
                assert_eq!(u["pc_unlock"], true);
            }
            _ => {
                assert!(w.user(5).await.is_none(), "deleted users are hidden");
                let all = w.users("&include_deleted=true").await;
                let gone = all
                    .iter()
                    .find(|u| u["external_id"] == ext(5).as_str())
                    .unwrap();
                assert_eq!(gone["status"], "deleted");
            }
        }

        w.join(5).await;
        w.sync().await;
        let u = w.user(5).await.unwrap();
        assert_eq!(u["in_sync_group"], true, "{behavior}: {u}");
        match behavior {
            "keep" => assert_eq!(u["status"], "active"),
            "deactivate" => {
                assert_eq!(u["status"], "deactivated", "rejoining does not reactivate");
                let id = u["id"].as_str().unwrap();
                let (s, _) = w
                    .admin(Method::POST, &format!("/v1/users/{id}/activate"), None)
                    .await;
                assert_eq!(s, StatusCode::OK);
                assert_eq!(w.user(5).await.unwrap()["status"], "active");
            }
            _ => {
                // A new candidate: auto import makes it active again, under a new id.
                assert_ne!(u["id"], before["id"]);
                assert_eq!(u["status"], "active");
            }
        }
    }
}

#[tokio::test]
async fn a_member_change_graph_repeats_does_not_bring_back_a_user_deleted_in_entra() {
    let w = world(json!({"removal_behavior": "keep", "auto_import": true})).await;
    w.sync().await;
    w.sim(Method::DELETE, &format!("/_sim/users/{}", ext(7)), None)
        .await;
    w.sync().await;
    let gone = w.user(7).await.unwrap();
    assert_eq!(gone["in_sync_group"], false, "{gone}");
    let before = events_of(&w, &gone).await;
    // A later round names the add again (GRAPH.md §3): the user is still deleted.
    w.sim(
        Method::POST,
        &format!("/_sim/groups/{SYNC}/members/{}/repeat-add", ext(7)),
        None,
    )
    .await;
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let still = w.user(7).await.unwrap();
    assert_eq!(still["in_sync_group"], false, "{still}");
    assert_eq!(still["status"], gone["status"], "{still}");
    assert_eq!(events_of(&w, &still).await, before, "no event since");
}

/// A change Graph repeats in a later round (GRAPH.md §3) may be older than what happened
/// since: a member who left and came back must not be taken out again (with *delete*,
/// their keys would be shredded), and one who left must not be let back in.
#[tokio::test]
async fn member_changes_graph_repeats_after_the_opposite_change_are_not_trusted() {
    for behavior in ["deactivate", "delete"] {
        let w = world(json!({"removal_behavior": behavior, "auto_import": true})).await;
        w.sync().await;
        w.leave(5).await;
        w.join(5).await;
        w.sync().await;
        let back = w.user(5).await.unwrap();
        assert_eq!(back["status"], "active", "{behavior}: {back}");
        assert_eq!(back["in_sync_group"], true, "{behavior}: {back}");
        let before = events_of(&w, &back).await;
        w.sim(
            Method::POST,
            &format!("/_sim/groups/{SYNC}/members/{}/repeat-remove", ext(5)),
            None,
        )
        .await;
        let run = w.sync().await;
        assert_eq!(run["status"], "succeeded", "{behavior}: {run}");
        let still = w.user(5).await.unwrap();
        assert_eq!(still["id"], back["id"], "{behavior}: {still}");
        assert_eq!(still["status"], "active", "{behavior}: {still}");
        assert_eq!(still["in_sync_group"], true, "{behavior}: {still}");
        assert_eq!(
            events_of(&w, &still).await,
            before,
            "{behavior}: no event since"
        );
        // The disputed change is asked about again in the next round (the list may be the
        // one behind), though the groups' delta link moved on past it.
        let rounds = async || -> (Vec<String>, usize) {
            let requests = w.sim_requests().await;
            let path = |r: &Value| r["path"].as_str().unwrap_or("").to_owned();
            let links = requests
                .iter()
                .filter(|r| path(r).contains("groups/delta"))
                .map(|r| r["query"].as_str().unwrap_or("").to_owned())
                .collect();
            let lists = requests
                .iter()
                .filter(|r| path(r).contains(&format!("groups/{SYNC}/members")))
                .count();
            (links, lists)
        };
        let (links, lists) = rounds().await;
        w.sync().await;
        let (next_links, next_lists) = rounds().await;
        assert!(
            next_lists > lists,
            "{behavior}: the member list was not asked again"
        );
        assert_ne!(
            links.last(),
            next_links.last(),
            "{behavior}: the link is held"
        );
        assert_eq!(w.user(5).await.unwrap()["status"], "active", "{behavior}");

        // And the other way: a member who left stays out when the old add comes back.
        w.leave(6).await;
        w.sync().await;
        let out = w.user(6).await;
        w.sim(
            Method::POST,
            &format!("/_sim/groups/{SYNC}/members/{}/repeat-add", ext(6)),
            None,
        )
        .await;
        let run = w.sync().await;
        assert_eq!(run["status"], "succeeded", "{behavior}: {run}");
        match (out, w.user(6).await) {
            (Some(out), Some(now)) => {
                assert_eq!(now["in_sync_group"], false, "{behavior}: {now}");
                assert_eq!(now["status"], out["status"], "{behavior}: {now}");
                assert_eq!(events_of(&w, &now).await, events_of(&w, &out).await);
            }
            (None, now) => assert!(now.is_none(), "{behavior}: came back as {now:?}"),
            (Some(out), None) => panic!("{behavior}: {out} vanished"),
        }
    }
}

/// The rotation group too: a change Graph repeats after the opposite one neither takes a
/// user out of rotation nor puts one taken out back in.
#[tokio::test]
async fn rotation_group_changes_graph_repeats_are_not_trusted() {
    let w = world(json!({"removal_behavior": "keep", "auto_import": true})).await;
    w.sync().await;
    let rotation = "a1b2c3d4-0000-4000-8000-000000000002";
    let member = |n: u32| format!("/_sim/groups/{rotation}/members/{}", ext(n));
    let (inside, outside) = (w.user(5).await.unwrap(), w.user(12).await.unwrap());
    assert_eq!(inside["in_rotation_group"], true, "{inside}");
    assert_eq!(outside["in_rotation_group"], false, "{outside}");
    // 5 leaves and comes back, 12 joins and leaves: then the old changes come again.
    w.sim(Method::DELETE, &member(5), None).await;
    w.sim(Method::POST, &member(5), None).await;
    w.sim(Method::POST, &member(12), None).await;
    w.sync().await;
    w.sim(Method::DELETE, &member(12), None).await;
    w.sync().await;
    assert_eq!(w.user(5).await.unwrap()["in_rotation_group"], true);
    assert_eq!(w.user(12).await.unwrap()["in_rotation_group"], false);
    w.sim(Method::POST, &format!("{}/repeat-remove", member(5)), None)
        .await;
    w.sim(Method::POST, &format!("{}/repeat-add", member(12)), None)
        .await;
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(w.user(5).await.unwrap()["in_rotation_group"], true);
    assert_eq!(w.user(12).await.unwrap()["in_rotation_group"], false);

    // Out of the sync group, the same: 8 is taken out of rotation, leaves (kept), the old
    // add comes again, and 8 rejoins — still out of rotation.
    w.sim(Method::DELETE, &member(8), None).await;
    w.sync().await;
    w.leave(8).await;
    w.sync().await;
    w.sim(Method::POST, &format!("{}/repeat-add", member(8)), None)
        .await;
    w.sync().await;
    w.join(8).await;
    w.sync().await;
    let back = w.user(8).await.unwrap();
    assert_eq!(back["in_sync_group"], true, "{back}");
    assert_eq!(back["in_rotation_group"], false, "{back}");
}

/// A user deleted in Entra and restored within one round, the restore named first: the
/// delete's entry, last, must not decide (with *delete*, the member's keys would go).
#[tokio::test]
async fn a_user_deleted_and_restored_in_one_round_is_not_taken_for_deleted() {
    let w = world(json!({"removal_behavior": "delete", "auto_import": true})).await;
    w.sync().await;
    let before = w.user(7).await.unwrap();
    w.sim(
        Method::PUT,
        "/_sim/delta/order",
        Some(json!({"unordered": true})),
    )
    .await;
    w.sim(Method::DELETE, &format!("/_sim/users/{}", ext(7)), None)
        .await;
    restore(&w, 7, &before).await;
    w.join(7).await;
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let after = w.user(7).await.unwrap();
    assert_eq!(after["id"], before["id"], "{after}");
    assert_eq!(after["status"], "active", "{after}");
    assert_eq!(after["in_sync_group"], true, "{after}");

    // The deletion named again in a later round: still there, still a member.
    w.sim(
        Method::POST,
        &format!("/_sim/users/{}/repeat-delete", ext(7)),
        None,
    )
    .await;
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let again = w.user(7).await.unwrap();
    assert_eq!(again["id"], before["id"], "{again}");
    assert_eq!(again["status"], "active", "{again}");
    assert_eq!(again["in_sync_group"], true, "{again}");
}

/// A turn to disabled is read back before it is believed: named again after the user was
/// enabled, it neither deletes nor deactivates them; named while a read by id is still
/// served by a replica that has not caught up, it lands a round later, when asked again.
#[tokio::test]
async fn a_disable_graph_names_is_believed_only_once_a_read_by_id_agrees() {
    let w = world(json!({"removal_behavior": "delete", "auto_import": true})).await;
    w.sync().await;
    let before = w.user(5).await.unwrap();
    w.sim(
        Method::POST,
        &format!("/_sim/users/{}/repeat-disable", ext(5)),
        None,
    )
    .await;
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let after = w.user(5).await.unwrap();
    assert_eq!(after["id"], before["id"], "{after}");
    assert_eq!(after["status"], "active", "{after}");
    assert_eq!(after["account_enabled"], true, "{after}");
    // Asked again (the read still says enabled), then let go.
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(w.user(5).await.unwrap()["status"], "active");

    // A real disable behind a stale read: kept a round, found when asked again.
    let user = format!("/_sim/users/{}", ext(6));
    w.sim(Method::POST, &format!("{user}/stale-read"), None)
        .await;
    w.sim(Method::PATCH, &user, Some(json!({"accountEnabled": false})))
        .await;
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(w.user(6).await.unwrap()["account_enabled"], true);
    // Renamed meanwhile: the next round names the user with the new name only, which
    // says nothing of the disable still being asked about.
    w.sim(
        Method::PATCH,
        &user,
        Some(json!({"displayName": "Six Leaving"})),
    )
    .await;
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(
        w.user(6).await.is_none_or(|u| u["status"] == "deleted"),
        "the disable asked about again is found"
    );
}

/// A turn back to enabled is read back too: an old "enabled" Graph names again after the
/// user was disabled does not bring them back into scope; a real one behind a replica that
/// has not caught up lands a round later, when asked again.
#[tokio::test]
async fn an_enable_graph_names_is_believed_only_once_a_read_by_id_agrees() {
    let w = world(json!({"removal_behavior": "keep", "auto_import": true})).await;
    w.sync().await;
    let user = format!("/_sim/users/{}", ext(5));
    w.sim(Method::PATCH, &user, Some(json!({"accountEnabled": false})))
        .await;
    w.sync().await;
    assert_eq!(w.user(5).await.unwrap()["account_enabled"], false);
    w.sim(Method::POST, &format!("{user}/repeat-enable"), None)
        .await;
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let after = w.user(5).await.unwrap();
    assert_eq!(after["account_enabled"], false, "{after}");
    // Asked again (the read still says disabled), then let go.
    w.sync().await;
    assert_eq!(w.user(5).await.unwrap()["account_enabled"], false);

    // A real enable behind a stale read: kept disabled a round, found when asked again.
    w.sim(Method::POST, &format!("{user}/stale-read"), None)
        .await;
    w.sim(Method::PATCH, &user, Some(json!({"accountEnabled": true})))
        .await;
    w.sync().await;
    assert_eq!(w.user(5).await.unwrap()["account_enabled"], false);
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let now = w.user(5).await.unwrap();
    assert_eq!(now["account_enabled"], true, "{now}");
    assert_eq!(now["status"], "active", "{now}");
}

/// A deletion Graph names while a read by id is still served by a replica that has not
/// caught up: the user is not taken for deleted in that round, and is asked about again in
/// the next, which finds the deletion (the delta link had moved past it: nothing names it
/// again).
#[tokio::test]
async fn a_deletion_a_read_by_id_has_not_caught_up_with_is_asked_about_again() {
    let w = world(json!({"removal_behavior": "keep", "auto_import": true})).await;
    w.sync().await;
    let delete_behind_a_stale_read = async |n: u32| {
        let user = format!("/_sim/users/{}", ext(n));
        w.sim(Method::POST, &format!("{user}/stale-read"), None)
            .await;
        w.sim(Method::DELETE, &user, None).await;
        let run = w.sync().await;
        assert_eq!(run["status"], "succeeded", "{run}");
        let user = w.user(n).await.unwrap();
        assert!(
            !taken_for_deleted(&w, &user).await,
            "the stale read showed the user"
        );
        user
    };
    let user = delete_behind_a_stale_read(9).await;
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(
        taken_for_deleted(&w, &user).await,
        "asked again, the deletion is found"
    );
    // Settled: the next round asks nothing about it.
    let reads = async || {
        w.sim_requests()
            .await
            .iter()
            .filter(|r| r["path"].as_str().unwrap_or("").ends_with("users/delta"))
            .filter(|r| r["query"].as_str().unwrap_or("").contains(&ext(9)))
            .count()
    };
    let before = reads().await;
    assert!(before >= 2, "read by id twice");
    w.sync().await;
    assert_eq!(reads().await, before, "asked again after it settled");

    // A full round in between (here: the delta token expired) reads such a user too: its
    // fresh links will never name the deletion again.
    let user = delete_behind_a_stale_read(11).await;
    w.sim(Method::POST, "/_sim/delta/expire", None).await;
    let run = w.sync().await;
    assert_eq!(run["full"], true, "{run}");
    assert!(
        taken_for_deleted(&w, &user).await,
        "the full round found the deletion"
    );
}

/// A delta run that found its token expired and failed in the full round it switched to
/// is recorded as a full run: what it read, not what it planned.
#[tokio::test]
async fn a_run_that_failed_in_the_full_round_it_switched_to_says_full() {
    let w = world(json!({})).await;
    let first = w.sync().await;
    assert_eq!(first["full"], true, "{first}");
    let planned_delta = w.sync().await;
    assert_eq!(planned_delta["full"], false, "{planned_delta}");
    let (_, domain) = w
        .admin(Method::GET, &format!("/v1/domains/{}", w.domain), None)
        .await;
    let group = domain["sync_group_id"].as_str().unwrap().to_owned();
    w.sim(Method::POST, "/_sim/delta/expire", None).await;
    // Only the full round reads the group's members list.
    w.sim(
        Method::POST,
        "/_sim/faults",
        Some(json!({"path_prefix": format!("/v1.0/groups/{group}/members"), "status": 403, "count": 1000})),
    )
    .await;
    let run = w.sync_domain(&w.domain).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["full"], true, "{run}");
}

/// A carried deletion is replaced by a later round that shows the user again (restored),
/// even when that round's read by id has not seen the restore yet.
#[tokio::test]
async fn a_user_restored_after_a_carried_deletion_is_not_deleted_by_a_read_behind_the_restore() {
    let w = world(json!({"removal_behavior": "keep", "auto_import": true})).await;
    w.sync().await;
    let before = w.user(9).await.unwrap();
    let user = format!("/_sim/users/{}", ext(9));
    w.sim(Method::POST, &format!("{user}/stale-read"), None)
        .await;
    w.sim(Method::DELETE, &user, None).await;
    w.sync().await;
    restore(&w, 9, &before).await;
    w.join(9).await;
    w.sim(Method::POST, &format!("{user}/unseen-read"), None)
        .await;
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let now = w.user(9).await.unwrap();
    assert_eq!(now["id"], before["id"], "{now}");
    assert_eq!(now["in_sync_group"], true, "{now}");
    assert_eq!(now["status"], "active", "{now}");
    assert!(!taken_for_deleted(&w, &now).await, "taken for deleted");
}

/// A carried member change is replaced by a newer change the next round names about the
/// same user: asked of a list still behind, the older one would undo the newer.
#[tokio::test]
async fn a_carried_member_change_gives_way_to_a_newer_one() {
    let w = world(json!({"removal_behavior": "delete", "auto_import": true})).await;
    w.sync().await;
    let before = w.user(5).await.unwrap();
    let member = format!("/_sim/groups/{SYNC}/members/{}", ext(5));
    // An old removal named again: the list disagrees, and the removal is carried.
    w.sim(Method::POST, &format!("{member}/repeat-remove"), None)
        .await;
    w.sync().await;
    assert_eq!(w.user(5).await.unwrap()["status"], "active");
    // The next round names an add (newer than the carried removal), and the member list
    // it would ask has not caught up with it.
    w.sim(Method::POST, &format!("{member}/repeat-add"), None)
        .await;
    w.sim(Method::POST, &format!("{member}/unseen-read"), None)
        .await;
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let now = w.user(5).await.unwrap();
    assert_eq!(now["id"], before["id"], "{now}");
    assert_eq!(now["status"], "active", "{now}");
    assert_eq!(now["in_sync_group"], true, "{now}");
}

/// A full round whose `groups/delta` replica is behind a member's addition, while the
/// member list (read after it) names them: the member stays. With *delete*, one read
/// taken for a removal would delete them and destroy their keys.
#[tokio::test]
async fn a_full_round_keeps_a_member_its_delta_left_out_but_the_member_list_names() {
    let w = world(json!({"removal_behavior": "delete", "auto_import": true})).await;
    w.sync().await;
    let before = w.user(5).await.unwrap();
    let member = format!("/_sim/groups/{SYNC}/members/{}", ext(5));
    w.sim(Method::POST, &format!("{member}/unseen-delta"), None)
        .await;
    w.sim(Method::POST, "/_sim/delta/expire", None).await;
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let now = w.user(5).await.unwrap();
    assert_eq!(now["id"], before["id"], "{now}");
    assert_eq!(now["status"], "active", "{now}");
    assert_eq!(now["in_sync_group"], true, "{now}");
    // The disagreement is carried: the next round asks the member list again (a real
    // removal the list had not caught up with lands then).
    let lists = |requests: &[Value]| {
        requests
            .iter()
            .filter(|r| {
                r["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("/members/microsoft.graph.user"))
            })
            .count()
    };
    let before_round = lists(&w.sim_requests().await);
    w.sync().await;
    assert!(
        lists(&w.sim_requests().await) > before_round,
        "the next round did not ask the member list again"
    );
    assert_eq!(w.user(5).await.unwrap()["status"], "active");
    // Once the replica caught up, a real removal is still a removal.
    w.sim(Method::DELETE, &format!("{member}/unseen-delta"), None)
        .await;
    w.leave(5).await;
    w.sim(Method::POST, "/_sim/delta/expire", None).await;
    w.sync().await;
    assert!(
        w.user(5).await.is_none_or(|u| u["status"] == "deleted"),
        "a removal after the replica caught up"
    );
}

/// A recorded member a full round names, whom the member list and the read by id both
/// miss (replicas behind), is kept as recorded: a deleted user is no group's member.
#[tokio::test]
async fn a_full_round_keeps_a_named_member_both_reads_missed() {
    let w = world(json!({"removal_behavior": "delete", "auto_import": true})).await;
    w.sync().await;
    let before = w.user(5).await.unwrap();
    let member = format!("/_sim/groups/{SYNC}/members/{}", ext(5));
    w.sim(Method::POST, &format!("{member}/unseen-read"), None)
        .await;
    w.sim(
        Method::POST,
        &format!("/_sim/users/{}/unseen-read", ext(5)),
        None,
    )
    .await;
    w.sim(Method::POST, "/_sim/delta/expire", None).await;
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let now = w.user(5).await.unwrap();
    assert_eq!(now["id"], before["id"], "{now}");
    assert_eq!(now["status"], "active", "{now}");
    assert!(!taken_for_deleted(&w, &now).await, "taken for deleted");
    // The deletion is asked about again: the next round reads the user by id.
    let reads_of_5 = |requests: &[Value]| {
        requests
            .iter()
            .filter(|r| {
                r["path"]
                    .as_str()
                    .is_some_and(|p| p.contains("/users/delta"))
                    && r["query"].as_str().is_some_and(|q| q.contains(&ext(5)))
            })
            .count()
    };
    let before_round = reads_of_5(&w.sim_requests().await);
    w.sync().await;
    assert!(
        reads_of_5(&w.sim_requests().await) > before_round,
        "the next round did not read the user again"
    );
    assert_eq!(w.user(5).await.unwrap()["status"], "active");
}

/// A new member whose read by id a replica misses is not lost until the full round: the
/// next round asks again and imports them.
#[tokio::test]
async fn a_new_member_a_read_by_id_missed_is_imported_a_round_later() {
    let w = world(json!({"removal_behavior": "keep", "auto_import": true})).await;
    w.sync().await;
    assert!(w.user(99).await.is_none());
    w.sim(
        Method::POST,
        "/_sim/users",
        Some(json!({
            "id": ext(99),
            "userPrincipalName": "nestor.wilke@contoso.onmicrosoft.com",
            "displayName": "Nestor Wilke",
            "mail": "nestor.wilke@contoso.onmicrosoft.com",
            "givenName": "Nestor",
            "surname": "Wilke",
        })),
    )
    .await;
    w.join(99).await;
    w.sim(
        Method::POST,
        &format!("/_sim/users/{}/unseen-read", ext(99)),
        None,
    )
    .await;
    w.sync().await;
    assert!(w.user(99).await.is_none(), "imported without being read");
    w.sync().await;
    let new = w.user(99).await.expect("imported a round later");
    assert_eq!(new["display_name"], "Nestor Wilke", "{new}");
    assert_eq!(new["in_sync_group"], true, "{new}");
}

/// Graph promises no order within a delta round and may name one user twice (GRAPH.md §3).
/// graphsim names each change on its own, newest first: a member who left and came back,
/// a new member who came and left, a rotation-group member who left and came back, and a
/// user disabled then renamed. None is decided by whichever entry came last.
#[tokio::test]
async fn changes_named_out_of_order_in_one_round_are_not_decided_by_the_last_entry() {
    let w = world(json!({"removal_behavior": "deactivate", "auto_import": true})).await;
    w.sync().await;
    let before = w.users("").await.len();
    w.sim(
        Method::PUT,
        "/_sim/delta/order",
        Some(json!({"unordered": true})),
    )
    .await;
    w.leave(5).await;
    w.join(5).await;
    let passer = "c0a80000-0000-4000-8000-0000000000f1";
    stranger(&w, passer, "passer.by@contoso.onmicrosoft.com", "Passer By").await;
    w.sim(
        Method::POST,
        &format!("/_sim/groups/{SYNC}/members/{passer}"),
        None,
    )
    .await;
    w.sim(
        Method::DELETE,
        &format!("/_sim/groups/{SYNC}/members/{passer}"),
        None,
    )
    .await;
    let rotation = "a1b2c3d4-0000-4000-8000-000000000002";
    let member3 = format!("/_sim/groups/{rotation}/members/{}", ext(3));
    w.sim(Method::DELETE, &member3, None).await;
    w.sim(Method::POST, &member3, None).await;
    let user8 = format!("/_sim/users/{}", ext(8));
    w.sim(
        Method::PATCH,
        &user8,
        Some(json!({"accountEnabled": false})),
    )
    .await;
    w.sim(
        Method::PATCH,
        &user8,
        Some(json!({"displayName": "Eight Renamed"})),
    )
    .await;

    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let five = w.user(5).await.unwrap();
    assert_eq!(five["in_sync_group"], true, "{five}");
    assert_eq!(five["status"], "active", "{five}");
    let three = w.user(3).await.unwrap();
    assert_eq!(three["in_rotation_group"], true, "{three}");
    let eight = w.user(8).await.unwrap();
    assert_eq!(eight["display_name"], "Eight Renamed", "{eight}");
    assert_eq!(eight["account_enabled"], false, "{eight}");
    let users = w.users("").await;
    assert_eq!(users.len(), before, "the passer-by is nobody's user");
    assert!(!users.iter().any(|u| u["external_id"] == passer));
}

/// A stranger's old add named again makes nobody a user: a user the engine has never
/// recorded who came and left between two rounds, and whose add Graph names again later,
/// is checked against the member list like a known user's add would be.
#[tokio::test]
async fn an_old_add_of_a_stranger_named_again_imports_nobody() {
    let w = world(json!({"removal_behavior": "keep", "auto_import": true})).await;
    w.sync().await;
    let before = w.users("").await.len();
    let passer = "c0a80000-0000-4000-8000-0000000000f2";
    stranger(
        &w,
        passer,
        "passer.two@contoso.onmicrosoft.com",
        "Passer Two",
    )
    .await;
    let member = format!("/_sim/groups/{SYNC}/members/{passer}");
    w.sim(Method::POST, &member, None).await;
    w.sim(Method::DELETE, &member, None).await;
    w.sync().await;
    w.sim(Method::POST, &format!("{member}/repeat-add"), None)
        .await;
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let users = w.users("").await;
    assert!(
        !users.iter().any(|u| u["external_id"] == passer),
        "a non-member became a user"
    );
    assert_eq!(users.len(), before);
}

/// A full round reads only the group's members: what changed meanwhile of a known user
/// outside it is not seen. Rejoining, they are read afresh, not taken as last recorded.
#[tokio::test]
async fn a_user_who_rejoins_after_a_full_round_is_read_afresh() {
    let w = world(json!({"removal_behavior": "deactivate"})).await;
    w.sync().await;
    w.leave(5).await;
    w.sync().await;
    w.sim(
        Method::PATCH,
        &format!("/_sim/users/{}", ext(5)),
        Some(json!({"accountEnabled": false, "displayName": "Five Disabled"})),
    )
    .await;
    w.sim(Method::POST, "/_sim/delta/expire", None).await;
    let full = w.sync().await;
    assert_eq!(full["full"], true, "{full}");
    w.join(5).await;
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let five = w.user(5).await.unwrap();
    assert_eq!(five["account_enabled"], false, "{five}");
    assert_eq!(five["display_name"], "Five Disabled", "{five}");
}

/// A user made in graphsim's tenant, in no group.
async fn stranger(w: &World, id: &str, upn: &str, name: &str) {
    let user = json!({"id": id, "userPrincipalName": upn, "displayName": name,
                      "password": "First-Key-2026!"});
    w.sim(Method::POST, "/_sim/users", Some(user)).await;
}

/// Brings user `n` back in graphsim as `before` showed them (a restore keeps the id).
async fn restore(w: &World, n: u32, before: &Value) {
    w.sim(
        Method::POST,
        "/_sim/users",
        Some(json!({
            "id": ext(n),
            "userPrincipalName": before["user_principal_name"],
            "displayName": before["display_name"],
            "mail": before["mail"],
            "givenName": before["given_name"],
            "surname": before["surname"],
        })),
    )
    .await;
}

/// Whether the record of `user` says Entra ID deleted them.
async fn taken_for_deleted(w: &World, user: &Value) -> bool {
    events_of(w, user)
        .await
        .iter()
        .any(|e| e.to_string().contains("deleted_in_entra"))
}

async fn events_of(w: &World, user: &Value) -> Vec<Value> {
    let id = user["id"].as_str().unwrap();
    let (_, events) = w
        .admin(Method::GET, &format!("/v1/users/{id}/events"), None)
        .await;
    events["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn deletion_disabling_and_attribute_changes_in_entra_arrive_as_events() {
    let w = world(json!({"removal_behavior": "deactivate", "auto_import": true})).await;
    w.sync().await;
    let (before8, before9) = (w.user(8).await.unwrap(), w.user(9).await.unwrap());
    w.sim(Method::DELETE, &format!("/_sim/users/{}", ext(7)), None)
        .await;
    w.sim(
        Method::PATCH,
        &format!("/_sim/users/{}", ext(8)),
        Some(json!({"accountEnabled": false})),
    )
    .await;
    w.sim(
        Method::PATCH,
        &format!("/_sim/users/{}", ext(9)),
        Some(json!({"displayName": "Renamed Person", "mail": "renamed@contoso.com"})),
    )
    .await;
    let run = w.sync().await;
    assert_eq!(run["counters"]["deleted"], 2, "{run}");
    assert_eq!(run["counters"]["changed"], 1, "{run}");
    assert_eq!(w.user(7).await.unwrap()["status"], "deactivated");
    let disabled = w.user(8).await.unwrap();
    assert_eq!(disabled["status"], "deactivated");
    assert_eq!(disabled["account_enabled"], false);
    let renamed = w.user(9).await.unwrap();
    assert_eq!(renamed["display_name"], "Renamed Person");
    assert_eq!(renamed["mail"], "renamed@contoso.com");
    assert_eq!(renamed["status"], "active");
    // Searches find the user by the new name, not the old one.
    let search = |q: &str| {
        let url = format!("/v1/users?domain={}&q={q}", w.domain);
        let w = &w;
        async move {
            let (s, body) = w.admin(Method::GET, &url, None).await;
            assert_eq!(s, StatusCode::OK, "{body}");
            body["items"].as_array().unwrap().clone()
        }
    };
    let found = search("renamed%20pers").await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["id"], renamed["id"]);
    let old_name = before9["display_name"].as_str().unwrap().to_lowercase();
    assert!(!search(&urlencoding::encode(&old_name))
        .await
        .iter()
        .any(|u| u["id"] == renamed["id"]));
    // Graph names an updated user with only what changed: the rest stays as recorded.
    for (now, before) in [(&disabled, &before8), (&renamed, &before9)] {
        for field in ["user_principal_name", "given_name", "surname"] {
            assert!(!before[field].is_null(), "{before}");
            assert_eq!(now[field], before[field], "{field}: {now}");
        }
    }
    assert_eq!(disabled["mail"], before8["mail"]);

    // The reasons are on record.
    let id = w.user(7).await.unwrap()["id"].as_str().unwrap().to_owned();
    let (_, events) = w
        .admin(Method::GET, &format!("/v1/users/{id}/events"), None)
        .await;
    let left = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "MemberLeftSyncGroup")
        .unwrap()
        .clone();
    assert_eq!(left["payload"]["reason"], "deleted_in_entra", "{left}");

    // Enabled again: back in scope, still deactivated until an admin acts.
    w.sim(
        Method::PATCH,
        &format!("/_sim/users/{}", ext(8)),
        Some(json!({"accountEnabled": true})),
    )
    .await;
    w.sync().await;
    let back = w.user(8).await.unwrap();
    assert_eq!(back["in_sync_group"], true);
    assert_eq!(back["status"], "deactivated");

    // A user renamed and added to the group in one window: their delta entry carries
    // only the new name, and the engine reads the rest before recording them.
    w.sim(
        Method::PATCH,
        &format!("/_sim/users/{}", ext(36)),
        Some(json!({"displayName": "Joined Renamed"})),
    )
    .await;
    w.join(36).await;
    w.sync().await;
    let joined = w.user(36).await.expect("the new member is recorded");
    assert_eq!(joined["display_name"], "Joined Renamed");
    assert!(
        joined["user_principal_name"]
            .as_str()
            .unwrap()
            .ends_with("@contoso.onmicrosoft.com"),
        "{joined}"
    );
    assert!(!joined["mail"].is_null(), "{joined}");
}

#[tokio::test]
async fn an_expired_delta_token_leads_to_a_full_reread_and_reconcile() {
    let w = world(json!({"auto_import": true})).await;
    w.sync().await;
    w.leave(11).await;
    w.sim(
        Method::PATCH,
        &format!("/_sim/users/{}", ext(12)),
        Some(json!({"surname": "Changed"})),
    )
    .await;
    w.sim(Method::POST, "/_sim/delta/expire", None).await;
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["full"], true, "the record says what happened: {run}");
    assert_eq!(run["counters"]["left"], 1, "{run}");
    assert_eq!(run["counters"]["changed"], 1, "{run}");
    assert_eq!(w.user(11).await.unwrap()["status"], "deactivated");
    assert_eq!(w.user(12).await.unwrap()["surname"], "Changed");
    // And the fresh links work: nothing more to record.
    let head = w.head().await;
    let run = w.sync().await;
    assert_eq!(run["full"], false, "{run}");
    assert!(w.user_events_after(head).await.is_empty());
}

#[tokio::test]
async fn a_429_storm_with_retry_after_is_waited_out() {
    let w = world(json!({})).await;
    w.sim(
        Method::POST,
        "/_sim/faults",
        Some(json!({"path_prefix": "/v1.0/groups", "status": 429, "retry_after": 0.2, "count": 4})),
    )
    .await;
    let started = Instant::now();
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["counters"]["added"], 29);
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "Retry-After was honoured"
    );
}

#[tokio::test]
async fn a_domain_with_a_wrong_secret_fails_with_graphs_code_and_the_other_syncs() {
    let w = world(json!({})).await;
    let fabrikam = "0e0e0e0e-1111-4222-8333-444444444444";
    let mut body = domain_body(
        "fabrikam.onmicrosoft.com",
        &sim_of_tenant(fabrikam).await,
        "not-the-secret",
        &json!({}),
    );
    body["tenant_id"] = json!(fabrikam);
    let (s, bad) = w.admin(Method::POST, "/v1/domains", Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{bad}");
    let bad = bad["id"].as_str().unwrap().to_owned();
    let (failed, ok) = tokio::join!(w.sync_domain(&bad), w.sync_domain(&w.domain));
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["graph_code"], "AADSTS7000215", "{failed}");
    assert_eq!(ok["status"], "succeeded", "{ok}");
    let (_, d) = w
        .admin(Method::GET, &format!("/v1/domains/{bad}"), None)
        .await;
    assert_eq!(d["last_sync"]["status"], "failed");
    assert_eq!(d["last_sync"]["graph_code"], "AADSTS7000215");
    assert!(!d.to_string().contains("not-the-secret"));
}

#[tokio::test]
async fn a_removed_secret_is_never_used_after_the_removal_returns() {
    let w = world(json!({})).await;
    w.sync().await;
    let domain = idledger_domain::DomainId(w.domain.parse().unwrap());
    // Whoever holds the domain's client (a run, a rotation, a sign-in) holds it as it was.
    let (client, _) = w.app.state.sync.client(domain).expect("a client");
    client.domains().await.unwrap();
    let (s, _) = w.remove_credentials().await;
    assert_eq!(s, StatusCode::OK);
    let seen = w.sim_requests().await.len();
    let err = client.domains().await.unwrap_err();
    assert!(
        matches!(err, idledger::graph::GraphError::Retired),
        "{err:?}"
    );
    let err = client.access_token().await.unwrap_err();
    assert!(
        matches!(err, idledger::graph::GraphError::Retired),
        "{err:?}"
    );
    assert_eq!(w.sim_requests().await.len(), seen, "nothing was sent");
}

#[tokio::test]
async fn removing_credentials_stops_the_worker_and_putting_them_back_resumes() {
    let w = world(json!({})).await;
    w.sync().await;
    // A run held up by a slow Graph is stopped when the credentials go.
    w.sim(
        Method::POST,
        "/_sim/faults",
        Some(json!({"path_prefix": "/v1.0/groups", "delay_ms": 5000, "count": 1})),
    )
    .await;
    let (s, started) = w
        .admin(
            Method::POST,
            &format!("/v1/domains/{}/sync", w.domain),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let run = started["run_id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let removed_at = Instant::now();
    let (s, _) = w.remove_credentials().await;
    assert_eq!(s, StatusCode::OK);
    loop {
        let (_, r) = w
            .admin(
                Method::GET,
                &format!("/v1/domains/{}/sync-runs/{run}", w.domain),
                None,
            )
            .await;
        if r["status"] == "failed" {
            assert!(r["error"].as_str().unwrap().contains("credentials"), "{r}");
            break;
        }
        assert!(removed_at.elapsed() < Duration::from_secs(3), "{r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (s, body) = w
        .admin(
            Method::POST,
            &format!("/v1/domains/{}/sync", w.domain),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("removed"),
        "{body}"
    );

    let (s, _) = w
        .admin(
            Method::PUT,
            &format!("/v1/domains/{}/credentials", w.domain),
            Some(json!({"tenant_id": TENANT, "client_id": APP, "client_secret": SECRET})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(w.sync().await["status"], "succeeded");
}

/// A world whose second run was quarantined: six of its users left the sync group at once
/// (the guard's threshold is three). Answers the run.
async fn quarantined_world() -> (World, Value) {
    let w = world(json!({"auto_import": true, "deletion_threshold": 3})).await;
    w.sync().await;
    for n in 1..=6 {
        w.leave(n).await;
    }
    let run = w.sync().await;
    assert_eq!(run["status"], "quarantined", "{run}");
    (w, run)
}

/// `POST …/sync-runs/{run}/approve` for the quarantined `run` of the world's domain.
async fn approve(w: &World, run: &Value) -> (StatusCode, Value) {
    let path = format!(
        "/v1/domains/{}/sync-runs/{}/approve",
        w.domain,
        run["run_id"].as_str().unwrap()
    );
    w.admin(Method::POST, &path, None).await
}

/// The admin sees the quarantine on the domain's page, with how many removals wait (all
/// of them, not the first page the run lists) and whom they would remove, and approves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_quarantine_with_whom_it_would_remove_and_approves_it() {
    let (w, _) = quarantined_world().await;
    let b = Browser::start().await;
    b.sign_in(&w.app.public, &w.app.admin).await;
    b.goto(&format!("{}/console/domains/{}", w.app.public, w.domain))
        .await;
    b.wait_text("#quarantine", "it would remove 6 users").await;
    assert!(b.present("#approve").await);
    // Whom an approval removes, by name, before the button is pressed.
    for n in 1..=6 {
        let u = w.user(n).await.unwrap();
        b.wait_text("#held-removals", u["display_name"].as_str().unwrap())
            .await;
        b.wait_text("#held-removals", u["user_principal_name"].as_str().unwrap())
            .await;
    }
    b.client
        .execute(
            "document.querySelector('#quarantine').scrollIntoView({block: 'center'})",
            vec![],
        )
        .await
        .unwrap();
    b.screenshot("console-quarantine").await;
    b.click("#approve").await;
    b.client.accept_alert().await.unwrap();
    b.wait_text("#flash", "Removals approved").await;
    let u = w.user(1).await.unwrap();
    assert_ne!(u["status"], "active", "approved, still active: {u}");
}

#[tokio::test]
async fn the_deletion_guard_quarantines_a_mass_removal_until_approved() {
    let (w, run) = quarantined_world().await;
    assert_eq!(run["held_removals"].as_array().unwrap().len(), 6);
    assert_eq!(run["held_removals_total"], 6);
    // They page, in id order, like every collection.
    let held = format!(
        "/v1/domains/{}/sync-runs/{}/held-removals",
        w.domain,
        run["run_id"].as_str().unwrap()
    );
    let (pages, n) = all_pages(&w, &format!("{held}?"), 4).await;
    assert_eq!(n, 2);
    let ids: Vec<&Value> = pages.iter().map(|h| &h["user_id"]).collect();
    let listed: Vec<&Value> = run["held_removals"].as_array().unwrap().iter().collect();
    assert_eq!(ids, listed, "the run lists the same, in the same order");
    for n in 1..=6 {
        let u = w.user(n).await.unwrap();
        assert_eq!(u["status"], "active", "held back: {u}");
        assert_eq!(u["in_sync_group"], false);
    }
    let (_, d) = w
        .admin(Method::GET, &format!("/v1/domains/{}", w.domain), None)
        .await;
    assert_eq!(d["quarantined_run"], run["run_id"]);

    // The admin puts one back in Entra ID, then approves: the others are deactivated.
    w.join(6).await;
    w.sync().await;
    let run_id = run["run_id"].as_str().unwrap();
    let (s, approved) = approve(&w, &run).await;
    assert_eq!(s, StatusCode::OK, "{approved}");
    assert_eq!(approved["approved"], true);
    for n in 1..=5 {
        assert_eq!(w.user(n).await.unwrap()["status"], "deactivated");
    }
    assert_eq!(w.user(6).await.unwrap()["status"], "active");
    let (_, d) = w
        .admin(Method::GET, &format!("/v1/domains/{}", w.domain), None)
        .await;
    assert_eq!(d["quarantined_run"], Value::Null);
    let (_, r) = w
        .admin(
            Method::GET,
            &format!("/v1/domains/{}/sync-runs/{run_id}", w.domain),
            None,
        )
        .await;
    assert_eq!(r["removals_applied"], true, "{r}");
    // An admin brings one back though they are still out of the group: approving again
    // undoes no later decision.
    let one = w.user(1).await.unwrap()["id"].as_str().unwrap().to_owned();
    let (s, b) = w
        .admin(Method::POST, &format!("/v1/users/{one}/activate"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _) = approve(&w, &run).await;
    assert_eq!(s, StatusCode::CONFLICT, "approved once");
    assert_eq!(w.user(1).await.unwrap()["status"], "active");
}

/// While a mass removal waits for approval, a later run's removals wait with it: the
/// rest of a group being emptied does not slip under the guard a few at a time.
#[tokio::test]
async fn removals_after_a_held_mass_removal_wait_with_it() {
    let (w, run) = quarantined_world().await;
    w.leave(7).await;
    let later = w.sync().await;
    assert_eq!(later["status"], "quarantined", "{later}");
    assert_eq!(later["held_removals_total"], 1, "{later}");
    assert_eq!(w.user(7).await.unwrap()["status"], "active");
    // Approving both removes all seven; a run with nothing to remove is not held.
    for r in [&run, &later] {
        let (s, b) = approve(&w, r).await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    for n in 1..=7 {
        assert_eq!(w.user(n).await.unwrap()["status"], "deactivated");
    }
    assert_eq!(w.sync().await["status"], "succeeded");
}

/// A removed domain's users are let go with it: its held removals wait no more, and
/// approving one is refused, changing nothing.
#[tokio::test]
async fn a_removed_domain_has_no_quarantine_to_approve() {
    let (w, run) = quarantined_world().await;
    let (s, b) = w
        .admin(Method::DELETE, &format!("/v1/domains/{}", w.domain), None)
        .await;
    assert!(s.is_success(), "{s}: {b}");
    let (_, d) = w
        .admin(Method::GET, &format!("/v1/domains/{}", w.domain), None)
        .await;
    assert_eq!(d["quarantined_run"], Value::Null, "{d}");
    let head = w.head().await;
    let (s, b) = approve(&w, &run).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_eq!(w.head().await, head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_approving_one_quarantine_at_once_apply_it_once() {
    let (w, run) = quarantined_world().await;
    let head = w.head().await;
    let path = format!(
        "/v1/domains/{}/sync-runs/{}/approve",
        w.domain,
        run["run_id"].as_str().unwrap()
    );
    let tries = (0..6).map(|_| w.admin(Method::POST, &path, None));
    let mut approved = 0;
    for (s, body) in futures_util::future::join_all(tries).await {
        match s {
            StatusCode::OK => approved += 1,
            StatusCode::CONFLICT => assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("approved already"),
                "{body}"
            ),
            s => panic!("{s}: {body}"),
        }
    }
    assert_eq!(approved, 1);
    let kinds = w.events_after(head).await;
    let count = |kind: &str| kinds.iter().filter(|(_, k)| k == kind).count();
    assert_eq!(count("SyncQuarantineApproved"), 1, "{kinds:?}");
    assert_eq!(count("UserDeactivated"), 6, "{kinds:?}");
}

/// A dry run's report waits on Graph: an admin whose token is revoked meanwhile gets no
/// report of the directory.
#[tokio::test]
async fn a_dry_run_reports_to_no_token_revoked_while_it_ran() {
    let w = world(json!({})).await;
    let (admin, id) = w.app.token_and_id("admin", &[]).await;
    w.sim(
        Method::POST,
        "/_sim/faults",
        Some(json!({"path_prefix": "/v1.0/groups", "delay_ms": 1000, "count": 1})),
    )
    .await;
    let path = format!("/v1/domains/{}/sync?dry_run=true", w.domain);
    let dry = w.app.call(Some(&admin), Method::POST, &path, None);
    let revoke = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        w.app.revoke(&id).await
    };
    let ((s, body), revoked) = tokio::join!(dry, revoke);
    assert!(revoked.is_success(), "{revoked}");
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
}

#[tokio::test]
async fn a_dry_run_reports_the_changes_and_appends_only_its_run_record() {
    let w = world(json!({"auto_import": true})).await;
    w.sync().await;
    w.leave(4).await;
    let head = w.head().await;
    let (s, dry) = w
        .admin(
            Method::POST,
            &format!("/v1/domains/{}/sync?dry_run=true", w.domain),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{dry}");
    assert_eq!(dry["counters"]["left"], 1, "{dry}");
    let change = &dry["changes"][0];
    assert_eq!(change["external_id"], ext(4).as_str());
    assert_eq!(change["outcome"], "left");
    assert!(change["events"].to_string().contains("UserDeactivated"));
    assert!(w.user_events_after(head).await.is_empty());
    assert_eq!(w.user(4).await.unwrap()["status"], "active");
    let (_, runs) = w
        .admin(
            Method::GET,
            &format!("/v1/domains/{}/sync-runs", w.domain),
            None,
        )
        .await;
    assert_eq!(runs["items"][0]["dry_run"], true);
    // The domain's last sync stays the last real run.
    let (_, d) = w
        .admin(Method::GET, &format!("/v1/domains/{}", w.domain), None)
        .await;
    assert_ne!(d["last_sync"]["run_id"], runs["items"][0]["run_id"], "{d}");
    assert_eq!(d["last_sync"]["run_id"], runs["items"][1]["run_id"], "{d}");
    // The log says who asked for it: the admin, not the scheduler.
    let started = w.first_event_after(head, "SyncRunStarted").await;
    assert!(
        started["actor"].as_str().unwrap().starts_with("admin:"),
        "{started}"
    );
    // The real run still sees the change: the dry run moved no delta link.
    let run = w.sync().await;
    assert_eq!(run["counters"]["left"], 1, "{run}");
}

#[tokio::test]
async fn a_dry_run_pages_its_changes() {
    let w = world(json!({"auto_import": true})).await;
    w.sync().await;
    for n in [3, 4, 5] {
        w.leave(n).await;
    }
    // A bad limit is refused before any run is recorded.
    let head = w.head().await;
    for query in ["dry_run=true&limit=0", "limit=1001"] {
        let (s, body) = w
            .admin(
                Method::POST,
                &format!("/v1/domains/{}/sync?{query}", w.domain),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {body}");
    }
    assert_eq!(w.head().await, head, "nothing recorded");
    let (s, dry) = w
        .admin(
            Method::POST,
            &format!("/v1/domains/{}/sync?dry_run=true&limit=2", w.domain),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{dry}");
    assert_eq!(dry["changes_total"], 3, "{dry}");
    let first = dry["changes"].as_array().unwrap().clone();
    assert_eq!(first.len(), 2, "{dry}");
    assert_eq!(dry["next"], first[1]["user_id"]);
    let changes = format!(
        "/v1/domains/{}/sync-runs/{}/changes",
        w.domain,
        dry["run_id"].as_str().unwrap()
    );
    let (s, rest) = w
        .admin(
            Method::GET,
            &format!("{changes}?after={}&limit=2", dry["next"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{rest}");
    assert_eq!(rest["next"], Value::Null, "{rest}");
    let mut all: Vec<String> = first
        .iter()
        .chain(rest["items"].as_array().unwrap())
        .map(|c| c["external_id"].as_str().unwrap().to_owned())
        .collect();
    all.sort();
    assert_eq!(all, vec![ext(3), ext(4), ext(5)]);
    // The whole list in one page, in user id order, as the first page began it.
    let (_, whole) = w.admin(Method::GET, &changes, None).await;
    assert_eq!(whole["items"][0], first[0], "{whole}");
    assert_eq!(whole["items"].as_array().unwrap().len(), 3, "{whole}");

    let unknown = uuid::Uuid::now_v7();
    let (s, body) = w
        .admin(Method::GET, &format!("{changes}?after={unknown}"), None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    let (s, _) = w
        .admin(Method::GET, &format!("{changes}?limit=0"), None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // A real run keeps no list of planned changes: its outcomes are on record instead.
    let run = w.sync().await;
    let (s, body) = w
        .admin(
            Method::GET,
            &format!(
                "/v1/domains/{}/sync-runs/{}/changes",
                w.domain,
                run["run_id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn invites_go_to_the_outbox_and_are_recorded() {
    let w = world(json!({})).await;
    w.sync().await;
    let candidate = w.user(2).await.unwrap();
    let id = candidate["id"].as_str().unwrap().to_owned();
    let (s, body) = w
        .admin(Method::POST, &format!("/v1/users/{id}/invite"), None)
        .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "candidates are imported first: {body}"
    );
    w.import_all().await;
    let (s, body) = w
        .admin(Method::POST, &format!("/v1/users/{id}/invite"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["via"], "outbox");
    let outbox = w.app.dir.path().join("outbox");
    let files: Vec<_> = std::fs::read_dir(&outbox).unwrap().collect();
    assert_eq!(files.len(), 1);
    let mail = std::fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap();
    assert!(mail.contains("sign-in method"), "{mail}");
    assert!(
        mail.contains(&format!("To: {}", body["to"].as_str().unwrap())),
        "{mail}"
    );
    assert!(w.user(2).await.unwrap()["invited_at"].is_string());
}

#[tokio::test]
async fn bad_sync_requests_get_clear_errors_and_change_nothing() {
    let w = world(json!({})).await;
    let (s, body) = w
        .admin(
            Method::POST,
            &format!("/v1/domains/{}/import", w.domain),
            Some(json!({"user_ids": [uuid::Uuid::new_v4()]})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (s, _) = w
        .admin(
            Method::POST,
            &format!("/v1/domains/{}/import", w.domain),
            Some(json!({"all": true, "user_ids": []})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = w
        .admin(
            Method::GET,
            &format!("/v1/domains/{}/sync-runs/not-a-uuid", w.domain),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = w
        .admin(
            Method::POST,
            &format!("/v1/domains/{}/sync?dry_run=perhaps", w.domain),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let plain = w.app.domain("nocreds.onmicrosoft.com").await;
    let (s, body) = w
        .admin(
            Method::POST,
            &format!("/v1/domains/{}/sync", plain["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    let auditor = w.app.token("auditor", &[]).await;
    let (s, _) = w
        .app
        .call(
            Some(&auditor),
            Method::POST,
            &format!("/v1/domains/{}/sync", w.domain),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(w.users("").await.is_empty());
}

#[tokio::test]
async fn a_missing_group_fails_the_run_naming_the_group_and_the_domain() {
    let w = world(json!({"sync_group": "No Such Group"})).await;
    w.sync_fails(&["No Such Group", "contoso.onmicrosoft.com"])
        .await;
}

#[tokio::test]
async fn a_configured_group_id_that_names_no_group_fails_the_run_instead_of_emptying_it() {
    let w = world(json!({"auto_import": true})).await;
    w.sync().await;
    let (s, _) = w
        .admin(
            Method::PATCH,
            &format!("/v1/domains/{}", w.domain),
            Some(json!({"sync_group_id": "a1b2c3d4-0000-4000-8000-0000000000ff"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    w.sync_fails(&["0000000000ff"]).await;
    assert_eq!(w.users("&status=active").await.len(), 29);
    // Ids go into Graph's paths: anything but a GUID is refused; a GUID pasted in upper
    // case is kept as Graph writes it.
    let path = format!("/v1/domains/{}", w.domain);
    let patch = |body: serde_json::Value| w.admin(Method::PATCH, &path, Some(body));
    for bad in [
        "../../users",
        "not-a-guid",
        "{a1b2c3d4-0000-4000-8000-0000000000ff}",
    ] {
        let (s, body) = patch(json!({"rotation_group_id": bad})).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }
    let (s, body) = patch(json!({"sync_group_id": SYNC.to_ascii_uppercase()})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["sync_group_id"], SYNC, "{body}");
    assert_eq!(w.sync().await["status"], "succeeded");
}

/// An object id no Entra ID would give (a megabyte of one would not even fit in a record)
/// costs its own entry, not the domain's sync: the run succeeds with everyone else, in a
/// full round and in the delta rounds after it.
#[tokio::test]
async fn a_member_with_an_absurd_id_is_skipped_and_the_rest_sync() {
    let w = world(json!({"auto_import": true})).await;
    // A user in Entra and in the sync group, with the id given.
    let w = &w;
    let add_member = |id: String, upn: &'static str| async move {
        let user = json!({"id": id, "userPrincipalName": upn, "displayName": "Odd One",
                          "password": "First-Key-2026!"});
        w.sim(Method::POST, "/_sim/users", Some(user)).await;
        w.sim(
            Method::POST,
            &format!("/_sim/groups/{SYNC}/members/{id}"),
            None,
        )
        .await;
    };
    add_member("a".repeat(5000), "odd.one@contoso.onmicrosoft.com").await;
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let users = w.users("").await;
    assert_eq!(users.len(), 30, "everyone but the odd one");
    assert!(!users
        .iter()
        .any(|u| u["user_principal_name"] == "odd.one@contoso.onmicrosoft.com"));
    // In a delta round too, next to a real change.
    let active = w.users("&status=active").await.len();
    add_member("b".repeat(100), "odd.two@contoso.onmicrosoft.com").await;
    w.leave(4).await;
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["full"], false, "{run}");
    assert_eq!(w.users("&status=active").await.len(), active - 1);
    assert_eq!(w.users("").await.len(), 30);
}

/// A deleted group is not an empty one: read as "no members", every user would leave it
/// (and with *delete*, lose their keys) though Entra can restore it for 30 days.
#[tokio::test]
async fn a_deleted_group_fails_the_run_and_removes_no_one() {
    let w = world(json!({"auto_import": true, "removal_behavior": "delete"})).await;
    let (s, _) = w
        .admin(
            Method::PATCH,
            &format!("/v1/domains/{}", w.domain),
            Some(json!({"sync_group_id": SYNC})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    w.sync().await;
    let head = w.head().await;
    w.sim(Method::DELETE, &format!("/_sim/groups/{SYNC}"), None)
        .await;
    // An incremental round, then a full one (after the delta token expired).
    for expire in [false, true] {
        if expire {
            w.sim(Method::POST, "/_sim/delta/expire", None).await;
        }
        w.sync_fails(&[SYNC, "deleted"]).await;
    }
    assert_eq!(w.users("&status=active").await.len(), 29);
    assert_eq!(w.user_events_after(head).await, Vec::<String>::new());
}

/// Display names are not unique, and any tenant user may be able to create a group: a
/// namesake of the sync group neither stops the runs (every run "ambiguous", nobody who
/// left ever deactivated) nor, once the real group is gone, takes over (its members
/// imported) — the group found so far stays the one synced.
#[tokio::test]
async fn a_namesake_of_the_sync_group_neither_stops_sync_nor_takes_it_over() {
    let w = world(json!({"auto_import": true, "removal_behavior": "deactivate"})).await;
    w.sync().await;
    let namesake = "d0d0d0d0-0000-4000-8000-00000000beef";
    w.sim(
        Method::POST,
        "/_sim/groups",
        Some(json!({"id": namesake, "displayName": "Hideez Users Sync"})),
    )
    .await;
    let mallory = "c0a80000-0000-4000-8000-0000000000f3";
    stranger(&w, mallory, "mallory@contoso.onmicrosoft.com", "Mallory").await;
    w.sim(
        Method::POST,
        &format!("/_sim/groups/{namesake}/members/{mallory}"),
        None,
    )
    .await;
    w.leave(5).await;
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(w.user(5).await.unwrap()["status"], "deactivated");
    w.sim(Method::POST, "/_sim/delta/expire", None).await;
    assert_eq!(w.sync().await["full"], true);

    let head = w.head().await;
    w.sim(Method::DELETE, &format!("/_sim/groups/{SYNC}"), None)
        .await;
    for expire in [false, true] {
        if expire {
            w.sim(Method::POST, "/_sim/delta/expire", None).await;
        }
        w.sync_fails(&["Hideez Users Sync", "no longer"]).await;
    }
    assert!(!w
        .users("")
        .await
        .iter()
        .any(|u| u["external_id"] == mallory));
    assert_eq!(w.user_events_after(head).await, Vec::<String>::new());
}

/// "Sync now" clicked again and again while a run holds the domain queues one more run,
/// not one per click: requests made while a run waits for its turn are that run.
#[tokio::test]
async fn sync_requests_made_while_a_run_waits_join_it() {
    let w = world(json!({})).await;
    w.sync().await;
    w.sim(
        Method::POST,
        "/_sim/faults",
        Some(json!({"path_prefix": "/v1.0/groups/delta", "delay_ms": 1500, "count": 1})),
    )
    .await;
    let start = || async {
        let (s, b) = w
            .admin(
                Method::POST,
                &format!("/v1/domains/{}/sync", w.domain),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
        b["run_id"].as_str().unwrap().to_owned()
    };
    let running = start().await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let queued = futures_util::future::join_all((0..5).map(|_| start())).await;
    assert!(queued.iter().all(|r| r == &queued[0]), "{queued:?}");
    assert_ne!(queued[0], running);
    let (s, runs) = w
        .admin(
            Method::GET,
            &format!("/v1/domains/{}/sync-runs", w.domain),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(runs["items"].as_array().unwrap().len(), 3, "{runs}");
    // Once it runs, the next request queues a run of its own.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, r) = w
            .admin(
                Method::GET,
                &format!("/v1/domains/{}/sync-runs/{}", w.domain, queued[0]),
                None,
            )
            .await;
        if r["status"] != "running" {
            assert_eq!(r["status"], "succeeded", "{r}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{r}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let after = start().await;
    assert!(after != queued[0] && after != running);
}

/// Links from Graph are checked before they are kept: a delta link to another host would
/// otherwise be stored by a run that succeeds and fail every run after it.
#[tokio::test]
async fn a_delta_link_off_the_graph_host_is_never_kept() {
    let w = world(json!({})).await;
    w.sync().await;
    let (evil, hits) = attacker().await;
    w.sim(Method::PUT, "/_sim/link-host", Some(json!({"host": evil})))
        .await;
    w.sync_fails(&["not the configured Graph host"]).await;
    w.sim(Method::PUT, "/_sim/link-host", Some(json!({"host": null})))
        .await;
    let run = w.sync().await;
    assert_eq!(
        run["full"], false,
        "the links kept are the good ones: {run}"
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// A next-page link that leads back to a page already read ends the round at once: it
/// would otherwise page forever, holding the domain's sync.
#[tokio::test]
async fn a_paging_loop_fails_the_run_and_the_next_run_succeeds() {
    let w = world(json!({})).await;
    w.sim(
        Method::POST,
        "/_sim/faults",
        Some(json!({"path_prefix": "/v1.0/groups/delta", "next_link_to_self": true, "count": 1_000_000})),
    )
    .await;
    w.sync_fails(&["already read"]).await;
    w.sim(Method::DELETE, "/_sim/faults", None).await;
    let run = w.sync().await;
    assert_eq!(run["counters"]["added"], 29, "{run}");

    // The same page again under a new link each time (Graph has served a groups delta
    // round so): ended at the third sight of the page, not after 100,000 pages.
    w.sim(Method::POST, "/_sim/delta/expire", None).await;
    w.sim(
        Method::POST,
        "/_sim/faults",
        Some(json!({"path_prefix": "/v1.0/groups/delta", "next_link_to_self_renamed": true, "count": 1_000_000})),
    )
    .await;
    let started = std::time::Instant::now();
    w.sync_fails(&["again and again"]).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(20));

    // Empty pages under new links (an incremental round with nothing to say): nothing to
    // know a page by, ended after ten thousand in a row.
    w.sim(Method::DELETE, "/_sim/faults", None).await;
    w.sync().await;
    w.sim(
        Method::POST,
        "/_sim/faults",
        Some(json!({"path_prefix": "/v1.0/users/delta", "next_link_to_self_renamed": true, "count": 1_000_000})),
    )
    .await;
    let started = std::time::Instant::now();
    w.sync_fails(&["empty pages in a row"]).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

/// An answer larger than any page of Graph's is refused as it arrives, not buffered.
#[tokio::test]
async fn an_oversized_answer_fails_the_run() {
    let w = world(json!({})).await;
    w.sim(
        Method::POST,
        "/_sim/faults",
        Some(json!({"path_prefix": "/v1.0/groups/delta", "pad_bytes": 40 << 20, "count": 1})),
    )
    .await;
    w.sync_fails(&["larger than"]).await;
    let run = w.sync().await;
    assert_eq!(run["counters"]["added"], 29, "{run}");
}

#[tokio::test]
async fn keys_are_assigned_to_imported_users_one_user_per_key() {
    let w = world(json!({})).await;
    w.sync().await;
    let candidate = w.user(1).await.unwrap()["id"].as_str().unwrap().to_owned();
    let key = |k: &str| Some(json!({"key_id": k}));
    let (s, _) = w
        .admin(
            Method::PUT,
            &format!("/v1/users/{candidate}/key"),
            key("K1"),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "candidates are imported first");
    w.import_all().await;
    let one = candidate;
    let two = w.user(2).await.unwrap()["id"].as_str().unwrap().to_owned();
    let (s, body) = w
        .admin(Method::PUT, &format!("/v1/users/{one}/key"), key("K1"))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["key_id"], "K1");
    let (s, body) = w
        .admin(Method::PUT, &format!("/v1/users/{two}/key"), key("K1"))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    let (s, body) = w
        .admin(Method::PUT, &format!("/v1/users/{one}/key"), key("K2"))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["key_id"], "K2");
    let (s, body) = w
        .admin(Method::PUT, &format!("/v1/users/{two}/key"), key(""))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (s, body) = w
        .admin(Method::DELETE, &format!("/v1/users/{one}/key"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["key_id"], Value::Null);
    let (_, events) = w
        .admin(Method::GET, &format!("/v1/users/{one}/events"), None)
        .await;
    let kinds: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .filter(|k| k.starts_with("Key"))
        .collect();
    assert_eq!(
        kinds,
        [
            "KeyAssigned",
            "KeyUnassigned",
            "KeyAssigned",
            "KeyUnassigned"
        ]
    );
}

/// A loopback listener that counts the connections it gets: where a secret or a token
/// must never go.
async fn attacker() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(socket);
        }
    });
    (host, hits)
}

/// A saved client secret can never be read back: moving where it is sent needs the secret
/// itself, plain http goes to loopback only, and a link from Graph to another host is not
/// followed (the token never goes there).
#[tokio::test]
async fn a_saved_secret_goes_nowhere_but_where_it_was_saved_for() {
    let w = world(json!({})).await;
    let (evil, hits) = attacker().await;
    let path = format!("/v1/domains/{}", w.domain);
    for moved in [
        json!({"authority_url": format!("http://{evil}")}),
        json!({"graph_url": format!("http://{evil}")}),
        json!({"authority_url": "https://login.attacker.example"}),
    ] {
        let (s, body) = w.admin(Method::PATCH, &path, Some(moved.clone())).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{moved}: {body}");
        assert!(body.to_string().contains("client_secret"), "{body}");
    }
    for not_https in ["http://attacker.example", "http://10.1.2.3:80"] {
        let (s, body) = w
            .admin(
                Method::PATCH,
                &path,
                Some(json!({"authority_url": not_https, "client_secret": SECRET})),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    // With the secret in the same request the move is allowed (and saves it again).
    let (_, before) = w.admin(Method::GET, &path, None).await;
    let (s, after) = w
        .admin(
            Method::PATCH,
            &path,
            Some(json!({"sync_interval_minutes": 30, "authority_url": w.sim, "client_secret": SECRET})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{after}");
    assert_ne!(
        before["credentials"]["updated_at"],
        after["credentials"]["updated_at"]
    );

    // Graph links to another host: the run fails naming it, and nothing reaches it.
    w.sim(
        Method::PUT,
        "/_sim/link-host",
        Some(json!({"host": evil.clone()})),
    )
    .await;
    w.sim(Method::POST, "/_sim/delta/expire", None).await;
    w.sync_fails(&["not the configured Graph host"]).await;
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// Settings an earlier build saved without checking them (plain http to a host off the
/// machine): the secret is not sent there, and the run says why.
#[tokio::test]
async fn an_insecure_url_saved_before_the_rule_gets_nothing() {
    let w = world(json!({})).await;
    let domain = idledger_domain::DomainId(w.domain.parse().unwrap());
    let settings = w
        .app
        .state
        .engine
        .projector
        .read()
        .domains
        .get(domain)
        .unwrap()
        .settings
        .clone();
    for (field, url) in [
        ("authority_url", "http://10.255.255.1:9"),
        ("graph_url", "http://[fd00::1]/v1.0"),
    ] {
        let mut old = settings.clone();
        match field {
            "authority_url" => old.authority_url = url.into(),
            _ => old.graph_url = url.into(),
        }
        let event: idledger_domain::Event =
            idledger_domain::events::DomainSettingsChanged { settings: old }.into();
        w.app
            .state
            .engine
            .log
            .append(idledger::store::AppendRequest::new(
                idledger_domain::StreamId::domain(domain),
                idledger::store::ExpectedVersion::Any,
                vec![idledger_domain::ProposedEvent::new(
                    uuid::Uuid::now_v7(),
                    idledger_domain::Actor::Operator,
                    event,
                )],
            ))
            .await
            .unwrap();
        w.app.state.engine.settle().await.unwrap();
        // The credentials saved after it, as that build allowed.
        let (s, body) = w
            .admin(
                Method::PUT,
                &format!("/v1/domains/{}/credentials", w.domain),
                Some(json!({"tenant_id": TENANT, "client_id": APP, "client_secret": SECRET})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let asked = w.sim_requests().await;
        let origin = url.trim_end_matches("/v1.0");
        w.sync_fails(&[origin, "not an https:// URL"]).await;
        assert_eq!(w.sim_requests().await, asked, "nothing was sent anywhere");
    }
    // Saved again through the API (which checks), the domain syncs.
    let (s, body) = w
        .admin(
            Method::PATCH,
            &format!("/v1/domains/{}", w.domain),
            Some(json!({"authority_url": w.sim, "graph_url": w.sim, "client_secret": SECRET})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
}

/// Deleting a user destroys their secrets for real: with the server stopped (its files
/// whole and released), the user's data key is in no file of the data dir, neither its
/// bytes nor the key wrapped as the key store keeps it (raw or base64), and the master key
/// can no longer open the user's sealed password.
#[tokio::test]
async fn a_deleted_users_data_key_is_in_no_file_and_their_password_opens_no_more() {
    use base64::Engine;
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    use idledger::secrets::{KeyStorage, Keyring, MasterKey};
    use idledger::store::EventLog;
    let b64 = base64::engine::general_purpose::STANDARD;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let sim = sim().await;
    let mut serve = Serve::start(&data, None).await;
    let domain = crate::crash::contoso_domain(
        &serve,
        &sim,
        json!({"auto_import": true, "removal_behavior": "delete"}),
    )
    .await;
    let sync = async |serve: &Serve| {
        let run = serve
            .call(Method::POST, &format!("/v1/domains/{domain}/sync"), None)
            .await;
        let run = run["run_id"].as_str().unwrap().to_owned();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = serve
                .call(
                    Method::GET,
                    &format!("/v1/domains/{domain}/sync-runs/{run}"),
                    None,
                )
                .await;
            if r["status"] != "running" {
                assert_eq!(r["status"], "succeeded", "{r}");
                return;
            }
            assert!(Instant::now() < deadline, "{r}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    sync(&serve).await;
    let users = serve.call(Method::GET, "/v1/users?limit=1000", None).await;
    let id = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["external_id"] == ext(5))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    serve
        .call(
            Method::PUT,
            &format!("/v1/users/{id}/key"),
            Some(json!({"key_id": "K-0005"})),
        )
        .await;
    crate::backup::rotated(&serve, &id).await;
    let password = serve
        .call(
            Method::POST,
            &format!("/v1/users/{id}/password/reveal"),
            Some(json!({"reason": "shred test"})),
        )
        .await["password"]
        .as_str()
        .unwrap()
        .to_owned();
    // The user's data key while they live, as the key store keeps it (a nonce, then the
    // key sealed under the master key with its id as associated data), and opened.
    let stream = idledger_domain::StreamId::user(idledger_domain::UserId(id.parse().unwrap()));
    let keys = idledger::secrets::keystore::KeyFile::open(&data).unwrap();
    let key_id = keys
        .get(format!("subject:{stream}").as_bytes())
        .unwrap()
        .expect("the user has a data key");
    let key_id = uuid::Uuid::from_slice(&key_id).unwrap();
    let wrapped = keys
        .get(format!("dk:{key_id}").as_bytes())
        .unwrap()
        .expect("the user's data key is stored while the user lives");
    drop(keys);
    let master = std::fs::read_to_string(data.join("master.key")).unwrap();
    let master = b64.decode(master.trim()).unwrap();
    let raw = chacha20poly1305::XChaCha20Poly1305::new_from_slice(&master)
        .unwrap()
        .decrypt(
            chacha20poly1305::XNonce::from_slice(&wrapped[..24]),
            Payload {
                msg: &wrapped[24..],
                aad: key_id.as_bytes(),
            },
        )
        .expect("the wrapped key opens with the master key");
    assert_eq!(raw.len(), 32);

    // Out of the sync group, with removals deleting: deleted, and their key shredded.
    let r = reqwest::Client::new()
        .delete(format!("{sim}/_sim/groups/{SYNC}/members/{}", ext(5)))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    sync(&serve).await;
    let gone = serve
        .call(Method::GET, &format!("/v1/users/{id}"), None)
        .await;
    assert_eq!(gone["status"], "deleted", "{gone}");
    serve.stop();
    crate::support::wait_released(&data).await;

    let needles = [
        ("the data key", raw.clone()),
        ("the data key in base64", b64.encode(&raw).into_bytes()),
        ("the wrapped data key", wrapped.clone()),
        (
            "the wrapped data key in base64",
            b64.encode(&wrapped).into_bytes(),
        ),
    ];
    let mut stack = vec![data.clone()];
    let mut scanned = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            scanned += 1;
            for (what, n) in &needles {
                assert!(
                    !bytes.windows(n.len()).any(|w| w == n.as_slice()),
                    "{what} of the deleted user is still in {}",
                    path.display()
                );
            }
        }
    }
    assert!(scanned >= 3, "{scanned} files");
    // Their sealed password, from the log: the key it names is the one looked for above
    // (which opens it to the password revealed), and the master key opens it no more.
    let log = crate::support::reopen(&data).await;
    let sealed = log
        .read_stream(&stream, 1, usize::MAX)
        .unwrap()
        .into_iter()
        .rev()
        .find_map(|e| match e.event {
            idledger_domain::Event::RotationStarted(r) => Some(r.sealed_password),
            _ => None,
        })
        .expect("the rotation sealed a password");
    assert_eq!(sealed.key_id.0, key_id);
    let opened = chacha20poly1305::XChaCha20Poly1305::new_from_slice(&raw)
        .unwrap()
        .decrypt(
            chacha20poly1305::XNonce::from_slice(&sealed.nonce),
            Payload {
                msg: &sealed.ciphertext,
                aad: stream.as_str().as_bytes(),
            },
        )
        .unwrap();
    assert_eq!(opened, password.as_bytes());
    let (master, _) = MasterKey::load(&data, None, true).unwrap();
    let keys = std::sync::Arc::new(idledger::secrets::keystore::KeyFile::open(&data).unwrap());
    assert!(matches!(
        Keyring::open(master, keys)
            .unwrap()
            .unseal(&stream, &sealed),
        Err(idledger::secrets::SecretsError::MissingKey(_))
    ));
}

/// A peer's numbers never panic the engine: a token answer claiming a lifetime of
/// u64::MAX seconds, or a Retry-After past any duration, harms nothing: the run that was
/// told to wait ends with Graph's 429 (not waited out, not retried early), and the next
/// one succeeds.
#[tokio::test]
async fn absurd_numbers_from_graph_do_not_stop_a_run() {
    let w = world(json!({"auto_import": true})).await;
    w.sim(
        Method::PUT,
        "/_sim/token-lifetime",
        Some(json!({"expires_in": u64::MAX})),
    )
    .await;
    w.sim(
        Method::POST,
        "/_sim/faults",
        Some(
            json!({"status": 429, "retry_after": 1e300, "path_prefix": "/v1.0/groups", "count": 1}),
        ),
    )
    .await;
    w.sync_fails(&["429"]).await;
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
}

/// Follows `next` from `path` (which has `?` already) to the end; every item once.
pub(crate) async fn all_pages(w: &World, path: &str, limit: usize) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut pages = 0;
    let mut after: Option<String> = None;
    loop {
        let url = match &after {
            None => format!("{path}&limit={limit}"),
            Some(a) => format!("{path}&limit={limit}&after={a}"),
        };
        let (s, body) = w.admin(Method::GET, &url, None).await;
        assert_eq!(s, StatusCode::OK, "{url}: {body}");
        let page = body["items"].as_array().unwrap();
        assert!(page.len() <= limit);
        items.extend(page.iter().cloned());
        pages += 1;
        match body["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => return (items, pages),
        }
    }
}

/// Every collection pages with `limit` / `after` / `next`, as `/v1/users` does.
#[tokio::test]
async fn candidates_runs_outcomes_domains_and_timelines_page() {
    let w = world(json!({})).await;
    let run = w.sync().await;
    let d = &w.domain;
    let (candidates, pages) = all_pages(&w, &format!("/v1/domains/{d}/candidates?"), 10).await;
    assert_eq!((candidates.len(), pages), (29, 3));
    let ids: BTreeSet<&str> = candidates
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 29, "no item twice");
    let (found, _) = all_pages(&w, &format!("/v1/domains/{d}/candidates?q=ADELE"), 10).await;
    assert_eq!(found.len(), 1, "{found:?}");
    // A search every candidate matches pages as the listing does, in id order.
    let (found, pages) = all_pages(&w, &format!("/v1/domains/{d}/candidates?q=contoso"), 10).await;
    assert_eq!(pages, 3);
    let listed: Vec<&str> = candidates
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    let searched: Vec<&str> = found.iter().map(|u| u["id"].as_str().unwrap()).collect();
    assert_eq!(searched, listed);
    let run_id = run["run_id"].as_str().unwrap();
    let (outcomes, pages) = all_pages(
        &w,
        &format!("/v1/domains/{d}/sync-runs/{run_id}/outcomes?"),
        10,
    )
    .await;
    // 29 candidates and the disabled member, recorded out of scope.
    assert_eq!((outcomes.len(), pages), (30, 3));
    // Each named as people read it, not by id alone.
    assert!(
        outcomes.iter().all(|o| o["user_principal_name"]
            .as_str()
            .is_some_and(|n| n.contains('@'))
            && o["display_name"].is_string()),
        "{outcomes:?}"
    );
    let (_, detail) = w
        .admin(
            Method::GET,
            &format!("/v1/domains/{d}/sync-runs/{run_id}"),
            None,
        )
        .await;
    assert_eq!(detail["users"].as_array().unwrap().len(), 30);
    assert!(detail["users_next"].is_null());
    w.sync().await;
    let (runs, pages) = all_pages(&w, &format!("/v1/domains/{d}/sync-runs?"), 1).await;
    assert_eq!((runs.len(), pages), (2, 2));
    assert!(
        runs[0]["run_id"].as_str() > runs[1]["run_id"].as_str(),
        "newest first"
    );
    for n in 0..4 {
        let (s, _) = w
            .admin(
                Method::POST,
                "/v1/domains",
                Some(json!({"domain": format!("paged{n}.onmicrosoft.com")})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let (domains, pages) = all_pages(&w, "/v1/domains?", 2).await;
    assert_eq!((domains.len(), pages), (5, 3));
    // Removed ones are flagged, and can be left out.
    let gone = domains[1]["id"].as_str().unwrap();
    let (s, _) = w
        .admin(Method::DELETE, &format!("/v1/domains/{gone}"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (live, _) = all_pages(&w, "/v1/domains?removed=false", 2).await;
    assert_eq!(live.len(), 4);
    assert!(live
        .iter()
        .all(|d| d["id"] != gone && d["removed"] == false));
    let (removed, _) = all_pages(&w, "/v1/domains?removed=true", 2).await;
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0]["id"], gone);
    let user = candidates[0]["id"].as_str().unwrap();
    let (story, _) = all_pages(&w, &format!("/v1/users/{user}/timeline?"), 1).await;
    let (_, whole) = w
        .admin(
            Method::GET,
            &format!("/v1/users/{user}/timeline?limit=1000"),
            None,
        )
        .await;
    assert_eq!(&story, whole["items"].as_array().unwrap());
    // Newest first: the same story backwards, a page at a time, whatever the page size.
    for limit in [1, 2, 1000] {
        let (backwards, _) = all_pages(
            &w,
            &format!("/v1/users/{user}/timeline?order=newest"),
            limit,
        )
        .await;
        let mut forwards = backwards.clone();
        forwards.reverse();
        assert_eq!(
            &forwards,
            whole["items"].as_array().unwrap(),
            "limit {limit}"
        );
    }
    // A cursor past the user's story names nothing: refused, not a walk of empty pages.
    let events = whole["items"].as_array().unwrap().len();
    for path in [
        format!(
            "/v1/users/{user}/timeline?order=newest&after={}",
            events + 2
        ),
        format!("/v1/users/{user}/timeline?order=newest&after=1000000"),
        format!("/v1/users/{user}/timeline?after={}", events + 1),
        format!("/v1/users/{user}/timeline?after=1000000"),
        format!("/v1/users/{user}/events?from_version={}", events + 2),
        format!("/v1/users/{user}/events?from_version=1000000"),
    ] {
        let (s, body) = w.admin(Method::GET, &path, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {body}");
    }
    // At the end of the story a cursor is the place to wait for more.
    for path in [
        format!("/v1/users/{user}/timeline?after={events}"),
        format!("/v1/users/{user}/events?from_version={}", events + 1),
    ] {
        let (s, body) = w.admin(Method::GET, &path, None).await;
        assert_eq!(s, StatusCode::OK, "{path}: {body}");
        assert_eq!(body["items"], json!([]), "{path}");
    }
    let (s, body) = w
        .admin(
            Method::GET,
            &format!("/v1/domains/{d}/candidates?limit=0"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
}

/// Under *delete*, a user disabled in Entra is deleted here; enabled again, they never left
/// the sync group, so no member change will say so: the delta round that shows them
/// enabled asks Graph whether they are a member, and they come back as a new user.
#[tokio::test]
async fn a_user_deleted_while_disabled_comes_back_when_enabled_again() {
    let w = world(json!({"removal_behavior": "delete", "auto_import": true})).await;
    w.sync().await;
    let first = w.user(8).await.unwrap()["id"].as_str().unwrap().to_owned();
    let path = format!("/_sim/users/{}", ext(8));
    let set_enabled = |on: bool| w.sim(Method::PATCH, &path, Some(json!({"accountEnabled": on})));
    set_enabled(false).await;
    let run = w.sync().await;
    assert_eq!(run["full"], false, "{run}");
    assert!(w.user(8).await.is_none(), "deleted while disabled");
    // Another user's change alone brings back no one.
    w.sim(
        Method::PATCH,
        &format!("/_sim/users/{}", ext(9)),
        Some(json!({"displayName": "Renamed Person"})),
    )
    .await;
    w.sync().await;
    assert!(w.user(8).await.is_none());
    set_enabled(true).await;
    let run = w.sync().await;
    assert_eq!(run["full"], false, "{run}");
    let back = w
        .user(8)
        .await
        .expect("enabled again: back in a delta round");
    assert_ne!(back["id"].as_str().unwrap(), first, "a new user");
    assert_eq!(back["status"], "active", "{back}");
    assert_eq!(back["account_enabled"], true);
    assert_eq!(back["in_sync_group"], true);

    // A deleted user enabled again outside the sync group stays out.
    w.leave(8).await;
    w.sync().await;
    assert!(w.user(8).await.is_none());
    set_enabled(false).await;
    w.sync().await;
    set_enabled(true).await;
    w.sync().await;
    assert!(w.user(8).await.is_none(), "not a member: not ours");
}

/// An admin imports a candidate while a run that will be quarantined reads Graph: the
/// run's append meets the import, plans again, and now has a removal to make. It is held
/// back with the others, never applied past the guard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_made_by_an_import_during_a_quarantined_run_is_held_too() {
    let w = world(json!({"removal_behavior": "delete", "deletion_threshold": 3})).await;
    w.sync().await;
    let w = &w;
    let id = |n| async move { w.user(n).await.unwrap()["id"].as_str().unwrap().to_owned() };
    let path = format!("/v1/domains/{}/import", w.domain);
    let import = |ids: Vec<String>| w.admin(Method::POST, &path, Some(json!({ "user_ids": ids })));
    let mut active = Vec::new();
    for n in 1..=4 {
        active.push(id(n).await);
    }
    let (s, body) = import(active).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let candidate = id(5).await;
    for n in 1..=5 {
        w.leave(n).await;
    }
    let deltas = || async {
        w.sim_requests()
            .await
            .iter()
            .filter(|r| r["path"].as_str().unwrap_or("").contains("groups/delta"))
            .count()
    };
    let before = deltas().await;
    w.sim(
        Method::POST,
        "/_sim/faults",
        Some(json!({"method": "GET", "path_prefix": "/v1.0/groups/delta", "delay_ms": 1500, "count": 1})),
    )
    .await;
    let (s, started) = w
        .admin(
            Method::POST,
            &format!("/v1/domains/{}/sync", w.domain),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{started}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while deltas().await == before {
        assert!(Instant::now() < deadline, "the run never read groups/delta");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The run has its picture of the engine; Graph holds its read.
    let (s, body) = import(vec![candidate.clone()]).await;
    assert_eq!(
        (s, &body["imported"]),
        (StatusCode::OK, &json!(1)),
        "{body}"
    );
    let run = started["run_id"].as_str().unwrap();
    let run = loop {
        let (_, r) = w
            .admin(
                Method::GET,
                &format!("/v1/domains/{}/sync-runs/{run}", w.domain),
                None,
            )
            .await;
        if r["status"] != "running" {
            break r;
        }
        assert!(Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(run["status"], "quarantined", "{run}");
    let u = w.user(5).await.expect("not deleted past the guard");
    assert_eq!(u["status"], "active", "{u}");
    let held: Vec<&str> = run["held_removals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(held.contains(&candidate.as_str()), "{run}");
    assert_eq!(run["held_removals_total"], 5, "{run}");
}

/// Incremental rounds see only what Graph reports as a change; once the last full round
/// is `sync_full_round_hours` old, the next run reads everything again.
#[tokio::test]
async fn a_full_round_comes_again_once_the_last_is_old_enough() {
    let sync = idledger::sync::SyncConfig {
        full_round_every: Duration::from_millis(1500),
        ..idledger::sync::SyncConfig::default()
    };
    let w = world_in(
        spawn_app_with(sync).await,
        sim().await,
        None,
        json!({"auto_import": true}),
    )
    .await;
    assert_eq!(w.sync().await["full"], true);
    assert_eq!(w.sync().await["full"], false);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let run = w.sync().await;
    assert_eq!(run["full"], true, "{run}");
    assert_eq!(run["counters"]["unchanged"], 30, "{run}");
    assert_eq!(w.sync().await["full"], false);
}

/// An admin points the domain at another group: the users outside it did not leave, the
/// setting moved, so their removal waits for an admin however few they are (nineteen
/// here, under the default threshold of twenty, which alone would not trip the guard).
#[tokio::test]
async fn removals_after_the_sync_group_moved_wait_for_approval() {
    let w = world(json!({"auto_import": true, "removal_behavior": "delete"})).await;
    w.sync().await;
    let (s, d) = w
        .admin(
            Method::PATCH,
            &format!("/v1/domains/{}", w.domain),
            Some(json!({"sync_group": "Hideez Key Auto Password Change"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    let run = w.sync().await;
    assert_eq!(run["status"], "quarantined", "{run}");
    // Users 11 to 30 are not in the new group; 29, disabled, was never imported.
    assert_eq!(run["held_removals_total"], 19, "{run}");
    for n in 11..=28 {
        let u = w.user(n).await.unwrap();
        assert_eq!(u["status"], "active", "held back, not deleted: {u}");
    }
    // Runs after it do not hold anyone for the move again.
    w.leave(1).await;
    w.join(36).await;
    let next = w.sync().await;
    assert_eq!(next["status"], "succeeded", "{next}");
}

/// The users a domain holds are one tenant's people: credentials for another tenant are
/// refused once they were synced, and no second domain connects to the same tenant.
#[tokio::test]
async fn a_tenant_belongs_to_one_domain_and_a_synced_domain_keeps_its_tenant() {
    let w = world(json!({})).await;
    w.sync().await;
    let other = "0e0e0e0e-1111-4222-8333-444444444444";
    let (s, body) = w
        .admin(
            Method::PUT,
            &format!("/v1/domains/{}/credentials", w.domain),
            Some(json!({"tenant_id": other, "client_id": APP, "client_secret": SECRET})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("tenant_id"), "{body}");
    let (s, body) = w
        .admin(
            Method::POST,
            "/v1/domains",
            Some(domain_body("fabrikam.com", &w.sim, SECRET, &json!({}))),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    let (s, d) = w
        .admin(
            Method::POST,
            "/v1/domains",
            Some(json!({"domain": "fabrikam.com"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{d}");
    let (s, body) = w
        .admin(
            Method::PUT,
            &format!("/v1/domains/{}/credentials", d["id"].as_str().unwrap()),
            Some(json!({"tenant_id": TENANT.to_uppercase(), "client_id": APP, "client_secret": SECRET})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    // Without its credentials the first domain still holds the tenant's people.
    let (s, body) = w.remove_credentials().await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = w
        .admin(
            Method::PUT,
            &format!("/v1/domains/{}/credentials", d["id"].as_str().unwrap()),
            Some(json!({"tenant_id": format!("{{{TENANT}}}"), "client_id": APP, "client_secret": SECRET})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
}

/// A removed domain's users leave with it: they stop signing in, give their keys back and
/// are not brought back; the same tenant added again as a new domain gets the keys.
#[tokio::test]
async fn removing_a_domain_deactivates_its_users_and_frees_their_keys() {
    let w = world(json!({"auto_import": true})).await;
    w.sync().await;
    let old = w.user(1).await.unwrap();
    let old_id = old["id"].as_str().unwrap().to_owned();
    let (s, body) = w.put_key(&old_id, "HZ-1").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = w
        .admin(Method::DELETE, &format!("/v1/domains/{}", w.domain), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["removed"], true, "{body}");
    // Asked again, it finishes the job rather than failing.
    let (s, body) = w
        .admin(Method::DELETE, &format!("/v1/domains/{}", w.domain), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let users = w.users("").await;
    assert!(
        users
            .iter()
            .all(|u| u["status"] != "active" && u["key_id"].is_null()),
        "{users:?}"
    );
    let (s, body) = w
        .admin(Method::POST, &format!("/v1/users/{old_id}/activate"), None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    let (s, body) = w.put_key(&old_id, "HZ-2").await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");

    let (s, d) = w
        .admin(
            Method::POST,
            "/v1/domains",
            Some(domain_body(
                "contoso.onmicrosoft.com",
                &w.sim,
                SECRET,
                &json!({"auto_import": true}),
            )),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{d}");
    let again = d["id"].as_str().unwrap();
    assert_eq!(w.sync_domain(again).await["status"], "succeeded");
    let (_, page) = w
        .admin(
            Method::GET,
            &format!("/v1/users?domain={again}&limit=1000"),
            None,
        )
        .await;
    let new = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["external_id"] == ext(1).as_str())
        .unwrap()
        .clone();
    assert_ne!(new["id"], old["id"]);
    let (s, body) = w
        .admin(
            Method::PUT,
            &format!("/v1/users/{}/key", new["id"].as_str().unwrap()),
            Some(json!({"key_id": "HZ-1"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "the key is free again: {body}");
}

/// Approval does no more than the removal behaviour the run was held under: made stricter
/// meanwhile (deactivate became delete), the held users are deactivated, not deleted.
/// And a second quarantine keeps the first one's removals waiting, in the domain's list.
#[tokio::test]
async fn approval_keeps_to_the_behaviour_held_under_and_every_quarantine_waits() {
    let (w, first) = quarantined_world().await;
    for n in 7..=12 {
        w.leave(n).await;
    }
    let second = w.sync().await;
    assert_eq!(second["status"], "quarantined", "{second}");
    let domain = format!("/v1/domains/{}", w.domain);
    let (_, d) = w.admin(Method::GET, &domain, None).await;
    assert_eq!(d["quarantined_run"], first["run_id"], "{d}");
    assert_eq!(
        d["quarantined_runs"],
        json!([first["run_id"], second["run_id"]]),
        "{d}"
    );
    let (s, d) = w
        .admin(
            Method::PATCH,
            &domain,
            Some(json!({"removal_behavior": "delete"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    let approve = |run: &Value| {
        format!(
            "{domain}/sync-runs/{}/approve",
            run["run_id"].as_str().unwrap()
        )
    };
    let (s, body) = w.admin(Method::POST, &approve(&second), None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    for n in 7..=12 {
        assert_eq!(
            w.user(n).await.unwrap()["status"],
            "deactivated",
            "user {n}"
        );
    }
    let (_, d) = w.admin(Method::GET, &domain, None).await;
    assert_eq!(
        d["quarantined_run"], first["run_id"],
        "the first still waits: {d}"
    );
    let (s, body) = w.admin(Method::POST, &approve(&first), None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    for n in 1..=6 {
        assert_eq!(
            w.user(n).await.unwrap()["status"],
            "deactivated",
            "user {n}"
        );
    }
    let (_, d) = w.admin(Method::GET, &domain, None).await;
    assert_eq!(d["quarantined_run"], Value::Null, "{d}");
}

/// Plain http is allowed only to loopback, where nothing leaves the machine: a proxy set
/// in the environment (for the way out to the real Graph) must not receive the client
/// secret or tokens sent there in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_from_the_environment_gets_nothing_meant_for_loopback() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let reached = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = reached.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = proxy.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        }
    });
    let (sim, _sim, _dir, data) = crate::crash::contoso_and_data_dir().await;
    let env = [
        ("HTTP_PROXY", proxy_url.as_str()),
        ("http_proxy", proxy_url.as_str()),
        ("ALL_PROXY", proxy_url.as_str()),
        ("all_proxy", proxy_url.as_str()),
    ];
    let serve = Serve::start_with(&data, None, &env).await;
    crate::crash::user_with_key(&serve, &sim, &ext(2)).await;
    assert_eq!(reached.load(Ordering::SeqCst), 0);
}

/// An import still going when its domain is removed finishes before the users leave: none
/// of its users is left active in the removed domain.
#[tokio::test]
async fn an_import_racing_the_domains_removal_leaves_nobody_active() {
    let mut directory = contoso();
    directory.generate_users(
        10_000,
        idledger::client::contoso::SYNC_GROUP,
        idledger::client::contoso::ROTATION_GROUP,
    );
    let (sim, _) = graphsim::spawn(directory, graphsim::SimConfig::default())
        .await
        .unwrap();
    let w = world_in(spawn_app().await, sim, None, json!({})).await;
    assert_eq!(w.sync().await["status"], "succeeded");
    let import_path = format!("/v1/domains/{}/import", w.domain);
    let import = w.admin(Method::POST, &import_path, Some(json!({"all": true})));
    let remove = async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        w.admin(Method::DELETE, &format!("/v1/domains/{}", w.domain), None)
            .await
    };
    let ((imported, body), (removed, gone)) = tokio::join!(import, remove);
    assert_eq!(removed, StatusCode::OK, "{gone}");
    // Either finished first, or found the domain removed: never half of both.
    assert!(
        imported == StatusCode::OK || imported == StatusCode::CONFLICT,
        "{imported} {body}"
    );
    assert!(
        w.users("&status=active").await.is_empty(),
        "users of a removed domain left active (import answered {imported})"
    );
}

/// A run reads Graph for a while; removals made milder meanwhile are obeyed when it
/// plans: a member who left while *delete* was set, kept because *keep* was saved before
/// the run got to them, is not deleted.
#[tokio::test]
async fn a_run_obeys_a_milder_removal_setting_saved_while_it_reads_graph() {
    let w = world(json!({"auto_import": true, "removal_behavior": "delete"})).await;
    w.sync().await;
    let id = w.user(5).await.unwrap()["id"].as_str().unwrap().to_owned();
    w.leave(5).await;
    w.sim(
        Method::POST,
        "/_sim/faults",
        Some(json!({"path_prefix": "/v1.0/groups", "delay_ms": 1500, "count": 1})),
    )
    .await;
    let path = format!("/v1/domains/{}", w.domain);
    let milder = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        w.admin(
            Method::PATCH,
            &path,
            Some(json!({"removal_behavior": "keep"})),
        )
        .await
    };
    let (run, (s, body)) = tokio::join!(w.sync(), milder);
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(run["status"], "succeeded", "{run}");
    let (_, kept) = w.admin(Method::GET, &format!("/v1/users/{id}"), None).await;
    assert_eq!(kept["status"], "active", "{kept}");
    assert_eq!(kept["in_sync_group"], false, "{kept}");
}

/// The tenant a domain's users came from is on record before they are: a first run cut
/// short after its users landed (its credentials removed while it read the tenant's
/// domains) still keeps that tenant to this domain.
#[tokio::test]
async fn a_first_run_cut_short_after_its_users_keeps_their_tenant_to_the_domain() {
    let sim = sim().await;
    let faults = reqwest::Client::new()
        .post(format!("{sim}/_sim/faults"))
        .json(&json!({"path_prefix": "/v1.0/domains", "delay_ms": 3000, "count": 1}))
        .send()
        .await
        .unwrap();
    assert!(faults.status().is_success());
    let w = world_in(spawn_app().await, sim, None, json!({"auto_import": true})).await;
    let (s, body) = w
        .admin(
            Method::POST,
            &format!("/v1/domains/{}/sync", w.domain),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.users("").await.is_empty() {
        assert!(Instant::now() < deadline, "no user landed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (s, body) = w.remove_credentials().await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = w
        .admin(
            Method::POST,
            "/v1/domains",
            Some(domain_body(
                "fabrikam.onmicrosoft.com",
                &w.sim,
                SECRET,
                &json!({}),
            )),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "a second domain took the users' tenant: {body}"
    );
}

/// Approvals and imports naming made-up domains are 404s that leave nothing behind (each
/// real domain's locks are kept for good, so a made-up one must not get any).
#[tokio::test]
async fn made_up_domains_get_404_and_no_lock() {
    let w = world(json!({})).await;
    w.sync().await;
    let locks = w.app.state.sync.domain_locks();
    for _ in 0..20 {
        let (domain, run) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let (s, body) = w
            .admin(
                Method::POST,
                &format!("/v1/domains/{domain}/sync-runs/{run}/approve"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
        let (s, body) = w
            .admin(
                Method::POST,
                &format!("/v1/domains/{domain}/import"),
                Some(json!({"all": true})),
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    }
    assert_eq!(w.app.state.sync.domain_locks(), locks);
}

/// The domain says when its worker means to run next (its interval with the jitter), so
/// the console shows the schedule rather than a guess; a domain without credentials has
/// no worker and no time.
#[tokio::test]
async fn a_domain_names_its_next_scheduled_sync() {
    let w = world(json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let d = loop {
        let (_, d) = w
            .admin(Method::GET, &format!("/v1/domains/{}", w.domain), None)
            .await;
        if d["next_sync_at"].is_string() {
            break d;
        }
        assert!(Instant::now() < deadline, "no next sync: {d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let next: chrono::DateTime<chrono::Utc> = d["next_sync_at"].as_str().unwrap().parse().unwrap();
    let minutes = d["sync_interval_minutes"].as_i64().unwrap();
    let now = chrono::Utc::now();
    assert!(next > now - chrono::Duration::seconds(1), "{d}");
    assert!(
        next <= now + chrono::Duration::seconds(minutes * 66 + 5),
        "within the interval and its 10% jitter: {d}"
    );
    // Credentials removed: the worker stops, and with it the time.
    let (s, _) = w
        .admin(
            Method::DELETE,
            &format!("/v1/domains/{}/credentials", w.domain),
            None,
        )
        .await;
    assert!(s.is_success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, d) = w
            .admin(Method::GET, &format!("/v1/domains/{}", w.domain), None)
            .await;
        if d["next_sync_at"].is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "still scheduled: {d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
