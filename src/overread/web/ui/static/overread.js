// overread web UI: live worklist refresh and keyboard navigation. No dependencies.
(function () {
  "use strict";

  function rows() {
    return Array.prototype.slice.call(document.querySelectorAll("tbody tr[data-href]"));
  }

  function selected() {
    return document.querySelector("tbody tr.selected");
  }

  function select(row) {
    var current = selected();
    if (current) { current.classList.remove("selected"); }
    if (row) {
      row.classList.add("selected");
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
  function startRefresh(table) {
    var url = table.getAttribute("data-refresh");
    var seconds = parseFloat(table.getAttribute("data-refresh-seconds") || "5");
    var body = document.getElementById("worklist-rows");
    var total = document.getElementById("total");
    var stamp = document.getElementById("refreshed");
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
          var keep = selected() ? selected().getAttribute("data-uid") : null;
          body.innerHTML = result[0];
          if (total && result[1] !== null) { total.textContent = result[1]; }
          if (keep) {
            var again = body.querySelector('tr[data-uid="' + CSS.escape(keep) + '"]');
            if (again) { again.classList.add("selected"); }
          }
          if (stamp) { stamp.textContent = "Updated " + new Date().toLocaleTimeString() + "."; }
        })
        .catch(function () { /* the next refresh tries again */ })
        .then(function () { window.setTimeout(refresh, seconds * 1000); });
    }
    window.setTimeout(refresh, seconds * 1000);
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
        if (row && event.target === document.body) { window.location.href = row.getAttribute("data-href"); }
        else { return; }
        break;
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
        // Esc closes the key help; on the study page it never leaves the page.
        var open = document.getElementById("keys");
        if (open && !open.hidden) { open.hidden = true; }
        else if (page !== "study") { window.location.href = "/"; }
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
    document.addEventListener("click", function (event) {
      var row = event.target.closest ? event.target.closest("tbody tr[data-href]") : null;
      if (!row || event.target.closest("a, button, form, input")) { return; }
      window.location.href = row.getAttribute("data-href");
    });
    var table = document.getElementById("worklist");
    if (table && table.getAttribute("data-refresh")) { startRefresh(table); }
  });
})();
