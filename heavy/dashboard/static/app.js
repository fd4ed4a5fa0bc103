// heavy dashboard: plain JS modules, no build step. Talks to the REST API with the API key as a Bearer token (api.js);
// routes between signing in, the jobs view (jobs.js) and one job's view (job.js), which follows its events (events.js).
import { api, KEY_STORAGE, session } from "./api.js";
import { openJob } from "./job.js";
import { refreshJobs } from "./jobs.js";
import { $, arrive, show } from "./view.js";

let listTimer = null;
let routed = false; // a view was shown: the next route moves the keyboard's focus (see arrive)

function route() {
  session.generation += 1;
  if (session.follower) { session.follower.abort(); session.follower = null; }
  clearInterval(listTimer);
  const moveFocus = routed;
  routed = true;
  if (!session.apiKey) { show("sign-in"); return arrive($("sign-in").querySelector("h1"), moveFocus); }
  refreshJobs(); // also under a job's view: the header's count of jobs
  const match = location.hash.match(/^#\/jobs\/([0-9a-f]{32})$/);
  if (match) return openJob(match[1], moveFocus);
  show("jobs-view");
  arrive($("jobs-view").querySelector("h1"), moveFocus);
  listTimer = setInterval(refreshJobs, 3000);
}

session.route = route;
$("sign-in-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  session.apiKey = $("api-key").value.trim();
  try { await api("v1/jobs?limit=1"); sessionStorage.setItem(KEY_STORAGE, session.apiKey); $("sign-in-error").textContent = ""; route(); }
  catch (error) { session.apiKey = ""; $("sign-in-error").textContent = error.message; }
});
$("sign-out").addEventListener("click", () => { session.apiKey = ""; sessionStorage.removeItem(KEY_STORAGE); location.hash = "#/"; route(); });
window.addEventListener("hashchange", route);
route();
