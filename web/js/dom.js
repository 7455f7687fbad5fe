// dom.js: building elements with createElement and textContent only (device data is never parsed as HTML) and formatting.

// el('div', {class: 'x', text: 'y', title: 'z', ...attrs}, child...): children are nodes or strings.
export function el(tag, props, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') n.className = v;
    else if (k === 'text') n.textContent = String(v);
    else if (k === 'on') for (const [ev, fn] of Object.entries(v)) n.addEventListener(ev, fn);
    else if (k === 'style') throw new Error('no inline styles: use a class');
    else n.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    n.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
  }
  return n;
}

export function clear(n) {
  while (n.firstChild) n.removeChild(n.firstChild);
  return n;
}

export function setText(n, s) {
  const t = s === undefined || s === null ? '' : String(s);
  if (n.textContent !== t) n.textContent = t;
}

export function fmtNum(v, digits) {
  if (typeof v !== 'number' || !isFinite(v)) return v === undefined || v === null ? '–' : String(v);
  return digits === undefined ? String(Math.round(v * 100) / 100) : v.toFixed(digits);
}

export function fmtTime(ms) {
  if (typeof ms !== 'number' || !ms) return '–';
  const d = new Date(ms);
  const p = (x, n) => String(x).padStart(n || 2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
    `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

export function fmtAge(ms) {
  if (typeof ms !== 'number' || !ms) return 'never';
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 1) return 'now';
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

// A value of a twin shown as text: strings as they are, the rest as JSON (arrays shortened).
export function fmtValue(v) {
  if (typeof v === 'string') return v;
  if (Array.isArray(v) && v.length > 8) return `[${v.length} values]`;
  try {
    return JSON.stringify(v);
  } catch (e) {
    return String(v);
  }
}

// Leaf paths of a nested object: [['a.b', value], ...]; arrays are leaves.
export function leaves(obj, prefix, out) {
  out = out || [];
  if (obj && typeof obj === 'object' && !Array.isArray(obj)) {
    for (const k of Object.keys(obj).sort()) leaves(obj[k], prefix ? prefix + '.' + k : k, out);
  } else if (prefix) {
    out.push([prefix, obj]);
  }
  return out;
}

export function getPath(obj, path) {
  let o = obj;
  for (const k of path.split('.')) {
    if (!o || typeof o !== 'object') return undefined;
    o = o[k];
  }
  return o;
}

export function errorText(e) {
  return e && e.message ? e.message : String(e);
}

export function isAbort(e) {
  return e && e.name === 'AbortError';
}
