// flipstack's pages work without JavaScript (plain forms, a refreshing
// gallery). With it: several pictures upload one request each with a progress
// bar, errors appear next to the file they concern, the gallery updates in
// place as pictures are flipped (pushed by the server), deleting asks in a
// dialog, and the viewer takes the arrow keys and Escape.
"use strict";

(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);

  // ---- Upload page ------------------------------------------------------
  function setupUpload() {
    const form = $("#upload-form");
    if (!form || !window.FormData || !window.XMLHttpRequest) return;
    const input = $("#file", form);
    const zone = $("#dropzone", form);
    const queue = $("#queue", form);
    const maxBytes = Number(form.dataset.maxBytes || 0);

    if (zone && input) {
      ["dragenter", "dragover"].forEach((t) =>
        zone.addEventListener(t, (e) => { e.preventDefault(); zone.classList.add("over"); }));
      ["dragleave", "drop"].forEach((t) =>
        zone.addEventListener(t, () => zone.classList.remove("over")));
      zone.addEventListener("drop", (e) => {
        e.preventDefault();
        if (e.dataTransfer && e.dataTransfer.files.length) {
          input.files = e.dataTransfer.files;
          input.dispatchEvent(new Event("change"));
        }
      });
    }

    function row(file) {
      const li = document.createElement("li");
      const name = document.createElement("div");
      name.className = "file-name";
      name.textContent = file.name;
      const bar = document.createElement("progress");
      bar.max = 100;
      bar.value = 0;
      bar.setAttribute("aria-label", "Upload of " + file.name);
      const status = document.createElement("div");
      status.className = "file-status";
      status.textContent = "Waiting…";
      li.append(name, bar, status);
      queue.append(li);
      return { li, bar, status };
    }

    function fail(r, text) {
      r.li.classList.add("error");
      r.bar.hidden = true;
      r.status.textContent = text;
    }

    function send(file, r) {
      return new Promise((resolve) => {
        const data = new FormData();
        data.append("csrf", $("input[name=csrf]", form).value);
        const email = $("#email", form);
        if (email && email.value) data.append("email", email.value);
        // As a plain form sends it: present when ticked, absent (off) when not.
        const notice = $("#notice", form);
        if (notice && notice.checked) data.append("notice", notice.value);
        // The page could not show the remembered choice: unticked changes nothing.
        const unknown = $("input[name=notice_unknown]", form);
        if (unknown) data.append("notice_unknown", unknown.value);
        data.append("file", file, file.name);
        const xhr = new XMLHttpRequest();
        xhr.open("POST", form.action);
        xhr.setRequestHeader("Accept", "application/json");
        xhr.upload.addEventListener("progress", (e) => {
          if (e.lengthComputable) {
            r.bar.value = Math.round((e.loaded / e.total) * 100);
            r.status.textContent = "Uploading… " + r.bar.value + "%";
          }
        });
        xhr.addEventListener("load", () => {
          let body = null;
          try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
          if (body && body.csrf) $("input[name=csrf]", form).value = body.csrf;
          if (body && body.ok) {
            r.bar.value = 100;
            r.li.classList.add("done");
            r.status.textContent = "Uploaded; it is being flipped.";
            // Signed in now: the address is no longer needed.
            const e = $("#email", form);
            if (e) e.readOnly = true;
            resolve(true);
          } else {
            fail(r, (body && body.error) || "The upload failed (" + xhr.status + "). Please try again.");
            resolve(false);
          }
        });
        xhr.addEventListener("error", () => { fail(r, "The connection broke; please try again."); resolve(false); });
        r.status.textContent = "Uploading…";
        xhr.send(data);
      });
    }

    form.addEventListener("submit", async (e) => {
      const files = Array.from(input.files || []);
      if (!files.length) return; // let the browser say a file is required
      e.preventDefault();
      const button = $("button[type=submit]", form);
      button.disabled = true;
      queue.hidden = false;
      queue.replaceChildren();
      const rows = files.map((f) => [f, row(f)]);
      let uploaded = 0;
      let refused = 0;
      // One at a time: the first upload of a new address signs the browser in.
      for (const [file, r] of rows) {
        if (maxBytes && file.size > maxBytes) {
          fail(r, "This file is larger than the limit (" + form.dataset.maxSize + ").");
          refused += 1;
          continue;
        }
        if (await send(file, r)) uploaded += 1; else refused += 1;
      }
      button.disabled = false;
      if (uploaded && !refused) {
        window.location.assign("/gallery");
      } else if (uploaded) {
        const li = document.createElement("li");
        const a = document.createElement("a");
        a.href = "/gallery";
        a.textContent = "See the uploaded pictures in your gallery";
        li.append(a);
        queue.append(li);
      }
    });
  }

  // ---- Gallery: live updates and delete ---------------------------------
  function setupGallery() {
    const list = $("#gallery");
    const summary = $("#summary");
    if (!list || !summary || !window.fetch) return;

    async function refresh() {
      const res = await fetch(window.location.pathname + window.location.search, { cache: "no-store", credentials: "same-origin" });
      if (!res.ok) return true;
      const doc = new DOMParser().parseFromString(await res.text(), "text/html");
      const fresh = $("#gallery", doc);
      const freshSummary = $("#summary", doc);
      if (!fresh || !freshSummary) return true;
      const keep = new Set();
      let before = null;
      for (const item of Array.from(fresh.children).reverse()) {
        keep.add(item.id);
        const old = document.getElementById(item.id);
        const node = document.importNode(item, true);
        if (!old) {
          list.insertBefore(node, before ? before : null);
        } else if (old.dataset.state !== item.dataset.state) {
          old.replaceWith(node);
        }
        before = document.getElementById(item.id);
      }
      for (const old of Array.from(list.children)) if (!keep.has(old.id)) old.remove();
      summary.replaceWith(document.importNode(freshSummary, true));
      return Number(freshSummary.dataset.unfinished || 0) > 0;
    }

    // The server pushes a "change" when one of these pictures is flipped (or
    // fails, or goes); the page then reads itself again. Without
    // EventSource, or while the push is down, it looks once a second.
    let stream = null;
    let timer = null;
    let busy = false;
    let again = false;
    async function update() {
      if (busy) { again = true; return; }
      busy = true;
      let unfinished = true;
      try { unfinished = await refresh(); } catch (_) { unfinished = true; }
      busy = false;
      if (again) { again = false; return update(); }
      if (!unfinished) stop();
    }
    function stop() {
      if (stream) { stream.close(); stream = null; }
      if (timer) { window.clearInterval(timer); timer = null; }
      document.body.dataset.live = "idle";
    }
    function poll() {
      if (!timer) timer = window.setInterval(update, 1000);
    }
    function follow() {
      document.body.dataset.live = "on";
      if (!window.EventSource) return poll();
      stream = new EventSource("/gallery/events");
      // Anything that finished before the stream opened is read once.
      stream.addEventListener("open", () => {
        if (timer) { window.clearInterval(timer); timer = null; }
        update();
      });
      stream.addEventListener("change", update);
      stream.addEventListener("error", () => { if (stream) poll(); });
    }
    if (Number(summary.dataset.unfinished || 0) > 0) follow(); else document.body.dataset.live = "idle";

    list.addEventListener("click", async (e) => {
      const link = e.target.closest("a.delete");
      if (!link) return;
      e.preventDefault();
      if (!window.confirm("Delete " + link.dataset.name + "? The original and the flipped picture are removed for good.")) return;
      const form = $("#delete-form");
      const data = new URLSearchParams(new FormData(form));
      const res = await fetch("/uploads/" + link.dataset.id + "/delete", {
        method: "POST",
        body: data,
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      if (res.ok) {
        await refresh();
        const gone = document.getElementById("upload-" + link.dataset.id);
        if (gone) gone.remove();
      } else {
        let text = "It could not be deleted.";
        try { text = (await res.json()).error || text; } catch (_) { /* keep the default */ }
        window.alert(text);
      }
    });
  }

  // ---- Viewer: keys for the links it has ----------------------------------
  function setupViewer() {
    if (!$("#viewer")) return;
    const keys = { ArrowLeft: "viewer-prev", ArrowRight: "viewer-next", Escape: "viewer-close" };
    document.addEventListener("keydown", (e) => {
      if (e.defaultPrevented || e.altKey || e.ctrlKey || e.metaKey || e.shiftKey) return;
      const link = keys[e.key] && document.getElementById(keys[e.key]);
      if (!link) return;
      e.preventDefault();
      window.location.assign(link.href);
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    setupUpload();
    setupGallery();
    setupViewer();
  });
})();
