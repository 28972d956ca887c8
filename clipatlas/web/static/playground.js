// The intervention playground. Sliders and buttons only edit the recipe held in `state`;
// the model runs when Generate is pressed, as a queued job whose progress is polled.
// Every label is inserted with textContent (labels may come from an LLM).
"use strict";
(function () {
  const $ = id => document.getElementById(id);
  const root = $("playground");
  const state = { image: null, transfer: null, features: [], edits: [], history: [] };
  // The strength an added feature starts at (x its max activation), from the SAE's measured steering success.
  const DEFAULT_STRENGTH = Number(root.dataset.defaultStrength) || 1.0;
  const SLIDER_RANGE = Math.max(2.0, 2 * DEFAULT_STRENGTH);  // sliders reach this many times the max activation
  const SHOWN_CANDIDATES = 8;

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    for (const child of children) node.append(child);
    return node;
  }
  async function api(url, options) {
    const response = await fetch(url, Object.assign({ credentials: "same-origin" }, options));
    const body = await response.json().catch(() => ({ detail: response.statusText }));
    if (!response.ok) throw new Error(typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail));
    return body;
  }
  function say(text) { $("job-status").textContent = text; }
  // A feature's name as the atlas pages show it (fragments.py feature_name): its headline label, else
  // "unnamed" with the server's reason (`label_note`) as tooltip and, apart, its best guess (a label that
  // beats its baseline and chance with p <= 0.1 but not <= 0.05) with where its score came from. Never a guess as a name.
  function featureLink(f) {
    const link = el("a", { href: "/features/" + f.feature, className: "feature-link", target: "_blank" });
    link.append(el("span", { className: "fid", textContent: "#" + f.feature }), " ");
    if (f.label) { link.append(el("span", { className: "label", textContent: f.label })); return link; }
    link.append("· ", el("span", { className: "unnamed", textContent: "unnamed", title: f.label_note || "unlabelled" }));
    const g = f.best_guess;
    if (g) {
      const p = g.evidence_p === null ? "" : ", p " + Number(g.evidence_p.toPrecision(3)) + " > " + g.naming_p;
      const score = g.metric.toUpperCase() + " " + g.value.toFixed(2) + " vs " + g.baseline.toFixed(2) + " baseline"
        + p + ", " + g.n + " images, " + g.judge + " judge";
      link.append(" — ", el("span", { className: "best-guess" }, "best guess “",
        el("span", { className: "guess-text", textContent: g.text }), "” ",
        el("span", { className: "guess-score muted", textContent: "(" + score + ")" })));
    }
    return link;
  }

  // ---- the input image --------------------------------------------------------------------
  async function chooseStored(imageId) {
    const body = await api("/api/images/" + encodeURIComponent(imageId));
    setImage({ ref: imageId, url: "/thumbs/" + encodeURIComponent(imageId) }, body.features);
    for (const pick of document.querySelectorAll(".pick")) pick.classList.toggle("chosen", pick.dataset.image === imageId);
  }
  async function upload(file) {
    const form = new FormData();
    form.append("file", file);
    return api("/api/uploads", { method: "POST", body: form });
  }
  function setImage(image, features) {
    state.image = image;
    state.edits = [];  // edits name features of the image they were made on; a new image starts clean
    state.features = features.map(f => Object.assign({}, f, { value: f.activation }));
    $("before").src = image.url; $("after").removeAttribute("src"); $("candidates-box").hidden = true;
    renderFeatures(); renderEdits(); $("generate").disabled = false;
  }

  // ---- features and edits -----------------------------------------------------------------
  function renderFeatures() {
    const box = $("features");
    box.replaceChildren();
    if (!state.features.length) { box.append(el("p", { className: "muted", textContent: "No active features." })); return; }
    for (const f of state.features) {
      const top = Math.max(f.max_activation * SLIDER_RANGE, f.activation, 1e-6);
      const value = el("span", { className: "value", textContent: f.value.toFixed(2) });
      const slider = el("input", { type: "range", min: 0, max: top, step: top / 200, value: f.value });
      slider.setAttribute("aria-label", "strength of feature " + f.feature);
      slider.dataset.feature = f.feature;
      slider.addEventListener("input", () => { value.textContent = Number(slider.value).toFixed(2); });
      slider.addEventListener("change", () => setEdit(f, Number(slider.value)));
      const ban = el("button", { type: "button", className: "ban", textContent: "×", title: "ban this feature" });
      ban.addEventListener("click", () => banFeature(f));
      const row = el("div", { className: "slider-row" + (f.value !== f.activation ? " changed" : "") },
        featureLink(f), slider, value, ban);
      box.append(row);
    }
  }
  function setEdit(f, value) {
    f.value = value;
    state.edits = state.edits.filter(edit => edit.feature !== f.feature);
    state.edits.push({ op: "set", feature: f.feature, value: Number(value.toFixed(4)) });
    renderFeatures(); renderEdits();
  }
  function banFeature(f) {
    f.value = 0;
    state.edits = state.edits.filter(edit => edit.feature !== f.feature);
    state.edits.push({ op: "ban", feature: f.feature });
    renderFeatures(); renderEdits();
  }
  function removeEdit(index) {
    const [edit] = state.edits.splice(index, 1);
    const f = state.features.find(item => item.feature === edit.feature);
    if (f) f.value = f.activation;
    renderFeatures(); renderEdits();
  }
  function describe(edit) {
    if (edit.op === "set") return "set #" + edit.feature + " = " + edit.value;
    if (edit.op === "ban") return "ban #" + edit.feature;
    if (edit.op === "transfer") return "transfer all features from the second image";
    return edit.op;
  }
  function renderEdits() {
    const list = $("edits");
    list.replaceChildren();
    state.edits.forEach((edit, index) => {
      const remove = el("button", { type: "button", textContent: "remove" });
      remove.addEventListener("click", () => removeEdit(index));
      list.append(el("li", {}, describe(edit), remove));
    });
    if (!state.edits.length) list.append(el("li", { className: "muted", textContent: "no edits: Generate shows the image as the decoder sees it" }));
    updateShare();
  }
  async function addFeature(feature) {
    if (state.features.some(f => f.feature === feature)) return;
    const brief = await api("/api/features/" + feature + "/brief");
    const f = Object.assign({}, brief, { feature, activation: 0, value: 0 });
    state.features.unshift(f);
    setEdit(f, DEFAULT_STRENGTH * brief.max_activation);
  }

  let searchTimer = null;
  $("feature-search").addEventListener("input", event => {
    clearTimeout(searchTimer);
    const query = event.target.value.trim();
    searchTimer = setTimeout(async () => {
      const list = $("feature-results");
      list.replaceChildren();
      if (!query) return;
      const body = await api("/api/search?q=" + encodeURIComponent(query));
      const hits = body.results.slice(0, 12);
      if (body.exact_feature !== null && !hits.some(h => h.feature === body.exact_feature)) {
        hits.unshift(await api("/api/features/" + body.exact_feature + "/brief"));  // found by its number: its own name
      }
      for (const hit of hits) {
        const add = el("button", { type: "button", textContent: "add" });
        add.dataset.feature = hit.feature;
        add.addEventListener("click", () => { addFeature(hit.feature).catch(e => say(e.message)); list.replaceChildren(); });
        list.append(el("li", {}, featureLink(hit), " ", add));
      }
      if (!hits.length) list.append(el("li", { className: "muted", textContent: "no match" }));
    }, 200);
  });

  // ---- recipe, sharing, generation -----------------------------------------------------------
  function recipe() {
    const edits = state.edits.slice();
    if (state.transfer) edits.push({ op: "transfer", image: state.transfer.ref });
    // schema_version and kind make the downloaded file replayable: clipatlas steer --recipe recipe.json
    return { schema_version: 1, kind: "clipatlas.recipe", image: state.image ? state.image.ref : null, edits,
             decoder: root.dataset.decoder, seed: Number($("seed").value) };
  }
  function encodeRecipe(r) { return btoa(unescape(encodeURIComponent(JSON.stringify(r)))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, ""); }
  function decodeRecipe(text) { return JSON.parse(decodeURIComponent(escape(atob(text.replace(/-/g, "+").replace(/_/g, "/"))))); }
  function updateShare() {
    const r = recipe();
    $("share-link").href = "/playground?recipe=" + encodeRecipe(r);
    $("download-recipe").href = "data:application/json;charset=utf-8," + encodeURIComponent(JSON.stringify(r, null, 2));
  }
  $("seed").addEventListener("change", updateShare);

  async function generate() {
    const r = recipe();
    $("generate").disabled = true; $("progress").hidden = false; $("progress").value = 0;
    try {
      let job = await api("/api/generate", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(r) });
      const cached = job.cached;
      while (job.status === "queued" || job.status === "running") {
        $("progress").value = job.progress;
        say(job.status === "queued" ? "queued" + (job.queue_position ? " behind " + job.queue_position + " job(s)" : "") : job.message);
        await new Promise(resolve => setTimeout(resolve, 250));
        job = await api("/api/jobs/" + job.id);
      }
      if (job.status === "failed") throw new Error(job.error);
      showResult(job, r, cached);
    } catch (error) {
      say("generation failed: " + error.message);
    } finally {
      $("generate").disabled = false; $("progress").hidden = true;
    }
  }
  function showResult(job, r, cached) {
    $("before").src = job.result.before_url; $("after").src = job.result.after_url;
    $("progress").value = 1;
    say("done in " + job.result.seconds.toFixed(1) + " s with the " + job.result.decoder + " decoder" + (cached ? " (cached result)" : ""));
    renderCandidates(job.result.after_ranking);
    state.history.unshift({ recipe: r, job });
    renderHistory();
  }
  function describeTarget(t) {
    const level = t.max_activation > 0 ? " (" + (t.activation / t.max_activation).toFixed(2) + "× max)" : "";
    const where = t.rank === null ? "not firing" : "rank " + t.rank;
    return (t.raised ? "#" : "removed #") + t.feature + " " + t.activation.toFixed(2) + level + ", " + where;
  }
  function renderCandidates(ranking) {
    const list = $("candidates");
    list.replaceChildren();
    $("candidates-box").hidden = !ranking;
    if (!ranking) return;
    for (const hit of ranking.slice(0, SHOWN_CANDIDATES)) {
      const link = el("a", { href: "/images/" + encodeURIComponent(hit.image_id), target: "_blank" },
        el("img", { src: "/thumbs/" + encodeURIComponent(hit.image_id), alt: "image " + hit.image_id, width: 64, height: 64 }));
      const targets = el("span", { className: "targets" });
      for (const t of hit.targets) targets.append(el("span", { className: "target", textContent: describeTarget(t) }));
      if (!hit.targets.length) targets.append(el("span", { className: "muted", textContent: "no feature raised or removed" }));
      const score = el("span", { className: "value", textContent: "score " + hit.score.toFixed(3) + " · cosine " + hit.cosine.toFixed(3) });
      const item = el("li", {}, link, targets, score);
      item.dataset.image = hit.image_id;
      list.append(item);
    }
  }
  function renderHistory() {
    const list = $("history");
    list.replaceChildren();
    state.history.forEach((entry, index) => {
      const restore = el("button", { type: "button", textContent: "restore" });
      restore.addEventListener("click", () => restoreRecipe(entry.recipe).catch(e => say(e.message)));
      const thumb = el("img", { src: entry.job.result.after_url, alt: "result " + (state.history.length - index), width: 48, height: 48 });
      list.append(el("li", {}, thumb, " " + entry.recipe.edits.length + " edit(s), seed " + entry.recipe.seed + " ", restore));
    });
  }
  $("generate").addEventListener("click", generate);

  async function restoreRecipe(r) {
    if (typeof r.image !== "string") throw new Error("the recipe names no image");
    if (r.image.startsWith("upload:")) {
      const body = await api("/api/uploads/" + encodeURIComponent(r.image.slice(7)));
      setImage({ ref: r.image, url: body.url }, body.features);
    } else {
      await chooseStored(r.image);
    }
    $("seed").value = r.seed == null ? 1 : r.seed;
    for (const edit of r.edits || []) {
      if (edit.op === "transfer") { state.transfer = { ref: edit.image }; continue; }
      if (!state.features.some(f => f.feature === edit.feature)) await addFeature(edit.feature);
      const f = state.features.find(item => item.feature === edit.feature);
      if (edit.op === "ban") banFeature(f); else if (edit.op === "set") setEdit(f, Number(edit.value));
    }
    renderFeatures(); renderEdits();
  }

  // ---- wiring ---------------------------------------------------------------------------------
  for (const pick of document.querySelectorAll(".pick")) pick.addEventListener("click", () => chooseStored(pick.dataset.image).catch(e => say(e.message)));
  $("upload").addEventListener("change", async event => {
    const file = event.target.files[0]; if (!file) return;
    say("uploading…");
    try { const body = await upload(file); setImage({ ref: "upload:" + body.upload_id, url: body.url }, body.features); say("uploaded"); }
    catch (error) { say("upload failed: " + error.message); }
  });
  $("upload-transfer").addEventListener("change", async event => {
    const file = event.target.files[0]; if (!file) return;
    try {
      const body = await upload(file);
      state.transfer = { ref: "upload:" + body.upload_id };
      $("transfer-note").hidden = false; $("transfer-note").textContent = "Generate will transfer the second image's features.";
      updateShare();
    } catch (error) { say("upload failed: " + error.message); }
  });

  (async function start() {
    const params = new URLSearchParams(location.search);
    try {
      if (params.get("recipe")) await restoreRecipe(decodeRecipe(params.get("recipe")));
      else if (params.get("image")) await chooseStored(params.get("image"));
      else { const first = document.querySelector(".pick"); if (first) await chooseStored(first.dataset.image); }
      if (params.get("feature") !== null) await addFeature(Number(params.get("feature")));
    } catch (error) { say(error.message); }
    renderEdits();
    document.body.dataset.playgroundReady = "1";
  })();
})();
