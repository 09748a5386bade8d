// idledger console: fills the server-rendered frames from the JSON API and sends every
// command to the API's own routes (session cookie + X-CSRF-Token). Text from the API is
// only ever set with textContent, never parsed as HTML.
"use strict";

const body = document.body;
const admin = body.dataset.role === "admin";
const pageId = body.dataset.id;
const csrf = document.querySelector('meta[name="csrf-token"]')?.content ?? "";
const $ = (sel) => document.querySelector(sel);

const KINDS = ["DomainRegistered", "DomainSettingsChanged", "DomainCredentialsSet",
  "DomainCredentialsRemoved", "SsoDefaultsChanged", "DomainRemoved", "SyncGroupsResolved",
  "SyncRunStarted", "SyncRunCompleted", "SyncRunFailed", "SyncQuarantined",
  "SyncQuarantineApproved", "DeltaCheckpointed", "UserDiscovered", "UserAttributesChanged",
  "UserImported", "MemberLeftSyncGroup", "MemberRejoinedSyncGroup", "UserKept",
  "UserDeactivated", "UserDeleted", "UserReactivated", "RotationGroupJoined",
  "RotationGroupLeft", "UserSsoOverrideSet", "KeyAssigned", "KeyUnassigned", "InviteSent",
  "RotationStarted", "RotationRetried", "RotationSucceeded", "RotationFailed",
  "KeyWriteQueued", "KeyWriteDelivered", "KeyWriteConfirmed", "KeyWriteFailed", "KeyWriteSuperseded",
  "PasswordRevealed", "TokenIssued", "TokenRevoked", "RotationInterrupted", "RotationRequested",
  "EnrolmentStarted", "EnrolmentCompleted", "PasskeyRegistered", "PasskeyRenamed",
  "PasskeyRemoved", "TotpEnrolled", "TotpRemoved", "SignInSucceeded", "SignInFailed",
  "SignInLocked", "WorkstationCertificateIssued", "WorkstationCertificateRetired",
  "AppRegistered", "AppChanged", "AppSecretRotated", "AppRemoved", "SigningKeyAdded",
  "SigningKeyRetired", "AppTokensIssued", "AppTokenRefused", "FederatedDomainsSeen",
  "SyncQuarantineApplied", "KeyWriteWrittenLate", "SigningKeyHandover", "SignInUnlocked",
  "AppTokensRevoked"];

/// When the admin last pressed a key or a button. A request the page makes on its own
/// well after that (a live refresh, a poll) says so, and does not keep an idle session
/// open: a tab left open is not an admin at work.
let lastInput = Date.now();
for (const kind of ["keydown", "pointerdown", "submit"]) {
  document.addEventListener(kind, () => { lastInput = Date.now(); }, true);
}
const ACTIVE_AFTER_INPUT_MS = 10000;

/// Calls the API; answers the parsed body, or throws an Error with the API's message.
async function api(method, path, payload) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (method !== "GET") init.headers["x-csrf-token"] = csrf;
  if (Date.now() - lastInput > ACTIVE_AFTER_INPUT_MS) init.headers["x-idledger-background"] = "1";
  if (payload !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(payload);
  }
  const r = await fetch(path, init);
  if (r.status === 401) {
    window.location.assign("/");
    throw new Error("signed out");
  }
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!r.ok) throw new Error(data?.error?.message ?? `${r.status} ${r.statusText}`);
  return data;
}

/// An element with attributes and children (strings become text nodes).
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "class") e.className = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function flash(message, kind = "ok") {
  const f = $("#flash");
  f.replaceChildren(el("p", { class: kind, role: kind === "error" ? "alert" : null }, message));
}

/// Runs `action` for a button, showing errors and keeping the button busy meanwhile.
function wire(target, action, confirmText) {
  if (!target) return;
  const run = async (ev) => {
    ev?.preventDefault();
    if (confirmText && !window.confirm(confirmText)) return;
    const button = target.tagName === "FORM" ? target.querySelector("[type=submit]") : target;
    button?.setAttribute("aria-busy", "true");
    if (button) button.disabled = true;
    try {
      await action();
    } catch (e) {
      flash(e.message, "error");
    } finally {
      button?.removeAttribute("aria-busy");
      if (button) button.disabled = false;
    }
  };
  target.addEventListener(target.tagName === "FORM" ? "submit" : "click", run);
}

function when(t) {
  return t ? new Date(t).toLocaleString() : "—";
}

function badge(text, kind) {
  return el("span", { class: `badge ${kind ?? text}` }, text);
}

function fill(table, rows, empty) {
  const tbody = table.querySelector("tbody");
  tbody.replaceChildren(...rows);
  if (!rows.length) {
    const cols = table.querySelectorAll("thead th").length;
    tbody.append(el("tr", {}, el("td", { colspan: cols, class: "empty" }, empty)));
  }
}

function facts(dl, pairs) {
  dl.replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

/// `table` shown a page at a time: `query()` is the first page's address, read (with any
/// filter in it) when the first page loads; `row` makes a row. Answers the function that
/// loads the first page again.
function pagedTable(table, query, row, empty, label) {
  // Named by their table's heading: a page with several tables has several pagers, and a
  // screen reader lists buttons by name.
  const of = label ?? table.closest("section")?.querySelector("h2")?.textContent ?? table.id;
  const first = el("button", { type: "button", hidden: true, "data-first": table.id, "aria-label": `First page of ${of}` }, "First page");
  const more = el("button", { type: "button", hidden: true, "data-next": table.id, "aria-label": `Next page of ${of}` }, "Next page");
  table.after(el("div", { class: "pager" }, first, more));
  const pages = pager(query, (page, after) => {
    fill(table, page.items.map(row), typeof empty === "function" ? empty() : empty);
    more.hidden = !page.next;
    first.hidden = !after;
  });
  more.addEventListener("click", () => pages.next().catch((e) => flash(e.message, "error")));
  // The first page of the listing shown, not of a filter edited but not applied.
  first.addEventListener("click", () => pages.again().catch((e) => flash(e.message, "error")));
  // Called, the first page; `.current()`, the page shown again.
  const load = () => pages.first();
  load.current = () => (pages.current());
  return load;
}

/// The pages of one listing. A cursor belongs to the query it came from: `first()` reads
/// `query()` afresh and forgets the old cursor, `next()` goes on with the query of the
/// first page (and does nothing while that page is on its way), so a filter edited but
/// not yet applied never meets another listing's cursor. Only the answer to the latest
/// request is shown: a slow one cannot overwrite a newer listing.
function pager(query, show) {
  let base = null, cursor = null, target = null, latest = 0;
  const load = async (from, after) => {
    const ticket = ++latest;
    // The page asked for last, shown or on its way: what `current()` reads again.
    target = after;
    const page = await api("GET", withAfter(from, after));
    if (ticket !== latest) return;
    cursor = page.next;
    show(page, after);
  };
  return {
    first: () => { base = query(); cursor = null; return load(base, null); },
    next: () => (cursor ? load(base, cursor) : Promise.resolve()),
    // Back to the first page of the listing shown, not of a query edited since.
    again: () => (base ? load(base, null) : Promise.resolve()),
    // The page shown (or on its way), read again: a live update must not move a reader
    // off it, nor undo a move they just asked for.
    current: () => (base ? load(base, target) : Promise.resolve()),
  };
}

/// Every item of a collection, following `next` (for choices such as the domains of a
/// select, which must not be cut off).
async function allItems(base) {
  const items = [];
  let after = null;
  do {
    const page = await api("GET", withAfter(base, after));
    items.push(...page.items);
    after = page.next;
  } while (after);
  return items;
}

/// `base` with `after` added when there is one.
function withAfter(base, after) {
  return after ? `${base}&after=${encodeURIComponent(after)}` : base;
}

function formObject(form) {
  const o = {};
  for (const [k, v] of new FormData(form).entries()) if (v !== "") o[k] = v;
  return o;
}

// A failed write leaves the key holding another password than Entra ID: say so, with
// the agent's own words.
function keyWriteText(w) {
  if (!w) return "none";
  return el("span", {}, badge(w.state), w.state === "failed"
    ? ` ${w.detail ?? ""}: the key does not hold the current password` : "");
}

function ssoText(s) {
  if (!s) return "domain default";
  if (!s.enabled) return "off";
  return s.method === "passwordless" ? "passwordless" : "password + second factor";
}

/// Where a page's live updates start: the first event its reads may not include. Taken
/// before the page's first read, from the projections (which the reads come from), not
/// the log's head: an event committed or projected meanwhile then comes once more (every
/// refresh it brings is idempotent) instead of never.
async function liveFrom() {
  return (await api("GET", "/healthz")).projector_position + 1;
}

/// Follows the log from position `from` (see `liveFrom`): `on(envelope)` for each event.
/// The browser reconnects a dropped stream itself; one it gives up on (the session ended
/// or was revoked, the server refused) sends a signed-out page to sign-in and says so
/// otherwise, rather than leaving the page silently still.
function follow(from, on) {
  const source = new EventSource(`/v1/events/stream?from_position=${from}`);
  for (const k of KINDS) source.addEventListener(k, (m) => on(JSON.parse(m.data)));
  source.addEventListener("error", () => {
    if (source.readyState !== EventSource.CLOSED) return;
    api("GET", "/v1/domains?limit=1")
      .then(() => flash("Live updates stopped: reload the page to see changes.", "error"))
      .catch((e) => flash(e.message, "error"));
  });
  return source;
}

/// `action` run once for any number of calls while it runs, and once more after if any
/// came meanwhile: a burst of events asks the server once or twice, not once each, and
/// answers never arrive out of order.
function coalesced(action) {
  let running = null, again = false;
  const run = async () => {
    if (running) { again = true; return running; }
    running = (async () => {
      try {
        do { again = false; await action(); } while (again);
      } finally { running = null; }
    })();
    return running;
  };
  return run;
}

// ---- Domains ---------------------------------------------------------------------------

function checkReport(report) {
  const items = [];
  const token = report.token;
  items.push(el("li", { class: token === "ok" ? "ok" : "missing" },
    `Token: ${token === "ok" ? "ok" : (token?.message ?? token?.error ?? "failed")}`));
  for (const [p, state] of Object.entries(report.permissions ?? {})) {
    items.push(el("li", { class: state === "granted" ? "ok" : "missing" }, `${p}: ${state}`));
  }
  for (const key of ["sync_group", "rotation_group"]) {
    const g = report[key];
    if (!g) continue;
    const found = g.error === undefined;
    items.push(el("li", { class: found ? "ok" : "missing" },
      `${key === "sync_group" ? "Sync group" : "Rotation group"} “${g.name}”: ` +
      (found ? `found, ${g.members} members` : g.error)));
  }
  const reads = { groups: "Read groups", users: "Read users (delta)", domains: "Read domains" };
  for (const [r, state] of Object.entries(report.reads ?? {})) {
    items.push(el("li", { class: state === "ok" ? "ok" : "missing" },
      `${reads[r] ?? r}: ${state === "ok" ? "ok" : (state?.error ?? "failed")}`));
  }
  // What no token shows (a directory role): said, never ticked.
  const notes = (report.notes ?? []).map((n) => el("li", { class: "note" }, `Also needed: ${n}`));
  return el("div", { class: report.ok ? "report ok" : "report missing" },
    el("p", {}, report.ok ? "Connection ok: everything needed is there." : "Something is missing:"),
    el("ul", {}, items, notes));
}

function domainBody(form) {
  const o = formObject(form);
  if (o.auto_password_change_days) o.auto_password_change_days = Number(o.auto_password_change_days);
  return o;
}

async function domainsPage() {
  await pagedTable($("#domains"), () => "/v1/domains?limit=100&removed=false", (d) => {
    const last = d.last_sync;
    // The worker's own schedule (its jitter, a wait Graph asked for), not a guess.
    const next = d.next_sync_at ? when(d.next_sync_at) : (d.sync_active ? "running or soon" : "stopped");
    return el("tr", {},
      el("td", {}, el("a", { href: `/console/domains/${d.id}` }, d.domain)),
      el("td", {}, d.credentials?.tenant_id ?? "—"),
      el("td", {}, d.credentials ? badge("saved", "active") : badge("none", "deactivated")),
      el("td", {}, last ? [badge(last.status), " ", when(last.finished_at ?? last.started_at)] : "never"),
      el("td", {}, next),
      el("td", {}, last?.error ? `${last.graph_code ?? ""} ${last.error}`.trim() : ""));
  }, "No domains yet." + (admin ? " Add one below." : ""))();
  const form = $("#add-domain");
  if (!form) return;
  wire($("#test-connection"), async () => {
    const o = domainBody(form);
    const report = await api("POST", "/v1/domains/check", {
      tenant_id: o.tenant_id ?? "", client_id: o.client_id ?? "", client_secret: o.client_secret ?? "",
      graph_url: o.graph_url, authority_url: o.authority_url,
      sync_group: o.sync_group, rotation_group: o.rotation_group,
    });
    $("#check-report").replaceChildren(checkReport(report));
  });
  wire(form, async () => {
    const d = await api("POST", "/v1/domains", domainBody(form));
    window.location.assign(`/console/domains/${d.id}`);
  });
}

/// A run's per-user outcomes, a page at a time, under the runs table.
async function showOutcomes(run, after) {
  const params = new URLSearchParams({ limit: "50" });
  if (after) params.set("after", after);
  const page = await api("GET", `/v1/domains/${pageId}/sync-runs/${run.run_id}/outcomes?${params}`);
  const table = el("table", { id: "outcomes" },
    el("thead", {}, el("tr", {}, el("th", {}, "User"), el("th", {}, "Change"), el("th", {}, "Action"))),
    el("tbody", {}));
  fill(table, page.items.map((o) => el("tr", {},
    el("td", {}, el("a", { href: `/console/users/${o.user_id}` }, o.display_name ?? o.user_id),
      o.user_principal_name ? el("small", {}, ` ${o.user_principal_name}`) : ""),
    el("td", {}, o.outcome ?? "—"), el("td", {}, o.action ?? "—"))), "This run changed no user.");
  // Named like every other pager (a page with several tables has several), and a way
  // back to the first page once past it.
  const turn = (to) => () => showOutcomes(run, to).catch((e) => flash(e.message, "error"));
  const first = after
    ? el("button", { type: "button", id: "outcomes-first", "aria-label": "First page of the run's users", onclick: turn(null) }, "First users")
    : null;
  const more = page.next
    ? el("button", { type: "button", id: "outcomes-more", "aria-label": "Next page of the run's users", onclick: turn(page.next) }, "Next users")
    : null;
  $("#run-detail").replaceChildren(
    el("h3", {}, `Run of ${when(run.started_at)}: users`), table, el("div", { class: "pager" }, first, more));
}

function runRow(r) {
  const c = r.counters;
  const open = () => showOutcomes(r).catch((e) => flash(e.message, "error"));
  return el("tr", {},
    el("td", {}, el("button", { type: "button", class: "link", onclick: open, "aria-label": `Users of the run of ${when(r.started_at)}` }, when(r.started_at))),
    el("td", {}, r.dry_run ? "dry run" : (r.full ? "full" : "delta")),
    el("td", {}, badge(r.status)),
    el("td", {}, c.added), el("td", {}, c.changed), el("td", {}, c.left), el("td", {}, c.imported),
    el("td", {}, r.error ? `${r.graph_code ?? ""} ${r.error}`.trim() : ""));
}

async function domainPage() {
  const from = await liveFrom();
  let d = await api("GET", `/v1/domains/${pageId}`);
  document.title = `${d.domain} · idledger`;
  $("h1").textContent = d.domain;
  const showFacts = () => facts($("#domain-facts"), [
    ["Tenant ID", d.credentials?.tenant_id ?? "—"],
    ["Application ID", d.credentials?.client_id ?? "—"],
    ["Client Secret", d.credentials?.secret_set ? "saved (never shown)" : "none"],
    ["Sync", d.sync_active ? "active" : "stopped (no credentials)"],
    ["Next sync", d.next_sync_at ? when(d.next_sync_at) : (d.sync_active ? "running or soon" : "—")],
    ["Sync interval", `${d.sync_interval_minutes} minutes`],
    ["Auto Password Change (days)", d.auto_password_change_days ?? "off"],
    ["Behavior when removing a user from a sync group", d.removal_behavior],
    ["Sync group", d.sync_group], ["Rotation group", d.rotation_group],
    ["Default SSO", ssoText(d.sso_defaults)],
    ["Last sync", d.last_sync ? `${d.last_sync.status} ${when(d.last_sync.finished_at ?? d.last_sync.started_at)}` : "never"],
  ]);
  showFacts();
  const firstRuns = pagedTable($("#runs"),
    () => `/v1/domains/${pageId}/sync-runs?limit=20`, runRow, "No runs yet.");
  // Live updates read the page of runs shown again; an action shows the first.
  const refreshRuns = async (live) => {
    await (live ? firstRuns.current() : firstRuns());
    // From the domain, not the runs table: a run waiting for approval stays here however
    // many runs came after it.
    d = await api("GET", `/v1/domains/${pageId}`);
    const q = $("#quarantine");
    const held = d.quarantined_run
      ? await api("GET", `/v1/domains/${pageId}/sync-runs/${d.quarantined_run}`) : null;
    q.replaceChildren();
    if (held) {
      const more = d.quarantined_runs.length > 1 ? ` ${d.quarantined_runs.length - 1} more quarantined runs wait after it.` : "";
      // Approved but cut short (an error, a restart): approving again finishes it.
      const text = held.approved
        ? `A run's removals were approved but not all carried out (of ${held.held_removals_total} held).`
        : `A run was quarantined: it would remove ${held.held_removals_total} users and applied none of those removals.`;
      // Whom an approval removes, a page at a time: nobody is removed unseen.
      const heldTable = el("table", { id: "held-removals" },
        el("thead", {}, el("tr", {}, el("th", {}, "Would remove"), el("th", {}, "Principal name"))),
        el("tbody"));
      q.append(el("div", { class: "report missing" },
        el("p", {}, text + more), heldTable,
        admin ? el("button", { type: "button", id: "approve", class: "danger" },
          held.approved ? "Finish removals" : "Approve removals") : null));
      await pagedTable(heldTable,
        () => `/v1/domains/${pageId}/sync-runs/${held.run_id}/held-removals?limit=50`,
        (h) => el("tr", {},
          el("td", {}, el("a", { href: `/console/users/${h.user_id}` }, h.display_name ?? h.user_id)),
          el("td", {}, h.user_principal_name ?? "—")), "None left.", "held removals")();
      wire($("#approve"), async () => {
        await api("POST", `/v1/domains/${pageId}/sync-runs/${held.run_id}/approve`);
        flash(held.approved ? "Removals finished." : "Removals approved.");
        await refreshRuns();
      }, held.approved ? "Carry out the approved removals still owed?" : "Apply the removals this run held back?");
    }
  };
  await refreshRuns();
  // One event stream for the page, heard by each listener in `hearing`: runs started
  // anywhere (the schedule, another admin, the API) show as they go, and a run started
  // here follows its own events on the same stream.
  const hearing = new Set();
  // The admin's forms, redrawn from the domain as it changes (credentials removed by
  // another admin must not leave a form that sends the old ones).
  let showForms = () => {};
  // The latest event of the domain heard: a live read waits for the projections to hold
  // it (the stream comes from the log, a step ahead of them), so a run's end is not read
  // as still running with no later event to ask again; the reads after it see it too.
  let domainHeard = 0;
  const refreshLive = coalesced(async () => {
    d = await api("GET", `/v1/domains/${pageId}${domainHeard ? `?min_position=${domainHeard}` : ""}`);
    showFacts();
    showForms();
    await refreshRuns(true);
  });
  // A run going on (started here, by the schedule or by another admin) moves its counters
  // with its users' events: shown at most once a second; its end is the domain's event.
  let counted = 0, owed = null;
  const refreshCounters = coalesced(() => firstRuns.current());
  const count = () => {
    counted = Date.now();
    refreshCounters().catch((x) => flash(x.message, "error"));
  };
  hearing.add((e) => {
    if (e.stream === `domain-${pageId}`) {
      domainHeard = Math.max(domainHeard, e.position);
      refreshLive().catch((x) => flash(x.message, "error"));
    }
    else if (e.correlation_id && e.correlation_id === d.last_sync?.run_id
      && d.last_sync.status === "running") {
      const wait = counted + 1000 - Date.now();
      // Within the second: once at its end, so the last events of a burst show too.
      if (wait <= 0) count();
      else if (!owed) owed = setTimeout(() => { owed = null; count(); }, wait);
    }
  });
  follow(from, (e) => { for (const hear of hearing) hear(e); });
  const refreshCertificates = pagedTable($("#certificates"),
    () => `/v1/domains/${pageId}/workstation-certificates?limit=20`,
    (c) => el("tr", {},
      el("td", { class: "mono" }, c.id), el("td", {}, badge(c.status)),
      el("td", {}, when(c.not_before)), el("td", {}, when(c.not_after)),
      el("td", {}, c.retired_at ? when(c.retired_at) : "")), "No certificate yet.");
  await refreshCertificates();
  if (!admin) return;
  wire($("#replace-certificate"), async () => {
    await api("POST", `/v1/domains/${pageId}/workstation-certificate`);
    await refreshCertificates();
    flash("A new certificate is in force; configure workstations with it. The old one is retired.");
  }, "Replace the workstation logon certificate? Workstations must be given the new one.");
  $("#import-link").href = `/console/domains/${pageId}/import`;
  // As the settings form: redrawn as the domain changes (not under the admin's hand), and
  // a save changes only what the admin changed, over the defaults as they are now.
  const sso = $("#sso-defaults");
  const ssoFromForm = () => ({ enabled: sso.elements.enabled.value === "true", method: sso.elements.method.value });
  let ssoDrawn = { ...d.sso_defaults };
  const ssoForm = (force) => {
    if (!force && sso.contains(document.activeElement)) return;
    ssoDrawn = { ...d.sso_defaults };
    sso.elements.enabled.value = String(ssoDrawn.enabled);
    sso.elements.method.value = ssoDrawn.method;
  };
  ssoForm(true);
  wire(sso, async () => {
    const changed = Object.fromEntries(Object.entries(ssoFromForm()).filter(([k, v]) => v !== ssoDrawn[k]));
    if (!Object.keys(changed).length) { flash("Nothing changed."); return; }
    d = await api("PUT", `/v1/domains/${pageId}/sso-defaults`, { ...d.sso_defaults, ...changed });
    showFacts();
    ssoForm(true);
    flash("SSO defaults saved: users imported from now on get them.");
  });
  // With credentials saved the form replaces the secret alone; once they are removed it
  // takes all three again, so sync can be started from here.
  const credentialForm = () => {
    const f = $("#replace-secret");
    const none = !d.credentials;
    for (const e of f.querySelectorAll("[data-new-credentials]")) {
      e.hidden = !none;
      if (e.tagName === "INPUT") { e.required = none; e.disabled = !none; }
    }
    $("#new-secret-label").textContent = none ? "Client Secret" : "Replace secret";
    $("#save-credentials").textContent = none ? "Save credentials" : "Save new secret";
    $("#remove-credentials").hidden = none;
  };
  const settings = $("#domain-settings");
  // The form's fields as the API names them, read from the form or from the domain.
  const fromForm = () => {
    const f = settings.elements;
    const days = f.auto_password_change_days.value;
    return {
      auto_password_change_days: days === "" ? null : Number(days),
      removal_behavior: f.removal_behavior.value,
      sync_group: f.sync_group.value.trim(),
      rotation_group: f.rotation_group.value.trim(),
      sync_interval_minutes: Number(f.sync_interval_minutes.value),
    };
  };
  const fromDomain = () => ({
    auto_password_change_days: d.auto_password_change_days ?? null,
    removal_behavior: d.removal_behavior,
    sync_group: d.sync_group,
    rotation_group: d.rotation_group,
    sync_interval_minutes: d.sync_interval_minutes,
  });
  // What the form showed when drawn: a save sends only what the admin changed from it,
  // so it never puts back what another admin changed meanwhile.
  let drawn = fromDomain();
  const settingsForm = (force) => {
    // Not while the admin is editing it: their input is not overwritten under them.
    if (!force && settings.contains(document.activeElement)) return;
    drawn = fromDomain();
    const f = settings.elements;
    f.auto_password_change_days.value = drawn.auto_password_change_days ?? "";
    f.removal_behavior.value = drawn.removal_behavior;
    f.sync_group.value = drawn.sync_group;
    f.rotation_group.value = drawn.rotation_group;
    f.sync_interval_minutes.value = drawn.sync_interval_minutes;
  };
  showForms = () => { credentialForm(); settingsForm(false); ssoForm(false); };
  showForms();
  wire(settings, async () => {
    const now = fromForm();
    const changed = Object.fromEntries(Object.entries(now).filter(([k, v]) => v !== drawn[k]));
    if (!Object.keys(changed).length) { flash("Nothing changed."); return; }
    d = await api("PATCH", `/v1/domains/${pageId}`, changed);
    showFacts();
    settingsForm(true);
    flash("Settings saved.");
  });
  wire($("#test-credentials"), async () => {
    const f = $("#replace-secret").elements;
    const saved = d.credentials;
    const report = await api("POST", "/v1/domains/check", {
      tenant_id: saved ? saved.tenant_id : f.tenant_id.value.trim(),
      client_id: saved ? saved.client_id : f.client_id.value.trim(),
      client_secret: f.client_secret.value,
      graph_url: d.graph_url, authority_url: d.authority_url,
      sync_group: d.sync_group, rotation_group: d.rotation_group,
    });
    $("#check-report").replaceChildren(checkReport(report));
  });
  wire($("#replace-secret"), async () => {
    const f = $("#replace-secret");
    const saved = d.credentials;
    d = await api("PUT", `/v1/domains/${pageId}/credentials`, {
      tenant_id: saved ? saved.tenant_id : f.elements.tenant_id.value.trim(),
      client_id: saved ? saved.client_id : f.elements.client_id.value.trim(),
      client_secret: f.elements.client_secret.value,
    });
    f.reset();
    showFacts();
    credentialForm();
    flash(saved ? "The new secret is saved; it will not be shown again."
      : "Credentials saved: sync is active again. The secret will not be shown again.");
  });
  wire($("#remove-credentials"), async () => {
    d = await api("DELETE", `/v1/domains/${pageId}/credentials`);
    showFacts();
    credentialForm();
    flash("Credentials removed: sync has stopped.");
  }, "Remove the credentials? Sync of this domain will stop until new credentials are saved.");
  wire($("#sync-dry"), async () => {
    const r = await api("POST", `/v1/domains/${pageId}/sync?dry_run=true&limit=20`);
    const row = (c) => el("li", {}, `${c.user_principal_name}: ${c.outcome ?? ""} ${c.events.join(", ")}${c.held ? " (held)" : ""}`);
    const list = el("ul", {}, r.changes.map(row));
    // The rest of a long list, a page at a time, from the changes the server keeps.
    let next = r.next;
    const more = el("button", { type: "button", id: "dry-more" }, "More changes");
    more.hidden = !next;
    wire(more, async () => {
      const page = await api("GET", withAfter(`/v1/domains/${pageId}/sync-runs/${r.run_id}/changes?limit=20`, next));
      list.append(...page.items.map(row));
      next = page.next;
      more.hidden = !next;
    });
    $("#dry-report").replaceChildren(el("div", { class: "report" },
      el("p", {}, `A run now would make ${r.changes_total} changes${r.quarantined ? " and would be quarantined" : ""}:`),
      r.changes_total ? [list, el("div", { class: "pager" }, more)] : el("p", { class: "empty" }, "Nothing to change.")));
  });
  wire($("#sync-now"), async () => {
    const started = await api("POST", `/v1/domains/${pageId}/sync`);
    // What a dry run said no longer holds once a run has started.
    $("#dry-report").replaceChildren();
    const live = $("#live-run");
    const show = (r) => live.replaceChildren(el("p", { id: "live-status" },
      "Run ", badge(r.status), ` added ${r.counters.added}, changed ${r.counters.changed}, left ${r.counters.left}, imported ${r.counters.imported}`));
    let run = await api("GET", `/v1/domains/${pageId}/sync-runs/${started.run_id}`);
    show(run);
    if (run.status !== "running") return refreshRuns();
    // Live: the run's events bring its state (asked for once per burst, not once per
    // user), and a slow poll besides, so the end is seen even when the projections were
    // a step behind the stream's last event or the stream stopped.
    await new Promise((resolve, reject) => {
      const done = (error) => {
        hearing.delete(hear);
        clearInterval(timer);
        if (error) reject(error); else resolve();
      };
      // The run as of the latest event heard, at least: the stream comes from the log and
      // the projections may be a step behind it, and the run's last event must not be
      // read as "still running" with no event left to ask again.
      let heard = 0;
      const update = coalesced(async () => {
        const at = heard ? `?min_position=${heard}` : "";
        run = await api("GET", `/v1/domains/${pageId}/sync-runs/${started.run_id}${at}`);
        show(run);
        if (run.status !== "running") done();
      });
      const tick = () => update().catch(done);
      const hear = (e) => {
        if (e.correlation_id !== started.run_id && e.stream !== `domain-${pageId}`) return;
        heard = Math.max(heard, e.position);
        tick();
      };
      const timer = setInterval(tick, 2000);
      hearing.add(hear);
      tick();
    });
    d = await api("GET", `/v1/domains/${pageId}`);
    showFacts();
    await refreshRuns();
  });
}

async function importPage() {
  const d = await api("GET", `/v1/domains/${pageId}`);
  $("h1").textContent = `Import from Entra ID: ${d.domain}`;
  $("#sso-note").textContent = `Imported users get the domain's SSO defaults: ${ssoText(d.sso_defaults)}.`;
  let q = "";
  // Chosen on any page or search, kept while paging: an admin picks people from several
  // searches, then imports them at once.
  const selected = new Map();
  const count = () => {
    const n = selected.size;
    const shown = $("#selected-count");
    if (shown) shown.textContent = n ? `${n} selected` : "";
    // Chosen people may leave the candidates (synced away, imported by another admin)
    // and no listing shows them to untick: the whole choice can be let go.
    const clear = $("#clear-selection");
    if (clear) clear.hidden = !n;
  };
  const pick = (u) => (e) => {
    if (e.target.checked) selected.set(u.id, u.display_name);
    else selected.delete(u.id);
    count();
  };
  const pages = pager(() => {
    q = $("#cq").value.trim();
    const params = new URLSearchParams({ limit: "50" });
    if (q) params.set("q", q);
    return `/v1/domains/${pageId}/candidates?${params}`;
  }, (page, after) => {
    $("#candidates-first").hidden = !after;
    fill($("#candidates"), page.items.map((u) => el("tr", {},
      el("td", {}, admin ? el("input", {
        type: "checkbox", value: u.id, "aria-label": `Select ${u.display_name}`,
        checked: selected.has(u.id), onchange: pick(u),
      }) : ""),
      el("td", {}, u.display_name), el("td", {}, u.user_principal_name), el("td", {}, u.mail ?? ""))),
      q ? "No candidate matches." : "No candidates: every member of the sync group is imported.");
    $("#candidates-more").hidden = !page.next;
  });
  const load = (reset) => reset ? pages.first() : pages.next();
  $("#candidate-search").addEventListener("submit", (e) => { e.preventDefault(); load(true).catch((x) => flash(x.message, "error")); });
  $("#candidates-more").addEventListener("click", () => load(false).catch((x) => flash(x.message, "error")));
  $("#candidates-first").addEventListener("click", () => pages.again().catch((x) => flash(x.message, "error")));
  await load(true);
  if (!admin) return;
  $("#clear-selection").addEventListener("click", () => {
    selected.clear();
    count();
    for (const c of document.querySelectorAll("#candidates input:checked")) c.checked = false;
  });
  wire($("#import-selected"), async () => {
    const ids = [...selected.keys()];
    if (!ids.length) throw new Error("Select at least one candidate.");
    const r = await api("POST", `/v1/domains/${pageId}/import`, { user_ids: ids });
    selected.clear();
    count();
    flash(`Imported ${r.imported} users.`);
    await load(true);
  });
  wire($("#import-all"), async () => {
    const r = await api("POST", `/v1/domains/${pageId}/import`, { all: true });
    selected.clear();
    count();
    flash(`Imported ${r.imported} users.`);
    await load(true);
  }, "Import every candidate of this domain?");
}

// ---- Users -----------------------------------------------------------------------------

async function usersPage() {
  const domains = await allItems("/v1/domains?limit=1000");
  const names = new Map(domains.map((d) => [d.id, d.domain]));
  for (const d of domains) $("#udomain").append(el("option", { value: d.id }, d.domain));
  // Users → Import: each live domain's candidates.
  const live = domains.filter((d) => !d.removed);
  if (live.length) {
    $("#import-links").append("Import from Entra ID: ", ...live.flatMap((d, i) =>
      [i ? ", " : "", el("a", { href: `/console/domains/${d.id}/import` }, d.domain)]));
  }
  // A past point (the list as it was then) is folded once; its later pages come at once.
  let at = null;
  const pages = pager(() => {
    const f = $("#user-search");
    const params = new URLSearchParams({ limit: "50" });
    for (const k of ["q", "domain", "status"]) if (f.elements[k].value) params.set(k, f.elements[k].value);
    at = f.elements.at.value ? new Date(f.elements.at.value).toISOString() : null;
    if (at) params.set("at", at);
    return `/v1/users?${params}`;
  }, (page, after) => {
    $("#users-first").hidden = !after;
    $("h1").textContent = "Users" + (at ? ` (as of ${when(at)})` : "");
    fill($("#users"), page.items.map((u) => el("tr", {},
      el("td", {}, el("a", { href: `/console/users/${u.id}` }, u.display_name)),
      el("td", {}, u.user_principal_name, el("small", {}, ` ${names.get(u.domain_id) ?? ""}`)),
      el("td", {}, badge(u.status)),
      el("td", {}, u.key_id ? badge(u.key_id, "key") : "—"),
      el("td", {}, badge(ssoText(u.sso), u.sso?.enabled ? "active" : "deactivated")),
      el("td", {}, u.next_rotation_at
        ? badge(when(u.next_rotation_at), new Date(u.next_rotation_at) <= new Date() ? "pending" : "due")
        : "—"))), "No users match.");
    $("#users-more").hidden = !page.next;
  });
  const load = (reset) => reset ? pages.first() : pages.next();
  $("#user-search").addEventListener("submit", (e) => { e.preventDefault(); load(true).catch((x) => flash(x.message, "error")); });
  $("#users-more").addEventListener("click", () => load(false).catch((x) => flash(x.message, "error")));
  $("#users-first").addEventListener("click", () => pages.again().catch((x) => flash(x.message, "error")));
  await load(true);
}

async function userPage() {
  let at = null;
  const show = async () => {
    const suffix = at ? `?at=${encodeURIComponent(at)}` : "";
    const u = await api("GET", `/v1/users/${pageId}${suffix}`);
    $("h1").textContent = u.display_name + (at ? ` (as of ${when(at)})` : "");
    facts($("#user-facts"), [
      ["Principal name", u.user_principal_name], ["Mail", u.mail ?? "—"],
      ["Given name", u.given_name ?? "—"], ["Surname", u.surname ?? "—"],
      ["Status", badge(u.status)], ["Enabled in Entra ID", u.account_enabled ? "yes" : "no"],
      ["In sync group", u.in_sync_group ? "yes" : "no"], ["In rotation group", u.in_rotation_group ? "yes" : "no"],
      ["Hardware key", u.key_id ?? "none"], ["Key write", keyWriteText(u.key_write)],
      ["Sign-in locks", u.sign_in_locks?.length
        ? u.sign_in_locks.map((l) => `${l.factor} until ${when(l.until)}`).join(", ") : "none"],
      ["SSO", ssoText(u.sso)],
      ["SSO override", u.sso_override ? ssoText(u.sso_override) : "none"],
      ["Last rotation", when(u.last_rotation_at)], ["Invited", when(u.invited_at)],
      ["Imported", when(u.imported_at)],
    ]);
    // The override form starts from the override in force, so saving it unchanged
    // changes nothing (a past state shown does not move it).
    const invite = $("#invite");
    if (invite && !at) invite.textContent = u.invited_at ? "Resend invite" : "Send invite";
    const ov = $("#ov");
    if (ov && !at) {
      const o = u.sso_override;
      ov.value = !o ? "" : o.enabled ? `on-${o.method}` : "off";
    }
    return u;
  };
  // Newest first, a page at a time: what just happened is on top, and nothing is cut off.
  // As of `at` too: a past view shows neither the rotations nor the events that came later.
  const asOf = () => (at ? `&at=${encodeURIComponent(at)}` : "");
  const firstRotations = pagedTable($("#history"),
    () => `/v1/users/${pageId}/password-history?order=newest&limit=20${asOf()}`,
    (r) => el("tr", {},
      el("td", {}, when(r.started_at)),
      el("td", {}, badge(r.outcome), r.outcome === "succeeded" ? "" : ` ${[r.graph_code, r.error].filter(Boolean).join(": ")}`),
      el("td", {}, when(r.finished_at)), el("td", {}, r.retries), el("td", {}, r.reason)), "No rotations yet.");
  const firstEvents = pagedTable($("#timeline"),
    () => `/v1/users/${pageId}/timeline?order=newest&limit=50${asOf()}`,
    // The reason an event carries (a reveal's stated reason, a removal's cause), as text.
    (e) => el("tr", {}, el("td", {}, when(e.recorded_at)), el("td", {}, e.kind), el("td", {}, e.actor),
      el("td", {}, typeof e.payload?.reason === "string" ? e.payload.reason : "")),
    "Nothing yet.");
  const history = async () => { await firstRotations(); await firstEvents(); };
  await show();
  await history();
  $("#as-of").addEventListener("submit", (e) => {
    e.preventDefault();
    const v = $("#at").value;
    at = v ? new Date(v).toISOString() : null;
    show().then(history).catch((x) => flash(x.message, "error"));
  });
  $("#now").addEventListener("click", () => {
    at = null;
    $("#at").value = "";
    show().then(history).catch((x) => flash(x.message, "error"));
  });
  if (!admin) return;
  // An action's result is now: a page showing the past goes back to the present.
  const after = async (message) => {
    at = null;
    $("#at").value = "";
    await show();
    await history();
    flash(message);
  };
  wire($("#activate"), async () => { await api("POST", `/v1/users/${pageId}/activate`); await after("Activated."); });
  wire($("#deactivate"), async () => { await api("POST", `/v1/users/${pageId}/deactivate`); await after("Deactivated."); },
    "Deactivate this user?");
  wire($("#invite"), async () => { await api("POST", `/v1/users/${pageId}/invite`); await after("Invite sent."); });
  wire($("#unlock-sign-in"), async () => {
    await api("POST", `/v1/users/${pageId}/sign-in/unlock`);
    await after("Sign-in locks lifted.");
  });
  wire($("#assign-key"), async () => {
    await api("PUT", `/v1/users/${pageId}/key`, { key_id: $("#key-id").value.trim() });
    $("#assign-key").reset();
    await after("Key assigned.");
  });
  wire($("#unassign-key"), async () => { await api("DELETE", `/v1/users/${pageId}/key`); await after("Key taken away."); },
    "Take the key away? Undelivered key writes for it are superseded.");
  wire($("#rewrite-key"), async () => {
    await api("POST", `/v1/users/${pageId}/key/rewrite`);
    await after("The current password is queued for the key.");
  });
  wire($("#sso-override"), async () => {
    const v = $("#ov").value;
    const sso_override = v === "" ? null : v === "off" ? { enabled: false, method: "passwordless" }
      : { enabled: true, method: v.slice(3) };
    await api("PATCH", `/v1/users/${pageId}`, { sso_override });
    await after("SSO override saved.");
  });
  wire($("#rotate"), async () => {
    let started, already = "";
    try {
      started = await api("POST", `/v1/users/${pageId}/rotate`);
    } catch (e) {
      // One is under way already (the schedule's, another admin's): its outcome is what
      // the admin wants to know.
      if (!/in flight/.test(e.message)) throw e;
      const newest = (await api("GET", `/v1/users/${pageId}/password-history?order=newest&limit=1`)).items[0];
      if (!newest) throw e;
      started = { rotation_id: newest.rotation_id };
      already = "A rotation was already under way. ";
    }
    if (!started.rotation_id) {
      await after(`Rotation requested: it starts ${when(started.deferred_until)}, once the last one's outcome is settled.`);
      return;
    }
    flash(`${already}Rotation started.`);
    // This rotation, not the history's first page: older rotations say nothing of it.
    let outcome = "pending";
    for (let i = 0; i < 40 && outcome === "pending"; i++) {
      outcome = (await api("GET", `/v1/users/${pageId}/password-history/${started.rotation_id}`)).outcome;
      if (outcome === "pending") await new Promise((r) => setTimeout(r, 250));
    }
    await after(already + (outcome === "pending" ? "Rotation still running: its outcome will show in the history."
      : `Rotation finished: ${outcome}.`));
  });
  let hideRevealed;
  wire($("#reveal"), async () => {
    const reason = $("#reason").value.trim();
    const r = await api("POST", `/v1/users/${pageId}/password/reveal`, { reason });
    $("#reveal").reset();
    const box = $("#revealed");
    // Both when a rotation is unconfirmed: Entra holds one of them, and which is unknown.
    const shown = [
      r.password && ["revealed-password", "Current password (shown once):", r.password],
      r.unconfirmed_candidate && ["revealed-candidate", "Unconfirmed candidate (Graph may hold it):", r.unconfirmed_candidate.password],
    ].filter(Boolean);
    if (!shown.length) { box.replaceChildren(el("p", { class: "empty" }, "No password is held for this user yet.")); return; }
    clearTimeout(hideRevealed);
    const hide = () => box.replaceChildren(el("p", { class: "empty" }, "Hidden. The reveal is in the audit trail."));
    // The password is in no live region (a screen reader would say it aloud): the flash
    // tells that it is shown.
    box.replaceChildren(el("div", { class: "secret" },
      shown.flatMap(([id, label, password]) => [el("p", {}, label), el("code", { id }, password)]),
      el("button", { type: "button", onclick: hide }, "Hide")));
    flash("Password shown below; it hides itself after a minute.");
    window.addEventListener("pagehide", hide, { once: true });
    // An earlier reveal's timer must not hide this one early.
    hideRevealed = setTimeout(hide, 60000);
    await history();
  });
}

// ---- Rotations and audit ---------------------------------------------------------------

async function rotationsPage() {
  const load = pagedTable($("#upcoming"),
    () => `/v1/rotations/upcoming?within_days=${encodeURIComponent($("#within").value || "30")}&limit=100`,
  (r) => el("tr", {},
    el("td", {}, el("a", { href: `/console/users/${r.user_id}` }, r.user_principal_name)),
    el("td", {}, when(r.due_at)), el("td", {}, r.reason)), "No rotation is due in that time.",
  "upcoming rotations");
  $("#upcoming-form").addEventListener("submit", (e) => { e.preventDefault(); load().catch((x) => flash(x.message, "error")); });
  await load();
  const recent = pagedTable($("#recent"), () => {
    const outcome = $("#recent-outcome").value;
    return `/v1/rotations/recent?limit=50${outcome ? `&outcome=${outcome}` : ""}`;
  }, (r) => el("tr", {},
    el("td", {}, el("a", { href: `/console/users/${r.user_id}` }, r.user_principal_name)),
    el("td", {}, when(r.rotation.started_at)),
    el("td", {}, badge(r.rotation.outcome)),
    el("td", {}, [r.rotation.graph_code, r.rotation.error].filter(Boolean).join(": ")),
    el("td", {}, when(r.rotation.finished_at))), "No rotation with that outcome.");
  $("#recent-form").addEventListener("submit", (e) => { e.preventDefault(); recent().catch((x) => flash(x.message, "error")); });
  await recent();
}

async function auditPage() {
  const live = await liveFrom();
  const hex = (bytes) => Array.from(bytes, (x) => x.toString(16).padStart(2, "0")).join("");
  const recordBytes = (item) => Uint8Array.from(atob(item.record), (c) => c.charCodeAt(0));
  // The chain head shown: the position and the hash its record carries. "Verify chain"
  // checks the chain up to at least this record and that it carries this hash.
  let shownHead = null;
  const head = async () => {
    const h = await api("GET", "/healthz");
    const sth = await api("GET", "/v1/log/sth?format=json").catch(() => null);
    const last = h.head_position
      ? (await api("GET", `/v1/events?from_position=${h.head_position}&limit=1`)).items[0] : null;
    shownHead = last ? { position: last.position, hash: hex(recordBytes(last).subarray(33, 65)) } : null;
    facts($("#log-facts"), [
      ["Head position", h.head_position], ["Durability", h.durability],
      ["Chain head", el("span", { class: "mono", id: "chain-head" }, shownHead?.hash ?? "empty log")],
      ["Signed tree head", sth ? `size ${sth.tree_size}, root ${sth.root_hash}` : "none yet"],
    ]);
  };
  await head();
  wire($("#verify-chain"), async () => {
    // Each stored record from the feed, checked here in the browser: positions one after
    // another from 1 to the head, its prev_hash the hash before it, and SHA-256 of that
    // and its body the hash it carries (WebCrypto exists only on secure origins;
    // elsewhere the links alone are checked). A feed cut short is no chain ok.
    const subtle = globalThis.crypto?.subtle;
    const until = (await api("GET", "/healthz")).head_position;
    const expected = shownHead;
    let from = 1, prev = "0".repeat(64), count = 0, problem = null;
    while (!problem && count < until) {
      const page = await api("GET", `/v1/events?from_position=${from}&limit=1000`);
      for (const item of page.items) {
        if (count === until) break;
        if (item.position !== count + 1) {
          problem = `position ${count + 1} is missing from the feed (it gave ${item.position})`; break;
        }
        const bytes = recordBytes(item);
        const stored = hex(bytes.subarray(33, 65));
        if (bytes.length < 65 || hex(bytes.subarray(1, 33)) !== prev) {
          problem = `position ${item.position}: prev_hash is not the hash of the record before`; break;
        }
        if (subtle) {
          const input = new Uint8Array(bytes.length - 33);
          input.set(bytes.subarray(1, 33));
          input.set(bytes.subarray(65), 32);
          if (hex(new Uint8Array(await subtle.digest("SHA-256", input))) !== stored) {
            problem = `position ${item.position}: the record's content does not give its hash`; break;
          }
        }
        if (expected && item.position === expected.position && stored !== expected.hash) {
          problem = `position ${item.position}: the chain head shown carries another hash`; break;
        }
        prev = stored; count++;
      }
      if (problem || count >= until) break;
      if (!page.next) { problem = `the feed ends at position ${count}, before the head ${until}`; break; }
      // A feed that does not move on would keep this loop reading for ever.
      if (!(Number(page.next) > from)) { problem = `the feed does not advance past ${from}`; break; }
      from = Number(page.next);
    }
    const how = subtle ? "re-hashed and linked" : "linked (re-hashing needs a secure origin)";
    $("#verify-result").replaceChildren(el("p", { class: problem ? "error" : "ok", id: "verify-status" },
      problem ?? `Chain ok: ${count} records ${how}, head ${prev}.`));
    if (!problem) await head();
  });
  // The export and its manifest read the log to one position: the log grows meanwhile,
  // and a manifest of a longer log is another file's. The first download pins it, the
  // other reuses it, and changing a field lets go of it.
  let pinned = null;
  const pinNote = $("#export-pin");
  const pin = async () => {
    pinned = (await api("GET", "/healthz")).head_position;
    pinNote.textContent = `Up to log position ${pinned}, for this export and its manifest. Change a field to take the latest.`;
    pinNote.hidden = false;
  };
  const exportUrl = (manifest) => {
    const f = $("#export-form");
    const params = new URLSearchParams({ format: f.elements.format.value });
    for (const k of ["from", "to"]) if (f.elements[k].value) params.set(k, new Date(f.elements[k].value).toISOString());
    if (pinned !== null) params.set("at_position", String(pinned));
    return `/v1/audit/exports/${f.elements.kind.value}${manifest ? "/manifest" : ""}?${params}`;
  };
  $("#export-form").addEventListener("change", () => { pinned = null; pinNote.hidden = true; });
  // Downloaded in a hidden frame: a file (an attachment) is saved and the frame stays
  // blank; a refusal (bad dates, a busy server, a session that ended) loads there instead
  // of replacing the console, and is said on the page.
  const download = (url) => {
    const frame = el("iframe", { hidden: true, title: "download" });
    frame.addEventListener("load", () => {
      const text = frame.contentDocument?.body?.innerText ?? "";
      if (!text) return;
      frame.remove();
      let said = text;
      try { said = JSON.parse(text)?.error?.message ?? text; } catch { /* not JSON */ }
      flash(`The download was refused: ${said}`, "error");
      // A session that ended goes to sign-in.
      api("GET", "/v1/domains?limit=1").catch(() => {});
    });
    frame.src = url;
    document.body.append(frame);
    setTimeout(() => frame.remove(), 600000);
  };
  $("#export-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    if (pinned === null) await pin();
    download(exportUrl(false));
  });
  $("#download-manifest").addEventListener("click", async () => {
    if (pinned === null) await pin();
    download(exportUrl(true));
  });
  // Verify an export: the manifest as one JSON line, then the file, in one body.
  const verifyForm = $("#verify-export");
  verifyForm.addEventListener("dragover", (e) => { e.preventDefault(); verifyForm.classList.add("over"); });
  verifyForm.addEventListener("dragleave", () => verifyForm.classList.remove("over"));
  verifyForm.addEventListener("drop", (e) => {
    e.preventDefault();
    verifyForm.classList.remove("over");
    for (const f of e.dataTransfer.files) {
      const target = f.name.endsWith(".manifest.json") ? $("#manifest-file") : $("#export-file");
      const list = new DataTransfer();
      list.items.add(f);
      target.files = list.files;
    }
  });
  wire(verifyForm, async () => {
    const file = $("#export-file").files[0];
    const manifest = $("#manifest-file").files[0];
    if (!file || !manifest) throw new Error("Choose the export file and its manifest.");
    const line = JSON.stringify(JSON.parse(await manifest.text()));
    const r = await fetch("/v1/audit/verify-export", {
      method: "POST", credentials: "same-origin",
      headers: { "x-csrf-token": csrf, "content-type": "application/octet-stream" },
      body: new Blob([line, "\n", file]),
    });
    const report = await r.json();
    if (!r.ok) throw new Error(report?.error?.message ?? `${r.status}`);
    const first = report.problems[0];
    const describe = (p) => p.row !== undefined
      ? `${p.problem ?? "differs"} at row ${p.row}${p.count ? ` (${p.count} rows)` : ""}`
      : `${p.problem}: ${typeof p.detail === "string" ? p.detail : JSON.stringify(p.detail)}`;
    $("#export-result").replaceChildren(el("p", { id: "export-status", class: report.ok ? "ok" : "error" },
      report.ok ? `Export ok: ${report.rows} rows match the log at position ${report.log_position}.`
        : `Export differs (${report.problems.length} problems). First: ${describe(first)}`));
  });
  const feed = $("#feed tbody");
  follow(live, (e) => {
    feed.prepend(el("tr", {}, el("td", {}, e.position), el("td", {}, when(e.recorded_at)),
      el("td", {}, e.stream), el("td", {}, e.kind)));
    while (feed.children.length > 100) feed.lastChild.remove();
  });
}

// ---- Apps ----------------------------------------------------------------------------

/// The client id and, once, the secret of an app just registered or given a new secret.
// The timer of the secret shown: a newer secret is not hidden by an older one's.
let hideSecret;

function showSecret(a, what) {
  const rows = [el("dt", {}, "Client ID"), el("dd", { class: "mono", id: "new-client-id" }, a.client_id)];
  if (a.client_secret) {
    rows.push(el("dt", {}, "Client secret"), el("dd", { class: "mono", id: "new-client-secret" }, a.client_secret));
  }
  const box = $("#app-secret");
  // Like a revealed password: gone from the page when its Hide is pressed, when the page
  // is left, or after ten minutes, whichever is first.
  clearTimeout(hideSecret);
  const hide = () => box.replaceChildren();
  box.replaceChildren(el("div", { class: "report ok" },
    el("p", {}, a.client_secret
      ? `${what} “${a.name}”. Copy the client secret now: it is never shown again.`
      : `${what} “${a.name}” (public: it has no secret).`),
    el("dl", { class: "facts" }, rows),
    el("button", { type: "button", id: "hide-secret", onclick: hide }, "Hide")));
  if (a.client_secret) {
    window.addEventListener("pagehide", hide, { once: true });
    hideSecret = setTimeout(hide, 600000);
  }
}

const lines = (text) => (text ?? "").split("\n").map((l) => l.trim()).filter((l) => l);
// Opens the edit form on an app (set by the Apps page for admins).
let editApp = () => {};

async function appsPage() {
  const domains = await allItems("/v1/domains?limit=1000&removed=false");
  const names = new Map(domains.map((d) => [d.id, d.domain]));
  const refreshApps = pagedTable($("#apps"), () => "/v1/apps?limit=100&removed=false", (a) => {
      const actions = [];
      if (admin && a.type === "confidential") {
        actions.push(el("button", { type: "button", "data-secret": a.id, onclick: async (ev) => {
          if (!window.confirm(`Give “${a.name}” a new client secret? The current one stops working at once.`)) return;
          ev.target.disabled = true;
          try { showSecret(await api("POST", `/v1/apps/${a.id}/secret`), "New secret for"); }
          catch (e) { flash(e.message, "error"); } finally { ev.target.disabled = false; }
        } }, "New secret"));
      }
      if (admin) {
        actions.push(el("button", { type: "button", "data-edit": a.id, onclick: () => editApp(a) }, "Edit"));
        actions.push(el("button", { type: "button", class: "danger", "data-remove": a.id, onclick: async () => {
          if (!window.confirm(`Remove “${a.name}”? Its users can no longer sign in to it and its tokens are refused.`)) return;
          try { await api("DELETE", `/v1/apps/${a.id}`); flash(`Removed ${a.name}.`); await refresh(); }
          catch (e) { flash(e.message, "error"); }
        } }, "Remove"));
      }
      return el("tr", {},
        el("td", {}, a.name), el("td", { class: "mono" }, a.client_id), el("td", {}, a.type),
        el("td", {}, a.redirect_uris.join("\n")),
        el("td", {}, a.domain_ids.map((d) => names.get(d) ?? d).join(", ")),
        el("td", {}, badge("active")), el("td", {}, actions));
  }, "No apps yet." + (admin ? " Register one below." : ""));
  const refreshKeys = pagedTable($("#signing-keys"),
    () => "/v1/provider/signing-keys?limit=20",
    (k) => el("tr", {},
      el("td", { class: "mono" }, k.kid), el("td", {}, k.alg),
      el("td", {}, badge(k.status, { current: "active", next: "pending" }[k.status] ?? "deactivated")),
      el("td", {}, when(k.added_at)), el("td", {}, when(k.signs_from)),
      el("td", {}, k.verify_until ? when(k.verify_until) : "in force")),
    "No signing key yet: the first app makes one.");
  const refresh = async () => { await refreshApps(); await refreshKeys(); };
  // The edit form's fields as compared: lists as text, so that a save sends only what the
  // admin changed from what the form showed, and never puts back another admin's change.
  const editCard = $("#edit-app-card");
  const editForm = $("#edit-app");
  const fromApp = (a) => ({
    name: a.name, redirect_uris: a.redirect_uris.join("\n"),
    post_logout_redirect_uris: a.post_logout_redirect_uris.join("\n"),
    id_token_signed_response_alg: a.id_token_signed_response_alg,
    domain_ids: [...a.domain_ids].sort().join(","),
  });
  const fromEditForm = () => {
    const f = new FormData(editForm);
    return {
      name: f.get("name").trim(), redirect_uris: lines(f.get("redirect_uris")).join("\n"),
      post_logout_redirect_uris: lines(f.get("post_logout_redirect_uris")).join("\n"),
      id_token_signed_response_alg: f.get("id_token_signed_response_alg"),
      domain_ids: f.getAll("domain_ids").sort().join(","),
    };
  };
  let editing, drawnApp;
  editApp = (a) => {
    editing = a;
    drawnApp = fromApp(a);
    const f = editForm.elements;
    f.name.value = a.name;
    f.redirect_uris.value = drawnApp.redirect_uris;
    f.post_logout_redirect_uris.value = drawnApp.post_logout_redirect_uris;
    f.id_token_signed_response_alg.value = a.id_token_signed_response_alg;
    // The app's domains this page does not list (added since it loaded) stay on it too:
    // a save that did not mean to change them must not drop them.
    const listed = new Set(domains.map((d) => d.id));
    const choices = [...domains.map((d) => [d.id, d.domain]),
      ...a.domain_ids.filter((id) => !listed.has(id)).map((id) => [id, id])];
    const box = $("#e-domains");
    box.replaceChildren(box.querySelector("legend"), ...choices.map(([id, name]) => el("label", {},
      el("input", { type: "checkbox", name: "domain_ids", value: id, checked: a.domain_ids.includes(id) }),
      ` ${name}`)));
    $("#edit-app-title").textContent = `Edit “${a.name}”`;
    editCard.hidden = false;
    f.name.focus();
  };
  if (editForm) {
    $("#cancel-edit-app").addEventListener("click", () => { editCard.hidden = true; });
    wire(editForm, async () => {
      const now = fromEditForm();
      const changed = Object.keys(now).filter((k) => now[k] !== drawnApp[k]);
      if (!changed.length) { flash("Nothing changed."); return; }
      const asList = (k, v) => (k === "domain_ids" ? v.split(",").filter((x) => x)
        : k.endsWith("_uris") ? v.split("\n").filter((x) => x) : v);
      const a = await api("PATCH", `/v1/apps/${editing.id}`,
        Object.fromEntries(changed.map((k) => [k, asList(k, now[k])])));
      editCard.hidden = true;
      flash(`Saved “${a.name}”.`);
      await refresh();
    });
  }
  await refresh();
  const form = $("#add-app");
  if (!form) return;
  const box = $("#a-domains");
  for (const d of domains) {
    box.append(el("label", {}, el("input", { type: "checkbox", name: "domain_ids", value: d.id, checked: domains.length === 1 }), ` ${d.domain}`));
  }
  wire(form, async () => {
    const data = new FormData(form);
    const a = await api("POST", "/v1/apps", {
      name: data.get("name"), redirect_uris: lines(data.get("redirect_uris")),
      post_logout_redirect_uris: lines(data.get("post_logout_redirect_uris")),
      type: data.get("type"), domain_ids: data.getAll("domain_ids"),
      id_token_signed_response_alg: data.get("id_token_signed_response_alg"),
    });
    form.reset();
    showSecret(a, "Registered");
    await refresh();
  });
  wire($("#rotate-key"), async () => {
    const alg = $("#k-alg").value;
    const k = await api("POST", `/v1/provider/signing-keys?alg=${encodeURIComponent(alg)}`);
    flash(`A new ${k.alg} key is in force: ${k.kid}.`);
    await refresh();
  }, "Put a new signing key in force? The current one stays published until its tokens expire.");
}

const pages = {
  domains: domainsPage, domain: domainPage, import: importPage, users: usersPage,
  user: userPage, rotations: rotationsPage, audit: auditPage, apps: appsPage,
};
const start = pages[body.dataset.page];
if (start) start().catch((e) => flash(e.message, "error"));
