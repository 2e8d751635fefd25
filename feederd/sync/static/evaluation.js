// feeder-sync review page, second view: the last evaluation report (report.json).
"use strict";

(function () {
  const mk = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  };
  const pct = (v) => (typeof v === "number" ? (100 * v).toFixed(1) + "%" : "–");

  function columns(score) {
    const seen = new Set();
    Object.values(score.confusion).forEach((row) => Object.keys(row).forEach((p) => seen.add(p)));
    return [...score.labels, ...[...seen].filter((p) => !score.labels.includes(p)).sort()];
  }

  function alertLine(score) {
    const total = score.field_negatives;
    const rate = total ? " (" + pct(score.false_alerts / total) + ")" : "";
    return "false alerts " + score.false_alerts + " / " + total + " field negatives" + rate;
  }

  function matrix(role, score) {
    const box = mk("figure", "matrix");
    box.append(mk("figcaption", "", role + ": " + score.version), mk("div", "alerts", alertLine(score)));
    const table = mk("table", "confusion");
    const cols = columns(score);
    const head = mk("tr");
    head.append(mk("th", "corner", "truth \\ predicted"));
    cols.forEach((c) => head.append(mk("th", "col", c)));
    table.append(head);
    Object.entries(score.confusion).forEach(([truth, row]) => {
      const tr = mk("tr");
      tr.append(mk("th", "", truth));
      const total = Object.values(row).reduce((a, b) => a + b, 0);
      cols.forEach((c) => {
        const count = row[c] || 0, share = total ? count / total : 0;
        const td = mk("td", c === truth ? "diag" : "", count);
        td.style.background = "hsl(212, 70%, " + (98 - 60 * share).toFixed(0) + "%)";
        td.style.color = share > 0.55 ? "#fff" : "#111";
        td.title = truth + " → " + c + ": " + count + " of " + total + " (" + pct(share) + ")";
        tr.append(td);
      });
      table.append(tr);
    });
    box.append(table);
    return box;
  }

  function recallTable(cand, ref, tolerance) {
    const table = mk("table", "recall");
    const head = mk("tr");
    ["class", ref ? "deployed" : null, "candidate", ref ? "change (points)" : null].filter(Boolean)
      .forEach((t) => head.append(mk("th", "", t)));
    table.append(head);
    const names = [...new Set([...Object.keys(ref ? ref.recall : {}), ...Object.keys(cand.recall)])];
    names.forEach((name) => {
      const tr = mk("tr");
      const negative = cand.negative_labels.includes(name);
      tr.append(mk("th", negative ? "negative" : "", name + (negative ? " (negative)" : "")));
      if (ref) tr.append(mk("td", "", pct(ref.recall[name])));
      tr.append(mk("td", "", pct(cand.recall[name])));
      if (ref) {
        const a = ref.recall[name], b = cand.recall[name];
        const diff = typeof a === "number" && typeof b === "number" ? b - a : null;
        const td = mk("td", "", diff === null ? "–" : (diff >= 0 ? "+" : "") + (100 * diff).toFixed(1));
        if (diff !== null && !negative && diff < -tolerance) td.className = "fell";
        tr.append(td);
      }
      table.append(tr);
    });
    return table;
  }

  function falseAlerts(role, score, samples, open) {
    const box = mk("section", "false-alerts");
    box.dataset.role = role;
    box.append(mk("h3", "", role + ": " + alertLine(score)));
    const by = Object.entries(score.false_alerts_by_label || {}).map(([l, n]) => l + " " + n).join(", ");
    if (by) box.append(mk("p", "", "called: " + by));
    const list = score.false_alert_samples || [];
    const row = mk("div", "thumbs");
    list.forEach((item) => {
      const s = samples[item.id + ":" + item.sha256];
      if (!s) return;
      const b = mk("button", "thumb");
      b.type = "button";
      b.title = "sample " + item.id + ": said " + item.said + " " + item.confidence;
      const img = mk("img");
      img.loading = "lazy";
      img.alt = "sample " + item.id;
      img.src = "img/" + encodeURIComponent(item.id) + "/" + encodeURIComponent(item.sha256);
      b.append(img, mk("span", "", item.said + " " + Number(item.confidence).toFixed(2)));
      b.addEventListener("click", () => open(s));
      row.append(b);
    });
    box.append(row);
    const extra = score.extra ? score.extra.false_alerts : 0;
    if (extra) box.append(mk("p", "hint", extra + " more on --negatives folder images (not pulled samples)"));
    if (!list.length && !extra && score.false_alerts) box.append(mk("p", "hint", "this report does not list the samples"));
    return box;
  }

  function render(root, data, open) {
    root.replaceChildren();
    if (!data.found) { root.append(mk("p", "empty", data.message)); return; }
    const rep = data.report, cand = rep.candidate, ref = rep.reference;
    root.append(mk("h2", "", "Evaluation of " + cand.version + (ref ? " against the deployed " + ref.version : "")));
    const gate = mk("div", "gate " + rep.gate, "gate: " + rep.gate.toUpperCase());
    gate.id = "gate";
    const reasons = mk("ul", "gate-reasons");
    rep.reasons.forEach((r) => reasons.append(mk("li", "", r)));
    root.append(gate, reasons);
    root.append(mk("h3", "", "Per-class recall (held-out)"), recallTable(cand, ref, rep.tolerance || 0));
    const pair = mk("div", "pair");
    if (ref) pair.append(matrix("deployed", ref));
    pair.append(matrix("candidate", cand));
    root.append(mk("h3", "", "Confusion matrices (colour: share of the true class)"), pair);
    if (data.png) {
      const details = mk("details");
      const img = mk("img", "png");
      img.alt = "confusion matrices";
      img.src = "report/confusion.png";
      details.append(mk("summary", "", "as a figure (confusion.png)"), img);
      root.append(details);
    }
    root.append(mk("h3", "", "False alerts on field negatives"));
    if (ref) root.append(falseAlerts("deployed", ref, data.samples, open));
    root.append(falseAlerts("candidate", cand, data.samples, open));
  }

  async function show(root, open) {
    root.replaceChildren(mk("p", "", "loading…"));
    try {
      const response = await fetch("api/report");
      const data = await response.json();
      if (!response.ok) throw new Error(data.error || response.statusText);
      render(root, data, open);
    } catch (err) {
      root.replaceChildren(mk("p", "bad", "cannot load the report: " + err.message));
    }
  }

  window.FeederEvaluation = {show};
})();
