// Terminal output to DOM: SGR colours and styles become spans; other escapes are dropped.
// Streaming: an escape sequence split across chunks is held until its end arrives.

import { h } from "./dom.js";

const PALETTE_256 = (() => {
  const base = ["#000000", "#cd3131", "#0dbc79", "#e5e510", "#2472c8", "#bc3fbc", "#11a8cd", "#e5e5e5",
    "#666666", "#f14c4c", "#23d18b", "#f5f543", "#3b8eea", "#d670d6", "#29b8db", "#ffffff"];
  const colours = [...base];
  const steps = [0, 95, 135, 175, 215, 255];
  for (let r = 0; r < 6; r++) for (let g = 0; g < 6; g++) for (let b = 0; b < 6; b++) {
    colours.push(`rgb(${steps[r]},${steps[g]},${steps[b]})`);
  }
  for (let i = 0; i < 24; i++) { const v = 8 + i * 10; colours.push(`rgb(${v},${v},${v})`); }
  return colours;
})();

// CSI sequences, OSC sequences (to BEL or ST), and lone two-character escapes.
// eslint-disable-next-line no-control-regex
const ESCAPE = /\x1b\[([0-9;:?]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]/g;

function colour(value) {
  return typeof value === "number" ? PALETTE_256[value] : value;
}

function freshStyle() {
  return { fg: null, bg: null, bold: false, dim: false, italic: false, underline: false, inverse: false };
}

export class AnsiRenderer {
  constructor(container) {
    this.container = container;
    this.style = freshStyle();
    this.pending = "";
    this._span = null;
    this._key = null;
  }

  write(text) {
    text = this.pending + text;
    this.pending = "";
    // Hold back an incomplete escape at the end of the chunk.
    const lastEsc = text.lastIndexOf("\x1b");
    if (lastEsc !== -1) {
      ESCAPE.lastIndex = lastEsc;
      const match = ESCAPE.exec(text);
      if (!match || match.index !== lastEsc) {
        if (text.length - lastEsc < 64) {
          this.pending = text.slice(lastEsc);
          text = text.slice(0, lastEsc);
        }
      }
    }
    ESCAPE.lastIndex = 0;
    let pos = 0;
    for (const match of text.matchAll(ESCAPE)) {
      this._text(text.slice(pos, match.index));
      pos = match.index + match[0].length;
      if (match[2] === "m") this._sgr(match[1]);
    }
    this._text(text.slice(pos));
  }

  _text(text) {
    if (!text) return;
    text = text.replace(/\r+\n/g, "\n");
    const key = JSON.stringify(this.style);
    if (this._span === null || key !== this._key) {
      this._span = this._newSpan();
      this._key = key;
      this.container.append(this._span);
    }
    this._span.append(text);
  }

  _newSpan() {
    const s = this.style;
    let fg = s.fg;
    let bg = s.bg;
    if (s.inverse) [fg, bg] = [bg ?? 0, fg ?? 7];
    const classes = [];
    if (s.bold) classes.push("ansi-bold");
    if (s.dim) classes.push("ansi-dim");
    if (s.italic) classes.push("ansi-italic");
    if (s.underline) classes.push("ansi-underline");
    const basic = (c) => typeof c === "number" && c < 16;
    if (basic(fg)) classes.push(`ansi-fg-${fg}`);
    if (basic(bg)) classes.push(`ansi-bg-${bg}`);
    const span = h("span", classes.length ? { class: classes.join(" ") } : {});
    // Other colours through the CSSOM, which the CSP allows (a style attribute it
    // blocks); the values are built from numbers in _sgr, never from the output's text.
    if (fg !== null && !basic(fg)) span.style.color = colour(fg);
    if (bg !== null && !basic(bg)) span.style.background = colour(bg);
    return span;
  }

  _sgr(params) {
    const codes = params === "" ? [0] : params.split(/[;:]/).map((p) => Number(p || 0));
    const s = this.style;
    for (let i = 0; i < codes.length; i++) {
      const c = codes[i];
      if (c === 0) Object.assign(s, freshStyle());
      else if (c === 1) s.bold = true;
      else if (c === 2) s.dim = true;
      else if (c === 3) s.italic = true;
      else if (c === 4) s.underline = true;
      else if (c === 7) s.inverse = true;
      else if (c === 22) { s.bold = false; s.dim = false; }
      else if (c === 23) s.italic = false;
      else if (c === 24) s.underline = false;
      else if (c === 27) s.inverse = false;
      else if (c >= 30 && c <= 37) s.fg = c - 30;
      else if (c >= 90 && c <= 97) s.fg = c - 90 + 8;
      else if (c === 39) s.fg = null;
      else if (c >= 40 && c <= 47) s.bg = c - 40;
      else if (c >= 100 && c <= 107) s.bg = c - 100 + 8;
      else if (c === 49) s.bg = null;
      else if (c === 38 || c === 48) {
        let colour = null;
        if (codes[i + 1] === 5) { colour = codes[i + 2] & 255; i += 2; }
        else if (codes[i + 1] === 2) {
          colour = `rgb(${codes[i + 2] & 255},${codes[i + 3] & 255},${codes[i + 4] & 255})`;
          i += 4;
        }
        if (c === 38) s.fg = colour; else s.bg = colour;
      }
    }
    this._span = null;
  }
}
