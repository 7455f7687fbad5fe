// ecg.js: the twin page's ECG strip: polls the waveform and scrolls it at its real rate, a
// little behind (the delay adapts to how late the newest samples arrive).
import { get, twinPath } from './api.js';
import { el, setText, isAbort, errorText } from './dom.js';
import { timePlot } from './plots.js';

const WINDOW_MS = 5000;   // what the strip shows
const POLL_MS = 400;
const KEEP_MS = 15000;    // chunks kept behind the window

export function ecgStrip(container, id, path) {
  path = path || 'reported.ecg';
  const ac = new AbortController();
  const chunks = new Map(); // ts -> {ts, hz, samples, end}
  const lags = [];          // how late the newest sample was, at the last polls
  let delay = 1500, from = Date.now() - 8000, timer = null, raf = 0, frames = 0, closed = false;
  const note = el('div', { class: 'muted ecg-note', text: 'waiting for the strip…' });
  const box = el('div', { class: 'ecg-plot', id: 'ecg-strip' });
  container.appendChild(el('div', {}, box, note));
  const plot = timePlot(box, [{ label: 'ECG', stroke: '#1e8449', width: 1.2, spanGaps: false }],
    { height: 180, legend: false, time: true });

  async function poll() {
    try {
      const w = await get(twinPath(id, 'wave'), { path, from }, ac.signal);
      let newest = 0;
      for (const c of Array.isArray(w.chunks) ? w.chunks : []) {
        if (typeof c.ts !== 'number' || !(c.hz > 0) || !Array.isArray(c.samples)) continue;
        const end = c.ts + c.samples.length * 1000 / c.hz;
        chunks.set(c.ts, { ts: c.ts, hz: c.hz, samples: c.samples, end });
        newest = Math.max(newest, c.ts);
      }
      if (newest) {
        from = newest;
        let end = 0;
        for (const c of chunks.values()) end = Math.max(end, c.end);
        lags.push(Date.now() - end);
        if (lags.length > 12) lags.shift();
        setText(note, `${chunks.size} chunks, ${Math.round(delay)} ms behind`);
      } else if (!chunks.size) {
        setText(note, 'no ECG strip from this twin yet');
      }
    } catch (e) {
      if (isAbort(e)) return;
      setText(note, 'strip: ' + errorText(e));
    }
    if (!closed) timer = setTimeout(poll, POLL_MS);
  }

  function frame() {
    if (closed) return;
    if (lags.length) {
      const target = Math.min(10000, Math.max(300, Math.max(...lags) + 250));
      delay += (target - delay) * (target > delay ? 0.1 : 0.01);
    }
    const tEnd = Date.now() - delay, tStart = tEnd - WINDOW_MS;
    const xs = [], ys = [];
    let prevEnd = null;
    const sorted = [...chunks.values()].sort((a, b) => a.ts - b.ts);
    for (const c of sorted) {
      if (c.end < tStart - KEEP_MS) { chunks.delete(c.ts); continue; }
      if (c.end < tStart || c.ts > tEnd) continue;
      const period = 1000 / c.hz;
      if (prevEnd !== null && c.ts - prevEnd > 2 * period) { xs.push((prevEnd + period) / 1000); ys.push(null); }
      const i0 = Math.max(0, Math.floor((tStart - c.ts) / period));
      const i1 = Math.min(c.samples.length, Math.ceil((tEnd - c.ts) / period));
      for (let i = i0; i < i1; i++) {
        const v = c.samples[i];
        xs.push((c.ts + i * period) / 1000);
        ys.push(typeof v === 'number' ? v : null);
      }
      prevEnd = c.ts + i1 * period;
    }
    plot.set([xs, ys]);
    plot.setX(tStart / 1000, tEnd / 1000);
    if (++frames % 30 === 0) {
      box.dataset.frames = String(frames);
      box.dataset.points = String(xs.length);
      box.dataset.end = String(Math.round(tEnd));
    }
    raf = requestAnimationFrame(frame);
  }

  poll();
  raf = requestAnimationFrame(frame);
  return {
    destroy() {
      closed = true;
      ac.abort();
      clearTimeout(timer);
      cancelAnimationFrame(raf);
      plot.destroy();
    },
  };
}
