// The feature map: every alive feature as a dot, drawn straight into an ImageData buffer so
// 163,840 points redraw within a frame; clusters named from their members' headline labels.
// Pan by dragging, zoom with the wheel, hover for the label and top image, click to open the
// feature. Labels are shown with textContent, never as HTML. Where the data, the feature pages and the
// thumbnails are comes from the canvas's data attributes (the server's routes, or the static site's files).
"use strict";
(function () {
  const canvas = document.getElementById("map");
  const tip = document.getElementById("map-tip");
  const status = document.getElementById("map-status");
  const ctx = canvas.getContext("2d");
  const config = canvas.dataset;
  const loadJSON = window.clipatlasSite ? window.clipatlasSite.loadJSON  // the static site's gzipped files (site.js)
    : url => fetch(url).then(r => { if (!r.ok) throw new Error("the server answered " + r.status); return r.json(); });
  const PALETTE = [0x1f77b4, 0xff7f0e, 0x2ca02c, 0xd62728, 0x9467bd, 0x8c564b, 0xe377c2, 0x7f7f7f, 0xbcbd22, 0x17becf,
                   0x393b79, 0x637939, 0x8c6d31, 0x843c39, 0x7b4173, 0x3182bd, 0xe6550d, 0x31a354, 0x756bb1, 0x636363];
  const GRID = 256;  // hover lookup: data space cut into GRID x GRID buckets
  const MAX_CLUSTER_NAMES = 40;  // the largest named clusters get their name drawn
  let points = null, view = { scale: 1, dx: 0, dy: 0 }, grid = null, hovered = -1, highlight = -1;
  let width = 0, height = 0, ratio = window.devicePixelRatio || 1, pending = false, frame = null, lastDrawMs = 0;

  function abgr(rgb) {  // ImageData is little-endian RGBA: pack as 0xAABBGGRR
    return (0xff << 24 | (rgb & 0xff) << 16 | (rgb & 0xff00) | (rgb >> 16 & 0xff)) >>> 0;
  }
  const COLORS = PALETTE.map(abgr);

  function resize() {
    width = canvas.clientWidth; height = canvas.clientHeight;
    canvas.width = Math.round(width * ratio); canvas.height = Math.round(height * ratio);
    schedule();
  }

  function prepare(data) {
    const n = data.x.length, xs = new Float32Array(n), ys = new Float32Array(n);
    let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
    for (let i = 0; i < n; i++) {
      const x = data.x[i], y = data.y[i];
      if (x < minX) minX = x; if (x > maxX) maxX = x; if (y < minY) minY = y; if (y > maxY) maxY = y;
    }
    const span = Math.max(maxX - minX, maxY - minY) || 1;
    for (let i = 0; i < n; i++) { xs[i] = (data.x[i] - minX) / span; ys[i] = 1 - (data.y[i] - minY) / span; }
    const cluster = data.cluster ? Int32Array.from(data.cluster, c => (c == null ? 0 : c)) : new Int32Array(n);
    const names = (data.clusters || []).slice().sort((a, b) => b.size - a.size).slice(0, MAX_CLUSTER_NAMES)
      .map(c => ({ name: c.name, x: (c.x - minX) / span, y: 1 - (c.y - minY) / span }));
    return { n, xs, ys, cluster, feature: data.feature, label: data.label || [], topImage: data.top_image || [], names };
  }

  function buildGrid(p) {
    const cells = new Array(GRID * GRID);
    for (let i = 0; i < p.n; i++) {
      const key = cellOf(p.xs[i]) * GRID + cellOf(p.ys[i]);
      (cells[key] || (cells[key] = [])).push(i);
    }
    return cells;
  }
  function cellOf(v) { return Math.min(GRID - 1, Math.max(0, Math.floor(v * GRID))); }

  function fit() {
    const size = Math.min(width, height) * 0.92;
    view = { scale: size, dx: (width - size) / 2, dy: (height - size) / 2 };
  }
  const toScreenX = x => x * view.scale + view.dx, toScreenY = y => y * view.scale + view.dy;

  function draw() {
    pending = false;
    if (!points) return;
    const started = performance.now(), w = canvas.width, h = canvas.height;
    if (!frame || frame.width !== w || frame.height !== h) frame = ctx.createImageData(w, h);  // reused between frames
    const image = frame;
    const pixels = new Uint32Array(image.data.buffer), s = view.scale * ratio, ox = view.dx * ratio, oy = view.dy * ratio;
    pixels.fill(0xfffaf8f7);
    const dot = s > 4000 ? 3 : 2;
    for (let i = 0; i < points.n; i++) {
      const px = (points.xs[i] * s + ox) | 0, py = (points.ys[i] * s + oy) | 0;
      if (px < 0 || py < 0 || px >= w - dot || py >= h - dot) continue;
      const color = COLORS[points.cluster[i] % COLORS.length];
      for (let a = 0; a < dot; a++) { const row = (py + a) * w + px; for (let b = 0; b < dot; b++) pixels[row + b] = color; }
    }
    ctx.putImageData(image, 0, 0);
    ctx.font = (12 * ratio) + "px sans-serif"; ctx.textAlign = "center"; ctx.lineWidth = 3 * ratio;
    ctx.strokeStyle = "rgba(255,255,255,0.85)"; ctx.fillStyle = "#222";
    for (const c of points.names) {  // fillText draws text, never markup
      const cx = toScreenX(c.x) * ratio, cy = toScreenY(c.y) * ratio;
      ctx.strokeText(c.name, cx, cy); ctx.fillText(c.name, cx, cy);
    }
    for (const [i, colour] of [[highlight, "#000"], [hovered, "#d00"]]) {
      if (i < 0) continue;
      ctx.beginPath(); ctx.strokeStyle = colour; ctx.lineWidth = 2 * ratio;
      ctx.arc(toScreenX(points.xs[i]) * ratio, toScreenY(points.ys[i]) * ratio, 7 * ratio, 0, 2 * Math.PI); ctx.stroke();
    }
    lastDrawMs = performance.now() - started;
  }
  function schedule() { if (!pending) { pending = true; requestAnimationFrame(draw); } }

  function nearest(sx, sy) {
    const x = (sx - view.dx) / view.scale, y = (sy - view.dy) / view.scale, radius = 8 / view.scale;
    let best = -1, bestD = radius * radius;
    const c0 = cellOf(x - radius), c1 = cellOf(x + radius), r0 = cellOf(y - radius), r1 = cellOf(y + radius);
    for (let c = c0; c <= c1; c++) for (let r = r0; r <= r1; r++) {
      const cell = grid[c * GRID + r]; if (!cell) continue;
      for (const i of cell) { const ddx = points.xs[i] - x, ddy = points.ys[i] - y, d = ddx * ddx + ddy * ddy; if (d < bestD) { bestD = d; best = i; } }
    }
    return best;
  }

  let drag = null;
  canvas.addEventListener("mousedown", e => { drag = { x: e.clientX, y: e.clientY, moved: false }; });
  window.addEventListener("mouseup", e => {
    if (drag && !drag.moved && hovered >= 0) window.location.href = config.featureUrl + points.feature[hovered];
    drag = null;
  });
  canvas.addEventListener("mousemove", e => {
    if (!points) return;
    const rect = canvas.getBoundingClientRect(), sx = e.clientX - rect.left, sy = e.clientY - rect.top;
    if (drag) {
      const mx = e.clientX - drag.x, my = e.clientY - drag.y;
      if (Math.abs(mx) + Math.abs(my) > 2) drag.moved = true;
      view.dx += mx; view.dy += my; drag.x = e.clientX; drag.y = e.clientY; schedule(); return;
    }
    const i = nearest(sx, sy);
    if (i !== hovered) { hovered = i; schedule(); }
    if (i >= 0) {
      tip.hidden = false; tip.style.left = (sx + 14) + "px"; tip.style.top = (sy + 14) + "px";
      if (tip.dataset.index !== String(i)) showTip(i);
      canvas.style.cursor = "pointer";
    } else { tip.hidden = true; canvas.style.cursor = "grab"; }
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; hovered = -1; schedule(); });

  function showTip(i) {  // the label as text, the top image as an <img> made here: nothing from the data is parsed as HTML
    tip.dataset.index = String(i);
    const text = document.createElement("div");
    text.className = "tip-label";
    text.textContent = "#" + points.feature[i] + " " + (points.label[i] || "· unnamed");
    tip.replaceChildren(text);
    if (points.topImage[i]) tip.append(topImage(i));
  }
  function topImage(i) {  // the static site keeps a feature's images in one sprite sheet, its top image first
    const img = document.createElement("img");
    img.alt = "top image of feature " + points.feature[i];
    if (!config.tileUrl) { img.src = config.thumbUrl + encodeURIComponent(points.topImage[i]); return img; }
    const f = points.feature[i], box = document.createElement("span");
    img.src = config.tileUrl.replace("{chunk}", Math.floor(f / Number(config.chunkSize))).replace("{feature}", f);
    img.style.width = (Number(config.tileCols) * 100) + "%"; img.style.left = "0"; img.style.top = "0";
    box.className = "sprite"; box.append(img);
    return box;
  }
  canvas.addEventListener("wheel", e => {
    e.preventDefault();
    const rect = canvas.getBoundingClientRect(), sx = e.clientX - rect.left, sy = e.clientY - rect.top;
    const factor = Math.exp(-e.deltaY * 0.0015);
    view.dx = sx - (sx - view.dx) * factor; view.dy = sy - (sy - view.dy) * factor; view.scale *= factor; schedule();
  }, { passive: false });
  window.addEventListener("resize", resize);

  const started = performance.now();
  loadJSON(config.source).then(data => {
    points = prepare(data); grid = buildGrid(points); resize(); fit();
    const wanted = new URLSearchParams(location.search).get("feature");
    if (wanted !== null) highlight = points.feature.indexOf(Number(wanted));
    if (highlight >= 0) {
      view.scale *= 4; view.dx = width / 2 - points.xs[highlight] * view.scale; view.dy = height / 2 - points.ys[highlight] * view.scale;
    }
    draw();
    const ms = Math.round(performance.now() - started);
    window.clipatlasMap = { loadedMs: ms, count: points.n, drawMs: () => lastDrawMs, clusterNames: points.names.map(c => c.name),
                            screenOf: i => [toScreenX(points.xs[i]), toScreenY(points.ys[i])] };
    status.textContent = points.n.toLocaleString() + " features · loaded and drawn in " + ms + " ms";
    document.body.dataset.mapReady = "1";
  }).catch(err => { status.textContent = "the map could not load: " + err.message; });
})();
