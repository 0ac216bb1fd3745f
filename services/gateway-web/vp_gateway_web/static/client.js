// client.js: one voice-platform call from a web page. Copy it with capture-worklet.js and
// playback-worklet.js into your site; it has no dependencies. The wire protocol it speaks is in
// docs/protocols/web-client.md.
//
//   import { VoiceCall } from './client.js';
//   const call = new VoiceCall({ robot: 'pipeline_russian', getToken: myTokenFetcher });
//   call.addEventListener('message', (e) => console.log(e.detail));  // asr.final, bot.sentence, ...
//   call.addEventListener('failure', (e) => alert(e.detail.code));
//   await call.start();   // ... later: call.hangup();
//
// Events (CustomEvent; the payload is e.detail):
//   state     {state}: 'connecting' | 'live' | 'reconnecting' | 'ended'
//   level     {level}: microphone loudness 0..1, every 20 ms
//   speaking  {speaking, played, dropped, buffered}: the robot's voice started/stopped coming out of
//             the speakers (and every ~100 ms while it plays; the same report goes to the gateway)
//   message   a JSON event of the gateway, as it came (see the protocol page)
//   failure   {code, detail, fatal}: something the caller should be told; codes in FAILURES
//   ended     {reason}: the call is over (the gateway's reason, or a failure code)

export const RATE = 16000; // the call's audio rate both ways (the gateway's CALL_RATE)

// failure codes (the page turns them into words): before the call, on the socket, from the robot
export const FAILURES = [
  'insecure_origin', 'mic_denied', 'no_mic', 'mic_busy', 'audio', // this browser, this page
  'token', 'origin', 'busy', 'not_accepting', 'bad_start', 'replaced', // the gateway refused
  'unreachable', 'network', // no connection to the gateway / lost and not resumed in time
  'robot', // a stage of the robot failed (detail says which and why); fatal ones end the call
];

// close codes of the gateway (voiceplatform/web_protocol.py) that end the call for good
const CLOSED_FOR_GOOD = {
  4401: 'token', 4403: 'origin', 4409: 'replaced', 4410: 'gone', 4429: 'busy',
  1008: 'bad_start', 1013: 'not_accepting',
};

/** POST /page-token from the bundled page (same Origin); a site uses its own server and POST /tokens. */
export async function pageToken(robot, base = '') {
  const r = await fetch(`${base}/page-token`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ robot }),
  }).catch((err) => { throw Object.assign(err, { code: 'unreachable' }); });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw Object.assign(new Error(body.error || `HTTP ${r.status}`), { code: 'token' });
  return body.token;
}

/** Microphones by label (labels are empty until the page was once allowed to use one). */
export async function microphones() {
  if (!navigator.mediaDevices?.enumerateDevices) return [];
  return (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === 'audioinput');
}

/** Why the microphone cannot be used here, or null: getUserMedia exists only in secure contexts. */
export function microphoneUnavailable() {
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) return 'insecure_origin';
  if (!window.AudioWorkletNode) return 'audio';
  return null;
}

export class VoiceCall extends EventTarget {
  /**
   * @param {object} o
   * @param {string} o.robot         robot name
   * @param {() => Promise<string>} [o.getToken]  a call token (default: POST /page-token)
   * @param {string} [o.deviceId]    microphone (from microphones()); default: the system's
   * @param {string} [o.base]        the gateway's origin, e.g. 'https://voice.example' (default: this page's)
   * @param {string} [o.assets]      where the worklet files are (default: next to client.js)
   */
  constructor({ robot, getToken, deviceId, base = '', assets } = {}) {
    super();
    this.robot = robot;
    this.getToken = getToken || (() => pageToken(robot, base));
    this.deviceId = deviceId;
    this.base = base || location.origin;
    this.assets = assets || new URL('.', import.meta.url).href;
    this.muted = false;
    this.state = 'idle';
    this.callId = null;
    this.resume = null; // {token, until}: the gateway's resume token and when its grace ends
  }

  emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit('state', { state });
  }

  /** Start the call; false (after a 'failure' event) when it could not start. */
  async start() {
    this.setState('connecting');
    const unavailable = microphoneUnavailable();
    if (unavailable) return this.fail(unavailable, `${location.origin} is not a secure context`, true);
    let token;
    try {
      this.mic = await navigator.mediaDevices.getUserMedia({
        audio: {
          deviceId: this.deviceId ? { ideal: this.deviceId } : undefined, // gone: the default one
          echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1,
        },
      });
      token = await this.getToken(); // after the microphone prompt: the token lives only a minute
      await this.startAudio();
    } catch (err) {
      return this.fail(startFailure(err), err.message, true);
    }
    if (this.state === 'ended') return false; // hung up while connecting
    this.open({ type: 'start', token, robot: this.robot, sample_rate: RATE });
    return true;
  }

  async startAudio() {
    this.ctx = new AudioContext({ latencyHint: 'interactive' });
    await this.ctx.resume(); // start() runs from a click: autoplay rules allow it
    for (const file of ['capture-worklet.js', 'playback-worklet.js']) {
      await this.ctx.audioWorklet.addModule(new URL(file, this.assets)).catch((err) => {
        throw Object.assign(err, { code: 'audio' }); // not the microphone's AbortError
      });
    }
    const options = { processorOptions: { rate: RATE } };
    this.capture = new AudioWorkletNode(this.ctx, 'vp-capture', options);
    this.capture.port.onmessage = (e) => this.micFrame(e.data);
    this.ctx.createMediaStreamSource(this.mic).connect(this.capture);
    this.capture.connect(this.ctx.destination); // it outputs silence; connected, so it is run
    this.playback = new AudioWorkletNode(this.ctx, 'vp-playback', { ...options, numberOfInputs: 0 });
    this.playback.port.onmessage = (e) => this.playbackReport(e.data);
    this.playback.connect(this.ctx.destination);
    for (const node of [this.capture, this.playback]) {
      node.onprocessorerror = () => this.fail('audio', 'an audio worklet failed', true);
    }
  }

  // The gateway learns what the caller heard of the robot (a cut reply is recorded up to there):
  // samples of this socket's audio played or dropped, counted from the socket's opening.
  playbackReport(report) {
    this.playbackTotals = report;
    this.emit('speaking', report);
    if (this.ws?.readyState !== WebSocket.OPEN || !this.live) return;
    const done = Math.max(0, report.played + report.dropped - (this.playbackBase || 0));
    this.ws.send(JSON.stringify({ type: 'playback', done, speaking: report.speaking }));
  }

  micFrame({ pcm, level }) {
    this.emit('level', { level: this.muted ? 0 : level });
    if (this.ws?.readyState !== WebSocket.OPEN || !this.live) return;
    // muted: silence, not nothing, so the gateway does not take the caller for gone (idle timeout)
    this.ws.send(this.muted ? new ArrayBuffer(pcm.byteLength) : pcm);
  }

  setMuted(muted) { this.muted = muted; }

  open(hello) {
    const url = new URL('/ws', this.base);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = (this.ws = new WebSocket(url));
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => {
      // what the worklet had received before this socket is not this socket's audio
      const t = this.playbackTotals;
      this.playbackBase = t ? t.played + t.dropped + t.buffered : 0;
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (m) => {
      if (ws !== this.ws) return;
      if (typeof m.data !== 'string') this.playback.port.postMessage({ pcm: m.data }, [m.data]);
      else this.onEvent(JSON.parse(m.data));
    };
    ws.onclose = (e) => { if (ws === this.ws) this.onClose(e); };
  }

  onEvent(e) {
    switch (e.type) {
      case 'call.started':
        this.callId = e.call_id;
        this.live = true; // a gateway without resume (VP_RECONNECT_GRACE_S=0) sends no call.resumable
        this.setState('live');
        break;
      case 'call.resumable':
      case 'call.resumed':
        this.live = true;
        this.resume = { token: e.resume_token, graceS: e.grace_s };
        this.setState('live');
        break;
      case 'playback.flush': this.playback.port.postMessage({ flush: true }); break;
      case 'heartbeat': this.ws.send(JSON.stringify({ type: 'heartbeat' })); break;
      case 'busy': this.failure = ['busy', e.message]; break;
      case 'error':
        if (e.stage) this.emit('failure', { code: 'robot', detail: e, fatal: false });
        else if (e.code) this.failure = [e.code.startsWith('token') ? 'token' : e.code, e.message];
        break;
      case 'call.ended': this.endReason = e.reason; break;
    }
    this.emit('message', e);
  }

  onClose(e) {
    if (this.state === 'ended') return;
    if (e.code === 1000 || e.code in CLOSED_FOR_GOOD) {
      const [code, detail] = this.failure || [CLOSED_FOR_GOOD[e.code], e.reason];
      if (this.endReason || e.code === 4410) return this.finish(this.endReason || e.reason.replace(/^ended: /, ''));
      if (e.code === 1000) return this.finish(e.reason || 'ended');
      return this.fail(code, detail, true);
    }
    // a dropped socket: back to the same call with the resume token, while its grace lasts
    if (!this.resume) return this.fail('unreachable', `socket closed (${e.code})`, true); // never got in
    this.live = false;
    this.playback.port.postMessage({ flush: true });
    this.resume.until ??= Date.now() + this.resume.graceS * 1000;
    if (Date.now() > this.resume.until) return this.fail('network', 'could not reconnect in time', true);
    this.setState('reconnecting');
    const hello = { type: 'resume', call_id: this.callId, resume_token: this.resume.token };
    setTimeout(() => this.state === 'reconnecting' && this.open(hello), 500);
  }

  /** Hang up (the call ends as caller_hangup). */
  hangup() {
    if (this.ws?.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ type: 'hangup' }));
      this.ws.close(1000);
    }
    this.finish('caller_hangup');
  }

  fail(code, detail, fatal) {
    this.emit('failure', { code, detail, fatal });
    if (fatal) this.finish(code);
    return false;
  }

  finish(reason) {
    if (this.state === 'ended') return;
    this.live = false;
    this.mic?.getTracks().forEach((t) => t.stop());
    // the robot's last words (a goodbye) may still be in the jitter buffer: let them play out
    const ctx = this.ctx;
    if (ctx) setTimeout(() => ctx.close(), reason === 'caller_hangup' ? 0 : 300);
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000);
    this.setState('ended');
    this.emit('ended', { reason });
  }
}

function startFailure(err) {
  if (FAILURES.includes(err.code)) return err.code; // from getToken: 'token' or 'unreachable'
  switch (err.name) {
    case 'NotAllowedError': case 'SecurityError': return 'mic_denied';
    case 'NotFoundError': case 'OverconstrainedError': return 'no_mic';
    case 'NotReadableError': case 'AbortError': return 'mic_busy';
    default: return 'audio';
  }
}
