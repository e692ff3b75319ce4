// The ad-hoc run form: a shell command or an argv (one argument a line), the host
// to run it on (an agent's host or a host group; empty: the server's own agent), and
// when (empty: now). Nothing is sent before the operator confirms what will run.

import { post } from "../api.js";
import { confirmDialog, h, toast } from "../dom.js";
import { fromLocalInput, fullTime, localZone } from "../format.js";
import { commandLine } from "../words.js";

// The program the form describes, or an error message.
export function readProgram({ kind, text, host }) {
  let program;
  if (kind === "argv") {
    const argv = text.split("\n").map((line) => line.replace(/\r$/, ""));
    while (argv.length && argv[argv.length - 1] === "") argv.pop();
    if (!argv.length || !argv[0].trim()) return { error: "Give the program to run on the first line." };
    program = { type: "program", argv };
  } else {
    if (!text.trim()) return { error: "Give a shell command to run." };
    program = { type: "shell", command: text };
  }
  if (host.trim()) program.host = host.trim();
  return { program };
}

export function adhocForm(app, onClose) {
  const kind = h("select", { id: "adhoc-kind", "aria-label": "what to run" },
    h("option", { value: "shell" }, "shell command"), h("option", { value: "argv" }, "program and args, one a line"));
  const text = h("textarea", { id: "adhoc-command", rows: 3, spellcheck: "false", autocomplete: "off",
    placeholder: "df -h /var", "aria-label": "command" });
  const hosts = h("datalist", { id: "adhoc-hosts" },
    [...new Set([...app.summary.agents.values()].map((a) => a.host))].sort().map((host) => h("option", { value: host })));
  const host = h("input", { type: "text", id: "adhoc-host", list: "adhoc-hosts", placeholder: "the server's own agent", autocomplete: "off" });
  const time = h("input", { type: "datetime-local", id: "adhoc-time" });
  const problem = h("p", { class: "form-error", id: "adhoc-error", role: "alert" });
  kind.addEventListener("change", () => {
    text.placeholder = kind.value === "argv" ? "/usr/bin/du\n-sh\n/var/log" : "df -h /var";
  });
  const form = h("form", { class: "panel adhoc", id: "adhoc" },
    h("h2", {}, "Ad-hoc run"),
    h("div", { class: "adhoc-grid" },
      h("label", {}, "run", kind), h("label", { class: "wide" }, "command", text),
      h("label", {}, "host", host, hosts),
      h("label", {}, `time (${localZone()}; empty: now)`, time)),
    problem,
    h("div", { class: "buttons" },
      h("button", { class: "btn btn-primary", type: "submit" }, "Run…"),
      h("button", { class: "btn", type: "button", onclick: onClose }, "Cancel")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    problem.textContent = "";
    const { program, error } = readProgram({ kind: kind.value, text: text.value, host: host.value });
    if (error) { problem.textContent = error; return; }
    const when = fromLocalInput(time.value);
    if (time.value && !when) { problem.textContent = "That time cannot be read."; return; }
    const what = program.command ?? commandLine(program.argv);
    const where = program.host ? `on ${program.host}` : "on the server's own agent";
    const at = when ? `at ${fullTime(Date.parse(when), localZone())}` : "now";
    if (!(await confirmDialog("Ad-hoc run", `Run ${what} ${where}, ${at}?`, "Run"))) return;
    try {
      const { run } = await post("/runs", when ? { program, time: when } : { program });
      toast(`Started ${run.run_id}`);
      app.navigate(`/runs/${run.run_id}`);
    } catch (exc) {
      problem.textContent = `Not run: ${exc.message}`;
    }
  });
  return form;
}
