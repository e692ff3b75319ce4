// The favicon tells at a glance, even in a background tab: a turning ring while
// runs are running, a red dot when a run failed in the last hour, else a green one.

import { parseTime } from "./format.js";

const ACTIVE = new Set(["starting", "running", "stopping"]);
const FAILED = new Set(["failure", "error"]);
const RECENT = 60 * 60 * 1000; // ms
const FRAME = 150; // ms
const FRAMES = 12;

// Whether runs are running, and whether one failed recently, from the runs the
// summary feed holds.
export function activity(runs, now) {
  let running = false;
  let failed = false;
  for (const run of runs) {
    if (ACTIVE.has(run.state)) running = true;
    else if (FAILED.has(run.state) && now - (parseTime(run.times?.[run.state]) ?? 0) < RECENT) failed = true;
  }
  return { running, failed };
}

// The icon: the clock of favicon.svg, a ring turned `frame` twelfths while running,
// and a dot: red after a failure, green otherwise.
function svg({ running, failed }, frame) {
  const ring = running
    ? `<circle cx="16" cy="16" r="12.5" fill="none" stroke="#7cc4ff" stroke-width="3" stroke-dasharray="20 59" transform="rotate(${frame * 30} 16 16)"/>`
    : "";
  return `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="7" fill="#1e3a5f"/>`
    + `<circle cx="16" cy="16" r="9" fill="none" stroke="#7cc4ff" stroke-width="2.5"/>${ring}`
    + `<path d="M16 9.5V16l4.5 3" fill="none" stroke="#fff" stroke-width="2.5" stroke-linecap="round" stroke-linejoin="round"/>`
    + `<circle cx="25" cy="7" r="${failed ? 5 : 3.5}" fill="${failed ? "#ef4444" : "#3ecf8e"}"/></svg>`;
}

export class Favicon {
  constructor(summary) {
    this.summary = summary;
    this.link = document.querySelector('link[rel="icon"]');
    this.state = { running: false, failed: false };
    this.frame = 0;
    this.timer = null;
  }

  start() {
    const update = () => this.update();
    this.summary.addEventListener("snapshot", update);
    this.summary.addEventListener("run", update);
    setInterval(update, 30000); // a failure leaves "recent" with time alone
  }

  update() {
    this.state = activity(this.summary.runs.values(), this.summary.now());
    const status = this.state.running ? "running" : this.state.failed ? "failed" : "idle";
    this.link.dataset.status = status;
    document.documentElement.dataset.activity = status;
    if (this.state.running && this.timer === null) {
      this.timer = setInterval(() => { this.frame = (this.frame + 1) % FRAMES; this.draw(); }, FRAME);
    } else if (!this.state.running && this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
    }
    this.draw();
  }

  draw() {
    this.link.href = `data:image/svg+xml,${encodeURIComponent(svg(this.state, this.frame))}`;
  }
}
