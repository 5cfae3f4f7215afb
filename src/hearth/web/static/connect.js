// The connect page: noVNC on the browser VM's screen, and the sign-in status beside it.
// The controller's WebSocket proxy authenticates to the VM itself and offers the viewer
// security type None, so no credentials are given here.
import RFB from '/novnc/core/rfb.js';

const screen = document.getElementById('screen');
const statusLine = document.getElementById('status');
const viewerState = document.getElementById('viewer-state');
const reconnectButton = document.getElementById('reconnect');
const viewer = document.getElementById('viewer');
const endedPanel = document.getElementById('ended');
const nextStep = document.getElementById('next-step');

// Session states after which there is nothing left to watch: [status line, tone, next step].
const AGAIN = 'To try again, start a new sign-in from where you began this one.';
const END_STATES = {
    completed: ['Signed in.', 'ok', 'You can close this page.'],
    failed: ['Sign-in failed.', 'error', AGAIN],
    cancelled: ['Sign-in was cancelled.', 'error', AGAIN],
    expired: ['This sign-in session has expired.', 'error', AGAIN],
};

// A viewer that loses its connection (the controller restarting, say) tries again by
// itself for a while; the button is there too.
const RETRY_MS = 2000;
const RETRIES = 30;

let rfb = null;
let ended = false;
let retries = 0;
let queuePosition = null; // while the session waits for a browser VM: 1 is next

function showStatus(text, tone) {
    statusLine.textContent = text;
    statusLine.dataset.tone = tone;
}

function statusText(status) {
    const text = `Status: ${status.replaceAll('_', ' ')}`;
    return status === 'queued' && queuePosition !== null ? `${text}, position ${queuePosition}` : text;
}

function showViewer(text, canReconnect) {
    viewerState.textContent = text;
    reconnectButton.hidden = !canReconnect;
}

function webSocketUrl(path) {
    const url = new URL(path, window.location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    return url.href;
}

function connectViewer() {
    showViewer('Connecting to the browser…', false);
    rfb = new RFB(screen, webSocketUrl(screen.dataset.vncPath), { wsProtocols: ['binary'] });
    rfb.scaleViewport = true;
    // The VM's screen keeps its size (Firefox is fitted to it); the viewer scales instead.
    rfb.resizeSession = false;
    rfb.background = '#1f2328';
    rfb.addEventListener('connect', () => {
        retries = 0;
        showViewer('Connected: click the screen to type.', false);
        rfb.focus();
    });
    rfb.addEventListener('securityfailure', (event) => {
        showViewer(`The viewer was refused: ${event.detail.reason || 'no reason given'}`, true);
    });
    rfb.addEventListener('disconnect', () => {
        rfb = null;
        if (ended) {
            return;
        }
        showViewer('The connection to the browser closed.', true);
        if (retries < RETRIES) {
            retries += 1;
            setTimeout(() => {
                if (rfb === null && !ended) {
                    connectViewer();
                }
            }, RETRY_MS);
        }
    });
}

function endSession(text, tone, next) {
    ended = true;
    if (rfb !== null) {
        rfb.disconnect();
    }
    showStatus(text, tone);
    viewer.hidden = true;
    screen.hidden = true;
    nextStep.textContent = next;
    endedPanel.hidden = false;
}

// The controller sends one `status` event per step of the session, JSON with `status`
// and, on failure, a `detail` meant for the user.
function followStatus() {
    const events = new EventSource(screen.dataset.eventsPath);
    events.addEventListener('status', (event) => {
        let data;
        try {
            data = JSON.parse(event.data);
        } catch {
            return;
        }
        if (typeof data.status !== 'string') {
            return;
        }
        // The raw status, for scripts and tests that follow the page.
        statusLine.dataset.status = data.status;
        const end = END_STATES[data.status];
        if (end) {
            events.close();
            const [text, tone, next] = end;
            const detailed = data.status === 'failed' && data.detail;
            endSession(detailed ? `Sign-in failed: ${data.detail}` : text, tone, next);
            return;
        }
        if (data.status !== 'queued') {
            queuePosition = null;
        }
        showStatus(statusText(data.status), 'active');
        // The VM may not have been ready when the viewer last tried: try again as the
        // session moves on.
        if (rfb === null) {
            connectViewer();
        }
    });
    // While queued, a `queue` event ({position}) each time the session moves up.
    events.addEventListener('queue', (event) => {
        let data;
        try {
            data = JSON.parse(event.data);
        } catch {
            return;
        }
        if (!Number.isInteger(data.position) || statusLine.dataset.status !== 'queued') {
            return;
        }
        queuePosition = data.position;
        statusLine.dataset.queuePosition = String(data.position);
        showStatus(statusText('queued'), 'active');
    });
    events.addEventListener('error', () => {
        if (events.readyState === EventSource.CLOSED && !ended) {
            showStatus('The status of this session is not available.', 'error');
        }
    });
}

reconnectButton.addEventListener('click', connectViewer);
followStatus();
connectViewer();
