// Lookalike console: drop, paste and pick files; a crop box on the search query; uploads with progress.
// Plain JavaScript, no build step. Every form also works without it (it only adds these conveniences).
(function () {
  "use strict";

  function setFiles(input, files) {
    if (!input || !files || !files.length) return;
    var dt = new DataTransfer();
    var list = input.multiple ? Array.prototype.slice.call(files) : [files[0]];
    list.forEach(function (f) { dt.items.add(f); });
    input.files = dt.files;
    input.dispatchEvent(new Event("change", { bubbles: true }));
  }

  function imageFiles(items) {
    var out = [];
    Array.prototype.forEach.call(items || [], function (it) {
      var f = it.getAsFile ? (it.kind === "file" ? it.getAsFile() : null) : it;
      if (f && (!f.type || f.type.indexOf("image/") === 0) && f.name.charAt(0) !== ".") out.push(f);  // no .DS_Store
    });
    return out;
  }

  // A dropped folder: its files, read through the entries API, each with its path within what was dropped.
  var relativePath = new WeakMap();
  function walk(entry, prefix, out) {
    if (entry.isFile) {
      return new Promise(function (done) {
        entry.file(function (f) { relativePath.set(f, prefix + f.name); out.push(f); done(); }, function () { done(); });
      });
    }
    if (!entry.isDirectory) return Promise.resolve();
    var reader = entry.createReader(), entries = [];
    function more() {  // readEntries gives a batch at a time, then an empty one
      return new Promise(function (done) { reader.readEntries(done, function () { done([]); }); }).then(function (batch) {
        if (!batch.length) return null;
        entries = entries.concat(batch);
        return more();
      });
    }
    return more().then(function () {
      return entries.reduce(function (chain, e) {
        return chain.then(function () { return walk(e, prefix + entry.name + "/", out); });
      }, Promise.resolve());
    });
  }

  function setUpDropZones() {
    document.querySelectorAll("[data-drop-for]").forEach(function (zone) {
      var input = document.getElementById(zone.getAttribute("data-drop-for"));
      zone.addEventListener("dragover", function (e) { e.preventDefault(); zone.classList.add("over"); });
      zone.addEventListener("dragleave", function () { zone.classList.remove("over"); });
      zone.addEventListener("drop", function (e) {
        e.preventDefault();
        zone.classList.remove("over");
        var entries = input.multiple && e.dataTransfer.items ? Array.prototype.map.call(e.dataTransfer.items,
          function (it) { return it.webkitGetAsEntry ? it.webkitGetAsEntry() : null; }).filter(Boolean) : [];
        if (!entries.some(function (en) { return en.isDirectory; })) {
          setFiles(input, imageFiles(e.dataTransfer.files));
          return;
        }
        var found = [];  // the entries are read now, in the event; their files come later
        entries.reduce(function (chain, en) { return chain.then(function () { return walk(en, "", found); }); },
          Promise.resolve()).then(function () { setFiles(input, imageFiles(found)); });
      });
    });
    document.addEventListener("paste", function (e) {
      var files = imageFiles(e.clipboardData && e.clipboardData.items);
      if (!files.length) return;
      var zones = Array.prototype.slice.call(document.querySelectorAll("[data-drop-for]"));
      var zone = zones.filter(function (z) { return z.contains(document.activeElement); })[0] ||
        zones.filter(function (z) { var i = document.getElementById(z.getAttribute("data-drop-for")); return !i.files.length; })[0] ||
        zones[0];
      if (!zone) return;
      e.preventDefault();
      setFiles(document.getElementById(zone.getAttribute("data-drop-for")), files);
    });
  }

  // -- the crop box: drag on the query image; the fractions go into the form's crop_x/y/w/h fields ------------
  function setUpCrop() {
    var form = document.getElementById("search-form");
    if (!form) return;
    var input = form.querySelector("#image"), stage = form.querySelector(".crop-stage");
    var img = stage.querySelector(".crop-image"), box = stage.querySelector(".crop-box");
    var fields = ["x", "y", "w", "h"].map(function (k) { return form.querySelector("#crop_" + k); });
    var start = null;

    function draw() {
      var v = fields.map(function (f) { return parseFloat(f.value); });
      if (v.some(isNaN) || v[2] <= 0 || v[3] <= 0) { box.hidden = true; return; }
      box.hidden = false;
      box.style.left = (v[0] * 100) + "%"; box.style.top = (v[1] * 100) + "%";
      box.style.width = (v[2] * 100) + "%"; box.style.height = (v[3] * 100) + "%";
    }
    function clear() { fields.forEach(function (f) { f.value = ""; }); draw(); }
    function at(e) {
      var r = img.getBoundingClientRect();
      return [Math.min(Math.max((e.clientX - r.left) / r.width, 0), 1), Math.min(Math.max((e.clientY - r.top) / r.height, 0), 1)];
    }
    function update(e) {
      var p = at(e), x = Math.min(start[0], p[0]), y = Math.min(start[1], p[1]);
      var vals = [x, y, Math.abs(p[0] - start[0]), Math.abs(p[1] - start[1])];
      fields.forEach(function (f, i) { f.value = vals[i].toFixed(4); });
      draw();
    }
    input.addEventListener("change", function () {
      clear();
      if (!input.files.length) { stage.hidden = true; return; }
      if (img.src) URL.revokeObjectURL(img.src);
      img.src = URL.createObjectURL(input.files[0]);
      stage.hidden = false;
    });
    stage.addEventListener("pointerdown", function (e) { e.preventDefault(); start = at(e); stage.setPointerCapture(e.pointerId); });
    stage.addEventListener("pointermove", function (e) { if (start) update(e); });
    stage.addEventListener("pointerup", function (e) {
      if (!start) return;
      update(e);
      start = null;
      if (parseFloat(fields[2].value) < 0.01 || parseFloat(fields[3].value) < 0.01) clear();  // a click, not a box
    });
    fields.forEach(function (f) { f.addEventListener("input", draw); });
    form.querySelector(".crop-clear").addEventListener("click", clear);
  }

  // -- add: one request per file, so a progress bar can follow and each failure is listed -----------------------
  function setUpAdd() {
    var form = document.getElementById("add-form");
    if (!form || !window.fetch) return;
    form.addEventListener("submit", function (e) {
      var input = form.querySelector("#images"), folder = form.querySelector("#folder");
      var files = Array.prototype.slice.call(input.files).concat(imageFiles(folder ? folder.files : []));
      if (!files.length) return;  // the server says what is missing
      e.preventDefault();
      var progress = document.getElementById("add-progress"), count = document.getElementById("add-count");
      var list = document.getElementById("add-results"), done = 0, failed = 0, button = form.querySelector("button[type=submit]");
      progress.max = files.length; progress.value = 0; progress.hidden = false; button.disabled = true;
      function report() { count.textContent = done + " of " + files.length + " sent" + (failed ? ", " + failed + " failed" : "") + "."; }
      function failure(file, text) {
        var li = document.createElement("li"); li.className = "failed";
        li.textContent = file.name + ": failed " + text; list.appendChild(li); failed += 1;
      }
      report();
      files.reduce(function (chain, file) {
        return chain.then(function () {
          var body = new FormData();
          ["csrf", "db", "group"].forEach(function (n) { body.append(n, form.elements[n].value); });
          body.append("images", file, relativePath.get(file) || file.webkitRelativePath || file.name);
          return fetch(form.action, { method: "POST", body: body, credentials: "same-origin",
            headers: { "X-Console-Fetch": "1", "X-CSRF-Token": document.body.getAttribute("data-csrf") } })
            .then(function (r) {
              return r.text().then(function (text) {
                if (r.status === 200 || r.status === 207 || (r.status === 400 && text.indexOf("<li") === 0)) {
                  var tmp = document.createElement("ul"); tmp.innerHTML = text;
                  Array.prototype.slice.call(tmp.children).forEach(function (li) {
                    if (li.getAttribute("data-ok") === "0") failed += 1;
                    list.appendChild(li);
                  });
                } else {
                  var doc = new DOMParser().parseFromString(text, "text/html"), msg = doc.querySelector(".message");
                  failure(file, "(" + r.status + ") " + (msg ? msg.textContent : r.statusText));
                }
              });
            }, function (err) { failure(file, String(err)); })
            .then(function () { done += 1; progress.value = done; report(); });
        });
      }, Promise.resolve()).then(function () { button.disabled = false; input.value = ""; if (folder) folder.value = ""; });
    });
  }

  function ready() { setUpDropZones(); setUpCrop(); setUpAdd(); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", ready); else ready();
})();
