// One job: its folders as breadcrumbs, description (rendered by the server),
// program and schedules in words, the next times in the reader's zone, conditions,
// actions, recent runs (live, args as columns) and a run-now form that asks first.

import { get, jobPath, post } from "../api.js";
import { append, confirmDialog, h, link, toast } from "../dom.js";
import { parseTime, relative, timeEl } from "../format.js";
import { runsTable, tickElapsed } from "../runtable.js";
import { itemEl, programWords } from "../words.js";
import { jsonToggle } from "./json.js";

function programEl(program) {
  const words = programWords(program);
  return h("div", {},
    h("span", { class: "chip" }, program.type),
    words.main !== null ? h("pre", { class: "program", id: "program" }, words.main) : h("p", {}, words.first),
    words.pairs.length ? h("dl", { class: "kv below", id: "program-words" },
      words.pairs.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])) : null);
}

function itemsEl(items, empty) {
  if (!items?.length) return h("p", { class: "muted" }, empty);
  return items.map(itemEl);
}

function scheduleEl(s) {
  return h("li", { class: s.enabled ? "" : "disabled" },
    h("span", { class: s.enabled ? "" : "muted" }, s.text), " ", h("span", { class: "chip" }, s.type),
    s.enabled ? null : h("span", { class: "chip off" }, "disabled"));
}

// "Jobs / demo / hello": each folder a link to the jobs in it.
export function jobCrumbs(jobId) {
  const parts = jobId.split("/");
  return h("nav", { class: "crumbs", "aria-label": "folders" }, link("/jobs", "Jobs"),
    parts.slice(0, -1).map((part, i) => [h("span", { class: "sep" }, " / "),
      link(`/jobs?q=${encodeURIComponent(`/${parts.slice(0, i + 1).join("/")}/`)}`, part)]),
    h("span", { class: "sep" }, " / "));
}

function runNowForm(job, app) {
  const inputs = job.params.map((p) => h("label", {}, p,
    h("input", { type: "text", name: p, required: true, "data-param": p, autocomplete: "off" })));
  const form = h("form", { class: "runnow", id: "run-now" }, inputs,
    h("button", { class: "btn btn-primary", type: "submit" }, "Run now…"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const args = Object.fromEntries(job.params.map((p) => [p, form.querySelector(`[data-param="${CSS.escape(p)}"]`).value]));
    const shown = Object.entries(args).map(([k, v]) => `${k}=${v}`).join(" ");
    if (!(await confirmDialog(`Run ${job.job_id}`, `Run ${job.job_id}${shown ? ` with ${shown}` : ""} now?`, "Run now"))) return;
    try {
      const { run } = await post("/runs", { job_id: job.job_id, args });
      toast(`Scheduled ${run.run_id}`);
      app.navigate(`/runs/${run.run_id}`);
    } catch (exc) {
      toast(`Could not schedule: ${exc.message}`, { error: true });
    }
  });
  return form;
}

export function mount(main, app, [jobId]) {
  const summary = app.summary;
  let job = null;
  let upcoming = false;
  const runs = new Map();
  const runsBox = h("div", { class: "panel flush scroll", id: "job-runs" });
  const json = jsonToggle(() => ({ job }));
  const zone = () => (job?.schedules || []).find((s) => s.enabled && s.zone)?.zone || null;

  function renderRuns() {
    for (const run of summary.runs.values()) if (run.job_id === jobId) runs.set(run.run_id, run);
    const list = [...runs.values()];
    runsBox.replaceChildren(h("h2", {}, "Recent runs"), list.length
      ? runsTable(list, {
        now: summary.now(), showJob: false, argColumns: job?.params, zoneOf: zone, ops: true,
        upcoming, onUpcoming: (show) => { upcoming = show; renderRuns(); }, onChange: renderRuns,
      })
      : h("div", { class: "empty" }, "No runs yet."));
  }

  function render() {
    document.title = `${job.job_id} · Apsis`;
    // The server renders the Markdown and sanitizes the HTML (apsis_server/web/markdown.py):
    // this is the only HTML from the server that the UI inserts as HTML; everything
    // else goes in as text.
    const description = job.description_html || "";
    const now = summary.now();
    const name = job.job_id.split("/").pop();
    main.replaceChildren();
    append(main, [
      h("div", { class: "page-head" }, h("div", {},
        jobCrumbs(job.job_id),
        h("h1", {}, name),
        h("div", { class: "sub" }, (job.labels || []).map((l) => h("span", { class: "chip label" }, l)),
          job.params.length ? ` params: ${job.params.join(", ")}` : " no params")),
      h("span", { class: "spacer" }),
      h("div", { class: "buttons" }, json.button)),
      json.panel,
      description ? h("div", { class: "panel markdown", id: "description" }) : null,
      h("div", { class: "panel" }, h("h2", {}, "Run now"), runNowForm(job, app)),
      h("div", { class: "grid2" },
        h("div", { class: "panel" }, h("h2", {}, "Program"), programEl(job.program)),
        h("div", { class: "panel", id: "schedules" }, h("h2", {}, "Schedules"),
          job.schedules.length ? h("ul", {}, job.schedules.map(scheduleEl))
            : h("p", { class: "muted" }, "Runs only when scheduled by hand."),
          job.next_times.length ? [h("h3", {}, "Next"), h("ul", { id: "next-times" }, job.next_times.map((t) =>
            h("li", {}, timeEl(t, { jobZone: zone(), now }), h("span", { class: "muted" }, ` (${relative(parseTime(t), now)})`))))] : null)),
      h("div", { class: "grid2" },
        h("div", { class: "panel", id: "conditions" }, h("h2", {}, "Conditions"), itemsEl(job.conditions, "None.")),
        h("div", { class: "panel", id: "actions" }, h("h2", {}, "Actions"), itemsEl(job.actions, "None."))),
      runsBox]);
    if (description) main.querySelector("#description").innerHTML = description;
    json.refresh();
    renderRuns();
  }

  main.append(h("p", { class: "muted" }, "Loading…"));
  get(`/jobs/${jobPath(jobId)}`).then(async (answer) => {
    job = answer.job;
    render();
    const page = await get(`/jobs/${jobPath(jobId)}/runs?limit=30`);
    for (const run of page.runs) runs.set(run.run_id, run);
    renderRuns();
  }, (exc) => {
    main.replaceChildren(h("div", { class: "banner error" }, exc.status === 404 ? `No job ${jobId}.` : exc.message));
  });
  const onRun = (event) => { if (event.detail.job_id === jobId && job) renderRuns(); };
  const onZone = () => { if (job) render(); };
  summary.addEventListener("run", onRun);
  window.addEventListener("zonechange", onZone);
  const stopTick = tickElapsed(runsBox, () => summary.now());
  return () => {
    summary.removeEventListener("run", onRun);
    window.removeEventListener("zonechange", onZone);
    stopTick();
    document.title = "Apsis";
  };
}
