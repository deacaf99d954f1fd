// The reader-facing checks of one loaded page of the built book (tests/test_site.py evaluates this in Chromium).
// Returns {check name: [problem, ...]}; an empty list means the page passes that check.
() => {
  const out = {
    empty_marks: [], raw_text: [], duplicate_outputs: [], overflow: [], accessible_names: [],
    dead_controls: [], title_first: [], build_noise: [], contrast: [],
  };
  const article = document.querySelector("article.bd-article") || document.querySelector("main") || document.body;
  const visible = (el) => !!el && (el.checkVisibility ? el.checkVisibility({visibilityProperty: true}) : el.offsetParent !== null);
  const short = (s) => s.replace(/\s+/g, " ").trim().slice(0, 90);
  const where = (el) => {
    const sec = el.closest("section[id]");
    return sec ? `#${sec.id}` : el.tagName.toLowerCase();
  };

  // 1. Every Vega view draws something, and no mark has NaN coordinates (a log domain with zero does that).
  document.querySelectorAll(".vega-embed").forEach((embed, i) => {
    const svg = embed.querySelector("svg.marks");
    if (!svg) { out.empty_marks.push(`chart ${i + 1} (${where(embed)}): no SVG drawn`); return; }
    let drawn = 0, bad = 0;
    const emptyGroups = [];
    svg.querySelectorAll("g.role-mark").forEach((g) => {
      const cls = g.getAttribute("class") || "";
      if (/mark-text|mark-group/.test(cls)) return;
      const items = Array.from(g.children).filter((c) => ["path", "line", "rect", "circle", "image"].includes(c.tagName));
      let sized = 0;
      items.forEach((it) => {
        const d = (it.getAttribute("d") || "") + (it.getAttribute("transform") || "");
        if (/NaN|Infinity/.test(d)) { bad += 1; return; }
        const b = it.getBBox();
        const line = /mark-(line|rule|trail)/.test(cls);
        if (line ? (b.width > 0.5 || b.height > 0.5) : (b.width > 0.5 && b.height > 0.5)) sized += 1;
      });
      drawn += sized;
      // bars, areas, arcs and symbols that all have zero size draw nothing (a one-point line may be legitimate)
      if (items.length && !sized && /mark-(rect|area|arc|symbol)/.test(cls)) emptyGroups.push(cls.split(" ")[0]);
    });
    const doc = embed.matches("[role='graphics-document']") ? embed : embed.querySelector("[role='graphics-document']");
    const title = short(doc ? doc.getAttribute("aria-label") || "" : "");
    if (bad) out.empty_marks.push(`chart ${i + 1} (${where(embed)}, ${title}): ${bad} marks with NaN/Infinity coordinates`);
    if (!drawn) out.empty_marks.push(`chart ${i + 1} (${where(embed)}, ${title}): no mark has a visible size`);
    else if (emptyGroups.length) out.empty_marks.push(`chart ${i + 1} (${where(embed)}, ${title}): zero-size marks in ${emptyGroups.join(", ")}`);
  });

  // 2. No raw TeX or MyST role in the visible text, no NaN (or <NA>, NaT) shown as a value (code, rendered maths
  //    and charts excepted).
  const skip = "pre, code, script, style, mjx-container, .MathJax, svg, .highlight, textarea, kbd, .headerlink";
  const patterns = [[/\$/, "$"], [/\\\(|\\\)|\\\[|\\\]/, "\\( or \\["], [/\{(cite|ref|numref|eq|doc|term)(:[a-z]+)?\}`?/, "{role}"],
    [/^\s*(NaN|nan|<NA>|NaT)\s*$/, "NaN"]];
  const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    if (!el || el.closest(skip) || !visible(el)) continue;
    for (const [re, name] of patterns) {
      if (re.test(node.textContent)) {
        out.raw_text.push(`${where(el)}: raw ${name} in "${short(node.textContent)}"`);
        break;
      }
    }
  }

  // 3. No two identical consecutive output blocks (within a cell, or the last of one cell and the first of the next).
  const blocks = [];
  document.querySelectorAll(".cell").forEach((cell) => {
    const outputs = cell.querySelectorAll(":scope > .cell_output > *");
    outputs.forEach((o, j) => blocks.push({el: o, text: (o.innerText || "").replace(/\s+/g, " ").trim(), cell, first: j === 0}));
  });
  for (let k = 1; k < blocks.length; k++) {
    const a = blocks[k - 1], b = blocks[k];
    const adjacent = a.cell === b.cell || (b.first && a.cell.nextElementSibling === b.cell);
    if (adjacent && a.text && a.text === b.text) out.duplicate_outputs.push(`${where(b.el)}: the same output twice: "${short(b.text)}"`);
  }

  // 4. Nothing is wider than the column or scrolls sideways, except code blocks (deliberately scrollable).
  const col = article.getBoundingClientRect();
  const allowed = "pre, .highlight, div.highlight, .cell_input, mjx-assistive-mml";  // the last: hidden, for screen readers
  const reported = [];
  article.querySelectorAll("*").forEach((el) => {
    if (reported.some((r) => r.contains(el)) || el.closest(allowed) || !visible(el)) return;
    const tag = el.tagName.toLowerCase();
    if (["script", "style", "br"].includes(tag)) return;
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) return;
    const st = getComputedStyle(el);
    const scrolls = /(auto|scroll)/.test(st.overflowX) && el.scrollWidth > el.clientWidth + 1;
    if (r.right > col.right + 1 || r.left < col.left - 1 || scrolls) {
      reported.push(el);
      const what = scrolls ? `scrolls sideways (${el.scrollWidth} px in ${el.clientWidth} px)` : `is ${Math.round(r.width)} px wide in a ${Math.round(col.width)} px column`;
      out.overflow.push(`${where(el)}: <${tag} class="${short(el.getAttribute("class") || "")}"> ${what}: "${short(el.innerText || "")}"`);
    }
  });

  // A chart squeezed into the column (its SVG shown smaller than drawn) has shrunken, illegible text.
  document.querySelectorAll(".vega-embed svg.marks").forEach((svg, i) => {
    const natural = parseFloat(svg.getAttribute("width")) || 0, shown = svg.getBoundingClientRect().width;
    if (visible(svg) && natural > 0 && shown < 0.95 * natural) out.overflow.push(`chart ${i + 1} (${where(svg)}): drawn ${Math.round(natural)} px wide, squeezed to ${Math.round(shown)} px (its text shrinks)`);
  });

  // 5. Every chart and image has an accessible name.
  document.querySelectorAll(".vega-embed").forEach((embed, i) => {
    const doc = embed.matches("[role='graphics-document']") ? embed : embed.querySelector("[role='graphics-document']");
    const name = doc ? (doc.getAttribute("aria-label") || "").trim() : "";
    if (!name || name === "Vega visualization") out.accessible_names.push(`chart ${i + 1} (${where(embed)}): no accessible name (give the chart a title or description)`);
  });
  article.querySelectorAll("img").forEach((img) => {
    const alt = (img.getAttribute("alt") || "").trim();
    if (!alt || /^[0-9a-f]{12,}/i.test(alt) || /\.(png|svg|jpe?g|gif)$/i.test(alt)) out.accessible_names.push(`${where(img)}: image with alt "${alt}" (${short(img.getAttribute("src") || "")})`);
  });
  article.querySelectorAll("svg").forEach((svg) => {
    if (svg.closest(".vega-embed, mjx-container, button, a, .MathJax") || svg.getAttribute("aria-hidden") === "true") return;
    if (svg.parentElement && svg.parentElement.closest("svg")) return;
    const named = (svg.getAttribute("aria-label") || "").trim() || (svg.querySelector(":scope > title") || {}).textContent;
    if (!named) out.accessible_names.push(`${where(svg)}: an SVG figure without aria-label or <title>`);
  });

  // 6. No control that moves and changes nothing: no ipywidgets state or widget on the static page.
  if (document.querySelector("script[type='application/vnd.jupyter.widget-state+json']")) out.dead_controls.push("the page embeds ipywidgets state (its controls need a kernel)");
  const widget = article.querySelector(".jupyter-widgets, .widget-slider, .widget-dropdown, .widget-box");
  if (widget) out.dead_controls.push(`${where(widget)}: an ipywidgets control`);

  // 7. The page opens with its title.
  const h1 = article.querySelector("h1");
  if (!h1) out.title_first.push("no <h1> title");
  else {
    const before = Array.from(article.querySelectorAll(".cell, pre, p, table, .vega-embed, img, figure")).filter(
      (el) => visible(el) && (el.compareDocumentPosition(h1) & Node.DOCUMENT_POSITION_FOLLOWING));
    if (before.length) out.title_first.push(`${before.length} blocks above the title, first: <${before[0].tagName.toLowerCase()}> "${short(before[0].innerText || "")}"`);
  }

  // 8. No build-time noise: progress bars, stderr blocks, blank output areas.
  article.querySelectorAll(".cell_output > *").forEach((o) => {
    if (!visible(o)) return;
    const text = (o.innerText || "").trim();
    if (/\d+%\|| \d+\/\d+ \[\d+:\d+<|\d[\d.]* ?(s\/it|it\/s)\]/.test(text)) out.build_noise.push(`${where(o)}: a progress bar: "${short(text)}"`);
    else if (o.matches(".stderr, .output.stderr") || o.querySelector(".stderr")) out.build_noise.push(`${where(o)}: stderr output: "${short(text)}"`);
    else if (o.querySelector("progress, .widget-hprogress, .progress")) out.build_noise.push(`${where(o)}: a progress widget`);
    else if (o.getBoundingClientRect().height > 40 && !text && !o.matches("svg, canvas, img, table, video, iframe") && !o.querySelector("svg, canvas, img, table, video, iframe")) out.build_noise.push(`${where(o)}: a blank output area ${Math.round(o.getBoundingClientRect().height)} px tall`);
  });
  // 9. Text in charts and outputs is legible: contrast with its background at least 4.5:1 (3:1 for large text).
  const rgb = (c) => { const m = (c || "").match(/rgba?\(([\d.]+),\s*([\d.]+),\s*([\d.]+)(?:,\s*([\d.]+))?/); return m ? [+m[1], +m[2], +m[3], m[4] === undefined ? 1 : +m[4]] : null; };
  const lum = ([r, g, b]) => [r, g, b].map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; })
    .reduce((s, v, i) => s + v * [0.2126, 0.7152, 0.0722][i], 0);
  const background = (el) => {
    for (let e = el; e && e.nodeType === 1; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c && c[3] > 0.5) return c;
    }
    return [255, 255, 255, 1];
  };
  const seen = new Set();
  article.querySelectorAll(".cell_output *, .vega-embed text").forEach((el) => {
    if (el.closest("pre, code, .highlight") || !visible(el)) return;
    const own = Array.from(el.childNodes).some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own) return;
    const st = getComputedStyle(el);
    const isSvg = el instanceof SVGElement;
    const fg = rgb(isSvg ? st.fill : st.color);
    if (!fg || (isSvg && (+st.fillOpacity === 0 || st.fill === "none"))) return;
    const bg = background(isSvg ? el.closest(".vega-embed") || el : el);
    const alpha = fg[3] * (isSvg ? +(st.fillOpacity || 1) * +(st.opacity || 1) : 1);
    if (alpha < 0.05) return;  // hidden (Vega hides overlapping labels with opacity 0)
    const mix = fg.slice(0, 3).map((v, i) => v * alpha + bg[i] * (1 - alpha));
    const [a, b] = [lum(mix), lum(bg)].sort((x, y) => y - x);
    const ratio = (a + 0.05) / (b + 0.05);
    const size = parseFloat(st.fontSize) || 12;
    const large = size >= 24 || (size >= 18.66 && +st.fontWeight >= 700);
    const key = `${isSvg ? st.fill : st.color}`;
    if (ratio < (large ? 3 : 4.5) && !seen.has(key)) {
      seen.add(key);
      out.contrast.push(`${where(el)}: text "${short(el.textContent)}" in ${key} has contrast ${ratio.toFixed(2)}:1`);
    }
  });
  return out;
}
