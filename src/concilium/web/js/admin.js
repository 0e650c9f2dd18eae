// Administration: live statistics, users and roles, quotas and usage, workspaces and
// members, every API key, backends and their circuit breakers, the audit log.

import { useEffect, useState } from "preact/hooks";
import { del, get, patch, post, put } from "./api.js";
import { formatDate, formatNumber, t } from "./i18n.js";
import { navigate } from "./router.js";
import { Alert, Dialog, Empty, Field, Loading, TabPanel, Tabs, html, useAction, useLoad } from "./ui.js";

const TABS = ["stats", "users", "workspaces", "keys", "backends", "audit"];

export function AdminPage({ me, route }) {
  const tab = TABS.includes(route.args[0]) ? route.args[0] : "stats";
  if (!me.is_admin) return html`<div class="page"><${Alert} error=${{ code: "forbidden", status: 403 }} /></div>`;
  const Panel = { stats: Stats, users: Users, workspaces: Workspaces, keys: Keys, backends: Backends, audit: Audit }[tab];
  return html`<div class="page">
    <h1>${t("admin.title")}</h1>
    <${Tabs} label=${t("admin.sections")} current=${tab} onSelect=${(id) => navigate(`/admin/${id}`)}
      tabs=${TABS.map((id) => ({ id, label: t(`admin.tab.${id}`) }))} />
    <${TabPanel} id=${tab}><${Panel} me=${me} /></${TabPanel}>
  </div>`;
}

function Stat({ label, value }) {
  return html`<div class="stat"><div class="value">${value}</div><div class="label">${label}</div></div>`;
}

function Stats() {
  const [stats, error, reload] = useLoad(() => get("/api/stats"), []);
  useEffect(() => {
    const timer = setInterval(reload, 5000);
    return () => clearInterval(timer);
  }, [reload]);
  if (error) return html`<${Alert} error=${error} />`;
  if (!stats) return html`<${Loading} />`;
  const ms = (v) => (v == null ? "—" : `${formatNumber(v, { maximumFractionDigits: 0 })} ms`);
  const loaded = stats.models?.loaded || [];
  return html`<div>
    <div class="stats" aria-live="off">
      <${Stat} label=${t("stats.requests")} value=${formatNumber(stats.requests.total)} />
      <${Stat} label=${t("stats.perMinute")} value=${formatNumber(stats.requests.per_minute, { maximumFractionDigits: 1 })} />
      <${Stat} label=${t("stats.p50")} value=${ms(stats.requests.latency_ms?.p50)} />
      <${Stat} label=${t("stats.p95")} value=${ms(stats.requests.latency_ms?.p95)} />
      <${Stat} label=${t("stats.cacheHitRate")}
        value=${stats.cache.hit_rate == null ? "—" : `${formatNumber(stats.cache.hit_rate * 100, { maximumFractionDigits: 1 })} %`} />
      <${Stat} label=${t("stats.activeConversations")} value=${formatNumber(stats.conversations.active)} />
      <${Stat} label=${t("stats.inFlight")} value=${formatNumber(stats.answers?.in_flight ?? 0)} />
      <${Stat} label=${t("stats.modelsLoaded")} value=${formatNumber(loaded.length)} />
    </div>
    <p class="meta">${t("stats.window", { minutes: Math.round((stats.requests.window_s || 300) / 60) })}</p>
    ${loaded.length > 0 &&
    html`<h2>${t("stats.loadedModels")}</h2>
      <ul>${loaded.map((m) => html`<li key=${m.backend + m.model}>${m.model} <span class="meta">(${m.backend})</span></li>`)}</ul>`}
  </div>`;
}

function Backends() {
  const [stats, error, reload] = useLoad(() => get("/api/stats"), []);
  const [models] = useLoad(() => get("/api/models"), []);
  if (error) return html`<${Alert} error=${error} />`;
  if (!stats) return html`<${Loading} />`;
  return html`<div>
    <div class="table-wrap"><table>
      <caption class="visually-hidden">${t("admin.tab.backends")}</caption>
      <thead><tr><th scope="col">${t("backends.name")}</th><th scope="col">${t("backends.state")}</th><th scope="col">${t("backends.retry")}</th></tr></thead>
      <tbody>
        ${(stats.backends || []).map(
          (b) => html`<tr key=${b.name}>
            <td>${b.name}</td>
            <td class=${`state-${b.state}`}>${t(`backends.breaker.${b.state}`)}</td>
            <td>${b.retry_in_s ? `${Math.ceil(b.retry_in_s)} s` : "—"}</td>
          </tr>`,
        )}
      </tbody>
    </table></div>
    <button type="button" class="small" onClick=${reload}>${t("common.refresh")}</button>
    <h2>${t("backends.models")}</h2>
    <div class="table-wrap"><table>
      <thead><tr><th scope="col">${t("backends.model")}</th><th scope="col">${t("backends.backend")}</th><th scope="col">${t("backends.installed")}</th></tr></thead>
      <tbody>
        ${(models || []).map(
          (m) => html`<tr key=${m.id}>
            <td>${m.id}<br /><span class="meta">${m.description}</span></td>
            <td>${m.backend}</td>
            <td>${m.installed ? t("common.yes") : html`<code>${m.install}</code>`}</td>
          </tr>`,
        )}
      </tbody>
    </table></div>
  </div>`;
}

function quotaValue(text) {
  const trimmed = String(text).trim();
  return trimmed === "" ? null : Number(trimmed);
}

function Users({ me }) {
  const [page, error, reload] = useLoad(() => get("/api/admin/users?limit=500"), []);
  const [creating, setCreating] = useState(false);
  const [editing, setEditing] = useState(null);
  const [toggle, , toggleError] = useAction(async (user, change) => {
    await patch(`/api/admin/users/${user.id}`, change);
    reload();
  });
  return html`<div>
    <${Alert} error=${error || toggleError} />
    <button type="button" class="primary" onClick=${() => setCreating(true)}>${t("users.new")}</button>
    ${page &&
    html`<div class="table-wrap"><table>
      <thead><tr>
        <th scope="col">${t("users.username")}</th><th scope="col">${t("users.role")}</th>
        <th scope="col">${t("users.status")}</th><th scope="col">${t("users.quotas")}</th>
        <th scope="col">${t("users.lastLogin")}</th><th scope="col"><span class="visually-hidden">${t("common.actions")}</span></th>
      </tr></thead>
      <tbody>
        ${page.items.map(
          (u) => html`<tr key=${u.id}>
            <td>${u.username}<br /><span class="meta">${u.display_name}</span></td>
            <td>${u.is_admin ? t("users.admin") : t("users.member")}</td>
            <td>${u.disabled ? t("users.disabled") : t("users.active")}</td>
            <td>${t("users.quotaValues", { daily: u.daily_token_quota ?? t("users.quotaDefault"), monthly: u.monthly_token_quota ?? t("users.quotaDefault") })}</td>
            <td>${formatDate(u.last_login_at) || "—"}</td>
            <td>
              <button type="button" class="small" onClick=${() => setEditing(u)}>${t("users.edit")}</button>
              ${u.id !== me.id &&
              html`<button type="button" class="small ghost" onClick=${() => toggle(u, { disabled: !u.disabled })}>
                ${u.disabled ? t("users.enable") : t("users.disable")}</button>`}
            </td>
          </tr>`,
        )}
      </tbody>
    </table></div>`}
    <${NewUser} open=${creating} onClose=${() => setCreating(false)} onCreated=${() => {
      setCreating(false);
      reload();
    }} />
    <${EditUser} user=${editing} self=${editing?.id === me.id} onClose=${() => setEditing(null)} onSaved=${() => {
      setEditing(null);
      reload();
    }} />
  </div>`;
}

function NewUser({ open, onClose, onCreated }) {
  const [form, setForm] = useState({ username: "", password: "", is_admin: false });
  const [create, busy, error] = useAction(async () => {
    await post("/api/admin/users", form);
    setForm({ username: "", password: "", is_admin: false });
    onCreated();
  });
  return html`<${Dialog} open=${open} title=${t("users.new")} onClose=${onClose}>
    <form onSubmit=${(e) => {
      e.preventDefault();
      create();
    }}>
      <${Alert} error=${error} />
      <${Field} label=${t("users.username")}>
        ${(id) => html`<input id=${id} required autocomplete="off" value=${form.username}
          onInput=${(e) => setForm({ ...form, username: e.currentTarget.value })} />`}
      </${Field}>
      <${Field} label=${t("auth.password")}>
        ${(id) => html`<input id=${id} type="password" required autocomplete="new-password" value=${form.password}
          onInput=${(e) => setForm({ ...form, password: e.currentTarget.value })} />`}
      </${Field}>
      <label class="check"><input type="checkbox" checked=${form.is_admin}
        onChange=${(e) => setForm({ ...form, is_admin: e.currentTarget.checked })} /> ${t("users.makeAdmin")}</label>
      <div class="actions">
        <button type="button" class="ghost" onClick=${onClose}>${t("common.cancel")}</button>
        <button type="submit" class="primary" disabled=${busy}>${t("common.create")}</button>
      </div>
    </form>
  </${Dialog}>`;
}

function EditUser({ user, self, onClose, onSaved }) {
  const [form, setForm] = useState({});
  const [usage] = useLoad(() => (user ? get(`/api/admin/users/${user.id}/usage`) : null), [user?.id]);
  useEffect(() => {
    if (user) {
      setForm({
        is_admin: user.is_admin,
        daily: user.daily_token_quota ?? "",
        monthly: user.monthly_token_quota ?? "",
        password: "",
      });
    }
  }, [user]);
  const [save, busy, error] = useAction(async () => {
    const change = { daily_token_quota: quotaValue(form.daily), monthly_token_quota: quotaValue(form.monthly) };
    if (!self) change.is_admin = form.is_admin;
    await patch(`/api/admin/users/${user.id}`, change);
    if (form.password) await post(`/api/admin/users/${user.id}/password`, { new_password: form.password });
    onSaved();
  });
  return html`<${Dialog} open=${!!user} title=${t("users.editTitle", { name: user?.username || "" })} onClose=${onClose}>
    ${user &&
    html`<form onSubmit=${(e) => {
      e.preventDefault();
      save();
    }}>
      <${Alert} error=${error} />
      ${!self &&
      html`<label class="check"><input type="checkbox" checked=${form.is_admin}
        onChange=${(e) => setForm({ ...form, is_admin: e.currentTarget.checked })} /> ${t("users.makeAdmin")}</label>`}
      <${Field} label=${t("users.dailyQuota")} hint=${t("users.quotaHint")}>
        ${(id) => html`<input id=${id} type="number" min="0" value=${form.daily} onInput=${(e) => setForm({ ...form, daily: e.currentTarget.value })} />`}
      </${Field}>
      <${Field} label=${t("users.monthlyQuota")}>
        ${(id) => html`<input id=${id} type="number" min="0" value=${form.monthly} onInput=${(e) => setForm({ ...form, monthly: e.currentTarget.value })} />`}
      </${Field}>
      <${Field} label=${t("users.resetPassword")} hint=${t("users.resetHint")}>
        ${(id) => html`<input id=${id} type="password" autocomplete="new-password" value=${form.password}
          onInput=${(e) => setForm({ ...form, password: e.currentTarget.value })} />`}
      </${Field}>
      ${usage && html`<${UsageTable} usage=${usage} />`}
      <div class="actions">
        <button type="button" class="ghost" onClick=${onClose}>${t("common.cancel")}</button>
        <button type="submit" class="primary" disabled=${busy}>${t("common.save")}</button>
      </div>
    </form>`}
  </${Dialog}>`;
}

export function UsageTable({ usage }) {
  const row = (label, spent, quota) => html`<tr>
    <th scope="row">${label}</th>
    <td>${formatNumber(spent.requests)}</td>
    <td>${formatNumber(spent.total_tokens)}</td>
    <td>${quota == null ? t("usage.unlimited") : formatNumber(quota)}</td>
  </tr>`;
  return html`<div class="table-wrap"><table>
    <caption>${t("usage.title")}</caption>
    <thead><tr><th scope="col">${t("usage.period")}</th><th scope="col">${t("usage.requests")}</th>
      <th scope="col">${t("usage.tokens")}</th><th scope="col">${t("usage.quota")}</th></tr></thead>
    <tbody>
      ${row(t("usage.today"), usage.today, usage.quotas?.user_daily)}
      ${row(t("usage.month"), usage.this_month, usage.quotas?.user_monthly)}
    </tbody>
  </table></div>`;
}

function Workspaces() {
  const [workspaces, error, reload] = useLoad(() => get("/api/workspaces"), []);
  const [open, setOpen] = useState(null);
  const [name, setName] = useState("");
  const [create, busy, createError] = useAction(async () => {
    await post("/api/workspaces", { name: name.trim() });
    setName("");
    reload();
  });
  return html`<div>
    <${Alert} error=${error || createError} />
    <form class="inline-form" onSubmit=${(e) => {
      e.preventDefault();
      create();
    }}>
      <${Field} label=${t("workspaces.name")}>
        ${(id) => html`<input id=${id} required value=${name} onInput=${(e) => setName(e.currentTarget.value)} />`}
      </${Field}>
      <button type="submit" class="primary" disabled=${busy}>${t("workspaces.create")}</button>
    </form>
    ${workspaces && !workspaces.length && html`<${Empty}>${t("workspaces.none")}</${Empty}>`}
    <ul class="list-plain">
      ${workspaces?.map(
        (w) => html`<li key=${w.id}>
          <button type="button" class="link" onClick=${() => setOpen(w)}>${w.name}</button>
          ${w.personal && html` <span class="badge soft">${t("workspaces.personal")}</span>`}
        </li>`,
      )}
    </ul>
    <${WorkspaceDialog} workspace=${open} onClose=${() => setOpen(null)} />
  </div>`;
}

function WorkspaceDialog({ workspace, onClose }) {
  const id = workspace?.id;
  const [members, error, reload] = useLoad(() => (id ? get(`/api/workspaces/${id}/members`) : null), [id]);
  const [users] = useLoad(() => (id ? get("/api/admin/users?limit=500") : null), [id]);
  const [form, setForm] = useState({ username: "", role: "member", daily: "", monthly: "" });
  const [saved, setSaved] = useState(false);
  useEffect(() => {
    setSaved(false);
    setForm({
      username: "",
      role: "member",
      daily: workspace?.daily_token_quota ?? "",
      monthly: workspace?.monthly_token_quota ?? "",
    });
  }, [id]);
  const [add, busy, addError] = useAction(async () => {
    await put(`/api/workspaces/${id}/members`, { username: form.username, role: form.role });
    reload();
  });
  const [removeMember, , removeError] = useAction(async (member) => {
    await del(`/api/workspaces/${id}/members/${member.user_id}`);
    reload();
  });
  const [saveQuota, quotaBusy, quotaError] = useAction(async () => {
    setSaved(false);
    await put(`/api/admin/workspaces/${id}/quota`, {
      daily_token_quota: quotaValue(form.daily),
      monthly_token_quota: quotaValue(form.monthly),
    });
    setSaved(true);
  });
  return html`<${Dialog} open=${!!workspace} title=${workspace?.name || ""} onClose=${onClose} wide>
    <${Alert} error=${error || addError || removeError || quotaError} />
    <h3>${t("workspaces.members")}</h3>
    <div class="table-wrap"><table>
      <thead><tr><th scope="col">${t("users.username")}</th><th scope="col">${t("workspaces.role")}</th><th scope="col"><span class="visually-hidden">${t("common.actions")}</span></th></tr></thead>
      <tbody>
        ${(members || []).map(
          (m) => html`<tr key=${m.user_id}>
            <td>${m.username || m.user_id}</td><td>${t(`role.${m.role}`)}</td>
            <td><button type="button" class="small danger" onClick=${() => removeMember(m)}>${t("workspaces.remove")}</button></td>
          </tr>`,
        )}
      </tbody>
    </table></div>
    <form class="inline-form" onSubmit=${(e) => {
      e.preventDefault();
      add();
    }}>
      <${Field} label=${t("workspaces.user")}>
        ${(fid) => html`<select id=${fid} required value=${form.username} onChange=${(e) => setForm({ ...form, username: e.currentTarget.value })}>
          <option value="">—</option>
          ${(users?.items || []).map((u) => html`<option value=${u.username}>${u.username}</option>`)}
        </select>`}
      </${Field}>
      <${Field} label=${t("workspaces.role")}>
        ${(fid) => html`<select id=${fid} value=${form.role} onChange=${(e) => setForm({ ...form, role: e.currentTarget.value })}>
          ${["viewer", "member", "admin"].map((r) => html`<option value=${r}>${t(`role.${r}`)}</option>`)}
        </select>`}
      </${Field}>
      <button type="submit" class="primary" disabled=${busy}>${t("workspaces.addMember")}</button>
    </form>
    <h3>${t("workspaces.quota")}</h3>
    <form class="inline-form" onSubmit=${(e) => {
      e.preventDefault();
      saveQuota();
    }}>
      <${Field} label=${t("users.dailyQuota")}>
        ${(fid) => html`<input id=${fid} type="number" min="0" value=${form.daily} onInput=${(e) => setForm({ ...form, daily: e.currentTarget.value })} />`}
      </${Field}>
      <${Field} label=${t("users.monthlyQuota")}>
        ${(fid) => html`<input id=${fid} type="number" min="0" value=${form.monthly} onInput=${(e) => setForm({ ...form, monthly: e.currentTarget.value })} />`}
      </${Field}>
      <button type="submit" disabled=${quotaBusy}>${t("common.save")}</button>
    </form>
    ${saved && html`<div class="alert ok" role="status">${t("common.saved")}</div>`}
  </${Dialog}>`;
}

function Keys() {
  const [keys, error, reload] = useLoad(() => get("/api/admin/keys"), []);
  const [revoke, , revokeError] = useAction(async (key) => {
    await del(`/api/admin/keys/${key.id}`);
    reload();
  });
  return html`<div>
    <p>${t("keys.adminIntro")} <a href="#/account">${t("keys.ownKeys")}</a></p>
    <${Alert} error=${error || revokeError} />
    <${KeyTable} keys=${keys} onRevoke=${revoke} showOwner />
  </div>`;
}

export function KeyTable({ keys, onRevoke, showOwner = false }) {
  if (!keys) return html`<${Loading} />`;
  if (!keys.length) return html`<${Empty}>${t("keys.none")}</${Empty}>`;
  return html`<div class="table-wrap"><table>
    <thead><tr>
      <th scope="col">${t("keys.name")}</th>${showOwner && html`<th scope="col">${t("keys.owner")}</th>`}
      <th scope="col">${t("keys.prefix")}</th><th scope="col">${t("keys.scopes")}</th>
      <th scope="col">${t("keys.lastUsed")}</th><th scope="col">${t("keys.state")}</th>
      <th scope="col"><span class="visually-hidden">${t("common.actions")}</span></th>
    </tr></thead>
    <tbody>
      ${keys.map(
        (k) => html`<tr key=${k.id}>
          <td>${k.name}</td>${showOwner && html`<td>${k.user_id}</td>`}
          <td><code>${k.prefix}</code></td>
          <td>${k.scopes.join(", ")}</td>
          <td>${formatDate(k.last_used_at) || "—"}</td>
          <td>${k.revoked_at ? t("keys.revoked") : t("keys.active")}</td>
          <td>${!k.revoked_at &&
          html`<button type="button" class="small danger" aria-label=${t("keys.revokeNamed", { name: k.name })}
            onClick=${() => onRevoke(k)}>${t("keys.revoke")}</button>`}</td>
        </tr>`,
      )}
    </tbody>
  </table></div>`;
}

function Audit() {
  const [action, setAction] = useState("");
  const [entries, error, reload] = useLoad(
    () => get(`/api/admin/audit?limit=200${action ? `&action=${encodeURIComponent(action)}` : ""}`),
    [action],
  );
  const [verify, verifying, verifyError] = useAction(() => get("/api/admin/audit/verify"));
  const [result, setResult] = useState(null);
  return html`<div>
    <div class="inline-form">
      <${Field} label=${t("audit.action")}>
        ${(id) => html`<input id=${id} type="search" value=${action} onChange=${(e) => setAction(e.currentTarget.value.trim())} />`}
      </${Field}>
      <button type="button" onClick=${reload}>${t("common.refresh")}</button>
      <button type="button" class="primary" disabled=${verifying} onClick=${async () => setResult(await verify())}>
        ${t("audit.verify")}</button>
    </div>
    <${Alert} error=${error || verifyError} />
    ${result &&
    html`<div class=${`alert ${result.ok ? "ok" : "error"}`} role="status">
      ${result.ok ? t("audit.intact", { n: result.checked }) : t("audit.broken", { n: result.problems.length })}
      ${result.problems.length > 0 && html`<ul>${result.problems.slice(0, 20).map((p) => html`<li>${p}</li>`)}</ul>`}
    </div>`}
    ${entries &&
    html`<div class="table-wrap"><table>
      <thead><tr>
        <th scope="col">#</th><th scope="col">${t("audit.when")}</th><th scope="col">${t("audit.action")}</th>
        <th scope="col">${t("audit.outcome")}</th><th scope="col">${t("audit.actor")}</th><th scope="col">${t("audit.target")}</th>
      </tr></thead>
      <tbody>
        ${entries.map(
          (e) => html`<tr key=${e.seq}>
            <td>${e.seq}</td><td>${formatDate(e.created_at)}</td><td>${e.action}</td>
            <td class=${e.outcome === "success" || e.outcome === "ok" ? "state-ok" : "state-failed"}>${e.outcome}</td>
            <td>${e.actor_user_id || e.actor_key_id || "—"}${e.ip ? html`<br /><span class="meta">${e.ip}</span>` : ""}</td>
            <td>${e.target || "—"}</td>
          </tr>`,
        )}
      </tbody>
    </table></div>`}
  </div>`;
}
