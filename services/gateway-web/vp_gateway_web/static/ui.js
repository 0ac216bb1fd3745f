// ui.js: the bundled page. It only draws what client.js reports: a site with its own design
// keeps client.js and replaces this file.
import { VoiceCall, microphones, microphoneUnavailable } from './client.js';

const $ = (id) => document.getElementById(id);
const MIC_KEY = 'vp.microphone'; // the chosen input device, remembered across visits

// what a caller is told, by failure code (client.js FAILURES) and by the gateway's end reason
const FAILURE_TEXT = {
  insecure_origin: 'Микрофон недоступен: страница открыта по незащищённому адресу. Откройте её по https:// (или с localhost).',
  mic_denied: 'Нет доступа к микрофону. Разрешите его в настройках сайта (значок слева от адреса) и позвоните снова.',
  no_mic: 'Микрофон не найден. Подключите его или выберите другой в списке.',
  mic_busy: 'Микрофон занят другой программой. Закройте её и позвоните снова.',
  audio: 'Браузер не может работать со звуком на этой странице.',
  token: 'Сервер не дал доступ к звонку (токен не принят). Обновите страницу и позвоните снова.',
  origin: 'Звонки с этой страницы не разрешены: её адрес не в списке разрешённых.',
  busy: 'Все линии заняты, позвоните чуть позже.',
  not_accepting: 'Сервер сейчас не принимает звонки, попробуйте через минуту.',
  bad_start: 'Сервер не принял звонок.',
  unreachable: 'Не удалось соединиться с сервером звонков. Проверьте интернет и попробуйте снова.',
  network: 'Связь с сервером потеряна, звонок завершён.',
  replaced: 'Этот звонок продолжен в другой вкладке.',
};
const END_TEXT = {
  caller_hangup: 'Вы положили трубку.',
  robot_hangup: 'Робот завершил разговор.',
  idle_timeout: 'Звонок завершён: от микрофона долго не было звука.',
  max_duration: 'Звонок завершён: он достиг предельной длительности.',
  client_lost: 'Звонок завершён: связь с браузером была потеряна.',
  gateway_shutdown: 'Звонок завершён: сервер перезапускается.',
  gateway_error: 'Звонок завершён из-за ошибки сервера.',
  gateway_lost: 'Звонок завершён: сервер недоступен.',
  transferred: 'Звонок переведён.',
  unknown_call: 'Звонок уже завершён.',
  'hangup:realtime_unavailable': 'Звонок завершён: робот недоступен.',
};
const STATE_TEXT = {
  idle: 'Готов к звонку', connecting: 'Соединяемся…', live: 'Идёт звонок',
  reconnecting: 'Связь прервалась, восстанавливаем…', ended: 'Звонок завершён',
};

let call = null;
let wasLive = false;

function alertText(text, kind = 'error') {
  $('alert').textContent = text;
  $('alert').className = `alert ${kind}`;
  $('alert').hidden = !text;
}

function line(cls, text, before = null) {
  const div = document.createElement('div');
  div.className = `msg ${cls}`;
  div.textContent = text;
  $('transcript').insertBefore(div, before);
  div.scrollIntoView({ block: 'nearest' });
  return div;
}

// ---- transcript: the caller's words, the robot's replies (cut to what was heard) -----------------
const replies = new Map(); // turn_id → {el, text, sentences}

function reply(turnId) {
  let r = replies.get(turnId);
  if (!r || r.el.classList.contains('cut')) { // a fallback line after a cut reply: a new bubble
    const el = line('robot', '');
    el.dataset.turn = turnId;
    el.innerHTML = '<span class="text"></span><span class="note"></span>';
    r = { el, sentences: [] };
    replies.set(turnId, r);
  }
  return r;
}

function cutReply(turnId, heardText) {
  const r = replies.get(turnId);
  if (!r || r.el.classList.contains('cut')) return;
  r.el.classList.add('cut');
  r.el.querySelector('.text').textContent = heardText || '…';
  r.el.title = `Полностью: ${r.sentences.join(' ')}`;
  addNote(r.el, 'прервано');
}

function addNote(el, text) {
  const note = el.querySelector('.note');
  note.textContent = note.textContent ? `${note.textContent} · ${text}` : text;
}

function onMessage(e) {
  switch (e.type) {
    case 'call.started':
      $('callid').textContent = e.call_id;
      showTopic(e.prompt);
      break;
    case 'call.resumed': line('system', 'Связь восстановлена.'); alertText(''); break;
    case 'asr.final': {
      if (!e.text) break;
      const before = replies.get(e.turn_id)?.el || null; // a realtime reply may come first
      line('caller', e.text, before).dataset.turn = e.turn_id;
      break;
    }
    case 'bot.sentence': {
      const r = reply(e.turn_id);
      r.sentences[e.index] = e.text;
      r.el.querySelector('.text').textContent = r.sentences.filter(Boolean).join(' ');
      break;
    }
    case 'reply.cut': cutReply(e.turn_id, e.heard_text); break;
    case 'prompt.switched': showTopic(e.prompt); line('system', `Тема: ${e.prompt}`); break;
    case 'turn.metrics': {
      if (e.interrupted) cutReply(e.turn_id, e.played_text);
      const r = replies.get(e.turn_id);
      if (r && e.voice_to_voice_ms != null) {
        addNote(r.el, `ответ через ${(e.voice_to_voice_ms / 1000).toFixed(2)} с`);
        r.el.dataset.latency = e.voice_to_voice_ms;
      }
      break;
    }
    case 'call.ended': break; // told by the 'ended' event with the same reason
  }
}

function showTopic(prompt) {
  $('topic').hidden = !prompt || prompt === 'default'; // a robot without topics has only 'default'
  $('topic').textContent = `Тема: ${prompt}`;
}

function robotFailure(e) {
  // a stage of the robot failed: say which and why; a missing key is the usual first-run cause
  const why = /API_KEY|IAM_TOKEN|FOLDER_ID/.test(e.detail || '') ? ' — не задан ключ API робота' : '';
  return `Робот не смог ответить (${e.stage}: ${e.kind})${why}. ${e.detail || ''}`.trim();
}

// ---- controls ---------------------------------------------------------------------------------------
async function loadRobots() {
  const d = await (await fetch('/robots')).json();
  for (const name of d.robots) $('robot').add(new Option(name, name, false, name === d.default[0]));
}

async function loadMicrophones() {
  const saved = localStorage.getItem(MIC_KEY);
  const list = (await microphones()).filter((d) => d.deviceId);
  $('mic').replaceChildren(new Option('Микрофон по умолчанию', ''));
  list.forEach((d, i) => $('mic').add(new Option(d.label || `Микрофон ${i + 1}`, d.deviceId, false, d.deviceId === saved)));
  // before the page is allowed the microphone, browsers hide the inputs: keep the saved choice
  if (saved && !list.some((d) => d.deviceId === saved)) $('mic').add(new Option('Микрофон, выбранный раньше', saved, false, true));
}

function setInCall(inCall) {
  $('start').disabled = inCall;
  $('stop').disabled = !inCall;
  $('mute').disabled = !inCall;
  $('robot').disabled = $('mic').disabled = inCall;
  document.body.classList.toggle('in-call', inCall);
}

async function startCall() {
  alertText('');
  replies.clear();
  $('transcript').replaceChildren();
  wasLive = false;
  call = new VoiceCall({ robot: $('robot').value, deviceId: $('mic').value || undefined });
  window.vpCall = call; // for tests and for poking at it in the console
  call.addEventListener('state', ({ detail }) => {
    $('state').textContent = STATE_TEXT[detail.state];
    $('state').dataset.state = detail.state;
    if (detail.state === 'live') { wasLive = true; loadMicrophones(); }
    if (detail.state === 'reconnecting') alertText(STATE_TEXT.reconnecting, 'warning');
  });
  call.addEventListener('level', ({ detail }) => {
    $('level').style.width = `${Math.min(100, Math.round(Math.sqrt(detail.level) * 180))}%`;
  });
  call.addEventListener('speaking', ({ detail }) => {
    $('speaking').hidden = !detail.speaking;
    document.body.classList.toggle('robot-speaking', detail.speaking);
  });
  call.addEventListener('message', ({ detail }) => onMessage(detail));
  call.addEventListener('failure', ({ detail }) => {
    if (detail.code === 'robot') alertText(robotFailure(detail.detail));
    else alertText(FAILURE_TEXT[detail.code] + (detail.detail && !/network|unreachable/.test(detail.code) ? ` (${detail.detail})` : ''));
  });
  call.addEventListener('ended', ({ detail }) => {
    setInCall(false);
    $('speaking').hidden = true;
    $('level').style.width = '0';
    const text = END_TEXT[detail.reason] || (detail.reason in FAILURE_TEXT ? '' :
      `Звонок завершён (${detail.reason}).`);
    const said = text || (wasLive ? 'Звонок завершён.' : 'Звонок не состоялся.');
    line('system ended', said);
    $('ended').textContent = said;
  });
  setInCall(true);
  $('ended').textContent = '';
  $('mute').textContent = 'Выключить микрофон';
  $('mute').setAttribute('aria-pressed', 'false');
  await call.start();
}

$('start').onclick = startCall;
$('stop').onclick = () => call?.hangup();
$('mute').onclick = () => {
  const muted = !call.muted;
  call.setMuted(muted);
  $('mute').textContent = muted ? 'Включить микрофон' : 'Выключить микрофон';
  $('mute').setAttribute('aria-pressed', String(muted));
};
$('mic').onchange = () => localStorage.setItem(MIC_KEY, $('mic').value);
setInCall(false);
$('state').textContent = STATE_TEXT.idle;
const unavailable = microphoneUnavailable();
if (unavailable) alertText(FAILURE_TEXT[unavailable]); // say it now, before anyone clicks
loadRobots().catch((err) => alertText(`Не удалось получить список роботов: ${err.message}`));
loadMicrophones();
