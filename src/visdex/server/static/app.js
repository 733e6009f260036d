/* visdex web UI: plain JS, no build step. Talks to the JSON API under api/ (see /docs). */
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  // With a token, the server signs this browser in with an HttpOnly cookie (POST api/login): no script
  // can read it, no image or link URL carries it. An older version kept the token in localStorage: drop it.
  localStorage.removeItem("visdex-token");

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
    const res = await fetch(path, { ...opts, credentials: "same-origin" });
    if (res.status === 401) {
      await askToken(false);
      return api(path, opts);
    }
    let body = null;
    try { body = await res.json(); } catch (_) { /* not JSON */ }
    if (!res.ok) throw new ApiError(res.status, (body && body.error) || res.statusText || "request failed");
    return body;
  }

  /** URL of a file endpoint (the login cookie goes with it: no token in the URL). */
  function fileUrl(url, params = {}) {
    const q = new URLSearchParams(params);
    const s = q.toString();
    return s ? url + "?" + s : url;
  }

  function askToken(wasWrong) {
    if (tokenPrompt) return tokenPrompt;
    const dlg = $("token-dialog");
    $("token-error").hidden = !wasWrong;
    $("token-error").textContent = "That token was not accepted.";
    tokenPrompt = new Promise((resolve) => {
      const done = async (e) => {
        e.preventDefault();
        const v = $("token-input").value.trim();
        if (!v) return;
        const fd = new FormData();
        fd.append("token", v);
        const res = await fetch("api/login", { method: "POST", body: fd, credentials: "same-origin" });
        if (!res.ok) { // asked again, with the reason
          $("token-error").hidden = false;
          $("token-input").select();
          return;
        }
        $("token-input").value = "";
        dlg.close();
        $("token-form").removeEventListener("submit", done);
        tokenPrompt = null;
        $("sign-out").hidden = false;
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
  const VIEWS = ["search", "browse", "dupes", "clusters", "map"];

  // -- URL state: "#view?field=value&...": every view, its query and filters, the viewer's image.
  // Reload restores it, Back / Forward walk it, a URL can be shared. (An uploaded image cannot be in a URL.)
  const nav = { restoring: false, applied: null, typing: false, view: "search" };

  function parseHash(hash = location.hash) {
    const [name, query] = hash.replace(/^#/, "").split(/\?(.*)/s);
    return { view: VIEWS.includes(name) ? name : "search", params: new URLSearchParams(query || "") };
  }

  const currentView = () => nav.view;

  /** The URL of the page as it is now (the view shown, its fields, the image open in the viewer). */
  function urlNow(view = currentView()) {
    const p = new URLSearchParams();
    if (view === "search") {
      if ($("q").value.trim()) p.set("q", $("q").value.trim());
      for (const m of state.mods) p.append(m.sign > 0 ? "plus" : "minus", m.text);
      if (state.image && state.image.kind === "id") { p.set("id", state.image.id); p.set("name", state.image.name || ""); }
      if (state.crop) p.set("crop", cropParam());
      if ($("where").value.trim()) p.set("where", $("where").value.trim());
      if ($("k").value !== "40") p.set("k", $("k").value);
      if ($("within").value) p.set("within", $("within").value);
      if (!$("collapse").checked) p.set("collapse", "0");
    } else if (view === "browse") {
      if ($("browse-where").value.trim()) p.set("where", $("browse-where").value.trim());
    } else if (view === "clusters") {
      if (clusters.open != null) p.set("id", clusters.open);
    } else if (view === "dupes") {
      if ($("dupe-threshold").value) p.set("threshold", $("dupe-threshold").value);
      if ($("dupe-exact").checked) p.set("exact", "1");
    }
    if ($("viewer").open && viewer.item) p.set("view", viewer.item.id);
    const qs = p.toString();
    return "#" + view + (qs ? "?" + qs : "");
  }

  /** Record the page's state in the URL: a new history entry, or (while typing, stepping) the same one. */
  function syncUrl(push = true) {
    if (nav.restoring) return;
    const url = urlNow();
    const typed = nav.typing; // typing makes one entry, which later keystrokes update
    nav.typing = false;
    if (url === location.hash) return;
    nav.applied = url;
    if (push && !(typed && history.state && history.state.typed)) history.pushState(typed ? { typed: true } : null, "", url);
    else history.replaceState(history.state, "", url);
  }

  function showView(view) {
    nav.view = view;
    for (const v of VIEWS) $("view-" + v).hidden = v !== view;
    for (const a of document.querySelectorAll(".tab")) {
      if (a.dataset.view === view) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
  }

  /** Make the page what the URL says (on load, Back / Forward, a clicked tab or a pasted link). */
  function applyUrl() {
    if (location.hash === nav.applied) return;
    nav.applied = location.hash;
    const { view, params } = parseHash();
    nav.restoring = true;
    try {
      showView(view);
      if (view === "search") restoreSearch(params);
      else if (view === "browse") restoreBrowse(params);
      else if (view === "dupes") {
        $("dupe-threshold").value = params.get("threshold") || "";
        $("dupe-exact").checked = params.get("exact") === "1";
        loadDupes();
      } else if (view === "clusters") {
        const cid = params.get("id");
        loadClusters(cid && /^\d+$/.test(cid) ? Number(cid) : null);
      } else if (view === "map") loadMap();
      const id = params.get("view");
      if (id && /^-?\d+$/.test(id)) {
        if (!$("viewer").open || !viewer.item || String(viewer.item.id) !== id) openViewer({ id: Number(id) }, viewerListFor(view, Number(id)));
      } else if ($("viewer").open) {
        $("viewer").close();
      }
    } finally {
      nav.restoring = false;
    }
  }

  function viewerListFor(view, id) {
    const list = view === "browse" ? browse.items : view === "search" ? state.hits : view === "clusters" ? clusters.items : [];
    const item = list.find((x) => x.id === id);
    return item ? [list, item] : [[], null];
  }

  function restoreSearch(p) {
    $("q").value = p.get("q") || "";
    state.mods = [...p.entries()].filter(([k]) => k === "plus" || k === "minus").map(([k, v]) => ({ sign: k === "plus" ? 1 : -1, text: v }));
    renderMods();
    $("where").value = p.get("where") || "";
    $("k").value = ["20", "40", "100", "200"].includes(p.get("k")) ? p.get("k") : "40";
    $("within").value = p.get("within") || "";
    $("collapse").checked = p.get("collapse") !== "0";
    updateFilterCount();
    const id = p.get("id");
    if (id && /^-?\d+$/.test(id)) {
      if (!state.image || state.image.kind !== "id" || String(state.image.id) !== id) {
        const name = p.get("name") || `image ${id}`;
        setImage({ kind: "id", id: Number(id), name, url: fileUrl(`api/files/${id}/thumb`, { size: 1024 }) });
      }
    } else if (state.image && state.image.kind === "id") setImage(null);
    const crop = (p.get("crop") || "").split(",").map(Number);
    state.crop = crop.length === 4 && crop.every((v) => v >= 0 && v <= 1) ? { x: crop[0], y: crop[1], w: crop[2], h: crop[3] } : null;
    if (state.image) renderQueryImage();
    runSearch();
  }

  /** A tab: that view as it was left (its fields are kept), as a new history entry. */
  function goView(view) {
    showView(view);
    syncUrl(true);
    if (view === "browse") loadBrowse();
    else if (view === "dupes") loadDupes();
    else if (view === "map") loadMap();
    else if (view === "clusters") loadClusters(clusters.open);
    else if (view === "search") runSearch();
  }

  async function loadStatus() {
    try {
      const st = await api("api/status");
      const n = st.kind === "catalog" ? st.items_ok : st.files_ok;
      const model = baseName(st.model || "no model yet");
      $("index-status").textContent = `${n.toLocaleString()} ${st.kind === "catalog" ? "items" : "images"} · ${model}` +
        (st.server && st.server.auth ? " · 🔒" : "");
      $("sign-out").hidden = !(st.server && st.server.auth);
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

  /** One page of the search described by ``fields`` (an upload goes as multipart). */
  function fetchSearch(fields, offset, signal) {
    const all = { ...fields, offset: offset ? String(offset) : "" };
    if (state.image && state.image.kind === "upload") {
      const fd = new FormData();
      fd.append("image", state.image.file, state.image.name || "image");
      for (const [k, v] of Object.entries(all)) if (v) fd.append(k, v);
      return api("api/search", { method: "POST", body: fd, signal });
    }
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(all)) if (v) p.set(k, v);
    if (state.image) p.set("id", state.image.id);
    return api("api/search?" + p, { signal });
  }

  async function runSearch() {
    searchSoon.cancel();
    const text = composedText();
    const fields = { q: text, k: $("k").value, where: $("where").value.trim(), within: $("within").value, crop: cropParam(),
      collapse: $("collapse").checked ? "true" : "" };
    const key = JSON.stringify([fields, state.image && state.image.seq]);
    if (key === state.sent) return; // already running or on screen
    if (state.ctrl) state.ctrl.abort();
    state.sent = key;
    if (currentView() === "search") syncUrl();
    state.page = null;
    $("results-more").hidden = true;
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
      res = await fetchSearch(fields, 0, ctrl.signal);
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
    // more pages: the API says where the next starts; a first page without one is full when it holds k
    const next = "next_offset" in res ? res.next_offset : res.count >= Number(fields.k) ? res.count : null;
    state.page = { fields, seq, next, loading: false };
    $("results-more").hidden = next == null;
  }
  const searchSoon = debounce(runSearch, 250);

  /** The next page of results under the ones shown ("Load more", or scrolling near the end). */
  async function loadMoreResults() {
    const page = state.page;
    if (!page || page.next == null || page.loading || page.seq !== state.seq) return;
    page.loading = true;
    $("results-more").textContent = "Loading…";
    try {
      const res = await fetchSearch(page.fields, page.next, state.ctrl ? state.ctrl.signal : undefined);
      if (page.seq !== state.seq) return;
      const best = Math.max(1e-6, ...state.hits.map((r) => r.score));
      state.hits.push(...res.results);
      $("results").append(...res.results.map((hit) => resultCard(hit, best)));
      page.next = res.next_offset;
      $("results-meta").textContent = resultsMeta(state.hits.length, res.took_ms);
    } catch (e) {
      if (e.name !== "AbortError") showAlert("search-alert", e.message);
    } finally {
      page.loading = false;
      $("results-more").textContent = "Load more";
      $("results-more").hidden = page.next == null;
    }
  }

  const resultsMeta = (n, took) => n
    ? `${n} result${n === 1 ? "" : "s"}` + (took != null ? ` · ${Math.round(took)} ms` : "")
    : "No results — try other words or fewer filters.";

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
    $("results-meta").textContent = resultsMeta(hits.length, res.took_ms);
  }

  /** "+N": the near-copies a tile stands for, shown after it (and hidden again) on demand. */
  function stackBadge(hit, best) {
    const n = hit.collapsed.length;
    const badge = h("button", { type: "button", class: "stack-badge", "aria-expanded": "false",
      "aria-label": `Show ${n} near-duplicate${n === 1 ? "" : "s"} of ${hit.name}`, title: `${n} near-identical`,
      onclick: () => {
        const card = badge.closest(".card");
        const open = badge.getAttribute("aria-expanded") === "true";
        badge.setAttribute("aria-expanded", String(!open));
        if (open) { for (const el of $("results").querySelectorAll(`[data-stack="${hit.id}"]`)) el.remove(); return; }
        const cards = hit.collapsed.map((m) => {
          const c = resultCard({ ...m, tags: [], path: m.name }, best);
          c.dataset.stack = hit.id;
          c.classList.add("stacked");
          return c;
        });
        card.after(...cards);
      } }, `+${n}`);
    return badge;
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
      hit.collapsed && hit.collapsed.length ? stackBadge(hit, best) : null,
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
    if (currentView() !== "search") showView("search");
    runSearch();
  }

  function moreLikeThis(hit) {
    setImage({ kind: "id", id: hit.id, name: hit.name, url: fileUrl(hit.thumb, { size: 1024 }) });
    $("q").value = "";
    state.mods = [];
    renderMods();
    if (currentView() !== "search") showView("search");
    window.scrollTo({ top: 0, behavior: "smooth" });
    runSearch();
    $("q").focus({ preventScroll: true }); // focus lands where the new query can be refined
  }

  function renderQueryImage() {
    const img = state.image;
    $("query-panel").hidden = !img;
    $("query-chip").hidden = !img;
    $("crop-box").hidden = !state.crop;
    $("crop-clear").disabled = !state.crop;
    const c = state.crop; // (also a crop restored from the URL)
    if (c) Object.assign($("crop-box").style, { left: c.x * 100 + "%", top: c.y * 100 + "%", width: c.w * 100 + "%", height: c.h * 100 + "%" });
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
    // by keyboard: arrows move the region (a centred half at first), Shift+arrows resize it, Enter searches it,
    // Escape goes back to the whole image
    let draft = null;
    const STEP = 0.05;
    const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
    const ARROWS = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    const pct = (v) => Math.round(v * 100) + "%";
    stage.addEventListener("keydown", (e) => {
      if (e.altKey || e.ctrlKey || e.metaKey) return;
      if (ARROWS[e.key]) {
        const [dx, dy] = ARROWS[e.key];
        const c = { ...(draft || state.crop || { x: 0.25, y: 0.25, w: 0.5, h: 0.5 }) };
        if (e.shiftKey) {
          c.w = clamp(c.w + dx * STEP, STEP, 1 - c.x);
          c.h = clamp(c.h + dy * STEP, STEP, 1 - c.y);
        } else {
          c.x = clamp(c.x + dx * STEP, 0, 1 - c.w);
          c.y = clamp(c.y + dy * STEP, 0, 1 - c.h);
        }
        draft = c;
        place(c);
        $("crop-clear").disabled = false;
        $("crop-status").textContent = `Region from ${pct(c.x)}, ${pct(c.y)}, ${pct(c.w)} wide, ${pct(c.h)} high. Enter searches it.`;
      } else if (e.key === "Enter" && draft) {
        state.crop = draft;
        draft = null;
        $("crop-status").textContent = "Searching this region.";
        runSearch();
      } else if (e.key === "Escape" && (draft || state.crop)) {
        draft = null;
        state.crop = null;
        renderQueryImage();
        $("crop-status").textContent = "The whole image.";
        runSearch();
      } else return;
      e.preventDefault();
      e.stopPropagation();
    });
    stage.addEventListener("blur", () => { if (draft) { draft = null; renderQueryImage(); } }); // not searched: dropped
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
  function toggleClause(w, clause) {
    const terms = andTerms(w.value.trim());
    if (terms && terms.includes(clause)) w.value = terms.filter((t) => t !== clause).join(" and ");
    else if (!w.value.includes(clause)) w.value = w.value.trim() ? `${w.value.trim()} and ${clause}` : clause;
  }

  function toggleWhere(clause) {
    toggleClause($("where"), clause);
    updateFilterCount();
    runSearch();
  }

  function markTagChips() {
    const terms = andTerms($("where").value.trim()) || [];
    for (const b of document.querySelectorAll("#tag-chips .tag")) b.setAttribute("aria-pressed", String(terms.includes(b.dataset.clause)));
  }

  function initSearch() {
    $("search-form").addEventListener("submit", (e) => { e.preventDefault(); runSearch(); });
    $("q").addEventListener("input", () => { nav.typing = true; searchSoon(); });
    $("collapse").addEventListener("change", runSearch);
    $("results-more").addEventListener("click", loadMoreResults);
    // Escape closes the filters panel and gives focus back to its button
    $("filters").addEventListener("keydown", (e) => {
      if (e.key !== "Escape") return;
      $("filters").hidden = true;
      $("filters-toggle").setAttribute("aria-expanded", "false");
      $("filters-toggle").focus();
    });
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
  const viewer = { list: [], index: -1, seq: 0, item: null };

  function stepViewer(delta) {
    const i = viewer.index + delta;
    if (viewer.index < 0 || i < 0 || i >= viewer.list.length) return;
    openViewer(viewer.list[i], viewer.list, true);
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
    // a swipe left / right on a touch screen steps to the next / previous image
    let touch = null;
    dlg.addEventListener("touchstart", (e) => {
      touch = e.touches.length === 1 ? { x: e.touches[0].clientX, y: e.touches[0].clientY } : null;
    }, { passive: true });
    dlg.addEventListener("touchcancel", () => { touch = null; }, { passive: true });
    dlg.addEventListener("touchend", (e) => {
      if (!touch || e.touches.length) return;
      const t = e.changedTouches[0];
      const dx = t.clientX - touch.x, dy = t.clientY - touch.y;
      touch = null;
      if (Math.abs(dx) >= 50 && Math.abs(dx) > 1.5 * Math.abs(dy)) stepViewer(dx < 0 ? 1 : -1);
    }, { passive: true });
    // a click on the backdrop lands on the dialog itself, outside its box
    dlg.addEventListener("click", (e) => {
      if (e.target !== dlg) return;
      const r = dlg.getBoundingClientRect();
      if (e.clientX < r.left || e.clientX > r.right || e.clientY < r.top || e.clientY > r.bottom) dlg.close();
    });
  }

  async function openViewer(item, list = [], stepping = false) {
    const dlg = $("viewer");
    const seq = ++viewer.seq;
    if (Array.isArray(list[0])) [list, item] = [list[0], list[1] || item]; // (list, item) found for a URL
    viewer.list = list;
    viewer.item = item;
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
    $("viewer-exif").replaceChildren();
    $("viewer-dupes-out").replaceChildren();
    $("viewer-similar").onclick = () => {
      const it = viewer.item;
      closeViewer(false); // the viewer's URL entry becomes the new search's: Back goes to where the viewer was opened
      moreLikeThis({ id: it.id, name: it.name, thumb: `api/files/${it.id}/thumb` });
    };
    $("viewer-dupes").onclick = () => findDuplicatesOf(viewer.item);
    const wasOpen = dlg.open;
    if (!wasOpen) dlg.showModal();
    if (!nav.restoring) {
      // opening is a history entry (Back closes it); stepping to the next image replaces it
      syncUrl(!wasOpen && !stepping);
    }
    loadExif(item.id, seq);
    try {
      const d = await api(`api/items/${item.id}`);
      if (seq !== viewer.seq) return; // stepped on to another image meanwhile
      if (!item.name) {
        item.name = d.name;
        $("viewer-name").textContent = d.name;
        $("viewer-img").alt = d.name;
      }
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

  const EXIF_LABELS = { make: "Make", model: "Camera", lens: "Lens", taken: "Taken", aperture: "Aperture",
    exposure: "Exposure", iso: "ISO", focal_length: "Focal length", focal_length_35mm: "35 mm equiv.", flash: "Flash",
    software: "Software", artist: "Artist", copyright: "Copyright", gps: "GPS" };

  async function loadExif(id, seq) {
    try {
      const { facts } = await api(`api/items/${id}/exif`);
      if (seq !== viewer.seq) return;
      const rows = Object.entries(EXIF_LABELS).filter(([k]) => facts[k] != null && !(k === "make" && String(facts.model || "").startsWith(facts[k])));
      $("viewer-exif").replaceChildren(...rows.flatMap(([k, label]) => {
        const v = k === "gps" ? `${facts.gps.lat.toFixed(5)}, ${facts.gps.lon.toFixed(5)}` : String(facts[k]);
        return [h("dt", {}, label), h("dd", {}, v)];
      }));
    } catch (_) { /* a catalog item or a file gone: no facts to show */ }
  }

  async function findDuplicatesOf(item) {
    const out = $("viewer-dupes-out");
    const seq = viewer.seq;
    out.replaceChildren(h("p", { class: "hint" }, "Looking for copies…"));
    try {
      const res = await api(`api/items/${item.id}/duplicates`);
      if (seq !== viewer.seq) return;
      if (!res.count) { out.replaceChildren(h("p", { class: "hint" }, "No copies of this image found.")); return; }
      out.replaceChildren(
        h("p", { class: "hint" }, `${res.count} cop${res.count === 1 ? "y" : "ies"} of this image:`),
        h("div", { class: "dupe-strip" }, res.duplicates.map((d) =>
          h("button", { type: "button", class: "strip-item", title: `${d.name} (${d.kind})`, "aria-label": `View ${d.name}, ${d.kind} copy`,
            onclick: () => openViewer(d, [], true) },
            h("img", { src: fileUrl(d.thumb, { size: 128 }), alt: "" }),
            h("span", { class: "kind " + d.kind }, d.kind)))));
    } catch (e) {
      if (seq === viewer.seq) out.replaceChildren(h("p", { class: "alert" }, e.message));
    }
  }

  /** Close the viewer (its image leaves the URL). */
  function closeViewer(back = true) {
    if (!back) {
      viewer.item = null;
      history.replaceState(history.state, "", (nav.applied = urlNow()));
    }
    if ($("viewer").open) $("viewer").close(); // the close handler below does the rest
  }

  function onViewerClosed() {
    viewer.item = null;
    viewer.seq++;
    if (nav.restoring) return;
    // the entry stays, without the image: history.back() here would race with whatever the user does next
    syncUrl(false);
  }

  // -- library: browse without a query -----------------------------------------------------
  const browse = { pageSize: 100, where: null, items: [], cursor: null, loading: false, seq: 0, total: 0, lastMonth: null, facetsFor: null };
  const monthName = (ym) => {
    const [y, m] = ym.split("-").map(Number);
    return new Date(Date.UTC(y, m - 1, 1)).toLocaleString("en", { month: "long", year: "numeric", timeZone: "UTC" });
  };
  // thumbnails load when their tile comes within one screen of the view, never further ahead
  const thumbLoader = "IntersectionObserver" in window ? new IntersectionObserver((entries) => {
    for (const e of entries) {
      if (!e.isIntersecting) continue;
      const img = e.target;
      img.src = img.dataset.src;
      thumbLoader.unobserve(img);
    }
  }, { rootMargin: "100% 0px 100% 0px" }) : null;

  function restoreBrowse(p) {
    $("browse-where").value = p.get("where") || "";
    loadBrowse();
  }

  /** (Re)load the library for the filter in the box, unless it is on screen already. */
  async function loadBrowse(force = false) {
    const where = $("browse-where").value.trim();
    updateBrowseCount();
    if (where === browse.where && !force) return;
    browse.where = where;
    const seq = ++browse.seq;
    Object.assign(browse, { items: [], cursor: null, loading: false, total: 0, lastMonth: null });
    $("library").replaceChildren();
    showAlert("browse-alert", "");
    $("browse-meta").textContent = "Loading…";
    await browsePage(seq);
    // the side panel after the first page: its counts (a scan of the whole library) never delay the grid
    if (seq === browse.seq) { loadFacets(where); loadFolders(where); }
  }

  async function browsePage(seq) {
    if (browse.loading || seq !== browse.seq) return;
    browse.loading = true;
    const p = new URLSearchParams({ limit: String(browse.pageSize) });
    if (browse.where) p.set("where", browse.where);
    if (browse.cursor) p.set("cursor", browse.cursor);
    try {
      const res = await api("api/browse?" + p);
      if (seq !== browse.seq) return;
      browse.total = res.total;
      browse.cursor = res.next_cursor;
      appendLibrary(res.items);
      $("browse-meta").textContent = res.total
        ? `${res.total.toLocaleString()} image${res.total === 1 ? "" : "s"} · newest first`
        : browse.where ? "Nothing matches this filter." : "Nothing indexed yet.";
    } catch (e) {
      if (seq !== browse.seq) return;
      browse.where = null; // the same filter runs again when asked
      $("browse-meta").textContent = "";
      $("library").replaceChildren();
      showAlert("browse-alert", e.message);
    } finally {
      if (seq === browse.seq) browse.loading = false;
    }
    if (seq === browse.seq && browse.cursor && nearEnd()) browsePage(seq); // still room below: fill it
  }

  /** Whether the end of the library is within a screen of the view (the next page should come). */
  function nearEnd() {
    const r = $("browse-sentinel").getBoundingClientRect();
    return !$("view-browse").hidden && r.top < window.innerHeight * 2;
  }

  function appendLibrary(items) {
    const start = browse.items.length;
    browse.items.push(...items);
    let grid = $("library").lastElementChild && $("library").lastElementChild.querySelector(".lib-grid");
    items.forEach((it, i) => {
      const month = it.date ? it.date.slice(0, 7) : "";
      if (month !== browse.lastMonth || !grid) {
        browse.lastMonth = month;
        const id = "month-" + (month || "undated") + "-" + (start + i);
        grid = h("div", { class: "lib-grid" });
        $("library").append(h("section", { class: "month", "aria-labelledby": id },
          h("h2", { id }, month ? monthName(month) : "Undated"), grid));
      }
      grid.append(libraryTile(it));
    });
  }

  function libraryTile(it, list = browse.items) {
    const img = h("img", { alt: "", decoding: "async", dataset: { src: fileUrl(it.thumb, { size: 256 }) } });
    if (thumbLoader) thumbLoader.observe(img); else img.src = img.dataset.src;
    const when = it.date ? (it.date_source === "taken" ? "taken " : "modified ") + it.date.slice(0, 10) : "";
    return h("button", { type: "button", class: "tile", dataset: { id: it.id }, title: `${it.name}${when ? " · " + when : ""}`,
      "aria-label": `${it.name}${when ? ", " + when : ""}`, onclick: () => openViewer(it, list) }, img);
  }

  const FACETS = [["folder", "Folder"], ["year", "Year"], ["month", "Month"], ["camera", "Camera"], ["format", "Format"], ["tag", "Tag"]];

  async function loadFacets(where) {
    try {
      const p = new URLSearchParams();
      if (where) p.set("where", where);
      const f = await api("api/facets?" + p);
      if (where !== browse.where) return;
      const terms = andTerms(where) || [];
      const tree = !$("folder-tree").hidden; // the folder tree stands for the folder facet
      $("facet-groups").replaceChildren(...FACETS.filter(([k]) => f[k] && f[k].length && !(tree && k === "folder")).map(([k, label]) =>
        h("section", { class: "facet", "aria-labelledby": "facet-" + k },
          h("h2", { id: "facet-" + k }, label),
          h("div", { class: "facet-values" }, f[k].slice(0, 12).map((v) =>
            h("button", { type: "button", class: "tag", "aria-pressed": String(terms.includes(v.where)), dataset: { clause: v.where },
              title: v.value, onclick: (e) => { toggleClause($("browse-where"), e.currentTarget.dataset.clause); applyBrowseWhere(); } },
              `${facetLabel(k, v.value)} · ${v.count.toLocaleString()}`))))));
    } catch (_) { /* the library itself shows the error */ }
  }

  // -- the folder tree: one folder at a time is the filter's folder clause; the tree itself stays whole
  const isFolderClause = (t) => /^folder\s*=/i.test(t);
  const folders = { key: null, open: new Set() };

  async function loadFolders(where) {
    const terms = andTerms(where);
    const rest = terms ? terms.filter((t) => !isFolderClause(t)).join(" and ") : where;
    const chosen = (terms || []).find(isFolderClause) || null;
    try {
      const key = rest;
      const tree = folders.key === key && folders.tree ? folders.tree : await api("api/folders?" + new URLSearchParams(rest ? { where: rest } : {}));
      if (where !== browse.where) return;
      folders.key = key;
      folders.tree = tree;
      $("folder-tree").hidden = !tree.root;
      if (!tree.root) return;
      if (!folders.open.size) folders.open.add(tree.root.path); // the top level shows its folders
      $("folder-list").replaceChildren(folderNode(tree.root, chosen));
      const facet = $("facet-folder"); // (the facets came first: the tree stands for their folder list)
      if (facet) facet.closest(".facet").remove();
    } catch (_) { /* the library itself shows the error */ }
  }

  function folderNode(node, chosen) {
    const selected = node.where === chosen;
    const below = chosen && chosen.length > node.where.length && chosen.startsWith(node.where.slice(0, -1) + "/");
    if (below) folders.open.add(node.path); // the chosen folder is never hidden in a closed one
    const open = folders.open.has(node.path);
    const kids = node.children.length ? h("ul", { class: "tree", hidden: !open }, node.children.map((c) => folderNode(c, chosen))) : null;
    const toggle = kids ? h("button", { type: "button", class: "tree-toggle", "aria-expanded": String(open),
      "aria-label": `Folders in ${node.name}`, onclick: (e) => {
        const now = !folders.open.has(node.path);
        if (now) folders.open.add(node.path); else folders.open.delete(node.path);
        e.currentTarget.setAttribute("aria-expanded", String(now));
        kids.hidden = !now;
      } }, h("span", { "aria-hidden": "true" }, "›")) : h("span", { class: "tree-spacer" });
    return h("li", {},
      h("div", { class: "tree-row" }, toggle,
        h("button", { type: "button", class: "tree-folder", "aria-pressed": String(selected), title: node.path,
          dataset: { path: node.path }, onclick: () => chooseFolder(node, selected) },
          h("span", { class: "tree-name" }, node.name), h("span", { class: "tree-count" }, node.count.toLocaleString()))),
      kids);
  }

  /** A folder of the tree becomes the filter's folder (replacing another); clicked again, it goes. */
  function chooseFolder(node, selected) {
    const w = $("browse-where");
    const terms = andTerms(w.value.trim());
    const rest = terms ? terms.filter((t) => !isFolderClause(t)) : [`(${w.value.trim()})`]; // (an "or": kept whole)
    w.value = (selected ? rest : [...rest, node.where]).join(" and ");
    applyBrowseWhere();
  }

  function facetLabel(field, value) {
    if (field === "month") return monthName(value);
    if (field === "folder") return value.split("/").filter(Boolean).slice(-2).join("/") || "/";
    if (field === "format") return value.toUpperCase();
    return value;
  }

  function updateBrowseCount() {
    const n = (andTerms($("browse-where").value.trim()) || [1]).length;
    $("browse-filter-count").hidden = !n;
    $("browse-filter-count").textContent = n;
  }

  function applyBrowseWhere() {
    loadBrowse().then(() => window.scrollTo({ top: 0 }));
    syncUrl(true);
  }

  // -- clusters: strips of the most central images; one cluster browsed in full ----------------
  const clusters = { list: null, loading: false, open: null, items: [], cursor: null, seq: 0 };

  async function loadClusters(open = null) {
    if (!clusters.list && !clusters.loading) {
      clusters.loading = true;
      $("clusters-meta").textContent = "Grouping images…";
      showAlert("clusters-alert", "");
      try {
        const res = await analysis("api/clusters", (pc) => { $("clusters-meta").textContent = "Grouping images…" + pc; });
        clusters.list = res.clusters;
        $("clusters-meta").textContent = `${res.count} clusters of similar images, largest first`;
        $("clusters").replaceChildren(...res.clusters.map(clusterStrip));
      } catch (e) {
        $("clusters-meta").textContent = "";
        showAlert("clusters-alert", e.message);
      } finally {
        clusters.loading = false;
      }
    }
    showCluster(open);
  }

  function clusterStrip(c) {
    const label = `Cluster ${c.id + 1}`;
    return h("section", { class: "cluster", "aria-labelledby": "cluster-" + c.id },
      h("header", {},
        h("h2", { id: "cluster-" + c.id }, label),
        h("span", { class: "hint" }, `${c.size.toLocaleString()} image${c.size === 1 ? "" : "s"}`),
        h("button", { type: "button", class: "chip-btn", "aria-label": `Browse all ${c.size} images of ${label}`,
          onclick: () => { showCluster(c.id); syncUrl(true); } }, "Browse all →")),
      h("div", { class: "cluster-strip" }, c.central.map(([id, path]) => {
        const item = { id, name: baseName(path), thumb: `api/files/${id}/thumb` };
        return h("button", { type: "button", class: "tile", "aria-label": `${item.name}, in ${label}`, title: item.name,
          onclick: () => openViewer(item, []) },
          h("img", { src: fileUrl(item.thumb, { size: 256 }), alt: "", loading: "lazy" }));
      })));
  }

  /** One cluster's images as a grid (newest first, a page at a time), or all the strips (null). */
  function showCluster(id) {
    const valid = id != null && clusters.list && clusters.list.some((c) => c.id === id);
    clusters.open = valid ? id : null;
    $("clusters").hidden = valid;
    $("cluster-open").hidden = !valid;
    if (!valid) return;
    const c = clusters.list.find((x) => x.id === id);
    $("cluster-title").textContent = `Cluster ${id + 1} · ${c.size.toLocaleString()} images`;
    $("cluster-grid").replaceChildren();
    Object.assign(clusters, { items: [], cursor: null, seq: clusters.seq + 1 });
    clusterPage(clusters.seq);
    window.scrollTo({ top: 0 });
  }

  async function clusterPage(seq) {
    const p = new URLSearchParams({ limit: "200" });
    if (clusters.cursor) p.set("cursor", clusters.cursor);
    $("cluster-more").hidden = true;
    try {
      const res = await analysis(`api/clusters/${clusters.open}?` + p, () => {}, () => seq === clusters.seq);
      if (!res || seq !== clusters.seq) return;
      clusters.items.push(...res.items);
      clusters.cursor = res.next_cursor;
      $("cluster-grid").append(...res.items.map((it) => libraryTile(it, clusters.items)));
      $("cluster-more").hidden = !res.next_cursor;
    } catch (e) {
      if (seq === clusters.seq) showAlert("clusters-alert", e.message);
    }
  }

  /** An analysis (map, duplicates, clusters): the server computes it in the background and answers 202
   * {status: "computing", progress} until it is ready; poll, showing the progress, until then (or until
   * wanted() says the answer is no longer wanted: null). */
  async function analysis(path, onProgress, wanted = () => true) {
    for (;;) {
      const res = await api(path);
      if (!res || res.status !== "computing") return res;
      if (!wanted()) return null;
      const pc = Math.round((res.progress || 0) * 100);
      onProgress(pc ? ` ${pc}%` : " (computing in the background)", res);
      await new Promise((r) => setTimeout(r, 400));
      if (!wanted()) return null;
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
      const res = await analysis("api/duplicates?" + p,
        (pc) => { $("dupes-meta").textContent = "Looking for duplicates…" + pc; }, () => key === dupesKey);
      if (!res || key !== dupesKey) return;
      // a file can sit in a copy group and a similar-shot group: count each once; only removable members could go
      const ids = new Set(), gone = new Set();
      for (const g of res.groups) for (const m of g.members) { ids.add(m.id); if (m.removable) gone.add(m.id); }
      const files = ids.size;
      $("dupes-meta").textContent = res.count
        ? `${res.count} group${res.count === 1 ? "" : "s"}, ${files} files — ${gone.size} could go`
        : "No duplicates found.";
      const members = res.groups.flatMap((g) => g.members); // the viewer's arrows walk every group
      $("dupes").replaceChildren(...res.groups.map((g, i) => dupeGroup(g, i, members)));
      $("dupes-apply-all").hidden = !res.groups.some((g) => movable(g).length);
    } catch (e) {
      dupesKey = null;
      $("dupes-meta").textContent = "";
      showAlert("dupes-alert", e.message);
    }
  }

  const GROUP_KINDS = { exact: "exact copies", copy: "copies", "similar shot": "similar shots", near: "near duplicates" };
  const kindClass = (k) => String(k || "near").replace(/\s+/g, "-");

  /** The members a move would take: those the API offers for removal, else every one but the keeper. */
  const movable = (g) => g.members.filter((m) => m.id !== g.keeper_id && (m.removable === undefined || m.removable));

  // -- moving duplicates to the trash (routes of api/trash): preview, confirm, apply, undo ---------------
  const postJson = (path, body) => api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

  async function moveToTrash(body, what) {
    showAlert("dupes-alert", "");
    try {
      const plan = await postJson("api/trash/preview", body);
      if (!plan.files) { $("trash-status").textContent = "Nothing to move."; return; }
      const ok = window.confirm(`Move ${plan.files} file${plan.files === 1 ? "" : "s"} (${fmtBytes(plan.bytes)}) ${what} to ${plan.trash}?\n` +
        "Nothing is deleted: Undo puts them back.");
      if (!ok) return;
      const done = await postJson("api/trash/apply", body);
      $("trash-status").textContent = `Moved ${done.files} file${done.files === 1 ? "" : "s"} (${fmtBytes(done.bytes)}) to the trash.`;
      $("dupes-undo").hidden = false;
      loadDupes(true);
    } catch (e) {
      showAlert("dupes-alert", e.message);
    }
  }

  async function undoTrash() {
    showAlert("dupes-alert", "");
    try {
      const done = await postJson("api/trash/undo", {});
      $("trash-status").textContent = `Put back ${done.files} file${done.files === 1 ? "" : "s"}.`;
      $("dupes-undo").hidden = true;
      loadDupes(true);
    } catch (e) {
      showAlert("dupes-alert", e.message);
    }
  }

  function dupeGroup(g, i, all) {
    const move = movable(g);
    return h("section", { class: "dupe-group", "aria-label": `Group ${i + 1}` },
      h("header", {}, `Group ${i + 1}`,
        h("span", { class: "kind " + kindClass(g.kind) }, GROUP_KINDS[g.kind] || "near duplicates"),
        h("span", { class: "hint" }, `${g.members.length} files`),
        move.length ? h("button", { type: "button", class: "chip-btn group-move",
          onclick: () => moveToTrash({ groups: [{ keeper_id: g.keeper_id, move_ids: move.map((m) => m.id) }] }, `of group ${i + 1}`) },
          `Keep the marked one, move ${move.length} to trash…`) : null),
      h("div", { class: "dupe-members" }, g.members.map((m) => {
        const keeper = m.id === g.keeper_id;
        const when = m.taken_at ? "taken " + m.taken_at.slice(0, 10) : "modified " + new Date(m.mtime * 1000).toISOString().slice(0, 10);
        return h("figure", { class: "member" + (keeper ? " keeper" : ""), style: null },
          h("button", { type: "button", "aria-label": keeper ? `Keep: view ${m.name}` : `View ${m.name}`, onclick: () => openViewer(m, all) },
            h("img", { src: fileUrl(m.thumb, { size: 256 }), alt: m.name, loading: "lazy" }),
            keeper ? h("span", { class: "keep-badge" }, "Keep") : null),
          h("figcaption", { class: "info" },
            h("b", { title: m.path }, m.name),
            h("span", {}, `${m.width || "?"} × ${m.height || "?"} · ${fmtBytes(m.size)}`),
            h("span", {}, when),
            keeper ? h("span", {}, "suggested keeper") : h("span", {}, `similarity ${Number(m.score).toFixed(3)}`),
            // how it relates to the keeper, where the API says (exact / copy / similar shot)
            m.kind && !keeper ? h("span", { class: "kind " + kindClass(m.kind) }, m.kind) : null));
      })));
  }

  // -- map ----------------------------------------------------------------------------------
  const map = { points: null, loading: false, scale: 1, tx: 0, ty: 0, Sx: 1, Sy: 1, thumbs: new Map(), active: 0, queue: [],
    hover: null, raf: 0, pointers: new Map(), moved: 0, selectMode: false, box: null, selected: [],
    tool: "pan", lasso: null, focus: null, colourOf: null, legend: [], colourBy: "", highlighted: new Set() };
  // distinct in light and dark (the tiles get a frame of their group's colour; dots are filled with it)
  const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
    "#fabed4", "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000", "#aaffc3", "#808000"];
  const MAX_LOADS = 6;

  async function loadMap() {
    resizeMap();
    if (map.points) { mapMeta(); drawMap(); return; } // the search may have changed since: its results are marked
    if (map.loading) return;
    map.loading = true;
    $("map-meta").textContent = "Placing images…";
    showAlert("map-alert", "");
    try {
      const res = await analysis("api/map", (pc, pending) => {
        $("map-meta").textContent = "Placing images…" + pc;
        showSteps(pending);
      });
      map.points = res.points;
      map.method = res.method;
      mapMeta();
      fitMap();
      const c = $("map"); // focused before the points came (a #map link focuses it): the keyboard's image now
      if (document.activeElement === c && !map.focus) focusPoint(nearestTo(c.clientWidth / 2, c.clientHeight / 2), false);
    } catch (e) {
      $("map-meta").textContent = "";
      showAlert("map-alert", e.message);
    } finally {
      map.loading = false;
      $("map-steps").hidden = true;
    }
  }

  /** The background's steps for the map (202 {steps, step}): done, running (with the progress), to come. */
  function showSteps(pending) {
    const steps = (pending && pending.steps) || [];
    const list = $("map-steps");
    list.hidden = !steps.length;
    if (!steps.length) return;
    const pc = Math.round((pending.progress || 0) * 100);
    list.replaceChildren(...steps.map((name, i) => {
      const st = i < pending.step ? "done" : i === pending.step ? "current" : "todo";
      return h("li", { class: st, "aria-current": st === "current" ? "step" : null },
        h("span", { class: "mark", "aria-hidden": "true" }, st === "done" ? "✓" : st === "current" ? "●" : "○"),
        name + (st === "current" ? "…" : ""),
        st === "done" ? h("span", { class: "sr-only" }, " (done)") : null);
    }), h("li", { class: "total" }, `Step ${pending.step + 1} of ${steps.length} · ${pc}%`));
    $("map-meta").textContent = `Placing images… step ${pending.step + 1} of ${steps.length}: ${steps[pending.step]}`;
  }

  /** The line under the map: what it shows, and how many of the current search's results are marked on it. */
  function mapMeta() {
    if (!map.points) return;
    const ids = new Set(map.points.map((p) => p.id));
    map.highlighted = new Set(state.hits.map((hit) => hit.id).filter((id) => ids.has(id)));
    const n = map.highlighted.size;
    $("map-meta").textContent = `${map.points.length.toLocaleString()} images · ${(map.method || "").toUpperCase()} · similar images lie close together` +
      (n ? ` · ${n} search result${n === 1 ? "" : "s"} ringed, the rest dimmed` : "");
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
    const hits = map.highlighted;
    const muted = css.getPropertyValue("--muted").trim() || "#888";
    map.queue.length = 0; // re-queued below for what is visible now
    for (const p of map.points) {
      const [x, y] = toScreen(p);
      if (x < -half || y < -half || x > w + half || y > hgt + half) continue;
      const colour = map.colourOf ? map.colourOf.get(p.id) : null;
      const dim = hits.size && !hits.has(p.id); // a search's results stand out: the rest fade
      if (size < 14) {
        ctx.fillStyle = map.colourOf ? colour || muted : accent;
        ctx.globalAlpha = dim ? 0.25 : 0.8;
        ctx.beginPath();
        ctx.arc(x, y, Math.max(2, half), 0, Math.PI * 2);
        ctx.fill();
        ctx.globalAlpha = 1;
        continue;
      }
      const img = thumbFor(p, size * dpr);
      if (dim) ctx.globalAlpha = 0.35;
      drawTile(ctx, img, x - half, y - half, size, border);
      if (colour) {
        ctx.strokeStyle = colour;
        ctx.lineWidth = Math.max(2, size / 14);
        ctx.strokeRect(x - half + ctx.lineWidth / 2, y - half + ctx.lineWidth / 2, size - ctx.lineWidth, size - ctx.lineWidth);
      }
      ctx.globalAlpha = 1;
    }
    pump();
    // the current search's results, ringed: where they lie among the rest
    const picked = new Set(map.selected.map((p) => p.id));
    if (hits.size || picked.size) {
      ctx.lineWidth = 2.5;
      for (const p of map.points) {
        if (!hits.has(p.id) && !picked.has(p.id)) continue;
        const [x, y] = toScreen(p);
        if (x < -half || y < -half || x > w + half || y > hgt + half) continue;
        const s = Math.max(size, 10) + 4;
        ctx.strokeStyle = hits.has(p.id) ? accent : css.getPropertyValue("--accent-2").trim() || "#0ea5b7";
        ctx.strokeRect(x - s / 2, y - s / 2, s, s);
      }
    }
    if (map.box) {
      const { x0, y0, x1, y1 } = map.box;
      ctx.setLineDash([6, 4]);
      ctx.strokeStyle = accent;
      ctx.lineWidth = 2;
      ctx.strokeRect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
      ctx.fillStyle = accent;
      ctx.globalAlpha = 0.08;
      ctx.fillRect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
      ctx.globalAlpha = 1;
      ctx.setLineDash([]);
    }
    if (map.lasso && map.lasso.length > 1) {
      ctx.setLineDash([6, 4]);
      ctx.strokeStyle = accent;
      ctx.lineWidth = 2;
      ctx.beginPath();
      map.lasso.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      ctx.closePath();
      ctx.stroke();
      ctx.fillStyle = accent;
      ctx.globalAlpha = 0.08;
      ctx.fill();
      ctx.globalAlpha = 1;
      ctx.setLineDash([]);
    }
    for (const p of [map.hover, c.matches(":focus-visible") ? map.focus : null]) { // (no ring after a click)
      if (!p) continue;
      const [x, y] = toScreen(p);
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
      if (map.tool === "lasso" && !e.shiftKey) { // a free shape drawn around the images wanted
        map.lasso = [local(e)];
        return;
      }
      if (e.shiftKey || map.selectMode) { // a box: the images inside it are shown under the map
        const [mx, my] = local(e);
        map.box = { x0: mx, y0: my, x1: mx, y1: my };
        return;
      }
      map.pointers.set(e.pointerId, local(e));
      map.moved = 0;
      c.classList.add("dragging");
    });
    c.addEventListener("pointermove", (e) => {
      const [mx, my] = local(e);
      if (map.box) { Object.assign(map.box, { x1: mx, y1: my }); drawMap(); return; }
      if (map.lasso) {
        const [lx, ly] = map.lasso[map.lasso.length - 1];
        if (Math.abs(mx - lx) + Math.abs(my - ly) >= 3) { map.lasso.push([mx, my]); drawMap(); }
        return;
      }
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
      if (map.lasso) {
        const shape = map.lasso;
        map.lasso = null;
        if (e.type === "pointerup" && shape.length >= 3) selectLasso(shape);
        else if (e.type === "pointerup") { const p = pointAt(...local(e)); if (p) openViewer(p); } // a click opens
        drawMap();
        return;
      }
      if (map.box) {
        const b = map.box;
        map.box = null;
        if (e.type === "pointerup" && Math.abs(b.x1 - b.x0) > 4 && Math.abs(b.y1 - b.y0) > 4) selectBox(b);
        drawMap();
        return;
      }
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
    // the keyboard: a focused image (ringed, its name read out); arrows go to the nearest image that way,
    // Enter opens it, Shift+arrows pan
    c.addEventListener("focus", () => { if (map.points && !map.focus) focusPoint(nearestTo(c.clientWidth / 2, c.clientHeight / 2), false); else drawMap(); });
    c.addEventListener("blur", drawMap);
    c.addEventListener("keydown", (e) => {
      const w = c.clientWidth / 2, hh = c.clientHeight / 2;
      const moves = { ArrowLeft: [60, 0], ArrowRight: [-60, 0], ArrowUp: [0, 60], ArrowDown: [0, -60] };
      if (e.key === "+" || e.key === "=") zoomAt(w, hh, 1.4);
      else if (e.key === "-") zoomAt(w, hh, 1 / 1.4);
      else if (e.key === "0") fitMap();
      else if (moves[e.key] && (e.shiftKey || !map.points)) { map.tx += moves[e.key][0]; map.ty += moves[e.key][1]; map.userMoved = true; drawMap(); }
      else if (moves[e.key]) focusPoint(nextPoint(-Math.sign(moves[e.key][0]), -Math.sign(moves[e.key][1])) || map.focus);
      else if ((e.key === "Enter" || e.key === " ") && map.focus) openViewer(map.focus, map.points);
      else return;
      e.preventDefault();
    });
    $("map-in").addEventListener("click", () => zoomAt(c.clientWidth / 2, c.clientHeight / 2, 1.5));
    $("map-out").addEventListener("click", () => zoomAt(c.clientWidth / 2, c.clientHeight / 2, 1 / 1.5));
    $("map-reset").addEventListener("click", fitMap);
    $("map-select").addEventListener("click", () => setTool(map.tool === "box" ? "pan" : "box"));
    $("map-lasso").addEventListener("click", () => setTool(map.tool === "lasso" ? "pan" : "lasso"));
    $("map-colour").addEventListener("change", () => colourMap($("map-colour").value));
    $("map-selection-clear").addEventListener("click", () => selectPoints([]));
    new ResizeObserver(resizeMap).observe(c);
  }

  /** A map tool: "pan" (drag moves the map), "box" or "lasso" (drag selects). */
  function setTool(tool) {
    map.tool = tool;
    map.selectMode = tool === "box";
    $("map-select").setAttribute("aria-pressed", String(tool === "box"));
    $("map-lasso").setAttribute("aria-pressed", String(tool === "lasso"));
    $("map").classList.toggle("selecting", tool !== "pan");
  }

  /** The images inside a shape drawn on the map (screen coordinates; even-odd rule), shown under it. */
  function selectLasso(shape) {
    const inside = (x, y) => {
      let hit = false;
      for (let i = 0, j = shape.length - 1; i < shape.length; j = i++) {
        const [xi, yi] = shape[i], [xj, yj] = shape[j];
        if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) hit = !hit;
      }
      return hit;
    };
    selectPoints(map.points.filter((p) => inside(...toScreen(p))));
  }

  function nearestTo(mx, my) {
    let best = null, bd = Infinity;
    for (const p of map.points || []) {
      const [x, y] = toScreen(p);
      const d = (x - mx) ** 2 + (y - my) ** 2;
      if (d < bd) { bd = d; best = p; }
    }
    return best;
  }

  /** The nearest image from the focused one in direction (dx, dy): within 60 degrees of it, nearer first. */
  function nextPoint(dx, dy) {
    if (!map.focus) return nearestTo($("map").clientWidth / 2, $("map").clientHeight / 2);
    const [fx, fy] = toScreen(map.focus);
    let best = null, bd = Infinity;
    for (const p of map.points) {
      if (p === map.focus) continue;
      const [x, y] = toScreen(p);
      const along = (x - fx) * dx + (y - fy) * dy;
      const dist = Math.hypot(x - fx, y - fy);
      if (along <= 0 || along < dist * 0.5) continue; // cos 60
      const score = dist * (2 - along / dist); // straight ahead beats a nearer image off to the side
      if (score < bd) { bd = score; best = p; }
    }
    return best;
  }

  function focusPoint(p, follow = true) {
    map.focus = p;
    if (!p) return;
    const c = $("map");
    const [x, y] = toScreen(p);
    const m = tileSize();
    if (follow && (x < m || y < m || x > c.clientWidth - m || y > c.clientHeight - m)) { // off screen: bring it to the middle
      map.tx += c.clientWidth / 2 - x;
      map.ty += c.clientHeight / 2 - y;
      map.userMoved = true;
    }
    const i = map.points.indexOf(p);
    $("map-focus").textContent = `${p.name}, image ${i + 1} of ${map.points.length}. Enter opens it.`;
    drawMap();
  }

  /** Colour the images by their cluster or their best tag (null: no colours), with a legend. */
  async function colourMap(by) {
    map.colourBy = by;
    map.colourOf = null;
    map.legend = [];
    renderLegend();
    drawMap();
    if (!by) return;
    try {
      const colourOf = new Map();
      let legend = [];
      if (by === "cluster") {
        const res = await analysis("api/clusters", (pc) => { $("map-meta").textContent = "Grouping images…" + pc; }, () => map.colourBy === by);
        if (!res) return;
        res.clusters.forEach((cl, i) => { for (const id of cl.member_ids) colourOf.set(id, PALETTE[i % PALETTE.length]); });
        legend = res.clusters.map((cl, i) => ({ label: `Cluster ${cl.id + 1}`, count: cl.size, colour: PALETTE[i % PALETTE.length] }));
      } else {
        const res = await api("api/tags/best");
        for (const [id, i] of res.items) if (i < PALETTE.length) colourOf.set(id, PALETTE[i]);
        legend = res.labels.slice(0, PALETTE.length).map((t, i) => ({ label: t.label, count: t.count, colour: PALETTE[i] }));
        if (!legend.length) legend = [{ label: "no tags yet (visdex tag)", count: 0, colour: null }];
      }
      if (map.colourBy !== by) return;
      map.colourOf = colourOf;
      map.legend = legend;
      renderLegend();
      mapMeta();
      drawMap();
    } catch (e) {
      showAlert("map-alert", e.message);
    }
  }

  function renderLegend() {
    const el = $("map-legend");
    el.hidden = !map.legend.length;
    el.replaceChildren(...map.legend.slice(0, 12).map((g) => h("li", {},
      g.colour ? h("span", { class: "swatch", style: null, dataset: { colour: g.colour } }) : null,
      `${g.label}` + (g.count ? ` · ${g.count.toLocaleString()}` : ""))));
    for (const sw of el.querySelectorAll(".swatch")) sw.style.background = sw.dataset.colour;
  }

  /** The images inside a box drawn on the map (screen coordinates), shown as a grid under it. */
  function selectBox(b) {
    const [xa, xb] = [Math.min(b.x0, b.x1), Math.max(b.x0, b.x1)];
    const [ya, yb] = [Math.min(b.y0, b.y1), Math.max(b.y0, b.y1)];
    selectPoints(map.points.filter((p) => { const [x, y] = toScreen(p); return x >= xa && x <= xb && y >= ya && y <= yb; }));
  }

  function selectPoints(points) {
    map.selected = points;
    const n = points.length;
    $("map-selection").hidden = !n;
    $("map-selection-title").textContent = `${n.toLocaleString()} image${n === 1 ? "" : "s"} selected`;
    const items = points.map((p) => ({ ...p, date: null }));
    $("map-selection-grid").replaceChildren(...items.map((it) => libraryTile(it, items)));
    if (n) $("map-selection").scrollIntoView({ behavior: "smooth", block: "nearest" });
    drawMap();
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
  function initBrowse() {
    const w = $("browse-where");
    w.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); applyBrowseWhere(); } });
    w.addEventListener("change", applyBrowseWhere);
    if (matchMedia("(max-width: 720px)").matches) $("facet-panel").open = false; // a phone: the grid first
    const more = () => { if (browse.cursor && !browse.loading) browsePage(browse.seq); };
    if ("IntersectionObserver" in window) {
      new IntersectionObserver((es) => { if (es.some((e) => e.isIntersecting)) more(); }, { rootMargin: "0px 0px 100% 0px" })
        .observe($("browse-sentinel"));
      // results: the next page comes once the reader scrolls near the end (a short first page stays as asked)
      new IntersectionObserver((es) => { if (scrollY > 0 && es.some((e) => e.isIntersecting)) loadMoreResults(); },
        { rootMargin: "0px 0px 50% 0px" })
        .observe($("results-more"));
    }
  }

  function start() {
    $("token-dialog").addEventListener("cancel", (e) => e.preventDefault()); // nothing works without a token
    initSearch();
    initViewer();
    initMap();
    initBrowse();
    $("viewer").addEventListener("close", onViewerClosed);
    $("dupe-threshold").addEventListener("change", () => { loadDupes(true); syncUrl(true); });
    $("sign-out").addEventListener("click", async () => {
      await fetch("api/logout", { method: "POST", credentials: "same-origin" });
      location.reload(); // a fresh page: nothing of the session stays on screen
    });
    $("dupes-apply-all").addEventListener("click", () => moveToTrash({ suggested: true,
      threshold: $("dupe-threshold").value ? Number($("dupe-threshold").value) : null, exact_only: $("dupe-exact").checked }, "of every group"));
    $("dupes-undo").addEventListener("click", undoTrash);
    $("cluster-back").addEventListener("click", () => { showCluster(null); syncUrl(true); });
    $("cluster-more").addEventListener("click", () => clusterPage(clusters.seq));
    $("dupe-exact").addEventListener("change", () => { loadDupes(true); syncUrl(true); });
    for (const a of document.querySelectorAll(".tab, .brand")) {
      a.addEventListener("click", (e) => {
        if (e.ctrlKey || e.metaKey || e.shiftKey || e.button) return; // a new tab: the plain link
        e.preventDefault();
        goView(parseHash(a.getAttribute("href")).view);
      });
    }
    window.addEventListener("popstate", applyUrl);
    window.addEventListener("hashchange", applyUrl);
    applyUrl();
    loadStatus().then(loadTags);
    if (!matchMedia("(pointer: coarse)").matches && $("view-search").hidden === false) $("q").focus();
  }

  // exposed for tests and the curious: the state of the page, read-only
  window.visdex = { state, map, browse, viewer, clusters };
  start();
})();
