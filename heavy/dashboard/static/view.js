// What every view uses: an element by id, text made safe for HTML, which view is shown and where the focus goes.

export const $ = (id) => document.getElementById(id);

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

const GRAPHEMES = new Intl.Segmenter(undefined, { granularity: "grapheme" });

// At most `chars` UTF-16 units of `text`, cut between two characters as a reader sees them: slice() split an emoji's
// surrogate pair (shown as "\ufffd"), a flag, or a letter from its accents.
export function clipped(text, chars) {
  if (text.length <= chars) return text;
  let end = 0;
  for (const { index, segment } of GRAPHEMES.segment(text)) {
    if (index + segment.length > chars) break;
    end = index + segment.length;
  }
  return `${text.slice(0, end)}…`;
}

export function show(view) {
  for (const id of ["sign-in", "jobs-view", "job-view"]) $(id).hidden = id !== view;
  $("sign-out").hidden = view === "sign-in";
}

// A view shown by a route: the link or button pressed went out of sight with the view it was in, and the keyboard's
// focus fell to the page's body. It moves to the view's heading, where a screen reader says what is shown and Tab
// goes on from (not as the page loads: the browser starts there on its own). Its title names it in tabs and history.
export function arrive(heading, moveFocus) {
  document.title = `${heading.textContent} — heavy`;
  if (moveFocus) heading.focus();
}
