// farm dashboard page: filter drop-downs from /api/options, panels from /api/panel/NAME.
// The SVG comes drawn from the server (farm/web/svg.py), so this script only wires filters and fetches.
"use strict";
const VARS = ["device", "model", "quant", "backend", "depth", "cpus", "power_mode", "commit"];
const WIDE = new Set(["phases", "commit_series", "device_health"]);
const $ = (sel) => document.querySelector(sel);
let panels = [];

function params() {
  const p = new URLSearchParams();
  const days = $("#f-range").value;
  if (days) {
    const now = new Date();
    p.set("from", new Date(now.getTime() - days * 86400e3).toISOString());
    p.set("to", now.toISOString());
  }
  for (const v of VARS) {
    const sel = document.getElementById("f-" + v);
    if (sel) for (const o of sel.selectedOptions) p.append(v, o.value);
  }
  return p;
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

async function getJSON(url) {
  const r = await fetch(url);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

async function loadOptions(initial) {
  const p = params();
  for (const v of VARS) p.delete(v);
  const opts = await getJSON("api/options?" + p);
  const holder = $("#selects");
  for (const v of VARS) {
    let sel = document.getElementById("f-" + v);
    const keep = new Set(sel ? [...sel.selectedOptions].map((o) => o.value) : initial.getAll(v));
    if (!sel) {
      const label = document.createElement("label");
      label.textContent = v.replace("_", " ");
      sel = document.createElement("select");
      sel.multiple = true;
      sel.id = "f-" + v;
      sel.addEventListener("change", refresh);
      label.appendChild(sel);
      holder.appendChild(label);
    }
    sel.innerHTML = "";
    for (const value of opts[v] || []) {
      const o = new Option(v === "commit" ? String(value).slice(0, 12) : value, value);
      o.title = value;
      o.selected = keep.has(String(value));
      sel.appendChild(o);
    }
  }
}

async function refresh() {
  document.body.dataset.state = "loading";
  const p = params();
  history.replaceState(null, "", "?" + new URLSearchParams([...p].filter(([k]) => VARS.includes(k)))
    + ($("#f-range").value ? "&range=" + $("#f-range").value : ""));
  $("#status").textContent = "loading…";
  const started = performance.now();
  await Promise.all(panels.map(async (panel) => {
    const body = document.querySelector(`#panel-${panel.name} .body`);
    try {
      const data = await getJSON(`api/panel/${panel.name}?` + p);
      body.innerHTML = data.html;
      body.dataset.rows = data.rows.length;
    } catch (err) {
      body.innerHTML = `<p class="error">${escapeHtml(err.message)}</p>`;
      body.dataset.rows = "error";
    }
  }));
  $("#status").textContent = `updated in ${Math.round(performance.now() - started)} ms`;
  document.body.dataset.generation = Number(document.body.dataset.generation) + 1;
  document.body.dataset.state = "ready";
}

async function main() {
  const initial = new URLSearchParams(location.search);
  $("#f-range").value = initial.get("range") || "";
  panels = await getJSON("api/panels");
  const main = $("#panels");
  for (const panel of panels) {
    if (panel.chart === "annotations") continue;  // drawn as markers on the commit series
    const s = document.createElement("section");
    s.className = "panel" + (WIDE.has(panel.name) ? " wide" : "");
    s.id = "panel-" + panel.name;
    s.innerHTML = `<h2>${escapeHtml(panel.title)}</h2><div class="body"></div>`;
    main.appendChild(s);
  }
  panels = panels.filter((p) => p.chart !== "annotations");
  await loadOptions(initial);
  $("#f-range").addEventListener("change", async () => { await loadOptions(params()); await refresh(); });
  $("#clear").addEventListener("click", () => {
    for (const v of VARS) for (const o of document.getElementById("f-" + v).options) o.selected = false;
    refresh();
  });
  await refresh();
}

main().catch((err) => {
  $("#status").textContent = "error: " + err.message;
  document.body.dataset.state = "error";
});
