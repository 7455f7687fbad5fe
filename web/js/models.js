// models.js: the models page: per model, scored predictions and MAE/RMSE or accuracy over time.
import { get } from './api.js';
import { el, clear, setText, fmtNum, errorText, isAbort } from './dom.js';
import { timePlot } from './plots.js';

const POLL_MS = 10000; // the hub samples every 10 s (http_tick)
const KEEP = 360; // an hour of samples

export function modelsPage(ctx) {
  const ac = new AbortController();
  const table = el('div', { id: 'models-table' });
  const plots = el('div', { class: 'model-plots', id: 'model-plots' });
  const error = el('div', { class: 'error' });
  ctx.view.appendChild(el('section', { class: 'page models' }, el('h1', { text: 'Models' }),
    el('p', { class: 'muted', text: 'The table: scores over every twin since the hub started. The plots: the error (or accuracy) of the predictions scored in each 10 s, and the predictions scored in all, over the last hour, as the hub sampled them.' }),
    error, table, plots));
  const charts = new Map(); // model -> {err, scored}
  let timer = null;

  async function poll() {
    try {
      const r = await get('models', null, ac.signal);
      setText(error, '');
      const models = Array.isArray(r.models) ? r.models : [];
      show(models, Array.isArray(r.history) ? r.history : []);
    } catch (e) {
      if (isAbort(e)) return;
      setText(error, errorText(e));
    }
    timer = setTimeout(poll, POLL_MS);
  }

  // model -> [[t s, scored in all, mae|accuracy, rmse]...] from the hub's samples
  function series(samples) {
    const out = new Map();
    for (const smp of samples.slice(-KEEP)) {
      if (!smp || typeof smp.ts !== 'number' || !smp.models || typeof smp.models !== 'object') continue;
      for (const [name, v] of Object.entries(smp.models)) {
        if (!v || typeof v !== 'object') continue;
        const h = out.get(name) || [];
        const classifier = typeof v.accuracy === 'number';
        h.push([smp.ts / 1000, v.total ?? null, classifier ? v.accuracy : (v.mae ?? null), classifier ? null : (v.rmse ?? null)]);
        out.set(name, h);
      }
    }
    return out;
  }

  function show(models, samples) {
    const history = series(samples);
    clear(table).appendChild(el('table', { class: 'kv' },
      el('thead', {}, el('tr', {}, ...['model', 'kind', 'predictions', 'scored', 'MAE', 'RMSE', 'accuracy'].map((h) => el('th', { text: h })))),
      el('tbody', {}, ...models.map((m) => el('tr', {},
        el('td', { text: m.model }), el('td', { text: m.kind ?? '–' }),
        el('td', { text: fmtNum(m.predictions) }), el('td', { text: fmtNum(m.scored) }),
        el('td', { text: fmtNum(m.mae, 3) }), el('td', { text: fmtNum(m.rmse, 3) }),
        el('td', { text: typeof m.accuracy === 'number' ? fmtNum(m.accuracy * 100, 1) + ' %' : '–' }))))));
    for (const m of models) {
      if (typeof m.model !== 'string') continue;
      const classifier = typeof m.accuracy === 'number';
      const h = history.get(m.model) || [];
      let c = charts.get(m.model);
      if (!c) {
        const errBox = el('div', { class: 'plot small' }), scoredBox = el('div', { class: 'plot small' });
        plots.appendChild(el('div', { class: 'card' }, el('h2', { text: m.model }), el('div', { class: 'row2' }, errBox, scoredBox)));
        c = {
          err: timePlot(errBox, classifier ? [{ label: 'accuracy', stroke: '#1e8449' }]
            : [{ label: 'MAE', stroke: '#c0392b' }, { label: 'RMSE', stroke: '#8e44ad' }], { height: 160 }),
          scored: timePlot(scoredBox, [{ label: 'scored predictions', stroke: '#2874a6' }], { height: 160 }),
          classifier,
        };
        charts.set(m.model, c);
      }
      const xs = h.map((p) => p[0]);
      c.err.set(c.classifier ? [xs, h.map((p) => p[2])] : [xs, h.map((p) => p[2]), h.map((p) => p[3])]);
      c.scored.set([xs, h.map((p) => p[1])]);
    }
  }

  poll();
  return {
    destroy() {
      ac.abort();
      clearTimeout(timer);
      for (const c of charts.values()) { c.err.destroy(); c.scored.destroy(); }
    },
  };
}
