// What Concilium remembers about the signed-in user: the switch, the memories (search,
// edit, re-class, pin, delete), forgetting by words, and the user's data (export, erase).

import { useEffect, useState } from "preact/hooks";
import { del, get, patch, post, put, request } from "./api.js";
import { formatDate, t } from "./i18n.js";
import { navigate } from "./router.js";
import { Alert, Dialog, Empty, Field, html, useAction, useLoad } from "./ui.js";

const KINDS = ["fact", "preference", "event", "person", "instruction"];
const CLASSES = ["permanent", "important", "normal", "temporary", "auto_delete"];
const PAGE = 100;

export function MemoryPage({ route }) {
  const focus = route.query.get("focus");
  const [version, setVersion] = useState(0);
  const reload = () => setVersion((v) => v + 1);
  return html`<div class="page">
    <h1>${t("memory.title")}</h1>
    <p class="meta">${t("memory.intro")}</p>
    <${Switch} />
    <${AddMemory} onAdded=${reload} />
    <${MemoryList} focus=${focus} version=${version} onChanged=${reload} />
    <${Forget} onForgotten=${reload} />
    <${YourData} />
  </div>`;
}

function Switch() {
  const [state, error, reload] = useLoad(() => get("/api/memories/settings"), []);
  const [toggle, busy, toggleError] = useAction(async (enabled) => {
    await put("/api/memories/settings", { enabled });
    reload();
  });
  return html`<section class="card" aria-labelledby="memory-switch-title">
    <h2 id="memory-switch-title">${t("memory.switch")}</h2>
    <${Alert} error=${error || toggleError} />
    ${state &&
    html`<label class="check"><input type="checkbox" checked=${state.enabled} disabled=${busy}
        onChange=${(e) => toggle(e.currentTarget.checked)} /> ${t("memory.enabled")}</label>
      <p class="meta">${t("memory.switchHint")}</p>`}
  </section>`;
}

function AddMemory({ onAdded }) {
  const [text, setText] = useState("");
  const [kind, setKind] = useState("fact");
  const [add, busy, error] = useAction(async () => {
    await post("/api/memories", { text: text.trim(), kind });
    setText("");
    onAdded();
  });
  return html`<section class="card" aria-labelledby="memory-add-title">
    <h2 id="memory-add-title">${t("memory.add")}</h2>
    <form class="inline-form" onSubmit=${(e) => {
      e.preventDefault();
      if (text.trim()) add();
    }}>
      <${Field} label=${t("memory.text")}>
        ${(id) => html`<input id=${id} required maxlength="1000" value=${text} placeholder=${t("memory.textHint")}
          onInput=${(e) => setText(e.currentTarget.value)} />`}
      </${Field}>
      <${Field} label=${t("memory.kind")}>
        ${(id) => html`<select id=${id} value=${kind} onChange=${(e) => setKind(e.currentTarget.value)}>
          ${KINDS.map((k) => html`<option value=${k}>${t(`memory.kinds.${k}`)}</option>`)}
        </select>`}
      </${Field}>
      <button type="submit" class="primary" disabled=${busy || !text.trim()}>${t("memory.remember")}</button>
    </form>
    <${Alert} error=${error} />
  </section>`;
}

function MemoryList({ focus, version, onChanged }) {
  const [query, setQuery] = useState("");
  const [search, setSearch] = useState("");
  const [history, setHistory] = useState(false);
  const [editing, setEditing] = useState(null);
  const [deleting, setDeleting] = useState(null);
  useEffect(() => {
    const timer = setTimeout(() => setSearch(query.trim()), 250);
    return () => clearTimeout(timer);
  }, [query]);
  const [page, error] = useLoad(() => {
    const params = new URLSearchParams({ limit: String(PAGE) });
    if (search) params.set("q", search);
    if (history) params.set("history", "true");
    return get(`/api/memories?${params}`);
  }, [search, history, version]);
  const [change, , changeError] = useAction(async (memory, fields) => {
    await patch(`/api/memories/${memory.id}`, fields);
    onChanged();
  });
  const [remove, removing, removeError] = useAction(async (memory) => {
    await del(`/api/memories/${memory.id}`);
    setDeleting(null);
    onChanged();
  });
  useEffect(() => {
    if (focus && page) document.getElementById(`memory-${focus}`)?.scrollIntoView({ block: "center" });
  }, [focus, page]);
  return html`<section class="card" aria-labelledby="memory-list-title">
    <h2 id="memory-list-title">${t("memory.list")}</h2>
    <div class="inline-form">
      <input type="search" aria-label=${t("memory.search")} placeholder=${t("memory.search")} maxlength="500"
        value=${query} onInput=${(e) => setQuery(e.currentTarget.value)} />
      <label class="check"><input type="checkbox" checked=${history} onChange=${(e) => setHistory(e.currentTarget.checked)} />
        ${t("memory.showHistory")}</label>
    </div>
    <${Alert} error=${error || changeError || removeError} />
    ${page && !page.items.length && html`<${Empty}>${search ? t("memory.noMatch") : t("memory.none")}</${Empty}>`}
    ${page?.items.length > 0 &&
    html`<p class="meta">${t("memory.count", { shown: page.items.length, total: page.total })}</p>
    <div class="table-wrap"><table class="memories">
      <thead><tr>
        <th scope="col">${t("memory.text")}</th>
        <th scope="col">${t("memory.kind")}</th>
        <th scope="col">${t("memory.retention")}</th>
        <th scope="col">${t("memory.learnt")}</th>
        <th scope="col">${t("memory.expires")}</th>
        <th scope="col"><span class="visually-hidden">${t("common.actions")}</span></th>
      </tr></thead>
      <tbody>
        ${page.items.map(
          (m) => html`<tr key=${m.id} id=${`memory-${m.id}`} class=${[m.current ? "" : "replaced", m.id === focus ? "focus" : ""].join(" ")}>
            <td>
              ${m.pinned && html`<span class="badge soft">${t("memory.pinned")}</span> `}
              ${m.text}
              ${!m.current && html` <span class="badge soft">${t("memory.replaced")}</span>`}
              ${m.source_conversation_id &&
              html`<br /><a class="meta" href=${`#/chat/${m.source_conversation_id}`}>${t("memory.source")}</a>`}
            </td>
            <td>${t(`memory.kinds.${m.kind}`)}</td>
            <td>
              ${m.current
                ? html`<select aria-label=${t("memory.reclass", { text: m.text })} value=${m.retention}
                    onChange=${(e) => change(m, { retention: e.currentTarget.value })}>
                    ${CLASSES.map((c) => html`<option value=${c}>${t(`memory.class.${c}`)}</option>`)}
                  </select>`
                : t(`memory.class.${m.retention}`)}
            </td>
            <td>${formatDate(m.valid_from)}</td>
            <td>${m.expires_at ? formatDate(m.expires_at) : t("memory.never")}</td>
            <td class="row-actions">
              ${m.current &&
              html`<button type="button" class="small ghost" aria-pressed=${m.pinned ? "true" : "false"}
                  onClick=${() => change(m, { pinned: !m.pinned })}>${m.pinned ? t("memory.unpin") : t("memory.pin")}</button>
                <button type="button" class="small ghost" onClick=${() => setEditing(m)}>${t("chat.edit")}</button>`}
              <button type="button" class="small danger" onClick=${() => setDeleting(m)}>${t("common.delete")}</button>
            </td>
          </tr>`,
        )}
      </tbody>
    </table></div>`}
    <${EditMemory} memory=${editing} onClose=${() => setEditing(null)} onSaved=${() => {
      setEditing(null);
      onChanged();
    }} />
    <${Dialog} open=${!!deleting} title=${t("memory.deleteTitle")} onClose=${() => setDeleting(null)}>
      <p>${t("memory.deleteConfirm", { text: deleting?.text || "" })}</p>
      <div class="actions">
        <button type="button" class="ghost" onClick=${() => setDeleting(null)}>${t("common.cancel")}</button>
        <button type="button" class="danger" disabled=${removing} onClick=${() => remove(deleting)}>${t("common.delete")}</button>
      </div>
    </${Dialog}>
  </section>`;
}

function EditMemory({ memory, onClose, onSaved }) {
  const [text, setText] = useState("");
  const [kind, setKind] = useState("fact");
  useEffect(() => {
    if (memory) {
      setText(memory.text);
      setKind(memory.kind);
    }
  }, [memory]);
  const [save, busy, error] = useAction(async () => {
    const fields = {};
    if (text.trim() !== memory.text) fields.text = text.trim();
    if (kind !== memory.kind) fields.kind = kind;
    if (Object.keys(fields).length) await patch(`/api/memories/${memory.id}`, fields);
    onSaved();
  });
  return html`<${Dialog} open=${!!memory} title=${t("memory.editTitle")} onClose=${onClose}>
    <form onSubmit=${(e) => {
      e.preventDefault();
      if (text.trim()) save();
    }}>
      <${Field} label=${t("memory.text")} hint=${t("memory.editHint")}>
        ${(id) => html`<textarea id=${id} rows="3" required maxlength="1000" value=${text} onInput=${(e) => setText(e.currentTarget.value)}></textarea>`}
      </${Field}>
      <${Field} label=${t("memory.kind")}>
        ${(id) => html`<select id=${id} value=${kind} onChange=${(e) => setKind(e.currentTarget.value)}>
          ${KINDS.map((k) => html`<option value=${k}>${t(`memory.kinds.${k}`)}</option>`)}
        </select>`}
      </${Field}>
      <${Alert} error=${error} />
      <div class="actions">
        <button type="button" class="ghost" onClick=${onClose}>${t("common.cancel")}</button>
        <button type="submit" class="primary" disabled=${busy || !text.trim()}>${t("common.save")}</button>
      </div>
    </form>
  </${Dialog}>`;
}

function Forget({ onForgotten }) {
  const [query, setQuery] = useState("");
  const [preview, setPreview] = useState(null);
  const [look, looking, lookError] = useAction(async () => {
    setPreview(await post("/api/memories/forget", { query: query.trim(), dry_run: true }));
  });
  const [forget, forgetting, forgetError] = useAction(async () => {
    await post("/api/memories/forget", { query: query.trim() });
    setPreview(null);
    setQuery("");
    onForgotten();
  });
  return html`<section class="card" aria-labelledby="memory-forget-title">
    <h2 id="memory-forget-title">${t("memory.forget")}</h2>
    <p class="meta">${t("memory.forgetHint")}</p>
    <form class="inline-form" onSubmit=${(e) => {
      e.preventDefault();
      if (query.trim()) look();
    }}>
      <${Field} label=${t("memory.forgetWhat")}>
        ${(id) => html`<input id=${id} required maxlength="500" value=${query} onInput=${(e) => setQuery(e.currentTarget.value)} />`}
      </${Field}>
      <button type="submit" disabled=${looking || !query.trim()}>${t("memory.forgetPreview")}</button>
    </form>
    <${Alert} error=${lookError || forgetError} />
    <${Dialog} open=${!!preview} title=${t("memory.forget")} onClose=${() => setPreview(null)}>
      ${preview?.deleted.length
        ? html`<p>${t("memory.forgetConfirm", { count: preview.deleted.length })}</p>
          <ul>${preview.deleted.map((m) => html`<li key=${m.id}>${m.text}</li>`)}</ul>`
        : html`<p>${t("memory.forgetNothing")}</p>`}
      <div class="actions">
        <button type="button" class="ghost" onClick=${() => setPreview(null)}>${t("common.cancel")}</button>
        ${preview?.deleted.length > 0 &&
        html`<button type="button" class="danger" disabled=${forgetting} onClick=${forget}>${t("memory.forgetNow")}</button>`}
      </div>
    </${Dialog}>
  </section>`;
}

function YourData() {
  const [erasing, setErasing] = useState(false);
  const [password, setPassword] = useState("");
  const [download, downloading, downloadError] = useAction(async () => {
    const data = await request("/api/me/export");
    const blob = new Blob([JSON.stringify(data, null, 2)], { type: "application/json" });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `concilium-${data.user?.username || "export"}.json`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  });
  const [erase, busy, eraseError] = useAction(async () => {
    await post("/api/me/erase", { password });
    setErasing(false);
    navigate("/login");
    location.reload();
  });
  return html`<section class="card" aria-labelledby="memory-data-title">
    <h2 id="memory-data-title">${t("memory.data")}</h2>
    <p class="meta">${t("memory.dataHint")}</p>
    <div class="actions">
      <button type="button" disabled=${downloading} onClick=${download}>${t("memory.export")}</button>
      <button type="button" class="danger" onClick=${() => setErasing(true)}>${t("memory.erase")}</button>
    </div>
    <${Alert} error=${downloadError} />
    <${Dialog} open=${erasing} title=${t("memory.erase")} onClose=${() => setErasing(false)}>
      <form onSubmit=${(e) => {
        e.preventDefault();
        if (password) erase();
      }}>
        <p>${t("memory.eraseConfirm")}</p>
        <${Field} label=${t("account.currentPassword")}>
          ${(id) => html`<input id=${id} type="password" autocomplete="current-password" required value=${password}
            onInput=${(e) => setPassword(e.currentTarget.value)} />`}
        </${Field}>
        <${Alert} error=${eraseError} />
        <div class="actions">
          <button type="button" class="ghost" onClick=${() => setErasing(false)}>${t("common.cancel")}</button>
          <button type="submit" class="danger" disabled=${busy || !password}>${t("memory.eraseNow")}</button>
        </div>
      </form>
    </${Dialog}>
  </section>`;
}
