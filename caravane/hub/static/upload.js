/* The publish page's uploader: the archive goes to the hub in pieces (/ui/uploads), so the
   progress bar is true and a cut connection resumes from the last piece the hub holds (also
   after a reload: the upload's id is kept in localStorage under the file's name, size and
   date). Without this script the form still works: the browser sends the file at once. */
(function () {
  'use strict';
  var form = document.getElementById('publish-form');
  if (!form || !window.fetch || !window.File || !File.prototype.slice) { return; }
  var PIECE = 1024 * 1024;
  var input = document.getElementById('archive');
  var box = document.getElementById('upload');
  var bar = document.getElementById('upload-progress');
  var status = document.getElementById('upload-status');
  var errorBox = document.getElementById('publish-error');
  var csrf = form.dataset.csrf;
  var busy = false;

  function fill(msg, values) {
    return msg.replace(/\{(\w+)\}/g, function (_, k) { return values[k]; });
  }
  function human(n) {
    var units = document.documentElement.lang === 'fr' ? ['o', 'Ko', 'Mo', 'Go'] : ['B', 'KB', 'MB', 'GB'];
    var i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    var text = i ? n.toFixed(1) + ' ' + units[i] : n + ' ' + units[0];
    return document.documentElement.lang === 'fr' ? text.replace('.', ',') : text;
  }
  function fail(message) {
    busy = false;
    errorBox.textContent = message;
    errorBox.hidden = false;
    input.setAttribute('aria-describedby', 'publish-error');
    input.focus();
  }
  function show(done, total) {
    var pct = total ? Math.floor(100 * done / total) : 0;
    bar.value = pct;
    bar.textContent = pct + ' %';
    status.textContent = fill(form.dataset.msgSent, {done: human(done), total: human(total)});
  }
  function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }
  function call(method, url, body, headers) {
    var h = {'X-CSRF-Token': csrf};
    for (var k in headers || {}) { h[k] = headers[k]; }
    return fetch(url, {method: method, body: body, headers: h, credentials: 'same-origin'});
  }
  async function answer(r) {
    var doc = {};
    try { doc = await r.json(); } catch (e) { doc = {}; }
    return doc;
  }

  async function send(file) {
    var key = 'caravane-upload:' + file.name + ':' + file.size + ':' + file.lastModified;
    var id = localStorage.getItem(key);
    var offset = 0;
    if (id) {
      var r0 = await call('GET', '/ui/uploads/' + id).catch(function () { return null; });
      if (r0 && r0.ok) {
        offset = (await answer(r0)).offset || 0;
        status.textContent = fill(form.dataset.msgResumed, {done: human(offset)});
      } else { id = null; }
    }
    if (!id) {
      var r1 = await call('POST', '/ui/uploads', JSON.stringify({name: file.name, size: file.size}),
                          {'Content-Type': 'application/json'});
      var d1 = await answer(r1);
      if (!r1.ok) { throw new Error(d1.error || r1.statusText); }
      id = d1.id;
      localStorage.setItem(key, id);
    }
    var wait = 1000;
    while (offset < file.size) {
      show(offset, file.size);
      var r;
      try {
        r = await call('PUT', '/ui/uploads/' + id, file.slice(offset, offset + PIECE),
                       {'Upload-Offset': String(offset), 'Content-Type': 'application/octet-stream'});
      } catch (cut) {  /* the connection dropped: wait, ask where the hub is, go on */
        status.textContent = fill(form.dataset.msgRetry, {s: Math.round(wait / 1000)});
        await sleep(wait);
        wait = Math.min(wait * 2, 30000);
        var again = await call('GET', '/ui/uploads/' + id).catch(function () { return null; });
        if (again && again.ok) { offset = (await answer(again)).offset; }
        continue;
      }
      var d = await answer(r);
      if (r.ok || r.status === 409) { offset = d.offset; wait = 1000; continue; }
      if (r.status === 404) { localStorage.removeItem(key); }
      throw new Error(d.error || r.statusText);
    }
    show(file.size, file.size);
    localStorage.removeItem(key);
    return id;
  }

  var action = form.action;
  /* back from the next page (the browser's page cache): the form as it was, usable again */
  window.addEventListener('pageshow', function () {
    busy = false;
    input.disabled = false;
    form.enctype = 'multipart/form-data';
    form.action = action;
    form.elements.upload.value = '';
  });

  form.addEventListener('submit', function (event) {
    var file = input.files && input.files[0];
    event.preventDefault();
    if (busy) { return; }
    errorBox.hidden = true;
    if (!file) { fail(form.dataset.msgNoFile); return; }
    if (!/\.(zip|tar\.gz|tgz)$/i.test(file.name)) { fail(fill(form.dataset.msgKind, {name: file.name})); return; }
    busy = true;
    box.hidden = false;
    send(file).then(function (id) {
      status.textContent = form.dataset.msgChecking;
      form.elements.upload.value = id;
      input.disabled = true;  /* the file is at the hub already: post the fields only */
      form.enctype = 'application/x-www-form-urlencoded';
      form.action = '/ui/publish';
      form.submit();
    }, function (err) { fail(err.message); });
  });
})();
