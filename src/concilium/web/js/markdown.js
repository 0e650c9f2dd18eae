// Answers as Markdown: marked renders, DOMPurify sanitises, highlight.js colours code
// (loaded on the first code block). A streamed answer is rendered incrementally: the
// blocks already complete are rendered once and kept; only the last one is redone, at most
// once per animation frame, never on every token.

import { html } from "./ui.js";
import { useLayoutEffect, useRef } from "preact/hooks";
import { Marked } from "marked";
import DOMPurify from "dompurify";
import { t } from "./i18n.js";

const marked = new Marked({ gfm: true, breaks: false, async: false });
// Named properties are prefixed (user-content-…): an answer cannot reuse the page's ids.
const SANITIZE = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["style", "form", "input"],
  SANITIZE_NAMED_PROPS: true,
};
const CODE = { ALLOWED_TAGS: ["span"], ALLOWED_ATTR: ["class"] };
// Safari has no requestIdleCallback: a short timeout stands in.
const idle = globalThis.requestIdleCallback?.bind(globalThis) ||
  ((run) => setTimeout(() => run({ didTimeout: true, timeRemaining: () => 0 }), 16));

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

const cache = new Map();
const CACHE_SIZE = 400;

/** The words of a Markdown text, as a screen reader should hear them. */
export function plainText(text) {
  const holder = document.createElement("div");
  holder.innerHTML = renderMarkdown(text);
  return holder.textContent.replace(/\s+/g, " ").trim();
}

/** Sanitised HTML for a Markdown text (cached: long conversations reopen their messages). */
export function renderMarkdown(text) {
  let out = cache.get(text);
  if (out === undefined) {
    out = DOMPurify.sanitize(marked.parse(text), SANITIZE);
    if (cache.size >= CACHE_SIZE) cache.delete(cache.keys().next().value);
    cache.set(text, out);
  }
  return out;
}

/** Where a growing text can be cut: after the last blank line outside a code fence. */
export function stableEnd(text) {
  let fenced = false;
  let cut = 0;
  let position = 0;
  for (const line of text.split("\n")) {
    const next = position + line.length + 1;
    if (/^\s*(```|~~~)/.test(line)) fenced = !fenced;
    else if (!fenced && line.trim() === "" && next <= text.length) cut = next;
    position = next;
  }
  return cut;
}

/** Incremental rendering of one growing answer. */
export class StreamingMarkdown {
  constructor() {
    this.stable = "";
    this.stableHtml = "";
  }

  render(text) {
    const end = stableEnd(text);
    if (end > this.stable.length && text.startsWith(this.stable)) {
      const added = text.slice(this.stable.length, end);
      this.stableHtml += DOMPurify.sanitize(marked.parse(added), SANITIZE);
      this.stable = text.slice(0, end);
    }
    const tail = text.slice(this.stable.length);
    return this.stableHtml + (tail ? DOMPurify.sanitize(marked.parse(tail), SANITIZE) : "");
  }
}

let worker = null;
let nextId = 0;
const blocks = new Map();

/** highlight.js's light and dark styles, the one of the page's theme enabled. */
function codeStyles() {
  const links = ["light", "dark"].map((theme) => {
    const link = document.createElement("link");
    link.rel = "stylesheet";
    link.href = `/assets/vendor/highlight-${theme}.css`;
    link.dataset.codeTheme = theme;
    document.head.append(link);
    return link;
  });
  const sync = () => {
    const chosen = document.documentElement.dataset.theme;
    const dark = chosen ? chosen === "dark" : matchMedia("(prefers-color-scheme: dark)").matches;
    for (const link of links) link.disabled = (link.dataset.codeTheme === "dark") !== dark;
  };
  sync();
  addEventListener("concilium:theme", sync);
}

/** Colour the code blocks under root (in a worker; each block once). */
function highlight(root) {
  const found = root.querySelectorAll("pre code:not([data-highlighted])");
  if (!found.length) return;
  if (!worker) {
    codeStyles();
    worker = new Worker("/assets/js/highlight-worker.js", { type: "module" });
    worker.onmessage = ({ data }) => {
      const entry = blocks.get(data.id);
      blocks.delete(data.id);
      if (!entry || !entry.block.isConnected || entry.block.textContent !== entry.code) return;
      entry.block.innerHTML = DOMPurify.sanitize(data.html, CODE);
      entry.block.classList.add("hljs");
      if (data.language) entry.block.classList.add(`language-${data.language}`);
    };
  }
  for (const block of found) {
    block.dataset.highlighted = "yes";
    const language = /language-([\w+-]+)/.exec(block.className)?.[1] || "";
    const id = nextId++;
    const code = block.textContent;
    blocks.set(id, { block, code });
    worker.postMessage({ id, code, language });
  }
}

function addCopyButtons(root) {
  for (const pre of root.querySelectorAll("pre")) {
    if (pre.querySelector(":scope > button.copy")) continue;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy";
    button.textContent = t("chat.copy");
    button.setAttribute("aria-label", t("chat.copyCode"));
    pre.prepend(button);
  }
}

/** [n] markers in the text (outside code) become buttons naming their source. */
function markCitations(root, sources) {
  if (!sources?.length) return;
  const byNumber = new Map(sources.map((s) => [String(s.n), s]));
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  const nodes = [];
  while (walker.nextNode()) {
    const node = walker.currentNode;
    if (/\[\d{1,3}\]/.test(node.data) && !node.parentElement.closest("code, pre, button")) {
      nodes.push(node);
    }
  }
  for (const node of nodes) {
    const parts = node.data.split(/(\[\d{1,3}\])/);
    const fragment = document.createDocumentFragment();
    for (const part of parts) {
      const match = /^\[(\d{1,3})\]$/.exec(part);
      const source = match && byNumber.get(match[1]);
      if (!source) {
        fragment.append(part);
        continue;
      }
      const button = document.createElement("button");
      button.type = "button";
      button.className = "cite";
      button.dataset.n = match[1];
      button.textContent = match[1];
      button.setAttribute("aria-label", t("chat.citation", { n: match[1], title: sourceTitle(source) }));
      fragment.append(button);
    }
    node.replaceWith(fragment);
  }
}

export function sourceTitle(source) {
  return source.title || String(source.source || "").split(/[\\/]/).pop() || t("chat.source");
}

// Messages scrolled into view are first shown as plain text and turned into Markdown when
// the browser is idle, a few per idle period: a fast scroll through a long conversation
// never renders a screenful of Markdown in one frame.
const waiting = new Map();
let idleScheduled = false;

function whenIdle(root, work) {
  waiting.set(root, work);
  if (idleScheduled) return;
  idleScheduled = true;
  const run = (deadline) => {
    // Never more than a few milliseconds, even when the browser was never idle.
    const until = performance.now() + (deadline.didTimeout ? 6 : Math.min(12, deadline.timeRemaining()));
    for (const [node, job] of waiting) {
      if (performance.now() >= until) break;
      waiting.delete(node);
      if (node.isConnected) job();
    }
    idleScheduled = waiting.size > 0;
    if (idleScheduled) idle(run, { timeout: 300 });
  };
  idle(run, { timeout: 300 });
}

function finish(root, text, sources) {
  root.innerHTML = renderMarkdown(text);
  addCopyButtons(root);
  markCitations(root, sources);
  highlight(root);
}

/** Rendered Markdown; `streaming` renders incrementally and leaves code uncoloured. */
export function Markdown({ text, streaming = false, sources = null, onClick }) {
  const ref = useRef(null);
  const incremental = useRef(null);
  useLayoutEffect(() => {
    const root = ref.current;
    if (!root) return;
    waiting.delete(root);
    root.classList.remove("plain");
    if (streaming) {
      incremental.current ??= new StreamingMarkdown();
      root.innerHTML = incremental.current.render(text);
      return;
    }
    if (incremental.current || cache.has(text)) {
      // The answer just streamed (its blocks are rendered) or seen before: at once.
      incremental.current = null;
      finish(root, text, sources);
      return;
    }
    root.textContent = text;
    root.classList.add("plain");
    whenIdle(root, () => {
      root.classList.remove("plain");
      finish(root, text, sources);
    });
  }, [text, streaming, sources]);
  return html`<div class="markdown" ref=${ref} onClick=${onClick}></div>`;
}
