// The page: who is signed in, which view the address shows, theme and language.

import "./env.js";
import { render } from "preact";
import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { ApiError, get, noteTokens, onSession, post, resumeSchedule, setSession } from "./api.js";
import { LANGUAGES, setLanguage, startI18n, t, useLanguage } from "./i18n.js";
import { Alert, html, Loading } from "./ui.js";
import { LoginPage, SetupPage } from "./auth.js";
import { navigate, parseRoute } from "./router.js";

const THEME = "concilium.theme";
const lazy = {
  chat: () => import("./chat.js").then((m) => m.ChatPage),
  knowledge: () => import("./knowledge.js").then((m) => m.KnowledgePage),
  admin: () => import("./admin.js").then((m) => m.AdminPage),
  memory: () => import("./memory.js").then((m) => m.MemoryPage),
  account: () => import("./account.js").then((m) => m.AccountPage),
};

function useRoute() {
  const [route, setRoute] = useState(parseRoute());
  useEffect(() => {
    const changed = () => setRoute(parseRoute());
    addEventListener("hashchange", changed);
    return () => removeEventListener("hashchange", changed);
  }, []);
  return route;
}

export function applyTheme(theme = localStorage.getItem(THEME) || "system") {
  if (theme === "system") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
  dispatchEvent(new Event("concilium:theme"));
}

function Preferences() {
  const language = useLanguage();
  const [theme, setTheme] = useState(localStorage.getItem(THEME) || "system");
  const chooseTheme = (value) => {
    localStorage.setItem(THEME, value);
    setTheme(value);
    applyTheme(value);
  };
  return html`<div class="preferences">
    <label class="compact">
      <span class="visually-hidden">${t("prefs.theme")}</span>
      <select aria-label=${t("prefs.theme")} value=${theme} onChange=${(e) => chooseTheme(e.currentTarget.value)}>
        <option value="system">${t("prefs.themeSystem")}</option>
        <option value="light">${t("prefs.themeLight")}</option>
        <option value="dark">${t("prefs.themeDark")}</option>
      </select>
    </label>
    <label class="compact">
      <span class="visually-hidden">${t("prefs.language")}</span>
      <select aria-label=${t("prefs.language")} value=${language} onChange=${(e) => setLanguage(e.currentTarget.value)}>
        ${LANGUAGES.map((code) => html`<option value=${code}>${t(`prefs.lang.${code}`)}</option>`)}
      </select>
    </label>
  </div>`;
}

/** A new view gets the page's title and the focus (screen readers hear where they are). */
function useViewChange(view) {
  const first = useRef(true);
  const language = useLanguage();
  useEffect(() => {
    document.title = `${t(`nav.${view}`)} — Concilium`;
  }, [view, language]);
  useEffect(() => {
    if (first.current) {
      first.current = false;
      return;
    }
    document.getElementById("main")?.focus();
  }, [view]);
}

function Shell({ me, route, onLogout, children }) {
  useViewChange(lazy[route.view] ? route.view : "chat");
  const links = [
    ["chat", t("nav.chat")],
    ["knowledge", t("nav.knowledge")],
    ["memory", t("nav.memory")],
    ...(me.is_admin ? [["admin", t("nav.admin")]] : []),
    ["account", t("nav.account")],
  ];
  return html`<div class="shell">
    <a class="skip" href="#main" onClick=${(e) => {
      e.preventDefault();
      document.getElementById("main")?.focus();
    }}>${t("nav.skip")}</a>
    <header class="topbar">
      <a class="brand" href="#/chat" aria-label=${t("nav.home")}>
        <img src="/assets/icon.svg" alt="" width="24" height="24" /> Concilium
      </a>
      <nav aria-label=${t("nav.main")}>
        ${links.map(
          ([view, label]) => html`<a href=${`#/${view}`} aria-current=${route.view === view ? "page" : null}>${label}</a>`,
        )}
      </nav>
      <${Preferences} />
      <button type="button" class="ghost" onClick=${onLogout}>${t("nav.logout")}</button>
    </header>
    <main id="main" tabindex="-1">${children}</main>
  </div>`;
}

function LazyView({ name, ...props }) {
  // The view loaded is kept with its name: until the next one arrives, the old one is not
  // rendered with the new address's props.
  const [loaded, setLoaded] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    let live = true;
    setError(null);
    lazy[name]()
      .then((component) => live && setLoaded({ name, View: component }))
      .catch((e) => live && setError(e));
    return () => {
      live = false;
    };
  }, [name]);
  if (error) return html`<${Alert} error=${new ApiError(0, { detail: String(error) })} />`;
  if (!loaded || loaded.name !== name) return html`<${Loading} />`;
  const View = loaded.View;
  return html`<${View} ...${props} />`;
}

function App() {
  useLanguage();
  const route = useRoute();
  const [me, setMe] = useState(undefined);
  const [setupRequired, setSetupRequired] = useState(false);
  const [notice, setNotice] = useState(null);

  const loadMe = useCallback(async (renew = false) => {
    try {
      setMe(await get("/api/me"));
      setSession(true);
      if (renew) resumeSchedule();
    } catch (error) {
      if (error.status !== 401) setNotice(error);
      setMe(null);
      try {
        setSetupRequired((await get("/api/auth/setup")).required);
      } catch {
        setSetupRequired(false);
      }
    }
  }, []);

  useEffect(() => {
    loadMe(true);
    return onSession(() => {
      setMe(null);
      setNotice(new ApiError(401, { code: "session_expired" }));
    });
  }, [loadMe]);

  const signedIn = async (expiresIn) => {
    noteTokens(expiresIn);
    setNotice(null);
    try {
      await get("/api/me");
    } catch (error) {
      if (error.status === 401) {
        // Signed in, yet the session cookie did not come back: the browser refused a Secure
        // cookie over plain HTTP (an address other than this machine's).
        setNotice(new ApiError(401, { code: "cookie_refused" }));
        return;
      }
    }
    await loadMe();
    if (["login", "setup"].includes(route.view)) navigate("/chat");
  };

  const logout = async () => {
    try {
      await post("/api/auth/logout");
    } catch {
      // the session may already be gone; the page forgets it either way
    }
    setSession(false);
    setMe(null);
    navigate("/login");
  };

  if (me === undefined) return html`<${Loading} />`;
  if (!me) {
    const expired = notice?.code === "session_expired";
    const wantsSetup = route.view === "setup" || (setupRequired && route.view !== "login");
    return html`<main id="main" class="auth-page" tabindex="-1">
      <div class="auth-prefs"><${Preferences} /></div>
      ${expired && html`<div class="alert info" role="status">${t("auth.expired")}</div>`}
      ${notice && !expired && html`<${Alert} error=${notice} />`}
      ${wantsSetup
        ? html`<${SetupPage} key=${route.query.get("token") || ""} token=${route.query.get("token") || ""} onDone=${signedIn} />`
        : html`<${LoginPage} onDone=${signedIn} setupRequired=${setupRequired} />`}
    </main>`;
  }
  const view = lazy[route.view] ? route.view : "chat";
  return html`<${Shell} me=${me} route=${route} onLogout=${logout}>
    <${LazyView} name=${view} me=${me} route=${route} />
  </${Shell}>`;
}

async function start() {
  applyTheme();
  await startI18n();
  const root = document.getElementById("app");
  root.textContent = "";
  const announcer = document.createElement("div");
  announcer.id = "announcer";
  announcer.className = "visually-hidden";
  announcer.setAttribute("aria-live", "polite");
  announcer.setAttribute("aria-atomic", "true");
  document.body.append(announcer);
  render(html`<${App} />`, root);
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => applyTheme());
}

start();
