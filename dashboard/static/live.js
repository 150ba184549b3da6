// Live refresh: every few seconds, fetch the page again and swap its main
// content in, unless the reader is busy (typing in a form, selecting text)
// or paused it. Without JavaScript the pages are the same, only static.
(function () {
  "use strict";
  var status = document.getElementById("live-status");
  if (!status || !window.fetch || !window.DOMParser) return;
  var every = parseInt(status.getAttribute("data-refresh"), 10);
  if (!(every > 0)) return;
  var toggle = document.getElementById("live-toggle");
  var paused = sessionStorage.getItem("inbox-dashboard-paused") === "1";
  status.hidden = false;
  function show() { toggle.textContent = paused ? "resume" : "pause"; }
  toggle.addEventListener("click", function () {
    paused = !paused;
    sessionStorage.setItem("inbox-dashboard-paused", paused ? "1" : "0");
    show();
  });
  show();
  function busy() {
    var a = document.activeElement;
    if (a && (a.tagName === "INPUT" || a.tagName === "TEXTAREA" || a.tagName === "SELECT")) return true;
    var sel = window.getSelection && window.getSelection();
    return sel && !sel.isCollapsed;
  }
  function tick() {
    if (paused || document.hidden || busy()) { setTimeout(tick, every); return; }
    fetch(location.href, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null || busy()) return;
        var next = new DOMParser().parseFromString(html, "text/html").getElementById("main");
        var main = document.getElementById("main");
        if (next && main) main.innerHTML = next.innerHTML;
      })
      .catch(function () {})
      .then(function () { setTimeout(tick, every); });
  }
  setTimeout(tick, every);
})();
