/* edgefleet dashboard: live regions, charts (uPlot), the rollout form and action buttons.
   No build step, no dependencies besides the vendored uPlot. Writes go to the REST API; the
   session cookie authorises them and the API checks the role and audits the action. */
(function () {
  "use strict";
  var POLL = parseInt(document.body.dataset.poll || "3000", 10);
  var liveStatus = document.getElementById("live-status");

  function toast(msg, bad) {
    var t = document.getElementById("toast");
    if (!t) return;
    t.textContent = msg; t.className = "toast" + (bad ? " bad" : ""); t.hidden = false;
    clearTimeout(t._timer); t._timer = setTimeout(function () { t.hidden = true; }, 6000);
  }
  function setLive(ok) {
    if (!liveStatus) return;
    liveStatus.textContent = ok ? "live" : "reconnecting…";
    liveStatus.classList.toggle("stale", !ok);
  }
  function withParam(url, key, value) {
    var u = new URL(url, location.href); u.searchParams.set(key, value); return u.pathname + u.search;
  }

  /* ---- live regions: re-fetch the page's partial and swap it in -------------------------- */
  function refreshRegion(el) {
    var part = el.dataset.live;
    return fetch(withParam(location.href, "part", part), {credentials: "same-origin", headers: {"Accept": "text/html"}})
      .then(function (r) {
        if (r.status === 401) { location.href = "/ui/login?next=" + encodeURIComponent(location.pathname + location.search); return null; }
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (html) {
        if (html === null || html === el._last) return;
        var active = document.activeElement, focusId = active && el.contains(active) ? active.id : null;
        var open = Array.prototype.map.call(el.querySelectorAll("details[id]"), function (d) { return [d.id, d.open]; });
        el.innerHTML = html; el._last = html;
        open.forEach(function (o) { var d = document.getElementById(o[0]); if (d) d.open = o[1]; });  /* keep what the reader opened */
        if (focusId) { var again = document.getElementById(focusId); if (again) again.focus(); }
        bindCommands(el);
        el.dispatchEvent(new CustomEvent("ef:updated", {bubbles: true}));
      });
  }
  function pollRegions() {
    var regions = Array.prototype.slice.call(document.querySelectorAll("[data-live]"));
    if (!regions.length || document.hidden) return Promise.resolve();
    return Promise.all(regions.map(refreshRegion)).then(function () { setLive(true); }, function () { setLive(false); });
  }

  /* ---- charts ---------------------------------------------------------------------------- */
  var charts = [];
  function seriesOf(el, data) {
    var hollow = data.hollow || {};
    if (el.dataset.seriesMap) {
      var m = data[el.dataset.seriesMap] || {}, palette = ["#2563eb", "#d97706", "#7c3aed", "#059669", "#dc2626", "#0891b2"];
      return Object.keys(m).sort().map(function (k, i) { return {key: k, label: k, color: palette[i % palette.length], values: m[k], hollow: hollow[k] || []}; });
    }
    return JSON.parse(el.dataset.series).map(function (s) { s.values = data[s.key] || []; s.hollow = hollow[s.key] || []; return s; });
  }
  /* the words under a chart (data-note names the feed's note): how many samples, and what the
     hollow points or an empty chart mean when there are too few to judge */
  function showNote(el, data) {
    var box = document.getElementById(el.id + "-note");
    if (box && el.dataset.note) box.textContent = (data.notes || {})[el.dataset.note] || "";
  }
  function drawChart(el, data) {
    var ss = seriesOf(el, data), xs = data[el.dataset.x] || [];
    var points = 0, hollowPoints = 0;
    ss.forEach(function (s) { s.values.forEach(function (v, i) { if (v !== null && v !== undefined) { points++; if (s.hollow[i]) hollowPoints++; } }); });
    el.dataset.points = String(points);
    el.dataset.hollow = String(hollowPoints);
    showNote(el, data);
    if (!points) {
      if (el._plot) { el._plot.destroy(); el._plot = null; }
      var p = document.createElement("p"); p.className = "nodata";
      p.textContent = (data.notes || {})[el.dataset.note] || "No data in this window yet.";
      el.innerHTML = ""; el.appendChild(p);
      return;
    }
    /* a hollow point (few samples, or merged with earlier windows) is drawn as a ring over the
       series' own point: one overlay series per series that has any */
    var layers = [];
    ss.forEach(function (s) {
      layers.push({s: s, values: s.values, ring: false});
      if (s.hollow.some(Boolean)) {
        layers.push({s: s, ring: true, values: s.values.map(function (v, i) { return s.hollow[i] ? v : null; })});
      }
    });
    var payload = [xs].concat(layers.map(function (l) { return l.values; }));
    var key = layers.map(function (l) { return l.s.label + (l.ring ? "*" : ""); }).join("|");
    if (el._plot && el._key === key) { el._plot.setData(payload); return; }
    if (el._plot) el._plot.destroy();
    el.innerHTML = "";
    var bg = getComputedStyle(el).getPropertyValue("--card").trim() || "#fff";
    var fmt = function (u, v) { return v == null ? "–" : v.toFixed(3); };
    var opts = {
      width: Math.max(240, el.clientWidth), height: 240,
      scales: {x: {time: true}},
      series: [{}].concat(layers.map(function (l) {
        if (!l.ring) return {label: l.s.label, stroke: l.s.color, width: 2, spanGaps: false, points: {size: 5}, value: fmt};
        // its values are the series' own (or null), so a line between two rings lies on the series'
        return {label: l.s.label + " (few samples)", stroke: l.s.color, width: 2, spanGaps: false,
                points: {show: true, size: 9, width: 2, stroke: l.s.color, fill: bg}, value: fmt};
      })),
      axes: [{}, {size: 56}],
      legend: {live: true}
    };
    el._plot = new uPlot(opts, payload, el); el._key = key;
    // one legend entry per series: the rings are explained by the words under the chart
    var rows = el.querySelectorAll(".u-legend .u-series");
    layers.forEach(function (l, i) { if (l.ring && rows[i + 1]) rows[i + 1].style.display = "none"; });
  }
  var inflight = {};   // charts sharing a feed share one request per cycle
  function loadChart(el) {
    var url = el.dataset.chart;
    if (!inflight[url]) {
      inflight[url] = fetch(url, {credentials: "same-origin"})
        .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); });
      inflight[url].then(function () { delete inflight[url]; }, function () { delete inflight[url]; });
    }
    return inflight[url].then(function (data) { drawChart(el, data); }).catch(function () { setLive(false); });
  }
  function pollCharts() { if (!document.hidden) charts.forEach(loadChart); }
  if (window.uPlot) {
    charts = Array.prototype.slice.call(document.querySelectorAll("[data-chart]"));
    charts.forEach(loadChart);
    window.addEventListener("resize", function () {
      charts.forEach(function (el) { if (el._plot) el._plot.setSize({width: Math.max(240, el.clientWidth), height: 240}); });
    });
  }

  /* ---- device page: remote diagnostics -> REST API (restart asks first) ------------------- */
  function sendDeviceCommand(btn) {
    var name = btn.dataset.deviceCommand, dev = btn.dataset.device;
    btn.disabled = true;
    fetch("/api/v1/devices/" + encodeURIComponent(dev) + "/commands", {method: "POST", credentials: "same-origin",
          headers: {"Accept": "application/json", "Content-Type": "application/json"}, body: JSON.stringify({name: name})})
      .then(function (r) { return r.json().then(function (body) { return {ok: r.ok, body: body}; }); })
      .then(function (res) {
        btn.disabled = false;
        if (!res.ok) { toast(name + " refused: " + (res.body.error || "unknown error"), true); return; }
        toast(name + " sent to " + dev + "; its answer appears under Diagnostics");
        [500, 2000, 5000].forEach(function (ms) { setTimeout(pollRegions, ms); });
      })
      .catch(function (e) { toast(name + " failed: " + e.message, true); btn.disabled = false; });
  }

  /* ---- rollout action buttons -> REST API ------------------------------------------------- */
  function bindCommands(root) {
    Array.prototype.forEach.call(root.querySelectorAll("button[data-device-command]"), function (btn) {
      if (btn._bound) return; btn._bound = true;
      btn.addEventListener("click", function () {
        if (btn.dataset.confirm && !window.confirm(btn.dataset.confirm)) return;
        sendDeviceCommand(btn);
      });
    });
    Array.prototype.forEach.call(root.querySelectorAll("button[data-command]"), function (btn) {
      if (btn._bound) return; btn._bound = true;
      btn.addEventListener("click", function () {
        if (btn.dataset.confirm) { confirmThen(btn, function () { send(btn); }); return; }
        send(btn);
      });
    });
  }
  /* rollback and cancel act on every device of the rollout: ask first; for a whole-fleet
     rollout the operator types the rollout id (as GitHub does before deleting a repository) */
  function confirmThen(btn, go) {
    var dlg = document.getElementById("confirm-dialog");
    if (!dlg || typeof dlg.showModal !== "function") { if (window.confirm(btn.dataset.confirm + "?")) go(); return; }
    var rid = btn.dataset.rollout, fleet = btn.dataset.fleet === "1", input = document.getElementById("confirm-id");
    var ok = document.getElementById("confirm-ok");
    document.getElementById("confirm-title").textContent = btn.dataset.confirm + " rollout " + rid + "?";
    document.getElementById("confirm-text").textContent = btn.dataset.command === "rollback"
      ? "Every device of this rollout (" + btn.dataset.devices + ") is told to go back to the bundle it ran before."
      : "Devices not yet issued are cancelled; devices that installed keep the new bundle.";
    document.getElementById("confirm-id-row").hidden = !fleet;
    input.value = "";
    ok.disabled = fleet;
    input.oninput = function () { ok.disabled = fleet && input.value.trim() !== rid; };
    dlg.onclose = function () { if (dlg.returnValue === "ok" && !ok.disabled) go(); };
    dlg.returnValue = "";
    dlg.showModal();
    (fleet ? input : ok).focus();
  }
  function send(btn) {
    var cmd = btn.dataset.command, rid = btn.dataset.rollout;
    btn.disabled = true;
    fetch("/api/v1/rollouts/" + encodeURIComponent(rid) + "/" + cmd, {method: "POST", credentials: "same-origin",
          headers: {"Accept": "application/json"}})
      .then(function (r) { return r.json().then(function (body) { return {ok: r.ok, body: body}; }); })
      .then(function (res) {
        if (!res.ok) { toast(cmd + " refused: " + (res.body.error || "unknown error"), true); btn.disabled = false; return; }
        toast("Rollout " + rid + ": " + cmd + " sent; phase is now " + res.body.phase.replace("_", " "));
        return pollRegions();
      })
      .catch(function (e) { toast(cmd + " failed: " + e.message, true); btn.disabled = false; });
  }
  bindCommands(document);

  /* ---- bulk actions on the device list ------------------------------------------------------
     The selection lives here, not in the table: the live region swaps the table every few
     seconds, so the checkboxes are re-ticked from it after each swap. */
  var bulk = document.getElementById("bulk-form");
  if (bulk) {
    var selected = {}, count = document.getElementById("bulk-count"), apply = document.getElementById("bulk-apply");
    var action = document.getElementById("bulk-action"), value = document.getElementById("bulk-value");
    var valueField = document.getElementById("bulk-value-field"), valueLabel = document.getElementById("bulk-value-label");
    var result = document.getElementById("bulk-result");
    function ids() { return Object.keys(selected).filter(function (k) { return selected[k]; }); }
    function boxes() { return Array.prototype.slice.call(document.querySelectorAll("input.select-device")); }
    function sync() {
      var all = boxes(), n = ids().length;
      all.forEach(function (b) { b.checked = !!selected[b.value]; });
      var page = document.getElementById("select-page");
      if (page) {
        var on = all.filter(function (b) { return b.checked; }).length;
        page.checked = all.length > 0 && on === all.length; page.indeterminate = on > 0 && on < all.length;
      }
      count.textContent = n + " device" + (n === 1 ? "" : "s") + " selected";
      apply.disabled = n === 0;
    }
    function labelValue() {
      var a = action.value;
      valueField.hidden = a === "retry";
      valueLabel.textContent = a === "set_group" ? "Group (empty clears it)" : a === "untag" ? "Tag to remove" : "Tag to add";
      value.setAttribute("list", a === "set_group" ? "" : "f-tags");
    }
    document.addEventListener("change", function (ev) {
      var t = ev.target;
      if (t.classList && t.classList.contains("select-device")) { selected[t.value] = t.checked; sync(); }
      else if (t.id === "select-page") { boxes().forEach(function (b) { selected[b.value] = t.checked; }); sync(); }
    });
    document.addEventListener("ef:updated", sync);
    document.getElementById("bulk-clear").addEventListener("click", function () { selected = {}; sync(); });
    action.addEventListener("change", labelValue);
    function show(html, bad) { result.innerHTML = html; result.hidden = false; result.classList.toggle("bad", !!bad); result.focus(); }
    function esc(t) { var d = document.createElement("div"); d.textContent = t; return d.innerHTML; }
    bulk.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var a = action.value, body = {action: a, devices: ids()}, v = value.value.trim();
      if (a === "tag" || a === "untag") { if (!v) { show("Enter the tag to " + (a === "tag" ? "add." : "remove."), true); value.focus(); return; } body.tag = v; }
      if (a === "set_group") body.group = v;
      apply.disabled = true;
      fetch("/api/v1/devices/bulk", {method: "POST", credentials: "same-origin",
            headers: {"Content-Type": "application/json", "Accept": "application/json"}, body: JSON.stringify(body)})
        .then(function (r) { return r.json().then(function (b) { return {ok: r.ok, body: b}; }); })
        .then(function (res) {
          if (!res.ok) { show("The hub refused the action: " + esc(res.body.error || JSON.stringify(res.body.detail || "")), true); return; }
          var b = res.body, problems = b.results.filter(function (x) { return x.status !== "ok"; });
          var html = "<strong id=\"bulk-summary\">" + b.ok + " ok, " + b.unknown + " unknown, " + b.refused + " refused</strong>";
          if (problems.length) {
            html += "<ul id=\"bulk-problems\">" + problems.map(function (x) {
              return "<li data-device=\"" + esc(x.device) + "\" data-status=\"" + x.status + "\"><code>" + esc(x.device) + "</code> " + x.status + ": " + esc(x.detail) + "</li>";
            }).join("") + "</ul>";
          }
          show(html, problems.length > 0);
          return pollRegions();
        })
        .catch(function (e) { show("Could not reach the hub: " + esc(e.message), true); })
        .then(function () { apply.disabled = ids().length === 0; });
    });
    labelValue(); sync();
  }

  /* ---- auto-submitting selects (chart window) --------------------------------------------- */
  Array.prototype.forEach.call(document.querySelectorAll("form[data-autosubmit] select"), function (s) {
    s.addEventListener("change", function () { s.form.submit(); });
  });

  /* ---- the rollout create form: preview + submit ------------------------------------------ */
  var form = document.getElementById("rollout-form");
  if (form) {
    var preview = document.getElementById("preview"), errBox = document.getElementById("form-error");
    var previewTimer = null, previewSeq = 0;
    function targetKind() { var c = form.querySelector("input[name=target_kind]:checked"); return c ? c.value : "all"; }
    function refreshPreview() {
      var q = new URLSearchParams({bundle: form.bundle.value, target_kind: targetKind(),
                                   target_value: form.target_value.value, cohorts: form.cohorts.value});
      var seq = ++previewSeq;   // responses can arrive out of order: only the newest request may paint
      fetch("/ui/rollouts/preview?" + q.toString(), {credentials: "same-origin"})
        .then(function (r) { return r.text(); })
        .then(function (html) { if (seq === previewSeq) preview.innerHTML = html; });
    }
    function schedulePreview() { clearTimeout(previewTimer); previewTimer = setTimeout(refreshPreview, 250); }
    form.addEventListener("input", schedulePreview);
    form.addEventListener("change", schedulePreview);
    form.preset.addEventListener("change", function () {
      var staged = form.preset.value === "staged";
      form.cohorts.value = staged ? "1, 10%, 50%, 100%" : "100%";
      form.soak_s.value = staged ? "60" : "0";
      form.on_breach.value = staged ? "rollback" : "pause";
    });
    function num(name) { var v = form[name].value.trim(); return v === "" ? null : Number(v); }
    function showError(msg) { errBox.textContent = msg; errBox.hidden = !msg; if (msg) errBox.focus(); }
    errBox.tabIndex = -1;
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      showError("");
      var kind = targetKind(), value = form.target_value.value.trim(), target = {};
      if (kind === "all") target.all = true;
      else if (!value) { showError("Target " + kind + " needs a value."); form.target_value.focus(); return; }
      else if (kind === "devices") target.devices = value.split(/[\s,]+/).filter(Boolean);
      else target[kind] = value;
      var soak = Number(form.soak_s.value);
      if (!Number.isInteger(soak) || soak < 0) { showError("Soak must be a whole number of seconds ≥ 0, got " + form.soak_s.value + "."); form.soak_s.focus(); return; }
      var gates = {max_p95_ratio: num("max_p95_ratio"), max_error_rate: num("max_error_rate"),
                   max_install_failure_rate: num("max_install_failure_rate") || 0, max_cloud_rate: num("max_cloud_rate"),
                   min_shadow_agreement: num("min_shadow_agreement"), min_samples: num("min_samples") || 50,
                   drift: form.drift.checked};
      var body = {bundle: form.bundle.value, target: target, policy: {
        cohorts: form.cohorts.value.split(",").map(function (s) { return s.trim(); }).filter(Boolean),
        soak_s: soak, on_breach: form.on_breach.value, approve_each_cohort: form.approve_each_cohort.checked, gates: gates}};
      var stages = [];
      if (form.stage_benchmark.checked) stages.push("benchmark");
      if (form.stage_shadow.checked) stages.push("shadow");
      if (stages.length) body.policy.stages = stages;
      var submit = document.getElementById("r-submit"); submit.disabled = true;
      fetch("/api/v1/rollouts", {method: "POST", credentials: "same-origin",
            headers: {"Content-Type": "application/json", "Accept": "application/json"}, body: JSON.stringify(body)})
        .then(function (r) { return r.json().then(function (b) { return {ok: r.ok, body: b}; }); })
        .then(function (res) {
          submit.disabled = false;
          if (!res.ok) { showError("The hub refused the rollout: " + (res.body.error || "unknown error")); return; }
          location.href = "/ui/rollouts/" + encodeURIComponent(res.body.id);
        })
        .catch(function (e) { submit.disabled = false; showError("Could not reach the hub: " + e.message); });
    });
    refreshPreview();
  }

  setInterval(pollRegions, POLL);
  setInterval(pollCharts, Math.max(POLL * 2, 5000));
  document.addEventListener("visibilitychange", function () { if (!document.hidden) { pollRegions(); pollCharts(); } });
})();
