// One run: summary, times, run log, metadata, live output (ANSI colours,
// tail first, "load earlier") and the operations, each confirmed first.

import { getBytes, jobPath, post } from "../api.js";
import { AnsiRenderer } from "../ansi.js";
import { confirmDialog, h, link, toast } from "../dom.js";
import { isFinished } from "../feed.js";
import { RunFeed } from "../feed.js";
import { duration, parseTime, timeEl } from "../format.js";
import { argsChips, stateBadge } from "../runtable.js";

const TAIL = 64 * 1024;
const EARLIER = 256 * 1024;
const FINISHED_STATES = ["success", "failure", "error", "skipped"];

const OPERATIONS = [
  { op: "start", label: "Start now", states: ["scheduled", "waiting"], ask: "Start this run now, ignoring its schedule time and conditions?" },
  { op: "skip", label: "Skip", states: ["scheduled", "waiting"], ask: "Skip this run? It will not run." },
  { op: "stop", label: "Stop", states: ["running"], ask: "Stop this run? Its program gets its stop signal, then SIGKILL after the grace period.", danger: true },
  { op: "kill", label: "Kill", states: ["running", "stopping"], ask: "Kill this run's program with SIGKILL now?", danger: true },
  { op: "rerun", label: "Rerun", states: FINISHED_STATES, ask: "Schedule a new run of this job with the same args, now?" },
  { op: "error", label: "Set error", states: ["scheduled", "waiting", "starting", "running", "stopping"], ask: "Put this run in error? For a run that is wedged: a process it has is killed.", danger: true },
];

// Output bytes as loaded: from `start`, decoded and rendered as they come.
class Output {
  constructor(pre) {
    this.pre = pre;
    this.start = null;
    this.chunks = [];
    this.length = 0;
    this._reset();
  }

  _reset() {
    this.pre.replaceChildren();
    this.decoder = new TextDecoder("utf-8");
    this.renderer = new AnsiRenderer(this.pre);
  }

  get end() {
    return this.start === null ? null : this.start + this.length;
  }

  _write(bytes, first) {
    let data = bytes;
    // A tail may begin inside a UTF-8 character: skip its continuation bytes.
    if (first && this.start > 0) {
      let skip = 0;
      while (skip < data.length && skip < 3 && (data[skip] & 0xc0) === 0x80) skip++;
      data = data.subarray(skip);
    }
    this.renderer.write(this.decoder.decode(data, { stream: true }));
  }

  append(offset, bytes) {
    if (this.start === null) this.start = offset;
    const end = this.end;
    if (offset + bytes.length <= end && this.length > 0) return; // seen already
    if (offset > end) return; // a gap should not happen; the feed restarts from `end`
    const fresh = bytes.subarray(end - offset);
    if (fresh.length === 0) return;
    const follow = this.pre.scrollTop + this.pre.clientHeight >= this.pre.scrollHeight - 24;
    this.chunks.push(fresh);
    this.length += fresh.length;
    this._write(fresh, this.chunks.length === 1);
    if (follow) this.pre.scrollTop = this.pre.scrollHeight;
  }

  prepend(bytes) {
    this.start -= bytes.length;
    this.chunks.unshift(bytes);
    this.length += bytes.length;
    this._reset();
    this.chunks.forEach((chunk, i) => this._write(chunk, i === 0));
  }
}

function opButtons(run, onDone) {
  const box = h("div", { class: "buttons", id: "ops" });
  for (const spec of OPERATIONS) {
    if (!spec.states.includes(run.state)) continue;
    if (spec.op === "rerun" && run.job_id === "adhoc") continue; // a program given directly: not kept
    box.append(h("button", {
      class: spec.danger ? "btn btn-danger" : "btn", "data-op": spec.op,
      onclick: async () => {
        if (!(await confirmDialog(`${spec.label}: ${run.run_id}`, `${spec.ask} (${run.job_id})`, spec.label))) return;
        try {
          const result = await post(`/runs/${run.run_id}/${spec.op}`);
          if (spec.op === "rerun") {
            toast(`Rerun scheduled:`, { href: `/runs/${result.run.run_id}`, linkText: result.run.run_id });
          } else {
            toast(`${run.run_id}: ${spec.op} requested`);
          }
          onDone(result.run.run_id === run.run_id ? result.run : null);
        } catch (exc) {
          toast(`${spec.op} failed: ${exc.message}`, { error: true });
        }
      },
    }, spec.label));
  }
  if (isFinished(run.state)) {
    const others = FINISHED_STATES.filter((s) => s !== run.state);
    const select = h("select", { id: "mark-state", "aria-label": "mark as" },
      h("option", { value: "" }, "Mark as…"), others.map((s) => h("option", { value: s }, s)));
    select.addEventListener("change", async () => {
      const state = select.value;
      select.value = "";
      if (!state) return;
      if (!(await confirmDialog(`Mark ${run.run_id}`, `Mark this run ${state}? Its program is not run again.`, `Mark ${state}`))) return;
      try {
        onDone((await post(`/runs/${run.run_id}/mark/${state}`)).run);
        toast(`${run.run_id} marked ${state}`);
      } catch (exc) {
        toast(`mark failed: ${exc.message}`, { error: true });
      }
    });
    box.append(select);
  }
  return box;
}

function timesList(run) {
  const order = ["scheduled", "waiting", "starting", "running", "stopping", ...FINISHED_STATES];
  const entries = Object.entries(run.times || {}).sort((a, b) => order.indexOf(a[0]) - order.indexOf(b[0]));
  return h("dl", { class: "kv" }, entries.map(([state, t]) => [h("dt", {}, state), h("dd", {}, timeEl(t))]));
}

function valueEl(value, key = "") {
  if (typeof value === "number" && key.endsWith("_time")) return timeEl(new Date(value * 1000).toISOString());
  if (typeof value === "number" && key === "elapsed") return h("span", {}, duration(value));
  if (value !== null && typeof value === "object") return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
  return h("span", { class: "mono" }, String(value));
}

export function mount(main, app, [runId]) {
  let run = null;
  let meta = {};
  let log = [];
  const head = h("div", { class: "page-head" });
  const summaryBox = h("div", { class: "panel", id: "run-summary" });
  const timesBox = h("div", { class: "panel", id: "run-times" });
  const logBox = h("div", { class: "panel flush", id: "run-log" });
  const metaBox = h("div", { class: "panel", id: "run-meta" });
  const pre = h("pre", { class: "output", id: "output" });
  const outputInfo = h("span", { id: "output-info" });
  const earlier = h("button", { class: "btn btn-small", id: "load-earlier", hidden: true }, "Load earlier");
  const feedState = h("span", { class: "muted", id: "feed-state" });
  const output = new Output(pre);
  main.append(head,
    h("div", { class: "grid2" }, summaryBox, timesBox),
    h("div", { class: "panel flush" },
      h("div", { class: "output-bar" }, h("strong", {}, "Output"), outputInfo, h("span", { class: "spacer" }), feedState, earlier),
      pre),
    h("div", { class: "grid2" }, logBox, metaBox));

  // An operation's answer can come after the feed has shown a later state (a
  // stopped program that exited at once): the run with the latest time wins.
  const latest = (r) => Math.max(0, ...Object.values(r.times ?? {}).map(parseTime));
  const renderHead = () => {
    head.replaceChildren(
      h("div", {},
        h("h1", {}, `Run ${run.run_id} `, stateBadge(run.state)),
        h("div", { class: "sub" }, link(`/jobs/${jobPath(run.job_id)}`, run.job_id), " ", argsChips(run.args))),
      h("span", { class: "spacer" }),
      opButtons(run, (updated) => { if (updated && latest(updated) >= latest(run)) { run = updated; renderAll(); } }));
  };
  const renderSummary = () => {
    const since = run.times?.running;
    const elapsed = h("span", { id: "elapsed" }, run.elapsed === null ? "—" : duration(run.elapsed));
    if (since && ["running", "stopping"].includes(run.state)) elapsed.dataset.since = since;
    summaryBox.replaceChildren(h("h2", {}, "Summary"), h("dl", { class: "kv" },
      h("dt", {}, "job"), h("dd", {}, link(`/jobs/${jobPath(run.job_id)}`, run.job_id)),
      h("dt", {}, "args"), h("dd", {}, Object.keys(run.args || {}).length ? argsChips(run.args) : h("span", { class: "muted" }, "none")),
      h("dt", {}, "state"), h("dd", {}, stateBadge(run.state)),
      h("dt", {}, "message"), h("dd", { id: "run-message" }, run.message || "—"),
      h("dt", {}, "schedule time"), h("dd", {}, timeEl(run.schedule_time)),
      h("dt", {}, "elapsed"), h("dd", {}, elapsed),
      run.rerun_of ? [h("dt", {}, "rerun of"), h("dd", {}, link(`/runs/${run.rerun_of}`, run.rerun_of))] : null,
      h("dt", {}, "labels"), h("dd", {}, (run.labels || []).map((l) => h("span", { class: "chip label" }, l))),
      run.ad_hoc ? [h("dt", {}, "ad hoc"), h("dd", {}, "yes")] : null));
    timesBox.replaceChildren(h("h2", {}, "Times"), timesList(run));
  };
  const renderLog = () => {
    logBox.replaceChildren(h("h2", {}, "Run log"), h("table", { class: "log-table" },
      h("tbody", {}, log.map((e) => h("tr", {},
        h("td", { class: "time" }, timeEl(e.time)),
        h("td", {}, e.state ? stateBadge(e.state) : ""),
        h("td", {}, e.message),
        e.server ? h("td", { class: "muted", title: "the server that wrote it" }, e.server) : null)))));
  };
  const renderMeta = () => {
    const keys = Object.keys(meta).sort();
    metaBox.replaceChildren(h("h2", {}, "Metadata"), keys.length
      ? h("dl", { class: "kv", id: "meta" }, keys.map((k) => [h("dt", {}, k), h("dd", {}, valueEl(meta[k], k))]))
      : h("p", { class: "muted" }, "None yet."));
  };
  const renderOutputInfo = () => {
    const total = output.end ?? 0;
    const from = output.start ?? 0;
    outputInfo.textContent = from > 0 ? `showing bytes ${from}–${total} of ${total}` : `${total} bytes`;
    earlier.hidden = !(from > 0);
  };
  const renderAll = () => {
    if (!run) return;
    document.title = `${run.run_id} ${run.job_id} · Apsis`;
    renderHead(); renderSummary();
  };

  earlier.addEventListener("click", async () => {
    const stop = output.start;
    const start = Math.max(0, stop - EARLIER);
    earlier.disabled = true;
    try {
      output.prepend(await getBytes(`/runs/${run.run_id}/output?start=${start}&stop=${stop}`));
      pre.scrollTop = 0;
    } catch (exc) {
      toast(`Could not load output: ${exc.message}`, { error: true });
    } finally {
      earlier.disabled = false;
      renderOutputInfo();
    }
  });

  const feed = new RunFeed(runId, {
    onRun: (r) => { run = r; renderAll(); },
    onLog: (entries, replace) => { log = replace ? entries : log.concat(entries); renderLog(); },
    onMeta: (m, replace) => { meta = replace ? m : { ...meta, ...m }; renderMeta(); },
    onOutput: (offset, bytes) => { output.append(offset, bytes); renderOutputInfo(); },
    onStatus: (status) => {
      const words = { connecting: "connecting…", connected: "live", finished: "", disconnected: "reconnecting…", missing: "" };
      feedState.textContent = words[status] ?? status;
      feedState.dataset.status = status;
      if (status === "missing") main.replaceChildren(h("div", { class: "banner error" }, `No run ${runId}.`));
    },
  }, TAIL);
  feed.start();
  const tick = setInterval(() => {
    const el = document.getElementById("elapsed");
    if (el?.dataset.since) el.textContent = duration((app.summary.now() - parseTime(el.dataset.since)) / 1000);
  }, 1000);
  return () => { feed.stop(); clearInterval(tick); document.title = "Apsis"; };
}
