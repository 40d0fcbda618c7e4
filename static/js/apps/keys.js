// The terminal's extra keys (for phones), DOM-free so node can test them.

/** What a key of the extra-keys bar sends (cursor keys follow the terminal's mode). */
export function keyBytes(key, applicationCursor = false) {
  const csi = applicationCursor ? "\x1bO" : "\x1b[";
  return { Esc: "\x1b", Tab: "\t", Up: `${csi}A`, Down: `${csi}B`, Right: `${csi}C`, Left: `${csi}D` }[key];
}

/** Ctrl + one typed character, as a terminal sends it (Ctrl-C is "\x03"). */
export function withCtrl(text) {
  if (text.length !== 1) return text;
  const c = text.toUpperCase().charCodeAt(0);
  if (c >= 64 && c <= 95) return String.fromCharCode(c - 64);   // @ A-Z [ \ ] ^ _
  if (text === "?") return "\x7f";
  if (text === " ") return "\x00";
  return text;
}
