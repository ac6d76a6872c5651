// Interactions of the self-contained HTML report (nas/html_report.py inlines this file):
// tooltips and linked highlighting of a trial across plots and tables, legend toggles,
// sortable tables. The plots are plain SVG and render without this script.
(function () {
  "use strict";
  var trials = JSON.parse(document.getElementById("trials").textContent);
  var tip = document.getElementById("tip");

  function addRows(table, obj) {
    Object.keys(obj).forEach(function (k) {
      var tr = table.insertRow();
      var key = tr.insertCell();
      key.className = "k";
      key.textContent = k;
      tr.insertCell().textContent = obj[k];
    });
  }

  function show(id, ev) {
    var t = trials[id];
    if (!t) return;
    tip.textContent = "";  // built with textContent only: params are user text
    var head = document.createElement("b");
    head.textContent = (t.run ? t.run + ": " : "") + "trial #" + t.number +
      (t.status ? " \u2014 " + t.status : "");
    tip.appendChild(head);
    if (t.why) {
      var why = document.createElement("div");
      why.textContent = t.why;
      tip.appendChild(why);
    }
    var table = document.createElement("table");
    addRows(table, t.metrics);
    addRows(table, {compression: t.compression});
    addRows(table, t.params);
    tip.appendChild(table);
    tip.hidden = false;
    var r = tip.getBoundingClientRect();
    var x = ev.clientX + 14, y = ev.clientY + 14;
    if (x + r.width > innerWidth) x = ev.clientX - r.width - 14;
    if (y + r.height > innerHeight) y = Math.max(4, innerHeight - r.height - 4);
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }

  function mark(id, on) {
    document.querySelectorAll('[data-t="' + id + '"]').forEach(function (e) {
      e.classList.toggle("hl", on);
    });
  }

  document.addEventListener("mouseover", function (ev) {
    var e = ev.target.closest("[data-t]");
    if (!e) return;
    mark(e.dataset.t, true);
    show(e.dataset.t, ev);
  });
  document.addEventListener("mouseout", function (ev) {
    var e = ev.target.closest("[data-t]");
    if (!e) return;
    mark(e.dataset.t, false);
    tip.hidden = true;
  });

  document.querySelectorAll(".legend-item").forEach(function (item) {
    item.addEventListener("click", function () {
      var svg = item.closest("svg");
      item.classList.toggle("off");
      svg.querySelectorAll('.series[data-series="' + item.dataset.series + '"]')
        .forEach(function (s) { s.classList.toggle("off"); });
    });
  });

  document.querySelectorAll("table.sortable th").forEach(function (th, i) {
    th.addEventListener("click", function () {
      var body = th.closest("table").tBodies[0];
      var rows = Array.from(body.rows);
      var asc = th.dataset.asc !== "1";
      th.dataset.asc = asc ? "1" : "0";
      function value(r) {
        var s = r.cells[i].textContent, f = parseFloat(s.replace("#", ""));
        return isNaN(f) ? s : f;
      }
      rows.sort(function (a, b) {
        var x = value(a), y = value(b);
        return (x > y ? 1 : x < y ? -1 : 0) * (asc ? 1 : -1);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });

  // for tests and screenshots: how many plots have drawn markers
  var drawn = 0;
  document.querySelectorAll("svg.plot").forEach(function (s) {
    if (s.getBBox().width > 0 && s.querySelector(".series *")) drawn++;
  });
  document.body.dataset.plotsDrawn = drawn;
})();
