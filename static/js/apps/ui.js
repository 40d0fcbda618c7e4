// Small DOM helpers shared by the apps and the server list: element building and
// in-page dialogs (<dialog>, instead of prompt()/confirm(), which block the page, are
// not styled by the theme and are refused by some embedded browsers).

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else if (k in node && !k.includes("-")) node[k] = v;
    else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

export function button(label, onclick, props = {}) {
  return el("button", { type: "button", onclick, ...props }, label);
}

let dialogs = 0;

/** A modal dialog; resolves with the text typed (askText) or true (confirm), or null
 *  when dismissed (Cancel, Escape). */
function modal({ title, text, label, value, ok, danger }) {
  const n = ++dialogs;
  const titleId = `hc-dialog-${n}-title`;
  const form = el("form", { method: "dialog" });
  const dialog = el("dialog", { class: "hc-dialog", "aria-labelledby": titleId }, form);
  form.append(el("h2", { id: titleId }, title));
  if (text) form.append(el("p", {}, text));
  let input = null;
  if (label !== undefined) {
    const inputId = `hc-dialog-${n}-input`;
    input = el("input", { id: inputId, type: "text", value: value || "", autocomplete: "off", spellcheck: false, required: true });
    form.append(el("label", { for: inputId }, label), input);
  }
  const okButton = el("button", { type: "submit", value: "ok", class: danger ? "danger" : "primary" }, ok || "OK");
  const cancel = el("button", { type: "submit", value: "cancel", formNoValidate: true }, "Cancel");
  form.append(el("div", { class: "actions" }, okButton, cancel));
  document.body.append(dialog);
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      const accepted = dialog.returnValue === "ok";
      dialog.remove();
      resolve(!accepted ? null : input ? input.value : true);
    });
    dialog.showModal();
    if (input) { input.focus(); input.select(); } else cancel.focus();
  });
}

export function askText(title, label, value = "", ok = "OK") {
  return modal({ title, label, value, ok });
}

export function confirmAction(title, text, ok = "OK", danger = true) {
  return modal({ title, text, ok, danger }).then((v) => v === true);
}
