// The admin page: render each snapshot the controller streams, act through the admin API
// with the session cookie and the page's CSRF token. The stream's query says what the page
// shows beyond the defaults (its filters, and the console, prompts or deliveries it opened):
// changing one opens the stream again with the new query.
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const listLimit = Number(document.querySelector('meta[name="list-limit"]').content);
const live = document.getElementById('live');
const notice = document.getElementById('notice');
const MAX_LIMIT = 1000; // the admin API's largest page
const ENDED = ['completed', 'failed', 'cancelled', 'expired'];

const view = {}; // hearth.api.admin_page.PageView's fields, as the controls set them
let events = null;

function cell(row, text) {
    const td = row.insertCell();
    td.textContent = text === null || text === undefined ? '' : String(text);
    return td;
}

// One cell with a button per [label, action].
function buttons(row, ...actions) {
    const td = row.insertCell();
    for (const [label, action] of actions) {
        const b = document.createElement('button');
        b.type = 'button';
        b.textContent = label;
        b.addEventListener('click', action);
        td.append(b);
    }
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

// An opened panel: shown with `fill` while the snapshot has its data, hidden otherwise.
function opened(panelId, data, fill) {
    const panel = document.getElementById(panelId);
    panel.hidden = !data;
    if (data) {
        fill(data);
    }
}

function seconds(value) {
    return value === null || value === undefined ? '' : value.toFixed(1);
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
        ['VM memory budget',
            `${s.host.vm_memory_reserved_mib} of ${s.host.vm_memory_budget_mib} MiB reserved`],
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
    table('leases', ['address', 'leased to VM', 'since'], s.host.leases, (row, l) => {
        for (const v of [l.ip, l.vm_id, l.leased_at]) {
            cell(row, v);
        }
    });
    table('vms', ['VM', 'image', 'state', 'address', 'user', 'boot s', 'error', ''], s.vms, (row, vm) => {
        row.dataset.vm = vm.vm_id;
        for (const v of [vm.vm_id, vm.image, vm.state, vm.ip, vm.user_id, seconds(vm.boot_seconds), vm.error]) {
            cell(row, v);
        }
        const actions = [['Console', () => setView({ console_vm: vm.vm_id })]];
        if (vm.state !== 'destroyed') {
            actions.push(['Destroy', () => act('DELETE', `/api/admin/vms/${vm.vm_id}`)]);
        }
        buttons(row, ...actions);
    });
    opened('console-panel', s.console, (c) => {
        document.getElementById('console-vm').textContent = c.vm_id;
        document.getElementById('console').textContent = c.lines.join('\n') || '(empty)';
    });
    table('sessions', ['session', 'user', 'provider', 'status', 'error', ''], s.sessions, (row, x) => {
        row.dataset.session = x.session_id;
        for (const v of [x.session_id.slice(0, 12), x.user_id, x.provider, x.status, x.error]) {
            cell(row, v);
        }
        if (ENDED.includes(x.status)) {
            cell(row, '');
        } else {
            buttons(row, ['Cancel', () => act('POST', `/api/admin/sessions/${x.session_id}/cancel`)]);
        }
    });
    table('users', ['user', 'providers', 'CLI VM', 'last prompt', ''], s.users, (row, u) => {
        row.dataset.user = u.user_id;
        cell(row, u.user_id);
        cell(row, u.credentials.map((c) => `${c.provider} (${c.status})`).join(', '));
        cell(row, u.vm ? `${u.vm.vm_id} ${u.vm.state}` : '');
        cell(row, u.prompts.length ? `${u.prompts[0].status} ${u.prompts[0].created_at}` : '');
        buttons(row, ['Prompts', () => setView({ prompts_user: u.user_id })]);
    });
    opened('prompts-panel', s.prompts, (u) => {
        document.getElementById('prompts-user').textContent = u.user_id;
        const headings = ['prompt', 'provider', 'status', 'exit', 'created', 'first output s', 'took s',
            'error', 'text'];
        table('prompts', headings, u.prompts, (row, p) => {
            row.dataset.prompt = p.prompt_id;
            for (const v of [p.prompt_id, p.provider, p.status, p.exit_code, p.created_at,
                seconds(p.first_output_seconds), seconds(p.duration_seconds), p.error,
                p.prompt.slice(0, 80)]) {
                cell(row, v);
            }
        });
    });
    table('keys', ['key', 'role', 'name', 'created', 'revoked', ''], s.keys, (row, k) => {
        row.dataset.key = k.key_id;
        for (const v of [k.key_id, k.role, k.name, k.created_at, k.revoked_at]) {
            cell(row, v);
        }
        if (k.revoked_at) {
            cell(row, '');
        } else {
            buttons(row, ['Revoke', () => act('DELETE', `/api/admin/keys/${k.key_id}`)]);
        }
    });
    table('webhooks', ['endpoint', 'URL', 'events', 'description', 'state', 'created', ''], s.webhooks, (row, e) => {
        row.dataset.webhook = e.endpoint_id;
        for (const v of [e.endpoint_id.slice(0, 12), e.url, e.events.join(', '), e.description,
            e.enabled ? 'enabled' : 'disabled', e.created_at]) {
            cell(row, v);
        }
        const path = `/api/admin/webhooks/${e.endpoint_id}`;
        buttons(
            row,
            ['Deliveries', () => setView({ webhook: e.endpoint_id })],
            [e.enabled ? 'Disable' : 'Enable', () => act('PATCH', path, { enabled: !e.enabled })],
            ['Delete', () => act('DELETE', path)],
        );
    });
    opened('deliveries-panel', s.deliveries, (d) => {
        document.getElementById('deliveries-endpoint').textContent = view.webhook;
        const headings = ['delivery', 'event', 'status', 'created', 'next attempt', 'delivered', 'attempts'];
        table('deliveries', headings, d.deliveries, (row, x) => {
            row.dataset.delivery = x.delivery_id;
            const attempts = x.attempts.map((a) => `${a.number}: ${a.status_code ?? 'no answer'}`
                + (a.error ? ` (${a.error})` : '')).join('; ');
            for (const v of [x.delivery_id, x.event_type, x.status, x.created_at, x.next_attempt_at,
                x.delivered_at, attempts]) {
                cell(row, v);
            }
        });
    });
    table('egress', ['at', 'VM', 'user', 'name', 'verdict', 'reason'], s.egress, (row, c) => {
        for (const v of [c.started_at, c.vm_id, c.user_id, c.name, c.verdict, c.reason]) {
            cell(row, v);
        }
    });
}

// (Re)open the stream for the page's view; every snapshot replaces what is shown.
function follow() {
    if (events !== null) {
        events.close();
    }
    const query = new URLSearchParams(Object.entries(view).filter(([, v]) => v !== ''));
    live.textContent = 'Connecting…';
    live.dataset.state = 'connecting';
    events = new EventSource(`/admin/events?${query}`);
    events.addEventListener('snapshot', (event) => {
        live.textContent = 'Live';
        live.dataset.state = 'live';
        render(JSON.parse(event.data));
    });
    events.addEventListener('error', () => {
        live.textContent = 'Reconnecting…';
        live.dataset.state = 'lost';
    });
}

function setView(changes) {
    Object.assign(view, changes);
    follow();
}

// Filters: a form's named fields go into the view when it is submitted (a select at once).
for (const form of document.querySelectorAll('form[data-filter]')) {
    form.addEventListener('submit', (event) => {
        event.preventDefault();
        const changes = {};
        for (const field of form.elements) {
            if (field.name) {
                changes[field.name] = field.value.trim();
            }
        }
        setView(changes);
    });
    form.addEventListener('change', (event) => {
        if (event.target.tagName === 'SELECT') {
            form.requestSubmit();
        }
    });
}

for (const more of document.querySelectorAll('button[data-more]')) {
    more.addEventListener('click', () => {
        const name = more.dataset.more;
        setView({ [name]: Math.min(MAX_LIMIT, 2 * (view[name] || listLimit)) });
    });
}

for (const close of document.querySelectorAll('button[data-close]')) {
    close.addEventListener('click', () => setView({ [close.dataset.close]: '' }));
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

document.getElementById('new-webhook').addEventListener('submit', async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const body = { url: form.get('url'), description: form.get('description'), events: form.getAll('events') };
    const created = await act('POST', '/api/admin/webhooks', body);
    if (created) {
        const shown = document.getElementById('created-webhook');
        shown.textContent = `Signing secret of ${created.url} (shown this once): ${created.secret}`;
        shown.hidden = false;
        event.target.reset();
    }
});

document.getElementById('sign-out').addEventListener('click', async () => {
    await fetch('/admin/sign-out', { method: 'POST', credentials: 'same-origin', headers: { 'X-CSRF-Token': csrf } });
    window.location.assign('/admin');
});

follow();
