// A tiny, safe markdown renderer for job descriptions: everything is escaped
// first, then a small set of block and inline forms becomes HTML. Links keep
// only http(s), mailto and relative targets.

import { escapeHtml } from "./dom.js";

function safeUrl(url) {
  const trimmed = url.trim();
  if (/^(https?:|mailto:)/i.test(trimmed) || /^[/#.]/.test(trimmed)) return trimmed;
  if (!/^[a-z][a-z0-9+.-]*:/i.test(trimmed)) return trimmed; // relative
  return null;
}

// Inline forms over already escaped text.
function inline(text) {
  const codes = [];
  let out = text.replace(/`([^`]+)`/g, (_, code) => {
    codes.push(code);
    return `\u0000${codes.length - 1}\u0000`;
  });
  out = out.replace(/\[([^\]]+)\]\(([^)\s]+)\)/g, (all, label, url) => {
    const safe = safeUrl(url.replace(/&amp;/g, "&"));
    if (safe === null) return label;
    return `<a href="${escapeHtml(safe)}" rel="noopener noreferrer">${label}</a>`;
  });
  out = out.replace(/(^|[\s(])(https?:\/\/[^\s<)]+)/g,
    (all, pre, url) => `${pre}<a href="${url}" rel="noopener noreferrer">${url}</a>`);
  out = out.replace(/\*\*([^*]+)\*\*|__([^_]+)__/g, (_, a, b) => `<strong>${a || b}</strong>`);
  out = out.replace(/(^|[^*\w])\*([^*\s][^*]*)\*|(^|\W)_([^_\s][^_]*)_(?=\W|$)/g,
    (_, p1, a, p2, b) => `${p1 ?? p2 ?? ""}<em>${a || b}</em>`);
  return out.replace(/\u0000(\d+)\u0000/g, (_, i) => `<code>${codes[Number(i)]}</code>`);
}

function flushParagraph(lines, html) {
  if (lines.length) html.push(`<p>${inline(lines.join(" "))}</p>`);
  lines.length = 0;
}

export function renderMarkdown(source) {
  const lines = escapeHtml(source || "").replace(/\r\n?/g, "\n").split("\n");
  const html = [];
  const para = [];
  let list = null; // "ul" | "ol"
  const closeList = () => { if (list) { html.push(`</${list}>`); list = null; } };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    let m;
    if (/^```/.test(line)) {
      flushParagraph(para, html); closeList();
      const code = [];
      for (i++; i < lines.length && !/^```/.test(lines[i]); i++) code.push(lines[i]);
      html.push(`<pre><code>${code.join("\n")}</code></pre>`);
    } else if ((m = /^(#{1,6})\s+(.*)$/.exec(line))) {
      flushParagraph(para, html); closeList();
      const level = Math.min(m[1].length + 2, 6); // page headings stay the biggest
      html.push(`<h${level}>${inline(m[2])}</h${level}>`);
    } else if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) {
      flushParagraph(para, html); closeList();
      html.push("<hr>");
    } else if ((m = /^\s*[-*+]\s+(.*)$/.exec(line)) || (m = /^\s*\d+[.)]\s+(.*)$/.exec(line))) {
      flushParagraph(para, html);
      const kind = /^\s*\d/.test(line) ? "ol" : "ul";
      if (list !== kind) { closeList(); html.push(`<${kind}>`); list = kind; }
      html.push(`<li>${inline(m[1])}</li>`);
    } else if ((m = /^&gt;\s?(.*)$/.exec(line))) {
      flushParagraph(para, html); closeList();
      html.push(`<blockquote>${inline(m[1])}</blockquote>`);
    } else if (line.trim() === "") {
      flushParagraph(para, html); closeList();
    } else {
      closeList();
      para.push(line.trim());
    }
  }
  flushParagraph(para, html); closeList();
  return html.join("\n");
}
