// feeder-sync review page: choosing a label by its first letters, the explicit new-label step
// and the large view of one sample. Uses S, $, el, queue and decide from review.js.
"use strict";

function matches(query) {
  const q = query.toLowerCase();
  if (!q) return S.labels.slice();
  const words = (l) => l.toLowerCase().split(/[_.\- ]+/);
  const prefix = S.labels.filter((l) => l.toLowerCase().startsWith(q));
  const word = S.labels.filter((l) => !prefix.includes(l) && words(l).some((w) => w.startsWith(q)));
  const initials = S.labels.filter((l) => !prefix.includes(l) && !word.includes(l) &&
    words(l).map((w) => w[0]).join("").startsWith(q));
  return [...prefix, ...word, ...initials];
}

const picker = {choice: 0, options: []};

function openPicker(initial) {
  if (S.focus < 0) return;
  $("picker-input").value = initial || "";
  $("picker").showModal();
  $("picker-input").focus();
  refreshPicker();
}

function refreshPicker() {
  const query = $("picker-input").value.trim();
  const found = matches(query);
  picker.options = found.map((l) => ({label: l}));
  if (!found.includes(query) && LABEL_RE.test(query)) picker.options.push({label: query, fresh: true});
  picker.choice = Math.min(picker.choice, Math.max(0, picker.options.length - 1));
  const list = $("picker-list");
  list.replaceChildren();
  picker.options.forEach((o, k) => {
    const item = el("li", k === picker.choice ? "on" : "", o.fresh ? "+ new label “" + o.label + "”…" : o.label);
    if (o.fresh) item.classList.add("fresh");
    item.addEventListener("mousedown", (ev) => { ev.preventDefault(); picker.choice = k; pick(); });
    list.append(item);
  });
  if (!picker.options.length) list.append(el("li", "none", "no such label"));
}

function pick() {
  const option = picker.options[picker.choice];
  if (!option) return;
  $("picker").close();
  if (option.fresh) confirmNew(option.label);
  else queue(() => decide("label", option.label));
}

function distance(a, b) {
  const d = Array.from({length: b.length + 1}, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = d[0];
    d[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const keep = d[j];
      d[j] = Math.min(d[j] + 1, d[j - 1] + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = keep;
    }
  }
  return d[b.length];
}

function confirmNew(label) {
  const close = S.labels.map((l) => [distance(label, l), l]).sort((x, y) => x[0] - y[0])[0];
  const hint = close && close[0] <= 3 ? " Did you mean “" + close[1] + "”?" : "";
  $("confirm-text").textContent = "“" + label + "” is not a known label." + hint +
    " Add it as a new label?";
  const dialog = $("confirm-new");
  dialog.dataset.label = label;
  dialog.showModal();
  $("confirm-no").focus();
}

function answerNew(yes) {
  const dialog = $("confirm-new");
  const label = dialog.dataset.label;
  dialog.close();
  if (yes) queue(() => decide("label", label, label));
}

// --- large view ----------------------------------------------------------------------------------

function openLightbox(s) {
  $("lightbox-img").src = "img/" + encodeURIComponent(s.id) + "/" + encodeURIComponent(s.sha256);
  const lines = [
    "sample " + s.id + " · visit " + (s.visit_id || "–") + " · " + fmtTime(s.time),
    "reasons: " + (s.reasons.join(", ") || "–"),
    "device said: " + s.top.map(([n, p]) => n + " " + pct(p)).join(", ") + " (margin " + pct(s.margin) + ")",
    "pseudo-label: " + (s.pseudo || "none"),
    "decision: " + (reviewText(s.review) || "none yet"),
  ];
  $("lightbox-text").textContent = lines.join("\n");
  $("lightbox").showModal();
}

