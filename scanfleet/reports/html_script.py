"""The HTML report's one script: target table (filter, sort, drill-down) and control view.

Reads the two JSON blocks `write_html` embeds (`sf-targets`, `sf-controls`) and renders
client-side, so a 10k-target page stays one file that opens fast. Every value goes through
`esc` before it reaches markup. Filters, sort and the open target live in the URL fragment
(`#outcome=failed&namespace=web&open=<scan_id>`): links can be shared and tests can load a
filtered page. `data-ready-ms` / `data-filter-ms` on <body> record how long the page took.
The page's Content-Security-Policy allows this script by its sha256 and nothing else.
"""

SCRIPT = r"""
(function () {
  "use strict";
  var T = JSON.parse(document.getElementById("sf-targets").textContent);
  var C = JSON.parse(document.getElementById("sf-controls").textContent);
  var COLOURS = __COLOURS__;
  var RANK = {critical: 0, high: 1, medium: 2, low: 3, none: 4};
  var ORDER = {failed: 0, error: 1, passed: 2};
  // row: [scan_id, outcome, context, namespace, pod, container, image, compliance,
  //       threshold failures, [[control id, message], ...], error]
  var COLS = {outcome: 1, cluster: 2, namespace: 3, pod: 4, container: 5, image: 6,
              compliance: 7, controls: 9};
  var state = {outcome: "", namespace: "", cluster: "", q: "", control: "",
               sort: "outcome", dir: 1, open: ""};
  var $ = function (id) { return document.getElementById(id); };

  function esc(s) {
    return String(s == null ? "" : s).replace(/[&<>"']/g, function (c) {
      return "&#" + c.charCodeAt(0) + ";";
    });
  }
  function pill(sev) {
    return '<span class="pill" style="background:' + (COLOURS[sev] || "#6b7280") + '">' +
      esc(sev) + "</span>";
  }
  function name(r) { return r[4] + "/" + (r[5] == null ? "*" : r[5]); }
  function readHash() {
    var h = location.hash.replace(/^#/, "");
    if (!h) return;
    h.split("&").forEach(function (kv) {
      var i = kv.indexOf("=");
      if (i < 0) return;
      var k = decodeURIComponent(kv.slice(0, i)), v = decodeURIComponent(kv.slice(i + 1));
      if (k === "dir") state.dir = v === "-1" ? -1 : 1;
      else if (Object.prototype.hasOwnProperty.call(state, k)) state[k] = v;
    });
  }
  function writeHash() {
    var parts = [];
    ["outcome", "namespace", "cluster", "q", "control", "sort", "open"].forEach(function (k) {
      if (state[k] && !(k === "sort" && state[k] === "outcome"))
        parts.push(k + "=" + encodeURIComponent(state[k]));
    });
    if (state.dir < 0) parts.push("dir=-1");
    try { history.replaceState(null, "", parts.length ? "#" + parts.join("&") : "#"); }
    catch (e) { /* a file: URL the browser will not rewrite */ }
  }
  function options(sel, values, all) {
    sel.innerHTML = '<option value="">' + esc(all) + "</option>" + values.map(function (v) {
      return '<option value="' + esc(v) + '">' + esc(v || "(none)") + "</option>";
    }).join("");
  }
  function uniq(col) {
    var seen = {};
    T.forEach(function (r) { seen[r[col] == null ? "" : r[col]] = 1; });
    return Object.keys(seen).sort();
  }
  function key(r, col) {
    if (col === 1) return ORDER[r[1]];
    if (col === 7) return r[7] == null ? -1 : r[7];
    if (col === 9) return r[9].length;
    return r[col] == null ? "" : String(r[col]);
  }
  function matches(r) {
    if (state.outcome && r[1] !== state.outcome) return false;
    if (state.namespace && r[3] !== state.namespace) return false;
    if (state.cluster && r[2] !== state.cluster) return false;
    if (state.control && !r[9].some(function (f) { return f[0] === state.control; }))
      return false;
    if (state.q) {
      var q = state.q.toLowerCase();
      var hay = (r[2] + " " + r[3] + " " + name(r) + " " + (r[6] || "")).toLowerCase();
      if (hay.indexOf(q) < 0) return false;
    }
    return true;
  }
  function detail(r) {
    var out = ['<div class="detail" role="row" data-scan="' + esc(r[0]) + '">'];
    out.push('<p class="note">scan <code>' + esc(r[0]) + "</code> · image <code>" +
      esc(r[6] || "?") + "</code></p>");
    if (r[10]) out.push('<p class="msg">' + esc(r[10]) + "</p>");
    if (r[8].length) out.push("<p>Threshold failures:</p><ul>" + r[8].map(function (f) {
      return "<li>" + esc(f) + "</li>"; }).join("") + "</ul>");
    if (r[9].length) {
      out.push("<p>" + r[9].length + " failed control" + (r[9].length === 1 ? "" : "s") + ":</p>");
      r[9].forEach(function (f) {
        var c = C[f[0]] || [null, "none", null];
        out.push('<div class="fc"><div><code>' + esc(f[0]) + "</code> " + pill(c[1]) +
          ' <span class="ctitle">' + esc(c[0] || "(no title)") + "</span></div>");
        if (f[1]) out.push('<div class="msg fmsg">' + esc(f[1]) + "</div>");
        if (c[2]) out.push('<details class="fix"><summary>Fix</summary><div class="msg">' +
          esc(c[2]) + "</div></details>");
        out.push("</div>");
      });
    } else if (r[1] !== "error") {
      out.push("<p>No failed controls.</p>");
    }
    out.push("</div>");
    return out.join("");
  }
  var CHUNK = 200, token = 0;
  function rowHtml(r) {
    var comp = r[7] == null ? "n/a" : r[7] + "%";
    var tr = '<div class="t grid ' + esc(r[1]) + (state.open === r[0] ? " open" : "") +
      '" role="row" data-scan="' + esc(r[0]) + '"><div class="oc">' + esc(r[1]) +
      "</div><div>" + esc(r[2]) + "</div><div>" + esc(r[3]) + '</div><div class="mono">' +
      esc(r[4]) + '</div><div class="mono">' + esc(r[5] == null ? "*" : r[5]) +
      '</div><div class="img">' + esc(r[6]) + '</div><div class="num">' + comp +
      '</div><div class="num">' + r[9].length + "</div></div>";
    return state.open === r[0] ? tr + detail(r) : tr;
  }
  // The first CHUNK rows are drawn at once, the rest a chunk per task, so the page can be
  // read and filtered while a large run's rows are still being added; a new render
  // abandons the one in progress. <body data-rendering> is set until every row is in.
  // Each chunk is a `content-visibility: auto` block: the browser lays out only the chunks
  // near the viewport, so drawing 10k rows costs little more than drawing 200.
  function chunk(rows) {
    return '<div class="chunk" style="contain-intrinsic-size:auto ' + rows.length * 31 +
      'px">' + rows.map(rowHtml).join("") + "</div>";
  }
  function render() {
    var col = COLS[state.sort] || 1, dir = state.dir, mine = ++token;
    var rows = T.filter(matches);
    rows.sort(function (a, b) {
      var x = key(a, col), y = key(b, col);
      if (x < y) return -dir;
      if (x > y) return dir;
      return name(a) < name(b) ? -1 : name(a) > name(b) ? 1 : 0;
    });
    var body = $("sf-rows");
    body.innerHTML = chunk(rows.slice(0, CHUNK));
    var done = Math.min(CHUNK, rows.length);
    function more() {
      if (mine !== token) return;
      if (done >= rows.length) {
        document.body.removeAttribute("data-rendering");
        if (!document.body.hasAttribute("data-complete-ms"))
          document.body.setAttribute("data-complete-ms", performance.now().toFixed(1));
        return;
      }
      body.insertAdjacentHTML("beforeend", chunk(rows.slice(done, done + CHUNK)));
      done += CHUNK;
      setTimeout(more, 0);
    }
    document.body.setAttribute("data-rendering", "1");
    setTimeout(more, 0);
    $("sf-shown").textContent = "Showing " + rows.length + " of " + T.length + " targets" +
      (state.control ? " failing " + state.control : "") + ".";
    $("sf-clear-control").hidden = !state.control;
    Array.prototype.forEach.call(document.querySelectorAll("#sf-table [data-sort]"),
      function (th) {
        th.setAttribute("aria-sort", th.getAttribute("data-sort") === state.sort ?
          (dir > 0 ? "ascending" : "descending") : "none");
      });
  }
  function controlView() {
    var by = {};
    T.forEach(function (r) {
      r[9].forEach(function (f) {
        var e = by[f[0]] || (by[f[0]] = {targets: [], images: {}});
        e.targets.push(r);
        if (r[6]) e.images[r[6]] = 1;
      });
    });
    var ids = Object.keys(by).sort(function (a, b) {
      var d = by[b].targets.length - by[a].targets.length;
      if (d) return d;
      var ra = RANK[(C[a] || [])[1]], rb = RANK[(C[b] || [])[1]];
      return ra !== rb ? ra - rb : (a < b ? -1 : 1);
    });
    $("sf-controls-count").textContent = ids.length + " failing control" +
      (ids.length === 1 ? "" : "s") + ".";
    $("sf-control-rows").innerHTML = ids.map(function (id) {
      var e = by[id], c = C[id] || [null, "none", null], imgs = Object.keys(e.images);
      var which = e.targets.slice(0, 5).map(function (r) {
        return esc(r[2] + ":" + r[3] + "/" + name(r)); }).join(", ");
      if (e.targets.length > 5) which += ", … " + (e.targets.length - 5) + " more";
      return '<tr data-control="' + esc(id) + '"><td><code>' + esc(id) + "</code></td><td>" +
        esc(c[0] || "") + "</td><td>" + pill(c[1]) + '</td><td class="num">' +
        e.targets.length + '</td><td class="num">' + imgs.length + '</td><td class="which">' +
        which + ' <button type="button" data-control="' + esc(id) +
        '">show targets</button></td></tr>';
    }).join("");
  }
  function sync() {
    $("sf-outcome").value = state.outcome;
    $("sf-namespace").value = state.namespace;
    $("sf-cluster").value = state.cluster;
    $("sf-q").value = state.q;
  }
  function on(id, ev, fn) { $(id).addEventListener(ev, fn); }
  function update() { writeHash(); render(); }

  options($("sf-namespace"), uniq(3), "all namespaces");
  options($("sf-cluster"), uniq(2), "all clusters");
  controlView();
  render();
  var ready = performance.now();
  document.body.setAttribute("data-ready-ms", ready.toFixed(1));
  readHash();
  sync();
  if (location.hash.length > 1) {
    render();
    document.body.setAttribute("data-filter-ms", (performance.now() - ready).toFixed(1));
  }
  on("sf-outcome", "change", function (e) { state.outcome = e.target.value; update(); });
  on("sf-namespace", "change", function (e) { state.namespace = e.target.value; update(); });
  on("sf-cluster", "change", function (e) { state.cluster = e.target.value; update(); });
  on("sf-q", "input", function (e) { state.q = e.target.value; update(); });
  on("sf-clear-control", "click", function () { state.control = ""; update(); });
  var BY = {};
  T.forEach(function (r) { BY[r[0]] = r; });
  on("sf-rows", "click", function (e) {
    // Open or close one target's detail in place: no redraw of the other rows.
    var tr = e.target.closest(".t");
    if (!tr) return;
    var id = tr.getAttribute("data-scan");
    Array.prototype.forEach.call(document.querySelectorAll("#sf-rows .detail"),
      function (d) { d.remove(); });
    Array.prototype.forEach.call(document.querySelectorAll("#sf-rows .t.open"),
      function (o) { o.classList.remove("open"); });
    state.open = state.open === id ? "" : id;
    if (state.open && BY[id]) {
      tr.classList.add("open");
      tr.insertAdjacentHTML("afterend", detail(BY[id]));
    }
    writeHash();
  });
  on("sf-control-rows", "click", function (e) {
    var b = e.target.closest("button[data-control]");
    if (!b) return;
    state.control = b.getAttribute("data-control");
    update();
    $("sf-targets-card").scrollIntoView();
  });
  Array.prototype.forEach.call(document.querySelectorAll("#sf-table [data-sort]"),
    function (th) {
      th.addEventListener("click", function () {
        var k = th.getAttribute("data-sort");
        state.dir = state.sort === k ? -state.dir : 1;
        state.sort = k;
        update();
      });
    });
  window.addEventListener("hashchange", function () {
    state = {outcome: "", namespace: "", cluster: "", q: "", control: "", sort: "outcome",
             dir: 1, open: ""};
    readHash(); sync(); render();
  });
})();
"""
