// loa-fleet dashboard behaviour: sign in/out, writes through the REST API with
// the CSRF header, sortable tables, copy button, and live updates (poll a
// change fingerprint, then refetch the page and swap its live regions).
"use strict";

(function () {
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  async function postJson(url, data) {
    const resp = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
      body: JSON.stringify(data),
    });
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    return { ok: resp.ok, status: resp.status, body: body };
  }

  // Where to go after signing in: a path on this origin only. The same rules as the
  // server's collector.params.safe_next: one leading "/", no "//" or backslash, no
  // control characters or blanks, also once percent-decoded ("/%09/evil.example"
  // loses its tab in the browser and becomes "//evil.example").
  function safeNext(raw) {
    if (typeof raw !== "string" || !raw || raw.length > 500 || raw[0] !== "/") return "/";
    let decoded = raw;
    for (let i = 0; i < 3; i++) {
      try { decoded = decodeURIComponent(decoded); } catch (e) { return "/"; }
    }
    for (const text of [raw, decoded]) {
      if (text.indexOf("\\") !== -1 || /[\x00-\x20\x7f]/.test(text) || text.startsWith("//"))
        return "/";
    }
    // Last check: the browser's own reading must stay on this origin.
    const url = new URL(raw, window.location.origin);
    if (url.origin !== window.location.origin) return "/";
    return url.pathname + url.search + url.hash;
  }

  function formData(form) {
    const out = {};
    for (const el of form.elements) {
      if (!el.name) continue;
      // An optional choice left empty is not sent (the API reads absent as "none").
      if (el.dataset.omitEmpty !== undefined && el.value === "") continue;
      if (el.type === "checkbox") out[el.name] = el.checked;
      else if (el.tagName === "SELECT" && el.multiple)
        out[el.name] = Array.from(el.selectedOptions).map((o) => o.value);
      else out[el.name] = el.value;
    }
    return out;
  }

  function showError(form, text) {
    const p = form.querySelector(".form-error");
    if (!p) return;
    p.textContent = text;
    p.hidden = !text;
  }

  function toast(text) {
    const t = document.getElementById("toast");
    if (!t) return;
    t.textContent = text;
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.hidden = true; }, 2500);
  }

  // -- forms -------------------------------------------------------------------------------
  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (form.id === "login-form") {
      ev.preventDefault();
      const r = await postJson("/api/v1/auth/login", formData(form));
      if (r.ok) window.location.assign(safeNext(form.dataset.next));
      else showError(form, form.querySelector(".form-error").dataset.failed);
      return;
    }
    if (!form.classList.contains("api-form")) return;
    ev.preventDefault();
    const button = form.querySelector('button[type="submit"]');
    if (button) button.disabled = true;
    try {
      const r = await postJson(form.dataset.api, formData(form));
      if (form.dataset.result) {
        // A remote command: show the device's answer (or why there is none) as it arrives.
        const out = document.querySelector(form.dataset.result);
        if (out) out.textContent = JSON.stringify(r.body, null, 2);
        showError(form, r.ok ? "" : (r.body && r.body.error) || "HTTP " + r.status);
        return;
      }
      if (!r.ok) {
        showError(form, (r.body && r.body.error) || "HTTP " + r.status);
        return;
      }
      showError(form, "");
      if (form.dataset.reload) { window.location.reload(); return; }
      form.reset();
      await refresh(true);
    } finally {
      if (button) button.disabled = false;
    }
  });

  document.addEventListener("click", async (ev) => {
    const el = ev.target;
    if (el.matches("[data-logout]")) {
      await postJson("/api/v1/auth/logout", {});
      window.location.assign("/login");
    } else if (el.matches("[data-copy]")) {
      const source = document.querySelector(el.dataset.copy);
      const text = source ? source.textContent : "";
      let done = false;
      if (navigator.clipboard && window.isSecureContext) {
        try { await navigator.clipboard.writeText(text); done = true; } catch (e) { done = false; }
      }
      if (!done && source) {
        // Plain-HTTP LANs are not a secure context: select the text and copy it.
        const range = document.createRange();
        range.selectNodeContents(source);
        const sel = window.getSelection();
        sel.removeAllRanges();
        sel.addRange(range);
        try { done = document.execCommand("copy"); } catch (e) { done = false; }
      }
      if (done) toast(el.dataset.done);
    } else if (el.tagName === "TH" && el.closest("table.sortable")) {
      const th = el;
      const asc = th.getAttribute("aria-sort") !== "ascending";
      sortTable(th.closest("table"), th.cellIndex, asc);
    }
  });

  // -- sortable tables ---------------------------------------------------------------------
  const sortState = {};

  function cellKey(td) {
    const raw = td.dataset.sort !== undefined ? td.dataset.sort : td.textContent.trim();
    const num = parseFloat(raw.replace(",", ".").replace("%", ""));
    return { raw: raw, num: Number.isNaN(num) || !/^-?[\d.,]+%?$/.test(raw) ? null : num };
  }

  function sortTable(table, col, asc) {
    const tbody = table.tBodies[0];
    const rows = Array.from(tbody.rows);
    rows.sort((a, b) => {
      const x = cellKey(a.cells[col]), y = cellKey(b.cells[col]);
      const c = x.num !== null && y.num !== null ? x.num - y.num
        : x.raw.localeCompare(y.raw, document.documentElement.lang || "vi");
      return asc ? c : -c;
    });
    rows.forEach((r) => tbody.appendChild(r));
    table.querySelectorAll("th").forEach((h) => h.removeAttribute("aria-sort"));
    table.tHead.rows[0].cells[col].setAttribute("aria-sort", asc ? "ascending" : "descending");
    const region = table.closest("[id]");
    if (region) sortState[region.id] = [col, asc];
  }

  // -- live updates ------------------------------------------------------------------------
  let fingerprint = null;
  let busy = false;

  function dirty(region) {
    if (region.contains(document.activeElement) && document.activeElement !== document.body)
      return true;
    return Array.from(region.querySelectorAll("textarea, input:not([type=hidden])"))
      .some((el) => el.value && el.value !== el.defaultValue);
  }

  async function refresh(force) {
    const resp = await fetch(window.location.href, { credentials: "same-origin" });
    if (!resp.ok) return;
    const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
    let changed = 0;
    document.querySelectorAll("[data-live-region]").forEach((region) => {
      const fresh = doc.getElementById(region.id);
      if (!fresh || (!force && dirty(region))) return;
      if (fresh.innerHTML !== region.innerHTML) {
        region.innerHTML = fresh.innerHTML;
        changed += 1;
        const s = sortState[region.id];
        const table = region.querySelector("table.sortable");
        if (s && table) sortTable(table, s[0], s[1]);
      }
    });
    // Regions that appear or disappear (e.g. the actions after a repair opens).
    const here = new Set(Array.from(document.querySelectorAll("[data-live-region]")).map((r) => r.id));
    const there = new Set(Array.from(doc.querySelectorAll("[data-live-region]")).map((r) => r.id));
    if ([...here].some((id) => !there.has(id)) || [...there].some((id) => !here.has(id))) {
      const main = document.getElementById("main");
      const freshMain = doc.getElementById("main");
      if (main && freshMain) { main.innerHTML = freshMain.innerHTML; changed += 1; }
    }
    if (changed && !force) toast(document.body.dataset.lang === "en" ? "Updated" : "Đã cập nhật");
    document.body.dataset.refreshed = String(Date.now());
  }

  async function poll() {
    const url = document.body.dataset.liveUrl;
    if (!url || busy) return;
    busy = true;
    const dot = document.getElementById("live-dot");
    try {
      const resp = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (resp.status === 401) {
        window.location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
        return;
      }
      const data = await resp.json();
      if (dot) { dot.classList.remove("lost"); dot.title = dot.dataset.ok; }
      if (fingerprint !== null && data.fp !== fingerprint) await refresh(false);
      fingerprint = data.fp;
    } catch (e) {
      if (dot) { dot.classList.add("lost"); dot.title = dot.dataset.lost; }
    } finally {
      busy = false;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const ms = parseInt(document.body.dataset.livePollMs || "0", 10);
    if (document.body.dataset.liveUrl && ms > 0) {
      poll();
      setInterval(poll, ms);
    }
  });
})();
