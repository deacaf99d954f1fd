/* Make every Altair chart of the book fit its page column and carry its title as its accessible name
 * (written for this book; not generated).
 *
 * Altair's HTML output calls the global vegaEmbed(element, spec, options). This file, loaded right after
 * vega-offline.js on pages with charts (tools/book_assets.py), wraps that function. A chart without a
 * `description` gets its title (and subtitle) as one, which Vega turns into the chart's aria-label; a chart
 * with neither keeps Vega's generic "Vega visualization" (a site test failure). After a chart is drawn,
 * if it is wider than its column, it is drawn again with
 *   1. side-by-side panels stacked (hconcat -> vconcat, column facets -> row facets, repeat columns -> rows,
 *      wrapped concat and facets -> one column), then, if still too wide,
 *   2. every fixed view width narrowed by the overflow (never below 50 px), legends moved under the plot
 *      and listed one entry per line, titles broken into lines.
 * On a screen narrower than 600 px the chart's "..." action menu is left out.
 * Charts with width "container" already follow their column. Nothing changes where a chart fits, so a wide
 * screen shows the chart as its author drew it; a phone gets a stacked, narrower one. A resize of the window
 * re-fits from the author's spec.
 */
(function () {
  "use strict";
  var embed = window.vegaEmbed;
  if (typeof embed !== "function") { return; }
  var MIN_WIDTH = 50;  // a panel of a small multiple can be this narrow; a lone chart never gets there

  function clone(x) { return JSON.parse(JSON.stringify(x)); }

  function stack(spec) {
    var s = clone(spec), changed = false;
    if (s.hconcat) { s.vconcat = s.hconcat; delete s.hconcat; changed = true; }
    // Side-by-side panels nested in a stack (a row of charts above a table) stack too.
    (function walk(node, top) {
      if (Array.isArray(node)) { node.forEach(function (n) { walk(n, false); }); return; }
      if (!node || typeof node !== "object") { return; }
      if (!top && node.hconcat) { node.vconcat = node.hconcat; delete node.hconcat; changed = true; }
      ["vconcat", "concat", "layer"].forEach(function (k) { if (k in node) { walk(node[k], false); } });
    })(s, true);
    if (s.concat && s.columns !== 1) { s.columns = 1; changed = true; }
    if (s.repeat && !Array.isArray(s.repeat) && s.repeat.column) {
      s.repeat.row = (s.repeat.row || []).concat(s.repeat.column); delete s.repeat.column; changed = true;
    } else if (s.repeat && s.columns !== 1) { s.columns = 1; changed = true; }
    if (s.facet && s.facet.column && !s.facet.row) { s.facet.row = s.facet.column; delete s.facet.column; changed = true; }
    else if (s.facet && s.facet.field && s.columns !== 1) { s.columns = 1; changed = true; }
    if (s.encoding && s.encoding.column && !s.encoding.row) {
      s.encoding.row = s.encoding.column; delete s.encoding.column; changed = true;
    } else if (s.encoding && s.encoding.facet && s.encoding.facet.columns !== 1) {
      s.encoding.facet.columns = 1; changed = true;
    }
    return changed ? s : null;
  }

  // A title longer than the column would widen the chart: break it into lines of at most `chars` characters.
  function wrapTitle(title, chars) {
    function lines(text) {
      if (Array.isArray(text)) { text = text.join(" "); }  // wrapped by an earlier attempt: wrap again
      if (typeof text !== "string" || text.length <= chars) { return text; }
      var out = [], line = "";
      text.split(" ").forEach(function (w) {
        if (line && (line + " " + w).length > chars) { out.push(line); line = w; } else { line = line ? line + " " + w : w; }
      });
      if (line) { out.push(line); }
      return out;
    }
    if (typeof title === "string" || Array.isArray(title)) { return lines(title); }
    if (title && typeof title === "object" && !Array.isArray(title)) {
      var t = Object.assign({}, title);
      t.text = lines(t.text);
      if (t.subtitle) { t.subtitle = lines(t.subtitle); }
      return t;
    }
    return title;
  }

  function narrow(spec, by, width, step) {
    // Characters per title line: a guess from the column's width, tighter on each further attempt (bold
    // titles with capitals and digits run wider than the first guess).
    var s = clone(spec), changed = false, chars = Math.max(16, Math.floor(width / (8.5 + 1.5 * (step || 0))));
    // Legends go under the chart, one entry per line: the plot keeps the width a side legend would take.
    s.config = s.config || {};
    s.config.legend = Object.assign({}, s.config.legend, {orient: "bottom", direction: "vertical"});
    // Facet headers such as "batch 1, seq 1024" break after their commas; small multiples sit closer together.
    s.config.header = Object.assign({labelExpr: "split(datum.label, ', ')"}, s.config.header);
    s.config.facet = Object.assign({spacing: 8}, s.config.facet);
    s.config.axis = Object.assign({labelFontSize: 10, titleFontSize: 10}, s.config.axis);  // a little smaller
    s.config.concat = Object.assign({spacing: 12}, s.config.concat);
    // A title centred over the plot starts right of the axis labels; from the left it has the whole width.
    s.config.title = Object.assign({}, s.config.title, {anchor: "start"});
    (function walk(node) {
      if (Array.isArray(node)) { node.forEach(walk); return; }
      if (!node || typeof node !== "object") { return; }
      var isView = "mark" in node || "layer" in node;
      if (isView && typeof node.width === "number" && node.width > MIN_WIDTH) {
        node.width = Math.max(MIN_WIDTH, Math.floor(node.width - by)); changed = true;
      }
      if (node.title) {
        var t = wrapTitle(node.title, chars);
        if (JSON.stringify(t) !== JSON.stringify(node.title)) { node.title = t; changed = true; }
      }
      if (node.encoding) {
        Object.keys(node.encoding).forEach(function (ch) {
          var enc = node.encoding[ch];
          if (enc && enc.legend && typeof enc.legend === "object" && enc.legend.direction !== "vertical") {
            enc.legend = Object.assign({}, enc.legend, {direction: "vertical", orient: "bottom"});
            delete enc.legend.columns;
            changed = true;
          }
        });
      }
      ["layer", "hconcat", "vconcat", "concat", "spec"].forEach(function (k) { if (k in node) { walk(node[k]); } });
    })(s);
    return changed ? s : null;
  }

  function titleText(t) {
    if (!t) { return ""; }
    if (typeof t === "string") { return t; }
    if (Array.isArray(t)) { return t.join(" "); }
    var sub = t.subtitle ? (Array.isArray(t.subtitle) ? t.subtitle.join(" ") : t.subtitle) : "";
    return [titleText(t.text), sub].filter(Boolean).join(": ");
  }

  function named(spec) {
    if (!spec || typeof spec !== "object" || spec.description) { return spec; }
    var found = "";
    (function walk(node) {
      if (found || !node || typeof node !== "object") { return; }
      if (Array.isArray(node)) { node.forEach(walk); return; }
      found = titleText(node.title);
      ["hconcat", "vconcat", "concat", "layer", "spec"].forEach(function (k) { if (k in node) { walk(node[k]); } });
    })(spec);
    if (!found) { return spec; }
    var s = clone(spec);
    s.description = found;
    return s;
  }

  function room(el) {
    var box = el.getBoundingClientRect(), st = window.getComputedStyle(el);
    return box.width - (parseFloat(st.paddingLeft) || 0) - (parseFloat(st.paddingRight) || 0);
  }

  function drawnWidth(el) {  // the chart's own width (a flex container may shrink its SVG on screen)
    var svg = el.querySelector("svg.marks, canvas.marks");
    if (!svg) { return 0; }
    var width = parseFloat(svg.getAttribute("width")) || svg.getBoundingClientRect().width;
    // A "container"-wide chart fits its plot to the column, but a long title or a legend laid out in one row
    // can still reach past the SVG's edge: count what is drawn, not only the SVG's declared width.
    if (svg.tagName.toLowerCase() === "svg") {
      var left = svg.getBoundingClientRect().left, lo = left, hi = left + width;
      Array.prototype.forEach.call(svg.children, function (g) {
        var box = g.getBoundingClientRect();
        if (box.width > 0) { lo = Math.min(lo, box.left); hi = Math.max(hi, box.right); }
      });
      width = hi - lo;  // an axis title drawn left of the SVG's origin counts too
    }
    return width;
  }

  function fit(el, spec, opt, result, step) {
    var over = drawnWidth(el) - room(el);
    if (over <= 1 || step >= 4) { return Promise.resolve(result); }
    var next = (step === 0 && stack(spec)) || narrow(spec, over, room(el), step);
    if (!next) { return Promise.resolve(result); }
    if (result && typeof result.finalize === "function") { result.finalize(); }
    return embed(el, next, opt).then(function (r) { return fit(el, next, opt, r, step + 1); });
  }

  var charts = [];
  // Charts still being drawn or fitted: whoever checks the page (the site tests) waits for zero.
  window.vegaFitPending = 0;
  window.vegaEmbed = function (el, spec, opt) {
    if (typeof el === "string") { el = document.querySelector(el); }
    spec = named(spec);
    // On a phone the "..." menu would take 38 px of the column (and it links to an online editor).
    if (el && room(el) < 600) { opt = Object.assign({}, opt, {actions: false}); }
    window.vegaFitPending += 1;
    function done() { window.vegaFitPending -= 1; }
    var drawn = embed(el, spec, opt).then(function (result) {
      var entry = {el: el, spec: spec, opt: opt, result: result, width: room(el)};
      charts.push(entry);
      return fit(el, spec, opt, result, 0).then(function (r) { entry.result = r; return r; });
    });
    drawn.then(done, done);
    return drawn;
  };
  for (var key in embed) { if (Object.prototype.hasOwnProperty.call(embed, key)) { window.vegaEmbed[key] = embed[key]; } }

  var timer = null;
  window.addEventListener("resize", function () {
    clearTimeout(timer);
    timer = setTimeout(function () {
      charts.forEach(function (c) {
        var w = room(c.el);
        if (Math.abs(w - c.width) < 2) { return; }
        c.width = w;
        if (c.result && typeof c.result.finalize === "function") { c.result.finalize(); }
        embed(c.el, c.spec, c.opt).then(function (r) { return fit(c.el, c.spec, c.opt, r, 0); })
          .then(function (r) { c.result = r; });
      });
    }, 250);
  });
})();
