// Knowledge: collections, drag-and-drop upload with per-file progress, documents and their
// versions, search with scores and filters.

import { useEffect, useRef, useState } from "preact/hooks";
import { del, get, post, upload } from "./api.js";
import { formatDate, formatNumber, t } from "./i18n.js";
import { navigate } from "./router.js";
import { Alert, Dialog, Empty, Field, Loading, bytes, errorText, html, useAction, useLoad } from "./ui.js";

const POLL_MS = 1000;
const SUCCEEDED = ["completed", "done"];
const FINISHED = [...SUCCEEDED, "failed", "cancelled"];

export function KnowledgePage({ route }) {
  const current = route.args[0] || null;
  const [collections, error, reload] = useLoad(() => get("/api/collections"), []);
  const [creating, setCreating] = useState(false);
  useEffect(() => {
    if (!current && collections?.length) navigate(`/knowledge/${collections[0].id}`);
  }, [current, collections]);
  const collection = collections?.find((c) => c.id === current) || null;
  const missing = collections && current && !collection;
  return html`<div class="page">
    <h1>${t("knowledge.title")}</h1>
    <${Alert} error=${error} />
    <div class="grid-2">
      <nav aria-label=${t("knowledge.collections")}>
        <h2>${t("knowledge.collections")}</h2>
        ${collections && !collections.length && html`<${Empty}>${t("knowledge.noCollections")}</${Empty}>`}
        <ul class="list-plain">
          ${collections?.map(
            (c) => html`<li key=${c.id} class=${c.id === current ? "current" : ""}>
              <a href=${`#/knowledge/${c.id}`} aria-current=${c.id === current ? "page" : null}>${c.name}</a>
              <span class="meta"> · ${t("knowledge.counts", { documents: c.documents, chunks: c.chunks })}</span>
            </li>`,
          )}
        </ul>
        <button type="button" class="primary" onClick=${() => setCreating(true)}>${t("knowledge.newCollection")}</button>
      </nav>
      <div>
        ${collection
          ? html`<${CollectionView} key=${collection.id} collection=${collection} onChanged=${reload} />`
          : missing
            ? html`<${Empty}>${t("knowledge.notFound")}</${Empty}>`
            : !collections && html`<${Loading} />`}
      </div>
    </div>
    <${NewCollection} open=${creating} onClose=${() => setCreating(false)}
      onCreated=${(c) => {
        setCreating(false);
        reload();
        navigate(`/knowledge/${c.id}`);
      }} />
  </div>`;
}

function NewCollection({ open, onClose, onCreated }) {
  const [name, setName] = useState("");
  const [description, setDescription] = useState("");
  const [create, busy, error] = useAction(async () => {
    const created = await post("/api/collections", { name: name.trim(), description });
    setName("");
    setDescription("");
    onCreated(created);
  });
  return html`<${Dialog} open=${open} title=${t("knowledge.newCollection")} onClose=${onClose}>
    <form onSubmit=${(e) => {
      e.preventDefault();
      create();
    }}>
      <${Alert} error=${error} />
      <${Field} label=${t("knowledge.name")} hint=${t("knowledge.nameHint")}>
        ${(id) => html`<input id=${id} required maxlength="100" value=${name} onInput=${(e) => setName(e.currentTarget.value)} />`}
      </${Field}>
      <${Field} label=${t("knowledge.description")}>
        ${(id) => html`<input id=${id} value=${description} onInput=${(e) => setDescription(e.currentTarget.value)} />`}
      </${Field}>
      <div class="actions">
        <button type="button" class="ghost" onClick=${onClose}>${t("common.cancel")}</button>
        <button type="submit" class="primary" disabled=${busy}>${t("common.create")}</button>
      </div>
    </form>
  </${Dialog}>`;
}

function CollectionView({ collection, onChanged }) {
  const [version, setVersion] = useState(0);
  const [deleting, setDeleting] = useState(false);
  const [remove, removing, removeError] = useAction(async () => {
    await del(`/api/collections/${collection.id}`);
    setDeleting(false);
    onChanged();
    navigate("/knowledge");
  });
  const refresh = () => {
    setVersion((v) => v + 1);
    onChanged();
  };
  return html`<section aria-labelledby="collection-title">
    <h2 id="collection-title">${collection.name}</h2>
    <p class="meta">${collection.description} ${t("knowledge.embedder", { name: collection.embedder })}</p>
    <${Uploader} collection=${collection} onIngested=${refresh} />
    <${Search} collection=${collection} />
    <${Documents} collection=${collection} version=${version} onChanged=${refresh} />
    <${Alert} error=${removeError} />
    <p><button type="button" class="danger small" onClick=${() => setDeleting(true)}>${t("knowledge.deleteCollection")}</button></p>
    <${Dialog} open=${deleting} title=${t("knowledge.deleteCollection")} onClose=${() => setDeleting(false)}>
      <p>${t("knowledge.deleteCollectionConfirm", { name: collection.name })}</p>
      <div class="actions">
        <button type="button" class="ghost" onClick=${() => setDeleting(false)}>${t("common.cancel")}</button>
        <button type="button" class="danger" disabled=${removing} onClick=${remove}>${t("common.delete")}</button>
      </div>
    </${Dialog}>
  </section>`;
}

/** Each file is its own upload and ingestion job: its progress and failure are its own. */
function Uploader({ collection, onIngested }) {
  const [files, setFiles] = useState([]);
  const [over, setOver] = useState(false);
  const input = useRef(null);
  const update = (key, values) => setFiles((all) => all.map((f) => (f.key === key ? { ...f, ...values } : f)));

  const alive = useRef(true);
  useEffect(
    () => () => {
      alive.current = false;
    },
    [],
  );

  /** Poll a file's job until it ends, more slowly as it goes; give up after 30 minutes. */
  const follow = async (key, jobId) => {
    const deadline = Date.now() + 30 * 60 * 1000;
    let wait = POLL_MS;
    while (alive.current) {
      if (Date.now() > deadline) {
        update(key, { state: "failed", reason: t("knowledge.gaveUp") });
        return;
      }
      let job;
      try {
        job = await get(`/api/jobs/${jobId}`);
      } catch (error) {
        update(key, { state: "failed", reason: errorText(error) });
        return;
      }
      const progress = job.progress;
      const total = progress?.total || 1;
      const done = progress ? progress.indexed + progress.skipped + progress.failed : 0;
      if (FINISHED.includes(job.status)) {
        const failure = job.failures?.[0];
        const failed = !SUCCEEDED.includes(job.status) || (progress && progress.failed > 0);
        update(key, {
          state: failed ? "failed" : progress?.skipped ? "skipped" : "done",
          progress: 1,
          reason: failed ? failure?.reason || failure?.error || job.error || t("knowledge.failed") : null,
        });
        onIngested();
        return;
      }
      update(key, { state: "indexing", progress: 0.5 + (0.5 * done) / total });
      await new Promise((resolve) => setTimeout(resolve, wait));
      wait = Math.min(5000, wait * 1.3);
    }
  };

  /** Upload one file; its indexing is followed apart (the next upload does not wait). */
  const send = async (entry) => {
    const form = new FormData();
    form.append("files", entry.file, entry.file.name);
    try {
      const job = await upload(`/api/collections/${collection.id}/documents`, form, (fraction) =>
        update(entry.key, { state: "uploading", progress: fraction / 2 }),
      );
      update(entry.key, { state: "queued", progress: 0.5 });
      return { following: follow(entry.key, job.id) };
    } catch (error) {
      update(entry.key, { state: "failed", reason: errorText(error) });
      return null;
    }
  };

  const add = async (list) => {
    const entries = Array.from(list).map((file, i) => ({
      key: `${Date.now()}-${i}-${file.name}`,
      file,
      state: "waiting",
      progress: 0,
      reason: null,
    }));
    setFiles((all) => [...entries, ...all]);
    // Two uploads at a time; the server indexes while the next files arrive.
    const queue = [...entries];
    const following = [];
    const worker = async () => {
      while (queue.length && alive.current) following.push(await send(queue.shift()));
    };
    await Promise.all([worker(), worker()]);
    await Promise.all(following.map((f) => f?.following));
  };

  return html`<div class="uploader">
    <div
      class=${`dropzone ${over ? "over" : ""}`}
      onDragOver=${(e) => {
        e.preventDefault();
        setOver(true);
      }}
      onDragLeave=${() => setOver(false)}
      onDrop=${(e) => {
        e.preventDefault();
        setOver(false);
        add(e.dataTransfer.files);
      }}
    >
      <p>${t("knowledge.drop")}</p>
      <button type="button" onClick=${() => input.current.click()}>${t("knowledge.choose")}</button>
      <input ref=${input} type="file" multiple class="visually-hidden" aria-label=${t("knowledge.choose")} tabindex="-1"
        onChange=${(e) => {
          add(e.currentTarget.files);
          e.currentTarget.value = "";
        }} />
    </div>
    ${files.length > 0 &&
    html`<ul class="uploads" aria-label=${t("knowledge.uploads")}>
      ${files.map(
        (f) => html`<li key=${f.key}>
          <span>${f.file.name} <span class="meta">(${bytes(f.file.size)})</span>${" — "}<span class=${`state-${f.state === "done" ? "ok" : f.state}`}>${t(`knowledge.state.${f.state}`)}</span></span>
          <progress max="1" value=${f.progress} aria-label=${t("knowledge.progressOf", { name: f.file.name })}></progress>
          ${f.reason && html`<span class="reason" role="alert">${f.reason}</span>`}
        </li>`,
      )}
    </ul>`}
  </div>`;
}

function Documents({ collection, version, onChanged }) {
  const [page, error, reload] = useLoad(
    () => get(`/api/collections/${collection.id}/documents?limit=200`),
    [collection.id, version],
  );
  const [open, setOpen] = useState(null);
  const [deleting, setDeleting] = useState(null);
  const [remove, removing, removeError] = useAction(async (doc) => {
    await del(`/api/documents/${doc.id}`);
    setDeleting(null);
    reload();
    onChanged();
  });
  return html`<section aria-labelledby="documents-title">
    <h3 id="documents-title">${t("knowledge.documents")} ${page ? html`<span class="meta">(${page.total})</span>` : ""}</h3>
    <${Alert} error=${error || removeError} />
    ${page && !page.items.length && html`<${Empty}>${t("knowledge.noDocuments")}</${Empty}>`}
    ${page?.items.length > 0 &&
    html`<div class="table-wrap"><table>
      <thead><tr>
        <th scope="col">${t("knowledge.document")}</th>
        <th scope="col">${t("knowledge.version")}</th>
        <th scope="col">${t("knowledge.chunks")}</th>
        <th scope="col">${t("knowledge.updated")}</th>
        <th scope="col"><span class="visually-hidden">${t("common.actions")}</span></th>
      </tr></thead>
      <tbody>
        ${page.items.map(
          (d) => html`<tr key=${d.id}>
            <td><button type="button" class="link" onClick=${() => setOpen(d.id)}>${d.title || d.source}</button>
              ${d.language && html` <span class="badge soft">${d.language}</span>`}</td>
            <td>${d.current_version?.number ?? "—"}</td>
            <td>${formatNumber(d.chunks)}</td>
            <td>${formatDate(d.updated_at)}</td>
            <td><button type="button" class="small danger" aria-label=${t("knowledge.deleteDocument", { name: d.title || d.source })}
              onClick=${() => setDeleting(d)}>${t("common.delete")}</button></td>
          </tr>`,
        )}
      </tbody>
    </table></div>`}
    <${DocumentDialog} id=${open} onClose=${() => setOpen(null)} />
    <${Dialog} open=${!!deleting} title=${t("knowledge.deleteDocument", { name: deleting?.title || deleting?.source || "" })}
      onClose=${() => setDeleting(null)}>
      <p>${t("knowledge.deleteDocumentConfirm", { name: deleting?.title || deleting?.source || "" })}</p>
      <div class="actions">
        <button type="button" class="ghost" onClick=${() => setDeleting(null)}>${t("common.cancel")}</button>
        <button type="button" class="danger" disabled=${removing} onClick=${() => remove(deleting)}>${t("common.delete")}</button>
      </div>
    </${Dialog}>
  </section>`;
}

function DocumentDialog({ id, onClose }) {
  const [doc, error] = useLoad(() => (id ? get(`/api/documents/${id}`) : null), [id]);
  return html`<${Dialog} open=${!!id} title=${doc ? doc.title || doc.source : t("common.loading")} onClose=${onClose} wide>
    <${Alert} error=${error} />
    ${doc &&
    html`<p class="meta">${doc.source}</p>
      <div class="table-wrap"><table>
        <thead><tr>
          <th scope="col">${t("knowledge.version")}</th><th scope="col">${t("knowledge.status")}</th>
          <th scope="col">${t("knowledge.size")}</th><th scope="col">${t("knowledge.pages")}</th>
          <th scope="col">${t("knowledge.added")}</th><th scope="col">${t("knowledge.file")}</th>
        </tr></thead>
        <tbody>
          ${doc.versions.map(
            (v) => html`<tr key=${v.id}>
              <td>${v.number}${v.retired_at ? "" : html` <span class="badge soft">${t("knowledge.current")}</span>`}</td>
              <td>${v.status}</td>
              <td>${bytes(v.size)}</td>
              <td>${v.pages ?? "—"}${v.ocr_pages?.length ? ` (OCR ${v.ocr_pages.length})` : ""}</td>
              <td>${formatDate(v.created_at)}</td>
              <td><a href=${`/api/documents/${doc.id}/file?version=${v.id}`} download>${t("knowledge.download")}</a></td>
            </tr>`,
          )}
        </tbody>
      </table></div>`}
  </${Dialog}>`;
}

function Search({ collection }) {
  const [query, setQuery] = useState("");
  const [mode, setMode] = useState("");
  const [language, setLanguage] = useState("");
  const [k, setK] = useState(8);
  const [result, setResult] = useState(null);
  const [run, busy, error] = useAction(async () => {
    const body = { query: query.trim(), collections: [collection.id], k: Number(k) };
    if (mode) body.mode = mode;
    if (language) body.filters = { languages: [language] };
    setResult(await post("/api/search", body));
  });
  return html`<section aria-labelledby="search-title">
    <h3 id="search-title">${t("knowledge.search")}</h3>
    <form class="inline-form" role="search" onSubmit=${(e) => {
      e.preventDefault();
      if (query.trim()) run();
    }}>
      <${Field} label=${t("knowledge.query")}>
        ${(id) => html`<input id=${id} type="search" value=${query} onInput=${(e) => setQuery(e.currentTarget.value)} />`}
      </${Field}>
      <${Field} label=${t("knowledge.searchMode")}>
        ${(id) => html`<select id=${id} value=${mode} onChange=${(e) => setMode(e.currentTarget.value)}>
          <option value="">${t("knowledge.collectionDefault")}</option>
          <option value="hybrid">hybrid</option><option value="bm25">bm25</option><option value="dense">dense</option>
        </select>`}
      </${Field}>
      <${Field} label=${t("knowledge.language")}>
        ${(id) => html`<select id=${id} value=${language} onChange=${(e) => setLanguage(e.currentTarget.value)}>
          <option value="">${t("knowledge.anyLanguage")}</option>
          <option value="en">English</option><option value="fr">Français</option>
        </select>`}
      </${Field}>
      <${Field} label=${t("knowledge.results")}>
        ${(id) => html`<input id=${id} type="number" min="1" max="100" value=${k} onInput=${(e) => setK(e.currentTarget.value)} />`}
      </${Field}>
      <button type="submit" class="primary" disabled=${busy}>${t("knowledge.searchButton")}</button>
    </form>
    <${Alert} error=${error} />
    ${result && !result.hits.length && html`<${Empty}>${t("knowledge.noHits")}</${Empty}>`}
    ${result?.hits.length > 0 &&
    html`<ol class="hits" aria-label=${t("knowledge.hits")}>
      ${result.hits.map(
        (hit) => html`<li key=${hit.chunk_id}>
          <strong>${hit.title || hit.source}</strong>
          <span class="meta"> · ${hit.location} · v${hit.version} · ${t("knowledge.score")} ${hit.relevance.toFixed(3)}
            ${Object.entries(hit.scores || {}).map(([name, value]) => ` · ${name} ${Number(value).toFixed(3)}`)}</span>
          <p>${hit.text}</p>
        </li>`,
      )}
    </ol>`}
  </section>`;
}
