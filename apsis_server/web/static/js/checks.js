// The sanity checker's findings (GET /api/v1/checks, docs/operations.md) as a
// banner above every page: what looks wrong, each with a link to the page that
// shows it; nothing when all is well (and on a standby, which checks nothing).

import { get } from "./api.js";
import { h, link } from "./dom.js";

const EVERY = 30000; // ms
const AFTER_RUN = 2000; // ms: a run that failed may make a finding; ask again soon

// A finding's link, when it is a page of this UI (it always is; never trusted blindly).
function findingLink(finding) {
  try {
    return link(finding.link, "show");
  } catch {
    return null;
  }
}

export function checksBanner(findings) {
  const errors = findings.filter((f) => f.severity === "error").length;
  const warnings = findings.length - errors;
  const counts = [errors ? `${errors} error${errors === 1 ? "" : "s"}` : null,
    warnings ? `${warnings} warning${warnings === 1 ? "" : "s"}` : null].filter(Boolean).join(", ");
  return h("details", { class: `checks-box ${errors ? "has-errors" : ""}`, open: true },
    h("summary", {}, h("strong", {}, "The sanity check found something wrong"), ` (${counts})`),
    h("ul", {}, findings.map((f) => h("li", { class: `finding ${f.severity}`, "data-check": f.check },
      h("span", { class: `chip severity ${f.severity}` }, f.severity), " ", f.message, " ", findingLink(f)))));
}

export class Checks {
  constructor(box, summary) {
    this.box = box;
    this.summary = summary;
    this.timer = null;
    this.shown = "";
  }

  start() {
    this.summary.addEventListener("snapshot", () => this.load());
    this.summary.addEventListener("run", (event) => {
      if (["failure", "error"].includes(event.detail?.state)) this.soon();
    });
    setInterval(() => this.load(), EVERY);
    this.load();
  }

  soon() {
    if (this.timer !== null) return;
    this.timer = setTimeout(() => { this.timer = null; this.load(); }, AFTER_RUN);
  }

  async load() {
    let answer;
    try {
      answer = await get("/checks");
    } catch {
      return; // the connection indicator tells; keep what was shown
    }
    const findings = answer.findings || [];
    const key = JSON.stringify(findings);
    if (key === this.shown) return; // unchanged: keep it open or folded as the reader left it
    this.shown = key;
    this.box.hidden = findings.length === 0;
    this.box.replaceChildren(findings.length ? checksBanner(findings) : "");
  }
}
