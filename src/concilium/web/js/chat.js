// Chat: conversations, the streamed answer, branches, modes, citations, agent steps and
// consensus workers. Long conversations are virtualised (only what is on screen is in the
// page) and each message's Markdown is rendered once.

import { useCallback, useEffect, useLayoutEffect, useMemo, useRef, useState } from "preact/hooks";
import {
  Virtualizer,
  elementScroll,
  measureElement,
  observeElementOffset,
  observeElementRect,
} from "virtual-core";
import { ApiError, del, get, patch, post, stream } from "./api.js";
import { formatNumber, t, tOr } from "./i18n.js";
import { Markdown, plainText, sourceTitle } from "./markdown.js";
import { navigate } from "./router.js";
import { Alert, Dialog, Empty, Icon, Loading, announce, errorText, html, useAction, useLoad } from "./ui.js";

const MODES = ["auto", "direct", "rag", "agent", "consensus"];
const SETTINGS = "concilium.chat";

// ---------------------------------------------------------------------------------------
// Conversation tree: the active path, and each message's siblings (its branches).

export function conversationTree(detail) {
  const byId = new Map(detail.messages.map((m) => [m.id, m]));
  const children = new Map();
  for (const message of detail.messages) {
    const key = message.parent_id || "";
    if (!children.has(key)) children.set(key, []);
    children.get(key).push(message);
  }
  const path = detail.active_path.map((id) => byId.get(id)).filter(Boolean);
  return { byId, children, path };
}

/** The newest leaf under a message: where switching to that branch lands. */
function deepestLeaf(tree, message) {
  let current = message;
  for (;;) {
    const next = tree.children.get(current.id);
    if (!next?.length) return current;
    current = next[next.length - 1];
  }
}

// ---------------------------------------------------------------------------------------

export function ChatPage({ me, route }) {
  const id = route.args[0] || null;
  // A new chat gets its address once its conversation exists: the same component goes on
  // (no remount: the focus, the scroll and the answer just streamed stay).
  const instance = useRef({ key: 0, id, adopted: null });
  if (id !== instance.current.id) {
    const own = instance.current.id === null && id === instance.current.adopted;
    instance.current = { key: instance.current.key + (own ? 0 : 1), id, adopted: null };
  }
  const [listVersion, setListVersion] = useState(0);
  const [menuOpen, setMenuOpen] = useState(false);
  const refreshList = useCallback(() => setListVersion((v) => v + 1), []);
  return html`<div class=${`chat-layout ${menuOpen ? "menu-open" : ""}`}>
    <button
      type="button"
      class="ghost conversations-toggle"
      aria-expanded=${menuOpen ? "true" : "false"}
      aria-controls="conversation-list"
      onClick=${() => setMenuOpen(!menuOpen)}
    >
      ${t("chat.conversations")}
    </button>
    <${ConversationList}
      current=${id}
      version=${listVersion}
      onPick=${() => setMenuOpen(false)}
    />
    <${Conversation}
      key=${instance.current.key}
      id=${id}
      me=${me}
      onChanged=${refreshList}
      onCreated=${(created) => {
        instance.current.adopted = created;
      }}
    />
  </div>`;
}

function ConversationList({ current, version, onPick }) {
  const [query, setQuery] = useState("");
  const [search, setSearch] = useState("");
  const [renaming, setRenaming] = useState(null);
  const [deleting, setDeleting] = useState(null);
  useEffect(() => {
    const timer = setTimeout(() => setSearch(query.trim()), 250);
    return () => clearTimeout(timer);
  }, [query]);
  const [page, error, reload] = useLoad(
    () => get(`/api/conversations?limit=200${search ? `&q=${encodeURIComponent(search)}` : ""}`),
    [search, version],
  );
  const [rename, , renameError] = useAction(async (conversation, title) => {
    await patch(`/api/conversations/${conversation.id}`, { title });
    setRenaming(null);
    reload();
  });
  const [forget, setForget] = useState(false);
  const [remove, removing, removeError] = useAction(async (conversation) => {
    await del(`/api/conversations/${conversation.id}${forget ? "?forget_memories=true" : ""}`);
    setForget(false);
    setDeleting(null);
    if (conversation.id === current) navigate("/chat");
    reload();
  });
  return html`<aside id="conversation-list" class="sidebar" aria-label=${t("chat.conversations")}>
    <a class="button primary new-chat" href="#/chat" onClick=${onPick}>${t("chat.new")}</a>
    <input
      type="search"
      class="search"
      maxlength="200"
      aria-label=${t("chat.search")}
      placeholder=${t("chat.search")}
      value=${query}
      onInput=${(e) => setQuery(e.currentTarget.value)}
    />
    <${Alert} error=${error || renameError || removeError} />
    ${page && !page.items.length && html`<${Empty}>${search ? t("chat.noMatch") : t("chat.noConversations")}</${Empty}>`}
    <ul class="conversation-items">
      ${page?.items.map(
        (c) => html`<li key=${c.id} class=${c.id === current ? "current" : ""}>
          ${renaming === c.id
            ? html`<form
                class="rename"
                onSubmit=${(e) => {
                  e.preventDefault();
                  rename(c, new FormData(e.currentTarget).get("title"));
                }}
              >
                <input name="title" aria-label=${t("chat.newTitle")} value=${c.title} required maxlength="200" ref=${(el) => el?.focus()}
                  onKeyDown=${(e) => e.key === "Escape" && setRenaming(null)} />
                <button type="submit" class="small">${t("common.save")}</button>
              </form>`
            : html`<a href=${`#/chat/${c.id}`} aria-current=${c.id === current ? "page" : null} onClick=${onPick}>
                <span class="title">${c.title || t("chat.untitled")}</span>
                ${c.snippet && html`<span class="snippet">${c.snippet}</span>`}
              </a>`}
          <div class="row-actions">
            <button type="button" class="icon" aria-label=${t("chat.rename", { title: c.title })} onClick=${() => setRenaming(c.id)}><${Icon} name="pencil" /></button>
            <button type="button" class="icon" aria-label=${t("chat.delete", { title: c.title })} onClick=${() => setDeleting(c)}><${Icon} name="trash" /></button>
          </div>
        </li>`,
      )}
    </ul>
    <${Dialog} open=${!!deleting} title=${t("chat.deleteTitle")} onClose=${() => setDeleting(null)}>
      <p>${t("chat.deleteConfirm", { title: deleting?.title || "" })}</p>
      <label class="check"><input type="checkbox" checked=${forget} onChange=${(e) => setForget(e.currentTarget.checked)} />
        ${t("chat.deleteMemories")}</label>
      <div class="actions">
        <button type="button" class="ghost" onClick=${() => setDeleting(null)}>${t("common.cancel")}</button>
        <button type="button" class="danger" disabled=${removing} onClick=${() => remove(deleting)}>${t("common.delete")}</button>
      </div>
    </${Dialog}>
  </aside>`;
}

// ---------------------------------------------------------------------------------------
// One conversation.

function loadSettings() {
  try {
    return { mode: "auto", model: "", collections: [], profile: "", ...JSON.parse(localStorage.getItem(SETTINGS) || "{}") };
  } catch {
    return { mode: "auto", model: "", collections: [], profile: "" };
  }
}

function useChoices() {
  const [choices, setChoices] = useState({ models: [], profiles: [], collections: [] });
  useEffect(() => {
    Promise.allSettled([get("/api/models"), get("/v1/models"), get("/api/collections")]).then(
      ([models, openai, collections]) => {
        const ids = openai.status === "fulfilled" ? openai.value.data.map((m) => m.id) : [];
        setChoices({
          models: models.status === "fulfilled" ? models.value.filter((m) => m.installed) : [],
          aliases: ids.filter((i) => !i.includes(":") && !["agent", "consensus"].includes(i)),
          profiles: ids.filter((i) => i.startsWith("consensus:")).map((i) => i.slice(10)),
          collections: collections.status === "fulfilled" ? collections.value : [],
        });
      },
    );
  }, []);
  return choices;
}

function Conversation({ id, onChanged, onCreated }) {
  const [detail, setDetail] = useState(null);
  const [loadError, setLoadError] = useState(null);
  const [live, setLive] = useState(null);
  const [error, setError] = useState(null);
  const [settings, setSettings] = useState(loadSettings);
  // A new conversation may be a temporary chat: memory neither recalled nor learnt.
  const [temporary, setTemporary] = useState(false);
  const choices = useChoices();
  const [source, setSource] = useState(null);
  const pending = useRef({ text: "", frame: 0 });
  const controller = useRef(null);
  const conversationId = useRef(id);
  const mounted = useRef(true);
  const stopping = useRef(null);

  const reload = useCallback(async (which = conversationId.current) => {
    if (!which) return;
    try {
      const loaded = await get(`/api/conversations/${which}`);
      if (!mounted.current) return;
      setDetail(loaded);
      setLoadError(null);
    } catch (e) {
      if (mounted.current) setLoadError(e);
      throw e;
    }
  }, []);

  useEffect(() => {
    conversationId.current = id;
    if (id) reload(id).catch(() => {});
  }, [id, reload]);
  useEffect(
    () => () => {
      // Leaving closes the stream, which stops the answer (the API's rule).
      mounted.current = false;
      controller.current?.abort();
    },
    [],
  );

  useEffect(() => {
    localStorage.setItem(SETTINGS, JSON.stringify(settings));
  }, [settings]);

  const tree = useMemo(() => (detail ? conversationTree(detail) : null), [detail]);

  // Tokens arrive faster than frames: the text shown grows once per animation frame.
  const flush = () => {
    pending.current.frame = 0;
    const text = pending.current.text;
    setLive((l) => (l ? { ...l, text } : l));
  };

  const onEvent = (event) => {
    switch (event.type) {
      case "message":
        if (!conversationId.current) {
          conversationId.current = event.conversation_id;
        }
        setLive((l) => ({ ...l, userId: event.user_message_id, assistantId: event.assistant_message_id }));
        break;
      case "token":
        pending.current.text += event.text;
        if (!pending.current.frame) pending.current.frame = requestAnimationFrame(flush);
        break;
      case "sources":
        setLive((l) => ({ ...l, sources: event.sources }));
        break;
      case "backend":
        setLive((l) => ({ ...l, backend: event }));
        break;
      case "done":
        setLive((l) => ({ ...l, done: event }));
        break;
      case "error":
        setLive((l) => ({ ...l, error: event }));
        break;
      case "usage":
        break;
      default:
        // route, reformulation, worker, thought, tool_call, tool_result, approval
        setLive((l) => ({ ...l, steps: [...(l?.steps || []), event] }));
    }
  };

  /** Stream one answer; false when it failed before the server took the question. */
  const run = async (path, body, base) => {
    setError(null);
    pending.current = { text: base.text || "", frame: 0 };
    let started = false;
    let failedEvent = null;
    setLive({ steps: [], ...base });
    announce(t("chat.generating"));
    controller.current = new AbortController();
    let failed = null;
    let outcome = {};
    try {
      outcome = await stream(
        path,
        body,
        (event) => {
          if (event.type === "message") started = true;
          if (event.type === "error") failedEvent = event;
          onEvent(event);
        },
        controller.current.signal,
      );
    } catch (e) {
      failed = e;
    }
    clearTimeout(stopping.current);
    stopping.current = null;
    cancelAnimationFrame(pending.current.frame);
    if (!mounted.current || outcome.aborted || failed?.name === "AbortError") return started;
    if (!failed && !outcome.ended) failed = new ApiError(0, { code: "stream_cut" });
    const text = pending.current.text;
    const which = conversationId.current;
    if (failed) setError(failed);
    if (which) {
      try {
        await reload(which);
        if (which !== id) navigate(`/chat/${which}`);
      } catch {
        // the turn stays on screen as streamed; the error above says what happened
      }
    }
    if (!mounted.current) return started;
    setLive(null);
    onChanged();
    if (failed || failedEvent) {
      announce(failed ? errorText(failed) : `${t("chat.failed")} — ${failedEvent.message}`);
    } else {
      announce(`${t("chat.answered")} ${plainText(text).slice(0, 1000)}`);
    }
    return started || !failed;
  };

  const generation = () => {
    const body = { mode: settings.mode };
    if (settings.model) body.model = settings.model;
    if (settings.mode === "rag" && settings.collections.length) body.collections = settings.collections;
    if (settings.mode === "consensus" && settings.profile) body.profile = settings.profile;
    return body;
  };

  const send = async (content) => {
    let which = conversationId.current;
    let created = null;
    if (!which) {
      try {
        // A title of whole characters (an emoji cut in two is refused).
        created = await post("/api/conversations", {
          title: Array.from(content).slice(0, 80).join(""),
          temporary,
        });
        which = conversationId.current = created.id;
        onCreated(created.id);
      } catch (e) {
        setError(e);
        return false;
      }
    }
    const taken = await run(
      `/api/conversations/${which}/messages`,
      { content, ...generation() },
      { userText: content, parentIndex: tree ? tree.path.length : 0 },
    );
    if (!taken && created) {
      // Refused before anything was stored (quota, a model gone): no empty conversation.
      conversationId.current = null;
      del(`/api/conversations/${created.id}`).catch(() => {});
      onChanged();
    }
    return taken;
  };

  const edit = (message, content) =>
    run(
      `/api/conversations/${id}/messages/${message.id}/edit`,
      { content, ...generation() },
      { userText: content, parentIndex: tree.path.indexOf(message) },
    );

  const regenerate = (message) => {
    const index = tree.path.indexOf(message);
    return run(`/api/conversations/${id}/messages/${message.id}/regenerate`, generation(), {
      parentIndex: index,
    });
  };

  const decide = (message, approval, approve) =>
    run(
      `/api/agent/approvals/${approval.id}/${approve ? "approve" : "deny"}`,
      {},
      {
        parentIndex: tree.path.indexOf(message),
        resumed: message,
        assistantId: message.id,
        steps: message.steps || [],
        text: "",
      },
    );

  const stop = async () => {
    const target = live?.assistantId;
    if (stopping.current || !target || !conversationId.current) {
      controller.current?.abort(); // a second press, or nothing to cancel yet
      return;
    }
    // The server ends the stream; if it does not within a few seconds, close it.
    stopping.current = setTimeout(() => controller.current?.abort(), 5000);
    try {
      await post(`/api/conversations/${conversationId.current}/messages/${target}/cancel`);
    } catch {
      controller.current?.abort(); // not live any more, or not reachable
    }
  };

  const switchBranch = async (message, step) => {
    const siblings = tree.children.get(message.parent_id || "") || [];
    const next = siblings[siblings.indexOf(message) + step];
    if (!next) return;
    const leaf = deepestLeaf(tree, next);
    try {
      await patch(`/api/conversations/${id}`, { active_leaf_id: leaf.id });
      await reload(id);
    } catch (e) {
      setError(e);
    }
  };

  // What the list shows: the active path, with the turn in progress in place of what follows.
  const items = useMemo(() => {
    const path = tree ? tree.path : [];
    if (!live) return path;
    const kept = path.slice(0, Math.max(0, live.parentIndex));
    const shown = [...kept];
    if (live.userText !== undefined) {
      shown.push({ id: live.userId || "pending-user", role: "user", content: live.userText, status: "complete" });
    }
    const resumed = live.resumed;
    shown.push({
      id: live.assistantId || "live",
      role: "assistant",
      content: (resumed ? resumed.content : "") + (live.text || ""),
      status: live.error ? "error" : "generating",
      sources: live.sources || null,
      steps: live.steps,
      live: true,
      error: live.error?.message,
      model: live.backend?.backend_model,
      backend: live.backend?.backend,
    });
    return shown;
  }, [tree, live]);

  // Handlers that never change identity: the list's row cache survives re-renders.
  const latest = useRef(null);
  latest.current = { edit, regenerate, switchBranch, decide };
  const handlers = useMemo(
    () => ({
      onEdit: (...a) => latest.current.edit(...a),
      onRegenerate: (...a) => latest.current.regenerate(...a),
      onBranch: (...a) => latest.current.switchBranch(...a),
      onDecide: (...a) => latest.current.decide(...a),
    }),
    [],
  );

  const busy = !!live;
  return html`<section class="conversation" aria-label=${detail?.title || t("chat.new")}>
    <${Alert} error=${loadError} />
    ${id && !detail && !loadError && html`<${Loading} />`}
    ${!id && !live && html`<div class="welcome"><h1>${t("chat.welcome")}</h1><p>${t("chat.welcomeHint")}</p>
      <label class="check temporary"><input type="checkbox" checked=${temporary} onChange=${(e) => setTemporary(e.currentTarget.checked)} />
        ${t("chat.temporary")}</label></div>`}
    ${detail?.temporary && html`<p class="badge soft temporary-badge" role="note">${t("chat.temporaryOn")}</p>`}
    ${(detail || live) &&
    html`<${MessageList}
      items=${items}
      tree=${tree}
      busy=${busy}
      onEdit=${handlers.onEdit}
      onRegenerate=${handlers.onRegenerate}
      onBranch=${handlers.onBranch}
      onDecide=${handlers.onDecide}
      onSource=${setSource}
    />`}
    <${Alert} error=${error} />
    <${Composer}
      busy=${busy}
      onSend=${send}
      onStop=${stop}
      settings=${settings}
      setSettings=${setSettings}
      choices=${choices}
    />
    <${SourceDialog} source=${source} onClose=${() => setSource(null)} />
  </section>`;
}

// ---------------------------------------------------------------------------------------
// The message list, virtualised.

function MessageList({ items, tree, busy, onEdit, onRegenerate, onBranch, onDecide, onSource }) {
  const scroller = useRef(null);
  const [, setTick] = useState(0);
  const virtualizer = useMemo(
    () =>
      new Virtualizer({
        count: items.length,
        getScrollElement: () => scroller.current,
        estimateSize: () => 140,
        overscan: 2,
        anchorTo: "end",
        followOnAppend: true,
        observeElementRect,
        observeElementOffset,
        scrollToFn: elementScroll,
        measureElement,
        // Size changes are read once per frame, not one re-render per row.
        useAnimationFrameWithResizeObserver: true,
        getItemKey: (index) => items[index]?.id ?? index,
        onChange: () => setTick((n) => n + 1),
      }),
    [],
  );
  virtualizer.setOptions({
    ...virtualizer.options,
    count: items.length,
    getItemKey: (index) => items[index]?.id ?? index,
  });
  useLayoutEffect(() => virtualizer._didMount(), [virtualizer]);
  useLayoutEffect(() => {
    virtualizer._willUpdate();
  });
  const opened = useRef(false);
  useLayoutEffect(() => {
    if (!opened.current && items.length) {
      opened.current = true;
      virtualizer.scrollToIndex(items.length - 1, { align: "end" });
    }
  }, [items.length]);
  const last = items.at(-1);
  useLayoutEffect(() => {
    const list = scroller.current;
    const atEnd = list && list.scrollHeight - list.scrollTop - list.clientHeight < 120;
    // Follow the answer being written, unless the reader scrolled up to read.
    if (last?.live && atEnd) virtualizer.scrollToIndex(items.length - 1, { align: "end" });
  }, [last?.content?.length]);

  // A row already rendered with the same message and context is handed back as the same
  // element, which Preact does not diff again: scrolling renders only the rows that appear.
  const rendered = useRef(new WeakMap());
  const context = useRef(null);
  const handlers = { tree, busy, onEdit, onRegenerate, onBranch, onDecide, onSource };
  if (!context.current || Object.keys(handlers).some((k) => handlers[k] !== context.current[k])) {
    context.current = handlers;
    rendered.current = new WeakMap();
  }
  const row = (message, isLast) => {
    const known = rendered.current.get(message);
    if (known && known.isLast === isLast) return known.element;
    const element = html`<${Message} message=${message} isLast=${isLast} ...${context.current} />`;
    rendered.current.set(message, { isLast, element });
    return element;
  };
  const measure = useCallback((node) => node && virtualizer.measureElement(node), [virtualizer]);

  return html`<div class="messages" ref=${scroller} role="log" aria-live="off" aria-label=${t("chat.messages")} tabindex="0">
    <div class="messages-inner" style=${{ height: `${virtualizer.getTotalSize()}px` }}>
      ${virtualizer.getVirtualItems().map((virtual) => {
        const message = items[virtual.index];
        if (!message) return null;
        return html`<div
          key=${virtual.key}
          data-index=${virtual.index}
          ref=${measure}
          class="message-row"
          style=${{ transform: `translateY(${virtual.start}px)` }}
        >
          ${row(message, virtual.index === items.length - 1)}
        </div>`;
      })}
    </div>
  </div>`;
}

function BranchSwitcher({ message, tree, busy, onBranch }) {
  if (!tree || message.live) return null;
  const siblings = tree.children.get(message.parent_id || "") || [];
  if (siblings.length < 2) return null;
  const index = siblings.indexOf(message);
  if (index < 0) return null;
  return html`<div class="branches" role="group" aria-label=${t("chat.branches")}>
    <button type="button" class="icon" disabled=${busy || index === 0} aria-label=${t("chat.previousBranch")}
      onClick=${() => onBranch(message, -1)}>‹</button>
    <span>${t("chat.branchOf", { n: index + 1, total: siblings.length })}</span>
    <button type="button" class="icon" disabled=${busy || index === siblings.length - 1} aria-label=${t("chat.nextBranch")}
      onClick=${() => onBranch(message, 1)}>›</button>
  </div>`;
}

const Message = ({ message, tree, busy, isLast, onEdit, onRegenerate, onBranch, onDecide, onSource }) => {
  const [editing, setEditing] = useState(false);
  const [hover, setHover] = useState(null);
  const user = message.role === "user";
  const steps = message.steps || [];
  const route = steps.find((s) => s.type === "route");
  const workers = steps.filter((s) => s.type === "worker" && s.status !== "started");
  const consensus = steps.find((s) => s.type === "consensus");
  const remembered = steps.find((s) => s.type === "memory");
  const agentSteps = steps.filter((s) => ["thought", "tool_call", "tool_result", "approval"].includes(s.type));
  const sources = message.sources || null;
  const byNumber = (n) => sources?.find((s) => String(s.n) === String(n));

  const onMarkdownClick = (e) => {
    const copy = e.target.closest("button.copy");
    if (copy) {
      const code = copy.parentElement.querySelector("code")?.innerText ?? "";
      navigator.clipboard?.writeText(code);
      copy.textContent = t("chat.copied");
      setTimeout(() => (copy.textContent = t("chat.copy")), 1500);
      return;
    }
    const cite = e.target.closest("button.cite");
    if (cite) onSource(byNumber(cite.dataset.n));
  };
  const showCitation = (e) => {
    const cite = e.target.closest?.("button.cite");
    if (!cite) return;
    const box = cite.getBoundingClientRect();
    const host = e.currentTarget.getBoundingClientRect();
    setHover({ source: byNumber(cite.dataset.n), x: box.left - host.left, y: box.bottom - host.top });
  };

  if (user) {
    return html`<article class="message user" aria-label=${t("chat.youSaid")}>
      ${editing
        ? html`<${EditForm} message=${message} onCancel=${() => setEditing(false)}
            onSave=${(text) => {
              setEditing(false);
              onEdit(message, text);
            }} />`
        : html`<div class="bubble">${message.content}</div>`}
      <div class="message-actions">
        <${BranchSwitcher} message=${message} tree=${tree} busy=${busy} onBranch=${onBranch} />
        ${!editing && !message.id.startsWith("pending") &&
        html`<button type="button" class="small ghost" disabled=${busy} onClick=${() => setEditing(true)}>${t("chat.edit")}</button>`}
      </div>
    </article>`;
  }
  const statusNote =
    message.status === "cancelled" || message.finish_reason === "cancelled"
      ? t("chat.stopped")
      : message.status === "error" || message.status === "incomplete"
        ? `${t("chat.failed")}${message.error ? ` — ${message.error}` : ""}`
        : null;
  return html`<article class="message assistant" aria-label=${t("chat.answer")} aria-busy=${message.live ? "true" : "false"}>
    ${route && html`<${RouteChip} route=${route} reformulation=${steps.find((s) => s.type === "reformulation")} />`}
    ${remembered?.memories?.length > 0 && html`<${MemoryChips} memories=${remembered.memories} />`}
    ${agentSteps.length > 0 &&
    html`<${AgentTimeline} steps=${agentSteps} message=${message} busy=${busy} canDecide=${isLast} onDecide=${onDecide} />`}
    ${workers.length > 0 && html`<${ConsensusView} workers=${workers} summary=${consensus} />`}
    <div class="answer" onMouseOver=${showCitation} onFocusIn=${showCitation}
      onMouseLeave=${() => setHover(null)} onFocusOut=${() => setHover(null)}>
      ${message.content
        ? html`<${Markdown} text=${message.content} streaming=${!!message.live} sources=${sources} onClick=${onMarkdownClick} />`
        : message.live && html`<p class="thinking">${t("chat.thinking")}</p>`}
      ${hover?.source && html`<${CitationCard} source=${hover.source} x=${hover.x} y=${hover.y} />`}
    </div>
    ${statusNote && html`<p class="status-note" role=${message.live ? "alert" : null}>${statusNote}</p>`}
    ${sources?.length > 0 && html`<${SourceList} sources=${sources} onSource=${onSource} />`}
    <div class="message-actions">
      <${BranchSwitcher} message=${message} tree=${tree} busy=${busy} onBranch=${onBranch} />
      ${message.model && html`<span class="meta">${message.model}${message.latency_ms ? ` · ${formatNumber(message.latency_ms / 1000, { maximumFractionDigits: 1 })} s` : ""}</span>`}
      ${!message.live &&
      html`<button type="button" class="small ghost" onClick=${() => navigator.clipboard?.writeText(message.content)}>${t("chat.copy")}</button>
        <button type="button" class="small ghost" disabled=${busy} onClick=${() => onRegenerate(message)}>${t("chat.regenerate")}</button>`}
    </div>
  </article>`;
};

function EditForm({ message, onSave, onCancel }) {
  const [text, setText] = useState(message.content);
  return html`<form
    class="edit"
    onSubmit=${(e) => {
      e.preventDefault();
      if (text.trim()) onSave(text);
    }}
  >
    <textarea aria-label=${t("chat.editMessage")} value=${text} rows="3" ref=${(el) => el?.focus()}
      onInput=${(e) => setText(e.currentTarget.value)}
      onKeyDown=${(e) => e.key === "Escape" && onCancel()}></textarea>
    <div class="actions">
      <button type="button" class="ghost small" onClick=${onCancel}>${t("common.cancel")}</button>
      <button type="submit" class="primary small">${t("chat.saveAndSend")}</button>
    </div>
  </form>`;
}

function RouteChip({ route, reformulation }) {
  const parts = [t(`mode.${route.mode}`)];
  if (route.intent) parts.push(t("chat.intent", { intent: route.intent }));
  if (route.confidence != null) parts.push(`${Math.round(route.confidence * 100)} %`);
  if (route.profile) parts.push(route.profile);
  return html`<details class="route">
    <summary>${t("chat.routeValue", { value: parts.join(" · ") })}</summary>
    ${route.reason && html`<p>${route.reason}</p>`}
    ${route.collections?.length > 0 && html`<p>${t("chat.collections")}: ${route.collections.join(", ")}</p>`}
    ${reformulation && html`<p>${t("chat.reformulated")}: ${reformulation.query}</p>`}
  </details>`;
}

/** The memories of the user this answer was given with. */
function MemoryChips({ memories }) {
  return html`<details class="memory-chips">
    <summary>${t("memory.remembered", { count: memories.length })}</summary>
    <ul>
      ${memories.map(
        (m) => html`<li key=${m.id}><a class="chip" href=${`#/memory?focus=${m.id}`} title=${t(`memory.class.${m.retention}`)}>${m.pinned ? "📌 " : ""}${m.text}</a></li>`,
      )}
    </ul>
  </details>`;
}

function AgentTimeline({ steps, message, busy, canDecide, onDecide }) {
  const results = new Map(steps.filter((s) => s.type === "tool_result").map((s) => [s.id, s]));
  return html`<ol class="timeline" aria-label=${t("agent.steps")}>
    ${steps.map((step, i) => {
      if (step.type === "thought") return html`<li key=${i} class="thought">💭 ${step.text}</li>`;
      if (step.type === "tool_call") {
        const result = results.get(step.id);
        return html`<li key=${i} class="tool">
          <details open=${!result}>
            <summary>
              <strong>${step.tool}</strong>
              ${result ? html` · <span class=${`outcome ${result.status}`}>${tOr(`agent.status.${result.status}`, result.status)}</span> · ${formatNumber(result.duration_ms)} ms` : html` · ${t("agent.running")}`}
            </summary>
            <p class="label">${t("agent.arguments")}</p>
            <pre class="args">${JSON.stringify(step.arguments, null, 2)}</pre>
            ${result && html`<p class="label">${t("agent.result")}</p><pre class="result">${result.output}</pre>`}
          </details>
        </li>`;
      }
      if (step.type === "approval") {
        const decided = results.get(step.call_id);
        const done = decided && decided.status !== "pending";
        return html`<li key=${i} class="approval" role="group" aria-label=${t("agent.approvalFor", { tool: step.tool })}>
          <p>${t("agent.approvalNeeded", { tool: step.tool, risk: step.risk })}</p>
          <pre class="args">${JSON.stringify(step.arguments, null, 2)}</pre>
          ${!done && canDecide && !message.live &&
          html`<div class="actions">
            <button type="button" class="primary small" disabled=${busy} onClick=${() => onDecide(message, step, true)}>${t("agent.approve")}</button>
            <button type="button" class="danger small" disabled=${busy} onClick=${() => onDecide(message, step, false)}>${t("agent.deny")}</button>
          </div>`}
        </li>`;
      }
      return null;
    })}
  </ol>`;
}

function ConsensusView({ workers, summary }) {
  const winner = summary?.workers?.find((w) => w.worker === summary.winner);
  const keyOf = (worker) => summary?.workers?.find((w) => w.worker === worker.worker)?.key;
  return html`<section class="consensus" aria-label=${t("consensus.title")}>
    ${summary &&
    html`<p class="consensus-summary">
      ${t("consensus.summary", {
        strategy: summary.strategy,
        agreement: Math.round((summary.agreement || 0) * 100),
        answered: summary.answered,
        total: summary.workers.length,
      })}
    </p>`}
    <div class="workers">
      ${workers.map((worker) => {
        const won = summary && worker.worker === summary.winner;
        const agrees = winner && !won && keyOf(worker) && keyOf(worker) === winner.key;
        return html`<article key=${worker.worker} class=${`worker ${won ? "won" : ""}`} aria-label=${worker.name}>
          <header>
            <strong>${worker.name}</strong> <span class="meta">${worker.model}</span>
            ${won && html`<span class="badge">${t("consensus.chosen")}</span>`}
            ${agrees && html`<span class="badge soft">${t("consensus.agrees")}</span>`}
          </header>
          ${worker.status === "failed" || worker.error
            ? html`<p class="status-note">${worker.error || t("consensus.failed")}</p>`
            : html`<p class="worker-answer">${worker.answer}</p>`}
          <footer class="meta">
            ${formatNumber(worker.duration_ms)} ms
            ${worker.confidence != null ? ` · ${t("consensus.confidence")} ${Math.round(worker.confidence * 100)} %` : ""}
          </footer>
        </article>`;
      })}
    </div>
  </section>`;
}

function pages(source) {
  return source.page_end && source.page_end !== source.page
    ? t("source.pages", { from: source.page, to: source.page_end })
    : t("source.page", { page: source.page });
}

function CitationCard({ source, x, y }) {
  return html`<div class="citation-card" role="tooltip" style=${{ left: `${Math.max(0, x - 20)}px`, top: `${y + 4}px` }}>
    <strong>${sourceTitle(source)}</strong>
    <span class="meta">${t("source.where", { version: source.version, location: source.location || "" })}
      ${source.page && !source.location ? ` · ${pages(source)}` : ""}</span>
    <blockquote>${source.snippet}</blockquote>
  </div>`;
}

function SourceList({ sources, onSource }) {
  return html`<details class="sources">
    <summary>${t("chat.sources", { n: sources.length })}</summary>
    <ol>
      ${sources.map(
        (s) => html`<li key=${s.n} class=${s.cited ? "cited" : ""}>
          <button type="button" class="link" onClick=${() => onSource(s)}>
            [${s.n}] ${sourceTitle(s)} — ${s.location}
          </button>
          ${s.cited && html` <span class="badge soft">${t("chat.cited")}</span>`}
        </li>`,
      )}
    </ol>
  </details>`;
}

/** The passage a citation points to, inside its document version, and the original file. */
function SourceDialog({ source, onClose }) {
  const [chunks, error] = useLoad(
    () => (source ? get(`/api/documents/${source.document_id}/chunks?version=${source.version_id}`) : null),
    [source?.document_id, source?.version_id, source?.char_start],
  );
  const passage = useMemo(() => {
    if (!chunks || !source) return null;
    return (
      chunks.find((c) => c.char_start <= source.char_start && source.char_start < c.char_end) ||
      chunks.find((c) => c.text?.includes(source.snippet?.slice(0, 40))) ||
      null
    );
  }, [chunks, source]);
  return html`<${Dialog} open=${!!source} title=${source ? sourceTitle(source) : ""} onClose=${onClose} wide>
    ${source &&
    html`<p class="meta">${t("source.where", { version: source.version, location: source.location || "" })}
        ${source.page && !source.location ? ` · ${pages(source)}` : ""}
        ${source.heading_path?.length ? ` · ${source.heading_path.join(" › ")}` : ""}</p>
      <${Alert} error=${error} />
      <blockquote class="passage"><mark>${passage ? passage.text : source.snippet}</mark></blockquote>
      <p><a href=${`/api/documents/${source.document_id}/file?version=${source.version_id}`} download>
        ${t("source.download")}</a></p>`}
  </${Dialog}>`;
}

// ---------------------------------------------------------------------------------------
// The composer: the message, the mode and model, send and stop.

function Composer({ busy, onSend, onStop, settings, setSettings, choices }) {
  const [text, setText] = useState("");
  const area = useRef(null);
  const submit = async () => {
    const content = text.trim();
    if (!content || busy) return;
    setText("");
    const sent = await onSend(content);
    if (sent === false) setText(content);
    area.current?.focus();
  };
  const set = (patchValue) => setSettings((s) => ({ ...s, ...patchValue }));
  const toggleCollection = (name) =>
    set({
      collections: settings.collections.includes(name)
        ? settings.collections.filter((c) => c !== name)
        : [...settings.collections, name],
    });
  return html`<form
    class="composer"
    aria-label=${t("chat.composer")}
    onSubmit=${(e) => {
      e.preventDefault();
      submit();
    }}
  >
    <div class="composer-options">
      <label>
        <span aria-hidden="true">${t("chat.mode")}</span>
        <select aria-label=${t("chat.mode")} value=${settings.mode} onChange=${(e) => set({ mode: e.currentTarget.value })}>
          ${MODES.map((m) => html`<option value=${m}>${t(`mode.${m}`)}</option>`)}
        </select>
      </label>
      <label>
        <span aria-hidden="true">${t("chat.model")}</span>
        <select aria-label=${t("chat.model")} value=${settings.model} onChange=${(e) => set({ model: e.currentTarget.value })}>
          <option value="">${t("chat.defaultModel")}</option>
          ${(choices.aliases || []).filter((a) => a !== "default").map((a) => html`<option value=${a}>${a}</option>`)}
          ${choices.models
            .filter((m) => !(choices.aliases || []).includes(m.id))
            .map((m) => html`<option value=${m.id}>${m.id}</option>`)}
        </select>
      </label>
      ${settings.mode === "consensus" &&
      html`<label>
        <span aria-hidden="true">${t("chat.profile")}</span>
        <select aria-label=${t("chat.profile")} value=${settings.profile} onChange=${(e) => set({ profile: e.currentTarget.value })}>
          <option value="">${t("chat.defaultProfile")}</option>
          ${choices.profiles.map((p) => html`<option value=${p}>${p}</option>`)}
        </select>
      </label>`}
      ${settings.mode === "rag" &&
      html`<fieldset class="collections">
        <legend>${t("chat.collections")}</legend>
        ${choices.collections.length === 0 && html`<a href="#/knowledge">${t("chat.noCollections")}</a>`}
        ${choices.collections.map(
          (c) => html`<label class="check"><input type="checkbox" checked=${settings.collections.includes(c.name)}
            onChange=${() => toggleCollection(c.name)} /> ${c.name}</label>`,
        )}
      </fieldset>`}
    </div>
    <div class="composer-input">
      <textarea
        ref=${area}
        rows="2"
        aria-label=${t("chat.message")}
        placeholder=${t("chat.placeholder")}
        value=${text}
        onInput=${(e) => setText(e.currentTarget.value)}
        onKeyDown=${(e) => {
          if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
            e.preventDefault();
            submit();
          }
        }}
      ></textarea>
      ${busy
        ? html`<button type="button" class="danger" onClick=${onStop}>${t("chat.stop")}</button>`
        : html`<button type="submit" class="primary" disabled=${!text.trim()}>${t("chat.send")}</button>`}
    </div>
  </form>`;
}

