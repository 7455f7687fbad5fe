// dispatch.js: the dispatch page (open demands, assignments, the ward plan, the hub's dispatch
// counters) from GET /api/dispatch, /api/twins and /api/hub, and the twin page's assignment line.
import { get, Stream } from './api.js';
import { el, clear, setText, fmtNum, fmtTime, fmtAge, errorText, isAbort } from './dom.js';

const POLL_MS = 2000;       // /api/dispatch, the positions and the counters
const LINE_POLL_MS = 3000;  // the twin page's line
const SVG_NS = 'http://www.w3.org/2000/svg';
const PLAN_W = 800, PLAN_H = 360, PAD = 30, PAD_RIGHT = 90; // the ward plan, in pixels (labels on the right)
const POS_PAGES = 5;        // at most 5 pages of 1000 positioned twins

// A twin-id glob of a dispatch entry as a RegExp: * and ? are its only wildcards (the hub
// refuses a dispatch glob with [ or \ when it loads the rules file), every other character
// matches itself, so this and the hub's fnmatch agree.
function globRe(glob) {
  let re = '';
  for (const ch of String(glob)) {
    if (ch === '*') re += '.*';
    else if (ch === '?') re += '.';
    else re += ch.replace(/[.+^${}()|[\]\\\/-]/g, '\\$&');
  }
  return new RegExp('^' + re + '$');
}

// A duration in ms as text: "42 s", "3 min 5 s", "2 h 10 min".
export function fmtWait(ms) {
  if (typeof ms !== 'number' || !isFinite(ms)) return '–';
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function twinLink(id) {
  return el('a', { href: '#/twin/' + encodeURIComponent(id), class: 'twin-link', text: id });
}

// An SVG element: attributes with setAttribute, text with textContent.
function svg(tag, attrs, text) {
  const n = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, String(v));
  if (text !== undefined) n.textContent = String(text);
  return n;
}

// A counter of /api/hub, summed over its label sets (`name` or `name{dispatch="x"}`).
function counter(counters, name) {
  let sum = null;
  for (const [k, v] of Object.entries(counters || {})) {
    if ((k === name || k.startsWith(name + '{')) && typeof v === 'number') sum = (sum || 0) + v;
  }
  return sum;
}

function posOf(row) {
  const p = row && row['reported.pos'];
  return p && typeof p.x === 'number' && typeof p.y === 'number' && isFinite(p.x) && isFinite(p.y) ? p : null;
}

// The assignment a resource's desired state holds: the object under the rules file's
// on_assign desired: key ({demand, dispatch, since, cost, ...}).
function taskOf(desired) {
  if (!desired || typeof desired !== 'object') return null;
  return Object.values(desired).find((v) => v && typeof v === 'object' && !Array.isArray(v) &&
    typeof v.demand === 'string' && typeof v.dispatch === 'string') || null;
}

export function dispatchPage(ctx) {
  const ac = new AbortController();
  let timer = null, soon = null, stream = null, loading = false, again = false;
  let skew = 0;      // the hub's clock less the browser's (from /api/hub's now)
  let live = [];     // [node, ms since which it counts]: the cells that count up
  const hubNow = () => Date.now() + skew;

  let resourceRes = []; // the resource matches of the loaded dispatch entries
  const summary = el('div', { class: 'twin-head', id: 'dispatch-summary' });
  const error = el('div', { class: 'error', id: 'dispatch-error' });
  const openBox = el('div', { id: 'dispatch-open' });
  const assignedBox = el('div', { id: 'dispatch-assigned' });
  const plan = svg('svg', { id: 'ward-plan', class: 'ward-plan', viewBox: `0 0 ${PLAN_W} 120`,
    'data-points': 0, 'data-lines': 0 });
  const planNote = el('div', { class: 'muted', id: 'ward-note' });
  const legend = el('div', { class: 'legend' }, ...[['open', 'open demand'], ['assigned', 'assigned'],
    ['served', 'served'], ['resource', 'resource']].map(([c, t]) => el('span', {}, el('span', { class: 'key ' + c }), t)));
  ctx.view.appendChild(el('section', { class: 'page dispatch' }, el('h1', { text: 'Dispatch' }), error, summary,
    el('div', { class: 'row2' },
      el('div', { class: 'card' }, el('h2', { text: 'Open demands' }), openBox),
      el('div', { class: 'card' }, el('h2', { text: 'Assignments' }), assignedBox)),
    el('div', { class: 'card' }, el('h2', { text: 'Ward plan' }), plan, legend, planNote)));

  async function positions() {
    const rows = [];
    let cursor = null;
    for (let i = 0; i < POS_PAGES; i++) {
      const r = await get('twins', { where: 'reported.pos != nil', fields: 'reported.pos,reported.skills,desired,connected',
        limit: 1000, cursor }, ac.signal);
      if (Array.isArray(r.rows)) rows.push(...r.rows);
      if (!r.next) break;
      cursor = r.next;
    }
    return rows;
  }

  async function load() {
    if (loading) { again = true; return; }
    loading = true;
    clearTimeout(timer);
    const t0 = Date.now();
    const [d, p, h] = await Promise.allSettled([get('dispatch', null, ac.signal), positions(),
      get('hub', null, ac.signal)]);
    loading = false;
    if (ac.signal.aborted) return;
    const failed = [d, p, h].filter((x) => x.status === 'rejected' && !isAbort(x.reason));
    setText(error, failed.map((x) => errorText(x.reason)).join('\n'));
    if (h.status === 'fulfilled' && h.value && typeof h.value.now === 'number') {
      skew = h.value.now - (t0 + Date.now()) / 2;
      showSummary(h.value.counters);
    }
    if (d.status === 'fulfilled') {
      resourceRes = (Array.isArray(d.value.entries) ? d.value.entries : [])
        .filter((e) => e && typeof e.resource_match === 'string').map((e) => globRe(e.resource_match));
      const recs = (Array.isArray(d.value.records) ? d.value.records : [])
        .filter((r) => r && typeof r.demand === 'string');
      live = [];
      showTables(recs, d.value.more === true);
      showPlan(recs, p.status === 'fulfilled' ? p.value : []);
    }
    if (again) { again = false; load(); return; }
    timer = setTimeout(load, POLL_MS);
  }

  function showSummary(c) {
    const n = (name) => counter(c, 'twinhub_dispatch_' + name);
    const waitSum = n('wait_seconds_sum'), waitCount = n('wait_seconds_count');
    const cost = n('cost_total'), greedy = n('greedy_cost_total');
    const item = (label, value, key) => el('span', { class: 'field' },
      el('span', { class: 'label', text: label + ' ' }), el('span', { 'data-counter': key, text: value }));
    let vs = `${fmtNum(cost)} vs greedy ${fmtNum(greedy)}`;
    if (typeof cost === 'number' && typeof greedy === 'number' && greedy > 0) {
      vs += ` (${fmtNum(100 * (greedy - cost) / greedy, 1)} % less)`;
    }
    clear(summary).append(
      item('assigned', fmtNum(n('assigned_total')), 'assigned'),
      item('completed', fmtNum(n('completed_total')), 'completed'),
      item('returned', fmtNum(n('returned_total')), 'returned'),
      item('decisions', fmtNum(n('decisions_total')), 'decisions'),
      item('mean wait', waitCount ? fmtNum(waitSum / waitCount, 1) + ' s' : '–', 'wait'),
      item('total cost', vs, 'cost'));
  }

  function counting(ms) {
    const n = el('span', { class: 'counting', text: fmtWait(hubNow() - ms) });
    if (typeof ms === 'number') live.push([n, ms]);
    return n;
  }

  function showTables(recs, more) {
    const open = recs.filter((r) => r.state === 'open')
      .sort((a, b) => (b.priority || 0) - (a.priority || 0) || (a.opened || 0) - (b.opened || 0));
    const taken = recs.filter((r) => r.state !== 'open' && typeof r.resource === 'string')
      .sort((a, b) => (a.assigned || 0) - (b.assigned || 0));
    const table = (id, heads, rows) => el('table', { class: 'kv', id },
      el('thead', {}, el('tr', {}, ...heads.map((x) => el('th', { text: x })))), el('tbody', {}, ...rows));
    // the resources that declined it: a list (a string in records written before the list)
    const declinedBy = (d) => {
      const ids = (Array.isArray(d) ? d : [d]).filter((x) => typeof x === 'string');
      if (!ids.length) return [];
      const out = ['declined by '];
      ids.forEach((x, i) => out.push(...(i ? [', '] : []), twinLink(x)));
      return out;
    };
    const openRow = (r) => el('tr', { class: 'dispatch-open', 'data-demand': r.demand },
      el('td', {}, twinLink(r.demand)), el('td', { text: r.dispatch }),
      el('td', { text: fmtNum(r.priority) }), el('td', {}, counting(r.opened)),
      el('td', { class: 'muted' }, ...declinedBy(r.declined)));
    const takenRow = (r) => el('tr', { class: 'dispatch-' + String(r.state), 'data-demand': r.demand,
      'data-resource': r.resource },
    el('td', {}, twinLink(r.demand)), el('td', { text: '→' }), el('td', {}, twinLink(r.resource)),
    el('td', { text: r.dispatch }), el('td', { text: fmtNum(r.cost) }),
    el('td', {}, counting(r.assigned)), el('td', { class: 'state', text: r.state }));
    clear(openBox).appendChild(open.length
      ? table('open-table', ['demand', 'dispatch', 'priority', 'waiting', 'note'], open.map(openRow))
      : el('p', { class: 'muted', text: 'no demand waiting' }));
    clear(assignedBox).appendChild(taken.length
      ? table('assigned-table', ['demand', '', 'resource', 'dispatch', 'cost', 'since', 'state'], taken.map(takenRow))
      : el('p', { class: 'muted', text: 'no assignment' }));
    if (more) assignedBox.appendChild(el('p', { class: 'muted', text: 'more records than the hub lists' }));
  }

  function showPlan(recs, rows) {
    const byDemand = new Map(recs.map((r) => [r.demand, r]));
    const busy = new Set(recs.filter((r) => r.state === 'assigned').map((r) => r.resource));
    const pts = [];
    const at = new Map();
    for (const row of rows) {
      const p = posOf(row);
      if (!p || typeof row.id !== 'string') continue;
      const rec = byDemand.get(row.id);
      const task = taskOf(row.desired);
      let kind = null;
      if (rec) kind = String(rec.state);
      else if (busy.has(row.id) || task || resourceRes.some((re) => re.test(row.id))) kind = 'resource';
      if (!kind) continue;
      const skills = Array.isArray(row['reported.skills']) ? row['reported.skills'].map(String) : [];
      const pt = { id: row.id, x: p.x, y: p.y, kind, rec, task, skills, connected: row.connected === true };
      pts.push(pt);
      at.set(row.id, pt);
    }
    clear(plan);
    plan.setAttribute('data-points', pts.length);
    if (!pts.length) {
      plan.setAttribute('data-lines', 0);
      setText(planNote, 'no twin with reported.pos among the demands and resources');
      return;
    }
    setText(planNote, `${pts.length} twins: x, y in metres (reported.pos)`);
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (const p of pts) {
      x0 = Math.min(x0, p.x); x1 = Math.max(x1, p.x);
      y0 = Math.min(y0, p.y); y1 = Math.max(y1, p.y);
    }
    const dx = Math.max(x1 - x0, 1), dy = Math.max(y1 - y0, 1);
    // metres to pixels, the same scale both ways; the plan as high as the ward needs
    const k = Math.min((PLAN_W - PAD - PAD_RIGHT) / dx, (PLAN_H - 2 * PAD) / dy);
    const h = Math.max(120, Math.ceil(k * dy + 2 * PAD));
    const ox = PAD + (PLAN_W - PAD - PAD_RIGHT - k * dx) / 2 - k * x0, oy = (h - k * dy) / 2 - k * y0;
    const px = (p) => (ox + k * p.x).toFixed(1), py = (p) => (oy + k * p.y).toFixed(1);
    plan.setAttribute('viewBox', `0 0 ${PLAN_W} ${h}`);
    plan.appendChild(svg('rect', { class: 'floor', x: 1, y: 1, width: PLAN_W - 2, height: h - 2 }));
    // a scale bar: the longest of .., 1, 2, 5, 10, .. m that is at most 150 px
    let m = 0.01;
    while (k * m * 10 <= 150) m *= 10;
    m = k * m * 5 <= 150 ? m * 5 : (k * m * 2 <= 150 ? m * 2 : m);
    plan.appendChild(svg('line', { class: 'scale', x1: 10, y1: h - 10, x2: 10 + k * m, y2: h - 10 }));
    plan.appendChild(svg('text', { class: 'scale', x: 14 + k * m, y: h - 6 }, `${fmtNum(m)} m`));
    let lines = 0;
    for (const r of recs) {
      const a = r.state === 'assigned' && at.get(r.resource), b = at.get(r.demand);
      if (!a || !b || a.kind !== 'resource') continue;
      const line = svg('line', { class: 'route', x1: px(a), y1: py(a), x2: px(b), y2: py(b),
        'data-resource': r.resource, 'data-demand': r.demand });
      line.appendChild(svg('title', {}, `${r.resource} → ${r.demand}: cost ${fmtNum(r.cost)}`));
      plan.appendChild(line);
      lines++;
    }
    plan.setAttribute('data-lines', lines);
    for (const p of pts) {
      const g = svg('g', { class: `pt ${p.kind === 'resource' ? 'resource' : 'demand ' + p.kind}` +
        (p.connected ? '' : ' offline'), 'data-id': p.id, 'data-kind': p.kind });
      const what = p.kind === 'resource'
        ? (p.task ? `resource, on ${p.task.demand}` : 'resource') + (p.skills.length ? ` (${p.skills.join(', ')})` : '')
        : `demand, ${p.kind}` + (p.rec && p.rec.resource ? ` (${p.rec.resource})` : '');
      g.appendChild(svg('title', {}, `${p.id}: ${what}; x ${fmtNum(p.x)} m, y ${fmtNum(p.y)} m` +
        (p.connected ? '' : '; offline')));
      if (p.kind === 'resource') {
        g.appendChild(svg('rect', { x: +px(p) - 6, y: +py(p) - 6, width: 12, height: 12, rx: 2 }));
      } else {
        g.appendChild(svg('circle', { cx: px(p), cy: py(p), r: 7 }));
      }
      g.appendChild(svg('text', { x: +px(p) + 10, y: +py(p) + 4 }, p.id));
      plan.appendChild(g);
    }
  }

  function onEvent(d) {
    if (!d || !d.event || d.event.type !== 'dispatch') return;
    clearTimeout(soon);
    soon = setTimeout(load, 150); // one load for the events of one commit
  }

  const tick = setInterval(() => {
    for (const [n, ms] of live) setText(n, fmtWait(hubNow() - ms));
  }, 1000);
  stream = new Stream({ kinds: 'event' }, { event: onEvent, reset: () => load(), status: ctx.streamStatus });
  load();
  return {
    destroy() {
      ac.abort();
      clearTimeout(timer);
      clearTimeout(soon);
      clearInterval(tick);
      stream.close();
    },
  };
}

// The twin page's line "Assignment: ...": a resource's from its desired state (update(doc)), a
// demand's from its record in /api/dispatch (read every few seconds). Hidden when it has none.
export function assignmentLine(id) {
  const ac = new AbortController();
  const node = el('div', { class: 'assignment', id: 'twin-assignment', hidden: true });
  let task = null, rec = null, stopped = false;

  function show() {
    clear(node);
    const label = el('span', { class: 'label', text: 'Assignment: ' });
    if (task) {
      node.append(label, 'demand ', twinLink(task.demand), ` (${task.dispatch}) since ${fmtTime(task.since)}` +
        ` (${fmtAge(task.since)}), cost ${fmtNum(task.cost)}`);
    } else if (rec && rec.state === 'open') {
      node.append(label, `open demand (${rec.dispatch}), waiting since ${fmtTime(rec.opened)} (${fmtAge(rec.opened)})` +
        `, priority ${fmtNum(rec.priority)}`);
    } else if (rec && typeof rec.resource === 'string') {
      node.append(label, 'resource ', twinLink(rec.resource), ` (${rec.dispatch}, ${rec.state}) since ` +
        `${fmtTime(rec.assigned)} (${fmtAge(rec.assigned)}), cost ${fmtNum(rec.cost)}`);
    }
    node.hidden = !node.firstChild;
  }

  async function poll() {
    try {
      const d = await get('dispatch', null, ac.signal);
      const recs = Array.isArray(d.records) ? d.records : [];
      rec = recs.find((r) => r && r.demand === id) || null;
      show();
    } catch (e) {
      /* the line stays as it was (aborted, or a hub without dispatch) */
    }
    if (!stopped) timer = setTimeout(poll, LINE_POLL_MS);
  }

  let timer = null;
  poll();
  return {
    node,
    update(doc) {
      task = taskOf(doc && doc.desired);
      show();
    },
    destroy() {
      stopped = true;
      ac.abort();
      clearTimeout(timer);
    },
  };
}
