/* Aegis landing page: identity, tools with live health, workflows, recent runs.
 *
 * Data comes from this server's /api. Every string from it goes into the page as a text
 * node (el() and textContent below; never innerHTML), so a name like "<img onerror=...>"
 * shows as text. Opened from disk, or when the API does not answer, the page renders the
 * example data embedded in index.html (#aegis-fallback) and says it is offline.
 */
"use strict";

(() => {
  const POLL_MS = 15000;
  const RUNS_LIMIT = 20;
  const NBSP = "\u00a0"; // keeps a number and its unit on one line
  const $ = (id) => document.getElementById(id);

  const page = {
    live: false, // the API answered /api/portfolio and /api/workflows
    serviceKeys: "", // keys of the rendered service cards, to notice a changed config
    workflowNames: new Map(), // workflow key -> display name
    selectedRun: null, // run_id whose detail is shown
    timer: null,
  };

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

  /** GET a JSON object from this server's API; throws an Error with a readable message. */
  async function api(path) {
    let response;
    try {
      response = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
    } catch (err) {
      throw new Error(`the API cannot be reached (${err.message})`);
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      // not JSON: reported below
    }
    if (!response.ok) {
      const message = body && body.error && body.error.message;
      throw new Error(`/${path}: HTTP ${response.status}${message ? ` — ${message}` : ""}`);
    }
    if (!body || typeof body !== "object") throw new Error(`/${path}: the answer is not JSON`);
    return body;
  }

  // -- identity and notice ------------------------------------------------------------------

  function renderIdentity(identity, version) {
    const name = text(identity && identity.name, "Aegis");
    const tagline = text(identity && identity.tagline, "");
    fill($("aegis-name"), name);
    fill($("aegis-tagline"), tagline);
    fill($("aegis-version"), version ? `version ${version}` : "");
    document.title = tagline ? `${name} — ${tagline}` : name;
  }

  /** state "" clears the notice; "offline" and "stale" show `message`. */
  function setNotice(state, message) {
    const notice = $("offline-notice");
    notice.dataset.state = state;
    fill(notice, message);
  }

  // -- tools (services) ---------------------------------------------------------------------

  function renderServices(services) {
    page.serviceKeys = services.map((s) => s.key).join("\n");
    if (!services.length) {
      fill($("service-list"), el("p", { className: "placeholder" }, "No services configured."));
      return;
    }
    fill($("service-list"), services.map(serviceCard));
  }

  function serviceCard(service) {
    const features = list(service.features);
    const links = [
      ["repo_url", "Repository"],
      ["docs_url", "Documentation"],
    ]
      .map(([field, label]) => [safeUrl(service[field]), label])
      .filter(([href]) => href)
      .map(([href, label]) => el("li", {}, el("a", { href, rel: "noopener noreferrer" }, label)));
    return el(
      "article",
      { className: "card service-card", dataset: { key: service.key } },
      el(
        "div",
        { className: "card-head" },
        el("h3", {}, text(service.name, service.key)),
        badge("health", "checking", "checking…"),
      ),
      el("p", { className: "health-detail" }),
      service.description ? el("p", { className: "description" }, service.description) : null,
      features.length
        ? el("ul", { className: "features", "aria-label": "Features" }, features.map((f) => el("li", {}, f)))
        : null,
      links.length ? el("ul", { className: "links", "aria-label": "Links" }, links) : null,
    );
  }

  function serviceCards() {
    return Array.from(document.querySelectorAll("#service-list .service-card"));
  }

  /** Show a health answer ({status, latency_ms, error, checked_at}) or a state on a card. */
  function setHealth(card, health, state, note) {
    const mark = card.querySelector(".badge.health");
    let label;
    if (health && health.status === "up") {
      state = "up";
      label = typeof health.latency_ms === "number" ? `up · ${duration(health.latency_ms)}` : "up";
      note = "";
    } else if (health && health.status === "down") {
      state = "down";
      label = "down";
      note = text(health.error, "");
    } else {
      state = state || "error";
      label = { offline: "not checked", checking: "checking…" }[state] || "unknown";
      if (note === undefined || note === null) note = state === "error" ? "no health reported" : "";
    }
    mark.dataset.status = state;
    mark.title = health && health.checked_at ? `checked ${health.checked_at}` : "";
    fill(mark, label);
    fill(card.querySelector(".health-detail"), note || "");
  }

  /** Poll /api/services and update the badges; true if it answered. */
  async function refreshHealth() {
    let answer;
    try {
      answer = await api("api/services");
    } catch (err) {
      for (const card of serviceCards()) setHealth(card, null, "error", err.message);
      return false;
    }
    const services = list(answer.services);
    if (services.map((s) => s.key).join("\n") !== page.serviceKeys) renderServices(services);
    const byKey = new Map(services.map((s) => [String(s.key), s]));
    for (const card of serviceCards()) {
      const service = byKey.get(card.dataset.key);
      setHealth(card, service && service.health, "error");
    }
    return true;
  }

  // -- workflows ----------------------------------------------------------------------------

  function renderWorkflows(workflows) {
    page.workflowNames = new Map(workflows.map((w) => [w.key, text(w.name, w.key)]));
    if (!workflows.length) {
      fill($("workflow-list"), el("p", { className: "placeholder" }, "No workflows configured."));
      return;
    }
    fill($("workflow-list"), workflows.map(workflowCard));
  }

  /** Consecutive `parallel: true` steps form one batch, as the engine runs them. */
  function batches(steps) {
    const groups = [];
    for (const step of steps) {
      const last = groups[groups.length - 1];
      if (step.parallel && last && last.parallel) last.steps.push(step);
      else groups.push({ parallel: Boolean(step.parallel), steps: [step] });
    }
    return groups;
  }

  function workflowCard(workflow) {
    const steps = list(workflow.steps);
    const meta = [plural(steps.length, "step")];
    if (workflow.timeout !== null && workflow.timeout !== undefined) {
      meta.push(`run timeout ${seconds(workflow.timeout)}`);
    }
    return el(
      "article",
      { className: "card workflow-card", dataset: { key: workflow.key } },
      el("h3", {}, text(workflow.name, workflow.key)),
      el("p", { className: "meta" }, el("code", {}, workflow.key), ` · ${meta.join(" · ")}`),
      workflow.description ? el("p", { className: "description" }, workflow.description) : null,
      el(
        "ol",
        { className: "steps" },
        batches(steps).map((group) =>
          group.parallel
            ? el(
                "li",
                { className: "parallel-group" },
                el("p", { className: "group-label" }, `in parallel · ${plural(group.steps.length, "step")}`),
                el("ol", { className: "steps" }, group.steps.map(stepItem)),
              )
            : stepItem(group.steps[0]),
        ),
      ),
    );
  }

  function stepItem(step) {
    const facts = [];
    if (step.service) facts.push(["service", step.service]);
    if (step.condition) facts.push(["condition", `when ${step.condition}`]);
    if (step.retries) {
      const on = list(step.retry_on);
      facts.push(["retries", `retries ${step.retries}${on.length ? ` on ${on.join(", ")}` : ""}`]);
    }
    facts.push(["timeout", `timeout ${seconds(step.timeout)}`]);
    if (step.deadline !== null && step.deadline !== undefined) {
      facts.push(["deadline", `deadline ${seconds(step.deadline)}`]);
    }
    return el(
      "li",
      { className: "step", dataset: { step: step.name, type: step.type } },
      el("span", { className: "step-name" }, text(step.name, step.type)),
      step.name && step.name !== step.type ? [" ", badge("type", step.type)] : null,
      el(
        "ul",
        { className: "facts" },
        facts.map(([fact, label]) => el("li", { dataset: { fact } }, label)),
      ),
    );
  }

  // -- recent runs --------------------------------------------------------------------------

  /** Fetch /api/history and redraw the list; true if it answered. */
  async function refreshRuns() {
    let answer;
    try {
      answer = await api(`api/history?limit=${RUNS_LIMIT}`);
    } catch (err) {
      const status = $("run-list-status");
      status.dataset.state = "error";
      fill(status, `Could not load the runs: ${err.message}`);
      return false;
    }
    renderRuns(list(answer.runs), answer.total);
    return true;
  }

  function renderRuns(runs, total) {
    const status = $("run-list-status");
    const active = document.activeElement;
    const focused = active && active.classList.contains("run-row") ? active.dataset.runId : null;
    status.dataset.state = runs.length ? "ok" : "empty";
    fill(
      status,
      runs.length
        ? `Latest ${plural(runs.length, "run")}${total > runs.length ? ` of ${total}` : ""}. Select one for its steps.`
        : "No runs yet: start one with “aegis run WORKFLOW” or POST /api/workflows/KEY/run.",
    );
    fill($("run-list"), runs.map((run) => el("li", {}, runRow(run))));
    if (focused) {
      const row = Array.from(document.querySelectorAll("#run-list .run-row")).find(
        (r) => r.dataset.runId === focused,
      );
      if (row) row.focus();
    }
  }

  const workflowName = (key) => page.workflowNames.get(key) || text(key);

  function runRow(run) {
    return el(
      "button",
      {
        type: "button",
        className: "run-row",
        dataset: { runId: run.run_id, status: run.status },
        "aria-controls": "run-detail",
        "aria-expanded": String(run.run_id === page.selectedRun),
        onclick: () => showRun(run.run_id, true),
      },
      el("span", { className: "run-workflow" }, workflowName(run.workflow)),
      badge("status", run.status),
      run.verdict
        ? badge("verdict", run.verdict, "verdict ", run.verdict)
        : badge("verdict", "none", "no verdict"),
      el("span", { className: "run-duration" }, duration(run.duration_ms)),
      el("span", { className: "run-started" }, when(run.started_at)),
      el("span", { className: "run-trigger" }, `via ${text(run.trigger)}`),
      el("code", { className: "run-id" }, shortId(run.run_id)),
    );
  }

  async function showRun(runId, scroll = false) {
    page.selectedRun = runId;
    for (const row of document.querySelectorAll("#run-list .run-row")) {
      row.setAttribute("aria-expanded", String(row.dataset.runId === runId));
    }
    const detail = $("run-detail");
    detail.hidden = false;
    detail.dataset.runId = runId;
    fill(detail, el("p", { className: "placeholder" }, "Loading the run…"));
    window.history.replaceState(null, "", `#run=${encodeURIComponent(runId)}`);
    try {
      const run = await api(`api/runs/${encodeURIComponent(runId)}`);
      if (page.selectedRun === runId) renderRunDetail(run);
    } catch (err) {
      if (page.selectedRun === runId) {
        fill(detail, el("p", { className: "error" }, `Could not load run ${runId}: ${err.message}`));
      }
    }
    if (scroll) detail.scrollIntoView({ block: "nearest" });
  }

  /** Draw one run (the full run JSON) in #run-detail; live progress can call this again. */
  function renderRunDetail(run) {
    const detail = $("run-detail");
    const steps = list(run.steps);
    const fact = (label, ...value) => [el("dt", {}, label), el("dd", {}, value)];
    detail.hidden = false;
    detail.dataset.runId = run.run_id;
    fill(
      detail,
      el("h3", {}, `Run ${shortId(run.run_id)} · ${workflowName(run.workflow)}`),
      el(
        "dl",
        { className: "run-facts" },
        fact("Status", badge("status", run.status)),
        fact("Verdict", run.verdict ? badge("verdict", run.verdict) : "—"),
        fact("Started", when(run.started_at)),
        fact("Finished", run.finished_at ? when(run.finished_at) : "—"),
        fact("Duration", duration(run.duration_ms)),
        fact("Trigger", text(run.trigger)),
        fact("Run id", el("code", {}, text(run.run_id))),
      ),
      steps.length
        ? el("ol", { className: "step-results" }, steps.map(stepResult))
        : el("p", { className: "placeholder" }, "No steps recorded."),
    );
  }

  function stepResult(step) {
    const attempts = list(step.attempts);
    return el(
      "li",
      { className: "step-result", dataset: { step: step.name, status: step.status } },
      el(
        "div",
        { className: "step-head" },
        el("span", { className: "step-name" }, text(step.name)),
        badge("status", step.status),
        el("span", { className: "step-duration" }, duration(step.duration_ms)),
      ),
      el("p", { className: "step-meta" }, [step.type, step.service].filter(Boolean).join(" · ")),
      step.skip_reason ? el("p", { className: "skip-reason" }, step.skip_reason) : null,
      step.error
        ? el("p", { className: "error" }, step.error_kind ? el("code", {}, step.error_kind) : null, " ", step.error)
        : null,
      attempts.length ? attemptsTable(attempts) : null,
    );
  }

  function attemptsTable(attempts) {
    const head = ["#", "Result", "Duration", "HTTP", "Error"];
    return el(
      "div",
      { className: "table-scroll" },
      el(
        "table",
        { className: "attempts" },
        el("caption", {}, plural(attempts.length, "attempt")),
        el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col" }, h)))),
        el(
          "tbody",
          {},
          attempts.map((a) =>
            el(
              "tr",
              { className: "attempt", dataset: { attempt: a.attempt } },
              el("td", {}, text(a.attempt)),
              el("td", {}, badge("status", a.success ? "succeeded" : "failed")),
              el("td", {}, duration(a.duration_ms)),
              el("td", {}, text(a.status_code)),
              el(
                "td",
                {},
                a.error_kind ? el("code", {}, a.error_kind) : null,
                a.error_kind && a.error ? " " : null,
                a.error || (a.error_kind ? null : "—"),
              ),
            ),
          ),
        ),
      ),
    );
  }

  // -- offline: the example data embedded in index.html --------------------------------------

  function fallbackData() {
    try {
      return JSON.parse($("aegis-fallback").textContent);
    } catch {
      return { aegis: {}, services: [], workflows: [] };
    }
  }

  function showOffline(reason) {
    const data = fallbackData();
    page.live = false;
    document.body.dataset.mode = "offline";
    renderIdentity(data.aegis, null);
    renderServices(list(data.services));
    for (const card of serviceCards()) setHealth(card, null, "offline");
    renderWorkflows(list(data.workflows));
    const status = $("run-list-status");
    status.dataset.state = "offline";
    fill(status, "Run history comes from a running Aegis server (aegis serve).");
    fill($("run-list"));
    $("run-detail").hidden = true;
    setNotice("offline", `Offline — showing example data. ${reason}`);
  }

  // -- start and poll -----------------------------------------------------------------------

  async function goLive() {
    const [portfolio, workflows] = await Promise.all([api("api/portfolio"), api("api/workflows")]);
    page.live = true;
    document.body.dataset.mode = "live";
    setNotice("", "");
    renderIdentity(portfolio.aegis, portfolio.version);
    renderWorkflows(list(workflows.workflows));
    renderServices(list(portfolio.services));
    await Promise.all([refreshHealth(), refreshRuns()]);
    const linked = linkedRun();
    if (linked && page.selectedRun === null) await showRun(linked);
  }

  /** The run named by a "#run=RUN_ID" link, if any. */
  function linkedRun() {
    const match = /^#run=(.+)$/.exec(window.location.hash);
    try {
      return match ? decodeURIComponent(match[1]) : null;
    } catch {
      return null;
    }
  }

  async function tick() {
    if (!document.hidden) {
      if (!page.live) {
        await goLive().catch(() => {}); // still offline: keep the example data
      } else {
        const answered = await Promise.all([refreshHealth(), refreshRuns()]);
        setNotice(
          answered.every(Boolean) ? "" : "stale",
          answered.every(Boolean) ? "" : "Some data could not be refreshed; retrying every 15 s.",
        );
      }
    }
    schedule();
  }

  function schedule() {
    clearTimeout(page.timer);
    page.timer = setTimeout(tick, POLL_MS);
  }

  async function start() {
    if (window.location.protocol === "file:") {
      showOffline("This page was opened from disk; run “aegis serve” and open its address for live data.");
      return;
    }
    try {
      await goLive();
    } catch (err) {
      showOffline(`The API did not answer (${err.message}); retrying every 15 s.`);
    }
    schedule();
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) tick();
    });
  }

  start();
})();
