// plots.js: the dashboard's plots on uPlot (sparklines, time series, the ECG strip's canvas).
import uPlot from '../vendor/uPlot.esm.js';

export { uPlot };

function widthOf(container, fallback) {
  return Math.max(100, Math.floor(container.clientWidth || fallback));
}

// A sparkline: no axes, no legend, no cursor. set(xs, ys) with xs in seconds.
export function sparkline(container, width, height) {
  const u = new uPlot({
    width, height, class: 'spark-plot',
    legend: { show: false }, cursor: { show: false }, select: { show: false },
    axes: [{ show: false }, { show: false }],
    scales: { x: { time: false } },
    series: [{}, { stroke: '#2e86c1', width: 1.5, points: { show: false }, spanGaps: true }],
  }, [[], []], container);
  return {
    set(xs, ys) { u.setData([xs, ys]); },
    destroy() { u.destroy(); },
  };
}

// A time plot: x in seconds since the epoch; series [{label, stroke, width?, dash?, points?,
// paths?: 'points'}]; opts {height, y: [min, max] or null, yLabel}. set(data) takes uPlot's
// aligned columns [xs, ys1, ys2...]; setX(min, max) fixes the visible window.
export function timePlot(container, series, opts) {
  opts = opts || {};
  const s = [{}].concat(series.map((x) => {
    const one = {
      label: x.label, stroke: x.stroke, width: x.width || 1.5, spanGaps: x.spanGaps !== false,
      points: x.points ? { show: true, size: x.points, stroke: x.stroke, fill: x.fill || x.stroke } : { show: false },
    };
    if (x.dash) one.dash = x.dash;
    if (x.pointsOnly) one.paths = () => null;
    return one;
  }));
  const yScale = opts.y ? { range: opts.y } : { range: (u, min, max) => uPlot.rangeNum(min, max, 0.1, true) };
  let xRange = null;
  const u = new uPlot({
    width: widthOf(container, 600), height: opts.height || 220,
    series: s, legend: { show: opts.legend !== false, live: false },
    cursor: { drag: { x: false, y: false } },
    scales: {
      x: { time: opts.time !== false, range: (u, min, max) => xRange || [min, max] },
      y: yScale,
    },
    axes: [{}, { label: opts.yLabel, size: 50 }],
  }, [[]].concat(series.map(() => [])), container);
  const ro = new ResizeObserver(() => {
    const w = widthOf(container, 600);
    if (w !== u.width) u.setSize({ width: w, height: u.height });
  });
  ro.observe(container);
  return {
    u,
    set(data) { u.setData(data); },
    setX(min, max) {
      xRange = [min, max];
      u.setScale('x', { min, max });
    },
    destroy() { ro.disconnect(); u.destroy(); },
  };
}

// Several [x, y] tables into uPlot's aligned columns (x ascending; null where a series has none).
export function align(tables) {
  return uPlot.join(tables.map((t) => [t.map((p) => p[0]), t.map((p) => p[1])]));
}
