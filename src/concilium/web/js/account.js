// The signed-in user's own settings: profile, password, API keys, sessions, usage.

import { useState } from "preact/hooks";
import { del, get, patch, post } from "./api.js";
import { formatDate, t } from "./i18n.js";
import { KeyTable, UsageTable } from "./admin.js";
import { Alert, Dialog, Field, html, useAction, useLoad } from "./ui.js";

const SCOPES = ["chat", "knowledge:read", "knowledge:write", "tools", "metrics"];

export function AccountPage({ me }) {
  return html`<div class="page">
    <h1>${t("account.title")}</h1>
    <${Profile} me=${me} />
    <${OwnUsage} />
    <${OwnKeys} />
    <${Sessions} />
    <${Password} />
  </div>`;
}

function Profile({ me }) {
  const [name, setName] = useState(me.display_name || "");
  const [email, setEmail] = useState(me.email || "");
  const [saved, setSaved] = useState(false);
  const [save, busy, error] = useAction(async () => {
    setSaved(false);
    const change = { email: email.trim() || null };
    if (name.trim()) change.display_name = name.trim();
    await patch("/api/me", change);
    setSaved(true);
  });
  return html`<section class="card" aria-labelledby="profile-title">
    <h2 id="profile-title">${t("account.profile")}</h2>
    <p class="meta">${me.username} · ${me.is_admin ? t("users.admin") : t("users.member")}</p>
    <form class="inline-form" onSubmit=${(e) => {
      e.preventDefault();
      save();
    }}>
      <${Field} label=${t("account.displayName")}>
        ${(id) => html`<input id=${id} value=${name} onInput=${(e) => setName(e.currentTarget.value)} />`}
      </${Field}>
      <${Field} label=${t("account.email")}>
        ${(id) => html`<input id=${id} type="email" value=${email} onInput=${(e) => setEmail(e.currentTarget.value)} />`}
      </${Field}>
      <button type="submit" class="primary" disabled=${busy}>${t("common.save")}</button>
    </form>
    <${Alert} error=${error} />
    ${saved && html`<div class="alert ok" role="status">${t("common.saved")}</div>`}
  </section>`;
}

function OwnUsage() {
  const [usage, error] = useLoad(() => get("/api/me/usage"), []);
  return html`<section class="card" aria-labelledby="usage-title">
    <h2 id="usage-title">${t("usage.title")}</h2>
    <${Alert} error=${error} />
    ${usage && html`<${UsageTable} usage=${usage} />`}
  </section>`;
}

function OwnKeys() {
  const [keys, error, reload] = useLoad(() => get("/api/keys"), []);
  const [name, setName] = useState("");
  const [scopes, setScopes] = useState(["chat"]);
  const [created, setCreated] = useState(null);
  const [create, busy, createError] = useAction(async () => {
    setCreated(await post("/api/keys", { name: name.trim(), scopes }));
    setName("");
    reload();
  });
  const [revoke, , revokeError] = useAction(async (key) => {
    await del(`/api/keys/${key.id}`);
    reload();
  });
  const toggle = (scope) =>
    setScopes(scopes.includes(scope) ? scopes.filter((s) => s !== scope) : [...scopes, scope]);
  return html`<section class="card" aria-labelledby="keys-title">
    <h2 id="keys-title">${t("keys.title")}</h2>
    <p class="meta">${t("keys.intro")}</p>
    <form class="inline-form" onSubmit=${(e) => {
      e.preventDefault();
      if (scopes.length) create();
    }}>
      <${Field} label=${t("keys.name")}>
        ${(id) => html`<input id=${id} required maxlength="100" value=${name} onInput=${(e) => setName(e.currentTarget.value)} />`}
      </${Field}>
      <fieldset class="collections">
        <legend>${t("keys.scopes")}</legend>
        ${SCOPES.map(
          (s) => html`<label class="check"><input type="checkbox" checked=${scopes.includes(s)} onChange=${() => toggle(s)} /> ${s}</label>`,
        )}
      </fieldset>
      <button type="submit" class="primary" disabled=${busy || !scopes.length}>${t("keys.create")}</button>
    </form>
    <${Alert} error=${error || createError || revokeError} />
    <${KeyTable} keys=${keys} onRevoke=${revoke} />
    <${Dialog} open=${!!created} title=${t("keys.createdTitle")} onClose=${() => setCreated(null)}>
      <p>${t("keys.shownOnce")}</p>
      <p class="secret" role="note" aria-label=${t("keys.secret")}>${created?.key}</p>
      <div class="actions">
        <button type="button" onClick=${() => navigator.clipboard?.writeText(created.key)}>${t("chat.copy")}</button>
        <button type="button" class="primary" onClick=${() => setCreated(null)}>${t("common.done")}</button>
      </div>
    </${Dialog}>
  </section>`;
}

function Sessions() {
  const [sessions, error, reload] = useLoad(() => get("/api/auth/sessions"), []);
  const [revoke, , revokeError] = useAction(async (session) => {
    await del(`/api/auth/sessions/${session.id}`);
    reload();
  });
  return html`<section class="card" aria-labelledby="sessions-title">
    <h2 id="sessions-title">${t("account.sessions")}</h2>
    <${Alert} error=${error || revokeError} />
    ${sessions &&
    html`<div class="table-wrap"><table>
      <thead><tr><th scope="col">${t("account.device")}</th><th scope="col">${t("account.address")}</th>
        <th scope="col">${t("account.lastUsed")}</th><th scope="col"><span class="visually-hidden">${t("common.actions")}</span></th></tr></thead>
      <tbody>
        ${sessions.map(
          (s) => html`<tr key=${s.id}>
            <td>${s.user_agent || "—"}${s.current ? html` <span class="badge soft">${t("account.thisDevice")}</span>` : ""}</td>
            <td>${s.ip || "—"}</td>
            <td>${formatDate(s.last_used_at)}</td>
            <td>${!s.current && html`<button type="button" class="small danger" onClick=${() => revoke(s)}>${t("keys.revoke")}</button>`}</td>
          </tr>`,
        )}
      </tbody>
    </table></div>`}
  </section>`;
}

function Password() {
  const [current, setCurrent] = useState("");
  const [next, setNext] = useState("");
  const [done, setDone] = useState(false);
  const [change, busy, error] = useAction(async () => {
    setDone(false);
    await post("/api/me/password", { current_password: current, new_password: next });
    setCurrent("");
    setNext("");
    setDone(true);
  });
  return html`<section class="card" aria-labelledby="password-title">
    <h2 id="password-title">${t("account.password")}</h2>
    <form class="inline-form" onSubmit=${(e) => {
      e.preventDefault();
      change();
    }}>
      <${Field} label=${t("account.currentPassword")}>
        ${(id) => html`<input id=${id} type="password" autocomplete="current-password" required value=${current} onInput=${(e) => setCurrent(e.currentTarget.value)} />`}
      </${Field}>
      <${Field} label=${t("account.newPassword")}>
        ${(id) => html`<input id=${id} type="password" autocomplete="new-password" required value=${next} onInput=${(e) => setNext(e.currentTarget.value)} />`}
      </${Field}>
      <button type="submit" disabled=${busy}>${t("account.changePassword")}</button>
    </form>
    <${Alert} error=${error} />
    ${done && html`<div class="alert ok" role="status">${t("common.saved")}</div>`}
  </section>`;
}
