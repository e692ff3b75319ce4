// DOM building: h(tag, attrs, ...children); text is always set as text, never parsed.
// What the page's Content-Security-Policy would block, or what could run script,
// is refused here: no on* attribute but a function, no style attribute, and a
// URL attribute only ever a path on this server.

const URL_ATTRIBUTES = new Set(["href", "src", "action", "formaction"]);

// A path on this server ("/runs/r1"); never a scheme, nor "//host" or "/\host".
export function localPath(url) {
  const text = String(url);
  if (!/^\/(?![/\\])/.test(text)) throw new TypeError(`not a path on this server: ${text}`);
  return text;
}

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    const name = key.toLowerCase();
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on")) {
      if (typeof value !== "function") throw new TypeError(`${key} must be a function`);
      el.addEventListener(name.slice(2), value);
    } else if (name === "style") throw new TypeError("no style attributes (CSP): use a class or el.style");
    else if (URL_ATTRIBUTES.has(name)) el.setAttribute(name, localPath(value));
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

// A link handled by the client-side router.
export function link(href, ...children) {
  return h("a", { href, "data-nav": true }, ...children);
}

export function toast(message, { error = false, href = null, linkText = null, ms = 5000 } = {}) {
  const box = document.getElementById("toasts");
  const el = h("div", { class: error ? "toast error" : "toast", role: "status" }, message);
  if (href) append(el, [" ", link(href, linkText || href)]);
  box.append(el);
  setTimeout(() => el.remove(), ms);
}

// Ask before acting: resolves true only when the user confirms.
export function confirmDialog(title, body, okText = "Confirm") {
  const dialog = document.getElementById("confirm");
  dialog.querySelector(".dialog-title").textContent = title;
  dialog.querySelector(".dialog-body").textContent = body;
  dialog.querySelector("#confirm-ok").textContent = okText;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "confirm"), { once: true });
    dialog.showModal();
  });
}
