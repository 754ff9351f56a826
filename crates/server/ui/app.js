// The page's shell: hash routes to views, the navigation, and the API-key bar. Each view is
// `render(main, params, signal)`; leaving a view aborts its signal, which stops its timers and
// event streams.

import { getKey, setKey } from './api.js';
import { clear, h } from './dom.js';
import * as list from './list.js';
import * as newTask from './new.js';
import * as task from './task.js';
import * as engine from './engine.js';

const main = document.getElementById('main');
const keybar = document.getElementById('keybar');
const keyInput = document.getElementById('key-input');
const keyMessage = document.getElementById('key-message');
const defaultKeyMessage = keyMessage.textContent;

const ROUTES = [
  { re: /^#?\/?$/, nav: 'tasks', view: list },
  { re: /^#\/new$/, nav: 'new', view: newTask },
  { re: /^#\/tasks\/([A-Za-z0-9_-]+)$/, nav: 'tasks', view: task },
  { re: /^#\/engine$/, nav: 'engine', view: engine },
];

let current = null;

function route() {
  current?.abort();
  current = new AbortController();
  const hash = location.hash || '#/';
  const found = ROUTES.map((r) => ({ r, m: hash.match(r.re) })).find((x) => x.m);
  for (const a of document.querySelectorAll('[data-nav]')) {
    a.classList.toggle('active', found?.r.nav === a.dataset.nav);
  }
  clear(main);
  window.scrollTo(0, 0);
  if (!found) {
    main.append(h('p', { class: 'notice error', text: `No page ${hash}.` }));
    return;
  }
  found.r.view.render(main, found.m.slice(1), current.signal);
}

function showKeybar(message) {
  keyMessage.textContent = message ? `${message} ${defaultKeyMessage}` : defaultKeyMessage;
  keyInput.value = getKey();
  keybar.hidden = false;
  keyInput.focus();
}

window.addEventListener('autoglm:need-key', (e) => {
  if (keybar.hidden) showKeybar(e.detail?.message);
});

keybar.addEventListener('submit', (e) => {
  e.preventDefault();
  setKey(keyInput.value.trim());
  keybar.hidden = true;
  route();
});
document.getElementById('key-forget').addEventListener('click', () => {
  setKey('');
  keyInput.value = '';
  keybar.hidden = true;
  route();
});
document.getElementById('key-close').addEventListener('click', () => {
  keybar.hidden = true;
});
document.getElementById('key-button').addEventListener('click', () => {
  if (keybar.hidden) showKeybar(null);
  else keybar.hidden = true;
});

window.addEventListener('hashchange', route);
route();
