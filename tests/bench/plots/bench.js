// bench.js: the dashboard's plotting load (50 sparkline tiles at 1 Hz, one 360 Hz ECG strip
// scrolling every frame) drawn with uPlot or Chart.js (?lib=uplot|chartjs), with its own
// frame-time and long-task counters in window.bench (read by bench_plots.py).
(function () {
  'use strict';
  var params = new URLSearchParams(location.search);
  var lib = params.get('lib') || 'uplot';
  var NTILES = +(params.get('tiles') || 50), SPARK_N = 120;
  var ECG_HZ = 360, ECG_SECONDS = 5, ECG_N = ECG_HZ * ECG_SECONDS;

  var bench = window.bench = { lib: lib, frames: [], longtasks: [], ready: false };
  bench.reset = function () { bench.frames = []; bench.longtasks = []; };
  try {
    new PerformanceObserver(function (l) {
      l.getEntries().forEach(function (e) { bench.longtasks.push(e.duration); });
    }).observe({ entryTypes: ['longtask'] });
  } catch (e) { /* no long-task API */ }

  function ecgValue(t) {  // a beat every 0.8 s: a spike on a wobbling baseline
    var ph = (t % 0.8) / 0.8;
    return 0.1 * Math.sin(t * 2 * Math.PI * 0.3) + (ph < 0.03 ? 1.2 * Math.sin(ph / 0.03 * Math.PI) : 0)
      - (ph > 0.03 && ph < 0.05 ? 0.3 : 0) + (ph > 0.3 && ph < 0.4 ? 0.2 * Math.sin((ph - 0.3) / 0.1 * Math.PI) : 0);
  }

  // --- uPlot -------------------------------------------------------------------------------
  function uplotSpark(el) {
    var opts = { width: 180, height: 40, legend: { show: false }, cursor: { show: false },
      select: { show: false }, axes: [{ show: false }, { show: false }],
      scales: { x: { time: false } },
      series: [{}, { stroke: '#c0392b', width: 1, points: { show: false } }] };
    var u = new uPlot(opts, [[], []], el);
    return function (xs, ys) { u.setData([xs, ys]); };
  }
  function uplotEcg(el) {
    var opts = { width: 1000, height: 200, legend: { show: false }, cursor: { show: false },
      select: { show: false }, scales: { x: { time: false }, y: { range: [-0.6, 1.4] } },
      axes: [{}, {}], series: [{}, { stroke: '#27ae60', width: 1, points: { show: false } }] };
    var u = new uPlot(opts, [[], []], el);
    return function (xs, ys) { u.setData([xs, ys]); };
  }
  // --- Chart.js ----------------------------------------------------------------------------
  function chartCanvas(el, w, h) {
    var c = document.createElement('canvas');
    c.width = w; c.height = h; el.appendChild(c);
    return c;
  }
  function chartjsSpark(el) {
    var ch = new Chart(chartCanvas(el, 180, 40), {
      type: 'line',
      data: { datasets: [{ data: [], borderColor: '#c0392b', borderWidth: 1, pointRadius: 0 }] },
      options: { responsive: false, animation: false, parsing: false, normalized: true,
        events: [], plugins: { legend: { display: false }, tooltip: { enabled: false } },
        scales: { x: { type: 'linear', display: false }, y: { display: false } } } });
    return function (xs, ys) {
      var d = new Array(xs.length);
      for (var i = 0; i < xs.length; i++) d[i] = { x: xs[i], y: ys[i] };
      ch.data.datasets[0].data = d; ch.update('none');
    };
  }
  function chartjsEcg(el) {
    var ch = new Chart(chartCanvas(el, 1000, 200), {
      type: 'line',
      data: { datasets: [{ data: [], borderColor: '#27ae60', borderWidth: 1, pointRadius: 0 }] },
      options: { responsive: false, animation: false, parsing: false, normalized: true,
        spanGaps: true, events: [], plugins: { legend: { display: false }, tooltip: { enabled: false } },
        scales: { x: { type: 'linear' }, y: { min: -0.6, max: 1.4 } } } });
    return function (xs, ys) {
      var d = new Array(xs.length);
      for (var i = 0; i < xs.length; i++) d[i] = { x: xs[i], y: ys[i] };
      ch.data.datasets[0].data = d; ch.update('none');
    };
  }

  function start() {
    var mkSpark = lib === 'chartjs' ? chartjsSpark : uplotSpark;
    var mkEcg = lib === 'chartjs' ? chartjsEcg : uplotEcg;
    var tilesEl = document.getElementById('tiles');
    var tiles = [];
    for (var i = 0; i < NTILES; i++) {
      var t = document.createElement('div'); t.className = 'tile';
      var label = document.createElement('div'); label.textContent = 'ecg-' + (1000 + i);
      var sp = document.createElement('div'); sp.className = 'spark';
      t.appendChild(label); t.appendChild(sp); tilesEl.appendChild(t);
      var xs = [], ys = [], now = Date.now() / 1000;
      for (var k = SPARK_N; k > 0; k--) { xs.push(now - k); ys.push(70 + 10 * Math.sin(k / 9 + i)); }
      tiles.push({ draw: mkSpark(sp), xs: xs, ys: ys, label: label, n: 0 });
      tiles[i].draw(xs, ys);
    }
    // each tile gets a new reading once a second, the fleet's updates spread over the second
    tiles.forEach(function (tile, idx) {
      setTimeout(function () {
        setInterval(function () {
          tile.n++;
          tile.xs.push(Date.now() / 1000); tile.ys.push(70 + 10 * Math.sin(tile.n / 9 + idx) + Math.random() * 3);
          if (tile.xs.length > SPARK_N) { tile.xs.shift(); tile.ys.shift(); }
          tile.label.textContent = 'ecg-' + (1000 + idx) + ' ' + tile.ys[tile.ys.length - 1].toFixed(0);
          tile.draw(tile.xs, tile.ys);
        }, 1000);
      }, idx * 1000 / NTILES);
    });
    var ecg = mkEcg(document.getElementById('ecg'));
    var t0 = performance.now(), last = t0, emitted = 0;
    var ex = new Float64Array(ECG_N), ey = new Float64Array(ECG_N), filled = 0;
    function frame(ts) {
      bench.frames.push(ts - last); last = ts;
      var due = Math.floor((ts - t0) / 1000 * ECG_HZ);
      var n = due - emitted;                   // the samples of this frame, into the window
      if (n > ECG_N) { emitted = due - ECG_N; n = ECG_N; }
      if (filled + n > ECG_N) {
        var drop = filled + n - ECG_N;
        ex.copyWithin(0, drop, filled); ey.copyWithin(0, drop, filled); filled -= drop;
      }
      for (; emitted < due; emitted++, filled++) {
        ex[filled] = emitted / ECG_HZ; ey[filled] = ecgValue(emitted / ECG_HZ);
      }
      ecg(Array.prototype.slice.call(ex, 0, filled), Array.prototype.slice.call(ey, 0, filled));
      requestAnimationFrame(frame);
    }
    requestAnimationFrame(frame);
    bench.ready = true;
  }
  document.addEventListener('DOMContentLoaded', start);
})();
