// main.js: the router (#/fleet, #/twin/ID, #/models, #/dispatch, #/hub), the token box and the stream badge.
import { tokens, setTokens } from './api.js';
import { clear, el } from './dom.js';
import { fleetPage } from './fleet.js';
import { twinPage } from './twin.js';
import { modelsPage } from './models.js';
import { hubPage } from './hub.js';
import { dispatchPage } from './dispatch.js';

let current = null; // the page shown: {destroy()}

export function streamStatus(text) {
  const s = document.getElementById('stream-status');
  s.textContent = text;
  s.className = 'stream-status ' + (text === 'live' ? 'live' : 'down');
}

function route() {
  const view = document.getElementById('view');
  if (current) {
    try { current.destroy(); } catch (e) { /* the old page is gone anyway */ }
    current = null;
  }
  clear(view);
  const h = location.hash || '#/fleet';
  const m = /^#\/([a-z]+)(?:\/(.*))?$/.exec(h);
  const page = m ? m[1] : 'fleet';
  for (const a of document.querySelectorAll('nav a')) {
    a.classList.toggle('active', a.dataset.page === page);
  }
  const ctx = { view, streamStatus };
  if (page === 'twin' && m[2]) {
    let id;
    try { id = decodeURIComponent(m[2]); } catch (e) { id = m[2]; }
    current = twinPage(ctx, id);
  } else if (page === 'models') current = modelsPage(ctx);
  else if (page === 'dispatch') current = dispatchPage(ctx);
  else if (page === 'hub') current = hubPage(ctx);
  else if (page === 'fleet') current = fleetPage(ctx);
  else view.appendChild(el('p', { class: 'error', text: 'no such page: ' + h }));
  document.title = 'twinhub: ' + page;
}

function tokenBox() {
  const form = document.getElementById('tokens');
  const r = document.getElementById('read-token');
  const w = document.getElementById('write-token');
  const st = document.getElementById('tokens-state');
  const show = () => {
    const t = tokens();
    st.textContent = t.write ? 'writes on' : (t.read ? 'read token set' : 'no token');
    document.body.classList.toggle('can-write', !!t.write);
  };
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    setTokens(r.value.trim(), w.value.trim());
    r.value = '';
    w.value = '';
    show();
    route();
  });
  document.getElementById('tokens-clear').addEventListener('click', () => {
    setTokens('', '');
    show();
    route();
  });
  show();
}

tokenBox();
window.addEventListener('hashchange', route);
route();
