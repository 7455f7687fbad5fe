// twin.js: the twin page: heart rate with its forecasts, the ECG strip, SpO2 and temperature,
// the document (reported/desired/delta, their times, the version), rules, events, commands.
import { get, post, twinPath, canWrite, Stream } from './api.js';
import { el, clear, setText, fmtNum, fmtTime, fmtAge, fmtValue, leaves, getPath, errorText, isAbort } from './dom.js';
import { timePlot, align } from './plots.js';
import { ecgStrip } from './ecg.js';
import { assignmentLine } from './dispatch.js';

const WINDOWS = [['-5m', 300, '5 min'], ['-15m', 900, '15 min'], ['-1h', 3600, '1 hour']];
const DEFAULT_HORIZON_MS = 60000; // the demo's models: horizon 60s (the API does not give it)
const FORECAST_MODEL = 'hr_forecast';
const EVENTS_SHOWN = 64; // /events?limit= takes at most 64

// A prediction's horizon: from the prediction when the hub gives it, else the default.
function horizonMs(p) {
  if (typeof p.horizon_ms === 'number') return p.horizon_ms;
  if (typeof p.horizon === 'number') return p.horizon * 1000;
  return DEFAULT_HORIZON_MS;
}

export function twinPage(ctx, id) {
  const ac = new AbortController();
  let winSeconds = 300, winFrom = '-5m';
  let doc = null;
  const series = { hr: [], spo2: [], temp: [] }; // [[ts s, v]...]
  const forecasts = new Map(); // prediction ts -> [target s, value]
  let model = FORECAST_MODEL;
  let stream = null, rulesTimer = null, cmdTimer = null;
  const timers = [];

  // --- layout ---
  const title = el('h1', {}, 'Twin ', el('span', { class: 'twin-id', id: 'twin-id', text: id }));
  const headInfo = el('div', { class: 'twin-head', id: 'twin-head' });
  const assignment = assignmentLine(id); // "Assignment: ..." of a dispatch's demand or resource
  const winSel = el('select', { id: 'twin-window' },
    ...WINDOWS.map(([v, s, label]) => el('option', { value: v, text: label })));
  const hrBox = el('div', { class: 'plot', id: 'hr-plot' });
  const spo2Box = el('div', { class: 'plot small', id: 'spo2-plot' });
  const tempBox = el('div', { class: 'plot small', id: 'temp-plot' });
  const ecgBox = el('div', { class: 'ecg', id: 'ecg-box' });
  const forecastNote = el('div', { class: 'muted', id: 'forecast-note' });
  const stateBox = el('div', { id: 'state-table' });
  const rulesBox = el('div', { id: 'rules-table' });
  const eventsList = el('ol', { class: 'events', id: 'events' });
  const eventsNote = el('div', { class: 'muted' });
  const cmdBox = el('div', { id: 'commands-table' });
  const error = el('div', { class: 'error', id: 'twin-error' });
  const writes = writeForms();

  ctx.view.appendChild(el('section', { class: 'page twin' },
    el('div', { class: 'crumbs' }, el('a', { href: '#/fleet', text: '‹ fleet' })),
    title, headInfo, assignment.node, error,
    el('div', { class: 'card' }, el('h2', {}, 'Heart rate ', el('label', { class: 'inline' }, 'window ', winSel)),
      hrBox, forecastNote),
    el('div', { class: 'card' }, el('h2', { text: 'ECG' }), ecgBox),
    el('div', { class: 'row2' },
      el('div', { class: 'card' }, el('h2', { text: 'SpO2' }), spo2Box),
      el('div', { class: 'card' }, el('h2', { text: 'Temperature' }), tempBox)),
    el('div', { class: 'row2' },
      el('div', { class: 'card' }, el('h2', { text: 'State' }), stateBox),
      el('div', { class: 'card' }, el('h2', { text: 'Rules' }), rulesBox,
        el('h2', { text: 'Events' }), eventsNote, eventsList)),
    el('div', { class: 'card' }, el('h2', { text: 'Commands' }), cmdBox, writes.node)));

  const hrPlot = timePlot(hrBox, [
    { label: 'heart rate', stroke: '#c0392b' },
    { label: 'forecast (at its horizon)', stroke: '#8e44ad', points: 9, pointsOnly: true },
    { label: 'past forecasts', stroke: '#d4ac0d', points: 6, pointsOnly: true },
  ], { height: 260, yLabel: 'bpm' });
  const spo2Plot = timePlot(spo2Box, [{ label: 'SpO2', stroke: '#2874a6' }], { height: 160, yLabel: '%' });
  const tempPlot = timePlot(tempBox, [{ label: 'temperature', stroke: '#ca6f1e' }], { height: 160, yLabel: '°C' });
  const ecg = ecgStrip(ecgBox, id);

  winSel.addEventListener('change', () => {
    const w = WINDOWS.find((x) => x[0] === winSel.value);
    winFrom = w[0];
    winSeconds = w[1];
    loadHistory();
  });

  // --- data ---
  async function loadDoc() {
    try {
      doc = await get(twinPath(id), null, ac.signal);
      setText(error, '');
      takePredictions(doc);
      showDoc();
    } catch (e) {
      if (!isAbort(e)) setText(error, errorText(e));
    }
  }

  async function loadHistory() {
    const one = async (path, key) => {
      try {
        const h = await get(twinPath(id, 'history'), { path, from: winFrom }, ac.signal);
        const pts = (Array.isArray(h.points) ? h.points : []).map((p) => [p[0] / 1000, p[1]]);
        // keep live points newer than the history's last
        const last = pts.length ? pts[pts.length - 1][0] : 0;
        series[key] = pts.concat(series[key].filter((p) => p[0] > last));
      } catch (e) {
        /* no history of that field (yet) */
      }
    };
    await Promise.all([one('reported.heart_rate', 'hr'), one('reported.spo2', 'spo2'), one('reported.temperature', 'temp')]);
    draw();
  }

  function takePredictions(d) {
    const pred = d && d.predicted;
    if (!pred || typeof pred !== 'object') return;
    if (!pred[model]) {
      const any = Object.keys(pred).find((k) => pred[k] && typeof pred[k].value === 'number');
      if (any) model = any;
    }
    addForecast(pred[model]);
  }

  function addForecast(p) {
    if (!p || typeof p.value !== 'number' || typeof p.ts !== 'number') return;
    forecasts.set(p.ts, [(p.ts + horizonMs(p)) / 1000, p.value, p]);
  }

  function addLive(key, v, tsMs) {
    if (typeof v !== 'number' || typeof tsMs !== 'number') return;
    const s = series[key], x = tsMs / 1000;
    if (!s.length || x > s[s.length - 1][0]) s.push([x, v]);
  }

  function draw() {
    const now = Date.now() / 1000, from = now - winSeconds;
    for (const k of Object.keys(series)) {
      const s = series[k];
      let i = 0;
      while (i < s.length && s[i][0] < from - 60) i++;
      if (i) s.splice(0, i);
    }
    const fc = [...forecasts.values()].sort((a, b) => a[0] - b[0]);
    let maxH = DEFAULT_HORIZON_MS / 1000;
    for (const f of fc) maxH = Math.max(maxH, f[0] - now);
    const latest = fc.length ? [fc[fc.length - 1]] : [];
    const past = fc.slice(0, -1).filter((f) => f[0] >= from);
    const data = align([series.hr.length ? series.hr : [[from, null]],
      latest.map((f) => [f[0], f[1]]), past.map((f) => [f[0], f[1]])]);
    // the window's left edge, or the oldest point when the twin has less than the window
    const oldest = Math.min(...['hr', 'spo2', 'temp'].filter((k) => series[k].length).map((k) => series[k][0][0]), now);
    const left = Math.max(from, Math.min(oldest, now - 30) - 2);
    hrPlot.set(data);
    hrPlot.setX(left, now + Math.min(maxH, 3600) + 5);
    hrBox.dataset.points = String(series.hr.length);
    hrBox.dataset.forecasts = String(fc.length);
    if (latest.length) {
      const p = latest[0][2];
      const score = typeof p.mae === 'number' ? `, MAE ${fmtNum(p.mae)}` : (typeof p.accuracy === 'number' ? `, accuracy ${fmtNum(p.accuracy)}` : '');
      setText(forecastNote, `${model}: ${fmtNum(p.value, 1)} bpm at ${fmtTime(p.ts + horizonMs(p))} ` +
        `(made ${fmtAge(p.ts)}${score}${typeof p.scored === 'number' ? `, ${p.scored} scored` : ''}); ` +
        `${forecasts.size} forecasts seen`);
    } else {
      setText(forecastNote, 'no forecast yet');
    }
    for (const [plot, key] of [[spo2Plot, 'spo2'], [tempPlot, 'temp']]) {
      const s = series[key].length ? series[key] : [[from, null]];
      plot.set([s.map((p) => p[0]), s.map((p) => p[1])]);
      plot.setX(left, now);
    }
  }

  function showDoc() {
    if (!doc) return;
    assignment.update(doc);
    clear(headInfo).append(
      field('version', doc.version, 'twin-version'),
      field('connected', doc.connected ? 'online' : 'offline', 'twin-connected'),
      field('last seen', `${fmtTime(doc.last_seen)} (${fmtAge(doc.last_seen)})`),
      field('created', fmtTime(doc.created)),
      field('seq', doc.seq));
    const rep = leaves(doc.reported || {}, ''), des = leaves(doc.desired || {}, '');
    const delta = new Set(leaves(doc.delta || {}, '').map((x) => x[0]));
    const paths = [...new Set(rep.map((x) => x[0]).concat(des.map((x) => x[0])))].sort();
    const repMap = new Map(rep), desMap = new Map(des);
    const rows = paths.map((p) => el('tr', { class: delta.has(p) ? 'in-delta' : '' },
      el('td', { class: 'path', text: p }),
      el('td', { text: repMap.has(p) ? fmtValue(repMap.get(p)) : '' }),
      el('td', { class: 'ts', text: fmtTime(getPath(doc.meta && doc.meta.reported, p)) }),
      el('td', { text: desMap.has(p) ? fmtValue(desMap.get(p)) : '' }),
      el('td', { class: 'ts', text: desMap.has(p) ? fmtTime(getPath(doc.meta && doc.meta.desired, p)) : '' }),
      el('td', { text: delta.has(p) ? 'Δ ' + fmtValue(getPath(doc.delta, p)) : '' })));
    clear(stateBox).appendChild(el('table', { class: 'kv' },
      el('thead', {}, el('tr', {}, ...['path', 'reported', 'at', 'desired', 'at', 'delta'].map((h) => el('th', { text: h })))),
      el('tbody', {}, ...rows)));
  }

  function field(label, value, idAttr) {
    return el('span', { class: 'field' }, el('span', { class: 'label', text: label + ' ' }),
      el('span', { id: idAttr, text: value === undefined || value === null ? '–' : String(value) }));
  }

  async function loadRules() {
    try {
      const r = await get(twinPath(id, 'rules'), null, ac.signal);
      const rules = Array.isArray(r.rules) ? r.rules : [];
      clear(rulesBox).appendChild(rules.length ? el('table', { class: 'kv' },
        el('thead', {}, el('tr', {}, ...['rule', 'state', 'since', 'value'].map((h) => el('th', { text: h })))),
        el('tbody', {}, ...rules.map((x) => el('tr', { class: 'rule-' + String(x.state), 'data-rule': String(x.rule) },
          el('td', { text: x.rule }), el('td', { class: 'state', text: x.state }),
          el('td', { class: 'ts', text: fmtTime(x.since) }),
          el('td', { text: x.value === undefined ? '' : fmtValue(x.value) })))))
        : el('p', { class: 'muted', text: 'no rule applies to this twin' }));
    } catch (e) {
      if (!isAbort(e)) setText(rulesBox, errorText(e));
    }
  }

  async function loadCommands() {
    try {
      const r = await get(twinPath(id, 'commands'), null, ac.signal);
      const cmds = (Array.isArray(r.commands) ? r.commands : []).slice().sort((a, b) => (b.ts || 0) - (a.ts || 0));
      clear(cmdBox).appendChild(cmds.length ? el('table', { class: 'kv' },
        el('thead', {}, el('tr', {}, ...['id', 'command', 'args', 'state', 'sent', 'expires'].map((h) => el('th', { text: h })))),
        el('tbody', {}, ...cmds.map((c) => el('tr', { class: 'cmd-' + String(c.state) },
          el('td', { class: 'ts', text: c.id }), el('td', { text: c.cmd }),
          el('td', { text: c.args === undefined ? '' : fmtValue(c.args) }),
          el('td', { class: 'state', text: c.state }), el('td', { class: 'ts', text: fmtTime(c.ts) }),
          el('td', { class: 'ts', text: fmtTime(c.expires) })))))
        : el('p', { class: 'muted', text: 'no commands' }));
    } catch (e) {
      if (!isAbort(e)) setText(cmdBox, errorText(e));
    }
  }

  async function loadEvents() {
    try {
      const r = await get(twinPath(id, 'events'), { limit: EVENTS_SHOWN }, ac.signal);
      clear(eventsList);
      const evs = Array.isArray(r.events) ? r.events : [];
      // items {kind: event|prediction, ts, event|prediction} (a bare event taken as well)
      for (const e of evs) {
        if (e && e.prediction && typeof e.prediction === 'object') {
          addEvent({ type: 'prediction', ...e.prediction }, false);
          if (e.prediction.model === model) addForecast(e.prediction); // earlier forecasts
        } else {
          addEvent(e && e.event && typeof e.event === 'object' ? e.event : e, false);
        }
      }
      draw();
      setText(eventsNote, r.complete === false ? 'older events are gone from the hub\'s buffer' : '');
    } catch (e) {
      if (!isAbort(e)) setText(eventsNote, errorText(e));
    }
  }

  function addEvent(ev, live) {
    if (!ev || typeof ev !== 'object') return;
    let what;
    if (ev.type === 'rule') what = `rule ${ev.rule} ${ev.state}` + (ev.severity ? ` (${ev.severity})` : '');
    else if (ev.type === 'presence') what = ev.connected ? 'online' : 'offline';
    else if (ev.type === 'command') what = `command ${ev.cmd} ${ev.state}`;
    else if (ev.type === 'prediction') what = `prediction ${ev.model} ${fmtNum(ev.value, 1)}`;
    else what = fmtValue(ev);
    const li = el('li', { class: 'ev ev-' + String(ev.type) + (ev.state ? ' ev-' + String(ev.state) : '') },
      el('span', { class: 'ts', text: fmtTime(ev.ts) }), ' ', el('span', { text: what }));
    if (live) eventsList.insertBefore(li, eventsList.firstChild);
    else eventsList.appendChild(li);
    while (eventsList.children.length > EVENTS_SHOWN) eventsList.lastChild.remove();
  }

  // --- writes (the write token) ---
  function writeForms() {
    const desired = el('textarea', { id: 'desired-json', rows: 2, cols: 40, placeholder: '{"sample_hz": 5}' });
    const useVersion = el('input', { type: 'checkbox', id: 'desired-version' });
    const cmd = el('input', { id: 'cmd-name', placeholder: 'ping', size: 12 });
    const args = el('input', { id: 'cmd-args', placeholder: '{"seconds": 5}', size: 24 });
    const expires = el('input', { id: 'cmd-expires', type: 'number', placeholder: 'expires in ms', min: 0 });
    const result = el('div', { class: 'muted', id: 'write-result' });
    const can = canWrite();
    const fDesired = el('form', { class: 'toolbar', id: 'desired-form' },
      el('label', {}, 'desired (merge patch) ', desired),
      el('label', {}, useVersion, ' only at this version'),
      el('button', { type: 'submit', text: 'set desired', disabled: !can }));
    const fCmd = el('form', { class: 'toolbar', id: 'command-form' },
      el('label', {}, 'command ', cmd), el('label', {}, 'args ', args), expires,
      el('button', { type: 'submit', text: 'send', disabled: !can }));
    const parse = (s) => (s.trim() === '' ? undefined : JSON.parse(s));
    fDesired.addEventListener('submit', async (e) => {
      e.preventDefault();
      try {
        const body = { desired: parse(desired.value) };
        if (useVersion.checked && doc) body.version = doc.version;
        const r = await post(twinPath(id, 'desired'), body, ac.signal);
        setText(result, `desired set: version ${r.version}`);
      } catch (err) {
        if (!isAbort(err)) setText(result, 'set desired: ' + errorText(err));
      }
    });
    fCmd.addEventListener('submit', async (e) => {
      e.preventDefault();
      try {
        const body = { cmd: cmd.value.trim() };
        const a = parse(args.value);
        if (a !== undefined) body.args = a;
        if (expires.value) body.expires_in_ms = +expires.value;
        const r = await post(twinPath(id, 'commands'), body, ac.signal);
        setText(result, `command queued: ${r.id}`);
        loadCommands();
      } catch (err) {
        if (!isAbort(err)) setText(result, 'send: ' + errorText(err));
      }
    });
    return { node: el('div', { class: 'writes' },
      can ? null : el('p', { class: 'muted', text: 'Writes need the write token (the box at the top).' }),
      fDesired, fCmd, result) };
  }

  // --- live ---
  function later(fn, t, ms) {
    clearTimeout(t);
    return setTimeout(fn, ms);
  }

  function onState(d) {
    if (!d || d.id !== id || !d.row || typeof d.row !== 'object') return;
    doc = d.row;
    const r = doc.reported || {}, m = (doc.meta && doc.meta.reported) || {};
    const at = (k) => (typeof m[k] === 'number' ? m[k] : doc.last_seen);
    addLive('hr', r.heart_rate, at('heart_rate'));
    addLive('spo2', r.spo2, at('spo2'));
    addLive('temp', r.temperature, at('temperature'));
    takePredictions(doc);
    showDoc();
  }

  function onEvent(d) {
    if (!d || d.id !== id || !d.event) return;
    addEvent(d.event, true);
    if (d.event.type === 'rule') rulesTimer = later(loadRules, rulesTimer, 200);
    if (d.event.type === 'command') cmdTimer = later(loadCommands, cmdTimer, 200);
  }

  function onPrediction(d) {
    if (!d || d.id !== id || !d.prediction) return;
    addEvent({ type: 'prediction', ...d.prediction }, true);
    if (d.prediction.model === model || (!forecasts.size && typeof d.prediction.model === 'string')) {
      model = d.prediction.model || model;
      addForecast(d.prediction);
    }
  }

  function reloadAll() {
    loadDoc();
    loadHistory();
    loadRules();
    loadCommands();
    loadEvents();
  }

  reloadAll();
  stream = new Stream({ ids: id, kinds: 'state,event,prediction' }, {
    state: onState, event: onEvent, prediction: onPrediction, reset: reloadAll, status: ctx.streamStatus,
  });
  timers.push(setInterval(draw, 1000));
  timers.push(setInterval(loadRules, 10000));

  return {
    destroy() {
      ac.abort();
      stream.close();
      for (const t of timers) clearInterval(t);
      clearTimeout(rulesTimer);
      clearTimeout(cmdTimer);
      ecg.destroy();
      assignment.destroy();
      hrPlot.destroy();
      spo2Plot.destroy();
      tempPlot.destroy();
    },
  };
}
