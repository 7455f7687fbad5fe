// models.js: the models page: per model, scored predictions and MAE/RMSE or accuracy over time.
import { get } from './api.js';
import { el, clear, setText, fmtNum, errorText, isAbort } from './dom.js';
import { timePlot } from './plots.js';

const POLL_MS = 5000;
const KEEP = 720; // an hour of polls
const history = new Map(); // model -> [[t s, scored, mae|accuracy, rmse]...], kept across visits

export function modelsPage(ctx) {
  const ac = new AbortController();
  const table = el('div', { id: 'models-table' });
  const plots = el('div', { class: 'model-plots', id: 'model-plots' });
  const error = el('div', { class: 'error' });
  ctx.view.appendChild(el('section', { class: 'page models' }, el('h1', { text: 'Models' }),
    el('p', { class: 'muted', text: 'Scores over every twin since the hub started; the plots cover this session, one point every 5 s.' }),
    error, table, plots));
  const charts = new Map(); // model -> {err, scored}
  let timer = null;

  async function poll() {
    try {
      const r = await get('models', null, ac.signal);
      setText(error, '');
      const models = Array.isArray(r.models) ? r.models : [];
      show(models);
    } catch (e) {
      if (isAbort(e)) return;
      setText(error, errorText(e));
    }
    timer = setTimeout(poll, POLL_MS);
  }

  function show(models) {
    const t = Date.now() / 1000;
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
      h.push([t, m.scored ?? null, classifier ? m.accuracy : (m.mae ?? null), classifier ? null : (m.rmse ?? null)]);
      if (h.length > KEEP) h.shift();
      history.set(m.model, h);
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
