// "JSON": a button that shows (and hides) what the API says about a run or a job,
// indented, as text; kept current while it is open.

import { h } from "../dom.js";

export function jsonToggle(value) {
  const pre = h("pre", { class: "json-view", id: "json-text" });
  const panel = h("div", { class: "panel", id: "json", hidden: true },
    h("h2", {}, "As the API gives it"), pre);
  const refresh = () => {
    if (!panel.hidden) pre.textContent = JSON.stringify(value(), null, 2);
  };
  const button = h("button", {
    class: "btn", id: "json-toggle", type: "button", "aria-expanded": "false",
    title: "what the API says, as JSON",
    onclick: () => {
      panel.hidden = !panel.hidden;
      button.setAttribute("aria-expanded", String(!panel.hidden));
      refresh();
    },
  }, "JSON");
  return { button, panel, refresh };
}
