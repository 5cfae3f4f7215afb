// The admin page: render each snapshot the controller streams, act through the admin API
// with the session cookie and the page's CSRF token.
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const live = document.getElementById('live');
const notice = document.getElementById('notice');

function cell(row, text) {
    const td = row.insertCell();
    td.textContent = text === null || text === undefined ? '' : String(text);
    return td;
}

function button(row, label, action) {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = label;
    b.addEventListener('click', action);
    row.insertCell().append(b);
}

function table(id, headings, rows, fill) {
    const t = document.getElementById(id);
    t.replaceChildren();
    const head = t.createTHead().insertRow();
    for (const h of headings) {
        const th = document.createElement('th');
        th.textContent = h;
        head.append(th);
    }
    const body = t.createTBody();
    for (const item of rows) {
        const row = body.insertRow();
        fill(row, item);
    }
}

function tell(text) {
    notice.textContent = text;
    notice.hidden = false;
}

async function act(method, path, body) {
    const response = await fetch(path, {
        method,
        credentials: 'same-origin',
        headers: { 'X-CSRF-Token': csrf, 'Content-Type': 'application/json' },
        body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
        tell(`${method} ${path}: ${data.error || response.status}`);
        return null;
    }
    return data;
}

function render(s) {
    const host = document.getElementById('host');
    host.replaceChildren();
    const facts = [
        ['Memory', `${s.host.memory_available_mib} MiB free of ${s.host.memory_total_mib} MiB`],
        ['VM guests', `${s.host.vm_memory_mib} MiB`],
        ['VMs', Object.entries(s.host.vms_by_state).map(([k, v]) => `${v} ${k}`).join(', ') || 'none'],
        ['Addresses', `${s.host.addresses_leased} of ${s.host.addresses} leased`],
    ];
    for (const [name, value] of facts) {
        const dt = document.createElement('dt');
        dt.textContent = name;
        const dd = document.createElement('dd');
        dd.textContent = value;
        host.append(dt, dd);
    }
    table('vms', ['VM', 'image', 'state', 'address', 'user', 'boot s', 'error', ''], s.vms, (row, vm) => {
        row.dataset.vm = vm.vm_id;
        for (const v of [vm.vm_id, vm.image, vm.state, vm.ip, vm.user_id,
            vm.boot_seconds === null ? '' : vm.boot_seconds.toFixed(1), vm.error]) {
            cell(row, v);
        }
        button(row, 'Destroy', () => act('DELETE', `/api/admin/vms/${vm.vm_id}`));
    });
    table('sessions', ['session', 'user', 'provider', 'status', 'error', ''], s.sessions, (row, x) => {
        row.dataset.session = x.session_id;
        for (const v of [x.session_id.slice(0, 12), x.user_id, x.provider, x.status, x.error]) {
            cell(row, v);
        }
        if (['completed', 'failed', 'cancelled', 'expired'].includes(x.status)) {
            cell(row, '');
        } else {
            button(row, 'Cancel', () => act('POST', `/api/admin/sessions/${x.session_id}/cancel`));
        }
    });
    table('users', ['user', 'providers', 'CLI VM', 'last prompt'], s.users, (row, u) => {
        cell(row, u.user_id);
        cell(row, u.credentials.map((c) => `${c.provider} (${c.status})`).join(', '));
        cell(row, u.vm ? `${u.vm.vm_id} ${u.vm.state}` : '');
        cell(row, u.prompts.length ? `${u.prompts[0].status} ${u.prompts[0].created_at}` : '');
    });
    table('keys', ['key', 'role', 'name', 'created', 'revoked', ''], s.keys, (row, k) => {
        row.dataset.key = k.key_id;
        for (const v of [k.key_id, k.role, k.name, k.created_at, k.revoked_at]) {
            cell(row, v);
        }
        if (k.revoked_at) {
            cell(row, '');
        } else {
            button(row, 'Revoke', () => act('DELETE', `/api/admin/keys/${k.key_id}`));
        }
    });
    table('egress', ['at', 'VM', 'name', 'verdict', 'reason'], s.egress, (row, c) => {
        for (const v of [c.started_at, c.vm_id, c.name, c.verdict, c.reason]) {
            cell(row, v);
        }
    });
}

document.getElementById('new-key').addEventListener('submit', async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const created = await act('POST', '/api/admin/keys', { role: form.get('role'), name: form.get('name') });
    if (created) {
        const shown = document.getElementById('created-key');
        shown.textContent = `New ${created.role} key (shown this once): ${created.key}`;
        shown.hidden = false;
    }
});

document.getElementById('sign-out').addEventListener('click', async () => {
    await fetch('/admin/sign-out', { method: 'POST', credentials: 'same-origin', headers: { 'X-CSRF-Token': csrf } });
    window.location.assign('/admin');
});

const events = new EventSource('/admin/events');
events.addEventListener('snapshot', (event) => {
    live.textContent = 'Live';
    live.dataset.state = 'live';
    render(JSON.parse(event.data));
});
events.addEventListener('error', () => {
    live.textContent = 'Reconnecting…';
    live.dataset.state = 'lost';
});
