// A run's output as loaded: from `start`, decoded and rendered (ANSI colours) as
// it comes; earlier bytes can be put in front ("load earlier"). And the tabs that
// pick which of a run's outputs is shown: both streams merged, stdout or stderr.

import { AnsiRenderer } from "./ansi.js";
import { h } from "./dom.js";
import { bytes } from "./words.js";

// A run's outputs (the API's `name`), the first the default, and their tab labels.
export const OUTPUT_NAMES = ["merged", "stdout", "stderr"];
const LABELS = { merged: "All", stdout: "stdout", stderr: "stderr" };

// The output a page address names (`?output=stderr`); "merged" when it names none.
export function outputFromUrl(search = location.search) {
  const name = new URLSearchParams(search).get("output");
  return OUTPUT_NAMES.includes(name) ? name : "merged";
}

// The page address with `name` in it (the default left out), other parameters kept.
export function urlWithOutput(name, where = location) {
  const q = new URLSearchParams(where.search);
  if (name === "merged") q.delete("output");
  else q.set("output", name);
  const search = q.toString();
  return where.pathname + (search ? `?${search}` : "") + where.hash;
}

// Tabs over a run's outputs, each with its size when known; `panel` is the box that
// shows the selected one. Buttons with role=tab (WAI-ARIA tabs): Tab reaches the
// selected one, the arrow keys, Home and End select another. `onSelect(name)` is
// called on a click or key; it calls `select` once it shows that output.
export class OutputTabs {
  constructor(panel, onSelect) {
    this.panel = panel;
    this.onSelect = onSelect;
    this.selected = null;
    this.buttons = new Map();
    this.sizes = new Map();
    for (const name of OUTPUT_NAMES) {
      const size = h("span", { class: "tab-size" });
      this.sizes.set(name, size);
      this.buttons.set(name, h("button", {
        type: "button", role: "tab", class: "output-tab", id: `output-tab-${name}`, "aria-controls": panel.id,
        "aria-selected": "false", tabindex: "-1", "data-output": name, onclick: () => this.onSelect(name),
      }, h("span", { class: "tab-label" }, LABELS[name]), size));
    }
    this.el = h("div", { class: "output-tabs", role: "tablist", "aria-label": "Output streams" }, [...this.buttons.values()]);
    this.el.addEventListener("keydown", (event) => this._key(event));
  }

  select(name) {
    this.selected = name;
    for (const [each, button] of this.buttons) {
      button.setAttribute("aria-selected", String(each === name));
      button.tabIndex = each === name ? 0 : -1;
    }
    if (!this.el.hidden) this.panel.setAttribute("aria-labelledby", this.buttons.get(name).id);
  }

  // Shown, or not (a run whose stderr goes into its stdout has one output): the
  // panel is a tab panel only while there are tabs.
  show(shown) {
    this.el.hidden = !shown;
    if (shown) {
      this.panel.setAttribute("role", "tabpanel");
      if (this.selected) this.panel.setAttribute("aria-labelledby", this.buttons.get(this.selected).id);
    } else {
      this.panel.removeAttribute("role");
      this.panel.removeAttribute("aria-labelledby");
    }
  }

  // {name: byte count} of the outputs whose size is known; the others show none.
  setSizes(known) {
    for (const [name, span] of this.sizes) {
      const size = known[name];
      // A space first, so that the tab's name reads "stderr 12 B", not "stderr12 B".
      const text = size === undefined || size === null ? "" : ` ${bytes(size)}`;
      if (span.textContent !== text) span.textContent = text;
    }
  }

  _key(event) {
    const index = OUTPUT_NAMES.indexOf(this.selected);
    const last = OUTPUT_NAMES.length - 1;
    const to = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: last }[event.key];
    if (to === undefined || index < 0) return;
    event.preventDefault();
    const name = OUTPUT_NAMES[(to + OUTPUT_NAMES.length) % OUTPUT_NAMES.length];
    this.buttons.get(name).focus();
    if (name !== this.selected) this.onSelect(name);
  }
}

// Output bytes as loaded: from `start`, decoded and rendered as they come.
export class Output {
  constructor(pre) {
    this.pre = pre;
    this.start = null;
    this.chunks = [];
    this.length = 0;
    this._reset();
  }

  _reset() {
    this.pre.replaceChildren();
    this.decoder = new TextDecoder("utf-8");
    this.renderer = new AnsiRenderer(this.pre);
  }

  get end() {
    return this.start === null ? null : this.start + this.length;
  }

  _write(bytes, first) {
    let data = bytes;
    // A tail may begin inside a UTF-8 character: skip its continuation bytes.
    if (first && this.start > 0) {
      let skip = 0;
      while (skip < data.length && skip < 3 && (data[skip] & 0xc0) === 0x80) skip++;
      data = data.subarray(skip);
    }
    this.renderer.write(this.decoder.decode(data, { stream: true }));
  }

  append(offset, bytes) {
    if (this.start === null) this.start = offset;
    const end = this.end;
    if (offset + bytes.length <= end && this.length > 0) return; // seen already
    if (offset > end) return; // a gap should not happen; the feed restarts from `end`
    const fresh = bytes.subarray(end - offset);
    if (fresh.length === 0) return;
    const follow = this.pre.scrollTop + this.pre.clientHeight >= this.pre.scrollHeight - 24;
    this.chunks.push(fresh);
    this.length += fresh.length;
    this._write(fresh, this.chunks.length === 1);
    if (follow) this.pre.scrollTop = this.pre.scrollHeight;
  }

  prepend(bytes) {
    this.start -= bytes.length;
    this.chunks.unshift(bytes);
    this.length += bytes.length;
    this._reset();
    this.chunks.forEach((chunk, i) => this._write(chunk, i === 0));
  }
}
