// The static site (clipatlas export-site): the feature, image and search pages are shells whose <main> this
// script fills from gzipped JSON chunks, rendered at export time by the served app's own templates. Only the
// one chunk a page needs is fetched. Also gives map.js the same gzip-aware loader.
"use strict";
(function () {
  function loadJSON(url) {  // gzipped JSON; a host may or may not have unzipped it on the way (Content-Encoding)
    return fetch(url).then(r => { if (!r.ok) throw new Error(url + ": the server answered " + r.status); return r.arrayBuffer(); })
      .then(buffer => {
        const bytes = new Uint8Array(buffer), zipped = bytes[0] === 0x1f && bytes[1] === 0x8b;
        const stream = new Blob([bytes]).stream();
        return new Response(zipped ? stream.pipeThrough(new DecompressionStream("gzip")) : stream).json();
      });
  }
  window.clipatlasSite = { loadJSON };

  const holder = document.getElementById("site-page");
  if (!holder) return;
  const main = holder.closest("main"), config = holder.dataset, params = new URLSearchParams(location.search);
  const fail = message => { holder.textContent = message; };
  const show = (html, title) => { main.innerHTML = html; document.title = title + " · clipatlas"; };
  const chunkUrl = (pattern, chunk) => pattern.replace("{chunk}", chunk);

  function fnv1a(text) {  // the same 32-bit hash as clipatlas.share.site.fnv1a: which chunk holds an image
    let h = 0x811c9dc5;
    for (const byte of new TextEncoder().encode(text)) h = Math.imul(h ^ byte, 0x01000193) >>> 0;
    return h;
  }

  function featurePage() {
    const id = Number(params.get("id"));
    if (!Number.isInteger(id) || id < 0 || id >= Number(config.nFeatures)) return fail("no feature " + params.get("id") + " in this atlas");
    loadJSON(chunkUrl(config.featureChunk, Math.floor(id / Number(config.chunkSize)))).then(data => {
      const html = data.features[String(id)];
      if (html === undefined) return fail("feature #" + id + " is not in this export (see --features of clipatlas export-site)");
      show(html, "feature " + id);
    }, error => fail("could not load feature #" + id + ": " + error.message));
  }

  function imagePage() {
    const id = params.get("id") || "";
    loadJSON(chunkUrl(config.imageChunk, fnv1a(id) % Number(config.imageChunks))).then(data => {
      const html = data.images[id];
      if (html === undefined) return fail("image " + id + " is not in this export");
      show(html, "image " + id);
    }, error => fail("could not load image " + id + ": " + error.message));
  }

  function searchPage() {
    const q = (params.get("q") || "").trim(), number = q.replace(/^#/, "");
    if (/^\d+$/.test(number) && Number(number) < Number(config.nFeatures)) {
      location.replace(config.featurePrefix + Number(number)); return;
    }
    document.querySelectorAll("input[name=q]").forEach(input => { input.value = q; });
    const parts = Array.from({ length: Number(config.searchParts) }, (_, i) => loadJSON(chunkUrl(config.searchChunk, i)));
    Promise.all(parts).then(chunks => {
      main.innerHTML = document.getElementById("site-search").innerHTML;  // search.html's own empty result page
      const heading = main.querySelector("h1");
      heading.textContent = heading.textContent.replace("“”", "“" + q + "”");
      document.title = "search · clipatlas";
      const needle = q.toLowerCase(), seen = new Set(), hits = [];
      for (const chunk of chunks) {  // entries are in search order already: [feature, label text, rendered hit]
        for (const [feature, text, html] of chunk.labels) {
          if (hits.length >= 50) break;
          if (needle && !seen.has(feature) && text.toLowerCase().includes(needle)) { seen.add(feature); hits.push(html); }
        }
      }
      if (hits.length) main.querySelector("ol.results").innerHTML = hits.join("");
    }, error => fail("could not load the label index: " + error.message));
  }

  ({ feature: featurePage, image: imagePage, search: searchPage })[config.kind]();
})();
