/*
 * Atelier Compute dashboard: a small vanilla-JS layer over the Monitoring API.
 *
 * - The token lives in sessionStorage and goes out as `Authorization: Bearer …` with every call; a 401 returns
 *   to the login form with the server's reason.
 * - Every value from the API reaches the page through textContent or setAttribute (never as markup).
 * - Images served by the API need the token, so they are fetched with it and shown through object URLs;
 *   images on other hosts (CDN, presigned URLs) are used as they are.
 * - The current view is re-read every POLL_MS while it is visible (detail views stop once finished).
 */
(function () {
  "use strict";

  const TOKEN_KEY = "atelier.dashboard.token";
  const POLL_MS = 2000;
  const API_ROOT = new URL("../api/v1/", document.baseURI);
  const OPENAPI_URL = new URL("../openapi.json", document.baseURI);
  const STORAGE_MARKER = "/api/v1/storage/images/";
  // The SVG namespace, read from the inline <svg> of index.html (no URL literal in the sources).
  const SVG_NS = document.getElementById("svg-namespace").namespaceURI;
  const TERMINAL_TASK = new Set(["COMPLETED", "FAILED", "CANCELLED"]);
  const TERMINAL_WORKFLOW = new Set(["COMPLETED", "FAILED", "CANCELLED"]);
  const ENUMS = {
    // Fallbacks; replaced by the values of the served OpenAPI document when it can be read.
    TaskStatus: ["PENDING", "EXECUTING", "COMPLETED", "FAILED", "CANCELLED"],
    WorkflowStatus: ["PENDING", "RUNNING", "PAUSED", "COMPLETED", "FAILED", "CANCELLED"],
    TaskType: [
      "GENERATION", "EDITING", "REFINE", "EXPERIMENTAL_FAL", "VIDEO_GENERATION", "LLM_INTERACTION",
      "BACKGROUND_REMOVAL", "DETAIL_ENHANCER", "BACKGROUND_FIX", "IMAGE_ADJUSTER", "FACE_ENHANCER",
    ],
    ProviderType: [
      "FAL_STANDARD", "FAL_SHOOTIFY_REFINER", "FAL_GARMENT_FIXER", "FASHN_STANDARD", "FREEPIK_MAGNIFIC",
      "FREEPIK_MAGNIFIC_PRECISION", "VERTEX", "AICORE", "LOCAL", "NANO_BANANA_UPSCALER",
      "SARTIQ_ULTIMATE_REFINER", "SARTIQ_ULTIMATE_FACE_FIXER", "SARTIQ_ULTIMATE_GARMENT_FIXER",
    ],
  };

  const state = {
    token: null,
    generation: 0, // bumped on every navigation: answers for an older view are dropped
    timer: null,
    taskPage: 1,
    workflowPage: 1,
    mediaKey: null, // "<task id>:<status>" whose media is on screen
    blobs: [], // object URLs to revoke when the media go away
  };

  const $ = (id) => document.getElementById(id);

  // What each part of the page was last drawn from: a poll that brings the same data leaves the DOM alone
  // (no flicker, and a row under the mouse is not replaced between press and release).
  const drawn = new Map();

  function changed(key, data) {
    const json = JSON.stringify(data);
    if (drawn.get(key) === json) return false;
    drawn.set(key, json);
    return true;
  }

  // ------------------------------------------------------------------------------------------ DOM helpers

  function setAttrs(node, attrs) {
    if (!attrs) return;
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
  }

  function appendAll(node, children) {
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  /** An HTML element; string children become text nodes. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    appendAll(node, children);
    return node;
  }

  /** An SVG element; string children become text nodes. */
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    appendAll(node, children);
    return node;
  }

  function statusClass(status) {
    return "status-" + String(status || "").replace(/[^A-Za-z0-9_]/g, "");
  }

  function badge(status, testid) {
    return el("span", { class: "badge " + statusClass(status), "data-testid": testid || "status-badge" }, status || "—");
  }

  function truncate(text, max) {
    const s = String(text === null || text === undefined ? "" : text);
    return s.length > max ? s.slice(0, max - 1) + "…" : s;
  }

  function fmtTime(iso) {
    if (!iso) return "—";
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
  }

  function timeCell(iso) {
    return el("td", { title: iso || null }, fmtTime(iso));
  }

  function fmtDuration(ms) {
    if (ms === null || ms === undefined) return "—";
    if (ms < 1000) return Math.round(ms) + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
    const minutes = Math.floor(ms / 60000);
    return minutes + " min " + Math.round((ms % 60000) / 1000) + " s";
  }

  function fmtValue(value) {
    if (value === null || value === undefined || value === "") return "—";
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  function shortId(id) {
    return String(id).slice(0, 8);
  }

  /** JSON for display; very long strings (inline images) are shortened. */
  function prettyJson(value) {
    return JSON.stringify(
      value,
      (key, v) => (typeof v === "string" && v.length > 400 ? v.slice(0, 200) + "… (" + v.length + " characters)" : v),
      2,
    );
  }

  function showOnly(viewId) {
    for (const section of document.querySelectorAll("main > section.view")) section.hidden = section.id !== viewId;
  }

  function setUpdated(id) {
    $(id).textContent = "updated " + new Date().toLocaleTimeString();
  }

  function showError(message) {
    const banner = $("error-banner");
    banner.textContent = message;
    banner.hidden = false;
  }

  function clearError() {
    $("error-banner").hidden = true;
    $("error-banner").textContent = "";
  }

  // ------------------------------------------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function authHeaders() {
    return { Authorization: "Bearer " + state.token };
  }

  async function errorMessage(response) {
    try {
      const body = await response.json();
      if (typeof body.detail === "string") return body.detail;
      if (Array.isArray(body.detail)) {
        return body.detail.map((d) => (d.loc || []).join(".") + ": " + d.msg).join("; ");
      }
      if (body.error && body.error.message) return String(body.error.message);
    } catch (ignored) {
      // not JSON: fall through to the status line
    }
    return response.status + " " + response.statusText;
  }

  /** Fetch with the token; a 401 ends the session. */
  async function authFetch(url, accept) {
    let response;
    try {
      response = await fetch(url, { headers: { ...authHeaders(), Accept: accept }, cache: "no-store" });
    } catch (err) {
      throw new ApiError(0, "The API could not be reached: " + err.message);
    }
    if (response.status === 401) {
      const message = await errorMessage(response);
      sessionEnded("The token was refused: " + message);
      throw new ApiError(401, message);
    }
    if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
    return response;
  }

  async function apiGet(path, params) {
    const url = new URL(path, API_ROOT);
    for (const [key, value] of Object.entries(params || {})) {
      if (value !== null && value !== undefined && value !== "") url.searchParams.set(key, String(value));
    }
    const response = await authFetch(url, "application/json");
    return response.json();
  }

  async function loadEnums() {
    try {
      const response = await fetch(OPENAPI_URL, { headers: { Accept: "application/json" } });
      if (!response.ok) return;
      const schemas = ((await response.json()).components || {}).schemas || {};
      for (const name of Object.keys(ENUMS)) {
        const values = schemas[name] && schemas[name].enum;
        if (Array.isArray(values) && values.length) ENUMS[name] = values.map(String);
      }
    } catch (ignored) {
      // the fallbacks stay
    } finally {
      fillEnumSelects();
    }
  }

  function fillEnumSelects() {
    for (const select of document.querySelectorAll("select[data-enum]")) {
      const chosen = select.value;
      const values = ENUMS[select.dataset.enum] || [];
      select.replaceChildren(el("option", { value: "" }, "any"), ...values.map((v) => el("option", { value: v }, v)));
      select.value = values.includes(chosen) ? chosen : "";
    }
  }

  // --------------------------------------------------------------------------------------------- session

  function tokenClaims(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part.padEnd(Math.ceil(part.length / 4) * 4, "=")));
    } catch (ignored) {
      return null;
    }
  }

  function showIdentity() {
    const claims = tokenClaims(state.token) || {};
    const parts = [];
    if (claims.tenant) parts.push("tenant " + claims.tenant);
    if (claims.role) parts.push(claims.role);
    if (claims.exp) parts.push("expires " + new Date(claims.exp * 1000).toLocaleString());
    $("identity").textContent = parts.join(" · ");
  }

  function stopPolling() {
    state.generation += 1;
    clearTimeout(state.timer);
    state.timer = null;
  }

  function revokeBlobs() {
    for (const url of state.blobs) URL.revokeObjectURL(url);
    state.blobs = [];
  }

  /** The task's media leave the screen: their object URLs are freed and drawn again on return. */
  function revokeMedia() {
    revokeBlobs();
    state.mediaKey = null;
    drawn.delete("task");
  }

  /** Nothing of the previous session stays in the (hidden) page. */
  function wipe() {
    drawn.clear();
    for (const body of document.querySelectorAll("main tbody")) body.replaceChildren();
    for (const node of document.querySelectorAll(".chart, .dag, .media, #health-status, #task-errors")) {
      node.replaceChildren();
    }
    for (const node of document.querySelectorAll(".updated, .totals, .card-value, #task-data")) node.textContent = "";
    delete $("view-task").dataset.taskId;
    delete $("view-workflow").dataset.workflowId;
  }

  function showLogin(message) {
    stopPolling();
    revokeMedia();
    wipe();
    $("topbar").hidden = true;
    clearError();
    showOnly("view-login");
    const error = $("login-error");
    error.textContent = message || "";
    error.hidden = !message;
    $("token-input").focus();
  }

  /** The token is gone or refused: forget it and ask for another. */
  function sessionEnded(message) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(message);
  }

  async function login(event) {
    event.preventDefault();
    let token = $("token-input").value.trim();
    if (/^bearer\s+/i.test(token)) token = token.replace(/^bearer\s+/i, "");
    if (!token) {
      showLogin("Paste a token first (mint one with `atelier token --tenant T --role service`).");
      return;
    }
    state.token = token;
    $("login-submit").disabled = true;
    try {
      await apiGet("monitoring/workers/health"); // proves the token before it is kept
    } catch (err) {
      if (err.status !== 401) {
        state.token = null;
        showLogin(err.status === 403 ? "This token may not read monitoring data: " + err.message : err.message);
      }
      return;
    } finally {
      $("login-submit").disabled = false;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token-input").value = "";
    enterApp();
  }

  function logout() {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("");
  }

  function enterApp() {
    $("topbar").hidden = false;
    $("login-error").hidden = true;
    showIdentity();
    if (!parseRoute().name) location.hash = "#/overview";
    else navigate();
  }

  // --------------------------------------------------------------------------------------------- routing

  function parseRoute() {
    const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
    let decoded;
    try {
      decoded = parts.map(decodeURIComponent);
    } catch (ignored) {
      decoded = [];
    }
    const [section, id] = decoded;
    if (section === "tasks" && id) return { name: "task", id: id };
    if (section === "workflows" && id) return { name: "workflow", id: id };
    if (["overview", "tasks", "workflows", "stats"].includes(section)) return { name: section };
    return { name: null };
  }

  const VIEWS = {
    overview: { section: "view-overview", nav: "overview", load: loadOverview },
    tasks: { section: "view-tasks", nav: "tasks", load: loadTasks },
    task: { section: "view-task", nav: "tasks", load: loadTask },
    workflows: { section: "view-workflows", nav: "workflows", load: loadWorkflows },
    workflow: { section: "view-workflow", nav: "workflows", load: loadWorkflow },
    stats: { section: "view-stats", nav: "stats", load: loadStats },
  };

  function navigate() {
    if (!state.token) {
      showLogin("");
      return;
    }
    const route = parseRoute();
    const view = VIEWS[route.name] || VIEWS.overview;
    stopPolling();
    forgetOtherDetail(route);
    if (route.name !== "task") revokeMedia();
    else if (!state.mediaKey || !state.mediaKey.startsWith(route.id + ":")) revokeMedia();
    clearError();
    showOnly(view.section);
    for (const link of document.querySelectorAll(".nav a")) {
      link.classList.toggle("active", link.dataset.view === view.nav);
    }
    refresh(view, route, state.generation);
  }

  /** Opening another task or workflow: clear what the previous one left on screen. */
  function forgetOtherDetail(route) {
    if (route.name === "task" && $("view-task").dataset.taskId !== route.id) {
      $("view-task").dataset.taskId = route.id;
      drawn.delete("task");
      for (const id of ["task-detail-id", "task-detail-status", "task-data"]) $(id).textContent = "";
      $("task-detail-status").className = "badge";
      delete $("task-detail-status").dataset.status;
      $("task-workflow-link").hidden = true;
      for (const id of ["task-inputs", "task-outputs", "task-errors"]) $(id).replaceChildren();
      for (const id of ["task-fields", "task-requests"]) $(id).tBodies[0].replaceChildren();
    }
    if (route.name === "workflow" && $("view-workflow").dataset.workflowId !== route.id) {
      $("view-workflow").dataset.workflowId = route.id;
      drawn.delete("workflow");
      for (const id of ["workflow-detail-name", "workflow-detail-status"]) $(id).textContent = "";
      $("workflow-detail-status").className = "badge";
      delete $("workflow-detail-status").dataset.status;
      $("workflow-dag").replaceChildren();
      for (const id of ["workflow-fields", "workflow-steps"]) $(id).tBodies[0].replaceChildren();
    }
  }

  /** Load the view; poll again while it asks to and the user stays on it. */
  async function refresh(view, route, generation) {
    const isCurrent = () => generation === state.generation && state.token !== null;
    let again = true;
    try {
      again = await view.load(route, isCurrent);
      if (isCurrent()) clearError();
    } catch (err) {
      if (!isCurrent() || err.status === 401) return;
      showError(err.message);
      again = err.status === 0 || err.status === 429 || err.status >= 500; // only transient failures are retried
    }
    if (isCurrent() && again) {
      state.timer = setTimeout(() => {
        if (document.hidden) {
          state.timer = setTimeout(() => refresh(view, route, generation), POLL_MS);
        } else {
          refresh(view, route, generation);
        }
      }, POLL_MS);
    }
  }

  // ------------------------------------------------------------------------------------ queues & workers

  async function loadOverview(route, isCurrent) {
    const [queues, workers, health] = await Promise.all([
      apiGet("monitoring/queues"),
      apiGet("monitoring/workers"),
      apiGet("monitoring/workers/health"),
    ]);
    if (!isCurrent()) return false;
    setUpdated("overview-updated");
    const { timestamp: ignoredQ, ...queueFigures } = queues;
    const { timestamp: ignoredW, ...workerFigures } = workers;
    const { timestamp: ignoredH, ...healthFigures } = health;
    if (!changed("overview", [queueFigures, workerFigures, healthFigures])) return true;

    const box = $("health-status");
    box.className = "health " + (health.healthy ? "healthy" : "unhealthy");
    box.dataset.healthy = String(Boolean(health.healthy));
    const lines = [
      el("strong", null, health.healthy ? "Healthy" : "Unhealthy"),
      " — " + health.total_workers + " worker(s), " + health.workers_with_capacity + " with free capacity.",
    ];
    if ((health.queues_without_workers || []).length) {
      lines.push(" Queues without workers: " + health.queues_without_workers.join(", ") + ".");
    }
    box.replaceChildren(...lines);

    $("queues-totals").textContent =
      queues.total_pending + " pending · " + queues.total_active + " active across " + queues.queues.length + " queues";
    $("queues-table").tBodies[0].replaceChildren(
      ...queues.queues.map((q) =>
        el(
          "tr",
          { "data-testid": "queue-row", "data-queue": q.name },
          el("td", null, q.name),
          el("td", { class: "num" }, q.depth),
          el("td", { class: "num" }, q.active_workers),
          el("td", { class: "num" }, q.active_tasks),
          el("td", { class: "num" }, q.reserved_tasks),
          el("td", { class: "num" }, fmtDuration(q.avg_wait_time_ms)),
          el("td", { class: "num" }, q.tasks_completed_last_hour),
        ),
      ),
    );

    $("workers-totals").textContent =
      workers.total_workers + " worker(s) · " + workers.total_active + " / " + workers.total_capacity +
      " slots busy (" + Number(workers.total_utilization_pct).toFixed(0) + "%) · " +
      workers.workers_at_capacity + " at capacity";
    const workerRows = workers.workers.map((w) =>
      el(
        "tr",
        { "data-testid": "worker-row", "data-worker": w.name },
        el("td", { class: "mono" }, w.name),
        el("td", null, (w.queues || []).join(", ")),
        el("td", { class: "num" }, w.active_tasks + " / " + w.concurrency),
        el("td", { class: "num" }, Number(w.utilization_pct).toFixed(0) + "%"),
        el("td", { class: "num" }, w.tasks_completed_total),
        el("td", { class: "num" }, Number(w.tasks_per_minute).toFixed(1)),
        el("td", { class: "num" }, w.memory_mb === null || w.memory_mb === undefined ? "—" : w.memory_mb.toFixed(0) + " MB"),
      ),
    );
    if (!workerRows.length) workerRows.push(el("tr", null, el("td", { colspan: 7, class: "empty" }, "No worker answers.")));
    $("workers-table").tBodies[0].replaceChildren(...workerRows);
    return true;
  }

  // -------------------------------------------------------------------------------------------- task list

  function formParams(form) {
    const params = {};
    for (const [key, value] of new FormData(form).entries()) {
      const text = String(value).trim();
      if (!text) continue;
      const input = form.elements.namedItem(key);
      if (input && input.type === "datetime-local") {
        const date = new Date(text); // the browser's local time → UTC for the API
        if (!Number.isNaN(date.getTime())) params[key] = date.toISOString();
      } else {
        params[key] = text;
      }
    }
    return params;
  }

  function pageInfo(data, noun) {
    const total = data.total_capped ? data.total + "+" : String(data.total);
    const plural = data.total === 1 && !data.total_capped ? noun : noun + "s";
    return "page " + data.page + " of " + Math.max(data.pages, 1) + " · " + total + " " + plural;
  }

  function progressCell(progress) {
    const pct = Math.max(0, Math.min(100, Number(progress) || 0));
    const bar = el("span", { class: "progress" }, el("span"));
    bar.firstChild.style.width = pct + "%";
    return el("td", null, bar, pct.toFixed(0) + "%");
  }

  async function loadTasks(route, isCurrent) {
    const params = formParams($("task-filters"));
    params.page = state.taskPage;
    const data = await apiGet("monitoring/tasks", params);
    if (!isCurrent()) return false;
    if (data.pages > 0 && data.page > data.pages) {
      state.taskPage = data.pages; // the list shrank under us
      return loadTasks(route, isCurrent);
    }
    setUpdated("tasks-updated");
    if (!changed("tasks", data)) return true;
    $("tasks-table").tBodies[0].replaceChildren(
      ...data.items.map((t) => {
        const href = "#/tasks/" + encodeURIComponent(t.id);
        const row = el(
          "tr",
          { class: "clickable", "data-testid": "task-row", "data-task-id": t.id, "data-status": t.status },
          el("td", { class: "mono" }, el("a", { href: href, "data-testid": "task-link", title: t.id }, shortId(t.id))),
          el("td", null, t.task_type),
          el("td", null, badge(t.status), t.has_error ? el("span", { class: "hint", title: "has errors" }, " ⚠") : null),
          el("td", null, t.provider_type || "—"),
          progressCell(t.progress),
          el("td", null, t.origin_instance + (t.origin_zone ? " / " + t.origin_zone : "")),
          timeCell(t.created_at),
          el("td", { class: "num" }, fmtDuration(t.duration_ms)),
        );
        row.addEventListener("click", (event) => {
          if (!(event.target instanceof HTMLAnchorElement)) location.hash = href;
        });
        return row;
      }),
    );
    $("tasks-empty").hidden = data.items.length > 0;
    $("tasks-page-info").textContent = pageInfo(data, "task");
    $("tasks-prev").disabled = data.page <= 1;
    $("tasks-next").disabled = data.page >= data.pages;
    return true;
  }

  // ------------------------------------------------------------------------------------------ task detail

  function fieldRows(tbody, pairs) {
    tbody.replaceChildren(
      ...pairs.map(([label, value, testid]) =>
        el("tr", { "data-field": label }, el("th", null, label), el("td", { "data-testid": testid || null }, value)),
      ),
    );
  }

  async function loadTask(route, isCurrent) {
    const path = "monitoring/tasks/" + encodeURIComponent(route.id);
    const task = await apiGet(path);
    if (!isCurrent()) return false;
    const key = task.id + ":" + task.status;
    if (!changed("task", task) && state.mediaKey === key) return !TERMINAL_TASK.has(task.status);

    $("task-detail-id").textContent = task.id;
    $("task-detail-id").title = task.id;
    const status = $("task-detail-status");
    status.className = "badge " + statusClass(task.status);
    status.textContent = task.status;
    status.dataset.status = task.status;

    const wf = $("task-workflow-link");
    wf.hidden = !task.workflow_id;
    if (task.workflow_id) {
      wf.replaceChildren(
        "Step of workflow ",
        el("a", { href: "#/workflows/" + encodeURIComponent(task.workflow_id), class: "mono" }, task.workflow_id),
      );
    }

    fieldRows($("task-fields").tBodies[0], [
      ["task type", task.task_type],
      ["status", badge(task.status)],
      ["provider", fmtValue(task.provider_type)],
      ["progress", Number(task.progress || 0).toFixed(0) + "%"],
      ["error category", fmtValue(task.error_category), "task-error-category"],
      ["tenant", fmtValue(task.tenant_id)],
      ["origin", [task.origin_instance, task.origin_zone, task.origin_tenant_id].filter(Boolean).join(" / ") || "—"],
      ["origin reference", fmtValue(task.origin_reference)],
      ["queue / priority", task.queue_name + " / " + task.priority],
      ["created", fmtTime(task.created_at)],
      ["started", fmtTime(task.started_at)],
      ["completed", fmtTime(task.completed_at)],
      ["updated", fmtTime(task.updated_at)],
      ["duration", fmtDuration(task.duration_ms)],
      ["retries", String(task.retry_count)],
      ["resumed", task.is_resumed ? "yes (" + task.resume_attempt_count + "×, last " + fmtTime(task.last_resume_attempt) + ")" : "no"],
      ["executor", [task.executor_type, task.executor_instance].filter(Boolean).join(" · ") || "—"],
      ["celery task id", fmtValue(task.celery_task_id)],
      ["service task id", fmtValue(task.service_task_id)],
      ["webhook url", fmtValue(task.webhook_url)],
      ["config", task.config ? el("pre", { class: "json" }, prettyJson(task.config)) : "—"],
    ]);

    const errors = task.errors || [];
    $("task-errors").replaceChildren(
      ...(errors.length
        ? errors.map((e) => el("li", { "data-testid": "task-error" }, fmtValue(e)))
        : [el("li", { class: "none" }, "none")]),
    );

    const requests = task.service_requests || [];
    $("task-requests").tBodies[0].replaceChildren(
      ...(requests.length
        ? requests.map((r) =>
            el(
              "tr",
              { "data-testid": "service-request-row" },
              timeCell(r.at),
              el("td", null, fmtValue(r.service)),
              el("td", null, fmtValue(r.method)),
              el("td", { class: "url mono" }, fmtValue(r.url)),
              el("td", { class: "num" }, fmtValue(r.status)),
              el("td", { class: "num" }, fmtDuration(r.duration_ms)),
            ),
          )
        : [el("tr", null, el("td", { colspan: 6, class: "empty" }, "No calls to remote services."))]),
    );
    $("task-data").textContent = prettyJson(task.task_data || {});

    if (state.mediaKey !== key) {
      const media = await apiGet(path + "/media");
      if (!isCurrent()) return false;
      revokeBlobs();
      state.mediaKey = key;
      renderMedia($("task-inputs"), media.inputs || [], "input", isCurrent);
      renderMedia($("task-outputs"), media.outputs || [], "output", isCurrent);
    }
    return !TERMINAL_TASK.has(task.status);
  }

  /** Where to load a media URL from: API storage URLs with the token (same origin), others as they are. */
  function mediaSource(url) {
    let parsed;
    try {
      parsed = new URL(url, document.baseURI);
    } catch (ignored) {
      return null;
    }
    if (parsed.protocol !== "http:" && parsed.protocol !== "https:") return null;
    if (parsed.origin === location.origin) return { auth: true, href: parsed.href };
    const at = parsed.pathname.indexOf(STORAGE_MARKER);
    if (at >= 0) {
      // Our storage API under another public base URL: ask the API that served this page.
      const rest = parsed.pathname.slice(at + STORAGE_MARKER.length);
      return { auth: true, href: new URL("storage/images/" + rest + parsed.search, API_ROOT).href };
    }
    return { auth: false, href: parsed.href };
  }

  function renderMedia(container, items, kind, isCurrent) {
    if (!items.length) {
      container.replaceChildren(el("p", { class: "empty" }, "none"));
      return;
    }
    container.replaceChildren(
      ...items.map((item) => {
        const isVideo = item.media_type === "video";
        const media = isVideo
          ? el("video", { controls: true, muted: true, preload: "metadata" })
          : el("img", { alt: item.name });
        setAttrs(media, {
          "data-testid": isVideo ? "media-video" : "media-image",
          "data-media-name": item.name,
          "data-media-kind": kind,
          "data-loaded": "false",
        });
        const caption = el("figcaption", null, el("strong", null, item.name), el("br"), item.path);
        const figure = el("figure", { "data-testid": "media-item", "data-media-kind": kind }, media, caption);
        loadMedia(media, item.url, figure, isCurrent);
        return figure;
      }),
    );
  }

  async function loadMedia(media, url, figure, isCurrent) {
    const source = mediaSource(url);
    const fail = (message) => {
      media.dataset.loaded = "error";
      figure.append(el("div", { class: "media-error", "data-testid": "media-error" }, message));
    };
    if (!source) {
      fail("unsupported URL");
      return;
    }
    media.addEventListener("load", () => (media.dataset.loaded = "true"));
    media.addEventListener("loadeddata", () => (media.dataset.loaded = "true"));
    if (!source.auth) {
      media.setAttribute("referrerpolicy", "no-referrer");
      media.src = source.href;
      return;
    }
    try {
      const response = await authFetch(source.href, "image/*,video/*,*/*");
      const blob = await response.blob();
      const objectUrl = URL.createObjectURL(blob);
      if (!isCurrent()) {
        URL.revokeObjectURL(objectUrl);
        return;
      }
      state.blobs.push(objectUrl);
      media.src = objectUrl;
    } catch (err) {
      if (err.status !== 401 && isCurrent()) fail("could not load: " + err.message);
    }
  }

  // ---------------------------------------------------------------------------------------- workflow list

  async function loadWorkflows(route, isCurrent) {
    const params = formParams($("workflow-filters"));
    params.page = state.workflowPage;
    const data = await apiGet("monitoring/workflows", params);
    if (!isCurrent()) return false;
    if (data.pages > 0 && data.page > data.pages) {
      state.workflowPage = data.pages;
      return loadWorkflows(route, isCurrent);
    }
    setUpdated("workflows-updated");
    if (!changed("workflows", data)) return true;
    $("workflows-table").tBodies[0].replaceChildren(
      ...data.items.map((w) => {
        const href = "#/workflows/" + encodeURIComponent(w.id);
        const row = el(
          "tr",
          { class: "clickable", "data-testid": "workflow-row", "data-workflow-id": w.id, "data-status": w.status },
          el("td", { class: "mono" }, el("a", { href: href, "data-testid": "workflow-link", title: w.id }, shortId(w.id))),
          el("td", null, w.name),
          el("td", null, badge(w.status)),
          el("td", { class: "num" }, w.completed_steps + " / " + w.total_steps),
          el("td", null, fmtValue(w.current_step)),
          el("td", null, w.origin_instance + (w.origin_zone ? " / " + w.origin_zone : "")),
          timeCell(w.created_at),
          el("td", { class: "num" }, fmtDuration(w.duration_ms)),
        );
        row.addEventListener("click", (event) => {
          if (!(event.target instanceof HTMLAnchorElement)) location.hash = href;
        });
        return row;
      }),
    );
    $("workflows-empty").hidden = data.items.length > 0;
    $("workflows-page-info").textContent = pageInfo(data, "workflow");
    $("workflows-prev").disabled = data.page <= 1;
    $("workflows-next").disabled = data.page >= data.pages;
    return true;
  }

  // -------------------------------------------------------------------------------------- workflow detail

  async function loadWorkflow(route, isCurrent) {
    const wf = await apiGet("monitoring/workflows/" + encodeURIComponent(route.id));
    if (!isCurrent()) return false;
    if (!changed("workflow", wf)) return !TERMINAL_WORKFLOW.has(wf.status);
    $("workflow-detail-name").textContent = wf.name;
    const status = $("workflow-detail-status");
    status.className = "badge " + statusClass(wf.status);
    status.textContent = wf.status;
    status.dataset.status = wf.status;

    const errors = [wf.error_message, ...(wf.errors || [])].filter(Boolean);
    fieldRows($("workflow-fields").tBodies[0], [
      ["id", el("span", { class: "mono" }, wf.id)],
      ["description", fmtValue(wf.description)],
      ["steps", wf.completed_steps + " / " + wf.total_steps + " finished"],
      ["current step", fmtValue(wf.current_step)],
      ["origin", [wf.origin_instance, wf.origin_zone, wf.origin_tenant_id].filter(Boolean).join(" / ") || "—"],
      ["created", fmtTime(wf.created_at)],
      ["started", fmtTime(wf.started_at)],
      ["completed", fmtTime(wf.completed_at)],
      ["duration", fmtDuration(wf.duration_ms)],
      ["errors", errors.length ? errors.join("\n") : "—", "workflow-errors"],
    ]);

    renderDag($("workflow-dag"), wf.steps || []);

    $("workflow-steps").tBodies[0].replaceChildren(
      ...(wf.steps || []).map((s) =>
        el(
          "tr",
          { "data-testid": "step-row", "data-step-id": s.step_id, "data-status": s.status },
          el("td", null, s.step_id),
          el("td", null, s.task_type),
          el("td", null, badge(s.status)),
          el("td", null, (s.dependencies || []).join(", ") || "—"),
          el(
            "td",
            { class: "mono" },
            s.task_id ? el("a", { href: "#/tasks/" + encodeURIComponent(s.task_id), title: s.task_id }, shortId(s.task_id)) : "—",
          ),
          el("td", { class: "num" }, fmtDuration(s.duration_ms)),
          el("td", null, fmtValue(s.error_message)),
        ),
      ),
    );
    return !TERMINAL_WORKFLOW.has(wf.status);
  }

  /** Layer of every step: the longest path from a root (cycles, which the API refuses, are cut). */
  function layersOf(steps) {
    const byId = new Map(steps.map((s) => [s.step_id, s]));
    const depth = new Map();
    const visiting = new Set();
    const visit = (id) => {
      if (depth.has(id)) return depth.get(id);
      if (visiting.has(id)) return 0;
      visiting.add(id);
      const deps = (byId.get(id).dependencies || []).filter((d) => byId.has(d));
      const d = deps.length ? 1 + Math.max(...deps.map(visit)) : 0;
      visiting.delete(id);
      depth.set(id, d);
      return d;
    };
    const layers = [];
    for (const step of steps) {
      const d = visit(step.step_id);
      (layers[d] = layers[d] || []).push(step);
    }
    // Order each layer by the mean position of its parents (fewer crossings), stable otherwise.
    const row = new Map();
    layers.forEach((nodes, index) => {
      if (index > 0) {
        const weight = (s) => {
          const rows = (s.dependencies || []).map((d) => row.get(d)).filter((r) => r !== undefined);
          return rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : Number.MAX_VALUE;
        };
        nodes.sort((a, b) => weight(a) - weight(b));
      }
      nodes.forEach((s, i) => row.set(s.step_id, i));
    });
    return layers.filter(Boolean);
  }

  function renderDag(container, steps) {
    if (!steps.length) {
      container.replaceChildren(el("p", { class: "empty" }, "This workflow has no steps."));
      return;
    }
    const W = 180, H = 48, GAP_X = 64, GAP_Y = 18, PAD = 12;
    const layers = layersOf(steps);
    const tallest = Math.max(...layers.map((l) => l.length));
    const width = PAD * 2 + layers.length * W + (layers.length - 1) * GAP_X;
    const height = PAD * 2 + tallest * H + (tallest - 1) * GAP_Y;
    const at = new Map();
    layers.forEach((nodes, li) => {
      const offset = ((tallest - nodes.length) * (H + GAP_Y)) / 2;
      nodes.forEach((s, i) => at.set(s.step_id, { x: PAD + li * (W + GAP_X), y: PAD + offset + i * (H + GAP_Y) }));
    });

    const root = svg("svg", {
      width: width,
      height: height,
      viewBox: "0 0 " + width + " " + height,
      role: "img",
      "aria-label": "Workflow steps as a graph",
      "data-testid": "dag-svg",
    });
    root.append(
      svg(
        "defs",
        null,
        svg(
          "marker",
          { id: "dag-arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto" },
          svg("path", { d: "M0,0 L10,5 L0,10 z", class: "dag-arrow" }),
        ),
      ),
    );
    const edges = svg("g", { class: "dag-edges" });
    const nodes = svg("g", { class: "dag-nodes" });
    root.append(edges, nodes);

    for (const step of steps) {
      const to = at.get(step.step_id);
      for (const dep of step.dependencies || []) {
        const from = at.get(dep);
        if (!from) continue;
        const x1 = from.x + W, y1 = from.y + H / 2, x2 = to.x, y2 = to.y + H / 2, dx = GAP_X / 2;
        edges.append(
          svg("path", {
            class: "dag-edge",
            "data-testid": "dag-edge",
            "data-from": dep,
            "data-to": step.step_id,
            d: `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}`,
            "marker-end": "url(#dag-arrow)",
          }),
        );
      }
      const node = svg(
        "g",
        {
          class: "dag-node " + statusClass(step.status) + (step.task_id ? " has-task" : ""),
          transform: `translate(${to.x},${to.y})`,
          "data-testid": "dag-node",
          "data-step-id": step.step_id,
          "data-status": step.status,
          "data-task-id": step.task_id || null,
          tabindex: step.task_id ? 0 : null,
          role: step.task_id ? "link" : null,
          "aria-label": step.step_id + ": " + step.status,
        },
        svg("title", null, step.step_id + " · " + step.task_type + " · " + step.status +
          (step.error_message ? "\n" + step.error_message : "") + (step.task_id ? "\ntask " + step.task_id : "")),
        svg("rect", { width: W, height: H, rx: 7, ry: 7 }),
        svg("text", { x: 10, y: 20 }, truncate(step.step_id, 24)),
        svg("text", { x: 10, y: 37, class: "dag-sub" }, truncate(step.task_type + " · " + step.status, 30)),
      );
      if (step.task_id) {
        const open = () => (location.hash = "#/tasks/" + encodeURIComponent(step.task_id));
        node.addEventListener("click", open);
        node.addEventListener("keydown", (event) => {
          if (event.key === "Enter" || event.key === " ") {
            event.preventDefault();
            open();
          }
        });
      }
      nodes.append(node);
    }
    container.replaceChildren(root);
  }

  // ------------------------------------------------------------------------------------------------ stats

  function ordered(counts, order) {
    const entries = Object.entries(counts || {}).filter(([, v]) => typeof v === "number");
    if (order) {
      const rank = (k) => (order.includes(k) ? order.indexOf(k) : order.length);
      return entries.sort((a, b) => rank(a[0]) - rank(b[0]) || a[0].localeCompare(b[0]));
    }
    return entries.sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  }

  function barChart(container, entries, label, byStatus) {
    if (!entries.length) {
      container.replaceChildren(el("p", { class: "empty", "data-testid": "chart-empty" }, "No data yet."));
      return;
    }
    const LABEL_W = 210, BAR_W = 300, VALUE_W = 70, ROW = 26;
    const width = LABEL_W + BAR_W + VALUE_W, height = entries.length * ROW + 4;
    const max = Math.max(1, ...entries.map(([, v]) => v));
    const root = svg("svg", { viewBox: "0 0 " + width + " " + height, role: "img", "aria-label": label });
    entries.forEach(([key, value], i) => {
      const y = i * ROW + 2;
      const barWidth = value > 0 ? Math.max(2, (value / max) * BAR_W) : 0;
      root.append(
        svg(
          "g",
          { "data-testid": "chart-bar", "data-label": key, "data-value": value },
          svg("title", null, key + ": " + value),
          svg("text", { x: LABEL_W - 8, y: y + 17, "text-anchor": "end" }, truncate(key, 30)),
          svg("rect", {
            class: "bar" + (byStatus ? " " + statusClass(key) : ""),
            x: LABEL_W,
            y: y + 4,
            width: barWidth,
            height: ROW - 8,
            rx: 3,
          }),
          svg("text", { x: LABEL_W + barWidth + 6, y: y + 17 }, String(value)),
        ),
      );
    });
    container.replaceChildren(root);
  }

  async function loadStats(route, isCurrent) {
    const [tasks, workflows] = await Promise.all([apiGet("monitoring/stats"), apiGet("monitoring/workflows/stats")]);
    if (!isCurrent()) return false;
    setUpdated("stats-updated");
    if (!changed("stats", [tasks, workflows])) return true;
    $("stat-total").textContent = String(tasks.total_tasks);
    $("stat-last-hour").textContent = String(tasks.tasks_last_hour);
    $("stat-last-24h").textContent = String(tasks.tasks_last_24h);
    $("stat-workflows").textContent = String(workflows.total_workflows);
    $("stat-avg-steps").textContent = Number(workflows.avg_steps_per_workflow || 0).toFixed(1);
    barChart($("chart-by-status"), ordered(tasks.by_status, ENUMS.TaskStatus), "Tasks by status", true);
    barChart($("chart-by-provider"), ordered(tasks.by_provider), "Tasks by provider", false);
    barChart($("chart-by-task-type"), ordered(tasks.by_task_type), "Tasks by type", false);
    barChart(
      $("chart-workflows-by-status"),
      ordered(workflows.by_status, ENUMS.WorkflowStatus),
      "Workflows by status",
      true,
    );
    return true;
  }

  // ------------------------------------------------------------------------------------------------ start

  function listControls(formId, pageKey, prevId, nextId, routeName) {
    const form = $(formId);
    const apply = () => {
      state[pageKey] = 1;
      if (parseRoute().name === routeName) navigate();
      else location.hash = "#/" + routeName;
    };
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      apply();
    });
    form.addEventListener("reset", () => setTimeout(apply, 0)); // after the fields are reset
    for (const input of form.querySelectorAll("select, input[type=datetime-local]")) {
      input.addEventListener("change", apply);
    }
    $(prevId).addEventListener("click", () => {
      state[pageKey] = Math.max(1, state[pageKey] - 1);
      navigate();
    });
    $(nextId).addEventListener("click", () => {
      state[pageKey] += 1;
      navigate();
    });
  }

  function start() {
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", logout);
    listControls("task-filters", "taskPage", "tasks-prev", "tasks-next", "tasks");
    listControls("workflow-filters", "workflowPage", "workflows-prev", "workflows-next", "workflows");
    window.addEventListener("hashchange", navigate);
    fillEnumSelects();
    loadEnums();
    state.token = sessionStorage.getItem(TOKEN_KEY);
    if (state.token) enterApp();
    else showLogin("");
  }

  start();
})();
