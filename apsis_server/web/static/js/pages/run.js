// One run: summary (what made it, what it runs, its times in the reader's zone),
// run log, metadata in words, live output (ANSI colours, tail first, "load
// earlier") in tabs — both streams, stdout, stderr; the one shown is in the address
// (`?output=stderr`) —, the operations, each confirmed first, and its JSON.

import { get, getBytes, jobPath, post } from "../api.js";
import { confirmDialog, h, link, toast } from "../dom.js";
import { isFinished, RunFeed } from "../feed.js";
import { duration, parseTime, timeEl } from "../format.js";
import { FINISHED_STATES, opButtons } from "../operations.js";
import { Output, OutputTabs, outputFromUrl, urlWithOutput } from "../output.js";
import { argsChips, isAdHoc, lateChip, lateness, stateBadge, tickElapsed } from "../runtable.js";
import { metaText, programWords } from "../words.js";
import { jsonToggle } from "./json.js";
import { zoneOf } from "./runs.js";

const TAIL = 64 * 1024;
const EARLIER = 256 * 1024;
const ORDER = ["scheduled", "waiting", "starting", "running", "stopping", ...FINISHED_STATES];
// What made a run (the API's `origin`), in words.
const ORIGINS = {
  schedule: "its schedule", hand: "scheduled by hand", adhoc: "an ad-hoc command",
  rerun: "a rerun", action: "an action of another run",
};

function markSelect(run, onDone) {
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
  return select;
}

function dl(pairs, attrs = {}) {
  return h("dl", { class: "kv", ...attrs }, pairs.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

// What the run runs (once bound): the command in a code box, then host, timeout…
function programEl(program, run) {
  if (!program) {
    return h("p", { class: "muted", id: "run-program" },
      run.state === "scheduled" ? "Bound from its job when its schedule time comes." : "—");
  }
  const words = programWords(program);
  return h("div", { id: "run-program" },
    words.main !== null ? h("pre", { class: "program", id: "run-command" }, words.main) : h("p", {}, words.first),
    words.pairs.length ? dl(words.pairs, { class: "kv below" }) : null);
}

export function mount(main, app, [runId]) {
  const summary = app.summary;
  let run = null;
  let program;
  let meta = {};
  let log = [];
  const head = h("div", { class: "page-head" });
  const summaryBox = h("div", { class: "panel", id: "run-summary" });
  const programBox = h("div", { class: "panel", id: "run-program-box" });
  const timesBox = h("div", { class: "panel", id: "run-times" });
  const logBox = h("div", { class: "panel flush scroll", id: "run-log" });
  const metaBox = h("div", { class: "panel", id: "run-meta" });
  const pre = h("pre", { class: "output", id: "output" });
  const noOutput = h("p", { class: "empty output-none", id: "no-output", hidden: true });
  const outputBox = h("div", { id: "output-box" }, pre, noOutput);
  const outputInfo = h("span", { id: "output-info" });
  const mergedNote = h("span", { class: "output-note", id: "output-merged", hidden: true }, "stderr merged into stdout");
  const earlier = h("button", { class: "btn btn-small", id: "load-earlier", hidden: true }, "Load earlier");
  const feedState = h("span", { class: "muted", id: "feed-state" });
  const json = jsonToggle(() => ({ run, program: program ?? null, meta, log }));
  // The output shown (see `follow`): its name, its bytes as loaded, the feed bringing them.
  let shown = outputFromUrl();
  let output = null;
  let feed = null;
  let gone = false; // the page was left: open no feed
  const tabs = new OutputTabs(outputBox, (name) => follow(name));
  tabs.show(false); // until the program says whether stderr is kept apart
  main.append(head, json.panel,
    h("div", { class: "grid2" }, summaryBox, h("div", {}, programBox, timesBox)),
    h("div", { class: "panel flush output-panel" },
      h("div", { class: "output-bar" }, h("strong", {}, "Output"), tabs.el, mergedNote, outputInfo,
        h("span", { class: "spacer" }), feedState, earlier),
      outputBox),
    h("div", { class: "grid2" }, logBox, metaBox));

  const zone = () => (run ? zoneOf(summary)(run.job_id) : null);
  const when = (text) => timeEl(text, { jobZone: zone(), now: summary.now() });
  // An operation's answer can come after the feed has shown a later state (a
  // stopped program that exited at once): the run with the latest time wins.
  const latest = (r) => Math.max(0, ...Object.values(r.times ?? {}).map(parseTime));
  const changed = (updated) => { if (updated && latest(updated) >= latest(run)) { run = updated; renderAll(); } };
  const jobLink = () => (isAdHoc(run) ? h("span", { class: "muted" }, "an ad-hoc command")
    : link(`/jobs/${jobPath(run.job_id)}`, run.job_id));

  const renderHead = () => {
    head.replaceChildren(
      h("div", {},
        h("h1", {}, `Run ${run.run_id} `, stateBadge(run.state)),
        h("div", { class: "sub" }, jobLink(), " ", argsChips(run.args))),
      h("span", { class: "spacer" }),
      h("div", { class: "buttons", id: "ops" }, opButtons(run, { onDone: changed }),
        isFinished(run.state) ? markSelect(run, changed) : null, json.button));
  };
  const renderSummary = () => {
    const since = run.times?.running;
    const elapsed = h("span", { id: "elapsed" }, run.elapsed === null ? "—" : duration(run.elapsed));
    if (since && ["running", "stopping"].includes(run.state)) elapsed.dataset.since = since;
    summaryBox.replaceChildren(h("h2", {}, "Summary"), dl([
      ["job", isAdHoc(run) ? h("span", { class: "muted" }, "none: a command given directly") : jobLink()],
      ["args", Object.keys(run.args || {}).length ? argsChips(run.args) : h("span", { class: "muted" }, "none")],
      ["state", stateBadge(run.state)],
      ["message", h("span", { id: "run-message" }, run.message || "—")],
      ["made by", h("span", { id: "run-origin" }, ORIGINS[run.origin] || run.origin || "—")],
      ["schedule time", h("span", { id: "schedule-time" }, when(run.schedule_time), " ", lateChip(lateness(run, summary.now())))],
      run.stop_time ? ["stop time", h("span", { id: "stop-time" }, when(run.stop_time))] : null,
      ["elapsed", elapsed],
      run.rerun_of ? ["rerun of", link(`/runs/${run.rerun_of}`, run.rerun_of)] : null,
      (run.labels || []).length ? ["labels", (run.labels || []).map((l) => h("span", { class: "chip label" }, l))] : null,
    ]));
    const entries = Object.entries(run.times || {}).sort((a, b) => ORDER.indexOf(a[0]) - ORDER.indexOf(b[0]));
    timesBox.replaceChildren(h("h2", {}, "Times"), dl(entries.map(([state, t]) =>
      [state === "scheduled" ? h("span", { title: "when the run was made (it entered scheduled)" }, "created") : state, when(t)])));
    programBox.replaceChildren(h("h2", {}, "Program"), programEl(program, run));
  };
  const renderLog = () => {
    logBox.replaceChildren(h("h2", {}, "Run log"), h("table", { class: "log-table" },
      h("tbody", {}, log.map((e) => h("tr", {},
        h("td", { class: "time" }, when(e.time)),
        h("td", {}, e.state ? stateBadge(e.state) : ""),
        h("td", {}, e.message),
        e.server ? h("td", { class: "muted", title: "the server that wrote it" }, e.server) : null)))));
  };
  const renderMeta = () => {
    const keys = Object.keys(meta).sort();
    const none = !run || !isFinished(run.state) ? "None yet." : run.times?.running ? "None recorded." : "None: it never ran.";
    metaBox.replaceChildren(h("h2", {}, "Metadata"), keys.length
      ? dl(keys.map((k) => [k, k.endsWith("_time") && typeof meta[k] === "number"
        ? when(new Date(meta[k] * 1000).toISOString()) : h("span", { class: "mono" }, metaText(k, meta[k]))]), { id: "meta" })
      : h("p", { class: "muted" }, none));
  };
  // Each tab's size when known: the one shown as loaded (live); the others once the
  // program exited, from what the agent reported (stdout, stderr; merged is both).
  const renderTabs = () => {
    const known = {};
    if (typeof meta.output_length === "number") {
      known.stdout = meta.output_length;
      known.stderr = meta.stderr_length ?? 0;
      known.merged = known.stdout + known.stderr;
    }
    if (output.end !== null) known[shown] = output.end;
    tabs.setSizes(known);
  };
  // An empty black box says nothing: without output, say why there is none.
  const renderOutputInfo = () => {
    renderTabs();
    const total = output.end ?? 0;
    const from = output.start ?? 0;
    outputInfo.textContent = from > 0 ? `the last ${metaText("output_length", total - from)} of ${metaText("output_length", total)}` : metaText("output_length", total);
    earlier.hidden = !(from > 0);
    // Empty only once the feed said where this output starts (a tab just opened is not).
    const empty = total === 0 && run !== null && output.start !== null;
    const why = !run ? "" : isFinished(run.state) ? (run.times?.running ? "No output." : "No output: it never ran.")
      : run.times?.running ? "No output yet." : "Not started yet.";
    pre.hidden = empty && (isFinished(run.state) || !run.times?.running);
    noOutput.hidden = !pre.hidden;
    noOutput.textContent = why;
  };
  // Tabs, or one output and a note for a program whose stderr goes into its stdout
  // (and every run from before the two were kept apart).
  const renderStreams = () => {
    const merged = program?.stderr === "merge";
    tabs.show(program !== undefined && !merged);
    mergedNote.hidden = !merged;
    if (merged && shown !== "merged") follow("merged");
  };
  const loadProgram = async () => {
    try {
      const answer = await get(`/runs/${runId}`);
      program = answer.program ?? null;
      renderStreams();
      if (run) renderSummary();
    } catch {
      // the feed reports a missing run
    }
  };
  const renderAll = () => {
    if (!run) return;
    document.title = `${run.run_id} ${isAdHoc(run) ? "ad hoc" : run.job_id} · Apsis`;
    renderHead(); renderSummary(); renderMeta(); renderOutputInfo(); renderLog();
    json.refresh();
  };

  earlier.addEventListener("click", async () => {
    const loading = output;
    const stop = loading.start;
    const start = Math.max(0, stop - EARLIER);
    earlier.disabled = true;
    try {
      const bytes = await getBytes(`/runs/${run.run_id}/output?name=${shown}&start=${start}&stop=${stop}`);
      if (output !== loading) return; // another tab was picked meanwhile
      output.prepend(bytes);
      pre.scrollTop = 0;
    } catch (exc) {
      toast(`Could not load output: ${exc.message}`, { error: true });
    } finally {
      earlier.disabled = false;
      renderOutputInfo();
    }
  });

  // Show output `name`: the run's feed opened again for it (the run, log and metadata
  // come again with it, as on a reconnection), the tail first, then live.
  const follow = (name) => {
    if (gone) return;
    feed?.stop();
    shown = name;
    output = new Output(pre);
    // A feed left behind says nothing more (a message may be on its way as it closes).
    const only = (handler) => (...args) => { if (feed === mine) handler(...args); };
    const mine = new RunFeed(runId, {
      onRun: only((r) => {
        // The program is bound as the run leaves `scheduled`: ask again then.
        if (program === undefined || (!program && r.state !== "scheduled" && run?.state !== r.state)) loadProgram();
        run = r;
        renderAll();
      }),
      onLog: only((entries, replace) => { log = replace ? entries : log.concat(entries); renderLog(); json.refresh(); }),
      onMeta: only((m, replace) => { meta = replace ? m : { ...meta, ...m }; renderMeta(); renderTabs(); json.refresh(); }),
      onOutput: only((offset, bytes) => { output.append(offset, bytes); renderOutputInfo(); }),
      onStatus: only((status) => {
        const words = { connecting: "connecting…", connected: "live", finished: "", disconnected: "reconnecting…", missing: "" };
        feedState.textContent = words[status] ?? status;
        feedState.dataset.status = status;
        if (status === "missing") main.replaceChildren(h("div", { class: "banner error" }, `No run ${runId}.`));
      }),
    }, TAIL, name);
    feed = mine;
    tabs.select(name);
    history.replaceState(null, "", urlWithOutput(name));
    renderOutputInfo();
    mine.start();
  };
  follow(shown);
  const tick = setInterval(() => {
    const el = document.getElementById("elapsed");
    if (el?.dataset.since) el.textContent = duration((summary.now() - parseTime(el.dataset.since)) / 1000);
  }, 1000);
  const stopLate = tickElapsed(summaryBox, () => summary.now());
  window.addEventListener("zonechange", renderAll);
  return () => {
    gone = true;
    feed?.stop(); clearInterval(tick); stopLate();
    window.removeEventListener("zonechange", renderAll);
    document.title = "Apsis";
  };
}
