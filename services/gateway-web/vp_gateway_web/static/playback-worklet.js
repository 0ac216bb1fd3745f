// Robot audio (16-bit PCM at the call's rate) → speakers, through a small jitter buffer.
// Messages in: {pcm: ArrayBuffer} to queue, {flush: true} to drop everything queued at once
// (barge-in: the caller must not hear the rest). Messages out: {speaking, played, dropped, buffered}
// whenever speaking starts or stops, after a flush, and every ~100 ms while it plays (played:
// samples at the call's rate that reached the speakers since the start; dropped: samples received
// and never played, flushed or over the queue's limit).

const PREBUFFER_S = 0.06; // wait for this much audio before (re)starting: the gateway sends 60 ms ahead
const MAX_QUEUE_S = 20; // a stuck output must not grow without bound

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.inRate = options.processorOptions.rate;
    this.step = this.inRate / sampleRate; // input samples per output sample (≤ 1: upsampling)
    this.chunks = []; // Float32Array pieces, oldest first
    this.offset = 0; // read position (fractional) within chunks[0]
    this.queued = 0; // input samples queued
    this.speaking = false;
    this.played = 0;
    this.dropped = 0;
    this.sinceReport = 0;
    this.port.onmessage = (e) => this.receive(e.data);
  }

  receive(msg) {
    if (msg.flush) {
      this.dropped += Math.max(0, this.queued - this.offset); // chunks[0] is played up to offset
      this.chunks = [];
      this.offset = this.queued = 0;
      this.speaking = false;
      this.report();
      return;
    }
    const pcm = new Int16Array(msg.pcm);
    if (this.queued + pcm.length > MAX_QUEUE_S * this.inRate) {
      this.dropped += pcm.length;
      return;
    }
    const f = new Float32Array(pcm.length);
    for (let i = 0; i < pcm.length; i++) f[i] = pcm[i] / 32768;
    this.chunks.push(f);
    this.queued += f.length;
  }

  setSpeaking(speaking) {
    if (speaking === this.speaking) return;
    this.speaking = speaking;
    this.report();
  }

  report() {
    this.sinceReport = 0;
    this.port.postMessage({
      speaking: this.speaking,
      played: Math.round(this.played),
      dropped: Math.round(this.dropped),
      buffered: this.queued,
    });
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    if (!this.speaking && this.queued < PREBUFFER_S * this.inRate) {
      out.fill(0);
      return true;
    }
    this.setSpeaking(true);
    for (let i = 0; i < out.length; i++) {
      if (!this.chunks.length) {
        out.fill(0, i); // underrun: silence, and prebuffer again before going on
        this.setSpeaking(false);
        break;
      }
      const chunk = this.chunks[0];
      out[i] = chunk[Math.floor(this.offset)]; // nearest sample: speech at 16 kHz needs no better
      this.offset += this.step;
      this.played += this.step;
      if (this.offset >= chunk.length) {
        this.offset -= chunk.length;
        this.queued -= chunk.length;
        this.chunks.shift();
      }
    }
    if (this.speaking && (this.sinceReport += out.length) >= sampleRate / 10) this.report();
    return true;
  }
}

registerProcessor('vp-playback', PlaybackProcessor);
