// feeder-sync review page: plain JS, no build step, no outside resources.
// Every decision is POSTed at once; the server writes it to the workspace before answering.
"use strict";

const S = {
  labels: [], negative: "other", cards: [], focus: -1, anchor: -1,
  selected: new Set(), undo: [], showReviewed: false, visits: [], chain: Promise.resolve(),
};
const LABEL_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
const COMMANDS = new Set(["n", "x", "a", "u", "v", "l"]);
const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const response = await fetch(path, opts);
  const data = await response.json().catch(() => ({error: response.statusText}));
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

let toastTimer = 0;
function toast(text, bad) {
  const box = $("toast");
  box.textContent = text;
  box.className = bad ? "bad" : "";
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.hidden = true; }, bad ? 8000 : 2500);
}

const fmtTime = (t) => (t ? new Date(t * 1000).toLocaleString() : "time unknown");
const pct = (p) => (typeof p === "number" ? p.toFixed(2) : "–");

// --- the review grid -------------------------------------------------------------------------

function reviewText(review) {
  if (!review) return "";
  if (review.source === "excluded") return "excluded";
  if (review.source === "accepted_pseudo") return "✓ " + review.label + " (accepted)";
  return "✓ " + review.label;
}

function renderCard(card) {
  const s = card.s, node = card.el;
  node.classList.toggle("decided", !!s.review);
  node.classList.toggle("excluded", !!s.review && s.review.source === "excluded");
  card.badge.textContent = reviewText(s.review);
  card.badge.hidden = !s.review;
}

function buildCard(s, visit, index) {
  const node = el("div", "card");
  node.dataset.i = index;
  node.dataset.id = s.id;
  node.tabIndex = -1;
  const img = el("img");
  img.loading = "lazy";
  img.decoding = "async";
  img.alt = "sample " + s.id;
  img.src = "img/" + encodeURIComponent(s.id) + "/" + encodeURIComponent(s.sha256);
  node.append(img);
  const top = el("div", "top");
  s.top.forEach(([name, p], k) => top.append(el("span", k ? "alt" : "first", name + " " + pct(p))));
  node.append(top);
  const line = el("div", "line");
  line.append(el("span", "margin", "margin " + pct(s.margin)));
  if (s.pseudo) line.append(el("span", "pseudo", "pseudo: " + s.pseudo));
  node.append(line);
  const reasons = el("div", "reasons");
  s.reasons.forEach((r) => reasons.append(el("span", "reason", r)));
  node.append(reasons);
  const badge = el("div", "badge");
  node.append(badge);
  const card = {s, visit, el: node, badge, here: false};
  renderCard(card);
  return card;
}

function renderGrid(data) {
  const grid = $("grid"), frag = document.createDocumentFragment();
  S.cards = [];
  S.visits = data.visits;
  data.visits.forEach((visit) => {
    const section = el("section", "visit");
    const head = el("h2");
    head.append(el("span", "when", fmtTime(visit.time)),
                el("span", "vid", "visit " + visit.visit_id),
                el("span", "n", visit.samples.length + " sample" + (visit.samples.length > 1 ? "s" : "")),
                el("span", "doubt", "least margin " + pct(1 - visit.doubt)));
    head.addEventListener("click", () => selectVisit(visit));
    const row = el("div", "cards");
    visit.samples.forEach((s) => {
      const card = buildCard(s, visit, S.cards.length);
      S.cards.push(card);
      row.append(card.el);
    });
    visit.section = section;
    section.append(head, row);
    frag.append(section);
  });
  grid.replaceChildren(frag);
  applyFilter();
  performance.mark("grid-ready");
  // the task after the next frame runs once that frame (with the grid) is painted
  requestAnimationFrame(() => setTimeout(() => performance.mark("grid-painted"), 0));
}

function visible(card) {
  return !card.s.review || card.here || S.showReviewed;
}

function applyFilter() {
  S.cards.forEach((c) => { c.el.hidden = !visible(c); });
  S.visits.forEach((v) => {
    v.section.hidden = !S.cards.some((c) => c.visit === v && !c.el.hidden);
  });
  $("empty").hidden = S.cards.some((c) => !c.el.hidden);
  if (S.focus < 0 || !visible(S.cards[S.focus])) setFocus(nextVisible(-1, 1, true));
}

function nextVisible(from, step, pendingFirst) {
  for (let i = from + step; i >= 0 && i < S.cards.length; i += step) {
    const c = S.cards[i];
    if (visible(c) && (!pendingFirst || !c.s.review)) return i;
  }
  return pendingFirst ? nextVisible(from, step, false) : -1;
}

function setFocus(i, scroll = true) {
  if (S.focus >= 0 && S.cards[S.focus]) S.cards[S.focus].el.classList.remove("focus");
  S.focus = i;
  if (i < 0) return;
  const node = S.cards[i].el;
  node.classList.add("focus");
  offerAccept();
  if (scroll) node.scrollIntoView({block: "nearest"});
}

function paintSelection() {
  S.cards.forEach((c, i) => c.el.classList.toggle("selected", S.selected.has(i)));
  offerAccept();
}

// "a" is offered only where the device gave a pseudo-label
function offerAccept() {
  const button = document.querySelector("#toolbar button[data-do=accept]");
  button.disabled = !targets().some((c) => c && c.s.pseudo);
}

function selectRange(from, to) {
  S.selected.clear();
  const [a, b] = from <= to ? [from, to] : [to, from];
  for (let i = a; i <= b; i++) if (visible(S.cards[i])) S.selected.add(i);
  paintSelection();
}

function move(step, extend) {
  const target = nextVisible(S.focus, step, false);
  if (target < 0) return;
  if (extend) {
    if (S.anchor < 0) S.anchor = S.focus;
    selectRange(S.anchor, target);
  } else {
    S.anchor = target;
    S.selected.clear();
    paintSelection();
  }
  setFocus(target);
}

function moveRow(down, extend) {
  if (S.focus < 0) return;
  const here = S.cards[S.focus].el.getBoundingClientRect();
  const cx = here.left + here.width / 2;
  let best = -1, bestRow = down ? Infinity : -Infinity, bestDx = Infinity;
  S.cards.forEach((c, i) => {
    if (c.el.hidden) return;
    const r = c.el.getBoundingClientRect();
    const rowOk = down ? r.top > here.top + here.height / 2 : r.top < here.top - here.height / 2;
    if (!rowOk) return;
    const closerRow = down ? r.top < bestRow - 4 : r.top > bestRow + 4;
    const dx = Math.abs(r.left + r.width / 2 - cx);
    if (closerRow || (Math.abs(r.top - bestRow) <= 4 && dx < bestDx)) {
      best = i; bestRow = r.top; bestDx = dx;
    }
  });
  if (best < 0) return;
  if (extend) {
    if (S.anchor < 0) S.anchor = S.focus;
    selectRange(S.anchor, best);
  } else {
    S.anchor = best; S.selected.clear(); paintSelection();
  }
  setFocus(best);
}

function targets() {
  const chosen = S.selected.size ? [...S.selected].sort((a, b) => a - b) : [S.focus];
  return chosen.filter((i) => i >= 0).map((i) => S.cards[i]);
}

function selectVisit(visit) {
  const indexes = S.cards.map((c, i) => (c.visit === visit && !c.el.hidden ? i : -1))
    .filter((i) => i >= 0);
  if (!indexes.length) return;
  S.selected = new Set(indexes);
  S.anchor = indexes[0];
  paintSelection();
  if (!S.selected.has(S.focus)) setFocus(indexes[0]);
  toast("whole visit selected (" + indexes.length + "): now pick a label, n, x or a");
}

// --- decisions ---------------------------------------------------------------------------------

function showCounts(counts) {
  $("counts").textContent = counts.pending + " left · " + counts.decided + " decided";
  $("counts").dataset.pending = counts.pending;
}

// Decisions and undos run one after another, each on the focus the one before left, so keys
// typed faster than the server answers are neither lost nor applied to the wrong sample.
function queue(fn) {
  S.chain = S.chain.then(fn).catch((err) => toast(String(err), true));
}

async function send(cards, decisions, newLabel) {
  cards.forEach((c) => c.el.classList.add("saving"));
  try {
    const body = {decisions};
    if (newLabel) body.new_label = newLabel;
    const result = await api("api/decide", body);
    const byKey = new Map(cards.map((c) => [c.s.id + ":" + c.s.sha256, c]));
    result.saved.forEach((item) => {
      const card = byKey.get(item.id + ":" + item.sha256);
      if (!card) return;
      card.s.review = item.review;
      card.here = true;
      renderCard(card);
    });
    (result.new_labels || []).forEach((l) => { if (!S.labels.includes(l)) S.labels.push(l); });
    if ((result.new_labels || []).length) renderLabelKeys();
    showCounts(result.counts);
    return result;
  } catch (err) {
    toast("not saved: " + err.message, true);
    return null;
  } finally {
    cards.forEach((c) => c.el.classList.remove("saving"));
  }
}

async function decide(action, label, newLabel) {
  let cards = targets();
  if (!cards.length) return;
  if (action === "accept") {
    const without = cards.filter((c) => !c.s.pseudo).length;
    cards = cards.filter((c) => c.s.pseudo);
    if (!cards.length) { toast("no pseudo-label here: 'a' accepts only a device's pseudo-label", true); return; }
    if (without) toast(without + " without a pseudo-label left as they were");
  }
  const before = cards.map((c) => c.s.review);
  const decisions = cards.map((c) => ({id: c.s.id, sha256: c.s.sha256, action, label}));
  if (!(await send(cards, decisions, newLabel))) return;
  S.undo.push({cards, before});
  const last = S.cards.indexOf(cards[cards.length - 1]);
  S.selected.clear();
  paintSelection();
  const next = nextVisible(last, 1, true);
  S.anchor = next >= 0 ? next : last;
  setFocus(next >= 0 ? next : last);
}

async function undo() {
  const entry = S.undo.pop();
  if (!entry) { toast("nothing to undo"); return; }
  const decisions = entry.cards.map((c, k) => ({
    id: c.s.id, sha256: c.s.sha256, action: "restore",
    source: entry.before[k] ? entry.before[k].source : null,
    label: entry.before[k] ? entry.before[k].label : null}));
  if (!(await send(entry.cards, decisions))) { S.undo.push(entry); return; }
  const first = S.cards.indexOf(entry.cards[0]);
  S.anchor = first;
  S.selected.clear();
  paintSelection();
  setFocus(first);
  toast("undone (" + entry.cards.length + ")");
}

function renderLabelKeys() {
  const box = $("label-keys");
  box.replaceChildren();
  S.labels.slice(0, 9).forEach((name, k) => {
    const b = el("button", "label-key", (k + 1) + " " + name);
    b.type = "button";
    b.addEventListener("click", () => queue(() => decide("label", name)));
    box.append(b);
  });
}

// --- keys and mouse ------------------------------------------------------------------------------

function onKey(ev) {
  // keys typed in a dialog (the label picker, the new-label question) are the dialog's own
  const inDialog = ev.target instanceof Element && ev.target.closest("dialog[open]");
  if (inDialog || document.querySelector("dialog[open]") || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (location.hash === "#evaluation") {
    if (ev.key === "E" || ev.key === "Escape") { location.hash = "#review"; ev.preventDefault(); }
    return;
  }
  const key = ev.key;
  const handled = () => ev.preventDefault();
  if (key === "ArrowRight") { move(1, ev.shiftKey); return handled(); }
  if (key === "ArrowLeft") { move(-1, ev.shiftKey); return handled(); }
  if (key === "ArrowDown") { moveRow(true, ev.shiftKey); return handled(); }
  if (key === "ArrowUp") { moveRow(false, ev.shiftKey); return handled(); }
  if (key === "Escape") { S.selected.clear(); paintSelection(); return handled(); }
  if (key === "Enter" && S.focus >= 0) { openLightbox(S.cards[S.focus].s); return handled(); }
  if (/^[1-9]$/.test(key)) {
    const label = S.labels[Number(key) - 1];
    if (label) queue(() => decide("label", label));
    return handled();
  }
  if (key === "R") { toggleReviewed(); return handled(); }
  if (key === "E") { location.hash = "#evaluation"; return handled(); }
  const ch = key.length === 1 ? key : "";
  if (key === "/" || ch === "l") { openPicker(""); return handled(); }
  if (ch === "n") { queue(() => decide("label", S.negative)); return handled(); }
  if (ch === "x") { queue(() => decide("exclude")); return handled(); }
  if (ch === "a") { queue(() => decide("accept")); return handled(); }
  if (ch === "u") { queue(undo); return handled(); }
  if (ch === "v" && S.focus >= 0) { selectVisit(S.cards[S.focus].visit); return handled(); }
  if (/^[a-z]$/.test(ch) && !COMMANDS.has(ch)) { openPicker(ch); return handled(); }
}

function toggleReviewed() {
  S.showReviewed = !S.showReviewed;
  applyFilter();
  toast(S.showReviewed ? "showing earlier decisions too" : "showing what is left");
}

function onGridClick(ev) {
  const node = ev.target.closest(".card");
  if (!node) return;
  const i = Number(node.dataset.i);
  if (ev.shiftKey && S.anchor >= 0) selectRange(S.anchor, i);
  else if (ev.ctrlKey || ev.metaKey) {
    if (S.selected.has(i)) S.selected.delete(i); else S.selected.add(i);
    S.anchor = i;
    paintSelection();
  } else { S.anchor = i; S.selected.clear(); paintSelection(); }
  setFocus(i, false);
}

function onPickerKey(ev) {
  if (!$("picker").open) return;  // focus can linger in a closed dialog: then it is a grid key
  ev.stopPropagation();  // the grid's keys must not see what closes the picker
  if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
    const n = picker.options.length;
    if (n) picker.choice = (picker.choice + (ev.key === "ArrowDown" ? 1 : n - 1)) % n;
    refreshPicker();
    ev.preventDefault();
  } else if (ev.key === "Enter") { ev.preventDefault(); pick(); }
}

function wire() {
  document.addEventListener("keydown", onKey);
  $("grid").addEventListener("click", onGridClick);
  $("grid").addEventListener("dblclick", (ev) => {
    const node = ev.target.closest(".card");
    if (node) openLightbox(S.cards[Number(node.dataset.i)].s);
  });
  $("picker-input").addEventListener("input", () => { picker.choice = 0; refreshPicker(); });
  $("picker-input").addEventListener("keydown", onPickerKey);
  $("confirm-yes").addEventListener("click", () => answerNew(true));
  $("confirm-no").addEventListener("click", () => answerNew(false));
  $("confirm-new").addEventListener("keydown", (ev) => {
    if (!$("confirm-new").open) return;
    ev.stopPropagation();
    if (ev.key === "y") { ev.preventDefault(); answerNew(true); }
    if (ev.key === "n") { ev.preventDefault(); answerNew(false); }
  });
  $("lightbox").addEventListener("click", () => $("lightbox").close());
  const actions = {negative: () => queue(() => decide("label", S.negative)),
    pick: () => openPicker(""), accept: () => queue(() => decide("accept")),
    exclude: () => queue(() => decide("exclude")), undo: () => queue(undo),
    visit: () => S.focus >= 0 && selectVisit(S.cards[S.focus].visit), reviewed: toggleReviewed};
  document.querySelectorAll("#toolbar button[data-do]").forEach((b) =>
    b.addEventListener("click", () => actions[b.dataset.do]()));
  window.addEventListener("hashchange", route);
}

// --- the evaluation view -------------------------------------------------------------------------

function route() {
  const evaluation = location.hash === "#evaluation";
  $("review-view").hidden = evaluation;
  $("toolbar").hidden = evaluation;
  $("evaluation-view").hidden = !evaluation;
  $("tab-review").classList.toggle("on", !evaluation);
  $("tab-evaluation").classList.toggle("on", evaluation);
  if (evaluation && window.FeederEvaluation) window.FeederEvaluation.show($("evaluation-view"), openLightbox);
}

async function start() {
  wire();
  route();
  try {
    const data = await api("api/samples");
    S.labels = data.labels;
    S.negative = data.negative;
    $("device").textContent = "· " + data.device;
    $("negative-name").textContent = data.negative;
    renderLabelKeys();
    showCounts(data.counts);
    renderGrid(data);
  } catch (err) {
    toast("cannot load the samples: " + err.message, true);
  }
}

document.addEventListener("DOMContentLoaded", start);
