// The job page's Aggregation panel: what the aggregator made of the trajectories. Updated live from the job's events
// while it aggregates, then filled from the report's JSON (heavy/aggregate/result.py, JobResult.to_dict).
// Answers come from a model and from web pages: every text goes in with textContent, never as HTML.
import { clipped } from "./view.js";
const AGG_TOP_ANSWERS = 3; // vote groups listed; the rest on one line, so a job of eight answers stays short
const AGG_ANSWER_CHARS = 200; // a report's answer may be paragraphs: clipped here, whole in the tooltip
const STOP_REASONS = {
  all_done: "all trajectories finished", early_stop: "enough trajectories agreed",
  straggler_cutoff: "deadline, the slowest cut off", job_deadline: "deadline", job_tokens: "token budget spent",
  finish_now: "finished now on request", cancelled: "cancelled",
};
const aggNode = (id) => document.getElementById(id);
export const aggNumber = (n) => Number(n).toLocaleString("en-US");
const stopReason = (reason) => (STOP_REASONS[reason] ? `${STOP_REASONS[reason]} (${reason})` : reason);
const stoppedBy = (reason) => (reason && reason !== "all_done" ? stopReason(reason) : ""); // early_stop: done, and says why
// what a partial report lacks: the trajectories' stop, and a report pass that wrote no findings
const lacking = (reason, reportError) =>
  [stoppedBy(reason), reportError ? `no findings, ${reportError}` : ""].filter(Boolean).join("; ");
let aggReason = ""; // the aggregating event's stop reason: report_ready says only "partial"

export function resetAggregation() {
  aggReason = "";
  const panel = aggNode("aggregation");
  panel.hidden = true;
  delete panel.dataset.filled;
  for (const id of ["agg-status", "agg-answer", "agg-agreement", "agg-tokens", "agg-cost", "agg-sources"]) {
    aggNode(id).textContent = "";
  }
  aggNode("agg-votes").replaceChildren();
  aggDetails(false);
}

function aggDetails(shown) {
  // the answer and the figures exist once the report does; until then their rows would stand empty
  aggNode("agg-answer-row").hidden = !shown;
  aggNode("agg-figures").hidden = !shown;
}

function aggStatus(status, detail) {
  const node = aggNode("agg-status");
  node.textContent = detail ? `${status}: ${detail}` : status;
  node.className = `status-${status}`; // the colours of the job list's statuses
  aggNode("aggregation").hidden = false;
}

function aggAnswer(answer, agreement) {
  const node = aggNode("agg-answer");
  node.textContent = clipped(answer, AGG_ANSWER_CHARS) || "none";
  node.title = answer;
  aggNode("agg-agreement").textContent = agreement;
  aggDetails(true);
}

export function aggregationEvent(event) {
  switch (event.type) {
    case "aggregating":
      aggReason = event.reason;
      aggStatus("aggregating", stopReason(event.reason));
      aggNode("agg-agreement").textContent = `${event.done} trajectories finished, ${event.stopped} stopped early`;
      break;
    case "report_ready": // the gist at once; showAggregation adds the votes and the figures from the JSON
      aggStatus(event.partial ? "partial" : "done", lacking(aggReason, event.report_error));
      aggAnswer(event.answer, `${Math.round(event.agreement * 100)}% of the answering trajectories agree`);
      aggNode("agg-tokens").textContent = `${aggNumber(event.total_tokens)} in all`;
      aggNode("agg-sources").textContent = aggNumber(event.sources);
      break;
    case "job_failed": aggStatus("failed", event.error); break;
    case "job_cancelled": aggStatus("cancelled", event.reason); break;
  }
}

export function showAggregation(result) {
  const votes = Object.entries(result.votes || {});
  const answered = votes.reduce((sum, [, n]) => sum + n, 0);
  aggStatus(result.status, lacking(result.stop_reason, result.report_error));
  aggAnswer(result.answer, agreementText(result.answer, Math.round(result.agreement * answered), answered,
                                        result.trajectories.length));
  aggVotes(votes, result.answer);
  aggNode("agg-tokens").textContent =
    `${aggNumber(result.tokens.prompt)} prompt · ${aggNumber(result.tokens.completion)} completion`;
  aggNode("agg-cost").textContent = `$${result.cost_usd.toFixed(4)}`;
  aggNode("agg-sources").textContent = aggNumber(result.sources.length);
  aggNode("aggregation").dataset.filled = "result"; // for people and tests: the figures are the result's
}

function agreementText(answer, agreeing, answered, total) {
  // agreement is the share of the *answering* trajectories; those without an answer are said apart
  const silent = answered < total ? `; ${total - answered} without an answer` : "";
  if (!answered) return "no trajectory answered";
  if (!answer) return `no answer had a majority${silent}`;
  if (!agreeing) return `the judge's answer from the pages; no trajectory gave it${silent}`;
  return `${agreeing} of ${total} trajectories agree${silent}`;
}

function aggVotes(votes, answer) {
  // the answer first (a judge may have broken a tie), then by votes; the tail summed on one line
  const ranked = [...votes].sort((a, b) => (b[0] === answer) - (a[0] === answer) || b[1] - a[1]);
  const items = ranked.slice(0, AGG_TOP_ANSWERS).map(([text, count]) => aggVote(text, count));
  const rest = ranked.slice(AGG_TOP_ANSWERS);
  if (rest.length) {
    const item = aggVote(`${rest.length} other answer${rest.length === 1 ? "" : "s"}`,
                         rest.reduce((sum, [, n]) => sum + n, 0));
    item.className = "more";
    items.push(item);
  }
  aggNode("agg-votes").replaceChildren(...items);
}

function aggVote(text, count) {
  const item = document.createElement("li");
  const answer = document.createElement("span");
  answer.className = "answer";
  answer.dir = "auto"; // an answer in Arabic or Hebrew reads right to left
  answer.textContent = clipped(text, AGG_ANSWER_CHARS);
  answer.title = text;
  const votes = document.createElement("span");
  votes.className = "votes";
  votes.textContent = `${count} vote${count === 1 ? "" : "s"}`;
  item.append(answer, " ", votes);
  return item;
}
