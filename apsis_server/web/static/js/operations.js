// The operations on a run, for the run page and each row of the runs list: which
// states allow which, and doing one, always after a confirmation dialog.

import { post } from "./api.js";
import { confirmDialog, h, toast } from "./dom.js";

export const FINISHED_STATES = ["success", "failure", "error", "skipped"];

export const OPERATIONS = [
  { op: "start", label: "Start now", states: ["scheduled", "waiting"], ask: "Start this run now, ignoring its schedule time and conditions?" },
  { op: "skip", label: "Skip", states: ["scheduled", "waiting"], ask: "Skip this run? It will not run." },
  { op: "stop", label: "Stop", states: ["running"], ask: "Stop this run? Its program gets its stop signal, then SIGKILL after the grace period.", danger: true },
  { op: "kill", label: "Kill", states: ["running", "stopping"], ask: "Kill this run's program with SIGKILL now?", danger: true },
  { op: "rerun", label: "Rerun", states: FINISHED_STATES, ask: "Schedule a new run of this job with the same args, now?" },
  { op: "error", label: "Set error", states: ["scheduled", "waiting", "starting", "running", "stopping"], ask: "Put this run in error? For a run that is wedged: a process it has is killed.", danger: true },
];

// What a run is called in a dialog: its id, job and args.
export function runTitle(run) {
  const args = Object.entries(run.args || {}).map(([k, v]) => `${k}=${v}`).join(" ");
  const job = run.origin === "adhoc" ? "an ad-hoc command" : run.job_id;
  return `${run.run_id} (${job}${args ? ` ${args}` : ""})`;
}

// Ask, then do `spec.op` to `run`; `onDone(run or null)` with the run as changed
// (null when the answer is another run: a rerun).
export async function operate(run, spec, onDone = () => {}) {
  if (!(await confirmDialog(`${spec.label}: ${run.run_id}`, `${spec.ask} ${runTitle(run)}`, spec.label))) return;
  try {
    const result = await post(`/runs/${run.run_id}/${spec.op}`);
    if (spec.op === "rerun") {
      toast("Rerun scheduled:", { href: `/runs/${result.run.run_id}`, linkText: result.run.run_id });
    } else {
      toast(`${run.run_id}: ${spec.op} requested`);
    }
    onDone(result.run.run_id === run.run_id ? result.run : null);
  } catch (exc) {
    toast(`${spec.op} failed: ${exc.message}`, { error: true });
  }
}

// Buttons for the operations `run`'s state allows (`ops`: which to offer).
export function opButtons(run, { ops = null, small = false, onDone } = {}) {
  return OPERATIONS.filter((spec) => spec.states.includes(run.state) && (!ops || ops.includes(spec.op)))
    .filter((spec) => !(spec.op === "rerun" && run.origin === "adhoc")) // an ad-hoc run is run again, not rerun
    .map((spec) => h("button", {
      class: `btn${small ? " btn-small" : ""}${spec.danger ? " btn-danger" : ""}`,
      "data-op": spec.op,
      title: spec.ask,
      onclick: (event) => { event.stopPropagation(); operate(run, spec, onDone); },
    }, spec.label));
}
