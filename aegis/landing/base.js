/* Aegis landing page, shared part: DOM helpers that put every string in as text, the API
 * client (with the API key asked for on a 401 and kept in sessionStorage for this tab),
 * and the POST of an action. Loaded first; app.js and insight.js use window.Aegis.
 *
 * Every string from the API goes into the page as a text node (el() and textContent;
 * never innerHTML), so a name like "<img onerror=...>" shows as text.
 */
"use strict";

(() => {
  const NBSP = "\u00a0"; // keeps a number and its unit on one line
  const $ = (id) => document.getElementById(id);
  // What the page knows; app.js fills it in.
  const page = { key: "", readsNeedKey: false, pendingAction: null };

  // -- DOM helpers: strings always become text nodes ----------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "className") node.className = value;
      else if (name === "dataset") {
        for (const [key, item] of Object.entries(value)) {
          if (item !== null && item !== undefined) node.dataset[key] = String(item);
        }
      } else if (name === "onclick") node.addEventListener("click", value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    return append(node, children);
  }

  function append(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function fill(node, ...children) {
    node.replaceChildren();
    return append(node, children);
  }

  const list = (value) => (Array.isArray(value) ? value : []);
  const text = (value, empty = "—") =>
    value === null || value === undefined || value === "" ? empty : String(value);
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  const shortId = (runId) => String(runId || "").slice(0, 8);

  function seconds(value) {
    return typeof value === "number" && Number.isFinite(value) ? `${value}${NBSP}s` : text(value);
  }

  function duration(ms) {
    if (typeof ms !== "number" || !Number.isFinite(ms)) return "—";
    if (ms < 1000) return `${Math.round(ms)}${NBSP}ms`;
    const s = ms / 1000;
    if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)}${NBSP}s`;
    const m = Math.floor(s / 60);
    return `${m}${NBSP}min ${Math.round(s - m * 60)}${NBSP}s`;
  }

  function when(iso) {
    const date = new Date(iso);
    if (!iso || Number.isNaN(date.getTime())) return el("span", {}, text(iso));
    const shown = date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
    return el("time", { datetime: iso, title: iso }, shown);
  }

  /** The URL if it is an absolute http(s) one, else null: nothing else becomes a link. */
  function safeUrl(value) {
    if (typeof value !== "string" || !value) return null;
    try {
      const url = new URL(value);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch {
      return null;
    }
  }

  function badge(kind, status, ...label) {
    return el(
      "span",
      { className: `badge ${kind}`, dataset: { status: status || "none" } },
      label.length ? label : text(status),
    );
  }

  // -- the API ------------------------------------------------------------------------------

  /** A JSON object from this server's API (GET, or `method` with a JSON `body`); throws an
   * Error with a readable message, its `status` and the error `body`. A 401 asks for the
   * API key (kept in sessionStorage, for this tab only); `anonymous` sends no key and
   * never asks. */
  async function api(path, { method = "GET", body, anonymous = false } = {}) {
    const headers = { Accept: "application/json" };
    const key = anonymous ? "" : apiKey();
    if (key) headers["X-API-Key"] = key;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (err) {
      throw new Error(`the API cannot be reached (${err.message})`);
    }
    let answer = null;
    try {
      answer = await response.json();
    } catch {
      // not JSON: reported below
    }
    if (response.status === 401 && !anonymous) {
      if (method === "GET") page.readsNeedKey = true;
      askForKey(key ? "The server refused that API key: enter it again." : "This server needs its API key for that.");
    }
    if (!response.ok) {
      const message = answer && answer.error && answer.error.message;
      const err = new Error(`/${path}: HTTP ${response.status}${message ? ` — ${message}` : ""}`);
      err.status = response.status;
      err.body = answer;
      throw err;
    }
    if (!answer || typeof answer !== "object") throw new Error(`/${path}: the answer is not JSON`);
    return answer;
  }

  // -- the API key: asked for on a 401, kept for this tab ------------------------------------

  const KEY_STORE = "aegis.apiKey";

  function apiKey() {
    try {
      return window.sessionStorage.getItem(KEY_STORE) || "";
    } catch {
      return page.key; // storage disabled: this page only
    }
  }

  function saveKey(key) {
    page.key = key;
    try {
      window.sessionStorage.setItem(KEY_STORE, key);
    } catch {
      // kept in page.key
    }
  }

  function askForKey(reason) {
    const panel = $("auth-panel");
    fill($("auth-reason"), reason);
    if (!panel.hidden) return;
    panel.hidden = false;
    $("api-key").value = "";
    $("api-key").focus();
  }

  /** POST `body` to `path`; the answer, or null after saying what went wrong in `status`.
   * Refused for want of the key, the action runs again once a key is entered. */
  async function act(path, body, status, retry) {
    fill(status, "Working…");
    status.dataset.state = "busy";
    try {
      const answer = await api(path, { method: "POST", body });
      fill(status, "");
      status.dataset.state = "ok";
      return answer;
    } catch (err) {
      status.dataset.state = "error";
      if (err.status === 401) {
        page.pendingAction = retry;
        fill(status, "Needs the API key: enter it above, and this is tried again.");
      } else {
        const problems = list(err.body && err.body.error && err.body.error.params);
        fill(status, err.message, problems.map((p) => el("span", { className: "problem" }, ` ${text(p.name)}: ${text(p.problem)}.`)));
      }
      return null;
    }
  }

  window.Aegis = {
    NBSP, $, page, el, append, fill, list, text, plural, shortId, seconds, duration, when,
    safeUrl, badge, api, apiKey, saveKey, askForKey, act,
  };
})();
