// The runs page: live (summary feed) plus history pages (GET /runs?before=),
// filtered by job, label, state, args and time range, the filter kept in the URL.

import { get } from "../api.js";
import { h, toast } from "../dom.js";
import { fromLocalInput, parseTime, toLocalInput } from "../format.js";
import { runsTable, tickElapsed } from "../runtable.js";

const FIELDS = ["job", "label", "state", "args", "since", "until"];
const STATES = [
  ["", "any state"],
  ["scheduled,waiting,starting,running,stopping", "unfinished"],
  ["failure,error", "failed (failure, error)"],
  ["scheduled", "scheduled"], ["waiting", "waiting"], ["starting", "starting"],
  ["running", "running"], ["stopping", "stopping"], ["success", "success"],
  ["failure", "failure"], ["error", "error"], ["skipped", "skipped"],
];

export function readFilter(search = location.search) {
  const q = new URLSearchParams(search);
  return Object.fromEntries(FIELDS.map((f) => [f, q.get(f) || ""]));
}

function parseArgs(text) {
  const args = {};
  for (const pair of text.split(",").map((p) => p.trim()).filter(Boolean)) {
    const at = pair.indexOf("=");
    if (at > 0) args[pair.slice(0, at).trim()] = pair.slice(at + 1);
  }
  return args;
}

export function matches(run, filter) {
  if (filter.job && !run.job_id.toLowerCase().includes(filter.job.toLowerCase())) return false;
  if (filter.label && !(run.labels || []).includes(filter.label)) return false;
  if (filter.state && !filter.state.split(",").includes(run.state)) return false;
  for (const [k, v] of Object.entries(parseArgs(filter.args))) {
    if ((run.args || {})[k] !== v) return false;
  }
  const t = parseTime(run.schedule_time);
  if (filter.since && (t === null || t < parseTime(filter.since))) return false;
  if (filter.until && (t === null || t > parseTime(filter.until))) return false;
  return true;
}

function restQuery(filter, jobs, before) {
  const q = new URLSearchParams({ limit: "100" });
  if (filter.job && jobs.has(filter.job)) q.set("job_id", filter.job);
  if (filter.label) q.set("label", filter.label);
  if (filter.state) q.set("state", filter.state);
  if (filter.args) q.set("args", filter.args);
  if (filter.since) q.set("since", filter.since);
  if (filter.until) q.set("until", filter.until);
  if (before) q.set("before", before);
  return q;
}

function filterBar(filter, onChange) {
  const text = (name, placeholder, title) => h("label", {}, name,
    h("input", { type: "text", id: `f-${name}`, value: filter[name], placeholder, title, autocomplete: "off" }));
  const state = h("select", { id: "f-state" },
    STATES.map(([value, label]) => h("option", { value, selected: value === filter.state }, label)));
  if (filter.state && !STATES.some(([v]) => v === filter.state)) {
    state.append(h("option", { value: filter.state, selected: true }, filter.state));
  }
  const time = (name) => h("label", {}, name,
    h("input", { type: "datetime-local", id: `f-${name}`, value: toLocalInput(filter[name]) }));
  const form = h("form", { class: "filters panel", onsubmit: (e) => e.preventDefault() },
    text("job", "path, e.g. demo/", "job id or part of it"),
    text("label", "label"),
    h("label", {}, "state", state),
    text("args", "name=value,…", "args that must match"),
    time("since"), time("until"),
    h("button", { type: "button", class: "btn", id: "f-clear", onclick: () => onChange(null) }, "Clear"));
  let timer = null;
  const read = () => ({
    job: form.querySelector("#f-job").value.trim(),
    label: form.querySelector("#f-label").value.trim(),
    state: state.value,
    args: form.querySelector("#f-args").value.trim(),
    since: fromLocalInput(form.querySelector("#f-since").value),
    until: fromLocalInput(form.querySelector("#f-until").value),
  });
  form.addEventListener("input", (event) => {
    clearTimeout(timer);
    const wait = event.target.type === "text" ? 300 : 0;
    timer = setTimeout(() => onChange(read()), wait);
  });
  return form;
}

export function mount(main, app) {
  const summary = app.summary;
  let filter = readFilter();
  let history = new Map();
  let next = null;
  let generation = 0;
  let renderQueued = false;
  let upcoming = 10;
  const count = h("span", { class: "sub", id: "runs-count" });
  const tableBox = h("div", { class: "panel flush", id: "runs" });
  const more = h("button", { class: "btn", id: "load-more", onclick: () => loadPage(false) }, "Load older runs");
  const moreBox = h("div", { class: "more" }, more);

  const changeFilter = (newFilter) => {
    filter = newFilter || Object.fromEntries(FIELDS.map((f) => [f, ""]));
    const q = new URLSearchParams(Object.entries(filter).filter(([, v]) => v));
    const url = location.pathname + (q.toString() ? `?${q}` : "");
    history_replace(url);
    if (!newFilter) {
      main.replaceChildren();
      build();
    }
    loadPage(true);
  };
  const history_replace = (url) => window.history.replaceState(null, "", url);

  function build() {
    main.append(
      h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Runs"), count)),
      filterBar(filter, changeFilter), tableBox, moreBox);
  }

  function render() {
    renderQueued = false;
    const shown = new Map();
    for (const run of history.values()) if (matches(run, filter)) shown.set(run.run_id, run);
    for (const run of summary.runs.values()) if (matches(run, filter)) shown.set(run.run_id, run);
    const runs = [...shown.values()];
    count.textContent = `${runs.length} run${runs.length === 1 ? "" : "s"} shown`;
    if (runs.length === 0) {
      tableBox.replaceChildren(h("div", { class: "empty" }, "No runs match."));
    } else {
      tableBox.replaceChildren(runsTable(runs, {
        now: summary.now(), upcoming, onMore: () => { upcoming = Infinity; render(); },
      }));
    }
    more.hidden = next === null;
  }

  const queueRender = () => {
    if (renderQueued) return;
    renderQueued = true;
    setTimeout(render, 100);
  };

  async function loadPage(reset) {
    const mine = ++generation;
    if (reset) { history = new Map(); next = null; }
    more.disabled = true;
    try {
      const data = await get(`/runs?${restQuery(filter, summary.jobs, reset ? null : next)}`);
      if (mine !== generation) return;
      for (const run of data.runs) history.set(run.run_id, run);
      next = data.next;
    } catch (exc) {
      if (mine === generation) toast(`Could not load runs: ${exc.message}`, { error: true });
    } finally {
      more.disabled = false;
    }
    render();
  }

  build();
  render();
  const onSnapshot = () => queueRender();
  summary.addEventListener("snapshot", onSnapshot);
  summary.addEventListener("run", queueRender);
  const stopTick = tickElapsed(tableBox, () => summary.now());
  const nowTimer = setInterval(queueRender, 15000);
  if (summary.ready) loadPage(true);
  else summary.addEventListener("snapshot", () => loadPage(true), { once: true });
  return () => {
    generation++;
    summary.removeEventListener("snapshot", onSnapshot);
    summary.removeEventListener("run", queueRender);
    stopTick();
    clearInterval(nowTimer);
  };
}
