// Remembered servers (localStorage): server id + a name the user chooses.
// The password is never stored.

import { settings } from "./config.js";
import { parseServerId } from "./crypto.js";

function load() {
  try {
    const list = JSON.parse(localStorage.getItem(settings.storageKey) || "[]");
    return Array.isArray(list)
      ? list.filter((s) => s && typeof s.id === "string" && typeof s.name === "string")
      : [];
  } catch (e) {
    return [];
  }
}

function save(list) {
  localStorage.setItem(settings.storageKey, JSON.stringify(list));
}

export function isValidServerId(id) {
  try {
    parseServerId(id);
    return true;
  } catch (e) {
    return false;
  }
}

export function listServers() {
  return load();
}

export function getServer(id) {
  return load().find((s) => s.id === id) || null;
}

export function rememberServer(id, name) {
  if (!isValidServerId(id)) throw new Error("That is not a valid server id.");
  name = (name || "").trim() || "Home server";
  const list = load().filter((s) => s.id !== id);
  list.push({ id, name, added: Date.now() });
  save(list);
  return { id, name };
}

export function renameServer(id, name) {
  const list = load();
  const entry = list.find((s) => s.id === id);
  if (entry) {
    entry.name = (name || "").trim() || entry.name;
    save(list);
  }
}

export function forgetServer(id) {
  save(load().filter((s) => s.id !== id));
}

/** The server id in a connect link's fragment (#server=<id>), or null. */
export function serverIdFromHash(hash) {
  const params = new URLSearchParams((hash || "").replace(/^#/, ""));
  const id = params.get("server");
  return id && isValidServerId(id) ? id : null;
}
