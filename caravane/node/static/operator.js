// While a job started from this page runs, show its progress, then reload for the outcome.
// Without JavaScript the page says to reload it.
(function () {
  var box = document.getElementById("job");
  if (!box || !window.fetch) return;
  var running = box.querySelector('[data-state="running"]');
  if (!running) return;
  var progress = running.querySelector(".progress");
  function poll() {
    fetch(box.dataset.api, { headers: { Accept: "application/json" } })
      .then(function (r) { return r.json(); })
      .then(function (doc) {
        if (!doc.job || doc.job.state !== "running") { location.reload(); return; }
        if (doc.words && doc.words.progress) {
          if (!progress) {
            progress = document.createElement("span");
            progress.className = "progress";
            running.querySelector("p").append(" · ", progress);
          }
          progress.textContent = doc.words.progress;
        }
        setTimeout(poll, 1000);
      })
      .catch(function () { setTimeout(poll, 3000); });
  }
  setTimeout(poll, 700);
})();
