// hitlflow's pages: the few things a server-rendered page cannot do alone. Every page works
// without this script; with it, the inbox updates live, deadlines count down, the edit page
// shows its diff as you type, and a form is sent once however often its button is pressed.
"use strict";

function spanText(seconds) {
  seconds = Math.floor(seconds);
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600),
    m = Math.floor(seconds % 3600 / 60), s = seconds % 60, two = (n) => String(n).padStart(2, "0");
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${two(m)}m`;
  if (m) return `${m}m ${two(s)}s`;
  return `${s}s`;
}

function tickDeadlines() {
  const now = Date.now();
  for (const el of document.querySelectorAll("[data-deadline]")) {
    const left = (Date.parse(el.dataset.deadline) - now) / 1000;
    el.textContent = left >= 0 ? `${spanText(left)} left` : `overdue by ${spanText(-left)}`;
    el.classList.toggle("overdue", left < 0);
  }
}

// The part of the page that follows the live feed: the inbox's rows (data-live: the URL of
// the rows alone), or a whole section fetched again with its page (data-live-section).
async function fetchLive(box) {
  const url = box.dataset.live || window.location.href;
  const response = await fetch(url, {headers: {"Accept": "text/html"}});
  const state = document.querySelector("[data-live-state]");
  if (response.redirected) {  // to the sign-in page: the token has expired
    if (state) state.textContent = "Live updates: stopped, your sign-in has expired (reload to sign in again)";
    return;
  }
  if (!response.ok) {
    if (state) state.textContent = `Live updates: the last refresh failed (${response.status}); showing what came before`;
    return;
  }
  const text = await response.text();
  if (box.dataset.live) {
    box.innerHTML = text;
  } else {
    const fresh = new DOMParser().parseFromString(text, "text/html").getElementById(box.id);
    if (fresh) box.innerHTML = fresh.innerHTML;
  }
  if (state) state.textContent = "Live updates: on";
  tickDeadlines();
}

function liveInbox() {
  const box = document.querySelector("[data-live], [data-live-section]");
  const state = document.querySelector("[data-live-state]");
  if (!box || !window.EventSource) return;
  let timer = null;
  const refresh = () => fetchLive(box);
  const soon = () => {  // events come before the projections have them: look twice
    clearTimeout(timer);
    timer = setTimeout(() => { refresh(); timer = setTimeout(refresh, 1500); }, 250);
  };
  const source = new EventSource("/ui/events");
  source.addEventListener("open", () => { if (state) state.textContent = "Live updates: on"; });
  source.addEventListener("error", () => { if (state) state.textContent = "Live updates: reconnecting…"; });
  source.addEventListener("changed", soon);
}

function sendOnce() {
  for (const form of document.querySelectorAll("form[data-once]")) {
    form.addEventListener("submit", (event) => {
      if (form.dataset.sent) { event.preventDefault(); return; }
      form.dataset.sent = "1";
      // the pressed button's value must still go with the form: disable after it is read
      setTimeout(() => form.querySelectorAll("button").forEach((b) => { b.disabled = true; }), 0);
    });
  }
}

function liveDiff() {
  const source = document.querySelector("[data-diff-source]");
  const target = document.querySelector("[data-diff]");
  if (!source || !target) return;
  let timer = null;
  source.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const body = new URLSearchParams({edited: source.value});
      const response = await fetch(source.dataset.diffUrl, {method: "POST", body});
      if (response.ok) target.innerHTML = await response.text();
    }, 300);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  tickDeadlines();
  setInterval(tickDeadlines, 1000);
  liveInbox();
  sendOnce();
  liveDiff();
});
