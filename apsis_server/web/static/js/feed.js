// The websocket feeds (docs/api.md "Websocket feeds"), reconnecting on their own.

import { wsProtocols, wsUrl } from "./api.js";
import { parseTime } from "./format.js";

const FINISHED = new Set(["success", "failure", "error", "skipped"]);
const KEEP_FINISHED = 5000;

export function isFinished(state) {
  return FINISHED.has(state);
}

// The summary feed: jobs, runs and agents kept current. Events: "status" (detail:
// "connecting" | "connected" | "disconnected"), "snapshot", "run", "job", "agent".
export class Summary extends EventTarget {
  constructor() {
    super();
    this.jobs = new Map();
    this.runs = new Map();
    this.agents = new Map();
    this.status = "connecting";
    this.version = null;
    this.skew = 0; // server clock minus ours, in ms
    this.ready = false;
    this._delay = 500;
    this._socket = null;
  }

  now() {
    return Date.now() + this.skew;
  }

  start() {
    this._setStatus("connecting");
    const socket = new WebSocket(wsUrl("/summary"), wsProtocols());
    this._socket = socket;
    socket.onmessage = (event) => this._message(JSON.parse(event.data));
    socket.onclose = () => {
      if (this._socket !== socket) return;
      this._setStatus("disconnected");
      setTimeout(() => this.start(), this._delay);
      this._delay = Math.min(this._delay * 2, 5000);
    };
  }

  _setStatus(status) {
    this.status = status;
    this.dispatchEvent(new CustomEvent("status", { detail: status }));
  }

  _message(msg) {
    switch (msg.type) {
      case "snapshot":
        this._delay = 500;
        this.version = msg.version;
        this.skew = parseTime(msg.time) - Date.now();
        this.jobs = new Map(msg.jobs.map((j) => [j.job_id, j]));
        this.runs = new Map(msg.runs.map((r) => [r.run_id, r]));
        this.agents = new Map(msg.agents.map((a) => [a.agent_id, a]));
        this.ready = true;
        this._setStatus("connected");
        this.dispatchEvent(new CustomEvent("snapshot"));
        break;
      case "runs":
        for (const run of msg.runs) {
          this.runs.set(run.run_id, run);
          this.dispatchEvent(new CustomEvent("run", { detail: run }));
        }
        if (this.runs.size > KEEP_FINISHED * 1.2) this._prune();
        break;
      case "job":
        this.jobs.set(msg.job.job_id, msg.job);
        this.dispatchEvent(new CustomEvent("job", { detail: msg.job }));
        break;
      case "job_removed":
        this.jobs.delete(msg.job_id);
        this.dispatchEvent(new CustomEvent("job", { detail: null }));
        break;
      case "agent":
        this.agents.set(msg.agent.agent_id, msg.agent);
        this.dispatchEvent(new CustomEvent("agent", { detail: msg.agent }));
        break;
      default:
        break;
    }
  }

  _prune() {
    const finished = [...this.runs.values()].filter((r) => isFinished(r.state));
    finished.sort((a, b) => runNumber(a.run_id) - runNumber(b.run_id));
    for (const run of finished.slice(0, finished.length - KEEP_FINISHED)) this.runs.delete(run.run_id);
  }
}

export function runNumber(runId) {
  return Number(runId.slice(1));
}

// One run's updates, with one of its outputs (`name`: "merged", "stdout" or "stderr").
// Callbacks: onRun(run), onLog(entries, replace), onMeta(meta, replace), onOutput(offset,
// bytes), onStatus(status), onEnd(). Reconnects from where output stood.
export class RunFeed {
  constructor(runId, handlers, tail = 64 * 1024, name = "merged") {
    this.runId = runId;
    this.handlers = handlers;
    this.name = name;
    this.offset = -tail; // negative: from the end
    this.closed = false;
    this._delay = 500;
    this._socket = null;
  }

  start() {
    if (this.closed) return;
    this.handlers.onStatus?.("connecting");
    const socket = new WebSocket(wsUrl(`/runs/${this.runId}/updates?init=true&offset=${this.offset}&name=${encodeURIComponent(this.name)}`), wsProtocols());
    this._socket = socket;
    let fresh = { log: true, meta: true };
    socket.onopen = () => this.handlers.onStatus?.("connected");
    socket.onmessage = (event) => {
      const msg = JSON.parse(event.data);
      if (msg.type === "run") this.handlers.onRun?.(msg.run);
      else if (msg.type === "log") { this.handlers.onLog?.(msg.entries, fresh.log); fresh.log = false; }
      else if (msg.type === "meta") { this.handlers.onMeta?.(msg.meta, fresh.meta); fresh.meta = false; }
      else if (msg.type === "output") {
        const bytes = Uint8Array.from(atob(msg.data), (c) => c.charCodeAt(0));
        this.offset = msg.offset + bytes.length;
        this.handlers.onOutput?.(msg.offset, bytes);
      }
    };
    socket.onclose = (event) => {
      if (this.closed || this._socket !== socket) return;
      if (event.code === 1000) {
        this.closed = true;
        this.handlers.onStatus?.("finished");
        this.handlers.onEnd?.();
      } else if (event.code === 4404) {
        this.closed = true;
        this.handlers.onStatus?.("missing");
      } else {
        this.handlers.onStatus?.("disconnected");
        setTimeout(() => this.start(), this._delay);
        this._delay = Math.min(this._delay * 2, 5000);
      }
    };
  }

  stop() {
    this.closed = true;
    this._socket?.close();
  }
}
