// The single-page app: a tiny router over history.pushState, the live summary
// feed shared by every page, the connection indicator, the zone times are shown
// in, the favicon that tells what runs are doing, the sanity checker's findings
// and, with servers sharing a database, which server this is and whether it leads.

import { get } from "./api.js";
import { Checks } from "./checks.js";
import { h, link } from "./dom.js";
import { Favicon } from "./favicon.js";
import { Summary } from "./feed.js";
import { localZone, setZoneMode, zoneMode } from "./format.js";
import * as agentsPage from "./pages/agents.js";
import * as jobPage from "./pages/job.js";
import * as jobsPage from "./pages/jobs.js";
import * as runPage from "./pages/run.js";
import * as runsPage from "./pages/runs.js";

const ROUTES = [
  [/^\/(?:runs\/?)?$/, runsPage, "runs"],
  [/^\/runs\/([^/]+)$/, runPage, "runs"],
  [/^\/jobs\/?$/, jobsPage, "jobs"],
  [/^\/jobs\/(.+)$/, jobPage, "jobs"],
  [/^\/agents\/?$/, agentsPage, "agents"],
];

const ROLE_EVERY = 5000; // ms

class App {
  constructor() {
    this.main = document.getElementById("main");
    this.summary = new Summary();
    this.cleanup = null;
  }

  start() {
    const conn = document.getElementById("conn");
    const labels = { connecting: "connecting…", connected: "live", disconnected: "reconnecting…" };
    this.summary.addEventListener("status", (event) => {
      conn.dataset.status = event.detail;
      conn.querySelector(".label").textContent = labels[event.detail] || event.detail;
    });
    this.summary.addEventListener("snapshot", () => {
      document.getElementById("version").textContent = `v${this.summary.version}`;
    });
    get("/version").then((v) => { document.getElementById("version").textContent = `v${v.version}`; }, () => {});
    this.summary.addEventListener("status", () => this._role());
    setInterval(() => this._role(), ROLE_EVERY);
    this._role();
    document.addEventListener("click", (event) => this._click(event));
    window.addEventListener("popstate", () => this.render());
    this._zoneSelector();
    new Favicon(this.summary).start();
    new Checks(document.getElementById("checks"), this.summary).start();
    this.summary.start();
    this.render();
  }

  // UTC, this browser's zone, or each job's own (its schedule's) zone.
  _zoneSelector() {
    const select = document.getElementById("zone");
    const names = { local: `Local (${localZone()})`, utc: "UTC", job: "Job's zone" };
    select.replaceChildren(...Object.entries(names).map(([value, label]) =>
      h("option", { value, selected: value === zoneMode() }, label)));
    select.addEventListener("change", () => setZoneMode(select.value));
  }

  // With servers sharing a database: this one's name and role (a standby may
  // become leader at any time); nothing with the only server of a SQLite install.
  async _role() {
    const badge = document.getElementById("server");
    let view;
    try {
      view = await get("/servers");
    } catch {
      return; // the connection indicator tells
    }
    const shared = view.role === "standby" || Boolean(view.leader && view.leader.deadline);
    badge.hidden = !shared;
    if (!shared) return;
    badge.dataset.role = view.role;
    badge.textContent = `${view.server_id} · ${view.role}`;
    const leader = view.leader;
    badge.title = view.role === "leader"
      ? `This server (${view.server_id}) leads, epoch ${view.epoch}.`
      : leader
        ? `This server (${view.server_id}) stands by: ${leader.server_id} leads, at ${leader.url}. Changes are made there.`
        : `This server (${view.server_id}) stands by, and no server leads right now.`;
  }

  _click(event) {
    const a = event.target.closest("a[data-nav]");
    if (!a || event.defaultPrevented || event.button !== 0) return;
    if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    this.navigate(a.getAttribute("href"));
  }

  navigate(url, { replace = false } = {}) {
    if (replace) history.replaceState(null, "", url);
    else history.pushState(null, "", url);
    this.render();
    window.scrollTo(0, 0);
  }

  render() {
    if (this.cleanup) this.cleanup();
    this.cleanup = null;
    const path = decodeURI(location.pathname);
    for (const [pattern, page, section] of ROUTES) {
      const match = pattern.exec(path);
      if (!match) continue;
      for (const a of document.querySelectorAll(".nav a")) {
        a.classList.toggle("active", a.dataset.section === section);
      }
      this.main.replaceChildren();
      this.cleanup = page.mount(this.main, this, match.slice(1)) || null;
      return;
    }
    this.main.replaceChildren(h("div", { class: "panel empty", id: "no-page" },
      h("h1", {}, "No such page"),
      h("p", {}, `Nothing here at ${location.pathname}. `, link("/runs", "Runs"), " · ", link("/jobs", "Jobs"), " · ",
        link("/agents", "Agents"))));
  }
}

new App().start();
