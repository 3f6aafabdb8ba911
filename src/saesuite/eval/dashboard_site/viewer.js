// saesuite's latent dashboard: a static page over data scripts (shards/, order/,
// text.js, info.js) that call the functions below. Works from file://.
"use strict";
const loaded = {};
const waiting = {};
const saesuite = {
  info(d) { saesuite.meta = d; route(); },
  text(t) { saesuite.tokens = t; done("text.js"); },
  shard(n, recs) { (saesuite.shards ||= {})[n] = recs; done(`shards/shard_${pad(n)}.js`); },
  order(key, n, rows) { (saesuite.orders ||= {})[`${key}/${n}`] = rows; done(`order/${key}_${pad(n)}.js`); },
};
window.saesuite = saesuite;
window.addEventListener("error", (e) => {
  document.getElementById("errors").textContent += `${e.message}\n`;
});
function pad(n) { return String(n).padStart(5, "0"); }
function done(src) { loaded[src] = true; (waiting[src] || []).forEach((f) => f()); }
function load(src) {
  // one <script> per data file, loaded once; resolves when it has run
  return new Promise((resolve, reject) => {
    if (loaded[src]) return resolve();
    (waiting[src] ||= []).push(resolve);
    if (waiting[src].length > 1) return;
    const s = document.createElement("script");
    s.src = src;
    s.onerror = () => reject(new Error(`cannot load ${src}`));
    document.body.appendChild(s);
  });
}
function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const k of kids) e.append(k);
  return e;
}
function fmt(v) { return v === 0 ? "0" : Math.abs(v) < 1e-3 ? v.toExponential(2) : v.toPrecision(3); }

async function route() {
  const m = saesuite.meta;
  document.getElementById("title").textContent = `${m.dictionary} · ${m.model} layer ${m.layer}`;
  document.getElementById("what").textContent =
    `${m.width} latents reading ${m.input_site}` +
    (m.output_site !== m.input_site ? `, writing ${m.output_site}` : "") +
    `; ${m.tokens} held-out tokens in ${m.sequences} sequences`;
  const [view, a, b] = (location.hash.slice(1) || "list/id/0").split("/");
  const main = document.getElementById("view");
  try {
    main.replaceChildren(view === "latent" ? await latentView(+a) : await listView(a, +b || 0));
  } catch (err) {
    main.replaceChildren(el("p", {}, String(err)));
  }
}

async function listView(key, page) {
  const m = saesuite.meta;
  if (!m.orders.includes(key)) key = "id";
  document.getElementById("sort").value = key;
  const pages = Math.ceil(m.width / m.page_size);
  page = Math.max(0, Math.min(page, pages - 1));
  await load(`order/${key}_${pad(page)}.js`);
  const rows = saesuite.orders[`${key}/${page}`];
  const table = el("table", { id: "latents" },
    el("tr", {}, el("th", {}, "latent"), el("th", {}, "frequency"),
       el("th", {}, "max activation"), el("th", {}, "mean when firing")));
  for (const [i, f, mx, mean] of rows) {
    table.append(el("tr", {}, el("td", {}, el("a", { href: `#latent/${i}` }, `#${i}`)),
      el("td", {}, fmt(f)), el("td", {}, fmt(mx)), el("td", {}, fmt(mean))));
  }
  const pager = el("div", { class: "pager" },
    el("a", { href: `#list/${key}/${Math.max(0, page - 1)}` }, "← previous"),
    el("span", {}, `page ${page + 1} of ${pages}`),
    el("a", { href: `#list/${key}/${Math.min(pages - 1, page + 1)}` }, "next →"));
  return el("section", {}, pager, table);
}

function context(ctx, peak) {
  const [seq, pos, value, nz] = ctx;
  const t = saesuite.tokens;
  const half = saesuite.meta.window;
  const vals = Object.fromEntries(nz.map(([o, v]) => [o, v]));
  const line = el("div", { class: "ctx", "data-seq": seq, "data-pos": pos });
  for (let o = -half; o <= half; o++) {
    const p = pos + o;
    if (p < 0 || p >= t.ids[seq].length) continue;
    const v = vals[o] || 0;
    const span = el("span", { class: o === 0 ? "tok peak" : "tok", title: fmt(v) },
      t.strings[t.ids[seq][p]] ?? "?");
    if (v > 0) span.style.background = `rgba(230, 126, 34, ${Math.min(1, v / peak).toFixed(3)})`;
    line.append(span);
  }
  line.title = `sequence ${seq}, position ${pos}: ${fmt(value)}`;
  return line;
}

function histogram(hist, max) {
  // the latent's activations in equal bins over [0, max] (latents.linear_histogram)
  const n = hist.length, w = Math.max(4, Math.floor(360 / Math.max(1, n))), h = 60;
  const top = Math.max(1, ...hist);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", w * n + 40); svg.setAttribute("height", h + 14);
  svg.setAttribute("class", "hist");
  hist.forEach((c, b) => {
    if (!c) return;
    const r = document.createElementNS(svg.namespaceURI, "rect");
    const bh = Math.max(1, (h * c) / top);
    r.setAttribute("x", b * w); r.setAttribute("y", h - bh);
    r.setAttribute("width", w - 1); r.setAttribute("height", bh);
    r.setAttribute("data-count", c);
    r.append(Object.assign(document.createElementNS(svg.namespaceURI, "title"),
      { textContent: `${fmt((b * max) / n)} – ${fmt(((b + 1) * max) / n)}: ${c}` }));
    svg.append(r);
  });
  for (const [x, label] of [[0, "0"], [w * n - 10, fmt(max)]]) {
    const tx = document.createElementNS(svg.namespaceURI, "text");
    tx.setAttribute("x", x); tx.setAttribute("y", h + 12);
    tx.setAttribute("font-size", 10); tx.textContent = label;
    svg.append(tx);
  }
  return svg;
}

async function latentView(i) {
  const m = saesuite.meta;
  if (!(i >= 0 && i < m.width)) throw new Error(`no latent ${i} (0 … ${m.width - 1})`);
  await Promise.all([load("text.js"), load(`shards/shard_${pad(Math.floor(i / m.shard_size))}.js`)]);
  const r = saesuite.shards[Math.floor(i / m.shard_size)][i % m.shard_size];
  const effects = (rows, cls) => el("table", { class: cls },
    ...rows.map(([s, v]) => el("tr", {}, el("td", {}, JSON.stringify(s)), el("td", {}, fmt(v)))));
  const top = el("section", { id: "top" }, el("h3", {}, "Top activations"));
  r.top.forEach((c) => top.append(context(c, r.max)));
  if (!r.top.length) top.append(el("p", { class: "muted" }, "never fires on these tokens"));
  const sample = el("section", { id: "sample" }, el("h3", {}, "Sampled activations, by thirds of the max"));
  for (const [lo, hi] of [[2 / 3, 1.01], [1 / 3, 2 / 3], [0, 1 / 3]]) {
    const rows = r.sample.filter((c) => c[2] >= lo * r.max && c[2] < hi * r.max);
    if (!rows.length) continue;
    sample.append(el("h4", {}, `${fmt(lo * r.max)} – ${fmt(Math.min(hi, 1) * r.max)}`));
    rows.forEach((c) => sample.append(context(c, r.max)));
  }
  return el("section", { id: "latent", "data-latent": i },
    el("h2", {}, `Latent #${i}`),
    el("p", {}, `frequency ${fmt(r.freq)} · max ${fmt(r.max)} · mean when firing ${fmt(r.mean)}`),
    histogram(r.hist, r.max),
    el("div", { class: "cols" },
      el("div", {}, el("h3", {}, "Promotes"), effects(r.pos, "pos")),
      el("div", {}, el("h3", {}, "Suppresses"), effects(r.neg, "neg"))),
    top, sample);
}

window.addEventListener("hashchange", () => saesuite.meta && route());
document.getElementById("sort").addEventListener("change", (e) => { location.hash = `list/${e.target.value}/0`; });
document.getElementById("go").addEventListener("click", () => {
  location.hash = `latent/${document.getElementById("find").value}`;
});
