// One job: description (rendered by the server), program, schedules with next times,
// conditions, actions, recent runs (live), and a run-now form for its params.

import { get, jobPath, post } from "../api.js";
import { append, h, toast } from "../dom.js";
import { relative, parseTime, timeEl } from "../format.js";
import { runsTable, tickElapsed } from "../runtable.js";

function programEl(program) {
  const rest = { ...program };
  delete rest.type;
  let main = null;
  if (typeof rest.command === "string") { main = rest.command; delete rest.command; }
  else if (Array.isArray(rest.argv)) { main = rest.argv.map((a) => (/\s/.test(a) ? JSON.stringify(a) : a)).join(" "); delete rest.argv; }
  return h("div", {},
    h("span", { class: "chip" }, program.type),
    main !== null ? h("pre", { class: "program", id: "program" }, main) : null,
    Object.keys(rest).length ? h("dl", { class: "kv below" },
      Object.entries(rest).map(([k, v]) => [h("dt", {}, k), h("dd", {}, plain(v))])) : null);
}

function plain(value) {
  if (value !== null && typeof value === "object") return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
  return h("span", { class: "mono" }, String(value));
}

function itemsEl(items, empty) {
  if (!items?.length) return h("p", { class: "muted" }, empty);
  return items.map((item) => {
    const { type, ...rest } = item || {};
    return h("div", { class: "item" }, type ? h("span", { class: "chip" }, type) : null,
      Object.keys(rest).length ? h("dl", { class: "kv below" },
        Object.entries(rest).map(([k, v]) => [h("dt", {}, k), h("dd", {}, plain(v))])) : null);
  });
}

function runNowForm(job, app) {
  const inputs = job.params.map((p) => h("label", {}, p,
    h("input", { type: "text", name: p, required: true, "data-param": p, autocomplete: "off" })));
  const form = h("form", { class: "runnow", id: "run-now" }, inputs,
    h("button", { class: "btn btn-primary", type: "submit" }, "Run now"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const args = Object.fromEntries(job.params.map((p) => [p, form.querySelector(`[data-param="${CSS.escape(p)}"]`).value]));
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
  let runs = new Map();
  const runsBox = h("div", { class: "panel flush", id: "job-runs" });

  function renderRuns() {
    for (const run of summary.runs.values()) if (run.job_id === jobId) runs.set(run.run_id, run);
    const list = [...runs.values()];
    runsBox.replaceChildren(h("h2", {}, "Recent runs"), list.length
      ? runsTable(list, { now: summary.now(), showJob: false })
      : h("div", { class: "empty" }, "No runs yet."));
  }

  function render(job) {
    document.title = `${job.job_id} · Apsis`;
    // The server renders the Markdown and sanitizes the HTML (apsis_server/web/markdown.py):
    // this is the only HTML from the server that the UI inserts as HTML; everything
    // else goes in as text.
    const description = job.description_html || "";
    const now = summary.now();
    main.replaceChildren();
    append(main, [
      h("div", { class: "page-head" }, h("div", {},
        h("h1", {}, job.job_id),
        h("div", { class: "sub" }, (job.labels || []).map((l) => h("span", { class: "chip label" }, l)),
          job.params.length ? ` params: ${job.params.join(", ")}` : " no params"))),
      description ? h("div", { class: "panel markdown", id: "description" }) : null,
      h("div", { class: "panel" }, h("h2", {}, "Run now"), runNowForm(job, app)),
      h("div", { class: "grid2" },
        h("div", { class: "panel" }, h("h2", {}, "Program"), programEl(job.program)),
        h("div", { class: "panel", id: "schedules" }, h("h2", {}, "Schedules"),
          job.schedules.length ? h("ul", {}, job.schedules.map((s) => h("li", {},
            h("span", { class: s.enabled ? "" : "muted" }, s.text), " ", h("span", { class: "chip" }, s.type),
            s.enabled ? "" : h("span", { class: "muted" }, " (disabled)")))) : h("p", { class: "muted" }, "Runs only when scheduled by hand."),
          job.next_times.length ? [h("h3", {}, "Next"), h("ul", { id: "next-times" }, job.next_times.map((t) =>
            h("li", {}, timeEl(t), h("span", { class: "muted" }, ` (${relative(parseTime(t), now)})`))))] : null)),
      h("div", { class: "grid2" },
        h("div", { class: "panel" }, h("h2", {}, "Conditions"), itemsEl(job.conditions, "None.")),
        h("div", { class: "panel" }, h("h2", {}, "Actions"), itemsEl(job.actions, "None."))),
      runsBox]);
    if (description) main.querySelector("#description").innerHTML = description;
    renderRuns();
  }

  main.append(h("p", { class: "muted" }, "Loading…"));
  get(`/jobs/${jobPath(jobId)}`).then(async ({ job }) => {
    render(job);
    const page = await get(`/jobs/${jobPath(jobId)}/runs?limit=30`);
    for (const run of page.runs) runs.set(run.run_id, run);
    renderRuns();
  }, (exc) => {
    main.replaceChildren(h("div", { class: "banner error" }, exc.status === 404 ? `No job ${jobId}.` : exc.message));
  });
  const onRun = (event) => { if (event.detail.job_id === jobId) renderRuns(); };
  summary.addEventListener("run", onRun);
  const stopTick = tickElapsed(runsBox, () => summary.now());
  return () => { summary.removeEventListener("run", onRun); stopTick(); document.title = "Apsis"; };
}
