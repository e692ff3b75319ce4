// The jobs tree by path: searchable by text, `label:NAME` and `/folder/` terms
// (breadcrumbs then lead back up), and the reload of the job files, with what it
// changed and which files failed to load.

import { get, jobPath, post } from "../api.js";
import { confirmDialog, h, link, toast } from "../dom.js";
import { timeEl } from "../format.js";
import { breadcrumbs } from "./runs.js";

// Every term must match: `label:NAME` a label, `/PATH` the start of the job id,
// anything else part of the id, the description or a label (ignoring case).
export function jobMatches(job, query) {
  for (const term of query.split(/\s+/).filter(Boolean)) {
    if (term.toLowerCase().startsWith("label:")) {
      if (!(job.labels || []).some((l) => l.toLowerCase() === term.slice(6).toLowerCase())) return false;
      continue;
    }
    if (term.startsWith("/")) {
      if (!job.job_id.startsWith(term.slice(1))) return false;
      continue;
    }
    const text = [job.job_id, job.metadata?.description || "", ...(job.labels || [])].join(" ").toLowerCase();
    if (!text.includes(term.toLowerCase())) return false;
  }
  return true;
}

function buildTree(jobs) {
  const root = { folders: new Map(), jobs: [] };
  for (const job of jobs) {
    const parts = job.job_id.split("/");
    let node = root;
    for (const part of parts.slice(0, -1)) {
      if (!node.folders.has(part)) node.folders.set(part, { folders: new Map(), jobs: [] });
      node = node.folders.get(part);
    }
    node.jobs.push({ name: parts[parts.length - 1], job });
  }
  return root;
}

function countJobs(node) {
  let n = node.jobs.length;
  for (const child of node.folders.values()) n += countJobs(child);
  return n;
}

function firstLine(markdown) {
  return (markdown || "").split("\n").find((l) => l.trim())?.replace(/[*_`#>]/g, "").trim() || "";
}

function jobItem({ name, job }, onLabel, now) {
  const next = job.next_times?.[0];
  const schedules = (job.schedules || []).filter((s) => s.enabled).map((s) => s.text).join("; ");
  const zone = (job.schedules || []).find((s) => s.enabled && s.zone)?.zone || null;
  return h("li", { class: "job", "data-job-id": job.job_id },
    h("div", {}, link(`/jobs/${jobPath(job.job_id)}`, name), " ",
      (job.labels || []).map((l) => h("span", { class: "chip label", onclick: () => onLabel(l) }, l))),
    h("div", { class: "desc", title: job.metadata?.description || "" },
      firstLine(job.metadata?.description) || h("span", {}, schedules || "no schedule")),
    h("div", { class: "next" }, next ? ["next ", timeEl(next, { jobZone: zone, now })] : "—"));
}

function treeEl(node, ctx, path = "") {
  const folders = [...node.folders.entries()].sort(([a], [b]) => a.localeCompare(b));
  return h("ul", {},
    folders.map(([name, child]) => h("li", { class: "folder", "data-folder": `${path}${name}/` },
      h("details", { open: true },
        h("summary", {}, link(`/jobs?q=${encodeURIComponent(`/${path}${name}/`)}`, `${name}/`),
          h("span", { class: "count" }, String(countJobs(child)))),
        treeEl(child, ctx, `${path}${name}/`)))),
    node.jobs.sort((a, b) => a.name.localeCompare(b.name)).map((item) => jobItem(item, ctx.onLabel, ctx.now)));
}

function errorLines(errors) {
  return errors.map((e) => h("div", { class: "mono" }, `${e.path}: ${e.key_path ? e.key_path + ": " : ""}${e.message}`));
}

// What a reload did: added, changed, removed, kept, and the files that failed.
function reloadResult(answer) {
  const line = (name, ids, cls) => h("div", { class: `reload-${name}` }, h("strong", {}, `${name}: `),
    ids.length ? ids.map((id, i) => [i ? ", " : "", h("span", { class: cls }, id)]) : h("span", { class: "muted" }, "none"));
  return h("div", { class: `panel reload-result ${answer.errors.length ? "has-errors" : ""}`, id: "reload-result", role: "status" },
    h("div", { class: "panel-head" }, h("h2", {}, "Reloaded"), h("span", { class: "spacer" }),
      h("button", { class: "btn btn-small", id: "reload-dismiss", onclick: (e) => e.target.closest(".panel").remove() }, "Dismiss")),
    line("added", answer.added, "mono"), line("changed", answer.changed, "mono"), line("removed", answer.removed, "mono"),
    answer.kept.length ? line("kept as they were (their files no longer load)", answer.kept, "mono") : null,
    answer.errors.length
      ? [h("div", {}, h("strong", {}, `${answer.errors.length} file${answer.errors.length === 1 ? "" : "s"} failed to load:`)),
        h("div", { class: "banner error" }, errorLines(answer.errors))]
      : h("div", { class: "muted" }, "Every job file loaded."));
}

export function mount(main, app) {
  const summary = app.summary;
  const params = new URLSearchParams(location.search);
  const search = h("input", {
    type: "search", id: "job-search", placeholder: "Search jobs: text, label:name or /folder/",
    value: params.get("q") || "", autocomplete: "off",
  });
  const labelsBox = h("div", { class: "buttons", id: "job-labels" });
  const treeBox = h("div", { class: "panel tree", id: "jobs-tree" });
  const errorsBox = h("div", { id: "job-errors" });
  const resultBox = h("div", { id: "reload-box" });
  const crumbs = h("div", { id: "jobs-crumbs" });
  const count = h("span", { class: "sub" });
  const reload = h("button", { class: "btn", id: "reload", onclick: () => doReload() }, "Reload jobs…");
  main.append(
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Jobs"), count), h("span", { class: "spacer" }), reload),
    resultBox, errorsBox,
    h("div", { class: "search-bar" }, search, labelsBox),
    crumbs, treeBox);

  const setQuery = (q) => {
    search.value = q;
    const url = q ? `${location.pathname}?q=${encodeURIComponent(q)}` : location.pathname;
    window.history.replaceState(null, "", url);
    render();
  };
  const showErrors = (errors) => {
    errorsBox.replaceChildren(errors.length ? h("div", { class: "banner error" },
      `${errors.length} job file(s) failed to load: `, errorLines(errors)) : "");
  };

  async function doReload() {
    if (!(await confirmDialog("Reload jobs", "Read every job file in the server's jobs directory again? Scheduled runs of changed jobs are planned again.", "Reload"))) return;
    reload.disabled = true;
    try {
      const answer = await post("/jobs/reload");
      resultBox.replaceChildren(reloadResult(answer));
      showErrors(answer.errors);
    } catch (exc) {
      toast(`Reload failed: ${exc.message}`, { error: true });
    } finally {
      reload.disabled = false;
    }
  }

  function render() {
    const all = [...summary.jobs.values()];
    const query = search.value.trim();
    const shown = all.filter((j) => jobMatches(j, query));
    count.textContent = `${shown.length} of ${all.length} jobs`;
    const labels = new Map();
    for (const job of all) for (const l of job.labels || []) labels.set(l, (labels.get(l) || 0) + 1);
    labelsBox.replaceChildren(...[...labels.entries()].sort().map(([l, n]) =>
      h("span", { class: "chip label", title: `${n} job(s)`, onclick: () => setQuery(`label:${l}`) }, l)));
    const folder = query.split(/\s+/).find((t) => t.startsWith("/")) || "";
    crumbs.replaceChildren(folder ? h("div", { class: "crumbs-bar" },
      breadcrumbs(folder, (path) => `/jobs${path ? `?q=${encodeURIComponent(path)}` : ""}`),
      h("span", { class: "spacer" }), link(`/runs?job=${encodeURIComponent(folder)}`, "runs in this folder")) : "");
    const ctx = { onLabel: (l) => setQuery(`label:${l}`), now: summary.now() };
    if (!summary.ready) treeBox.replaceChildren(h("div", { class: "empty" }, "Loading…"));
    else if (!shown.length) treeBox.replaceChildren(h("div", { class: "empty" }, "No jobs match."));
    else treeBox.replaceChildren(treeEl(buildTree(shown), ctx));
  }

  search.addEventListener("input", () => setQuery(search.value));
  get("/jobs").then((data) => showErrors(data.errors || []), () => {});
  render();
  summary.addEventListener("snapshot", render);
  summary.addEventListener("job", render);
  window.addEventListener("zonechange", render);
  return () => {
    summary.removeEventListener("snapshot", render);
    summary.removeEventListener("job", render);
    window.removeEventListener("zonechange", render);
  };
}
