// Microphone → 20 ms frames of 16-bit PCM at the call's rate (16 kHz), posted to the main thread.
// Runs on the audio thread: the context's own rate (44.1/48 kHz) is averaged down here, so the
// page works in every browser whatever rate its AudioContext chose.

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.outRate = options.processorOptions.rate; // samples per second sent to the gateway
    this.frameSize = this.outRate / 50; // 20 ms
    this.frame = new Int16Array(this.frameSize);
    this.filled = 0;
    this.step = sampleRate / this.outRate; // input samples per output sample (≥ 1)
    this.pos = 0; // fractional position of the next output sample in the input stream
    this.acc = 0; // sum and count of the input samples averaged into the next output sample
    this.count = 0;
    this.sumSquares = 0; // level of the current frame, for the meter
  }

  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (!input) return true; // no microphone connected (yet)
    for (let i = 0; i < input.length; i++) {
      this.acc += input[i];
      this.count++;
      this.pos += 1;
      if (this.pos < this.step) continue;
      this.pos -= this.step;
      const v = Math.max(-1, Math.min(1, this.acc / this.count));
      this.acc = this.count = 0;
      this.sumSquares += v * v;
      this.frame[this.filled++] = v < 0 ? v * 32768 : v * 32767;
      if (this.filled === this.frameSize) {
        const level = Math.sqrt(this.sumSquares / this.frameSize);
        this.port.postMessage({ pcm: this.frame.buffer, level }, [this.frame.buffer]); // moved, not copied
        this.frame = new Int16Array(this.frameSize);
        this.filled = 0;
        this.sumSquares = 0;
      }
    }
    return true;
  }
}

registerProcessor('vp-capture', CaptureProcessor);
