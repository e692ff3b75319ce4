// The runs table shared by the runs page and the job page: what happened most
// recently first, the upcoming runs folded above a line at "now" (one click away),
// state colours, live elapsed time and lateness, reruns grouped under the run they
// rerun, args as columns when the list is of one job, and the operations per row.

import { jobPath } from "./api.js";
import { h, link } from "./dom.js";
import { duration, fullTime, parseTime, shownZone, timeEl } from "./format.js";
import { isFinished, runNumber } from "./feed.js";
import { opButtons } from "./operations.js";

// A run that starts (or has not started) this many seconds after its schedule time is late.
export const LATE = 5;
const ROW_OPS = ["start", "skip", "stop", "kill", "rerun"];

export function stateBadge(state) {
  return h("span", { class: `state state-${state}`, "data-state": state }, state);
}

export function argsChips(args) {
  return Object.entries(args || {}).map(([k, v]) => h("span", { class: "chip" }, `${k}=${v}`));
}

export function isAdHoc(run) {
  return run.origin === "adhoc";
}

// The job of a run: its folders (each a link to the runs in it) and its name (a
// link to the job); an ad-hoc run has no job to link to.
export function jobCell(run) {
  if (isAdHoc(run)) return h("span", { class: "chip adhoc", title: "an ad-hoc command: no job" }, "ad hoc");
  const parts = run.job_id.split("/");
  const folders = parts.slice(0, -1).map((part, i) => {
    const path = parts.slice(0, i + 1).join("/");
    return link(`/runs?job=${encodeURIComponent(`/${path}/`)}`, `${part}/`);
  });
  return h("span", { class: "job-path" },
    folders.map((a) => { a.classList.add("folder"); return a; }),
    link(`/jobs/${jobPath(run.job_id)}`, parts[parts.length - 1]));
}

function sortTime(run) {
  return parseTime(run.schedule_time) ?? parseTime(run.times?.scheduled) ?? 0;
}

// Runs ordered newest schedule time first, each rerun right under its original.
export function groupRuns(runs) {
  const byId = new Map(runs.map((r) => [r.run_id, r]));
  const rootOf = (run) => {
    let root = run;
    for (let hops = 0; root.rerun_of && byId.has(root.rerun_of) && hops < 50; hops++) {
      root = byId.get(root.rerun_of);
    }
    return root;
  };
  const groups = new Map();
  for (const run of runs) {
    const root = rootOf(run);
    if (!groups.has(root.run_id)) groups.set(root.run_id, { root, reruns: [] });
    if (root !== run) groups.get(root.run_id).reruns.push(run);
  }
  const ordered = [...groups.values()];
  ordered.sort((a, b) => sortTime(b.root) - sortTime(a.root) || runNumber(b.root.run_id) - runNumber(a.root.run_id));
  for (const g of ordered) g.reruns.sort((a, b) => runNumber(a.run_id) - runNumber(b.run_id));
  return ordered;
}

// How late the run started, or is while it has not: {seconds, since} (since: the
// schedule time, for a marker that ticks), or null when on time.
export function lateness(run, now) {
  const due = parseTime(run.schedule_time);
  if (due === null) return null;
  const started = parseTime(run.times?.running);
  if (started !== null) return started - due >= LATE * 1000 ? { seconds: (started - due) / 1000, since: null } : null;
  if (isFinished(run.state) || now - due < LATE * 1000) return null;
  return { seconds: (now - due) / 1000, since: run.schedule_time };
}

export function lateChip(late) {
  if (!late) return null;
  const chip = h("span", {
    class: "chip late",
    title: late.since ? "due, and not started yet" : "started this long after its schedule time",
  }, `late ${duration(late.seconds)}`);
  if (late.since) chip.dataset.lateSince = late.since;
  return chip;
}

function elapsedCell(run) {
  const td = h("td", { class: "num elapsed nowrap" });
  const running = run.times?.running;
  if (!isFinished(run.state) && running && ["running", "stopping"].includes(run.state)) {
    td.dataset.since = running;
  }
  td.textContent = run.elapsed === null || run.elapsed === undefined ? "" : duration(run.elapsed);
  return td;
}

function argCells(run, argColumns) {
  if (!argColumns) return [h("td", { class: "args" }, argsChips(run.args))];
  const args = run.args || {};
  const extra = Object.keys(args).filter((k) => !argColumns.includes(k));
  return argColumns.map((name, i) => h("td", { class: "arg mono", "data-arg": name },
    args[name] ?? "", i === argColumns.length - 1 ? extra.map((k) => [" ", h("span", { class: "chip" }, `${k}=${args[k]}`)]) : null));
}

function runRow(run, { rerun = false, reruns = 0, now, showJob, argColumns, zoneOf, ops, onChange }) {
  const classes = ["run-row", `s-${run.state}`];
  if (rerun) classes.push("rerun");
  if (sortTime(run) > now) classes.push("future");
  const zone = zoneOf(run.job_id);
  const id = h("td", { class: "run-id nowrap" }, link(`/runs/${run.run_id}`, run.run_id));
  if (reruns) id.append(" ", h("span", { class: "chip rerun-count", title: "reruns below" }, `↻${reruns}`));
  const schedule = h("td", { class: "schedule" }, timeEl(run.schedule_time, { jobZone: zone, now }),
    lateChip(lateness(run, now)),
    run.stop_time ? h("div", { class: "stop-time", title: "stopped at this time by its stop schedule or by hand" },
      "stop ", timeEl(run.stop_time, { jobZone: zone, now })) : null);
  return h("tr", { class: classes.join(" "), "data-run-id": run.run_id, "data-state": run.state },
    id,
    h("td", {}, stateBadge(run.state)),
    showJob ? h("td", { class: "job" }, jobCell(run)) : null,
    argCells(run, argColumns),
    schedule,
    h("td", { class: "nowrap col-started" }, timeEl(run.times?.running, { jobZone: zone, now })),
    elapsedCell(run),
    // The message when it says more than the state ("scheduled" for a scheduled run does not).
    h("td", { class: "ellipsis muted col-message", title: run.message || "" }, run.message === run.state ? "" : run.message || ""),
    ops ? h("td", { class: "ops nowrap" }, opButtons(run, { ops: ROW_OPS, small: true, onDone: onChange })) : null,
  );
}

// The table of `runs`. Options: `showJob` (a Job column), `argColumns` (param names:
// one column each, instead of chips), `zoneOf(jobId)` (a job's schedule zone),
// `upcoming` (show the runs due after `now`, else a button that tells how many),
// `onUpcoming(show)`, `ops` (operation buttons per row), `onChange(run)`.
// `table.dataset.rows` counts the run rows shown, `table.dataset.upcoming` those folded.
export function runsTable(runs, {
  now = Date.now(), showJob = true, argColumns = null, zoneOf = () => null,
  upcoming = false, onUpcoming = null, ops = false, onChange = () => {},
} = {}) {
  const args = argColumns && argColumns.length ? argColumns : null;
  const headers = ["Run", "State", showJob ? "Job" : null, ...(args || ["Args"]), "Schedule", "Started",
    "Elapsed", "Message", ops ? "" : null].filter((x) => x !== null);
  const headClass = { Elapsed: "num", Started: "col-started", Message: "col-message" };
  const head = h("thead", {}, h("tr", {}, headers.map((t) => h("th", { class: headClass[t] || "" }, t))));
  const body = h("tbody");
  const columns = headers.length;
  const groups = groupRuns(runs);
  const future = groups.filter((g) => sortTime(g.root) > now);
  const past = groups.filter((g) => sortTime(g.root) <= now);
  const row = { now, showJob, argColumns: args, zoneOf, ops, onChange };
  let count = 0;
  const append = (group) => {
    body.append(runRow(group.root, { ...row, reruns: group.reruns.length }));
    for (const rerun of group.reruns) body.append(runRow(rerun, { ...row, rerun: true }));
    count += 1 + group.reruns.length;
  };
  if (future.length) {
    const n = future.reduce((sum, g) => sum + 1 + g.reruns.length, 0);
    const label = upcoming ? "▾ Hide the upcoming runs" : `▸ Show ${n} upcoming run${n === 1 ? "" : "s"}`;
    body.append(h("tr", { class: "upcoming-more" }, h("td", { colspan: columns },
      h("button", { class: "btn btn-small", id: "show-upcoming", "aria-expanded": String(upcoming), onclick: () => onUpcoming?.(!upcoming) }, label))));
    if (upcoming) future.forEach(append);
  }
  if (runs.length) body.append(nowRow(columns, now));
  past.forEach(append);
  if (runs.length && !past.length) {
    body.append(h("tr", { class: "nothing-yet" }, h("td", { colspan: columns }, "Nothing has run yet.")));
  }
  const table = h("table", { class: "runs-table" }, head, body);
  table.dataset.rows = String(count);
  table.dataset.upcoming = String(upcoming ? 0 : future.reduce((sum, g) => sum + 1 + g.reruns.length, 0));
  return table;
}

function nowRow(columns, now) {
  return h("tr", { class: "now-line", "aria-label": "now" },
    h("td", { colspan: columns }, h("span", {}, `now · ${fullTime(now, shownZone()).slice(11)}`)));
}

// Keep the elapsed times of running runs and the lateness of due runs ticking;
// returns a stop function.
export function tickElapsed(root, clock) {
  const timer = setInterval(() => {
    const now = clock();
    for (const td of root.querySelectorAll("td.elapsed[data-since]")) {
      td.textContent = duration((now - parseTime(td.dataset.since)) / 1000);
    }
    for (const chip of root.querySelectorAll("[data-late-since]")) {
      chip.textContent = `late ${duration((now - parseTime(chip.dataset.lateSince)) / 1000)}`;
    }
  }, 1000);
  return () => clearInterval(timer);
}
