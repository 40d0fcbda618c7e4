// The apps UI: one tab per app the server lists (the WAI-ARIA tabs pattern: arrow
// keys, Home and End move between tabs); each tab mounts its app on first use.
// Called by static/js/main.js as mountApps(container, {pc, control, apps, serverId,
// tabsHost}); the tabs go into *tabsHost* (the session's heading row) when given.

const MODULES = { files: "./files.js", terminal: "./terminal.js", desktop: "./desktop.js" };

function addStylesheet(href) {
  if ([...document.querySelectorAll("link[rel=stylesheet]")].some((l) => l.getAttribute("href") === href)) return;
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = href;
  document.head.append(link);
}

export async function mountApps(container, { pc, control, apps, serverId, tabsHost = null }) {
  addStylesheet("/css/apps.css");
  const root = document.createElement("section");
  root.className = "apps";
  root.setAttribute("aria-label", "Apps");
  const tabs = document.createElement("div");
  tabs.className = "app-tabs";
  tabs.setAttribute("role", "tablist");
  tabs.setAttribute("aria-label", "Apps");
  const panels = document.createElement("div");
  panels.className = "app-panels";
  if (tabsHost) {
    tabsHost.replaceChildren(tabs);
    root.append(panels);
  } else {
    root.append(tabs, panels);
  }
  container.replaceChildren(root);

  const shown = apps.filter((a) => MODULES[a.name]);
  if (!shown.length) {
    const p = document.createElement("p");
    p.textContent = "This server offers no apps for the browser.";
    panels.append(p);
    return;
  }
  const entries = shown.map((app) => {
    const button = document.createElement("button");
    button.type = "button";
    button.setAttribute("role", "tab");
    button.id = `app-tab-${app.name}`;
    button.textContent = app.title || app.name;
    button.setAttribute("aria-selected", "false");
    button.setAttribute("aria-controls", `app-panel-${app.name}`);
    button.tabIndex = -1;
    const panel = document.createElement("div");
    panel.className = `app-panel app-${app.name}`;
    panel.id = `app-panel-${app.name}`;
    panel.setAttribute("role", "tabpanel");
    panel.setAttribute("aria-labelledby", button.id);
    panel.hidden = true;
    tabs.append(button);
    panels.append(panel);
    return { app, button, panel, mounted: null };
  });

  async function select(entry, { keyboard = false } = {}) {
    for (const e of entries) {
      const on = e === entry;
      e.button.setAttribute("aria-selected", String(on));
      e.button.tabIndex = on ? 0 : -1;
      e.panel.hidden = !on;
    }
    if (!entry.mounted) {
      entry.mounted = (async () => {
        try {
          const mod = await import(MODULES[entry.app.name]);
          return await mod.mount(entry.panel, { pc, control, app: entry.app, serverId });
        } catch (error) {
          const p = document.createElement("p");
          p.className = "app-error";
          p.setAttribute("role", "alert");
          p.textContent = `${entry.app.title || entry.app.name} failed: ${error.message}`;
          entry.panel.append(p);
          entry.mounted = null;
          return null;
        }
      })();
    }
    const api = await entry.mounted;
    if (entry.panel.hidden) return;
    if (api && api.shown) api.shown();
    // moving between tabs with the keyboard keeps the focus on the tabs
    if (keyboard && entry.panel.contains(document.activeElement)) entry.button.focus();
  }

  for (const e of entries) e.button.addEventListener("click", () => select(e));
  tabs.addEventListener("keydown", (event) => {
    const i = entries.findIndex((e) => e.button === document.activeElement);
    if (i < 0) return;
    const n = entries.length;
    const to = { ArrowRight: (i + 1) % n, ArrowLeft: (i - 1 + n) % n, Home: 0, End: n - 1 }[event.key];
    if (to === undefined) return;
    event.preventDefault();
    entries[to].button.focus();
    select(entries[to], { keyboard: true });
  });
  select(entries[0]);
}
