/* Aegis landing page, what it adds over the runs: the start form built from a workflow's
 * params, each workflow's trend chart (inline SVG), a run's actions (cancel, rerun) and
 * the tests and bug reports it reported, the run list's filters and pages, the flaky
 * tests panel and one test's history.
 * Loaded after base.js and before app.js, whose functions it calls once the page runs.
 */
"use strict";

(() => {
  const A = window.Aegis;
  const { NBSP, $, page, el, append, fill, list, text, plural, shortId, duration, when, safeUrl, badge, api, act } = A;
  const ACTIVE = new Set(["queued", "running"]);
  // app.js's, looked up when called (it loads after this file)
  const showRun = (...args) => A.showRun(...args);
  const scheduleRefresh = () => A.scheduleRefresh();
  const workflowName = (key) => A.workflowName(key);

  // -- starting a run: a form from the workflow's params ------------------------------------

  function startForm(workflow) {
    const params = workflow.params && typeof workflow.params === "object" ? Object.entries(workflow.params) : [];
    const status = el("p", { className: "action-status", role: "status" });
    const reason = page.live ? "" : "Offline: runs start from a running Aegis server.";
    const reasonId = `start-reason-${workflow.key}`;
    const form = el(
      "form",
      { className: "start-form", dataset: { key: workflow.key }, "aria-label": `Start ${text(workflow.name, workflow.key)}` },
      params.length ? el("div", { className: "param-fields" }, params.map(([name, spec]) => paramField(workflow.key, name, spec || {}))) : null,
      el(
        "button",
        { type: "submit", className: "start-run", disabled: !page.live, "aria-describedby": reason ? reasonId : null },
        params.length ? "Start run with these params" : "Start run",
      ),
      reason ? el("span", { className: "reason", id: reasonId }, reason) : null,
      status,
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      startRun(workflow.key, form, status);
    });
    return form;
  }

  function paramField(key, name, spec) {
    const id = `param-${key}-${name}`;
    const type = String(spec.type || "string");
    const common = { id, name, dataset: { type }, required: Boolean(spec.required) };
    const given = spec.default !== null && spec.default !== undefined && !spec.secret;
    let input;
    if (type === "boolean") {
      input = el("input", { ...common, type: "checkbox", required: false, checked: spec.default === true });
    } else if (type === "choice") {
      input = el(
        "select",
        common,
        spec.required && !given ? el("option", { value: "" }, "choose…") : null,
        list(spec.choices).map((c) => el("option", { value: String(c), selected: given && String(c) === String(spec.default) }, String(c))),
      );
    } else {
      const kind = spec.secret ? "password" : type === "integer" || type === "number" ? "number" : "text";
      input = el("input", {
        ...common,
        type: kind,
        step: type === "integer" ? "1" : type === "number" ? "any" : null,
        value: given ? String(spec.default) : null,
        placeholder: spec.secret && spec.default ? "(the configured default)" : null,
        autocomplete: "off",
      });
    }
    return el(
      "div",
      { className: "param-field" },
      el("label", { for: id }, el("code", {}, name), spec.required ? " (required)" : ""),
      input,
      spec.description ? el("span", { className: "hint" }, spec.description) : null,
    );
  }

  /** The form's values as JSON of each param's type; empty fields are left to the default. */
  function formParams(form) {
    const params = {};
    for (const input of form.querySelectorAll("[data-type]")) {
      const type = input.dataset.type;
      if (type === "boolean") {
        params[input.name] = input.checked;
        continue;
      }
      const raw = input.value.trim();
      if (raw === "") continue;
      params[input.name] = type === "integer" || type === "number" ? Number(raw) : raw;
    }
    return params;
  }

  async function startRun(key, form, status) {
    const hasParams = form.querySelector("[data-type]") !== null;
    const body = hasParams ? { params: formParams(form) } : {};
    const answer = await act(`api/workflows/${encodeURIComponent(key)}/run`, body, status, () => startRun(key, form, status));
    if (answer && answer.run_id) {
      fill(status, "Started run ", el("code", {}, shortId(answer.run_id)), ".");
      scheduleRefresh();
      await showRun(String(answer.run_id), true);
    }
  }

  // -- trends: one small chart per workflow ------------------------------------------------

  async function refreshTrends() {
    await Promise.all(
      Array.from(page.workflowNames.keys(), async (key) => {
        try {
          const answer = await api(`api/workflows/${encodeURIComponent(key)}/trends?limit=50`);
          drawTrend(key, list(answer.runs));
        } catch {
          // the chart keeps what it showed
        }
      }),
    );
  }

  const SVG = "http://www.w3.org/2000/svg";

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) node.setAttribute(name, String(value));
    }
    return append(node, children);
  }

  function pointLabel(point) {
    const failing = typeof point.failing_tests === "number" ? ` · ${plural(point.failing_tests, "failing test")}` : "";
    return `Run ${shortId(point.run_id)} · ${text(point.status)} · ${duration(point.duration_ms)}${failing}`;
  }

  /** Bars for duration (coloured by verdict) and a line for failing tests; hovering or
   * focusing a bar names the run in the caption, clicking opens it. */
  function drawTrend(key, points) {
    const figure = Array.from(document.querySelectorAll("#workflow-list .trend")).find((f) => f.dataset.key === key);
    if (!figure) return;
    const chart = figure.querySelector(".trend-chart");
    const caption = figure.querySelector(".trend-caption");
    if (!points.length) {
      fill(chart);
      fill(caption, "No finished runs yet.");
      return;
    }
    const width = 300;
    const height = 64;
    const slot = width / Math.max(points.length, 10);
    const most = Math.max(...points.map((p) => Number(p.duration_ms) || 0), 1);
    const mostFailing = Math.max(...points.map((p) => Number(p.failing_tests) || 0), 1);
    const summary = `Last ${plural(points.length, "run")}: ${points.filter((p) => p.verdict === "passed").length} passed`;
    const bars = points.map((point, i) => {
      const h = Math.max(((Number(point.duration_ms) || 0) / most) * (height - 8), 2);
      const bar = svg(
        "g",
        {
          class: "trend-point",
          "data-run-id": point.run_id,
          "data-verdict": point.verdict || "none",
          tabindex: i === points.length - 1 ? "0" : "-1", // one tab stop; arrows move along
          role: "button",
          "aria-label": pointLabel(point),
        },
        svg("title", {}, pointLabel(point)),
        svg("rect", { x: (i * slot + slot * 0.15).toFixed(2), y: (height - h).toFixed(2), width: (slot * 0.7).toFixed(2), height: h.toFixed(2), rx: 1 }),
      );
      const name = () => fill(caption, pointLabel(point));
      bar.addEventListener("mouseenter", name);
      bar.addEventListener("focus", name);
      bar.addEventListener("click", () => showRun(String(point.run_id), true));
      bar.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          showRun(String(point.run_id), true);
        } else if (event.key === "ArrowLeft" || event.key === "ArrowRight") {
          event.preventDefault();
          const next = event.key === "ArrowLeft" ? bar.previousElementSibling : bar.nextElementSibling;
          if (next && next.classList.contains("trend-point")) {
            bar.setAttribute("tabindex", "-1");
            next.setAttribute("tabindex", "0");
            next.focus();
          }
        }
      });
      return bar;
    });
    const line = points
      .map((p, i) => (typeof p.failing_tests === "number" ? `${(i * slot + slot / 2).toFixed(2)},${(height - 2 - (p.failing_tests / mostFailing) * (height - 10)).toFixed(2)}` : null))
      .filter(Boolean)
      .join(" ");
    fill(
      chart,
      svg(
        "svg",
        { viewBox: `0 0 ${width} ${height}`, class: "trend-svg", role: "group", "aria-label": `${summary}; bars are durations, the line failing tests` },
        bars,
        line ? svg("polyline", { class: "trend-failing", points: line }) : null,
      ),
    );
    fill(caption, `${summary}. Bars: duration (green passed, red failed); line: failing tests. Point at a bar for its run.`);
  }

  // -- actions on a run: cancel, rerun (whole or from the failed step) ------------------------

  function actionButton(label, className, reason, onclick) {
    const id = reason ? `${className}-reason` : null;
    return [
      el("button", { type: "button", className, disabled: Boolean(reason), "aria-describedby": id, title: reason || null, onclick }, label),
      reason ? el("span", { className: "reason", id }, reason) : null,
    ];
  }

  function runActions(run, status) {
    const runId = String(run.run_id);
    const offline = page.live ? "" : "Offline: actions need a running server.";
    const going = ACTIVE.has(status);
    const failedStep = list(run.steps).some((s) => s.status === "failed" || s.status === "cancelled");
    // what the last action on this run said, kept across redraws of the detail
    const said = page.actionNote && page.actionNote.runId === runId ? page.actionNote : null;
    const note = el("p", { className: "action-status", role: "status", dataset: { state: said && said.state } }, said ? said.text : "");
    const remember = (result) => {
      page.actionNote = { runId, state: note.dataset.state, text: note.textContent };
      return result;
    };
    const cancel = () =>
      act(`api/runs/${encodeURIComponent(runId)}/cancel`, {}, note, cancel).then((done) => {
        if (done) {
          fill(note, "Cancelled.");
          scheduleRefresh();
        }
        remember(done);
      });
    const rerun = (fromFailed) => {
      const again = () =>
        act(`api/runs/${encodeURIComponent(runId)}/rerun`, { from_failed: fromFailed }, note, again).then((answer) => {
          remember(answer);
          if (answer && answer.run_id) {
            scheduleRefresh();
            showRun(String(answer.run_id), true);
          }
        });
      return again;
    };
    return el(
      "div",
      { className: "run-actions", role: "group", "aria-label": "Actions on this run" },
      actionButton("Cancel run", "cancel-run", offline || (going ? "" : "Only a queued or running run can be cancelled."), cancel),
      actionButton("Rerun", "rerun-all", offline || (going ? "The run is still going." : ""), rerun(false)),
      actionButton(
        "Rerun from failed step",
        "rerun-failed",
        offline || (going ? "The run is still going." : failedStep ? "" : "No step of this run failed."),
        rerun(true),
      ),
      note,
    );
  }

  // -- what a run reported: tests, bug reports ---------------------------------------------

  /** The tests a run's steps reported: failing, or passing when a verify re-ran them. */
  function reportedTests(run) {
    const tests = new Map();
    const reports = {};
    const filed = [];
    for (const step of list(run.steps)) {
      const d = step.data && typeof step.data === "object" && !step.skipped ? step.data : {};
      for (const f of list(d.failures)) {
        if (f && typeof f === "object" && f.test) {
          tests.set(String(f.test), { test: String(f.test), outcome: "failed", message: text(f.message, "") });
        }
      }
      for (const id of list(d.verified)) {
        const found = tests.get(String(id));
        if (found) found.outcome = "passed_on_rerun";
      }
      if (d.bug_reports && typeof d.bug_reports === "object") Object.assign(reports, d.bug_reports);
      filed.push(...list(d.report_ids).map(String));
    }
    for (const [test, report] of Object.entries(reports)) {
      const found = tests.get(test);
      if (found) found.report = String(report);
    }
    return { tests: Array.from(tests.values()), filed };
  }

  function reportLink(id) {
    const bugalizer = page.services.find((s) => s.key === "bugalizer");
    const base = bugalizer && safeUrl(bugalizer.public_url);
    return base ? el("a", { href: `${base.replace(/\/$/, "")}/reports/${encodeURIComponent(id)}`, rel: "noopener noreferrer" }, id) : el("code", {}, id);
  }

  function runTests(run) {
    const { tests, filed } = reportedTests(run);
    if (!tests.length && !filed.length) return el("div", { className: "run-tests" });
    return el(
      "div",
      { className: "run-tests" },
      tests.length ? el("h4", {}, `Tests reported failing (${tests.length})`) : null,
      tests.length
        ? el(
            "ul",
            { className: "reported-tests" },
            tests.map((t) =>
              el(
                "li",
                { dataset: { test: t.test, outcome: t.outcome } },
                el("button", { type: "button", className: "test-link", onclick: () => showTest(t.test) }, t.test),
                " ",
                badge("status", t.outcome === "failed" ? "failed" : "passed", t.outcome === "failed" ? "failing" : "passed on re-run"),
                t.report ? [" · bug ", reportLink(t.report)] : null,
                t.message ? el("p", { className: "test-message" }, t.message) : null,
              ),
            ),
          )
        : null,
      filed.length ? el("p", { className: "bug-reports" }, `Bug reports filed (${filed.length}): `, filed.map((id, i) => [i ? ", " : "", reportLink(id)])) : null,
    );
  }

  /** The last lines of a step's command output, if its data carries any. */
  function outputTail(data) {
    if (!data || typeof data !== "object") return null;
    for (const field of ["output_tail", "output", "stdout", "stderr"]) {
      if (typeof data[field] === "string" && data[field]) {
        const lines = data[field].split("\n");
        return el("pre", { className: "output-tail", "aria-label": `${field}, last lines` }, lines.slice(-20).join("\n"));
      }
    }
    return null;
  }

  // -- the run list's filters and pages ----------------------------------------------------

  function setPager(shown) {
    const newer = $("runs-newer");
    const older = $("runs-older");
    newer.disabled = page.offset === 0;
    newer.title = newer.disabled ? "These are the newest runs." : "";
    older.disabled = page.offset + shown >= page.total;
    older.title = older.disabled ? "There are no older runs." : "";
    fill($("runs-page"), page.total > A.RUNS_LIMIT ? `page ${Math.floor(page.offset / A.RUNS_LIMIT) + 1} of ${Math.ceil(page.total / A.RUNS_LIMIT)}` : "");
  }

  function setupRunFilters() {
    for (const name of ["workflow", "status", "trigger"]) {
      $(`filter-${name}`).addEventListener("change", (event) => {
        page.filters[name] = event.target.value;
        page.offset = 0;
        A.refreshRuns();
      });
    }
    $("run-filters").addEventListener("submit", (event) => event.preventDefault());
    $("runs-newer").addEventListener("click", () => {
      page.offset = Math.max(page.offset - A.RUNS_LIMIT, 0);
      A.refreshRuns();
    });
    $("runs-older").addEventListener("click", () => {
      page.offset += A.RUNS_LIMIT;
      A.refreshRuns();
    });
  }

  // -- flaky tests and one test's history ----------------------------------------------------

  /** Fetch /api/tests?flaky=true and fill the panel; true if it answered. */
  async function refreshFlaky() {
    const status = $("flaky-status");
    let answer;
    try {
      answer = await api("api/tests?flaky=true&limit=10");
    } catch (err) {
      status.dataset.state = "error";
      fill(status, `Could not load the test history: ${err.message}`);
      return false;
    }
    const tests = list(answer.tests);
    status.dataset.state = tests.length ? "ok" : "empty";
    fill(
      status,
      tests.length
        ? "Tests that failed and then passed with no change in between, most flaky first. Select one for its history."
        : "No flaky tests: no test has failed and then passed again.",
    );
    $("flaky-table").hidden = !tests.length;
    fill($("flaky-list"), tests.map(flakyRow));
    return true;
  }

  function percent(value) {
    return typeof value === "number" && Number.isFinite(value) ? `${Math.round(value * 100)}${NBSP}%` : "—";
  }

  function flakyRow(t) {
    const failure = t.last_failure && typeof t.last_failure === "object" ? t.last_failure : null;
    return el(
      "tr",
      { className: "flaky-test", dataset: { test: t.test_id } },
      el("th", { scope: "row" }, el("button", { type: "button", className: "test-link", onclick: () => showTest(String(t.test_id)) }, text(t.test_id))),
      el("td", {}, workflowName(t.workflow)),
      el("td", { className: "flakiness" }, percent(t.flakiness)),
      el("td", {}, `${text(t.flips)} in ${plural(Number(t.runs) || 0, "run")}`),
      el("td", {}, text(t.failures)),
      el(
        "td",
        {},
        failure
          ? el("button", { type: "button", className: "event-run", "aria-label": `Show run ${failure.run_id}`, onclick: () => showRun(String(failure.run_id), true) }, when(failure.at))
          : "—",
      ),
    );
  }

  async function showTest(testId) {
    page.selectedTest = testId;
    const detail = $("test-detail");
    detail.hidden = false;
    fill(detail, el("p", { className: "placeholder" }, "Loading the test's history…"));
    let answer;
    try {
      answer = await api(`api/tests/${encodeURIComponent(testId)}?limit=20`);
    } catch (err) {
      fill(detail, el("p", { className: "error" }, `Could not load the history of ${testId}: ${err.message}`));
      return;
    }
    if (page.selectedTest !== testId) return;
    fill(
      detail,
      el("h3", {}, el("code", {}, text(answer.test_id))),
      list(answer.workflows).map((w) =>
        el(
          "p",
          { className: "test-summary" },
          `${workflowName(w.workflow)}: ${plural(Number(w.failures) || 0, "failure")} and ${plural(Number(w.flips) || 0, "flip")} in ${plural(Number(w.runs) || 0, "run")} (${percent(w.flakiness)} flaky); last ${text(w.last_outcome)}.`,
        ),
      ),
      el("h4", {}, "Recent outcomes"),
      el(
        "ol",
        { className: "test-outcomes" },
        list(answer.outcomes).map((o) =>
          el(
            "li",
            { dataset: { outcome: o.outcome, runId: o.run_id } },
            badge("status", o.outcome === "failed" ? "failed" : "passed", text(o.outcome).replace(/_/g, " ")),
            " ",
            when(o.started_at),
            " ",
            el("button", { type: "button", className: "event-run", "aria-label": `Show run ${o.run_id}`, onclick: () => showRun(String(o.run_id), true) }, "run ", el("code", {}, shortId(o.run_id))),
            o.bug_report ? [" · bug ", reportLink(String(o.bug_report))] : null,
            o.message ? el("p", { className: "test-message" }, o.message) : null,
          ),
        ),
      ),
    );
    detail.focus();
  }

  Object.assign(A, { setPager, setupRunFilters, startForm, refreshTrends, drawTrend, runActions, runTests, outputTail, refreshFlaky, showTest });
})();
