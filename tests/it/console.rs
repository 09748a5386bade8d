//! The admin console in a real headless Chromium (Debian's `chromium` driven through
//! `chromedriver`): the seed's workflow from sign-in to removing credentials, as an admin
//! clicks it, then the same pages as an auditor, who finds no command at all. Assertions
//! are on what the pages show. Screenshots of the main pages go to `docs/`.

use crate::support::browser::SessionCommand;
use crate::support::{ext, sim, spawn_app, Browser, APP, SECRET, SYNC, TENANT};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;

impl Browser {
    pub(crate) async fn sign_in(&self, base: &str, token: &str) {
        self.goto(&format!("{base}/")).await;
        self.fill("#token", token).await;
        self.click("button[type=submit]").await;
        self.wait_text("h1", "Domains").await;
    }

    /// Chooses an export and its manifest on the audit page and verifies them.
    async fn verify_upload(&self, base: &str, file: &std::path::Path, manifest: &std::path::Path) {
        self.goto(&format!("{base}/console/audit")).await;
        for (input, path) in [("#export-file", file), ("#manifest-file", manifest)] {
            let chooser = self.css(input).await;
            chooser.send_keys(path.to_str().unwrap()).await.unwrap();
        }
        self.click("#verify-export button[type=submit]").await;
    }

    /// The controls of the page an auditor may have: the forms that only read (search,
    /// "as of", listings, exports, verifying an upload), pagers, a run's details, Verify
    /// chain, Hide. Anything else (a command added later, say) fails here by name, not
    /// only the commands a test thought to list.
    async fn only_reading_controls(&self) {
        let found = self
            .client
            .execute(
                r##"const reading = new Set(["candidate-search", "user-search", "as-of",
                     "upcoming-form", "recent-form", "export-form", "verify-export"]);
                   const allowed = new Set(["verify-chain", "download-manifest", "now",
                     "candidates-more", "users-more", "candidates-first", "users-first"]);
                   return [...document.querySelectorAll(
                       "main button, main form, main input, main select, main textarea, main [role=button], main a[onclick]")]
                     // A reading form's fields and its one submit button; nothing else in it.
                     .filter((e) => !(e.tagName === "FORM" && reading.has(e.id)))
                     .filter((e) => !(reading.has(e.closest("form")?.id)
                       && (e.tagName !== "BUTTON" || e.type === "submit" || allowed.has(e.id))))
                     .filter((e) => !allowed.has(e.id))
                     // Pagers, and a run's row opening its details.
                     .filter((e) => !(e.tagName === "BUTTON" && e.closest(".pager")))
                     .filter((e) => !(e.tagName === "BUTTON" && e.classList.contains("link") && e.closest("#runs")))
                     .map((e) => `${e.tagName.toLowerCase()}#${e.id} ${e.textContent.trim().slice(0, 40)}`);"##,
                vec![],
            )
            .await
            .unwrap();
        let page = self.client.current_url().await.unwrap();
        assert_eq!(found, json!([]), "controls shown to an auditor on {page}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_runs_the_whole_workflow_in_the_browser_and_an_auditor_only_reads() {
    let graph = sim().await;
    let app = spawn_app().await;
    let base = app.url.clone();
    let b = Browser::start().await;

    // A wrong token is refused on the page, with no session.
    b.goto(&format!("{base}/")).await;
    b.fill("#token", "idl_not-a-token").await;
    b.click("button[type=submit]").await;
    b.wait_text("[role=alert]", "not a live admin or auditor token")
        .await;
    b.goto(&format!("{base}/console/domains")).await;
    b.css("#token").await;

    b.sign_in(&base, &app.admin).await;
    b.wait_text("#domains", "No domains yet").await;

    // Add domain settings, after testing the connection.
    b.fill("#d-domain", "contoso.onmicrosoft.com").await;
    b.fill("#d-client", APP).await;
    b.fill("#d-secret", SECRET).await;
    b.fill("#d-tenant", TENANT).await;
    b.fill("#d-days", "30").await;
    b.click("details summary").await;
    b.fill("#d-graph", &graph).await;
    b.fill("#d-auth", &graph).await;
    b.click("#test-connection").await;
    let report = b.wait_text("#check-report", "Connection ok").await;
    assert!(
        report.contains("User-PasswordProfile.ReadWrite.All: granted"),
        "{report}"
    );
    assert!(
        report.contains("Sync group “Hideez Users Sync”: found, 30 members"),
        "{report}"
    );
    // The reads tried for real, and the directory role no token can show.
    assert!(report.contains("Read users (delta): ok"), "{report}");
    assert!(
        report.contains(
            "Also needed: password resets also need the app to hold the User Administrator"
        ),
        "{report}"
    );
    b.screenshot("console-domains").await;
    b.click("#add-domain button[type=submit]").await;
    b.wait_text("h1", "contoso.onmicrosoft.com").await;
    let facts = b.wait_text("#domain-facts", "saved (never shown)").await;
    assert!(!facts.contains(SECRET));
    // The form's removal behaviour as it came is the API's default: deactivate.
    assert!(facts.contains("deactivate"), "{facts}");

    // Its settings changed after saving, in the same labels.
    b.fill("#domain-settings #d-days", "60").await;
    b.click("#domain-settings input[name=removal_behavior][value=delete]")
        .await;
    b.fill("#domain-settings #d-interval", "45").await;
    b.click("#domain-settings button[type=submit]").await;
    b.wait_text("#flash", "Settings saved").await;
    let facts = b.wait_text("#domain-facts", "60").await;
    assert!(facts.contains("delete"), "{facts}");
    // The settings the API holds: days, removal behaviour, sync interval.
    let settings = || async {
        let (_, domains) = app
            .call(Some(&app.admin), Method::GET, "/v1/domains", None)
            .await;
        let d = &domains["items"][0];
        let held = [
            d["auto_password_change_days"].clone(),
            d["removal_behavior"].clone(),
            d["sync_interval_minutes"].clone(),
        ];
        (held, d["id"].as_str().unwrap().to_owned())
    };
    let (held, domain_id) = settings().await;
    assert_eq!(held, [json!(60), json!("delete"), json!(45)]);
    // Back to what the rest of this walk expects. Meanwhile another admin changes the
    // sync interval through the API: the form, being edited, is not redrawn under the
    // admin, and its save sends only what the admin changed, so the other change stands.
    b.fill("#domain-settings #d-days", "30").await;
    let (s, body) = app
        .call(
            Some(&app.admin),
            Method::PATCH,
            &format!("/v1/domains/{domain_id}"),
            Some(json!({"sync_interval_minutes": 50})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    // The page has heard of it (its facts say so) while the form kept the admin's input.
    b.wait_text("#domain-facts", "50 minutes").await;
    b.click("#domain-settings input[name=removal_behavior][value=deactivate]")
        .await;
    b.click("#domain-settings button[type=submit]").await;
    b.wait_text("#flash", "Settings saved").await;
    let (held, _) = settings().await;
    assert_eq!(held, [json!(30), json!("deactivate"), json!(50)]);

    // What a run would do, a page of changes at a time.
    b.click("#sync-dry").await;
    b.wait_text("#dry-report", "would make 30 changes").await;
    b.click("#dry-more").await;
    b.wait_text("#dry-report li:nth-child(30)", "@").await;
    assert!(!b.present("#dry-more:not([hidden])").await);

    // Run a sync and watch it finish without reloading.
    b.click("#sync-now").await;
    b.wait_text("#live-status", "succeeded").await;
    b.wait_text("#live-status", "added 29").await;
    assert!(
        !b.present("#dry-report .report").await,
        "the dry run's report outlived the run"
    );
    b.wait_text("#runs", "succeeded").await;
    // Each pager says whose pages it turns (a page holds several).
    let pager = b
        .css("[data-next=runs]")
        .await
        .attr("aria-label")
        .await
        .unwrap();
    assert_eq!(pager.as_deref(), Some("Next page of Runs"));
    // From the top: the bar and the domain's facts, not wherever the last click left it.
    b.client
        .execute("window.scrollTo(0, 0)", vec![])
        .await
        .unwrap();
    b.screenshot("console-domain").await;
    // The domain's workstation logon certificate, in force since registration.
    b.wait_text("#certificates", "current").await;
    assert!(b.present("#cert-pem[href$='format=pem']").await);
    assert!(b.present("#replace-certificate").await);
    // The run's per-user outcomes, a page at a time.
    b.click("#runs button.link").await;
    b.wait_text("#outcomes", "added").await;
    b.wait_text("#outcomes", "Alex Wilber").await;

    // Import two selected candidates, chosen from two searches: a search redraws the
    // table, and what was chosen before stays chosen.
    b.click("#import-link").await;
    let only = async |want: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let rows = b.css("#candidates tbody").await.text().await.unwrap();
            if rows.contains(want) && rows.lines().count() == 1 {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{want}: {rows}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    b.wait_text("#candidates", "Alex Wilber").await;
    b.click("input[aria-label='Select Alex Wilber']").await;
    b.wait_text("#selected-count", "1 selected").await;
    // Let go of, then chosen again.
    b.click("#clear-selection").await;
    assert!(!b.present("#candidates input:checked").await);
    assert!(!b.present("#clear-selection:not([hidden])").await);
    b.click("input[aria-label='Select Alex Wilber']").await;
    b.wait_text("#selected-count", "1 selected").await;
    b.fill("#cq", "allan").await;
    b.click("#candidate-search button[type=submit]").await;
    only("Allan Deyoung").await;
    b.click("input[aria-label='Select Allan Deyoung']").await;
    b.wait_text("#selected-count", "2 selected").await;
    b.fill("#cq", "").await;
    b.click("#candidate-search button[type=submit]").await;
    b.wait_text("#candidates", "Alex Wilber").await;
    assert!(
        b.present("input[aria-label='Select Alex Wilber']:checked")
            .await
    );
    assert!(
        b.present("input[aria-label='Select Allan Deyoung']:checked")
            .await
    );
    b.screenshot("console-import").await;
    b.click("#import-selected").await;
    b.wait_text("#flash", "Imported 2 users").await;
    let left = b.css("#candidates").await.text().await.unwrap();
    assert!(
        !left.contains("Alex Wilber") && left.contains("Brian Johnson"),
        "{left}"
    );
    // Searched on the server: one name alone, then none, then all again.
    b.fill("#cq", "brian").await;
    b.click("#candidate-search button[type=submit]").await;
    only("Brian Johnson").await;
    b.fill("#cq", "nobody-by-this-name").await;
    b.click("#candidate-search button[type=submit]").await;
    only("No candidate matches.").await;
    b.fill("#cq", "").await;
    b.click("#candidate-search button[type=submit]").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while b
        .css("#candidates tbody")
        .await
        .text()
        .await
        .unwrap()
        .lines()
        .count()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the whole list not back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The user: assign a key, rotate, reveal with a reason.
    b.goto(&format!("{base}/console/users")).await;
    b.fill("#uq", "alex").await;
    b.click("#user-search button[type=submit]").await;
    b.wait_text("#users", "alex.wilber@contoso.onmicrosoft.com")
        .await;
    // Status and SSO as badges.
    assert!(b.present("#users td:nth-child(3) .badge").await);
    assert!(b.present("#users td:nth-child(5) .badge").await);
    b.click("#users a").await;
    b.wait_text("h1", "Alex Wilber").await;
    b.fill("#key-id", "K-0002").await;
    b.click("#assign-key button[type=submit]").await;
    b.wait_text("#flash", "Key assigned").await;
    b.wait_text("#user-facts", "K-0002").await;
    b.click("#rotate").await;
    b.wait_text("#flash", "Rotation finished: succeeded").await;
    b.wait_text("#history", "succeeded").await;
    // The agent could not write the key: the user's page says so, and the admin has the
    // current password queued for it again.
    b.wait_text("#user-facts", "queued").await;
    let agent = app.token("agent", &["K-0002"]).await;
    let (_, writes) = app
        .call(Some(&agent), Method::GET, "/v1/agent/key-writes", None)
        .await;
    let write = writes["items"][0]["id"].as_str().unwrap();
    let failed = json!({"result": "failed", "detail": "no key in the reader"});
    let ack = format!("/v1/agent/key-writes/{write}/ack");
    let (s, body) = app
        .call(Some(&agent), Method::POST, &ack, Some(failed))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    b.goto(&b.url().await).await;
    b.wait_text("#user-facts", "no key in the reader").await;
    // Nothing is locked: lifting locks says so and records nothing.
    b.click("#unlock-sign-in").await;
    b.wait_text("#flash", "Sign-in locks lifted").await;
    b.click("#rewrite-key").await;
    b.wait_text("#flash", "queued for the key").await;
    b.wait_text("#user-facts", "queued").await;
    let (_, writes) = app
        .call(Some(&agent), Method::GET, "/v1/agent/key-writes", None)
        .await;
    assert_ne!(writes["items"][0]["id"].as_str(), Some(write), "{writes}");
    // A history of one page shows no pager: `hidden` holds whatever the buttons' style.
    for pager in ["[data-next=history]", "[data-first=history]"] {
        let shown = b.css(pager).await.is_displayed().await.unwrap();
        assert!(!shown, "{pager} shown on a single page");
    }
    b.fill("#reason", "helpdesk ticket 4711: user locked out")
        .await;
    b.click("#reveal button[type=submit]").await;
    let shown = b.css("#revealed-password").await.text().await.unwrap();
    let in_graph: serde_json::Value =
        reqwest::get(format!("{graph}/_sim/users/{}/password", ext(2)))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(shown, in_graph["password"].as_str().unwrap());
    // Newest first: what just happened is on top.
    b.wait_text("#timeline tbody tr:first-child", "PasswordRevealed")
        .await;
    // With the reason the admin gave: the audit trail says who and why.
    b.wait_text(
        "#timeline tbody tr:first-child td:nth-child(4)",
        "helpdesk ticket 4711",
    )
    .await;
    b.click("#revealed button").await;
    b.wait_text("#revealed", "Hidden").await;
    // Taken once the password is hidden again: no screenshot carries one.
    b.screenshot("console-user").await;
    // The SSO override form starts from the override in force: saving it again after a
    // reload keeps it.
    b.css("#ov").await.select_by_value("off").await.unwrap();
    b.click("#sso-override button[type=submit]").await;
    b.wait_text("#flash", "SSO override saved").await;
    let user_page = b.url().await;
    b.goto(&user_page).await;
    b.wait_text("#user-facts", "SSO override").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while b.css("#ov").await.prop("value").await.unwrap().as_deref() != Some("off") {
        assert!(
            std::time::Instant::now() < deadline,
            "the override form forgot the override"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.click("#sso-override button[type=submit]").await;
    b.wait_text("#flash", "SSO override saved").await;
    let user_id = user_page.rsplit('/').next().unwrap();
    let (_, user) = app
        .call(
            Some(&app.admin),
            Method::GET,
            &format!("/v1/users/{user_id}"),
            None,
        )
        .await;
    assert_eq!(user["sso_override"]["enabled"], json!(false), "{user}");

    // The rotations page: who is due, and the recent outcomes with Graph's answers.
    b.goto(&format!("{base}/console/rotations")).await;
    // Who is due next: Alex, within the domain's 30 days of his rotation.
    b.fill("#within", "60").await;
    b.click("#upcoming-form button[type=submit]").await;
    b.wait_text("#upcoming", "alex.wilber@contoso.onmicrosoft.com")
        .await;
    b.wait_text("#recent", "alex.wilber@contoso.onmicrosoft.com")
        .await;
    b.wait_text("#recent", "succeeded").await;
    b.css("#recent-outcome")
        .await
        .select_by_value("failed")
        .await
        .unwrap();
    b.click("#recent-form button[type=submit]").await;
    b.wait_text("#recent", "No rotation with that outcome")
        .await;

    // Remove the credentials, confirmed: sync stops.
    let (_, domains) = app
        .call(Some(&app.admin), Method::GET, "/v1/domains", None)
        .await;
    let id = domains["items"][0]["id"].as_str().unwrap().to_owned();
    b.goto(&format!("{base}/console/domains/{id}")).await;
    b.wait_text("#domain-facts", "active").await;
    b.click("#remove-credentials").await;
    let asked = b.client.get_alert_text().await.unwrap();
    assert!(asked.contains("will stop"), "{asked}");
    b.client.accept_alert().await.unwrap();
    b.wait_text("#flash", "sync has stopped").await;
    b.wait_text("#domain-facts", "stopped (no credentials)")
        .await;
    // And it has: a run asked for now is refused, with the API's words.
    b.click("#sync-now").await;
    b.wait_text("#flash", "sync is stopped until new ones are saved")
        .await;
    let (s, d) = app
        .call(
            Some(&app.admin),
            Method::GET,
            &format!("/v1/domains/{id}"),
            None,
        )
        .await;
    assert_eq!(
        (s, &d["sync_active"]),
        (StatusCode::OK, &json!(false)),
        "{d}"
    );
    // New credentials, saved from the same page: sync runs again.
    assert!(!b.present("#remove-credentials:not([hidden])").await);
    b.fill("#cred-tenant", TENANT).await;
    b.fill("#cred-client", APP).await;
    b.fill("#new-secret", SECRET).await;
    b.click("#save-credentials").await;
    b.wait_text("#flash", "sync is active again").await;
    let facts = b.wait_text("#domain-facts", "saved (never shown)").await;
    assert!(facts.contains(TENANT) && !facts.contains(SECRET), "{facts}");
    b.wait_text("#save-credentials", "Save new secret").await;
    // A run started elsewhere (here, the API) shows on the open page as it ends.
    let rows = "return document.querySelectorAll('#runs tbody tr').length";
    let count = async || {
        b.client
            .execute(rows, vec![])
            .await
            .unwrap()
            .as_u64()
            .unwrap()
    };
    let before = count().await;
    let (s, started) = app
        .call(
            Some(&app.admin),
            Method::POST,
            &format!("/v1/domains/{id}/sync"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{started}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while count().await <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the page missed a run"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.wait_text("#runs tbody tr:first-child", "succeeded").await;

    // An auditor sees the same pages and no command anywhere.
    let auditor = app.token("auditor", &[]).await;
    b.click(".sign-out button").await;
    b.css("#token").await;
    b.sign_in(&base, &auditor).await;
    b.wait_text("#domains", "contoso.onmicrosoft.com").await;
    assert!(!b.present("#add-domain").await && !b.present("#test-connection").await);
    b.only_reading_controls().await;
    b.goto(&format!("{base}/console/domains/{id}")).await;
    b.wait_text("#runs", "succeeded").await;
    b.only_reading_controls().await;
    for command in [
        "#sync-now",
        "#sync-dry",
        "#remove-credentials",
        "#replace-secret",
        "#sso-defaults",
    ] {
        assert!(!b.present(command).await, "{command} shown to an auditor");
    }
    // Users → Import: the candidates are a link away from the users page.
    b.goto(&format!("{base}/console/users")).await;
    b.wait_text("#import-links", "contoso.onmicrosoft.com")
        .await;
    b.click("#import-links a").await;
    b.wait_text("#candidates", "Brian Johnson").await;
    for command in [
        "#import-selected",
        "#import-all",
        "#clear-selection",
        "#candidates input",
    ] {
        assert!(!b.present(command).await, "{command} shown to an auditor");
    }
    b.only_reading_controls().await;
    b.goto(&format!("{base}/console/users")).await;
    b.fill("#uq", "alex").await;
    b.click("#user-search button[type=submit]").await;
    b.wait_text("#users", "alex.wilber").await;
    b.click("#users a").await;
    b.wait_text("#history", "manual").await;
    for command in [
        "#rotate",
        "#reveal",
        "#assign-key",
        "#rewrite-key",
        "#unlock-sign-in",
        "#activate",
        "#deactivate",
        "#invite",
    ] {
        assert!(!b.present(command).await, "{command} shown to an auditor");
    }
    b.only_reading_controls().await;
    // Each page checked once what it fills in has arrived (a command drawn with the rows
    // must be there to be found).
    for (page, filled, shows) in [
        ("rotations", "#recent", "succeeded"),
        ("apps", "#signing-keys", "No signing key yet"),
        ("audit", "#log-facts", "Head position"),
    ] {
        b.goto(&format!("{base}/console/{page}")).await;
        b.wait_text(filled, shows).await;
        b.only_reading_controls().await;
        if page == "rotations" {
            // What an auditor sees: the same figures, no command.
            b.screenshot("console-rotations-auditor").await;
        }
    }
    // The auditor verifies an export by upload: as downloaded it matches; one byte changed,
    // the page names the first differing row.
    let dir = tempfile::tempdir().unwrap();
    let export = |path: &str| {
        let (http, url, token) = (app.http.clone(), format!("{base}{path}"), auditor.clone());
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        }
    };
    let csv = export("/v1/audit/exports/password-changes?format=csv").await;
    let manifest = export("/v1/audit/exports/password-changes/manifest?format=csv").await;
    let (file, manifest_file) = (
        dir.path().join("changes.csv"),
        dir.path().join("changes.csv.manifest.json"),
    );
    std::fs::write(&file, &csv).unwrap();
    std::fs::write(&manifest_file, &manifest).unwrap();
    b.verify_upload(&base, &file, &manifest_file).await;
    b.wait_text("#export-status", "Export ok").await;
    // The live feed: an event appended now shows at the top, without a reload.
    let (s, _) = app
        .call(
            Some(&app.admin),
            Method::POST,
            "/v1/tokens",
            Some(json!({"role": "auditor", "name": "feed watcher"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    b.wait_text("#feed tbody tr:first-child", "TokenIssued")
        .await;
    // The chain, re-hashed in the browser from the stored records.
    b.click("#verify-chain").await;
    let chain = b.wait_text("#verify-status", "Chain ok").await;
    assert!(chain.contains("re-hashed and linked"), "{chain}");
    let head = b.css("#chain-head").await.text().await.unwrap();
    assert!(
        head.len() == 64 && head.bytes().all(|c| c.is_ascii_hexdigit()),
        "{head}"
    );
    // A feed that stops short of the head is no chain ok: the page is given one that
    // drops its last record and says there is no more.
    b.client
        .execute(
            "const real = window.fetch;
             window.fetch = async (...args) => {
               const r = await real(...args);
               if (!String(args[0]).startsWith('/v1/events?from_position=1&')) return r;
               const page = await r.json();
               page.items = page.items.slice(0, -1);
               page.next = null;
               return new Response(JSON.stringify(page), { status: 200, headers: { 'content-type': 'application/json' } });
             };",
            vec![],
        )
        .await
        .unwrap();
    b.click("#verify-chain").await;
    let cut = b.wait_text("#verify-status", "before the head").await;
    assert!(!cut.contains("Chain ok"), "{cut}");
    let text = String::from_utf8(csv.to_vec()).unwrap();
    let tampered = text.replacen("manual", "manuaL", 1);
    assert_ne!(tampered, text);
    std::fs::write(&file, tampered).unwrap();
    b.verify_upload(&base, &file, &manifest_file).await;
    let differs = b.wait_text("#export-status", "Export differs").await;
    // Data rows count from 1 after the header line.
    let row = text.lines().position(|l| l.contains("manual")).unwrap();
    assert!(
        differs.contains(&format!("differs at row {row}")),
        "{differs}"
    );

    // An export and its manifest are pinned to one log position, whichever comes first,
    // however the log grows in between.
    b.click("#download-manifest").await;
    let pinned = b.wait_text("#export-pin", "Up to log position").await;
    b.screenshot("console-audit").await;
    app.token("auditor", &[]).await;
    b.click("#export-form button[type=submit]").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        b.wait_text("#export-pin", "Up to log position").await,
        pinned
    );

    // A refused download (an end in the future) is said on the page, which stays.
    b.client
        .execute(
            "const to = document.querySelector('#to'); to.value = '2099-01-01T00:00:00'; to.dispatchEvent(new Event('change', {bubbles: true}));",
            vec![],
        )
        .await
        .unwrap();
    b.click("#export-form button[type=submit]").await;
    b.wait_text("#flash", "The download was refused").await;
    assert!(b.present("#export-form").await);

    // The API refuses the auditor's session a command even when forced.
    let refused = b
        .client
        .execute(
            "return fetch('/v1/domains/' + arguments[0] + '/sync', {method: 'POST', headers: {'x-csrf-token': document.querySelector('meta[name=csrf-token]').content}}).then(r => r.status)",
            vec![json!(id)],
        )
        .await
        .unwrap();
    assert_eq!(refused, json!(403));

    // The auditor's tokens revoked while the audit page follows the log: its stream ends,
    // the browser gives it up, and the page goes to sign-in instead of standing still.
    let (_, tokens) = app
        .call(Some(&app.admin), Method::GET, "/v1/tokens?limit=1000", None)
        .await;
    for t in tokens["items"].as_array().unwrap() {
        if t["role"] == "auditor" && t["revoked_at"].is_null() {
            let path = format!("/v1/tokens/{}", t["id"].as_str().unwrap());
            let (s, _) = app
                .call(Some(&app.admin), Method::DELETE, &path, None)
                .await;
            assert!(s.is_success());
        }
    }
    b.css("#token").await;
}

/// A client that shows redirects instead of following them, as a test of where a
/// page sends the browser needs.
fn without_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The `pre` value of the sign-in form and its cookie.
async fn sign_in_form(http: &reqwest::Client, base: &str) -> (String, String) {
    form_at(http, &format!("{base}/")).await
}

/// The `pre` value of the sign-in form at `url` and its cookie, the only one the page
/// sets (no session).
async fn form_at(http: &reqwest::Client, url: &str) -> (String, String) {
    let r = http.get(url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{url}");
    let set: Vec<&str> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap())
        .collect();
    assert_eq!(set.len(), 1, "{url} sets {set:?}");
    let cookie = set[0].split(';').next().unwrap().to_owned();
    let html = r.text().await.unwrap();
    (attribute_after(&html, "name=\"pre\" value=\""), cookie)
}

/// The quoted value that follows `marker` in `html`.
fn attribute_after(html: &str, marker: &str) -> String {
    html.split(marker)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("{marker} in {html}"))
        .to_owned()
}

/// A session's idle clock is reset by the admin's requests only: not by those a page
/// makes on its own (marked as such), nor by requests refused. And over plain HTTP a
/// sign-in form posted from another origin (another port of localhost, which may plant
/// cookies for this one) opens no session.
#[tokio::test]
async fn only_the_admins_own_requests_keep_a_session_open_and_sign_in_comes_from_its_page() {
    let app = spawn_app().await;
    let base = app.url.clone();
    let http = without_redirects();
    let post = |header: &'static str, value: &'static str| {
        let (http, base, admin) = (http.clone(), base.clone(), app.admin.clone());
        async move {
            let (pre, pre_cookie) = sign_in_form(&http, &base).await;
            let own = base.replace("http://", "");
            http.post(format!("{base}/console/sign-in"))
                .header("cookie", pre_cookie)
                .header(header, value.replace("OWN", &own))
                .form(&[("token", admin.as_str()), ("pre", pre.as_str())])
                .send()
                .await
                .unwrap()
        }
    };
    for (header, value) in [
        ("origin", "http://localhost:9999"),
        ("sec-fetch-site", "same-site"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let refused = post(header, value).await.status();
        assert_eq!(refused, StatusCode::FORBIDDEN, "{header}: {value}");
    }
    let r = post("origin", "http://OWN").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    let session = set.split(';').next().unwrap().to_owned();
    let value = session.split_once('=').unwrap().1.to_owned();
    let unused = || app.state.sessions.unused_for(&value).expect("open");

    let idle = Duration::from_millis(300);
    tokio::time::sleep(idle).await;
    let r = http
        .get(format!("{base}/v1/domains"))
        .header("cookie", &session)
        .header("x-idledger-background", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(unused() >= idle, "a page's own request counted as use");
    // Nor an event stream (re)connecting: an EventSource cannot mark its requests, and
    // reconnects on its own, every few seconds behind a proxy that cuts long answers.
    let r = http
        .get(format!("{base}/v1/events/stream"))
        .header("cookie", &session)
        .header("accept", "text/event-stream")
        .header("last-event-id", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    drop(r);
    assert!(
        unused() >= idle,
        "an event stream's reconnect counted as use"
    );
    let r = http
        .post(format!("{base}/v1/tokens"))
        .header("cookie", &session)
        .json(&json!({"name": "x", "role": "auditor"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "no CSRF token");
    assert!(unused() >= idle, "a refused request counted as use");
    // Nor one its role refuses (an agent's route).
    let r = http
        .get(format!("{base}/v1/agent/key-writes"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(
        unused() >= idle,
        "a request its role refused counted as use"
    );
    let r = http
        .get(format!("{base}/v1/domains"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(unused() < idle, "the admin's request did not count");
}

/// A session is a cookie (HttpOnly, SameSite=Strict) standing for its token: commands
/// through it need the session's CSRF token, a revoked token ends it, agents get none.
#[tokio::test]
async fn a_session_stands_for_its_token_and_commands_need_its_csrf_token() {
    let app = spawn_app().await;
    let base = app.url.clone();
    let http = without_redirects();
    let page = http.get(format!("{base}/")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-frame-options"], "DENY");

    // A form posted without the browser's own sign-in cookie (from another site) is refused.
    let (pre, _) = sign_in_form(&http, &base).await;
    let r = http
        .post(format!("{base}/console/sign-in"))
        .form(&[("token", app.admin.as_str()), ("pre", pre.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    let sign_in = |token: String| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let (pre, pre_cookie) = sign_in_form(&http, &base).await;
            http.post(format!("{base}/console/sign-in"))
                .header("cookie", pre_cookie)
                .form(&[("token", token.as_str()), ("pre", pre.as_str())])
                .send()
                .await
                .unwrap()
        }
    };
    let agent = app.token("agent", &["K-1"]).await;
    assert_eq!(sign_in(agent).await.status(), StatusCode::UNAUTHORIZED);

    let admin = app.token("admin", &[]).await;
    let r = sign_in(admin.clone()).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    let session = set.split(';').next().unwrap().to_owned();

    let page = http
        .get(format!("{base}/console/domains"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csrf = attribute_after(
        &page.text().await.unwrap(),
        "name=\"csrf-token\" content=\"",
    );
    // A segment that is not text gets the console's own page, not axum's plain text.
    for path in [
        "/console/users/%FF",
        "/console/domains/%FF",
        "/console/domains/%FF/import",
        "/console/sign-in/%FF",
    ] {
        let r = http
            .get(format!("{base}{path}"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{path}: {}", r.status());
        let ctype = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ctype.starts_with("text/html"), "{path}: {ctype}");
    }
    let create = |csrf: Option<String>| {
        let mut req = http
            .post(format!("{base}/v1/domains"))
            .header("cookie", &session)
            .json(&json!({"domain": "fabrikam.onmicrosoft.com"}));
        if let Some(c) = csrf {
            req = req.header("x-csrf-token", c);
        }
        req.send()
    };
    assert_eq!(create(None).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(
        create(Some("forged".into())).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let (_, domains) = app
        .call(Some(&app.admin), Method::GET, "/v1/domains", None)
        .await;
    assert_eq!(
        domains["items"],
        json!([]),
        "a refused command changed nothing"
    );
    assert_eq!(
        create(Some(csrf.clone())).await.unwrap().status(),
        StatusCode::CREATED
    );

    // Test connection takes GUIDs only: an id cannot walk the token URL's path elsewhere.
    let r = http
        .post(format!("{base}/v1/domains/check"))
        .header("cookie", &session)
        .header("x-csrf-token", &csrf)
        .json(
            &json!({"tenant_id": "../../admin?x=", "client_id": APP, "client_secret": "s",
                      "authority_url": "http://127.0.0.1:9"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // A sign-out posted without the session's CSRF token (another site's form) changes
    // nothing: no cookie cleared, the session still works.
    let r = http
        .post(format!("{base}/console/sign-out"))
        .header("cookie", &session)
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers().get("set-cookie").is_none());
    // A page that says so, for the admin who submitted an old page's form.
    let page = r.text().await.unwrap();
    assert!(
        page.contains("role=\"alert\"") && page.contains("nothing was done"),
        "{page}"
    );
    // Its way back leads to a page, not to a 404.
    let back = attribute_after(&page, "<a href=\"");
    let r = http
        .get(format!("{base}{back}"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    // (The console's front door sends a signed-in admin on to the domains.)
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "{back}");
    let r = http
        .get(format!("{base}/v1/domains"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Assets are revalidated by their ETag.
    let js = http
        .get(format!("{base}/console/assets/console.js"))
        .send()
        .await
        .unwrap();
    let tag = js.headers()["etag"].to_str().unwrap().to_owned();
    let again = http
        .get(format!("{base}/console/assets/console.js"))
        .header("if-none-match", &tag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);

    // Signing in again from the same browser ends the session it held: a copy of the old
    // cookie opens nothing.
    let auditor = app.token("auditor", &[]).await;
    let (pre, pre_cookie) = sign_in_form(&http, &base).await;
    let r = http
        .post(format!("{base}/console/sign-in"))
        .header("cookie", format!("{pre_cookie}; {session}"))
        .form(&[("token", auditor.as_str()), ("pre", pre.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let fresh = r.headers()["set-cookie"].to_str().unwrap();
    let fresh = fresh.split(';').next().unwrap().to_owned();
    let with = |cookie: String| {
        http.get(format!("{base}/v1/domains"))
            .header("cookie", cookie)
            .send()
    };
    assert_eq!(with(fresh).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        with(session.clone()).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let r = sign_in(admin.clone()).await;
    let session = r.headers()["set-cookie"].to_str().unwrap();
    let session = session.split(';').next().unwrap().to_owned();

    // Revoking the token ends the session: the API and the pages send it back to sign-in.
    let (_, tokens) = app
        .call(Some(&app.admin), Method::GET, "/v1/tokens", None)
        .await;
    let id = tokens["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "admin" && t["revoked_at"].is_null())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, _) = app
        .call(
            Some(&app.admin),
            Method::DELETE,
            &format!("/v1/tokens/{id}"),
            None,
        )
        .await;
    assert!(s.is_success());
    let r = http
        .get(format!("{base}/v1/domains"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = http
        .get(format!("{base}/console/domains"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/");

    // Signing out ends what the session has open: its event stream closes.
    let fresh = app.token("auditor", &[]).await;
    let r = sign_in(fresh).await;
    let session = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = http
        .get(format!("{base}/console/audit"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    let csrf = attribute_after(
        &page.text().await.unwrap(),
        "name=\"csrf-token\" content=\"",
    );
    let mut stream = http
        .get(format!(
            "{base}/v1/events/stream?from_position={}",
            app.head() + 1
        ))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let out = http
        .post(format!("{base}/console/sign-out"))
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its session");
}

/// Behind a proxy that ends TLS the server speaks plain HTTP, but browsers see HTTPS: the
/// console's cookies are `Secure` and `__Host-` named all the same, so a plain-HTTP link
/// cannot carry an admin's session in the clear.
#[tokio::test]
async fn console_cookies_are_secure_when_the_public_origin_is_https() {
    let app = crate::support::spawn_app_tuned(idledger::sync::SyncConfig::default(), |c| {
        c.public_url = Some("https://idledger.example".into());
    })
    .await;
    let base = app.url.clone();
    assert!(base.starts_with("http://"), "{base}");
    let http = without_redirects();
    let (pre, pre_cookie) = sign_in_form(&http, &base).await;
    assert!(pre_cookie.starts_with("__Host-idl_signin="), "{pre_cookie}");
    let r = http
        .post(format!("{base}/console/sign-in"))
        .header("cookie", &pre_cookie)
        .form(&[("token", app.admin.as_str()), ("pre", pre.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set.starts_with("__Host-idl_session=") && set.contains("; Secure"),
        "{set}"
    );
    let session = set.split(';').next().unwrap().to_owned();
    let page = http
        .get(format!("{base}/console/domains"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    // The name without the prefix is not the session cookie.
    let plain = session.trim_start_matches("__Host-");
    let page = http
        .get(format!("{base}/console/domains"))
        .header("cookie", plain)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
}

/// The demo's one-time sign-in link: opening it (a GET any site can make a browser send)
/// signs nothing in; its page's button does, once, and only with the page's own cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_link_signs_in_only_from_its_own_page() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut demo = std::process::Command::new(env!("CARGO_BIN_EXE_idledger"))
        .args(["demo", "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    // Read to the end, not only to the link: a demo whose output is closed stops (as any
    // command does when its reader goes away).
    let (found, link) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some((_, rest)) = line.split_once("one-time sign-in: ") {
                let _ = found.send(rest.trim_end_matches(')').to_owned());
            }
        }
    });
    let link = tokio::task::spawn_blocking(move || link.recv())
        .await
        .unwrap()
        .expect("the demo prints a sign-in link");
    let http = without_redirects();
    let session_set = |r: &reqwest::Response| {
        r.headers()
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("idl_session="))
    };
    // Opened: a page with a button, no session.
    let (pre, pre_cookie) = form_at(&http, &link).await;
    let post = |cookie: Option<&str>| {
        let mut req = http.post(&link).form(&[("pre", pre.as_str())]);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.send()
    };
    // Posted from elsewhere (no cookie of the page): refused, and the link still works.
    let forged = post(None).await.unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert!(!session_set(&forged));
    let signed_in = post(Some(&pre_cookie)).await.unwrap();
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    assert!(session_set(&signed_in));
    // Used once.
    let again = post(Some(&pre_cookie)).await.unwrap();
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        http.get(&link).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let _ = demo.kill();
    let _ = demo.wait();
}

/// A listing's next page goes on with the query its first page came from, even when the
/// search field was edited since (a cursor of one query means nothing to another); and a
/// name from the directory is shown as the text it is, never run as markup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_page_keeps_its_query_and_names_stay_text() {
    let app = spawn_app().await;
    let domain = app.domain("fabrikam.example").await;
    let domain = domain["id"].as_str().unwrap();
    for _ in 0..55 {
        app.user(domain).await;
    }
    let hostile = r#"<img src=x onerror="window.__xss=1">Mallory"#;
    app.user_named(domain, hostile).await;
    let b = Browser::start().await;
    b.sign_in(&app.url, &app.admin).await;
    b.goto(&format!("{}/console/users", app.url)).await;
    b.wait_text("#users", "Megan Bowen").await;
    assert!(b.present("#users-more:not([hidden])").await);

    // Edited, not applied: the next page is still the listing of every user.
    b.fill("#uq", "nobody-at-all").await;
    b.click("#users-more").await;
    let rows = "return document.querySelectorAll('#users tbody tr').length";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = b.css("#users").await.text().await.unwrap();
        assert!(
            !text.contains("No users match"),
            "the next page took the new query"
        );
        let n = b.client.execute(rows, vec![]).await.unwrap();
        if n.as_u64() == Some(6) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no second page: {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Back to the first page of that listing (the edited query still not applied).
    b.click("#users-first").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while b.client.execute(rows, vec![]).await.unwrap().as_u64() != Some(50) {
        assert!(std::time::Instant::now() < deadline, "no first page again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!b.present("#users-first:not([hidden])").await);
    // Applied: the search now holds.
    b.click("#user-search button[type=submit]").await;
    b.wait_text("#users", "No users match").await;

    b.fill("#uq", "mallory").await;
    b.click("#user-search button[type=submit]").await;
    b.wait_text("#users", hostile).await;
    b.click("#users a").await;
    b.wait_text("h1", hostile).await;
    let ran = b
        .client
        .execute("return window.__xss === undefined", vec![])
        .await
        .unwrap();
    assert_eq!(ran, json!(true), "a display name ran as markup");
    assert!(!b.present("#users img, h1 img, #user-facts img").await);

    // The domain's SSO defaults, edited on its page: they say whom they reach.
    b.goto(&format!("{}/console/domains/{domain}", app.url))
        .await;
    b.wait_text("h1", "fabrikam.example").await;
    b.wait_text("#sso-defaults-note", "imported from now on")
        .await;
    // Another admin changes the login method meanwhile: the form follows, and turning
    // SSO off here keeps their method.
    let (s, _) = app
        .call(
            Some(&app.admin),
            Method::PUT,
            &format!("/v1/domains/{domain}/sso-defaults"),
            Some(json!({"enabled": true, "method": "password_and_second_factor"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let method = "return document.querySelector('#sso-method').value";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while b.client.execute(method, vec![]).await.unwrap() != json!("password_and_second_factor") {
        assert!(
            std::time::Instant::now() < deadline,
            "the form kept the old method"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.css("#sso-enabled")
        .await
        .select_by_value("false")
        .await
        .unwrap();
    b.click("#sso-defaults button[type=submit]").await;
    b.wait_text("#flash", "users imported from now on get them")
        .await;
    let (_, d) = app
        .call(
            Some(&app.admin),
            Method::GET,
            &format!("/v1/domains/{domain}"),
            None,
        )
        .await;
    assert_eq!(d["sso_defaults"]["enabled"], false, "{d}");
    assert_eq!(
        d["sso_defaults"]["method"], "password_and_second_factor",
        "{d}"
    );
}

/// A user's page carries out its actions and shows their result: a key assigned and
/// taken away (confirmed), the user as they were before ("As of") and now again,
/// deactivated (confirmed) and activated; the users list filters by status and domain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_page_carries_out_its_actions_and_shows_the_past() {
    let app = spawn_app().await;
    let domain = app.domain("fabrikam.example").await;
    let domain = domain["id"].as_str().unwrap().to_owned();
    let other_domain = app.domain("tailspin.example").await;
    let user = app.user_named(&domain, "Nestor Wilke").await;
    app.user_named(&domain, "Lynne Robbins").await;
    app.user_named(other_domain["id"].as_str().unwrap(), "Lidia Holloway")
        .await;
    // The user's status as the API tells it, beside what the page shows.
    let status_of = async || {
        let (_, u) = app
            .call(
                Some(&app.admin),
                Method::GET,
                &format!("/v1/users/{}", user.0),
                None,
            )
            .await;
        u["status"].as_str().unwrap().to_owned()
    };
    let b = Browser::start().await;
    b.sign_in(&app.url, &app.admin).await;
    b.goto(&format!("{}/console/users/{}", app.url, user.0))
        .await;
    b.wait_text("h1", "Nestor Wilke").await;
    b.wait_text("#user-facts", "active").await;

    b.fill("#key-id", "K-0042").await;
    b.click("#assign-key button[type=submit]").await;
    b.wait_text("#flash", "Key assigned").await;
    b.wait_text("#user-facts", "K-0042").await;
    // A moment after the key came, as the page's own clock writes it.
    let moment = b
        .client
        .execute(
            "const d = new Date(Date.now() + 1000), p = (n) => String(n).padStart(2, '0');
             return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;",
            vec![],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    b.click("#unassign-key").await;
    b.client.accept_alert().await.unwrap();
    b.wait_text("#flash", "Key taken away").await;
    let facts = b.css("#user-facts").await.text().await.unwrap();
    assert!(!facts.contains("K-0042"), "{facts}");

    // As of that moment the key was theirs; now it is not.
    let as_of_moment = async || {
        b.client
            .execute(
                "document.querySelector('#at').value = arguments[0]",
                vec![moment.clone()],
            )
            .await
            .unwrap();
        b.click("#as-of button[type=submit]").await;
        b.wait_text("h1", "(as of").await;
    };
    as_of_moment().await;
    b.wait_text("#user-facts", "K-0042").await;
    // Its story as it stood then: the key came, and had not yet gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let story = b.css("#timeline").await.text().await.unwrap();
        if story.contains("KeyAssigned") && !story.contains("KeyUnassigned") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{story}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.click("#now").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while b.css("h1").await.text().await.unwrap().contains("as of") {
        assert!(std::time::Instant::now() < deadline, "still in the past");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let facts = b.css("#user-facts").await.text().await.unwrap();
    assert!(!facts.contains("K-0042"), "{facts}");
    b.wait_text("#timeline", "KeyUnassigned").await;

    // An invite, sent and sent again: each one in the story. The first is sent from the
    // past view, and the page comes back to the present to show it.
    as_of_moment().await;
    for label in ["Send invite", "Resend invite"] {
        b.wait_text("#invite", label).await;
        b.click("#invite").await;
        b.wait_text("#flash", "Invite sent").await;
        assert!(!b.css("h1").await.text().await.unwrap().contains("as of"));
        b.client
            .execute("document.querySelector('#flash').replaceChildren()", vec![])
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while b
        .css("#timeline")
        .await
        .text()
        .await
        .unwrap()
        .matches("InviteSent")
        .count()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "two invites not shown"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    b.click("#deactivate").await;
    b.client.accept_alert().await.unwrap();
    b.wait_text("#flash", "Deactivated").await;
    b.wait_text("#user-facts", "deactivated").await;
    assert_eq!(status_of().await, "deactivated");

    // The list, by status, then by domain.
    let listed_alone = async |name: &str| {
        let names = ["Nestor Wilke", "Lynne Robbins", "Lidia Holloway"];
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let text = b.css("#users").await.text().await.unwrap();
            if names.iter().all(|n| text.contains(n) == (*n == name)) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not {name} alone: {text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    b.goto(&format!("{}/console/users", app.url)).await;
    b.wait_text("#users", "Lidia Holloway").await;
    b.screenshot("console-users").await;
    b.css("#ustatus")
        .await
        .select_by_label("deactivated")
        .await
        .unwrap();
    b.click("#user-search button[type=submit]").await;
    listed_alone("Nestor Wilke").await;
    b.css("#ustatus").await.select_by_value("").await.unwrap();
    b.css("#udomain")
        .await
        .select_by_value(other_domain["id"].as_str().unwrap())
        .await
        .unwrap();
    b.click("#user-search button[type=submit]").await;
    listed_alone("Lidia Holloway").await;
    // As of that moment (before the deactivation), no one was deactivated.
    b.css("#udomain").await.select_by_value("").await.unwrap();
    b.css("#ustatus")
        .await
        .select_by_label("deactivated")
        .await
        .unwrap();
    b.client
        .execute(
            "document.querySelector('#uat').value = arguments[0]",
            vec![moment],
        )
        .await
        .unwrap();
    b.click("#user-search button[type=submit]").await;
    b.wait_text("h1", "(as of").await;
    b.wait_text("#users", "No users match.").await;
    b.client
        .execute("document.querySelector('#uat').value = ''", vec![])
        .await
        .unwrap();
    b.click("#user-search button[type=submit]").await;
    listed_alone("Nestor Wilke").await;
    assert!(!b.css("h1").await.text().await.unwrap().contains("as of"));

    // Back on the page: activated again.
    b.goto(&format!("{}/console/users/{}", app.url, user.0))
        .await;
    b.wait_text("#user-facts", "deactivated").await;
    b.click("#activate").await;
    b.wait_text("#flash", "Activated").await;
    assert_eq!(status_of().await, "active");
}

/// A form the browser sends by itself (Enter pressed before the page's script took the
/// form over) reads nothing, changes nothing and leads back to its page, so that no
/// reload offers to send what was typed again (a client secret, say).
#[tokio::test]
async fn a_form_sent_before_its_script_leads_back_and_changes_nothing() {
    let app = spawn_app().await;
    let head = app.head();
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for page in [
        "/console/domains",
        "/console/domains/01a24d3c-0988-74d7-9264-8bd6599b9f7a",
        "/console/users",
        "/console/rotations",
        "/console/audit",
        "/console/apps",
    ] {
        let r = plain
            .post(format!("{}{page}", app.url))
            .form(&[("domain", "contoso.com"), ("client_secret", SECRET)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{page}");
        assert_eq!(r.headers()["location"], page);
    }
    assert_eq!(app.head(), head);
}

impl Browser {
    /// Every input, select, textarea and button of the page without an accessible name (a
    /// label with text, `aria-label`, `aria-labelledby`, or a button's own text), named by
    /// id and where it sits; hidden fields (`type=hidden`) carry no name by design.
    async fn unnamed_controls(&self) -> serde_json::Value {
        self
            .client
            .execute(
                r##"const said = (s) => (s ?? "").trim() !== "";
                   const named = (e) => said(e.getAttribute("aria-label"))
                     || (e.getAttribute("aria-labelledby") ?? "").split(/\s+/)
                          .some((id) => id && said(document.getElementById(id)?.textContent))
                     || [...(e.labels ?? [])].some((l) => said(l.textContent))
                     || (e.tagName === "BUTTON" && said(e.textContent));
                   return [...document.querySelectorAll("input, select, textarea, button")]
                     .filter((e) => e.type !== "hidden" && !named(e))
                     .map((e) => `${e.tagName.toLowerCase()}${e.id ? "#" + e.id : ""}`
                       + `${e.name ? "[name=" + e.name + "]" : ""} in #${e.parentElement.closest("[id]")?.id ?? "?"}`);"##,
                vec![],
            )
            .await
            .unwrap()
    }

    /// [`Browser::unnamed_controls`] is empty, or the page's address and its offenders.
    async fn every_control_named(&self) {
        let unnamed = self.unnamed_controls().await;
        let page = self.url().await;
        assert_eq!(unnamed, json!([]), "controls without a name on {page}");
    }

    /// How many elements `selector` finds.
    async fn count(&self, selector: &str) -> usize {
        self.client
            .find_all(fantoccini::Locator::Css(selector))
            .await
            .unwrap()
            .len()
    }

    /// Waits until `selector` finds exactly `n` elements.
    async fn wait_count(&self, selector: &str, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let found = self.count(selector).await;
            if found == n {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{selector}: {found}, wanted {n}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits until the file `name` in `dir` is wholly downloaded (Chromium writes it under
/// another name until it is); answers its bytes.
async fn downloaded(dir: &std::path::Path, name: &str) -> Vec<u8> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let partial = std::fs::read_dir(dir).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".crdownload")
        });
        if let (false, Ok(bytes)) = (partial, std::fs::read(dir.join(name))) {
            return bytes;
        }
        let listed: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            std::time::Instant::now() < deadline,
            "{name} not downloaded: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A call to graphsim's control routes that must succeed.
async fn sim_control(sim: &str, method: Method, path: &str, body: Option<serde_json::Value>) {
    let mut req = reqwest::Client::new().request(method, format!("{sim}{path}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
}

/// What the whole-workflow test leaves unclicked, in one browser session: sign-in by
/// keyboard alone; Test connection naming what is missing; the domains list with a failed
/// sync's Graph code and the next sync; a run seen running and then done, live, with no
/// reload and the page's fallback poll switched off (so the event stream brought it);
/// a run's users a page at a time; Import all under the domain's SSO defaults; a rotation
/// refused by Graph, with its reason; an export and its manifest downloaded for real, then
/// dropped on the page to verify, as downloaded and tampered with. On every page, every
/// control has a name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consoles_other_features_show_what_they_did() {
    let graph = sim().await;
    // 25 members more than contoso's: a run then has more users than a page of 50.
    let extra = |n: u32| format!("e0a80000-0000-4000-8000-{n:012}");
    for n in 0..25 {
        let body = json!({"id": extra(n), "userPrincipalName": format!("extra{n:02}@contoso.onmicrosoft.com"),
                          "displayName": format!("Extra Member {n:02}")});
        sim_control(&graph, Method::POST, "/_sim/users", Some(body)).await;
        let member = format!("/_sim/groups/{SYNC}/members/{}", extra(n));
        sim_control(&graph, Method::POST, &member, None).await;
    }
    let app = spawn_app().await;
    let base = app.url.clone();
    let b = Browser::start().await;

    // The check of names finds a control without one (here, two put there for it).
    b.goto(&format!("{base}/")).await;
    b.css("#token").await;
    b.client
        .execute(
            "const f = document.querySelector('form');
             f.append(Object.assign(document.createElement('input'), { id: 'probe' }));
             f.append(Object.assign(document.createElement('button'), { type: 'button', name: 'bare' }));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        b.unnamed_controls().await,
        json!(["input#probe in #?", "button[name=bare] in #?"])
    );
    // Sign-in by keyboard alone, on the page as served: the first Tab lands in the token
    // field, typing fills it, Enter sends it.
    b.goto(&format!("{base}/")).await;
    b.css("#token").await;
    b.every_control_named().await;
    use fantoccini::actions::{InputSource, KeyAction, KeyActions};
    let keys = |text: &str| {
        text.chars()
            .fold(KeyActions::new("keyboard".into()), |keys, c| {
                keys.then(KeyAction::Down { value: c })
                    .then(KeyAction::Up { value: c })
            })
    };
    let press = |key: char| keys(&key.to_string());
    b.client.perform_actions(press('\u{E004}')).await.unwrap();
    let focused = b
        .client
        .execute("return document.activeElement.id", vec![])
        .await
        .unwrap();
    assert_eq!(focused, json!("token"), "the first Tab stop");
    b.client.perform_actions(keys(&app.admin)).await.unwrap();
    b.client.perform_actions(press('\u{E007}')).await.unwrap();
    b.wait_text("h1", "Domains").await;
    b.wait_text("#domains", "No domains yet").await;
    b.every_control_named().await;

    // Test connection before saving: a permission the app lacks and a sync group Graph
    // does not have are each said missing.
    let app_path = format!("/_sim/apps/{APP}");
    let read_only = json!({"permissions": ["User.Read.All", "Group.Read.All", "Domain.Read.All"]});
    sim_control(&graph, Method::PATCH, &app_path, Some(read_only)).await;
    b.fill("#d-domain", "contoso.onmicrosoft.com").await;
    b.fill("#d-client", APP).await;
    b.fill("#d-secret", SECRET).await;
    b.fill("#d-tenant", TENANT).await;
    b.fill("#d-sync", "Hideez Users Sync (old)").await;
    b.click("details summary").await;
    b.fill("#d-graph", &graph).await;
    b.fill("#d-auth", &graph).await;
    b.click("#test-connection").await;
    let report = b.wait_text("#check-report", "Something is missing").await;
    for said in [
        "User-PasswordProfile.ReadWrite.All: missing",
        "Sync group “Hideez Users Sync (old)”: not found",
        "Rotation group “Hideez Key Auto Password Change”: found",
    ] {
        assert!(report.contains(said), "{said}: {report}");
    }
    // Marked as missing, not only worded so: the two permissions taken away and the
    // group, and nothing else.
    let marked = b
        .client
        .execute(
            "return [...document.querySelectorAll('#check-report li.missing')].map((l) => l.textContent)",
            vec![],
        )
        .await
        .unwrap();
    let marked: Vec<String> = serde_json::from_value(marked).unwrap();
    assert!(
        marked.len() == 3
            && marked.iter().any(|l| l.starts_with("User.ReadWrite.All"))
            && marked.iter().any(|l| l.starts_with("User-PasswordProfile"))
            && marked.iter().any(|l| l.starts_with("Sync group")),
        "{marked:?}"
    );
    // Put right, the same check passes, and the domain is saved.
    let full = json!({"permissions": ["User.Read.All", "Group.Read.All", "Domain.Read.All",
                                      "User.ReadWrite.All", "User-PasswordProfile.ReadWrite.All"]});
    sim_control(&graph, Method::PATCH, &app_path, Some(full)).await;
    b.fill("#d-sync", "Hideez Users Sync").await;
    b.click("#test-connection").await;
    b.wait_text("#check-report", "Connection ok").await;
    b.click("#add-domain button[type=submit]").await;
    b.wait_text("#domain-facts", "saved (never shown)").await;
    let domain = b.url().await.rsplit('/').next().unwrap().to_owned();

    // A run Graph refuses: the domains list shows it failed, with Graph's code, and when
    // the next one is due.
    let refuse = json!({"path_prefix": "/v1.0/groups", "status": 403, "count": 1000});
    sim_control(&graph, Method::POST, "/_sim/faults", Some(refuse)).await;
    let run = sync_to_end(&app, &domain).await;
    assert_eq!(run["status"], "failed", "{run}");
    sim_control(&graph, Method::DELETE, "/_sim/faults", None).await;
    b.goto(&format!("{base}/console/domains")).await;
    let row = "#domains tbody tr:first-child";
    b.wait_text(&format!("{row} td:nth-child(4)"), "failed")
        .await;
    b.wait_text(
        &format!("{row} td:nth-child(6)"),
        "Authorization_RequestDenied",
    )
    .await;
    let (_, d) = app
        .call(
            Some(&app.admin),
            Method::GET,
            &format!("/v1/domains/{domain}"),
            None,
        )
        .await;
    let next = d["next_sync_at"].as_str().expect("a next sync scheduled");
    let next = b
        .client
        .execute(
            "return new Date(arguments[0]).toLocaleString()",
            vec![json!(next)],
        )
        .await
        .unwrap();
    b.wait_text(&format!("{row} td:nth-child(5)"), next.as_str().unwrap())
        .await;
    b.every_control_named().await;

    // A run that takes seconds (Graph holds a read), watched on the domain's page: seen
    // running, then done, without a reload. The page's 2-second poll is switched off, so
    // what shows the run's progress and end is the event stream.
    b.click(&format!("{row} a")).await;
    b.wait_text("#domain-facts", "active").await;
    b.wait_text("#runs", "failed").await;
    let hold = json!({"path_prefix": "/v1.0/groups/delta", "delay_ms": 3000, "count": 1});
    sim_control(&graph, Method::POST, "/_sim/faults", Some(hold)).await;
    b.client
        .execute(
            "window.__noReload = 1; window.__polls = 0;
             const real = window.setInterval;
             window.setInterval = (f, ms, ...rest) => {
               if (ms === 2000) { window.__polls++; return 0; }
               return real(f, ms, ...rest);
             };",
            vec![],
        )
        .await
        .unwrap();
    b.click("#sync-now").await;
    b.wait_text("#live-status", "running").await;
    b.wait_text("#live-status", "succeeded").await;
    b.wait_text("#live-status", "added 54").await;
    b.wait_text("#runs tbody tr:first-child", "succeeded").await;
    let marks = b
        .client
        .execute("return [window.__noReload, window.__polls]", vec![])
        .await
        .unwrap();
    assert_eq!(marks, json!([1, 1]), "reloaded, or polled another way");

    // Its users, 50 to a page: the next page holds the rest, and back to the first.
    b.click("#runs tbody tr:first-child button.link").await;
    let users = "#outcomes tbody tr";
    b.wait_count(users, 50).await;
    let names = || async { b.css("#outcomes tbody").await.text().await.unwrap() };
    let first_page = names().await;
    assert!(!b.present("#outcomes-first").await);
    // The rest, as many as the API has past the first 50.
    let (_, runs) = app
        .call(
            Some(&app.admin),
            Method::GET,
            &format!("/v1/domains/{domain}/sync-runs?limit=1"),
            None,
        )
        .await;
    let path = format!(
        "/v1/domains/{domain}/sync-runs/{}/outcomes?limit=1000",
        runs["items"][0]["run_id"].as_str().unwrap()
    );
    let (_, all) = app.call(Some(&app.admin), Method::GET, &path, None).await;
    let total = all["items"].as_array().unwrap().len();
    assert!((51..100).contains(&total), "{all}");
    b.click("#outcomes-more").await;
    b.wait_count(users, total - 50).await;
    let second_page = names().await;
    for line in second_page.lines() {
        let who = line.split('@').next().unwrap();
        assert!(!first_page.contains(who), "{who} on both pages");
    }
    assert!(!b.present("#outcomes-more").await);
    b.every_control_named().await;
    b.click("#outcomes-first").await;
    b.wait_count(users, 50).await;
    assert_eq!(names().await, first_page);

    // Import all, under the domain's SSO defaults, which the import page states.
    let (s, _) = app
        .call(
            Some(&app.admin),
            Method::PUT,
            &format!("/v1/domains/{domain}/sso-defaults"),
            Some(json!({"enabled": true, "method": "password_and_second_factor"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, candidates) = app
        .call(
            Some(&app.admin),
            Method::GET,
            &format!("/v1/domains/{domain}/candidates?limit=1000"),
            None,
        )
        .await;
    let waiting = candidates["items"].as_array().unwrap().len();
    assert!(waiting > 50, "{candidates}");
    b.click("#import-link").await;
    b.wait_text("#sso-note", "password + second factor").await;
    b.wait_text("#candidates", "Extra Member").await;
    b.every_control_named().await;
    b.click("#import-all").await;
    let asked = b.client.get_alert_text().await.unwrap();
    assert!(asked.contains("Import every candidate"), "{asked}");
    b.client.accept_alert().await.unwrap();
    b.wait_text("#flash", &format!("Imported {waiting} users"))
        .await;
    b.wait_text("#candidates", "every member of the sync group is imported")
        .await;
    assert!(!b.present("#candidates input").await);
    assert!(!b.present("#candidates-more:not([hidden])").await);
    // On the users page: no candidate left, and the imported have the defaults.
    b.goto(&format!("{base}/console/users")).await;
    b.wait_text("#users", "@contoso.onmicrosoft.com").await;
    b.css("#ustatus")
        .await
        .select_by_label("candidate")
        .await
        .unwrap();
    b.click("#user-search button[type=submit]").await;
    // Left a candidate: only who is outside the sync group (a member of the rotation group
    // alone), whom no import takes.
    let (_, left) = app
        .call(
            Some(&app.admin),
            Method::GET,
            &format!("/v1/users?domain={domain}&status=candidate&limit=1000"),
            None,
        )
        .await;
    let left = left["items"].as_array().unwrap().clone();
    assert!(
        left.iter().all(|u| u["in_sync_group"] == json!(false)),
        "{left:?}"
    );
    if left.is_empty() {
        b.wait_text("#users", "No users match.").await;
    } else {
        let name = left[0]["display_name"].as_str().unwrap();
        b.wait_text("#users", name).await;
        b.wait_count("#users tbody tr", left.len()).await;
    }
    let listed = b.css("#users tbody").await.text().await.unwrap();
    assert!(!listed.contains("Extra Member"), "{listed}");
    b.css("#ustatus")
        .await
        .select_by_label("active")
        .await
        .unwrap();
    b.fill("#uq", "Extra Member 07").await;
    b.click("#user-search button[type=submit]").await;
    b.wait_count("#users tbody tr", 1).await;
    let shown = b.wait_text("#users tbody tr", "Extra Member 07").await;
    assert!(
        shown.contains("active") && shown.contains("password + second factor"),
        "{shown}"
    );
    b.every_control_named().await;

    // A rotation Graph refuses (403 on the password's PATCH): failed, with Graph's reason,
    // on the user's page and on the rotations page.
    let refuse = json!({"method": "PATCH", "path_prefix": format!("/v1.0/users/{}", extra(7)),
                        "status": 403, "count": 1000});
    sim_control(&graph, Method::POST, "/_sim/faults", Some(refuse)).await;
    b.click("#users tbody a").await;
    b.wait_text("h1", "Extra Member 07").await;
    b.wait_text("#user-facts", "extra07@").await;
    b.every_control_named().await;
    // Rotated only with a key to take the new password.
    b.fill("#key-id", "K-0107").await;
    b.click("#assign-key button[type=submit]").await;
    b.wait_text("#flash", "Key assigned").await;
    b.click("#rotate").await;
    b.wait_text("#flash", "Rotation finished: failed").await;
    b.wait_text("#history", "Authorization_RequestDenied").await;
    sim_control(&graph, Method::DELETE, "/_sim/faults", None).await;
    b.goto(&format!("{base}/console/rotations")).await;
    b.wait_text("#recent", "extra07@").await;
    b.css("#recent-outcome")
        .await
        .select_by_value("failed")
        .await
        .unwrap();
    b.click("#recent-form button[type=submit]").await;
    b.wait_count("#recent tbody tr", 1).await;
    let refused = b.wait_text("#recent tbody tr", "extra07@").await;
    assert!(
        refused.contains("failed") && refused.contains("Authorization_RequestDenied: "),
        "{refused}"
    );
    b.every_control_named().await;

    // The audit page: an export and its manifest downloaded as a browser saves them.
    let downloads = tempfile::tempdir().unwrap();
    b.client
        // WebDriver has no word for where downloads go: chromedriver's DevTools passthrough.
        .issue_cmd(SessionCommand {
            method: reqwest::Method::POST,
            path: "goog/cdp/execute".into(),
            body: Some(json!({
                "cmd": "Browser.setDownloadBehavior",
                "params": {"behavior": "allow", "downloadPath": downloads.path()},
            })),
        })
        .await
        .unwrap();
    b.goto(&format!("{base}/console/audit")).await;
    b.wait_text("#log-facts", "Head position").await;
    b.every_control_named().await;
    b.click("#export-form button[type=submit]").await;
    let csv_name = "idledger-password-changes.csv";
    let csv = String::from_utf8(downloaded(downloads.path(), csv_name).await).unwrap();
    assert!(
        csv.starts_with("position,recorded_at,domain,user_id,user_principal_name,rotation_id,step"),
        "{csv}"
    );
    assert!(csv.contains("Authorization_RequestDenied"), "{csv}");
    let pinned = b.wait_text("#export-pin", "Up to log position").await;
    b.click("#download-manifest").await;
    let manifest_name = "idledger-password-changes.csv.manifest.json";
    let manifest = String::from_utf8(downloaded(downloads.path(), manifest_name).await).unwrap();
    let fields: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    // The manifest of that very file, at the position the page pinned.
    use sha2::Digest;
    let digest: String = sha2::Sha256::digest(csv.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(fields["file_sha256"], json!(digest), "{manifest}");
    let at = fields["log_position"].as_u64().unwrap();
    assert!(
        pinned.contains(&format!("Up to log position {at},")),
        "{pinned} / {manifest}"
    );

    // Dropped on the page (a drop event carrying the two files, as a drag from the
    // desktop brings them): as downloaded, the export matches the log; one value changed,
    // the page names the first differing row.
    let verify_dropped = async |file: &str| {
        let chosen = b
            .client
            .execute(
                r##"const [csv, manifest, csvName, manifestName] = arguments;
                   const dt = new DataTransfer();
                   dt.items.add(new File([manifest], manifestName, { type: "application/json" }));
                   dt.items.add(new File([csv], csvName, { type: "text/csv" }));
                   const zone = document.querySelector("#verify-export");
                   for (const kind of ["dragenter", "dragover", "drop"]) {
                     zone.dispatchEvent(new DragEvent(kind, { bubbles: true, cancelable: true, dataTransfer: dt }));
                   }
                   return [document.querySelector("#export-file").files[0]?.name,
                           document.querySelector("#manifest-file").files[0]?.name];"##,
                vec![
                    json!(file),
                    json!(manifest),
                    json!(csv_name),
                    json!(manifest_name),
                ],
            )
            .await
            .unwrap();
        assert_eq!(chosen, json!([csv_name, manifest_name]));
        b.client
            .execute(
                "document.querySelector('#export-result').replaceChildren()",
                vec![],
            )
            .await
            .unwrap();
        b.click("#verify-export button[type=submit]").await;
        b.css("#export-status").await.text().await.unwrap()
    };
    let ok = verify_dropped(&csv).await;
    assert!(ok.starts_with("Export ok"), "{ok}");
    let tampered = csv.replacen(
        "Authorization_RequestDenied",
        "Authorization_RequestGranted",
        1,
    );
    let differs = verify_dropped(&tampered).await;
    let row = csv
        .lines()
        .position(|l| l.contains("Authorization_RequestDenied"))
        .unwrap();
    assert!(
        differs.starts_with("Export differs") && differs.contains(&format!("differs at row {row}")),
        "{differs}"
    );

    // The one page not yet visited.
    b.goto(&format!("{base}/console/apps")).await;
    b.wait_text("#signing-keys", "No signing key yet").await;
    b.every_control_named().await;
}

/// Starts a run of `domain` through the API and waits for its end.
async fn sync_to_end(app: &crate::support::App, domain: &str) -> serde_json::Value {
    let (s, started) = app
        .call(
            Some(&app.admin),
            Method::POST,
            &format!("/v1/domains/{domain}/sync"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{started}");
    let run = format!(
        "/v1/domains/{domain}/sync-runs/{}",
        started["run_id"].as_str().unwrap()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, r) = app.call(Some(&app.admin), Method::GET, &run, None).await;
        if r["status"] != "running" {
            return r;
        }
        assert!(std::time::Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
