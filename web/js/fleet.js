// fleet.js: the fleet page: a tile per twin (query filter, sort, paging), live from the stream.
import { get, twinPath, Stream } from './api.js';
import { el, clear, setText, fmtNum, fmtAge, errorText, isAbort } from './dom.js';
import { sparkline } from './plots.js';

const FIELDS = ['reported.heart_rate', 'reported.spo2', 'connected', 'last_seen', 'rules'];
const SPARK_SECONDS = 300; // the sparkline: the last 5 minutes
const REFRESH_MS = 20000;  // re-read the page's snapshot (twins that came or stopped matching)
const SORTS = [
  ['', 'id'],
  ['-reported.heart_rate', 'heart rate, highest first'],
  ['reported.heart_rate', 'heart rate, lowest first'],
  ['reported.spo2', 'SpO2, lowest first'],
  ['-last_seen', 'last seen, newest first'],
];

// kept across visits of the page
const saved = { where: '', order: '', limit: 50 };

export function fleetPage(ctx) {
  const ac = new AbortController();
  const tiles = new Map(); // id -> tile
  let cursors = [null];    // cursor of each page seen; the last is the page shown
  let stream = null;
  let streamIds = '';
  let refreshTimer = null;

  const filter = el('input', { type: 'search', id: 'fleet-filter', class: 'filter', size: 48,
    placeholder: 'reported.heart_rate > 120 and connected', value: saved.where });
  const sort = el('select', { id: 'fleet-sort' },
    ...SORTS.map(([v, label]) => el('option', { value: v, text: label, selected: v === saved.order })));
  const size = el('select', { id: 'fleet-size' },
    ...[25, 50, 100, 200].map((n) => el('option', { value: n, text: n + ' a page', selected: n === saved.limit })));
  const prev = el('button', { type: 'button', id: 'fleet-prev', text: '‹ previous' });
  const next = el('button', { type: 'button', id: 'fleet-next', text: 'next ›' });
  const summary = el('span', { class: 'muted', id: 'fleet-summary' });
  const error = el('div', { class: 'error', id: 'fleet-error' });
  const grid = el('div', { class: 'tiles', id: 'tiles' });
  const form = el('form', { class: 'toolbar', id: 'fleet-form' },
    el('label', {}, 'filter ', filter), el('button', { type: 'submit', text: 'apply' }),
    el('label', {}, 'sort ', sort), size, prev, next, summary);
  ctx.view.appendChild(el('section', { class: 'page fleet' }, el('h1', { text: 'Fleet' }), form, error, grid));

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    saved.where = filter.value.trim();
    cursors = [null];
    load();
  });
  sort.addEventListener('change', () => { saved.order = sort.value; cursors = [null]; load(); });
  size.addEventListener('change', () => { saved.limit = +size.value; cursors = [null]; load(); });
  prev.addEventListener('click', () => { if (cursors.length > 1) { cursors.pop(); load(); } });
  next.addEventListener('click', () => {
    if (next.dataset.cursor) { cursors.push(next.dataset.cursor); load(); }
  });

  async function load() {
    clearTimeout(refreshTimer);
    let res;
    try {
      res = await get('twins', {
        where: saved.where, fields: FIELDS.join(','), order: saved.order,
        limit: saved.limit, cursor: cursors[cursors.length - 1],
      }, ac.signal);
    } catch (e) {
      if (isAbort(e)) return;
      setText(error, errorText(e));
      refreshTimer = setTimeout(load, REFRESH_MS);
      return;
    }
    setText(error, '');
    const rows = Array.isArray(res.rows) ? res.rows : [];
    const first = (cursors.length - 1) * saved.limit;
    setText(summary, `${rows.length ? first + 1 : 0}–${first + rows.length} of ${res.matched ?? '?'} matching ` +
      `(${res.scanned ?? '?'} scanned, ${fmtNum(res.took_ms)} ms)`);
    prev.disabled = cursors.length <= 1;
    next.disabled = !res.next;
    if (res.next) next.dataset.cursor = res.next;
    else delete next.dataset.cursor;
    show(rows);
    refreshTimer = setTimeout(load, REFRESH_MS);
  }

  function show(rows) {
    const keep = new Set();
    for (const row of rows) {
      if (typeof row.id !== 'string') continue;
      keep.add(row.id);
      let t = tiles.get(row.id);
      if (!t) {
        t = makeTile(row.id);
        tiles.set(row.id, t);
      }
      update(t, row);
      grid.appendChild(t.node); // in the answer's order
    }
    for (const [id, t] of tiles) {
      if (!keep.has(id)) {
        t.spark.destroy();
        t.node.remove();
        tiles.delete(id);
      }
    }
    if (!rows.length) clear(grid).appendChild(el('p', { class: 'muted', text: 'no twin matches' }));
    else for (const p of grid.querySelectorAll('p.muted')) p.remove();
    const ids = [...keep].sort().join(',');
    if (ids !== streamIds) {
      streamIds = ids;
      if (stream) stream.close();
      stream = ids ? new Stream({ ids, kinds: 'state,event', fields: FIELDS.join(',') }, {
        state: onState, event: onEvent, reset: () => load(), status: ctx.streamStatus,
      }) : null;
    }
  }

  function makeTile(id) {
    const t = { id, rules: {}, xs: [], ys: [], lastSeen: 0 };
    t.dot = el('span', { class: 'dot' });
    t.hr = el('span', { class: 'hr-value' });
    t.spo2 = el('span', { class: 'spo2-value' });
    t.seen = el('span', { class: 'seen' });
    t.alarms = el('span', { class: 'alarms' });
    const sp = el('div', { class: 'spark' });
    t.node = el('a', { class: 'tile', href: '#/twin/' + encodeURIComponent(id) },
      el('div', { class: 'tile-head' }, t.dot, el('span', { class: 'tile-id', text: id })),
      el('div', { class: 'tile-vals' },
        el('span', { class: 'label', text: 'HR ' }), t.hr,
        el('span', { class: 'label', text: ' SpO2 ' }), t.spo2),
      sp,
      el('div', { class: 'tile-foot' }, t.seen, t.alarms));
    t.node.dataset.id = id;
    t.spark = sparkline(sp, 200, 40);
    loadSpark(t);
    return t;
  }

  async function loadSpark(t) {
    try {
      const h = await get(twinPath(t.id, 'history'), { path: 'reported.heart_rate', from: '-5m' }, ac.signal);
      const pts = Array.isArray(h.points) ? h.points : [];
      const live = t.xs.map((x, i) => [x, t.ys[i]]);
      const all = pts.map((p) => [p[0] / 1000, p[1]]).concat(live).sort((a, b) => a[0] - b[0]);
      t.xs = all.map((p) => p[0]);
      t.ys = all.map((p) => p[1]);
      drawSpark(t);
    } catch (e) {
      /* the tile goes on without its past (aborted, or no history yet) */
    }
  }

  function drawSpark(t) {
    const cut = Date.now() / 1000 - SPARK_SECONDS;
    let i = 0;
    while (i < t.xs.length && t.xs[i] < cut) i++;
    if (i) { t.xs.splice(0, i); t.ys.splice(0, i); }
    t.spark.set(t.xs, t.ys);
  }

  function update(t, row) {
    const hr = row['reported.heart_rate'];
    setText(t.hr, fmtNum(hr, typeof hr === 'number' && !Number.isInteger(hr) ? 1 : undefined));
    setText(t.spo2, fmtNum(row['reported.spo2']));
    const online = row.connected === true;
    t.dot.className = 'dot ' + (online ? 'online' : 'offline');
    t.dot.title = online ? 'online' : 'offline';
    t.node.classList.toggle('offline', !online);
    if (typeof row.last_seen === 'number') t.lastSeen = row.last_seen;
    setText(t.seen, fmtAge(t.lastSeen));
    if (row.rules && typeof row.rules === 'object') t.rules = { ...row.rules };
    showAlarms(t);
    return hr;
  }

  function showAlarms(t) {
    const firing = Object.keys(t.rules).filter((r) => t.rules[r] === 'firing').sort();
    const pending = Object.keys(t.rules).filter((r) => t.rules[r] === 'pending').sort();
    const state = firing.length ? 'firing' : (pending.length ? 'pending' : 'none');
    t.node.dataset.alarm = state;
    t.node.classList.toggle('alarm-firing', state === 'firing');
    t.node.classList.toggle('alarm-pending', state === 'pending');
    setText(t.alarms, firing.concat(pending.map((r) => r + ' (pending)')).join(', '));
  }

  function onState(d) {
    const t = d && tiles.get(d.id);
    if (!t || !d.row) return;
    const hr = update(t, d.row);
    if (typeof hr === 'number') {
      const x = (typeof d.row.last_seen === 'number' ? d.row.last_seen : Date.now()) / 1000;
      if (!t.xs.length || x > t.xs[t.xs.length - 1]) {
        t.xs.push(x);
        t.ys.push(hr);
        drawSpark(t);
      }
    }
  }

  function onEvent(d) {
    const t = d && tiles.get(d.id);
    const ev = d && d.event;
    if (!t || !ev || ev.type !== 'rule' || typeof ev.rule !== 'string') return;
    if (ev.state === 'pending' || ev.state === 'firing') t.rules[ev.rule] = ev.state;
    else delete t.rules[ev.rule];
    showAlarms(t);
  }

  const ageTimer = setInterval(() => {
    for (const t of tiles.values()) setText(t.seen, fmtAge(t.lastSeen));
  }, 1000);

  load();
  return {
    destroy() {
      ac.abort();
      clearTimeout(refreshTimer);
      clearInterval(ageTimer);
      if (stream) stream.close();
      for (const t of tiles.values()) t.spark.destroy();
    },
  };
}
