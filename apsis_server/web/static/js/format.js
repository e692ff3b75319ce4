// Times and durations as people read them. Every time shown says its zone, in the
// zone the reader chose (local, UTC, or each job's own zone: the selector in the top
// bar), to the second and no finer; its tooltip gives local, UTC, the run's own zone
// and how long ago or ahead it is.

import { h } from "./dom.js";

export function parseTime(text) {
  return text ? Date.parse(text) : null;
}

// -- the reader's zone ------------------------------------------------------------

const ZONE_KEY = "apsis-zone";
export const ZONE_MODES = ["local", "utc", "job"];

export function zoneMode() {
  const mode = localStorage.getItem(ZONE_KEY);
  return ZONE_MODES.includes(mode) ? mode : "local";
}

// Pages listen for "zonechange" on window to show their times again.
export function setZoneMode(mode) {
  if (!ZONE_MODES.includes(mode)) return;
  localStorage.setItem(ZONE_KEY, mode);
  window.dispatchEvent(new CustomEvent("zonechange", { detail: mode }));
}

export function localZone() {
  return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
}

// The IANA zone to show a time in: `jobZone` is the zone of the run's or job's
// schedule (null: none, so UTC is its own).
export function shownZone(jobZone = null, mode = zoneMode()) {
  if (mode === "utc") return "UTC";
  if (mode === "job") return jobZone || "UTC";
  return localZone();
}

// -- formatting in a zone -----------------------------------------------------------

const formatters = new Map();

function formatter(zone, locale) {
  const key = `${zone}|${locale}`;
  if (!formatters.has(key)) {
    let f;
    try {
      f = new Intl.DateTimeFormat(locale, {
        timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit",
        minute: "2-digit", second: "2-digit", hourCycle: "h23", timeZoneName: "short",
      });
    } catch {
      f = formatter("UTC", locale); // a zone this browser does not know
    }
    formatters.set(key, f);
  }
  return formatters.get(key);
}

// {date: "2026-11-26", time: "21:00:00", tz: "EST"} of `ms` in `zone`.
export function inZone(ms, zone) {
  const pick = (locale) => Object.fromEntries(
    formatter(zone, locale).formatToParts(new Date(ms)).map((p) => [p.type, p.value]));
  let p = pick("en-US");
  // en-US names American zones (EST), en-GB European ones (CET, BST); else GMT+n.
  if (/^GMT[+-]/.test(p.timeZoneName)) p = { ...p, timeZoneName: pick("en-GB").timeZoneName };
  return { date: `${p.year}-${p.month}-${p.day}`, time: `${p.hour}:${p.minute}:${p.second}`, tz: p.timeZoneName };
}

// "2026-11-26 21:00:00 EST": a time in full, to the second.
export function fullTime(ms, zone) {
  const p = inZone(ms, zone);
  return `${p.date} ${p.time} ${p.tz}`;
}

// -- durations ------------------------------------------------------------------------

// "0.3 ms", "12 ms", "4.2s", "1m 3s", "2h 5m", "3d 4h": two units at most, no trailing zeros.
export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "";
  const s = Math.max(0, seconds);
  if (s === 0) return "0s";
  if (s < 0.001) return `${Number((s * 1000).toPrecision(1))} ms`;
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 10) return `${Number(s.toFixed(1))}s`;
  let whole = Math.round(s);
  const parts = [];
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]]) {
    if (whole >= size) {
      parts.push(`${Math.floor(whole / size)}${unit}`);
      whole %= size;
    }
  }
  return parts.slice(0, 2).join(" ");
}

export function relative(ms, now = Date.now()) {
  const delta = (ms - now) / 1000;
  if (Math.abs(delta) < 1) return "now";
  const text = duration(Math.abs(delta) < 10 ? Math.round(Math.abs(delta)) : Math.abs(delta));
  return delta > 0 ? `in ${text}` : `${text} ago`;
}

// -- the <time> element ---------------------------------------------------------------

// A <time>: the time in the reader's zone (the date only when it is not today
// there), the zone's short name beside it; the tooltip gives local, UTC, the job's
// zone and how far from now. `jobZone`: the zone of the run's or job's schedule.
export function timeEl(text, { jobZone = null, relativeTo = null, now = Date.now() } = {}) {
  const ms = parseTime(text);
  if (ms === null || Number.isNaN(ms)) return h("span", { class: "muted" }, "—");
  const zone = shownZone(jobZone);
  const shown = inZone(ms, zone);
  const today = inZone(now, zone).date === shown.date;
  const lines = [`local: ${fullTime(ms, localZone())}`, `UTC:   ${fullTime(ms, "UTC")}`];
  if (jobZone) lines.push(`job:   ${fullTime(ms, jobZone)} (${jobZone})`);
  lines.push(relative(ms, now));
  const main = relativeTo ? relative(ms, relativeTo) : today ? shown.time : `${shown.date} ${shown.time}`;
  return h("time", { datetime: text, title: lines.join("\n"), class: "nowrap", "data-zone": zone },
    main, relativeTo ? null : h("span", { class: "tz" }, ` ${shown.tz}`));
}

// <input type=datetime-local> value ↔ ISO UTC text (local time: what the input shows).
const pad = (n) => String(n).padStart(2, "0");

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
