// First-administrator setup and sign-in (cookie session: HttpOnly tokens, CSRF header).

import { useEffect, useState } from "preact/hooks";
import { post } from "./api.js";
import { t } from "./i18n.js";
import { Alert, Field, html, useAction } from "./ui.js";

async function signIn(username, password) {
  const tokens = await post("/api/auth/login", { username, password, cookie: true });
  return tokens.expires_in;
}

export function LoginPage({ onDone, setupRequired }) {
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [submit, busy, error] = useAction(async () => onDone(await signIn(username, password)));
  return html`<form
    class="card auth"
    aria-labelledby="login-title"
    onSubmit=${(e) => {
      e.preventDefault();
      submit();
    }}
  >
    <h1 id="login-title">${t("auth.loginTitle")}</h1>
    <${Alert} error=${error} />
    <${Field} label=${t("auth.username")}>
      ${(id) => html`<input id=${id} name="username" autocomplete="username" required
        value=${username} onInput=${(e) => setUsername(e.currentTarget.value)} />`}
    </${Field}>
    <${Field} label=${t("auth.password")}>
      ${(id) => html`<input id=${id} name="password" type="password" autocomplete="current-password" required
        value=${password} onInput=${(e) => setPassword(e.currentTarget.value)} />`}
    </${Field}>
    <button type="submit" class="primary" disabled=${busy}>${busy ? t("auth.signingIn") : t("auth.login")}</button>
    ${setupRequired && html`<p><a href="#/setup">${t("auth.goSetup")}</a></p>`}
  </form>`;
}

export function SetupPage({ token: given, onDone }) {
  const [token, setToken] = useState(given);
  useEffect(() => {
    // The one-time token leaves the address bar and the history once read.
    if (given) history.replaceState(null, "", "#/setup");
  }, [given]);
  const [username, setUsername] = useState("admin");
  const [password, setPassword] = useState("");
  const [confirm, setConfirm] = useState("");
  const [mismatch, setMismatch] = useState(false);
  const [submit, busy, error] = useAction(async () => {
    if (password !== confirm) {
      setMismatch(true);
      return;
    }
    setMismatch(false);
    await post("/api/auth/setup", { setup_token: token.trim(), username, password });
    onDone(await signIn(username, password));
  });
  return html`<form
    class="card auth"
    aria-labelledby="setup-title"
    onSubmit=${(e) => {
      e.preventDefault();
      submit();
    }}
  >
    <h1 id="setup-title">${t("setup.title")}</h1>
    <p>${t("setup.intro")}</p>
    <${Alert} error=${error} />
    ${mismatch && html`<div class="alert error" role="alert">${t("setup.mismatch")}</div>`}
    <${Field} label=${t("setup.token")} hint=${t("setup.tokenHint")}>
      ${(id) => html`<input id=${id} name="setup_token" required autocomplete="off" spellcheck=${false}
        value=${token} onInput=${(e) => setToken(e.currentTarget.value)} />`}
    </${Field}>
    <${Field} label=${t("auth.username")}>
      ${(id) => html`<input id=${id} name="username" autocomplete="username" required
        value=${username} onInput=${(e) => setUsername(e.currentTarget.value)} />`}
    </${Field}>
    <${Field} label=${t("auth.password")} hint=${t("setup.passwordHint")}>
      ${(id) => html`<input id=${id} name="password" type="password" autocomplete="new-password" required
        value=${password} onInput=${(e) => setPassword(e.currentTarget.value)} />`}
    </${Field}>
    <${Field} label=${t("setup.confirm")}>
      ${(id) => html`<input id=${id} name="confirm" type="password" autocomplete="new-password" required
        value=${confirm} onInput=${(e) => setConfirm(e.currentTarget.value)} />`}
    </${Field}>
    <button type="submit" class="primary" disabled=${busy}>${t("setup.create")}</button>
  </form>`;
}
