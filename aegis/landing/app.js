/* Aegis landing page: identity, tools with live health, workflows, recent runs, and
 * recent events with the progress of running runs.
 *
 * Data comes from this server's /api. Every string from it goes into the page as a text
 * node (el() and textContent below; never innerHTML), so a name like "<img onerror=...>"
 * shows as text. Opened from disk, or when the API does not answer, the page renders the
 * example data embedded in index.html (#aegis-fallback) and says it is offline.
 *
 * Events come from /api/events/stream (Server-Sent Events; the browser resumes with
 * Last-Event-ID after a dropped connection). Without EventSource, or when the stream keeps
 * failing, the page polls /api/events?after=LAST_ID instead and says so.
 */
"use strict";

(() => {
  const POLL_MS = 15000;
  const RUNS_LIMIT = 20;
  const EVENTS_MAX = 50; // rows kept in the Recent events panel
  const EVENTS_POLL_MS = 3000; // polling /api/events when there is no stream
  const STREAM_FAILURES = 3; // stream errors in a row before falling back to polling
  const STREAM_RETRY_POLLS = 20; // while polling, try the stream again every 20 polls (60 s)
  const REFRESH_DELAY_MS = 250; // coalesces the refetches that a burst of events asks for
  const EVENT_TYPES = [
    "workflow.started",
    "step.started",
    "step.retrying",
    "step.completed",
    "failure.detected",
    "workflow.completed",
    "run.skipped",
  ];
  const ACTIVE = new Set(["queued", "running"]); // run statuses that can still change
  const STEP_ACTIVE = new Set(["running", "retrying"]);
  const A = window.Aegis;
  const { NBSP, $, el, append, fill, list, text, plural, shortId, seconds, duration, when, safeUrl, badge, api } = A;
  const { saveKey, startForm, refreshTrends, runActions, runTests, outputTail, refreshFlaky, showTest } = A;
  const { setPager, setupRunFilters } = A;

  const page = Object.assign(A.page, {
    live: false, // the API answered /api/portfolio and /api/workflows
    serviceKeys: "", // keys of the rendered service cards, to notice a changed config
    workflowNames: new Map(), // workflow key -> display name
    workflowSteps: new Map(), // workflow key -> its step definitions
    services: [], // the service cards' data (bugalizer's public_url links bug reports)
    insightDue: false, // trends and the flaky panel need a refetch
    filters: { workflow: "", status: "", trigger: "" },
    offset: 0, // paging the run list
    total: 0,
    selectedTest: null,
    selectedRun: null, // run_id whose detail is shown
    detailRun: null, // the run JSON last fetched for the detail
    progress: new Map(), // run_id -> what its events said: {workflow, status, total, steps}
    timer: null,
    refreshTimer: null,
    events: {
      started: false,
      lastId: 0, // the newest event id seen
      source: null, // the EventSource while streaming
      failures: 0, // stream errors since it last delivered
      polls: 0,
      down: false, // the last poll failed
      serverStart: null, // when the server started (ms since the epoch), to notice a restart
      reason: "", // why it polls
      timer: null,
    },
  });

  function setupAuth() {
    $("auth-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("api-key").value.trim();
      if (!key) return;
      saveKey(key);
      $("auth-panel").hidden = true;
      const next = page.pendingAction;
      page.pendingAction = null;
      if (!page.live) {
        goLive().catch((err) => showUnreachable(err));
      } else {
        refreshEverything();
      }
      if (next) next();
    });
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
    page.services = services;
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
    } else if (health && health.status === "degraded") {
      state = "degraded";
      label = "degraded";
      note = text(health.error, "");
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
    page.workflowSteps = new Map(workflows.map((w) => [w.key, list(w.steps)]));
    const chosen = page.filters.workflow;
    fill(
      $("filter-workflow"),
      el("option", { value: "" }, "all"),
      workflows.map((w) => el("option", { value: w.key, selected: w.key === chosen }, text(w.name, w.key))),
    );
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
      startForm(workflow),
      el(
        "figure",
        { className: "trend", dataset: { key: workflow.key } },
        el("div", { className: "trend-chart" }),
        el("figcaption", { className: "trend-caption" }, page.live ? "Loading the trend…" : "Trends come from a running server."),
      ),
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

  /** Fetch a page of /api/runs (filtered) and redraw the list; true if it answered. */
  async function refreshRuns() {
    let answer;
    const query = new URLSearchParams({ limit: String(RUNS_LIMIT), offset: String(page.offset) });
    for (const [name, value] of Object.entries(page.filters)) if (value) query.set(name, value);
    try {
      answer = await api(`api/runs?${query}`);
    } catch (err) {
      const status = $("run-list-status");
      status.dataset.state = "error";
      fill(status, `Could not load the runs: ${err.message}`);
      return false;
    }
    renderRuns(list(answer.runs), answer.total);
    return true;
  }

  /** Refetch the runs (and the run shown) soon; a burst of events asks only once. */
  function scheduleRefresh() {
    clearTimeout(page.refreshTimer);
    page.refreshTimer = setTimeout(() => {
      refreshRuns();
      if (page.selectedRun !== null) refreshDetail(page.selectedRun);
      if (page.insightDue) {
        page.insightDue = false;
        refreshTrends();
        refreshFlaky();
      }
    }, REFRESH_DELAY_MS);
  }

  function renderRuns(runs, total) {
    const status = $("run-list-status");
    const active = document.activeElement;
    const focused = active && active.classList.contains("run-row") ? active.dataset.runId : null;
    const filtered = Object.values(page.filters).some(Boolean);
    page.total = Number(total) || 0;
    status.dataset.state = runs.length ? "ok" : "empty";
    fill(
      status,
      runs.length
        ? `${page.offset ? "Runs" : "Latest"} ${page.offset + 1}–${page.offset + runs.length} of ${page.total}${filtered ? " matching" : ""}. Select one for its steps.`
        : filtered || page.offset
          ? "No runs match these filters."
          : "No runs yet: start one with “aegis run WORKFLOW” or POST /api/workflows/KEY/run.",
    );
    setPager(runs.length);
    fill($("run-list"), runs.map((run) => el("li", {}, runRow(run))));
    if (focused) {
      const row = Array.from(document.querySelectorAll("#run-list .run-row")).find(
        (r) => r.dataset.runId === focused,
      );
      if (row) row.focus();
    }
  }

  const workflowName = (key) => page.workflowNames.get(key) || text(key);

  /** A run's status: a finished one's from the API, else what its events said last. */
  function runStatus(run) {
    const live = page.progress.get(run.run_id);
    return ACTIVE.has(run.status) && live && live.status ? live.status : run.status;
  }

  function runRow(run) {
    const status = runStatus(run);
    return el(
      "button",
      {
        type: "button",
        className: "run-row",
        dataset: { runId: run.run_id, status },
        "aria-controls": "run-detail",
        "aria-expanded": String(run.run_id === page.selectedRun),
        onclick: () => showRun(run.run_id, true),
      },
      el("span", { className: "run-workflow" }, workflowName(run.workflow)),
      badge("status", status),
      run.verdict
        ? badge("verdict", run.verdict, "verdict ", run.verdict)
        : badge("verdict", "none", "no verdict"),
      el("span", { className: "run-duration" }, duration(run.duration_ms)),
      el("span", { className: "run-started" }, when(run.started_at)),
      el("span", { className: "run-trigger" }, `via ${text(run.trigger)}`),
      el("code", { className: "run-id" }, shortId(run.run_id)),
      el("span", { className: "run-progress" }, ACTIVE.has(status) ? progressText(run.run_id) : ""),
    );
  }

  /** Redraw the status and progress of a run's row in place (keeping focus); false if absent. */
  function patchRunRow(runId) {
    const row = Array.from(document.querySelectorAll("#run-list .run-row")).find(
      (r) => r.dataset.runId === runId,
    );
    const live = page.progress.get(runId);
    if (!row || !live) return false;
    row.dataset.status = live.status;
    const mark = row.querySelector(".badge.status");
    mark.dataset.status = live.status;
    fill(mark, live.status);
    fill(row.querySelector(".run-progress"), ACTIVE.has(live.status) ? progressText(runId) : "");
    return true;
  }

  /** "2 of 5 steps done · test running, attempt 1 of 3" from a run's events. */
  function progressText(runId) {
    const live = page.progress.get(runId);
    if (!live) return "";
    const steps = Array.from(live.steps.values());
    const done = steps.filter((s) => !STEP_ACTIVE.has(s.status)).length;
    const total = live.total || list(page.workflowSteps.get(live.workflow)).length;
    const active = steps.filter((s) => STEP_ACTIVE.has(s.status)).map(stepProgress);
    return [total ? `${done} of ${plural(total, "step")} done` : "", active.join(", ")]
      .filter(Boolean)
      .join(" · ");
  }

  function stepProgress(step) {
    const tries = step.attempts_allowed > 1 ? `, attempt ${step.attempt} of ${step.attempts_allowed}` : "";
    return `${text(step.name)} ${step.status}${tries}`;
  }

  async function showRun(runId, scroll = false) {
    page.selectedRun = runId;
    page.detailRun = null;
    for (const row of document.querySelectorAll("#run-list .run-row")) {
      row.setAttribute("aria-expanded", String(row.dataset.runId === runId));
    }
    const detail = $("run-detail");
    detail.hidden = false;
    detail.dataset.runId = runId;
    fill(detail, el("p", { className: "placeholder" }, "Loading the run…"));
    window.history.replaceState(null, "", `#run=${encodeURIComponent(runId)}`);
    await refreshDetail(runId, true);
    if (scroll) detail.scrollIntoView({ block: "nearest" });
  }

  /** Fetch a run and draw it, if it is still the one selected. */
  async function refreshDetail(runId, first = false) {
    try {
      const run = await api(`api/runs/${encodeURIComponent(runId)}`);
      if (page.selectedRun === runId) {
        page.detailRun = run;
        renderRunDetail(run);
      }
    } catch (err) {
      if (page.selectedRun === runId && first) {
        fill($("run-detail"), el("p", { className: "error" }, `Could not load run ${runId}: ${err.message}`));
      }
    }
  }

  /** Draw one run (the full run JSON) in #run-detail, with what its events said since.
   * Drawn again for the same run, only the parts that changed are replaced, so the live
   * region announces a step's new state rather than the whole run. */
  function renderRunDetail(run) {
    const detail = $("run-detail");
    const status = runStatus(run);
    const steps = detailSteps(run, status);
    const fact = (label, ...value) => [el("dt", {}, label), el("dd", {}, value)];
    const progress = ACTIVE.has(status) ? progressText(run.run_id) : "";
    const fresh = [
      el("h3", {}, `Run ${shortId(run.run_id)} · ${workflowName(run.workflow)}`),
      el(
        "dl",
        { className: "run-facts" },
        fact("Status", badge("status", status)),
        progress ? fact("Progress", progress) : null,
        fact("Verdict", run.verdict ? badge("verdict", run.verdict) : "—"),
        fact("Started", when(run.started_at)),
        fact("Finished", run.finished_at ? when(run.finished_at) : "—"),
        fact("Duration", duration(run.duration_ms)),
        fact("Trigger", text(run.trigger)),
        paramsText(run.params) ? fact("Params", el("code", {}, paramsText(run.params))) : null,
        run.rerun_of ? fact("Rerun of", el("code", {}, text(run.rerun_of))) : null,
        fact("Run id", el("code", {}, text(run.run_id))),
      ),
      runActions(run, status),
      steps.length
        ? el("ol", { className: "step-results" }, steps.map(stepResult))
        : el("p", { className: "placeholder" }, "No steps recorded."),
      runTests(run),
    ];
    detail.hidden = false;
    if (detail.dataset.runId === run.run_id && detail.children.length === fresh.length) {
      const old = Array.from(detail.children);
      fresh.forEach((node, i) => patch(old[i], node));
    } else {
      detail.dataset.runId = run.run_id;
      fill(detail, fresh);
    }
  }

  /** A run's params as `name=value` pairs (a secret one arrives as ***); "" for none. */
  function paramsText(params) {
    if (!params || typeof params !== "object") return "";
    return Object.entries(params)
      .map(([name, value]) => `${name}=${typeof value === "string" ? value : JSON.stringify(value)}`)
      .join(", ");
  }

  /** Put `fresh` where `old` is unless they are equal; a list of the same length item by item. */
  function patch(old, fresh) {
    if (old.isEqualNode(fresh)) return;
    if (old.tagName === "OL" && fresh.tagName === "OL" && old.children.length === fresh.children.length) {
      const items = Array.from(fresh.children);
      const olds = Array.from(old.children);
      items.forEach((item, i) => {
        if (!olds[i].isEqualNode(item)) olds[i].replaceWith(item);
      });
      return;
    }
    old.replaceWith(fresh);
  }

  /** The recorded steps; for a run still going, also the started and the pending ones. */
  function detailSteps(run, status) {
    const recorded = list(run.steps);
    const live = page.progress.get(run.run_id);
    if (!live && !ACTIVE.has(status)) return recorded;
    const defs = new Map(list(page.workflowSteps.get(run.workflow)).map((s) => [s.name, s]));
    const byName = new Map(recorded.map((s) => [s.name, s]));
    const names = new Set([
      ...(ACTIVE.has(status) ? defs.keys() : []),
      ...byName.keys(),
      ...(live ? live.steps.keys() : []),
    ]);
    return Array.from(names, (name) => byName.get(name) || (live && live.steps.get(name)) || pending(defs.get(name)));
  }

  function pending(spec) {
    return {
      name: spec.name,
      type: spec.type,
      service: spec.service,
      status: "pending",
      attempts_allowed: (Number(spec.retries) || 0) + 1,
    };
  }

  /** "attempt 1 of 3" for a running step, "2 attempts" for one that events say ended. */
  function attemptsLabel(step) {
    if (Array.isArray(step.attempts)) return ""; // the attempts table says how many
    if (STEP_ACTIVE.has(step.status)) {
      return step.attempts_allowed > 1 ? `attempt ${step.attempt} of ${step.attempts_allowed}` : "";
    }
    return typeof step.attempts === "number" && step.attempts ? plural(step.attempts, "attempt") : "";
  }

  function stepResult(step) {
    const attempts = list(step.attempts);
    const ended = !STEP_ACTIVE.has(step.status) && step.status !== "pending";
    return el(
      "li",
      { className: "step-result", dataset: { step: step.name, status: step.status } },
      el(
        "div",
        { className: "step-head" },
        el("span", { className: "step-name" }, text(step.name)),
        badge("status", step.status),
        el("span", { className: "step-attempts" }, attemptsLabel(step)),
        el("span", { className: "step-duration" }, ended ? duration(step.duration_ms) : ""),
      ),
      el(
        "p",
        { className: "step-meta" },
        [step.type, step.service, step.reused ? "reused from the run it reran" : null]
          .filter(Boolean)
          .join(" · "),
      ),
      step.note ? el("p", { className: "retry-note" }, step.note) : null,
      step.skip_reason ? el("p", { className: "skip-reason" }, step.skip_reason) : null,
      step.error
        ? el("p", { className: "error" }, step.error_kind ? el("code", {}, step.error_kind) : null, " ", step.error)
        : null,
      outputTail(step.data),
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

  // -- events: the stream, or polling, and the Recent events panel ----------------------------

  /** state "connecting", "live", "polling" or "offline" (not live), with a sentence. */
  function setEventsState(state, message) {
    const node = $("events-state");
    node.dataset.state = state;
    fill(node, message);
  }

  /** Fill the panel with the latest events, then follow the stream (or poll). */
  async function startEvents() {
    const events = page.events;
    if (events.started) return;
    events.started = true;
    setEventsState("connecting", "Connecting to the event stream…");
    const box = $("event-list");
    box.setAttribute("aria-busy", "true"); // one update for the backlog, not fifty
    try {
      events.serverStart = await serverStart();
      const answer = await api(`api/events?limit=${EVENTS_MAX}`);
      list(answer.events).forEach((event) => receive(event));
    } catch {
      // the stream, or polling, says what is wrong
    }
    box.removeAttribute("aria-busy");
    connectStream();
  }

  function connectStream() {
    const events = page.events;
    if (typeof window.EventSource !== "function") {
      startPolling("this browser cannot stream events");
      return;
    }
    if (page.readsNeedKey) {
      startPolling("the event stream cannot send the API key");
      return;
    }
    setEventsState("connecting", "Connecting to the event stream…");
    // Reconnecting, the browser sends Last-Event-ID, which the server prefers to ?after=.
    const source = new window.EventSource(`api/events/stream?after=${events.lastId}`);
    events.source = source;
    events.failures = 0;
    source.addEventListener("open", () => {
      if (events.source === source) setEventsState("live", "Live: events appear as they happen.");
    });
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (message) => {
        events.failures = 0;
        try {
          receive(JSON.parse(message.data), true);
        } catch {
          // not an event: ignored
        }
      });
    }
    source.addEventListener("error", () => {
      if (events.source !== source) return;
      events.failures += 1;
      if (source.readyState === 2 || events.failures >= STREAM_FAILURES) {
        source.close(); // 2 is CLOSED: the browser gave up on it
        events.source = null;
        startPolling("the live stream is unavailable");
      } else {
        setEventsState("connecting", "Reconnecting to the event stream…");
      }
    });
  }

  function startPolling(reason) {
    const events = page.events;
    events.polls = 0;
    events.reason = reason;
    pollEvents();
  }

  async function pollEvents() {
    const events = page.events;
    clearTimeout(events.timer);
    const every = seconds(EVENTS_POLL_MS / 1000);
    try {
      if (events.down) await noticeRestart();
      const answer = await api(`api/events?after=${events.lastId}&limit=1000`);
      events.down = false;
      setEventsState("polling", `Not streaming (${events.reason}): polling every ${every}.`);
      list(answer.events).forEach((event) => receive(event));
    } catch (err) {
      events.down = true;
      setEventsState("offline", `Not live: ${err.message}. Trying again every ${every}.`);
    }
    events.polls += 1;
    if (events.polls % STREAM_RETRY_POLLS === 0 && typeof window.EventSource === "function" && !page.readsNeedKey) {
      connectStream();
    } else {
      events.timer = setTimeout(pollEvents, EVENTS_POLL_MS);
    }
  }

  /** When this server started (by the page's clock, from its uptime), or null. */
  async function serverStart() {
    const health = await api("health");
    return typeof health.uptime_s === "number" ? Date.now() - health.uptime_s * 1000 : null;
  }

  /** A restarted server numbers its events from 1 again: then poll from its first. */
  async function noticeRestart() {
    const events = page.events;
    const started = await serverStart();
    if (started !== null && events.serverStart !== null && started - events.serverStart > 1000) {
      events.lastId = 0;
    }
    events.serverStart = started;
  }

  /** One event from the stream or a poll: the panel, the run's row, the run shown. The
   * stream is `trusted` to send only new events (the server resumes it after the last id,
   * or from now when a restarted server's ids have started again); a poll is not. */
  function receive(event, trusted = false) {
    if (!event || typeof event.id !== "number") return;
    if (!trusted && event.id <= page.events.lastId) return;
    page.events.lastId = event.id;
    if (event.type === "run.skipped") {
      addEventItem(event); // a refused trigger: no run to follow
      return;
    }
    applyProgress(event);
    addEventItem(event);
    const shown = patchRunRow(event.run_id);
    if (event.run_id === page.selectedRun && page.detailRun) renderRunDetail(page.detailRun);
    if (event.type === "workflow.completed") page.insightDue = true;
    if (!shown || event.type === "step.completed" || event.type === "workflow.completed") {
      scheduleRefresh(); // new runs, and the attempts and verdicts events do not carry
    }
  }

  /** What a run's events say about it and its steps, kept in page.progress. */
  function applyProgress(event) {
    const d = event.data && typeof event.data === "object" ? event.data : {};
    let live = page.progress.get(event.run_id);
    if (!live) {
      live = { workflow: event.workflow, status: "running", total: 0, steps: new Map() };
      page.progress.set(event.run_id, live);
      if (page.progress.size > RUNS_LIMIT * 5) page.progress.delete(page.progress.keys().next().value);
    }
    const name = String(d.step);
    const base = { name, type: d.type, service: d.service };
    if (event.type === "workflow.started") {
      live.status = "running";
      live.total = Number(d.steps) || 0;
    } else if (event.type === "step.started") {
      const allowed = Number(d.attempts_allowed) || 1;
      live.steps.set(name, { ...base, status: "running", attempt: 1, attempts_allowed: allowed });
    } else if (event.type === "step.retrying") {
      const step = live.steps.get(name) || { ...base, attempts_allowed: 0 };
      const kind = d.error_kind ? ` (${d.error_kind})` : "";
      live.steps.set(name, {
        ...step,
        status: "retrying",
        attempt: d.next_attempt,
        attempts_allowed: Math.max(step.attempts_allowed, Number(d.next_attempt) || 0),
        note: `Attempt ${text(d.attempt)} failed${kind}: ${text(d.error)}. Next attempt after ${seconds(d.wait_s)}.`,
      });
    } else if (event.type === "step.completed") {
      live.steps.set(name, {
        ...base,
        status: d.status,
        attempts: Number(d.attempts) || 0,
        duration_ms: d.duration_ms,
        error: d.error,
        error_kind: d.error_kind,
        skip_reason: d.skip_reason,
      });
    } else if (event.type === "workflow.completed") {
      live.status = text(d.status);
    }
  }

  function addEventItem(event) {
    const box = $("event-list");
    box.prepend(eventItem(event));
    while (box.children.length > EVENTS_MAX) box.lastElementChild.remove();
    $("event-list-empty").hidden = true;
  }

  function eventItem(event) {
    const runId = String(event.run_id);
    return el(
      "li",
      { className: "event", dataset: { eventId: event.id, type: event.type, runId } },
      el(
        "div",
        { className: "event-head" },
        badge("event-type", eventStatus(event), text(event.type)),
        el("span", { className: "event-workflow" }, workflowName(event.workflow)),
        el(
          "button",
          {
            type: "button",
            className: "event-run",
            "aria-label": `Show run ${runId}`,
            onclick: () => showRun(runId, true),
          },
          "run ",
          el("code", {}, shortId(runId)),
        ),
        el("span", { className: "event-time" }, clock(event.timestamp)),
      ),
      el("p", { className: "event-text" }, describe(event)),
    );
  }

  /** The status an event's badge is coloured by. */
  function eventStatus(event) {
    const d = event.data || {};
    return {
      "workflow.started": "running",
      "step.started": "running",
      "step.retrying": "retrying",
      "failure.detected": "failed",
    }[event.type] || text(d.status, "none");
  }

  /** A short sentence for an event, e.g. "test succeeded · 2 attempts · 1.20 s". */
  function describe(event) {
    const d = event.data || {};
    const step = text(d.step);
    switch (event.type) {
      case "workflow.started":
        return `started via ${text(d.trigger)} · ${plural(Number(d.steps) || 0, "step")}`;
      case "step.started":
        return d.attempts_allowed > 1
          ? `${step} started · up to ${plural(d.attempts_allowed, "attempt")}`
          : `${step} started`;
      case "step.retrying":
        return `${step}: attempt ${text(d.attempt)} failed (${text(d.error_kind)}), retrying after ${seconds(d.wait_s)}`;
      case "step.completed":
        return d.skip_reason
          ? `${step} ${text(d.status)}: ${d.skip_reason}`
          : `${step} ${text(d.status)} · ${plural(Number(d.attempts) || 0, "attempt")} · ${duration(d.duration_ms)}`;
      case "failure.detected":
        return `${step} failed: ${text(d.error)}`;
      case "workflow.completed":
        return `${text(d.status)}${d.verdict ? `, verdict ${d.verdict}` : ""} · ${duration(d.duration_ms)}`;
      case "run.skipped":
        return `not started: run ${text(d.blocking_run)} is in the way (${text(d.rule)} limit ${text(d.limit)})`;
      default:
        return "";
    }
  }

  /** The time of day of a timestamp, the whole timestamp on hover. */
  function clock(iso) {
    const date = new Date(iso);
    if (!iso || Number.isNaN(date.getTime())) return el("span", {}, text(iso));
    return el("time", { datetime: iso, title: iso }, date.toLocaleTimeString(undefined, { timeStyle: "medium" }));
  }

  /** Everything the page shows from the API, fetched again (after a key was entered). */
  function refreshEverything() {
    refreshHealth();
    refreshRuns();
    refreshTrends();
    refreshFlaky();
    if (page.selectedRun !== null) refreshDetail(page.selectedRun);
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
    setPager(0);
    $("flaky-status").dataset.state = "offline";
    fill($("flaky-status"), "Test history comes from a running Aegis server.");
    $("flaky-table").hidden = true;
    $("run-detail").hidden = true;
    setEventsState("offline", "Not live: events come from a running Aegis server (aegis serve).");
    fill($("event-list"));
    fill($("event-list-empty"), "No events to show.");
    $("event-list-empty").hidden = false;
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
    await Promise.all([refreshHealth(), refreshRuns(), refreshTrends(), refreshFlaky()]);
    const linked = linkedRun();
    if (linked && page.selectedRun === null) await showRun(linked);
    if (A.apiKey() && !page.readsNeedKey) {
      // a key kept from before: do reads need it (then EventSource, which cannot send it, is no use)?
      page.readsNeedKey = await api("api/portfolio", { anonymous: true }).then(
        () => false,
        (err) => err.status === 401,
      );
    }
    startEvents();
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

  /** The API refused us (a key is needed: asked for) or did not answer (example data). */
  function showUnreachable(err) {
    if (err.status === 401) {
      document.body.dataset.mode = "locked";
      setNotice("locked", "This server needs its API key before it shows anything: enter it above.");
      return;
    }
    showOffline(`The API did not answer (${err.message}); retrying every 15 s.`);
  }

  async function tick() {
    if (!document.hidden) {
      if (!page.live && document.body.dataset.mode === "locked") {
        // waiting for the key: entering it goes live
      } else if (!page.live) {
        await goLive().catch(() => {}); // still offline: keep the example data
      } else {
        const total = page.total;
        const answered = await Promise.all([refreshHealth(), refreshRuns(), refreshFlaky()]);
        if (page.total !== total) refreshTrends(); // runs of other processes send no events
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
    setupAuth();
    setupRunFilters();
    try {
      await goLive();
    } catch (err) {
      showUnreachable(err);
    }
    schedule();
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) tick();
    });
  }

  Object.assign(A, { showRun, scheduleRefresh, workflowName, refreshRuns, RUNS_LIMIT });
  start();
})();
