// The jobs view: the list of the tenant's jobs, paged by cursor and polled while shown, and the form that submits one.
import { api, handleAuth } from "./api.js";
import { $, escapeHtml } from "./view.js";

const PAGE = 50; // jobs a list page shows
// Where the list's page is: the cursor of the page before's links.next (null: the newest jobs). A cursor holds its
// place while jobs are submitted above it (an offset moved with them: a page polled again showed other jobs).
let listCursor = null;
let olderCursor = null; // the shown page's links.next cursor, null when no older jobs follow
let newerCursors = []; // the cursors of the pages "newer" goes back to, the last one first
let listRequest = 0; // the latest list request: an older one answering late must not draw over it

export async function refreshJobs() {
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
      <tr data-id="${job.id}"><td><a href="#/jobs/${job.id}" dir="auto">${escapeHtml(job.question)}</a></td>
      <td class="status-${job.status}">${job.status}</td><td>${job.mode}</td><td>${job.tokens}</td>
      <td>${new Date(job.created_at * 1000).toLocaleString()}</td></tr>`).join("");
    if (focusedRow) $("jobs").querySelector(`tr[data-id="${focusedRow}"] a`)?.focus();
  } catch (error) { handleAuth(error); }
}

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
