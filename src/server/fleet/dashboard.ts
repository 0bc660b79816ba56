/**
 * The fleet dashboard: one static page and one script, no build step and no framework. The
 * script reads /v1/admin/fleet/summary (the admin cookie set by /dashboard/sign-in goes along)
 * and renders with textContent only, since device-reported error messages are untrusted text.
 */
export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ibu fleet</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f5f6f8; color: #1d2330; }
  header { background: #1d2330; color: #fff; padding: 12px 24px; display: flex; gap: 24px; align-items: baseline; }
  header h1 { font-size: 18px; margin: 0; }
  main { padding: 16px 24px; display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
  section { background: #fff; border-radius: 6px; padding: 12px 16px; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
  section.wide { grid-column: 1 / -1; }
  h2 { font-size: 15px; margin: 0 0 8px; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: 4px 6px; border-bottom: 1px solid #eceef2; vertical-align: top; }
  .bar { background: #e4e7ee; border-radius: 3px; height: 14px; position: relative; min-width: 120px; }
  .bar > span { display: block; height: 100%; border-radius: 3px; background: #3b7ddd; }
  .bar.ok > span { background: #2f9e5b; }
  .state { font-weight: 600; padding: 1px 6px; border-radius: 3px; }
  .state.running { background: #dbeafe; } .state.paused { background: #fde2e1; color: #a31c13; }
  .state.completed { background: #dcfce7; } .state.aborted { background: #e5e7eb; }
  .muted { color: #6b7280; } .err { color: #a31c13; }
  button { margin-right: 4px; }
  #status { margin-left: auto; font-size: 12px; }
</style>
</head>
<body>
<header><h1>ibu fleet</h1><span id="totals"></span><span id="status" class="muted">loading…</span></header>
<main>
  <section><h2>Versions</h2><table id="versions"><thead><tr><th>version</th><th>devices</th><th></th></tr></thead><tbody></tbody></table></section>
  <section><h2>Releases</h2><table id="releases">
    <thead><tr><th>channel</th><th>version</th><th>mandatory</th><th>source</th><th>package changes</th></tr></thead><tbody></tbody>
  </table></section>
  <section class="wide"><h2>Rollouts</h2><div id="rollouts"></div></section>
  <section class="wide"><h2>Problems: failed, rolled back, silent, boot fallback, boot env repaired, downgraded</h2><table id="problems">
    <thead><tr><th>device</th><th>group</th><th>version</th><th>status</th><th>error</th><th>last check-in</th></tr></thead><tbody></tbody>
  </table></section>
  <section><h2>Reboot leases</h2><table id="leases"><thead><tr><th>device</th><th>group</th><th>expires</th></tr></thead><tbody></tbody></table></section>
  <section><h2>Groups</h2><table id="groups"><thead><tr><th>group</th><th>window</th><th>max reboots</th></tr></thead><tbody></tbody></table></section>
</main>
<script src="/dashboard/app.js"></script>
</body>
</html>
`;

export const DASHBOARD_JS = `'use strict';
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function row(cells) {
  const tr = document.createElement('tr');
  for (const c of cells) {
    const td = document.createElement('td');
    if (c instanceof Node) td.appendChild(c);
    else td.textContent = c === null || c === undefined ? '' : String(c);
    tr.appendChild(td);
  }
  return tr;
}
function bar(part, whole, ok) {
  const b = el('div', null, ok ? 'bar ok' : 'bar');
  const s = document.createElement('span');
  s.style.width = (whole > 0 ? Math.min(100, 100 * part / whole) : 0).toFixed(1) + '%';
  b.appendChild(s);
  b.title = part + ' / ' + whole;
  return b;
}
function fill(id, rows) { const tb = document.querySelector('#' + id + ' tbody'); tb.replaceChildren(...rows); }
async function act(id, verb) {
  const res = await fetch('/v1/admin/fleet/rollouts/' + id + '/' + verb, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
  if (!res.ok) alert((await res.json()).error.message);
  await refresh();
}
function rolloutBlock(r) {
  const box = el('div'); box.className = 'rollout'; box.dataset.id = r.id; box.style.marginBottom = '14px';
  const head = el('div');
  head.append(el('strong', 'Rollout ' + r.id + ': ' + r.channel + ' → ' + r.version + ' '), el('span', r.state, 'state ' + r.state));
  if (r.reason) head.append(el('span', ' ' + r.reason, r.state === 'paused' ? 'err' : 'muted'));
  const btns = el('span'); btns.style.float = 'right';
  if (r.state === 'running') { const b = el('button', 'pause'); b.onclick = () => act(r.id, 'pause'); btns.append(b); }
  if (r.state === 'paused') { const b = el('button', 'resume'); b.onclick = () => act(r.id, 'resume'); btns.append(b); }
  if (r.state === 'running' || r.state === 'paused') {
    const b = el('button', 'abort');
    b.onclick = () => { if (confirm('Abort rollout ' + r.id + '?')) act(r.id, 'abort'); };
    btns.append(b);
  }
  head.append(btns);
  const t = el('table'); t.className = 'waves';
  t.append(row([el('strong', 'wave'), el('strong', 'devices on ' + r.version), el('strong', 'progress'), el('strong', 'open')]));
  r.waves.forEach((w, i) => {
    const ok = w.devices > 0 && w.done / w.devices >= r.spec.successRatio;
    const open = i === r.wave && r.state !== 'completed' ? 'current' : (w.open ? 'yes' : 'no');
    t.append(row([w.label, w.done + ' / ' + w.devices, bar(w.done, w.devices, ok), open]));
  });
  const c = r.counts;
  const text = 'targeted ' + c.targeted + ' · applying ' + c.applying + ' · trial ' + c.trial + ' · succeeded ' + c.succeeded +
    ' · failed ' + c.failed + ' · rolled back ' + c['rolled-back'] + ' · silent ' + c.silent;
  const counts = el('div', text, 'muted counts');
  box.append(head, t, counts);
  return box;
}
// Package changes of a release against the one before it (GET /v1/releases/:v/changes), fetched
// once per version: a published release never changes.
const changes = new Map();
function packageChanges(version) {
  const cell = el('span', changes.get(version) || '…', 'muted');
  cell.dataset.changes = version;
  if (!changes.has(version)) {
    changes.set(version, '…');
    fetch('/v1/releases/' + encodeURIComponent(version) + '/changes', { headers: { accept: 'application/json' } })
      .then((res) => (res.ok ? res.json() : null))
      .then((d) => {
        const p = d && d.packages;
        const text = !d ? 'n/a' : !p ? 'no package list'
          : p.upgraded.length + ' upgraded, ' + p.added.length + ' added, ' + p.removed.length + ' removed' +
            (p.upgraded.length ? ': ' + p.upgraded.slice(0, 5).map((c) => c.name + ' ' + c.to).join(', ') + (p.upgraded.length > 5 ? ', …' : '') : '');
        changes.set(version, text);
        document.querySelectorAll('[data-changes="' + CSS.escape(version) + '"]').forEach((n) => { n.textContent = text; });
      })
      .catch(() => changes.delete(version));
  }
  return cell;
}
async function refresh() {
  const status = document.getElementById('status');
  try {
    const res = await fetch('/v1/admin/fleet/summary', { headers: { accept: 'application/json' } });
    if (!res.ok) {
      status.textContent = res.status === 401 ? 'not signed in: open /dashboard/sign-in' : 'error ' + res.status;
      status.className = 'err';
      return;
    }
    const s = await res.json();
    document.getElementById('totals').textContent = s.enrolled + ' devices enrolled · ' + s.releases.length + ' releases · ' + s.rollouts.length + ' rollouts';
    const max = Math.max(1, ...s.versions.map((v) => v.devices));
    fill('versions', s.versions.map((v) => row([v.version, v.devices, bar(v.devices, max)])));
    fill('releases', s.releases.map((r) => row([r.channel, r.version, r.mandatory ? 'yes' : '', r.source, packageChanges(r.version)])));
    document.getElementById('rollouts').replaceChildren(...(s.rollouts.length ? s.rollouts.map(rolloutBlock) : [el('p', 'No rollouts yet.', 'muted')]));
    fill('problems', s.problems.map((d) => {
      const p = d.participation;
      const st = p ? p.status : '';
      const err = p && p.errorCode
        ? p.errorCode + ': ' + (p.errorMessage || '')
        : (d.lastErrorCode ? d.lastErrorCode + ': ' + (d.lastErrorMessage || '') : '');
      return row([d.id, d.group, d.version, st + (d.flags.length ? ' [' + d.flags.join(', ') + ']' : ''), el('span', err, 'err'), d.lastCheckin]);
    }));
    fill('leases', s.leases.map((l) => row([l.deviceId, l.group, l.expiresAt])));
    const windowText = (w) => w.timeZone + ' ' + w.rules.map((r) => r.days.join(',') + ' ' + r.start + '-' + r.end).join('; ');
    fill('groups', s.groups.map((g) => row([g.name, g.window ? windowText(g.window) : 'any time', g.maxConcurrentReboots || 'unlimited'])));
    status.textContent = 'updated ' + new Date().toLocaleTimeString(); status.className = 'muted';
    document.body.dataset.loaded = 'true';
  } catch (e) { status.textContent = 'cannot reach the server: ' + e.message; status.className = 'err'; }
}
refresh();
setInterval(refresh, 5000);
`;

/** The sign-in page: a plain form, no script, so the token travels in a POST body, never a URL. */
export const SIGN_IN_HTML = `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>ibu fleet: sign in</title><meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font: 14px/1.4 system-ui, sans-serif; margin: 48px">
<h1 style="font-size: 18px">ibu fleet</h1>
<form method="post" action="/dashboard/sign-in">
  <label>Admin token <input type="password" name="token" autocomplete="current-password" autofocus required></label>
  <button type="submit">Sign in</button>
</form>
</body>
</html>
`;
