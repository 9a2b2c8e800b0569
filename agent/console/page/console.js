// The Corral console page: plain JavaScript, no build step. State arrives over one EventSource
// (/console/events: a snapshot, then deltas from the agent's watch, and this host's status when it
// changes); the page never polls. Tables render only the rows in view, so 5,000 services cost
// what 40 do. Actions are POSTs carrying the token from the URL `corral console` prints.
'use strict';

const ROW = 28;                 // px per row, fixed: the virtual list's arithmetic depends on it
const OVERSCAN = 10;
const STALE_HANDSHAKE_MS = 180_000;
const TOKEN_KEY = 'corral-console-token';

const $ = (id) => document.getElementById(id);
/** Replaces an element's content only when it changed: elements that stay keep focus and clicks in flight. */
const shown = new WeakMap();
const setHtml = (el, html) => {
  if (shown.get(el) !== html) {
    el.innerHTML = html;
    shown.set(el, html);
  }
};
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);

const state = {
  node: '',
  revision: 0,
  skewMs: 0,                    // server clock - page clock, for ages
  hosts: new Map(),             // name -> HostRow
  services: new Map(),          // "ns/name" -> ServiceRow
  endpoints: new Map(),         // id -> EndpointRow, of the open service only
  self: null,                   // this host: components, registry health, peers
  peers: new Map(),             // host -> lastHandshakeMs (this host's view)
  reports: new Map(),           // host -> its last status report
  tab: 'services',
  query: '',
  selected: null,               // service key or host name shown in the detail pane
  rows: [],                     // the current tab's rows after the search, sorted
  dirty: true,
};

// ---- token ----

function token() {
  const m = /(?:^|[#&])token=([0-9a-f]{64})/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, m[1]);
    history.replaceState(null, '', location.pathname + location.search); // the token leaves the address bar
  }
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

// ---- the live feed ----

function connect() {
  const es = new EventSource('/console/events');
  es.addEventListener('open', () => {
    mark('open');
    setLive(true);
  });
  es.addEventListener('error', () => setLive(false));
  es.addEventListener('hello', (e) => {
    const h = JSON.parse(e.data);
    state.node = h.node;
    state.skewMs = h.serverNowMs - Date.now();
  });
  es.addEventListener('snapshot', (e) => {
    mark('snapshot');
    const s = JSON.parse(e.data);
    mark('parsed');
    state.hosts = new Map(s.hosts.map((h) => [h.name, h]));
    state.services = new Map();
    for (const t of s.services) putService(t);
    applied(s.revision);
    if (state.selected && state.tab === 'services') loadEndpoints(state.selected);
  });
  es.addEventListener('delta', (e) => {
    const d = JSON.parse(e.data);
    for (const h of d.hosts) state.hosts.set(h.name, h);
    for (const n of d.deletedHosts) state.hosts.delete(n);
    for (const t of d.services) putService(t);
    for (const k of d.deletedServices) state.services.delete(k);
    // Endpoints are kept for the open service only.
    for (const id of d.deletedEndpoints) state.endpoints.delete(id);
    for (const ep of d.endpoints) if (ep.service === state.selected) state.endpoints.set(ep.id, ep);
    applied(d.revision);
  });
  es.addEventListener('self', (e) => {
    state.self = JSON.parse(e.data);
    state.peers = new Map(state.self.peers.map((p) => [p.host, p.lastHandshakeMs]));
    renderHeader();
    if (state.tab === 'hosts') schedule();
  });
  es.addEventListener('reports', (e) => {
    const r = JSON.parse(e.data);
    if (r.whole) state.reports = new Map();
    for (const rep of r.reports) state.reports.set(rep.name, rep);
    for (const name of r.gone) state.reports.delete(name);
    if (state.tab === 'hosts') schedule();
  });
}

/**
 * A service row arrives as a tuple (agent/console/view.ts ServiceRow); its colors stay tuples,
 * [color, share, total, serving], since 5,000 rows arrive at once.
 */
function putService(t) {
  const key = `${t[0]}/${t[1]}`;
  state.services.set(key, { key, namespace: t[0], name: t[1], colors: t[2], serving: t[3], total: t[4], routes: t[5], previous: t[6] });
}

/** The open service's endpoints, read once; deltas keep them current. */
async function loadEndpoints(key) {
  for (let tries = 0; tries < 3; tries++) {
    const res = await fetch(`/console/endpoints?service=${encodeURIComponent(key)}`);
    if (!res.ok) return toast(`endpoints of ${key}: ${(await res.text()).trim()}`, true);
    const r = await res.json();
    if (state.selected !== key) return;
    // An answer older than a delta already shown would undo it: ask again.
    if (r.revision < state.revision) continue;
    state.endpoints = new Map(r.endpoints.map((ep) => [ep.id, ep]));
    schedule();
    return;
  }
}

/** Milestones of the first load (performance.now()), for the bench: window.corralConsole.marks. */
function mark(what) {
  if (!window.corralConsole) window.corralConsole = { firstRenderMs: 0, marks: {} };
  if (!(what in window.corralConsole.marks)) window.corralConsole.marks[what] = performance.now();
}

function applied(revision) {
  state.revision = revision;
  state.dirty = true;
  schedule();
  renderHeader();
  // For tests and the bench: what the page shows, and when it first showed anything.
  document.documentElement.dataset.revision = String(revision);
  mark('applied');
  window.corralConsole.revision = revision;
}

function setLive(on) {
  const el = $('live');
  el.textContent = on ? 'live' : 'reconnecting';
  el.className = 'pill ' + (on ? 'ok' : 'bad');
}

// ---- rendering ----

let frame = 0;
function schedule() {
  if (!frame) frame = requestAnimationFrame(() => {
    frame = 0;
    render();
  });
}

function now() {
  return Date.now() + state.skewMs;
}

function age(ms) {
  if (!ms) return 'never';
  const s = Math.max(0, Math.round((now() - ms) / 1000));
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

function matches(text) {
  return !state.query || text.toLowerCase().includes(state.query);
}

function serviceText(r) {
  return `${r.namespace}/${r.name} ${r.routes.join(' ')} ${r.colors.map((c) => c[0]).join(' ')}`;
}

function rebuildRows() {
  if (state.tab === 'services') {
    const rows = [];
    for (const r of state.services.values()) if (!state.query || matches(serviceText(r))) rows.push(r);
    rows.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    state.rows = rows;
  } else {
    const rows = [];
    for (const h of state.hosts.values()) if (matches(`${h.name} ${h.block} ${h.underlay} ${h.overlay} ${h.version}`)) rows.push(h);
    rows.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    state.rows = rows;
  }
  state.dirty = false;
}

const HEADS = {
  services: ['namespace', 'service', 'colors (share, serving/total)', 'serving', 'routes'],
  hosts: ['host', 'block', 'underlay', 'overlay', 'version', 'applied revision', 'handshake from {node}', 'peers handshaken/all', 'its oldest handshake', 'report'],
};

function render() {
  if (state.dirty) rebuildRows();
  const list = $('list');
  list.className = state.tab;
  $('thead').innerHTML = HEADS[state.tab].map((h) => `<span>${esc(h.replace('{node}', state.node))}</span>`).join('');
  $('count-services').textContent = state.services.size;
  $('count-hosts').textContent = state.hosts.size;
  $('shown').textContent = state.query ? `${state.rows.length} match` : '';
  const vp = $('viewport');
  $('spacer').style.height = `${state.rows.length * ROW}px`;
  const first = Math.max(0, Math.floor(vp.scrollTop / ROW) - OVERSCAN);
  const last = Math.min(state.rows.length, Math.ceil((vp.scrollTop + vp.clientHeight) / ROW) + OVERSCAN);
  const html = [];
  for (let i = first; i < last; i++) html.push(state.tab === 'services' ? serviceLine(state.rows[i]) : hostLine(state.rows[i]));
  const rowsEl = $('rows');
  rowsEl.style.transform = `translateY(${first * ROW}px)`;
  // Rows that did not change keep their elements (a click in flight lands where it was aimed).
  setHtml(rowsEl, html.join(''));
  renderDetail();
  if (window.corralConsole && !window.corralConsole.firstRenderMs && state.revision) {
    window.corralConsole.firstRenderMs = performance.now();
    mark('rendered');
  }
}

function colorsHtml(r) {
  if (r.colors.length === 0) return '<span class="muted">no endpoints</span>';
  return r.colors.map((c) => `<span class="color"><b class="${c[1] > 0 ? '' : 'muted'}">${esc(c[0])}</b> ${c[1]}% <span class="${c[3] < c[2] ? 'warn' : 'muted'}">${c[3]}/${c[2]}</span></span>`).join(' ');
}

function serviceLine(r) {
  const sel = state.selected === r.key ? ' selected' : '';
  const servingCls = r.total > 0 && r.serving === 0 ? 'bad' : 'ok';
  return `<div class="row${sel}" data-key="${esc(r.key)}"><span>${esc(r.namespace)}</span><span>${esc(r.name)}</span><span class="colors">${colorsHtml(r)}</span>` +
    `<span class="${servingCls}">${r.serving}/${r.total}</span><span>${esc(r.routes.join(', '))}</span></div>`;
}

function hostLine(h) {
  const self = h.name === state.node;
  const rep = state.reports.get(h.name);
  let applied = '';
  if (self && state.self) {
    applied = `${state.self.appliedRevision}${state.self.appliedRevision >= state.revision ? '' : ' (behind)'}`;
  } else if (rep) {
    applied = `${rep.appliedRevision}${rep.appliedRevision >= state.revision ? '' : ' (behind)'}`;
  }
  const hs = self ? '<span class="muted">this host</span>' : handshake(state.peers.get(h.name));
  const sum = self && state.self ? ownSummary() : rep;
  const peers = sum ? `<span class="${sum.stale ? 'warn' : ''}">${sum.handshaken}/${sum.peers}${sum.stale ? `, ${sum.stale} stale` : ''}</span>` : '<span class="muted">no report</span>';
  const worst = rep && rep.worstPeer ? `${esc(rep.worstPeer)} ${handshake(rep.worstHandshakeMs)}` : '';
  const report = rep ? age(rep.reportedMs) : '';
  return `<div class="row${state.selected === h.name ? ' selected' : ''}" data-host="${esc(h.name)}"><span>${esc(h.name)}${h.rotating ? ' <span class="warn">(rotating key)</span>' : ''}</span>` +
    `<span>${esc(h.block)}</span><span>${esc(h.underlay)}</span><span>${esc(h.overlay || 'none')}</span><span>${esc(h.version)}</span>` +
    `<span>${esc(applied)}</span><span class="handshake">${hs}</span><span class="peers">${peers}</span><span>${worst}</span><span>${esc(report)}</span></div>`;
}

/** This host's peers as its status report would count them, from its live peer list. */
function ownSummary() {
  const ps = state.self.peers;
  const t = now();
  return {
    peers: ps.length,
    handshaken: ps.filter((p) => p.lastHandshakeMs > 0).length,
    stale: ps.filter((p) => !p.lastHandshakeMs || t - p.lastHandshakeMs > STALE_HANDSHAKE_MS).length,
  };
}

function handshake(ms) {
  if (ms === undefined) return '<span class="muted">not a peer</span>';
  const stale = !ms || now() - ms > STALE_HANDSHAKE_MS;
  return `<span class="${stale ? 'bad' : 'ok'}">${esc(age(ms))}</span>`;
}

function renderHeader() {
  const s = state.self;
  $('node').textContent = state.node;
  $('revision').textContent = `revision ${state.revision}`;
  $('token-state').textContent = token() ? 'actions enabled' : 'read-only: open the URL `corral console` prints to act';
  $('token-state').className = 'pill ' + (token() ? 'ok' : '');
  if (!s) return;
  $('components').innerHTML = [`<span>${esc(s.registry)} registry</span>`, `<span>agent applied ${s.appliedRevision}</span>`]
    .concat(s.components.map((c) => `<span class="${c.connected && c.appliedRevision >= s.revision ? '' : 'warn'}">${esc(c.component)} ${c.connected ? `applied ${c.appliedRevision}` : 'disconnected'}</span>`)).join('');
  const stale = $('stale');
  stale.hidden = s.registryConnected;
  if (!s.registryConnected) stale.textContent = `STALE: registry unreachable since ${new Date(s.registrySinceMs).toISOString()} (${s.registryError}); this host serves the last state it saw`;
  const problems = $('problems');
  problems.hidden = s.problems.length === 0;
  problems.textContent = s.problems.length ? `${s.problems.length} registry record(s) not served: ${s.problems.slice(0, 3).join('; ')}` : '';
}

// ---- the detail pane ----

function renderDetail() {
  const pane = $('detail');
  if (!state.selected) {
    pane.hidden = true;
    return;
  }
  if (state.tab === 'hosts') return renderHostDetail(pane);
  const r = state.services.get(state.selected);
  if (!r) {
    pane.hidden = false;
    setHtml(pane, `<button class="close" data-close>×</button><h2>${esc(state.selected)}</h2><p class="muted">gone from the registry</p>`);
    return;
  }
  // Keep what the operator is typing: redraw the weights form only when the colors changed.
  const focused = document.activeElement;
  const typing = focused && focused.closest && focused.closest('#detail') && focused.tagName === 'INPUT';
  if (typing && pane.dataset.key === r.key && pane.dataset.colors === r.colors.map((c) => c[0]).join(',')) return;
  const can = !!token();
  const eps = [...state.endpoints.values()].filter((ep) => ep.service === r.key).sort((a, b) => (a.color + a.address < b.color + b.address ? -1 : 1));
  const colorRows = r.colors.map((c) => `<tr data-color="${esc(c[0])}"><td><b>${esc(c[0])}</b></td><td class="share">${c[1]}%</td><td>${c[3]}/${c[2]} serving</td>` +
    `<td><input type="number" min="0" max="100" value="${c[1]}" data-weight="${esc(c[0])}"></td>` +
    `<td><button data-action="switch" data-color="${esc(c[0])}" ${can && c[2] > 0 ? '' : 'disabled'}>switch to ${esc(c[0])}</button></td></tr>`).join('');
  const epRows = eps.map((ep) => {
    const health = ep.draining ? '<span class="warn">draining</span>' : ep.healthy ? '<span class="ok">healthy</span>' : '<span class="bad">unhealthy</span>';
    const mine = ep.node === state.node;
    return `<tr data-endpoint="${esc(ep.id)}"><td>${esc(ep.address)}</td><td>${esc(ep.color)}</td><td>${ep.weight}</td><td>${health}</td><td>${esc(ep.reason)}</td>` +
      `<td>${esc(ep.node)}</td><td>${esc(ep.origin)}${ep.name ? ` ${esc(ep.name)}` : ''}</td>` +
      `<td><button data-action="drain" data-id="${esc(ep.id)}" ${can && mine && !ep.draining ? '' : 'disabled'} title="${mine ? 'stop new requests; it leaves after its drain time' : `on ${esc(ep.node)}: drain it in that host's console`}">drain</button></td></tr>`;
  }).join('');
  const hasPrevious = Object.keys(r.previous).length > 0;
  pane.hidden = false;
  pane.dataset.key = r.key;
  pane.dataset.colors = r.colors.map((c) => c[0]).join(',');
  setHtml(pane, `<button class="close" data-close>×</button><h2>${esc(r.name)} <span class="muted">${esc(r.namespace)}</span></h2>` +
    `<div>${r.serving}/${r.total} endpoints serving · routes: ${r.routes.length ? esc(r.routes.join(', ')) : '<span class="muted">none (DNS only)</span>'}</div>` +
    `<h3>Colors</h3><table><tr><th>color</th><th>share</th><th>endpoints</th><th>weight</th><th></th></tr>${colorRows}</table>` +
    `<div><button class="primary" data-action="weight" ${can ? '' : 'disabled'}>set weights</button>` +
    `<button data-action="rollback" ${can && hasPrevious ? '' : 'disabled'} title="${hasPrevious ? `back to ${esc(Object.entries(r.previous).map(([c, w]) => `${c}=${w}`).join(' '))}` : 'nothing to roll back to'}">rollback</button></div>` +
    `<h3>Endpoints</h3><table><tr><th>address</th><th>color</th><th>weight</th><th>health</th><th>reason</th><th>host</th><th>origin</th><th></th></tr>${epRows}</table>`);
}

/** A host: this host's peers with their handshakes (its row of the mesh), or what this host and the other's report say of it. */
function renderHostDetail(pane) {
  const h = state.hosts.get(state.selected);
  pane.hidden = false;
  pane.dataset.key = '';
  if (!h) {
    setHtml(pane, `<button class="close" data-close>×</button><h2>${esc(state.selected)}</h2><p class="muted">gone from the registry</p>`);
    return;
  }
  const facts = `<table><tr><td>block</td><td>${esc(h.block)}</td></tr><tr><td>underlay</td><td>${esc(h.underlay || '-')}</td></tr>` +
    `<tr><td>overlay</td><td>${esc(h.overlay || 'none')}${h.mtu ? `, MTU ${h.mtu}` : ''}</td></tr><tr><td>version</td><td>${esc(h.version)}</td></tr></table>`;
  let mesh;
  if (h.name === state.node && state.self) {
    const rows = state.self.peers.map((p) => `<tr data-peer="${esc(p.host)}"><td>${esc(p.host)}</td><td>${esc(p.endpoint)}</td><td>${handshake(p.lastHandshakeMs)}</td></tr>`).join('');
    const comps = state.self.components.map((c) => `<tr><td>${esc(c.component)}</td><td>${c.connected ? `applied ${c.appliedRevision}` : `disconnected, last applied ${c.appliedRevision}`}</td></tr>`).join('');
    mesh = `<h3>Applied revision per component (registry at ${state.self.revision})</h3><table><tr><td>agent</td><td>applied ${state.self.appliedRevision}</td></tr>${comps}</table>` +
      `<h3>Peers of ${esc(h.name)} (WireGuard handshakes)</h3>` + (rows ? `<table><tr><th>peer</th><th>endpoint</th><th>last handshake</th></tr>${rows}</table>` : '<p class="muted">no peers (no overlay, or no other host)</p>');
  } else {
    const rep = state.reports.get(h.name);
    mesh = `<h3>Mesh</h3><table><tr><td>handshake from ${esc(state.node)}</td><td>${handshake(state.peers.get(h.name))}</td></tr>` +
      (rep ? `<tr><td>its report</td><td>${age(rep.reportedMs)}: applied revision ${rep.appliedRevision}, ${rep.handshaken}/${rep.peers} peers handshaken, ${rep.stale} stale</td></tr>` +
        `<tr><td>its oldest handshake</td><td>${rep.worstPeer ? `${esc(rep.worstPeer)} ${handshake(rep.worstHandshakeMs)}` : '-'}</td></tr>` : '<tr><td>its report</td><td class="muted">none yet</td></tr>') +
      `</table><p class="muted">Each host's full peer list is read on that host (its console, or corral hosts ${esc(h.name)} there).</p>`;
  }
  setHtml(pane, `<button class="close" data-close>×</button><h2>${esc(h.name)}${h.name === state.node ? ' <span class="muted">this host</span>' : ''}</h2>${facts}${mesh}`);
}

// ---- actions ----

async function act(name, body) {
  const res = await fetch(`/console/actions/${name}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token()}` },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  let message = text.trim();
  try {
    const j = JSON.parse(text);
    message = j.error || `done: revision ${j.revision}`;
  } catch { /* a plain-text refusal */ }
  toast(`${name}: ${message}`, !res.ok);
}

let toastTimer = 0;
function toast(text, bad) {
  const el = $('toast');
  el.textContent = text;
  el.className = bad ? 'bad' : '';
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (el.hidden = true), bad ? 8000 : 3000);
}

function onDetailClick(e) {
  const t = e.target.closest('button');
  if (!t) return;
  if (t.hasAttribute('data-close')) {
    state.selected = null;
    schedule();
    return;
  }
  const r = state.services.get(state.selected);
  if (!r) return;
  const who = { namespace: r.namespace, service: r.name };
  switch (t.dataset.action) {
    case 'switch': return act('switch', { ...who, color: t.dataset.color });
    case 'rollback': return act('rollback', who);
    case 'drain': return act('drain', { id: t.dataset.id });
    case 'weight': {
      const weights = {};
      for (const input of $('detail').querySelectorAll('input[data-weight]')) weights[input.dataset.weight] = Number(input.value);
      return act('weight', { ...who, weights });
    }
  }
}

// ---- wiring ----

function setTab(tab) {
  state.tab = tab;
  state.selected = null;
  state.dirty = true;
  for (const b of document.querySelectorAll('.tab')) b.classList.toggle('active', b.dataset.tab === tab);
  $('viewport').scrollTop = 0;
  schedule();
}

document.addEventListener('DOMContentLoaded', () => {
  mark('script');
  token();
  renderHeader();
  for (const b of document.querySelectorAll('.tab')) b.addEventListener('click', () => setTab(b.dataset.tab));
  $('search').addEventListener('input', (e) => {
    state.query = e.target.value.trim().toLowerCase();
    state.dirty = true;
    $('viewport').scrollTop = 0;
    schedule();
  });
  $('viewport').addEventListener('scroll', schedule, { passive: true });
  window.addEventListener('resize', schedule);
  $('rows').addEventListener('click', (e) => {
    const row = e.target.closest('.row');
    if (!row) return;
    state.selected = row.dataset.key || row.dataset.host || null;
    state.endpoints = new Map();
    if (row.dataset.key) loadEndpoints(row.dataset.key);
    schedule();
  });
  $('detail').addEventListener('click', onDetailClick);
  // Ages move with the clock: redraw the rows in view every few seconds (no request is made).
  setInterval(() => {
    if (state.tab === 'hosts') schedule();
  }, 5000);
  connect();
});
