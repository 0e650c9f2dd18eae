// Shared pieces: the template tag, errors in plain words, form fields, dialogs, tabs.

import { h } from "preact";
import { useCallback, useEffect, useId, useRef, useState } from "preact/hooks";
import htm from "htm";
import { t } from "./i18n.js";

export const html = htm.bind(h);

const KNOWN = new Set([
  "offline",
  "unauthorized",
  "forbidden",
  "not_found",
  "conflict",
  "payload_too_large",
  "rate_limited",
  "quota_exceeded",
  "model_not_found",
  "model_not_installed",
  "backend_error",
  "backend_timeout",
  "backend_unavailable",
  "budget_exceeded",
  "agent_output_invalid",
  "validation_error",
  "invalid_request",
  "csrf",
  "stream_cut",
  "cookie_refused",
]);

/** What went wrong, in plain words (the server's detail kept as the second line). */
export function errorText(error) {
  if (!error) return "";
  let code = error.code || "";
  if (error.status === 413) code = "payload_too_large";
  else if (error.status === 422) code = "validation_error";
  else if (error.status >= 500 && !code.startsWith("backend")) code = "backend_error";
  const headline = KNOWN.has(code) ? t(`error.${code}`, { seconds: error.retryAfter ?? "?" }) : t("error.unknown");
  const detail = error.problem?.detail || (error.status ? "" : error.message);
  return detail && detail !== headline ? `${headline} — ${detail}` : headline;
}

export function Alert({ error, children, kind = "error" }) {
  if (!error && !children) return null;
  return html`<div class=${`alert ${kind}`} role=${kind === "error" ? "alert" : "status"}>
    ${error ? errorText(error) : children}
  </div>`;
}

export function Field({ label, hint, children, id }) {
  const auto = useId();
  const fieldId = id || auto;
  return html`<div class="field">
    <label for=${fieldId}>${label}</label>
    ${typeof children === "function" ? children(fieldId) : children}
    ${hint && html`<small class="hint">${hint}</small>`}
  </div>`;
}

/** Run an async action with a busy flag and its error kept for display. */
export function useAction(action) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const run = useCallback(
    async (...args) => {
      setBusy(true);
      setError(null);
      try {
        return await action(...args);
      } catch (e) {
        if (e?.name !== "AbortError") setError(e);
        return undefined;
      } finally {
        setBusy(false);
      }
    },
    [action],
  );
  return [run, busy, error, setError];
}

/** Load data from the API: [data, error, reload]. */
export function useLoad(load, deps = []) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  const generation = useRef(0);
  const reload = useCallback(async () => {
    const mine = ++generation.current;
    setState((s) => ({ ...s, loading: true }));
    try {
      const data = await load();
      if (mine === generation.current) setState({ data, error: null, loading: false });
    } catch (error) {
      if (mine === generation.current) setState({ data: null, error, loading: false });
    }
  }, deps);
  useEffect(() => {
    reload();
  }, [reload]);
  return [state.data, state.error, reload, state.loading];
}

/** A modal dialog (the native element: focus trapped, Escape closes). */
export function Dialog({ open, title, onClose, children, wide = false }) {
  const ref = useRef(null);
  const titleId = useId();
  useEffect(() => {
    const dialog = ref.current;
    if (!dialog) return;
    if (open && !dialog.open) {
      dialog.showModal();
      // The first field, not the close button, takes the focus.
      requestAnimationFrame(() =>
        dialog.querySelector(".dialog-body :is(input, select, textarea, button, a[href])")?.focus(),
      );
    }
    if (!open && dialog.open) dialog.close();
  }, [open]);
  return html`<dialog
    ref=${ref}
    class=${wide ? "wide" : ""}
    aria-labelledby=${titleId}
    onClose=${onClose}
    onCancel=${(e) => {
      e.preventDefault();
      onClose();
    }}
  >
    ${open &&
    html`<header class="dialog-head">
        <h2 id=${titleId}>${title}</h2>
        <button type="button" class="icon" aria-label=${t("common.close")} onClick=${onClose}>✕</button>
      </header>
      <div class="dialog-body">${children}</div>`}
  </dialog>`;
}

/** Tabs with arrow-key navigation (WAI-ARIA tabs pattern). */
export function Tabs({ tabs, current, onSelect, label }) {
  const onKey = (e) => {
    const index = tabs.findIndex((tab) => tab.id === current);
    let next = null;
    if (e.key === "ArrowRight") next = (index + 1) % tabs.length;
    if (e.key === "ArrowLeft") next = (index - 1 + tabs.length) % tabs.length;
    if (e.key === "Home") next = 0;
    if (e.key === "End") next = tabs.length - 1;
    if (next === null) return;
    e.preventDefault();
    onSelect(tabs[next].id);
    e.currentTarget.querySelectorAll("[role=tab]")[next]?.focus();
  };
  return html`<div class="tabs" role="tablist" aria-label=${label} onKeyDown=${onKey}>
    ${tabs.map(
      (tab) => html`<button
        type="button"
        role="tab"
        id=${`tab-${tab.id}`}
        aria-controls=${`panel-${tab.id}`}
        aria-selected=${tab.id === current ? "true" : "false"}
        tabindex=${tab.id === current ? 0 : -1}
        onClick=${() => onSelect(tab.id)}
      >
        ${tab.label}
      </button>`,
    )}
  </div>`;
}

export function TabPanel({ id, children }) {
  return html`<section role="tabpanel" id=${`panel-${id}`} aria-labelledby=${`tab-${id}`} tabindex="0">
    ${children}
  </section>`;
}

export function Empty({ children }) {
  return html`<p class="empty">${children}</p>`;
}

export function Loading() {
  return html`<p class="loading" role="status">${t("common.loading")}</p>`;
}

/** Announce text to screen readers (one polite live region for the page). */
let region = null;
export function announce(text) {
  region ??= document.getElementById("announcer");
  if (!region) return;
  region.textContent = "";
  requestAnimationFrame(() => {
    region.textContent = text;
  });
}

export function bytes(n) {
  if (n == null) return "—";
  const units = ["B", "KB", "MB", "GB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

const ICONS = {
  trash: "M9 3h6l1 2h4v2H4V5h4l1-2zm-3 6h12l-1 12H7L6 9zm4 2v8h2v-8h-2zm4 0v8h2v-8h-2z",
  pencil: "M4 17.2V20h2.8l8.3-8.3-2.8-2.8L4 17.2zm14.7-9.5a1 1 0 0 0 0-1.4l-1-1a1 1 0 0 0-1.4 0l-1.2 1.2 2.8 2.8 1.5-1.6z",
};

/** A small icon (decorative: the button around it carries the label). */
export function Icon({ name }) {
  return html`<svg width="16" height="16" viewBox="0 0 24 24" aria-hidden="true" focusable="false">
    <path fill="currentColor" d=${ICONS[name]} />
  </svg>`;
}
