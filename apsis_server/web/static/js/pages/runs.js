// The runs page: what happened most recently first, the upcoming runs one click
// away, live (summary feed) plus history pages (GET /runs?before=). The filter (job,
// label, state, args, time range) is in the URL and applied by the server, so every
// page of it is complete; live runs are matched here the same way.

import { get } from "../api.js";
import { h, link, toast } from "../dom.js";
import { fromLocalInput, parseTime, toLocalInput } from "../format.js";
import { runsTable, tickElapsed } from "../runtable.js";
import { adhocForm } from "./adhoc.js";

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
  for (const pair of text.split(",").filter(Boolean)) {
    const at = pair.indexOf("=");
    if (at > 0) args[pair.slice(0, at).trim()] = pair.slice(at + 1);
  }
  return args;
}

// As the server's `job=` (apsis_server/store): part of the id ignoring ASCII case,
// or with a leading "/" the start of it.
const asciiLower = (text) => text.replace(/[A-Z]/g, (c) => c.toLowerCase());

export function jobMatches(jobId, term) {
  if (!term) return true;
  if (term.startsWith("/")) return jobId.startsWith(term.slice(1));
  return asciiLower(jobId).includes(asciiLower(term));
}

export function matches(run, filter) {
  if (!jobMatches(run.job_id, filter.job)) return false;
  if (filter.label && !(run.labels || []).includes(filter.label)) return false;
  if (filter.state && !filter.state.split(",").includes(run.state)) return false;
  for (const [k, v] of Object.entries(parseArgs(filter.args))) {
    if ((run.args || {})[k] !== v) return false;
  }
  const t = parseTime(run.schedule_time);
  if (filter.since && (t === null || t < parseTime(filter.since))) return false;
  if (filter.until && (t === null || t >= parseTime(filter.until))) return false;
  return true;
}

// The server's query: what happened up to now (or the filter's end), newest first;
// the upcoming runs are all in the summary feed.
function restQuery(filter, now, before) {
  const q = new URLSearchParams({ limit: "100" });
  for (const name of ["job", "label", "state", "args", "since"]) if (filter[name]) q.set(name, filter[name]);
  q.set("until", filter.until || new Date(now).toISOString());
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
  const form = h("form", { class: "filters", onsubmit: (e) => e.preventDefault() },
    text("job", "sleep, or /demo/", "part of a job id (sleep), or a folder with a leading / (/demo/)"),
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
  // Folded on a phone, unless a filter is set: the runs come first.
  const set = Object.values(filter).some(Boolean);
  return h("details", { class: "panel filters-box", id: "filters", open: set || window.innerWidth > 640 },
    h("summary", {}, set ? "Filter (set)" : "Filter"), form);
}

// "All jobs / demo / sub /" for a folder filter (`/demo/sub/`), each a link.
export function breadcrumbs(term, hrefOf) {
  if (!term.startsWith("/")) return null;
  const parts = term.slice(1).split("/").filter(Boolean);
  return h("nav", { class: "crumbs", "aria-label": "folder" }, link(hrefOf(""), "All jobs"),
    parts.map((part, i) => [h("span", { class: "sep" }, " / "), link(hrefOf(`/${parts.slice(0, i + 1).join("/")}/`), part)]));
}

// The params of the one job the runs are of, for args as columns; else null.
function oneJobParams(runs, jobs) {
  const ids = new Set(runs.map((r) => r.job_id));
  if (ids.size !== 1) return null;
  const job = jobs.get([...ids][0]);
  if (job) return job.params;
  return [...new Set(runs.flatMap((r) => Object.keys(r.args || {})))].sort();
}

export function zoneOf(summary) {
  return (jobId) => (summary.jobs.get(jobId)?.schedules || []).find((s) => s.enabled && s.zone)?.zone || null;
}

export function mount(main, app) {
  const summary = app.summary;
  const params = new URLSearchParams(location.search);
  let filter = readFilter();
  let showUpcoming = params.get("upcoming") === "1";
  let history = new Map();
  let next = null;
  let generation = 0;
  let renderQueued = false;
  const count = h("span", { class: "sub", id: "runs-count" });
  const crumbs = h("div", { id: "runs-crumbs" });
  const tableBox = h("div", { class: "panel flush scroll", id: "runs" });
  const adhocBox = h("div", { id: "adhoc-box" });
  const more = h("button", { class: "btn", id: "load-more", onclick: () => loadPage(false) }, "Load older runs");
  const moreBox = h("div", { class: "more" }, more);

  const url = () => {
    const q = new URLSearchParams(Object.entries(filter).filter(([, v]) => v));
    if (showUpcoming) q.set("upcoming", "1");
    return location.pathname + (q.toString() ? `?${q}` : "");
  };
  const changeFilter = (newFilter) => {
    filter = newFilter || Object.fromEntries(FIELDS.map((f) => [f, ""]));
    window.history.replaceState(null, "", url());
    if (!newFilter) {
      main.replaceChildren();
      build();
    }
    loadPage(true);
  };
  const openAdhoc = () => {
    adhocBox.replaceChildren(adhocForm(app, () => adhocBox.replaceChildren()));
    adhocBox.querySelector("textarea").focus();
  };

  function build() {
    main.append(
      h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Runs"), count), h("span", { class: "spacer" }),
        h("button", { class: "btn", id: "adhoc-open", onclick: openAdhoc }, "Ad-hoc run…")),
      adhocBox, filterBar(filter, changeFilter), crumbs, tableBox, moreBox);
  }

  function render() {
    renderQueued = false;
    const shown = new Map();
    for (const run of history.values()) if (matches(run, filter)) shown.set(run.run_id, run);
    for (const run of summary.runs.values()) if (matches(run, filter)) shown.set(run.run_id, run);
    const runs = [...shown.values()];
    crumbs.replaceChildren(breadcrumbs(filter.job, (path) => `/runs${path ? `?job=${encodeURIComponent(path)}` : ""}`) || "");
    if (runs.length === 0) {
      count.textContent = "no runs";
      tableBox.replaceChildren(h("div", { class: "empty" }, "No runs match."));
    } else {
      const table = runsTable(runs, {
        now: summary.now(), upcoming: showUpcoming, zoneOf: zoneOf(summary), ops: true,
        argColumns: oneJobParams(runs, summary.jobs),
        onUpcoming: (show) => { showUpcoming = show; window.history.replaceState(null, "", url()); render(); },
        onChange: queueRender,
      });
      const rows = Number(table.dataset.rows);
      const folded = Number(table.dataset.upcoming);
      count.textContent = `${rows} run${rows === 1 ? "" : "s"}` + (folded ? ` · ${folded} upcoming` : "");
      tableBox.replaceChildren(table);
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
      const data = await get(`/runs?${restQuery(filter, summary.now(), reset ? null : next)}`);
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
  window.addEventListener("zonechange", render);
  const stopTick = tickElapsed(tableBox, () => summary.now());
  const nowTimer = setInterval(queueRender, 15000);
  if (summary.ready) loadPage(true);
  else summary.addEventListener("snapshot", () => loadPage(true), { once: true });
  return () => {
    generation++;
    summary.removeEventListener("snapshot", onSnapshot);
    summary.removeEventListener("run", queueRender);
    window.removeEventListener("zonechange", render);
    stopTick();
    clearInterval(nowTimer);
  };
}
