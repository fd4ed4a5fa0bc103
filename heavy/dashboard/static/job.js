// The job view: one lane per trajectory fed by the job's events, the job's status and actions, its plan while held
// for review, and its report once ready.
import { aggNumber, aggregationEvent, resetAggregation, showAggregation } from "./aggregation.js";
import { api, handleAuth, session } from "./api.js";
import { follow } from "./events.js";
import { $, arrive, clipped, escapeHtml, show } from "./view.js";

const TERMINAL_STATUSES = ["done", "partial", "failed", "cancelled"];

function lane(k) {
  let node = $(`lane-${k}`);
  if (!node) {
    node = document.createElement("div");
    node.className = "lane"; node.id = `lane-${k}`;
    node.innerHTML = `<h2>Trajectory ${k + 1} <span class="state">running</span></h2>
      <div class="action" dir="auto">starting</div>
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
      set(lane(event.trajectory), ".action", clipped(`${event.tool}(${Object.values(event.arguments).join(", ")})`, 120));
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
      set(node, ".action", clipped(event.answer ? `answer: ${event.answer}` : event.error ? `error: ${event.error}` : "no answer", 160));
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
  if (opened !== session.generation) return false;
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
  const opened = session.generation;
  showRecord($("job-view").dataset.id, opened).catch((error) => { if (opened === session.generation) console.error(error); });
}

async function loadReport() {
  const jobId = $("job-view").dataset.id;
  const opened = session.generation;
  if (!await showRecord(jobId, opened)) return;
  // the server renders the Markdown (CommonMark, raw HTML off; citations linked to the Sources items' ids)
  const html = await api(`v1/jobs/${jobId}/report`, { headers: { Accept: "text/html" } });
  if (opened !== session.generation) return;
  $("report").innerHTML = html;
  $("report").hidden = false;
  const report = await api(`v1/jobs/${jobId}/report`, { headers: { Accept: "application/json" } });
  if (opened !== session.generation) return;
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
    `<li dir="auto">${escapeHtml(claim)}${refuted.includes(claim) ? " <small>(the model's check said the page does not say this)</small>" : ""}</li>`).join("");
}

export async function openJob(jobId, moveFocus) {
  const opened = session.generation;
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
    if (opened !== session.generation) return; // another route took over meanwhile
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
    follow(jobId, apply);
  } catch (error) {
    if (opened !== session.generation) return;
    if (error.status === 401) return handleAuth(error);
    if (error.status) { $("job-stage").textContent = error.message; return; } // a 404 says there is no such job
    // the API is down or restarting: say so, and open the job once it answers
    $("job-stage").textContent = "cannot reach the heavy API; trying again…";
    setTimeout(() => { if (opened === session.generation) openJob(jobId, moveFocus); }, 2000);
  }
}

async function control(action) {
  const jobId = $("job-view").dataset.id;
  try { setStatus((await api(`v1/jobs/${jobId}/${action}`, { method: "POST" })).status); }
  catch (error) { $("job-stage").textContent = error.message; }
}

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
