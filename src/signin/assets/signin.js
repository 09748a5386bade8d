// idledger sign-in pages: WebAuthn ceremonies, the authenticator-app setup and the Entra ID
// start. Every request carries the page's CSRF token; errors land in the role="alert" box.
"use strict";

(function () {
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  const errorBox = document.getElementById("error");

  function showError(text) {
    if (!errorBox) return;
    errorBox.textContent = text;
    errorBox.hidden = false;
  }

  function clearError() {
    if (errorBox) {
      errorBox.textContent = "";
      errorBox.hidden = true;
    }
  }

  function fromB64url(text) {
    const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    const padded = b64 + "===".slice((b64.length + 3) % 4);
    const bin = atob(padded);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  }

  function toB64url(buffer) {
    const bytes = new Uint8Array(buffer);
    let bin = "";
    for (let i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
    return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json", "x-csrf-token": csrf },
      body: JSON.stringify(body || {}),
    });
    let answer = {};
    try {
      answer = await response.json();
    } catch (_) {
      answer = {};
    }
    if (!response.ok) {
      throw new Error(answer.error || "The server refused the request (" + response.status + "). Reload the page and try again.");
    }
    return answer;
  }

  function ceremonyError(e) {
    if (e && e.name === "NotAllowedError") {
      return "The passkey request was cancelled or timed out. Press the button to try again.";
    }
    if (e && e.name === "InvalidStateError") {
      return "This authenticator is registered already. Use another one, or sign in with it.";
    }
    return (e && e.message) || "Something went wrong. Try again.";
  }

  async function register(button) {
    const options = await post(button.dataset.options);
    options.challenge = fromB64url(options.challenge);
    options.user.id = fromB64url(options.user.id);
    options.excludeCredentials = (options.excludeCredentials || []).map((c) =>
      Object.assign({}, c, { id: fromB64url(c.id) }));
    const credential = await navigator.credentials.create({ publicKey: options });
    const nameField = document.getElementById("passkey-name");
    const answer = await post(button.dataset.finish, {
      name: nameField && nameField.value ? nameField.value : null,
      credential: {
        id: credential.id,
        rawId: toB64url(credential.rawId),
        type: credential.type,
        authenticatorAttachment: credential.authenticatorAttachment || null,
        response: {
          clientDataJSON: toB64url(credential.response.clientDataJSON),
          attestationObject: toB64url(credential.response.attestationObject),
        },
      },
    });
    location.assign(answer.next || "/me");
  }

  async function authenticate(button) {
    const options = await post(button.dataset.options);
    options.challenge = fromB64url(options.challenge);
    options.allowCredentials = (options.allowCredentials || []).map((c) =>
      Object.assign({}, c, { id: fromB64url(c.id) }));
    const credential = await navigator.credentials.get({ publicKey: options });
    const r = credential.response;
    const answer = await post(button.dataset.finish, {
      credential: {
        id: credential.id,
        rawId: toB64url(credential.rawId),
        type: credential.type,
        authenticatorAttachment: credential.authenticatorAttachment || null,
        response: {
          clientDataJSON: toB64url(r.clientDataJSON),
          authenticatorData: toB64url(r.authenticatorData),
          signature: toB64url(r.signature),
          userHandle: r.userHandle ? toB64url(r.userHandle) : null,
        },
      },
    });
    location.assign(answer.next || "/me");
  }

  function busy(element, on) {
    element.setAttribute("aria-busy", on ? "true" : "false");
    if (element.tagName === "BUTTON") element.disabled = on;
  }

  document.querySelectorAll("[data-webauthn]").forEach((button) => {
    button.addEventListener("click", async () => {
      clearError();
      if (!window.PublicKeyCredential) {
        showError("This browser cannot use passkeys. Use a current browser.");
        return;
      }
      busy(button, true);
      try {
        if (button.dataset.webauthn === "register") await register(button);
        else await authenticate(button);
      } catch (e) {
        showError(ceremonyError(e));
      } finally {
        busy(button, false);
      }
    });
  });

  document.querySelectorAll("[data-redirect]").forEach((button) => {
    button.addEventListener("click", async () => {
      clearError();
      busy(button, true);
      try {
        const answer = await post(button.dataset.redirect);
        location.assign(answer.redirect);
      } catch (e) {
        showError(e.message);
        busy(button, false);
      }
    });
  });

  document.querySelectorAll("form[data-entra-start]").forEach((form) => {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      clearError();
      try {
        const answer = await post(form.dataset.entraStart, { username: form.elements.username.value });
        location.assign(answer.redirect);
      } catch (e) {
        showError(e.message);
      }
    });
  });

  document.querySelectorAll("[data-totp-setup]").forEach((button) => {
    button.addEventListener("click", async () => {
      clearError();
      try {
        const setup = await post(button.dataset.totpSetup);
        document.getElementById("totp-secret").textContent = setup.secret;
        document.getElementById("totp-qr").src =
          "data:image/svg+xml;base64," + btoa(setup.qr_svg);
        document.getElementById("totp-setup").hidden = false;
        document.getElementById("totp-code").focus();
      } catch (e) {
        showError(e.message);
      }
    });
  });

  // An authorization answer for an app that asked for it by form (form_post).
  const back = document.querySelector("form[data-post-at-once]");
  if (back) back.submit();

  document.querySelectorAll("form[data-totp-confirm]").forEach((form) => {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      clearError();
      try {
        const answer = await post(form.dataset.totpConfirm, { code: form.elements.code.value });
        location.assign(answer.next || "/me");
      } catch (e) {
        showError(e.message);
      }
    });
  });
})();
