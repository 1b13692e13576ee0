// overread web UI: live worklist refresh and keyboard navigation. No dependencies.
(function () {
  "use strict";

  // The study viewer's first two requests (the study's metadata and the reference
  // image's frame), started now rather than once its large script has run; the
  // viewer takes them from window.overreadPrefetch.
  (function prefetchViewer() {
    var root = document.getElementById("viewer");
    var prefetched = {};
    window.overreadPrefetch = prefetched;
    if (!root || !root.dataset.referenceFrame || !window.fetch) { return; }
    function start(url, accept) {
      var answer = fetch(url, { credentials: "same-origin", headers: { Accept: accept } });
      answer.catch(function () { /* reported where it is used */ });
      prefetched[url] = answer;
    }
    start(root.dataset.metadata, "application/dicom+json");
    start(root.dataset.referenceFrame, 'multipart/related; type="application/octet-stream"');
  })();

  // Priors held at the PACS only: asked for once the page has loaded (the gateway's
  // own priors are listed already), and given up on after a while so that a slow
  // PACS never leaves the reader waiting.
  (function pacsPriors() {
    var box = document.getElementById("priors-pacs");
    if (!box || !box.dataset.url || !window.fetch || !window.DOMParser) { return; }
    var stop = window.AbortController ? new AbortController() : null;
    var timer = stop ? setTimeout(function () { stop.abort(); }, 15000) : null;
    function say(text) {
      box.textContent = "";
      var p = document.createElement("p");
      p.className = "notice small";
      p.id = "priors-pacs-failed";
      p.textContent = text;
      box.appendChild(p);
    }
    fetch(box.dataset.url, { credentials: "same-origin", signal: stop ? stop.signal : undefined })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        box.textContent = "";
        Array.prototype.slice.call(fresh.body.childNodes).forEach(function (node) {
          box.appendChild(document.importNode(node, true));
        });
      })
      .catch(function (error) {
        say("The PACS did not answer in time" + (error && error.name === "AbortError" ? "" : ": " + error.message) + ".");
      })
      .then(function () { if (timer) { clearTimeout(timer); } });
  })();

  // The selected study, by UID: selection follows the study, never a row index.
  var selectedUid = null;

  function rows() {
    return Array.prototype.slice.call(document.querySelectorAll("tbody tr[data-href]"));
  }

  function selected() {
    if (selectedUid === null) { return document.querySelector("tbody tr.selected"); }
    return document.querySelector('tbody tr[data-uid="' + CSS.escape(selectedUid) + '"]');
  }

  function select(row) {
    var marked = document.querySelectorAll("tbody tr.selected");
    Array.prototype.forEach.call(marked, function (r) { r.classList.remove("selected"); });
    selectedUid = row ? row.getAttribute("data-uid") : null;
    if (row) {
      row.classList.add("selected");
      row.focus({ preventScroll: true });
      row.scrollIntoView({ block: "nearest" });
    }
  }

  function move(step) {
    var list = rows();
    if (!list.length) { return; }
    var index = list.indexOf(selected());
    if (index < 0) {
      var shown = document.querySelector("tbody tr.shown");
      index = shown ? list.indexOf(shown) : -1;
    }
    select(list[Math.max(0, Math.min(list.length - 1, index + step))]);
  }

  // -- live worklist -----------------------------------------------------------------
  // A refresh never moves a row: rows still listed get their new content in place;
  // when studies arrive, leave or change order, a bar says so and the reader chooses
  // when to re-sort (button or "r").
  var applyPending = function () {};

  function uidsOf(container) {
    return Array.prototype.map.call(
      container.querySelectorAll("tr[data-uid]"),
      function (r) { return r.getAttribute("data-uid"); }
    );
  }

  function studies(n) { return n + (n === 1 ? " study" : " studies"); }

  function startRefresh(table) {
    var url = table.getAttribute("data-refresh");
    var seconds = parseFloat(table.getAttribute("data-refresh-seconds") || "5");
    var body = document.getElementById("worklist-rows");
    var total = document.getElementById("total");
    var stamp = document.getElementById("refreshed");
    var bar = document.getElementById("worklist-update");
    var barText = document.getElementById("worklist-update-text");
    var pending = null;

    function showTotal(count) {
      if (total && count !== null) { total.textContent = count; }
    }

    applyPending = function () {
      if (!pending) { return; }
      var focused = document.activeElement && document.activeElement.closest
        ? document.activeElement.closest("#worklist-rows tr") : null;
      body.innerHTML = pending.html;
      showTotal(pending.count);
      pending = null;
      if (bar) { bar.hidden = true; bar.classList.remove("has-critical"); }
      var again = selected();
      if (again) {
        again.classList.add("selected");
        if (focused) { again.focus({ preventScroll: true }); }
        again.scrollIntoView({ block: "nearest" });
      }
    };

    function update(html, count) {
      var fresh = document.createElement("tbody");
      fresh.innerHTML = html;
      var now = uidsOf(body);
      var next = uidsOf(fresh);
      // Content of rows still listed changes in place (waiting time, state, reader).
      Array.prototype.forEach.call(fresh.querySelectorAll("tr[data-uid]"), function (row) {
        var uid = row.getAttribute("data-uid");
        var old = body.querySelector('tr[data-uid="' + CSS.escape(uid) + '"]');
        if (!old) { return; }
        if (old.innerHTML !== row.innerHTML) { old.innerHTML = row.innerHTML; }
        var keep = old.classList.contains("selected");
        old.className = row.className + (keep ? " selected" : "");
      });
      if (now.join("\n") === next.join("\n")) {
        pending = null;
        if (bar) { bar.hidden = true; }
        showTotal(count);
        return;
      }
      pending = { html: html, count: count };
      var added = next.filter(function (u) { return now.indexOf(u) < 0; });
      var gone = now.filter(function (u) { return next.indexOf(u) < 0; });
      var critical = added.filter(function (u) {
        var row = fresh.querySelector('tr[data-uid="' + CSS.escape(u) + '"]');
        return row && row.getAttribute("data-priority") === "critical";
      });
      var parts = [];
      if (added.length) {
        parts.push(added.length + (added.length === 1 ? " new study" : " new studies") +
          (critical.length ? " (" + critical.length + " critical)" : ""));
      }
      if (gone.length) { parts.push(studies(gone.length) + " left this list"); }
      parts.push("order changed");
      if (barText) { barText.textContent = parts.join(" \u00b7 ") + "."; }
      if (bar) {
        bar.hidden = false;
        bar.classList.toggle("has-critical", critical.length > 0);
      }
    }

    function refresh() {
      fetch(url, { credentials: "same-origin", headers: { "X-Overread-Refresh": "1" } })
        .then(function (response) {
          if (response.status === 401) {
            window.location.href = response.headers.get("X-Overread-Login") || "/login";
            return null;
          }
          if (!response.ok) { return null; }
          var count = response.headers.get("X-Worklist-Total");
          return response.text().then(function (html) { return [html, count]; });
        })
        .then(function (result) {
          if (!result) { return; }
          update(result[0], result[1]);
          if (stamp) { stamp.textContent = "Checked " + new Date().toLocaleTimeString() + "."; }
        })
        .catch(function () { /* the next refresh tries again */ })
        .then(function () { window.setTimeout(refresh, seconds * 1000); });
    }
    var button = document.getElementById("worklist-resort");
    if (button) { button.addEventListener("click", function () { applyPending(); }); }
    window.setTimeout(refresh, seconds * 1000);
  }

  // -- verdicts in place --------------------------------------------------------------
  // A verdict form is posted exactly as the form says (its fields and the pressed
  // button), and the finding's row, the review panel and the reading state are taken
  // from the page the server answers with: no reload, the patient header and the image
  // stay where they are, and focus stays on the button pressed.
  function swap(fresh, selector) {
    var now = document.querySelector(selector);
    var next = fresh.querySelector(selector);
    if (now && next) { now.replaceWith(document.importNode(next, true)); }
  }

  function submitInPlace(event) {
    var form = event.target;
    if (!form.matches || !form.matches("form.verdicts")) { return; }
    if (!window.fetch || !window.DOMParser) { return; }
    event.preventDefault();
    var data = new URLSearchParams(new FormData(form));
    var button = event.submitter || document.activeElement;
    if (button && button.form === form && button.name) { data.append(button.name, button.value); }
    var row = form.closest("tr[data-finding]");
    var finding = row ? row.getAttribute("data-finding") : "";
    var pressed = button && button.value ? button.value : "";
    var status = document.getElementById("saved");
    form.setAttribute("aria-busy", "true");
    fetch(form.action, { method: "POST", body: data, credentials: "same-origin" })
      .then(function (response) {
        return response.text().then(function (html) { return [response, html]; });
      })
      .then(function (answer) {
        var fresh = new DOMParser().parseFromString(answer[1], "text/html");
        if (!fresh.getElementById("findings")) {
          if (answer[0].ok) { window.location.href = answer[0].url; return; }
          var main = fresh.querySelector("main");
          if (status) {
            status.hidden = false;
            status.classList.add("error");
            status.textContent = "Not saved: " + (main ? main.textContent.trim() : "HTTP " + answer[0].status);
          }
          return;
        }
        var selector = 'tr[data-finding="' + CSS.escape(finding) + '"]';
        var old = document.querySelector("#findings " + selector);
        var next = fresh.querySelector("#findings " + selector);
        if (old && next) {
          // The answer shows the voted finding; this page keeps showing its own.
          var keep = old.classList.contains("selected");
          var shown = old.classList.contains("shown");
          old.innerHTML = next.innerHTML;
          next.classList.toggle("shown", shown);
          next.classList.toggle("selected", keep);
          old.className = next.className;
          var link = old.querySelector("a[aria-current]");
          if (link && !shown) { link.removeAttribute("aria-current"); }
          var again = old.querySelector('button[name="verdict"][value="' + CSS.escape(pressed) + '"]');
          if (again) { again.focus({ preventScroll: true }); }
        }
        ["#review", "#read-state"].forEach(function (s) { swap(fresh, s); });
        var said = fresh.getElementById("saved");
        if (status && said) {
          status.classList.remove("error");
          status.textContent = said.textContent;
          status.hidden = !said.textContent;
        }
      })
      .catch(function (error) {
        if (status) {
          status.hidden = false;
          status.classList.add("error");
          status.textContent = "Not saved: " + error.message;
        }
      })
      .then(function () { form.removeAttribute("aria-busy"); });
  }

  // -- keys --------------------------------------------------------------------------
  function verdict(value) {
    var row = selected() || document.querySelector("tbody tr.shown");
    if (!row) { return; }
    var button = row.querySelector('button[name="verdict"][value="' + value + '"]');
    if (button) { button.click(); }
  }

  function onKey(event) {
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    var tag = (event.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "select" || tag === "textarea") { return; }
    var page = document.body.getAttribute("data-page");
    var row;
    switch (event.key) {
      case "j": case "ArrowDown": move(1); break;
      case "k": case "ArrowUp": move(-1); break;
      case "Enter": case "o":
        row = selected();
        if (row && (event.target === document.body || event.target === row)) {
          window.location.href = row.getAttribute("data-href");
        } else { return; }
        break;
      case "r": if (page === "worklist") { applyPending(); } else { return; } break;
      case "h":
        row = selected();
        if (page === "study" && row) { window.location.href = row.getAttribute("data-href"); }
        break;
      case "a": if (page === "study") { verdict("agree"); } break;
      case "d": if (page === "study") { verdict("disagree"); } break;
      case "u": if (page === "study") { verdict("uncertain"); } break;
      case "c":
        var box = document.getElementById("critical-only");
        if (box) { box.checked = !box.checked; box.form.submit(); }
        break;
      case "w": window.location.href = "/"; break;
      case "Escape":
        // Esc closes the key help; on the study and comparison pages it never leaves the page.
        var open = document.getElementById("keys");
        if (open && !open.hidden) { open.hidden = true; }
        else if (page !== "study" && page !== "compare") { window.location.href = "/"; }
        else { return; }
        break;
      case "l": window.location.href = "/alerts"; break;
      case "?":
        var help = document.getElementById("keys");
        help.hidden = !help.hidden;
        break;
      default: return;
    }
    event.preventDefault();
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.addEventListener("keydown", onKey);
    document.addEventListener("submit", submitInPlace);
    document.addEventListener("click", function (event) {
      var row = event.target.closest ? event.target.closest("tbody tr[data-href]") : null;
      if (!row || event.target.closest("a, button, form, input")) { return; }
      window.location.href = row.getAttribute("data-href");
    });
    var table = document.getElementById("worklist");
    if (table && table.getAttribute("data-refresh")) { startRefresh(table); }
  });
})();
