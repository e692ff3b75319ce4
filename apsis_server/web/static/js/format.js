// Times and durations as people read them; every time shown has a local/UTC tooltip.

import { h } from "./dom.js";

export function parseTime(text) {
  return text ? Date.parse(text) : null;
}

const pad = (n, w = 2) => String(n).padStart(w, "0");

export function localTime(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function utcTime(ms) {
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

export function shortTime(ms, now = Date.now()) {
  const d = new Date(ms);
  const today = new Date(now);
  const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (d.toDateString() === today.toDateString()) return hms;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${hms}`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "";
  const s = Math.max(0, seconds);
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} m ${pad(Math.floor(s % 60))} s`;
  const hr = Math.floor(m / 60);
  if (hr < 48) return `${hr} h ${pad(m % 60)} m`;
  return `${Math.floor(hr / 24)} d ${hr % 24} h`;
}

export function relative(ms, now = Date.now()) {
  const delta = (ms - now) / 1000;
  const text = duration(Math.abs(delta)).replace(/ \d+ (s|m|h)$/, "");
  if (Math.abs(delta) < 1) return "now";
  return delta > 0 ? `in ${text}` : `${text} ago`;
}

// A <time> element: short local text, local and UTC in its tooltip.
export function timeEl(text, { relativeTo = null } = {}) {
  const ms = parseTime(text);
  if (ms === null) return h("span", { class: "muted" }, "—");
  const shown = relativeTo ? relative(ms, relativeTo) : shortTime(ms);
  return h("time", {
    datetime: text,
    title: `local: ${localTime(ms)}\nUTC:   ${utcTime(ms)}`,
    class: "nowrap",
  }, shown);
}

// <input type=datetime-local> value ↔ ISO UTC text.
export function toLocalInput(iso) {
  const ms = parseTime(iso);
  if (ms === null || Number.isNaN(ms)) return "";
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export function fromLocalInput(value) {
  if (!value) return "";
  const ms = new Date(value).getTime();
  return Number.isNaN(ms) ? "" : new Date(ms).toISOString();
}
