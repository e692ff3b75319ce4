// The jobs tree by path, searchable by label ("label:x" or a label chip) and text.

import { get, jobPath } from "../api.js";
import { h, link } from "../dom.js";
import { relative, timeEl, parseTime } from "../format.js";

export function jobMatches(job, query) {
  for (const term of query.toLowerCase().split(/\s+/).filter(Boolean)) {
    if (term.startsWith("label:")) {
      if (!(job.labels || []).some((l) => l.toLowerCase() === term.slice(6))) return false;
      continue;
    }
    const text = [job.job_id, job.metadata?.description || "", ...(job.labels || [])].join(" ").toLowerCase();
    if (!text.includes(term)) return false;
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

function jobItem({ name, job }, onLabel, now) {
  const next = job.next_times?.[0];
  const schedules = (job.schedules || []).filter((s) => s.enabled).map((s) => s.text).join("; ");
  return h("li", { class: "job", "data-job-id": job.job_id },
    h("div", {}, link(`/jobs/${jobPath(job.job_id)}`, name), " ",
      (job.labels || []).map((l) => h("span", { class: "chip label", onclick: () => onLabel(l) }, l))),
    h("div", { class: "desc", title: job.metadata?.description || "" },
      (job.metadata?.description || "").split("\n")[0].replace(/[*_`#]/g, "") || h("span", {}, schedules || "no schedule")),
    h("div", { class: "next" }, next ? ["next ", timeEl(next, { relativeTo: now })] : "—"));
}

function treeEl(node, onLabel, now) {
  const folders = [...node.folders.entries()].sort(([a], [b]) => a.localeCompare(b));
  return h("ul", {},
    folders.map(([name, child]) => h("li", { class: "folder" },
      h("details", { open: true },
        h("summary", {}, `${name}/`, h("span", { class: "count" }, String(countJobs(child)))),
        treeEl(child, onLabel, now)))),
    node.jobs.sort((a, b) => a.name.localeCompare(b.name)).map((item) => jobItem(item, onLabel, now)));
}

export function mount(main, app) {
  const summary = app.summary;
  const params = new URLSearchParams(location.search);
  const search = h("input", {
    type: "search", id: "job-search", placeholder: "Search jobs: text or label:name",
    value: params.get("q") || "", autocomplete: "off",
  });
  const labelsBox = h("div", { class: "buttons", id: "job-labels" });
  const treeBox = h("div", { class: "panel tree", id: "jobs-tree" });
  const errorsBox = h("div", { id: "job-errors" });
  const count = h("span", { class: "sub" });
  main.append(
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Jobs"), count)),
    errorsBox,
    h("div", { class: "search-bar" }, search, labelsBox),
    treeBox);

  const setQuery = (q) => {
    search.value = q;
    const url = q ? `${location.pathname}?q=${encodeURIComponent(q)}` : location.pathname;
    window.history.replaceState(null, "", url);
    render();
  };

  function render() {
    const all = [...summary.jobs.values()];
    const query = search.value.trim();
    const shown = all.filter((j) => jobMatches(j, query));
    count.textContent = `${shown.length} of ${all.length} jobs`;
    const labels = new Map();
    for (const job of all) for (const l of job.labels || []) labels.set(l, (labels.get(l) || 0) + 1);
    labelsBox.replaceChildren(...[...labels.entries()].sort().map(([l, n]) =>
      h("span", { class: "chip label", title: `${n} job(s)`, onclick: () => setQuery(`label:${l}`) }, l)));
    if (!summary.ready) treeBox.replaceChildren(h("div", { class: "empty" }, "Loading…"));
    else if (!shown.length) treeBox.replaceChildren(h("div", { class: "empty" }, "No jobs match."));
    else treeBox.replaceChildren(treeEl(buildTree(shown), (l) => setQuery(`label:${l}`), summary.now()));
  }

  search.addEventListener("input", () => setQuery(search.value));
  get("/jobs").then((data) => {
    if (!data.errors?.length) return;
    errorsBox.replaceChildren(h("div", { class: "banner error" },
      `${data.errors.length} job file(s) failed to load: `,
      data.errors.map((e) => h("div", { class: "mono" }, `${e.path}: ${e.key_path ? e.key_path + ": " : ""}${e.message}`))));
  }, () => {});
  render();
  summary.addEventListener("snapshot", render);
  summary.addEventListener("job", render);
  return () => {
    summary.removeEventListener("snapshot", render);
    summary.removeEventListener("job", render);
  };
}
