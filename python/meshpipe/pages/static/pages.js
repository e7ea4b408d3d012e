// meshpipe pages: live refresh and auto-submitted filter forms. No library, no inline script
// (the Content-Security-Policy forbids it); every page works without this file.
"use strict";

(function () {
  // An element with data-refresh="/path.json" is polled every data-refresh-every seconds
  // (default 2). The answer is {"fields": {name: value}, "done": bool, "reload": bool}: each
  // [data-field=name] inside it takes the value as text (a <progress> or <meter> as its
  // value). "done" stops the polling, "reload" reloads the page.
  function fill(root, fields) {
    const targets = [root, ...root.querySelectorAll("[data-field]")];
    for (const target of targets) {
      const name = target.dataset.field;
      if (name === undefined || !(name in fields)) {
        continue;
      }
      const value = fields[name];
      if (target instanceof HTMLProgressElement || target instanceof HTMLMeterElement) {
        target.value = Number(value);
      } else {
        target.textContent = value === null ? "–" : String(value);
      }
    }
  }

  function poll(root) {
    const url = root.dataset.refresh;
    const every = Math.max(0.5, Number(root.dataset.refreshEvery || "2")) * 1000;
    let timer = 0;
    async function tick() {
      if (document.hidden) {
        timer = window.setTimeout(tick, every);
        return;
      }
      try {
        const answer = await fetch(url, {
          credentials: "same-origin",
          headers: { Accept: "application/json" },
        });
        if (!answer.ok) {
          throw new Error(String(answer.status));
        }
        const state = await answer.json();
        root.removeAttribute("data-stale");
        fill(root, state.fields || {});
        if (state.reload) {
          window.location.reload();
          return;
        }
        if (state.done) {
          root.setAttribute("data-done", "");
          return;
        }
      } catch (error) {
        root.setAttribute("data-stale", "");
      }
      timer = window.setTimeout(tick, every);
    }
    timer = window.setTimeout(tick, every);
    return () => window.clearTimeout(timer);
  }

  // A form with data-autosubmit is sent (GET) as soon as a select or date field changes;
  // its empty fields are left out of the address.
  function autosubmit(form) {
    form.addEventListener("submit", () => {
      for (const field of form.elements) {
        if ((field instanceof HTMLInputElement || field instanceof HTMLSelectElement) &&
            field.name && field.value === "") {
          field.disabled = true;
        }
      }
      window.setTimeout(() => {
        for (const field of form.elements) {
          field.disabled = false;
        }
      }, 0);
    });
    form.addEventListener("change", (event) => {
      const field = event.target;
      if (field instanceof HTMLSelectElement || (field instanceof HTMLInputElement &&
          (field.type === "date" || field.type === "checkbox"))) {
        form.requestSubmit();
      }
    });
  }

  function start() {
    document.querySelectorAll("[data-refresh]").forEach(poll);
    document.querySelectorAll("form[data-autosubmit]").forEach(autosubmit);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
