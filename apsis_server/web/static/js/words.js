// Values in words, never raw JSON: signal names, byte sizes, programs, run
// metadata, conditions and actions (the CLI's cli/human.py says them the same way).

import { h } from "./dom.js";
import { duration } from "./format.js";

const SIGNALS = ["", "SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS",
  "SIGFPE", "SIGKILL", "SIGUSR1", "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGTERM",
  "SIGSTKFLT", "SIGCHLD", "SIGCONT", "SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG",
  "SIGXCPU", "SIGXFSZ", "SIGVTALRM", "SIGPROF", "SIGWINCH", "SIGIO", "SIGPWR", "SIGSYS"];

// "SIGTERM" for 15 or "15"; names and anything else as they are.
export function signalName(value) {
  const n = Number(value);
  return Number.isInteger(n) && SIGNALS[n] ? SIGNALS[n] : String(value);
}

// "812 B", "10.4 KiB", "3 MiB".
export function bytes(count) {
  let value = Number(count);
  for (const unit of ["B", "KiB", "MiB", "GiB", "TiB"]) {
    if (Math.abs(value) < 1024 || unit === "TiB") {
      return unit === "B" ? `${Math.round(value)} B` : `${Number(value.toFixed(1))} ${unit}`;
    }
    value /= 1024;
  }
  return String(count);
}

// A measure without float noise: 3, 0.25, 0.1235.
export function number(value) {
  return Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(4)));
}

export function plain(value) {
  if (value === null || value === undefined) return "—";
  if (Array.isArray(value)) return value.map(plain).join(", ");
  if (typeof value === "object") return Object.entries(value).map(([k, v]) => `${k}=${plain(v)}`).join(", ");
  if (typeof value === "number") return number(value);
  if (typeof value === "boolean") return value ? "yes" : "no";
  return String(value);
}

const SECONDS = new Set(["elapsed", "utime", "stime", "duration", "grace", "grace_period", "delay", "max_delay"]);
const BYTES = new Set(["output_length", "memory", "memory_peak", "memory_max"]);

// One metadata value in words; `rusage` and other mappings key by key.
export function metaText(key, value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (key === "signal" || key.endsWith("_signal")) return signalName(value);
  if (Array.isArray(value)) return value.map((v) => metaText(key, v)).join(", ");
  if (typeof value === "object") return Object.entries(value).map(([k, v]) => `${k} ${metaText(k, v)}`).join(", ");
  if (typeof value !== "number") return String(value);
  if (SECONDS.has(key)) return duration(value);
  if (BYTES.has(key) || key.endsWith("_bytes")) return bytes(value);
  if (key === "maxrss") return bytes(value * 1024); // KiB on Linux
  return number(value);
}

// -- programs ------------------------------------------------------------------------

export function commandLine(argv) {
  return argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, "'\"'\"'")}'`)).join(" ");
}

function stopWords(stop) {
  const grace = stop.grace_period ?? stop.grace;
  return `${signalName(stop.signal ?? 15)}${grace !== undefined ? `, then SIGKILL after ${duration(grace)}` : ""}`;
}

function resourceWords(r) {
  return [r.memory != null ? `memory ${bytes(r.memory)}` : null, r.cpu != null ? `${number(r.cpu)} CPU` : null,
    r.pids != null ? `${r.pids} processes` : null].filter(Boolean).join(", ");
}

const PROGRAM_KEYS = new Set(["type", "command", "argv", "host", "user", "cwd", "timeout", "stop", "env",
  "resources", "internal", "duration", "success"]);

// A job's or a run's program: [what, text] pairs, the command first; `main` is the
// command line (or argv) to show in a code box.
export function programWords(program) {
  let main = null;
  let first = null;
  if (typeof program.command === "string") main = program.command;
  else if (Array.isArray(program.argv)) main = commandLine(program.argv);
  else if (program.type === "no-op") first = `no-op: ${program.success === false ? "fails" : "succeeds"} after ${duration(program.duration || 0)}`;
  else first = program.internal || program.type;
  const pairs = [];
  for (const key of ["host", "user", "cwd"]) if (program[key]) pairs.push([key, program[key]]);
  const timeout = program.timeout;
  if (timeout && typeof timeout === "object") pairs.push(["timeout", `after ${duration(timeout.duration)}, with ${signalName(timeout.signal ?? 15)}`]);
  else if (typeof timeout === "number") pairs.push(["timeout", `after ${duration(timeout)}`]);
  if (program.stop && typeof program.stop === "object") pairs.push(["stop with", stopWords(program.stop)]);
  if (program.env && typeof program.env === "object") {
    const vars = Object.entries(program.env.vars || {}).map(([k, v]) => `${k}=${v}`).join(", ");
    pairs.push(["environment", `${program.env.inherit === false ? "empty" : "inherited"}${vars ? `, with ${vars}` : ""}`]);
  }
  if (program.resources && typeof program.resources === "object") pairs.push(["resources", resourceWords(program.resources)]);
  for (const [k, v] of Object.entries(program)) if (!PROGRAM_KEYS.has(k) && v !== null) pairs.push([k, plain(v)]);
  return { type: program.type, main, first, pairs };
}

// -- conditions and actions ----------------------------------------------------------

const states = (list) => (list || []).join(" or ");
const argsText = (args) => Object.entries(args || {}).map(([k, v]) => `${k}=${v}`).join(" ");

const ITEM_WORDS = {
  dependency: (c) => `waits for a run of ${c.job_id}${argsText(c.args) ? ` (${argsText(c.args)})` : ""} in ${states(c.states)}`
    + (c.exist ? `; errors at once unless one is ${states(c.exist)}` : ""),
  max_running: (c) => `at most ${c.count} running at once${c.per ? `, per ${c.per}` : ""}${c.job_id ? ` of ${c.job_id}` : ""}`,
  const: (c) => (c.value ? "always met" : "never met"),
  skip_duplicate: (c) => `becomes ${c.target_state} if another run with the same args is ${states(c.check_states)}`,
  schedule: (a) => `${a.states ? `on ${states(a.states)}: ` : ""}runs ${a.job_id}${argsText(a.args) ? ` (${argsText(a.args)})` : ""}`,
  retry: (a) => `on ${states(a.states)}${a.exit_codes ? ` (exit ${a.exit_codes.join(", ")})` : ""}: retries up to ${a.max} time${a.max === 1 ? "" : "s"}`
    + (a.delay ? `, after ${duration(a.delay)}${a.backoff && a.backoff !== 1 ? ` ×${number(a.backoff)} each time` : ""}` : ""),
  webhook: (a) => `on ${states(a.states)}: posts to ${a.url}`,
  email: (a) => `on ${states(a.states)}: mails ${(a.to || []).join(", ")}`,
};

// A condition or action: its type as a chip and what it does in words.
export function itemEl(item) {
  const { type, ...rest } = item || {};
  let text;
  try {
    text = ITEM_WORDS[type]?.(rest);
  } catch {
    text = null;
  }
  text ??= Object.entries(rest).filter(([, v]) => v !== null && v !== undefined && !(typeof v === "object" && !Object.keys(v).length))
    .map(([k, v]) => `${k} ${metaText(k, v)}`).join(", ");
  return h("div", { class: "item" }, type ? h("span", { class: "chip" }, type) : null, " ", h("span", {}, text));
}
