// The agents: host, user, connection state, version, running processes.

import { get } from "../api.js";
import { h } from "../dom.js";
import { timeEl } from "../format.js";

export function mount(main, app) {
  const summary = app.summary;
  const box = h("div", { class: "panel flush scroll", id: "agents" });
  main.append(h("div", { class: "page-head" }, h("h1", {}, "Agents")), box);
  let agents = new Map(summary.agents);

  function render() {
    const rows = [...agents.values()].sort((a, b) => a.agent_id.localeCompare(b.agent_id));
    if (!rows.length) {
      box.replaceChildren(h("div", { class: "empty" }, "No agents."));
      return;
    }
    box.replaceChildren(h("table", {},
      h("thead", {}, h("tr", {}, ["Agent", "Host", "User", "State", "Version", "Pid", "Running", "Last heartbeat", "Error"]
        .map((t) => h("th", {}, t)))),
      h("tbody", {}, rows.map((a) => h("tr", { "data-agent-id": a.agent_id },
        h("td", { class: "mono" }, a.agent_id),
        h("td", {}, a.host),
        h("td", {}, a.user || h("span", { class: "muted" }, "(server's)")),
        h("td", {}, h("span", { class: `state agent-${a.state} state-${agentColour(a.state)}` }, a.state)),
        h("td", { class: "mono" }, a.version || "—"),
        h("td", { class: "mono" }, a.pid || "—"),
        h("td", { class: "num" }, String(a.running)),
        h("td", {}, timeEl(a.last_heartbeat)),
        h("td", { class: "ellipsis", title: a.error || "" }, a.error || ""))))));
  }

  const refresh = () => get("/agents").then((data) => {
    agents = new Map(data.agents.map((a) => [a.agent_id, a]));
    render();
  }, () => {});
  const onAgent = (event) => { agents.set(event.detail.agent_id, event.detail); render(); };
  summary.addEventListener("agent", onAgent);
  summary.addEventListener("snapshot", refresh);
  window.addEventListener("zonechange", render);
  render();
  refresh();
  const timer = setInterval(refresh, 10000);
  return () => {
    summary.removeEventListener("agent", onAgent);
    summary.removeEventListener("snapshot", refresh);
    window.removeEventListener("zonechange", render);
    clearInterval(timer);
  };
}

function agentColour(state) {
  return { connected: "success", connecting: "starting", disconnected: "failure", stopped: "skipped" }[state] || "scheduled";
}
