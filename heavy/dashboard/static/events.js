// A job's events, read from its SSE stream with fetch (EventSource cannot send headers) and resumed after a drop with
// Last-Event-ID, each handed to the job page's apply.
import { ApiError, handleAuth, session } from "./api.js";
import { $ } from "./view.js";

const TERMINAL_EVENTS = ["report_ready", "job_failed", "job_cancelled"];

export async function follow(jobId, apply) {
  // Reads the SSE stream with fetch; on a drop, reconnects after a pause with the last event id it saw.
  let last = 0;
  const controller = new AbortController();
  session.follower = controller;
  for (let attempt = 0; !controller.signal.aborted; attempt++) {
    let told = null; // a refusal that said when to come back: the tenant's stream cap, the job store away a moment
    try {
      const response = await fetch(`v1/jobs/${jobId}/events`, {
        headers: { Authorization: `Bearer ${session.apiKey}`, "Last-Event-ID": String(last) }, signal: controller.signal });
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
