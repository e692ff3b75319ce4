// The runs table shared by the runs page and the job page: state colours, live
// elapsed time, a line at "now", reruns grouped under the run they rerun.

import { jobPath } from "./api.js";
import { h, link } from "./dom.js";
import { duration, parseTime, shortTime, timeEl } from "./format.js";
import { isFinished, runNumber } from "./feed.js";

export function stateBadge(state) {
  return h("span", { class: `state state-${state}`, "data-state": state }, state);
}

export function argsChips(args) {
  return Object.entries(args || {}).map(([k, v]) => h("span", { class: "chip" }, `${k}=${v}`));
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

function elapsedCell(run) {
  const td = h("td", { class: "num elapsed nowrap" });
  const running = run.times?.running;
  if (!isFinished(run.state) && running && ["running", "stopping"].includes(run.state)) {
    td.dataset.since = running;
  }
  td.textContent = run.elapsed === null || run.elapsed === undefined ? "" : duration(run.elapsed);
  return td;
}

function runRow(run, { rerun = false, reruns = 0, now, showJob = true }) {
  const classes = ["run-row", `s-${run.state}`];
  if (rerun) classes.push("rerun");
  if (sortTime(run) > now) classes.push("future");
  const id = h("td", { class: "run-id nowrap" }, link(`/runs/${run.run_id}`, run.run_id));
  if (reruns) id.append(" ", h("span", { class: "chip rerun-count", title: "reruns below" }, `↻${reruns}`));
  return h("tr", { class: classes.join(" "), "data-run-id": run.run_id, "data-state": run.state },
    id,
    showJob ? h("td", { class: "job" }, link(`/jobs/${jobPath(run.job_id)}`, run.job_id)) : null,
    h("td", { class: "args" }, argsChips(run.args)),
    h("td", {}, stateBadge(run.state)),
    h("td", { class: "nowrap" }, timeEl(run.schedule_time)),
    h("td", { class: "nowrap" }, timeEl(run.times?.running)),
    elapsedCell(run),
    h("td", { class: "ellipsis muted", title: run.message || "" }, run.message || ""),
  );
}

// `upcoming`: how many future groups to show nearest "now" (the rest behind a toggle).
export function runsTable(runs, { now = Date.now(), showJob = true, nowLine = true, upcoming = Infinity, onMore = null } = {}) {
  const head = h("thead", {}, h("tr", {},
    h("th", {}, "Run"), showJob ? h("th", {}, "Job") : null, h("th", {}, "Args"), h("th", {}, "State"),
    h("th", {}, "Schedule"), h("th", {}, "Started"), h("th", { class: "num" }, "Elapsed"), h("th", {}, "Message")));
  const body = h("tbody");
  const columns = showJob ? 8 : 7;
  let linePlaced = !nowLine;
  let groups = groupRuns(runs);
  const future = groups.filter((g) => sortTime(g.root) > now).length;
  if (future > upcoming) {
    const hidden = future - upcoming;
    groups = groups.slice(hidden);
    body.append(h("tr", { class: "upcoming-more" }, h("td", { colspan: columns },
      h("button", { class: "btn btn-small", id: "show-upcoming", onclick: () => onMore?.() },
        `Show ${hidden} more scheduled run${hidden === 1 ? "" : "s"}`))));
  }
  for (const group of groups) {
    if (!linePlaced && sortTime(group.root) <= now) {
      body.append(nowRow(columns, now));
      linePlaced = true;
    }
    body.append(runRow(group.root, { reruns: group.reruns.length, now, showJob }));
    for (const rerun of group.reruns) body.append(runRow(rerun, { rerun: true, now, showJob }));
  }
  if (!linePlaced && runs.length) body.append(nowRow(columns, now));
  return h("table", { class: "runs-table" }, head, body);
}

function nowRow(columns, now) {
  return h("tr", { class: "now-line", "aria-label": "now" },
    h("td", { colspan: columns }, h("span", {}, `now · ${shortTime(now)}`)));
}

// Keep the elapsed time of running runs ticking; returns a stop function.
export function tickElapsed(root, clock) {
  const timer = setInterval(() => {
    const now = clock();
    for (const td of root.querySelectorAll("td.elapsed[data-since]")) {
      td.textContent = duration((now - parseTime(td.dataset.since)) / 1000);
    }
  }, 1000);
  return () => clearInterval(timer);
}
