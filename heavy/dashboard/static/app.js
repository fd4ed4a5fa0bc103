// heavy dashboard: plain JS, no build step. Talks to the REST API with the API key as a Bearer token and follows
// a job's events over SSE read with fetch (EventSource cannot send headers), resuming with Last-Event-ID.
"use strict";

const KEY_STORAGE = "heavy.apiKey";
const TERMINAL_EVENTS = ["report_ready", "job_failed", "job_cancelled"];
const TERMINAL_STATUSES = ["done", "partial", "failed", "cancelled"];
const $ = (id) => document.getElementById(id);

let apiKey = sessionStorage.getItem(KEY_STORAGE) || "";
let follower = null; // the AbortController of the open event stream
let listTimer = null;
let generation = 0; // bumped on every route: a view opened by an older route must not start a second follower
const PAGE = 50; // jobs a list page shows
// Where the list's page is: the cursor of the page before's links.next (null: the newest jobs). A cursor holds its
// place while jobs are submitted above it (an offset moved with them: a page polled again showed other jobs).
let listCursor = null;
let olderCursor = null; // the shown page's links.next cursor, null when no older jobs follow
let newerCursors = []; // the cursors of the pages "newer" goes back to, the last one first
let listRequest = 0; // the latest list request: an older one answering late must not draw over it
let routed = false; // a view was shown: the next route moves the keyboard's focus (see arrive)

class ApiError extends Error {
  constructor(status, body, retryAfter = null) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.retryAfter = retryAfter; // the seconds a 429 or 503 said to wait (Retry-After), else null
  }
}

// `path` is relative (v1/...), as is every URL the page uses: resolved against the page, it stays under the prefix a
// proxy serves the API at (HEAVY_API_ROOT_PATH), and is /v1/... at /.
async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${apiKey}`, ...(options.headers || {}) };
  if (options.body) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { ...options, headers });
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// --- views ---
function show(view) {
  for (const id of ["sign-in", "jobs-view", "job-view"]) $(id).hidden = id !== view;
  $("sign-out").hidden = view === "sign-in";
}

// A view shown by a route: the link or button pressed went out of sight with the view it was in, and the keyboard's
// focus fell to the page's body. It moves to the view's heading, where a screen reader says what is shown and Tab
// goes on from (not as the page loads: the browser starts there on its own). Its title names it in tabs and history.
function arrive(heading, moveFocus) {
  document.title = `${heading.textContent} — heavy`;
  if (moveFocus) heading.focus();
}

function route() {
  generation += 1;
  if (follower) { follower.abort(); follower = null; }
  clearInterval(listTimer);
  const moveFocus = routed;
  routed = true;
  if (!apiKey) { show("sign-in"); return arrive($("sign-in").querySelector("h1"), moveFocus); }
  refreshJobs(); // also under a job's view: the header's count of jobs
  const match = location.hash.match(/^#\/jobs\/([0-9a-f]{32})$/);
  if (match) return openJob(match[1], moveFocus);
  show("jobs-view");
  arrive($("jobs-view").querySelector("h1"), moveFocus);
  listTimer = setInterval(refreshJobs, 3000);
}

async function refreshJobs() {
  const status = $("status-filter").value;
  const asked = ++listRequest;
  try {
    const at = listCursor ? `&cursor=${encodeURIComponent(listCursor)}` : "";
    const page = await api(`v1/jobs?limit=${PAGE}${at}${status ? `&status=${status}` : ""}`);
    if (asked !== listRequest) return;
    if (listCursor && !page.jobs.length) { listCursor = null; newerCursors = []; return refreshJobs(); } // jobs left
    $("tenant-status").textContent = `${page.total} job(s)${status ? ` ${status}` : ""}`;
    const shown = `${page.offset + 1}–${page.offset + page.jobs.length} of ${page.total}`;
    $("page-info").textContent = page.total > PAGE || listCursor ? shown : "";
    $("newer").hidden = $("older").hidden = page.total <= PAGE && !listCursor;
    olderCursor = page.links.next ? new URL(page.links.next, location.href).searchParams.get("cursor") : null;
    const focused = document.activeElement;
    $("newer").disabled = !listCursor;
    $("older").disabled = !olderCursor;
    // the pager button pressed, disabled at the list's end, drops the keyboard's focus: the other one takes it
    if (focused.disabled && ["newer", "older"].includes(focused.id)) {
      $(focused.id === "newer" ? "older" : "newer").focus();
    }
    const focusedRow = focused.closest("#jobs tr[data-id]")?.dataset.id; // drawn again each poll: focus kept
    $("jobs").querySelector("tbody").innerHTML = page.jobs.map((job) => `
      <tr data-id="${job.id}"><td><a href="#/jobs/${job.id}">${escapeHtml(job.question)}</a></td>
      <td class="status-${job.status}">${job.status}</td><td>${job.mode}</td><td>${job.tokens}</td>
      <td>${new Date(job.created_at * 1000).toLocaleString()}</td></tr>`).join("");
    if (focusedRow) $("jobs").querySelector(`tr[data-id="${focusedRow}"] a`)?.focus();
  } catch (error) { handleAuth(error); }
}

function handleAuth(error) {
  if (error.status === 401) { apiKey = ""; sessionStorage.removeItem(KEY_STORAGE); $("sign-in-error").textContent = error.message; route(); }
  else console.error(error);
}

// --- one job: lanes fed by events ---
function lane(k) {
  let node = $(`lane-${k}`);
  if (!node) {
    node = document.createElement("div");
    node.className = "lane"; node.id = `lane-${k}`;
    node.innerHTML = `<h2>Trajectory ${k + 1} <span class="state">running</span></h2>
      <div class="action">starting</div>
      <dl><dt>step</dt><dd class="step">0</dd><dt>tokens</dt><dd class="tokens">0</dd>
      <dt>sources</dt><dd class="sources">0</dd></dl>`;
    node.dataset.sources = "0";
    $("lanes").appendChild(node);
  }
  return node;
}

function apply(event) {
  const set = (node, cls, text) => { node.querySelector(cls).textContent = text; };
  aggregationEvent(event); // the Aggregation panel (aggregation.js)
  switch (event.type) {
    case "job_started":
      for (let k = 0; k < event.trajectories; k++) lane(k);
      advance("running");
      break;
    case "trajectory_step": {
      const node = lane(event.trajectory);
      // after its done, a step is a rerun's: a worker that took the job over runs a crashed trajectory again
      if (node.classList.contains("done")) { node.classList.remove("done", "failed"); set(node, ".state", "running"); }
      set(node, ".step", event.step); set(node, ".tokens", event.total_tokens); set(node, ".action", event.action);
      break;
    }
    case "tool_call":
      set(lane(event.trajectory), ".action", `${event.tool}(${Object.values(event.arguments).join(", ")})`.slice(0, 120));
      break;
    case "tool_result": {
      const node = lane(event.trajectory);
      node.dataset.sources = String(Number(node.dataset.sources) + event.sources.length);
      set(node, ".sources", node.dataset.sources);
      break;
    }
    case "trajectory_done": {
      const node = lane(event.trajectory);
      node.classList.add("done");
      node.classList.toggle("failed", Boolean(event.error)); // its border red, not an answered lane's green
      set(node, ".state", event.stop_reason); set(node, ".tokens", event.total_tokens);
      set(node, ".action", (event.answer ? `answer: ${event.answer}` : event.error ? `error: ${event.error}` : "no answer").slice(0, 160));
      break;
    }
    case "aggregating": $("job-stage").textContent = `aggregating (${event.reason})`; advance("aggregating"); break;
    case "report_ready":
      $("job-stage").textContent = event.report_error ? `report ready (partial: no findings, ${event.report_error})`
        : "report ready";
      loadReport().catch((error) => { $("job-stage").textContent = `report ready; loading it failed: ${error.message}`; });
      break;
    case "job_failed": $("job-stage").textContent = `failed: ${event.error}`; endedWithoutReport("failed"); break;
    case "job_cancelled": $("job-stage").textContent = "cancelled"; endedWithoutReport("cancelled"); break;
  }
}

// An ended job's page replays its events from the first: they must not move its status (and its buttons) back
function advance(status) {
  if (!TERMINAL_STATUSES.includes($("job-status").textContent)) setStatus(status);
}

function setStatus(status) {
  $("job-status").textContent = status;
  const ended = TERMINAL_STATUSES.includes(status);
  $("cancel").disabled = ended; $("finish").disabled = ended || status !== "running";
  $("delete").disabled = !ended;
  $("approve").hidden = status !== "awaiting_approval";
  const approveBy = $("approve-by"); // in the plan, when the job has an approval window
  if (approveBy) approveBy.hidden = status !== "awaiting_approval";
}

// What an ended job's record says: its status, and what it cost (a job ended without a report has no other word of
// it). False when another route opened meanwhile: the view shows another job, or none.
async function showRecord(jobId, opened) {
  const job = await api(`v1/jobs/${jobId}`);
  if (opened !== generation) return false;
  setStatus(job.status);
  showSpent(job);
  return true;
}

function showSpent(job) {
  const known = job.cost_usd != null; // once the job has ended (aggNumber: aggregation.js)
  $("job-spent").hidden = !known;
  if (known) $("job-spent").textContent = `Spent ${aggNumber(job.tokens)} tokens, $${job.cost_usd.toFixed(4)}`;
}

// A job ended with no report (failed, cancelled): its record, read again, holds its cost
function endedWithoutReport(status) {
  setStatus(status);
  const opened = generation;
  showRecord($("job-view").dataset.id, opened).catch((error) => { if (opened === generation) console.error(error); });
}

async function loadReport() {
  const jobId = $("job-view").dataset.id;
  const opened = generation;
  if (!await showRecord(jobId, opened)) return;
  // the server renders the Markdown (CommonMark, raw HTML off; citations linked to the Sources items' ids)
  const html = await api(`v1/jobs/${jobId}/report`, { headers: { Accept: "text/html" } });
  if (opened !== generation) return;
  $("report").innerHTML = html;
  $("report").hidden = false;
  const report = await api(`v1/jobs/${jobId}/report`, { headers: { Accept: "application/json" } });
  if (opened !== generation) return;
  showDropped(report.dropped_claims || [], report.refuted_claims || []);
  showAggregation(report);
}

function showDropped(dropped, refuted) {
  // what the claim checks took out of the report, so a reader can see what was not trusted and why
  const box = $("dropped");
  box.hidden = dropped.length === 0;
  box.querySelector("summary").textContent =
    `${dropped.length} claim${dropped.length === 1 ? "" : "s"} taken out (no fetched page supports ${dropped.length === 1 ? "it" : "them"})`;
  box.querySelector("ul").innerHTML = dropped.map((claim) =>
    `<li>${escapeHtml(claim)}${refuted.includes(claim) ? " <small>(the model's check said the page does not say this)</small>" : ""}</li>`).join("");
}

async function follow(jobId) {
  // Reads the SSE stream with fetch; on a drop, reconnects after a pause with the last event id it saw.
  let last = 0;
  const controller = new AbortController();
  follower = controller;
  for (let attempt = 0; !controller.signal.aborted; attempt++) {
    let told = null; // a refusal that said when to come back: the tenant's stream cap, the job store away a moment
    try {
      const response = await fetch(`v1/jobs/${jobId}/events`, {
        headers: { Authorization: `Bearer ${apiKey}`, "Last-Event-ID": String(last) }, signal: controller.signal });
      if (!response.ok) {
        throw new ApiError(response.status, await response.json(), Number(response.headers.get("Retry-After")) || null);
      }
      $("connection").textContent = "live";
      attempt = 0;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let cr = ""; // a read that ended in "\r": its "\n" may come in the next read, and "\r\n" is one line end
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const text = cr + value;
        cr = text.endsWith("\r") ? "\r" : "";
        buffer += (cr ? text.slice(0, -1) : text).replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
          const fields = {};
          for (const line of block.split("\n")) {
            const at = line.indexOf(":");
            if (at > 0) fields[line.slice(0, at)] = (fields[line.slice(0, at)] || "") + line.slice(at + 1).replace(/^ /, "");
          }
          if (!fields.data) continue;
          if (Number(fields.id) !== last + 1) console.warn(`event ${fields.id} after ${last}`);
          last = Number(fields.id);
          const event = JSON.parse(fields.data);
          apply(event);
          const view = $("job-view");  // what arrived, for people and tests: the last id and how many were applied
          view.dataset.lastEvent = String(last);
          view.dataset.applied = String(Number(view.dataset.applied || 0) + 1);
          if (TERMINAL_EVENTS.includes(event.type)) { $("connection").textContent = ""; return; }
        }
      }
    } catch (error) {
      if (controller.signal.aborted) return;
      if (error.status === 401 || error.status === 404) return handleAuth(error);
      if (error.retryAfter) told = error;
    }
    const pause = told ? Math.min(told.retryAfter, 60) * 1000 : Math.min(5000, 500 * 2 ** attempt);
    $("connection").textContent = told ? `${told.message}: trying again in ${pause / 1000} s` : "reconnecting…";
    await new Promise((resolve) => setTimeout(resolve, pause));
  }
}

async function openJob(jobId, moveFocus) {
  const opened = generation;
  show("job-view");
  const view = $("job-view");
  view.dataset.id = jobId;
  view.dataset.applied = "0";
  view.dataset.lastEvent = "0";
  $("lanes").innerHTML = ""; $("report").hidden = true; $("report").innerHTML = "";
  $("job-stage").textContent = ""; $("job-question").textContent = ""; $("plan").hidden = true; resetAggregation();
  // no action until this job's status is known: the last job's stayed (an ended one's Delete enabled), and a click
  // then acted on this job unseen, or missed its button as the job's question filled in the heading above it
  $("job-status").textContent = ""; $("approve").hidden = true; $("job-spent").hidden = true;
  for (const id of ["finish", "cancel", "delete"]) $(id).disabled = true;
  try {
    const job = await api(`v1/jobs/${jobId}`);
    if (opened !== generation) return; // another route took over meanwhile
    $("job-question").textContent = job.question;
    arrive($("job-question"), moveFocus);
    for (let k = 0; k < job.params.trajectories; k++) lane(k);
    if (job.plan) {
      const by = job.approve_by ? ` <span id="approve-by">Approve it by ` +
        `${escapeHtml(new Date(job.approve_by * 1000).toLocaleString())}, or it is cancelled.</span>` : "";
      $("plan").innerHTML = `<p><strong>Plan</strong> (up to ${job.plan.max_tokens} tokens, ` +
        `$${job.plan.max_cost_usd}):${by}</p><ul>${job.plan.steps.map((s) => `<li>${escapeHtml(s)}</li>`).join("")}</ul>`;
      $("plan").hidden = false;
    }
    setStatus(job.status); // after the plan: it shows the plan's approval deadline only while one is awaited
    showSpent(job);
    follow(jobId);
  } catch (error) {
    if (opened !== generation) return;
    if (error.status === 401) return handleAuth(error);
    if (error.status) { $("job-stage").textContent = error.message; return; } // a 404 says there is no such job
    // the API is down or restarting: say so, and open the job once it answers
    $("job-stage").textContent = "cannot reach the heavy API; trying again…";
    setTimeout(() => { if (opened === generation) openJob(jobId, moveFocus); }, 2000);
  }
}

async function control(action) {
  const jobId = $("job-view").dataset.id;
  try { setStatus((await api(`v1/jobs/${jobId}/${action}`, { method: "POST" })).status); }
  catch (error) { $("job-stage").textContent = error.message; }
}

// --- wiring ---
$("sign-in-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  apiKey = $("api-key").value.trim();
  try { await api("v1/jobs?limit=1"); sessionStorage.setItem(KEY_STORAGE, apiKey); $("sign-in-error").textContent = ""; route(); }
  catch (error) { apiKey = ""; $("sign-in-error").textContent = error.message; }
});
$("sign-out").addEventListener("click", () => { apiKey = ""; sessionStorage.removeItem(KEY_STORAGE); location.hash = "#/"; route(); });
$("submit-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  // what the user leaves blank is the deployment's setting (HEAVY_MODE, HEAVY_TRAJECTORIES...): not sent
  const number = (id) => ($(id).value ? Number($(id).value) : undefined);
  const body = { question: $("question").value, mode: $("mode").value || undefined, trajectories: number("trajectories"),
    max_steps: number("max-steps"), step_tokens: number("step-tokens"), job_tokens: number("job-tokens"),
    review: $("review").checked };
  try {
    const job = await api("v1/jobs", { method: "POST", body: JSON.stringify(body) });
    $("submit-error").textContent = "";
    location.hash = `#/jobs/${job.id}`;
  } catch (error) { $("submit-error").textContent = error.message; }
});
$("status-filter").addEventListener("change", () => { listCursor = null; newerCursors = []; refreshJobs(); });
// newer: back to the page older came from (at the top, the newest jobs, those submitted since included)
$("newer").addEventListener("click", () => { listCursor = newerCursors.pop() ?? null; refreshJobs(); });
$("older").addEventListener("click", () => {
  if (!olderCursor) return;
  newerCursors.push(listCursor);
  listCursor = olderCursor;
  refreshJobs();
});
$("jobs").addEventListener("click", (e) => {
  // the whole row for a pointer; the question's link for the keyboard (and screen readers)
  const row = e.target.closest("tr[data-id]");
  if (row) location.hash = `#/jobs/${row.dataset.id}`;
});
$("report").addEventListener("click", (e) => {
  // citations jump to their source without touching the location hash (which routes between views)
  const cite = e.target.closest("a.cite");
  if (!cite) return;
  e.preventDefault();
  const source = $(`src-${cite.dataset.cite}`);
  if (!source) return;
  for (const li of document.querySelectorAll("#report li.highlight")) li.classList.remove("highlight");
  source.classList.add("highlight");
  source.tabIndex = -1; // the keyboard goes on from the source, as from a followed link's target
  source.focus({ preventScroll: true });
  source.scrollIntoView({ block: "center" });
});
$("cancel").addEventListener("click", () => control("cancel"));
$("finish").addEventListener("click", () => control("finish"));
$("approve").addEventListener("click", async () => { await control("approve"); });
$("delete").addEventListener("click", async () => {
  const jobId = $("job-view").dataset.id;
  if (!confirm("Delete this job with its events and its report?")) return;
  try { await api(`v1/jobs/${jobId}`, { method: "DELETE" }); location.hash = "#/"; }
  catch (error) { $("job-stage").textContent = error.message; }
});
window.addEventListener("hashchange", route);
route();
