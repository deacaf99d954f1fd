/* The ipywidgets HTML manager typesets widget labels with the MathJax 2 API, MathJax.Hub.Queue(...).
 * The book serves MathJax 3, which has no Hub, so that call would throw on pages with both math and widgets.
 * This shim gives every object assigned to window.MathJax (the configuration, then MathJax 3 itself) a Hub
 * whose Queue forwards to MathJax 3's typesetPromise. Written for this book; not generated. */
(function () {
  "use strict";
  function withHub(mj) {
    if (mj && typeof mj === "object" && !mj.Hub) {
      mj.Hub = {
        Queue: function (job) {
          var el = Array.isArray(job) ? job[2] : undefined;
          var M = window.MathJax;
          if (M && typeof M.typesetPromise === "function") {
            M.typesetPromise(el ? [el] : undefined).catch(function () {});
          }
        }
      };
    }
    return mj;
  }
  var current = withHub(window.MathJax);
  try {
    Object.defineProperty(window, "MathJax", {
      configurable: true,
      enumerable: true,
      get: function () { return current; },
      set: function (value) { current = withHub(value); }
    });
  } catch (e) { /* a non-configurable MathJax property: leave it alone */ }
})();
