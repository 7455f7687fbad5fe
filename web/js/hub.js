// hub.js: the hub page: version, uptime, twins, and every counter with its rate.
import { get } from './api.js';
import { el, clear, setText, fmtNum, errorText, isAbort } from './dom.js';
import { timePlot } from './plots.js';

const POLL_MS = 2000;
const MAIN = ['twinhub_messages_received_total', 'twinhub_telemetry_applied_total', 'twinhub_publications_total'];

export function hubPage(ctx) {
  const ac = new AbortController();
  const head = el('div', { class: 'twin-head', id: 'hub-head' });
  const table = el('div', { id: 'hub-counters' });
  const plotBox = el('div', { class: 'plot' });
  const error = el('div', { class: 'error' });
  ctx.view.appendChild(el('section', { class: 'page hub' }, el('h1', { text: 'Hub' }), error, head,
    el('div', { class: 'card' }, el('h2', { text: 'Rates (per second)' }), plotBox),
    el('div', { class: 'card' }, el('h2', { text: 'Counters' }), table)));
  const plot = timePlot(plotBox, MAIN.map((n, i) => ({ label: n.replace(/^twinhub_|_total$/g, ''), stroke: ['#c0392b', '#2874a6', '#1e8449'][i] })), { height: 200 });
  let prev = null, timer = null;
  const rates = [[], [], [], []];

  function flat(counters) {
    // {name: value} or {name: {label: value}}: one row per series
    const out = [];
    for (const name of Object.keys(counters || {}).sort()) {
      const v = counters[name];
      if (v && typeof v === 'object') for (const k of Object.keys(v).sort()) out.push([`${name}{${k}}`, v[k]]);
      else out.push([name, v]);
    }
    return out;
  }

  async function poll() {
    try {
      const r = await get('hub', null, ac.signal);
      setText(error, '');
      const t = Date.now() / 1000;
      const rows = flat(r.counters);
      const now = new Map(rows);
      clear(head).append(
        el('span', { class: 'field' }, el('span', { class: 'label', text: 'version ' }), String(r.version ?? '–')),
        el('span', { class: 'field' }, el('span', { class: 'label', text: 'uptime ' }), fmtNum(r.uptime_s, 0) + ' s'),
        el('span', { class: 'field' }, el('span', { class: 'label', text: 'twins ' }), el('span', { id: 'hub-twins', text: fmtNum(r.twins ?? now.get('twinhub_twins')) })));
      const dt = prev ? t - prev.t : 0;
      clear(table).appendChild(el('table', { class: 'kv' },
        el('thead', {}, el('tr', {}, el('th', { text: 'counter' }), el('th', { text: 'value' }), el('th', { text: 'per second' }))),
        el('tbody', {}, ...rows.map(([name, v]) => {
          const p = prev && prev.values.get(name);
          const rate = dt > 0 && /_total(\{|$)/.test(name) && typeof v === 'number' && typeof p === 'number' && v >= p ? (v - p) / dt : null;
          return el('tr', {}, el('td', { class: 'path', text: name }), el('td', { text: fmtNum(v) }),
            el('td', { text: rate === null ? '' : fmtNum(rate, 1) }));
        }))));
      if (prev && dt > 0) {
        rates[0].push(t);
        MAIN.forEach((n, i) => {
          const a = now.get(n), b = prev.values.get(n);
          rates[i + 1].push(typeof a === 'number' && typeof b === 'number' && a >= b ? (a - b) / dt : null);
        });
        if (rates[0].length > 300) for (const s of rates) s.shift();
        plot.set(rates);
      }
      prev = { t, values: now };
    } catch (e) {
      if (isAbort(e)) return;
      setText(error, errorText(e));
      prev = null;
    }
    timer = setTimeout(poll, POLL_MS);
  }

  poll();
  return {
    destroy() {
      ac.abort();
      clearTimeout(timer);
      plot.destroy();
    },
  };
}
