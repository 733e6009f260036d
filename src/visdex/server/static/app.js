/* visdex web UI: plain JS, no build step. Talks to the JSON API under api/ (see /docs). */
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "visdex-token";
  let token = localStorage.getItem(TOKEN_KEY) || "";

  /** Create an element: h("a", {href, class: "x", onclick}, child, "text"). Never parses HTML. */
  function h(tag, props = {}, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "class") el.className = v;
      else if (k === "dataset") Object.assign(el.dataset, v);
      else if (k in el && typeof v !== "string") el[k] = v;
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c);
    return el;
  }

  /** fn, called once ms after the last call; .cancel() drops a pending call. */
  const debounce = (fn, ms) => {
    let t;
    const d = (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); };
    d.cancel = () => clearTimeout(t);
    return d;
  };
  const fmtBytes = (n) => (n >= 1 << 20 ? (n / (1 << 20)).toFixed(1) + " MB" : Math.max(1, Math.round(n / 1024)) + " KB");
  const baseName = (p) => String(p || "").split(/[\\/]/).pop();

  // -- API ----------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }
  let tokenPrompt = null;

  async function api(path, opts = {}) {
    const headers = new Headers(opts.headers || {});
    if (token) headers.set("Authorization", "Bearer " + token);
    const res = await fetch(path, { ...opts, headers });
    if (res.status === 401) {
      await askToken(!!token);
      return api(path, opts);
    }
    let body = null;
    try { body = await res.json(); } catch (_) { /* not JSON */ }
    if (!res.ok) throw new ApiError(res.status, (body && body.error) || res.statusText || "request failed");
    return body;
  }

  /** URL of a file endpoint; <img> cannot send headers, so the token rides along as ?token=. */
  function fileUrl(url, params = {}) {
    const q = new URLSearchParams(params);
    if (token) q.set("token", token);
    const s = q.toString();
    return s ? url + "?" + s : url;
  }

  function askToken(wasWrong) {
    if (tokenPrompt) return tokenPrompt;
    const dlg = $("token-dialog");
    $("token-error").hidden = !wasWrong;
    $("token-error").textContent = "That token was not accepted.";
    tokenPrompt = new Promise((resolve) => {
      const done = (e) => {
        e.preventDefault();
        const v = $("token-input").value.trim();
        if (!v) return;
        token = v;
        localStorage.setItem(TOKEN_KEY, v);
        dlg.close();
        $("token-form").removeEventListener("submit", done);
        tokenPrompt = null;
        resolve();
      };
      $("token-form").addEventListener("submit", done);
      if (!dlg.open) dlg.showModal();
      $("token-input").focus();
    });
    return tokenPrompt;
  }

  function showAlert(id, message) {
    const el = $(id);
    el.textContent = message || "";
    el.hidden = !message;
  }

  // -- views --------------------------------------------------------------------------------
  const VIEWS = ["search", "dupes", "map"];

  function route() {
    const name = (location.hash.replace(/^#/, "").split("?")[0] || "search");
    const view = VIEWS.includes(name) ? name : "search";
    for (const v of VIEWS) $("view-" + v).hidden = v !== view;
    for (const a of document.querySelectorAll(".tab")) {
      if (a.dataset.view === view) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    if (view === "dupes") loadDupes();
    if (view === "map") loadMap();
  }

  async function loadStatus() {
    try {
      const st = await api("api/status");
      const n = st.kind === "catalog" ? st.items_ok : st.files_ok;
      const model = baseName(st.model || "no model yet");
      $("index-status").textContent = `${n.toLocaleString()} ${st.kind === "catalog" ? "items" : "images"} · ${model}` +
        (st.server && st.server.auth ? " · 🔒" : "");
    } catch (e) {
      $("index-status").textContent = e.message;
    }
  }

  // -- search -------------------------------------------------------------------------------
  // sent: the fields of the search in flight or shown, so the same search is not run twice
  // (Enter after typing used to run it again 250 ms later: a second request and a redraw)
  const state = { image: null, crop: null, mods: [], seq: 0, ctrl: null, sent: null, hits: [], imageSeq: 0 };

  const quote = (s) => '"' + s.replace(/["\\]/g, "\\$&") + '"';

  /** The composed query text: the box, then each "+ text" / "- text" modifier. */
  function composedText() {
    const main = $("q").value.trim();
    const parts = main ? [main] : [];
    for (const m of state.mods) parts.push(m.sign > 0 ? "+" : "-", quote(m.text));
    if (!state.image && parts[0] === "+") parts.shift(); // a query cannot start with "+"
    return parts.join(" ");
  }

  function cropParam() {
    const c = state.crop;
    return c ? [c.x, c.y, c.w, c.h].map((v) => v.toFixed(4)).join(",") : null;
  }

  async function runSearch() {
    searchSoon.cancel();
    const text = composedText();
    const fields = { q: text, k: $("k").value, where: $("where").value.trim(), within: $("within").value, crop: cropParam() };
    const key = JSON.stringify([fields, state.image && state.image.seq]);
    if (key === state.sent) return; // already running or on screen
    if (state.ctrl) state.ctrl.abort();
    state.sent = key;
    if (!text && !state.image) {
      state.seq++;
      showAlert("search-alert", "");
      state.hits = [];
      $("results").replaceChildren();
      $("results-meta").textContent = "";
      $("welcome").hidden = false;
      return;
    }
    const ctrl = (state.ctrl = new AbortController());
    const seq = ++state.seq;
    $("results-meta").textContent = "Searching…";
    let res;
    try {
      if (state.image && state.image.kind === "upload") {
        const fd = new FormData();
        fd.append("image", state.image.file, state.image.name || "image");
        for (const [k, v] of Object.entries(fields)) if (v) fd.append(k, v);
        res = await api("api/search", { method: "POST", body: fd, signal: ctrl.signal });
      } else {
        const p = new URLSearchParams();
        for (const [k, v] of Object.entries(fields)) if (v) p.set(k, v);
        if (state.image) p.set("id", state.image.id);
        res = await api("api/search?" + p, { signal: ctrl.signal });
      }
    } catch (e) {
      if (e.name === "AbortError" || seq !== state.seq) return;
      state.sent = null; // a retry of the same search runs again
      // an upload the server cannot read is no query image: drop it rather than show a broken one
      if (state.image && state.image.kind === "upload" && e.status >= 400 && e.status < 500) setImage(null);
      showSearchError(e.message);
      return;
    }
    if (seq !== state.seq) return;
    showAlert("search-alert", "");
    renderResults(res);
  }
  const searchSoon = debounce(runSearch, 250);

  /** An error replaces the results: results of an earlier query under it would read as its answer. */
  function showSearchError(message) {
    state.hits = [];
    $("results").replaceChildren();
    $("results-meta").textContent = "";
    $("welcome").hidden = true;
    showAlert("search-alert", message);
  }

  function renderResults(res) {
    $("welcome").hidden = true;
    const hits = (state.hits = res.results);
    const best = Math.max(1e-6, ...hits.map((r) => r.score));
    $("results").replaceChildren(...hits.map((hit) => resultCard(hit, best)));
    $("results-meta").textContent = hits.length
      ? `${hits.length} result${hits.length === 1 ? "" : "s"}` + (res.took_ms != null ? ` · ${Math.round(res.took_ms)} ms` : "")
      : "No results — try other words or fewer filters.";
  }

  function resultCard(hit, best) {
    const pct = Math.max(4, Math.min(100, (hit.score / best) * 100));
    const img = h("img", { src: fileUrl(hit.thumb, { size: 256 }), alt: hit.name, loading: "lazy", decoding: "async",
      draggable: "true", ondragstart: (e) => e.dataTransfer.setData("text/x-visdex-item", JSON.stringify(hit)) });
    const bar = h("i");
    bar.style.width = pct.toFixed(1) + "%";
    return h("article", { class: "card", dataset: { id: hit.id } },
      h("button", { class: "thumb", type: "button", title: "More like this", "aria-label": `More like ${hit.name}`,
        onclick: () => moreLikeThis(hit) }, img),
      h("span", { class: "score", title: "cosine similarity" }, hit.score.toFixed(3)),
      h("div", { class: "body" },
        h("div", { class: "name", title: hit.path }, hit.name),
        h("div", { class: "bar", "aria-hidden": "true" }, bar),
        hit.tags && hit.tags.length ? h("div", { class: "tags" }, hit.tags.slice(0, 3).map((t) => h("span", {}, t))) : null,
        h("div", { class: "actions" },
          h("button", { class: "chip-btn", type: "button", onclick: () => openViewer(hit, state.hits) }, "View"),
          h("a", { class: "chip-btn", href: fileUrl(hit.original), target: "_blank", rel: "noopener" }, "Open ↗"))));
  }

  function setImage(image) {
    if (state.image && state.image.kind === "upload") URL.revokeObjectURL(state.image.url);
    if (image) image.seq = ++state.imageSeq; // a new image is a new search, even of the same file
    state.image = image;
    state.crop = null;
    renderQueryImage();
  }

  function setUpload(file) {
    if (!file || !/^image\//.test(file.type || "image/")) { // no type: let the server decide
      state.sent = null;
      showSearchError("That is not an image file.");
      return;
    }
    setImage({ kind: "upload", file, name: file.name || "pasted image", url: URL.createObjectURL(file) });
    location.hash = "#search";
    runSearch();
  }

  function moreLikeThis(hit) {
    setImage({ kind: "id", id: hit.id, name: hit.name, url: fileUrl(hit.thumb, { size: 1024 }) });
    $("q").value = "";
    state.mods = [];
    renderMods();
    if (location.hash !== "#search") location.hash = "#search";
    window.scrollTo({ top: 0, behavior: "smooth" });
    runSearch();
  }

  function renderQueryImage() {
    const img = state.image;
    $("query-panel").hidden = !img;
    $("query-chip").hidden = !img;
    $("crop-box").hidden = !state.crop;
    $("crop-clear").disabled = !state.crop;
    if (!img) return;
    for (const el of [$("query-img"), $("query-chip").querySelector("img")]) { el.hidden = false; el.src = img.url; }
    $("query-name").textContent = img.kind === "id" ? `More like ${img.name}` : img.name;
  }

  function initCrop() {
    const stage = $("crop-stage");
    const box = $("crop-box");
    let start = null;
    const rel = (e) => {
      const r = $("query-img").getBoundingClientRect();
      return { x: Math.min(1, Math.max(0, (e.clientX - r.left) / r.width)), y: Math.min(1, Math.max(0, (e.clientY - r.top) / r.height)) };
    };
    const rect = (a, b) => ({ x: Math.min(a.x, b.x), y: Math.min(a.y, b.y), w: Math.abs(a.x - b.x), h: Math.abs(a.y - b.y) });
    const place = (c) => {
      box.hidden = false;
      Object.assign(box.style, { left: c.x * 100 + "%", top: c.y * 100 + "%", width: c.w * 100 + "%", height: c.h * 100 + "%" });
    };
    stage.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      e.preventDefault();
      stage.setPointerCapture(e.pointerId);
      start = rel(e);
      place({ ...start, w: 0, h: 0 });
    });
    stage.addEventListener("pointermove", (e) => { if (start) place(rect(start, rel(e))); });
    const finish = (e) => {
      if (!start) return;
      const c = rect(start, rel(e));
      start = null;
      if (c.w < 0.03 || c.h < 0.03) { // a click, not a box: back to the whole image
        if (state.crop) { state.crop = null; renderQueryImage(); runSearch(); } else box.hidden = true;
        return;
      }
      state.crop = c;
      place(c);
      $("crop-clear").disabled = false;
      runSearch();
    };
    stage.addEventListener("pointerup", finish);
    stage.addEventListener("pointercancel", () => { start = null; renderQueryImage(); });
    // a format the server reads but this browser cannot show (HEIC): no broken-image icon
    for (const el of [$("query-img"), $("query-chip").querySelector("img")]) {
      el.addEventListener("error", () => { if (state.image) el.hidden = true; });
    }
    $("crop-clear").addEventListener("click", () => { state.crop = null; renderQueryImage(); runSearch(); });
    $("image-clear").addEventListener("click", () => { setImage(null); runSearch(); });
    $("query-chip").addEventListener("click", () => { setImage(null); runSearch(); });
  }

  function renderMods() {
    $("mod-list").replaceChildren(...state.mods.map((m, i) =>
      h("li", { class: "mod " + (m.sign > 0 ? "plus" : "minus") },
        (m.sign > 0 ? "+ " : "− ") + m.text,
        h("button", { type: "button", "aria-label": `Remove ${m.text}`, onclick: () => { state.mods.splice(i, 1); renderMods(); runSearch(); } }, "×"))));
  }

  function addMod(sign) {
    const input = $("mod-text");
    const text = input.value.trim();
    if (!text) { input.focus(); return; }
    state.mods.push({ sign, text });
    input.value = "";
    renderMods();
    runSearch();
  }

  function updateFilterCount() {
    markTagChips();
    const n = ($("where").value.trim() ? 1 : 0) + ($("within").value ? 1 : 0);
    $("filter-count").hidden = !n;
    $("filter-count").textContent = n;
  }

  async function loadTags() {
    try {
      const { tags } = await api("api/tags");
      $("tag-field").hidden = !tags.length;
      $("tag-chips").replaceChildren(...tags.slice(0, 30).map((t) =>
        h("button", { type: "button", class: "tag", "aria-pressed": "false", dataset: { clause: `tag = ${quote(t.label)}` },
          onclick: (e) => toggleWhere(e.currentTarget.dataset.clause) }, `${t.label} · ${t.count}`)));
      markTagChips();
      const examples = tags.length ? tags.slice(0, 5).map((t) => t.label) : ["a dog on the beach", "city at night", "red car", "birthday cake"];
      $("examples").replaceChildren(...examples.map((ex) =>
        h("button", { type: "button", class: "chip-btn", onclick: () => { $("q").value = ex; runSearch(); } }, ex)));
    } catch (_) { /* the status line already says what is wrong */ }
  }

  /** The top-level "and" terms of a filter; null when it is not a plain conjunction (a top-level "or"). */
  function andTerms(where) {
    const terms = [];
    let depth = 0, quoteCh = null, start = 0;
    for (let i = 0; i < where.length; i++) {
      const c = where[i];
      if (quoteCh) { if (c === "\\") i++; else if (c === quoteCh) quoteCh = null; continue; }
      if (c === '"' || c === "'") quoteCh = c;
      else if (c === "(") depth++;
      else if (c === ")") depth--;
      else if (!depth && /\s/.test(c)) {
        const m = /^\s+(and|or)\s+/i.exec(where.slice(i));
        if (!m) continue;
        if (m[1].toLowerCase() === "or") return null;
        terms.push(where.slice(start, i).trim());
        start = i + m[0].length;
        i = start - 1;
      }
    }
    terms.push(where.slice(start).trim());
    return terms.filter(Boolean);
  }

  /** A tag chip adds its clause once; a second click takes it out again (a chip is a toggle). */
  function toggleWhere(clause) {
    const w = $("where");
    const terms = andTerms(w.value.trim());
    if (terms && terms.includes(clause)) w.value = terms.filter((t) => t !== clause).join(" and ");
    else if (!w.value.includes(clause)) w.value = w.value.trim() ? `${w.value.trim()} and ${clause}` : clause;
    updateFilterCount();
    runSearch();
  }

  function markTagChips() {
    const terms = andTerms($("where").value.trim()) || [];
    for (const b of document.querySelectorAll("#tag-chips .tag")) b.setAttribute("aria-pressed", String(terms.includes(b.dataset.clause)));
  }

  function initSearch() {
    $("search-form").addEventListener("submit", (e) => { e.preventDefault(); runSearch(); });
    $("q").addEventListener("input", searchSoon);
    $("q").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); runSearch(); } });
    $("file").addEventListener("change", (e) => { setUpload(e.target.files[0]); e.target.value = ""; });
    $("mod-plus").addEventListener("click", () => addMod(1));
    $("mod-minus").addEventListener("click", () => addMod(-1));
    $("mod-text").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); addMod(e.shiftKey ? -1 : 1); } });
    $("filters-toggle").addEventListener("click", () => {
      const open = $("filters").hidden;
      $("filters").hidden = !open;
      $("filters-toggle").setAttribute("aria-expanded", String(open));
    });
    $("where").addEventListener("change", () => { updateFilterCount(); runSearch(); });
    $("where").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); updateFilterCount(); runSearch(); } });
    for (const id of ["k", "within"]) $(id).addEventListener("change", () => { updateFilterCount(); runSearch(); });
    initCrop();
    initDrop();
  }

  function initDrop() {
    let depth = 0;
    const overlay = $("drop-overlay");
    const hasPayload = (e) => [...e.dataTransfer.types].some((t) => t === "Files" || t === "text/x-visdex-item");
    window.addEventListener("dragenter", (e) => { if (hasPayload(e)) { depth++; overlay.hidden = false; } });
    window.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); if (!depth) overlay.hidden = true; });
    window.addEventListener("dragover", (e) => { if (hasPayload(e)) e.preventDefault(); });
    window.addEventListener("drop", (e) => {
      depth = 0;
      overlay.hidden = true;
      if (!hasPayload(e)) return;
      e.preventDefault();
      const item = e.dataTransfer.getData("text/x-visdex-item");
      if (item) { moreLikeThis(JSON.parse(item)); return; }
      setUpload(e.dataTransfer.files[0]);
    });
    document.addEventListener("paste", (e) => {
      const file = [...(e.clipboardData ? e.clipboardData.files : [])].find((f) => f.type.startsWith("image/"));
      if (file) { e.preventDefault(); setUpload(file); }
    });
  }

  // -- viewer (one image, large) ------------------------------------------------------------
  // list: the items the arrow keys step through (the results, the duplicates), or none
  const viewer = { list: [], index: -1, seq: 0 };

  function stepViewer(delta) {
    const i = viewer.index + delta;
    if (viewer.index < 0 || i < 0 || i >= viewer.list.length) return;
    openViewer(viewer.list[i], viewer.list);
  }

  function initViewer() {
    const dlg = $("viewer");
    $("viewer-prev").addEventListener("click", () => stepViewer(-1));
    $("viewer-next").addEventListener("click", () => stepViewer(1));
    dlg.addEventListener("keydown", (e) => {
      if (e.altKey || e.ctrlKey || e.metaKey) return;
      if (e.key === "ArrowLeft") stepViewer(-1);
      else if (e.key === "ArrowRight") stepViewer(1);
      else return;
      e.preventDefault();
    });
    // a click on the backdrop lands on the dialog itself, outside its box
    dlg.addEventListener("click", (e) => {
      if (e.target !== dlg) return;
      const r = dlg.getBoundingClientRect();
      if (e.clientX < r.left || e.clientX > r.right || e.clientY < r.top || e.clientY > r.bottom) dlg.close();
    });
  }

  async function openViewer(item, list = []) {
    const dlg = $("viewer");
    const seq = ++viewer.seq;
    viewer.list = list;
    viewer.index = list.indexOf(item);
    $("viewer-prev").hidden = $("viewer-next").hidden = viewer.index < 0;
    $("viewer-prev").disabled = viewer.index <= 0;
    $("viewer-next").disabled = viewer.index < 0 || viewer.index >= list.length - 1;
    $("viewer-pos").textContent = viewer.index < 0 ? "" : `${viewer.index + 1} / ${list.length}`;
    $("viewer-img").src = fileUrl(item.thumb || `api/files/${item.id}/thumb`, { size: 1024 });
    $("viewer-img").alt = item.name || "";
    $("viewer-name").textContent = item.name || baseName(item.path);
    $("viewer-open").href = fileUrl(item.original || `api/files/${item.id}/original`);
    $("viewer-meta").textContent = "";
    $("viewer-tags").replaceChildren();
    $("viewer-similar").onclick = () => { dlg.close(); moreLikeThis({ id: item.id, name: item.name, thumb: `api/files/${item.id}/thumb` }); };
    if (!dlg.open) dlg.showModal();
    try {
      const d = await api(`api/items/${item.id}`);
      if (seq !== viewer.seq) return; // stepped on to another image meanwhile
      const bits = [];
      if (d.width) bits.push(`${d.width} × ${d.height}`);
      if (d.format) bits.push(d.format);
      if (d.size) bits.push(fmtBytes(d.size));
      if (d.taken_at) bits.push("taken " + d.taken_at.replace("T", " "));
      if (d.camera) bits.push(d.camera);
      $("viewer-meta").textContent = bits.join(" · ");
      $("viewer-tags").replaceChildren(...(d.tags || []).map((t) => h("span", { class: "tag" }, `${t.label} ${Math.round(t.score * 100)}%`)));
    } catch (e) {
      if (seq === viewer.seq) $("viewer-meta").textContent = e.message;
    }
  }

  // -- duplicates ---------------------------------------------------------------------------
  let dupesKey = null;

  async function loadDupes(force = false) {
    const threshold = $("dupe-threshold").value;
    const exact = $("dupe-exact").checked;
    const key = `${threshold}|${exact}`;
    if (key === dupesKey && !force) return;
    dupesKey = key;
    const p = new URLSearchParams();
    if (threshold) p.set("threshold", threshold);
    if (exact) p.set("exact_only", "true");
    $("dupes-meta").textContent = "Looking for duplicates…";
    showAlert("dupes-alert", "");
    try {
      const res = await api("api/duplicates?" + p);
      if (key !== dupesKey) return;
      const files = res.groups.reduce((n, g) => n + g.members.length, 0);
      $("dupes-meta").textContent = res.count
        ? `${res.count} group${res.count === 1 ? "" : "s"}, ${files} files — ${files - res.count} could go`
        : "No duplicates found.";
      const members = res.groups.flatMap((g) => g.members); // the viewer's arrows walk every group
      $("dupes").replaceChildren(...res.groups.map((g, i) => dupeGroup(g, i, members)));
    } catch (e) {
      dupesKey = null;
      $("dupes-meta").textContent = "";
      showAlert("dupes-alert", e.message);
    }
  }

  function dupeGroup(g, i, all) {
    return h("section", { class: "dupe-group", "aria-label": `Group ${i + 1}` },
      h("header", {}, `Group ${i + 1}`,
        h("span", { class: "kind " + g.kind }, g.kind === "exact" ? "exact copies" : "near duplicates"),
        h("span", { class: "hint" }, `${g.members.length} files`)),
      h("div", { class: "dupe-members" }, g.members.map((m) => {
        const keeper = m.id === g.keeper_id;
        const when = m.taken_at ? "taken " + m.taken_at.slice(0, 10) : "modified " + new Date(m.mtime * 1000).toISOString().slice(0, 10);
        return h("figure", { class: "member" + (keeper ? " keeper" : ""), style: null },
          h("button", { type: "button", "aria-label": `View ${m.name}`, onclick: () => openViewer(m, all) },
            h("img", { src: fileUrl(m.thumb, { size: 256 }), alt: m.name, loading: "lazy" }),
            keeper ? h("span", { class: "keep-badge" }, "Keep") : null),
          h("figcaption", { class: "info" },
            h("b", { title: m.path }, m.name),
            h("span", {}, `${m.width || "?"} × ${m.height || "?"} · ${fmtBytes(m.size)}`),
            h("span", {}, when),
            keeper ? h("span", {}, "suggested keeper") : h("span", {}, `similarity ${Number(m.score).toFixed(3)}`)));
      })));
  }

  // -- map ----------------------------------------------------------------------------------
  const map = { points: null, loading: false, scale: 1, tx: 0, ty: 0, Sx: 1, Sy: 1, thumbs: new Map(), active: 0, queue: [],
    hover: null, raf: 0, pointers: new Map(), moved: 0 };
  const MAX_LOADS = 6;

  async function loadMap() {
    resizeMap();
    if (map.points || map.loading) return;
    map.loading = true;
    $("map-meta").textContent = "Placing images…";
    showAlert("map-alert", "");
    try {
      const res = await api("api/map");
      map.points = res.points;
      $("map-meta").textContent = `${res.count.toLocaleString()} images · ${res.method.toUpperCase()} · similar images lie close together`;
      fitMap();
    } catch (e) {
      $("map-meta").textContent = "";
      showAlert("map-alert", e.message);
    } finally {
      map.loading = false;
    }
  }

  function resizeMap() {
    const c = $("map");
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth, hgt = c.clientHeight;
    if (!w || !hgt) return;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(hgt * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(hgt * dpr);
      if (map.points && !map.userMoved) fitMap(); else drawMap();
    }
  }

  function fitMap() {
    const c = $("map");
    const w = c.clientWidth, hgt = c.clientHeight;
    // fill the view (a projection's axes carry no meaning, so stretching them loses nothing),
    // leaving half a thumbnail of margin so the outermost images are not cut off
    const margin = Math.min(baseTile() / 2 + 16, Math.min(w, hgt) / 4);
    map.Sx = Math.max(1, w - 2 * margin);
    map.Sy = Math.max(1, hgt - 2 * margin);
    map.scale = 1;
    map.tx = margin;
    map.ty = margin;
    map.userMoved = false;
    drawMap();
  }

  /** Thumbnail size at zoom 1: they roughly tile the view, and are never huge. */
  function baseTile() {
    const c = $("map");
    const n = Math.max(1, map.points ? map.points.length : 1);
    const area = c.clientWidth * c.clientHeight;
    return Math.min(Math.sqrt(area / n) * 0.55, Math.min(c.clientWidth, c.clientHeight) * 0.13);
  }

  /** On-screen size of one thumbnail: grows as you zoom in. */
  function tileSize() {
    return Math.max(5, baseTile() * Math.pow(map.scale, 0.6)); // slower than the distances: zooming in pulls piles apart
  }

  const toScreen = (p) => [map.tx + p.x * map.Sx * map.scale, map.ty + p.y * map.Sy * map.scale];

  /** The best loaded thumbnail for a point (or null); queues the one this zoom wants. */
  function thumbFor(p, px) {
    const size = px > 128 ? 256 : 128;
    const key = p.id + ":" + size;
    let entry = map.thumbs.get(key);
    if (!entry) {
      entry = { img: new Image(), ready: false, started: false };
      map.thumbs.set(key, entry);
    }
    if (entry.ready) return entry.img;
    if (!entry.started) map.queue.push(() => loadThumb(entry, p, size));
    const low = map.thumbs.get(p.id + ":128");
    return low && low.ready ? low.img : null;
  }

  function loadThumb(entry, p, size) {
    entry.started = true;
    entry.img.onload = () => { entry.ready = true; map.active--; pump(); drawMap(); };
    entry.img.onerror = () => { map.active--; pump(); };
    entry.img.src = fileUrl(p.thumb, { size });
  }

  function pump() {
    while (map.active < MAX_LOADS && map.queue.length) {
      map.active++;
      map.queue.shift()();
    }
  }

  function drawMap() {
    if (map.raf) return;
    map.raf = requestAnimationFrame(() => { map.raf = 0; paintMap(); });
  }

  function paintMap() {
    const c = $("map");
    const ctx = c.getContext("2d");
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth, hgt = c.clientHeight;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, hgt);
    if (!map.points) return;
    const css = getComputedStyle(document.documentElement);
    const accent = css.getPropertyValue("--accent").trim() || "#5b4cf0";
    const border = css.getPropertyValue("--border").trim() || "#ddd";
    const size = tileSize();
    const half = size / 2;
    map.queue.length = 0; // re-queued below for what is visible now
    for (const p of map.points) {
      const [x, y] = toScreen(p);
      if (x < -half || y < -half || x > w + half || y > hgt + half) continue;
      if (size < 14) {
        ctx.fillStyle = accent;
        ctx.globalAlpha = 0.75;
        ctx.beginPath();
        ctx.arc(x, y, Math.max(2, half), 0, Math.PI * 2);
        ctx.fill();
        ctx.globalAlpha = 1;
        continue;
      }
      const img = thumbFor(p, size * dpr);
      drawTile(ctx, img, x - half, y - half, size, border);
    }
    pump();
    if (map.hover) {
      const [x, y] = toScreen(map.hover);
      const s = Math.max(size, 14) + 6;
      ctx.strokeStyle = accent;
      ctx.lineWidth = 3;
      ctx.strokeRect(x - s / 2, y - s / 2, s, s);
    }
  }

  function drawTile(ctx, img, x, y, size, border) {
    if (img && img.naturalWidth) { // cover-fit into the square
      const r = Math.max(size / img.naturalWidth, size / img.naturalHeight);
      const sw = size / r, sh = size / r;
      ctx.drawImage(img, (img.naturalWidth - sw) / 2, (img.naturalHeight - sh) / 2, sw, sh, x, y, size, size);
    } else {
      ctx.fillStyle = border;
      ctx.fillRect(x, y, size, size);
    }
    ctx.strokeStyle = "rgba(255,255,255,.85)";
    ctx.lineWidth = 1;
    ctx.strokeRect(x + 0.5, y + 0.5, size - 1, size - 1);
  }

  function pointAt(mx, my) {
    if (!map.points) return null;
    const half = Math.max(tileSize(), 12) / 2;
    for (let i = map.points.length - 1; i >= 0; i--) {
      const [x, y] = toScreen(map.points[i]);
      if (Math.abs(mx - x) <= half && Math.abs(my - y) <= half) return map.points[i];
    }
    return null;
  }

  function zoomAt(mx, my, factor) {
    const s = Math.min(80, Math.max(0.4, map.scale * factor));
    const f = s / map.scale;
    map.tx = mx - (mx - map.tx) * f;
    map.ty = my - (my - map.ty) * f;
    map.scale = s;
    map.userMoved = true;
    drawMap();
  }

  function initMap() {
    const c = $("map");
    const local = (e) => { const r = c.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
    c.addEventListener("wheel", (e) => {
      e.preventDefault();
      const [mx, my] = local(e);
      zoomAt(mx, my, Math.exp(-e.deltaY * (e.deltaMode ? 0.05 : 0.0016)));
    }, { passive: false });
    c.addEventListener("pointerdown", (e) => {
      c.setPointerCapture(e.pointerId);
      map.pointers.set(e.pointerId, local(e));
      map.moved = 0;
      c.classList.add("dragging");
    });
    c.addEventListener("pointermove", (e) => {
      const [mx, my] = local(e);
      const prev = map.pointers.get(e.pointerId);
      if (!prev) { hoverAt(mx, my); return; }
      if (map.pointers.size === 2) { // pinch: zoom by the change of distance, around the midpoint
        const [other] = [...map.pointers.entries()].filter(([id]) => id !== e.pointerId).map(([, v]) => v);
        const d0 = Math.hypot(prev[0] - other[0], prev[1] - other[1]);
        const d1 = Math.hypot(mx - other[0], my - other[1]);
        if (d0 > 0) zoomAt((mx + other[0]) / 2, (my + other[1]) / 2, d1 / d0);
      } else {
        map.tx += mx - prev[0];
        map.ty += my - prev[1];
        map.userMoved = true;
        drawMap();
      }
      map.moved += Math.abs(mx - prev[0]) + Math.abs(my - prev[1]);
      map.pointers.set(e.pointerId, [mx, my]);
    });
    const up = (e) => {
      const wasClick = map.pointers.size === 1 && map.moved < 6;
      map.pointers.delete(e.pointerId);
      if (!map.pointers.size) c.classList.remove("dragging");
      if (wasClick && e.type === "pointerup") {
        const p = pointAt(...local(e));
        if (p) openViewer(p);
      }
    };
    c.addEventListener("pointerup", up);
    c.addEventListener("pointercancel", up);
    c.addEventListener("pointerleave", () => { map.hover = null; $("map-tip").hidden = true; drawMap(); });
    c.addEventListener("keydown", (e) => {
      const w = c.clientWidth / 2, hh = c.clientHeight / 2;
      const moves = { ArrowLeft: [60, 0], ArrowRight: [-60, 0], ArrowUp: [0, 60], ArrowDown: [0, -60] };
      if (e.key === "+" || e.key === "=") zoomAt(w, hh, 1.4);
      else if (e.key === "-") zoomAt(w, hh, 1 / 1.4);
      else if (e.key === "0") fitMap();
      else if (moves[e.key]) { map.tx += moves[e.key][0]; map.ty += moves[e.key][1]; drawMap(); }
      else return;
      e.preventDefault();
    });
    $("map-in").addEventListener("click", () => zoomAt(c.clientWidth / 2, c.clientHeight / 2, 1.5));
    $("map-out").addEventListener("click", () => zoomAt(c.clientWidth / 2, c.clientHeight / 2, 1 / 1.5));
    $("map-reset").addEventListener("click", fitMap);
    new ResizeObserver(resizeMap).observe(c);
  }

  function hoverAt(mx, my) {
    const p = pointAt(mx, my);
    const tip = $("map-tip");
    if (p !== map.hover) { map.hover = p; drawMap(); }
    tip.hidden = !p;
    if (p) {
      tip.textContent = p.name;
      tip.style.left = mx + "px";
      tip.style.top = my + "px";
    }
    $("map").style.cursor = p ? "pointer" : "";
  }

  // -- start --------------------------------------------------------------------------------
  function start() {
    $("token-dialog").addEventListener("cancel", (e) => e.preventDefault()); // nothing works without a token
    initSearch();
    initViewer();
    initMap();
    $("dupe-threshold").addEventListener("change", () => loadDupes(true));
    $("dupe-exact").addEventListener("change", () => loadDupes(true));
    window.addEventListener("hashchange", route);
    route();
    loadStatus().then(loadTags);
    if (!matchMedia("(pointer: coarse)").matches && $("view-search").hidden === false) $("q").focus();
  }

  // exposed for tests and the curious: the state of the page, read-only
  window.visdex = { state, map };
  start();
})();
