// Every string of the page, in English and French (locales/*.json; a test fails when a key
// is missing in either). The language follows the browser until the user picks one.

import { useEffect, useState } from "preact/hooks";

export const LANGUAGES = ["en", "fr"];
const STORED = "concilium.lang";
const strings = {};
let language = "en";
const listeners = new Set();

function preferred() {
  const chosen = localStorage.getItem(STORED);
  if (LANGUAGES.includes(chosen)) return chosen;
  for (const tag of navigator.languages || [navigator.language || "en"]) {
    const base = tag.toLowerCase().split("-")[0];
    if (LANGUAGES.includes(base)) return base;
  }
  return "en";
}

async function load(lang) {
  if (!strings[lang]) {
    const response = await fetch(`/assets/locales/${lang}.json`, { credentials: "same-origin" });
    strings[lang] = await response.json();
  }
}

export async function startI18n() {
  language = preferred();
  await Promise.all([load(language), language === "en" ? null : load("en")]);
  document.documentElement.lang = language;
}

export async function setLanguage(lang) {
  if (!LANGUAGES.includes(lang)) return;
  await load(lang);
  language = lang;
  localStorage.setItem(STORED, lang);
  document.documentElement.lang = lang;
  listeners.forEach((l) => l());
}

export const currentLanguage = () => language;

/** The string for key in the current language, with {name} placeholders filled. */
export function t(key, params) {
  let text = strings[language]?.[key] ?? strings.en?.[key] ?? key;
  if (params) {
    text = text.replace(/\{(\w+)\}/g, (m, name) => (name in params ? String(params[name]) : m));
  }
  return text;
}

/** The string for key, or ``fallback`` (a server's own word) when there is none. */
export function tOr(key, fallback) {
  const text = t(key);
  return text === key ? fallback : text;
}

/** Re-render a component when the language changes. */
export function useLanguage() {
  const [current, setCurrent] = useState(language);
  useEffect(() => {
    const listener = () => setCurrent(language);
    listeners.add(listener);
    return () => listeners.delete(listener);
  }, []);
  return current;
}

/** Dates and numbers the way the current language writes them. */
export function formatDate(value) {
  if (!value) return "";
  return new Date(value).toLocaleString(language, { dateStyle: "medium", timeStyle: "short" });
}

export function formatNumber(value, options) {
  return value == null ? "—" : Number(value).toLocaleString(language, options);
}
